//! Conformance against MXC's retired 0.6–0.8 data in `../shared/mxc-conformance` (read at test
//! time; the folder listing is never copied here), under `--mxc-release 0.8`: exactly the
//! verdicts agentcell gave before MXC 1.0. Under the default release (MXC 1.0) every one of these
//! documents is refused at `version`. Set `AGENTCELL_MXC_CONFORMANCE` to use another copy.

use std::fs;
use std::path::{Path, PathBuf};

use agentcell_policy::contract::{self, RequestRoot};
use agentcell_policy::plan::{CompileOptions, Host, compile};
use agentcell_policy::{MxcRelease, ParseOptions, parse_with};

const RELEASE: MxcRelease = MxcRelease::V0_8;

fn conformance_dir() -> PathBuf {
    let dir = std::env::var_os("AGENTCELL_MXC_CONFORMANCE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/mxc-conformance")
        });
    assert!(
        dir.join("README.md").is_file(),
        "MXC conformance data not found at {}",
        dir.display()
    );
    dir
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "json") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// MXC's executor as its Linux test scripts run it (`--allow-testing-features`).
fn executor() -> ParseOptions {
    ParseOptions {
        allow_testing_features: true,
        release: RELEASE,
        ..ParseOptions::executor()
    }
}

fn root_for(path: &Path) -> RequestRoot {
    let s = path.to_string_lossy();
    for (dir, root) in [
        ("/one_shot/", RequestRoot::OneShot),
        ("/start/", RequestRoot::Start),
        ("/exec/", RequestRoot::Exec),
        ("/stop/", RequestRoot::Stop),
        ("/deprovision/", RequestRoot::Deprovision),
        (
            "/windows_sandbox_provision/",
            RequestRoot::WindowsSandboxProvision,
        ),
        (
            "/isolation_session_provision/",
            RequestRoot::IsolationSessionProvision,
        ),
        ("/wslc_provision/", RequestRoot::WslcProvision),
    ] {
        if s.contains(dir) {
            return root;
        }
    }
    RequestRoot::OneShot
}

/// Contract fixtures that MXC's runtime (one-shot, Linux) reads differently, with the reason.
const RUNTIME_DIFFERS: &[(&str, &str)] = &[
    (
        "/start/valid/",
        "state-aware request: MXC's Linux executor runs one-shot requests only",
    ),
    (
        "/exec/valid/",
        "state-aware request: MXC's Linux executor runs one-shot requests only",
    ),
    (
        "/stop/valid/",
        "state-aware request: MXC's Linux executor runs one-shot requests only",
    ),
    (
        "/deprovision/valid/",
        "state-aware request: MXC's Linux executor runs one-shot requests only",
    ),
    (
        "_provision/valid/",
        "state-aware request: MXC's Linux executor runs one-shot requests only",
    ),
    (
        "network_directional.json",
        "structural only: a runtime proxy with direct egress rules is refused when run",
    ),
    (
        "app_container_alias.json",
        "structural only: on Linux `process` resolves to bubblewrap, which allows no processContainer section",
    ),
    (
        "empty_optional_objects.json",
        "structural only: a processContainer section under the bubblewrap containment",
    ),
    (
        "v0_6_0_alpha/fixtures/invalid/experimental.json",
        "MXC's runtime keeps `experimental` open in every version; only the 0.6 contract closes it",
    ),
    (
        "v0_7_0_alpha/fixtures/invalid/experimental.json",
        "MXC's runtime keeps `experimental` open in every version; only the 0.7 contract closes it",
    ),
    (
        "proxy_localhost.json",
        "structural only: an external proxy with the default block policy is refused by the bubblewrap backend",
    ),
    (
        "proxy_url.json",
        "structural only: an external proxy with the default block policy is refused by the bubblewrap backend",
    ),
];

fn runtime_difference(path: &Path) -> Option<(&'static str, &'static str)> {
    let s = path.to_string_lossy();
    RUNTIME_DIFFERS.iter().find(|(k, _)| s.contains(k)).copied()
}

