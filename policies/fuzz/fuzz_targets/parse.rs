//! Any input: the readers never panic, and an accepted document's canonical form reads back to
//! the same canonical form (and compiles without panicking).
#![no_main]

use agentcell_policy::plan::{CompileOptions, Host, compile};
use agentcell_policy::{ParseOptions, canonical, contract, parse_with};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = contract::check(text);
    let opts = ParseOptions { allow_testing_features: true, ..ParseOptions::default() };
    if let Ok(doc) = parse_with(text, &opts) {
        let c = canonical::canonical_json(&doc);
        let again = parse_with(&c, &ParseOptions { kind: Some(doc.kind), ..opts.clone() });
        // The canonical form of a SandboxPolicy is the ContainerConfig it means.
        let again = again.or_else(|_| parse_with(&c, &ParseOptions { kind: Some(agentcell_policy::DocumentKind::ContainerConfig), ..opts }));
        let again = again.expect("the canonical form of an accepted document is accepted");
        assert_eq!(canonical::canonical_json(&again), c);
        let _ = compile(&doc, &Host::reference(), &CompileOptions::default());
    }
});
