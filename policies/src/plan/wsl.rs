//! WSL2 hosts: the hardening every sandbox gets there, whatever its policy says.
//!
//! WSL2 is a Linux VM with doors to its Windows host that plain Linux does not have: the
//! interop machinery (a `binfmt_misc` entry that hands Windows executables to `/init`, the
//! `/run/WSL/*_interop` sockets, AF_VSOCK connections to the host), the Windows drives mounted at
//! `/mnt/<letter>`, the WSLg display and audio sockets in `/mnt/wslg`, and the Windows driver
//! store in `/usr/lib/wsl`. The hardening closes each of them with the ordinary mechanisms: masks
//! in the filesystem view (so the runner applies them like any denied path), a masked path in the
//! fresh `/proc`, and the seccomp profile's AF_VSOCK rule.
//!
//! Pure: the host description says what exists and where the WSL host's `/` is (`/`, or a test
//! tree when the hardening is forced on a plain Linux host).

use serde::Serialize;

use super::fs::{Access, FsView, RootSource, is_within};
use super::gpu::insert;
use super::{Enforcement, Status, item};

/// The origin recorded on every view entry the hardening adds.
pub const ORIGIN: &str = "wsl hardening";

/// WSL's init: also the interpreter of the interop `binfmt_misc` entry.
pub const INIT: &str = "/init";
/// The interop server's sockets (`WSL_INTEROP` names one of them).
pub const RUN_WSL: &str = "/run/WSL";
/// Where `binfmt_misc` (and with it the `WSLInterop` entries) is mounted.
pub const BINFMT_MISC: &str = "/proc/sys/fs/binfmt_misc";
/// WSLg's X11, Wayland and PulseAudio sockets.
pub const WSLG: &str = "/mnt/wslg";
/// The Windows driver store and WSL's user-space GPU libraries.
pub const USR_LIB_WSL: &str = "/usr/lib/wsl";
pub const WSL_LIB: &str = "/usr/lib/wsl/lib";
pub const WSL_DRIVERS: &str = "/usr/lib/wsl/drivers";
pub const DXG: &str = "/dev/dxg";

/// What the host description says about WSL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WslHost {
    /// 1 or 2.
    pub version: u8,
    /// Where this WSL host's `/` is on the machine running agentcell: `/` on WSL itself, a test
    /// tree when the hardening is forced on a plain Linux host.
    pub root: String,
    /// The hardening is forced (for tests) on a host that is not WSL.
    pub forced: bool,
    /// Enabled interop `binfmt_misc` entries (`WSLInterop`, `WSLInterop-late`), WSL paths.
    pub interop_entries: Vec<String>,
    /// Windows drives mounted (drvfs, or 9p/virtiofs carrying drvfs), WSL paths (`/mnt/c`).
    pub windows_drives: Vec<String>,
    pub init: bool,
    pub run_wsl: bool,
    pub wslg: bool,
    pub dxg: bool,
    pub wsl_lib: bool,
    /// `/usr/lib/wsl` exists (the driver store and the GPU libraries).
    pub usr_lib_wsl: bool,
}

impl WslHost {
    pub fn interop(&self) -> bool {
        !self.interop_entries.is_empty()
    }

    /// The path on this machine of the WSL path `p`.
    pub fn host_path(&self, p: &str) -> String {
        let root = self.root.trim_end_matches('/');
        format!("{root}{p}")
    }
}

/// What one hardened path became in the view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Hardened {
    /// The path on this machine.
    pub path: String,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// Nothing in the view shows it: nothing to do.
    Absent,
    /// The view would show it: masked (a policy path below it still appears).
    Masked,
    /// Masked in the sandbox's fresh `/proc`.
    ProcMasked,
    /// A policy path names it exactly: the policy grants it.
    GrantedByPolicy,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Absent => "absent from the view",
            Self::Masked => "masked",
            Self::ProcMasked => "masked in /proc",
            Self::GrantedByPolicy => "granted by a policy path",
        }
    }
}

/// The hardening applied to a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WslPlan {
    /// Paths of the sandbox's fresh `/proc` to mask (OCI `maskedPaths`).
    pub proc_masked: Vec<String>,
    /// Interop paths (`/init`, `/run/WSL`, the `binfmt_misc` entries): never reachable.
    pub interop: Vec<Hardened>,
    /// Windows drives, `/mnt/wslg` and `/usr/lib/wsl`: hidden unless a policy path grants them.
    pub grantable: Vec<Hardened>,
}

/// Why WSL1 is refused.
pub const WSL1_REFUSAL: &str = "WSL1 is not supported: its kernel is Microsoft's system-call \
    translation layer, with no Landlock, no seccomp filtering and no namespaces agentcell can \
    rely on; convert the distribution to WSL2 (`wsl --set-version <distro> 2`)";

