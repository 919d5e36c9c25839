//! The micro-VM tier, end to end (root, real qemu; TCG on these machines): `agentcell run
//! --isolation microvm` boots the installed guest kernel with the guest agent and runs the
//! workload under the same policy as the container tier. Needs the kernel and agent installed
//! (scripts/test.sh does it: `agentcell vm install-kernel`, `agentcell vm install-agent`).
//! The tests take one lock: concurrent TCG guests on two cores only make each slower.

mod common;

use std::sync::Mutex;

use agentcell_e2e::testhost::TestHost;
use common::{Fixture, Ran, require_root};
use serde_json::json;

static ONE_VM_AT_A_TIME: Mutex<()> = Mutex::new(());
/// Pids of the `agentcell` runs of this suite: their sandboxes are `ac-<pid>-<nonce>`, and only
/// those are checked for leftovers (other suites on the machine make their own).
static RUNS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// `agentcell ARGS` with extra environment and stdin, its pid recorded.
fn agentcell_with(args: &[&str], env: &[(&str, &str)], stdin: Option<std::fs::File>) -> Ran {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_agentcell"));
    cmd.args(args)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .stdin(stdin.map_or_else(std::process::Stdio::null, std::process::Stdio::from));
    let child = cmd.spawn().expect("run agentcell");
    RUNS.lock().unwrap().push(child.id());
    let out = child.wait_with_output().unwrap();
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn agentcell(args: &[&str]) -> Ran {
    agentcell_with(args, &[], None)
}

fn setup() -> std::sync::MutexGuard<'static, ()> {
    require_root();
    let dir = agentcell::vm::assets::vm_dir(None);
    if let Err(e) = agentcell::vm::assets::load(&dir) {
        panic!("micro-VM assets missing ({e}); scripts/test.sh installs them");
    }
    ONE_VM_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn vm_run(policy: &str, args: &[&str]) -> Ran {
    let mut a = vec!["run", "--isolation", "microvm", "--policy", policy, "--"];
    a.extend_from_slice(args);
    agentcell(&a)
}

fn vm_sh(policy: &str, script: &str) -> Ran {
    vm_run(policy, &["/bin/sh", "-c", script])
}

/// Nothing of this suite's VMs is left: no state directory, no sandbox namespace, no qemu.
fn assert_nothing_left() {
    let ours: Vec<String> = RUNS
        .lock()
        .unwrap()
        .iter()
        .map(|p| format!("ac-{p}-"))
        .collect();
    let ours = |n: &str| ours.iter().any(|o| n.starts_with(o.as_str()));
    let vms: Vec<String> = std::fs::read_dir("/run/agentcell/vm")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| ours(n))
        .collect();
    assert!(vms.is_empty(), "state directories left: {vms:?}");
    let netns: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| ours(n))
        .collect();
    assert!(netns.is_empty(), "network namespaces left: {netns:?}");
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        let state = cmd
            .find("/run/agentcell/vm/")
            .map(|i| &cmd[i + "/run/agentcell/vm/".len()..]);
        assert!(
            !(cmd.contains("qemu") && state.is_some_and(ours)),
            "qemu left: {cmd}"
        );
    }
}

#[test]
fn the_workload_runs_on_the_guest_kernel_with_its_exit_codes() {
    let _vm = setup();
    let f = Fixture::new("vm-basic");
    let p = f.policy(&json!({"version": "1.0.0"}));
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let r = vm_sh(&p, "uname -r; echo to-stderr >&2; exit 3");
    assert_eq!(r.code, 3, "{}", r.stderr);
    let guest = r.stdout.trim();
    assert!(!guest.is_empty(), "{}", r.stderr);
    assert_ne!(guest, host.trim(), "the guest runs its own kernel");
    assert!(r.stderr.contains("to-stderr"), "{}", r.stderr);
    // Killed by a signal: 128+N, as the container tier reports it.
    let r = vm_sh(&p, "kill -9 $$");
    assert_eq!(r.code, 137, "{}", r.stderr);
    // Stdin reaches the workload.
    let r = agentcell_with(
        &[
            "run",
            "--isolation",
            "microvm",
            "--policy",
            &p,
            "--",
            "/bin/cat",
        ],
        &[],
        Some(std::fs::File::open("/proc/sys/kernel/ostype").unwrap()),
    );
    assert_eq!(r.stdout.trim(), "Linux", "{}", r.stderr);
    assert_nothing_left();
}

