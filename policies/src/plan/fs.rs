//! The filesystem view a sandbox sees: the read-only baseline MXC's bubblewrap backend mounts,
//! fresh `/dev`, `/proc` and `/tmp`, then the policy's paths, shallow to deep, so the deepest
//! path decides (deny > read-only > read-write at equal paths).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::document::FsLists;
use crate::error::Violation;
use crate::path::JsonPath;

/// What a path in the view allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Access {
    // Order = strictness, weakest first: `max` picks the strictest.
    ReadWrite,
    ReadOnly,
    Denied,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReadWrite => "read-write",
            Self::ReadOnly => "read-only",
            Self::Denied => "denied",
        }
    }
}

/// The read-only host baseline of MXC's bubblewrap backend (bound when present). MXC binds the
/// resolver directories under `/run` whole; agentcell binds only the resolver files in them: a
/// directory there can hold a UNIX socket (systemd-resolved's varlink and D-Bus endpoints), which
/// would let a deny-all workload resolve names, and so send data, through the host. Sockets reach
/// a view only through a policy path that grants them.
pub const BASELINE: &[&str] = &[
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/usr/bin",
    "/usr/sbin",
    "/usr/lib",
    "/usr/lib32",
    "/usr/lib64",
    "/usr/libexec",
    "/usr/share",
    "/etc",
    "/run/systemd/resolve/stub-resolv.conf",
    "/run/systemd/resolve/resolv.conf",
    "/run/NetworkManager/resolv.conf",
    "/run/NetworkManager/no-stub-resolv.conf",
    "/run/resolvconf/resolv.conf",
    "/mnt/wsl/resolv.conf",
];

/// Where the new root's content comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum RootSource {
    /// An empty root with the host baseline bound read-only (running an MXC document on a host).
    HostBaseline,
    /// A root filesystem directory (an image), read-only unless the policy grants read-write.
    Rootfs { path: String },
}

/// One policy path in the view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FsEntry {
    /// Absolute, lexically normalised path.
    pub path: String,
    pub access: Access,
    /// The JSON paths that named it (several when spellings collapsed).
    pub origins: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FsView {
    pub root: RootSource,
    /// Baseline paths bound read-only when they exist (empty with a rootfs).
    pub baseline: Vec<String>,
    /// Size cap of the fresh `/tmp` tmpfs.
    pub tmp_size: String,
    /// Size cap of the empty read-only tmpfs masking a denied directory (MXC leaves it uncapped).
    pub denied_dir_tmpfs_size: String,
    /// Policy paths ordered shallow to deep: applying them in order makes the deepest win.
    pub entries: Vec<FsEntry>,
}

pub const TMP_SIZE: &str = "256m";
pub const DENIED_DIR_TMPFS_SIZE: &str = "16k";

