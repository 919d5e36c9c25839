//! Conformance with MXC 1.0's data in `../shared/mxc-conformance-1.0` (read at test time; set
//! `AGENTCELL_MXC_CONFORMANCE_1_0` to use another copy): the contract fixtures of 0.9.0-alpha,
//! 1.0.0 and 1.1.0-alpha for every request root, MXC's JSON Schemas, and the Linux configs.
//! Every fixture is listed with its verdict; a file that fits no folder fails the test.

mod schema_check;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use agentcell_policy::contract::{self, ContractVersion, RequestRoot, current};
use agentcell_policy::plan::{CompileOptions, Host, compile};
use agentcell_policy::{MxcRelease, ParseOptions, ParsedRequest, parse_request, parse_with};
use serde_json::Value;

fn dir() -> PathBuf {
    let d = std::env::var_os("AGENTCELL_MXC_CONFORMANCE_1_0")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/mxc-conformance-1.0")
        });
    assert!(
        d.join("MXC-1.0-NOTES.md").is_file(),
        "MXC 1.0 conformance data not found at {}",
        d.display()
    );
    d
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

const VERSIONS: [(&str, ContractVersion); 3] = [
    ("v0_9_0_alpha", ContractVersion::V0_9Alpha),
    ("v1_0_0", ContractVersion::V1_0),
    ("v1_1_0_alpha", ContractVersion::V1_1Alpha),
];

/// One contract fixture: its version folder, root folder and expected verdict.
struct Fixture {
    rel: String,
    version: ContractVersion,
    root: RequestRoot,
    valid: bool,
    text: String,
}

/// Every file under `contract/`, placed by its path; a file that fits no folder is a failure.
fn fixtures() -> Vec<Fixture> {
    let base = dir().join("contract");
    let mut out = Vec::new();
    let mut misplaced = Vec::new();
    for f in json_files(&base) {
        let rel = f.strip_prefix(&base).unwrap().display().to_string();
        let parts: Vec<&str> = rel.split('/').collect();
        let placed = match parts.as_slice() {
            [v, "fixtures", root, verdict, name] if name.ends_with(".json") => {
                let version = VERSIONS.iter().find(|(d, _)| d == v).map(|(_, v)| *v);
                let root = RequestRoot::ALL
                    .into_iter()
                    .find(|r| r.fixture_dir() == *root);
                let valid = match *verdict {
                    "valid" => Some(true),
                    "invalid" => Some(false),
                    _ => None,
                };
                version.zip(root).zip(valid)
            }
            _ => None,
        };
        match placed {
            Some(((version, root), valid)) => out.push(Fixture {
                text: fs::read_to_string(&f).unwrap(),
                rel,
                version,
                root,
                valid,
            }),
            None => misplaced.push(rel),
        }
    }
    assert!(
        misplaced.is_empty(),
        "contract files that fit no <version>/fixtures/<root>/<valid|invalid>/ folder (they would be skipped): {misplaced:?}"
    );
    out
}

fn schema(version: ContractVersion) -> schema_check::Schema {
    let path = match version {
        ContractVersion::V0_9Alpha => "schemas/stable/mxc-config.schema.0.9.0-alpha.json",
        ContractVersion::V1_0 => "schemas/stable/mxc-config.schema.1.0.0.json",
        ContractVersion::V1_1Alpha => "schemas/dev/mxc-config.schema.1.1.0-alpha.json",
        other => panic!("no schema for {other}"),
    };
    schema_check::Schema::new(
        serde_json::from_str(&fs::read_to_string(dir().join(path)).unwrap()).unwrap(),
    )
}

