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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::{ParseOptions, parse_with};
    use crate::plan::{CompileOptions, Host, Plan, PlanError, compile};

    fn wsl2() -> WslHost {
        WslHost {
            version: 2,
            root: "/".into(),
            forced: false,
            interop_entries: vec!["/proc/sys/fs/binfmt_misc/WSLInterop".into()],
            windows_drives: vec!["/mnt/c".into(), "/mnt/d".into()],
            init: true,
            run_wsl: true,
            wslg: true,
            dxg: true,
            wsl_lib: true,
            usr_lib_wsl: true,
        }
    }

    fn host(wsl: WslHost) -> Host {
        Host {
            wsl: Some(wsl),
            ..Host::reference()
        }
    }

    fn plan(policy: &str, host: &Host, opts: &CompileOptions) -> Result<Plan, PlanError> {
        let doc = parse_with(policy, &ParseOptions::default()).unwrap();
        compile(&doc, host, opts)
    }

    fn fs(rw: &[&str], ro: &[&str]) -> String {
        serde_json::json!({"version": "1.0.0", "filesystem": {"readwritePaths": rw, "readonlyPaths": ro}})
            .to_string()
    }

    fn outcome(items: &[Hardened], path: &str) -> Outcome {
        items.iter().find(|h| h.path == path).unwrap().outcome
    }

    #[test]
    fn baseline_view_needs_no_masks_but_proc_and_the_driver_store() {
        let p = plan(
            &fs(&["/work"], &[]),
            &host(wsl2()),
            &CompileOptions::default(),
        )
        .unwrap();
        let w = p.wsl.as_ref().unwrap();
        assert_eq!(w.proc_masked, [BINFMT_MISC]);
        assert_eq!(outcome(&w.interop, "/init"), Outcome::Absent);
        assert_eq!(outcome(&w.interop, "/run/WSL"), Outcome::Absent);
        assert_eq!(outcome(&w.interop, BINFMT_MISC), Outcome::ProcMasked);
        assert_eq!(outcome(&w.grantable, "/mnt/c"), Outcome::Absent);
        assert_eq!(outcome(&w.grantable, "/mnt/wslg"), Outcome::Absent);
        // The baseline binds /usr/lib, which holds the Windows driver store on WSL2.
        assert_eq!(outcome(&w.grantable, "/usr/lib/wsl"), Outcome::Masked);
        assert_eq!(
            p.filesystem.access_of("/usr/lib/wsl/lib/libcuda.so"),
            Some(Access::Denied)
        );
        assert_eq!(
            p.filesystem.access_of("/usr/lib/x86_64-linux-gnu"),
            Some(Access::ReadOnly)
        );
        // Hardening masks are not counted as the policy's own paths.
        let denied = p
            .enforcement
            .iter()
            .find(|e| e.field == "filesystem.deniedPaths")
            .unwrap();
        assert!(
            denied.requirement.starts_with("0 path(s)"),
            "{}",
            denied.requirement
        );
    }

    #[test]
    fn a_policy_granting_the_root_still_sees_no_drive_and_no_interop() {
        let p = plan(&fs(&[], &["/"]), &host(wsl2()), &CompileOptions::default()).unwrap();
        let v = &p.filesystem;
        for hidden in [
            "/init",
            "/run/WSL/1_interop",
            "/mnt/c/Users",
            "/mnt/d",
            "/mnt/wslg/PulseServer",
            "/usr/lib/wsl/drivers",
        ] {
            assert_eq!(v.access_of(hidden), Some(Access::Denied), "{hidden}");
        }
        assert_eq!(v.access_of("/mnt/wsl/resolv.conf"), Some(Access::ReadOnly));
        assert_eq!(v.access_of("/home/me"), Some(Access::ReadOnly));
        let mut masks: Vec<&str> = v
            .entries
            .iter()
            .filter(|e| e.origins == [ORIGIN])
            .map(|e| e.path.as_str())
            .collect();
        masks.sort();
        assert_eq!(
            masks,
            [
                "/init",
                "/mnt/c",
                "/mnt/d",
                "/mnt/wslg",
                "/run/WSL",
                "/usr/lib/wsl"
            ]
        );
    }

    #[test]
    fn only_a_policy_path_opens_a_drive() {
        // The drive itself: granted as asked.
        let p = plan(
            &fs(&["/mnt/c"], &[]),
            &host(wsl2()),
            &CompileOptions::default(),
        )
        .unwrap();
        assert_eq!(
            outcome(&p.wsl.as_ref().unwrap().grantable, "/mnt/c"),
            Outcome::GrantedByPolicy
        );
        assert_eq!(p.filesystem.access_of("/mnt/c/x"), Some(Access::ReadWrite));
        // A directory on it, with a broader grant above: only that directory.
        let p = plan(
            &fs(&["/mnt/c/src"], &["/mnt"]),
            &host(wsl2()),
            &CompileOptions::default(),
        )
        .unwrap();
        assert_eq!(
            outcome(&p.wsl.as_ref().unwrap().grantable, "/mnt/c"),
            Outcome::Masked
        );
        assert_eq!(
            p.filesystem.access_of("/mnt/c/src/a.py"),
            Some(Access::ReadWrite)
        );
        assert_eq!(p.filesystem.access_of("/mnt/c/Users"), Some(Access::Denied));
        assert_eq!(p.filesystem.access_of("/mnt/d"), Some(Access::Denied));
        let drives = p
            .enforcement
            .iter()
            .find(|e| e.field == "wsl (Windows drives)")
            .unwrap();
        assert!(
            drives
                .requirement
                .contains("granted below a drive: /mnt/c/src"),
            "{}",
            drives.requirement
        );
    }

    #[test]
    fn interop_paths_stay_masked_even_when_a_policy_names_them() {
        let p = plan(
            &fs(&["/init", "/run/WSL"], &[]),
            &host(wsl2()),
            &CompileOptions::default(),
        )
        .unwrap();
        assert_eq!(p.filesystem.access_of("/init"), Some(Access::Denied));
        assert_eq!(
            p.filesystem.access_of("/run/WSL/8_interop"),
            Some(Access::Denied)
        );
    }

    #[test]
    fn a_test_root_masks_its_stand_ins_and_the_real_proc() {
        let w = WslHost {
            root: "/var/tmp/fake/".into(),
            forced: true,
            ..wsl2()
        };
        let p = plan(
            &fs(&[], &["/var/tmp/fake"]),
            &host(w),
            &CompileOptions::default(),
        )
        .unwrap();
        let v = &p.filesystem;
        for hidden in [
            "/var/tmp/fake/init",
            "/var/tmp/fake/mnt/c/x",
            "/var/tmp/fake/proc/sys/fs/binfmt_misc/WSLInterop",
            "/var/tmp/fake/run/WSL",
        ] {
            assert_eq!(v.access_of(hidden), Some(Access::Denied), "{hidden}");
        }
        assert_eq!(p.wsl.as_ref().unwrap().proc_masked, [BINFMT_MISC]);
        let vsock = p
            .enforcement
            .iter()
            .find(|e| e.field == "wsl (AF_VSOCK)")
            .unwrap();
        assert!(
            vsock.requirement.contains("forced"),
            "{}",
            vsock.requirement
        );
    }

    #[test]
    fn an_image_root_holds_none_of_the_hosts_files() {
        let opts = CompileOptions {
            rootfs: Some("/var/lib/images/x".into()),
            ..Default::default()
        };
        let p = plan(&fs(&[], &["/"]), &host(wsl2()), &opts).unwrap();
        let w = p.wsl.as_ref().unwrap();
        assert!(
            w.interop
                .iter()
                .all(|h| matches!(h.outcome, Outcome::Absent | Outcome::ProcMasked))
        );
        assert!(w.grantable.iter().all(|h| h.outcome == Outcome::Absent));
        assert_eq!(w.proc_masked, [BINFMT_MISC]);
    }

    #[test]
    fn hardening_is_listed_and_vsock_rests_on_seccomp() {
        let p = plan(&fs(&[], &[]), &host(wsl2()), &CompileOptions::default()).unwrap();
        let fields: Vec<&str> = p.enforcement.iter().map(|e| e.field.as_str()).collect();
        for f in [
            "wsl (AF_VSOCK)",
            "wsl (interop)",
            "wsl (Windows drives)",
            "wsl (WSLg, driver store)",
        ] {
            assert!(fields.contains(&f), "{f}: {fields:?}");
        }
        assert!(crate::plan::seccomp::denies_socket_family(
            &p.seccomp,
            crate::plan::seccomp::AF_VSOCK
        ));
        let no_seccomp = Host {
            seccomp: false,
            ..host(wsl2())
        };
        let e = plan(&fs(&[], &[]), &no_seccomp, &CompileOptions::default()).unwrap_err();
        assert!(
            e.to_string()
                .contains("wsl (AF_VSOCK): seccomp is unavailable"),
            "{e}"
        );
        // A plain Linux host gets none of it.
        let p = plan(
            &fs(&[], &[]),
            &Host::reference(),
            &CompileOptions::default(),
        )
        .unwrap();
        assert!(p.wsl.is_none());
        assert!(!p.enforcement.iter().any(|e| e.field.starts_with("wsl")));
        assert!(!p.filesystem.entries.iter().any(|e| e.origins == [ORIGIN]));
    }

    #[test]
    fn wsl1_is_refused_even_with_best_effort() {
        let w = WslHost {
            version: 1,
            ..wsl2()
        };
        let opts = CompileOptions {
            best_effort: true,
            ..Default::default()
        };
        let e = plan(&fs(&[], &[]), &host(w), &opts).unwrap_err();
        assert!(
            matches!(&e, PlanError::Host { field, .. } if field == "host"),
            "{e}"
        );
        assert!(e.to_string().contains("WSL1 is not supported"), "{e}");
    }
}
