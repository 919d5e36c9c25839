//! A container's processes. `spawn_init` clones the container's init into new mount, PID, IPC
//! and UTS namespaces; it builds the view, reports `created`, waits for the start byte, forks
//! the workload and stays PID 1 of the namespace (reaps, forwards signals, exits with the
//! workload's status). The workload is not PID 1 because PID 1 ignores signals it has no handler
//! for: `kill -9 $$` in a shell would do nothing. `spawn_exec` joins a running container.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _, symlink};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use agentcell_vmproto::{ContainerSpec, Mount, MountSource, ProcessSpec, Root};

use crate::confine::{ChildStdio, Confinement, exec_workload};
use crate::paths::{self, ensure_mount_point, secure_join, share_path};
use crate::sys::{self, mount};

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("{step}: {source}")]
    Os {
        step: String,
        #[source]
        source: io::Error,
    },
    #[error("{step}: {source}")]
    Path {
        step: String,
        #[source]
        source: paths::PathError,
    },
    #[error(
        "{target}: a symlink on the way to it in a read-write tree (something with write access swapped it; not followed); refusing to start"
    )]
    Swapped { step: String, target: String },
}

impl ViewError {
    pub fn step(&self) -> &str {
        match self {
            ViewError::Os { step, .. }
            | ViewError::Path { step, .. }
            | ViewError::Swapped { step, .. } => step,
        }
    }
}

/// Where a container's pieces come from, in the agent's mount namespace.
#[derive(Debug, Clone)]
pub struct Layout {
    pub shares_dir: PathBuf,
    /// The guest's `/dev`: device nodes of a container's `/dev` are bound from it.
    pub dev_dir: PathBuf,
    /// This container's scratch directory (`root/`, `files/`), made by the agent.
    pub state: PathBuf,
    /// This container's cgroup, joined first by its init and by every exec.
    pub cgroup: Option<PathBuf>,
}

fn os_step(step: impl Into<String>) -> impl FnOnce(io::Error) -> ViewError {
    let step = step.into();
    move |source| ViewError::Os { step, source }
}

fn path_step(step: impl Into<String>) -> impl FnOnce(paths::PathError) -> ViewError {
    let step = step.into();
    move |source| ViewError::Path { step, source }
}

/// Clones the container's init; returns its PID. The child never returns.
pub fn spawn_init(
    spec: &ContainerSpec,
    conf: &Confinement,
    layout: &Layout,
    stdio: ChildStdio,
    report: OwnedFd,
    start: OwnedFd,
) -> io::Result<libc::pid_t> {
    let flags = libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    // SAFETY: the agent is single-threaded; the child only runs `container_init`, which ends in
    // `_exit`.
    let pid = unsafe { sys::clone_fork(flags) }?;
    if pid == 0 {
        container_init(spec, conf, layout, stdio, report, start);
    }
    Ok(pid)
}

static WORKLOAD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = WORKLOAD.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

fn container_init(
    spec: &ContainerSpec,
    conf: &Confinement,
    layout: &Layout,
    stdio: ChildStdio,
    report: OwnedFd,
    start: OwnedFd,
) -> ! {
    reset_signals();
    let rep = report.as_raw_fd();
    let mut keep = vec![0, 1, 2, rep, start.as_raw_fd()];
    keep.extend(stdio.raw_fds());
    sys::close_fds_except(&keep);
    sys::trace(|| "container init".into());
    if let Err(e) = join_cgroup(layout.cgroup.as_deref()) {
        sys::write_failure(rep, "cgroup", &e.to_string());
        sys::exit_now(1);
    }
    if let Err(e) = build_view(spec, layout) {
        sys::write_failure(rep, e.step(), &e.to_string());
        sys::exit_now(1);
    }
    sys::write_record(rep, sys::REC_CREATED, &[]);
    let mut b = [0u8; 1];
    // SAFETY: reading one byte into a local buffer.
    let n = unsafe { libc::read(start.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
    if n != 1 {
        // The agent dropped the container before starting it.
        sys::exit_now(0);
    }
    drop(start);
    // SAFETY: this process is single-threaded; the child execs or `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        sys::write_failure(rep, "fork", &io::Error::last_os_error().to_string());
        sys::exit_now(127);
    }
    if pid == 0 {
        exec_workload(&spec.process, conf, stdio, rep);
    }
    // The workload holds the only copies now: its EOF is the host's EOF.
    drop(stdio);
    drop(report);
    WORKLOAD.store(pid, Ordering::Relaxed);
    for sig in 1..libc::SIGRTMAX() {
        if matches!(sig, libc::SIGCHLD | libc::SIGKILL | libc::SIGSTOP) {
            continue;
        }
        // SAFETY: installing a handler that only calls kill(2).
        unsafe { libc::signal(sig, forward as *const () as libc::sighandler_t) };
    }
    loop {
        let mut status = 0;
        // SAFETY: waiting for any child of this namespace's init.
        let r = unsafe { libc::waitpid(-1, &mut status, 0) };
        if r == pid {
            sys::exit_now(sys::shell_status(status));
        }
        if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            sys::exit_now(127);
        }
    }
}