/// Adds the hardening to `view` (masks as denied entries, origin [`ORIGIN`]) and returns what
/// was done. With an image root (`--rootfs`) none of the WSL host's files is in the view, so only
/// `/proc` is masked.
pub fn harden(view: &mut FsView, wsl: &WslHost) -> WslPlan {
    let mut plan = WslPlan {
        // binfmt_misc is kernel-global: whatever root the hardening is tested against, the
        // sandbox's own /proc must not show the real one.
        proc_masked: vec![BINFMT_MISC.to_string()],
        interop: Vec::new(),
        grantable: Vec::new(),
    };
    let image = matches!(view.root, RootSource::Rootfs { .. });
    let mut interop = vec![INIT.to_string(), RUN_WSL.to_string()];
    if wsl.root.trim_end_matches('/').is_empty() {
        plan.interop.push(Hardened {
            path: BINFMT_MISC.into(),
            outcome: Outcome::ProcMasked,
        });
    } else {
        // A test tree's stand-in for binfmt_misc is an ordinary directory: masked in the view.
        interop.push(BINFMT_MISC.to_string());
    }
    for p in interop {
        let path = wsl.host_path(&p);
        let outcome = if image {
            Outcome::Absent
        } else {
            mask_whatever_the_policy_says(view, &path)
        };
        plan.interop.push(Hardened { path, outcome });
    }
    let mut grantable: Vec<String> = wsl.windows_drives.clone();
    if wsl.wslg {
        grantable.push(WSLG.into());
    }
    if wsl.usr_lib_wsl {
        grantable.push(USR_LIB_WSL.into());
    }
    for p in grantable {
        let path = wsl.host_path(&p);
        let outcome = if image {
            Outcome::Absent
        } else {
            mask_unless_granted(view, &path)
        };
        plan.grantable.push(Hardened { path, outcome });
    }
    plan
}

/// Interop paths: masked wherever the view would show them, even when a policy path names them.
fn mask_whatever_the_policy_says(view: &mut FsView, path: &str) -> Outcome {
    match view.access_of(path) {
        None => Outcome::Absent,
        Some(_) => {
            insert(view, path, Access::Denied, ORIGIN);
            Outcome::Masked
        }
    }
}

/// Drives, WSLg, the driver store: a policy path naming the path itself grants it; a policy
/// path above it (`/`, `/mnt`) or the baseline does not. Policy paths below it still appear
/// (the deepest path wins), so `/mnt/c/src` read-write shows that directory and nothing else of
/// the drive.
fn mask_unless_granted(view: &mut FsView, path: &str) -> Outcome {
    if view
        .entries
        .iter()
        .any(|e| e.path == path && e.access != Access::Denied)
    {
        return Outcome::GrantedByPolicy;
    }
    match view.access_of(path) {
        None | Some(Access::Denied) => Outcome::Absent,
        Some(_) => {
            insert(view, path, Access::Denied, ORIGIN);
            Outcome::Masked
        }
    }
}

/// `path (outcome)` for each item, comma-separated.
fn list(items: &[Hardened]) -> String {
    items
        .iter()
        .map(|h| format!("{} ({})", h.path, h.outcome.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The enforcement entries of the hardening (`policy explain` lists them).
pub fn report(
    wsl: &WslHost,
    plan: &WslPlan,
    vsock_denied: bool,
    seccomp: bool,
    view: &FsView,
) -> Vec<Enforcement> {
    let mut out = Vec::new();
    let forced = if wsl.forced {
        " (forced on a host that is not WSL, for tests)"
    } else {
        ""
    };
    out.push(item(
        "wsl (AF_VSOCK)",
        format!(
            "no AF_VSOCK socket can be created: the Windows host's interop and services are \
             reached over vsock{forced}"
        ),
        &["seccomp: socket(AF_VSOCK, ...) fails with EPERM"],
        match (vsock_denied, seccomp) {
            (true, true) => Status::Enforced,
            (false, _) => Status::Weakened {
                reason: "the seccomp profile has no AF_VSOCK rule".into(),
            },
            (true, false) => Status::Weakened {
                reason: "seccomp is unavailable on this host: AF_VSOCK stays open".into(),
            },
        },
    ));
    out.push(item(
        "wsl (interop)",
        format!(
            "Windows programs cannot be started: {}",
            list(&plan.interop)
        ),
        &[
            "/init and /run/WSL masked wherever the view would show them, even when a policy path names them",
            "binfmt_misc masked in the sandbox's /proc (the interop entry cannot be read, disabled or re-registered)",
            "WSL_INTEROP and the rest of the caller's environment not inherited",
            "binfmt_misc is kernel-global: an MZ executable run inside still starts /init (opened by the kernel at registration), which finds no interop socket and no vsock",
        ],
        Status::Enforced,
    ));
    let drives: Vec<Hardened> = plan
        .grantable
        .iter()
        .filter(|h| {
            wsl.windows_drives
                .iter()
                .any(|d| wsl.host_path(d) == h.path)
        })
        .cloned()
        .collect();
    let below: Vec<String> = view
        .entries
        .iter()
        .filter(|e| e.access != Access::Denied)
        .filter(|e| {
            drives
                .iter()
                .any(|d| e.path != d.path && is_within(&e.path, &d.path))
        })
        .map(|e| e.path.clone())
        .collect();
    out.push(item(
        "wsl (Windows drives)",
        if drives.is_empty() {
            "no Windows drive is mounted".to_string()
        } else {
            format!(
                "invisible unless a policy path grants them: {}{}",
                list(&drives),
                if below.is_empty() {
                    String::new()
                } else {
                    format!("; granted below a drive: {}", below.join(", "))
                }
            )
        },
        &["empty mode-000 tmpfs over each drive the view would otherwise show (policy paths below it still appear)"],
        Status::Enforced,
    ));
    let rest: Vec<Hardened> = plan
        .grantable
        .iter()
        .filter(|h| !drives.contains(h))
        .cloned()
        .collect();
    if !rest.is_empty() {
        out.push(item(
            "wsl (WSLg, driver store)",
            format!(
                "hidden unless a policy path grants them (--gpu exposes /usr/lib/wsl/lib and /usr/lib/wsl/drivers): {}",
                list(&rest)
            ),
            &["/mnt/wslg holds the display and audio sockets (input injection, screen capture); /usr/lib/wsl the Windows driver store"],
            Status::Enforced,
        ));
    }
    out
}
