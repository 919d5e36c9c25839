//! Exit statuses of the shim's children. The shim is a child subreaper, so every process of
//! every container ends up ours to reap: one thread reaps all of them on SIGCHLD and hands the
//! statuses of the ones we track to their waiters. libcontainer reaps its own helper processes
//! with waitpid(pid); it runs under `REAP_LOCK`, which the reaper takes before reaping, so the
//! reaper never steals a status libcontainer waits for.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::SystemTime;

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// Held while libcontainer forks and waits for its own children, and while a new pid is
/// registered (so an exit cannot be reaped before its waiter exists).
pub static REAP_LOCK: Mutex<()> = Mutex::new(());

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The exit code; 128+N for signal N, as containerd reports it.
    pub status: u32,
    pub at: SystemTime,
}

/// One process's exit, awaited by any number of threads.
#[derive(Debug, Default)]
pub struct ExitCell {
    exit: Mutex<Option<Exit>>,
    cond: Condvar,
}

impl ExitCell {
    pub fn set(&self, e: Exit) {
        let mut g = self.exit.lock().expect("exit cell");
        if g.is_none() {
            *g = Some(e);
        }
        self.cond.notify_all();
    }

    pub fn get(&self) -> Option<Exit> {
        *self.exit.lock().expect("exit cell")
    }

    pub fn wait(&self) -> Exit {
        let mut g = self.exit.lock().expect("exit cell");
        loop {
            if let Some(e) = *g {
                return e;
            }
            g = self.cond.wait(g).expect("exit cell");
        }
    }

    /// Waits up to `d`; `None` when still running.
    pub fn wait_timeout(&self, d: std::time::Duration) -> Option<Exit> {
        let g = self.exit.lock().expect("exit cell");
        let (g, _) = self
            .cond
            .wait_timeout_while(g, d, |e| e.is_none())
            .expect("exit cell");
        *g
    }
}

type Callback = Box<dyn FnOnce(Exit) + Send>;

#[derive(Default)]
struct Table {
    watched: HashMap<i32, (Arc<ExitCell>, Option<Callback>)>,
}

fn table() -> &'static Mutex<Table> {
    static T: OnceLock<Mutex<Table>> = OnceLock::new();
    T.get_or_init(Default::default)
}

/// Tracks `pid`: its exit goes to `cell`, then `on_exit` runs (on the reaper thread). Call with
/// `REAP_LOCK` held since before the process could have exited.
pub fn watch(pid: i32, cell: Arc<ExitCell>, on_exit: Option<Callback>) {
    table()
        .lock()
        .expect("reaper table")
        .watched
        .insert(pid, (cell, on_exit));
}

/// Starts the reaper thread (once).
pub fn start() -> std::io::Result<()> {
    static STARTED: OnceLock<()> = OnceLock::new();
    if STARTED.get().is_some() {
        return Ok(());
    }
    let mut signals = signal_hook::iterator::Signals::new([libc::SIGCHLD])?;
    std::thread::Builder::new()
        .name("reaper".into())
        .spawn(move || {
            for _ in signals.forever() {
                reap_all();
            }
        })?;
    let _ = STARTED.set(());
    // Children that exited before the handler was installed.
    reap_all();
    Ok(())
}

fn reap_all() {
    let _guard = REAP_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, code as u32),
            Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, 128 + sig as u32),
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => continue,
        };
        let exit = Exit {
            status,
            at: SystemTime::now(),
        };
        let entry = table()
            .lock()
            .expect("reaper table")
            .watched
            .remove(&pid.as_raw());
        match entry {
            Some((cell, cb)) => {
                tracing::debug!(pid = pid.as_raw(), status, "process exited");
                cell.set(exit);
                if let Some(cb) = cb {
                    cb(exit);
                }
            }
            None => {
                // containerd-shim's own helpers (the rootfs mount) wait through its monitor.
                let _ =
                    containerd_shim::monitor::monitor_notify_by_pid(pid.as_raw(), status as i32);
                tracing::trace!(
                    pid = pid.as_raw(),
                    status,
                    "reaped a process we do not track"
                );
            }
        }
    }
}
