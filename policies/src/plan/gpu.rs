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
