//! Host-side preparation of a plan's filesystem view: resolve every policy path on the real host
//! and turn the plan into concrete mounts. Aliases of a denied object (a symlink to it, a path
//! through `..`, another policy path naming the same inode, a hard link under an allowed tree) are
//! tightened to "denied"; allowed paths that do not exist are left out of the view (that grants
//! less, never more) and reported.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use std::os::fd::AsFd;

use agentcell_policy::plan::{Access, FsView, RootSource};

use super::resolve::{self, Handle};

/// A mount in the order it is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mount {
    /// Bind `source` at `target`, read-only or not.
    Bind {
        source: PathBuf,
        target: PathBuf,
        readonly: bool,
    },
    /// `/dev/null` over a denied file.
    MaskFile { target: PathBuf },
    /// An empty tmpfs over a denied directory, owned by nobody (65534) with mode 000: nobody
    /// can list, read or write it, and the workload cannot chmod it. When an allowed path lies
    /// below, the mode is 0111 (traverse only) and the tmpfs stays writable for the runtime to
    /// create that mount point; otherwise it is read-only.
    MaskDir {
        target: PathBuf,
        size: String,
        has_children: bool,
    },
    /// A directory inside a read-write grant bound onto itself (read-write, like the grant):
    /// an ancestor of a deeper policy path, made a mount point for the run so that it cannot be
    /// renamed or removed from inside (`mv tools tools_old` would otherwise carry a read-only
    /// `tools/bin` out from under its mount, or a denied `.cache/hf` out from under its mask,
    /// for the next run).
    Pin { source: PathBuf, target: PathBuf },
}

#[derive(Debug, Clone, Default)]
pub struct Prepared {
    pub mounts: Vec<Mount>,
    /// Things the user should know (a missing allowed path, an alias tightened).
    pub reports: Vec<String>,
    /// Landlock rules (path inside the sandbox, read-write?) for what is really mounted.
    pub landlock_paths: Vec<(PathBuf, bool)>,
    /// Baseline entries that are, on this host, symlinks to another baseline entry (`/bin` ->
    /// `/usr/bin` on usr-merged systems): (link, target), both sandbox paths. The view gets the
    /// same symlink in its root instead of a second bind mount of the same tree, which costs
    /// a mount per entry at start and shows exactly the same objects.
    pub baseline_links: Vec<(PathBuf, PathBuf)>,
    /// Resolver files bound read-only besides the baseline: (host file, sandbox path). The file
    /// `/etc/resolv.conf` links to when the baseline does not show it (see `resolver`).
    pub resolver_files: Vec<(PathBuf, PathBuf)>,
    /// The object each `Bind`/`Pin` target was resolved to, opened once (host views): the
    /// runner mounts these descriptors, never the source strings, and checks the built view
    /// against their identities.
    pub sources: BTreeMap<PathBuf, Handle>,
    /// Targets named through a host symlink below a read-only grant (followed, as the host's
    /// own): inside the view the name leads to the mount through the same symlink.
    pub followed: std::collections::BTreeSet<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(
        "{path}: cannot be resolved ({source}); because deniedPaths are present, agentcell cannot verify it does not alias a denied object and refuses to start"
    )]
    Unresolvable {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Resolve(#[from] resolve::ResolveError),
    #[error(
        "{path}: the hard-link scan under {tree} stopped after {limit} entries; cannot prove no hard link of a denied file is reachable"
    )]
    ScanLimit {
        path: String,
        tree: String,
        limit: usize,
    },
    #[error(
        "{path}: the denied directory has more than {limit} entries; agentcell walks a denied directory for files with another (hard-link) name in the view and refuses one this large: deny narrower paths"
    )]
    DeniedDirScanLimit { path: String, limit: usize },
}

/// How many inodes the hard-link scan may visit per allowed tree.
pub const SCAN_LIMIT: usize = 200_000;

