//! The container operations of a booted VM over its agent channel. Thread-safe and synchronous
//! (std threads; the shim has no async runtime): requests are written under a lock, one reader
//! thread dispatches what the guest sends: replies to the waiting caller, stdio bytes to the
//! sinks registered for the handle, exits to the handle's exit channel and to [`Client::wait`].

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use agentcell_vmproto::{
    ContainerSpec, Frame, GuestMessage, HostMessage, ProcessSpec, VmStats, read_frame, write_frame,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("agent channel: {0}")]
    Channel(String),
    #[error("handle {handle}: {step}: {message}")]
    Failed {
        handle: u32,
        step: String,
        message: String,
    },
    #[error("handle {handle}: no answer to {what} within {after:?}")]
    Timeout {
        handle: u32,
        what: &'static str,
        after: Duration,
    },
    #[error("handle {0} is already registered")]
    Busy(u32),
}

/// How a process ended, as the guest reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub handle: u32,
    /// The code, or 128+N for signal N.
    pub status: i32,
    pub timed_out: bool,
}

/// Where one process's output and exit go. Register before `create`/`exec`: output can arrive
/// before the reply does.
#[derive(Default)]
pub struct Sinks {
    pub stdout: Option<Box<dyn Write + Send>>,
    pub stderr: Option<Box<dyn Write + Send>>,
    pub exit: Option<Sender<Exit>>,
}

enum Reply {
    Created(i32),
    Started(i32),
    Failed { step: String, message: String },
}

#[derive(Default)]
struct State {
    replies: HashMap<u32, Reply>,
    stats: HashMap<u64, VmStats>,
    exits: HashMap<u32, Exit>,
    sinks: HashMap<u32, Sinks>,
    /// Why the channel is gone (end of stream, protocol error).
    closed: Option<String>,
}

struct Inner {
    writer: Mutex<UnixStream>,
    state: Mutex<State>,
    changed: Condvar,
}

/// A handle on the agent of one VM. Cloning shares the channel.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    next_stats: Arc<std::sync::atomic::AtomicU64>,
    /// How long a request waits for its reply.
    pub reply_timeout: Duration,
}

