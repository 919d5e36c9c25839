//! A minimal PID 1 for the sandbox's PID namespace: start the workload, forward signals to it,
//! reap every child, exit with the workload's status.
//!
//! The workload is started with the raw `clone(SIGCHLD)` system call, not glibc's `fork()`:
//! `fork()` runs the atfork handlers and takes every malloc arena lock first, and this process
//! descends, through libcontainer's raw `clone3`s, from a process that may have had other threads:
//! a lock one of them held at that instant is inherited locked and `fork()` waits on it forever
//! (the exec hang seen in CI: `youki:[2:INIT]` in `__malloc_fork_lock_parent`). Everything the
//! child needs is made before the clone ([`Workload::new`]); between the clone and `execve` the
//! child only makes system calls on memory that already exists: no allocation, no lock, no
//! logging (a failure is written with `write(2)` from bytes prepared beforehand).
//!
//! What remains before this point is libcontainer's: its intermediate and init processes
//! allocate and log between their `clone3` and our executor (`landlock`), which allocates too
//! (Landlock's rule set, the environment, this `Workload`). That is sound only because the
//! process they are cloned from is single-threaded when it clones: in the shim, the build helper
//! (`containerd::build`, which checks it); in the CLI, the runner's thread, beside which only the
//! cgroup-warming thread lives and it makes nothing but system calls by then
//! (`attach_warm::Warm::quiesce`). A thread added to either before the build brings the hang
//! back.

use std::ffi::{CString, c_char};
use std::sync::atomic::{AtomicI32, Ordering};

use libcontainer::workload::ExecutorError;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, kill, sigaction};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// glibc's `execvp` search path when `PATH` is unset.
const DEFAULT_PATH: &str = "/bin:/usr/bin";

/// The workload's `execve`, prepared in full before the clone: every path to try (`execvp`'s
/// search, done up front), the argument and environment vectors, the shell fallback for a
/// script without `#!` (as `execvp` does), and the failure message's bytes.
pub struct Workload {
    candidates: Vec<CString>,
    // The vectors point into these; a CString's buffer does not move when the CString does.
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    _sh: CString,
    argv_ptrs: Vec<*const c_char>,
    envp_ptrs: Vec<*const c_char>,
    /// `/bin/sh <slot 1: the script> <args[1..]>`: slot 1 is set in the child (a store into
    /// memory that exists, not an allocation).
    sh_ptrs: Vec<*const c_char>,
    /// `agentcell: executing <name>: ` (the reason and a newline follow).
    fail_prefix: Vec<u8>,
}

/// What is wrong with a process spec's arguments or environment.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("process.args is empty")]
    NoArgs,
    #[error("process.{field}: contains a NUL byte")]
    Nul { field: &'static str },
}

impl Workload {
    /// `args` as `execvp` would run them with exactly `env` as the environment (the search uses
    /// `env`'s `PATH`).
    pub fn new(args: &[String], env: &[(String, String)]) -> Result<Self, WorkloadError> {
        let name = args.first().ok_or(WorkloadError::NoArgs)?;
        let cstr = |s: &str, field| CString::new(s).map_err(|_| WorkloadError::Nul { field });
        let argv: Vec<CString> = args
            .iter()
            .map(|a| cstr(a, "args"))
            .collect::<Result<_, _>>()?;
        let envp: Vec<CString> = env
            .iter()
            .map(|(k, v)| cstr(&format!("{k}={v}"), "env"))
            .collect::<Result<_, _>>()?;
        let path = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
        let candidates = search(name, path)
            .iter()
            .map(|c| cstr(c, "args"))
            .collect::<Result<_, _>>()?;
        let sh = CString::new("/bin/sh").expect("no NUL");
        let nul_terminated = |v: &[CString]| {
            v.iter()
                .map(|c| c.as_ptr())
                .chain([std::ptr::null()])
                .collect::<Vec<_>>()
        };
        let argv_ptrs = nul_terminated(&argv);
        let envp_ptrs = nul_terminated(&envp);
        let mut sh_ptrs = vec![sh.as_ptr(), std::ptr::null()];
        sh_ptrs.extend(argv.iter().skip(1).map(|c| c.as_ptr()));
        sh_ptrs.push(std::ptr::null());
        Ok(Self {
            candidates,
            _argv: argv,
            _envp: envp,
            _sh: sh,
            argv_ptrs,
            envp_ptrs,
            sh_ptrs,
            fail_prefix: format!("agentcell: executing {name}: ").into_bytes(),
        })
    }