/// Where policy paths live: on the host itself, or inside an image root (`--rootfs`, the shim).
#[derive(Debug, Clone)]
pub enum Root {
    Host,
    Image(PathBuf),
}

impl Root {
    pub fn of(view: &FsView) -> Self {
        match &view.root {
            RootSource::HostBaseline => Self::Host,
            RootSource::Rootfs { path } => Self::Image(PathBuf::from(path)),
        }
    }

    /// The host path of the object a sandbox path names, symlinks and `..` followed (inside an
    /// image they resolve as if the image were `/`, never escaping it).
    pub fn resolve(&self, p: &str) -> std::io::Result<PathBuf> {
        match self {
            Self::Host => std::fs::canonicalize(p),
            Self::Image(root) => resolve_in_root(root, p),
        }
    }

    /// The sandbox path of a host path, when it lies in this root.
    pub fn inside(&self, host: &Path) -> Option<PathBuf> {
        match self {
            Self::Host => Some(host.to_path_buf()),
            Self::Image(root) => host.strip_prefix(root).ok().map(|r| Path::new("/").join(r)),
        }
    }

    /// The host path a sandbox path would have, without resolving anything.
    pub fn host_path(&self, p: &str) -> PathBuf {
        match self {
            Self::Host => PathBuf::from(p),
            Self::Image(root) => root.join(p.trim_start_matches('/')),
        }
    }
}

/// `openat2(RESOLVE_IN_ROOT)`: resolve `p` with `root` as `/`, then read back the host path.
fn resolve_in_root(root: &Path, p: &str) -> std::io::Result<PathBuf> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
    const RESOLVE_IN_ROOT: u64 = 0x10;
    let dir = std::fs::File::open(root)?;
    let rel = std::ffi::CString::new(p.trim_start_matches('/').as_bytes().to_vec())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let rel = if rel.as_bytes().is_empty() {
        std::ffi::CString::new(".").expect("literal")
    } else {
        rel
    };
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: valid dirfd, NUL-terminated path, open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            rel.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new descriptor we now own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// One policy path resolved on the host.
struct Resolved {
    /// The path as the policy names it (normalised).
    name: String,
    /// Where it really is (symlinks and `..` followed).
    real: PathBuf,
    access: Access,
    /// (device, inode) when it exists.
    id: Option<(u64, u64)>,
    is_dir: bool,
    /// The object, opened once (host views).
    handle: Option<Handle>,
    /// The nearest policy entry above, when this one was opened below it by name (no symlink).
    below: Option<usize>,
}

/// Resolves `view` on this host (paths are host paths: the view starts from the host baseline).
pub fn prepare(view: &FsView) -> Result<Prepared, PrepareError> {
    prepare_with(view, true)
}