/// Forked children inherit the agent's SIGCHLD handler, which writes to a descriptor they no
/// longer have.
pub fn reset_signals() {
    // SAFETY: restoring the default disposition and an empty mask.
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

fn join_cgroup(cgroup: Option<&Path>) -> io::Result<()> {
    if let Some(cg) = cgroup {
        // "0" is the writing process itself (its PID here would be the namespace's).
        fs::write(cg.join("cgroup.procs"), "0")?;
    }
    Ok(())
}

/// Builds the container's view in its (new) mount namespace and makes it the root.
pub fn build_view(spec: &ContainerSpec, layout: &Layout) -> Result<(), ViewError> {
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )
    .map_err(os_step("make mounts private"))?;
    let root = layout.state.join("root");
    sys::trace(|| format!("root {:?}", spec.root));
    match &spec.root {
        Root::Share { tag, subpath } => {
            let src = share_path(&layout.shares_dir, tag, subpath).map_err(path_step("root"))?;
            mount(Some(&src), &root, None, libc::MS_BIND | libc::MS_REC, None)
                .map_err(os_step(format!("root {}", src.display())))?;
        }
        Root::Tmpfs => mount(
            Some(Path::new("tmpfs")),
            &root,
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("mode=755"),
        )
        .map_err(os_step("root tmpfs"))?,
    }
    let files = layout.state.join("files");
    // Targets of read-write shares mounted so far: below one, every name is the host's, which
    // something else with write access to that tree (another sandbox) can swap for a symlink
    // while this view is built.
    let mut writable: Vec<&str> = Vec::new();
    for (i, m) in spec.mounts.iter().enumerate() {
        let below_writable = writable
            .iter()
            .any(|w| m.target.len() > w.len() && is_within(&m.target, w));
        if below_writable {
            plain_path(&root, &m.target)?;
        }
        apply_mount(&root, m, layout, &files, i)?;
        if below_writable {
            // Mounted by name: checked again where the mount landed.
            plain_path(&root, &m.target)?;
        }
        if matches!(m.source, MountSource::Share { .. }) && !m.readonly {
            writable.push(&m.target);
        }
    }
    sys::trace(|| "pivot_root".into());
    pivot(&root)?;
    if spec.root_readonly {
        remount_readonly(Path::new("/")).map_err(os_step("remount root read-only"))?;
    }
    if !spec.hostname.is_empty() {
        // SAFETY: pointer and length describe the hostname bytes.
        sys::check(unsafe {
            libc::sethostname(spec.hostname.as_ptr().cast(), spec.hostname.len())
        })
        .map_err(os_step("sethostname"))?;
    }
    Ok(())
}

/// Whether the absolute path `p` is `dir` or lies below it.
fn is_within(p: &str, dir: &str) -> bool {
    let d = dir.trim_end_matches('/');
    p == dir || p.strip_prefix(d).is_some_and(|r| r.starts_with('/'))
}

/// Reaches `target` below `root` following no symlink (one would be a name another sandbox
/// swapped in a writable host tree: the mount would land wherever it points); refused, naming
/// the path, like the host tiers refuse it.
fn plain_path(root: &Path, target: &str) -> Result<(), ViewError> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    const RESOLVE_BENEATH_NO_SYMLINKS: u64 = 0x08 | 0x04 | 0x02;
    let step = format!("mount {target}");
    let dir = fs::File::open(root).map_err(os_step(step.clone()))?;
    let rel = sys::cstr(target.trim_start_matches('/')).map_err(os_step(step.clone()))?;
    // SAFETY: open_how is plain data.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
    how.resolve = RESOLVE_BENEATH_NO_SYMLINKS;
    loop {
        // SAFETY: a valid dirfd, a NUL-terminated path, open_how of the size passed.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                rel.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            // SAFETY: a new descriptor we own.
            drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) => continue,
            // Not there yet: the mount creates it (the check after the mount sees it).
            Some(libc::ENOENT) => return Ok(()),
            Some(libc::ELOOP) | Some(libc::EXDEV) => {
                return Err(ViewError::Swapped {
                    step,
                    target: target.to_string(),
                });
            }
            _ => return Err(ViewError::Os { step, source: e }),
        }
    }
}

