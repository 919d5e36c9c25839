//! A minimal PID 1 for the sandbox's PID namespace: fork the workload, forward signals to it,
//! reap every child, exit with the workload's status.

use std::sync::atomic::{AtomicI32, Ordering};

use libcontainer::workload::ExecutorError;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, kill, sigaction};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Forks; the child runs `exec` (which replaces it with the workload); this process becomes the
/// reaper and never returns.
pub fn run_as_init(exec: impl FnOnce() -> Result<(), ExecutorError>) -> Result<(), ExecutorError> {
    // SAFETY: the init process is single-threaded at this point (libcontainer's init).
    match unsafe { fork() }.map_err(|e| ExecutorError::Other(format!("fork: {e}")))? {
        ForkResult::Child => {
            let r = exec();
            // exec only returns on failure.
            if let Err(e) = r {
                eprintln!("agentcell: {e}");
            }
            // SAFETY: leaving the forked child without running the parent's destructors.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => {
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
            // This process only waits from now on: the runner's text it was forked with need
            // not stay resident. Not for a workload that ends within a second (a command run by
            // an agent, usually): there trimming is CPU spent on a process about to exit.
            if !exits_within(child, TRIM_AFTER_MS) {
                super::memory::trim_text();
            }
            let code = reap(child);
            // SAFETY: exit without unwinding: this is the sandbox's PID 1.
            unsafe { libc::_exit(code) }
        }
    }
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
