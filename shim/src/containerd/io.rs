//! A process's standard streams as containerd hands them over: FIFO paths (empty when unused),
//! or a terminal. Output FIFOs are given to the process directly (no copying in the shim);
//! stdin goes through a pipe the shim can close (`CloseIO`); a terminal's master side is
//! received over a console socket and copied both ways.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// The process's side of its streams, handed to libcontainer.
#[derive(Default)]
pub struct ProcessSide {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    /// The console socket libcontainer sends the terminal's master to.
    pub console_socket: Option<PathBuf>,
}

/// The shim's side, kept while the process lives.
#[derive(Default)]
pub struct ShimSide {
    /// Writes into the process's stdin; dropped by `CloseIO` (the process then reads EOF).
    stdin: Arc<Mutex<Option<File>>>,
    /// The terminal's master, once received.
    pub console: Arc<Mutex<Option<File>>>,
    console_listener: Option<UnixListener>,
}

/// Opens a FIFO for writing without blocking on a missing reader (containerd may open its end
/// later, or never, for a discarded stream).
fn open_output(path: &str) -> std::io::Result<File> {
    let f = match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)?,
        Err(e) => return Err(e),
    };
    set_blocking(&f)?;
    Ok(f)
}

fn set_blocking(f: &File) -> std::io::Result<()> {
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let flags = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn pipe() -> std::io::Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: two valid slots.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh fds we own.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

/// Copies the stdin FIFO into `sink` until EOF or until the sink is closed.
fn copy_stdin(path: String, sink: Arc<Mutex<Option<File>>>) {
    std::thread::spawn(move || {
        // Blocks until containerd opens its end.
        let Ok(mut src) = File::open(&path) else {
            return;
        };
        let mut buf = [0u8; 32 * 1024];
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut g = sink.lock().expect("stdin");
            let written = g.as_mut().is_some_and(|w| w.write_all(&buf[..n]).is_ok());
            if !written {
                return;
            }
        }
        // EOF from the client: the process sees EOF too.
        sink.lock().expect("stdin").take();
    });
}

pub fn setup(
    paths: &StdioPaths,
    state_dir: &Path,
    tag: &str,
) -> std::io::Result<(ProcessSide, ShimSide)> {
    let mut p = ProcessSide::default();
    let mut s = ShimSide::default();
    if paths.terminal {
        let sock = state_dir.join(format!("console-{tag}.sock"));
        let _ = std::fs::remove_file(&sock);
        s.console_listener = Some(UnixListener::bind(&sock)?);
        p.console_socket = Some(sock);
        return Ok((p, s));
    }
    if !paths.stdin.is_empty() {
        let (r, w) = pipe()?;
        p.stdin = Some(r.into());
        *s.stdin.lock().expect("stdin") = Some(w);
        copy_stdin(paths.stdin.clone(), s.stdin.clone());
    }
    if !paths.stdout.is_empty() {
        p.stdout = Some(open_output(&paths.stdout)?.into());
    }
    if !paths.stderr.is_empty() {
        p.stderr = Some(open_output(&paths.stderr)?.into());
    }
    Ok((p, s))
}

impl ShimSide {
    /// Accepts the terminal master libcontainer sends (call on a thread before the process is
    /// built: the build waits for the hand-over) and wires it to the FIFOs.
    pub fn receive_console(&mut self, paths: StdioPaths) -> Option<std::thread::JoinHandle<()>> {
        let listener = self.console_listener.take()?;
        let console = self.console.clone();
        let stdin = self.stdin.clone();
        Some(std::thread::spawn(move || {
            let Ok((conn, _)) = listener.accept() else {
                return;
            };
            let Some(master) = recv_fd(&conn) else {
                tracing::warn!("no terminal received on the console socket");
                return;
            };
            let master = File::from(master);
            let (Ok(out), Ok(inp)) = (master.try_clone(), master.try_clone()) else {
                return;
            };
            *console.lock().expect("console") = Some(master);
            if !paths.stdout.is_empty() {
                let path = paths.stdout.clone();
                std::thread::spawn(move || {
                    let Ok(mut dst) = open_output(&path) else {
                        return;
                    };
                    let mut src = out;
                    let _ = std::io::copy(&mut src, &mut dst);
                });
            }
            if !paths.stdin.is_empty() {
                *stdin.lock().expect("stdin") = Some(inp);
                copy_stdin(paths.stdin.clone(), stdin);
            }
        }))
    }

    /// `CloseIO`: the process reads EOF on stdin.
    pub fn close_stdin(&self) {
        self.stdin.lock().expect("stdin").take();
    }

    pub fn resize(&self, width: u32, height: u32) -> std::io::Result<()> {
        let g = self.console.lock().expect("console");
        let Some(m) = g.as_ref() else {
            return Err(std::io::Error::other("the process has no terminal"));
        };
        let ws = libc::winsize {
            ws_row: height as u16,
            ws_col: width as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ with a valid winsize on the master we own.
        if unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

fn recv_fd(conn: &std::os::unix::net::UnixStream) -> Option<OwnedFd> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ok()?;
    for c in msg.cmsgs().ok()? {
        if let ControlMessageOwned::ScmRights(fds) = c
            && let Some(fd) = fds.first()
        {
            // SAFETY: the kernel just installed this fd for us.
            return Some(unsafe { OwnedFd::from_raw_fd(*fd) });
        }
    }
    None
}
