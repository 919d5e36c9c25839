//! Bind-mount aliases of denied objects, found from `/proc/self/mountinfo` without walking trees:
//! an object whose path inside its filesystem is F is visible at every mount point P whose root
//! R (same device) contains F, at P + (F - R).

use std::path::{Path, PathBuf};

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
