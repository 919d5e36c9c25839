//! `agentcell node install|uninstall|status` on a temporary host root, as the chart's DaemonSet
//! runs it (`--host-root`): install writes what containerd needs, a second install changes
//! nothing, uninstall leaves every file and directory byte for byte as before. containerd is
//! never restarted here (`--no-restart`, and no systemd under the fixture root).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const DEBIAN_16: &str = "version = 2\n\n[plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\"]\n    [plugins.\"io.containerd.grpc.v1.cri\".cni]\n      bin_dir = \"/usr/lib/cni\"\n      conf_dir = \"/etc/cni/net.d\"\n  [plugins.\"io.containerd.internal.v1.opt\"]\n    path = \"/var/lib/containerd/opt\"\n";

const V3_WITH_IMPORTS: &str = "version = 3\nimports = [\"/etc/containerd/conf.d/*.toml\"]\n\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]\n  runtime_type = 'io.containerd.runc.v2'\n";

fn root(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("agentcell-node-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("etc/containerd")).unwrap();
    std::fs::create_dir_all(d.join("usr/bin")).unwrap();
    // Something unrelated that must survive.
    std::fs::write(d.join("etc/hostname"), "node-1\n").unwrap();
    d
}

/// A fake shim binary: its bytes are what must land on the host.
fn fake_shim(dir: &Path) -> PathBuf {
    let p = dir.join("shim-src");
    std::fs::create_dir_all(&p).unwrap();
    let f = p.join("containerd-shim-agentcell-v2");
    std::fs::write(&f, b"\x7fELF fake shim for the installer test\n").unwrap();
    f
}

/// Every path under `root` (except the shim's source dir) with its mode and content.
fn snapshot(root: &Path) -> BTreeMap<String, (u32, Option<Vec<u8>>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel.starts_with("shim-src") {
                continue;
            }
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let mode = meta.permissions().mode();
            if meta.is_dir() {
                out.insert(rel, (mode, None));
                stack.push(p);
            } else {
                out.insert(rel, (mode, Some(std::fs::read(&p).unwrap())));
            }
        }
    }
    out
}

fn agentcell(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agentcell"))
        .args(args)
        .output()
        .expect("run agentcell")
}

fn ok(out: Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn install(root: &Path, shim: &Path, version: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "node",
        "install",
        "--host-root",
        root.to_str().unwrap(),
        "--shim",
        shim.to_str().unwrap(),
        "--containerd-version",
        version,
        "--json",
    ];
    args.extend_from_slice(extra);
    serde_json::from_str(&ok(agentcell(&args))).unwrap()
}

fn uninstall(root: &Path) -> Value {
    serde_json::from_str(&ok(agentcell(&[
        "node",
        "uninstall",
        "--host-root",
        root.to_str().unwrap(),
        "--no-restart",
        "--json",
    ])))
    .unwrap()
}

fn read(root: &Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel)).unwrap()
}

