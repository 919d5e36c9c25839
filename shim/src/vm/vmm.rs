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
//!
//! The host view is what `prepare` resolved, not what its paths name later: each policy path's
//! object (its `O_PATH` handle) is copied with `open_tree(OPEN_TREE_CLONE|AT_RECURSIVE)` before
//! the fork (read-only ones made read-only with all their submounts, `mount_setattr`), and the
//! child, in qemu's new mount namespace, attaches each copy with `move_mount` onto a directory
//! of the view's tmpfs reached from the view root's descriptor one component at a time with
//! `openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS)` (masks and the baseline are mounted onto the
//! same kind of descriptor, through `/proc/self/fd/N`). A symlink on the way, such as one a
//! workload of another sandbox swapped in for a directory of a grant it can write, is refused
//! (exit 125, naming the path), never followed. qemu opens the shares' files lazily, for as long
//! as it runs, so the copies cannot be detached after start as the container tier detaches its
//! staged sources; instead they are never attached where anything but qemu can reach them: only
//! in qemu's own namespace (made a slave of the host's, so nothing propagates back), and they go
//! with it when qemu exits. Nothing of the view is mounted in the host's namespace, so removing
//! the state directory never descends into a grant and there is nothing to detach first.

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
    #[error(
        "{path}: a symlink on the way to it in the exported view (something with write access swapped it; not followed); refusing to start"
    )]
    Symlink { path: String },
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
    /// The view's tmpfs at the view root (a directory of our state, by name), then opened: every
    /// later step works below that descriptor.
    Root(CString),
    /// Something mounted at `dst` (components below the view root), reached without following
    /// any symlink and mounted onto the directory or file so reached, never by its name. With
    /// `create`, missing components are made (directories; the last a directory when `Some(true)`,
    /// an empty file when `Some(false)`).
    At {
        dst: Vec<CString>,
        create: Option<bool>,
        what: What,
    },
}

enum What {
    /// Only the directory (the two trees).
    Nothing,
    /// The detached copy of a resolved object's mount made before fork (`trees[i]`).
    Tree(usize),
    /// `mount(src, dst, fstype, flags, data)`, then a read-only remount when asked.
    Mount {
        src: CString,
        fstype: Option<CString>,
        flags: libc::c_ulong,
        data: Option<CString>,
        readonly: bool,
    },
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).unwrap_or_else(|_| c"/nonexistent".into())
}

fn comps(target: &Path) -> Vec<CString> {
    target
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(cstr(Path::new(n))),
            _ => None,
        })
        .collect()
}

/// The steps building `view` under `root`, with a label for each (for errors). A bind of an op
/// with a handle mounts `trees[i]` (`i` its index in `view`).
fn view_steps(root: &Path, view: &[ViewOp]) -> Vec<(String, Step)> {
    let mut out = vec![(
        format!("tmpfs at {}", root.display()),
        Step::Root(cstr(root)),
    )];
    for t in [RO_TAG, RW_TAG] {
        out.push((
            format!("mkdir {t}"),
            Step::At {
                dst: comps(Path::new(t)),
                create: Some(true),
                what: What::Nothing,
            },
        ));
    }
    for (i, op) in view.iter().enumerate() {
        match op {
            ViewOp::Bind {
                source,
                target,
                readonly,
                dir,
                handle,
            } => out.push((
                format!("bind {} at {}", source.display(), target.display()),
                Step::At {
                    dst: comps(target),
                    create: Some(*dir),
                    what: match handle {
                        Some(_) => What::Tree(i),
                        None => What::Mount {
                            src: cstr(source),
                            fstype: None,
                            flags: libc::MS_BIND | libc::MS_REC,
                            data: None,
                            readonly: *readonly,
                        },
                    },
                },
            )),
            ViewOp::MaskFile { target } => out.push((
                format!("mask {}", target.display()),
                Step::At {
                    dst: comps(target),
                    create: None,
                    what: What::Mount {
                        src: c"/dev/null".into(),
                        fstype: None,
                        flags: libc::MS_BIND,
                        data: None,
                        readonly: false,
                    },
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
                    Step::At {
                        dst: comps(target),
                        create: None,
                        what: What::Mount {
                            src: c"tmpfs".into(),
                            fstype: Some(c"tmpfs".into()),
                            flags,
                            data: Some(data.into()),
                            readonly: false,
                        },
                    },
                ));
            }
        }
    }
    out
}

