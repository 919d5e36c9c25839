//! The agent's service loop: one thread, one `poll` over the host channel, every stdio
//! descriptor and a SIGCHLD self-pipe. Being single-threaded keeps `fork` safe (no lock can be
//! held by another thread) and orders frames by construction: everything the host gets goes
//! through one outgoing queue, written without blocking when the channel is writable. A slow
//! host therefore never blocks the agent: output reading pauses when the queue is over its high
//! mark (the workload then blocks on a full pipe), control frames are still read and served.
//! A process's `Exited` is queued only after all its output reached end of file, so output is
//! always delivered before it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use agentcell_vmproto::{
    ContainerSpec, Frame, GuestInfo, GuestMessage, HostMessage, MAX_FRAME, ProcessSpec, ProtoError,
    VmStats, read_frame, write_frame,
};

use crate::confine::{ChildStdio, Confinement};
use crate::container::{Layout, spawn_exec, spawn_init};
use crate::paths::plain_name;
use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent channel: {0}")]
    Channel(#[from] ProtoError),
    #[error("{step}: {source}")]
    Os {
        step: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Where the agent keeps things; the guest's values are in `main.rs`, a test passes its own.
#[derive(Debug, Clone)]
pub struct Config {
    pub shares_dir: PathBuf,
    /// Scratch space of containers (`<id>/root`, `<id>/files`).
    pub state_dir: PathBuf,
    /// Source of device nodes for a container's `/dev`.
    pub dev_dir: PathBuf,
    /// Parent of the containers' cgroups (cgroup2); `None`: no cgroups (no limits, and
    /// `Signal{all}` reaches the init only).
    pub cgroup_root: Option<PathBuf>,
    pub landlock_abi: i32,
    /// `sync` when a container's init exits, before its `Exited`: shares are mounted with
    /// `cache=loose`, so what a container wrote to a volume reaches the host only on writeback.
    pub sync_on_exit: bool,
}

/// Why `serve` returned (every container has been sent SIGKILL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Shutdown,
    HostClosed,
}

/// Output is not read from workloads while this much is waiting for the host.
const HIGH_WATER: usize = 1 << 20;
const READ_CHUNK: usize = 64 << 10;

struct Proc {
    /// Init handle of the container this process belongs to.
    container: u32,
    pid: libc::pid_t,
    /// (fd number for the host, read end).
    outputs: Vec<(u8, OwnedFd)>,
    stdin: Option<OwnedFd>,
    stdin_buf: Vec<u8>,
    stdin_close: bool,
    pty: Option<OwnedFd>,
    status: Option<i32>,
    exited_sent: bool,
}

struct Container {
    id: String,
    conf: Confinement,
    init_pid: libc::pid_t,
    init_alive: bool,
    timeout: Option<Duration>,
    cgroup: Option<PathBuf>,
    state: PathBuf,
    start: Option<OwnedFd>,
    report: Option<OwnedFd>,
    deadline: Option<Instant>,
    timed_out: bool,
    handles: BTreeSet<u32>,
}

static SIGCHLD_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_sigchld(_: libc::c_int) {
    let fd = SIGCHLD_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: write is async-signal-safe; a full pipe already means "wake up".
        unsafe { libc::write(fd, b"c".as_ptr().cast(), 1) };
    }
}

/// Bytes waiting for the host, written as the channel accepts them.
#[derive(Default)]
pub struct Outbox {
    buf: Vec<u8>,
    off: usize,
}

impl Outbox {
    pub fn push(&mut self, frame: &Frame<GuestMessage>) {
        // Frames here are bounded (data chunks of READ_CHUNK, small control messages).
        let _ = write_frame(&mut self.buf, frame);
    }

    pub fn pending(&self) -> usize {
        self.buf.len() - self.off
    }

    /// Writes what the channel takes now.
    fn flush(&mut self, fd: RawFd) -> io::Result<()> {
        while self.off < self.buf.len() {
            let rest = &self.buf[self.off..];
            // SAFETY: writing from a valid slice.
            let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => break,
                    _ => return Err(e),
                }
            }
            self.off += n as usize;
        }
        if self.off == self.buf.len() {
            self.buf.clear();
            self.off = 0;
        } else if self.off > (1 << 20) {
            self.buf.drain(..self.off);
            self.off = 0;
        }
        Ok(())
    }
}

