//! Booting, watching and stopping one micro-VM (qemu `microvm`).
//!
//! Each VM has a state directory `<state-root>/<id>` (default `/run/agentcell/vm/<id>`):
//! `initrd` (the cached static initramfs + the VM's boot archive), `agent.sock` (the host
//! listens, qemu connects: the agent channel), `console.log` (the guest kernel's console),
//! `qemu.log` (qemu's own messages), `qemu.pid`, and `view/` (the mount point of the host view,
//! which exists only in qemu's private mount namespace). qemu runs in the sandbox's network
//! namespace (where its tap is) and, with `die_with_parent`, dies with the thread that booted
//! it. Dropping a [`Vm`] kills qemu and removes the directory; [`sweep`] removes what the VMs of
//! dead owners left.

use std::ffi::CString;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agentcell_vmproto::{BootConfig, Frame, GuestInfo, GuestMessage, Share, read_frame};

use super::assets::{Assets, GUEST_MODULES};
use super::client::Client;
use super::initramfs::{self, StaticInputs};
use super::qemu::{self, Accel, QemuConfig, ShareExport, TapNic};
use super::spec::{RO_TAG, RW_TAG, ViewOp};

pub const DEFAULT_STATE_ROOT: &str = "/run/agentcell/vm";

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{0}")]
    Initramfs(#[from] initramfs::InitramfsError),
    #[error("{step} {path}: {source}")]
    Io {
        step: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("starting qemu ({binary}): {source}")]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
    #[error("building the host view ({step}): {source}")]
    View {
        step: String,
        source: std::io::Error,
    },
    #[error("boot: {message}\n{tail}")]
    Boot { message: String, tail: String },
    #[error("boot: the guest agent speaks protocol {got}, this host {want}")]
    Version { got: u32, want: u32 },
    #[error("agent channel: {0}")]
    Channel(String),
}

fn io(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VmError {
    let path = path.to_path_buf();
    move |source| VmError::Io { step, path, source }
}

/// How to boot one VM. [`VmConfig::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// `ac-<owner pid>-<nonce>`: names the state directory; [`sweep`] uses the owner pid.
    pub id: String,
    pub assets: Assets,
    pub state_root: PathBuf,
    pub memory_mib: u32,
    pub vcpus: u32,
    /// `None`: [`qemu::detect_accel`].
    pub accel: Option<Accel>,
    /// The host view exported over 9p (`ro` share, and `rw` when `export_rw`).
    pub view: Vec<ViewOp>,
    pub export_rw: bool,
    /// The network namespace qemu runs in (where the tap is).
    pub netns: Option<PathBuf>,
    /// Give the VM a NIC on [`super::net::TAP`] (in `netns`).
    pub nic: bool,
    /// The NIC's tap and the guest's addresses when they are not the defaults (a pod's
    /// namespace holds one tap per container VM: [`super::net::pod_link`]).
    pub link: Option<super::net::PodLink>,
    pub hostname: String,
    /// Spawn to `Ready`. Generous by default: TCG boots take seconds.
    pub boot_timeout: Duration,
    /// qemu gets SIGKILL when the thread that booted it ends (PR_SET_PDEATHSIG). For the CLI;
    /// a long-lived daemon booting from short-lived threads leaves it off and relies on
    /// [`Vm`]'s Drop and [`sweep`].
    pub die_with_parent: bool,
    /// Full kernel log on the console and `debug` for the agent.
    pub debug: bool,
}

impl VmConfig {
    pub fn new(id: impl Into<String>, assets: Assets) -> Self {
        Self {
            id: id.into(),
            assets,
            state_root: PathBuf::from(DEFAULT_STATE_ROOT),
            memory_mib: 512,
            vcpus: 1,
            accel: None,
            view: Vec::new(),
            export_rw: false,
            netns: None,
            nic: false,
            link: None,
            hostname: "agentcell".into(),
            boot_timeout: Duration::from_secs(60),
            die_with_parent: false,
            debug: false,
        }
    }
}

/// A booted VM whose agent is serving.
pub struct Vm {
    pub id: String,
    pub state_dir: PathBuf,
    pub client: Client,
    /// What the agent reported in `Ready`.
    pub info: GuestInfo,
    pub accel: Accel,
    /// Host wall clock from spawning qemu to `Ready`.
    pub boot_wall: Duration,
    child: Option<Child>,
}

/// One mount-namespace step of the host view, prepared before fork (no allocation after).
enum Step {
    Mkdir(CString),
    Touch(CString),
    Mount {
        src: Option<CString>,
        dst: CString,
        fstype: Option<CString>,
        flags: libc::c_ulong,
        data: Option<CString>,
    },
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).unwrap_or_else(|_| c"/nonexistent".into())
}

