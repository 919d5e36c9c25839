//! WSL2 hosts: detection against recorded hosts (`doctor --root`), and on this plain Linux host
//! (root) the WSL2 hardening forced onto a fake WSL tree the test builds, in a real sandbox.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Fixture, Ran, require_root};
use serde_json::{Value, json};

const FORCE: &str = "AGENTCELL_FORCE_WSL2_HARDENING";
const ROOT: &str = "AGENTCELL_WSL_ROOT";

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/hosts/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// `agentcell ARGS`, with the hardening forced onto `tree` when given.
fn agentcell(tree: Option<&Path>, args: &[&str]) -> Ran {
    let mut c = Command::new(env!("CARGO_BIN_EXE_agentcell"));
    c.args(args).env_remove(FORCE).env_remove(ROOT);
    if let Some(t) = tree {
        c.env(FORCE, "1").env(ROOT, t);
    }
    let out = c.output().expect("run agentcell");
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn doctor_json(root: &str) -> Value {
    let r = agentcell(None, &["doctor", "--json", "--root", root]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    serde_json::from_str(&r.stdout).unwrap()
}

#[test]
fn doctor_describes_each_recorded_host() {
    // (fixture, kernel, Landlock ABI, interop entries, drives, systemd, cgroup layout)
    let cases = [
        (
            "wsl2-5.15",
            "5.15.153.1-microsoft-standard-WSL2",
            json!(1),
            json!(["/proc/sys/fs/binfmt_misc/WSLInterop"]),
            json!(["/mnt/c"]),
            false,
            "hybrid",
        ),
        (
            "wsl2-6.6",
            "6.6.87.2-microsoft-standard-WSL2",
            json!(3),
            json!(["/proc/sys/fs/binfmt_misc/WSLInterop-late"]),
            json!(["/mnt/c", "/mnt/d"]),
            true,
            "v2",
        ),
        (
            "wsl2-6.18",
            "6.18.33.1-microsoft-standard-WSL2",
            json!(7),
            json!(["/proc/sys/fs/binfmt_misc/WSLInterop"]),
            json!(["/windows/c"]),
            true,
            "v2",
        ),
    ];
    for (name, kernel, abi, interop, drives, systemd, layout) in cases {
        let v = doctor_json(&fixture(name));
        let w = &v["wsl"];
        assert_eq!(v["kernel"], kernel, "{name}");
        assert_eq!(v["landlockAbi"], abi, "{name}");
        assert_eq!(w["version"], 2, "{name}");
        assert_eq!(w["supported"], true, "{name}");
        assert_eq!(w["interop"], true, "{name}");
        assert_eq!(w["interopEntries"], interop, "{name}");
        assert_eq!(w["windowsDrives"], drives, "{name}");
        assert_eq!(w["dxg"], true, "{name}");
        assert_eq!(w["wslLib"], true, "{name}");
        assert_eq!(v["cgroup"]["systemdInit"], systemd, "{name}");
        assert_eq!(v["cgroup"]["layout"], layout, "{name}");
        assert_eq!(v["gpu"]["kind"], "dxg", "{name}");
        let hardening = w["hardening"].to_string();
        assert!(
            hardening.contains("AF_VSOCK") && hardening.contains("/init, /run/WSL and binfmt_misc"),
            "{name}: {hardening}"
        );
        let human = agentcell(None, &["doctor", "--root", &fixture(name)]);
        assert!(
            human.stdout.contains("wsl                      WSL2\n"),
            "{name}: {}",
            human.stdout
        );
        assert!(
            human.stdout.contains("  interop                ON ("),
            "{}",
            human.stdout
        );
        assert!(
            human
                .stdout
                .contains("  hardening              AF_VSOCK sockets refused"),
            "{}",
            human.stdout
        );
    }
    let human = agentcell(None, &["doctor", "--root", &fixture("wsl2-6.6")]);
    assert!(
        human
            .stdout
            .contains("ABI 3: no network rules (the namespace fence does it)"),
        "{}",
        human.stdout
    );

    let v = doctor_json(&fixture("wsl1"));
    assert_eq!(v["wsl"]["version"], 1);
    assert_eq!(v["wsl"]["supported"], false);
    assert_eq!(v["landlockAbi"], Value::Null);
    assert_eq!(v["seccomp"], false);
    let presets = v["presets"].as_array().unwrap();
    assert!(
        presets.iter().all(|p| p["verdict"]["runs"] == false
            && p["verdict"]["why"]
                .as_str()
                .unwrap()
                .contains("WSL1 is not supported")),
        "{presets:?}"
    );
    let human = agentcell(None, &["doctor", "--root", &fixture("wsl1")]);
    assert!(
        human
            .stdout
            .contains("wsl                      WSL1\n  refused"),
        "{}",
        human.stdout
    );

    let v = doctor_json(&fixture("debian-6.18"));
    assert_eq!(v["wsl"], Value::Null);
    assert_eq!(v["gpu"]["kind"], "nvidia");
    let human = agentcell(None, &["doctor", "--root", &fixture("debian-6.18")]);
    assert!(
        human.stdout.contains("wsl                      no\n"),
        "{}",
        human.stdout
    );
}

/// A fake WSL host's `/` under the fixture directory: what the hardening must close.
fn fake_wsl(f: &Fixture) -> std::path::PathBuf {
    f.write("wsl/mnt/c/Users/me/secret.txt", "WINDOWS-SECRET");
    f.write("wsl/mnt/c/proj/main.py", "print('hi')\n");
    f.write("wsl/mnt/wslg/PulseServer", "WSLG-SOCKET");
    f.write("wsl/init", "INIT-BINARY");
    f.write("wsl/run/WSL/1_interop", "INTEROP-SOCKET");
    f.write(
        "wsl/proc/sys/fs/binfmt_misc/WSLInterop",
        "enabled\ninterpreter /init\nflags: PF\noffset 0\nmagic 4d5a\n",
    );
    f.write(
        "wsl/proc/self/mounts",
        "C:\\134 /mnt/c 9p rw,noatime,dirsync,aname=drvfs;path=C:\\;uid=1000;gid=1000 0 0\n",
    );
    f.path("wsl")
}

const VSOCK: &str = "python3 -c 'import socket\ntry:\n    socket.socket(40, socket.SOCK_STREAM)\n    print(\"VSOCK_OPENED\")\nexcept OSError as e:\n    print(\"VSOCK_ERRNO\", e.errno)'";

#[test]
fn forced_hardening_closes_vsock_drives_and_interop_in_a_real_sandbox() {
    require_root();
    let f = Fixture::new("wsl-hardening");
    let tree = fake_wsl(&f);
    let t = tree.display().to_string();
    // The policy grants the whole fake root, as a policy granting `/` would on WSL, and one
    // project directory on the fake C: drive.
    let policy = f.policy(&json!({"version": "1.0.0", "filesystem": {
        "readonlyPaths": [t], "readwritePaths": [format!("{t}/mnt/c/proj")]}}));
    let script = format!(
        "{VSOCK}; cat {t}/mnt/c/Users/me/secret.txt; ls {t}/mnt/c && echo DRIVE_LISTED; \
         cat {t}/mnt/c/proj/main.py && echo x >> {t}/mnt/c/proj/main.py && echo PROJ_RW; \
         cat {t}/init; cat {t}/run/WSL/1_interop; cat {t}/mnt/wslg/PulseServer; \
         cat {t}/proc/sys/fs/binfmt_misc/WSLInterop; ls -A /proc/sys/fs/binfmt_misc; echo DONE"
    );

    // Outside the sandbox everything is there, and AF_VSOCK works on this host: the checks
    // below can fail.
    let outside = Command::new("/bin/sh")
        .arg("-c")
        .arg(VSOCK)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&outside.stdout).trim(),
        "VSOCK_OPENED",
        "AF_VSOCK must work outside the sandbox, or refusing it inside proves nothing"
    );
    let control = agentcell(
        None,
        &["run", "--policy", &policy, "--", "/bin/sh", "-c", &script],
    );
    assert_eq!(control.code, 0, "{}", control.stderr);
    for leak in [
        "WINDOWS-SECRET",
        "DRIVE_LISTED",
        "INIT-BINARY",
        "INTEROP-SOCKET",
        "WSLG-SOCKET",
        "interpreter /init",
    ] {
        assert!(
            control.stdout.contains(leak),
            "without the hardening {leak} is visible: {}",
            control.stdout
        );
    }

    let r = agentcell(
        Some(&tree),
        &["run", "--policy", &policy, "--", "/bin/sh", "-c", &script],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("DONE"), "{} {}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(&format!("VSOCK_ERRNO {}", libc::EPERM)),
        "{}",
        r.stdout
    );
    for leak in [
        "VSOCK_OPENED",
        "WINDOWS-SECRET",
        "DRIVE_LISTED",
        "INIT-BINARY",
        "INTEROP-SOCKET",
        "WSLG-SOCKET",
        "interpreter /init",
    ] {
        assert!(!r.stdout.contains(leak), "{leak} leaked: {}", r.stdout);
    }
    // The policy's own path on the drive is the only way in.
    assert!(
        r.stdout.contains("print('hi')") && r.stdout.contains("PROJ_RW"),
        "{}",
        r.stdout
    );
    // The real binfmt_misc in the sandbox's /proc is masked too (empty listing above).
    assert!(r.stdout.contains("PROJ_RW\nDONE"), "{}", r.stdout);
    assert_eq!(
        std::fs::read_to_string(f.path("wsl/mnt/c/Users/me/secret.txt")).unwrap(),
        "WINDOWS-SECRET"
    );

    // explain lists the hardening, with the host it was planned for.
    let e = agentcell(Some(&tree), &["policy", "explain", &policy]);
    assert_eq!(e.code, 0, "{}", e.stderr);
    for want in [
        "[enforced] wsl (AF_VSOCK)",
        "[enforced] wsl (interop)",
        &format!("{t}/mnt/c (masked); granted below a drive: {t}/mnt/c/proj"),
        &format!("{t}/init (masked)"),
        &format!("{t}/proc/sys/fs/binfmt_misc (masked)"),
        "[wsl hardening]",
    ] {
        assert!(e.stdout.contains(want), "{want}: {}", e.stdout);
    }
    let j = agentcell(Some(&tree), &["policy", "explain", "--json", &policy]);
    let plan: Value = serde_json::from_str(&j.stdout).unwrap();
    assert_eq!(plan["host"]["wsl"]["forced"], true);
    assert_eq!(
        plan["wsl"]["procMasked"],
        json!(["/proc/sys/fs/binfmt_misc"])
    );
}

