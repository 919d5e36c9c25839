//! A compiled plan as what the micro-VM needs: the guest's [`ContainerSpec`] and the host-side
//! view qemu exports over 9p.
//!
//! The view is built on the HOST, in qemu's own private mount namespace, as two trees: `ro/`
//! (exported `readonly=on`) and `rw/`. Each granted path is bind-mounted at its sandbox path in
//! the tree of its access; denied files and directories are masked there too (`/dev/null`, an
//! empty tmpfs). So qemu, the only process that reads host files for the guest, can reach
//! exactly what the policy grants: an unlisted or denied path is never exported, and a
//! read-only path cannot be written even by a compromised guest kernel. Two shares also keep
//! the VM within `microvm`'s handful of virtio-mmio slots whatever the policy's size. A policy
//! path of a host view is exported from the object `prepare` opened for it (its handle, see
//! `vmm`), never by its name, and the ancestors `prepare` pins inside a read-write grant are
//! mount points of the `rw` tree and of the guest's view.
//!
//! The guest then builds the same view again for the container (root = tmpfs, binds of share
//! subpaths, masks, fresh /proc /dev /tmp) and adds Landlock and seccomp, as the container tier
//! does on the host.

use std::path::{Path, PathBuf};

use agentcell_policy::Plan;
use agentcell_policy::plan::RootSource;
use agentcell_vmproto::{
    ContainerSpec, LandlockSpec, Mount, MountSource, ProcessSpec, Root as GuestRoot,
};

use crate::sandbox::prepare::{Mount as Prepared, Prepared as PreparedView};
use crate::sandbox::resolve::Handle;

pub const RO_TAG: &str = "ro";
pub const RW_TAG: &str = "rw";

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{field}: {message}")]
    Field { field: String, message: String },
    #[error("seccomp: {0}")]
    Seccomp(#[from] super::seccomp::SeccompError),
}

/// One step of building the host view (paths relative to the view root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewOp {
    /// Bind `source` at `target` (created first: a directory, or an empty file when `dir` is
    /// false), read-only or not. With a `handle` (a policy path of a host view, opened once by
    /// `prepare`), what is mounted is a copy of that object's mount (`open_tree`), never what
    /// `source` names by then: `source` is only for reports.
    Bind {
        source: PathBuf,
        target: PathBuf,
        readonly: bool,
        dir: bool,
        handle: Option<Handle>,
    },
    /// `/dev/null` over an existing file.
    MaskFile { target: PathBuf },
    /// An empty tmpfs (mode 000, or 0111 when allowed paths lie below) over an existing
    /// directory.
    MaskDir { target: PathBuf, has_children: bool },
}

/// What a plan needs from the VM.
#[derive(Debug, Clone)]
pub struct GuestPlan {
    pub spec: ContainerSpec,
    /// Steps building the host view, in order.
    pub view: Vec<ViewOp>,
    /// Whether a `rw` tree is needed (anything writable).
    pub needs_rw: bool,
}

/// Everything the spec depends on besides the plan.
pub struct SpecInput<'a> {
    pub plan: &'a Plan,
    pub prepared: &'a PreparedView,
    pub id: &'a str,
    pub args: Vec<String>,
    pub uid: u32,
    pub gid: u32,
    /// The guest's Landlock ABI (0: none), to decide what the guest can enforce.
    pub guest_landlock_abi: i32,
}

fn rel(p: &Path) -> PathBuf {
    p.strip_prefix("/").unwrap_or(p).to_path_buf()
}

fn size_bytes(s: &str) -> u64 {
    let s = s.trim();
    let (num, mul) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&s[..s.len() - 1], 1 << 20),
        Some('g' | 'G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().unwrap_or(0) * mul
}

/// Landlock rights the plan handles that a guest at `abi` cannot, and whether each is covered
/// by another layer of the VM tier (so the run can go on with a warning).
pub fn landlock_gaps(plan: &Plan, abi: i32) -> Vec<(String, bool)> {
    let abi = abi.max(0) as u32;
    let mut out: Vec<(String, bool)> = plan
        .landlock
        .handled
        .iter()
        .filter(|r| r.abi() > abi)
        // truncate: read-only paths are read-only mounts, on the host too; ioctl_dev: the
        // guest's /dev is its own minimal one, with nothing of the host behind it.
        .map(|r| (format!("{r:?}"), true))
        .collect();
    if !plan.landlock.scopes.is_empty() && abi < 6 {
        // Scopes keep the workload from signalling or reaching abstract sockets of processes
        // outside its sandbox; in the VM the only such process is the agent, in another PID
        // namespace (signals) and network namespace (abstract sockets are per namespace).
        out.push(("scopes".into(), true));
    }
    if abi == 0 {
        out.push(("landlock".into(), false));
    }
    out
}

