//! The pod's own mounts, resolved once and mounted from what was resolved (as the CLI's view:
//! `sandbox::resolve`). The mounts a pod spec adds and confinement keeps (granted volumes, the
//! resolver files) name host paths; a workload that can write one of those trees (a hostPath
//! or emptyDir another pod shares, another sandbox's grant) could swap a component for a symlink
//! between the shim's checks and the runtime's mount. So before the build helper starts, each
//! such source is opened with no symlink on the way, its mount tree copied (`open_tree`) onto a
//! root-only tmpfs in the container's state directory, and the spec names that copy; the masks
//! of denied paths inside a kept mount are checked below the resolved source. After the build
//! the copies are detached and every target is checked inside the built view
//! (`/proc/<pid>/root`). The image's rootfs is containerd's and is left alone.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::sandbox::resolve::{self, Expect, Handle, ResolveError, Staging};

enum Want {
    Bind { handle: Handle, readonly: bool },
    Tmpfs,
    Null,
}

struct Check {
    target: PathBuf,
    want: Want,
    /// Symlinks of the image on the way are followed (inside the view); none inside a host tree.
    follow: bool,
    /// A mask inside a kept pod mount: that mount's resolved source and the path below it.
    below: Option<(Handle, PathBuf)>,
}

/// The staged sources of one container and what its built view must hold.
pub struct PodView {
    staging: Option<Staging>,
    checks: Vec<Check>,
}

fn option(m: &Value, opt: &str) -> bool {
    m.get("options")
        .and_then(Value::as_array)
        .is_some_and(|o| o.iter().any(|v| v.as_str() == Some(opt)))
}

fn dest(m: &Value) -> Option<String> {
    let d = m.get("destination").and_then(Value::as_str)?;
    Some(agentcell_policy::plan::fs::normalize(d).unwrap_or_else(|_| d.to_string()))
}

fn is_bind(m: &Value) -> bool {
    m.get("type").and_then(Value::as_str) == Some("bind") || option(m, "bind") || option(m, "rbind")
}

/// Stages the sources of the pod's kept bind mounts (`pod_mounts`: their destinations) in
/// `<dir>/src` and rewrites `spec` to name the staged copies. A source with a symlink on the
/// way, or a mask target inside a kept mount that is a symlink, refuses the create.
pub fn stage(spec: &mut Value, pod_mounts: &[String], dir: &Path) -> Result<PodView, ResolveError> {
    let Some(mounts) = spec.get_mut("mounts").and_then(Value::as_array_mut) else {
        return Ok(PodView {
            staging: None,
            checks: Vec::new(),
        });
    };
    // The pod's binds: (index, destination, resolved source).
    let mut binds: Vec<(usize, String, Handle)> = Vec::new();
    for (i, m) in mounts.iter().enumerate() {
        let Some(d) = dest(m) else { continue };
        if !pod_mounts.contains(&d) || !is_bind(m) {
            continue;
        }
        let Some(src) = m.get("source").and_then(Value::as_str) else {
            continue;
        };
        if !Path::new(src).is_absolute() {
            continue;
        }
        let h = resolve::open_host_nofollow(Path::new(src)).map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                ResolveError::SourceSymlink {
                    path: src.to_string(),
                    dest: d.clone(),
                }
            } else {
                ResolveError::Io {
                    path: src.to_string(),
                    source: e,
                }
            }
        })?;
        binds.push((i, d, h));
    }
    // The deepest kept pod bind strictly above `d`.
    let above = |d: &str, binds: &[(usize, String, Handle)]| -> Option<usize> {
        binds
            .iter()
            .enumerate()
            .filter(|(_, (_, bd, _))| bd != d && Path::new(d).starts_with(bd))
            .max_by_key(|(_, (_, bd, _))| bd.len())
            .map(|(k, _)| k)
    };
    let mut checks = Vec::new();
    for (i, m) in mounts.iter().enumerate() {
        if binds.iter().any(|(bi, _, _)| *bi == i) {
            continue;
        }
        let Some(d) = dest(m) else { continue };
        let Some(k) = above(&d, &binds) else { continue };
        let null = m.get("source").and_then(Value::as_str) == Some("/dev/null");
        let tmpfs = m.get("type").and_then(Value::as_str) == Some("tmpfs");
        if !null && !tmpfs {
            continue;
        }
        // The mask's target on the host, below the resolved source: a symlink there now is
        // refused; one planted later lands the runtime's mount elsewhere, and the check of the
        // built view refuses it.
        let (_, bd, bh) = &binds[k];
        let rel = Path::new(&d).strip_prefix(bd).expect("below the bind");
        match resolve::open_beneath(bh.fd.as_fd(), rel) {
            Ok(h) if h.is_dir == null => {
                return Err(ResolveError::Mismatch {
                    path: d,
                    what: "changed between a directory and a file while the container was prepared"
                        .into(),
                });
            }
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(ResolveError::Symlink {
                    path: bh
                        .path()
                        .map(|p| p.join(rel).display().to_string())
                        .unwrap_or(d),
                });
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => {
                return Err(ResolveError::Io { path: d, source: e });
            }
        }
        checks.push(Check {
            target: PathBuf::from(&d),
            want: if null { Want::Null } else { Want::Tmpfs },
            follow: false,
            below: Some((bh.clone(), rel.to_path_buf())),
        });
    }
    if binds.is_empty() {
        return Ok(PodView {
            staging: None,
            checks,
        });
    }
    let mut staging = Staging::new(&dir.join("src"))?;
    for (i, d, h) in &binds {
        let staged = staging.stage(h, Path::new(d))?;
        mounts[*i]["source"] = json!(staged);
        // A later mount at the same destination covers this one.
        let covered = mounts[i + 1..]
            .iter()
            .any(|m| dest(m).as_deref() == Some(d.as_str()));
        if !covered {
            checks.push(Check {
                target: PathBuf::from(d),
                want: Want::Bind {
                    handle: h.clone(),
                    readonly: option(&mounts[*i], "ro"),
                },
                follow: above(d, &binds).is_none(),
                below: None,
            });
        }
    }
    Ok(PodView {
        staging: Some(staging),
        checks,
    })
}