impl Client {
    /// Starts the reader thread on `stream` (the agent's `Ready` already read).
    pub fn new(stream: UnixStream) -> std::io::Result<Self> {
        let reader = stream.try_clone()?;
        stream.set_read_timeout(None)?;
        let inner = Arc::new(Inner {
            writer: Mutex::new(stream),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("vm-agent-reader".into())
            .spawn(move || read_loop(reader, weak))?;
        Ok(Self {
            inner,
            next_stats: Arc::new(std::sync::atomic::AtomicU64::new(1)),
            reply_timeout: Duration::from_secs(60),
        })
    }

    fn send(&self, m: &HostMessage) -> Result<(), ClientError> {
        let mut w = self.inner.writer.lock().expect("writer lock");
        write_frame(&mut *w, &Frame::Control(m.clone()))
            .map_err(|e| ClientError::Channel(e.to_string()))
    }

    /// Waits until `f` finds what it looks for in the state, the channel closes, or the
    /// timeout passes.
    fn wait_for<T>(
        &self,
        timeout: Option<Duration>,
        mut f: impl FnMut(&mut State) -> Option<T>,
    ) -> Result<Option<T>, ClientError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = self.inner.state.lock().expect("state lock");
        loop {
            if let Some(v) = f(&mut st) {
                return Ok(Some(v));
            }
            if let Some(why) = &st.closed {
                return Err(ClientError::Channel(why.clone()));
            }
            st = match deadline {
                None => self.inner.changed.wait(st).expect("state lock"),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(None);
                    }
                    self.inner
                        .changed
                        .wait_timeout(st, left)
                        .expect("state lock")
                        .0
                }
            };
        }
    }

    fn request(
        &self,
        handle: u32,
        what: &'static str,
        m: HostMessage,
    ) -> Result<Reply, ClientError> {
        self.inner
            .state
            .lock()
            .expect("state lock")
            .replies
            .remove(&handle);
        self.send(&m)?;
        self.wait_for(Some(self.reply_timeout), |st| st.replies.remove(&handle))?
            .ok_or(ClientError::Timeout {
                handle,
                what,
                after: self.reply_timeout,
            })
    }

    /// Registers where `handle`'s output and exit go (before `create` or `exec`).
    pub fn register(&self, handle: u32, sinks: Sinks) -> Result<(), ClientError> {
        let mut st = self.inner.state.lock().expect("state lock");
        if st.sinks.contains_key(&handle) {
            return Err(ClientError::Busy(handle));
        }
        st.exits.remove(&handle);
        st.sinks.insert(handle, sinks);
        Ok(())
    }

    /// Builds a container and holds its first process; returns its pid in the guest.
    pub fn create(&self, handle: u32, spec: ContainerSpec) -> Result<i32, ClientError> {
        let m = HostMessage::Create {
            handle,
            spec: Box::new(spec),
        };
        match self.request(handle, "create", m)? {
            Reply::Created(pid) => Ok(pid),
            r => Err(unexpected(handle, r)),
        }
    }

    /// Releases the container's first process.
    pub fn start(&self, handle: u32) -> Result<i32, ClientError> {
        match self.request(handle, "start", HostMessage::Start { handle })? {
            Reply::Started(pid) => Ok(pid),
            r => Err(unexpected(handle, r)),
        }
    }

    /// Runs `process` in the running container `container` as the new `handle`.
    pub fn exec(
        &self,
        handle: u32,
        container: u32,
        process: ProcessSpec,
    ) -> Result<i32, ClientError> {
        let m = HostMessage::Exec {
            handle,
            container,
            process,
        };
        match self.request(handle, "exec", m)? {
            Reply::Started(pid) => Ok(pid),
            r => Err(unexpected(handle, r)),
        }
    }

    /// Signals `handle` (`all`: every process of its container).
    pub fn signal(&self, handle: u32, signal: i32, all: bool) -> Result<(), ClientError> {
        self.send(&HostMessage::Signal {
            handle,
            signal,
            all,
        })
    }

    pub fn write_stdin(&self, handle: u32, bytes: &[u8]) -> Result<(), ClientError> {
        let mut w = self.inner.writer.lock().expect("writer lock");
        for chunk in bytes.chunks(64 << 10) {
            write_frame::<HostMessage, _>(
                &mut *w,
                &Frame::Data {
                    handle,
                    fd: 0,
                    bytes: chunk.to_vec(),
                },
            )
            .map_err(|e| ClientError::Channel(e.to_string()))?;
        }
        Ok(())
    }

    pub fn close_stdin(&self, handle: u32) -> Result<(), ClientError> {
        self.send(&HostMessage::CloseStdin { handle })
    }

    /// Copies `src` to `handle`'s stdin until its end, then closes that stdin (blocking: run
    /// it on a thread of its own). Call only once the guest has created `handle`: the agent
    /// drops input for a handle it does not know.
    pub fn copy_stdin(&self, handle: u32, mut src: impl std::io::Read) {
        let mut buf = vec![0u8; 32 << 10];
        loop {
            match src.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if self.write_stdin(handle, &buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = self.close_stdin(handle);
    }

    pub fn resize(&self, handle: u32, rows: u16, cols: u16) -> Result<(), ClientError> {
        self.send(&HostMessage::Resize { handle, rows, cols })
    }

    /// Forgets an exited handle in the guest and here.
    pub fn delete(&self, handle: u32) -> Result<(), ClientError> {
        {
            let mut st = self.inner.state.lock().expect("state lock");
            st.sinks.remove(&handle);
            st.exits.remove(&handle);
        }
        self.send(&HostMessage::Delete { handle })
    }

    /// Resource use of the whole VM.
    pub fn stats(&self) -> Result<VmStats, ClientError> {
        let id = self
            .next_stats
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.send(&HostMessage::Stats { id })?;
        self.wait_for(Some(self.reply_timeout), |st| st.stats.remove(&id))?
            .ok_or(ClientError::Timeout {
                handle: 0,
                what: "stats",
                after: self.reply_timeout,
            })
    }

    /// Waits for `handle` to exit (`None`: no limit); `Ok(None)` when `timeout` passed first.
    pub fn wait(
        &self,
        handle: u32,
        timeout: Option<Duration>,
    ) -> Result<Option<Exit>, ClientError> {
        self.wait_for(timeout, |st| st.exits.get(&handle).copied())
    }

    /// Asks the agent to kill everything and power off.
    pub fn shutdown(&self) -> Result<(), ClientError> {
        self.send(&HostMessage::Shutdown)
    }

    /// Why the channel closed, if it did.
    pub fn closed(&self) -> Option<String> {
        self.inner.state.lock().expect("state lock").closed.clone()
    }

    /// Closes the channel from this side (the reader thread then ends).
    pub fn disconnect(&self) {
        let w = self.inner.writer.lock().expect("writer lock");
        let _ = w.shutdown(std::net::Shutdown::Both);
    }
}

fn unexpected(handle: u32, r: Reply) -> ClientError {
    match r {
        Reply::Failed { step, message } => ClientError::Failed {
            handle,
            step,
            message,
        },
        Reply::Created(_) => ClientError::Channel(format!("handle {handle}: unexpected created")),
        Reply::Started(_) => ClientError::Channel(format!("handle {handle}: unexpected started")),
    }
}

fn read_loop(mut stream: UnixStream, inner: std::sync::Weak<Inner>) {
    let why = loop {
        let frame = match read_frame::<GuestMessage, _>(&mut stream) {
            Ok(Some(f)) => f,
            Ok(None) => break "the agent closed the channel".to_string(),
            Err(e) => break e.to_string(),
        };
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let mut st = inner.state.lock().expect("state lock");
        match frame {
            Frame::Data { handle, fd, bytes } => {
                let Some(s) = st.sinks.get_mut(&handle) else {
                    continue;
                };
                let sink = match fd {
                    1 => &mut s.stdout,
                    2 => &mut s.stderr,
                    _ => continue,
                };
                if bytes.is_empty() {
                    // End of that stream: dropping the writer closes it (a pipe's reader sees EOF).
                    if let Some(mut w) = sink.take() {
                        let _ = w.flush();
                    }
                } else if let Some(w) = sink
                    && let Err(e) = w.write_all(&bytes).and_then(|_| w.flush())
                {
                    tracing::debug!(handle, fd, error = %e, "output sink refused bytes; dropped");
                    *sink = None;
                }
                continue;
            }
            Frame::Control(m) => match m {
                GuestMessage::Ready(_) => tracing::warn!("agent sent Ready twice; ignored"),
                GuestMessage::Created { handle, pid } => {
                    st.replies.insert(handle, Reply::Created(pid));
                }
                GuestMessage::Started { handle, pid } => {
                    st.replies.insert(handle, Reply::Started(pid));
                }
                GuestMessage::Failed {
                    handle,
                    step,
                    message,
                } => {
                    st.replies.insert(handle, Reply::Failed { step, message });
                }
                GuestMessage::Exited {
                    handle,
                    status,
                    timed_out,
                } => {
                    let exit = Exit {
                        handle,
                        status,
                        timed_out,
                    };
                    st.exits.insert(handle, exit);
                    if let Some(s) = st.sinks.get_mut(&handle)
                        && let Some(tx) = s.exit.take()
                    {
                        let _ = tx.send(exit);
                    }
                }
                GuestMessage::Stats { id, stats } => {
                    st.stats.insert(id, stats);
                }
                GuestMessage::Log { level, message } => match level.as_str() {
                    "error" => tracing::error!(target: "agentcell::vm::guest", "{message}"),
                    "warn" | "warning" => {
                        tracing::warn!(target: "agentcell::vm::guest", "{message}")
                    }
                    "debug" => tracing::debug!(target: "agentcell::vm::guest", "{message}"),
                    _ => tracing::info!(target: "agentcell::vm::guest", "{message}"),
                },
            },
        }
        inner.changed.notify_all();
    };
    if let Some(inner) = inner.upgrade() {
        let mut st = inner.state.lock().expect("state lock");
        st.closed = Some(why);
        // Close every output stream: nothing more will come.
        for s in st.sinks.values_mut() {
            s.stdout = None;
            s.stderr = None;
        }
        inner.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A fake agent on the other end of a socket pair: answers create/start, sends output and an
    /// exit, then closes.
    #[test]
    fn replies_output_and_exits_reach_their_waiters() {
        let (host, mut guest) = UnixStream::pair().unwrap();
        let agent = std::thread::spawn(move || {
            let mut seen = Vec::new();
            loop {
                let f: Frame<HostMessage> = match read_frame(&mut guest).unwrap() {
                    Some(f) => f,
                    None => return seen,
                };
                let reply = |g: &mut UnixStream, m: GuestMessage| {
                    write_frame(g, &Frame::Control(m)).unwrap()
                };
                match f {
                    Frame::Control(HostMessage::Create { handle, .. }) => {
                        seen.push("create".to_string());
                        reply(&mut guest, GuestMessage::Created { handle, pid: 7 });
                    }
                    Frame::Control(HostMessage::Start { handle }) => {
                        seen.push("start".into());
                        for (fd, b) in [(1u8, &b"out"[..]), (2, b"err"), (1, b"")] {
                            write_frame::<GuestMessage, _>(
                                &mut guest,
                                &Frame::Data {
                                    handle,
                                    fd,
                                    bytes: b.to_vec(),
                                },
                            )
                            .unwrap();
                        }
                        reply(&mut guest, GuestMessage::Started { handle, pid: 7 });
                        reply(
                            &mut guest,
                            GuestMessage::Exited {
                                handle,
                                status: 3,
                                timed_out: false,
                            },
                        );
                    }
                    Frame::Control(HostMessage::Exec { handle, .. }) => {
                        reply(
                            &mut guest,
                            GuestMessage::Failed {
                                handle,
                                step: "execve".into(),
                                message: "no such file".into(),
                            },
                        );
                    }
                    Frame::Data { bytes, .. } => {
                        seen.push(String::from_utf8_lossy(&bytes).into_owned())
                    }
                    Frame::Control(HostMessage::Shutdown) => return seen,
                    Frame::Control(other) => seen.push(format!("{other:?}")),
                }
            }
        });
        let c = Client::new(host).unwrap();
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        c.register(
            1,
            Sinks {
                stdout: Some(Box::new(Buf(out.clone()))),
                stderr: Some(Box::new(Buf(err.clone()))),
                exit: Some(tx),
            },
        )
        .unwrap();
        assert!(c.register(1, Sinks::default()).is_err());
        let spec: ContainerSpec = serde_json::from_value(serde_json::json!({
            "id": "x", "hostname": "x", "root": {"kind": "tmpfs"}, "root_readonly": false,
            "mounts": [], "landlock": null, "seccomp_bpf": [], "timeout_ms": null,
            "process": {"args": ["/bin/true"], "env": [], "cwd": "/", "uid": 0, "gid": 0,
                "terminal": false, "stdin": true}
        }))
        .unwrap();
        assert_eq!(c.create(1, spec.clone()).unwrap(), 7);
        c.write_stdin(1, b"in").unwrap();
        assert_eq!(c.start(1).unwrap(), 7);
        let exit = c.wait(1, Some(Duration::from_secs(10))).unwrap().unwrap();
        assert_eq!(exit.status, 3);
        assert_eq!(rx.recv().unwrap(), exit);
        assert_eq!(&*out.lock().unwrap(), b"out");
        assert_eq!(&*err.lock().unwrap(), b"err");
        match c.exec(2, 1, spec.process.clone()) {
            Err(ClientError::Failed { step, .. }) => assert_eq!(step, "execve"),
            other => panic!("{other:?}"),
        }
        c.shutdown().unwrap();
        let seen = agent.join().unwrap();
        assert_eq!(seen, ["create", "in", "start"]);
        // The agent is gone: waiting reports the closed channel instead of hanging.
        assert!(matches!(c.wait(9, None), Err(ClientError::Channel(_))));
    }
}