fn apply_mount(
    root: &Path,
    m: &Mount,
    layout: &Layout,
    files: &Path,
    index: usize,
) -> Result<(), ViewError> {
    let step = format!("mount {}", m.target);
    sys::trace(|| step.clone());
    let target = secure_join(root, &m.target).map_err(path_step(step.clone()))?;
    let os = |e| ViewError::Os {
        step: step.clone(),
        source: e,
    };
    let mp = |dir| ensure_mount_point(&target, dir).map_err(path_step(step.clone()));
    match &m.source {
        MountSource::Share { tag, subpath } => {
            let src =
                share_path(&layout.shares_dir, tag, subpath).map_err(path_step(step.clone()))?;
            let is_dir = fs::metadata(&src).map_err(os)?.is_dir();
            mp(is_dir)?;
            mount(
                Some(&src),
                &target,
                None,
                libc::MS_BIND | libc::MS_REC,
                None,
            )
            .map_err(os)?;
            if m.readonly {
                remount_readonly(&target).map_err(os)?;
            }
        }
        MountSource::Tmpfs { size_bytes, mode } => {
            mp(true)?;
            let mut data = format!("mode={mode:o}");
            if *size_bytes > 0 {
                data.push_str(&format!(",size={size_bytes}"));
            }
            mount(
                Some(Path::new("tmpfs")),
                &target,
                Some("tmpfs"),
                libc::MS_NOSUID | libc::MS_NODEV,
                Some(&data),
            )
            .map_err(os)?;
            if m.readonly {
                remount_readonly(&target).map_err(os)?;
            }
        }
        MountSource::Proc => {
            mp(true)?;
            mount(
                Some(Path::new("proc")),
                &target,
                Some("proc"),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                None,
            )
            .map_err(os)?;
        }
        MountSource::Dev => {
            mp(true)?;
            build_dev(&target, &layout.dev_dir).map_err(os)?;
            if m.readonly {
                remount_readonly(&target).map_err(os)?;
            }
        }
        MountSource::MaskFile => {
            // Nothing to hide when the path is absent.
            if fs::symlink_metadata(&target).is_ok() {
                mount(
                    Some(&layout.dev_dir.join("null")),
                    &target,
                    None,
                    libc::MS_BIND,
                    None,
                )
                .map_err(os)?;
                // nodev: opening the mask fails (EACCES) instead of reading an empty file, as
                // in the container tier, so a denied file never looks like an empty one.
                mount(
                    None,
                    &target,
                    None,
                    libc::MS_BIND
                        | libc::MS_REMOUNT
                        | libc::MS_RDONLY
                        | libc::MS_NODEV
                        | libc::MS_NOSUID
                        | libc::MS_NOEXEC,
                    None,
                )
                .map_err(os)?;
            }
        }
        MountSource::MaskDir => {
            if fs::symlink_metadata(&target).is_ok() {
                mount(
                    Some(Path::new("tmpfs")),
                    &target,
                    Some("tmpfs"),
                    libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    Some("mode=555,size=4k"),
                )
                .map_err(os)?;
            }
        }
        MountSource::File { content } => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(files)
                .map_err(os)?;
            let src = files.join(index.to_string());
            fs::write(&src, content).map_err(os)?;
            fs::set_permissions(&src, fs::Permissions::from_mode(0o444)).map_err(os)?;
            mp(false)?;
            mount(Some(&src), &target, None, libc::MS_BIND, None).map_err(os)?;
            remount_readonly(&target).map_err(os)?;
        }
    }
    Ok(())
}

/// Makes a mount read-only, keeping the flags it already has (a bind remount resets them).
fn remount_readonly(target: &Path) -> io::Result<()> {
    let c = sys::cpath(target)?;
    // SAFETY: statvfs fills a zeroed struct for a valid path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    sys::check(unsafe { libc::statvfs(c.as_ptr(), &mut st) })?;
    let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
    for (st_flag, ms_flag) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
    ] {
        if st.f_flag & st_flag != 0 {
            flags |= ms_flag;
        }
    }
    mount(None, target, None, flags, None)
}