/// Takes every complete frame off the front of `buf`.
pub fn take_frames(buf: &mut Vec<u8>) -> Result<Vec<Frame<HostMessage>>, ProtoError> {
    let mut frames = Vec::new();
    let mut at = 0;
    while buf.len() - at >= 4 {
        let len = u32::from_be_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME {
            return Err(ProtoError::TooLarge(len));
        }
        if buf.len() - at < 4 + len {
            break;
        }
        let mut one = &buf[at..at + 4 + len];
        if let Some(f) = read_frame(&mut one)? {
            frames.push(f);
        }
        at += 4 + len;
    }
    buf.drain(..at);
    Ok(frames)
}

pub struct Agent {
    cfg: Config,
    chan: OwnedFd,
    sig_r: OwnedFd,
    _sig_w: OwnedFd,
    out: Outbox,
    inbuf: Vec<u8>,
    procs: BTreeMap<u32, Proc>,
    containers: BTreeMap<u32, Container>,
    by_pid: HashMap<libc::pid_t, u32>,
    /// Children reaped without a report (exec helpers, processes of failed or deleted handles).
    silent: HashSet<libc::pid_t>,
    /// Cgroups to remove once their last process is gone.
    stale_cgroups: Vec<PathBuf>,
    ending: Option<Ending>,
}

/// Serves the host on `chan` until `Shutdown` or end of channel. `info` is sent first.
pub fn serve(chan: OwnedFd, cfg: Config, info: GuestInfo) -> Result<Ending, AgentError> {
    let mut a = Agent::new(chan, cfg)?;
    a.out.push(&Frame::Control(GuestMessage::Ready(info)));
    a.run()
}

impl Agent {
    fn new(chan: OwnedFd, cfg: Config) -> Result<Agent, AgentError> {
        let os = |step| move |source| AgentError::Os { step, source };
        sys::set_nonblocking(chan.as_raw_fd()).map_err(os("channel"))?;
        let (sig_r, sig_w) = sys::pipe().map_err(os("sigchld pipe"))?;
        sys::set_nonblocking(sig_r.as_raw_fd()).map_err(os("sigchld pipe"))?;
        sys::set_nonblocking(sig_w.as_raw_fd()).map_err(os("sigchld pipe"))?;
        SIGCHLD_FD.store(sig_w.as_raw_fd(), Ordering::Relaxed);
        // SAFETY: installing a handler that only writes one byte; SIGPIPE ignored so a
        // workload that closed its stdin turns into EPIPE, not the agent's death.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigchld as *const () as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART | libc::SA_NOCLDSTOP;
            libc::sigaction(libc::SIGCHLD, &sa, std::ptr::null_mut());
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
        fs::create_dir_all(&cfg.state_dir).map_err(os("state directory"))?;
        Ok(Agent {
            cfg,
            chan,
            sig_r,
            _sig_w: sig_w,
            out: Outbox::default(),
            inbuf: Vec::new(),
            procs: BTreeMap::new(),
            containers: BTreeMap::new(),
            by_pid: HashMap::new(),
            silent: HashSet::new(),
            stale_cgroups: Vec::new(),
            ending: None,
        })
    }

    fn send(&mut self, m: GuestMessage) {
        self.out.push(&Frame::Control(m));
    }

    fn log(&mut self, level: &str, message: String) {
        self.send(GuestMessage::Log {
            level: level.into(),
            message,
        });
    }

    fn failed(&mut self, handle: u32, step: &str, message: impl Into<String>) {
        self.send(GuestMessage::Failed {
            handle,
            step: step.into(),
            message: message.into(),
        });
    }

