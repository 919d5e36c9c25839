//! Runs one plan with youki's libcontainer: bundle on disk, container start, wait with the
//! deadline, kill the whole cgroup on timeout, clean up. Blocking and forking: call it from a
//! plain thread, never from an async runtime worker.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agentcell_policy::Plan;
use landlock::ABI;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

use super::landlock::{LandlockExecutor, LandlockRules};
use super::prepare::{self, Mount, PrepareError, Prepared};
use super::resolve::{self, Expect, ResolveError, Staging};
use super::spec::{self, SpecInput};
use crate::network::link::{self, SandboxNet};
use crate::network::program::{self, Attachment};

/// How a sandboxed workload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    Signaled(i32),
    TimedOut,
}

impl Outcome {
    /// The CLI's exit code: the workload's own, 128+N for signal N, 124 on timeout.
    pub fn exit_code(self) -> i32 {
        match self {
            Self::Exited(c) => c,
            Self::Signaled(s) => 128 + s,
            Self::TimedOut => 124,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("preparing the filesystem view: {0}")]
    Prepare(#[from] PrepareError),
    #[error("building the filesystem view: {0}")]
    View(#[from] ResolveError),
    #[error("network: {0}")]
    Network(String),
    #[error("{0} does not exist in the sandbox's view")]
    Cwd(String),
    #[error("{step}: {source}")]
    Io {
        step: String,
        source: std::io::Error,
    },
    #[error("building the OCI spec: {0}")]
    Spec(#[from] serde_json::Error),
    #[error("{step}: {message}")]
    Container { step: &'static str, message: String },
}

pub struct RunRequest<'a> {
    pub plan: &'a Plan,
    /// argv of the workload.
    pub args: Vec<String>,
    /// Unique sandbox id (names the state directory and the cgroup).
    pub id: String,
    /// Where sandboxes keep their state (bundle, rootfs, libcontainer state).
    pub state_root: PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// Write the kernel's denial reports here (`--audit`).
    pub audit: Option<PathBuf>,
}

impl RunRequest<'_> {
    /// The same request for another (adjusted) plan.
    pub fn with_plan<'b>(&self, plan: &'b Plan) -> RunRequest<'b> {
        RunRequest {
            plan,
            args: self.args.clone(),
            id: self.id.clone(),
            state_root: self.state_root.clone(),
            uid: self.uid,
            gid: self.gid,
            audit: self.audit.clone(),
        }
    }
}

/// Runs the workload to completion under the plan.
pub fn run(req: &RunRequest) -> Result<(Outcome, Vec<String>), RunError> {
    let plan = req.plan;
    let t0 = Instant::now();
    // The cgroup attach's grace period, paid while the view and the network are prepared.
    let mut warm = super::attach_warm::start();
    for gone in sweep(&req.state_root) {
        tracing::info!(path = %gone, "removed what a dead runner left behind");
    }
    // The network namespace (the costliest namespace for the kernel to make), its uplink and its
    // fence need nothing from the view: a thread of their own makes them while this one prepares
    // the view and the spec. Dropped unfinished (a run that fails before), the pending network
    // destroys what it made.
    let pending = {
        let (netplan, id) = (plan.network.clone(), req.id.clone());
        // A proxy on the host's loopback is forwarded over the link: fenced after it exists.
        let link_first = plan
            .network
            .proxy
            .as_ref()
            .is_some_and(|p| agentcell_policy::netspec::is_loopback_host(&p.host));
        SandboxNet::start(
            &req.id,
            plan.network.needs_uplink,
            link_first,
            move |net: &mut SandboxNet| -> Result<(), program::ProgramError> {
                if net.uplink.is_some() {
                    let path = net.path();
                    program::program(&path, &netplan, &id, Attachment::Uplink(net))?;
                }
                Ok(())
            },
        )
        .map_err(|e| RunError::Network(e.to_string()))?
    };
    let mut prepared = prepare::prepare(&plan.filesystem)?;
    let cwd = working_directory(plan, &mut prepared)?;
    let owned;
    let req = if cwd != plan.process.cwd {
        let mut p = plan.clone();
        p.process.cwd = cwd;
        owned = p;
        &req.with_plan(&owned)
    } else {
        req
    };
    let plan = req.plan;
    let dir = req.state_root.join(&req.id);
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(&bundle).map_err(|source| RunError::Io {
        step: format!("creating {}", bundle.display()),
        source,
    })?;
    let _cleanup = RemoveOnDrop(dir.clone());
    // An image is the root itself (read-only); otherwise a directory the baseline is bound into,
    // set once the spec's mount points are known (`skeleton`).
    let image_root = match &plan.filesystem.root {
        agentcell_policy::plan::RootSource::Rootfs { path } => Some(PathBuf::from(path)),
        agentcell_policy::plan::RootSource::HostBaseline => None,
    };
    let root_dir = image_root.clone().unwrap_or_else(|| dir.join("rootfs"));
    // The runtime is given staged copies of the resolved objects, never the policy's strings.
    let (mut staging, staged) = stage(&dir, &prepared)?;
    let mut spec = oci_spec(
        req,
        staged.as_ref().unwrap_or(&prepared),
        &root_dir,
        Some(link::netns_path(&req.id)),
    )?;
    // Held until the sandbox is gone: a skeleton in use is never pruned.
    let mut _root_lock = None;
    if image_root.is_none() {
        let (skel, lock) = skeleton(&req.state_root, &req.id, &spec, &prepared.baseline_links)?;
        _root_lock = Some(lock);
        if let Some(root) = spec.root_mut() {
            root.set_path(skel);
        }
    }
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&spec)?,
    )
    .map_err(|source| RunError::Io {
        step: "writing config.json".into(),
        source,
    })?;
    // The sandbox's own network namespace, its link and its fence, before anything runs in it,
    // and before libcontainer forks (it clones raw: see `SandboxNet::start`).
    let net = pending
        .finish()
        .map_err(|e| RunError::Network(e.to_string()))?;
    if let Some(up) = &net.uplink {
        tracing::debug!(
            netns = %net.name, link = %up.host_if, host_ip = %up.host_ip, sandbox_ip = %up.sandbox_ip,
            elapsed_us = t0.elapsed().as_micros() as u64, "sandbox uplink and fence in place"
        );
    }

    let mut rules = landlock_rules(plan, &prepared);
    let mut notices = Vec::new();
    // Landlock logs denials only when asked (ABI 7); network drops are logged by the fence
    // whatever the ABI. The listeners themselves start after the build (below).
    let audit_landlock = match &req.audit {
        None => false,
        Some(_) if plan.host.landlock_abi.is_none_or(|a| a < 7) => {
            notices.push("Landlock ABI 7 (audit) is unavailable on this kernel: filesystem denials are not observable".to_string());
            false
        }
        Some(_) => true,
    };
    rules.log_denials = audit_landlock;
    let containers = dir.join("state");
    let err = |step: &'static str| {
        move |e: libcontainer::error::LibcontainerError| RunError::Container {
            step,
            message: e.to_string(),
        }
    };
    tracing::debug!(id = %req.id, elapsed_us = t0.elapsed().as_micros() as u64, "bundle written");
    // The sandbox inherits 0, 1, 2: a terminal among them is swapped for a pty of our own now,
    // its relay threads start after libcontainer's raw clones (below).
    let mut relay = super::tty::Relay::install().map_err(|source| RunError::Io {
        step: "a pty for the caller's terminal".into(),
        source,
    })?;
    // libcontainer clones this process raw: its children inherit whatever lock another thread
    // holds at that instant. The network thread has been joined; the warming thread makes only
    // system calls once quiesced; the audit listeners and the terminal relay start after the build. No other thread
    // may be alive here (see `init`).
    if let Some(w) = &warm {
        w.quiesce();
    }
    let built = ContainerBuilder::new(req.id.clone(), SyscallType::default())
        .with_executor(LandlockExecutor {
            rules,
            die_with_parent: true,
            stacked_seccomp: None,
        })
        .with_root_path(&containers)
        .map_err(err("state directory"))?
        .validate_id()
        .map_err(err("container id"))?
        .as_init(&bundle)
        .with_systemd(systemd_driver())
        .with_detach(false)
        .build();
    if let Some(w) = &mut warm {
        w.release();
    }
    let mut container = match built {
        Ok(c) => c,
        // The runtime names its mount destinations by path inside the view: one swapped for a
        // symlink meanwhile sends a mount elsewhere and the build fails. Say which.
        Err(e) => match swapped_target(&prepared) {
            Some(path) => return Err(ResolveError::Swapped { path }.into()),
            None => return Err(err("creating the container")(e)),
        },
    };
    // The view is built (in the container's own mount namespace, which keeps its copies): the
    // staged sources go, and what was built is checked before anything runs in it.
    let checked = staging
        .as_mut()
        .map_or(Ok(()), Staging::detach)
        .and_then(|()| match (container.pid(), spec.root()) {
            (Some(pid), Some(root)) => verify_view(pid.as_raw(), root.path(), &prepared),
            _ => Ok(()),
        });
    if let Err(e) = checked {
        if let Err(d) = container.delete(true) {
            tracing::warn!(error = %d, id = %req.id, "deleting the unstarted container");
        }
        return Err(e.into());
    }
    if let Some(r) = &mut relay
        && let Err(source) = r.start()
    {
        if let Err(d) = container.delete(true) {
            tracing::warn!(error = %d, id = %req.id, "deleting the unstarted container");
        }
        return Err(RunError::Io {
            step: "relaying the terminal".into(),
            source,
        });
    }
    tracing::debug!(
        id = %req.id, elapsed_us = t0.elapsed().as_micros() as u64,
        cgroup_warmed = warm.as_ref().is_some_and(|w| w.moved()), "container created"
    );
    // The audit listeners are threads that allocate whenever a record arrives (the link's own
    // kernel messages, say): started only now, after libcontainer's raw clones, whose children
    // would inherit a lock such a thread held; before the workload starts.
    let listeners = (|| -> Result<_, RunError> {
        let kmsg = match &req.audit {
            Some(_) => {
                Some(
                    super::audit::KmsgListener::start().map_err(|source| RunError::Io {
                        step: "reading the kernel log".into(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        let listener = match audit_landlock {
            true => Some(
                super::audit::Listener::start().map_err(|source| RunError::Io {
                    step: "listening for audit records".into(),
                    source,
                })?,
            ),
            false => None,
        };
        Ok((kmsg, listener))
    })();
    let (kmsg, listener) = match listeners {
        Ok(l) => l,
        Err(e) => {
            if let Err(d) = container.delete(true) {
                tracing::warn!(error = %d, id = %req.id, "deleting the unstarted container");
            }
            return Err(e);
        }
    };
    let started = Instant::now();
    let outcome = (|| {
        container.start().map_err(err("starting the container"))?;
        let pid = container.pid().ok_or(RunError::Container {
            step: "starting the container",
            message: "no init pid".into(),
        })?;
        let deadline = plan
            .process
            .timeout_ms
            .map(|ms| started + Duration::from_millis(ms));
        wait(pid, deadline, &mut || {
            // Kill every process of the sandbox's cgroup, background children included.
            if let Err(e) = container.kill(Signal::SIGKILL, true) {
                tracing::warn!(error = %e, "killing the sandbox at its deadline");
            }
        })
    })();
    // The sandbox is gone: what it wrote last is in the pty.
    if let Some(r) = relay.take() {
        r.finish();
    }
    let init_pid = container.pid().map(|p| p.as_raw());
    tracing::debug!(id = %req.id, elapsed_us = t0.elapsed().as_micros() as u64, "workload ended");
    // The workload's init has been reaped, so its PID namespace is empty: all that is left is
    // the cgroup (and the state directory, removed with `dir`). libcontainer's `delete` would
    // first rebuild its cgroup manager (on cgroup v1 one mountinfo parse per controller, ~3 ms);
    // removing the known directories is the same result. Anything unusual (a start that failed,
    // systemd's driver, a cgroup that will not go) takes libcontainer's path.
    let removed = outcome.is_ok() && !systemd_driver() && remove_cgroups(&req.id).is_ok();
    if !removed && let Err(e) = container.delete(true) {
        tracing::warn!(error = %e, id = %req.id, "deleting the container");
    }
    tracing::debug!(id = %req.id, elapsed_us = t0.elapsed().as_micros() as u64, "container deleted");
    if let Some(path) = &req.audit {
        let records = match (listener, init_pid) {
            (Some(l), Some(pid)) => {
                notices.extend(l.notices.clone());
                l.finish(pid)
            }
            _ => Vec::new(),
        };
        let network = match kmsg {
            Some(k) => {
                notices.extend(k.notices.clone());
                k.finish(&req.id)
            }
            None => Vec::new(),
        };
        super::audit::write_report(path, &notices, &records, &network).map_err(|source| {
            RunError::Io {
                step: format!("writing {}", path.display()),
                source,
            }
        })?;
    }
    Ok((outcome?, prepared.reports))
}

/// Removes what sandboxes of runners that died (SIGKILL, power loss) left behind: their state
/// directories under `state_root` and their empty cgroups. Ids are `ac-<runner pid>-<nonce>`; a
/// sandbox whose runner is alive is left alone. Its processes are already gone: the sandbox's
/// init dies with its runner (PR_SET_PDEATHSIG), and with it the whole PID namespace.
pub fn sweep(state_root: &Path) -> Vec<String> {
    let runner_alive = |id: &str| {
        id.strip_prefix("ac-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
            // SAFETY: kill with signal 0 only checks for existence.
            .is_none_or(|pid| unsafe { libc::kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH))
    };
    let mut removed = Vec::new();
    if let Ok(rd) = std::fs::read_dir(state_root) {
        for e in rd.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            if id.starts_with("ac-") && !runner_alive(&id) && remove_tree(&e.path()).is_ok() {
                removed.push(e.path().display().to_string());
            }
        }
    }
    removed.extend(prune_roots(state_root));
    removed.extend(link::sweep(runner_alive));
    let roots = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("agentcell"));
    for dir in roots.chain([PathBuf::from("/sys/fs/cgroup/agentcell")]) {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            // rmdir only succeeds on an empty cgroup: a live one is never removed.
            if id.starts_with("ac-") && !runner_alive(&id) && std::fs::remove_dir(e.path()).is_ok()
            {
                removed.push(e.path().display().to_string());
            }
        }
    }
    removed
}

/// The root directory of a host-baseline sandbox: empty but for the mount points the runtime
/// creates in it and the baseline's symlinks. It is shared by every run whose spec has the same
/// mount destinations and symlinks (the key), and kept: creating a dozen mount points and
/// removing them again per run is a measurable part of start-up on a disk-backed state
/// directory. Nothing the workload does reaches it: the runtime mounts it read-only in the
/// sandbox's own mount namespace, and everything writable is a mount on top.
fn skeleton(
    state_root: &Path,
    id: &str,
    spec: &libcontainer::oci_spec::runtime::Spec,
    links: &[(PathBuf, PathBuf)],
) -> Result<(PathBuf, std::fs::File), RunError> {
    // A pruner that got there first (see `prune_roots`) has removed it by the time the shared
    // lock is granted: make it again.
    for _ in 0..3 {
        let dir = make_skeleton(state_root, id, spec, links)?;
        let lock = std::fs::File::open(&dir).map_err(|source| RunError::Io {
            step: format!("opening {}", dir.display()),
            source,
        })?;
        flock(&lock, libc::LOCK_SH).map_err(|source| RunError::Io {
            step: format!("locking {}", dir.display()),
            source,
        })?;
        use std::os::unix::fs::MetadataExt as _;
        let held = lock.metadata().map(|m| m.ino()).ok();
        if held.is_some() && std::fs::metadata(&dir).map(|m| m.ino()).ok() == held {
            return Ok((dir, lock));
        }
    }
    Err(RunError::Container {
        step: "root skeleton",
        message: "removed again and again while being taken".into(),
    })
}

fn flock(f: &std::fs::File, op: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    loop {
        // SAFETY: flock on a descriptor this function borrows.
        if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// How many root skeletons are kept before idle ones are pruned, and how long unused first.
const KEEP_ROOTS: usize = 32;
const ROOT_IDLE: Duration = Duration::from_secs(3600);

/// Removes root skeletons (and half-made ones) made more than `ROOT_IDLE` ago once there are more
/// than `KEEP_ROOTS`: every distinct set of mount points has its own. One in use is locked by its
/// runner and left alone; a run that wants one removed here makes it again (`skeleton`), which
/// costs what a fresh root cost every run before skeletons were kept.
fn prune_roots(state_root: &Path) -> Vec<String> {
    let roots = state_root.join("roots");
    let Ok(rd) = std::fs::read_dir(&roots) else {
        return Vec::new();
    };
    let entries: Vec<std::fs::DirEntry> = rd.flatten().collect();
    if entries.len() <= KEEP_ROOTS {
        return Vec::new();
    }
    let idle = |e: &std::fs::DirEntry| {
        e.metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > ROOT_IDLE)
    };
    let mut removed = Vec::new();
    for e in entries.iter().filter(|e| idle(e)) {
        let path = e.path();
        let Ok(f) = std::fs::File::open(&path) else {
            continue;
        };
        if flock(&f, libc::LOCK_EX | libc::LOCK_NB).is_err() {
            continue;
        }
        // Out of the way first (a new run then makes a fresh one), then removed.
        let gone = roots.join(format!(".gone-{}", std::process::id()));
        if std::fs::rename(&path, &gone).is_ok() && remove_tree(&gone).is_ok() {
            removed.push(path.display().to_string());
        }
    }
    removed
}

fn make_skeleton(
    state_root: &Path,
    id: &str,
    spec: &libcontainer::oci_spec::runtime::Spec,
    links: &[(PathBuf, PathBuf)],
) -> Result<PathBuf, RunError> {
    use std::hash::{Hash, Hasher};
    let io = |step: String| move |source| RunError::Io { step, source };
    // A fixed-key hash: the same layout gets the same directory in every run. A mount point is a
    // directory or a file depending on what is mounted there, so the kind is part of the key.
    let mut h = std::hash::DefaultHasher::new();
    for m in spec.mounts().iter().flatten() {
        m.destination().hash(&mut h);
        m.typ().hash(&mut h);
        m.source()
            .as_deref()
            .is_some_and(|s| s.is_dir())
            .hash(&mut h);
    }
    links.hash(&mut h);
    let roots = state_root.join("roots");
    let dir = roots.join(format!("{:016x}", h.finish()));
    if dir.is_dir() {
        return Ok(dir);
    }
    // Built aside and renamed into place, so a concurrent run never sees it half made.
    let tmp = roots.join(format!(".new-{id}"));
    std::fs::create_dir_all(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
    for (link, target) in links {
        let at = tmp.join(link.strip_prefix("/").unwrap_or(link));
        std::os::unix::fs::symlink(target, &at)
            .map_err(io(format!("creating the symlink {}", at.display())))?;
    }
    if let Err(e) = std::fs::rename(&tmp, &dir) {
        let _ = remove_tree(&tmp);
        // Another run made it first.
        if !dir.is_dir() {
            return Err(RunError::Io {
                step: format!("creating {}", dir.display()),
                source: e,
            });
        }
    }
    Ok(dir)
}

/// Removes the sandbox's cgroups of the cgroupfs driver (`cgroups_path`): `agentcell/<id>` under
/// every hierarchy mounted in /sys/fs/cgroup (v1, hybrid) or /sys/fs/cgroup itself (v2). A process
/// still listed is killed first, as libcontainer does; a cgroup that stays busy is an error.
fn remove_cgroups(id: &str) -> std::io::Result<()> {
    let base = Path::new("/sys/fs/cgroup");
    let dirs = std::fs::read_dir(base)?
        .flatten()
        .map(|e| e.path().join("agentcell").join(id))
        .chain([base.join("agentcell").join(id)]);
    for dir in dirs {
        let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
            // Gone, or never made in this hierarchy (or the same one seen through a symlink).
            continue;
        };
        for pid in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
            // SAFETY: kill(2) with a pid read from the sandbox's own cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let mut delay = Duration::from_millis(1);
        loop {
            match std::fs::remove_dir(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if delay > Duration::from_millis(200) => return Err(e),
                Err(_) => {
                    std::thread::sleep(delay);
                    delay *= 2;
                }
            }
        }
    }
    Ok(())
}

/// The spec `run` would use, with `rootfs` as the root path (for `--print-spec`).
pub fn spec_only(
    req: &RunRequest,
    rootfs: &Path,
) -> Result<libcontainer::oci_spec::runtime::Spec, RunError> {
    let mut prepared = prepare::prepare_with(&req.plan.filesystem, false)?;
    let mut plan = req.plan.clone();
    plan.process.cwd = working_directory(req.plan, &mut prepared)?;
    let req = req.with_plan(&plan);
    oci_spec(&req, &prepared, rootfs, None)
}

/// libcontainer's systemd cgroup driver when systemd runs the host on cgroup v2, else cgroupfs.
pub fn systemd_driver() -> bool {
    crate::host::systemd_is_init() && crate::host::cgroup_layout() == crate::host::CgroupLayout::V2
}

/// Always an explicit cgroup path: `/agentcell/<id>` (cgroupfs) or `system.slice:agentcell:<id>`.
pub fn cgroups_path(id: &str) -> String {
    if systemd_driver() {
        format!("system.slice:agentcell:{id}")
    } else {
        format!("/agentcell/{id}")
    }
}

/// The working directory must exist in the view. An explicit `process.cwd` that does not is an
/// error naming it; the default (the first read-write path) falls back to `/` with a report.
pub fn working_directory(
    plan: &Plan,
    prepared: &mut prepare::Prepared,
) -> Result<String, RunError> {
    let cwd = &plan.process.cwd;
    let root = prepare::Root::of(&plan.filesystem);
    let exists = root.resolve(cwd).is_ok_and(|p| p.is_dir());
    let in_view = cwd == "/"
        || cwd == "/tmp"
        || (exists
            && prepared
                .landlock_paths
                .iter()
                .any(|(p, _)| Path::new(cwd).starts_with(p)))
        || (exists
            && plan
                .filesystem
                .baseline
                .iter()
                .any(|b| Path::new(cwd).starts_with(b)))
        || (exists && matches!(root, prepare::Root::Image(_)));
    if in_view {
        return Ok(cwd.clone());
    }
    if plan.process.cwd_origin == "process.cwd" {
        return Err(RunError::Cwd(cwd.clone()));
    }
    prepared.reports.push(format!(
        "working directory {cwd} ({}) is not in the view; using /",
        plan.process.cwd_origin
    ));
    Ok("/".into())
}

/// The OCI spec of `req` (read back through oci_spec: a malformed spec fails here, not inside the
/// runtime).
pub fn oci_spec(
    req: &RunRequest,
    prepared: &prepare::Prepared,
    rootfs: &Path,
    netns: Option<PathBuf>,
) -> Result<libcontainer::oci_spec::runtime::Spec, RunError> {
    let input = SpecInput {
        plan: req.plan,
        prepared,
        rootfs,
        args: req.args.clone(),
        cgroups_path: cgroups_path(&req.id),
        uid: req.uid,
        gid: req.gid,
        netns,
    };
    Ok(spec::build(&input)?)
}

pub fn landlock_rules(plan: &Plan, prepared: &prepare::Prepared) -> LandlockRules {
    let mut read: Vec<PathBuf> = plan.filesystem.baseline.iter().map(PathBuf::from).collect();
    // A file, not its directory: Landlock then allows that file only.
    read.extend(prepared.resolver_files.iter().map(|(_, t)| t.clone()));
    if let agentcell_policy::plan::RootSource::Rootfs { .. } = plan.filesystem.root {
        read.push("/".into());
    }
    read.push("/proc".into());
    let mut write = vec![PathBuf::from("/tmp"), "/dev/shm".into()];
    for (p, rw) in &prepared.landlock_paths {
        if *rw {
            write.push(p.clone())
        } else {
            read.push(p.clone())
        }
    }
    // The plan's device nodes (/dev/shm is a directory the workload writes: in `write` above).
    let devices = plan
        .landlock
        .devices
        .iter()
        .filter(|d| *d != "/dev/shm")
        .map(PathBuf::from)
        .collect();
    LandlockRules {
        read,
        write,
        devices,
        abi: ABI::from(plan.landlock.requested_abi as i32),
        best_effort: plan.best_effort,
        log_denials: false,
    }
}

/// Waits for `pid` (a child of this process); at `deadline` calls `kill` once and keeps waiting.
fn wait(pid: Pid, deadline: Option<Instant>, kill: &mut dyn FnMut()) -> Result<Outcome, RunError> {
    // SAFETY: pidfd_open on our own child; the fd is closed below.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) } as i32;
    if pidfd < 0 {
        return Err(RunError::Io {
            step: "pidfd_open".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    let _fd = CloseOnDrop(pidfd);
    let mut timed_out = false;
    loop {
        let timeout_ms = match deadline {
            Some(d) if !timed_out => d
                .saturating_duration_since(Instant::now())
                .as_millis()
                .min(i32::MAX as u128) as i32,
            _ => -1,
        };
        let mut pfd = libc::pollfd {
            fd: pidfd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(RunError::Io {
                step: "waiting for the workload".into(),
                source: e,
            });
        }
        if n == 0 {
            timed_out = true;
            kill();
            continue;
        }
        let status = waitpid(pid, None).map_err(|e| RunError::Io {
            step: "waitpid".into(),
            source: e.into(),
        })?;
        return Ok(match (timed_out, status) {
            (true, _) => Outcome::TimedOut,
            (false, WaitStatus::Exited(_, c)) => Outcome::Exited(c),
            (false, WaitStatus::Signaled(_, s, _)) => Outcome::Signaled(s as i32),
            (false, other) => {
                return Err(RunError::Container {
                    step: "waiting for the workload",
                    message: format!("unexpected status {other:?}"),
                });
            }
        });
    }
}

struct CloseOnDrop(i32);
impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        // SAFETY: we own the fd.
        unsafe { libc::close(self.0) };
    }
}

struct RemoveOnDrop(PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = remove_tree(&self.0);
    }
}

/// Removes a sandbox's state directory, detaching its staged sources first: they are host
/// trees (grants), and a recursive removal must never descend into one. A directory whose
/// staging is still mounted after that is left alone.
pub(crate) fn remove_tree(p: &Path) -> std::io::Result<()> {
    let src = p.join("src");
    if resolve::path_is_mount_point(&src) {
        resolve::detach(&src)?;
        if resolve::path_is_mount_point(&src) {
            return Err(std::io::Error::other(format!(
                "{} is still a mount point",
                src.display()
            )));
        }
    }
    std::fs::remove_dir_all(p)
}

/// Stages every resolved source of a host view (see `resolve::Staging`) and returns the
/// prepared view with those staged paths as sources. Nothing to stage (an image view): none.
fn stage(dir: &Path, prepared: &Prepared) -> Result<(Option<Staging>, Option<Prepared>), RunError> {
    if prepared.sources.is_empty() {
        return Ok((None, None));
    }
    let mut st = Staging::new(&dir.join("src"))?;
    let mut staged = prepared.clone();
    for m in staged.mounts.iter_mut() {
        if let Mount::Bind { source, target, .. } | Mount::Pin { source, target } = m
            && let Some(h) = prepared.sources.get(target.as_path())
        {
            *source = st.stage(h, target)?;
        }
    }
    Ok((Some(st), Some(staged)))
}

/// The first target of ours that is now a symlink on the host where a directory or file was
/// resolved (after a failed build).
fn swapped_target(prepared: &Prepared) -> Option<String> {
    prepared
        .sources
        .iter()
        .find(|(t, h)| {
            std::fs::symlink_metadata(t).is_ok_and(|m| m.file_type().is_symlink())
                && h.path().ok().as_deref() != Some(t.as_path())
        })
        .map(|(t, _)| t.display().to_string())
}

/// Checks the built view through the container init's root (it has pivoted into the view and
/// waits for start): the root is the skeleton, and every target of ours is a mount point
/// reached without a symlink, holding the object resolved for it (read-only where asked), or
/// our mask.
fn verify_view(pid: i32, skeleton: &Path, prepared: &Prepared) -> Result<(), ResolveError> {
    use std::os::unix::fs::MetadataExt as _;
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let (want, got) = (std::fs::metadata(skeleton), std::fs::metadata(&root));
    if let (Ok(w), Ok(g)) = (&want, &got)
        && (w.dev(), w.ino()) != (g.dev(), g.ino())
    {
        return Err(ResolveError::Mismatch {
            path: "/".into(),
            what: "the container's root is not the prepared one".into(),
        });
    }
    let mut targets = Vec::new();
    for m in &prepared.mounts {
        let (target, expect) = match m {
            Mount::Bind {
                target, readonly, ..
            } => match prepared.sources.get(target) {
                Some(handle) => (
                    target,
                    Expect::Bind {
                        handle,
                        readonly: *readonly,
                    },
                ),
                None => continue,
            },
            Mount::Pin { target, .. } => match prepared.sources.get(target) {
                Some(handle) => (
                    target,
                    Expect::Bind {
                        handle,
                        readonly: false,
                    },
                ),
                None => continue,
            },
            Mount::MaskFile { target } => (target, Expect::Null),
            Mount::MaskDir {
                target,
                has_children,
                ..
            } => (
                target,
                Expect::Tmpfs {
                    readonly: Some(!has_children),
                },
            ),
        };
        targets.push((target.clone(), expect, prepared.followed.contains(target)));
    }
    resolve::verify(&root, &targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Past `KEEP_ROOTS`, skeletons made over `ROOT_IDLE` ago go, except one a runner holds;
    /// recent ones stay.
    #[test]
    fn idle_root_skeletons_are_pruned_unless_held() {
        let state = std::env::temp_dir().join(format!("ac-roots-{}", std::process::id()));
        let roots = state.join("roots");
        let _ = std::fs::remove_dir_all(&state);
        let old = std::time::SystemTime::now() - 2 * ROOT_IDLE;
        for i in 0..KEEP_ROOTS + 4 {
            let d = roots.join(format!("old{i}"));
            std::fs::create_dir_all(d.join("usr/bin")).unwrap();
            std::fs::File::open(&d).unwrap().set_modified(old).unwrap();
        }
        std::fs::create_dir_all(roots.join("recent")).unwrap();
        let held = std::fs::File::open(roots.join("old0")).unwrap();
        flock(&held, libc::LOCK_SH).unwrap();
        let removed = prune_roots(&state);
        assert_eq!(removed.len(), KEEP_ROOTS + 3);
        let mut left: Vec<String> = std::fs::read_dir(&roots)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["old0", "recent"]);
        drop(held);
        std::fs::remove_dir_all(&state).unwrap();
    }
}