#[test]
fn contract_fixtures_get_mxcs_verdicts() {
    let dir = conformance_dir().join("contract");
    let files = json_files(&dir);
    assert!(
        files.len() >= 70,
        "expected MXC's 71 contract fixtures, found {}",
        files.len()
    );
    let mut failures = Vec::new();
    let mut runtime_report = Vec::new();
    let mut used = std::collections::BTreeSet::new();
    for f in &files {
        let text = fs::read_to_string(f).unwrap();
        let rel = f.strip_prefix(&dir).unwrap().display().to_string();
        let want_valid = rel.contains("/valid/");
        assert!(
            want_valid || rel.contains("/invalid/"),
            "{rel}: neither valid/ nor invalid/"
        );
        let got = contract::check_as_with(&text, root_for(f), RELEASE);
        if got.is_ok() != want_valid {
            failures.push(format!(
                "{rel}: contract verdict {:?}, expected {}",
                got.err(),
                if want_valid { "valid" } else { "invalid" }
            ));
        }
        // The runtime reader must agree, except where MXC's own runtime differs (listed).
        let rt = parse_with(&text, &executor());
        if rt.is_ok() != want_valid {
            match runtime_difference(f) {
                Some((key, why)) => {
                    used.insert(key);
                    runtime_report.push(format!(
                        "{rel}: runtime {} ({why})",
                        if rt.is_ok() { "accepts" } else { "refuses" }
                    ));
                }
                None => failures.push(format!(
                    "{rel}: runtime verdict {:?} differs from the contract, unlisted",
                    rt.err().map(|e| e.to_string())
                )),
            }
        }
    }
    for (key, _) in RUNTIME_DIFFERS {
        if !used.contains(key) {
            failures.push(format!(
                "RUNTIME_DIFFERS entry {key:?} matches no fixture that differs: remove it"
            ));
        }
    }
    eprintln!(
        "contract fixtures where MXC's runtime differs:\n  {}",
        runtime_report.join("\n  ")
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn fill_placeholders(text: &str) -> String {
    // As MXC's Linux scripts do: a listener port, a loopback proxy, a provisioned sandbox id.
    text.replace("{{LISTENER_PORT}}", "18080")
        .replace("{{ALLOWED_PORT}}", "18081")
        .replace("{{PROXY_HOST}}", "127.0.0.1")
        .replace("{{PROXY_PORT}}", "13128")
        .replace("{{SANDBOX_ID}}", "wslc:0123456789abcdef0123456789abcdef")
}

/// Refused by name (`*_rejected`, `*_unsupported`), or by the never-run sentinel MXC's scripts
/// put in the workload of a document they expect refused (e.g. `lxc_inbound_v08_permissive_ingress`).
fn expects_refusal(name: &str, text: &str) -> bool {
    name.contains("_rejected")
        || name.ends_with("_unsupported.json")
        || name.starts_with("rejected_")
        || [
            "this-should-never-run",
            "SHOULD_NOT_RUN",
            "THIS_MUST_NEVER_RUN",
        ]
        .iter()
        .any(|s| text.contains(s))
}

/// Accepted by MXC's parser, but agentcell refuses to run it on Linux (compile), with the reason.
fn not_runnable_reason(name: &str, text: &str) -> Option<&'static str> {
    if text.contains("builtinTestServer") {
        return Some("uses MXC's built-in test proxy, which agentcell does not ship");
    }
    if name.starts_with("hyperlight_") || name.starts_with("microvm_") {
        return Some(
            "MXC micro-VM backend (agentcell's own micro-VM tier is selected by isolation, not containment)",
        );
    }
    None
}

#[test]
fn configs_and_examples_get_the_verdicts_their_names_imply() {
    let base = conformance_dir();
    let mut failures = Vec::new();
    let mut listed = Vec::new();
    let mut checked = 0;
    for sub in ["configs", "examples"] {
        for f in json_files(&base.join(sub)) {
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            let text = fill_placeholders(&fs::read_to_string(&f).unwrap());
            checked += 1;
            let parsed = parse_with(&text, &executor());
            let state_aware = text.contains("\"phase\"");
            if state_aware {
                // MXC's Linux executor parses one-shot requests only and refuses these the same
                // way; the contract reader still holds them to the 0.8 state-aware roots.
                match &parsed {
                    Err(e) if e.to_string().contains("state-aware") => {}
                    other => {
                        failures.push(format!("{sub}/{name}: state-aware document, got {other:?}"))
                    }
                }
                let contract = contract::check_with(&text, RELEASE);
                if contract.is_ok() == expects_refusal(&name, &text)
                    && !name.contains("provision_rejected")
                {
                    failures.push(format!(
                        "{sub}/{name}: contract verdict {:?}",
                        contract.err().map(|e| e.to_string())
                    ));
                }
                listed.push(format!("{sub}/{name}: state-aware (Windows lifecycle); refused by one-shot executors, MXC's lxc-exec included"));
                continue;
            }
            if expects_refusal(&name, &text) {
                let refused_at = match &parsed {
                    Err(e) => Some(format!("parse: {e}")),
                    Ok(doc) => compile(doc, &Host::reference(), &CompileOptions::default())
                        .err()
                        .map(|e| format!("compile: {e}")),
                };
                match refused_at {
                    None => failures.push(format!("{sub}/{name}: expected a refusal, accepted")),
                    Some(r) if (name.starts_with("bubblewrap_") || name.starts_with("lxc_")) && r.starts_with("compile") => {
                        failures.push(format!("{sub}/{name}: MXC's Linux backend refuses it at validation; agentcell only at compile: {r}"))
                    }
                    Some(_) => {}
                }
                continue;
            }
            let doc = match parsed {
                Ok(d) => d,
                Err(e) => {
                    failures.push(format!("{sub}/{name}: expected acceptance, got {e}"));
                    continue;
                }
            };
            let linux = matches!(
                doc.backend,
                agentcell_policy::document::Backend::Bubblewrap
                    | agentcell_policy::document::Backend::Lxc
            );
            if linux {
                let compiled = compile(&doc, &Host::reference(), &CompileOptions::default());
                match (compiled, not_runnable_reason(&name, &text)) {
                    (Ok(_), None) | (Err(_), Some(_)) => {}
                    (Ok(_), Some(why)) => {
                        failures.push(format!("{sub}/{name}: expected compile refusal ({why})"))
                    }
                    (Err(e), None) => {
                        if e.to_string().contains("absolute path") {
                            listed.push(format!("{sub}/{name}: parser accepts; compile refuses a non-absolute path ({e})"));
                        } else {
                            failures.push(format!("{sub}/{name}: compile failed: {e}"));
                        }
                    }
                }
            }
        }
    }
    eprintln!("listed:\n  {}", listed.join("\n  "));
    assert!(
        checked > 190,
        "expected MXC's configs and examples, found {checked}"
    );
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// MXC 1.0 (the default release) refuses every document of the retired corpus at `version`,
/// naming it, the registered versions and the migration command (the one 0.3 document: older than
/// supported).
#[test]
fn the_default_release_refuses_the_whole_retired_corpus() {
    let base = conformance_dir();
    let mut failures = Vec::new();
    let mut n = 0;
    for sub in ["configs", "examples", "contract"] {
        for f in json_files(&base.join(sub)) {
            let text = fs::read_to_string(&f).unwrap();
            let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            n += 1;
            let declared = value
                .get("version")
                .and_then(|v| v.as_str())
                .map(str::to_owned);
            for (what, err) in [
                ("runtime", parse_with(&text, &ParseOptions::default()).err()),
                ("contract", contract::check(&text).err()),
            ] {
                let Some(e) = err else {
                    failures.push(format!("{}: {what} accepts it", f.display()));
                    continue;
                };
                let v = &e.violations()[0];
                let named = declared.as_deref().is_none_or(|d| v.message.contains(d));
                let hint = match declared.as_deref() {
                    Some("0.3.0-alpha") => v.message.contains("older than supported"),
                    _ => v.message.contains("agentcell policy migrate"),
                };
                if v.path.to_string() != "version"
                    || !named
                    || !hint
                    || !v.message.contains("1.0.0")
                {
                    failures.push(format!("{}: {what}: {e}", f.display()));
                }
            }
        }
    }
    assert!(n > 250, "only {n} documents");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
