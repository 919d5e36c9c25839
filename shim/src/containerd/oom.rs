//! OOM notifications of a container's memory cgroup, turned into containerd's TaskOOM events:
//! cgroup v1 through `memory.oom_control` and an eventfd (`cgroup.event_control`), cgroup v2 by
//! watching `memory.events` for a rising `oom_kill` count.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};

use super::stats;

/// Calls `on_oom` for every OOM kill in the memory cgroup of `pid`, on a thread of its own,
/// until the cgroup is gone.
pub fn watch(pid: i32, on_oom: impl Fn() + Send + 'static) -> std::io::Result<()> {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        let dir = stats::cgroup_dir(pid, None)
            .ok_or_else(|| std::io::Error::other("no cgroup v2 directory"))?;
        return watch_v2(dir, on_oom);
    }
    let dir = stats::cgroup_dir(pid, Some("memory"))
        .ok_or_else(|| std::io::Error::other("no memory cgroup"))?;
    watch_v1(dir, on_oom)
}

fn watch_v1(dir: PathBuf, on_oom: impl Fn() + Send + 'static) -> std::io::Result<()> {
    let control = File::open(dir.join("memory.oom_control"))?;
    // SAFETY: eventfd with valid flags; the fd is owned by the File below.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if efd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    let mut events = unsafe { File::from_raw_fd(efd) };
    std::fs::write(
        dir.join("cgroup.event_control"),
        format!("{} {}", events.as_raw_fd(), control.as_raw_fd()),
    )?;
    std::thread::Builder::new()
        .name("oom-v1".into())
        .spawn(move || {
            let _control = control;
            let mut buf = [0u8; 8];
            // The eventfd also fires when the cgroup is removed: only a live cgroup's
            // notification is an OOM.
            while events.read_exact(&mut buf).is_ok() {
                if !dir.join("memory.oom_control").exists() {
                    return;
                }
                on_oom();
            }
        })?;
    Ok(())
}

fn oom_kills(events: &Path) -> Option<u64> {
    std::fs::read_to_string(events).ok()?.lines().find_map(|l| {
        l.strip_prefix("oom_kill ")
            .and_then(|v| v.trim().parse().ok())
    })
}

fn watch_v2(dir: PathBuf, on_oom: impl Fn() + Send + 'static) -> std::io::Result<()> {
    let events = dir.join("memory.events");
    // SAFETY: inotify_init1 with valid flags; the fd is owned by the File below.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    let mut inotify = unsafe { File::from_raw_fd(fd) };
    let path = std::ffi::CString::new(events.to_string_lossy().as_bytes())
        .map_err(std::io::Error::other)?;
    // SAFETY: valid fd and NUL-terminated path.
    if unsafe { libc::inotify_add_watch(fd, path.as_ptr(), libc::IN_MODIFY) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut seen = oom_kills(&events).unwrap_or(0);
    std::thread::Builder::new()
        .name("oom-v2".into())
        .spawn(move || {
            let mut buf = [0u8; 4096];
            while inotify.read(&mut buf).is_ok_and(|n| n > 0) {
                let Some(now) = oom_kills(&events) else {
                    return;
                };
                if now > seen {
                    seen = now;
                    on_oom();
                }
            }
        })?;
    Ok(())
}