/// `prepare`; with `hold` false, a missing read-only or denied path inside a read-write grant
/// is not created (for a spec that is only printed: nothing changes on the host).
pub fn prepare_with(view: &FsView, hold: bool) -> Result<Prepared, PrepareError> {
    let mut out = Prepared::default();
    let has_denied = view.entries.iter().any(|e| e.access == Access::Denied);
    let root = Root::of(view);
    if let Root::Host = root {
        out.baseline_links = baseline_links(&view.baseline);
        out.resolver_files =
            super::resolver::resolv_conf_target(Path::new("/etc/resolv.conf"), &view.baseline)
                .into_iter()
                .collect();
    }

    let mut resolved: Vec<Resolved> = Vec::new();
    let image_entries = match root {
        Root::Host => &[][..],
        Root::Image(_) => &view.entries[..],
    };
    if let Root::Host = root {
        resolved = resolve_host(view, has_denied, hold, &mut out)?;
    }
    for e in image_entries {
        match root.resolve(&e.path) {
            Ok(real) => {
                let md = std::fs::metadata(&real).ok();
                if root.inside(&real).as_deref() != Some(Path::new(&e.path)) {
                    out.reports
                        .push(format!("{} resolves to {}", e.path, real.display()));
                }
                resolved.push(Resolved {
                    name: e.path.clone(),
                    id: md.as_ref().map(|m| (m.dev(), m.ino())),
                    is_dir: md.as_ref().is_some_and(|m| m.is_dir()),
                    real,
                    access: e.access,
                    handle: None,
                    below: None,
                });
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                // A missing denied path needs a mask only where the workload could create it: in
                // a host directory the view grants read-write. Elsewhere nothing can appear.
                if e.access == Access::Denied && !host_writable(view, &e.path) {
                    out.reports.push(format!(
                        "{}: denied path does not exist and cannot be created in the view; nothing to mask",
                        e.path
                    ));
                    continue;
                }
                resolved.push(Resolved {
                    name: e.path.clone(),
                    real: root.host_path(&e.path),
                    access: e.access,
                    id: None,
                    is_dir: true,
                    handle: None,
                    below: None,
                });
            }
            Err(err) if has_denied => {
                return Err(PrepareError::Unresolvable {
                    path: e.path.clone(),
                    source: err,
                });
            }
            Err(err) => out
                .reports
                .push(format!("{}: left out of the view ({err})", e.path)),
        }
    }

    // Same object named twice: the strictest intent wins for every name.
    let mut strictest: BTreeMap<(u64, u64), Access> = BTreeMap::new();
    for r in &resolved {
        if let Some(id) = r.id {
            let s = strictest.entry(id).or_insert(r.access);
            *s = (*s).max(r.access);
        }
    }
    for r in resolved.iter_mut() {
        if let Some(s) = r.id.and_then(|id| strictest.get(&id))
            && *s > r.access
        {
            out.reports.push(format!(
                "{} names the same object as a stricter entry; now {}",
                r.name,
                s.as_str()
            ));
            r.access = *s;
        }
    }

    // Hard links of denied files, and of the files inside denied directories, reachable under
    // allowed trees are denied too.
    let mut denied_files: HashSet<(u64, u64)> = resolved
        .iter()
        .filter(|r| r.access == Access::Denied && !r.is_dir)
        .filter(|r| std::fs::metadata(&r.real).is_ok_and(|m| m.nlink() > 1))
        .filter_map(|r| r.id)
        .collect();
    let allowed_reals: HashSet<PathBuf> = resolved
        .iter()
        .filter(|r| r.access != Access::Denied)
        .map(|r| r.real.clone())
        .collect();
    let denied_dirs: HashSet<PathBuf> = resolved
        .iter()
        .filter(|r| r.access == Access::Denied && r.is_dir && r.id.is_some())
        .map(|r| r.real.clone())
        .collect();
    if !allowed_reals.is_empty() {
        for d in &denied_dirs {
            let limit = super::aliases::DENIED_DIR_SCAN_LIMIT;
            denied_files.extend(
                super::aliases::linked_files_in(d, &allowed_reals, limit).map_err(|limit| {
                    PrepareError::DeniedDirScanLimit {
                        path: d.display().to_string(),
                        limit,
                    }
                })?,
            );
        }
    }
    // An allowed file that is one of those names is denied like the others.
    for r in resolved.iter_mut() {
        if r.access != Access::Denied
            && !r.is_dir
            && r.id.is_some_and(|i| denied_files.contains(&i))
        {
            out.reports.push(format!(
                "{} is a hard link of a denied file; now denied",
                r.name
            ));
            r.access = Access::Denied;
        }
    }
    let mut extra = Vec::new();
    if !denied_files.is_empty() {
        for r in resolved
            .iter()
            .filter(|r| r.access != Access::Denied && r.is_dir)
        {
            scan_hard_links(&r.real, &denied_files, &denied_dirs, &mut extra).map_err(|limit| {
                PrepareError::ScanLimit {
                    path: r.name.clone(),
                    tree: r.real.display().to_string(),
                    limit,
                }
            })?;
        }
    }

    // Every other name a denied object has in the view is denied too: through a bind mount on
    // the host, or through a grant whose real path holds it (a grant that is a symlink to
    // another, or has a symlinked ancestor). Names are taken relative to the grants' real paths.
    let grants: Vec<(PathBuf, PathBuf)> = resolved
        .iter()
        .filter(|r| r.access != Access::Denied)
        .map(|r| (PathBuf::from(&r.name), r.real.clone()))
        .collect();
    let mut bind_aliases: Vec<(PathBuf, bool)> = Vec::new();
    if has_denied {
        let mounts =
            super::aliases::read_mountinfo().map_err(|source| PrepareError::Unresolvable {
                path: "/proc/self/mountinfo".into(),
                source,
            })?;
        for r in resolved.iter().filter(|r| r.access == Access::Denied) {
            let mut hosts = vec![r.real.clone()];
            if let Ok(md) = std::fs::metadata(&r.real) {
                let dev = (libc::major(md.dev()), libc::minor(md.dev()));
                hosts.extend(super::aliases::aliases_of(&mounts, &r.real, dev));
            }
            let own = root.inside(&r.real);
            for h in &hosts {
                for name in super::aliases::names_in_view(h, &grants) {
                    if Some(&name) != own.as_ref() && !bind_aliases.iter().any(|(n, _)| *n == name)
                    {
                        bind_aliases.push((name, r.is_dir));
                    }
                }
            }
        }
    }

    // Allowed paths appear where the policy names them; a denied object is masked where it
    // really is, so every alias of it (a symlink, a path through `..`) reaches the mask.
    let mut mounts: Vec<(PathBuf, Resolved)> = resolved
        .into_iter()
        .map(|r| {
            (
                if r.access == Access::Denied {
                    root.inside(&r.real).unwrap_or_else(|| r.real.clone())
                } else {
                    PathBuf::from(&r.name)
                },
                r,
            )
        })
        .collect();
    let hard_links = extra
        .into_iter()
        .flat_map(|p| super::aliases::names_in_view(&p, &grants))
        .map(|p| (p, false, "a hard link of a denied file"));
    let binds = bind_aliases.into_iter().map(|(p, d)| {
        (
            p,
            d,
            "another name (a bind mount or an aliased grant) of a denied object",
        )
    });
    for (p, is_dir, what) in hard_links.chain(binds) {
        out.reports
            .push(format!("{} is {what}; masked", p.display()));
        let r = Resolved {
            name: p.display().to_string(),
            real: root.host_path(&p.to_string_lossy()),
            access: Access::Denied,
            id: None,
            is_dir,
            handle: None,
            below: None,
        };
        mounts.push((p, r));
    }
    let allowed_targets: Vec<PathBuf> = mounts
        .iter()
        .filter(|(_, r)| r.access != Access::Denied)
        .map(|(t, _)| t.clone())
        .collect();
    // A denied path inside a directory masked whole needs no mask of its own: the outer mask
    // hides it, and no mount point can be made inside that read-only tmpfs (the run failed).
    // It keeps its mask when an allowed path lies between the two.
    let masked_dirs: Vec<PathBuf> = mounts
        .iter()
        .filter(|(_, r)| r.access == Access::Denied && r.is_dir)
        .map(|(t, _)| t.clone())
        .collect();
    mounts.retain(|(t, r)| {
        r.access != Access::Denied
            || !masked_dirs.iter().any(|d| {
                d != t
                    && t.starts_with(d)
                    && !allowed_targets
                        .iter()
                        .any(|a| a != d && a.starts_with(d) && t.starts_with(a))
            })
    });
    let pins = match root {
        Root::Host => pins(&mounts)?,
        Root::Image(_) => Vec::new(),
    };
    // Shallow to deep by the path the sandbox sees.
    mounts.sort_by_cached_key(|(target, _)| target.components().count());
    let mut pins = pins.into_iter().peekable();
    for (target, r) in mounts {
        // A pin goes after every mount shallower than it and before the deeper ones.
        while let Some((p, _)) = pins.peek()
            && p.components().count() <= target.components().count()
        {
            let (p, h) = pins.next().expect("peeked");
            out.mounts.push(Mount::Pin {
                source: h.path().unwrap_or_else(|_| p.clone()),
                target: p.clone(),
            });
            out.sources.insert(p, h);
        }
        match r.access {
            Access::Denied if r.is_dir => {
                let has_children = allowed_targets
                    .iter()
                    .any(|a| a != &target && a.starts_with(&target));
                out.mounts.push(Mount::MaskDir {
                    target,
                    size: view.denied_dir_tmpfs_size.clone(),
                    has_children,
                })
            }
            Access::Denied => out.mounts.push(Mount::MaskFile { target }),
            a => {
                let exists = match (&root, &r.handle) {
                    (Root::Host, h) => h.is_some(),
                    (Root::Image(_), _) => r.real.exists(),
                };
                if !exists {
                    out.reports
                        .push(format!("{}: does not exist; left out of the view", r.name));
                    continue;
                }
                out.landlock_paths
                    .push((target.clone(), a == Access::ReadWrite));
                if let Some(h) = r.handle {
                    out.sources.insert(target.clone(), h);
                }
                out.mounts.push(Mount::Bind {
                    source: r.real,
                    target,
                    readonly: a == Access::ReadOnly,
                });
            }
        }
    }
    for (p, h) in pins {
        out.mounts.push(Mount::Pin {
            source: h.path().unwrap_or_else(|_| p.clone()),
            target: p.clone(),
        });
        out.sources.insert(p, h);
    }
    Ok(out)
}