/// The detached copies of the resolved objects `view` binds (`-1` where an op has none), made
/// before fork: read-only ones are read-only with all their submounts before they are attached
/// anywhere.
fn view_trees(view: &[ViewOp]) -> Result<Vec<Option<std::os::fd::OwnedFd>>, VmError> {
    use std::os::fd::AsFd as _;
    view.iter()
        .map(|op| match op {
            ViewOp::Bind {
                handle: Some(h),
                readonly,
                source,
                ..
            } => {
                let step = || format!("copying the mount of {}", source.display());
                let t = crate::sandbox::resolve::clone_tree(h.fd.as_fd()).map_err(|e| {
                    VmError::View {
                        step: step(),
                        source: e,
                    }
                })?;
                if *readonly {
                    crate::sandbox::resolve::set_readonly_tree(t.as_fd()).map_err(|e| {
                        VmError::View {
                            step: step(),
                            source: e,
                        }
                    })?;
                }
                Ok(Some(t))
            }
            _ => Ok(None),
        })
        .collect()
}

/// The sandbox path an op of the view acts on (its target without the tree's tag).
fn sandbox_path(op: &ViewOp) -> String {
    let t = match op {
        ViewOp::Bind { target, .. }
        | ViewOp::MaskFile { target }
        | ViewOp::MaskDir { target, .. } => target,
    };
    let mut c = t.components();
    c.next();
    Path::new("/").join(c.as_path()).display().to_string()
}

/// `/proc/self/fd/<fd>` in `buf`, NUL-terminated, without allocating.
fn fd_path(buf: &mut [u8; 32], fd: libc::c_int) -> *const libc::c_char {
    let prefix = b"/proc/self/fd/";
    buf[..prefix.len()].copy_from_slice(prefix);
    let mut digits = [0u8; 12];
    let (mut n, mut len) = (fd.max(0) as u32, 0);
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[prefix.len() + i] = digits[len - 1 - i];
    }
    buf[prefix.len() + len] = 0;
    buf.as_ptr().cast()
}

/// Walks `dst` below `root` one component at a time, following no symlink (a symlink on the
/// way is `ELOOP`), creating what is missing when asked; an `O_PATH` descriptor of the last
/// component, or -1 with errno. Runs in the forked child: syscalls only.
///
/// # Safety
/// `root` is a valid directory descriptor.
unsafe fn walk(root: libc::c_int, dst: &[CString], create: Option<bool>) -> libc::c_int {
    use crate::sandbox::resolve::{BENEATH_NO_SYMLINKS, openat2_raw};
    let errno = || unsafe { *libc::__errno_location() };
    let mut cur = root;
    for (i, c) in dst.iter().enumerate() {
        let last = i + 1 == dst.len();
        unsafe {
            if let Some(dir) = create {
                let made = if !last || dir {
                    libc::mkdirat(cur, c.as_ptr(), 0o755) == 0
                } else {
                    // O_EXCL never follows a symlink at the name.
                    let fd = libc::openat(
                        cur,
                        c.as_ptr(),
                        libc::O_WRONLY
                            | libc::O_CREAT
                            | libc::O_EXCL
                            | libc::O_NOFOLLOW
                            | libc::O_CLOEXEC,
                        0o644,
                    );
                    fd >= 0 && libc::close(fd) == 0
                };
                if !made && errno() != libc::EEXIST {
                    let e = errno();
                    if cur != root {
                        libc::close(cur);
                    }
                    *libc::__errno_location() = e;
                    return -1;
                }
            }
            let flags = if last {
                libc::O_PATH
            } else {
                libc::O_PATH | libc::O_DIRECTORY
            };
            let next = openat2_raw(cur, c, flags, BENEATH_NO_SYMLINKS);
            let e = errno();
            if cur != root {
                libc::close(cur);
            }
            if next < 0 {
                *libc::__errno_location() = e;
                return -1;
            }
            cur = next;
        }
    }
    cur
}

