//! WSL and GPU detection against a host root (`/`, a recorded fixture, or the forced
//! hardening's test tree): WSL1 vs WSL2, the interop entries, the Windows drives, the WSL paths
//! the hardening closes, and the GPU `--gpu` would expose.

use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};

use agentcell_policy::plan::gpu::{GpuDevice, GpuHost, GpuKind};
use agentcell_policy::plan::wsl::{self as plan_wsl, WslHost};

use crate::host::HostRoot;

/// Forces the WSL2 hardening on a host that is not WSL (tests). Hidden on purpose: it only adds
/// restrictions, and it is ignored on a real WSL host.
pub const FORCE_ENV: &str = "AGENTCELL_FORCE_WSL2_HARDENING";
/// With [`FORCE_ENV`]: the directory standing in for the WSL host's `/` (default `/`).
pub const ROOT_ENV: &str = "AGENTCELL_WSL_ROOT";

/// The binfmt_misc entries WSL registers for interop (`-late` since WSL 2.x with systemd).
const INTEROP_ENTRIES: &[&str] = &["WSLInterop", "WSLInterop-late"];

/// The tree the forced hardening reads, when forced.
pub fn forced_root() -> Option<HostRoot> {
    if std::env::var(FORCE_ENV).ok().as_deref() != Some("1") {
        return None;
    }
    let dir = std::env::var(ROOT_ENV).unwrap_or_else(|_| "/".into());
    if !dir.starts_with('/') {
        tracing::warn!(root = %dir, "{ROOT_ENV} is not absolute; using /");
        return Some(HostRoot::tree("/"));
    }
    Some(HostRoot::tree(dir))
}

/// WSL's version from the kernel's own strings: WSL2 kernels are Microsoft builds of Linux
/// (`5.15.153.1-microsoft-standard-WSL2`, earlier `4.19.128-microsoft-standard`); WSL1 has no
/// Linux kernel and reports `4.4.0-19041-Microsoft`.
pub fn version_of(release: &str, proc_version: &str) -> Option<u8> {
    let text = format!("{release} {proc_version}").to_ascii_lowercase();
    if !text.contains("microsoft") {
        return None;
    }
    if text.contains("microsoft-standard") || text.contains("wsl2") {
        Some(2)
    } else {
        Some(1)
    }
}

/// WSL at `root`, if it is a WSL host. A custom WSL2 kernel may lack Microsoft's version
/// strings; the interop entries or `/run/WSL` still give it away.
pub fn detect(root: &HostRoot) -> Option<WslHost> {
    let release = root.kernel_release();
    let proc_version = root.read("/proc/version").unwrap_or_default();
    let version = version_of(&release, &proc_version).or_else(|| {
        let interop = INTEROP_ENTRIES
            .iter()
            .any(|e| root.exists(&format!("{}/{e}", plan_wsl::BINFMT_MISC)));
        (interop || root.is_dir(plan_wsl::RUN_WSL)).then_some(2)
    })?;
    Some(facts(root, version, false))
}

/// The WSL facts at `root`, for a host known (or forced) to be WSL `version`.
pub fn facts(root: &HostRoot, version: u8, forced: bool) -> WslHost {
    let interop_entries = INTEROP_ENTRIES
        .iter()
        .map(|e| format!("{}/{e}", plan_wsl::BINFMT_MISC))
        .filter(|p| {
            root.read(p)
                .is_some_and(|c| c.lines().next().map(str::trim) == Some("enabled"))
        })
        .collect();
    let mounts = root
        .read("/proc/self/mounts")
        .or_else(|| root.read("/proc/mounts"))
        .unwrap_or_default();
    WslHost {
        version,
        root: root.dir().display().to_string(),
        forced,
        interop_entries,
        windows_drives: windows_drives(&mounts, &automount_root(root)),
        init: root.exists(plan_wsl::INIT),
        run_wsl: root.exists(plan_wsl::RUN_WSL),
        wslg: root.exists(plan_wsl::WSLG),
        dxg: root.exists(plan_wsl::DXG),
        wsl_lib: root.is_dir(plan_wsl::WSL_LIB),
        usr_lib_wsl: root.exists(plan_wsl::USR_LIB_WSL),
    }
}

/// `[automount] root` of `/etc/wsl.conf` (where drives are mounted), default `/mnt/`.
fn automount_root(root: &HostRoot) -> String {
    let mut section = String::new();
    for line in root.read("/etc/wsl.conf").unwrap_or_default().lines() {
        let line = line.trim();
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.trim().to_ascii_lowercase();
        } else if section == "automount"
            && let Some((k, v)) = line.split_once('=')
            && k.trim() == "root"
        {
            let v = v.trim().trim_matches('"');
            if v.starts_with('/') {
                return format!("{}/", v.trim_end_matches('/'));
            }
        }
    }
    "/mnt/".into()
}

