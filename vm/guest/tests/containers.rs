//! Root suite: drives the agent's container machinery on this host, no VM. The agent runs in a
//! forked child that has its own mount namespace (the host's mounts are untouched), serves one
//! end of a socketpair as its channel, and takes a directory as SHARES_DIR (a busybox rootfs
//! and two volume shares). The test is the host side of the protocol.

use std::collections::HashMap;
use std::fs;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::symlink;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agentcell_guest::{Config, serve};
use agentcell_vmproto::{
    ContainerSpec, Frame, GuestInfo, GuestMessage, HostMessage, LandlockSpec, Mount, MountSource,
    ProcessSpec, Root, pack_sock_filter, read_frame, write_frame,
};

/// Held while a test writes its busybox copy and while one forks its agent. The forked agent
/// never execs, so it keeps every descriptor the harness had open at fork time: a copy still
/// open for writing in another test thread would make that test's execve fail with ETXTBSY.
static FORK_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "hostname", "sleep", "true", "kill", "unshare", "test", "ls",
];

struct Agent {
    dir: PathBuf,
    cgroup: Option<PathBuf>,
    host: UnixStream,
    pid: libc::pid_t,
    /// Output per handle: (stdout, stderr).
    out: HashMap<u32, (Vec<u8>, Vec<u8>)>,
    /// Control messages read while waiting for another one.
    backlog: Vec<GuestMessage>,
    info: GuestInfo,
}

#[derive(Debug)]
struct Outcome {
    stdout: String,
    stderr: String,
    status: i32,
    timed_out: bool,
}

