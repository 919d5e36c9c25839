//! Landlock, applied by a libcontainer executor right before `exec` (after the mounts, the
//! capability drop and seccomp, which lets `landlock_*` through).

use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;

use landlock::{
    ABI, Access, AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
};
use libcontainer::oci_spec::runtime::{LinuxSeccomp, Spec};
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};

/// What the workload may reach, as paths inside the sandbox. Serializable: the shim hands it to
/// the process that builds the container (`containerd::build`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LandlockRules {
    pub read: Vec<PathBuf>,
    pub write: Vec<PathBuf>,
    /// Device nodes: read, write and ioctl, nothing else.
    pub devices: Vec<PathBuf>,
    #[serde(with = "abi_number")]
    pub abi: ABI,
    /// Accept a partial enforcement (the runner reports what was missing before starting).
    pub best_effort: bool,
    /// Ask the kernel to log denials of the exec'd workload (ABI 7 audit).
    pub log_denials: bool,
}

/// The Landlock ABI as its number (the crate's enum has no serde of its own).
mod abi_number {
    use landlock::ABI;

    pub fn number(abi: ABI) -> i32 {
        // ABI::from maps every number above the newest known ABI to it: the first match is
        // the ABI's own number.
        (0..=64).find(|n| ABI::from(*n) == abi).unwrap_or(0)
    }

    pub fn serialize<S: serde::Serializer>(abi: &ABI, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i32(number(*abi))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ABI, D::Error> {
        Ok(ABI::from(<i32 as serde::Deserialize>::deserialize(d)?))
    }
}

#[derive(Clone)]
pub struct LandlockExecutor {
    pub rules: LandlockRules,
    /// Kill the sandbox when the process that made it dies (the CLI; a shim's containers
    /// outlive the shim, as runc's do).
    pub die_with_parent: bool,
    /// A second seccomp filter loaded after Landlock, on top of the one in the spec (the shim
    /// keeps a pod's own profile in the spec and stacks the plan's here).
    pub stacked_seccomp: Option<LinuxSeccomp>,
}

impl LandlockRules {
    fn apply(&self) -> Result<RulesetStatus, String> {
        let abi = self.abi;
        let level = if self.best_effort {
            CompatLevel::BestEffort
        } else {
            CompatLevel::HardRequirement
        };
        let mut ruleset = Ruleset::default().set_compatibility(level);
        ruleset = ruleset
            .handle_access(AccessFs::from_all(abi))
            .map_err(|e| e.to_string())?;
        if abi >= ABI::V6 {
            ruleset = ruleset
                .scope(Scope::AbstractUnixSocket)
                .map_err(|e| e.to_string())?;
            ruleset = ruleset.scope(Scope::Signal).map_err(|e| e.to_string())?;
        }
        let mut created = ruleset.create().map_err(|e| e.to_string())?;
        // Listing directories of the view (from `/` down) shows nothing the view does not already
        // show: unlisted host paths are absent and denied ones are masked. It keeps `ls /` working.
        created = created
            .add_rule(PathBeneath::new(
                PathFd::new("/").map_err(|e| e.to_string())?,
                AccessFs::ReadDir,
            ))
            .map_err(|e| e.to_string())?;
        let device: BitFlags<AccessFs> =
            AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev | AccessFs::Truncate;
        let sets: [(&Vec<PathBuf>, BitFlags<AccessFs>); 3] = [
            (&self.read, AccessFs::from_read(abi)),
            (&self.write, AccessFs::from_all(abi)),
            (&self.devices, device),
        ];
        for (paths, access) in sets {
            for p in paths {
                // A path absent from the view gets no rule: that grants less, never more.
                let Ok(fd) = PathFd::new(p) else { continue };
                let is_dir = std::fs::metadata(p)
                    .is_ok_and(|m| m.is_dir() || m.mode() & libc::S_IFMT == libc::S_IFDIR);
                let access = if is_dir {
                    access
                } else {
                    access & AccessFs::from_file(abi)
                };
                created = created
                    .add_rule(PathBeneath::new(fd, access))
                    .map_err(|e| format!("{}: {e}", p.display()))?;
            }
        }
        if self.log_denials {
            // Denials after exec are not logged by default; the workload is exec'd after this.
            created = created.log_new_exec(true).map_err(|e| e.to_string())?;
        }
        let status = created.restrict_self().map_err(|e| e.to_string())?;
        Ok(status.ruleset)
    }
}

impl Executor for LandlockExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        // The sandbox dies with its runner, even when the runner is SIGKILLed: this process is
        // the PID namespace's init, so its death takes every process of the sandbox with it.
        if self.die_with_parent {
            // SAFETY: prctl with constant arguments.
            unsafe {
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                )
            };
        }
        match self.rules.apply() {
            Ok(RulesetStatus::FullyEnforced) => {}
            Ok(other) if self.rules.best_effort => {
                tracing::warn!(status = ?other, "landlock only partially enforced (best effort)");
            }
            Ok(other) => {
                return Err(ExecutorError::Other(format!(
                    "landlock: ruleset {other:?}, not fully enforced"
                )));
            }
            Err(e) => return Err(ExecutorError::Other(format!("landlock: {e}"))),
        }
        if let Some(filter) = &self.stacked_seccomp {
            // no_new_privs is set (the spec asks for it), so an unprivileged filter loads.
            libcontainer::seccomp::initialize_seccomp(filter)
                .map_err(|e| ExecutorError::Other(format!("seccomp (the plan's filter): {e}")))?;
        }
        // The workload must not be PID 1 of its namespace: PID 1 ignores signals it has no
        // handler for (so `kill -9 $$` would do nothing) and would have to reap orphans. This
        // process stays PID 1, confined like the workload, reaps, forwards signals, and exits
        // with the workload's status (128+N when it died of signal N).
        // Exactly the policy's environment: nothing inherited, nothing added (the runtime sets
        // HOME when it is missing, as OCI runtimes do; MXC clears it).
        let process = spec.process().as_ref();
        let wanted: Vec<(String, String)> = process
            .and_then(|p| p.env().clone())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        let args = process.and_then(|p| p.args().clone()).unwrap_or_default();
        // Everything the workload's execve needs is made here, before the clone: the child
        // allocates nothing (see `init`).
        let workload = super::init::Workload::new(&args, &wanted)
            .map_err(|e| ExecutorError::Other(e.to_string()))?;
        // PID 1's own environment (what it would pass on, were it to exec) is the policy's too.
        for (k, _) in std::env::vars_os().collect::<Vec<_>>() {
            // SAFETY: the init process is single-threaded here.
            unsafe { std::env::remove_var(k) };
        }
        for (k, v) in &wanted {
            // SAFETY: as above.
            unsafe { std::env::set_var(k, v) };
        }
        close_exec_fds();
        super::init::run_as_init(workload)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

/// Closes every descriptor marked close-on-exec now. The workload would not get them anyway,
/// but the init that stays behind to reap never execs: it would keep, for example, the write end
/// of a stdin pipe open, and the workload would never read EOF.
fn close_exec_fds() {
    let Ok(rd) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: F_GETFD/close on descriptors of this single-threaded process; a stale entry
        // (the directory's own fd) fails harmlessly.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC != 0 {
                libc::close(fd);
            }
        }
    }
}