/// Opens every policy path of a host view once, shallow to deep. A path below another entry is
/// opened below that entry's descriptor by name, following no symlink: something with write
/// access to a granted tree could otherwise swap a component between a directory and a symlink
/// (to `/`, say) while the view is built. Such a symlink at an allowed path is refused, never
/// followed; at a denied path, the object it leads to is what gets masked (an alias tightened).
/// The outermost entries follow the host's own symlinks (`/home -> /data/home`).
fn resolve_host(
    view: &FsView,
    has_denied: bool,
    hold: bool,
    out: &mut Prepared,
) -> Result<Vec<Resolved>, PrepareError> {
    use agentcell_policy::plan::fs::{depth, is_within};
    let mut order: Vec<&agentcell_policy::plan::fs::FsEntry> = view.entries.iter().collect();
    order.sort_by_key(|e| depth(&e.path));
    let mut resolved: Vec<Resolved> = Vec::new();
    for e in order {
        let above = resolved
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                r.handle.as_ref().is_some_and(|h| h.is_dir)
                    && r.name != e.path
                    && is_within(&e.path, &r.name)
            })
            .max_by_key(|(_, r)| depth(&r.name))
            .map(|(j, _)| j);
        let opened = match above {
            Some(j) => {
                let a = &resolved[j];
                let rel = Path::new(&e.path)
                    .strip_prefix(&a.name)
                    .expect("within")
                    .to_path_buf();
                let fd = a.handle.as_ref().expect("opened").fd.clone();
                let real = a.real.join(&rel);
                match resolve::open_beneath(fd.as_fd(), &rel) {
                    Ok(h) => Ok((h, real, Some(j))),
                    Err(err)
                        if err.raw_os_error() == Some(libc::ELOOP)
                            && e.access != Access::Denied
                            && !in_writable_tree(view, &e.path) =>
                    {
                        // Below read-only grants only: the host's own symlink (nothing the
                        // policy lets write there could have made it), followed as before.
                        out.followed.insert(PathBuf::from(&e.path));
                        resolve::open_host(Path::new(&e.path)).and_then(|h| {
                            let real = h.path()?;
                            Ok((h, real, None))
                        })
                    }
                    Err(err) if err.raw_os_error() == Some(libc::ELOOP) => {
                        if e.access != Access::Denied {
                            return Err(resolve::ResolveError::Symlink {
                                path: e.path.clone(),
                            }
                            .into());
                        }
                        // A denied name that leads elsewhere: mask what it leads to.
                        match std::fs::canonicalize(&e.path) {
                            Ok(real) => {
                                let md = std::fs::metadata(&real).ok();
                                out.reports.push(format!(
                                    "{} resolves to {}",
                                    e.path,
                                    real.display()
                                ));
                                resolved.push(Resolved {
                                    name: e.path.clone(),
                                    id: md.as_ref().map(|m| (m.dev(), m.ino())),
                                    is_dir: md.as_ref().is_some_and(|m| m.is_dir()),
                                    real,
                                    access: e.access,
                                    handle: None,
                                    below: None,
                                });
                                continue;
                            }
                            Err(err) => Err(err),
                        }
                    }
                    Err(err)
                        if err.kind() == std::io::ErrorKind::NotFound
                            && e.access != Access::ReadWrite
                            && hold
                            && host_writable(view, &e.path) =>
                    {
                        // A read-only or denied path missing inside a read-write grant: made
                        // here (an empty directory) and held for the run, by a read-only bind
                        // or a mask, so that nothing can be planted there while it runs.
                        match resolve::create_beneath(fd.as_fd(), &rel) {
                            Ok(h) => {
                                out.reports.push(format!(
                                    "{}: did not exist; created empty and held {} for the run",
                                    e.path,
                                    if e.access == Access::Denied {
                                        "masked"
                                    } else {
                                        "read-only"
                                    }
                                ));
                                Ok((h, real, Some(j)))
                            }
                            Err(err) if err.raw_os_error() == Some(libc::ELOOP) => {
                                return Err(resolve::ResolveError::Symlink {
                                    path: e.path.clone(),
                                }
                                .into());
                            }
                            Err(err) => Err(err),
                        }
                    }
                    Err(err) => Err(err),
                }
            }
            None => resolve::open_host(Path::new(&e.path)).and_then(|h| {
                let real = h.path()?;
                Ok((h, real, None))
            }),
        };
        match opened {
            Ok((h, real, below)) => {
                if real != Path::new(&e.path) {
                    out.reports
                        .push(format!("{} resolves to {}", e.path, real.display()));
                }
                resolved.push(Resolved {
                    name: e.path.clone(),
                    id: Some((h.dev, h.ino)),
                    is_dir: h.is_dir,
                    real,
                    access: e.access,
                    handle: Some(h),
                    below,
                });
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                // A missing denied path needs a mask only where the workload could create it: in
                // a host directory the view grants read-write. Elsewhere nothing can appear.
                if e.access == Access::Denied && !host_writable(view, &e.path) {
                    out.reports.push(format!(
                        "{}: denied path does not exist and cannot be created in the view; nothing to mask",
                        e.path
                    ));
                    continue;
                }
                resolved.push(Resolved {
                    name: e.path.clone(),
                    real: PathBuf::from(&e.path),
                    access: e.access,
                    id: None,
                    is_dir: true,
                    handle: None,
                    below: None,
                });
            }
            Err(err) if has_denied => {
                return Err(PrepareError::Unresolvable {
                    path: e.path.clone(),
                    source: err,
                });
            }
            Err(err) => out
                .reports
                .push(format!("{}: left out of the view ({err})", e.path)),
        }
    }
    Ok(resolved)
}

