//! Robustness (root): many cycles leave nothing behind; a shim killed with SIGKILL is cleaned up
//! by containerd's `delete`; restarting containerd does not disturb running containers and the
//! shim serves the new containerd.

use std::collections::BTreeMap;
use std::time::Duration;

use agentcell_e2e::{Containerd, image};
use serde_json::json;

const RUNTIME: &str = "io.containerd.agentcell.v2";

/// The census is host-wide: these tests run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn annotation() -> String {
    let p = json!({"version": "1.0.0",
        "filesystem": {"readwritePaths": ["/work"], "deniedPaths": ["/etc/secret"]},
        "network": {"egress": {"default": "deny"}}});
    format!("agentcell.dev/mxc-policy={p}")
}

/// `ctr run -d` of `/bin/sleep SECONDS` under the suite's policy, which must succeed.
fn sleep_detached(c: &Containerd, rootfs: &std::path::Path, id: &str, seconds: &str) {
    let r = c.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--annotation",
        &annotation(),
        "--rootfs",
        rootfs.to_str().unwrap(),
        id,
        "/bin/sleep",
        seconds,
    ]);
    assert_eq!(r.code, 0, "{r:?}\n{}", c.log());
}

/// `ctr run --rm` of `/bin/true` as `id`, which must exit 0.
fn run_true(c: &Containerd, rootfs: &std::path::Path, id: &str) {
    let r = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--annotation",
        &annotation(),
        "--rootfs",
        rootfs.to_str().unwrap(),
        id,
        "/bin/true",
    ]);
    assert_eq!(r.code, 0, "{id}: {r:?}\n{}", c.log());
}

fn count_lines(cmd: &str, args: &[&str]) -> usize {
    let out = std::process::Command::new(cmd).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

fn entries(dir: &str) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

/// What a container could leave behind, counted host-wide (shim sockets: those of the ids the
/// tests use, since other containerds may run on the host).
fn census(c: &Containerd) -> BTreeMap<&'static str, usize> {
    let sockets = (0..=200)
        .map(|i| format!("cyc{i}"))
        .chain(["k0", "k1", "r1"].map(String::from))
        .filter(|id| c.shim_socket(id).exists())
        .count();
    let cgroups = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|e| entries(&e.path().join(&c.namespace).to_string_lossy()))
        .sum();
    BTreeMap::from([
        ("mounts", count_lines("cat", &["/proc/self/mountinfo"])),
        ("cgroups", cgroups),
        ("netns", entries("/run/netns")),
        ("nft tables", count_lines("nft", &["list", "tables"])),
        ("links", count_lines("ip", &["-o", "link"])),
        ("shim sockets", sockets),
        ("shim processes", c.shim_pids().len()),
        (
            "shim state",
            entries(&format!("/run/agentcell/shim/{}", c.namespace)),
        ),
    ])
}

