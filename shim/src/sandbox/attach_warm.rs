//! Paying the kernel's cgroup-attach wait early.
//!
//! The first task moved between cgroups after a quiet spell waits for an RCU grace period (the
//! cgroup core's per-CPU rwsem switching its readers to the slow path): 6-8 ms on this 2-core
//! VM, a quarter of a sandbox's start. Moves within about one grace period of the last one are
//! nearly free (0.07 ms). libcontainer moves the sandbox's init into its cgroups late in its
//! build; a thread of ours makes a no-op move (itself into the cgroup it is already in) as the
//! run begins, so the wait overlaps preparing the view and the network instead of following
//! them. `AGENTCELL_CGROUP_WARM=0` turns it off (to measure it).
//!
//! libcontainer forks with raw `clone3`: a child inherits any lock one of our threads holds at
//! that instant (the allocator's, say) and hangs on it at its next `fork`. So the thread does
//! all its allocating first, says so ([`Warm::quiesce`] waits for that), and from then on makes
//! only system calls, until it is released after the build.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::thread::JoinHandle;

/// The warming thread; dropping it releases and joins the thread.
pub struct Warm {
    quiet: Arc<AtomicBool>,
    /// What the thread's write returned (0 until it has).
    wrote: Arc<AtomicIsize>,
    release: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the no-op move on a thread of its own; `None` when switched off or when this
/// process's cgroup file cannot be found (nothing is lost but the overlap).
pub fn start() -> Option<Warm> {
    if std::env::var_os("AGENTCELL_CGROUP_WARM").is_some_and(|v| v == "0") {
        return None;
    }
    let path = CString::new(own_tasks_file()?.into_os_string().into_encoded_bytes()).ok()?;
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors, owned right after.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return None;
    }
    // SAFETY: both descriptors were just returned by pipe2 and are owned once each.
    let (wait_end, release) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let quiet = Arc::new(AtomicBool::new(false));
    let said = quiet.clone();
    let wrote = Arc::new(AtomicIsize::new(0));
    let result = wrote.clone();
    let thread = std::thread::Builder::new()
        .name("cgroup-warm".into())
        .spawn(move || {
            let mut tid = [0u8; 20];
            // SAFETY: gettid cannot fail.
            let len = format_decimal(unsafe { libc::gettid() } as u64, &mut tid);
            // Nothing below allocates or takes a lock until the release.
            said.store(true, Ordering::Release);
            // SAFETY: plain system calls on a NUL-terminated path, a stack buffer and
            // descriptors this thread owns.
            unsafe {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                let n = if fd >= 0 {
                    let n = libc::write(fd, tid.as_ptr().cast(), len);
                    libc::close(fd);
                    n
                } else {
                    -1
                };
                result.store(n, Ordering::Release);
                let mut byte = 0u8;
                while libc::read(wait_end.as_raw_fd(), (&raw mut byte).cast(), 1) < 0
                    && *libc::__errno_location() == libc::EINTR
                {}
            }
        })
        .ok()?;
    Some(Warm {
        quiet,
        wrote,
        release: Some(release),
        thread: Some(thread),
    })
}

impl Warm {
    /// Returns once the thread makes only system calls (from then on a fork beside it is safe).
    pub fn quiesce(&self) {
        while !self.quiet.load(Ordering::Acquire) {
            std::thread::yield_now();
        }
    }

    /// Lets the thread end (after the build: it may free memory then); joined on drop.
    pub fn release(&mut self) {
        drop(self.release.take());
    }

    /// Whether the move was made (false while it is still waiting, or when it failed).
    pub fn moved(&self) -> bool {
        self.wrote.load(Ordering::Acquire) > 0
    }
}

impl Drop for Warm {
    fn drop(&mut self) {
        // Closing the write end ends the thread's read.
        drop(self.release.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The file that moves a thread into the cgroup this process is in: `tasks` of a cgroup v1
/// hierarchy, else `cgroup.procs` of the unified one (a no-op move of the whole process).
fn own_tasks_file() -> Option<std::path::PathBuf> {
    let text = std::fs::read_to_string("/proc/thread-self/cgroup").ok()?;
    let root = std::path::Path::new("/sys/fs/cgroup");
    let mut unified = None;
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        let rel = path.trim_start_matches('/');
        if controllers.is_empty() {
            unified = [root.join("unified"), root.to_path_buf()]
                .into_iter()
                .map(|m| m.join(rel).join("cgroup.procs"))
                .find(|p| p.exists());
            continue;
        }
        let dir = controllers.trim_start_matches("name=");
        let tasks = root.join(dir).join(rel).join("tasks");
        if tasks.exists() {
            return Some(tasks);
        }
    }
    unified
}

/// Writes `n` in decimal into `buf`; its length.
fn format_decimal(mut n: u64, buf: &mut [u8; 20]) -> usize {
    let mut tmp = [0u8; 20];
    let mut i = 0;
    loop {
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        i += 1;
        if n == 0 {
            break;
        }
    }
    for j in 0..i {
        buf[j] = tmp[i - 1 - j];
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals() {
        let mut b = [0u8; 20];
        for n in [0u64, 7, 10, 4242, u64::MAX] {
            let len = format_decimal(n, &mut b);
            assert_eq!(std::str::from_utf8(&b[..len]).unwrap(), n.to_string());
        }
    }

    #[test]
    fn the_thread_moves_itself_where_it_is_and_ends_when_released() {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            panic!("needs root (CI runs as root)");
        }
        let before = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let file = own_tasks_file().expect("a cgroup file for this process");
        // It is the membership list of this process's own cgroup.
        let members = std::fs::read_to_string(&file).unwrap();
        let pid = std::process::id().to_string();
        assert!(
            members.lines().any(|l| l == pid),
            "{} does not list this process",
            file.display()
        );
        let mut w = start().expect("warming starts");
        w.quiesce();
        w.release();
        let t = w.thread.take().unwrap();
        t.join().unwrap();
        assert!(w.moved(), "the no-op move into {} failed", file.display());
        drop(w);
        // The process (every thread) is where it was.
        assert_eq!(
            std::fs::read_to_string("/proc/self/cgroup").unwrap(),
            before
        );
    }
}
