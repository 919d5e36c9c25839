//! Containers are built in a process of their own.
//!
//! libcontainer makes a container's processes with raw `clone3` from its caller. The shim is
//! multi-threaded (ttrpc workers, the reaper, stdio copiers, the event publisher): a clone
//! inherits every lock another thread holds at that instant (the allocator's arena locks, the
//! log writer's mutex) in the locked state, with no thread left to release it, and the child
//! waits forever at its next `malloc`, log line or glibc `fork()`. That was the exec hang seen
//! in CI. So the shim never calls libcontainer's builders itself: for create's init container
//! and for every exec it starts its own binary again (`/proc/self/exe`, argv[1] = [`ARG`]) as a
//! short-lived helper that is single-threaded by construction. The helper reads a
//! [`BuildRequest`] (JSON) from one pipe, builds, answers a [`Reply`] on another, and exits.
//!
//! The container's init is cloned by libcontainer as the helper's child; when the helper exits
//! it is reparented to the shim, a child subreaper, whose reaper takes its exit as before. The
//! caller holds `REAP_LOCK` from before the helper starts until the new pid is watched, so the
//! reaper takes neither the helper's status (waited for here) nor an early exit of the new
//! process (an exited child of the helper becomes the shim's zombie, reaped once watched).

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::oci_spec::runtime::LinuxSeccomp;
use libcontainer::syscall::syscall::SyscallType;
use serde::{Deserialize, Serialize};

use crate::sandbox::landlock::{LandlockExecutor, LandlockRules};

/// argv[1] of the shim binary in its helper mode (not a containerd-shim flag).
pub const ARG: &str = "__agentcell-build";

/// How long a build may take before the helper is killed and the request fails: a build that
/// hangs becomes an error for its caller (containerd, `kubectl exec`), not a request that never
/// returns. Builds take milliseconds; a create with hooks or systemd's cgroup driver, seconds.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// What the helper builds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum BuildKind {
    /// create: the container's init, from the confined bundle in `bundle`, left waiting for
    /// `start`.
    Init { bundle: PathBuf, systemd: bool },
    /// exec: a process (spec file `process`) joining the running container.
    Exec { process: PathBuf },
}

/// Everything the helper needs: the container, libcontainer's state root, the executor's
/// configuration, and which of its descriptors are the process's stdio.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildRequest {
    pub id: String,
    /// libcontainer's state root.
    pub root: PathBuf,
    #[serde(flatten)]
    pub kind: BuildKind,
    pub landlock: LandlockRules,
    /// The plan's filter, stacked on the spec's one.
    pub stacked_seccomp: Option<LinuxSeccomp>,
    /// The process's stdin, stdout and stderr: descriptor numbers in the helper (inherited).
    pub stdio: [Option<RawFd>; 3],
    /// Where libcontainer sends a terminal's master.
    pub console_socket: Option<PathBuf>,
}

/// The helper's answer: one JSON line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reply {
    Built { pid: i32 },
    Failed { error: String },
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("starting the build helper (/proc/self/exe {ARG}): {0}")]
    Spawn(std::io::Error),
    #[error("sending the build request: {0}")]
    Request(std::io::Error),
    #[error("{0}")]
    Failed(String),
    #[error("the build helper ended without an answer ({0})")]
    NoReply(String),
    #[error("the build helper's answer {text:?}: {source}")]
    BadReply {
        text: String,
        source: serde_json::Error,
    },
    #[error("the build did not finish within {} s: the helper was killed", .0.as_secs())]
    Timeout(Duration),
}

/// A descriptor the helper inherits: a close-on-exec duplicate (at 10 or above, clear of the
/// standard streams) whose flag the child clears right before its exec.
fn inheritable(fd: &OwnedFd) -> std::io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC of a descriptor we own; the new one is owned right after.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: two slots, owned right after.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh descriptors.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Waits until `fd` is readable or `deadline`; whether it is.
fn readable_by(fd: RawFd, deadline: Instant) -> bool {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        match unsafe { libc::poll(&mut p, 1, ms) } {
            n if n > 0 => return true,
            0 => return false,
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => return false,
        }
    }
}

/// Reads the reply line (up to a newline: the new container's processes may hold the pipe's
/// write end open for as long as they live, so there is no EOF to wait for).
fn read_reply(
    fd: &OwnedFd,
    deadline: Instant,
    timeout: Duration,
) -> Result<Option<String>, BuildError> {
    let mut text = Vec::new();
    let mut f = std::fs::File::from(fd.try_clone().map_err(BuildError::Spawn)?);
    let mut buf = [0u8; 4096];
    loop {
        if !readable_by(fd.as_raw_fd(), deadline) {
            return Err(BuildError::Timeout(timeout));
        }
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                text.extend_from_slice(&buf[..n]);
                if text.contains(&b'\n') {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&text);
    let line = text.lines().next().unwrap_or("").trim();
    Ok((!line.is_empty()).then(|| line.to_string()))
}

/// Waits for the helper's exit until `deadline`, then kills it; its status as text.
fn reap_helper(child: &mut std::process::Child, deadline: Instant) -> String {
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return st.to_string(),
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(None) => {
                let _ = child.kill();
                return child
                    .wait()
                    .map_or_else(|e| e.to_string(), |s| format!("killed: {s}"));
            }
            Err(e) => return e.to_string(),
        }
    }
}