    fn run(&mut self) -> Result<Ending, AgentError> {
        #[derive(Clone, Copy)]
        enum Key {
            Chan,
            Sig,
            Out(u32, u8),
            In(u32),
        }
        loop {
            self.reap();
            self.check_deadlines();
            self.finish_exits();
            self.retry_cgroups();
            let _ = self.out.flush(self.chan.as_raw_fd());
            if let Some(end) = self.ending {
                self.kill_all();
                if end == Ending::Shutdown {
                    // Best effort: what is queued (the last exits) may still reach the host.
                    let _ = self.out.flush(self.chan.as_raw_fd());
                }
                return Ok(end);
            }
            let mut fds = Vec::new();
            let mut keys = Vec::new();
            let mut chan_ev = libc::POLLIN;
            if self.out.pending() > 0 {
                chan_ev |= libc::POLLOUT;
            }
            fds.push(pollfd(self.chan.as_raw_fd(), chan_ev));
            keys.push(Key::Chan);
            fds.push(pollfd(self.sig_r.as_raw_fd(), libc::POLLIN));
            keys.push(Key::Sig);
            let reading = self.out.pending() < HIGH_WATER;
            for (h, p) in &self.procs {
                if reading {
                    for (n, fd) in &p.outputs {
                        fds.push(pollfd(fd.as_raw_fd(), libc::POLLIN));
                        keys.push(Key::Out(*h, *n));
                    }
                }
                if let Some(fd) = &p.stdin
                    && !p.stdin_buf.is_empty()
                {
                    fds.push(pollfd(fd.as_raw_fd(), libc::POLLOUT));
                    keys.push(Key::In(*h));
                }
            }
            let timeout = self
                .containers
                .values()
                .filter_map(|c| c.deadline)
                .min()
                .map_or(-1, |d| {
                    let ms = d.saturating_duration_since(Instant::now()).as_millis();
                    ms.min(60_000) as libc::c_int + 1
                });
            // SAFETY: fds is a valid array of pollfd.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(AgentError::Os {
                    step: "poll",
                    source: e,
                });
            }
            for (pfd, key) in fds.iter().zip(keys) {
                if pfd.revents == 0 {
                    continue;
                }
                match key {
                    Key::Chan => {
                        if pfd.revents & libc::POLLOUT != 0 {
                            self.out.flush(self.chan.as_raw_fd()).map_err(|source| {
                                AgentError::Os {
                                    step: "write to the channel",
                                    source,
                                }
                            })?;
                        }
                        if pfd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                            self.read_channel()?;
                        }
                    }
                    Key::Sig => drain(self.sig_r.as_raw_fd()),
                    Key::Out(h, n) => self.read_output(h, n),
                    Key::In(h) => self.write_stdin(h),
                }
            }
        }
    }

    fn read_channel(&mut self) -> Result<(), AgentError> {
        let mut buf = vec![0u8; READ_CHUNK];
        // Bounded per round so stdio keeps flowing under a flood of input.
        for _ in 0..16 {
            // SAFETY: reading into a local buffer.
            let n =
                unsafe { libc::read(self.chan.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => break,
                    _ => {
                        return Err(AgentError::Os {
                            step: "read from the channel",
                            source: e,
                        });
                    }
                }
            }
            if n == 0 {
                self.ending.get_or_insert(Ending::HostClosed);
                break;
            }
            self.inbuf.extend_from_slice(&buf[..n as usize]);
        }
        for f in take_frames(&mut self.inbuf)? {
            self.dispatch(f);
            if self.ending.is_some() {
                break;
            }
        }
        Ok(())
    }

    pub fn dispatch(&mut self, f: Frame<HostMessage>) {
        match f {
            Frame::Data {
                handle,
                fd: 0,
                bytes,
            } => match self.procs.get_mut(&handle) {
                Some(p) if p.stdin.is_some() && !p.stdin_close => {
                    p.stdin_buf.extend_from_slice(&bytes)
                }
                _ => {}
            },
            Frame::Data { handle, fd, .. } => self.log(
                "warn",
                format!("data for fd {fd} of handle {handle} ignored"),
            ),
            Frame::Control(m) => self.control(m),
        }
    }

    fn control(&mut self, m: HostMessage) {
        sys::trace(|| format!("host: {m:?}"));
        match m {
            HostMessage::Create { handle, spec } => {
                if self.procs.contains_key(&handle) {
                    return self.failed(handle, "create", "handle in use");
                }
                match self.create(handle, *spec) {
                    Ok(pid) => self.send(GuestMessage::Created { handle, pid }),
                    Err((step, msg)) => self.failed(handle, &step, msg),
                }
            }
            HostMessage::Start { handle } => self.start(handle),
            HostMessage::Exec {
                handle,
                container,
                process,
            } => {
                if self.procs.contains_key(&handle) {
                    return self.failed(handle, "exec", "handle in use");
                }
                match self.exec(handle, container, &process) {
                    Ok(pid) => self.send(GuestMessage::Started { handle, pid }),
                    Err((step, msg)) => self.failed(handle, &step, msg),
                }
            }
            HostMessage::Signal {
                handle,
                signal,
                all,
            } => {
                let Some(p) = self.procs.get(&handle) else {
                    return self.failed(handle, "signal", "unknown handle");
                };
                if all {
                    if let Some(c) = self.containers.get(&p.container) {
                        signal_container(c, signal);
                    }
                } else if p.status.is_none() && p.pid > 0 {
                    // SAFETY: signalling a child the agent has not reaped yet (its PID is
                    // still ours).
                    unsafe { libc::kill(p.pid, signal) };
                }
            }
            HostMessage::CloseStdin { handle } => {
                if let Some(p) = self.procs.get_mut(&handle) {
                    if p.pty.is_some() {
                        // A terminal has no end of file; ^D is what a typing user sends.
                        p.stdin_buf.push(4);
                    } else if p.stdin_buf.is_empty() {
                        p.stdin = None;
                    } else {
                        p.stdin_close = true;
                    }
                }
            }
            HostMessage::Resize { handle, rows, cols } => {
                if let Some(pty) = self.procs.get(&handle).and_then(|p| p.pty.as_ref()) {
                    let ws = libc::winsize {
                        ws_row: rows,
                        ws_col: cols,
                        ws_xpixel: 0,
                        ws_ypixel: 0,
                    };
                    // SAFETY: TIOCSWINSZ reads a winsize.
                    unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ as _, &ws) };
                }
            }
            HostMessage::Delete { handle } => self.delete(handle),
            HostMessage::Stats { id } => {
                let stats = self.stats();
                self.send(GuestMessage::Stats { id, stats });
            }
            HostMessage::Shutdown => self.ending = Some(Ending::Shutdown),
        }
    }

    fn create(
        &mut self,
        handle: u32,
        spec: ContainerSpec,
    ) -> Result<libc::pid_t, (String, String)> {
        let err = |step: &str| {
            let step = step.to_string();
            move |e: &dyn std::fmt::Display| (step.clone(), e.to_string())
        };
        let id = plain_name(&spec.id)
            .map_err(|e| err("create")(&e))?
            .to_string();
        if self.containers.values().any(|c| c.id == id) {
            return Err(("create".into(), format!("container {id} exists")));
        }
        let state = self.cfg.state_dir.join(&id);
        let _ = fs::remove_dir_all(&state);
        fs::create_dir_all(state.join("root")).map_err(|e| err("create")(&e))?;
        let cgroup = match self.make_cgroup(&id, &spec) {
            Ok(c) => c,
            Err(e) => {
                let _ = fs::remove_dir_all(&state);
                return Err(("cgroup".into(), e));
            }
        };
        let cleanup = |me: &mut Agent| {
            let _ = fs::remove_dir_all(&state);
            if let Some(cg) = &cgroup {
                me.stale_cgroups.push(cg.clone());
            }
        };
        let r = (|| {
            let (parent, child) = make_stdio(&spec.process).map_err(|e| err("stdio")(&e))?;
            let (rep_r, rep_w) = sys::pipe().map_err(|e| err("create")(&e))?;
            let (start_r, start_w) = sys::pipe().map_err(|e| err("create")(&e))?;
            let conf = Confinement {
                landlock: spec.landlock.clone(),
                seccomp_bpf: spec.seccomp_bpf.clone(),
                seccomp_pod_bpf: spec.seccomp_pod_bpf.clone(),
                landlock_abi: self.cfg.landlock_abi,
            };
            let layout = Layout {
                shares_dir: self.cfg.shares_dir.clone(),
                dev_dir: self.cfg.dev_dir.clone(),
                state: state.clone(),
                cgroup: cgroup.clone(),
            };
            let pid = spawn_init(&spec, &conf, &layout, child, rep_w, start_r)
                .map_err(|e| err("clone")(&e))?;
            match sys::read_record(&rep_r) {
                Ok(Some((sys::REC_CREATED, _))) => Ok((pid, parent, rep_r, start_w, conf)),
                Ok(Some((sys::REC_FAILED, p))) => {
                    self.silent.insert(pid);
                    Err(sys::parse_failure(&p))
                }
                other => {
                    self.silent.insert(pid);
                    Err((
                        "create".into(),
                        format!("container init ended without reporting ({other:?})"),
                    ))
                }
            }
        })();
        let (pid, parent, rep_r, start_w, conf) = match r {
            Ok(v) => v,
            Err(e) => {
                cleanup(self);
                return Err(e);
            }
        };
        self.containers.insert(
            handle,
            Container {
                id,
                conf,
                init_pid: pid,
                init_alive: true,
                timeout: spec.timeout_ms.map(Duration::from_millis),
                cgroup,
                state,
                start: Some(start_w),
                report: Some(rep_r),
                deadline: None,
                timed_out: false,
                handles: BTreeSet::from([handle]),
            },
        );
        self.add_proc(handle, handle, pid, parent);
        Ok(pid)
    }

    fn make_cgroup(&self, id: &str, spec: &ContainerSpec) -> Result<Option<PathBuf>, String> {
        let Some(root) = &self.cfg.cgroup_root else {
            return Ok(None);
        };
        let cg = root.join(id);
        let w = |file: &str, v: String| {
            fs::write(cg.join(file), v).map_err(|e| format!("{}: {e}", cg.join(file).display()))
        };
        fs::create_dir_all(&cg).map_err(|e| format!("{}: {e}", cg.display()))?;
        if spec.memory_bytes > 0 {
            w("memory.max", spec.memory_bytes.to_string())?;
            // Swap would let the container exceed its memory silently; absent without swap.
            let _ = fs::write(cg.join("memory.swap.max"), "0");
        }
        if spec.pids_max > 0 {
            w("pids.max", spec.pids_max.to_string())?;
        }
        Ok(Some(cg))
    }

    fn add_proc(&mut self, handle: u32, container: u32, pid: libc::pid_t, parent: ParentStdio) {
        self.by_pid.insert(pid, handle);
        self.procs.insert(
            handle,
            Proc {
                container,
                pid,
                outputs: parent.outputs,
                stdin: parent.stdin,
                stdin_buf: Vec::new(),
                stdin_close: false,
                pty: parent.pty,
                status: None,
                exited_sent: false,
            },
        );
    }

    fn start(&mut self, handle: u32) {
        let Some(c) = self.containers.get_mut(&handle) else {
            return self.failed(handle, "start", "no container was created with this handle");
        };
        let (Some(start), Some(report)) = (c.start.take(), c.report.take()) else {
            return self.failed(handle, "start", "already started");
        };
        if let Err(e) = sys::write_all(start.as_raw_fd(), b"s") {
            return self.failed(handle, "start", e.to_string());
        }
        drop(start);
        let timeout = c.timeout;
        let init_pid = c.init_pid;
        let mut failure = None;
        let mut logs = Vec::new();
        loop {
            match sys::read_record(&report) {
                Ok(None) => break,
                Ok(Some((sys::REC_LOG, p))) => logs.push(String::from_utf8_lossy(&p).into_owned()),
                Ok(Some((sys::REC_FAILED, p))) => failure = Some(sys::parse_failure(&p)),
                Ok(Some(_)) => {}
                Err(e) => {
                    failure = Some(("start".into(), e.to_string()));
                    break;
                }
            }
        }
        for l in logs {
            self.log("warn", format!("container handle {handle}: {l}"));
        }
        match failure {
            Some((step, msg)) => {
                // Its init exits 127 now; nothing of it is left running, no `Exited` follows.
                if let Some(p) = self.procs.get_mut(&handle) {
                    p.exited_sent = true;
                }
                self.failed(handle, &step, msg);
            }
            None => {
                if let Some(c) = self.containers.get_mut(&handle) {
                    c.deadline = timeout.map(|t| Instant::now() + t);
                }
                self.send(GuestMessage::Started {
                    handle,
                    pid: init_pid,
                });
            }
        }
    }

    fn exec(
        &mut self,
        handle: u32,
        container: u32,
        process: &ProcessSpec,
    ) -> Result<libc::pid_t, (String, String)> {
        let s = |m: &dyn std::fmt::Display| ("exec".to_string(), m.to_string());
        let c = self
            .containers
            .get(&container)
            .ok_or_else(|| s(&"no such container"))?;
        if !c.init_alive || c.start.is_some() {
            return Err(s(&"the container is not running"));
        }
        let (parent, child) =
            make_stdio(process).map_err(|e| ("stdio".to_string(), e.to_string()))?;
        let (rep_r, rep_w) = sys::pipe().map_err(|e| s(&e))?;
        let helper = spawn_exec(
            c.init_pid,
            c.cgroup.as_deref(),
            process,
            &c.conf,
            child,
            rep_w,
        )
        .map_err(|e| s(&e))?;
        self.silent.insert(helper);
        let mut pid = None;
        let mut failure = None;
        let mut logs = Vec::new();
        loop {
            match sys::read_record(&rep_r) {
                Ok(None) => break,
                Ok(Some((sys::REC_PID, p))) if p.len() == 4 => {
                    pid = Some(i32::from_ne_bytes(p.try_into().expect("4 bytes")))
                }
                Ok(Some((sys::REC_LOG, p))) => logs.push(String::from_utf8_lossy(&p).into_owned()),
                Ok(Some((sys::REC_FAILED, p))) => failure = Some(sys::parse_failure(&p)),
                Ok(Some(_)) => {}
                Err(e) => {
                    failure = Some(s(&e));
                    break;
                }
            }
        }
        for l in logs {
            self.log("warn", format!("exec handle {handle}: {l}"));
        }
        match (pid, failure) {
            (Some(pid), None) => {
                self.add_proc(handle, container, pid, parent);
                if let Some(c) = self.containers.get_mut(&container) {
                    c.handles.insert(handle);
                }
                Ok(pid)
            }
            (pid, failure) => {
                if let Some(pid) = pid {
                    self.silent.insert(pid);
                }
                Err(failure.unwrap_or_else(|| s(&"the exec helper ended without reporting")))
            }
        }
    }

    fn delete(&mut self, handle: u32) {
        let Some(p) = self.procs.remove(&handle) else {
            return self.failed(handle, "delete", "unknown handle");
        };
        if p.status.is_none() && p.pid > 0 {
            if p.container == handle
                && let Some(c) = self.containers.get(&handle)
            {
                signal_container(c, libc::SIGKILL);
            }
            // SAFETY: the process is our unreaped child.
            unsafe { libc::kill(p.pid, libc::SIGKILL) };
            self.by_pid.remove(&p.pid);
            self.silent.insert(p.pid);
        }
        let last = match self.containers.get_mut(&p.container) {
            Some(c) => {
                c.handles.remove(&handle);
                c.handles.is_empty()
            }
            None => false,
        };
        if last && let Some(c) = self.containers.remove(&p.container) {
            if c.init_alive {
                signal_container(&c, libc::SIGKILL);
            }
            let _ = fs::remove_dir_all(&c.state);
            if let Some(cg) = c.cgroup {
                self.stale_cgroups.push(cg);
            }
        }
    }

    fn reap(&mut self) {
        loop {
            let mut st = 0;
            // SAFETY: non-blocking wait for any child.
            let pid = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            if self.silent.remove(&pid) {
                continue;
            }
            let Some(h) = self.by_pid.remove(&pid) else {
                continue;
            };
            let status = sys::shell_status(st);
            if let Some(p) = self.procs.get_mut(&h) {
                p.status = Some(status);
                // Nobody will read what is still queued for it.
                p.stdin = None;
                p.stdin_buf.clear();
            }
            if let Some(c) = self.containers.get_mut(&h)
                && c.init_pid == pid
            {
                c.init_alive = false;
                c.deadline = None;
                if self.cfg.sync_on_exit {
                    // SAFETY: sync takes no arguments.
                    unsafe { libc::sync() };
                }
            }
        }
    }

    fn check_deadlines(&mut self) {
        let now = Instant::now();
        for c in self.containers.values_mut() {
            if c.deadline.is_some_and(|d| d <= now) {
                c.deadline = None;
                c.timed_out = true;
                signal_container(c, libc::SIGKILL);
            }
        }
    }

    fn finish_exits(&mut self) {
        let mut exits = Vec::new();
        for (h, p) in self.procs.iter_mut() {
            if let Some(status) = p.status
                && p.outputs.is_empty()
                && !p.exited_sent
            {
                p.exited_sent = true;
                let timed_out = self
                    .containers
                    .get(&p.container)
                    .is_some_and(|c| c.timed_out);
                exits.push(GuestMessage::Exited {
                    handle: *h,
                    status: if timed_out { 137 } else { status },
                    timed_out,
                });
            }
        }
        for e in exits {
            self.send(e);
        }
    }

    fn retry_cgroups(&mut self) {
        self.stale_cgroups
            .retain(|cg| fs::remove_dir(cg).is_err_and(|e| e.kind() != io::ErrorKind::NotFound));
    }

    fn read_output(&mut self, handle: u32, n: u8) {
        let Some(p) = self.procs.get_mut(&handle) else {
            return;
        };
        let Some(i) = p.outputs.iter().position(|(m, _)| *m == n) else {
            return;
        };
        let mut buf = vec![0u8; READ_CHUNK];
        // SAFETY: reading into a local buffer.
        let r = unsafe {
            libc::read(
                p.outputs[i].1.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if r > 0 {
            buf.truncate(r as usize);
            self.out.push(&Frame::Data {
                handle,
                fd: n,
                bytes: buf,
            });
            return;
        }
        if r < 0 {
            let e = io::Error::last_os_error();
            // EIO: a terminal whose other side is closed, its end of file.
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) {
                return;
            }
        }
        p.outputs.remove(i);
        self.out.push(&Frame::Data {
            handle,
            fd: n,
            bytes: Vec::new(),
        });
    }

    fn write_stdin(&mut self, handle: u32) {
        let Some(p) = self.procs.get_mut(&handle) else {
            return;
        };
        let Some(fd) = &p.stdin else { return };
        // SAFETY: writing from a valid slice.
        let n = unsafe {
            libc::write(
                fd.as_raw_fd(),
                p.stdin_buf.as_ptr().cast(),
                p.stdin_buf.len(),
            )
        };
        if n >= 0 {
            p.stdin_buf.drain(..n as usize);
        } else {
            let e = io::Error::last_os_error();
            if !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) {
                // The reader is gone; what it did not take is lost, as with a pipe.
                p.stdin = None;
                p.stdin_buf.clear();
            }
        }
        if p.stdin_buf.is_empty() && p.stdin_close {
            p.stdin = None;
        }
    }

    fn kill_all(&mut self) {
        for c in self.containers.values() {
            signal_container(c, libc::SIGKILL);
        }
        for p in self.procs.values() {
            if p.status.is_none() && p.pid > 0 {
                // SAFETY: signalling our unreaped child.
                unsafe { libc::kill(p.pid, libc::SIGKILL) };
            }
        }
    }

    fn stats(&self) -> VmStats {
        let mut s = VmStats::default();
        if let Ok(m) = fs::read_to_string("/proc/meminfo") {
            s.mem_total_bytes = meminfo_bytes(&m, "MemTotal");
            s.mem_available_bytes = meminfo_bytes(&m, "MemAvailable");
        }
        let Some(root) = &self.cfg.cgroup_root else {
            return s;
        };
        let cgroups: Vec<&Path> = self
            .containers
            .values()
            .filter_map(|c| c.cgroup.as_deref())
            .collect();
        s.cpu_usage_ns = match fs::read_to_string(root.join("cpu.stat")) {
            Ok(t) => usage_usec(&t) * 1000,
            Err(_) => cgroups
                .iter()
                .filter_map(|c| fs::read_to_string(c.join("cpu.stat")).ok())
                .map(|t| usage_usec(&t) * 1000)
                .sum(),
        };
        s.pids = match fs::read_to_string(root.join("pids.current")) {
            Ok(t) => t.trim().parse().unwrap_or(0),
            // No pids controller: count the members of each container's cgroup.
            Err(_) => cgroups
                .iter()
                .filter_map(|c| fs::read_to_string(c.join("cgroup.procs")).ok())
                .map(|t| t.lines().count() as u64)
                .sum(),
        };
        s
    }
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

