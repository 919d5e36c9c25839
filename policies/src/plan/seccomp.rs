//! The default seccomp profile: a short deny-list (filter cost grows with length) in the spirit
//! of OpenShell and codex, as an OCI `LinuxSeccomp` document. It leaves `landlock_*` and GPU
//! ioctls alone (the only `ioctl` rules match three terminal requests exactly).
//!
//! Arguments the kernel reads as 32-bit `int`s (socket families and protocols, ioctl requests
//! and descriptors) are compared on their low 32 bits only: a plain `SCMP_CMP_EQ` compares the
//! whole 64-bit register, so `socket(AF_VSOCK | 1 << 32, ...)` would pass it and still reach the
//! kernel as `AF_VSOCK`.

use serde::Serialize;

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;
const CLONE_NEWUSER: u64 = 0x1000_0000;
const AF_PACKET: u64 = 17;
/// `AF_VSOCK`: the address family WSL2's interop uses to reach the Windows host.
pub const AF_VSOCK: u64 = 40;
const AF_NETLINK: u64 = 16;
/// The netlink protocols a workload keeps: `NETLINK_ROUTE` (0: `getifaddrs`, `getaddrinfo`'s
/// `AI_ADDRCONFIG`, `ip`) and `NETLINK_SOCK_DIAG` (4: `ss`; it lists the sockets of the
/// sandbox's own network namespace only). Every other protocol, `NETLINK_KOBJECT_UEVENT` (15:
/// host device events) first, is refused.
pub const NETLINK_KEPT: [u64; 2] = [0, 4];
pub const NETLINK_KOBJECT_UEVENT: u64 = 15;
const S_ISUID: u64 = 0o4000;
const S_ISGID: u64 = 0o2000;
pub const TIOCSTI: u64 = 0x5412;
pub const TIOCLINUX: u64 = 0x541C;
pub const TIOCSCTTY: u64 = 0x540E;
const LOW32: u64 = 0xffff_ffff;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinuxSeccomp {
    pub default_action: &'static str,
    pub architectures: Vec<&'static str>,
    pub syscalls: Vec<SyscallRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyscallRule {
    pub names: Vec<&'static str>,
    pub action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<SyscallArg>,
    /// Why the rule exists (not part of OCI; dropped when handed to a runtime).
    #[serde(skip)]
    pub why: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyscallArg {
    pub index: u32,
    /// For `SCMP_CMP_MASKED_EQ`: the value the masked argument must equal; the mask is
    /// `value_two`. This is libcontainer's order (and the micro-VM compiler's, which mirrors it);
    /// runc reads the two the other way round, which only rules with `value == value_two` survive.
    pub value: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_two: Option<u64>,
    pub op: &'static str,
}

fn errno(names: &[&'static str], errno: u32, why: &'static str) -> SyscallRule {
    SyscallRule {
        names: names.to_vec(),
        action: "SCMP_ACT_ERRNO",
        errno_ret: Some(errno),
        args: vec![],
        why,
    }
}

fn when(
    names: &[&'static str],
    errno_ret: u32,
    args: Vec<SyscallArg>,
    why: &'static str,
) -> SyscallRule {
    SyscallRule {
        args,
        ..errno(names, errno_ret, why)
    }
}

/// `(argument & mask) == value`.
fn masked_eq(index: u32, mask: u64, value: u64) -> SyscallArg {
    SyscallArg {
        index,
        value,
        value_two: Some(mask),
        op: "SCMP_CMP_MASKED_EQ",
    }
}

/// Every bit of `bits` set in the argument.
fn has_bits(index: u32, bits: u64) -> SyscallArg {
    masked_eq(index, bits, bits)
}

/// The argument, read as the kernel reads an `int`, equals `value`.
fn eq32(index: u32, value: u64) -> SyscallArg {
    masked_eq(index, LOW32, value)
}

fn greater(index: u32, value: u64) -> SyscallArg {
    SyscallArg {
        index,
        value,
        value_two: None,
        op: "SCMP_CMP_GT",
    }
}

/// The system calls that take a file mode, grouped by the index of the mode argument.
const MODE_ARGS: [(u32, &[&str]); 3] = [
    (1, &["chmod", "fchmod", "creat", "mkdir", "mknod"]),
    (2, &["fchmodat", "fchmodat2", "open", "mkdirat", "mknodat"]),
    (3, &["openat"]),
];

/// No setuid or setgid bit on anything the workload creates or changes: the workload is uid 0,
/// so such a file in a read-write grant is a root-owned setuid binary on the host (`nosuid`
/// only protects the sandbox's view). One rule per bit, because the arguments of a rule are
/// ANDed. `open`'s mode is only read with `O_CREAT` or `O_TMPFILE`, and both glibc and musl
/// pass 0 otherwise, so the flags are not looked at.
fn no_setid_modes() -> Vec<SyscallRule> {
    let mut rules = Vec::new();
    for (index, names) in MODE_ARGS {
        for bit in [S_ISUID, S_ISGID] {
            rules.push(when(
                names,
                EPERM,
                vec![has_bits(index, bit)],
                "no setuid or setgid bits: such a file is a root-owned setuid binary on the host",
            ));
        }
    }
    // openat2 carries its mode in a struct seccomp cannot read. ENOSYS (as for clone3) makes
    // the callers that use it (systemd, cap-std, libpathrs, Go's securejoin) fall back to
    // openat; glibc and musl never call it for open(3).
    rules.push(errno(
        &["openat2"],
        ENOSYS,
        "openat2's mode lives in memory seccomp cannot inspect; ENOSYS makes callers fall back to openat",
    ));
    rules
}

/// Netlink protocols other than [`NETLINK_KEPT`] (0 and 4): above 4, or with bit 0 or 1 set
/// (1, 2, 3); three rules instead of one per protocol. The comparison on the protocol is
/// 64-bit, so a value with high bits set is refused too (the kernel would read it as an `int`).
fn netlink() -> Vec<SyscallRule> {
    let why = "netlink beyond NETLINK_ROUTE and NETLINK_SOCK_DIAG: host device events (uevent), audit, generic families";
    vec![
        when(
            &["socket"],
            EPERM,
            vec![eq32(0, AF_NETLINK), greater(2, 4)],
            why,
        ),
        when(
            &["socket"],
            EPERM,
            vec![eq32(0, AF_NETLINK), has_bits(2, 1)],
            why,
        ),
        when(
            &["socket"],
            EPERM,
            vec![eq32(0, AF_NETLINK), has_bits(2, 2)],
            why,
        ),
    ]
}

/// Terminal requests that reach the caller of `agentcell` through an inherited terminal:
/// TIOCSTI pushes bytes into its input, TIOCLINUX pastes on a virtual console. TIOCSCTTY is
/// refused on descriptors 0 to 2 only (those the sandbox is handed): a workload that opens a pty
/// of its own (forkpty, tmux, pexpect) must still be able to make it its controlling terminal.
/// A copy of an inherited descriptor under another number passes TIOCSCTTY, but TIOCSTI stays
/// refused on every descriptor, which is what injection needs.
fn terminal() -> Vec<SyscallRule> {
    let mut rules = vec![
        when(
            &["ioctl"],
            EPERM,
            vec![eq32(1, TIOCSTI)],
            "TIOCSTI injects input into a terminal (the caller's shell runs it)",
        ),
        when(
            &["ioctl"],
            EPERM,
            vec![eq32(1, TIOCLINUX)],
            "TIOCLINUX pastes into a virtual console",
        ),
    ];
    for fd in 0..3 {
        rules.push(when(
            &["ioctl"],
            EPERM,
            vec![eq32(0, fd), eq32(1, TIOCSCTTY)],
            "TIOCSCTTY on an inherited descriptor takes the caller's terminal",
        ));
    }
    rules
}

fn masked(
    name: &'static str,
    index: u32,
    mask: u64,
    errno_ret: u32,
    why: &'static str,
) -> SyscallRule {
    when(&[name], errno_ret, vec![has_bits(index, mask)], why)
}

fn equal32(
    name: &'static str,
    index: u32,
    value: u64,
    errno_ret: u32,
    why: &'static str,
) -> SyscallRule {
    when(&[name], errno_ret, vec![eq32(index, value)], why)
}

/// The profile for `arch` (`x86_64` or `aarch64`). Compat architectures are listed so 32-bit
/// system calls cannot bypass the list.
pub fn default_profile(arch: &str) -> LinuxSeccomp {
    let architectures = match arch {
        "aarch64" => vec!["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        _ => vec!["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    };
    let syscalls = vec![
        errno(
            &["ptrace", "process_vm_readv", "process_vm_writev"],
            EPERM,
            "no inspecting or writing other processes",
        ),
        errno(
            &["io_uring_setup", "io_uring_enter", "io_uring_register"],
            EPERM,
            "io_uring bypasses seccomp for the operations it queues",
        ),
        errno(
            &["bpf", "perf_event_open", "userfaultfd"],
            EPERM,
            "kernel attack surface no workload needs",
        ),
        errno(
            &[
                "kexec_load",
                "kexec_file_load",
                "init_module",
                "finit_module",
                "delete_module",
            ],
            EPERM,
            "no kernel or module loading",
        ),
        errno(
            &[
                "mount",
                "umount2",
                "pivot_root",
                "move_mount",
                "open_tree",
                "fsopen",
                "fsconfig",
                "fsmount",
                "fspick",
                "mount_setattr",
            ],
            EPERM,
            "the filesystem view is fixed",
        ),
        errno(&["setns"], EPERM, "no joining other namespaces"),
        errno(
            &["open_by_handle_at"],
            EPERM,
            "file handles bypass path-based confinement",
        ),
        errno(
            &["keyctl", "add_key", "request_key"],
            EPERM,
            "the kernel keyring is not namespaced",
        ),
        masked(
            "unshare",
            0,
            CLONE_NEWUSER,
            EPERM,
            "no new user namespaces (they re-grant capabilities)",
        ),
        masked(
            "clone",
            0,
            CLONE_NEWUSER,
            EPERM,
            "no new user namespaces (they re-grant capabilities)",
        ),
        errno(
            &["clone3"],
            ENOSYS,
            "clone3 flags live in memory seccomp cannot inspect; ENOSYS makes libc fall back to clone",
        ),
        equal32(
            "socket",
            0,
            AF_VSOCK,
            EPERM,
            "AF_VSOCK reaches the hypervisor host (WSL2 interop)",
        ),
        equal32(
            "socket",
            0,
            AF_PACKET,
            EPERM,
            "raw packet sockets bypass the network fence's view",
        ),
    ];
    let syscalls = syscalls
        .into_iter()
        .chain(no_setid_modes())
        .chain(netlink())
        .chain(terminal())
        .collect();
    LinuxSeccomp {
        default_action: "SCMP_ACT_ALLOW",
        architectures,
        syscalls,
    }
}

/// Whether `profile` refuses every `socket(family, ...)`: a rule on `socket` whose only
/// condition is argument 0 equal to `family` (on its low 32 bits, as the kernel reads it).
pub fn denies_socket_family(profile: &LinuxSeccomp, family: u64) -> bool {
    profile.syscalls.iter().any(|r| {
        r.names == ["socket"]
            && r.action == "SCMP_ACT_ERRNO"
            && r.args.as_slice() == [eq32(0, family)]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denies_the_listed_families_and_spares_landlock() {
        let p = default_profile("x86_64");
        let names: Vec<&str> = p
            .syscalls
            .iter()
            .flat_map(|r| r.names.iter().copied())
            .collect();
        for must in [
            "ptrace",
            "bpf",
            "io_uring_setup",
            "mount",
            "setns",
            "keyctl",
            "clone3",
            "unshare",
            "kexec_load",
            "open_by_handle_at",
            "userfaultfd",
            "perf_event_open",
            "process_vm_writev",
            "init_module",
            "pivot_root",
            "fsopen",
        ] {
            assert!(names.contains(&must), "{must}");
        }
        assert!(!names.iter().any(|n| n.starts_with("landlock")));
        // The only ioctl rules match one terminal request each, exactly (GPU drivers' ioctls
        // go through: see `gpu_ioctls_and_kept_calls_pass`).
        for r in p.syscalls.iter().filter(|r| r.names.contains(&"ioctl")) {
            assert_eq!(r.names, ["ioctl"]);
            let req = r.args.iter().find(|a| a.index == 1).expect("request");
            assert_eq!(req.value_two, Some(LOW32));
            assert!([TIOCSTI, TIOCLINUX, TIOCSCTTY].contains(&req.value));
        }
        let clone3 = p.syscalls.iter().find(|r| r.names == ["clone3"]).unwrap();
        assert_eq!(clone3.errno_ret, Some(38));
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["defaultAction"], "SCMP_ACT_ALLOW");
        assert!(json["syscalls"][0].get("why").is_none());
        // WSL2 hardening relies on this rule (interop reaches the Windows host over vsock).
        assert!(denies_socket_family(&p, AF_VSOCK));
        assert!(denies_socket_family(&default_profile("aarch64"), AF_VSOCK));
        assert!(!denies_socket_family(&p, 2 /* AF_INET */));
    }

    /// The verdict of `profile` for one call, evaluated the way libcontainer translates the
    /// document (arguments of a rule ANDed, `MASKED_EQ` as `(arg & value_two) == value`, the
    /// first refusing rule wins; ordering does not matter here since all refusals are errnos).
    fn verdict(p: &LinuxSeccomp, name: &str, args: [u64; 6]) -> Option<u32> {
        p.syscalls
            .iter()
            .filter(|r| r.names.contains(&name))
            .find(|r| {
                r.args.iter().all(|a| {
                    let v = args[a.index as usize];
                    match a.op {
                        "SCMP_CMP_EQ" => v == a.value,
                        "SCMP_CMP_GT" => v > a.value,
                        "SCMP_CMP_MASKED_EQ" => v & a.value_two.unwrap() == a.value,
                        other => panic!("operator {other} not modelled"),
                    }
                })
            })
            .and_then(|r| r.errno_ret)
    }

    const E: Option<u32> = Some(EPERM);

    #[test]
    fn setuid_and_setgid_modes_are_refused_on_every_mode_argument() {
        let p = default_profile("x86_64");
        let calls: [(&str, usize); 11] = [
            ("chmod", 1),
            ("fchmod", 1),
            ("creat", 1),
            ("mkdir", 1),
            ("mknod", 1),
            ("fchmodat", 2),
            ("fchmodat2", 2),
            ("open", 2),
            ("mkdirat", 2),
            ("mknodat", 2),
            ("openat", 3),
        ];
        for (name, index) in calls {
            let with = |mode: u64| {
                let mut a = [0u64; 6];
                a[index] = mode;
                verdict(&p, name, a)
            };
            assert_eq!(with(0o6755), E, "{name} 6755");
            assert_eq!(with(0o4755), E, "{name} 4755");
            assert_eq!(with(0o2755), E, "{name} 2755");
            assert_eq!(with(0o104755), E, "{name} S_IFREG|4755");
            assert_eq!(with(0o755), None, "{name} 755");
            assert_eq!(with(0o1777), None, "{name} sticky");
            // The mode in another argument position is not a mode.
            let mut a = [0u64; 6];
            a[(index + 1) % 6] = 0o6755;
            assert_eq!(verdict(&p, name, a), None, "{name} other argument");
        }
        let openat2 = p.syscalls.iter().find(|r| r.names == ["openat2"]).unwrap();
        assert_eq!((openat2.errno_ret, openat2.args.len()), (Some(ENOSYS), 0));
    }

    #[test]
    fn netlink_keeps_route_and_sock_diag_only() {
        let p = default_profile("x86_64");
        let sock = |family: u64, proto: u64| verdict(&p, "socket", [family, 3, proto, 0, 0, 0]);
        for proto in NETLINK_KEPT {
            assert_eq!(sock(AF_NETLINK, proto), None, "netlink {proto}");
        }
        for proto in (0..32).filter(|p| !NETLINK_KEPT.contains(p)) {
            assert_eq!(sock(AF_NETLINK, proto), E, "netlink {proto}");
        }
        assert_eq!(sock(AF_NETLINK, NETLINK_KOBJECT_UEVENT), E);
        // High bits the kernel drops (it reads both as int) do not get past the rules.
        assert_eq!(sock(AF_NETLINK | 1 << 32, NETLINK_KOBJECT_UEVENT), E);
        assert_eq!(sock(AF_NETLINK, NETLINK_KOBJECT_UEVENT | 1 << 32), E);
        assert_eq!(sock(AF_VSOCK | 1 << 32, 0), E);
        assert_eq!(sock(AF_PACKET | 0xffff_ffff_0000_0000, 0), E);
        // Other families' protocol numbers are not netlink protocols.
        assert_eq!(sock(2 /* AF_INET */, 17), None);
        assert_eq!(sock(10 /* AF_INET6 */, 6), None);
        assert_eq!(sock(1 /* AF_UNIX */, 0), None);
    }

    #[test]
    fn terminal_injection_requests_are_refused_on_their_low_32_bits() {
        let p = default_profile("x86_64");
        let ioctl = |fd: u64, req: u64| verdict(&p, "ioctl", [fd, req, 0, 0, 0, 0]);
        for fd in [0, 1, 2, 7, 1000] {
            assert_eq!(ioctl(fd, TIOCSTI), E, "TIOCSTI on {fd}");
            assert_eq!(ioctl(fd, TIOCLINUX), E, "TIOCLINUX on {fd}");
            assert_eq!(
                ioctl(fd, TIOCSTI | 1 << 32),
                E,
                "TIOCSTI with high bits on {fd}"
            );
        }
        for fd in 0..3 {
            assert_eq!(ioctl(fd, TIOCSCTTY), E);
            assert_eq!(ioctl(fd | 1 << 32, TIOCSCTTY | 1 << 40), E);
        }
        // A pty the workload opens itself (forkpty, tmux) can become its controlling terminal.
        assert_eq!(ioctl(5, TIOCSCTTY), None);
    }

    #[test]
    fn gpu_ioctls_and_kept_calls_pass() {
        let p = default_profile("x86_64");
        for req in [
            0xC040_6400u64,        // DRM_IOCTL_VERSION
            0xC010_640C,           // DRM_IOCTL_GET_CAP
            0xC020_462A,           // NVIDIA's NV_ESC_RM_ALLOC shape
            0xFFFF_FFFF_C020_462A, // the same, sign-extended by a caller
            0x5401,                // TCGETS
            0x5413,                // TIOCGWINSZ
            0x540F,                // TIOCGPGRP
        ] {
            assert_eq!(verdict(&p, "ioctl", [3, req, 0, 0, 0, 0]), None, "{req:#x}");
            assert_eq!(verdict(&p, "ioctl", [0, req, 0, 0, 0, 0]), None, "{req:#x}");
        }
        assert_eq!(verdict(&p, "chmod", [0, 0o755, 0, 0, 0, 0]), None);
        assert_eq!(verdict(&p, "openat", [0, 0, 0o102, 0o644, 0, 0]), None);
    }
}