/// Windows drives in a `/proc/self/mounts` text: drvfs mounts (WSL1, and WSL2's own type name),
/// 9p mounts carrying drvfs (`aname=drvfs`, WSL2), and 9p or virtiofs mounts at
/// `<automount root><letter>`.
pub fn windows_drives(mounts: &str, automount: &str) -> Vec<String> {
    let mut out: Vec<String> = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_source, target, fstype, options) = (f.next()?, f.next()?, f.next()?, f.next()?);
            let target = unescape(target);
            let letter = target
                .strip_prefix(automount)
                .is_some_and(|r| r.len() == 1 && r.chars().all(|c| c.is_ascii_alphabetic()));
            let drvfs = fstype == "drvfs"
                || (fstype == "9p" && options.split([',', ';']).any(|o| o == "aname=drvfs"))
                || (letter && matches!(fstype, "9p" | "virtiofs"));
            drvfs.then_some(target)
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// `/proc/self/mounts` escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The GPU at `root`: WSL2's `/dev/dxg` with `/usr/lib/wsl/{lib,drivers}`, or NVIDIA's native
/// driver (`/dev/nvidiactl` and at least one `/dev/nvidia<N>`) with its libraries.
pub fn detect_gpu(root: &HostRoot, wsl2: bool) -> Option<GpuHost> {
    if wsl2 {
        if !root.exists(plan_wsl::DXG) {
            return None;
        }
        let libraries = [plan_wsl::WSL_LIB, plan_wsl::WSL_DRIVERS]
            .into_iter()
            .filter(|p| root.is_dir(p))
            .map(|p| root.path(p).display().to_string())
            .collect();
        return Some(GpuHost {
            kind: GpuKind::Dxg,
            devices: vec![device(root, plan_wsl::DXG)],
            libraries,
        });
    }
    let numbered: Vec<String> = std::fs::read_dir(root.path("/dev"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let num = n.strip_prefix("nvidia")?;
            (!num.is_empty() && num.chars().all(|c| c.is_ascii_digit()))
                .then(|| format!("/dev/{n}"))
        })
        .collect();
    if !root.exists("/dev/nvidiactl") || numbered.is_empty() {
        return None;
    }
    let mut paths = vec!["/dev/nvidiactl".to_string()];
    paths.extend(numbered);
    for extra in [
        "/dev/nvidia-uvm",
        "/dev/nvidia-uvm-tools",
        "/dev/nvidia-modeset",
    ] {
        if root.exists(extra) {
            paths.push(extra.into());
        }
    }
    // MIG capability nodes (present on MIG-capable setups only).
    for e in std::fs::read_dir(root.path("/dev/nvidia-caps"))
        .into_iter()
        .flatten()
        .flatten()
    {
        paths.push(format!(
            "/dev/nvidia-caps/{}",
            e.file_name().to_string_lossy()
        ));
    }
    paths.sort();
    paths.dedup();
    Some(GpuHost {
        kind: GpuKind::Nvidia,
        devices: paths.iter().map(|p| device(root, p)).collect(),
        libraries: nvidia_libraries(root),
    })
}

/// Where distributions and NVIDIA's installer put the driver's user-space libraries.
const NVIDIA_LIB_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu/nvidia/current",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu/nvidia/current",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/nvidia/lib64",
    "/usr/local/nvidia/lib",
];

