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

/// A fake micro-VM shim binary.
fn fake_vm_shim(dir: &Path) -> PathBuf {
    let f = dir.join("shim-src/containerd-shim-agentcell-vm-v2");
    std::fs::write(&f, b"\x7fELF fake vm shim for the installer test\n").unwrap();
    f
}

/// A VM directory as `agentcell vm install-kernel --dir` and `install-agent --dir` leave it
/// (fake bytes: nothing boots here), plus what must not be copied: the shim's initramfs cache
/// and the hidden work directory of an interrupted install-kernel.
fn fake_vm_assets(dir: &Path) -> PathBuf {
    let d = dir.join("shim-src/vm");
    std::fs::create_dir_all(d.join("kernel/modules/kernel/fs/9p")).unwrap();
    std::fs::create_dir_all(d.join("cache")).unwrap();
    std::fs::create_dir_all(d.join(".install-1/root")).unwrap();
    let agent = d.join("agentcell-guest");
    std::fs::write(&agent, b"\x7fELF fake guest agent\n").unwrap();
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(d.join("kernel/vmlinuz"), b"fake bzImage\n").unwrap();
    // Bigger than one copy chunk, so the chunked compare and copy run more than once.
    let vmlinux: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(d.join("kernel/vmlinux"), vmlinux).unwrap();
    std::fs::write(d.join("kernel/modules/kernel/fs/9p/9p.ko"), b"fake 9p\n").unwrap();
    std::fs::write(
        d.join("kernel/modules/modules.dep"),
        "kernel/fs/9p/9p.ko:\n",
    )
    .unwrap();
    std::fs::write(d.join("kernel/modules/modules.builtin"), "").unwrap();
    std::fs::write(
        d.join("kernel/manifest.json"),
        r#"{"release":"6.1.0-99-amd64","package":"linux-image-6.1.0-99-amd64","version":"6.1.99-1","deb_sha256":"00","vmlinuz_sha256":"00","modules":["kernel/fs/9p/9p.ko"]}"#,
    )
    .unwrap();
    std::fs::write(d.join("cache/initramfs-0.cpio"), b"cache\n").unwrap();
    std::fs::write(d.join(".install-1/root/junk"), b"junk\n").unwrap();
    d
}

fn status(root: &Path) -> (bool, Value) {
    let out = agentcell(&[
        "node",
        "status",
        "--host-root",
        root.to_str().unwrap(),
        "--check",
        "--json",
    ]);
    let v = serde_json::from_slice(&out.stdout).unwrap();
    (out.status.success(), v)
}

const VM_FILES: &[&str] = &[
    "agentcell-guest",
    "kernel/manifest.json",
    "kernel/modules/kernel/fs/9p/9p.ko",
    "kernel/modules/modules.builtin",
    "kernel/modules/modules.dep",
    "kernel/vmlinux",
    "kernel/vmlinuz",
];