    /// The paths `exec` tries, in order.
    pub fn candidates(&self) -> impl Iterator<Item = &std::ffi::CStr> {
        self.candidates.iter().map(CString::as_c_str)
    }

    /// In the cloned child: `execve`s the first candidate that runs, with `execvp`'s rules
    /// (a missing or unreadable candidate moves on, `EACCES` is reported if nothing ran, a file
    /// the kernel cannot execute is run by `/bin/sh`); on failure writes the reason to stderr
    /// and exits 127. Only system calls on prepared memory: see the module's comment.
    fn exec(&mut self) -> ! {
        let mut denied = false;
        let mut errno = libc::ENOENT;
        for i in 0..self.candidates.len() {
            let path = self.candidates[i].as_ptr();
            // SAFETY: NUL-terminated vectors of pointers into CStrings owned by self.
            unsafe { libc::execve(path, self.argv_ptrs.as_ptr(), self.envp_ptrs.as_ptr()) };
            errno = last_errno();
            match errno {
                libc::EACCES => denied = true,
                libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
                libc::ENOEXEC => {
                    self.sh_ptrs[1] = path;
                    // SAFETY: as above; slot 1 points into a candidate owned by self.
                    unsafe {
                        libc::execve(
                            self.sh_ptrs[0],
                            self.sh_ptrs.as_ptr(),
                            self.envp_ptrs.as_ptr(),
                        )
                    };
                    errno = last_errno();
                    break;
                }
                _ => break,
            }
        }
        if denied && errno != libc::ENOEXEC {
            errno = libc::EACCES;
        }
        let mut num = [0u8; 20];
        let reason = reason(errno, &mut num);
        // SAFETY: write(2) of buffers that exist; _exit without running anything of the parent's.
        unsafe {
            libc::write(2, self.fail_prefix.as_ptr().cast(), self.fail_prefix.len());
            libc::write(2, reason.as_ptr().cast(), reason.len());
            libc::write(2, b"\n".as_ptr().cast(), 1);
            libc::_exit(127)
        }
    }
}

fn last_errno() -> i32 {
    // SAFETY: reading this thread's errno.
    unsafe { *libc::__errno_location() }
}

/// The paths `execvp(name)` tries under `path`: `name` itself when it has a slash, else each
/// directory of `path` joined with it (an empty entry is the working directory).
pub fn search(name: &str, path: &str) -> Vec<String> {
    if name.is_empty() {
        return Vec::new();
    }
    if name.contains('/') {
        return vec![name.to_string()];
    }
    path.split(':')
        .map(|dir| match dir {
            "" => name.to_string(),
            d => format!("{}/{name}", d.trim_end_matches('/')),
        })
        .collect()
}

/// The reason for `errno`, without `strerror` (which may take the locale's lock): the usual
/// ones by name, any other by number (written into `num`).
fn reason(errno: i32, num: &mut [u8; 20]) -> &[u8] {
    let named: &'static [u8] = match errno {
        libc::ENOENT => b"no such file or directory",
        libc::EACCES => b"permission denied",
        libc::ENOEXEC => b"exec format error",
        libc::ENOTDIR => b"not a directory",
        libc::ELOOP => b"too many levels of symbolic links",
        libc::E2BIG => b"argument list too long",
        libc::ENOMEM => b"out of memory",
        libc::ETXTBSY => b"text file busy",
        libc::EPERM => b"operation not permitted",
        libc::EISDIR => b"is a directory",
        _ => {
            let prefix = b"errno ";
            num[..prefix.len()].copy_from_slice(prefix);
            let mut digits = [0u8; 10];
            let mut n = errno.unsigned_abs();
            let mut len = 0;
            loop {
                digits[len] = b'0' + (n % 10) as u8;
                n /= 10;
                len += 1;
                if n == 0 {
                    break;
                }
            }
            for i in 0..len {
                num[prefix.len() + i] = digits[len - 1 - i];
            }
            return &num[..prefix.len() + len];
        }
    };
    named
}

