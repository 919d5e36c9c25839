//! MXC's own Linux end-to-end configs (`../shared/mxc-conformance/configs/bubblewrap_*`, `lxc_*`)
//! run through `agentcell exec` with their fixtures made as MXC's scripts make them (the `/mnt/...`
//! paths are rewritten to a fixture directory, as MXC's LXC scripts do with `mktemp`). None may
//! print a failure sentinel; the `_rejected`/`_unsupported` ones must exit 125.

mod common;

use std::path::{Path, PathBuf};

use common::{Fixture, agentcell, require_root};

fn configs_dir() -> PathBuf {
    let dir = std::env::var_os("AGENTCELL_MXC_CONFORMANCE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/mxc-conformance")
        });
    assert!(
        dir.join("README.md").is_file(),
        "MXC conformance data not found at {} (set AGENTCELL_MXC_CONFORMANCE)",
        dir.display()
    );
    dir.join("configs")
}

/// The fixture tree MXC's bubblewrap/LXC scripts create under /mnt.
fn make_fixtures(f: &Fixture) {
    for (rel, text) in [
        ("mnt/masktest/visible.txt", "VISIBLE_SECRET"),
        ("mnt/masktest/secret_file.txt", "FILE_SECRET"),
        ("mnt/masktest/secret_dir/inner.txt", "DIR_SECRET"),
        ("mnt/symmask/control.txt", "CONTROL_SECRET"),
        ("mnt/symmask/real_dir/inner.txt", "DIR_TARGET_SECRET"),
        ("mnt/symmask/real_file.txt", "FILE_TARGET_SECRET"),
        ("mnt/readonly/test.txt", "readonly content"),
        ("mnt/denied/secret.txt", "DENIED_SECRET"),
        ("mnt/msptest/data/secret_child/keep.txt", "CHILD_KEPT"),
        ("mnt/msptest/data/sibling.txt", "PARENT_SECRET"),
        ("mnt/msptest2/proj/notes.txt", "PROJ_NOTES"),
        ("mnt/msptest2/proj/secrets/key.txt", "DEEP_SECRET"),
        ("mnt/objtest/data/secret.txt", "OBJECT_SECRET"),
        ("mnt/objdata/secret.txt", "OBJECT_SECRET"),
    ] {
        f.write(rel, text);
    }
    f.mkdir("mnt/readwrite");
    let link =
        |target: &str, at: &str| std::os::unix::fs::symlink(f.path(target), f.path(at)).unwrap();
    link("mnt/symmask/real_dir", "mnt/symmask/link_to_dir");
    link("mnt/symmask/real_file.txt", "mnt/symmask/link_to_file");
    link("mnt/objtest/data", "mnt/objtest/data_link");
    link("mnt/objdata", "mnt/objlink");
}

const FAILURE_SENTINELS: &[&str] = &[
    "LEAK",
    "MISSING",
    "_FAIL",
    "_BUG",
    "SHOULD_NOT_RUN",
    "should-never-run",
    "MUST_NEVER_RUN",
];

#[test]
fn mxc_linux_configs_run_without_a_leak() {
    require_root();
    let mut ran = Vec::new();
    let mut skipped = Vec::new();
    let mut failures = Vec::new();
    let mut names: Vec<String> = std::fs::read_dir(configs_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| (n.starts_with("bubblewrap_") || n.starts_with("lxc_")) && n.ends_with(".json"))
        .collect();
    names.sort();
    for name in names {
        let text = std::fs::read_to_string(configs_dir().join(&name)).unwrap();
        let refused = name.contains("_rejected")
            || name.ends_with("_unsupported.json")
            || text.contains("this-should-never-run");
        let f = Fixture::new(&format!(
            "mxc-{}",
            name.trim_end_matches(".json").replace('_', "-")
        ));
        make_fixtures(&f);
        // As MXC's scripts: a loopback listener port and proxy endpoint.
        let filled = text
            .replace("/mnt/", &format!("{}/mnt/", f.dir.display()))
            .replace("{{LISTENER_PORT}}", "18080")
            .replace("{{ALLOWED_PORT}}", "18081")
            .replace("{{PROXY_HOST}}", "127.0.0.1")
            .replace("{{PROXY_PORT}}", "13128");
        let cfg = f.write("config.json", &filled);
        // MXC's network configs reach real Internet hosts (api.github.com, 8.8.8.8, ...). Tests
        // never send traffic there: a config that would get an uplink is not run here; network
        // enforcement is proven against the tests' own hosts (tests/network.rs).
        if !refused {
            let plan = agentcell(&[
                "policy",
                "explain",
                "--json",
                "--allow-testing-features",
                cfg.to_str().unwrap(),
            ]);
            if plan.code == 0 {
                let v: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
                if v["network"]["needsUplink"] == true {
                    skipped.push(format!("{name}: not run here: its traffic would go to hosts outside this machine (api.github.com, 8.8.8.8, ...); enforcement is proven against test hosts in tests/network.rs"));
                    continue;
                }
            }
        }
        let r = agentcell(&["exec", "--allow-testing-features", cfg.to_str().unwrap()]);
        let out = format!("{}{}", r.stdout, r.stderr);
        if !refused && r.code == 125 && r.stderr.contains("no built-in test proxy") {
            skipped.push(format!(
                "{name}: uses MXC's built-in test proxy, which agentcell does not ship"
            ));
            continue;
        }
        let want = if refused {
            125
        } else if name == "lxc_timeout.json" {
            124
        } else {
            0
        };
        if r.code != want {
            failures.push(format!("{name}: exit {} (want {want})\n{out}", r.code));
        }
        if let Some(s) = FAILURE_SENTINELS.iter().find(|s| r.stdout.contains(*s)) {
            failures.push(format!("{name}: printed {s}\n{}", r.stdout));
        }
        ran.push(name);
    }
    eprintln!(
        "ran: {}\nnot run here:\n  {}",
        ran.join(" "),
        skipped.join("\n  ")
    );
    assert!(ran.len() >= 16, "ran only {ran:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