#[test]
fn debian_containerd_16_config_install_twice_then_uninstall_restores_everything() {
    let r = root("deb16");
    std::fs::write(r.join("etc/containerd/config.toml"), DEBIAN_16).unwrap();
    std::fs::set_permissions(
        r.join("etc/containerd/config.toml"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let shim = fake_shim(&r);
    let before = snapshot(&r);

    let rep = install(
        &r,
        &shim,
        "1.6.20",
        &["--no-restart", "--cgroup-driver", "systemd"],
    );
    assert_eq!(rep["mode"], "inline", "{rep}");
    assert_eq!(rep["config_version"], "v2");
    assert_eq!(rep["changed"], true);
    // No systemd under the fixture root, and --no-restart: nothing restarted.
    assert_eq!(rep["restart"], "skipped");
    let cfg = read(&r, "etc/containerd/config.toml");
    assert!(cfg.starts_with(DEBIAN_16), "{cfg}");
    assert!(cfg.contains(
        "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.agentcell]\n  runtime_type = \"io.containerd.agentcell.v2\"\n  pod_annotations = [\"agentcell.dev/*\"]\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.agentcell.options]\n  ConfigPath = \"/etc/agentcell/shim.toml\"\n"
    ));
    // The edited file keeps its mode.
    let mode = std::fs::metadata(r.join("etc/containerd/config.toml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        std::fs::read(r.join("usr/local/bin/containerd-shim-agentcell-v2")).unwrap(),
        std::fs::read(&shim).unwrap()
    );
    let shim_toml = read(&r, "etc/agentcell/shim.toml");
    assert!(
        shim_toml.contains("cgroup_driver = \"systemd\""),
        "{shim_toml}"
    );

    // Second run: nothing changes, nothing to restart.
    let after_first = snapshot(&r);
    let rep = install(&r, &shim, "1.6.20", &["--cgroup-driver", "systemd"]);
    assert_eq!(rep["changed"], false, "{rep}");
    assert_eq!(rep["restart"], "not-needed");
    assert_eq!(snapshot(&r), after_first);

    let st: Value = serde_json::from_str(&ok(agentcell(&[
        "node",
        "status",
        "--host-root",
        r.to_str().unwrap(),
        "--check",
        "--json",
    ])))
    .unwrap();
    assert_eq!(st["healthy"], true, "{st}");

    let rep = uninstall(&r);
    assert_eq!(rep["installed"], true);
    assert_eq!(rep["warnings"], Value::Array(vec![]), "{rep}");
    assert_eq!(snapshot(&r), before, "uninstall left the host different");

    // Status afterwards: not installed, and --check fails (the DaemonSet's readiness).
    let out = agentcell(&[
        "node",
        "status",
        "--host-root",
        r.to_str().unwrap(),
        "--check",
    ]);
    assert!(!out.status.success());
    // A second uninstall is a no-op.
    assert_eq!(uninstall(&r)["installed"], false);
    assert_eq!(snapshot(&r), before);
    std::fs::remove_dir_all(&r).unwrap();
}

#[test]
fn missing_config_and_changed_values_uninstall_to_nothing() {
    // No containerd config at all (containerd on defaults), no /usr/local/bin, no
    // /etc/agentcell: all created, then all removed.
    let r = root("nocfg");
    let shim = fake_shim(&r);
    let before = snapshot(&r);
    let rep = install(&r, &shim, "2.1.1", &["--no-restart"]);
    assert_eq!(rep["config_version"], "v3", "{rep}");
    let cfg = read(&r, "etc/containerd/config.toml");
    assert!(cfg.starts_with("version = 3\n"), "{cfg}");
    assert!(
        cfg.contains("[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.agentcell]")
    );
    // New values: shim.toml is rewritten, containerd's entry is not (no restart needed).
    let rep = install(
        &r,
        &shim,
        "2.1.1",
        &["--no-restart", "--default-policy", "preset:untrusted-code"],
    );
    assert_eq!(rep["changed"], true);
    assert_eq!(rep["restart"], "not-needed", "{rep}");
    assert!(read(&r, "etc/agentcell/shim.toml").contains("preset:untrusted-code"));
    uninstall(&r);
    assert_eq!(snapshot(&r), before);
    std::fs::remove_dir_all(&r).unwrap();
}

#[test]
fn v3_config_with_imports_gets_a_drop_in_and_the_main_file_is_untouched() {
    let r = root("dropin");
    std::fs::write(r.join("etc/containerd/config.toml"), V3_WITH_IMPORTS).unwrap();
    let shim = fake_shim(&r);
    let cfg_file = r.join("shim-src/shim.toml");
    std::fs::write(
        &cfg_file,
        "default_policy = \"preset:untrusted-code\"\nidle_exit_seconds = 30\n",
    )
    .unwrap();
    let before = snapshot(&r);
    let rep = install(
        &r,
        &shim,
        "2.0.4",
        &[
            "--no-restart",
            "--shim-config-from",
            cfg_file.to_str().unwrap(),
        ],
    );
    assert_eq!(rep["mode"], "drop-in", "{rep}");
    assert_eq!(
        rep["containerd_file"],
        "/etc/containerd/conf.d/agentcell.toml"
    );
    assert_eq!(read(&r, "etc/containerd/config.toml"), V3_WITH_IMPORTS);
    let drop_in = read(&r, "etc/containerd/conf.d/agentcell.toml");
    assert!(drop_in.contains("version = 3\n"), "{drop_in}");
    assert!(drop_in.contains("ConfigPath = \"/etc/agentcell/shim.toml\""));
    assert_eq!(
        read(&r, "etc/agentcell/shim.toml"),
        std::fs::read_to_string(&cfg_file).unwrap()
    );
    uninstall(&r);
    assert_eq!(snapshot(&r), before);
    std::fs::remove_dir_all(&r).unwrap();
}

#[test]
fn edits_made_after_the_install_survive_uninstall() {
    let r = root("edited");
    std::fs::write(r.join("etc/containerd/config.toml"), DEBIAN_16).unwrap();
    let shim = fake_shim(&r);
    install(&r, &shim, "1.7.27", &["--no-restart"]);
    // An administrator adds a setting after the install.
    let cfg = r.join("etc/containerd/config.toml");
    let edited = format!(
        "{}\n[debug]\n  level = \"debug\"\n",
        read(&r, "etc/containerd/config.toml")
    );
    std::fs::write(&cfg, &edited).unwrap();
    let out = agentcell(&[
        "node",
        "status",
        "--host-root",
        r.to_str().unwrap(),
        "--check",
    ]);
    assert!(!out.status.success(), "a modified file is not healthy");
    let rep = uninstall(&r);
    let warnings = rep["warnings"].as_array().unwrap();
    assert!(
        warnings[0]
            .as_str()
            .unwrap()
            .starts_with("/etc/containerd/config.toml: changed since the install"),
        "{rep}"
    );
    // The original stays for reference, so its directories stay too.
    assert_eq!(
        read(&r, "etc/agentcell/backup/etc__containerd__config.toml"),
        DEBIAN_16
    );
    let after = read(&r, "etc/containerd/config.toml");
    assert!(!after.contains("agentcell"), "{after}");
    assert!(after.contains("level = \"debug\""), "{after}");
    assert!(after.starts_with(DEBIAN_16));
    std::fs::remove_dir_all(&r).unwrap();
}

#[test]
fn bad_inputs_are_refused_before_anything_is_written() {
    let r = root("bad");
    std::fs::write(r.join("etc/containerd/config.toml"), DEBIAN_16).unwrap();
    let shim = fake_shim(&r);
    let before = snapshot(&r);
    let bad_toml = r.join("shim-src/bad.toml");
    std::fs::write(&bad_toml, "default_polcy = \"preset:x\"\n").unwrap();
    let out = agentcell(&[
        "node",
        "install",
        "--host-root",
        r.to_str().unwrap(),
        "--shim",
        shim.to_str().unwrap(),
        "--containerd-version",
        "1.6.20",
        "--shim-config-from",
        bad_toml.to_str().unwrap(),
        "--no-restart",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("default_polcy"), "{err}");
    let out = agentcell(&[
        "node",
        "install",
        "--host-root",
        r.to_str().unwrap(),
        "--shim",
        shim.to_str().unwrap(),
        "--containerd-version",
        "1.5.9",
        "--no-restart",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("1.5.9"));
    assert_eq!(snapshot(&r), before);
    std::fs::remove_dir_all(&r).unwrap();
}