#[test]
fn contract_fixtures_get_mxcs_verdicts_per_version_and_root() {
    let all = fixtures();
    // The README's counts: a fixture that disappears (or a folder that is not read) fails here.
    let mut counts: BTreeMap<(ContractVersion, RequestRoot), (usize, usize)> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut listing = Vec::new();
    for f in &all {
        let c = counts.entry((f.version, f.root)).or_default();
        if f.valid {
            c.0 += 1;
        } else {
            c.1 += 1;
        }
        let got = contract::check_as(&f.text, f.root);
        let ok = got.is_ok() == f.valid;
        listing.push(format!(
            "{} {:48} {}",
            if ok { "ok  " } else { "FAIL" },
            f.rel,
            match &got {
                Ok(v) => format!("accepted as {} {}", v.version, v.root.as_str()),
                Err(e) => format!("rejected: {}", e.violations()[0]),
            }
        ));
        if !ok {
            failures.push(format!(
                "{}: expected {}, got {:?}",
                f.rel,
                if f.valid { "valid" } else { "invalid" },
                got
            ));
        }
        // MXC's own root selection agrees: valid files carry their markers.
        let selected = contract::check(&f.text);
        match (&selected, f.valid) {
            (Ok(v), true) if v.root == f.root && v.version == f.version => {}
            (Err(_), false) => {}
            (other, _) => failures.push(format!("{}: with MXC's root selection: {other:?}", f.rel)),
        }
        // The version folder matters: another version's parser refuses a valid file.
        if f.valid {
            let value: Value = serde_json::from_str(&f.text).unwrap();
            for (_, other) in VERSIONS.iter().filter(|(_, v)| *v != f.version) {
                if current::check_value_as(&value, *other, Some(f.root)).is_ok() {
                    failures.push(format!("{}: accepted by the {other} contract", f.rel));
                }
            }
        }
    }
    eprintln!(
        "contract fixtures ({}):\n  {}",
        all.len(),
        listing.join("\n  ")
    );
    let want: &[(ContractVersion, RequestRoot, usize, usize)] = &[
        (ContractVersion::V0_9Alpha, RequestRoot::OneShot, 10, 26),
        (
            ContractVersion::V0_9Alpha,
            RequestRoot::IsolationSessionProvision,
            2,
            1,
        ),
        (ContractVersion::V0_9Alpha, RequestRoot::WslcProvision, 2, 2),
        (ContractVersion::V0_9Alpha, RequestRoot::Start, 1, 1),
        (ContractVersion::V0_9Alpha, RequestRoot::Exec, 2, 2),
        (ContractVersion::V0_9Alpha, RequestRoot::Stop, 1, 1),
        (ContractVersion::V0_9Alpha, RequestRoot::Deprovision, 1, 1),
        (ContractVersion::V1_0, RequestRoot::OneShot, 9, 33),
        (
            ContractVersion::V1_0,
            RequestRoot::IsolationSessionProvision,
            3,
            2,
        ),
        (ContractVersion::V1_0, RequestRoot::WslcProvision, 2, 2),
        (ContractVersion::V1_0, RequestRoot::Start, 1, 1),
        (ContractVersion::V1_0, RequestRoot::Exec, 2, 2),
        (ContractVersion::V1_0, RequestRoot::Stop, 1, 1),
        (ContractVersion::V1_0, RequestRoot::Deprovision, 1, 1),
        (ContractVersion::V1_1Alpha, RequestRoot::OneShot, 8, 27),
        (
            ContractVersion::V1_1Alpha,
            RequestRoot::IsolationSessionProvision,
            3,
            2,
        ),
        (ContractVersion::V1_1Alpha, RequestRoot::WslcProvision, 2, 2),
        (ContractVersion::V1_1Alpha, RequestRoot::Start, 1, 1),
        (ContractVersion::V1_1Alpha, RequestRoot::Exec, 2, 2),
        (ContractVersion::V1_1Alpha, RequestRoot::Stop, 1, 1),
        (ContractVersion::V1_1Alpha, RequestRoot::Deprovision, 1, 1),
        (
            ContractVersion::V1_1Alpha,
            RequestRoot::WindowsSandboxProvision,
            1,
            1,
        ),
    ];
    for (v, r, valid, invalid) in want {
        let got = counts.remove(&(*v, *r)).unwrap_or_default();
        if got != (*valid, *invalid) {
            failures.push(format!(
                "{v} {}: {got:?} valid/invalid fixtures read, MXC's data has ({valid}, {invalid})",
                r.as_str()
            ));
        }
    }
    for ((v, r), c) in counts {
        failures.push(format!("{v} {}: {c:?} unexpected fixtures", r.as_str()));
    }
    let total: usize = want.iter().map(|(_, _, a, b)| a + b).sum();
    assert_eq!(total, 170, "the README's 170 fixtures");
    assert_eq!(all.len(), total, "every fixture read exactly once");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Valid contract fixtures that MXC's runtime refuses when it converts the request to run it on
/// Linux (cross-field or backend rules), with the reason. Structural verdicts are the fixtures'.
const RUNTIME_DIFFERS: &[(&str, &str)] = &[
    (
        "one_shot/valid/empty_optional_objects.json",
        "a processContainer section under `process`, which resolves to bubblewrap on Linux",
    ),
    (
        "one_shot/valid/app_container_alias.json",
        "a processContainer section under `process`, which resolves to bubblewrap on Linux",
    ),
];

#[test]
fn runtime_reader_agrees_except_where_mxc_runs_differently() {
    let opts = ParseOptions::executor();
    let mut failures = Vec::new();
    let mut report = Vec::new();
    let mut used = BTreeSet::new();
    for f in fixtures() {
        let got = parse_request(&f.text, &opts);
        if let Ok(ParsedRequest::StateAware(r)) = &got {
            // agentcell judges every root; running one answers MXC's unsupported_phase.
            assert_eq!(r.root, f.root, "{}", f.rel);
            assert_eq!(r.refusal().to_json()["error"]["code"], "unsupported_phase");
        }
        if got.is_ok() == f.valid {
            continue;
        }
        match RUNTIME_DIFFERS
            .iter()
            .find(|(k, _)| f.rel.ends_with(k) && f.valid)
        {
            Some((k, why)) => {
                used.insert(*k);
                report.push(format!("{}: runtime refuses ({why})", f.rel));
            }
            None => failures.push(format!(
                "{}: runtime verdict {:?} differs from the contract, unlisted",
                f.rel,
                got.err().map(|e| e.to_string())
            )),
        }
    }
    for (k, _) in RUNTIME_DIFFERS {
        if !used.contains(k) {
            failures.push(format!("RUNTIME_DIFFERS {k:?} matches nothing: remove it"));
        }
    }
    eprintln!("where MXC's runtime differs:\n  {}", report.join("\n  "));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every mutation of a valid fixture that the generator makes, and a fixture itself.
fn mutations(v: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    let alternatives = [
        Value::Null,
        Value::from("x"),
        Value::from(""),
        Value::from(0),
        Value::from(1),
        Value::from(-1),
        Value::from(65536),
        Value::from(4_294_967_296u64),
        Value::from(true),
        serde_json::json!([]),
        serde_json::json!(["a,b"]),
        serde_json::json!({}),
    ];
    let mut paths = Vec::new();
    collect_paths(v, &mut Vec::new(), &mut paths);
    for p in &paths {
        for alt in &alternatives {
            let mut m = v.clone();
            *pointer_mut(&mut m, p) = alt.clone();
            out.push(m);
        }
        let node = pointer(v, p);
        if let Some(o) = node.as_object() {
            let mut m = v.clone();
            pointer_mut(&mut m, p)
                .as_object_mut()
                .unwrap()
                .insert("zzUnknown".into(), Value::from(1));
            out.push(m);
            for k in o.keys() {
                let mut m = v.clone();
                pointer_mut(&mut m, p).as_object_mut().unwrap().remove(k);
                out.push(m);
            }
        }
        if let Some(a) = node.as_array()
            && let Some(first) = a.first()
        {
            let mut m = v.clone();
            pointer_mut(&mut m, p)
                .as_array_mut()
                .unwrap()
                .push(first.clone());
            out.push(m);
        }
    }
    // Root markers and sections that other roots and versions know.
    for (k, vals) in [
        (
            "containment",
            &[
                "process",
                "processcontainer",
                "appcontainer",
                "lxc",
                "bubblewrap",
                "seatbelt",
                "macos_sandbox",
                "vm",
                "windows_sandbox",
                "microvm",
                "hyperlight",
                "wslc",
                "isolation_session",
                "nvx",
            ][..],
        ),
        (
            "phase",
            &["provision", "start", "exec", "stop", "deprovision", "run"][..],
        ),
        ("version", &["0.9.0-alpha", "1.0.0", "1.1.0-alpha"][..]),
    ] {
        for val in vals {
            let mut m = v.clone();
            m[k] = Value::from(*val);
            out.push(m);
        }
    }
    for section in [
        "fallback",
        "telemetry",
        "test",
        "hyperlight",
        "windowsSandbox",
        "appContainer",
        "macos_sandbox",
        "isolationSession",
        "wslc",
        "experimental",
        "lxc",
    ] {
        let mut m = v.clone();
        m[section] = serde_json::json!({});
        out.push(m);
    }
    out
}

#[derive(Clone)]
enum Step {
    Key(String),
    Index(usize),
}

fn collect_paths(v: &Value, cur: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    if !cur.is_empty() {
        out.push(cur.clone());
    }
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                cur.push(Step::Key(k.clone()));
                collect_paths(x, cur, out);
                cur.pop();
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                cur.push(Step::Index(i));
                collect_paths(x, cur, out);
                cur.pop();
            }
        }
        _ => {}
    }
}