#[test]
fn the_filesystem_policy_holds_in_the_guest_and_writes_reach_the_host() {
    let _vm = setup();
    let f = Fixture::new("vm-fs");
    f.write("rw/keep.txt", "old");
    f.write("rw/.env", "SECRET=1");
    f.write("ro/readme", "read me");
    f.write("outside.txt", "NOT-GRANTED");
    let p = f.policy(&json!({"version": "1.0.0", "filesystem": {
        "readwritePaths": [f.p("rw")], "readonlyPaths": [f.p("ro")], "deniedPaths": [f.p("rw/.env")]}}));
    let script = format!(
        "cat {rw}/.env; \
         echo written > {rw}/new.txt && echo RW-OK; \
         echo x > {ro}/readme && echo RO-WRITABLE; \
         cat {ro}/readme; echo; \
         cat {outside}; true",
        rw = f.p("rw"),
        ro = f.p("ro"),
        outside = f.p("outside.txt")
    );
    let r = vm_sh(&p, &script);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("RW-OK"), "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("read me"), "{}", r.stdout);
    // The denied file reads as /dev/null; an ungranted sibling does not exist in the guest.
    for bad in ["SECRET", "RO-WRITABLE", "NOT-GRANTED"] {
        assert!(!r.stdout.contains(bad), "{bad}: {}", r.stdout);
    }
    assert_eq!(
        std::fs::read_to_string(f.path("rw/new.txt")).unwrap(),
        "written\n",
        "the write is visible on the host"
    );
    assert_eq!(
        std::fs::read_to_string(f.path("ro/readme")).unwrap(),
        "read me"
    );
    assert_nothing_left();
}

const PROBE: &str = r#"
import socket, sys
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        s = socket.create_connection((host, int(port)), timeout=2.0)
        s.settimeout(2.0)
        print(target, s.recv(64).decode().strip() or "NO-BANNER")
    except Exception as e:
        print(target, "BLOCKED")
"#;