/// The driver's libraries (not CUDA's toolkit: that is the workload's business).
fn nvidia_libraries(root: &HostRoot) -> Vec<String> {
    const PREFIXES: &[&str] = &[
        "libcuda.so",
        "libcudadebugger.so",
        "libnvidia-",
        "libnvcuvid.so",
        "libnvoptix.so",
    ];
    let mut out = Vec::new();
    for dir in NVIDIA_LIB_DIRS {
        for e in std::fs::read_dir(root.path(dir))
            .into_iter()
            .flatten()
            .flatten()
        {
            let n = e.file_name().to_string_lossy().into_owned();
            if PREFIXES.iter().any(|p| n.starts_with(p)) {
                out.push(root.path(&format!("{dir}/{n}")).display().to_string());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn device(root: &HostRoot, p: &str) -> GpuDevice {
    let host_path = root.path(p);
    let md = std::fs::metadata(&host_path).ok();
    let chr = md.as_ref().filter(|m| m.file_type().is_char_device());
    GpuDevice {
        path: p.to_string(),
        host_path: host_path.display().to_string(),
        major: chr.map(|m| libc::major(m.rdev()) as u64),
        minor: chr.map(|m| libc::minor(m.rdev()) as u64),
        mode: md.as_ref().map_or(0o666, |m| m.mode() & 0o7777),
        uid: md.as_ref().map_or(0, |m| m.uid()),
        gid: md.as_ref().map_or(0, |m| m.gid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use agentcell_policy::plan::{CompileOptions, PlanError, Status};
    use agentcell_policy::{Host, ParseOptions};

    use crate::host::{CgroupLayout, cgroup_layout_at, describe, systemd_is_init_at};

    fn fixture(name: &str) -> HostRoot {
        HostRoot::recorded(format!(
            "{}/tests/fixtures/hosts/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
    }

    fn compile(host: &Host, best_effort: bool) -> Result<agentcell_policy::Plan, PlanError> {
        let text = agentcell_policy::presets::get("ml-toolchain").unwrap();
        let doc = agentcell_policy::parse_with(text, &ParseOptions::default()).unwrap();
        agentcell_policy::compile(
            &doc,
            host,
            &CompileOptions {
                best_effort,
                ..Default::default()
            },
        )
    }

    fn fields(p: &agentcell_policy::Plan) -> Vec<&str> {
        p.enforcement.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn wsl2_kernel_5_15() {
        let root = fixture("wsl2-5.15");
        let h = describe(&root);
        let w = h.wsl.clone().expect("WSL detected");
        assert_eq!(w.version, 2);
        assert_eq!(h.kernel_release, "5.15.153.1-microsoft-standard-WSL2");
        assert_eq!(h.landlock_abi, Some(1));
        assert!(h.seccomp && !h.ipv6);
        assert_eq!(w.interop_entries, ["/proc/sys/fs/binfmt_misc/WSLInterop"]);
        assert_eq!(w.windows_drives, ["/mnt/c"]);
        assert!(w.init && w.run_wsl && w.wslg && w.dxg && w.wsl_lib && w.usr_lib_wsl && !w.forced);
        assert!(!systemd_is_init_at(&root));
        assert_eq!(cgroup_layout_at(&root), CgroupLayout::Hybrid);
        let g = h.gpu.clone().expect("dxg");
        assert_eq!(g.kind, GpuKind::Dxg);
        assert_eq!(g.devices[0].path, "/dev/dxg");
        // A recorded stand-in is no device: --gpu would be refused, not silently empty.
        assert_eq!(g.devices[0].major, None);
        assert_eq!(g.libraries.len(), 2);
        // ABI 1: hard requirement fails; best effort lists what is lost.
        let e = compile(&h, false).unwrap_err().to_string();
        assert!(
            e.contains("filesystem (truncate)") && e.contains("Refer"),
            "{e}"
        );
        let p = compile(&h, true).unwrap();
        let f = fields(&p);
        for want in [
            "network (Landlock)",
            "filesystem (truncate)",
            "wsl (AF_VSOCK)",
            "wsl (interop)",
            "wsl (Windows drives)",
        ] {
            assert!(f.contains(&want), "{want}: {f:?}");
        }
    }

    #[test]
    fn wsl2_kernel_6_6() {
        let root = fixture("wsl2-6.6");
        let h = describe(&root);
        let w = h.wsl.clone().expect("WSL detected");
        assert_eq!(w.version, 2);
        assert_eq!(h.landlock_abi, Some(3));
        assert_eq!(
            w.interop_entries,
            ["/proc/sys/fs/binfmt_misc/WSLInterop-late"]
        );
        assert_eq!(w.windows_drives, ["/mnt/c", "/mnt/d"]);
        assert!(systemd_is_init_at(&root));
        assert_eq!(cgroup_layout_at(&root), CgroupLayout::V2);
        let p = compile(&h, true).unwrap();
        let f = fields(&p);
        assert!(
            f.contains(&"network (Landlock)") && !f.contains(&"filesystem (truncate)"),
            "{f:?}"
        );
        let weakened: Vec<&str> = p.weakened().map(|e| e.field.as_str()).collect();
        assert!(
            !weakened.iter().any(|w| w.starts_with("wsl")),
            "{weakened:?}"
        );
        assert!(
            compile(&h, false)
                .unwrap_err()
                .to_string()
                .contains("IoctlDev")
        );
    }

    #[test]
    fn wsl2_kernel_6_18() {
        let root = fixture("wsl2-6.18");
        let h = describe(&root);
        let w = h.wsl.clone().expect("WSL detected");
        assert_eq!((w.version, h.landlock_abi), (2, Some(7)));
        assert!(h.ipv6);
        // WSLInterop-late is registered but disabled: not an open door.
        assert_eq!(w.interop_entries, ["/proc/sys/fs/binfmt_misc/WSLInterop"]);
        // /etc/wsl.conf moves the drives.
        assert_eq!(w.windows_drives, ["/windows/c"]);
        assert!(!w.wslg);
        let p = compile(&h, false).expect("fully enforced on 6.18");
        let f = fields(&p);
        assert!(
            !f.contains(&"network (Landlock)") && f.contains(&"wsl (Windows drives)"),
            "{f:?}"
        );
        assert!(
            p.enforcement
                .iter()
                .all(|e| !matches!(e.status, Status::Weakened { .. }))
        );
    }

    #[test]
    fn wsl1_is_detected_and_refused() {
        let h = describe(&fixture("wsl1"));
        let w = h.wsl.clone().expect("WSL detected");
        assert_eq!(w.version, 1);
        assert_eq!((h.landlock_abi, h.seccomp), (None, false));
        assert_eq!(w.windows_drives, ["/mnt/c"]);
        assert!(h.gpu.is_none());
        let e = compile(&h, true).unwrap_err();
        assert!(
            matches!(&e, PlanError::Host { .. }) && e.to_string().contains("WSL1"),
            "{e}"
        );
    }

    #[test]
    fn plain_linux_with_nvidia() {
        let root = fixture("debian-6.18");
        let h = describe(&root);
        assert!(h.wsl.is_none(), "{:?}", h.wsl);
        assert_eq!(h.landlock_abi, Some(7));
        let g = h.gpu.clone().expect("NVIDIA");
        assert_eq!(g.kind, GpuKind::Nvidia);
        let nodes: Vec<&str> = g.devices.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(
            nodes,
            [
                "/dev/nvidia-modeset",
                "/dev/nvidia-uvm",
                "/dev/nvidia-uvm-tools",
                "/dev/nvidia0",
                "/dev/nvidia1",
                "/dev/nvidiactl"
            ]
        );
        let libs: Vec<String> = g
            .libraries
            .iter()
            .map(|l| l.rsplit('/').next().unwrap().to_string())
            .collect();
        assert_eq!(
            libs,
            [
                "libcuda.so.1",
                "libnvidia-ml.so.1",
                "libnvidia-ptxjitcompiler.so.1"
            ]
        );
        let p = compile(&h, false).unwrap();
        assert!(p.wsl.is_none() && !fields(&p).iter().any(|f| f.starts_with("wsl")));
    }

    #[test]
    fn versions_from_kernel_strings() {
        assert_eq!(
            version_of("5.15.153.1-microsoft-standard-WSL2", ""),
            Some(2)
        );
        assert_eq!(version_of("4.19.128-microsoft-standard", ""), Some(2));
        assert_eq!(version_of("4.4.0-19041-Microsoft", ""), Some(1));
        assert_eq!(
            version_of("6.18.44-amd64", "Linux version 6.18.44 (debian)"),
            None
        );
    }

    #[test]
    fn drives_from_mounts() {
        let mounts = "\
none /mnt/wsl tmpfs rw,relatime 0 0
drivers /usr/lib/wsl/drivers 9p ro,dirsync,aname=drivers;fmask=222;dmask=222,mmap,access=client,msize=65536,trans=fd,rfd=5,wfd=5 0 0
C:\\134 /mnt/c 9p rw,noatime,dirsync,aname=drvfs;path=C:\\;uid=1000;gid=1000;symlinkroot=/mnt/,mmap,access=client,msize=65536,trans=fd,rfd=5,wfd=5 0 0
D:\\134 /mnt/d 9p rw,noatime,dirsync,aname=drvfs;path=D:\\;uid=1000;gid=1000,mmap,access=client,msize=65536,trans=fd,rfd=7,wfd=7 0 0
E: /mnt/my\\040drive drvfs rw,noatime 0 0
/dev/sdc / ext4 rw,relatime,discard,errors=remount-ro,data=ordered 0 0
";
        assert_eq!(
            windows_drives(mounts, "/mnt/"),
            ["/mnt/c", "/mnt/d", "/mnt/my drive"]
        );
        assert!(windows_drives("/dev/sda1 /mnt/c ext4 rw 0 0\n", "/mnt/").is_empty());
    }
}
