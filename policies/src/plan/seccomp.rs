//! The default seccomp profile: a short deny-list (filter cost grows with length) in the spirit
//! of OpenShell and codex, as an OCI `LinuxSeccomp` document. It leaves `landlock_*` and GPU
//! ioctls alone.

use serde::Serialize;

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;
const CLONE_NEWUSER: u64 = 0x1000_0000;
const AF_PACKET: u64 = 17;
/// `AF_VSOCK`: the address family WSL2's interop uses to reach the Windows host.
pub const AF_VSOCK: u64 = 40;

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

fn masked(
    name: &'static str,
    index: u32,
    mask: u64,
    errno_ret: u32,
    why: &'static str,
) -> SyscallRule {
    SyscallRule {
        args: vec![SyscallArg {
            index,
            value: mask,
            value_two: Some(mask),
            op: "SCMP_CMP_MASKED_EQ",
        }],
        ..errno(&[name], errno_ret, why)
    }
}

fn equal(
    name: &'static str,
    index: u32,
    value: u64,
    errno_ret: u32,
    why: &'static str,
) -> SyscallRule {
    SyscallRule {
        args: vec![SyscallArg {
            index,
            value,
            value_two: None,
            op: "SCMP_CMP_EQ",
        }],
        ..errno(&[name], errno_ret, why)
    }
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
        equal(
            "socket",
            0,
            AF_VSOCK,
            EPERM,
            "AF_VSOCK reaches the hypervisor host (WSL2 interop)",
        ),
        equal(
            "socket",
            0,
            AF_PACKET,
            EPERM,
            "raw packet sockets bypass the network fence's view",
        ),
    ];
    LinuxSeccomp {
        default_action: "SCMP_ACT_ALLOW",
        architectures,
        syscalls,
    }
}

/// Whether `profile` refuses `socket(family, ...)` (a rule on `socket` matching argument 0).
pub fn denies_socket_family(profile: &LinuxSeccomp, family: u64) -> bool {
    profile.syscalls.iter().any(|r| {
        r.names == ["socket"]
            && r.action == "SCMP_ACT_ERRNO"
            && r.args
                .iter()
                .any(|a| a.index == 0 && a.op == "SCMP_CMP_EQ" && a.value == family)
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
        assert!(
            !names
                .iter()
                .any(|n| n.starts_with("landlock") || *n == "ioctl")
        );
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
}
