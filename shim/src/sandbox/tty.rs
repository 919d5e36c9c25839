//! The caller's terminal is never handed to the workload. When the runner's stdin, stdout or
//! stderr is a terminal, that descriptor is replaced by the slave of a pty of our own before the
//! sandbox is created, and two threads relay: the pty's output to the caller's terminal, the
//! caller's typed input into the pty. A workload that takes its stdin as controlling terminal
//! and pushes input into it (TIOCSTI) reaches our pty, never the caller's shell. Descriptors
//! that are not terminals are handed over unchanged.
//!
//! The caller's terminal keeps its own mode: it still edits and echoes lines and turns ^C into
//! SIGINT for agentcell's process group, as before. The pty is raw (no echo, no line editing,
//! no output processing) so nothing is done twice; a full-screen program in the sandbox sees a
//! terminal, but its mode changes do not reach the caller's.

use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::thread::JoinHandle;

pub struct Relay {
    master: OwnedFd,
    /// The caller's descriptors (close-on-exec copies), restored onto 0, 1, 2 by `finish`.
    saved: Vec<(RawFd, OwnedFd)>,
    /// The caller's terminal the pty's output goes to.
    out: RawFd,
    /// The caller's stdin, when it is a terminal and we are in its foreground.
    input: Option<RawFd>,
    /// The pty's end-of-file character: the caller's ^D is passed on as that.
    veof: u8,
    stop: Option<(OwnedFd, OwnedFd)>,
    threads: Vec<JoinHandle<()>>,
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn is_tty(fd: RawFd) -> bool {
    // SAFETY: isatty on a descriptor number only queries it.
    unsafe { libc::isatty(fd) == 1 }
}

impl Relay {
    /// Puts a pty of our own on each of 0, 1, 2 that is a terminal (`None` when none is). Call
    /// before the sandbox is created (it inherits 0, 1, 2); start the relay after.
    pub fn install() -> io::Result<Option<Self>> {
        let ttys: Vec<RawFd> = (0..3).filter(|fd| is_tty(*fd)).collect();
        let Some(&first) = ttys.first() else {
            return Ok(None);
        };
        let (mut m, mut s) = (-1, -1);
        // SAFETY: termios and winsize are plain data the kernel fills.
        let mut size: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ writes one winsize.
        let sized = unsafe { libc::ioctl(first, libc::TIOCGWINSZ, &mut size) } == 0;
        // SAFETY: out-pointers to two ints; the size is read only.
        check(unsafe {
            libc::openpty(
                &mut m,
                &mut s,
                std::ptr::null_mut(),
                std::ptr::null(),
                if sized { &size } else { std::ptr::null() },
            )
        })?;
        // SAFETY: fresh descriptors we own.
        let (master, slave) = unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
        // The sandbox must hold the slave only: the master and the caller's terminal stay here.
        // SAFETY: fcntl on a descriptor we own.
        check(unsafe { libc::fcntl(master.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) })?;
        // The caller's mode, minus what the caller's terminal already does: echo, signals and
        // output processing. Lines (and ^D) keep their meaning for a workload reading them.
        // SAFETY: termios is filled by tcgetattr on a terminal.
        let veof = unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(first, &mut t) != 0 {
                check(libc::tcgetattr(slave.as_raw_fd(), &mut t))?;
            }
            t.c_lflag &= !(libc::ECHO
                | libc::ECHOE
                | libc::ECHOK
                | libc::ECHONL
                | libc::ECHOCTL
                | libc::ECHOKE
                | libc::ISIG
                | libc::IEXTEN);
            t.c_oflag &= !libc::OPOST;
            check(libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &t))?;
            t.c_cc[libc::VEOF]
        };
        let mut saved = Vec::new();
        for &fd in &ttys {
            // SAFETY: duplicating a descriptor number we were given.
            let copy = check(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) })?;
            // SAFETY: fresh descriptor we own.
            saved.push((fd, unsafe { OwnedFd::from_raw_fd(copy) }));
        }
        let copy_of = |fd: RawFd| {
            saved
                .iter()
                .find(|(n, _)| *n == fd)
                .map(|(_, c)| c.as_raw_fd())
        };
        let out = copy_of(1)
            .or(copy_of(2))
            .or(copy_of(0))
            .expect("a terminal");
        // Typed input is relayed unless we are in the background of our controlling terminal:
        // reading it there would stop us (SIGTTIN) even if the workload never reads. A terminal
        // that is not ours (tcgetpgrp fails) is read freely.
        // SAFETY: tcgetpgrp and getpgrp only query.
        let input = copy_of(0).filter(|&c| {
            let fg = unsafe { libc::tcgetpgrp(c) };
            fg < 0 || fg == unsafe { libc::getpgrp() }
        });
        let relay = Self {
            master,
            saved,
            out,
            input,
            veof,
            stop: None,
            threads: Vec::new(),
        };
        for &fd in &ttys {
            // SAFETY: dup2 onto a descriptor number we own the meaning of.
            check(unsafe { libc::dup2(slave.as_raw_fd(), fd) })?;
        }
        Ok(Some(relay))
    }

    /// Starts the relay threads. Call after the sandbox's processes are cloned (no thread of
    /// ours may hold a lock at a raw clone).
    pub fn start(&mut self) -> io::Result<()> {
        let mut p = [-1; 2];
        // SAFETY: two ints for the pipe's ends.
        check(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) })?;
        // SAFETY: fresh descriptors we own.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
        let stop = r.as_raw_fd();
        self.stop = Some((r, w));
        let (master, out) = (self.master.as_raw_fd(), self.out);
        self.threads
            .push(std::thread::spawn(move || pump(master, out, stop, None)));
        if let Some(input) = self.input {
            let veof = self.veof;
            self.threads.push(std::thread::spawn(move || {
                pump(input, master, stop, Some(veof))
            }));
        }
        Ok(())
    }

    /// Puts the caller's descriptors back on 0, 1, 2 and relays what the workload wrote last.
    /// Call once the sandbox is gone: its output is all in the pty by then.
    pub fn finish(mut self) {
        self.restore();
        self.stop_threads();
    }

    fn restore(&mut self) {
        for (fd, copy) in &self.saved {
            // SAFETY: dup2 of our copy back onto the number we replaced.
            unsafe { libc::dup2(copy.as_raw_fd(), *fd) };
        }
    }

    fn stop_threads(&mut self) {
        if let Some((_, w)) = &self.stop {
            write_all(w.as_raw_fd(), b"x");
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Also on error paths: the caller's descriptors come back before ours are closed.
        self.restore();
        self.stop_threads();
    }
}

