//! Landlock rules derived from the filesystem view: allow exactly what the view allows.
//!
//! Landlock grants are additive down a hierarchy, so it cannot express "read-only inside
//! read-write" or "denied inside allowed"; those come from the mounts (read-only binds, masks),
//! and Landlock bounds everything else: a path outside every rule is inaccessible even if a
//! mount were to expose it.

use serde::Serialize;

use super::fs::{Access, FsView, RootSource};

/// The ABI agentcell asks for: 6 adds scoping (abstract UNIX sockets, signals) to ABI 5's
/// device ioctl control, ABI 3's truncate and ABI 2's refer.
pub const REQUESTED_ABI: u32 = 6;

/// A filesystem right, named as in the kernel's `LANDLOCK_ACCESS_FS_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FsRight {
    Execute,
    WriteFile,
    ReadFile,
    ReadDir,
    RemoveDir,
    RemoveFile,
    MakeChar,
    MakeDir,
    MakeReg,
    MakeSock,
    MakeFifo,
    MakeBlock,
    MakeSym,
    Refer,
    Truncate,
    IoctlDev,
}

impl FsRight {
    /// The first ABI that knows this right.
    pub fn abi(self) -> u32 {
        match self {
            Self::Refer => 2,
            Self::Truncate => 3,
            Self::IoctlDev => 5,
            _ => 1,
        }
    }
    pub const ALL: [FsRight; 16] = [
        Self::Execute,
        Self::WriteFile,
        Self::ReadFile,
        Self::ReadDir,
        Self::RemoveDir,
        Self::RemoveFile,
        Self::MakeChar,
        Self::MakeDir,
        Self::MakeReg,
        Self::MakeSock,
        Self::MakeFifo,
        Self::MakeBlock,
        Self::MakeSym,
        Self::Refer,
        Self::Truncate,
        Self::IoctlDev,
    ];
    pub const READ: [FsRight; 3] = [Self::Execute, Self::ReadFile, Self::ReadDir];
}

/// A Landlock scope (ABI 6): what a sandboxed process may not reach outside its domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    AbstractUnixSocket,
    Signal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PathRule {
    pub path: String,
    pub rights: Vec<FsRight>,
    /// Where the rule comes from (a JSON path, `baseline` or `runtime`).
    pub origin: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LandlockPlan {
    pub requested_abi: u32,
    /// Rights the ruleset handles (denied unless a rule grants them).
    pub handled: Vec<FsRight>,
    pub rules: Vec<PathRule>,
    pub scopes: Vec<Scope>,
    /// Device nodes the workload may read, write and ioctl: [`DEV_NODES`], then `--gpu`'s.
    pub devices: Vec<String>,
    /// Network rules (ABI 4) are not used: egress is fenced in the network namespace, and TCP
    /// port rules would also cut the workload's own loopback services.
    pub network_rules: bool,
}

/// Device nodes a workload needs from the fresh `/dev`.
pub const DEV_NODES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/pts",
    "/dev/ptmx",
    "/dev/shm",
];

pub fn build(view: &FsView) -> LandlockPlan {
    let read = || FsRight::READ.to_vec();
    let all = || FsRight::ALL.to_vec();
    let mut rules = Vec::new();
    match &view.root {
        RootSource::HostBaseline => {
            for b in &view.baseline {
                rules.push(PathRule {
                    path: b.clone(),
                    rights: read(),
                    origin: "baseline".into(),
                });
            }
        }
        RootSource::Rootfs { .. } => {
            rules.push(PathRule {
                path: "/".into(),
                rights: read(),
                origin: "rootfs".into(),
            });
        }
    }
    rules.push(PathRule {
        path: "/proc".into(),
        rights: vec![FsRight::ReadFile, FsRight::ReadDir, FsRight::WriteFile],
        origin: "baseline".into(),
    });
    rules.push(PathRule {
        path: "/tmp".into(),
        rights: all(),
        origin: "baseline".into(),
    });
    for d in DEV_NODES {
        let mut rights = device_rights();
        if matches!(*d, "/dev/pts" | "/dev/shm") {
            rights.extend([FsRight::ReadDir, FsRight::MakeReg, FsRight::RemoveFile]);
        }
        rights.sort();
        rules.push(PathRule {
            path: (*d).into(),
            rights,
            origin: "baseline".into(),
        });
    }
    for e in &view.entries {
        let rights = match e.access {
            Access::ReadWrite => all(),
            Access::ReadOnly => read(),
            Access::Denied => continue,
        };
        rules.push(PathRule {
            path: e.path.clone(),
            rights,
            origin: e.origins.join(", "),
        });
    }
    LandlockPlan {
        requested_abi: REQUESTED_ABI,
        handled: FsRight::ALL.to_vec(),
        rules,
        scopes: vec![Scope::AbstractUnixSocket, Scope::Signal],
        devices: DEV_NODES.iter().map(|d| d.to_string()).collect(),
        network_rules: false,
    }
}

/// The rights a device node gets: read, write, ioctl, truncate (opening with `O_TRUNC`).
pub fn device_rights() -> Vec<FsRight> {
    vec![
        FsRight::WriteFile,
        FsRight::ReadFile,
        FsRight::Truncate,
        FsRight::IoctlDev,
    ]
}

/// Adds a device node (`--gpu`) to `plan`: a rule with [`device_rights`] and an entry in
/// `devices`, which the runner hands to Landlock.
pub fn add_device(plan: &mut LandlockPlan, path: &str, origin: &str) {
    if plan.devices.iter().any(|d| d == path) {
        return;
    }
    plan.devices.push(path.to_string());
    plan.rules.push(PathRule {
        path: path.to_string(),
        rights: device_rights(),
        origin: origin.to_string(),
    });
}

/// What a kernel with Landlock ABI `abi` (None = no Landlock) cannot enforce of `plan`.
pub fn missing_on(plan: &LandlockPlan, abi: Option<u32>) -> Vec<String> {
    let Some(abi) = abi else {
        return vec![
            "Landlock is unavailable: no Landlock rule is enforced (mounts still confine the view)"
                .into(),
        ];
    };
    let mut out = Vec::new();
    for r in &plan.handled {
        if r.abi() > abi {
            out.push(format!(
                "Landlock ABI {abi} lacks the {r:?} right (needs ABI {})",
                r.abi()
            ));
        }
    }
    if abi < 6 && !plan.scopes.is_empty() {
        out.push(format!(
            "Landlock ABI {abi} lacks scoping of abstract UNIX sockets and signals (needs ABI 6)"
        ));
    }
    out
}