fn drain(fd: RawFd) {
    let mut b = [0u8; 64];
    // SAFETY: reading a non-blocking pipe into a local buffer.
    while unsafe { libc::read(fd, b.as_mut_ptr().cast(), b.len()) } > 0 {}
}

/// Every process of the container: through its cgroup when it has one (`cgroup.kill` for
/// SIGKILL); SIGKILL of the init ends the whole PID namespace in any case.
fn signal_container(c: &Container, sig: i32) {
    if let Some(cg) = &c.cgroup {
        if sig == libc::SIGKILL && fs::write(cg.join("cgroup.kill"), "1").is_ok() {
            return;
        }
        if let Ok(procs) = fs::read_to_string(cg.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: kill with a PID read from the container's cgroup.
                unsafe { libc::kill(pid, sig) };
            }
        }
    }
    if c.init_alive && (sig == libc::SIGKILL || c.cgroup.is_none()) {
        // SAFETY: the init is our unreaped child.
        unsafe { libc::kill(c.init_pid, sig) };
    }
}

pub fn meminfo_bytes(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(key)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
        .map_or(0, |kb| kb * 1024)
}

pub fn usage_usec(cpu_stat: &str) -> u64 {
    cpu_stat
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse().ok())
        .unwrap_or(0)
}

struct ParentStdio {
    outputs: Vec<(u8, OwnedFd)>,
    stdin: Option<OwnedFd>,
    pty: Option<OwnedFd>,
}

