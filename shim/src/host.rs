//! Probing this host for what the planner needs to know. Everything here reads the real kernel.

use std::path::Path;

use agentcell_policy::Host;

/// `LANDLOCK_CREATE_RULESET_VERSION`: ask the kernel for its Landlock ABI.
const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;

/// The Landlock ABI of the running kernel, probed with the syscall (securityfs may be absent,
/// e.g. on WSL2). `None` when Landlock is not available.
pub fn landlock_abi() -> Option<u32> {
    // SAFETY: with a null attribute pointer, size 0 and the VERSION flag, the syscall only
    // returns the ABI number (or an error); it reads and writes no memory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    (r > 0).then_some(r as u32)
}

/// The ABI the planner is told about. `AGENTCELL_HOST_LANDLOCK_ABI` can only lower it (to plan
/// for, and test the reporting of, an older kernel); it never claims more than the kernel has.
pub fn landlock_abi_for_planning() -> Option<u32> {
    let real = landlock_abi();
    match std::env::var("AGENTCELL_HOST_LANDLOCK_ABI")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    {
        Some(0) => None,
        Some(v) => real.map(|r| r.min(v)),
        None => real,
    }
}

/// Whether seccomp filtering is available to this process.
pub fn seccomp_available() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Seccomp:")))
        .unwrap_or(false)
}

/// Whether nftables can be used: asks the kernel's nf_tables for its ruleset generation over
/// netlink (`NFT_MSG_GETGEN`), which also loads the module when it is modular.
pub fn nftables_available() -> bool {
    const NETLINK_NETFILTER: libc::c_int = 12;
    const NFNL_SUBSYS_NFTABLES: u16 = 10;
    const NFT_MSG_GETGEN: u16 = 16;
    const NLMSG_ERROR: u16 = 2;
    // SAFETY: plain socket calls on a descriptor we own; buffers are local and sized.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_NETFILTER,
        );
        if fd < 0 {
            return false;
        }
        let mut req = [0u8; 20];
        req[0..4].copy_from_slice(&20u32.to_ne_bytes());
        req[4..6].copy_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN).to_ne_bytes());
        req[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
        req[8..12].copy_from_slice(&1u32.to_ne_bytes());
        // nfgenmsg: family AF_UNSPEC, version 0, res_id 0.
        let sent = libc::send(fd, req.as_ptr().cast(), req.len(), 0);
        let mut buf = [0u8; 512];
        let tv = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
        let n = if sent == 20 {
            libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0)
        } else {
            -1
        };
        libc::close(fd);
        if n < 16 {
            return false;
        }
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        if kind == NLMSG_ERROR {
            let err = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
            return err == 0;
        }
        // The reply is NFT_MSG_NEWGEN from the nf_tables subsystem.
        kind >> 8 == NFNL_SUBSYS_NFTABLES
    }
}

pub fn ipv6_available() -> bool {
    Path::new("/proc/net/if_inet6").exists()
}

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The description of this host the planner uses.
pub fn probe() -> Host {
    Host {
        arch: std::env::consts::ARCH.to_string(),
        kernel_release: kernel_release(),
        landlock_abi: landlock_abi_for_planning(),
        seccomp: seccomp_available(),
        nftables: nftables_available(),
        ipv6: ipv6_available(),
    }
}

/// The cgroup layout of this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupLayout {
    V1,
    Hybrid,
    V2,
    None,
}

pub fn cgroup_layout() -> CgroupLayout {
    let v2_root = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let unified = Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists();
    let v1 =
        Path::new("/sys/fs/cgroup/memory").exists() || Path::new("/sys/fs/cgroup/pids").exists();
    match (v2_root, unified, v1) {
        (true, _, _) => CgroupLayout::V2,
        (false, true, true) => CgroupLayout::Hybrid,
        (false, _, true) => CgroupLayout::V1,
        _ => CgroupLayout::None,
    }
}

/// Whether PID 1 is systemd (the cgroup driver follows it).
pub fn systemd_is_init() -> bool {
    Path::new("/run/systemd/system").is_dir()
        && std::fs::read_to_string("/proc/1/comm").is_ok_and(|c| c.trim() == "systemd")
}

/// User namespaces: available, and whether unprivileged users may create them.
pub fn user_namespaces() -> (bool, bool) {
    let max = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let unpriv = std::fs::read_to_string("/proc/sys/kernel/unprivileged_userns_clone")
        .map(|s| s.trim() == "1")
        .unwrap_or(max > 0);
    (max > 0, max > 0 && unpriv)
}

/// KVM: present, and whether a stock guest kernel can boot with it. Nested PVM (`kvm_pvm`)
/// exposes /dev/kvm but stock kernels do not boot on it; qemu TCG still works there.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Kvm {
    pub device: bool,
    pub pvm: bool,
    pub guest_boots_with_kvm: bool,
}

pub fn kvm() -> Kvm {
    let device = Path::new("/dev/kvm").exists();
    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    Kvm {
        device,
        pvm,
        guest_boots_with_kvm: device && !pvm,
    }
}

/// WSL detection (WSL1 vs WSL2) and its hazards.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Wsl {
    pub version: u8,
    pub interop: bool,
    pub windows_drives: Vec<String>,
}

pub fn wsl() -> Option<Wsl> {
    let version = std::fs::read_to_string("/proc/version").ok()?;
    let lower = version.to_ascii_lowercase();
    if !lower.contains("microsoft") {
        return None;
    }
    let v = if lower.contains("wsl2") || Path::new("/run/WSL").exists() {
        2
    } else {
        1
    };
    let interop = Path::new("/proc/sys/fs/binfmt_misc/WSLInterop").exists()
        || Path::new("/proc/sys/fs/binfmt_misc/WSLInterop-late").exists();
    let windows_drives = std::fs::read_dir("/mnt")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.len() == 1 && n.chars().all(|c| c.is_ascii_lowercase()))
                .map(|n| format!("/mnt/{n}"))
                .collect()
        })
        .unwrap_or_default();
    Some(Wsl {
        version: v,
        interop,
        windows_drives,
    })
}