/// The steps building `view` under `root`, with a label for each (for errors).
fn view_steps(root: &Path, view: &[ViewOp]) -> Vec<(String, Step)> {
    let mut out = vec![(
        format!("tmpfs at {}", root.display()),
        Step::Mount {
            src: Some(c"agentcell-view".into()),
            dst: cstr(root),
            fstype: Some(c"tmpfs".into()),
            flags: libc::MS_NOSUID | libc::MS_NODEV,
            data: Some(c"mode=755,size=1m".into()),
        },
    )];
    for t in [RO_TAG, RW_TAG] {
        out.push((format!("mkdir {t}"), Step::Mkdir(cstr(&root.join(t)))));
    }
    let parents = |out: &mut Vec<(String, Step)>, target: &Path| {
        let mut acc = root.to_path_buf();
        let comps: Vec<_> = target.components().collect();
        for c in &comps[..comps.len().saturating_sub(1)] {
            acc.push(c);
            out.push((format!("mkdir {}", acc.display()), Step::Mkdir(cstr(&acc))));
        }
    };
    for op in view {
        match op {
            ViewOp::Bind {
                source,
                target,
                readonly,
                dir,
            } => {
                parents(&mut out, target);
                let dst = root.join(target);
                let label = format!("bind {} at {}", source.display(), dst.display());
                out.push((
                    label.clone(),
                    if *dir {
                        Step::Mkdir(cstr(&dst))
                    } else {
                        Step::Touch(cstr(&dst))
                    },
                ));
                out.push((
                    label.clone(),
                    Step::Mount {
                        src: Some(cstr(source)),
                        dst: cstr(&dst),
                        fstype: None,
                        flags: libc::MS_BIND | libc::MS_REC,
                        data: None,
                    },
                ));
                if *readonly {
                    out.push((
                        format!("{label} read-only"),
                        Step::Mount {
                            src: None,
                            dst: cstr(&dst),
                            fstype: None,
                            flags: libc::MS_BIND
                                | libc::MS_REMOUNT
                                | libc::MS_RDONLY
                                | libc::MS_NOSUID
                                | libc::MS_NODEV,
                            data: None,
                        },
                    ));
                }
            }
            ViewOp::MaskFile { target } => out.push((
                format!("mask {}", target.display()),
                Step::Mount {
                    src: Some(c"/dev/null".into()),
                    dst: cstr(&root.join(target)),
                    fstype: None,
                    flags: libc::MS_BIND,
                    data: None,
                },
            )),
            ViewOp::MaskDir {
                target,
                has_children,
            } => {
                let mut flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
                let data = if *has_children {
                    c"mode=0111,uid=65534,gid=65534,size=16k"
                } else {
                    flags |= libc::MS_RDONLY;
                    c"mode=000,uid=65534,gid=65534,size=16k"
                };
                out.push((
                    format!("mask {}", target.display()),
                    Step::Mount {
                        src: Some(c"tmpfs".into()),
                        dst: cstr(&root.join(target)),
                        fstype: Some(c"tmpfs".into()),
                        flags,
                        data: Some(data.into()),
                    },
                ));
            }
        }
    }
    out
}

