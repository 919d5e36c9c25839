//! Thin wrappers over the system calls the agent needs that libc exposes only raw, and the
//! small record protocol a forked child uses to report back to the agent.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error("{0} contains a NUL byte")]
    Nul(String),
}

static DEBUG: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Turns on `trace` (boot.json `log_level: debug`).
pub fn set_debug(on: bool) {
    DEBUG.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// A debug line on stderr (the VM's console), also from forked children: when the agent is
/// stuck, the channel cannot carry it.
pub fn trace(msg: impl FnOnce() -> String) {
    if DEBUG.load(std::sync::atomic::Ordering::Relaxed) {
        let line = format!("agentcell-guest[{}]: {}\n", std::process::id(), msg());
        let _ = write_all(2, line.as_bytes());
    }
}

pub fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::other(SysError::Nul(s.to_string())))
}

pub fn cpath(p: &Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt as _;
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::other(SysError::Nul(p.display().to_string())))
}

pub fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub fn check_long(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `mount(2)`; `None` arguments are passed as NULL.
pub fn mount(
    src: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let src = src.map(cpath).transpose()?;
    let target = cpath(target)?;
    let fstype = fstype.map(cstr).transpose()?;
    let data = data.map(cstr).transpose()?;
    // SAFETY: every pointer is a valid NUL-terminated string or NULL.
    check(unsafe {
        libc::mount(
            src.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            data.as_ref()
                .map_or(std::ptr::null(), |s| s.as_ptr().cast()),
        )
    })?;
    Ok(())
}

/// Pipe with both ends close-on-exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for two descriptors.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 returned two fresh descriptors we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller owns.
    unsafe {
        let fl = check(libc::fcntl(fd, libc::F_GETFL))?;
        check(libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK))?;
    }
    Ok(())
}

pub fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller owns.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) })?;
    Ok(())
}

pub fn dup(fd: &OwnedFd) -> io::Result<OwnedFd> {
    fd.try_clone()
}

/// Closes every descriptor except `keep`. A forked child of the agent inherits all of the
/// agent's descriptors (other containers' stdio pipes among them); a container's init never
/// execs, so close-on-exec alone would leave them open and another process would never see EOF.
pub fn close_fds_except(keep: &[RawFd]) {
    let mut keep: Vec<RawFd> = keep.to_vec();
    keep.sort_unstable();
    keep.dedup();
    let mut from: libc::c_uint = 0;
    for k in keep.iter().map(|&k| k as libc::c_uint) {
        if k > from {
            close_range(from, k - 1);
        }
        from = k + 1;
    }
    close_range(from, libc::c_uint::MAX);
}

fn close_range(first: libc::c_uint, last: libc::c_uint) {
    // SAFETY: closing descriptors of this (single-threaded, forked) process.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) };
    if r < 0 {
        // Kernels before 5.9: close one by one up to a sane bound.
        for fd in first..last.min(4096) {
            // SAFETY: as above; EBADF is harmless.
            unsafe { libc::close(fd as RawFd) };
        }
    }
}

/// `fork()` done with the raw `clone` system call so that `flags` (new namespaces,
/// `CLONE_PARENT`) apply. Only for a single-threaded caller: no atfork handlers run.
///
/// # Safety
/// The caller must be single-threaded, and the child must only exec or `_exit`.
pub unsafe fn clone_fork(flags: libc::c_int) -> io::Result<libc::pid_t> {
    // SAFETY: a NULL stack makes clone behave like fork (copy-on-write of the whole process).
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    Ok(check_long(r)? as libc::pid_t)
}

/// The status a shell reports for a raw `waitpid` status: the exit code, or 128+N for signal N.
pub fn shell_status(raw: libc::c_int) -> i32 {
    if libc::WIFEXITED(raw) {
        libc::WEXITSTATUS(raw)
    } else if libc::WIFSIGNALED(raw) {
        128 + libc::WTERMSIG(raw)
    } else {
        // Stopped or continued: not an end; callers only pass ends.
        128
    }
}