/// The directories strictly between a policy path and the read-write entry it was opened
/// below, each opened below that entry (no symlink), shallow to deep: they become mount points
/// of the view for the run (`Mount::Pin`), so that a workload cannot rename or remove them.
fn pins(mounts: &[(PathBuf, Resolved)]) -> Result<Vec<(PathBuf, Handle)>, PrepareError> {
    let mut out: BTreeMap<PathBuf, Handle> = BTreeMap::new();
    for (_, r) in mounts {
        let Some(j) = r.below else { continue };
        let a = &mounts[j].1;
        let Some(ah) = a.handle.as_ref().filter(|_| a.access == Access::ReadWrite) else {
            continue;
        };
        let rel = Path::new(&r.name).strip_prefix(&a.name).expect("below");
        let comps: Vec<_> = rel.components().collect();
        let mut acc = PathBuf::new();
        for c in &comps[..comps.len().saturating_sub(1)] {
            acc.push(c);
            let target = Path::new(&a.name).join(&acc);
            if out.contains_key(&target) || mounts.iter().any(|(t, _)| *t == target) {
                continue;
            }
            match resolve::open_beneath(ah.fd.as_fd(), &acc) {
                Ok(h) if h.is_dir => {
                    out.insert(target, h);
                }
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                    return Err(resolve::ResolveError::Symlink {
                        path: target.display().to_string(),
                    }
                    .into());
                }
                Err(source) => {
                    return Err(PrepareError::Unresolvable {
                        path: target.display().to_string(),
                        source,
                    });
                }
            }
        }
    }
    let mut v: Vec<(PathBuf, Handle)> = out.into_iter().collect();
    v.sort_by_key(|(p, _)| p.components().count());
    Ok(v)
}

