//! The `ctr` path (root): containerd 1.6 from Debian starts `containerd-shim-agentcell-v2` for
//! `ctr run --runtime io.containerd.agentcell.v2`; the policy comes from the
//! `agentcell.dev/mxc-policy` annotation and must hold inside the container, for `ctr task
//! exec` too.

use agentcell_e2e::testhost::TestHost;
use agentcell_e2e::{Containerd, image};
use serde_json::json;

const RUNTIME: &str = "io.containerd.agentcell.v2";

fn annotation(policy: &serde_json::Value) -> String {
    format!("agentcell.dev/mxc-policy={policy}")
}

fn policy() -> serde_json::Value {
    json!({"version": "1.0.0",
        "filesystem": {"readwritePaths": ["/work"], "deniedPaths": ["/etc/secret"]},
        "network": {"egress": {"default": "deny"}}})
}

/// `ctr run --rm` of `script` under `policy`, on a busybox root filesystem.
fn run(c: &Containerd, id: &str, policy: &serde_json::Value, script: &str) -> agentcell_e2e::Ran {
    let rootfs = image::rootfs(&c.dir.join(format!("rootfs-{id}")));
    c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--annotation",
        &annotation(policy),
        "--rootfs",
        rootfs.to_str().unwrap(),
        id,
        "/bin/sh",
        "-c",
        script,
    ])
}

#[test]
fn the_policy_holds_in_a_container_and_exit_codes_pass_through() {
    let c = Containerd::start("ctr-fs");
    let r = run(
        &c,
        "fs1",
        &policy(),
        "cat /etc/secret && echo READ-SECRET; cat /etc/passwd >/dev/null && echo READ-PASSWD; \
         echo x > /work/f && echo WROTE-WORK; echo y > /f 2>/dev/null || echo ROOT-READONLY; \
         echo z > /tmp/t && echo WROTE-TMP; grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status; exit 7",
    );
    assert_eq!(r.code, 7, "{r:?}\n{}", c.log());
    assert!(!r.stdout.contains("READ-SECRET"), "{}", r.stdout);
    assert!(r.stdout.contains("READ-PASSWD"), "{}", r.stdout);
    assert!(r.stdout.contains("WROTE-WORK"), "{}", r.stdout);
    assert!(r.stdout.contains("ROOT-READONLY"), "{}", r.stdout);
    assert!(r.stdout.contains("WROTE-TMP"), "{}", r.stdout);
    // The plan's seccomp filter is loaded (ctr gives the container none of its own) and no
    // privilege can be gained.
    assert!(r.stdout.contains("Seccomp:\t2"), "{}", r.stdout);
    assert!(r.stdout.contains("NoNewPrivs:\t1"), "{}", r.stdout);
    // The write reached the real directory.
    assert_eq!(
        std::fs::read_to_string(c.dir.join("rootfs-fs1/work/f")).unwrap(),
        "x\n"
    );
}

