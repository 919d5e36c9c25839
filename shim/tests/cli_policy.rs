//! The `agentcell policy` CLI as a user runs it: exit codes, `FILE: PATH: message` errors, JSON.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn agentcell(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agentcell"))
        .args(args)
        .output()
        .expect("run agentcell")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("agentcell-cli-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn check_reports_each_error_with_file_and_json_path() {
    let d = tmpdir("check");
    let good = write(
        &d,
        "good.json",
        r#"{"version":"1.0.0","process":{"commandLine":"true"}}"#,
    );
    let bad = write(
        &d,
        "bad.json",
        r#"{"version":"1.0.0","process":{"commandLine":"true"},
            "network":{"egress":{"allow":[{"to":[{"cidr":"10.2.0.0/16"},{"cidr":"10.0.0.0/16","except":["10.1.0.0/16"]}]}]}}}"#,
    );
    let out = agentcell(&[
        "policy",
        "check",
        good.to_str().unwrap(),
        bad.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}: network.egress.allow[0].to[1].except[0]: 10.1.0.0/16 is not inside 10.0.0.0/16",
            bad.display()
        )),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{}: ok", good.display())));

    let out = agentcell(&["policy", "check", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn check_json_gives_one_object_per_file() {
    let d = tmpdir("json");
    let bad = write(
        &d,
        "dup.json",
        r#"{"version":"1.0.0","process":{"commandLine":"a","commandLine":"b"}}"#,
    );
    let out = agentcell(&[
        "policy",
        "check",
        "--json",
        "preset:offline",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["valid"], true);
    assert!(
        lines[0]["document"]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert_eq!(lines[1]["valid"], false);
    assert_eq!(lines[1]["errors"][0]["path"], "process.commandLine");
    assert!(
        lines[1]["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("duplicate")
    );
}

#[test]
fn contract_mode_applies_the_published_contract() {
    let d = tmpdir("contract");
    // Structurally valid 1.0.0, refused by MXC's bubblewrap rules when run.
    let f = write(
        &d,
        "inbound.json",
        r#"{"version":"1.0.0","process":{"commandLine":"x"},"network":{"ingress":{"default":"allow"}}}"#,
    );
    let out = agentcell(&["policy", "check", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(
        ": network.ingress.default: Bubblewrap: network.ingress.default='allow' is not supported"
    ));
    let out = agentcell(&["policy", "check", "--contract", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (contract 1.0.0 one-shot"));
    // Every root: a state-aware request's contract, and its typed verdict.
    let e = write(
        &d,
        "exec.json",
        r#"{"version":"1.0.0","phase":"exec","sandboxId":"wslc:0123","process":{"commandLine":"echo"}}"#,
    );
    let out = agentcell(&["policy", "check", "--contract", e.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (contract 1.0.0 exec"));
    let out = agentcell(&["policy", "check", "--json", e.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["document"]["root"], "exec");
    assert_eq!(v["document"]["containment"], "wslc");
    assert_eq!(v["document"]["run"]["error"]["code"], "unsupported_phase");
    let bad = write(
        &d,
        "start.json",
        r#"{"version":"1.0.0","phase":"start","sandboxId":"iso:1","process":{"commandLine":"echo"}}"#,
    );
    let out = agentcell(&["policy", "check", "--contract", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(": process: unknown field for a 1.0.0 start request")
    );
    // The retired contracts under --mxc-release 0.8: MXC 0.8's runtime keeps `experimental` open,
    // its 0.7 contract does not.
    let old = write(
        &d,
        "exp.json",
        r#"{"version":"0.7.0-alpha","process":{"commandLine":"x"},"experimental":{"test":{}}}"#,
    );
    let compat = ["--mxc-release", "0.8"];
    let run = |extra: &[&str]| {
        let mut a = vec!["policy", "check"];
        a.extend(extra);
        a.extend(compat);
        a.push(old.to_str().unwrap());
        agentcell(&a)
    };
    assert_eq!(run(&[]).status.code(), Some(0));
    let out = run(&["--contract"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(": experimental: "));
}

/// A retired document is refused by default, naming its version, the supported ones and the
/// migration command; `--mxc-release 0.8` reads it as MXC 0.8 did, and says so.
#[test]
fn retired_documents_need_the_compatibility_setting_or_migrate() {
    let d = tmpdir("retired");
    let f = write(
        &d,
        "old.json",
        r#"{"version":"0.8.0-alpha","process":{"commandLine":"true"},"network":{"defaultPolicy":"block","enforcementMode":"firewall","allowedHosts":["198.18.0.0/15"]}}"#,
    );
    for cmd in [
        &["policy", "check"][..],
        &["policy", "explain", "--host", "reference"],
        &["policy", "digest"],
        &["policy", "check", "--contract"],
    ] {
        let mut a = cmd.to_vec();
        a.push(f.to_str().unwrap());
        let out = agentcell(&a);
        assert_eq!(out.status.code(), Some(2), "{cmd:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "{}: version: \"0.8.0-alpha\" is a retired MXC contract version",
                f.display()
            )) && err.contains("0.9.0-alpha, 1.0.0 and 1.1.0-alpha")
                && err.contains("agentcell policy migrate"),
            "{cmd:?}: {err}"
        );
    }
    let out = agentcell(&["exec", "--json", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(125));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["field"], "version");
    let out = agentcell(&[
        "policy",
        "check",
        "--json",
        "--mxc-release",
        "0.8",
        f.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["document"]["mxcRelease"], "0.8");
    assert!(
        v["document"]["readAs"]
            .as_str()
            .unwrap()
            .contains("read as MXC 0.8 read it")
    );
    let out = agentcell(&[
        "policy",
        "explain",
        "--host",
        "reference",
        "--mxc-release",
        "0.8",
        f.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("MXC 0.8 verdicts: retired document"));
    let out = agentcell(&["policy", "explain", "--host", "reference", "preset:offline"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("MXC 1.0 verdicts: MXC 1.0 contract 1.0.0")
    );

    // migrate prints the 1.0.0 document, which checks clean and keeps the digest's meaning.
    let out = agentcell(&["policy", "migrate", f.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new = write(&d, "new.json", &String::from_utf8_lossy(&out.stdout));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["version"], "1.0.0");
    assert_eq!(
        doc["network"]["egress"]["allow"][0]["to"][0]["cidr"],
        "198.18.0.0/15"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("note: process.env"));
    assert_eq!(
        agentcell(&["policy", "check", new.to_str().unwrap()])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        agentcell(&["policy", "check", "--contract", new.to_str().unwrap()])
            .status
            .code(),
        Some(0)
    );
    // What has no 1.0 equivalent: exit 2, every field named.
    let names = write(
        &d,
        "names.json",
        r#"{"version":"0.7.0-alpha","process":{"commandLine":"true"},"network":{"defaultPolicy":"block","enforcementMode":"firewall","allowedHosts":["api.github.com","10.0.0.0/8","example.com"]}}"#,
    );
    let out = agentcell(&["policy", "migrate", names.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for p in [
        "network.allowedHosts[0]: no MXC 1.0 equivalent",
        "network.allowedHosts[2]: no MXC 1.0 equivalent",
    ] {
        assert!(err.contains(&format!("{}: {p}", names.display())), "{err}");
    }
    assert!(out.stdout.is_empty());
    let out = agentcell(&["policy", "migrate", "--json", names.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["migrated"], false);
    assert_eq!(v["errors"].as_array().unwrap().len(), 2);
    let out = agentcell(&["policy", "migrate", "--json", f.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["migrated"].clone(), v["document"]["version"].clone()),
        (true.into(), "1.0.0".into())
    );
    let out = agentcell(&[
        "policy",
        "migrate",
        "--to",
        "0.9.0-alpha",
        f.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
}

/// A state-aware request is judged, not run: MXC's error envelope, code unsupported_phase, as
/// the last line of stderr (and on stdout with --json), exit 125.
#[test]
fn exec_of_a_state_aware_request_answers_mxc_s_envelope() {
    let d = tmpdir("lifecycle");
    let f = write(
        &d,
        "provision.json",
        r#"{"version":"1.0.0","phase":"provision","containment":"wslc","wslc":{"provision":{"image":"alpine"}}}"#,
    );
    let out = agentcell(&["exec", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    let last: serde_json::Value = serde_json::from_str(err.lines().last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "unsupported_phase");
    assert_eq!(last["error"]["operation"], "provision");
    let out = agentcell(&["exec", "--json", f.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "unsupported_phase");
}

#[test]
fn explain_json_is_the_plan_and_digest_ignores_spelling() {
    let out = agentcell(&[
        "policy",
        "explain",
        "--json",
        "--host",
        "reference",
        "preset:coding-agent",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["network"]["egressDefault"], "drop");
    assert!(
        plan["filesystem"]["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["path"] == "/workspace/.env" && e["access"] == "denied")
    );

    let d = tmpdir("digest");
    let a = write(
        &d,
        "a.json",
        r#"{"version":"1.0.0","filesystem":{"readonlyPaths":["/a","/b"]},"timeoutMs":5}"#,
    );
    let b = write(
        &d,
        "b.json",
        "{ \"timeoutMs\": 5,\n  \"filesystem\": { \"readonlyPaths\": [\"/b\", \"/a\"] },\n  \"version\": \"1.0.0\" }\n",
    );
    let da = agentcell(&["policy", "digest", a.to_str().unwrap()]);
    let db = agentcell(&["policy", "digest", b.to_str().unwrap()]);
    assert_eq!(da.status.code(), Some(0));
    assert_eq!(da.stdout, db.stdout);
    assert!(String::from_utf8_lossy(&da.stdout).starts_with("sha256:"));
}

#[test]
fn explain_refuses_what_linux_cannot_run() {
    let d = tmpdir("explain");
    let f = write(
        &d,
        "mac.json",
        r#"{"version":"1.0.0","containment":"seatbelt","process":{"commandLine":"x"}}"#,
    );
    let out = agentcell(&[
        "policy",
        "explain",
        "--host",
        "reference",
        f.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("containment: 'seatbelt' is a Windows or macOS backend")
    );
}

#[test]
fn version_and_help() {
    let out = agentcell(&["--version"]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("agentcell "));
    for args in [
        &["--help"][..],
        &["policy", "--help"],
        &["policy", "check", "--help"],
        &["policy", "explain", "--help"],
        &["policy", "migrate", "--help"],
    ] {
        let out = agentcell(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage:"));
    }
    // Every command that reads a document takes the compatibility setting.
    for cmd in [
        &["policy", "check"][..],
        &["policy", "explain"],
        &["policy", "digest"],
        &["run"],
        &["exec"],
    ] {
        let mut a = cmd.to_vec();
        a.push("--help");
        let help = String::from_utf8_lossy(&agentcell(&a).stdout).into_owned();
        assert!(help.contains("--mxc-release <RELEASE>"), "{cmd:?}: {help}");
    }
    let help = String::from_utf8_lossy(&agentcell(&["--help"]).stdout).into_owned();
    assert!(
        help.contains("1.0.0") && !help.contains("0.6 to 0.9"),
        "{help}"
    );
}

#[test]
fn doctor_reports_this_host() {
    let out = agentcell(&["doctor", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for k in [
        "kernel",
        "landlockAbi",
        "seccomp",
        "nftables",
        "cgroup",
        "kvm",
        "presets",
    ] {
        assert!(v.get(k).is_some(), "{k} missing: {v}");
    }
    // The terminal-injection switch, as the kernel states it.
    let tiocsti = std::fs::read_to_string("/proc/sys/dev/tty/legacy_tiocsti")
        .ok()
        .map(|s| s.trim() == "1");
    assert_eq!(v["legacyTiocsti"]["value"].as_bool(), tiocsti, "{v}");
    assert!(
        v["legacyTiocsti"]["meaning"]
            .as_str()
            .unwrap()
            .contains("TIOCSTI")
    );
    assert_eq!(v["presets"].as_array().unwrap().len(), 4);
    // The Landlock ABI is probed with the syscall: it matches the kernel's answer here.
    let abi = common::kernel_landlock_abi();
    assert_eq!(v["landlockAbi"].as_i64(), (abi > 0).then_some(abi));
    let human = agentcell(&["doctor"]);
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(human.contains("presets on this host:"));
    assert!(human.contains("legacy_tiocsti"), "{human}");
}

#[test]
fn explain_pod_shows_the_shim_s_view_and_ignores_the_command() {
    let d = tmpdir("pod");
    let p = write(
        &d,
        "c.json",
        r#"{"version":"1.0.0","process":{"commandLine":"make"},"filesystem":{"readwritePaths":["/work"],"deniedPaths":["/work/.env"]}}"#,
    );
    let out = agentcell(&[
        "policy",
        "explain",
        "--pod",
        "--host",
        "reference",
        p.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("process.commandLine is ignored"), "{text}");
    assert!(text.contains("/work (ReadWrite)"), "{text}");
    let out = agentcell(&[
        "policy",
        "explain",
        "--pod",
        "--json",
        "--host",
        "reference",
        p.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["pod"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().contains("service-account token"))
    );
    // Without --pod the command is required, as MXC's executor requires it.
    let q = write(&d, "nocmd.json", r#"{"version":"1.0.0"}"#);
    assert!(
        agentcell(&[
            "policy",
            "explain",
            "--pod",
            "--host",
            "reference",
            q.to_str().unwrap()
        ])
        .status
        .success()
    );
    std::fs::remove_dir_all(&d).unwrap();
}

/// The README's main command is `cargo run -p agentcell -- run …`: with the shim as a second
/// binary of this package, cargo needs to be told which one runs.
#[test]
fn cargo_run_picks_the_cli() {
    let manifest: toml::Table = toml::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        manifest["package"]["default-run"].as_str(),
        Some("agentcell")
    );
}
