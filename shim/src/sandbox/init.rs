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
            // not stay resident.
            super::memory::trim_text();
            let code = reap(child);
            // SAFETY: exit without unwinding: this is the sandbox's PID 1.
            unsafe { libc::_exit(code) }
        }
    }
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