/// In the shim: builds what `req` says in a helper process and returns the new process's pid.
/// `stdio` are the process's streams (the request's `stdio` field is filled in here). Call with
/// `REAP_LOCK` held, and keep holding it until the pid is watched (see the module's comment).
pub fn build(
    mut req: BuildRequest,
    stdio: [Option<OwnedFd>; 3],
    timeout: Duration,
) -> Result<i32, BuildError> {
    let deadline = Instant::now() + timeout;
    let (req_r, req_w) = pipe().map_err(BuildError::Spawn)?;
    let (rep_r, rep_w) = pipe().map_err(BuildError::Spawn)?;
    let mut passed = Vec::new();
    for (slot, fd) in req.stdio.iter_mut().zip(&stdio) {
        *slot = match fd {
            Some(fd) => {
                let d = inheritable(fd).map_err(BuildError::Spawn)?;
                let n = d.as_raw_fd();
                passed.push(d);
                Some(n)
            }
            None => None,
        };
    }
    let (req_fd, rep_fd) = (
        inheritable(&req_r).map_err(BuildError::Spawn)?,
        inheritable(&rep_w).map_err(BuildError::Spawn)?,
    );
    drop((req_r, rep_w));
    let mut keep = [-1; 5];
    keep[0] = req_fd.as_raw_fd();
    keep[1] = rep_fd.as_raw_fd();
    for (k, d) in keep[2..].iter_mut().zip(&passed) {
        *k = d.as_raw_fd();
    }
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(ARG)
        .arg(req_fd.as_raw_fd().to_string())
        .arg(rep_fd.as_raw_fd().to_string())
        // What a container's process gets for a stream containerd did not give: what the shim
        // has (containerd-shim points all three at /dev/null).
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: between fork and exec the closure only calls fcntl(2) (async-signal-safe) on
    // descriptor numbers captured by value: no allocation, no lock.
    unsafe {
        cmd.pre_exec(move || {
            for fd in keep {
                if fd >= 0 && libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(BuildError::Spawn)?;
    // The helper holds its copies now.
    drop((req_fd, rep_fd, passed, stdio));
    let sent = serde_json::to_vec(&req)
        .map_err(std::io::Error::other)
        .and_then(|body| std::fs::File::from(req_w).write_all(&body));
    if let Err(e) = sent {
        reap_helper(&mut child, Instant::now());
        return Err(BuildError::Request(e));
    }
    let reply = read_reply(&rep_r, deadline, timeout);
    drop(rep_r);
    let reply = match reply {
        Ok(r) => r,
        Err(e) => {
            reap_helper(&mut child, Instant::now());
            return Err(e);
        }
    };
    // The helper exits right after answering.
    let status = reap_helper(
        &mut child,
        deadline.max(Instant::now() + Duration::from_secs(5)),
    );
    let Some(text) = reply else {
        return Err(BuildError::NoReply(status));
    };
    match serde_json::from_str::<Reply>(&text) {
        Ok(Reply::Built { pid }) => Ok(pid),
        Ok(Reply::Failed { error }) => Err(BuildError::Failed(error)),
        Err(source) => Err(BuildError::BadReply { text, source }),
    }
}

/// The threads of this process (1 when single-threaded).
pub fn thread_count() -> std::io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// An error and its causes, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// The build itself, in the helper (single-threaded).
fn run_request(req: BuildRequest) -> Result<i32, String> {
    let threads = thread_count().map_err(|e| format!("counting threads: {e}"))?;
    if threads != 1 {
        // A raw clone beside another thread is exactly what this process exists to avoid.
        return Err(format!(
            "the build helper has {threads} threads: it builds only single-threaded"
        ));
    }
    let executor = LandlockExecutor {
        rules: req.landlock,
        die_with_parent: false,
        stacked_seccomp: req.stacked_seccomp,
    };
    let mut b = ContainerBuilder::new(req.id.clone(), SyscallType::default())
        .with_executor(executor)
        .with_console_socket(req.console_socket.clone());
    let [stdin, stdout, stderr] = req.stdio;
    // SAFETY: the shim passed these descriptors to this process for this build (their numbers
    // are in the request); each is taken once.
    let own = |fd: RawFd| unsafe { OwnedFd::from_raw_fd(fd) };
    if let Some(fd) = stdin {
        b = b.with_stdin(own(fd));
    }
    if let Some(fd) = stdout {
        b = b.with_stdout(own(fd));
    }
    if let Some(fd) = stderr {
        b = b.with_stderr(own(fd));
    }
    let b = b.with_root_path(&req.root).map_err(|e| chain(&e))?;
    match req.kind {
        BuildKind::Init { bundle, systemd } => {
            let lc = b
                .validate_id()
                .and_then(|b| {
                    b.as_init(&bundle)
                        .with_systemd(systemd)
                        .with_detach(true)
                        .build()
                })
                .map_err(|e| chain(&e))?;
            Ok(lc.pid().map_or(0, |p| p.as_raw()))
        }
        BuildKind::Exec { process } => b
            .as_tenant()
            .with_process(Some(&process))
            .with_detach(true)
            .build()
            .map(|p| p.as_raw())
            .map_err(|e| chain(&e)),
    }
}

/// The helper's logs: containerd's log FIFO (`log` in the working directory the shim gave it),
/// as the shim's own.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("AGENTCELL_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,libcgroups=error,libcontainer=warn"));
    let log = std::env::current_dir().unwrap_or_default().join("log");
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_target(false)
        .with_writer(std::sync::Mutex::new(super::FifoLog::new(log)))
        .try_init();
}

/// The helper's main: `ARG <request fd> <reply fd>`. Never returns.
pub fn helper_main(args: &[String]) -> ! {
    let fd = |i: usize| args.get(i).and_then(|a| a.parse::<RawFd>().ok());
    let (Some(req_fd), Some(rep_fd)) = (fd(0), fd(1)) else {
        eprintln!("usage: containerd-shim-agentcell-v2 {ARG} <request fd> <reply fd>");
        std::process::exit(2);
    };
    // SAFETY: descriptors the shim passed for this purpose, taken once each.
    let (req_fd, rep_fd) = unsafe { (OwnedFd::from_raw_fd(req_fd), OwnedFd::from_raw_fd(rep_fd)) };
    // SAFETY: F_SETFD on a descriptor we own: the container's processes must not keep the
    // reply pipe past their exec.
    unsafe { libc::fcntl(rep_fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    init_logging();
    let mut text = Vec::new();
    let read = std::fs::File::from(req_fd).read_to_end(&mut text);
    let result = match read {
        Err(e) => Err(format!("reading the build request: {e}")),
        Ok(_) => match serde_json::from_slice::<BuildRequest>(&text) {
            Err(e) => Err(format!("the build request: {e}")),
            Ok(req) => run_request(req),
        },
    };
    let reply = match result {
        Ok(pid) => Reply::Built { pid },
        Err(error) => Reply::Failed { error },
    };
    let mut line = serde_json::to_vec(&reply).unwrap_or_default();
    line.push(b'\n');
    let _ = std::fs::File::from(rep_fd).write_all(&line);
    std::process::exit(match reply {
        Reply::Built { .. } => 0,
        Reply::Failed { .. } => 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use landlock::ABI;

    fn request(kind: BuildKind) -> BuildRequest {
        BuildRequest {
            id: "c1".into(),
            root: "/run/agentcell/shim/ns/lc".into(),
            kind,
            landlock: LandlockRules {
                read: vec!["/usr".into()],
                write: vec!["/tmp".into()],
                devices: vec!["/dev/null".into()],
                abi: ABI::V5,
                best_effort: false,
                log_denials: true,
            },
            stacked_seccomp: Some(
                serde_json::from_value(serde_json::json!({
                    "defaultAction": "SCMP_ACT_ALLOW",
                    "syscalls": [{"names": ["ptrace"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
                }))
                .unwrap(),
            ),
            stdio: [Some(10), None, Some(12)],
            console_socket: None,
        }
    }

    #[test]
    fn requests_and_replies_survive_their_trip_through_json() {
        for kind in [
            BuildKind::Init {
                bundle: "/b".into(),
                systemd: true,
            },
            BuildKind::Exec {
                process: "/b/exec-e1.json".into(),
            },
        ] {
            let req = request(kind);
            let text = serde_json::to_string(&req).unwrap();
            assert_eq!(serde_json::from_str::<BuildRequest>(&text).unwrap(), req);
        }
        let v = serde_json::to_value(request(BuildKind::Exec {
            process: "/p".into(),
        }))
        .unwrap();
        assert_eq!(v["kind"], "exec");
        assert_eq!(v["landlock"]["abi"], 5);
        for r in [
            Reply::Built { pid: 42 },
            Reply::Failed {
                error: "x: y".into(),
            },
        ] {
            let t = serde_json::to_string(&r).unwrap();
            assert!(!t.contains('\n'));
            assert_eq!(serde_json::from_str::<Reply>(&t).unwrap(), r);
        }
    }

    #[test]
    fn a_helper_with_a_second_thread_refuses_to_build() {
        // The test harness runs tests on threads of its own: this process is multi-threaded.
        let _t = std::thread::spawn(|| std::thread::sleep(Duration::from_secs(2)));
        let err = run_request(request(BuildKind::Exec {
            process: "/nonexistent".into(),
        }))
        .unwrap_err();
        assert!(
            err.contains("threads: it builds only single-threaded"),
            "{err}"
        );
    }
}
