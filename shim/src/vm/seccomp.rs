//! The plan's seccomp profile (an OCI `LinuxSeccomp`) compiled to classic BPF on the host with
//! libseccomp, the same library and rules translation libcontainer uses for the container tier,
//! so both tiers install the same program. The guest then only installs bytes: it needs no
//! libseccomp and cannot get the translation wrong.

use std::collections::HashSet;
use std::io::{Read, Seek};

use libcontainer::oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator,
};
use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp profile: {0}")]
    Profile(String),
    #[error("libseccomp {step}: {message}")]
    Lib { step: String, message: String },
    #[error("exporting the BPF program: {0}")]
    Export(std::io::Error),
}

fn lib(step: impl Into<String>) -> impl FnOnce(libseccomp::error::SeccompError) -> SeccompError {
    let step = step.into();
    move |e| SeccompError::Lib {
        step,
        message: e.to_string(),
    }
}

fn arch(a: Arch) -> Result<ScmpArch, SeccompError> {
    Ok(match a {
        Arch::ScmpArchNative => ScmpArch::Native,
        Arch::ScmpArchX86 => ScmpArch::X86,
        Arch::ScmpArchX86_64 => ScmpArch::X8664,
        Arch::ScmpArchX32 => ScmpArch::X32,
        Arch::ScmpArchArm => ScmpArch::Arm,
        Arch::ScmpArchAarch64 => ScmpArch::Aarch64,
        other => return Err(SeccompError::Profile(format!("architecture {other:?}"))),
    })
}

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<ScmpAction, SeccompError> {
    Ok(match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => {
            ScmpAction::Errno(errno.unwrap_or(libc::EPERM as u32) as i32)
        }
        LinuxSeccompAction::ScmpActTrace => {
            ScmpAction::Trace(errno.unwrap_or(libc::EPERM as u32) as u16)
        }
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        // A notify fd would have to cross the VM boundary: refused rather than weakened.
        LinuxSeccompAction::ScmpActNotify => {
            return Err(SeccompError::Profile(
                "SCMP_ACT_NOTIFY cannot be used in the micro-VM tier".into(),
            ));
        }
    })
}

fn op(o: LinuxSeccompOperator, two: Option<u64>) -> ScmpCompareOp {
    match o {
        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
        LinuxSeccompOperator::ScmpCmpMaskedEq => ScmpCompareOp::MaskedEqual(two.unwrap_or(0)),
    }
}

/// The plan's profile (as the JSON the container tier hands libcontainer) as packed
/// `sock_filter`s ([`agentcell_vmproto::pack_sock_filter`]).
pub fn compile(profile: &serde_json::Value) -> Result<Vec<u64>, SeccompError> {
    let s: LinuxSeccomp = serde_json::from_value(profile.clone())
        .map_err(|e| SeccompError::Profile(e.to_string()))?;
    let default = action(s.default_action(), s.default_errno_ret())?;
    let mut ctx = ScmpFilterContext::new(default).map_err(lib("new filter"))?;
    for a in s.architectures().iter().flatten() {
        ctx.add_arch(arch(*a)?)
            .map_err(lib(format!("add arch {a:?}")))?;
    }
    for rule in s.syscalls().iter().flatten() {
        let act = action(rule.action(), rule.errno_ret())?;
        if act == default {
            continue;
        }
        for name in rule.names() {
            // Unknown to this libseccomp: the syscall does not exist here, nothing to filter
            // (libcontainer skips it the same way).
            let Ok(sc) = ScmpSyscall::from_name(name) else {
                tracing::debug!(%name, "syscall unknown to libseccomp; skipped");
                continue;
            };
            match rule.args() {
                Some(args) if !args.is_empty() => {
                    let cmps: Vec<ScmpArgCompare> = args
                        .iter()
                        .map(|a| {
                            ScmpArgCompare::new(
                                a.index() as u32,
                                op(a.op(), a.value_two()),
                                a.value(),
                            )
                        })
                        .collect();
                    let mut seen = HashSet::new();
                    let dup = args.iter().any(|a| !seen.insert(a.index()));
                    // One comparison per argument per rule (libseccomp): duplicates become
                    // separate rules, as runc and libcontainer do.
                    if dup {
                        for c in &cmps {
                            ctx.add_rule_conditional(act, sc, std::slice::from_ref(c))
                                .map_err(lib(format!("rule {name}")))?;
                        }
                    } else {
                        ctx.add_rule_conditional(act, sc, &cmps)
                            .map_err(lib(format!("rule {name}")))?;
                    }
                    Ok::<(), SeccompError>(())
                }
                _ => {
                    ctx.add_rule(act, sc).map_err(lib(format!("rule {name}")))?;
                    Ok(())
                }
            }?;
        }
    }
    // libseccomp 2.5 can only export to a file descriptor.
    let mut f = memfd()?;
    ctx.export_bpf(&f).map_err(lib("export"))?;
    let mut bytes = Vec::new();
    f.rewind().map_err(SeccompError::Export)?;
    f.read_to_end(&mut bytes).map_err(SeccompError::Export)?;
    if bytes.is_empty() || !bytes.len().is_multiple_of(8) {
        return Err(SeccompError::Export(std::io::Error::other(format!(
            "{} bytes is not a whole number of sock_filter",
            bytes.len()
        ))));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| {
            let code = u16::from_ne_bytes([c[0], c[1]]);
            let k = u32::from_ne_bytes([c[4], c[5], c[6], c[7]]);
            agentcell_vmproto::pack_sock_filter(code, c[2], c[3], k)
        })
        .collect())
}

