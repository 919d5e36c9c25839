//! Probing a host for what the planner needs to know: this machine (the real kernel), or a
//! recorded host description with the same layout (tests, `doctor --root`).

use std::path::{Path, PathBuf};

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

/// Where host facts are read from: `/` (this machine), or a recorded host description: a
/// directory with the same layout (`proc/version`, `proc/self/mounts`, `dev/dxg`, ...) plus
/// `recorded.txt` (`key=value` lines) for what only a system call answers (`landlock_abi`,
/// `nftables`, `arch`). Fixtures under `shim/tests/fixtures/hosts/` are such directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoot {
    dir: PathBuf,
    live: bool,
}

impl HostRoot {
    pub fn live() -> Self {
        Self {
            dir: PathBuf::from("/"),
            live: true,
        }
    }

    pub fn recorded(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            live: false,
        }
    }

    /// A plain directory standing in for a host's `/` (the forced WSL2 hardening's test tree):
    /// its files are read, nothing is taken from recorded values.
    pub fn tree(dir: impl Into<PathBuf>) -> Self {
        Self::recorded(dir)
    }

    pub fn is_live(&self) -> bool {
        self.live
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path on this machine of the host path `p` (absolute).
    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p.trim_start_matches('/'))
    }

    pub fn exists(&self, p: &str) -> bool {
        self.path(p).exists()
    }

    pub fn is_dir(&self, p: &str) -> bool {
        self.path(p).is_dir()
    }

    pub fn read(&self, p: &str) -> Option<String> {
        std::fs::read_to_string(self.path(p)).ok()
    }

    /// A value of `recorded.txt` (recorded roots only).
    pub fn recorded_value(&self, key: &str) -> Option<String> {
        if self.live {
            return None;
        }
        self.read("/recorded.txt")?.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
    }

    pub fn kernel_release(&self) -> String {
        self.read("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    }

    /// The Landlock ABI: by system call on this machine (securityfs is not mounted on WSL), the
    /// recorded value for a recorded host (`none` or a number).
    pub fn landlock_abi(&self) -> Option<u32> {
        if self.live {
            return landlock_abi_for_planning();
        }
        self.recorded_value("landlock_abi")
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|a| *a > 0)
    }

    pub fn seccomp(&self) -> bool {
        self.read("/proc/self/status")
            .is_some_and(|s| s.lines().any(|l| l.starts_with("Seccomp:")))
    }

    pub fn nftables(&self) -> bool {
        if self.live {
            return nftables_available();
        }
        self.recorded_value("nftables").as_deref() == Some("yes")
    }

    pub fn arch(&self) -> String {
        match self.recorded_value("arch") {
            Some(a) => a,
            None => std::env::consts::ARCH.to_string(),
        }
    }
}

/// The description of this host the planner uses.
pub fn probe() -> Host {
    let root = HostRoot::live();
    let mut h = describe(&root);
    // Forced WSL2 hardening (tests on a plain Linux host): the WSL facts, and the GPU, come from
    // the test's tree; everything the kernel answers stays this machine's. Forcing only adds
    // restrictions, and a real WSL host always uses its own `/`.
    if h.wsl.is_none()
        && let Some(tree) = crate::wsl::forced_root()
    {
        h.wsl = Some(crate::wsl::facts(&tree, 2, true));
        h.gpu = crate::wsl::detect_gpu(&tree, true);
    }
    h
}

/// The description of the host at `root` (this machine for [`HostRoot::live`]).
pub fn describe(root: &HostRoot) -> Host {
    let wsl = crate::wsl::detect(root);
    let gpu = crate::wsl::detect_gpu(root, wsl.as_ref().is_some_and(|w| w.version >= 2));
    Host {
        arch: root.arch(),
        kernel_release: root.kernel_release(),
        landlock_abi: root.landlock_abi(),
        seccomp: root.seccomp(),
        nftables: root.nftables(),
        ipv6: root.exists("/proc/net/if_inet6"),
        wsl,
        gpu,
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
    cgroup_layout_at(&HostRoot::live())
}

pub fn cgroup_layout_at(root: &HostRoot) -> CgroupLayout {
    let v2_root = root.exists("/sys/fs/cgroup/cgroup.controllers");
    let unified = root.exists("/sys/fs/cgroup/unified/cgroup.controllers");
    let v1 = root.exists("/sys/fs/cgroup/memory") || root.exists("/sys/fs/cgroup/pids");
    match (v2_root, unified, v1) {
        (true, _, _) => CgroupLayout::V2,
        (false, true, true) => CgroupLayout::Hybrid,
        (false, _, true) => CgroupLayout::V1,
        _ => CgroupLayout::None,
    }
}

/// Whether PID 1 is systemd (the cgroup driver follows it).
pub fn systemd_is_init() -> bool {
    systemd_is_init_at(&HostRoot::live())
}

pub fn systemd_is_init_at(root: &HostRoot) -> bool {
    root.is_dir("/run/systemd/system")
        && root
            .read("/proc/1/comm")
            .is_some_and(|c| c.trim() == "systemd")
}

/// User namespaces: available, and whether unprivileged users may create them.
pub fn user_namespaces(root: &HostRoot) -> (bool, bool) {
    let max = root
        .read("/proc/sys/user/max_user_namespaces")
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let unpriv = root
        .read("/proc/sys/kernel/unprivileged_userns_clone")
        .map(|s| s.trim() == "1")
        .unwrap_or(max > 0);
    (max > 0, max > 0 && unpriv)
}

/// `dev.tty.legacy_tiocsti`: whether `TIOCSTI` (push bytes into a terminal's input) works for
/// processes without `CAP_SYS_ADMIN` on their controlling terminal. `None`: the kernel has no
/// such switch (before 6.2: always allowed) or the file is unreadable.
pub fn legacy_tiocsti(root: &HostRoot) -> Option<bool> {
    match root.read("/proc/sys/dev/tty/legacy_tiocsti")?.trim() {
        "1" => Some(true),
        "0" => Some(false),
        _ => None,
    }
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

pub fn kvm(root: &HostRoot) -> Kvm {
    let device = root.exists("/dev/kvm");
    let pvm = root.exists("/sys/module/kvm_pvm");
    Kvm {
        device,
        pvm,
        guest_boots_with_kvm: device && !pvm,
    }
}