#[test]
fn egress_is_fenced_by_the_policy() {
    let host = TestHost::new(61, &[8080, 8081]);
    let c = Containerd::start("ctr-net");
    let p = json!({"version": "1.0.0",
        "network": {"egress": {"default": "deny", "allow": [
            {"to": [{"cidr": "198.18.61.2/32"}], "ports": [{"protocol": "tcp", "port": 8080}]}]}}});
    let r = run(
        &c,
        "net1",
        &p,
        "for t in '198.18.61.2 8080' '198.18.61.2 8081' '198.18.61.3 8080'; do \
           echo \"$t $(nc -w 2 $t </dev/null 2>/dev/null || echo BLOCKED)\"; done",
    );
    assert_eq!(r.code, 0, "{r:?}\n{}", c.log());
    assert!(
        r.stdout.contains("198.18.61.2 8080 BANNER-8080"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("BANNER-8081"), "{}", r.stdout);
    assert!(
        !r.stdout.contains("198.18.61.3 8080 BANNER"),
        "{}",
        r.stdout
    );
    drop(host);
}

#[test]
fn net_raw_is_dropped_and_ping_keeps_its_icmp_sockets() {
    // ctr's default spec grants CAP_NET_RAW (bit 13); the pod did not ask to keep it.
    let c = Containerd::start("ctr-netraw");
    let r = run(
        &c,
        "raw1",
        &policy(),
        "b=$(sed -n 's/^CapBnd:\t//p' /proc/self/status); \
         if [ $(( 0x$b & 0x2000 )) -eq 0 ]; then echo NO-NET-RAW; else echo HAS-NET-RAW; fi; \
         echo \"RANGE $(cat /proc/sys/net/ipv4/ping_group_range)\"",
    );
    assert_eq!(r.code, 0, "{r:?}\n{}", c.log());
    assert!(r.stdout.contains("NO-NET-RAW"), "{}", r.stdout);
    assert!(r.stdout.contains("RANGE 0\t2147483647"), "{}", r.stdout);
}

#[test]
fn the_timeout_kills_the_container() {
    let c = Containerd::start("ctr-timeout");
    let mut p = policy();
    p["timeoutMs"] = json!(1000);
    let t0 = std::time::Instant::now();
    let r = run(&c, "to1", &p, "sleep 60");
    assert_eq!(r.code, 137, "{r:?}");
    assert!(t0.elapsed().as_secs() < 30, "the deadline did not fire");
}

#[test]
fn exec_ps_metrics_and_kill_behave_and_exec_is_confined() {
    let c = Containerd::start("ctr-exec");
    let rootfs = image::rootfs(&c.dir.join("rootfs"));
    let r = c.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--annotation",
        &annotation(&policy()),
        "--rootfs",
        rootfs.to_str().unwrap(),
        "ex1",
        "/bin/sh",
        "-c",
        "sleep 1000 & sleep 1000",
    ]);
    assert_eq!(r.code, 0, "{r:?}\n{}", c.log());
    let r = c.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "e1",
        "ex1",
        "/bin/sh",
        "-c",
        "cat /etc/secret && echo READ-SECRET; echo e > /work/e && echo WROTE; echo n > /n 2>/dev/null || echo RO; grep '^Seccomp:' /proc/self/status; exit 3",
    ]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(
        !r.stdout.contains("READ-SECRET") && r.stdout.contains("WROTE") && r.stdout.contains("RO"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("Seccomp:\t2"),
        "exec runs without the plan's filter: {}",
        r.stdout
    );
    let r = c.ctr_input(
        &["tasks", "exec", "--exec-id", "e2", "ex1", "/bin/cat"],
        "through stdin\n",
    );
    assert_eq!(r.stdout, "through stdin\n", "{r:?}");
    let ps = c.ctr(&["tasks", "ps", "ex1"]);
    // The init, the shell and its two sleeps.
    assert!(ps.stdout.lines().count() >= 4, "{}", ps.stdout);
    let m = c.ctr(&["tasks", "metrics", "ex1"]);
    assert!(
        m.stdout.contains("memory.usage_in_bytes") || m.stdout.contains("memory.usage"),
        "{m:?}"
    );
    assert!(m.stdout.contains("pids.current"), "{}", m.stdout);
    let r = c.ctr(&["tasks", "kill", "-s", "SIGKILL", "-a", "ex1"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(c.wait_stopped(), "{}", c.ctr(&["tasks", "ls"]).stdout);
    assert_eq!(c.ctr(&["tasks", "delete", "ex1"]).code, 0);
}

#[test]
fn a_bad_policy_is_refused_with_its_key_path_and_reason() {
    let c = Containerd::start("ctr-bad");
    let bad = json!({"version": "1.0.0", "network": {"egress": {"default": "maybe"}}});
    let r = run(&c, "bad1", &bad, "echo STARTED");
    assert_ne!(r.code, 0);
    assert!(!r.stdout.contains("STARTED"));
    assert!(
        r.stderr.contains("agentcell.dev/mxc-policy"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("network.egress.default"), "{}", r.stderr);
    // A tampered digest.
    let rootfs = image::rootfs(&c.dir.join("rootfs-d"));
    let r = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--annotation",
        &annotation(&policy()),
        "--annotation",
        "agentcell.dev/policy-digest=sha256:0000",
        "--rootfs",
        rootfs.to_str().unwrap(),
        "bad2",
        "/bin/true",
    ]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("agentcell.dev/policy-digest"),
        "{}",
        r.stderr
    );
    // An unknown key under agentcell.dev/.
    let r = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--annotation",
        &annotation(&policy()),
        "--annotation",
        "agentcell.dev/polcy=1",
        "--rootfs",
        rootfs.to_str().unwrap(),
        "bad3",
        "/bin/true",
    ]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("agentcell.dev/polcy"), "{}", r.stderr);
    // No policy and no node default.
    let r = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--rootfs",
        rootfs.to_str().unwrap(),
        "bad4",
        "/bin/true",
    ]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("no policy"), "{}", r.stderr);
    assert!(c.ctr(&["tasks", "ls", "-q"]).stdout.trim().is_empty());
}

