//! The last steps of every workload process (a container's first process and each exec):
//! identity, capabilities, no_new_privs, Landlock, seccomp, `execve`. Runs in a forked child;
//! a failure is written on the report pipe with its step and the child exits 127.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt as _;

use agentcell_vmproto::{LandlockSpec, ProcessSpec, unpack_sock_filter};
use landlock::{
    ABI, Access, AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
};

use crate::paths;
use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error("{step}: {source}")]
    Os {
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Path(#[from] paths::PathError),
    #[error("landlock: {0}")]
    Landlock(String),
    #[error("seccomp: {0}")]
    Seccomp(String),
}

impl ConfineError {
    pub fn step(&self) -> &'static str {
        match self {
            ConfineError::Os { step, .. } => step,
            ConfineError::Path(_) => "execve",
            ConfineError::Landlock(_) => "landlock",
            ConfineError::Seccomp(_) => "seccomp",
        }
    }
}

fn os(step: &'static str) -> impl FnOnce(io::Error) -> ConfineError {
    move |source| ConfineError::Os { step, source }
}

/// The confinement a container's processes share, kept by the agent per container.
#[derive(Debug, Clone)]
pub struct Confinement {
    pub landlock: Option<LandlockSpec>,
    pub seccomp_bpf: Vec<u64>,
    /// The pod's own filter, installed first (see `vmproto::ContainerSpec::seccomp_pod_bpf`).
    pub seccomp_pod_bpf: Vec<u64>,
    /// The guest kernel's Landlock ABI (probed once at boot).
    pub landlock_abi: i32,
}

/// The child's ends of its stdio.
pub struct ChildStdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub terminal: bool,
}

impl ChildStdio {
    pub fn raw_fds(&self) -> [RawFd; 3] {
        [
            self.stdin.as_raw_fd(),
            self.stdout.as_raw_fd(),
            self.stderr.as_raw_fd(),
        ]
    }
}

/// Confines this process as `process` and `conf` say and execs it; never returns. `report`
/// (close-on-exec) receives a failure record, or nothing when `execve` succeeds.
pub fn exec_workload(
    process: &ProcessSpec,
    conf: &Confinement,
    stdio: ChildStdio,
    report: RawFd,
) -> ! {
    let Err(e) = confine_and_exec(process, conf, stdio, report);
    sys::write_failure(report, e.step(), &e.to_string());
    sys::exit_now(127)
}

fn confine_and_exec(
    p: &ProcessSpec,
    conf: &Confinement,
    stdio: ChildStdio,
    report: RawFd,
) -> Result<std::convert::Infallible, ConfineError> {
    // A session of its own: signals the agent's console gets must not reach it, and a
    // terminal needs a session to become the controlling one.
    // SAFETY: setsid has no memory effects.
    unsafe { libc::setsid() };
    let [i, o, e] = stdio.raw_fds();
    for (from, to) in [(i, 0), (o, 1), (e, 2)] {
        // SAFETY: dup2 onto the standard descriptors; `from` stays valid until `stdio` drops.
        sys::check(unsafe { libc::dup2(from, to) }).map_err(os("stdio"))?;
    }
    if stdio.terminal {
        // SAFETY: ioctl on the terminal now at fd 0.
        sys::check(unsafe { libc::ioctl(0, libc::TIOCSCTTY as _, 0) }).map_err(os("terminal"))?;
    }
    drop(stdio);
    sys::close_fds_except(&[0, 1, 2, report]);

    let args: Vec<CString> = p
        .args
        .iter()
        .map(|a| sys::cstr(a))
        .collect::<io::Result<_>>()
        .map_err(os("execve"))?;
    if args.is_empty() {
        return Err(ConfineError::Os {
            step: "execve",
            source: io::Error::other("empty args"),
        });
    }
    let env: Vec<CString> = p
        .env
        .iter()
        .map(|a| sys::cstr(a))
        .collect::<io::Result<_>>()
        .map_err(os("execve"))?;

    drop_bounding_set()?;
    // SAFETY: prctl with constant arguments.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    let groups: Vec<libc::gid_t> = p.additional_gids.clone();
    // SAFETY: the pointer and length describe `groups`.
    sys::check(unsafe { libc::setgroups(groups.len(), groups.as_ptr()) })
        .map_err(os("setgroups"))?;
    // SAFETY: identity system calls with plain integers.
    sys::check(unsafe { libc::setresgid(p.gid, p.gid, p.gid) }).map_err(os("setgid"))?;
    // SAFETY: as above.
    sys::check(unsafe { libc::setresuid(p.uid, p.uid, p.uid) }).map_err(os("setuid"))?;
    clear_capabilities()?;
    // SAFETY: prctl with constant arguments.
    sys::check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
        .map_err(os("no_new_privs"))?;
    let cwd = sys::cstr(if p.cwd.is_empty() { "/" } else { &p.cwd }).map_err(os("chdir"))?;
    // SAFETY: a valid C string.
    sys::check(unsafe { libc::chdir(cwd.as_ptr()) }).map_err(os("chdir"))?;
    // Looked up before Landlock and seccomp so neither changes which file is found.
    let program = sys::cpath(&paths::resolve_program(&p.args[0], &p.env)?).map_err(os("execve"))?;

    if let Some(spec) = &conf.landlock {
        match apply_landlock(spec, conf.landlock_abi)? {
            RulesetStatus::FullyEnforced => {}
            other if spec.best_effort => sys::write_record(
                report,
                sys::REC_LOG,
                format!("landlock only partially enforced (best effort): {other:?}").as_bytes(),
            ),
            other => {
                return Err(ConfineError::Landlock(format!(
                    "ruleset {other:?}, not fully enforced at the guest's ABI {}",
                    conf.landlock_abi
                )));
            }
        }
    }
    install_seccomp(&conf.seccomp_pod_bpf)?;
    install_seccomp(&conf.seccomp_bpf)?;

    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: NULL-terminated arrays of valid C strings that outlive the call.
    unsafe { libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    Err(ConfineError::Os {
        step: "execve",
        source: io::Error::other(format!("{}: {}", p.args[0], io::Error::last_os_error())),
    })
}

fn drop_bounding_set() -> Result<(), ConfineError> {
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            // EINVAL: past the last capability this kernel knows.
            if e.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(ConfineError::Os {
                step: "capabilities",
                source: e,
            });
        }
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn clear_capabilities() -> Result<(), ConfineError> {
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads a v3 header and two data words.
    sys::check_long(unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) })
        .map_err(os("capabilities"))?;
    Ok(())
}

