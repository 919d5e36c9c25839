//! Other names of denied objects. Bind-mount aliases are found from `/proc/self/mountinfo`
//! without walking trees: an object whose path inside its filesystem is F is visible at every
//! mount point P whose root R (same device) contains F, at P + (F - R). Names through the view's
//! own grants come from their real paths: a grant named N whose real path is R shows the host
//! path H (inside R) at N + (H - R), whatever symlinks led from N to R. Hard links of the files
//! inside a denied directory are collected by a bounded walk of that directory.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// How many entries the walk of one denied directory for hard-linked files may visit before the
/// run is refused (a denied directory that large cannot be proven to have no other name in the
/// view at a start-up cost worth paying; deny a narrower path, or the tree holding the links).
pub const DENIED_DIR_SCAN_LIMIT: usize = 50_000;

/// Every name the host path `host` has in the view through the allowed `grants` (sandbox name,
/// real host path), each only where that grant is what one sees there (no deeper grant, by name,
/// shows something else).
pub fn names_in_view(host: &Path, grants: &[(PathBuf, PathBuf)]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for (name, real) in grants {
        let Ok(rest) = host.strip_prefix(real) else {
            continue;
        };
        let n = if rest.as_os_str().is_empty() {
            name.clone()
        } else {
            name.join(rest)
        };
        let seen_through = grants
            .iter()
            .filter(|(g, _)| n.starts_with(g))
            .max_by_key(|(g, _)| g.components().count())
            .map(|(g, _)| g);
        if seen_through == Some(name) && !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// (device, inode) of every regular file under the denied directory `dir` with more than one
/// name, not following symlinks and leaving out `skip` (allowed paths below it, which are not
/// denied). `Err(limit)` once more than `limit` entries were visited.
pub fn linked_files_in(
    dir: &Path,
    skip: &HashSet<PathBuf>,
    limit: usize,
) -> Result<HashSet<(u64, u64)>, usize> {
    let mut out = HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut seen = 0usize;
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in rd.flatten() {
            seen += 1;
            if seen > limit {
                return Err(limit);
            }
            let p = entry.path();
            if skip.contains(&p) {
                continue;
            }
            // `DirEntry::metadata` does not follow a symlink.
            let Ok(md) = entry.metadata() else { continue };
            if md.is_dir() {
                stack.push(p);
            } else if md.is_file() && md.nlink() > 1 {
                out.insert((md.dev(), md.ino()));
            }
        }
    }
    Ok(out)
}

/// One line of mountinfo: the device, the root of the mount inside its filesystem, where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub dev: (u32, u32),
    pub root: PathBuf,
    pub mount_point: PathBuf,
}

pub fn read_mountinfo() -> std::io::Result<Vec<MountEntry>> {
    Ok(parse_mountinfo(&std::fs::read_to_string(
        "/proc/self/mountinfo",
    )?))
}

pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let (maj, min) = f.get(2)?.split_once(':')?;
            Some(MountEntry {
                dev: (maj.parse().ok()?, min.parse().ok()?),
                root: PathBuf::from(unescape(f.get(3)?)),
                mount_point: PathBuf::from(unescape(f.get(4)?)),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
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

/// The mount whose mount point is the longest prefix of `path` (the last one wins when stacked).
fn containing<'a>(mounts: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| path.starts_with(&m.mount_point))
        .max_by_key(|(i, m)| (m.mount_point.components().count(), *i))
        .map(|(_, m)| m)
}

/// Every other path at which `real` (an existing host path on device `dev`) is visible.
pub fn aliases_of(mounts: &[MountEntry], real: &Path, dev: (u32, u32)) -> Vec<PathBuf> {
    let Some(own) = containing(mounts, real) else {
        return Vec::new();
    };
    let Ok(rel) = real.strip_prefix(&own.mount_point) else {
        return Vec::new();
    };
    let fs_path = own.root.join(rel);
    let mut out = Vec::new();
    for m in mounts.iter().filter(|m| m.dev == dev) {
        if let Ok(inside) = fs_path.strip_prefix(&m.root) {
            let alias = m.mount_point.join(inside);
            // Only where that mount is what one really sees at the alias path.
            if alias != real
                && containing(mounts, &alias).is_some_and(|c| c == m)
                && !out.contains(&alias)
            {
                out.push(alias);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_through_aliased_grants() {
        let g = |n: &str, r: &str| (PathBuf::from(n), PathBuf::from(r));
        // `b` is a symlink to `a`; `link/sub` has a symlinked ancestor; `a/own` shows another tree.
        let grants = [
            g("/x/a", "/x/a"),
            g("/x/b", "/x/a"),
            g("/x/link/sub", "/x/a/sub"),
            g("/x/a/own", "/y"),
        ];
        let names = names_in_view(Path::new("/x/a/sub/secret"), &grants);
        assert_eq!(
            names,
            [
                PathBuf::from("/x/a/sub/secret"),
                "/x/b/sub/secret".into(),
                "/x/link/sub/secret".into()
            ]
        );
        // Below a deeper grant, its own tree is what is seen, not the outer one.
        assert_eq!(
            names_in_view(Path::new("/x/a/own/k"), &grants),
            [PathBuf::from("/x/b/own/k")]
        );
        assert_eq!(
            names_in_view(Path::new("/y/k"), &grants),
            [PathBuf::from("/x/a/own/k")]
        );
        assert_eq!(
            names_in_view(Path::new("/z"), &grants),
            Vec::<PathBuf>::new()
        );
    }

    #[test]
    fn linked_files_of_a_denied_directory_and_the_bound() {
        let dir = std::env::temp_dir().join(format!("ac-linked-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("denied/deep")).unwrap();
        std::fs::create_dir_all(dir.join("denied/allowed")).unwrap();
        std::fs::create_dir_all(dir.join("other")).unwrap();
        std::fs::write(dir.join("denied/deep/token"), "t").unwrap();
        std::fs::write(dir.join("denied/single"), "s").unwrap();
        std::fs::write(dir.join("denied/allowed/pub"), "p").unwrap();
        std::fs::hard_link(dir.join("denied/deep/token"), dir.join("other/copy")).unwrap();
        std::fs::hard_link(dir.join("denied/allowed/pub"), dir.join("other/pub")).unwrap();
        let id = |p: &str| {
            let m = std::fs::metadata(dir.join(p)).unwrap();
            (m.dev(), m.ino())
        };
        let skip = HashSet::from([dir.join("denied/allowed")]);
        assert_eq!(
            linked_files_in(&dir.join("denied"), &skip, 100),
            Ok(HashSet::from([id("denied/deep/token")]))
        );
        // denied/{deep,single,allowed} and deep/token: four entries.
        assert_eq!(linked_files_in(&dir.join("denied"), &skip, 3), Err(3));
        assert!(linked_files_in(&dir.join("denied"), &skip, 4).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    const INFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 8:1 /data /srv/alias rw,relatime shared:1 - ext4 /dev/sda1 rw
31 22 8:1 /data/sub /mnt/with\\040space rw - ext4 /dev/sda1 rw
40 22 0:50 / /tmp rw - tmpfs tmpfs rw
";

    #[test]
    fn finds_bind_aliases() {
        let m = parse_mountinfo(INFO);
        assert_eq!(m[2].mount_point, PathBuf::from("/mnt/with space"));
        let a = aliases_of(&m, Path::new("/data/sub/secret"), (8, 1));
        assert!(a.contains(&PathBuf::from("/srv/alias/sub/secret")), "{a:?}");
        assert!(
            a.contains(&PathBuf::from("/mnt/with space/secret")),
            "{a:?}"
        );
        assert_eq!(
            aliases_of(&m, Path::new("/tmp/x"), (0, 50)),
            Vec::<PathBuf>::new()
        );
    }
}
