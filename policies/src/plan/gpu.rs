//! `--gpu`: the device nodes and user-space driver files a GPU workload needs, and nothing else.
//!
//! WSL2 paravirtualises GPUs through `/dev/dxg`; its user-space side lives in `/usr/lib/wsl/lib`
//! (libdxcore, libcuda's WSL stub) and loads the vendor's user-mode driver from the Windows driver
//! store mounted at `/usr/lib/wsl/drivers`. Native Linux with NVIDIA's driver has `/dev/nvidia*`
//! nodes and the driver's libraries (usually already inside the read-only baseline). The planner
//! only adds what the host description lists; the device nodes are created by the runtime with
//! the host's major:minor and a cgroup rule for exactly those numbers.

use serde::Serialize;

use super::fs::{Access, FsEntry, FsView, depth, is_within};

/// The origin recorded on every view entry and Landlock rule `--gpu` adds.
pub const ORIGIN: &str = "--gpu";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum GpuKind {
    /// WSL2's paravirtualised GPU (`/dev/dxg`, DirectX kernel driver).
    Dxg,
    /// NVIDIA's native Linux driver (`/dev/nvidia*`).
    Nvidia,
}

impl GpuKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dxg => "WSL2 /dev/dxg",
            Self::Nvidia => "NVIDIA",
        }
    }
}

/// One GPU device node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GpuDevice {
    /// Where the node appears in the sandbox (`/dev/dxg`, `/dev/nvidia0`).
    pub path: String,
    /// Where it is on the machine running agentcell (the same path, except under a test root).
    pub host_path: String,
    /// Character device numbers; `None` when the path is not a character device (a recorded
    /// host description, or something odd on the host), and then `--gpu` refuses.
    pub major: Option<u64>,
    pub minor: Option<u64>,
    /// Permission bits, owner and group of the host node, copied to the sandbox's node.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// What the host offers for GPU work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GpuHost {
    pub kind: GpuKind,
    pub devices: Vec<GpuDevice>,
    /// Driver directories or files the workload reads (host paths, seen at the same path).
    pub libraries: Vec<String>,
}

/// What `--gpu` adds to a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GpuPlan {
    pub kind: GpuKind,
    /// Device nodes created in the sandbox's `/dev` (read, write, ioctl).
    pub devices: Vec<GpuDevice>,
    /// Library paths added to the view read-only.
    pub added_read_only: Vec<String>,
    /// Library paths already readable in the view (the baseline or the policy): nothing added.
    pub already_visible: Vec<String>,
    /// Library paths the policy denies: left denied.
    pub denied_by_policy: Vec<String>,
}

/// Why `--gpu` cannot be honoured (the run is refused: a GPU flag never silently does nothing).
pub fn unavailable_reason(host: Option<&GpuHost>, rootfs: bool) -> Option<String> {
    let Some(g) = host else {
        return Some(
            "no GPU on this host: neither /dev/dxg (WSL2) nor NVIDIA's /dev/nvidiactl with a \
             /dev/nvidia<N> node (native Linux) exists; nothing was exposed"
                .into(),
        );
    };
    if rootfs {
        return Some(
            "the host's GPU driver libraries cannot be placed inside an image root (--rootfs); \
             run without --rootfs or bring the driver in the image"
                .into(),
        );
    }
    let bad: Vec<&str> = g
        .devices
        .iter()
        .filter(|d| d.major.is_none() || d.minor.is_none())
        .map(|d| d.host_path.as_str())
        .collect();
    if !bad.is_empty() {
        return Some(format!("{} is not a character device", bad.join(", ")));
    }
    if g.devices.is_empty() {
        return Some(format!("{} GPU without device nodes", g.kind.as_str()));
    }
    None
}

/// Adds the GPU's library paths to `view` and returns the plan. Call only when
/// [`unavailable_reason`] is `None`, and after the WSL hardening: a library under one of its
/// masks (`/usr/lib/wsl`) is exactly what `--gpu` exists to expose, so it gets its own read-only
/// entry, deeper than the mask. Otherwise the policy decides: a library it denies stays denied,
/// one it (or the baseline) already shows gets nothing more.
pub fn apply(view: &mut FsView, g: &GpuHost) -> GpuPlan {
    let mut plan = GpuPlan {
        kind: g.kind,
        devices: g.devices.clone(),
        added_read_only: Vec::new(),
        already_visible: Vec::new(),
        denied_by_policy: Vec::new(),
    };
    for lib in &g.libraries {
        let deepest = view
            .entries
            .iter()
            .rev()
            .find(|e| is_within(lib, &e.path))
            .map(|e| (e.access, e.origins.iter().all(|o| o == super::wsl::ORIGIN)));
        match (deepest, view.access_of(lib)) {
            (Some((Access::Denied, false)), _) => plan.denied_by_policy.push(lib.clone()),
            (Some((Access::Denied, true)), _) | (None, None) => {
                plan.added_read_only.push(lib.clone());
                insert(view, lib, Access::ReadOnly, ORIGIN);
            }
            _ => plan.already_visible.push(lib.clone()),
        }
    }
    plan
}