impl PodView {
    /// Why the runtime may have failed to build the view: a mask's target below a kept pod
    /// mount that now has a symlink on the way (the runtime resolves mount targets inside the
    /// rootfs and refuses; its own error only says "failed to prepare rootfs"). A swapping
    /// workload flips the name back and forth, so each target is looked at a few times.
    pub fn explain(&self) -> Option<ResolveError> {
        const LOOKS: usize = 64;
        self.checks.iter().find_map(|c| {
            let (h, rel) = c.below.as_ref()?;
            (0..LOOKS).find_map(|_| {
                let swapped = resolve::open_beneath(h.fd.as_fd(), rel)
                    .is_err_and(|e| e.raw_os_error() == Some(libc::ELOOP));
                std::thread::yield_now();
                swapped.then(|| ResolveError::Swapped {
                    path: c.target.display().to_string(),
                })
            })
        })
    }

    /// Detaches the staged copies (the container's mount namespace keeps its own).
    pub fn detach(&mut self) -> Result<(), ResolveError> {
        self.staging.as_mut().map_or(Ok(()), Staging::detach)
    }

    /// Checks the view built for the container whose init is `pid` (pivoted into it, waiting
    /// for start): each kept pod mount holds what was resolved for it, each mask is ours, and
    /// none is reached through a symlink inside a host tree.
    pub fn verify(&self, pid: i32) -> Result<(), ResolveError> {
        let targets: Vec<(PathBuf, Expect, bool)> = self
            .checks
            .iter()
            .map(|c| {
                let e = match &c.want {
                    Want::Bind { handle, readonly } => Expect::Bind {
                        handle,
                        readonly: *readonly,
                    },
                    Want::Tmpfs => Expect::Tmpfs { readonly: None },
                    Want::Null => Expect::Null,
                };
                (c.target.clone(), e, c.follow)
            })
            .collect();
        resolve::verify(Path::new(&format!("/proc/{pid}/root")), &targets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod mount's source with a symlink on the way, or a symlink on the way to a mask inside
    /// a kept mount, refuses the create naming the path (before anything is staged).
    #[test]
    fn a_symlink_in_a_source_or_above_a_mask_is_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("ac-podview-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("tree/real/secret")).unwrap();
        std::os::unix::fs::symlink("/", dir.join("tree/swapped")).unwrap();
        let bind = |src: PathBuf, dst: &str| json!({"destination": dst, "type": "bind", "source": src, "options": ["rbind", "rw"]});
        let mut spec = json!({"mounts": [bind(dir.join("tree/swapped"), "/data")]});
        let err = stage(&mut spec, &["/data".into()], &dir.join("state")).err();
        assert!(
            matches!(&err, Some(ResolveError::SourceSymlink { path, dest }) if path.ends_with("tree/swapped") && dest == "/data"),
            "{err:?}"
        );
        let mut spec = json!({"mounts": [
            bind(dir.join("tree"), "/work"),
            {"destination": "/work/swapped/secret", "type": "tmpfs", "source": "tmpfs", "options": ["ro"]},
        ]});
        let err = stage(&mut spec, &["/work".into()], &dir.join("state")).err();
        assert!(
            matches!(&err, Some(ResolveError::Symlink { path }) if path.ends_with("tree/swapped/secret")),
            "{err:?}"
        );
        // A mount confinement did not keep is not the pod view's business.
        let mut spec = json!({"mounts": [bind(dir.join("tree/swapped"), "/data")]});
        assert!(stage(&mut spec, &[], &dir.join("state")).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// After the runtime failed, a mask whose way now has a symlink is named as swapped; one
    /// whose way is still plain gives no explanation (the runtime's own error stands).
    #[test]
    fn a_failed_build_is_explained_by_a_mask_swapped_for_a_symlink() {
        let dir = std::env::temp_dir().join(format!("ac-podview-x-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("tree/sub/secret")).unwrap();
        let tree = resolve::open_host_nofollow(&dir.join("tree")).unwrap();
        let view = PodView {
            staging: None,
            checks: vec![Check {
                target: PathBuf::from("/work/sub/secret"),
                want: Want::Tmpfs,
                follow: false,
                below: Some((tree, PathBuf::from("sub/secret"))),
            }],
        };
        assert!(view.explain().is_none());
        std::fs::rename(dir.join("tree/sub"), dir.join("tree/real")).unwrap();
        std::os::unix::fs::symlink("/", dir.join("tree/sub")).unwrap();
        let why = view.explain();
        assert!(
            matches!(&why, Some(ResolveError::Swapped { path }) if path == "/work/sub/secret"),
            "{why:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