/// Starts `workload` in a child made by the raw `clone(SIGCHLD)` system call (no atfork
/// handlers, no malloc locks); the child only `execve`s. Returns the child's pid.
pub fn spawn(workload: &mut Workload) -> Result<Pid, std::io::Error> {
    // SAFETY: clone without CLONE_VM and with a NULL stack is fork() without glibc's
    // bookkeeping: the child has a copy of this process's memory and runs on its own copy of
    // this stack; it calls nothing but execve/write/_exit (see `Workload::exec`).
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::SIGCHLD as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    match r {
        -1 => Err(std::io::Error::last_os_error()),
        0 => workload.exec(),
        pid => Ok(Pid::from_raw(pid as i32)),
    }
}

/// Starts `workload` (see [`spawn`]); this process becomes the reaper and never returns.
pub fn run_as_init(mut workload: Workload) -> Result<(), ExecutorError> {
    let child = spawn(&mut workload).map_err(|e| ExecutorError::Other(format!("clone: {e}")))?;
    CHILD.store(child.as_raw(), Ordering::Relaxed);
    let action = SigAction::new(
        SigHandler::Handler(forward),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in Signal::iterator() {
        if matches!(sig, Signal::SIGCHLD | Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: installing a handler that only calls kill(2).
        let _ = unsafe { sigaction(sig, &action) };
    }
    // This process only waits from now on: the runner's text it was cloned with need not stay
    // resident. Not for a workload that ends within a second (a command run by an agent,
    // usually): there trimming is CPU spent on a process about to exit.
    if !exits_within(child, TRIM_AFTER_MS) {
        super::memory::trim_text();
    }
    let code = reap(child);
    // SAFETY: exit without unwinding: this is the sandbox's PID 1.
    unsafe { libc::_exit(code) }
}

/// How long the workload runs before its PID 1 trims its resident text.
const TRIM_AFTER_MS: i32 = 1000;

/// Whether `child` ends within `ms` milliseconds (it is not reaped here). Signals forwarded in the
/// meantime interrupt the wait, which resumes with what is left.
fn exits_within(child: Pid, ms: i32) -> bool {
    // SAFETY: pidfd_open on our own child; the fd is closed below.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.as_raw(), 0) } as i32;
    if fd < 0 {
        return false;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(ms as u64);
    let ended = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        match unsafe { libc::poll(&mut pfd, 1, left.as_millis() as i32) } {
            n if n > 0 => break true,
            0 => break false,
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => break false,
        }
    };
    // SAFETY: the pidfd opened above.
    unsafe { libc::close(fd) };
    ended
}

fn reap(child: Pid) -> i32 {
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == child => return code,
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => return 128 + sig as i32,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return 127,
        }
        let _ = kill(child, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use std::time::{Duration, Instant};

    #[test]
    fn the_search_follows_execvp() {
        assert_eq!(search("sh", "/usr/bin:/bin"), ["/usr/bin/sh", "/bin/sh"]);
        assert_eq!(search("sh", "/opt/:"), ["/opt/sh", "sh"]);
        assert_eq!(search("./run", "/bin"), ["./run"]);
        assert_eq!(search("/bin/sh", "/usr/bin"), ["/bin/sh"]);
        assert!(search("", "/bin").is_empty());
        let w = Workload::new(&["true".into()], &[]).unwrap();
        let c: Vec<_> = w.candidates().map(|c| c.to_str().unwrap()).collect();
        assert_eq!(c, ["/bin/true", "/usr/bin/true"], "glibc's default PATH");
    }

    #[test]
    fn bad_specs_are_refused_before_the_clone() {
        assert!(matches!(
            Workload::new(&[], &[]),
            Err(WorkloadError::NoArgs)
        ));
        assert!(matches!(
            Workload::new(&["a\0b".into()], &[]),
            Err(WorkloadError::Nul { field: "args" })
        ));
        assert!(matches!(
            Workload::new(&["sh".into()], &[("K".into(), "v\0".into())]),
            Err(WorkloadError::Nul { field: "env" })
        ));
    }

    #[test]
    fn reasons_are_named_or_numbered_without_allocating() {
        let mut b = [0u8; 20];
        assert_eq!(reason(libc::ENOENT, &mut b), b"no such file or directory");
        assert_eq!(reason(4095, &mut b), b"errno 4095");
    }

    /// Waits for `pid` up to `limit`; its raw status, or `None` (then it is killed and reaped).
    fn wait_bounded(pid: i32, limit: Duration) -> Option<i32> {
        let t0 = Instant::now();
        loop {
            let mut status = 0;
            // SAFETY: waiting for our own child.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if r == pid {
                return Some(status);
            }
            if t0.elapsed() > limit {
                // SAFETY: our own child.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, &mut status, 0);
                }
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: two slots; owned right after.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    #[test]
    fn the_workload_gets_exactly_its_arguments_and_environment_and_failures_are_reported() {
        let (r, w) = pipe();
        let mut wl = Workload::new(
            &[
                "sh".into(),
                "-c".into(),
                "echo \"$0 $1 [$K] [$HOME]\" >&2".into(),
                "zero".into(),
                "one".into(),
            ],
            &[
                ("PATH".into(), "/nonexistent:/bin".into()),
                ("K".into(), "v w".into()),
            ],
        )
        .unwrap();
        // SAFETY: this test's child only dup2s and then runs Workload::exec.
        let pid =
            unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0, 0, 0, 0) };
        if pid == 0 {
            unsafe { libc::dup2(w.as_raw_fd(), 2) };
            wl.exec();
        }
        drop(w);
        let mut out = String::new();
        std::fs::File::from(r).read_to_string(&mut out).unwrap();
        let status = wait_bounded(pid as i32, Duration::from_secs(30)).expect("exited");
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{status:#x}"
        );
        assert_eq!(out, "zero one [v w] []\n");

        let (r, w) = pipe();
        let mut wl =
            Workload::new(&["no-such-tool".into()], &[("PATH".into(), "/bin".into())]).unwrap();
        let pid =
            unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0, 0, 0, 0) };
        if pid == 0 {
            unsafe { libc::dup2(w.as_raw_fd(), 2) };
            wl.exec();
        }
        drop(w);
        let mut out = String::new();
        std::fs::File::from(r).read_to_string(&mut out).unwrap();
        let status = wait_bounded(pid as i32, Duration::from_secs(30)).expect("exited");
        assert_eq!(libc::WEXITSTATUS(status), 127);
        assert_eq!(
            out,
            "agentcell: executing no-such-tool: no such file or directory\n"
        );
    }

    /// The CI hang, reproduced: a thread allocating without pause while the process is cloned
    /// raw (as libcontainer clones the container's init from the shim); in the clone, that
    /// thread's malloc arena lock is often inherited locked. The clone then starts a workload
    /// the way PID 1 does. glibc's `fork()` there takes every arena lock and waits forever; the
    /// raw clone takes none.
    #[test]
    fn a_workload_starts_from_a_raw_clone_of_a_process_whose_other_thread_was_in_malloc() {
        let stop = Arc::new(AtomicBool::new(false));
        let busy = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut keep: Vec<Vec<u8>> = Vec::new();
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    i = i.wrapping_add(1);
                    keep.push(std::hint::black_box(vec![0u8; 16 + (i * 7919) % 4096]));
                    if keep.len() > 64 {
                        keep.swap_remove(i % 64);
                    }
                }
            })
        };
        let mut wl = Workload::new(&["/bin/true".into()], &[]).unwrap();
        let mut hung = 0;
        for _ in 0..200 {
            // SAFETY: the child makes only system calls (clone, wait4, _exit) and runs
            // Workload::exec in its own child, on memory made before this clone.
            let pid = unsafe {
                libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0, 0, 0, 0)
            };
            if pid == 0 {
                let code = match spawn(&mut wl) {
                    Ok(child) => {
                        let mut status = 0;
                        // SAFETY: waiting for this process's own child.
                        unsafe { libc::waitpid(child.as_raw(), &mut status, 0) };
                        if libc::WIFEXITED(status) {
                            libc::WEXITSTATUS(status)
                        } else {
                            2
                        }
                    }
                    Err(_) => 3,
                };
                // SAFETY: leaving the clone without running anything of the test's.
                unsafe { libc::_exit(code) };
            }
            assert!(pid > 0, "clone: {}", std::io::Error::last_os_error());
            match wait_bounded(pid as i32, Duration::from_secs(10)) {
                Some(status) => assert!(
                    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                    "status {status:#x}"
                ),
                None => {
                    hung += 1;
                    break;
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        busy.join().unwrap();
        assert_eq!(hung, 0, "a clone hung starting the workload (10 s)");
    }
}
