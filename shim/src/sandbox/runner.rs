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
use super::prepare::{self, PrepareError};
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
    for gone in sweep(&req.state_root) {
        tracing::info!(path = %gone, "removed what a dead runner left behind");
    }
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
    let rootfs = dir.join("rootfs");
    let bundle = dir.join("bundle");
    for d in [&rootfs, &bundle] {
        std::fs::create_dir_all(d).map_err(|source| RunError::Io {
            step: format!("creating {}", d.display()),
            source,
        })?;
    }
    let _cleanup = RemoveOnDrop(dir.clone());
    // An image is the root itself (read-only); otherwise an empty directory the baseline is bound
    // into.
    let root_dir = match &plan.filesystem.root {
        agentcell_policy::plan::RootSource::Rootfs { path } => PathBuf::from(path),
        agentcell_policy::plan::RootSource::HostBaseline => rootfs.clone(),
    };
    // The sandbox's own network namespace, its link and its fence, before anything runs in it.
    let mut net = SandboxNet::create(&req.id, plan.network.needs_uplink)
        .map_err(|e| RunError::Network(e.to_string()))?;
    if let Some(up) = net.uplink.clone() {
        tracing::debug!(netns = %net.name, link = %up.host_if, host_ip = %up.host_ip, sandbox_ip = %up.sandbox_ip, "sandbox uplink");
        let path = net.path();
        program::program(&path, &plan.network, &req.id, Attachment::Uplink(&mut net))
            .map_err(|e| RunError::Network(e.to_string()))?;
    }
    let spec = oci_spec(req, &prepared, &root_dir, Some(net.path()))?;
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&spec)?,
    )
    .map_err(|source| RunError::Io {
        step: "writing config.json".into(),
        source,
    })?;

    let mut rules = landlock_rules(plan, &prepared);
    let mut notices = Vec::new();
    // Network drops are logged by the fence whatever the Landlock ABI.
    let kmsg = match &req.audit {
        Some(_) => Some(
            super::audit::KmsgListener::start().map_err(|source| RunError::Io {
                step: "reading the kernel log".into(),
                source,
            })?,
        ),
        None => None,
    };
    let listener = match &req.audit {
        None => None,
        Some(_) if plan.host.landlock_abi.is_none_or(|a| a < 7) => {
            notices.push("Landlock ABI 7 (audit) is unavailable on this kernel: filesystem denials are not observable".to_string());
            None
        }
        Some(_) => {
            let l = super::audit::Listener::start().map_err(|source| RunError::Io {
                step: "listening for audit records".into(),
                source,
            })?;
            rules.log_denials = true;
            Some(l)
        }
    };
    let containers = dir.join("state");
    let err = |step: &'static str| {
        move |e: libcontainer::error::LibcontainerError| RunError::Container {
            step,
            message: e.to_string(),
        }
    };
    tracing::debug!(id = %req.id, elapsed_us = t0.elapsed().as_micros() as u64, "bundle written");
    let mut container = ContainerBuilder::new(req.id.clone(), SyscallType::default())
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
        .build()
        .map_err(err("creating the container"))?;
    tracing::debug!(id = %req.id, elapsed_us = t0.elapsed().as_micros() as u64, "container created");
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
    let init_pid = container.pid().map(|p| p.as_raw());
    tracing::debug!(id = %req.id, elapsed_us = t0.elapsed().as_micros() as u64, "workload ended");
    if let Err(e) = container.delete(true) {
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

/// The spec `run` would use, with `rootfs` as the root path (for `--print-spec`).
pub fn spec_only(
    req: &RunRequest,
    rootfs: &Path,
) -> Result<libcontainer::oci_spec::runtime::Spec, RunError> {
    let mut prepared = prepare::prepare(&req.plan.filesystem)?;
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

fn remove_tree(p: &Path) -> std::io::Result<()> {
    std::fs::remove_dir_all(p)
}