/// Mirrors the host executor (shim/src/sandbox/landlock.rs): every right of the guest's ABI
/// handled, `/` listable, read/write/device paths granted, absent paths skipped (that grants
/// less, never more).
fn apply_landlock(spec: &LandlockSpec, abi_num: i32) -> Result<RulesetStatus, ConfineError> {
    let l = |e: &dyn std::fmt::Display| ConfineError::Landlock(e.to_string());
    if abi_num < 1 {
        if spec.best_effort {
            return Ok(RulesetStatus::NotEnforced);
        }
        return Err(ConfineError::Landlock(
            "the guest kernel offers no landlock".into(),
        ));
    }
    let abi = ABI::from(abi_num);
    let level = if spec.best_effort {
        CompatLevel::BestEffort
    } else {
        CompatLevel::HardRequirement
    };
    let mut ruleset = Ruleset::default()
        .set_compatibility(level)
        .handle_access(AccessFs::from_all(abi))
        .map_err(|e| l(&e))?;
    if abi >= ABI::V6 {
        ruleset = ruleset
            .scope(Scope::AbstractUnixSocket)
            .map_err(|e| l(&e))?
            .scope(Scope::Signal)
            .map_err(|e| l(&e))?;
    }
    let mut created = ruleset.create().map_err(|e| l(&e))?;
    created = created
        .add_rule(PathBeneath::new(
            PathFd::new("/").map_err(|e| l(&e))?,
            AccessFs::ReadDir,
        ))
        .map_err(|e| l(&e))?;
    // Only rights this ABI handles: a rule with an unhandled right is refused even in best
    // effort (Truncate is ABI 3, IoctlDev ABI 5; Debian 12's guest kernel is ABI 2).
    let device: BitFlags<AccessFs> =
        (AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev | AccessFs::Truncate)
            & AccessFs::from_all(abi);
    let sets: [(&Vec<String>, BitFlags<AccessFs>); 3] = [
        (&spec.read, AccessFs::from_read(abi)),
        (&spec.write, AccessFs::from_all(abi)),
        (&spec.devices, device),
    ];
    for (list, access) in sets {
        for p in list {
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
                .map_err(|e| ConfineError::Landlock(format!("{p}: {e}")))?;
        }
    }
    let status = created.restrict_self().map_err(|e| l(&e))?;
    Ok(status.ruleset)
}

/// Unpacks the host-compiled program (see `vmproto::ContainerSpec::seccomp_bpf`).
pub fn sock_filters(packed: &[u64]) -> Vec<libc::sock_filter> {
    packed
        .iter()
        .map(|&v| {
            let (code, jt, jf, k) = unpack_sock_filter(v);
            libc::sock_filter { code, jt, jf, k }
        })
        .collect()
}

fn install_seccomp(packed: &[u64]) -> Result<(), ConfineError> {
    if packed.is_empty() {
        return Ok(());
    }
    let mut filters = sock_filters(packed);
    let len = u16::try_from(filters.len())
        .map_err(|_| ConfineError::Seccomp(format!("{} instructions", filters.len())))?;
    let prog = libc::sock_fprog {
        len,
        filter: filters.as_mut_ptr(),
    };
    // SAFETY: prog points to `filters`, alive for the call; no_new_privs is already set.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &prog as *const libc::sock_fprog as libc::c_ulong,
            0,
            0,
        )
    };
    if r < 0 {
        return Err(ConfineError::Seccomp(
            io::Error::last_os_error().to_string(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentcell_vmproto::pack_sock_filter;

    #[test]
    fn packed_filters_unpack_to_sock_filters() {
        let packed = [
            pack_sock_filter(0x20, 0, 0, 4),
            pack_sock_filter(0x15, 1, 0, 0xc000_003e),
            pack_sock_filter(0x06, 0, 0, 0x7fff_0000),
        ];
        let f = sock_filters(&packed);
        assert_eq!(f.len(), 3);
        assert_eq!(
            (f[1].code, f[1].jt, f[1].jf, f[1].k),
            (0x15, 1, 0, 0xc000_003e)
        );
        assert_eq!(f[2].k, 0x7fff_0000);
    }

    #[test]
    fn failure_steps_name_the_stage() {
        assert_eq!(ConfineError::Landlock("x".into()).step(), "landlock");
        assert_eq!(ConfineError::Seccomp("x".into()).step(), "seccomp");
        assert_eq!(
            ConfineError::Path(paths::PathError::NotFound("x".into())).step(),
            "execve"
        );
    }
}