/// Pipes (or a terminal) for a process; the agent's ends are non-blocking. Without `stdin` the
/// process gets a pipe already at end of file (its `/dev/null` may not exist).
fn make_stdio(p: &ProcessSpec) -> io::Result<(ParentStdio, ChildStdio)> {
    if p.terminal {
        let (mut m, mut s) = (-1, -1);
        // SAFETY: openpty writes two descriptors; NULL name/termios/winsize are allowed.
        sys::check(unsafe {
            libc::openpty(
                &mut m,
                &mut s,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        })?;
        // SAFETY: openpty returned two fresh descriptors we now own.
        let (m, s) = unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
        sys::set_cloexec(m.as_raw_fd())?;
        sys::set_cloexec(s.as_raw_fd())?;
        sys::set_nonblocking(m.as_raw_fd())?;
        let parent = ParentStdio {
            outputs: vec![(1, sys::dup(&m)?)],
            stdin: if p.stdin { Some(sys::dup(&m)?) } else { None },
            pty: Some(m),
        };
        let child = ChildStdio {
            stdin: sys::dup(&s)?,
            stdout: sys::dup(&s)?,
            stderr: s,
            terminal: true,
        };
        return Ok((parent, child));
    }
    let (out_r, out_w) = sys::pipe()?;
    let (err_r, err_w) = sys::pipe()?;
    let (in_r, in_w) = sys::pipe()?;
    for fd in [&out_r, &err_r, &in_w] {
        sys::set_nonblocking(fd.as_raw_fd())?;
    }
    Ok((
        ParentStdio {
            outputs: vec![(1, out_r), (2, err_r)],
            stdin: p.stdin.then_some(in_w),
            pty: None,
        },
        ChildStdio {
            stdin: in_r,
            stdout: out_w,
            stderr: err_w,
            terminal: false,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_bytes(f: &Frame<HostMessage>) -> Vec<u8> {
        let mut b = Vec::new();
        write_frame(&mut b, f).unwrap();
        b
    }

    #[test]
    fn frames_are_taken_whole_and_partial_ones_wait() {
        let a = Frame::Control(HostMessage::Start { handle: 1 });
        let d = Frame::Data {
            handle: 1,
            fd: 0,
            bytes: b"hi".to_vec(),
        };
        let mut buf = frame_bytes(&a);
        let db = frame_bytes(&d);
        buf.extend_from_slice(&db[..3]);
        let got = take_frames(&mut buf).unwrap();
        assert_eq!(got, vec![a]);
        assert_eq!(buf, db[..3].to_vec(), "the partial frame stays");
        buf.extend_from_slice(&db[3..]);
        assert_eq!(take_frames(&mut buf).unwrap(), vec![d]);
        assert!(buf.is_empty());
        let mut huge = (MAX_FRAME as u32 + 1).to_be_bytes().to_vec();
        assert!(take_frames(&mut huge).is_err());
    }

    #[test]
    fn meminfo_and_cpu_stat_parse() {
        let m = "MemTotal:        500000 kB\nMemFree:  1 kB\nMemAvailable:    400000 kB\n";
        assert_eq!(meminfo_bytes(m, "MemTotal"), 500000 * 1024);
        assert_eq!(meminfo_bytes(m, "MemAvailable"), 400000 * 1024);
        assert_eq!(meminfo_bytes(m, "Missing"), 0);
        assert_eq!(
            usage_usec("usage_usec 1234\nuser_usec 1000\nsystem_usec 234\n"),
            1234
        );
    }

    #[test]
    fn outbox_keeps_frames_whole_in_order() {
        let mut o = Outbox::default();
        o.push(&Frame::Data {
            handle: 2,
            fd: 1,
            bytes: b"out".to_vec(),
        });
        o.push(&Frame::Control(GuestMessage::Exited {
            handle: 2,
            status: 0,
            timed_out: false,
        }));
        let (r, w) = sys::pipe().unwrap();
        o.flush(w.as_raw_fd()).unwrap();
        assert_eq!(o.pending(), 0);
        drop(w);
        let mut f = fs::File::from(r);
        let first: Frame<GuestMessage> = read_frame(&mut f).unwrap().unwrap();
        assert!(matches!(
            first,
            Frame::Data {
                handle: 2,
                fd: 1,
                ..
            }
        ));
        let second: Frame<GuestMessage> = read_frame(&mut f).unwrap().unwrap();
        assert!(matches!(
            second,
            Frame::Control(GuestMessage::Exited { handle: 2, .. })
        ));
    }
}