/// Baseline entries that are symlinks whose target, fully resolved, is itself a baseline entry
/// that is a real directory (so it is bound, and the link resolves to it inside the view too).
fn baseline_links(baseline: &[String]) -> Vec<(PathBuf, PathBuf)> {
    let is_real_dir = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir());
    baseline
        .iter()
        .map(Path::new)
        .filter(|b| std::fs::symlink_metadata(b).is_ok_and(|m| m.file_type().is_symlink()))
        .filter_map(|b| {
            let target = std::fs::canonicalize(b).ok()?;
            (target != b && baseline.iter().any(|o| Path::new(o) == target) && is_real_dir(&target))
                .then(|| (b.to_path_buf(), target))
        })
        .collect()
}

/// Whether any policy entry above `path` grants read-write (so a workload may have made what is
/// found below it).
fn in_writable_tree(view: &FsView, path: &str) -> bool {
    view.entries.iter().any(|e| {
        e.access == Access::ReadWrite
            && e.path != path
            && agentcell_policy::plan::fs::is_within(path, &e.path)
    })
}

/// Whether the deepest policy entry above `path` grants read-write on a host directory.
fn host_writable(view: &FsView, path: &str) -> bool {
    view.entries
        .iter()
        .filter(|e| e.path != path && agentcell_policy::plan::fs::is_within(path, &e.path))
        .max_by_key(|e| agentcell_policy::plan::fs::depth(&e.path))
        .is_some_and(|e| e.access == Access::ReadWrite)
}

