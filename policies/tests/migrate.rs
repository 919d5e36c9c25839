//! `policy migrate`'s properties: for every migratable retired document (MXC's whole 0.6–0.8
//! corpus in `../shared/mxc-conformance`, and generated ones), the migrated document is valid
//! 1.0.0, its plan equals the original's under `--mxc-release 0.8` (filesystem view, Landlock,
//! rules per address family, process settings), and its digest does not depend on key order or
//! whitespace. Refusals name a field.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use agentcell_policy::migrate::{MigrateError, migrate};
use agentcell_policy::plan::net::{Dest, Family, L4, NetRule, Verdict};
use agentcell_policy::plan::{CompileOptions, Host, Plan, compile};
use agentcell_policy::{MxcRelease, ParseOptions, canonical, contract, parse_with};
use proptest::prelude::*;
use serde_json::Value;

fn corpus() -> PathBuf {
    std::env::var_os("AGENTCELL_MXC_CONFORMANCE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/mxc-conformance")
        })
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

fn fill(text: &str) -> String {
    text.replace("{{LISTENER_PORT}}", "18080")
        .replace("{{ALLOWED_PORT}}", "18081")
        .replace("{{PROXY_HOST}}", "127.0.0.1")
        .replace("{{PROXY_PORT}}", "13128")
        .replace("{{SANDBOX_ID}}", "wslc:0123456789abcdef0123456789abcdef")
}

fn opts(text: &str, release: MxcRelease) -> ParseOptions {
    ParseOptions {
        require_command: text.contains("\"commandLine\""),
        allow_testing_features: release == MxcRelease::V0_8,
        release,
        ..ParseOptions::default()
    }
}

/// Egress rules of one family, as a set, with MXC 0.8's LXC DNS exemption written as the rules it
/// is; `None` when drops and accepts interleave (order would matter).
fn rules(p: &Plan, family: Family) -> Option<BTreeSet<String>> {
    let mut v: Vec<NetRule> = p.network.egress.clone();
    if p.network.dns_exemption {
        for (net, l4) in [
            ("0.0.0.0/0", L4::Udp),
            ("0.0.0.0/0", L4::Tcp),
            ("::/0", L4::Udp),
            ("::/0", L4::Tcp),
        ] {
            v.push(NetRule {
                verdict: Verdict::Accept,
                dest: Dest::Net(net.parse().unwrap()),
                l4,
                ports: Some((53, 53)),
                origin: String::new(),
            });
        }
    }
    let first_accept = v.iter().position(|r| r.verdict == Verdict::Accept);
    if let Some(i) = first_accept
        && v[i..].iter().any(|r| r.verdict == Verdict::Drop)
    {
        return None;
    }
    Some(
        v.iter()
            .filter(|r| match &r.dest {
                Dest::Net(n) => (family == Family::Ipv4) == n.addr().is_ipv4(),
                Dest::Name(_) => true,
            })
            .map(|r| format!("{:?} {:?} {:?} {:?}", r.verdict, r.dest, r.l4, r.ports))
            .collect(),
    )
}