/// The guest spec and host view of `input.plan`.
pub fn build(input: &SpecInput) -> Result<GuestPlan, SpecError> {
    let plan = input.plan;
    let mut view = Vec::new();
    let mut mounts = vec![
        Mount {
            target: "/proc".into(),
            source: MountSource::Proc,
            readonly: false,
        },
        Mount {
            target: "/dev".into(),
            source: MountSource::Dev,
            readonly: false,
        },
    ];
    // Which view tree holds a sandbox path: the deepest bind above it.
    let mut binds: Vec<(PathBuf, &'static str)> = Vec::new();
    let root = match &plan.filesystem.root {
        RootSource::HostBaseline => {
            // Bound when present, like bubblewrap's --ro-bind-try (and never a socket: see
            // `resolver`), then the file a symlinked /etc/resolv.conf names.
            let baseline = plan
                .filesystem
                .baseline
                .iter()
                .map(|b| (PathBuf::from(b), PathBuf::from(b)))
                .filter(|(b, _)| crate::sandbox::resolver::bindable(b));
            for (source, p) in baseline.chain(input.prepared.resolver_files.iter().cloned()) {
                view.push(ViewOp::Bind {
                    dir: source.is_dir(),
                    source,
                    target: PathBuf::from(RO_TAG).join(rel(&p)),
                    readonly: true,
                    handle: None,
                });
                mounts.push(Mount {
                    target: p.display().to_string(),
                    source: MountSource::Share {
                        tag: RO_TAG.into(),
                        subpath: rel(&p).to_string_lossy().into_owned(),
                    },
                    readonly: true,
                });
                binds.push((p, RO_TAG));
            }
            GuestRoot::Tmpfs
        }
        RootSource::Rootfs { path } => {
            view.push(ViewOp::Bind {
                source: PathBuf::from(path),
                target: PathBuf::from(RO_TAG),
                readonly: true,
                dir: true,
                handle: None,
            });
            binds.push((PathBuf::from("/"), RO_TAG));
            GuestRoot::Share {
                tag: RO_TAG.into(),
                subpath: String::new(),
            }
        }
    };
    mounts.push(Mount {
        target: "/tmp".into(),
        source: MountSource::Tmpfs {
            size_bytes: size_bytes(&plan.filesystem.tmp_size),
            mode: 0o1777,
        },
        readonly: false,
    });
    let tree_of = |binds: &[(PathBuf, &'static str)], t: &Path| {
        binds
            .iter()
            .filter(|(b, _)| t.starts_with(b))
            .max_by_key(|(b, _)| b.components().count())
            .map(|(_, tag)| *tag)
    };
    let mut needs_rw = false;
    for m in &input.prepared.mounts {
        match m {
            Prepared::Bind {
                source,
                target,
                readonly,
            } => {
                let tag = if *readonly { RO_TAG } else { RW_TAG };
                needs_rw |= !readonly;
                let handle = input.prepared.sources.get(target).cloned();
                view.push(ViewOp::Bind {
                    source: source.clone(),
                    target: PathBuf::from(tag).join(rel(target)),
                    readonly: *readonly,
                    dir: handle
                        .as_ref()
                        .map_or_else(|| source.is_dir(), |h| h.is_dir),
                    handle,
                });
                binds.push((target.clone(), tag));
                mounts.push(Mount {
                    target: target.to_string_lossy().into_owned(),
                    source: MountSource::Share {
                        tag: tag.into(),
                        subpath: rel(target).to_string_lossy().into_owned(),
                    },
                    readonly: *readonly,
                });
            }
            // An ancestor of a deeper policy path inside a read-write grant: a mount point of
            // its own in the exported `rw` tree (what the guest writes goes through qemu, in
            // whose namespace a mount point cannot be renamed or removed) and, bound onto
            // itself, in the guest's view too.
            Prepared::Pin { source, target } => {
                let Some(handle) = input.prepared.sources.get(target).cloned() else {
                    continue;
                };
                needs_rw = true;
                view.push(ViewOp::Bind {
                    source: source.clone(),
                    target: PathBuf::from(RW_TAG).join(rel(target)),
                    readonly: false,
                    dir: true,
                    handle: Some(handle),
                });
                binds.push((target.clone(), RW_TAG));
                mounts.push(Mount {
                    target: target.to_string_lossy().into_owned(),
                    source: MountSource::Share {
                        tag: RW_TAG.into(),
                        subpath: rel(target).to_string_lossy().into_owned(),
                    },
                    readonly: false,
                });
            }
            Prepared::MaskFile { target } => {
                // Masked on the host too when it lies in an exported tree and exists (a mount
                // point is never created in a host directory).
                if let Some(tag) = tree_of(&binds, target)
                    && host_path_exists(plan, target)
                {
                    view.push(ViewOp::MaskFile {
                        target: PathBuf::from(tag).join(rel(target)),
                    });
                }
                mounts.push(Mount {
                    target: target.to_string_lossy().into_owned(),
                    source: MountSource::MaskFile,
                    readonly: true,
                });
            }
            Prepared::MaskDir {
                target,
                has_children,
                ..
            } => {
                if let Some(tag) = tree_of(&binds, target)
                    && host_path_exists(plan, target)
                {
                    view.push(ViewOp::MaskDir {
                        target: PathBuf::from(tag).join(rel(target)),
                        has_children: *has_children,
                    });
                }
                mounts.push(Mount {
                    target: target.to_string_lossy().into_owned(),
                    source: MountSource::MaskDir,
                    readonly: true,
                });
            }
        }
    }
    let rules = crate::sandbox::runner::landlock_rules(plan, input.prepared);
    let strs = |v: &[PathBuf]| -> Vec<String> {
        v.iter().map(|p| p.to_string_lossy().into_owned()).collect()
    };
    let gaps = landlock_gaps(plan, input.guest_landlock_abi);
    let landlock = Some(LandlockSpec {
        read: strs(&rules.read),
        write: strs(&rules.write),
        devices: strs(&rules.devices),
        // Gaps covered by the VM's other layers are accepted (and reported by the caller);
        // anything else is accepted only with --best-effort.
        best_effort: plan.best_effort || gaps.iter().all(|(_, covered)| *covered),
    });
    let seccomp_bpf = if plan.host.seccomp {
        super::seccomp::compile(&serde_json::to_value(&plan.seccomp).map_err(|e| {
            SpecError::Field {
                field: "seccomp".into(),
                message: e.to_string(),
            }
        })?)?
    } else {
        Vec::new()
    };
    let env: Vec<String> = std::iter::once((
        "PATH".to_string(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
    ))
    .filter(|(k, _)| !plan.process.env.iter().any(|(pk, _)| pk == k))
    .chain(plan.process.env.iter().cloned())
    .map(|(k, v)| format!("{k}={v}"))
    .collect();
    let spec = ContainerSpec {
        id: input.id.to_string(),
        hostname: "agentcell".into(),
        root,
        root_readonly: true,
        mounts,
        landlock,
        seccomp_bpf,
        seccomp_pod_bpf: Vec::new(),
        process: ProcessSpec {
            args: input.args.clone(),
            env,
            cwd: plan.process.cwd.clone(),
            uid: input.uid,
            gid: input.gid,
            additional_gids: vec![],
            terminal: false,
            stdin: true,
        },
        timeout_ms: plan.process.timeout_ms,
        memory_bytes: plan.process.memory_max,
        pids_max: plan.process.pids_max,
    };
    Ok(GuestPlan {
        spec,
        view,
        needs_rw,
    })
}

fn host_path_exists(plan: &Plan, target: &Path) -> bool {
    let root = crate::sandbox::prepare::Root::of(&plan.filesystem);
    std::fs::symlink_metadata(root.host_path(&target.to_string_lossy())).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentcell_policy::plan::{CompileOptions, Host, compile};
    use agentcell_policy::{ParseOptions, parse_with};

    fn plan(json: &str, rootfs: Option<&str>) -> Plan {
        let d = parse_with(json, &ParseOptions::default()).unwrap();
        let opts = CompileOptions {
            rootfs: rootfs.map(String::from),
            ..Default::default()
        };
        compile(&d, &Host::reference(), &opts).unwrap()
    }

    fn input<'a>(plan: &'a Plan, prepared: &'a PreparedView, abi: i32) -> SpecInput<'a> {
        SpecInput {
            plan,
            prepared,
            id: "ac-1-x",
            args: vec!["/bin/true".into()],
            uid: 1000,
            gid: 1000,
            guest_landlock_abi: abi,
        }
    }

    #[test]
    fn the_host_view_exports_only_granted_paths_with_masks_in_their_tree() {
        let p = plan(
            r#"{"version":"1.0.0","filesystem":{"readwritePaths":["/tmp"]},"timeoutMs":5000}"#,
            None,
        );
        let prepared = PreparedView {
            mounts: vec![
                Prepared::Bind {
                    source: "/etc".into(),
                    target: "/etc".into(),
                    readonly: true,
                },
                Prepared::Bind {
                    source: "/tmp".into(),
                    target: "/work".into(),
                    readonly: false,
                },
                Prepared::MaskFile {
                    target: "/etc/hostname".into(),
                },
                Prepared::MaskDir {
                    target: "/nowhere/x".into(),
                    size: "16k".into(),
                    has_children: false,
                },
            ],
            ..Default::default()
        };
        let g = build(&input(&p, &prepared, 6)).unwrap();
        assert!(g.needs_rw);
        assert!(g.view.contains(&ViewOp::Bind {
            source: "/tmp".into(),
            target: "rw/work".into(),
            readonly: false,
            dir: true,
            handle: None,
        }));
        // The mask of /etc/hostname is applied in the ro tree (the deepest bind above it).
        assert!(g.view.contains(&ViewOp::MaskFile {
            target: "ro/etc/hostname".into()
        }));
        // A mask outside every exported tree exists only in the guest.
        assert!(!g.view.iter().any(|o| matches!(o, ViewOp::MaskDir { .. })));
        assert!(
            g.spec
                .mounts
                .iter()
                .any(|m| m.target == "/nowhere/x" && m.source == MountSource::MaskDir)
        );
        let work = g.spec.mounts.iter().find(|m| m.target == "/work").unwrap();
        assert_eq!(
            work.source,
            MountSource::Share {
                tag: "rw".into(),
                subpath: "work".into()
            }
        );
        assert!(!work.readonly);
        assert_eq!(g.spec.root, GuestRoot::Tmpfs);
        assert_eq!(g.spec.timeout_ms, Some(5000));
        assert_eq!(g.spec.process.uid, 1000);
        assert!(g.spec.process.env.iter().any(|e| e.starts_with("PATH=")));
        assert!(!g.spec.seccomp_bpf.is_empty());
        let tmp = g.spec.mounts.iter().find(|m| m.target == "/tmp").unwrap();
        assert_eq!(
            tmp.source,
            MountSource::Tmpfs {
                size_bytes: 256 << 20,
                mode: 0o1777
            }
        );
        // Every view path stays inside one of the two trees.
        for op in &g.view {
            let t = match op {
                ViewOp::Bind { target, .. }
                | ViewOp::MaskFile { target }
                | ViewOp::MaskDir { target, .. } => target,
            };
            assert!(t.starts_with("ro") || t.starts_with("rw"), "{t:?}");
        }
    }

    #[test]
    fn an_image_is_the_read_only_root_share() {
        let p = plan(r#"{"version":"1.0.0"}"#, Some("/srv/img"));
        let g = build(&input(&p, &PreparedView::default(), 6)).unwrap();
        assert_eq!(
            g.spec.root,
            GuestRoot::Share {
                tag: "ro".into(),
                subpath: String::new()
            }
        );
        assert!(g.spec.root_readonly);
        assert_eq!(
            g.view[0],
            ViewOp::Bind {
                source: "/srv/img".into(),
                target: "ro".into(),
                readonly: true,
                dir: true,
                handle: None,
            }
        );
        assert!(!g.needs_rw);
    }

    #[test]
    fn landlock_gaps_of_an_old_guest_are_named_and_only_covered_ones_pass() {
        let p = plan(r#"{"version":"1.0.0"}"#, None);
        let gaps = landlock_gaps(&p, 2);
        assert!(gaps.iter().any(|(r, _)| r == "Truncate"), "{gaps:?}");
        assert!(gaps.iter().all(|(_, covered)| *covered));
        let g = build(&input(&p, &PreparedView::default(), 2)).unwrap();
        assert!(g.spec.landlock.as_ref().unwrap().best_effort);
        assert!(landlock_gaps(&p, 7).is_empty());
        let none = landlock_gaps(&p, 0);
        assert!(none.iter().any(|(r, covered)| r == "landlock" && !covered));
        let g = build(&input(&p, &PreparedView::default(), 0)).unwrap();
        assert!(!g.spec.landlock.as_ref().unwrap().best_effort);
    }
}