fn settle(c: &Containerd) {
    for _ in 0..100 {
        if c.shim_pids().is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn two_hundred_cycles_leave_nothing_behind() {
    let _serial = serial();
    let c = Containerd::start("cycles");
    let rootfs = image::rootfs(&c.dir.join("rootfs"));
    // One cycle first: the first run creates what is shared and kept (the state root).
    let run = |i: usize| run_true(&c, &rootfs, &format!("cyc{i}"));
    run(0);
    settle(&c);
    let before = census(&c);
    for i in 1..=200 {
        run(i);
    }
    settle(&c);
    let after = census(&c);
    assert_eq!(before, after, "what 200 cycles left behind");
}

#[test]
fn a_shim_killed_mid_run_is_cleaned_up_by_delete() {
    let _serial = serial();
    let c = Containerd::start("shimkill");
    let rootfs = image::rootfs(&c.dir.join("rootfs"));
    // One container first, deleted as usual: what every container of this containerd namespace
    // shares (its parent cgroups, the shim's state directory for the namespace) is counted
    // before and after, so only what the killed shim's container left differs.
    run_true(&c, &rootfs, "k0");
    settle(&c);
    let before = census(&c);
    sleep_detached(&c, &rootfs, "k1", "4242");
    let sleeping = || count_lines("pgrep", &["-f", "^/bin/sleep 4242$"]);
    // `ctr run -d` returns once the container is started, which may be before its PID 1 has
    // exec'd the workload.
    for _ in 0..200 {
        if sleeping() == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(sleeping(), 1);
    let shims = c.shim_pids();
    let describe = |pids: &[i32]| {
        pids.iter()
            .map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    assert_eq!(shims.len(), 1, "{}", describe(&shims));
    // SAFETY: killing the test's own shim.
    unsafe { libc::kill(shims[0], libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(300));
    // containerd notices the dead shim and runs `containerd-shim-agentcell-v2 delete`; an
    // explicit delete must then succeed too.
    let _ = c.ctr(&["tasks", "delete", "-f", "k1"]);
    let _ = c.ctr(&["containers", "delete", "k1"]);
    for _ in 0..100 {
        if sleeping() == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        sleeping(),
        0,
        "the container outlived its deleted task\n{}",
        c.log()
    );
    settle(&c);
    assert_eq!(before, census(&c), "what the killed shim left behind");
}

#[test]
fn restarting_containerd_keeps_containers_running_and_served() {
    let _serial = serial();
    let mut c = Containerd::start("restart");
    let rootfs = image::rootfs(&c.dir.join("rootfs"));
    sleep_detached(&c, &rootfs, "r1", "4343");
    c.stop();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        count_lines("pgrep", &["-f", "^/bin/sleep 4343$"]),
        1,
        "containerd's exit took the container"
    );
    c.launch();
    let ls = c.ctr(&["tasks", "ls"]);
    assert!(
        ls.stdout.contains("r1") && ls.stdout.contains("RUNNING"),
        "{ls:?}"
    );
    let r = c.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "after-restart",
        "r1",
        "/bin/sh",
        "-c",
        "cat /etc/secret || echo STILL-DENIED",
    ]);
    assert_eq!(r.code, 0, "{r:?}\n{}", c.log());
    assert!(r.stdout.contains("STILL-DENIED"), "{r:?}");
    assert_eq!(
        c.ctr(&["tasks", "kill", "-a", "-s", "SIGKILL", "r1"]).code,
        0
    );
    assert!(c.wait_stopped(), "{}", c.ctr(&["tasks", "ls"]).stdout);
    assert_eq!(c.ctr(&["tasks", "delete", "r1"]).code, 0);
}

/// CPU time (utime + stime, clock ticks) of `pid`.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, a)| a);
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5), counted after the command's closing parenthesis.
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// A shim whose containerd is gone idles even when it has something to log (a container exits
/// meanwhile): the log FIFO has no reader, and a write there must not feed a SIGPIPE → log →
/// SIGPIPE loop through containerd-shim's signal thread (it once burned a core for as long as
/// containerd stayed away). Logging resumes when containerd is back.
#[test]
fn a_shim_without_containerd_does_not_spin_on_its_log() {
    let _serial = serial();
    let mut c = Containerd::start("nolog");
    let rootfs = image::rootfs(&c.dir.join("rootfs"));
    sleep_detached(&c, &rootfs, "n1", "1");
    let shims = c.shim_pids();
    assert_eq!(shims.len(), 1, "{shims:?}");
    c.stop();
    // The container exits while containerd is away: the shim logs it and fails to publish.
    std::thread::sleep(Duration::from_secs(2));
    let before = cpu_ticks(shims[0]);
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(shims[0]).saturating_sub(before);
    assert!(
        used < 40,
        "the shim used {used} clock ticks of CPU in 2 s with containerd gone"
    );
    c.launch();
    let mut gone = false;
    for _ in 0..100 {
        let _ = c.ctr(&["tasks", "delete", "n1"]);
        if !c.ctr(&["tasks", "ls"]).stdout.contains("n1") {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(gone, "{}", c.ctr(&["tasks", "ls"]).stdout);
}