/// Runs in the forked child before exec: only syscalls on memory prepared before the fork.
fn run_steps(steps: &[(String, Step)], report: libc::c_int) -> std::io::Result<()> {
    let fail = |i: usize| {
        let e = std::io::Error::last_os_error();
        let b = (i as u32).to_ne_bytes();
        // SAFETY: writing 4 bytes from a stack buffer to our pipe.
        unsafe { libc::write(report, b.as_ptr().cast(), 4) };
        Err(e)
    };
    for (i, (_, s)) in steps.iter().enumerate() {
        // SAFETY: NUL-terminated strings owned by `steps`, which outlives this call.
        let ok = unsafe {
            match s {
                Step::Mkdir(p) => {
                    libc::mkdir(p.as_ptr(), 0o755) == 0 || *libc::__errno_location() == libc::EEXIST
                }
                Step::Touch(p) => {
                    libc::access(p.as_ptr(), libc::F_OK) == 0 || {
                        let fd = libc::open(
                            p.as_ptr(),
                            libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
                            0o644,
                        );
                        fd >= 0 && libc::close(fd) == 0
                    }
                }
                Step::Mount {
                    src,
                    dst,
                    fstype,
                    flags,
                    data,
                } => {
                    let p =
                        |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
                    libc::mount(p(src), dst.as_ptr(), p(fstype), *flags, p(data).cast()) == 0
                }
            }
        };
        if !ok {
            return fail(i);
        }
    }
    Ok(())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Vm {
    /// Boots the VM and waits for its agent's `Ready` (protocol version checked).
    pub fn boot(cfg: &VmConfig) -> Result<Self, VmError> {
        let t0 = Instant::now();
        for gone in sweep(&cfg.state_root) {
            tracing::info!(path = %gone, "removed what a dead VM owner left behind");
        }
        let state_dir = cfg.state_root.join(&cfg.id);
        std::fs::create_dir_all(&state_dir).map_err(io("creating", &state_dir))?;
        // From here on, Drop cleans up whatever happens.
        let mut vm = Vm {
            id: cfg.id.clone(),
            state_dir: state_dir.clone(),
            client: Client::new(UnixStream::pair().map_err(io("socketpair", &state_dir))?.0)
                .map_err(io("socketpair", &state_dir))?,
            info: GuestInfo {
                version: 0,
                kernel_release: String::new(),
                landlock_abi: 0,
                boot_ms: 0,
                warnings: vec![],
            },
            accel: Accel::Tcg,
            boot_wall: Duration::ZERO,
            child: None,
        };
        let a = &cfg.assets;
        let inputs = StaticInputs {
            agent: a.agent.clone(),
            modules_dir: a.modules_dir.clone(),
            release: a.manifest.release.clone(),
            wanted: GUEST_MODULES.iter().map(|s| s.to_string()).collect(),
        };
        let cached = initramfs::cached_static(&inputs, &a.dir.join("cache"))?;
        let mut shares = vec![Share {
            tag: RO_TAG.into(),
            readonly: true,
        }];
        if cfg.export_rw {
            shares.push(Share {
                tag: RW_TAG.into(),
                readonly: false,
            });
        }
        let boot = BootConfig {
            shares: shares.clone(),
            network: cfg.nic.then(|| {
                cfg.link
                    .as_ref()
                    .map_or_else(super::net::guest_network, |l| l.guest.clone())
            }),
            hostname: cfg.hostname.clone(),
            log_level: if cfg.debug { "debug" } else { "info" }.into(),
        };
        let initrd = state_dir.join("initrd");
        let mut bytes = std::fs::read(&cached).map_err(io("reading", &cached))?;
        bytes.extend(initramfs::boot_archive(&boot));
        std::fs::write(&initrd, bytes).map_err(io("writing", &initrd))?;
        let sock = state_dir.join("agent.sock");
        let _ = std::fs::remove_file(&sock);
        let listener = UnixListener::bind(&sock).map_err(io("listening on", &sock))?;
        listener
            .set_nonblocking(true)
            .map_err(io("listening on", &sock))?;
        let view_root = state_dir.join("view");
        std::fs::create_dir_all(&view_root).map_err(io("creating", &view_root))?;
        let (accel, why) = match cfg.accel {
            Some(a) => (a, "configured".to_string()),
            None => qemu::detect_accel(),
        };
        vm.accel = accel;
        let console = state_dir.join("console.log");
        let qcfg = QemuConfig {
            accel,
            memory_mib: cfg.memory_mib,
            vcpus: cfg.vcpus,
            kernel: a.kernel.clone(),
            initrd,
            tsc_khz: qemu::tsc_khz(),
            console_log: console.clone(),
            channel: sock.clone(),
            shares: shares
                .iter()
                .map(|s| ShareExport {
                    tag: s.tag.clone(),
                    path: view_root.join(&s.tag),
                    readonly: s.readonly,
                })
                .collect(),
            nic: cfg.nic.then(|| match &cfg.link {
                Some(l) => TapNic {
                    ifname: l.tap.clone(),
                    mac: l.guest.mac.clone(),
                },
                None => TapNic {
                    ifname: super::net::TAP.into(),
                    mac: super::net::GUEST_MAC.into(),
                },
            }),
            debug: cfg.debug,
        };
        let args = qemu::command_line(&qcfg);
        let binary = qemu::binary();
        tracing::info!(id = %cfg.id, accel = accel.as_str(), why = %why, "booting the micro-VM");
        tracing::debug!(?args, "qemu command line");
        let steps = view_steps(&view_root, &cfg.view);
        let netns = match &cfg.netns {
            Some(p) => Some(std::fs::File::open(p).map_err(io("opening", p))?),
            None => None,
        };
        let mut pipe = [0; 2];
        // SAFETY: a pipe for the child to report which view step failed.
        if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io("pipe", &state_dir)(std::io::Error::last_os_error()));
        }
        let qlog_path = state_dir.join("qemu.log");
        let qlog = std::fs::File::create(&qlog_path).map_err(io("creating", &qlog_path))?;
        let mut cmd = Command::new(&binary);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(qlog.try_clone().map_err(io("creating", &qlog_path))?)
            .stderr(qlog);
        let die = cfg.die_with_parent;
        let net_fd = netns.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
        let report = pipe[1];
        // SAFETY: the closure only makes syscalls on memory prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if die && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(fd) = net_fd
                    && libc::setns(fd, libc::CLONE_NEWNET) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::unshare(libc::CLONE_NEWNS) != 0
                    || libc::mount(
                        std::ptr::null(),
                        c"/".as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_SLAVE,
                        std::ptr::null(),
                    ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                run_steps(&steps, report)
            });
        }
        let spawned = cmd.spawn();
        // SAFETY: closing our copy of the write end; reading what the child reported.
        unsafe { libc::close(pipe[1]) };
        let mut failed_step = [0u8; 4];
        let n = unsafe { libc::read(pipe[0], failed_step.as_mut_ptr().cast(), 4) };
        unsafe { libc::close(pipe[0]) };
        drop(netns);
        let child = match spawned {
            Ok(c) => c,
            Err(source) if n == 4 => {
                let i = u32::from_ne_bytes(failed_step) as usize;
                let steps = view_steps(&view_root, &cfg.view);
                let step = steps
                    .get(i)
                    .map(|(l, _)| l.clone())
                    .unwrap_or_else(|| format!("step {i}"));
                return Err(VmError::View { step, source });
            }
            Err(source) => {
                return Err(VmError::Spawn {
                    binary: binary.display().to_string(),
                    source,
                });
            }
        };
        let pidfile = state_dir.join("qemu.pid");
        std::fs::write(&pidfile, child.id().to_string()).map_err(io("writing", &pidfile))?;
        vm.child = Some(child);
        let spawned_at = Instant::now();
        let deadline = spawned_at + cfg.boot_timeout;
        let boot_err = |vm: &mut Vm, message: String| VmError::Boot {
            message,
            tail: format!(
                "--- guest console (last lines of {}) ---\n{}\n--- qemu ---\n{}",
                console.display(),
                tail(&console, 30),
                tail(&vm.state_dir.join("qemu.log"), 10)
            ),
        };
        let stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(io("accepting on", &sock)(e)),
            }
            if let Some(st) = vm.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Err(boot_err(
                    &mut vm,
                    format!("qemu exited ({st}) before connecting"),
                ));
            }
            if Instant::now() > deadline {
                return Err(boot_err(
                    &mut vm,
                    format!("qemu did not connect within {:?}", cfg.boot_timeout),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        drop(listener);
        let _ = std::fs::remove_file(&sock);
        stream
            .set_nonblocking(false)
            .map_err(io("configuring", &sock))?;
        let ready = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(boot_err(
                    &mut vm,
                    format!(
                        "no Ready from the guest agent within {:?}",
                        cfg.boot_timeout
                    ),
                ));
            }
            stream
                .set_read_timeout(Some(left.min(Duration::from_millis(500))))
                .map_err(io("configuring", &sock))?;
            match read_frame::<GuestMessage, _>(&mut &stream) {
                Ok(Some(Frame::Control(GuestMessage::Ready(info)))) => break info,
                Ok(Some(Frame::Control(GuestMessage::Log { level, message }))) => {
                    tracing::info!(target: "agentcell::vm::guest", %level, "{message}");
                }
                Ok(Some(other)) => {
                    return Err(boot_err(
                        &mut vm,
                        format!("the agent sent {other:?} before Ready"),
                    ));
                }
                Ok(None) => {
                    return Err(boot_err(&mut vm, "the channel closed before Ready".into()));
                }
                Err(agentcell_vmproto::ProtoError::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    // A partial frame at a timeout would be lost; the agent writes Ready in one
                    // go, so a timeout here is between frames.
                    if let Some(st) = vm.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                        return Err(boot_err(&mut vm, format!("qemu exited ({st}) during boot")));
                    }
                }
                Err(e) => return Err(boot_err(&mut vm, format!("reading Ready: {e}"))),
            }
        };
        vm.boot_wall = spawned_at.elapsed();
        if ready.version != agentcell_vmproto::VERSION {
            return Err(VmError::Version {
                got: ready.version,
                want: agentcell_vmproto::VERSION,
            });
        }
        tracing::info!(
            id = %cfg.id,
            kernel = %ready.kernel_release,
            landlock_abi = ready.landlock_abi,
            guest_boot_ms = ready.boot_ms,
            wall_ms = vm.boot_wall.as_millis() as u64,
            total_ms = t0.elapsed().as_millis() as u64,
            "micro-VM ready"
        );
        for w in &ready.warnings {
            tracing::warn!(id = %cfg.id, "guest: {w}");
        }
        vm.client = Client::new(stream).map_err(|e| VmError::Channel(e.to_string()))?;
        vm.info = ready;
        Ok(vm)
    }

    /// The last lines of the guest console (for error reports).
    pub fn console_tail(&self, lines: usize) -> String {
        tail(&self.state_dir.join("console.log"), lines)
    }

    /// The qemu process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Asks the agent to power off, waits up to `grace` for qemu to exit, then kills it; removes
    /// the state directory.
    pub fn shutdown(mut self, grace: Duration) {
        let _ = self.client.shutdown();
        if let Some(c) = self.child.as_mut() {
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if c.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // Drop does the rest.
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.client.disconnect();
        if let Some(mut c) = self.child.take() {
            if c.try_wait().ok().flatten().is_none() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
        if let Err(e) = std::fs::remove_dir_all(&self.state_dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.state_dir.display(), error = %e, "removing the VM state directory");
        }
    }
}