#[test]
fn a_terminal_works_for_the_init_and_for_exec() {
    let c = Containerd::start("ctr-tty");
    let rootfs = image::rootfs(&c.dir.join("rootfs"));
    // `script` gives ctr the terminal it insists on for -t.
    let under_tty = |cmd: String| {
        let out = agentcell_e2e::bounded::output(
            std::process::Command::new("script").args(["-qec", &cmd, "/dev/null"]),
            None,
            agentcell_e2e::bounded::step_limit(),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", c.log()));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ctr = format!("ctr -a {} -n {}", c.sock.display(), c.namespace);
    let ann = annotation(&policy()).replace('\'', "");
    let out = under_tty(format!(
        "{ctr} run --rm -t --runtime {RUNTIME} --annotation '{ann}' --rootfs {} tty1 sh -c 'tty; echo TTY-INIT'",
        rootfs.display()
    ));
    assert!(
        out.contains("/dev/pts/") && out.contains("TTY-INIT"),
        "{out}\n{}",
        c.log()
    );
    let r = c.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--annotation",
        &annotation(&policy()),
        "--rootfs",
        rootfs.to_str().unwrap(),
        "tty2",
        "/bin/sleep",
        "1000",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let out = under_tty(format!(
        "{ctr} tasks exec -t --exec-id x tty2 sh -c 'tty; cat /etc/secret || echo TTY-EXEC-DENIED'"
    ));
    assert!(
        out.contains("/dev/pts/") && out.contains("TTY-EXEC-DENIED"),
        "{out}"
    );
}

#[test]
fn lifecycle_and_oom_events_reach_containerd() {
    let c = Containerd::start("ctr-events");
    let rootfs = image::rootfs(&c.dir.join("rootfs"));
    let mut events = std::process::Command::new("ctr")
        .arg("-a")
        .arg(&c.sock)
        .args(["-n", &c.namespace, "events"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    // 32 MiB of memory, and a shell that wants 100 MB in a variable.
    let r = c.ctr(&[
        "run",
        "--rm",
        "--memory-limit",
        "33554432",
        "--runtime",
        RUNTIME,
        "--annotation",
        &annotation(&policy()),
        "--rootfs",
        rootfs.to_str().unwrap(),
        "oom1",
        "/bin/sh",
        "-c",
        "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo SURVIVED",
    ]);
    assert!(!r.stdout.contains("SURVIVED"), "{r:?}");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let _ = events.kill();
    let out = events.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for topic in [
        "/tasks/create",
        "/tasks/start",
        "/tasks/oom",
        "/tasks/exit",
        "/tasks/delete",
    ] {
        assert!(text.contains(topic), "{topic} missing from:\n{text}");
    }
}

/// 500 execs, 8 at a time, into one container while other clients keep the shim busy (`tasks
/// ps` and `tasks metrics` in loops): every exec returns, with its own output and exit code.
/// The shim once built execs by raw clones of itself, multi-threaded: an exec's init could
/// inherit a lock held by another of the shim's threads and wait on it forever. Each exec is
/// bounded (two minutes), so a hang fails the test with where the stuck process waits.
#[test]
fn five_hundred_concurrent_execs_into_a_busy_shim_all_return() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;
    const EXECS: usize = 500;
    const PARALLEL: usize = 8;
    let c = Containerd::start("ctr-stress");
    let rootfs = image::rootfs(&c.dir.join("rootfs"));
    let r = c.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--annotation",
        &annotation(&policy()),
        "--rootfs",
        rootfs.to_str().unwrap(),
        "st1",
        "/bin/sleep",
        "100000",
    ]);
    assert_eq!(r.code, 0, "{r:?}\n{}", c.log());
    let next = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    let busy_calls = AtomicUsize::new(0);
    let limit = Duration::from_secs(120);
    std::thread::scope(|s| {
        for args in [["tasks", "ps", "st1"], ["tasks", "metrics", "st1"]] {
            let (c, done, busy_calls) = (&c, &done, &busy_calls);
            s.spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    let r = c.ctr_within(&args, None, limit);
                    assert_eq!(r.code, 0, "{args:?}: {r:?}");
                    busy_calls.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let workers: Vec<_> = (0..PARALLEL)
            .map(|_| {
                let (c, next) = (&c, &next);
                s.spawn(move || {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= EXECS {
                            return;
                        }
                        let id = format!("s{i}");
                        // Every other exec reads its stdin (the shim's stdin copier and its
                        // pipe); the rest exit with a code of their own.
                        if i % 2 == 0 {
                            let input = format!("in-{i}\n");
                            let r = c.ctr_within(
                                &["tasks", "exec", "--exec-id", &id, "st1", "/bin/cat"],
                                Some(input.as_bytes()),
                                limit,
                            );
                            assert_eq!((r.code, r.stdout.as_str()), (0, input.as_str()), "{r:?}");
                        } else {
                            let script = format!("echo out-{i}; exit {}", i % 100);
                            let r = c.ctr_within(
                                &[
                                    "tasks",
                                    "exec",
                                    "--exec-id",
                                    &id,
                                    "st1",
                                    "/bin/sh",
                                    "-c",
                                    &script,
                                ],
                                None,
                                limit,
                            );
                            assert_eq!(
                                (r.code, r.stdout.as_str()),
                                ((i % 100) as i32, format!("out-{i}\n").as_str()),
                                "{r:?}"
                            );
                        }
                    }
                })
            })
            .collect();
        let mut failed = None;
        for w in workers {
            if let Err(e) = w.join() {
                failed.get_or_insert(e);
            }
        }
        done.store(true, Ordering::Relaxed);
        if let Some(e) = failed {
            std::panic::resume_unwind(e);
        }
    });
    assert!(
        busy_calls.load(Ordering::Relaxed) > 0,
        "the shim was not kept busy"
    );
    // The container is intact: one more exec, then it goes away cleanly.
    let r = c.ctr(&["tasks", "exec", "--exec-id", "last", "st1", "/bin/true"]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = c.ctr(&["tasks", "kill", "-s", "SIGKILL", "-a", "st1"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(c.wait_stopped(), "{}", c.ctr(&["tasks", "ls"]).stdout);
    assert_eq!(c.ctr(&["tasks", "delete", "st1"]).code, 0);
}

/// Issue 15, class 1, through the shim: a workload of one pod can write a host tree that
/// another pod mounts (a shared hostPath or emptyDir). While a loop swaps a subdirectory of that
/// tree with a symlink to the host's `/` (`renameat2(RENAME_EXCHANGE)`), containers start with
/// that subdirectory as a bind source (`/data`) and the whole tree at `/work` with a denied path
/// inside the subdirectory. The shim resolves each source once and mounts what it resolved;
/// every container either runs with a clean view (no host file through `/data`, the denied token
/// masked) or is refused, naming the path. Before the fix the runtime bound the source by its
/// name and followed the symlink: the host's `/` at `/data`.
#[test]
fn pod_mounts_swapped_for_a_symlink_never_expose_the_host() {
    use std::os::unix::ffi::OsStrExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    const STARTS: usize = 50;
    let c = Containerd::start("ctr-race");
    let tree = c.dir.join("tree");
    std::fs::create_dir_all(tree.join("sub/secret")).unwrap();
    std::fs::write(tree.join("sub/secret/token"), "DENIED-TOKEN\n").unwrap();
    std::fs::write(tree.join("sub/inside"), "inside\n").unwrap();
    std::os::unix::fs::symlink("/", tree.join("swap")).unwrap();
    // A host file outside every view: seen through `/data` only if the host's `/` is there.
    let marker = c.dir.join("outside-marker");
    std::fs::write(&marker, "HOST-MARKER\n").unwrap();
    let rootfs = image::rootfs(&c.dir.join("rootfs-race"));
    let policy = json!({"version": "1.0.0",
        "filesystem": {"readwritePaths": ["/work", "/data"], "deniedPaths": ["/work/sub/secret"]},
        "network": {"egress": {"default": "deny"}}});
    let script = format!(
        "if test -e /data{m}; then echo LEAK-HOST-ROOT; fi; \
         for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do \
           cat /work/sub/secret/token 2>/dev/null; test -e /data{m} && echo LEAK-HOST-ROOT; \
         done; cat /data/inside 2>/dev/null; echo RAN",
        m = marker.display()
    );
    let cstr = |p: &std::path::Path| std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let (a, b) = (cstr(&tree.join("sub")), cstr(&tree.join("swap")));
    let stop = AtomicBool::new(false);
    let (mut ran, mut refused, mut unexplained) = (0, 0, 0);
    // Stops the swapper however the loop below ends: a failed assertion (or a `ctr` past its
    // limit) unwinds through here, and without this the scope would wait on the swapper forever.
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: two NUL-terminated paths; RENAME_EXCHANGE swaps the two names.
                unsafe {
                    libc::syscall(
                        libc::SYS_renameat2,
                        libc::AT_FDCWD,
                        a.as_ptr(),
                        libc::AT_FDCWD,
                        b.as_ptr(),
                        libc::RENAME_EXCHANGE,
                    )
                };
            }
        });
        for i in 0..STARTS {
            let id = format!("race{i}");
            let src_sub = format!(
                "type=bind,src={},dst=/data,options=rbind:rw",
                tree.join("sub").display()
            );
            let src_tree = format!(
                "type=bind,src={},dst=/work,options=rbind:rw",
                tree.display()
            );
            let r = c.ctr(&[
                "run",
                "--rm",
                "--runtime",
                RUNTIME,
                "--annotation",
                &annotation(&policy),
                "--mount",
                &src_sub,
                "--mount",
                &src_tree,
                "--rootfs",
                rootfs.to_str().unwrap(),
                &id,
                "/bin/sh",
                "-c",
                &script,
            ]);
            let seen = format!("{}{}", r.stdout, r.stderr);
            assert!(
                !seen.contains("LEAK-HOST-ROOT") && !seen.contains("HOST-MARKER"),
                "{id}: the host's / was mounted into the container: {r:?}"
            );
            assert!(
                !seen.contains("DENIED-TOKEN"),
                "{id}: the denied token was readable: {r:?}"
            );
            if r.code == 0 && r.stdout.contains("RAN") {
                ran += 1;
            } else {
                // Refused: the create names the path it would not follow. The runtime itself
                // refuses a mask target that became a symlink (it resolves inside the rootfs);
                // the shim then names the swapped path if it still sees the symlink, else the
                // runtime's "failed to prepare rootfs" stands.
                if r.stderr.contains("symlink") || r.stderr.contains("does not hold") {
                    refused += 1;
                } else {
                    assert!(
                        r.stderr.contains("failed to prepare rootfs"),
                        "{id}: neither ran nor refused with a reason: {r:?}\n{}",
                        c.log()
                    );
                    unexplained += 1;
                }
                let _ = c.ctr(&["containers", "rm", &id]);
            }
        }
    });
    eprintln!(
        "{ran} ran with a clean view, {refused} refused naming the path, {unexplained} refused by the runtime"
    );
    assert_eq!(ran + refused + unexplained, STARTS);
    // The swapped path is named far more often than not (the shim looks at it 64 times).
    assert!(
        refused >= unexplained,
        "{refused} named, {unexplained} unexplained"
    );
}