fn pointer<'a>(v: &'a Value, p: &[Step]) -> &'a Value {
    p.iter().fold(v, |v, s| match s {
        Step::Key(k) => &v[k.as_str()],
        Step::Index(i) => &v[*i],
    })
}

fn pointer_mut<'a>(v: &'a mut Value, p: &[Step]) -> &'a mut Value {
    p.iter().fold(v, |v, s| match s {
        Step::Key(k) => &mut v[k.as_str()],
        Step::Index(i) => &mut v[*i],
    })
}

/// Documents with every field of every root (structurally valid, whatever a backend would say),
/// so that the mutations reach fields no fixture uses.
fn seeds(version: ContractVersion) -> Vec<Value> {
    use serde_json::json;
    let v = version.as_str();
    let network = json!({
        "egress": {"default": "deny",
            "allow": [{"to": [{"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}],
                       "ports": [{"protocol": "tcp", "port": 443, "endPort": 444}]}],
            "deny": [{"to": [{"cidr": "10.2.0.0/16"}], "ports": [{"protocol": "icmp"}]}]},
        "ingress": {"default": "deny", "hostLoopback": "deny"}
    });
    let process = json!({"commandLine": "x", "cwd": "/w", "env": ["A=b"],
        "inheritDefaultEnv": true, "timeout": 5});
    let pc = json!({"capabilities": ["internetClient"],
        "captureDenials": {"mode": "block", "outputPath": "/o", "retainEtl": false},
        "filesystem": {"enumeratePaths": ["/e"]}, "learningMode": false, "leastPrivilege": true,
        "network": {"allowedProxyPeer": "p"},
        "ui": {"desktopSystemControl": false, "ime": false, "isolation": "container",
               "systemSettings": "none"}});
    let seatbelt = json!({"extraMachLookups": ["a"], "guiAccess": true, "keychainAccess": false,
        "nestedPty": false, "profileOverride": "p"});
    let mut one_shot = json!({
        "$schema": "s", "_comment": {"a": null}, "version": v, "containerId": "c",
        "containment": "processcontainer",
        "filesystem": {"readwritePaths": ["/w"], "readonlyPaths": ["/r"], "deniedPaths": ["/d"]},
        "lifecycle": {"destroyOnExit": true, "preservePolicy": false},
        "lxc": {"distribution": "alpine", "release": "3.23"},
        "network": network, "process": process, "processContainer": pc,
        "runtimeConfig": {"networkProxy": "http://127.0.0.1:8080"},
        "seatbelt": seatbelt, "telemetry": {"enabled": false},
        "ui": {"clipboard": "read", "disable": false, "injection": false},
        "wslc": {"cpuCount": 2, "gpu": false, "image": "i", "imageTarPath": "t", "memoryMb": 4096,
                 "portMappings": [{"windowsPort": 8080, "containerPort": 80, "protocol": "tcp"}],
                 "storagePath": "s", "targetOs": "linux"}
    });
    match version {
        ContractVersion::V1_1Alpha => {
            one_shot["hyperlight"] = json!({"runtime": "python"});
            one_shot["test"] = json!({"message": "m"});
            one_shot["windowsSandbox"] =
                json!({"daemonPipeName": "d", "idleTimeout": 1, "idleTimeoutMs": 2});
        }
        _ => one_shot["fallback"] = json!({"allowDaclMutation": false}),
    }
    let mut out = vec![one_shot.clone()];
    if version == ContractVersion::V0_9Alpha {
        let mut alias = one_shot.clone();
        let o = alias.as_object_mut().unwrap();
        let pc = o.remove("processContainer").unwrap();
        let sb = o.remove("seatbelt").unwrap();
        o.insert("appContainer".into(), pc);
        o.insert("macos_sandbox".into(), sb);
        o.insert("containment".into(), json!("appcontainer"));
        out.push(alias);
    }
    out.push(json!({"version": v, "containment": "isolation_session", "process": {"commandLine": "x"},
        "network": {"egress": {"default": "allow"}, "ingress": {"default": "allow", "hostLoopback": "allow"}}}));
    for phase in ["start", "stop", "deprovision"] {
        out.push(
            json!({"$schema": "s", "_comment": 1, "version": v, "phase": phase,
            "sandboxId": "iso:1", "telemetry": {"enabled": true}}),
        );
    }
    out.push(
        json!({"$schema": "s", "_comment": 1, "version": v, "phase": "exec",
        "sandboxId": "wslc:1", "process": process, "network": network,
        "runtimeConfig": {"networkProxy": "http://p:1"}, "telemetry": {"enabled": true}}),
    );
    out.push(json!({"$schema": "s", "_comment": 1, "version": v, "phase": "provision",
        "containment": "isolation_session", "isolationSession": {"provision": {"appId": "a"}},
        "network": {"egress": {"default": "allow"}, "ingress": {"default": "allow", "hostLoopback": "allow"}},
        "telemetry": {"enabled": true}}));
    let mut wslc = json!({"image": "i", "imageTarPath": "t"});
    if version == ContractVersion::V1_1Alpha {
        wslc["portMappings"] = json!([{"windowsPort": 1, "containerPort": 2}]);
    }
    out.push(
        json!({"$schema": "s", "_comment": 1, "version": v, "phase": "provision",
        "containment": "wslc", "filesystem": {"readwritePaths": ["/w"]}, "network": network,
        "wslc": {"provision": wslc}, "telemetry": {"enabled": true}}),
    );
    if version == ContractVersion::V1_1Alpha {
        out.push(
            json!({"$schema": "s", "_comment": 1, "version": v, "phase": "provision",
            "containment": "windows_sandbox", "filesystem": {"readonlyPaths": ["/r"]},
            "telemetry": {"enabled": true}}),
        );
    }
    out
}

/// Every property name MXC's schemas define (inserted into every object by the generator).
fn property_names() -> Vec<String> {
    fn walk(v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(o) => {
                if let Some(Value::Object(p)) = o.get("properties") {
                    out.extend(p.keys().cloned());
                }
                o.values().for_each(|x| walk(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut names = BTreeSet::new();
    for p in [
        "schemas/stable/mxc-config.schema.0.9.0-alpha.json",
        "schemas/stable/mxc-config.schema.1.0.0.json",
        "schemas/dev/mxc-config.schema.1.1.0-alpha.json",
    ] {
        let v: Value = serde_json::from_str(&fs::read_to_string(dir().join(p)).unwrap()).unwrap();
        walk(&v, &mut names);
    }
    names.into_iter().collect()
}

/// Each known property name inserted into each object of `v`.
fn insertions(v: &Value, names: &[String]) -> Vec<Value> {
    let mut paths = vec![Vec::new()];
    collect_paths(v, &mut Vec::new(), &mut paths);
    let mut out = Vec::new();
    for p in &paths {
        let Some(o) = pointer(v, p).as_object() else {
            continue;
        };
        for n in names.iter().filter(|n| !o.contains_key(n.as_str())) {
            for val in [Value::from(true), Value::from("x"), serde_json::json!({})] {
                let mut m = v.clone();
                pointer_mut(&mut m, p)
                    .as_object_mut()
                    .unwrap()
                    .insert(n.clone(), val);
                out.push(m);
            }
        }
    }
    out
}

/// The shapes agree with MXC's JSON Schemas on every fixture and on generated documents: each
/// valid fixture and a document with every field of every root (per version), mutated (each
/// node replaced by null or another type, each key removed, an unknown key and every property
/// name MXC knows inserted into each object, markers and sections of other roots and versions).
#[test]
fn shapes_agree_with_mxcs_schemas_on_generated_documents() {
    let schemas: Vec<(ContractVersion, schema_check::Schema)> =
        VERSIONS.iter().map(|(_, v)| (*v, schema(*v))).collect();
    let mut checked = 0usize;
    let mut disagreements = Vec::new();
    let mut seen = BTreeSet::new();
    let fixtures = fixtures();
    let names = property_names();
    let mut inputs: Vec<(String, Value, bool)> = fixtures
        .iter()
        .map(|f| {
            (
                f.rel.clone(),
                serde_json::from_str(&f.text).unwrap(),
                f.valid,
            )
        })
        .collect();
    for (_, v) in VERSIONS {
        for (i, seed) in seeds(v).into_iter().enumerate() {
            let schema = &schemas.iter().find(|(s, _)| *s == v).unwrap().1;
            assert!(
                schema.accepts(&seed),
                "seed {i} of {v} is not valid: {seed}"
            );
            inputs.push((format!("seed {i} of {v}"), seed, true));
        }
    }
    for (rel, value, valid) in &inputs {
        let mut docs = vec![value.clone()];
        if *valid {
            docs.extend(mutations(value));
            if rel.starts_with("seed") {
                docs.extend(insertions(value, &names));
            }
        }
        for doc in docs {
            let key = doc.to_string();
            if !seen.insert(key.clone()) {
                continue;
            }
            let Some(declared) = doc
                .get("version")
                .and_then(Value::as_str)
                .and_then(ContractVersion::parse_exact)
                .filter(|v| v.is_registered())
            else {
                // Stage 1 refuses it whatever the shapes say; the schemas agree (Version enum).
                assert!(contract::check_value(&doc).is_err(), "{key}");
                continue;
            };
            let schema = &schemas.iter().find(|(v, _)| *v == declared).unwrap().1;
            let theirs = schema.accepts(&doc);
            let ours = contract::check_value(&doc);
            checked += 1;
            if theirs != ours.is_ok() {
                disagreements.push(format!(
                    "{} (from {}): schema {} agentcell {:?}",
                    key,
                    rel,
                    if theirs { "accepts" } else { "rejects" },
                    ours.map_err(|e| e.to_string())
                ));
            }
        }
    }
    eprintln!(
        "{checked} documents checked against MXC's schemas ({} fixtures)",
        fixtures.len()
    );
    assert!(checked > 50_000, "only {checked} documents generated");
    assert!(
        disagreements.is_empty(),
        "{} disagreement(s):\n{}",
        disagreements.len(),
        disagreements[..disagreements.len().min(40)].join("\n")
    );
}

/// The expected outcome of a config in `configs/` (see the README's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Declares 0.7/0.8: refused at `version` (retired), with the migration hint.
    Retired,
    /// Refused by the parser (MXC's Linux backend refuses it at validation).
    Refused,
    /// Accepted and compiled to a full plan on a host that can enforce everything.
    Runs,
}

/// Configs whose name (0.9-era expectation) no longer matches what MXC 1.0's rules say, with the
/// verdict agentcell gives and why.
const STALE_NAMES: &[(&str, Expect, &str)] = &[
    (
        "bubblewrap_network_localnet_omitted_rejected.json",
        Expect::Runs,
        "0.9-era: egress allow shared the host network namespace, where an (implicit) ingress deny \
         was not enforceable. MXC 1.0's bubblewrap never falls back to the host namespace: the same \
         network section (bubblewrap_network_dns_stub.json) is accepted and runs in a private one",
    ),
    (
        "bubblewrap_network_localnet_shared_rejected.json",
        Expect::Runs,
        "as localnet_omitted_rejected: the network of bubblewrap_network_dns_stub.json, accepted by \
         the newer script",
    ),
    (
        "bubblewrap_network_hostrules_unenforced_rejected.json",
        Expect::Runs,
        "refused where no firewall can enforce the host rule: agentcell's nftables fence does on a \
         host with nftables, and refuses it on one without (checked below)",
    ),
    (
        "bubblewrap_network_localnet_acknowledged.json",
        Expect::Refused,
        "0.9-era acknowledgement of the shared namespace; MXC 1.0's bubblewrap refuses \
         ingress.default 'allow'",
    ),
];

fn expectation(name: &str, text: &str) -> Expect {
    if let Some((_, e, _)) = STALE_NAMES.iter().find(|(n, _, _)| *n == name) {
        return *e;
    }
    let v: Value = serde_json::from_str(text).unwrap();
    let declared = v["version"].as_str().unwrap_or_default();
    if declared.starts_with("0.7.") || declared.starts_with("0.8.") {
        return Expect::Retired;
    }
    if name.contains("_rejected")
        || ["SHOULD_NOT_RUN", "this-should-never-run"]
            .iter()
            .any(|s| text.contains(s))
    {
        return Expect::Refused;
    }
    Expect::Runs
}

fn fill(text: &str) -> String {
    text.replace("{{LISTENER_PORT}}", "18080")
        .replace("{{ALLOWED_PORT}}", "18081")
        .replace("{{PROXY_HOST}}", "127.0.0.1")
        .replace("{{PROXY_PORT}}", "13128")
        .replace("{{CONTROL_PORT}}", "18082")
        .replace("{{TARGET_IP}}", "198.18.0.2")
        .replace("{{TARGET_PORT}}", "18083")
}

#[test]
fn linux_configs_get_the_verdicts_mxc_1_0_gives() {
    let base = dir().join("configs");
    let mut failures = Vec::new();
    let mut listing = Vec::new();
    let files = json_files(&base);
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let text = fill(&fs::read_to_string(f).unwrap());
        let want = expectation(&name, &text);
        let got = parse_with(&text, &ParseOptions::executor());
        let verdict = match (&got, want) {
            (Err(e), Expect::Retired) => {
                let v = &e.violations()[0];
                if v.path.to_string() != "version"
                    || !v.message.contains("retired")
                    || !v.message.contains("agentcell policy migrate")
                {
                    failures.push(format!("{name}: retired, but refused as {e}"));
                }
                "refused: retired version"
            }
            (Err(_), Expect::Refused) => "refused by the parser",
            (Ok(doc), Expect::Runs) => {
                match compile(doc, &Host::reference(), &CompileOptions::default()) {
                    Ok(_) => "accepted; compiles",
                    Err(e) => {
                        failures.push(format!("{name}: accepted but does not compile: {e}"));
                        "accepted; compile FAILED"
                    }
                }
            }
            (got, want) => {
                failures.push(format!(
                    "{name}: expected {want:?}, got {:?}",
                    got.as_ref().map(|_| "accepted").map_err(|e| e.to_string())
                ));
                "WRONG"
            }
        };
        listing.push(format!("{name:62} {want:?}: {verdict}"));
        // Under --mxc-release 0.8, a retired config is read as MXC 0.8 read it.
        if want == Expect::Retired {
            let opts = ParseOptions {
                release: MxcRelease::V0_8,
                allow_testing_features: true,
                ..ParseOptions::executor()
            };
            if let Err(e) = parse_with(&text, &opts)
                && e.violations()[0].path.to_string() == "version"
            {
                failures.push(format!(
                    "{name}: --mxc-release 0.8 still refuses its version: {e}"
                ));
            }
        }
    }
    // The host-rules config is refused where nothing can enforce it.
    let text =
        fs::read_to_string(base.join("bubblewrap_network_hostrules_unenforced_rejected.json"))
            .unwrap();
    let doc = parse_with(&text, &ParseOptions::executor()).unwrap();
    let no_fence = Host {
        nftables: false,
        ..Host::reference()
    };
    assert!(
        compile(&doc, &no_fence, &CompileOptions::default()).is_err(),
        "host rules without a firewall must be refused"
    );
    eprintln!(
        "configs ({}):\n  {}\nnames whose 0.9-era verdict changed:\n  {}",
        files.len(),
        listing.join("\n  "),
        STALE_NAMES
            .iter()
            .map(|(n, e, why)| format!("{n}: {e:?}: {why}"))
            .collect::<Vec<_>>()
            .join("\n  ")
    );
    assert_eq!(files.len(), 91, "the README's 91 configs");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_preset_is_valid_1_0_and_fully_enforceable_on_a_reference_host() {
    for (name, _, text) in agentcell_policy::presets::PRESETS {
        let doc =
            parse_with(text, &ParseOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(doc.version.to_string(), "1.0.0", "{name}");
        compile(&doc, &Host::reference(), &CompileOptions::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let on_disk = fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("presets/{name}.json")),
        )
        .unwrap();
        assert_eq!(&on_disk, text);
    }
}