/// Runs in the forked child before exec: only syscalls on memory prepared before the fork.
fn run_steps(
    steps: &[(String, Step)],
    trees: &[libc::c_int],
    report: libc::c_int,
) -> std::io::Result<()> {
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x04;
    const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
    let fail = |i: usize| {
        let e = std::io::Error::last_os_error();
        let b = (i as u32).to_ne_bytes();
        // SAFETY: writing 4 bytes from a stack buffer to our pipe.
        unsafe { libc::write(report, b.as_ptr().cast(), 4) };
        Err(e)
    };
    let mut root = -1;
    let mut buf = [0u8; 32];
    for (i, (_, s)) in steps.iter().enumerate() {
        // SAFETY: NUL-terminated strings owned by `steps`, which outlives this call; descriptors
        // of ours.
        let ok = unsafe {
            match s {
                Step::Root(p) => {
                    libc::mount(
                        c"agentcell-view".as_ptr(),
                        p.as_ptr(),
                        c"tmpfs".as_ptr(),
                        libc::MS_NOSUID | libc::MS_NODEV,
                        c"mode=755,size=1m".as_ptr().cast(),
                    ) == 0
                        && {
                            root = libc::open(
                                p.as_ptr(),
                                libc::O_PATH
                                    | libc::O_DIRECTORY
                                    | libc::O_NOFOLLOW
                                    | libc::O_CLOEXEC,
                            );
                            root >= 0
                        }
                }
                Step::At { dst, create, what } => {
                    let fd = walk(root, dst, *create);
                    fd >= 0 && {
                        let done = match what {
                            What::Nothing => true,
                            What::Tree(t) => {
                                libc::syscall(
                                    libc::SYS_move_mount,
                                    trees.get(*t).copied().unwrap_or(-1),
                                    c"".as_ptr(),
                                    fd,
                                    c"".as_ptr(),
                                    MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
                                ) == 0
                            }
                            What::Mount {
                                src,
                                fstype,
                                flags,
                                data,
                                readonly,
                            } => {
                                let p = |c: &Option<CString>| {
                                    c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr())
                                };
                                libc::mount(
                                    src.as_ptr(),
                                    fd_path(&mut buf, fd),
                                    p(fstype),
                                    *flags,
                                    p(data).cast(),
                                ) == 0
                                    && (!readonly || {
                                        // The mount just made, reached the same way.
                                        let m = walk(root, dst, None);
                                        m >= 0 && {
                                            let r = libc::mount(
                                                std::ptr::null(),
                                                fd_path(&mut buf, m),
                                                std::ptr::null(),
                                                libc::MS_BIND
                                                    | libc::MS_REMOUNT
                                                    | libc::MS_RDONLY
                                                    | libc::MS_NOSUID
                                                    | libc::MS_NODEV,
                                                std::ptr::null(),
                                            ) == 0;
                                            libc::close(m);
                                            r
                                        }
                                    })
                            }
                        };
                        let e = *libc::__errno_location();
                        if fd != root {
                            libc::close(fd);
                        }
                        *libc::__errno_location() = e;
                        done
                    }
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
        // Held until qemu has started: the child attaches each in its own namespace.
        let trees = view_trees(&cfg.view)?;
        let tree_fds: Vec<libc::c_int> = trees
            .iter()
            .map(|t| t.as_ref().map_or(-1, std::os::fd::AsRawFd::as_raw_fd))
            .collect();
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
                run_steps(&steps, &tree_fds, report)
            });
        }
        let spawned = cmd.spawn();
        // SAFETY: closing our copy of the write end; reading what the child reported.
        unsafe { libc::close(pipe[1]) };
        let mut failed_step = [0u8; 4];
        let n = unsafe { libc::read(pipe[0], failed_step.as_mut_ptr().cast(), 4) };
        unsafe { libc::close(pipe[0]) };
        drop(netns);
        drop(trees);
        let child = match spawned {
            Ok(c) => c,
            Err(source) if n == 4 => {
                let i = u32::from_ne_bytes(failed_step) as usize;
                let steps = view_steps(&view_root, &cfg.view);
                // A symlink where the view needs a directory (or file) of its own: something
                // with write access to a granted tree swapped one in; never followed.
                if source.raw_os_error() == Some(libc::ELOOP)
                    && let Some(path) = i
                        .checked_sub(3)
                        .and_then(|j| cfg.view.get(j))
                        .map(sandbox_path)
                {
                    return Err(VmError::Symlink { path });
                }
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
    fn view_steps_mount_resolved_copies_and_reach_every_target_below_the_root() {
        let dir = std::env::temp_dir().join(format!("ac-vm-steps-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let handle = crate::sandbox::resolve::open_host(&dir).unwrap();
        let view = vec![
            ViewOp::Bind {
                source: "/etc".into(),
                target: "ro/etc".into(),
                readonly: true,
                dir: true,
                handle: None,
            },
            ViewOp::Bind {
                source: dir.clone(),
                target: "rw/ws".into(),
                readonly: false,
                dir: true,
                handle: Some(handle),
            },
            ViewOp::MaskFile {
                target: "ro/etc/shadow".into(),
            },
        ];
        let steps = view_steps(Path::new("/s/view"), &view);
        assert!(matches!(&steps[0].1, Step::Root(p) if p.as_bytes() == b"/s/view"));
        // One step per op after the root and the two trees, in order (a failed step's index
        // names its op).
        assert_eq!(steps.len(), 3 + view.len());
        let at = |i: usize| match &steps[i].1 {
            Step::At { dst, create, what } => (
                dst.iter()
                    .map(|c| c.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/"),
                *create,
                what,
            ),
            Step::Root(_) => panic!("a second root"),
        };
        let (dst, create, what) = at(3);
        assert_eq!((dst.as_str(), create), ("ro/etc", Some(true)));
        assert!(matches!(what, What::Mount { readonly: true, .. }));
        // A resolved object is mounted from its copy, never from the source's name.
        let (dst, _, what) = at(4);
        assert_eq!(dst, "rw/ws");
        assert!(matches!(what, What::Tree(1)));
        // A mask is put on what exists; nothing is created for it.
        let (dst, create, _) = at(5);
        assert_eq!((dst.as_str(), create), ("ro/etc/shadow", None));
        assert_eq!(sandbox_path(&view[2]), "/etc/shadow");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The walk the child makes: missing components are created, a symlink anywhere on the
    /// way (or at the end) is ELOOP and nothing is created through it.
    #[test]
    fn the_walk_creates_below_the_root_and_follows_no_symlink() {
        let dir = std::env::temp_dir().join(format!("ac-vm-walk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("outside")).unwrap();
        std::fs::create_dir_all(dir.join("root/a")).unwrap();
        std::os::unix::fs::symlink(dir.join("outside"), dir.join("root/a/link")).unwrap();
        let root = std::fs::File::open(dir.join("root")).unwrap();
        let rfd = std::os::fd::AsRawFd::as_raw_fd(&root);
        let c = |p: &str| comps(Path::new(p));
        // SAFETY: a directory descriptor we hold.
        let fd = unsafe { walk(rfd, &c("a/b/file"), Some(false)) };
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: ours.
        unsafe { libc::close(fd) };
        assert!(dir.join("root/a/b/file").is_file());
        for (p, create) in [
            ("a/link/x", Some(true)),
            ("a/link", None),
            ("a/link/x", None),
        ] {
            // SAFETY: as above.
            let fd = unsafe { walk(rfd, &c(p), create) };
            assert_eq!(fd, -1, "{p}");
            assert_eq!(
                std::io::Error::last_os_error().raw_os_error(),
                Some(libc::ELOOP),
                "{p}"
            );
        }
        assert!(
            !dir.join("outside/x").exists(),
            "nothing made through the link"
        );
        let mut buf = [0u8; 32];
        let p = fd_path(&mut buf, 1234);
        // SAFETY: fd_path NUL-terminates inside buf.
        assert_eq!(
            unsafe { std::ffi::CStr::from_ptr(p) }.to_str().unwrap(),
            "/proc/self/fd/1234"
        );
        std::fs::remove_dir_all(&dir).unwrap();
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
