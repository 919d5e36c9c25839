//! The micro-VM tier through containerd (root, real qemu; TCG on hosts whose KVM cannot boot a
//! stock kernel): `ctr run --runtime io.containerd.agentcell-vm.v2` starts
//! `containerd-shim-agentcell-vm-v2`, which boots one VM per container (per pod under CRI) with
//! the Debian kernel `agentcell vm install-kernel` fetched and our guest agent as PID 1. The
//! policy must hold inside the guest, the network fence outside it, and nothing may be left on
//! the host after delete.

use agentcell_e2e::testhost::TestHost;
use agentcell_e2e::{Containerd, image};
use serde_json::json;

const RUNTIME: &str = "io.containerd.agentcell-vm.v2";

/// One VM at a time: TCG guests are CPU-bound, and the leftover census must not count the VM
/// of a test running beside it.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn annotation(policy: &serde_json::Value) -> String {
    format!("agentcell.dev/mxc-policy={policy}")
}

fn policy() -> serde_json::Value {
    json!({"version": "1.0.0",
        "filesystem": {"readwritePaths": ["/work"], "deniedPaths": ["/etc/secret"]},
        "network": {"egress": {"default": "deny"}}})
}

/// `ctr run MODE` (`--rm` or `-d`) of `/bin/sh -c SCRIPT` in the micro-VM tier under `policy`,
/// on `rootfs`, with `extra` ctr options (mounts) before it.
fn run(
    c: &Containerd,
    mode: &str,
    policy: &serde_json::Value,
    extra: &[&str],
    rootfs: &std::path::Path,
    id: &str,
    script: &str,
) -> agentcell_e2e::Ran {
    let ann = annotation(policy);
    let mut args = vec!["run", mode, "--runtime", RUNTIME, "--annotation", &ann];
    args.extend_from_slice(extra);
    args.extend([
        "--rootfs",
        rootfs.to_str().unwrap(),
        id,
        "/bin/sh",
        "-c",
        script,
    ]);
    c.ctr(&args)
}

fn host_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_string()
}

/// What a VM could leave behind on the host: qemu processes, state directories, taps.
fn leftovers(c: &Containerd) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("qemu-system") && cmd.contains("/run/agentcell/shim/") {
            found.push(format!(
                "process {}: {cmd}",
                e.file_name().to_string_lossy()
            ));
        }
    }
    let state = std::path::Path::new("/run/agentcell/shim")
        .join(&c.namespace)
        .join("vm");
    if let Ok(rd) = std::fs::read_dir(&state) {
        for e in rd.flatten() {
            found.push(format!("state {}", e.path().display()));
        }
    }
    found
}