fn memfd() -> Result<std::fs::File, SeccompError> {
    use std::os::fd::FromRawFd as _;
    // SAFETY: a NUL-terminated name; the new descriptor is owned by the File.
    let fd = unsafe { libc::memfd_create(c"agentcell-seccomp".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(SeccompError::Export(std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentcell_policy::plan::{CompileOptions, Host, compile as plan};
    use agentcell_policy::{ParseOptions, parse_with};
    use agentcell_vmproto::unpack_sock_filter;

    /// Runs the packed program in this (forked) process against one syscall: the program is the
    /// same bytes the guest installs.
    #[test]
    fn the_plan_profile_compiles_to_a_program_that_checks_the_arch_and_denies() {
        let doc = parse_with(r#"{"version":"1.0.0"}"#, &ParseOptions::default()).unwrap();
        let p = plan(&doc, &Host::reference(), &CompileOptions::default()).unwrap();
        let prog = compile(&serde_json::to_value(&p.seccomp).unwrap()).unwrap();
        assert!(prog.len() > 4);
        // libseccomp programs start by loading seccomp_data.arch (offset 4).
        let (code, _, _, k) = unpack_sock_filter(prog[0]);
        assert_eq!((code, k), (0x20, 4), "BPF_LD|BPF_W|BPF_ABS arch");
        // Install it in a child and check that denied calls (new user namespaces, TIOCSTI with
        // high bits, netlink uevents, setuid modes, openat2) fail with the profile's errno while
        // allowed ones reach the kernel.
        let filters: Vec<libc::sock_filter> = prog
            .iter()
            .map(|v| {
                let (code, jt, jf, k) = unpack_sock_filter(*v);
                libc::sock_filter { code, jt, jf, k }
            })
            .collect();
        // SAFETY: fork in a test; the child only makes syscalls and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            unsafe {
                let fprog = libc::sock_fprog {
                    len: filters.len() as u16,
                    filter: filters.as_ptr() as *mut _,
                };
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                if libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &fprog) != 0 {
                    libc::_exit(10);
                }
                let errno = || *libc::__errno_location();
                let refused = |rc: libc::c_long, want: i32| rc == -1 && errno() == want;
                let high: libc::c_long = 1 << 32;
                let nul = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                let denied = refused(libc::unshare(libc::CLONE_NEWUSER) as _, libc::EPERM)
                    // Masked comparisons: the value in `value`, the mask in `value_two`
                    // (libcontainer's reading), on the low 32 bits the kernel reads.
                    && refused(
                        libc::syscall(libc::SYS_ioctl, nul, high | 0x5412, c"x".as_ptr()),
                        libc::EPERM,
                    )
                    && refused(
                        libc::syscall(libc::SYS_socket, high | 16, libc::SOCK_RAW, 15),
                        libc::EPERM,
                    )
                    && refused(
                        libc::syscall(libc::SYS_chmod, c"/agentcell-none".as_ptr(), 0o4755),
                        libc::EPERM,
                    )
                    && refused(
                        libc::syscall(libc::SYS_openat2, -1, c"x".as_ptr(), 0, 0),
                        libc::ENOSYS,
                    );
                let route = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, 0);
                let allowed = libc::getpid() > 0
                    && route >= 0
                    // Reaches the kernel: /dev/null is no terminal.
                    && refused(libc::ioctl(nul, libc::TCGETS, [0u8; 64].as_mut_ptr()) as _, libc::ENOTTY)
                    // Reaches the kernel: the path does not exist.
                    && refused(
                        libc::syscall(libc::SYS_chmod, c"/agentcell-none".as_ptr(), 0o755),
                        libc::ENOENT,
                    );
                libc::_exit(if denied && allowed { 0 } else { 11 });
            }
        }
        let mut status = 0;
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status));
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "10: not installed, 11: wrong verdicts"
        );
    }
}