/// Removes the state directories of VMs whose owner (`ac-<pid>-…`) is dead, killing their qemu
/// if it still runs (checked by its command line, so a reused pid is never hit).
pub fn sweep(state_root: &Path) -> Vec<String> {
    let owner_alive = |id: &str| {
        id.strip_prefix("ac-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
            // SAFETY: signal 0 only checks existence.
            .is_none_or(|pid| {
                let r = unsafe { libc::kill(pid, 0) };
                r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
            })
    };
    let mut removed = Vec::new();
    for e in std::fs::read_dir(state_root)
        .into_iter()
        .flatten()
        .flatten()
    {
        let id = e.file_name().to_string_lossy().into_owned();
        if !id.starts_with("ac-") || owner_alive(&id) {
            continue;
        }
        if let Some(pid) = std::fs::read_to_string(e.path().join("qemu.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            && std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("qemu"))
        {
            // SAFETY: a qemu of a dead owner.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if std::fs::remove_dir_all(e.path()).is_ok() {
            removed.push(e.path().display().to_string());
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_steps_create_parents_then_bind_then_mask() {
        let view = vec![
            ViewOp::Bind {
                source: "/etc".into(),
                target: "ro/etc".into(),
                readonly: true,
                dir: true,
            },
            ViewOp::Bind {
                source: "/home/u/.gitconfig".into(),
                target: "ro/home/u/.gitconfig".into(),
                readonly: true,
                dir: false,
            },
            ViewOp::MaskFile {
                target: "ro/etc/shadow".into(),
            },
        ];
        let labels: Vec<String> = view_steps(Path::new("/s/view"), &view)
            .into_iter()
            .map(|(l, s)| {
                let kind = match s {
                    Step::Mkdir(p) => format!("mkdir {}", p.to_string_lossy()),
                    Step::Touch(p) => format!("touch {}", p.to_string_lossy()),
                    Step::Mount { dst, flags, .. } => format!(
                        "mount {} ro={}",
                        dst.to_string_lossy(),
                        flags & libc::MS_RDONLY != 0
                    ),
                };
                format!("{kind} ({l})")
            })
            .collect();
        let pos = |s: &str| {
            labels
                .iter()
                .position(|l| l.starts_with(s))
                .unwrap_or_else(|| panic!("{s} in {labels:#?}"))
        };
        assert_eq!(pos("mount /s/view ro=false"), 0);
        assert!(pos("mkdir /s/view/ro/etc") < pos("mount /s/view/ro/etc ro=false"));
        assert!(pos("mount /s/view/ro/etc ro=false") < pos("mount /s/view/ro/etc ro=true"));
        assert!(pos("mkdir /s/view/ro/home/u") < pos("touch /s/view/ro/home/u/.gitconfig"));
        assert!(pos("mount /s/view/ro/etc ro=true") < pos("mount /s/view/ro/etc/shadow"));
    }

    #[test]
    fn sweep_leaves_live_owners_and_removes_dead_ones() {
        let root = std::env::temp_dir().join(format!("ac-vm-sweep-{}", std::process::id()));
        let live = root.join(format!("ac-{}-1", std::process::id()));
        // pid_max is at most 2^22: this owner cannot exist.
        let dead = root.join("ac-9999999-1");
        std::fs::create_dir_all(&live).unwrap();
        std::fs::create_dir_all(&dead).unwrap();
        let removed = sweep(&root);
        assert_eq!(removed, [dead.display().to_string()]);
        assert!(live.exists() && !dead.exists());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