/// Record kinds a forked child writes on its report pipe.
pub const REC_CREATED: u8 = b'C';
pub const REC_FAILED: u8 = b'F';
pub const REC_PID: u8 = b'P';
pub const REC_LOG: u8 = b'L';

/// One record: kind byte, u32 length (native order: both ends are this machine), payload. A
/// single `write` below `PIPE_BUF` is atomic, and every record here is small.
pub fn write_record(fd: RawFd, kind: u8, payload: &[u8]) {
    let payload = &payload[..payload.len().min(3000)];
    let mut buf = Vec::with_capacity(5 + payload.len());
    buf.push(kind);
    buf.extend_from_slice(&(payload.len() as u32).to_ne_bytes());
    buf.extend_from_slice(payload);
    // SAFETY: writing a local buffer; a failure leaves the agent to see EOF instead.
    unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
}

/// A failure record: `step`, NUL, `message`.
pub fn write_failure(fd: RawFd, step: &str, message: &str) {
    let mut p = step.as_bytes().to_vec();
    p.push(0);
    p.extend_from_slice(message.as_bytes());
    write_record(fd, REC_FAILED, &p);
}

pub fn parse_failure(payload: &[u8]) -> (String, String) {
    let s = String::from_utf8_lossy(payload);
    match s.split_once('\0') {
        Some((step, msg)) => (step.to_string(), msg.to_string()),
        None => ("unknown".to_string(), s.into_owned()),
    }
}

/// Reads one record (blocking); `None` at end of file.
pub fn read_record(fd: &OwnedFd) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    if !read_full(fd.as_raw_fd(), &mut head)? {
        return Ok(None);
    }
    let len = u32::from_ne_bytes(head[1..5].try_into().expect("4 bytes")) as usize;
    let mut payload = vec![0u8; len];
    if !read_full(fd.as_raw_fd(), &mut payload)? && len > 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "report pipe closed inside a record",
        ));
    }
    Ok(Some((head[0], payload)))
}

/// Fills `buf`; false when end of file came first.
fn read_full(fd: RawFd, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: reading into the unfilled tail of buf.
        let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Ok(false);
        }
        got += n as usize;
    }
    Ok(true)
}

/// Writes all of `buf` to a blocking descriptor.
pub fn write_all(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: writing from a valid slice.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// `_exit` without running destructors: forked children must not flush or free the parent's
/// state.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns.
    unsafe { libc::_exit(code) }
}

/// Landlock ABI of the running kernel (0: none), from `landlock_create_ruleset` with the
/// version flag.
pub fn landlock_abi() -> i32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: the version query takes no attribute pointer.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if r < 0 { 0 } else { r as i32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_status_maps_codes_and_signals() {
        // Raw wait statuses: exit code in bits 8..16, signal in the low 7 bits.
        assert_eq!(shell_status(0), 0);
        assert_eq!(shell_status(3 << 8), 3);
        assert_eq!(shell_status(9), 137);
        assert_eq!(shell_status(15), 143);
    }

    #[test]
    fn records_roundtrip_and_eof_is_none() {
        let (r, w) = pipe().unwrap();
        write_failure(w.as_raw_fd(), "mount /tmp", "no such file");
        write_record(w.as_raw_fd(), REC_PID, &42i32.to_ne_bytes());
        drop(w);
        let (k, p) = read_record(&r).unwrap().unwrap();
        assert_eq!(k, REC_FAILED);
        assert_eq!(
            parse_failure(&p),
            ("mount /tmp".to_string(), "no such file".to_string())
        );
        let (k, p) = read_record(&r).unwrap().unwrap();
        assert_eq!((k, p), (REC_PID, 42i32.to_ne_bytes().to_vec()));
        assert!(read_record(&r).unwrap().is_none());
    }
}