#[test]
fn gpu_exposes_the_device_node_and_its_libraries_only() {
    require_root();
    let f = Fixture::new("wsl-gpu");
    let tree = fake_wsl(&f);
    let t = tree.display().to_string();
    f.write("wsl/usr/lib/wsl/lib/libcuda.so.1", "LIBCUDA");
    f.write("wsl/usr/lib/wsl/drivers/nv.inf/libnvwgf2umx.so", "UMD");
    f.write("wsl/usr/lib/wsl/other/x", "OTHER");
    // A stand-in /dev/dxg with /dev/fuse's numbers (10:229): opening it is harmless, and those
    // numbers are not among the runtime's default device rules, so opening it inside proves
    // the cgroup rule --gpu adds.
    std::fs::create_dir_all(f.path("wsl/dev")).unwrap();
    let dxg = std::ffi::CString::new(format!("{t}/dev/dxg")).unwrap();
    // SAFETY: a NUL-terminated path; mknod creates a node and touches no memory of ours.
    let rc = unsafe { libc::mknod(dxg.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(10, 229)) };
    assert_eq!(rc, 0, "mknod: {}", std::io::Error::last_os_error());
    let policy = f.policy(&json!({"version": "1.0.0", "filesystem": {"readonlyPaths": [t]}}));
    let script = format!(
        "ls /dev; echo END_DEV; (exec 3<>/dev/dxg) && echo DXG_OPENED; cat {t}/usr/lib/wsl/lib/libcuda.so.1; \
         cat {t}/usr/lib/wsl/drivers/nv.inf/libnvwgf2umx.so; echo x > {t}/usr/lib/wsl/lib/new && echo LIB_WRITTEN; \
         cat {t}/usr/lib/wsl/other/x; cat {t}/mnt/c/Users/me/secret.txt; echo DONE"
    );
    let without = agentcell(
        Some(&tree),
        &["run", "--policy", &policy, "--", "/bin/sh", "-c", &script],
    );
    assert_eq!(without.code, 0, "{}", without.stderr);
    for absent in [
        "dxg",
        "DXG_OPENED",
        "LIBCUDA",
        "UMD",
        "OTHER",
        "WINDOWS-SECRET",
    ] {
        assert!(
            !without.stdout.contains(absent),
            "{absent} without --gpu: {}",
            without.stdout
        );
    }

    let with = agentcell(
        Some(&tree),
        &[
            "run", "--gpu", "--policy", &policy, "--", "/bin/sh", "-c", &script,
        ],
    );
    assert_eq!(with.code, 0, "{}", with.stderr);
    for present in ["DXG_OPENED", "LIBCUDA", "UMD", "DONE"] {
        assert!(
            with.stdout.contains(present),
            "{present} with --gpu: {} {}",
            with.stdout,
            with.stderr
        );
    }
    for absent in ["LIB_WRITTEN", "OTHER", "WINDOWS-SECRET"] {
        assert!(
            !with.stdout.contains(absent),
            "{absent} with --gpu: {}",
            with.stdout
        );
    }
    // /dev gains exactly one node.
    let devs = |s: &str| -> Vec<String> {
        s.lines()
            .take_while(|l| *l != "END_DEV")
            .map(String::from)
            .collect()
    };
    let extra: Vec<String> = devs(&with.stdout)
        .into_iter()
        .filter(|d| !devs(&without.stdout).contains(d))
        .collect();
    assert_eq!(extra, ["dxg"], "{}", with.stdout);

    // On this host (not WSL, no NVIDIA driver) --gpu is refused, closed.
    let r = agentcell(
        None,
        &["run", "--gpu", "--policy", &policy, "--", "/bin/true"],
    );
    assert_eq!(r.code, 125, "{} {}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("--gpu: no GPU on this host"),
        "{}",
        r.stderr
    );
}