/// Adds `path` to the view with `access`, merging with an entry at the same path (the stricter
/// access wins, as for the policy's own lists), keeping the view ordered shallow to deep.
pub(crate) fn insert(view: &mut FsView, path: &str, access: Access, origin: &str) {
    if let Some(e) = view.entries.iter_mut().find(|e| e.path == path) {
        e.access = e.access.max(access);
        if !e.origins.iter().any(|o| o == origin) {
            e.origins.push(origin.to_string());
        }
        return;
    }
    let d = depth(path);
    // After every entry of the same or lower depth: the order stays shallow to deep.
    let at = view
        .entries
        .iter()
        .position(|e| depth(&e.path) > d)
        .unwrap_or(view.entries.len());
    view.entries.insert(
        at,
        FsEntry {
            path: path.to_string(),
            access,
            origins: vec![origin.to_string()],
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::{ParseOptions, parse_with};
    use crate::plan::wsl::WslHost;
    use crate::plan::{CompileOptions, Host, Plan, PlanError, compile};

    fn dev(path: &str, major: u64, minor: u64) -> GpuDevice {
        GpuDevice {
            path: path.into(),
            host_path: path.into(),
            major: Some(major),
            minor: Some(minor),
            mode: 0o666,
            uid: 0,
            gid: 0,
        }
    }

    fn wsl_gpu_host() -> Host {
        Host {
            wsl: Some(WslHost {
                version: 2,
                root: "/".into(),
                forced: false,
                interop_entries: vec![],
                windows_drives: vec!["/mnt/c".into()],
                init: true,
                run_wsl: true,
                wslg: false,
                dxg: true,
                wsl_lib: true,
                usr_lib_wsl: true,
            }),
            gpu: Some(GpuHost {
                kind: GpuKind::Dxg,
                devices: vec![dev("/dev/dxg", 10, 125)],
                libraries: vec!["/usr/lib/wsl/lib".into(), "/usr/lib/wsl/drivers".into()],
            }),
            ..Host::reference()
        }
    }

    fn nvidia_host() -> Host {
        Host {
            gpu: Some(GpuHost {
                kind: GpuKind::Nvidia,
                devices: vec![dev("/dev/nvidiactl", 195, 255), dev("/dev/nvidia0", 195, 0)],
                libraries: vec![
                    "/usr/lib/x86_64-linux-gnu/libcuda.so.1".into(),
                    "/usr/local/nvidia/lib64/libnvidia-ml.so.1".into(),
                ],
            }),
            ..Host::reference()
        }
    }

    const POLICY: &str = r#"{"version":"1.0.0","filesystem":{"readwritePaths":["/work"],"deniedPaths":["/work/.env"]}}"#;

    fn plan(host: &Host, gpu: bool) -> Result<Plan, PlanError> {
        let doc = parse_with(POLICY, &ParseOptions::default()).unwrap();
        compile(
            &doc,
            host,
            &CompileOptions {
                gpu,
                ..Default::default()
            },
        )
    }

    #[test]
    fn without_a_gpu_the_flag_is_refused() {
        let e = plan(&Host::reference(), true).unwrap_err();
        assert!(
            matches!(&e, PlanError::Host { field, .. } if field == "--gpu"),
            "{e}"
        );
        assert!(e.to_string().contains("no GPU on this host"), "{e}");
        // A recorded host's stand-in file is not a device: refused, never a silent no-op.
        let mut h = wsl_gpu_host();
        h.gpu.as_mut().unwrap().devices[0].major = None;
        let e = plan(&h, true).unwrap_err();
        assert!(
            e.to_string().contains("/dev/dxg is not a character device"),
            "{e}"
        );
        let doc = parse_with(POLICY, &ParseOptions::default()).unwrap();
        let opts = CompileOptions {
            gpu: true,
            rootfs: Some("/img".into()),
            ..Default::default()
        };
        assert!(
            compile(&doc, &wsl_gpu_host(), &opts)
                .unwrap_err()
                .to_string()
                .contains("--rootfs")
        );
        // Without the flag a GPU host plans as before.
        assert!(plan(&wsl_gpu_host(), false).unwrap().gpu.is_none());
    }

    /// What --gpu adds on WSL2: the node and the two library trees below the driver-store mask.
    #[test]
    fn on_wsl2_only_dxg_and_its_libraries_are_added() {
        let without = plan(&wsl_gpu_host(), false).unwrap();
        let with = plan(&wsl_gpu_host(), true).unwrap();
        assert_eq!(
            without
                .filesystem
                .access_of("/usr/lib/wsl/lib/libcuda.so.1"),
            Some(Access::Denied)
        );
        assert_eq!(
            with.filesystem.access_of("/usr/lib/wsl/lib/libcuda.so.1"),
            Some(Access::ReadOnly)
        );
        assert_eq!(
            with.filesystem
                .access_of("/usr/lib/wsl/drivers/nv.inf/x.so"),
            Some(Access::ReadOnly)
        );
        assert_eq!(
            with.filesystem.access_of("/usr/lib/wsl/other"),
            Some(Access::Denied)
        );
        assert_eq!(with.filesystem.access_of("/mnt/c"), None);
        let g = with.gpu.as_ref().unwrap();
        assert_eq!(
            g.added_read_only,
            ["/usr/lib/wsl/lib", "/usr/lib/wsl/drivers"]
        );
        assert_nothing_else_widened(
            &without,
            &with,
            &["/usr/lib/wsl/lib", "/usr/lib/wsl/drivers"],
            &["/dev/dxg"],
        );
    }

    #[test]
    fn on_native_linux_nodes_and_only_the_libraries_outside_the_baseline() {
        let without = plan(&nvidia_host(), false).unwrap();
        let with = plan(&nvidia_host(), true).unwrap();
        let g = with.gpu.as_ref().unwrap();
        assert_eq!(
            g.already_visible,
            ["/usr/lib/x86_64-linux-gnu/libcuda.so.1"]
        );
        assert_eq!(
            g.added_read_only,
            ["/usr/local/nvidia/lib64/libnvidia-ml.so.1"]
        );
        assert_nothing_else_widened(
            &without,
            &with,
            &["/usr/local/nvidia/lib64/libnvidia-ml.so.1"],
            &["/dev/nvidiactl", "/dev/nvidia0"],
        );
        let e = with
            .enforcement
            .iter()
            .find(|e| e.field == "--gpu")
            .unwrap();
        assert!(
            e.requirement
                .contains("/dev/nvidiactl, /dev/nvidia0 usable"),
            "{}",
            e.requirement
        );
    }

    #[test]
    fn a_library_the_policy_denies_stays_denied() {
        let doc = parse_with(
            r#"{"version":"1.0.0","filesystem":{"deniedPaths":["/usr/local/nvidia"]}}"#,
            &ParseOptions::default(),
        )
        .unwrap();
        let p = compile(
            &doc,
            &nvidia_host(),
            &CompileOptions {
                gpu: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            p.gpu.as_ref().unwrap().denied_by_policy,
            ["/usr/local/nvidia/lib64/libnvidia-ml.so.1"]
        );
        assert_eq!(
            p.filesystem
                .access_of("/usr/local/nvidia/lib64/libnvidia-ml.so.1"),
            Some(Access::Denied)
        );
    }

    /// `with` differs from `without` by exactly `libs` (read-only view entries and Landlock read
    /// rules) and `devices` (Landlock device rules); seccomp, network and process are identical.
    fn assert_nothing_else_widened(without: &Plan, with: &Plan, libs: &[&str], devices: &[&str]) {
        let added: Vec<_> = with
            .filesystem
            .entries
            .iter()
            .filter(|e| !without.filesystem.entries.contains(e))
            .collect();
        assert_eq!(added.len(), libs.len(), "{added:?}");
        for e in &added {
            assert!(
                libs.contains(&e.path.as_str())
                    && e.access == Access::ReadOnly
                    && e.origins == [ORIGIN],
                "{e:?}"
            );
        }
        assert!(
            without
                .filesystem
                .entries
                .iter()
                .all(|e| with.filesystem.entries.contains(e))
        );
        let new_rules: Vec<_> = with
            .landlock
            .rules
            .iter()
            .filter(|r| !without.landlock.rules.contains(r))
            .collect();
        assert_eq!(new_rules.len(), libs.len() + devices.len(), "{new_rules:?}");
        for r in &new_rules {
            if devices.contains(&r.path.as_str()) {
                assert_eq!(r.rights, crate::plan::landlock::device_rights());
            } else {
                assert!(libs.contains(&r.path.as_str()));
                assert_eq!(r.rights, crate::plan::landlock::FsRight::READ.to_vec());
            }
        }
        let mut devs = without.landlock.devices.clone();
        devs.extend(devices.iter().map(|d| d.to_string()));
        assert_eq!(with.landlock.devices, devs);
        assert_eq!(with.landlock.handled, without.landlock.handled);
        assert_eq!(with.seccomp, without.seccomp);
        assert_eq!(with.network, without.network);
        assert_eq!(with.process, without.process);
    }
}