impl Agent {
    fn start(name: &str) -> Agent {
        // SAFETY: geteuid cannot fail.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "this suite needs root (CI runs as root)"
        );
        let dir = PathBuf::from(format!(
            "/var/tmp/agentcell-guest-test-{name}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        let shares = dir.join("shares");
        let rootfs = shares.join("rootfs");
        for d in [
            "bin", "etc", "secret", "masked", "proc", "dev", "tmp", "ro", "rw",
        ] {
            fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        let fork_guard = FORK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for a in APPLETS {
            symlink("busybox", rootfs.join("bin").join(a)).unwrap();
        }
        fs::write(rootfs.join("secret/file"), "topsecret\n").unwrap();
        fs::write(rootfs.join("masked/file"), "maskedcontent\n").unwrap();
        fs::create_dir_all(shares.join("ro")).unwrap();
        fs::write(shares.join("ro/existing"), "from the ro share\n").unwrap();
        fs::create_dir_all(shares.join("rw")).unwrap();
        let cgroup = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .iter()
            .map(Path::new)
            .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.subtree_control").exists())
            .map(|p| {
                p.join(format!(
                    "agentcell-guest-test-{name}-{}",
                    std::process::id()
                ))
            });

        let (host, guest) = UnixStream::pair().unwrap();
        host.set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        let cfg = Config {
            shares_dir: shares.clone(),
            state_dir: dir.join("state"),
            dev_dir: PathBuf::from("/dev"),
            cgroup_root: cgroup.clone(),
            landlock_abi: agentcell_guest::sys::landlock_abi(),
            sync_on_exit: false,
        };
        // SAFETY: the child only sets up its namespace and runs the agent, then `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            drop(host);
            // SAFETY: plain system calls in the forked child.
            unsafe {
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    libc::_exit(90);
                }
                libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                );
                // Processes of exec'd containers whose helper exited come back to us.
                libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
            }
            if let Some(cg) = &cfg.cgroup_root {
                let _ = fs::create_dir_all(cg);
            }
            let info = GuestInfo {
                version: agentcell_vmproto::VERSION,
                kernel_release: "test".into(),
                landlock_abi: cfg.landlock_abi,
                boot_ms: 0,
                warnings: vec![],
            };
            // SAFETY: the raw descriptor of `guest` is handed over to the agent.
            let chan = unsafe { OwnedFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(guest)) };
            let code = match serve(chan, cfg, info) {
                Ok(_) => 0,
                Err(e) => {
                    eprintln!("agent: {e}");
                    1
                }
            };
            // SAFETY: leaving the forked child without the harness's destructors.
            unsafe { libc::_exit(code) };
        }
        drop(fork_guard);
        drop(guest);
        let mut a = Agent {
            dir,
            cgroup,
            host,
            pid,
            out: HashMap::new(),
            backlog: Vec::new(),
            info: GuestInfo {
                version: 0,
                kernel_release: String::new(),
                landlock_abi: 0,
                boot_ms: 0,
                warnings: vec![],
            },
        };
        match a.next_control() {
            GuestMessage::Ready(info) => a.info = info,
            other => panic!("expected ready, got {other:?}"),
        }
        a
    }

    fn send(&mut self, m: HostMessage) {
        write_frame(&mut self.host, &Frame::Control(m)).unwrap();
    }

    fn send_stdin(&mut self, handle: u32, bytes: &[u8]) {
        let f: Frame<HostMessage> = Frame::Data {
            handle,
            fd: 0,
            bytes: bytes.to_vec(),
        };
        write_frame(&mut self.host, &f).unwrap();
    }

    /// Reads frames, keeping output, until a control message arrives.
    fn next_control(&mut self) -> GuestMessage {
        loop {
            if let Some(m) = self.next_frame() {
                return m;
            }
        }
    }

    /// Reads one frame: a control message is returned, output is kept.
    fn next_frame(&mut self) -> Option<GuestMessage> {
        let f: Frame<GuestMessage> = read_frame(&mut self.host)
            .expect("reading the agent channel (a 120 s timeout means the agent hung)")
            .expect("the agent closed the channel");
        match f {
            Frame::Control(GuestMessage::Log { level, message }) => {
                eprintln!("agent {level}: {message}");
                None
            }
            Frame::Control(m) => Some(m),
            Frame::Data { handle, fd, bytes } => {
                let e = self.out.entry(handle).or_default();
                if fd == 2 {
                    e.1.extend_from_slice(&bytes)
                } else {
                    e.0.extend_from_slice(&bytes)
                }
                None
            }
        }
    }

    /// The first control message `pick` accepts (earlier ones are kept for later waits).
    fn wait<T>(&mut self, mut pick: impl FnMut(&GuestMessage) -> Option<T>) -> T {
        if let Some(i) = self.backlog.iter().position(|m| pick(m).is_some()) {
            let m = self.backlog.remove(i);
            return pick(&m).unwrap();
        }
        loop {
            let m = self.next_control();
            if let Some(t) = pick(&m) {
                return t;
            }
            self.backlog.push(m);
        }
    }

    /// `Created`/`Started` (Ok with the pid) or `Failed` (Err with step and message).
    fn answer(&mut self, handle: u32, want_started: bool) -> Result<i32, (String, String)> {
        self.wait(|m| match m {
            GuestMessage::Created { handle: h, pid } if *h == handle && !want_started => {
                Some(Ok(*pid))
            }
            GuestMessage::Started { handle: h, pid } if *h == handle && want_started => {
                Some(Ok(*pid))
            }
            GuestMessage::Failed {
                handle: h,
                step,
                message,
            } if *h == handle => Some(Err((step.clone(), message.clone()))),
            _ => None,
        })
    }

    fn create_start(&mut self, handle: u32, spec: ContainerSpec) {
        self.send(HostMessage::Create {
            handle,
            spec: Box::new(spec),
        });
        self.answer(handle, false).expect("created");
        self.send(HostMessage::Start { handle });
        self.answer(handle, true).expect("started");
    }

    fn exited(&mut self, handle: u32) -> Outcome {
        let (status, timed_out) = self.wait(|m| match m {
            GuestMessage::Exited {
                handle: h,
                status,
                timed_out,
            } if *h == handle => Some((*status, *timed_out)),
            _ => None,
        });
        let (o, e) = self.out.remove(&handle).unwrap_or_default();
        Outcome {
            stdout: String::from_utf8_lossy(&o).into_owned(),
            stderr: String::from_utf8_lossy(&e).into_owned(),
            status,
            timed_out,
        }
    }

    fn run(&mut self, handle: u32, spec: ContainerSpec) -> Outcome {
        self.create_start(handle, spec);
        let o = self.exited(handle);
        self.send(HostMessage::Delete { handle });
        o
    }

    /// Waits until `handle`'s stdout contains `text`.
    fn wait_output(&mut self, handle: u32, text: &str) {
        while !self
            .out
            .get(&handle)
            .is_some_and(|(o, _)| String::from_utf8_lossy(o).contains(text))
        {
            if let Some(m) = self.next_frame() {
                self.backlog.push(m);
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = write_frame(&mut self.host, &Frame::Control(HostMessage::Shutdown));
        let mut st = 0;
        // SAFETY: reaping our forked agent.
        unsafe { libc::waitpid(self.pid, &mut st, 0) };
        if let Some(cg) = &self.cgroup {
            // Killed containers leave their cgroup a moment after the kill (a test that failed
            // leaves running ones): retry for a while.
            for _ in 0..50 {
                if let Ok(rd) = fs::read_dir(cg) {
                    for e in rd.flatten().filter(|e| e.path().is_dir()) {
                        let _ = fs::write(e.path().join("cgroup.kill"), "1");
                        let _ = fs::remove_dir(e.path());
                    }
                }
                if fs::remove_dir(cg).is_ok() || !cg.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn process(args: &[&str]) -> ProcessSpec {
    ProcessSpec {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        uid: 0,
        gid: 0,
        additional_gids: vec![],
        terminal: false,
        stdin: false,
    }
}

fn spec(id: &str, args: &[&str]) -> ContainerSpec {
    let m = |target: &str, source: MountSource, readonly: bool| Mount {
        target: target.into(),
        source,
        readonly,
    };
    ContainerSpec {
        id: id.into(),
        hostname: format!("cell-{id}"),
        root: Root::Share {
            tag: "rootfs".into(),
            subpath: String::new(),
        },
        root_readonly: true,
        mounts: vec![
            m("/proc", MountSource::Proc, false),
            m("/dev", MountSource::Dev, false),
            m(
                "/tmp",
                MountSource::Tmpfs {
                    size_bytes: 1 << 20,
                    mode: 0o1777,
                },
                false,
            ),
            m(
                "/ro",
                MountSource::Share {
                    tag: "ro".into(),
                    subpath: String::new(),
                },
                true,
            ),
            m(
                "/rw",
                MountSource::Share {
                    tag: "rw".into(),
                    subpath: String::new(),
                },
                false,
            ),
            m("/masked/file", MountSource::MaskFile, false),
            m(
                "/etc/motd",
                MountSource::File {
                    content: "hello from a file mount\n".into(),
                },
                true,
            ),
        ],
        landlock: None,
        seccomp_bpf: vec![],
        seccomp_pod_bpf: vec![],
        process: process(args),
        timeout_ms: None,
        memory_bytes: 0,
        pids_max: 0,
    }
}

#[test]
fn output_and_exit_statuses() {
    let mut a = Agent::start("status");
    let o = a.run(
        1,
        spec("s1", &["sh", "-c", "echo out; echo err >&2; exit 3"]),
    );
    assert_eq!((o.stdout.as_str(), o.stderr.as_str()), ("out\n", "err\n"));
    assert_eq!((o.status, o.timed_out), (3, false));
    assert_eq!(a.run(2, spec("s2", &["true"])).status, 0);
    // The workload is not PID 1 of its namespace: SIGKILL to itself works.
    assert_eq!(
        a.run(3, spec("s3", &["sh", "-c", "kill -9 $$"])).status,
        137
    );
    a.create_start(4, spec("s4", &["sleep", "1000"]));
    a.send(HostMessage::Signal {
        handle: 4,
        signal: 9,
        all: false,
    });
    assert_eq!(a.exited(4).status, 137);
    // A program that does not exist fails `Start` at execve, with its step.
    a.send(HostMessage::Create {
        handle: 5,
        spec: Box::new(spec("s5", &["no-such-program"])),
    });
    a.answer(5, false).unwrap();
    a.send(HostMessage::Start { handle: 5 });
    let (step, msg) = a.answer(5, true).unwrap_err();
    assert_eq!(step, "execve", "{msg}");
    // A mount that cannot be made fails `Create` with the mount's step.
    let mut bad = spec("s6", &["true"]);
    bad.mounts.push(Mount {
        target: "/nope".into(),
        source: MountSource::Share {
            tag: "missing".into(),
            subpath: String::new(),
        },
        readonly: false,
    });
    a.send(HostMessage::Create {
        handle: 6,
        spec: Box::new(bad),
    });
    let (step, _) = a.answer(6, false).unwrap_err();
    assert_eq!(step, "mount /nope");
}

const VIEW_SCRIPT: &str = "cat /secret/file && echo READ-SECRET || echo NO-SECRET
cat /masked/file; echo MASK-END
echo x > /ro/f && echo RO-WRITABLE || echo RO-REFUSED
echo y > /rw/f && echo RW-OK
cat /etc/motd
hostname";

#[test]
fn view_mounts_and_landlock() {
    let mut a = Agent::start("view");
    let plain = a.run(1, spec("v1", &["sh", "-c", VIEW_SCRIPT]));
    assert_eq!(plain.status, 0, "{plain:?}");
    assert!(plain.stdout.contains("topsecret\nREAD-SECRET"), "{plain:?}");
    assert!(plain.stdout.contains("\nMASK-END"), "{plain:?}");
    assert!(!plain.stdout.contains("maskedcontent"), "{plain:?}");
    assert!(plain.stdout.contains("RO-REFUSED"), "{plain:?}");
    assert!(plain.stdout.contains("RW-OK"), "{plain:?}");
    assert!(
        plain.stdout.contains("hello from a file mount"),
        "{plain:?}"
    );
    assert!(plain.stdout.contains("cell-v1"), "{plain:?}");
    assert_eq!(
        fs::read_to_string(a.dir.join("shares/rw/f")).unwrap(),
        "y\n",
        "the rw share's write reached the host"
    );
    assert!(!a.dir.join("shares/ro/f").exists());

    assert!(a.info.landlock_abi >= 1, "this host has no Landlock");
    let mut confined = spec("v2", &["sh", "-c", VIEW_SCRIPT]);
    confined.landlock = Some(LandlockSpec {
        read: vec!["/bin".into(), "/etc".into(), "/ro".into(), "/masked".into()],
        write: vec!["/rw".into(), "/tmp".into()],
        devices: vec!["/dev/null".into()],
        best_effort: false,
    });
    let o = a.run(2, confined);
    assert!(o.stdout.contains("NO-SECRET"), "{o:?}");
    assert!(!o.stdout.contains("topsecret"), "{o:?}");
    assert!(o.stderr.contains("Permission denied"), "{o:?}");
    assert!(o.stdout.contains("RW-OK"), "{o:?}");
    assert!(o.stdout.contains("hello from a file mount"), "{o:?}");
}

/// Refuses `unshare` with ENOMSG (an errno nothing else would give), allows the rest.
fn deny_unshare_bpf() -> Vec<u64> {
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    vec![
        pack_sock_filter(0x20, 0, 0, 4),                 // ld arch
        pack_sock_filter(0x15, 0, 3, AUDIT_ARCH_X86_64), // other arch: allow
        pack_sock_filter(0x20, 0, 0, 0),                 // ld nr
        pack_sock_filter(0x15, 0, 1, libc::SYS_unshare as u32),
        pack_sock_filter(0x06, 0, 0, 0x0005_0000 | libc::ENOMSG as u32), // errno
        pack_sock_filter(0x06, 0, 0, 0x7fff_0000),                       // allow
    ]
}

#[test]
fn seccomp_filter_is_installed_in_run_and_exec() {
    let mut a = Agent::start("seccomp");
    const DENIED: &str = "No message of desired type";
    let cmd = ["sh", "-c", "unshare -U true; echo done"];
    let plain = a.run(1, spec("c1", &cmd));
    assert!(plain.stdout.contains("done"), "{plain:?}");
    assert!(!plain.stderr.contains(DENIED), "{plain:?}");
    let mut filtered = spec(
        "c2",
        &["sh", "-c", "unshare -U true; echo done; sleep 1000"],
    );
    filtered.seccomp_bpf = deny_unshare_bpf();
    a.create_start(2, filtered);
    a.wait_output(2, "done");
    a.send(HostMessage::Exec {
        handle: 3,
        container: 2,
        process: process(&cmd),
    });
    a.answer(3, true).unwrap();
    let o = a.exited(3);
    assert!(o.stderr.contains(DENIED), "exec: {o:?}");
    a.send(HostMessage::Signal {
        handle: 2,
        signal: 9,
        all: true,
    });
    let o = a.exited(2);
    assert_eq!(o.status, 137);
    assert!(o.stderr.contains(DENIED), "run: {o:?}");
    // The pod's own filter alone (the plan's empty) is installed too.
    let mut pod = spec("c4", &cmd);
    pod.seccomp_pod_bpf = deny_unshare_bpf();
    let o = a.run(4, pod);
    assert!(o.stderr.contains(DENIED), "pod filter: {o:?}");
}

#[test]
fn timeout_kills_the_whole_container() {
    let mut a = Agent::start("timeout");
    let mut s = spec("t1", &["sh", "-c", "sleep 1000 & echo started; sleep 1000"]);
    s.timeout_ms = Some(300);
    let o = a.run(1, s);
    // `Exited` follows the end of the container's output, and the background sleep holds its
    // stdout: the exit being reported at all means the background child was killed too.
    assert_eq!((o.status, o.timed_out), (137, true), "{o:?}");
    assert_eq!(o.stdout, "started\n");
}

#[test]
fn exec_joins_the_container_and_stdio_flows() {
    let mut a = Agent::start("exec");
    let mut s = spec(
        "e1",
        &["sh", "-c", "echo marker > /tmp/mark; echo ready; cat"],
    );
    s.process.stdin = true;
    a.create_start(1, s);
    a.wait_output(1, "ready");

    a.send(HostMessage::Exec {
        handle: 2,
        container: 1,
        process: process(&["sh", "-c", "hostname; cat /tmp/mark"]),
    });
    a.answer(2, true).unwrap();
    let o = a.exited(2);
    assert_eq!((o.stdout.as_str(), o.status), ("cell-e1\nmarker\n", 0));

    a.send(HostMessage::Exec {
        handle: 3,
        container: 1,
        process: process(&["sleep", "1000"]),
    });
    a.answer(3, true).unwrap();
    a.send(HostMessage::Signal {
        handle: 3,
        signal: 9,
        all: false,
    });
    assert_eq!(a.exited(3).status, 137);

    let mut tty = process(&["sh", "-c", "test -t 0 && test -t 1 && echo TTY"]);
    tty.terminal = true;
    a.send(HostMessage::Exec {
        handle: 4,
        container: 1,
        process: tty,
    });
    a.answer(4, true).unwrap();
    a.send(HostMessage::Resize {
        handle: 4,
        rows: 40,
        cols: 100,
    });
    let o = a.exited(4);
    assert!(o.stdout.contains("TTY"), "{o:?}");

    a.send(HostMessage::Exec {
        handle: 5,
        container: 1,
        process: process(&["no-such-program"]),
    });
    assert_eq!(a.answer(5, true).unwrap_err().0, "execve");

    a.send(HostMessage::Stats { id: 9 });
    let stats = a.wait(|m| match m {
        GuestMessage::Stats { id: 9, stats } => Some(stats.clone()),
        _ => None,
    });
    assert!(stats.mem_total_bytes > 0 && stats.mem_available_bytes > 0);
    if a.cgroup.is_some() {
        assert!(stats.pids >= 2, "init and cat: {stats:?}");
    }

    a.send_stdin(1, b"bye\n");
    a.send(HostMessage::CloseStdin { handle: 1 });
    let o = a.exited(1);
    assert_eq!((o.stdout.as_str(), o.status), ("ready\nbye\n", 0));
    for h in [1, 2, 3, 4] {
        a.send(HostMessage::Delete { handle: h });
    }
    // The container is gone: exec into it is refused.
    a.send(HostMessage::Exec {
        handle: 6,
        container: 1,
        process: process(&["true"]),
    });
    assert_eq!(a.answer(6, true).unwrap_err().0, "exec");
}