/// Lexical normalisation: absolute, no `.`/`..`/empty components, no trailing slash.
/// Symlinks and other aliases are resolved by the runner on the real host, not here.
pub fn normalize(p: &str) -> Result<String, String> {
    if !p.starts_with('/') {
        return Err(format!(
            "{p:?} is not an absolute path; agentcell resolves no relative, '~' or Windows paths"
        ));
    }
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// Depth of a normalised path (`/` is 0).
pub fn depth(p: &str) -> usize {
    p.split('/').filter(|c| !c.is_empty()).count()
}

/// Whether `ancestor` is `p` or one of its parents (component-wise).
pub fn is_within(p: &str, ancestor: &str) -> bool {
    ancestor == "/" || p == ancestor || p.strip_prefix(ancestor).is_some_and(|r| r.starts_with('/'))
}

pub fn build(lists: &FsLists, root: RootSource, errs: &mut Vec<Violation>) -> FsView {
    let mut by_path: BTreeMap<String, FsEntry> = BTreeMap::new();
    let fsp = JsonPath::root().key("filesystem");
    for (name, list, access) in [
        ("readwritePaths", &lists.readwrite, Access::ReadWrite),
        ("readonlyPaths", &lists.readonly, Access::ReadOnly),
        ("deniedPaths", &lists.denied, Access::Denied),
    ] {
        for (i, raw) in list.iter().enumerate() {
            let origin = || fsp.key(name).index(i);
            let path = match normalize(raw) {
                Ok(p) => p,
                Err(m) => {
                    errs.push(Violation::new(origin(), m));
                    continue;
                }
            };
            let e = by_path.entry(path.clone()).or_insert(FsEntry {
                path,
                access,
                origins: vec![],
            });
            e.access = e.access.max(access);
            e.origins.push(format!("filesystem.{name}[{i}]"));
        }
    }
    // `by_path` yields paths in order; a stable sort by depth keeps that order within a depth.
    let mut entries: Vec<FsEntry> = by_path.into_values().collect();
    entries.sort_by_cached_key(|e| depth(&e.path));
    let baseline = match root {
        RootSource::HostBaseline => BASELINE.iter().map(|s| s.to_string()).collect(),
        RootSource::Rootfs { .. } => Vec::new(),
    };
    FsView {
        root,
        baseline,
        tmp_size: TMP_SIZE.into(),
        denied_dir_tmpfs_size: DENIED_DIR_TMPFS_SIZE.into(),
        entries,
    }
}

impl FsView {
    /// What `path` (absolute) allows in this view, `None` when it is not in the view at all.
    /// The answer is the deepest policy entry containing it; failing that, the baseline.
    pub fn access_of(&self, path: &str) -> Option<Access> {
        let p = normalize(path).ok()?;
        if let Some(e) = self.entries.iter().rev().find(|e| is_within(&p, &e.path)) {
            return Some(e.access);
        }
        if p == "/tmp" || is_within(&p, "/tmp") {
            return Some(Access::ReadWrite);
        }
        match &self.root {
            RootSource::Rootfs { .. } => Some(Access::ReadOnly),
            RootSource::HostBaseline => self
                .baseline
                .iter()
                .any(|b| is_within(&p, b))
                .then_some(Access::ReadOnly),
        }
    }

    /// Denied entries that have a readable or writable entry below them: their mask must be a
    /// directory the deeper mounts can be placed in.
    pub fn denied_with_children(&self) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|d| d.access == Access::Denied)
            .filter(|d| {
                self.entries.iter().any(|e| {
                    e.path != d.path && is_within(&e.path, &d.path) && e.access != Access::Denied
                })
            })
            .map(|d| d.path.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(rw: &[&str], ro: &[&str], denied: &[&str]) -> FsView {
        let lists = FsLists {
            readwrite: rw.iter().map(|s| s.to_string()).collect(),
            readonly: ro.iter().map(|s| s.to_string()).collect(),
            denied: denied.iter().map(|s| s.to_string()).collect(),
        };
        let mut errs = vec![];
        let v = build(&lists, RootSource::HostBaseline, &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        v
    }

    #[test]
    fn normalizes_lexically() {
        assert_eq!(normalize("/a//b/./c/../d/").unwrap(), "/a/b/d");
        assert_eq!(normalize("/..").unwrap(), "/");
        assert!(normalize("rel/x").is_err());
        assert!(normalize("~/x").is_err());
        assert!(normalize("C:\\x").is_err());
    }

    #[test]
    fn deepest_wins_both_ways() {
        let v = view(&["/work", "/secret/inner"], &[], &["/work/.env", "/secret"]);
        assert_eq!(v.access_of("/work/src/main.rs"), Some(Access::ReadWrite));
        assert_eq!(v.access_of("/work/.env"), Some(Access::Denied));
        assert_eq!(v.access_of("/secret/x"), Some(Access::Denied));
        assert_eq!(v.access_of("/secret/inner/y"), Some(Access::ReadWrite));
        assert_eq!(v.access_of("/workshop"), None);
        assert_eq!(v.access_of("/usr/bin/env"), Some(Access::ReadOnly));
        assert_eq!(v.access_of("/home/user"), None);
        assert_eq!(v.denied_with_children(), vec!["/secret"]);
    }

    #[test]
    fn equal_paths_take_the_strictest() {
        let v = view(&["/a", "/b/"], &["/a", "/b"], &["/b/."]);
        assert_eq!(v.access_of("/a"), Some(Access::ReadOnly));
        assert_eq!(v.access_of("/b"), Some(Access::Denied));
        assert_eq!(v.entries.len(), 2);
    }

    #[test]
    fn the_baseline_binds_resolver_files_not_their_directories() {
        let v = view(&[], &[], &[]);
        assert_eq!(
            v.access_of("/run/systemd/resolve/stub-resolv.conf"),
            Some(Access::ReadOnly)
        );
        for outside in [
            "/run/systemd/resolve/io.systemd.Resolve",
            "/run/NetworkManager/anything",
            "/run/resolvconf/interface",
            "/run/systemd/resolve",
        ] {
            assert_eq!(v.access_of(outside), None, "{outside}");
        }
        assert!(
            BASELINE
                .iter()
                .all(|b| !b.starts_with("/run/") || b.ends_with(".conf"))
        );
    }

    #[test]
    fn ordered_shallow_to_deep() {
        let v = view(&["/a/b/c", "/a"], &["/a/b"], &[]);
        let order: Vec<&str> = v.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(order, ["/a", "/a/b", "/a/b/c"]);
    }
}