/// What the plans enforce, without where each item came from.
fn same_plan(a: &Plan, b: &Plan) -> Result<(), String> {
    let strip = |v: Value| -> Value {
        fn walk(v: Value) -> Value {
            match v {
                Value::Object(o) => Value::Object(
                    o.into_iter()
                        .filter(|(k, _)| k != "origins" && k != "origin")
                        .map(|(k, v)| (k, walk(v)))
                        .collect(),
                ),
                Value::Array(a) => Value::Array(a.into_iter().map(walk).collect()),
                o => o,
            }
        }
        walk(v)
    };
    let j = |x: &dyn erased::Ser| strip(x.to_value());
    let mut diffs = Vec::new();
    if j(&a.filesystem) != j(&b.filesystem) {
        diffs.push("filesystem view".to_string());
    }
    if j(&a.landlock) != j(&b.landlock) {
        diffs.push("landlock".to_string());
    }
    if j(&a.seccomp) != j(&b.seccomp) {
        diffs.push("seccomp".to_string());
    }
    let (na, nb) = (&a.network, &b.network);
    for (what, same) in [
        ("egress default", na.egress_default == nb.egress_default),
        ("ingress default", na.ingress_default == nb.ingress_default),
        ("host loopback", na.host_loopback == nb.host_loopback),
        ("proxy", na.proxy == nb.proxy),
        ("names", na.resolve_at_start == nb.resolve_at_start),
        ("uplink", na.needs_uplink == nb.needs_uplink),
    ] {
        if !same {
            diffs.push(format!("network {what}"));
        }
    }
    for f in [Family::Ipv4, Family::Ipv6] {
        let (ra, rb) = (rules(a, f), rules(b, f));
        if ra.is_none() || ra != rb {
            diffs.push(format!("{f:?} rules: {ra:?} vs {rb:?}"));
        }
    }
    let (pa, pb) = (&a.process, &b.process);
    let mut ea = pa.env.clone();
    let mut eb = pb.env.clone();
    ea.sort();
    eb.sort();
    for (what, same) in [
        ("command", pa.command_line == pb.command_line),
        ("env", ea == eb),
        ("cwd", pa.cwd == pb.cwd),
        ("timeout", pa.timeout_ms == pb.timeout_ms),
        (
            "limits",
            (
                pa.pids_max,
                pa.memory_max,
                pa.no_new_privileges,
                &pa.capabilities,
            ) == (
                pb.pids_max,
                pb.memory_max,
                pb.no_new_privileges,
                &pb.capabilities,
            ),
        ),
    ] {
        if !same {
            diffs.push(format!("process {what}"));
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(diffs.join(", "))
    }
}

mod erased {
    pub trait Ser {
        fn to_value(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Ser for T {
        fn to_value(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap()
        }
    }
}

/// `v` written with its keys in reverse order and `pad` between every token.
fn respell(v: &Value, pad: &str) -> String {
    match v {
        Value::Object(o) => {
            let parts: Vec<String> = o
                .iter()
                .rev()
                .map(|(k, x)| {
                    format!(
                        "{pad}{}{pad}:{pad}{}",
                        Value::from(k.as_str()),
                        respell(x, pad)
                    )
                })
                .collect();
            format!("{{{}{pad}}}", parts.join(","))
        }
        Value::Array(a) => {
            let parts: Vec<String> = a
                .iter()
                .map(|x| format!("{pad}{}", respell(x, pad)))
                .collect();
            format!("[{}{pad}]", parts.join(","))
        }
        other => other.to_string(),
    }
}

/// Checks one migration of `text`: validity, plan equality, digest stability. `Err` explains.
fn check_migrated(text: &str, migrated: &Value, host: &Host) -> Result<(), String> {
    let out = serde_json::to_string_pretty(migrated).unwrap();
    let new = parse_with(&out, &opts(text, MxcRelease::V1_0))
        .map_err(|e| format!("the migrated document is refused: {e}\n{out}"))?;
    if new.version.to_string() != "1.0.0" {
        return Err(format!("migrated to {}", new.version));
    }
    if text.contains("\"commandLine\"")
        && let Err(e) = contract::check(&out)
    {
        return Err(format!("not valid 1.0.0 under the contract: {e}\n{out}"));
    }
    let old = parse_with(text, &opts(text, MxcRelease::V0_8)).unwrap();
    let co = CompileOptions::default();
    match (compile(&old, host, &co), compile(&new, host, &co)) {
        (Ok(a), Ok(b)) => same_plan(&a, &b).map_err(|d| format!("plans differ: {d}\n{out}"))?,
        (Err(_), Err(_)) => {}
        (a, b) => {
            return Err(format!(
                "compile differs: original {:?}, migrated {:?}\n{out}",
                a.err().map(|e| e.to_string()),
                b.err().map(|e| e.to_string())
            ));
        }
    }
    let d1 = canonical::digest(&new);
    for pad in ["", " ", "\n\t "] {
        let again = parse_with(&respell(migrated, pad), &opts(text, MxcRelease::V1_0))
            .map_err(|e| format!("respelled: {e}"))?;
        if canonical::digest(&again) != d1 {
            return Err(format!("digest changes with key order/whitespace {pad:?}"));
        }
    }
    Ok(())
}

#[test]
fn every_migratable_corpus_document_keeps_its_plan() {
    let host = Host::reference();
    let mut migrated = Vec::new();
    let mut refused = Vec::new();
    let mut failures = Vec::new();
    for sub in ["configs", "examples", "contract"] {
        for f in json_files(&corpus().join(sub)) {
            let rel = f.strip_prefix(corpus()).unwrap().display().to_string();
            if rel.contains("/invalid/") {
                continue;
            }
            let text = fill(&fs::read_to_string(&f).unwrap());
            if parse_with(&text, &opts(&text, MxcRelease::V0_8)).is_err()
                && !text.contains("\"phase\"")
            {
                // MXC 0.8 refused it: migrate must too, naming why.
                match migrate(&text, &opts(&text, MxcRelease::V1_0), "1.0.0") {
                    Err(MigrateError::Invalid(_)) => {
                        refused.push(format!("{rel}: invalid under MXC 0.8"))
                    }
                    other => {
                        failures.push(format!("{rel}: invalid under 0.8, migrate gave {other:?}"))
                    }
                }
                continue;
            }
            match migrate(&text, &opts(&text, MxcRelease::V1_0), "1.0.0") {
                Ok(m) if text.contains("\"phase\"") => {
                    if let Err(e) = contract::check_value(&m.document) {
                        failures.push(format!("{rel}: migrated state-aware request invalid: {e}"));
                    }
                    migrated.push(rel);
                }
                Ok(m) => match check_migrated(&text, &m.document, &host) {
                    Ok(()) => migrated.push(rel),
                    Err(e) => failures.push(format!("{rel}: {e}")),
                },
                Err(e) => {
                    let v = e.violations();
                    if v.is_empty() || v.iter().any(|v| v.message.is_empty()) {
                        failures.push(format!("{rel}: refused without a reason"));
                    }
                    refused.push(format!(
                        "{rel}: {}",
                        v.iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; ")
                    ));
                }
            }
        }
    }
    eprintln!(
        "migrated ({}):\n  {}\nnot migrated ({}):\n  {}",
        migrated.len(),
        migrated.join("\n  "),
        refused.len(),
        refused.join("\n  ")
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(migrated.len() >= 100, "only {} migrated", migrated.len());
}

#[test]
fn refusals_name_every_field_without_an_equivalent() {
    let o = ParseOptions::executor();
    let e = migrate(
        r#"{"version":"0.7.0-alpha","process":{"commandLine":"x"},"network":{"defaultPolicy":"block","enforcementMode":"firewall","allowedHosts":["api.github.com","10.0.0.0/8","example.com"],"proxy":null}}"#,
        &o,
        "1.0.0",
    )
    .unwrap_err();
    let paths: Vec<String> = e.violations().iter().map(|v| v.path.to_string()).collect();
    assert_eq!(
        paths,
        ["network.allowedHosts[0]", "network.allowedHosts[2]"],
        "{e}"
    );
    let e = migrate(
        r#"{"version":"0.6.0-alpha","process":{"commandLine":"x"},"network":{"defaultPolicy":"allow","proxy":{"url":"http://proxy.example:3128"}}}"#,
        &o,
        "1.0.0",
    )
    .unwrap_err();
    assert!(e.to_string().contains("loopback"), "{e}");
    let e = migrate(
        r#"{"version":"0.6.0-alpha","process":{"commandLine":"x"},"network":{"proxy":{"builtinTestServer":true}}}"#,
        &o,
        "1.0.0",
    )
    .unwrap_err();
    assert_eq!(
        e.violations()[0].path.to_string(),
        "network.proxy.builtinTestServer"
    );
    // Valid in 1.0 only where MXC 1.0's backend takes it: bubblewrap has no permissive inbound.
    let e = migrate(
        r#"{"version":"0.8.0-alpha","process":{"commandLine":"x"},"network":{"defaultPolicy":"allow","allowLocalNetwork":true}}"#,
        &o,
        "1.0.0",
    )
    .unwrap_err();
    assert!(matches!(e, MigrateError::Refused(_)), "{e}");
    assert!(e.to_string().contains("network.ingress.default"), "{e}");
    assert!(matches!(
        migrate(
            r#"{"version":"1.0.0","process":{"commandLine":"x"}}"#,
            &o,
            "1.0.0"
        ),
        Err(MigrateError::AlreadyCurrent(_))
    ));
    assert!(matches!(
        migrate(
            r#"{"version":"0.8.0-alpha","process":{"commandLine":"x"}}"#,
            &o,
            "1.1.0-alpha"
        ),
        Err(MigrateError::Target(_))
    ));
}

#[test]
fn a_migration_reads_as_expected() {
    let m = migrate(
        r#"{"version":"0.7.0-alpha","containment":"lxc","lxc":{"distribution":"alpine","release":"3.23"},
           "process":{"commandLine":"x","cwd":null},
           "network":{"defaultPolicy":"block","enforcementMode":"firewall","allowedHosts":["140.82.112.5/20","::ffff:1.2.3.4"]}}"#,
        &ParseOptions::executor(),
        "1.0.0",
    )
    .unwrap();
    assert_eq!(
        m.document,
        serde_json::json!({
            "version": "1.0.0",
            "containment": "lxc",
            "lxc": {"distribution": "alpine", "release": "3.23"},
            "process": {"commandLine": "x", "env": []},
            "network": {
                "egress": {"default": "deny", "allow": [
                    {"to": [{"cidr": "140.82.112.0/20"}, {"cidr": "1.2.3.4/32"}]},
                    {"ports": [{"protocol": "udp", "port": 53}, {"protocol": "tcp", "port": 53}]}
                ]},
                "ingress": {"default": "deny", "hostLoopback": "deny"}
            }
        })
    );
    assert!(m.notes.iter().any(|n| n.message.contains("DNS")));
}

fn legacy_doc() -> impl Strategy<Value = String> {
    let host = prop_oneof![
        (0u8..=255, 0u8..=255, 0u8..=32).prop_map(|(a, b, l)| format!("198.{a}.{b}.7/{l}")),
        (0u8..=255).prop_map(|a| format!("10.0.0.{a}")),
        (0u16..=0xffff, 16u8..=128).prop_map(|(a, l)| format!("fd00:{a:x}::1/{l}")),
        Just("::ffff:198.18.0.1".to_string()),
        Just("api.github.com".to_string()),
    ];
    (
        prop::sample::select(vec!["0.6.0-alpha", "0.7.0-alpha", "0.8.0-alpha", ""]),
        prop::sample::select(vec!["bubblewrap", "lxc", "process"]),
        prop::option::of(prop::sample::select(vec!["allow", "block"])),
        prop::option::of(prop::sample::select(vec![
            "capabilities",
            "firewall",
            "both",
        ])),
        prop::collection::vec(host.clone(), 0..4),
        prop::collection::vec(host, 0..3),
        prop::option::of(any::<bool>()),
        prop::option::of(prop::collection::vec("[A-Z]{1,3}=[a-z]{0,3}", 0..3)),
        prop::collection::vec(
            prop::sample::select(vec!["/w", "/w/a", "/r", "/tmp/x"]),
            0..3,
        ),
        prop::option::of(0u32..100_000),
    )
        .prop_map(|(v, c, dp, em, allowed, blocked, aln, env, rw, timeout)| {
            let mut d = serde_json::json!({"process": {"commandLine": "true"}, "containment": c});
            if !v.is_empty() {
                d["version"] = v.into();
            }
            if c == "lxc" {
                d["lxc"] = serde_json::json!({"distribution": "alpine", "release": "3.23"});
            }
            let mut n = serde_json::json!({});
            if let Some(dp) = dp {
                n["defaultPolicy"] = dp.into();
            }
            if let Some(em) = em {
                n["enforcementMode"] = em.into();
            }
            if !allowed.is_empty() {
                n["allowedHosts"] = allowed.into();
            }
            if !blocked.is_empty() {
                n["blockedHosts"] = blocked.into();
            }
            if let Some(a) = aln {
                n["allowLocalNetwork"] = a.into();
            }
            if n.as_object().is_some_and(|o| !o.is_empty()) {
                d["network"] = n;
            }
            if let Some(env) = env {
                d["process"]["env"] = env.into();
            }
            if let Some(t) = timeout {
                d["process"]["timeout"] = t.into();
            }
            if !rw.is_empty() {
                d["filesystem"] = serde_json::json!({"readwritePaths": rw});
            }
            d.to_string()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    /// Generated retired documents: whatever migrate accepts keeps its plan, is valid 1.0.0 and has
    /// a spelling-independent digest; what it refuses, it refuses naming a field.
    #[test]
    fn generated_retired_documents(text in legacy_doc()) {
        let o = ParseOptions::executor();
        match migrate(&text, &o, "1.0.0") {
            Ok(m) => {
                if let Err(e) = check_migrated(&text, &m.document, &Host::reference()) {
                    prop_assert!(false, "{text}: {e}");
                }
            }
            Err(e) => prop_assert!(!e.violations().is_empty(), "{text}: {e}"),
        }
    }
}
