//! Any input: every reader never panics (MXC 1.0's contracts for every root, the retired ones
//! under --mxc-release 0.8, the typed request roots, migrate), an accepted document's canonical
//! form reads back to the same canonical form (and compiles without panicking), and a migrated
//! document is accepted by MXC 1.0's reader.
#![no_main]

use agentcell_policy::plan::{CompileOptions, Host, compile};
use agentcell_policy::{MxcRelease, ParseOptions, canonical, contract, migrate, parse_request, parse_with};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for release in MxcRelease::ALL {
        let _ = contract::check_with(text, release);
        for root in contract::RequestRoot::ALL {
            let _ = contract::check_as_with(text, root, release);
        }
        let opts = ParseOptions { allow_testing_features: true, release, ..ParseOptions::default() };
        let _ = parse_request(text, &opts);
        if let Ok(doc) = parse_with(text, &opts) {
            let c = canonical::canonical_json(&doc);
            let again = parse_with(&c, &ParseOptions { kind: Some(doc.kind), ..opts.clone() });
            // The canonical form of a SandboxPolicy is the ContainerConfig it means.
            let again = again.or_else(|_| parse_with(&c, &ParseOptions { kind: Some(agentcell_policy::DocumentKind::ContainerConfig), ..opts.clone() }));
            let again = again.expect("the canonical form of an accepted document is accepted");
            assert_eq!(canonical::canonical_json(&again), c);
            let _ = compile(&doc, &Host::reference(), &CompileOptions::default());
        }
    }
    for require_command in [false, true] {
        let opts = ParseOptions { require_command, ..ParseOptions::default() };
        if let Ok(m) = migrate::migrate(text, &opts, "1.0.0") {
            let out = m.pretty();
            if m.document.get("phase").is_none() {
                parse_with(&out, &opts).expect("a migrated document is valid 1.0.0");
            }
        }
    }
});