/// Copies `from` to `to` until `from` ends or `stop` is readable. The output side (`eof`
/// `None`) then drains what `from` still holds, without waiting: the writers are gone. The input
/// side passes an end of file (^D on the caller's terminal) on as the pty's `eof` character.
fn pump(from: RawFd, to: RawFd, stop: RawFd, eof: Option<u8>) {
    let mut buf = [0u8; 8192];
    // false: `from` is done.
    let copy = |buf: &mut [u8]| -> bool {
        // SAFETY: read into a buffer we own; `from` outlives the thread (joined before close).
        let n = unsafe { libc::read(from, buf.as_mut_ptr().cast(), buf.len()) };
        match (n, eof) {
            (n, _) if n < 0 => io::Error::last_os_error().kind() == io::ErrorKind::Interrupted,
            (0, Some(c)) => {
                write_all(to, &[c]);
                true
            }
            (0, None) => false,
            (n, _) => {
                write_all(to, &buf[..n as usize]);
                true
            }
        }
    };
    loop {
        let mut fds = [
            libc::pollfd {
                fd: from,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if fds[1].revents != 0 {
            if eof.is_none() {
                // SAFETY: fcntl on a descriptor the relay owns.
                unsafe {
                    let fl = libc::fcntl(from, libc::F_GETFL);
                    libc::fcntl(from, libc::F_SETFL, fl | libc::O_NONBLOCK);
                }
                while copy(&mut buf) {}
            }
            return;
        }
        let r = fds[0].revents;
        // The caller's terminal hung up: nothing more will be typed.
        if eof.is_some() && r & libc::POLLHUP != 0 {
            return;
        }
        // POLLHUP or POLLERR on the master: the read says whether it is the end (EIO).
        if r != 0 && !copy(&mut buf) {
            return;
        }
    }
}

fn write_all(fd: RawFd, mut buf: &[u8]) {
    while !buf.is_empty() {
        // SAFETY: write from a buffer we borrow.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            return;
        }
        buf = &buf[n as usize..];
    }
}