#[test]
fn the_egress_fence_judges_the_guests_traffic() {
    let _vm = setup();
    let _h = TestHost::new(70, &[8080, 8081]);
    let f = Fixture::new("vm-net");
    let script = f.write("probe/probe.py", PROBE);
    let p = f.policy(&json!({"version": "1.0.0", "filesystem": {"readonlyPaths": [f.p("probe")]},
        "network": {"egress": {"default": "deny", "allow": [{"to": [{"cidr": "198.18.70.2/32"}], "ports": [{"protocol": "tcp", "port": 8080}]}]}}}));
    let r = vm_run(
        &p,
        &[
            "python3",
            script.to_str().unwrap(),
            "198.18.70.2:8080",
            "198.18.70.2:8081",
            "198.18.70.3:8080",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let got: std::collections::BTreeMap<&str, &str> =
        r.stdout.lines().filter_map(|l| l.split_once(' ')).collect();
    assert_eq!(
        got.get("198.18.70.2:8080"),
        Some(&"BANNER-8080"),
        "{r_out}",
        r_out = r.stdout
    );
    assert_eq!(
        got.get("198.18.70.2:8081"),
        Some(&"BLOCKED"),
        "other port: {got:?}"
    );
    assert_eq!(
        got.get("198.18.70.3:8080"),
        Some(&"BLOCKED"),
        "other host: {got:?}"
    );
    assert!(
        r.stderr.contains("IPv6 unavailable in the guest"),
        "{}",
        r.stderr
    );
    assert_nothing_left();
}

#[test]
fn the_timeout_kills_the_workload_with_124_and_config_errors_are_125() {
    let _vm = setup();
    let f = Fixture::new("vm-timeout");
    let p = f.policy(&json!({"version": "1.0.0", "timeoutMs": 1500}));
    let r = vm_sh(&p, "sleep 60");
    assert_eq!(r.code, 124, "{}", r.stderr);
    assert!(r.stderr.contains("timed out"), "{}", r.stderr);
    // A missing working directory is refused before any VM boots, naming the field.
    let p = f.policy(&json!({"version": "1.0.0", "process": {"cwd": "/nonexistent-dir"}}));
    let r = agentcell(&[
        "run",
        "--isolation",
        "microvm",
        "--json",
        "--policy",
        &p,
        "--",
        "/bin/true",
    ]);
    assert_eq!(r.code, 125, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["error"]["field"], "process.cwd", "{v}");
    // Missing assets are a configuration failure naming them, not a hang or a panic.
    let r = agentcell_with(
        &[
            "run",
            "--isolation",
            "microvm",
            "--json",
            "--policy",
            &p,
            "--",
            "/bin/true",
        ],
        &[("AGENTCELL_GUEST_AGENT", "/nonexistent/agentcell-guest")],
        None,
    );
    assert_eq!(r.code, 125, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["error"]["field"], "vm.assets", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/agentcell-guest"),
        "{v}"
    );
    assert_nothing_left();
}

/// `agentcell exec CONFIG --isolation microvm` runs the document's commandLine through
/// `/bin/sh -c` in the VM, as the container tier does.
#[test]
fn exec_runs_a_container_config_in_the_vm() {
    let _vm = setup();
    let f = Fixture::new("vm-exec");
    let cfg = f.policy(
        &json!({"version": "1.0.0", "process": {"commandLine": "echo from-config; exit 7"}}),
    );
    let r = agentcell(&["exec", "--isolation", "microvm", &cfg]);
    assert_eq!(r.code, 7, "{}", r.stderr);
    assert_eq!(r.stdout.trim(), "from-config");
    assert_nothing_left();
}

/// The view qemu exports is built on the host: seen from qemu's own mount namespace, the denied
/// file is masked and an ungranted sibling is absent, so not even a compromised guest kernel
/// can reach them through the 9p server.
#[test]
fn qemu_itself_sees_only_the_granted_view() {
    let _vm = setup();
    let f = Fixture::new("vm-view");
    f.write("rw/.env", "SECRET=1");
    f.write("outside.txt", "NOT-GRANTED");
    let p = f.policy(&json!({"version": "1.0.0", "filesystem": {
        "readwritePaths": [f.p("rw")], "deniedPaths": [f.p("rw/.env")]}}));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_agentcell"))
        .args([
            "run",
            "--isolation",
            "microvm",
            "--policy",
            &p,
            "--",
            "/bin/sleep",
            "20",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    RUNS.lock().unwrap().push(child.id());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let (pid, state) = loop {
        let found = std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).into_owned();
            let i = cmd.find("/run/agentcell/vm/ac-")?;
            let id = cmd[i..].split('/').nth(4)?.to_string();
            cmd.contains("qemu")
                .then(|| (e.file_name().to_string_lossy().into_owned(), id))
        });
        if let Some(f) = found {
            break f;
        }
        assert!(std::time::Instant::now() < deadline, "no qemu appeared");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let view = format!("/proc/{pid}/root/run/agentcell/vm/{state}/view");
    // Wait for the view (qemu builds it before it runs).
    let rw = format!("{view}/rw{}", f.p("rw"));
    while !std::path::Path::new(&format!("{rw}/.env")).exists() {
        assert!(std::time::Instant::now() < deadline, "no view at {rw}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let masked = std::fs::read_to_string(format!("{rw}/.env")).unwrap();
    assert_eq!(masked, "", "the denied file is masked on the host side");
    for tree in ["ro", "rw"] {
        let outside = format!("{view}/{tree}{}", f.p("outside.txt"));
        assert!(
            !std::path::Path::new(&outside).exists(),
            "{outside} is exported"
        );
    }
    assert!(std::path::Path::new(&format!("{view}/ro/usr/bin")).is_dir());
    assert!(!std::path::Path::new(&format!("{view}/ro/root")).exists());
    // SIGTERM reaches the workload; the run ends 128+15 and cleans up.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143));
    assert_nothing_left();
}

/// The plan's seccomp profile holds in the guest as in the container tier (it is compiled on
/// the host, the guest installs the bytes): no setuid/setgid bits reach the host through a
/// read-write grant, no netlink uevents, no terminal injection ioctls.
#[test]
fn the_plan_seccomp_refusals_hold_in_the_guest() {
    let _one = setup();
    let f = Fixture::new("vm-seccomp");
    let src = f.write("probe/probe.c", include_str!("seccomp_probe.c"));
    let bin = f.path("probe/probe");
    let cc = std::process::Command::new("cc")
        .arg("-O1")
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("cc (build-essential)");
    assert!(cc.success(), "compiling the probe");
    let rw = f.mkdir("rw");
    let p = f.policy(&json!({"version": "1.0.0", "filesystem": {
        "readonlyPaths": [f.p("probe")],
        "readwritePaths": [f.p("rw")],
    }}));
    let bin = bin.display().to_string();
    let script = format!("{bin} setid {} && {bin}", rw.display());
    let r = vm_sh(&p, &script);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let got = |name: &str| {
        r.stdout.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse::<i32>()
                .ok()
        })
    };
    for name in [
        "chmod_6755",
        "fchmodat2_4755",
        "open_creat_4755",
        "openat_creat_2755",
        "mknod_4755",
        "netlink_uevent",
        "netlink_uevent_high",
        "ioctl_tiocsti",
        "ioctl_tiocsti_high",
        "ioctl_tiocscty_stdout",
        "socket_vsock_high",
    ] {
        assert_eq!(got(name), Some(libc::EPERM), "{name}: {}", r.stdout);
    }
    assert_eq!(
        got("openat2_creat_4755"),
        Some(libc::ENOSYS),
        "{}",
        r.stdout
    );
    assert_eq!(got("chmod_0755"), Some(0), "{}", r.stdout);
    assert_eq!(got("netlink_route"), Some(0), "{}", r.stdout);
    use std::os::unix::fs::PermissionsExt as _;
    for e in std::fs::read_dir(&rw).unwrap() {
        let e = e.unwrap();
        let mode = e.metadata().unwrap().permissions().mode();
        assert_eq!(
            mode & 0o6000,
            0,
            "{} {mode:o} on the host",
            e.path().display()
        );
    }
    assert!(rw.join("planted").exists(), "the probe wrote nothing");
    assert_nothing_left();
}

#[test]
fn the_guest_cannot_reach_an_address_the_host_gains_after_the_start() {
    let _vm = setup();
    let _h = TestHost::new(71, &[8080]);
    let port = 16000 + (std::process::id() % 1000) as u16;
    // A banner on every address of the host itself.
    let mut listener = std::process::Command::new("python3")
        .args(["-c", &format!(
            "import socket\ns=socket.socket(socket.AF_INET6);s.setsockopt(socket.IPPROTO_IPV6,socket.IPV6_V6ONLY,0)\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('::',{port}));s.listen(8)\nprint('ready',flush=True)\nwhile True:\n c,_=s.accept();c.sendall(b'HOST-BANNER\\n');c.close()"
        )])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(listener.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "ready");
    let f = Fixture::new("vm-late-host");
    // The guest asks again and again (the address appears while it runs): one banner is enough
    // for the attack.
    let script = f.write(
        "probe/late.py",
        &format!(
            "import socket, time\nfor _ in range(12):\n    try:\n        s = socket.create_connection(('198.18.78.1', {port}), timeout=1.0); s.settimeout(1.0)\n        print('LATE', s.recv(64).decode().strip()); break\n    except Exception:\n        time.sleep(0.5)\nelse:\n    print('LATE BLOCKED')\ntry:\n    s = socket.create_connection(('198.18.71.2', 8080), timeout=2.0); s.settimeout(2.0)\n    print('CONTROL', s.recv(64).decode().strip())\nexcept Exception:\n    print('CONTROL BLOCKED')\n"
        ),
    );
    let p = f.policy(
        &json!({"version": "1.0.0", "filesystem": {"readonlyPaths": [f.p("probe")]},
        "network": {"egress": {"default": "allow"}}}),
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_agentcell"))
        .args([
            "--log",
            "agentcell=info",
            "run",
            "--isolation",
            "microvm",
            "--policy",
            &p,
            "--",
        ])
        .args(["python3", script.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    RUNS.lock().unwrap().push(child.id());
    // The fence is in place before the VM boots: the address comes after.
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    loop {
        let mut l = String::new();
        if std::io::BufRead::read_line(&mut err, &mut l).unwrap() == 0 {
            panic!("the run ended before booting: {log}");
        }
        log.push_str(&l);
        if l.contains("booting the micro-VM") {
            break;
        }
    }
    let (a, b) = (
        format!("acvml{}", std::process::id() % 100000),
        format!("acvmp{}", std::process::id() % 100000),
    );
    let ip = |args: &[&str]| {
        assert!(
            std::process::Command::new("ip")
                .args(args)
                .status()
                .unwrap()
                .success(),
            "ip {args:?}"
        )
    };
    ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
    ip(&["addr", "add", "198.18.78.1/32", "dev", &a]);
    ip(&["link", "set", &a, "up"]);
    let drain = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut rest);
        rest
    });
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    let status = child.wait().unwrap();
    let rest = drain.join().unwrap();
    let _ = std::process::Command::new("ip")
        .args(["link", "del", &a])
        .status();
    let _ = listener.kill();
    let _ = listener.wait();
    assert!(status.success(), "{log}{rest}");
    assert!(out.contains("CONTROL BANNER-8080"), "the control: {out}");
    assert!(
        out.contains("LATE BLOCKED"),
        "the guest reached an address the host gained after the start: {out}"
    );
    assert_nothing_left();
}