#[test]
fn a_container_runs_in_a_vm_under_its_policy() {
    let _one = serial();
    let c = Containerd::start("vm-fs");
    let rootfs = image::rootfs(&c.dir.join("rootfs"));
    let volume = c.dir.join("volume");
    std::fs::create_dir_all(&volume).unwrap();
    let r = run(
        &c,
        "--rm",
        &policy(),
        &[
            "--mount",
            &format!(
                "type=bind,src={},dst=/work,options=rbind:rw",
                volume.display()
            ),
        ],
        &rootfs,
        "vm1",
        "echo RELEASE=$(uname -r); cat /etc/secret && echo READ-SECRET; \
         cat /etc/passwd >/dev/null && echo READ-PASSWD; echo from-guest > /work/f && echo WROTE-WORK; \
         echo y > /f 2>/dev/null || echo ROOT-READONLY; grep '^Seccomp:' /proc/self/status; exit 7",
    );
    assert_eq!(r.code, 7, "{r:?}\n{}", c.log());
    let release = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("RELEASE="))
        .unwrap_or_default()
        .to_string();
    assert!(!release.is_empty(), "{}", r.stdout);
    assert_ne!(
        release,
        host_release(),
        "the process ran on the host's kernel"
    );
    assert!(!r.stdout.contains("READ-SECRET"), "{}", r.stdout);
    assert!(r.stdout.contains("READ-PASSWD"), "{}", r.stdout);
    assert!(r.stdout.contains("WROTE-WORK"), "{}", r.stdout);
    assert!(r.stdout.contains("ROOT-READONLY"), "{}", r.stdout);
    assert!(r.stdout.contains("Seccomp:\t2"), "{}", r.stdout);
    // The guest's write went through the share to the host's directory.
    assert_eq!(
        std::fs::read_to_string(volume.join("f")).unwrap(),
        "from-guest\n"
    );
    let left = leftovers(&c);
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn the_fence_outside_the_vm_holds() {
    let _one = serial();
    let host = TestHost::new(71, &[8080, 8081]);
    let c = Containerd::start("vm-net");
    let rootfs = image::rootfs(&c.dir.join("rootfs"));
    let p = json!({"version": "1.0.0",
        "network": {"egress": {"default": "deny", "allow": [
            {"to": [{"cidr": "198.18.71.2/32"}], "ports": [{"protocol": "tcp", "port": 8080}]}]}}});
    let r = run(
        &c,
        "--rm",
        &p,
        &[],
        &rootfs,
        "vmnet1",
        "for t in '198.18.71.2 8080' '198.18.71.2 8081' '198.18.71.3 8080'; do \
           echo \"$t $(nc -w 3 $t </dev/null 2>/dev/null || echo BLOCKED)\"; done",
    );
    assert_eq!(r.code, 0, "{r:?}\n{}", c.log());
    assert!(
        r.stdout.contains("198.18.71.2 8080 BANNER-8080"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("BANNER-8081"), "{}", r.stdout);
    assert!(
        !r.stdout.contains("198.18.71.3 8080 BANNER"),
        "{}",
        r.stdout
    );
    drop(host);
    let left = leftovers(&c);
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn timeout_exec_and_kill_behave_in_a_vm() {
    let _one = serial();
    let c = Containerd::start("vm-exec");
    let rootfs = image::rootfs(&c.dir.join("rootfs"));
    let mut p = policy();
    p["timeoutMs"] = json!(4000);
    let t0 = std::time::Instant::now();
    let r = run(
        &c,
        "--rm",
        &p,
        &[],
        &rootfs,
        "vmto",
        "sleep 600 & sleep 600",
    );
    assert_eq!(r.code, 137, "{r:?}\n{}", c.log());
    assert!(t0.elapsed().as_secs() < 120, "the deadline did not fire");

    let r = run(
        &c,
        "-d",
        &policy(),
        &[],
        &rootfs,
        "vmex",
        "echo init > /tmp/mark; sleep 1000",
    );
    assert_eq!(r.code, 0, "{r:?}\n{}", c.log());
    let mut out = String::new();
    for _ in 0..200 {
        let r = c.ctr(&[
            "tasks",
            "exec",
            "--exec-id",
            "e1",
            "vmex",
            "/bin/sh",
            "-c",
            "cat /tmp/mark; cat /etc/secret && echo READ-SECRET; echo e > /work/e && echo WROTE; \
             grep '^Seccomp:' /proc/self/status; exit 3",
        ]);
        out = format!("{r:?}");
        if r.code == 3 && r.stdout.contains("init") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(out.contains("code: 3"), "{out}\n{}", c.log());
    assert!(
        out.contains("init") && out.contains("WROTE") && !out.contains("READ-SECRET"),
        "{out}"
    );
    assert!(out.contains("Seccomp:\\t2"), "exec is not confined: {out}");
    let r = c.ctr_input(
        &["tasks", "exec", "--exec-id", "e2", "vmex", "/bin/cat"],
        "through stdin\n",
    );
    assert_eq!(r.stdout, "through stdin\n", "{r:?}");
    let r = c.ctr(&["tasks", "kill", "-s", "SIGKILL", "-a", "vmex"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(c.wait_stopped(), "{}", c.ctr(&["tasks", "ls"]).stdout);
    assert_eq!(c.ctr(&["tasks", "delete", "vmex"]).code, 0);
    assert_eq!(c.ctr(&["containers", "delete", "vmex"]).code, 0);
    let left = leftovers(&c);
    assert!(left.is_empty(), "left behind: {left:?}");
}