#[test]
fn microvm_install_adds_the_vm_tier_and_uninstall_restores_everything() {
    let r = root("vm");
    std::fs::create_dir_all(r.join("var/lib")).unwrap();
    std::fs::write(r.join("etc/containerd/config.toml"), DEBIAN_16).unwrap();
    let shim = fake_shim(&r);
    let vm_shim = fake_vm_shim(&r);
    let assets = fake_vm_assets(&r);
    let before = snapshot(&r);
    let vm_args = [
        "--no-restart",
        "--microvm",
        "--vm-shim",
        vm_shim.to_str().unwrap(),
        "--vm-assets",
        assets.to_str().unwrap(),
    ];

    let rep = install(&r, &shim, "1.6.20", &vm_args);
    assert_eq!(rep["changed"], true, "{rep}");
    assert_eq!(
        rep["vm_section"],
        "plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.agentcell-vm"
    );
    assert_eq!(rep["vm_kernel_release"], "6.1.0-99-amd64");
    // Both runtimes in the one marked block, each naming the same shim.toml.
    let cfg = read(&r, "etc/containerd/config.toml");
    assert!(cfg.starts_with(DEBIAN_16), "{cfg}");
    assert_eq!(cfg.matches("# BEGIN agentcell").count(), 1, "{cfg}");
    assert!(cfg.contains(
        "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.agentcell-vm]\n  runtime_type = \"io.containerd.agentcell-vm.v2\"\n  pod_annotations = [\"agentcell.dev/*\"]\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.agentcell-vm.options]\n  ConfigPath = \"/etc/agentcell/shim.toml\"\n# END agentcell\n"
    ), "{cfg}");
    assert_eq!(
        std::fs::read(r.join("usr/local/bin/containerd-shim-agentcell-vm-v2")).unwrap(),
        std::fs::read(&vm_shim).unwrap()
    );
    for f in VM_FILES {
        let host = r.join("var/lib/agentcell/vm").join(f);
        assert_eq!(
            std::fs::read(&host).unwrap_or_else(|e| panic!("{}: {e}", host.display())),
            std::fs::read(assets.join(f)).unwrap(),
            "{f}"
        );
    }
    let mode = |p: &str| {
        std::fs::metadata(r.join("var/lib/agentcell/vm").join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("agentcell-guest"), 0o755);
    assert_eq!(mode("kernel/vmlinux"), 0o644);
    assert!(!r.join("var/lib/agentcell/vm/cache").exists());
    assert!(!r.join("var/lib/agentcell/vm/.install-1").exists());

    // No qemu on the fixture host: installed, but not healthy, and the status says why.
    let (ok_, st) = status(&r);
    assert!(!ok_, "{st}");
    assert_eq!(st["microvm"]["shim"], true, "{st}");
    assert_eq!(st["microvm"]["runtime"], true, "{st}");
    assert_eq!(st["microvm"]["assets"], true, "{st}");
    assert_eq!(st["microvm"]["kernel_release"], "6.1.0-99-amd64");
    assert_eq!(st["microvm"]["qemu"], Value::Null);
    let problems = st["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{st}");
    assert!(
        problems[0]
            .as_str()
            .unwrap()
            .starts_with("qemu-system-x86_64 not found on the host's PATH"),
        "{st}"
    );
    // With qemu on the host's PATH the node is ready.
    let qemu = r.join("usr/bin/qemu-system-x86_64");
    std::fs::write(&qemu, b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&qemu, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (ok_, st) = status(&r);
    assert!(ok_, "{st}");
    assert_eq!(st["microvm"]["qemu"], "/usr/bin/qemu-system-x86_64");
    std::fs::remove_file(&qemu).unwrap();

    // Second run: nothing changes.
    let after_first = snapshot(&r);
    let rep = install(&r, &shim, "1.6.20", &vm_args);
    assert_eq!(rep["changed"], false, "{rep}");
    assert_eq!(rep["restart"], "not-needed");
    assert_eq!(snapshot(&r), after_first);

    // The VM shim made its initramfs cache on the host: it goes with the assets.
    std::fs::create_dir_all(r.join("var/lib/agentcell/vm/cache")).unwrap();
    std::fs::write(
        r.join("var/lib/agentcell/vm/cache/initramfs-1.cpio"),
        b"cache\n",
    )
    .unwrap();
    let rep = uninstall(&r);
    assert_eq!(rep["warnings"], Value::Array(vec![]), "{rep}");
    assert_eq!(snapshot(&r), before, "uninstall left the host different");
    std::fs::remove_dir_all(&r).unwrap();
}

#[test]
fn installing_without_microvm_after_it_takes_the_vm_tier_back() {
    let r = root("vmoff");
    std::fs::write(r.join("etc/containerd/config.toml"), DEBIAN_16).unwrap();
    let shim = fake_shim(&r);
    let vm_shim = fake_vm_shim(&r);
    let assets = fake_vm_assets(&r);
    let before = snapshot(&r);
    install(&r, &shim, "1.7.27", &["--no-restart"]);
    let container_only = snapshot(&r);
    install(
        &r,
        &shim,
        "1.7.27",
        &[
            "--no-restart",
            "--microvm",
            "--vm-shim",
            vm_shim.to_str().unwrap(),
            "--vm-assets",
            assets.to_str().unwrap(),
        ],
    );
    assert!(read(&r, "etc/containerd/config.toml").contains("runtimes.agentcell-vm]"));
    let rep = install(&r, &shim, "1.7.27", &["--no-restart"]);
    assert_eq!(rep["changed"], true, "{rep}");
    // containerd's file changed back: it needs a restart (skipped here).
    assert_eq!(rep["restart"], "skipped", "{rep}");
    let removed: Vec<_> = rep["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["action"] == "removed")
        .map(|f| f["path"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        removed.contains(&"/usr/local/bin/containerd-shim-agentcell-vm-v2".to_owned()),
        "{rep}"
    );
    assert!(
        removed.contains(&"/var/lib/agentcell/vm/kernel/vmlinux".to_owned()),
        "{rep}"
    );
    // The files are as the container-only install left them (its directories stay recorded
    // until uninstall, empty).
    let now = snapshot(&r);
    let files = |s: &BTreeMap<String, (u32, Option<Vec<u8>>)>| {
        s.iter()
            .filter(|(k, v)| v.1.is_some() && !k.ends_with("node-install.json"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(files(&now), files(&container_only));
    let (_, st) = status(&r);
    assert_eq!(st["microvm"], Value::Null, "{st}");
    assert_eq!(st["healthy"], true, "{st}");
    uninstall(&r);
    assert_eq!(snapshot(&r), before);
    std::fs::remove_dir_all(&r).unwrap();
}

#[test]
fn microvm_drop_in_and_a_host_s_own_vm_files_are_restored() {
    let r = root("vmdrop");
    std::fs::write(r.join("etc/containerd/config.toml"), V3_WITH_IMPORTS).unwrap();
    // A VM directory installed by hand before (the README's manual steps): its agent is
    // replaced by the install and comes back with uninstall.
    std::fs::create_dir_all(r.join("var/lib/agentcell/vm")).unwrap();
    std::fs::write(
        r.join("var/lib/agentcell/vm/agentcell-guest"),
        b"older agent\n",
    )
    .unwrap();
    std::fs::set_permissions(
        r.join("var/lib/agentcell/vm/agentcell-guest"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let shim = fake_shim(&r);
    let vm_shim = fake_vm_shim(&r);
    let assets = fake_vm_assets(&r);
    let before = snapshot(&r);
    let rep = install(
        &r,
        &shim,
        "2.0.4",
        &[
            "--no-restart",
            "--microvm",
            "--vm-shim",
            vm_shim.to_str().unwrap(),
            "--vm-assets",
            assets.to_str().unwrap(),
        ],
    );
    assert_eq!(rep["mode"], "drop-in", "{rep}");
    assert_eq!(read(&r, "etc/containerd/config.toml"), V3_WITH_IMPORTS);
    let drop_in = read(&r, "etc/containerd/conf.d/agentcell.toml");
    assert!(drop_in.contains("version = 3\n"), "{drop_in}");
    assert!(
        drop_in.contains(
            "[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.agentcell-vm]\n  runtime_type = \"io.containerd.agentcell-vm.v2\""
        ),
        "{drop_in}"
    );
    assert_eq!(
        std::fs::read(r.join("var/lib/agentcell/vm/agentcell-guest")).unwrap(),
        std::fs::read(assets.join("agentcell-guest")).unwrap()
    );
    let agent_change = rep["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "/var/lib/agentcell/vm/agentcell-guest")
        .cloned();
    assert_eq!(agent_change.unwrap()["action"], "replaced", "{rep}");
    // The agent takes the source's mode, not the 0644 of the file it replaced.
    let mode = std::fs::metadata(r.join("var/lib/agentcell/vm/agentcell-guest"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    uninstall(&r);
    assert_eq!(snapshot(&r), before);
    std::fs::remove_dir_all(&r).unwrap();
}

#[test]
fn microvm_with_missing_assets_is_refused_naming_the_path() {
    let r = root("vmbad");
    std::fs::write(r.join("etc/containerd/config.toml"), DEBIAN_16).unwrap();
    let shim = fake_shim(&r);
    let vm_shim = fake_vm_shim(&r);
    let assets = fake_vm_assets(&r);
    let before = snapshot(&r);
    let try_install = |extra: &[&str]| {
        let mut args = vec![
            "node",
            "install",
            "--host-root",
            r.to_str().unwrap(),
            "--shim",
            shim.to_str().unwrap(),
            "--containerd-version",
            "1.6.20",
            "--no-restart",
        ];
        args.extend_from_slice(extra);
        let out = agentcell(&args);
        assert!(!out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let with_assets = |dir: &Path| {
        try_install(&[
            "--microvm",
            "--vm-shim",
            vm_shim.to_str().unwrap(),
            "--vm-assets",
            dir.to_str().unwrap(),
        ])
    };

    std::fs::remove_file(assets.join("agentcell-guest")).unwrap();
    let err = with_assets(&assets);
    let want = format!(
        "{}: micro-VM assets: missing",
        assets.join("agentcell-guest").display()
    );
    assert!(err.contains(&want), "{err}");

    let no_kernel = r.join("shim-src/no-kernel");
    std::fs::create_dir_all(&no_kernel).unwrap();
    std::fs::write(no_kernel.join("agentcell-guest"), b"agent\n").unwrap();
    let err = with_assets(&no_kernel);
    let want = format!(
        "{}: micro-VM assets: missing",
        no_kernel.join("kernel/manifest.json").display()
    );
    assert!(err.contains(&want), "{err}");

    // --microvm names its assets.
    let err = try_install(&["--microvm"]);
    assert!(err.contains("--vm-assets"), "{err}");
    assert_eq!(snapshot(&r), before, "a refused install wrote something");
    std::fs::remove_dir_all(&r).unwrap();
}

/// A host without systemd: `--restart-command` runs the host's own restart (its init system or
/// supervisor) in the host's root, only when containerd's configuration changed, on install and
/// on uninstall; a failing command fails the run naming it. Root: it chroots into the fixture.
#[test]
fn restart_command_runs_in_the_host_root_when_the_config_changes() {
    if unsafe { libc::geteuid() } != 0 {
        panic!("this test chroots into its fixture root: run as root");
    }
    let r = root("restart-cmd");
    std::fs::write(r.join("etc/containerd/config.toml"), DEBIAN_16).unwrap();
    // The host's shell: a static busybox at /bin/sh of the fixture root.
    std::fs::create_dir_all(r.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", r.join("bin/sh")).expect("busybox-static");
    let shim = fake_shim(&r);
    // `/restarts` is a path of the fixture root: the command ran chrooted there.
    let cmd = "echo restarted >> /restarts";
    let rep = install(&r, &shim, "1.6.20", &["--restart-command", cmd]);
    assert_eq!(rep["restart"], "command", "{rep}");
    assert_eq!(read(&r, "restarts"), "restarted\n");
    // Same inputs: nothing changed, nothing restarted.
    let rep = install(&r, &shim, "1.6.20", &["--restart-command", cmd]);
    assert_eq!(rep["restart"], "not-needed", "{rep}");
    assert_eq!(read(&r, "restarts"), "restarted\n");
    let rep: Value = serde_json::from_str(&ok(agentcell(&[
        "node",
        "uninstall",
        "--host-root",
        r.to_str().unwrap(),
        "--restart-command",
        cmd,
        "--json",
    ])))
    .unwrap();
    assert_eq!(rep["restart"], "command", "{rep}");
    assert_eq!(read(&r, "restarts"), "restarted\nrestarted\n");
    assert_eq!(read(&r, "etc/containerd/config.toml"), DEBIAN_16);
    // A restart that fails is an error naming the command and what it printed.
    let out = agentcell(&[
        "node",
        "install",
        "--host-root",
        r.to_str().unwrap(),
        "--shim",
        shim.to_str().unwrap(),
        "--containerd-version",
        "1.6.20",
        "--restart-command",
        "echo no supervisor >&2; exit 3",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("restart containerd: echo no supervisor >&2; exit 3")
            && err.contains("no supervisor"),
        "{err}"
    );
    let _ = agentcell(&[
        "node",
        "uninstall",
        "--host-root",
        r.to_str().unwrap(),
        "--no-restart",
    ]);
    let _ = std::fs::remove_dir_all(&r);
}

/// The shims are copied in chunks, never held whole: the chart's DaemonSet container has a
/// 128 MiB limit and a debug shim is ~220 MiB (the installer was OOM-killed on the first real
/// cluster). A 384 MiB shim installs under a 300 MiB address-space limit, which reading it
/// whole cannot fit (the previous installer failed here with "out of memory").
#[test]
fn a_shim_bigger_than_the_memory_limit_installs() {
    let r = root("big-shim");
    std::fs::write(r.join("etc/containerd/config.toml"), DEBIAN_16).unwrap();
    let src = r.join("shim-src");
    std::fs::create_dir_all(&src).unwrap();
    let shim = src.join("containerd-shim-agentcell-v2");
    let f = std::fs::File::create(&shim).unwrap();
    f.set_len(384 << 20).unwrap();
    drop(f);
    let out = Command::new("sh")
        .args(["-c", "ulimit -v 307200; exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_agentcell"))
        .args([
            "node",
            "install",
            "--host-root",
            r.to_str().unwrap(),
            "--shim",
        ])
        .arg(&shim)
        .args(["--containerd-version", "1.6.20", "--no-restart", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let copied = r.join("usr/local/bin/containerd-shim-agentcell-v2");
    assert_eq!(std::fs::metadata(&copied).unwrap().len(), 384 << 20);
    let _ = std::fs::remove_dir_all(&r);
}