const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// A minimal `/dev`. Device nodes are bound from the guest's `/dev` rather than made with
/// mknod: the same code then works where mknod is not allowed (the host test).
fn build_dev(target: &Path, dev_dir: &Path) -> io::Result<()> {
    mount(
        Some(Path::new("tmpfs")),
        target,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("mode=755,size=64k"),
    )?;
    for name in DEVICES {
        let node = target.join(name);
        fs::write(&node, "")?;
        mount(Some(&dev_dir.join(name)), &node, None, libc::MS_BIND, None)?;
    }
    let pts = target.join("pts");
    fs::create_dir(&pts)?;
    mount(
        Some(Path::new("devpts")),
        &pts,
        Some("devpts"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    symlink("pts/ptmx", target.join("ptmx"))?;
    let shm = target.join("shm");
    fs::create_dir(&shm)?;
    mount(
        Some(Path::new("shm")),
        &shm,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )?;
    for (link, dest) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(dest, target.join(link))?;
    }
    Ok(())
}

/// `pivot_root(".", ".")` then detaching the old root, which is stacked on the new one: no
/// directory for the old root is needed in a (possibly read-only) image.
fn pivot(root: &Path) -> Result<(), ViewError> {
    let c = sys::cpath(root).map_err(os_step("pivot_root"))?;
    let dot = sys::cstr(".").map_err(os_step("pivot_root"))?;
    // SAFETY: valid C strings; this process is alone in its mount namespace.
    unsafe {
        sys::check(libc::chdir(c.as_ptr())).map_err(os_step("pivot_root"))?;
        sys::check_long(libc::syscall(
            libc::SYS_pivot_root,
            dot.as_ptr(),
            dot.as_ptr(),
        ))
        .map_err(os_step("pivot_root"))?;
        sys::check(libc::umount2(dot.as_ptr(), libc::MNT_DETACH))
            .map_err(os_step("detach the old root"))?;
        let slash = sys::cstr("/").map_err(os_step("pivot_root"))?;
        sys::check(libc::chdir(slash.as_ptr())).map_err(os_step("pivot_root"))?;
    }
    Ok(())
}

/// Runs `process` in the running container whose init is `init_pid`. A helper is forked, joins
/// the container's cgroup and namespaces, and clones the workload with `CLONE_PARENT`, so the
/// workload is the agent's child (the agent reaps it and gets its status) while its PID
/// namespace is the container's. The helper reports the workload's PID and exits.
pub fn spawn_exec(
    init_pid: libc::pid_t,
    cgroup: Option<&Path>,
    process: &ProcessSpec,
    conf: &Confinement,
    stdio: ChildStdio,
    report: OwnedFd,
) -> io::Result<libc::pid_t> {
    let ns: Vec<OwnedFd> = ["ipc", "uts", "pid", "mnt"]
        .iter()
        .map(|n| {
            fs::File::open(format!("/proc/{init_pid}/ns/{n}"))
                .map(OwnedFd::from)
                .map_err(|e| io::Error::new(e.kind(), format!("/proc/{init_pid}/ns/{n}: {e}")))
        })
        .collect::<io::Result<_>>()?;
    // SAFETY: the agent is single-threaded; the child ends in `_exit` or exec.
    let helper = unsafe { libc::fork() };
    if helper < 0 {
        return Err(io::Error::last_os_error());
    }
    if helper > 0 {
        return Ok(helper);
    }
    reset_signals();
    let rep = report.as_raw_fd();
    let fail = |step: &str, e: &dyn std::fmt::Display| -> ! {
        sys::write_failure(rep, step, &e.to_string());
        sys::exit_now(1)
    };
    if let Err(e) = join_cgroup(cgroup) {
        fail("cgroup", &e);
    }
    for fd in &ns {
        // SAFETY: setns on a namespace descriptor opened above.
        if let Err(e) = sys::check(unsafe { libc::setns(fd.as_raw_fd(), 0) }) {
            fail("setns", &e);
        }
    }
    drop(ns);
    // SAFETY: this helper is single-threaded; the child execs or `_exit`s.
    match unsafe { sys::clone_fork(libc::CLONE_PARENT) } {
        Err(e) => fail("fork", &e),
        Ok(0) => exec_workload(process, conf, stdio, rep),
        Ok(pid) => {
            sys::write_record(rep, sys::REC_PID, &pid.to_ne_bytes());
            sys::exit_now(0)
        }
    }
}