/// Every path under `tree` whose inode is one of `targets` (does not follow symlinks). Denied
/// directories (`masked`) are not entered: they are masked whole, so no name inside them is seen.
fn scan_hard_links(
    tree: &Path,
    targets: &HashSet<(u64, u64)>,
    masked: &HashSet<PathBuf>,
    out: &mut Vec<PathBuf>,
) -> Result<(), usize> {
    let mut stack = vec![tree.to_path_buf()];
    let mut seen = 0usize;
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in rd.flatten() {
            seen += 1;
            if seen > SCAN_LIMIT {
                return Err(SCAN_LIMIT);
            }
            let Ok(md) = entry.metadata() else { continue };
            if md.is_dir() {
                let p = entry.path();
                if !masked.contains(&p) {
                    stack.push(p);
                }
            } else if md.is_file() && md.nlink() > 1 && targets.contains(&(md.dev(), md.ino())) {
                out.push(entry.path());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(entries: &[(&Path, Access)]) -> FsView {
        FsView {
            root: RootSource::HostBaseline,
            baseline: vec![],
            tmp_size: "1m".into(),
            denied_dir_tmpfs_size: "16k".into(),
            entries: entries
                .iter()
                .map(|(p, a)| agentcell_policy::plan::fs::FsEntry {
                    path: p.display().to_string(),
                    access: *a,
                    origins: vec![],
                })
                .collect(),
        }
    }

    /// Below a read-write grant: a symlink at an allowed path is refused, never followed; the
    /// ancestors of a deeper path become pins; a missing read-only path is created and bound
    /// read-only. Below a read-only grant only, the host's own symlink is followed.
    #[test]
    fn paths_below_a_writable_grant_are_opened_without_symlinks_and_pinned() {
        let dir = std::env::temp_dir().join(format!("ac-prep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("ws/tools/bin")).unwrap();
        std::fs::create_dir_all(dir.join("ro/real")).unwrap();
        let dir = std::fs::canonicalize(&dir).unwrap();
        std::os::unix::fs::symlink("/", dir.join("ws/.git")).unwrap();
        std::os::unix::fs::symlink("real", dir.join("ro/link")).unwrap();
        let ws = dir.join("ws");
        let err = prepare(&view(&[
            (&ws, Access::ReadWrite),
            (&ws.join(".git"), Access::ReadOnly),
        ]))
        .unwrap_err();
        assert!(
            matches!(&err, PrepareError::Resolve(resolve::ResolveError::Symlink { path }) if path.ends_with("ws/.git")),
            "{err}"
        );
        std::fs::remove_file(dir.join("ws/.git")).unwrap();
        let p = prepare(&view(&[
            (&ws, Access::ReadWrite),
            (&ws.join(".git"), Access::ReadOnly),
            (&ws.join("tools/bin"), Access::ReadOnly),
            (&dir.join("ro"), Access::ReadOnly),
            (&dir.join("ro/link"), Access::ReadOnly),
        ]))
        .unwrap();
        assert!(dir.join("ws/.git").is_dir(), "held: created empty");
        assert!(p.mounts.contains(&Mount::Pin {
            source: ws.join("tools"),
            target: ws.join("tools"),
        }));
        let pin = p
            .mounts
            .iter()
            .position(|m| matches!(m, Mount::Pin { .. }))
            .unwrap();
        let bin = p
            .mounts
            .iter()
            .position(
                |m| matches!(m, Mount::Bind { target, .. } if *target == ws.join("tools/bin")),
            )
            .unwrap();
        assert!(pin < bin, "the pin comes before the deeper mount");
        assert!(p.mounts.contains(&Mount::Bind {
            source: dir.join("ro/real"),
            target: dir.join("ro/link"),
            readonly: true,
        }));
        for t in [
            ws.join(".git"),
            ws.join("tools"),
            ws.join("tools/bin"),
            ws.clone(),
        ] {
            assert!(p.sources.contains_key(&t), "{} has a handle", t.display());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `/bin -> usr/bin` becomes a link of the view; a link to something outside the baseline, a
    /// dangling one and a real directory do not.
    #[test]
    fn only_links_into_the_bound_baseline_become_links_of_the_view() {
        let dir = std::env::temp_dir().join(format!("ac-links-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("usr/bin")).unwrap();
        std::fs::create_dir_all(dir.join("opt")).unwrap();
        let dir = std::fs::canonicalize(&dir).unwrap();
        std::os::unix::fs::symlink("usr/bin", dir.join("bin")).unwrap();
        std::os::unix::fs::symlink("opt", dir.join("sbin")).unwrap();
        std::os::unix::fs::symlink("nowhere", dir.join("lib")).unwrap();
        let p = |s: &str| dir.join(s).display().to_string();
        let baseline = [p("bin"), p("sbin"), p("lib"), p("usr/bin")];
        assert_eq!(
            baseline_links(&baseline),
            vec![(dir.join("bin"), dir.join("usr/bin"))]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
