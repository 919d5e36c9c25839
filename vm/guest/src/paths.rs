//! Path handling for container views: targets are resolved inside the new root before
//! `pivot_root`, so a symlink in an image must not lead outside it.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("{0}: not an absolute path")]
    NotAbsolute(String),
    #[error("{0}: too many levels of symbolic links")]
    Loop(String),
    #[error("{0}: must be a plain name (no '/', not '.' or '..')")]
    BadName(String),
    #[error("{0}: '..' is not allowed")]
    DotDot(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}: not found in PATH")]
    NotFound(String),
}

const MAX_LINKS: u32 = 40;

/// Resolves `target` (absolute, as seen inside the container) below `root`, following symlinks
/// as if `root` were `/`: absolute links restart at `root`, `..` stops at `root`. Components
/// that do not exist yet are taken literally (the caller creates them).
pub fn secure_join(root: &Path, target: &str) -> Result<PathBuf, PathError> {
    if !target.starts_with('/') {
        return Err(PathError::NotAbsolute(target.to_string()));
    }
    let mut pending: VecDeque<OsString> = components(Path::new(target));
    let mut resolved: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(c) = pending.pop_front() {
        if c == ".." {
            resolved.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&resolved);
        candidate.push(&c);
        match fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(PathError::Loop(target.to_string()));
                }
                let dest = fs::read_link(&candidate).map_err(|source| PathError::Io {
                    path: candidate.display().to_string(),
                    source,
                })?;
                if dest.is_absolute() {
                    resolved.clear();
                }
                for d in components(&dest).into_iter().rev() {
                    pending.push_front(d);
                }
            }
            _ => resolved.push(c),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&resolved);
    Ok(out)
}

/// Normal components and `..`, in order (`.` and the root dropped).
fn components(p: &Path) -> VecDeque<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

/// A name used as one path component (share tag, container id).
pub fn plain_name(name: &str) -> Result<&str, PathError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(PathError::BadName(name.to_string()));
    }
    Ok(name)
}

/// `shares_dir/tag/subpath`, with `subpath` resolved inside the share.
pub fn share_path(shares_dir: &Path, tag: &str, subpath: &str) -> Result<PathBuf, PathError> {
    let share = shares_dir.join(plain_name(tag)?);
    if Path::new(subpath)
        .components()
        .any(|c| c == Component::ParentDir)
    {
        return Err(PathError::DotDot(subpath.to_string()));
    }
    secure_join(&share, &format!("/{}", subpath.trim_start_matches('/')))
}

/// Creates what a mount needs to be mounted on: a directory, or an empty file (and its parent
/// directories). An existing mount point of the other kind is left for `mount` to refuse.
pub fn ensure_mount_point(path: &Path, dir: bool) -> Result<(), PathError> {
    let io = |source| PathError::Io {
        path: path.display().to_string(),
        source,
    };
    if fs::symlink_metadata(path).is_ok() {
        return Ok(());
    }
    if dir {
        fs::create_dir_all(path).map_err(io)?;
    } else {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io)?;
        }
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map_err(io)?;
    }
    Ok(())
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The file `execve` gets for `arg0`: as is when it has a `/`, else the first executable regular
/// file named so in the `PATH` of `env` (the default search path when `env` has none).
pub fn resolve_program(arg0: &str, env: &[String]) -> Result<PathBuf, PathError> {
    if arg0.contains('/') {
        return Ok(PathBuf::from(arg0));
    }
    if arg0.is_empty() {
        return Err(PathError::NotFound(arg0.to_string()));
    }
    let path = env
        .iter()
        .rev()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let cand = Path::new(dir).join(arg0);
        if let Ok(m) = fs::metadata(&cand)
            && m.is_file()
            && m.permissions().mode() & 0o111 != 0
        {
            return Ok(cand);
        }
    }
    Err(PathError::NotFound(arg0.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("agentcell-guest-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn symlinks_and_dotdot_stay_inside_the_root() {
        let root = tmp("join");
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        symlink("/usr/lib", root.join("lib")).unwrap();
        symlink("../../../../etc", root.join("usr/escape")).unwrap();
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();
        assert_eq!(
            secure_join(&root, "/lib/x").unwrap(),
            root.join("usr/lib/x")
        );
        assert_eq!(
            secure_join(&root, "/usr/escape/passwd").unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(
            secure_join(&root, "/../../a/./b").unwrap(),
            root.join("a/b")
        );
        assert_eq!(secure_join(&root, "/").unwrap(), root);
        assert!(matches!(
            secure_join(&root, "/loop1/x"),
            Err(PathError::Loop(_))
        ));
        assert!(matches!(
            secure_join(&root, "relative"),
            Err(PathError::NotAbsolute(_))
        ));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn share_paths_refuse_escapes() {
        let d = Path::new("/run/shares");
        assert_eq!(
            share_path(d, "root", "rootfs/x").unwrap(),
            PathBuf::from("/run/shares/root/rootfs/x")
        );
        assert_eq!(
            share_path(d, "root", "").unwrap(),
            PathBuf::from("/run/shares/root")
        );
        assert!(share_path(d, "..", "x").is_err());
        assert!(share_path(d, "a/b", "x").is_err());
        assert!(share_path(d, "root", "../other").is_err());
    }

    #[test]
    fn mount_points_are_created_as_dir_or_file() {
        let root = tmp("mp");
        ensure_mount_point(&root.join("a/b/dir"), true).unwrap();
        ensure_mount_point(&root.join("c/d/file"), false).unwrap();
        assert!(root.join("a/b/dir").is_dir());
        assert!(root.join("c/d/file").is_file());
        // An existing one is left alone.
        fs::write(root.join("c/d/file"), "keep").unwrap();
        ensure_mount_point(&root.join("c/d/file"), false).unwrap();
        assert_eq!(fs::read_to_string(root.join("c/d/file")).unwrap(), "keep");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn programs_are_found_in_the_spec_path_only() {
        let root = tmp("path");
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::write(root.join("bin/tool"), "").unwrap();
        fs::set_permissions(root.join("bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(root.join("bin/data"), "").unwrap();
        let env = vec![format!("PATH=/nonexistent:{}", root.join("bin").display())];
        assert_eq!(
            resolve_program("tool", &env).unwrap(),
            root.join("bin/tool")
        );
        assert!(matches!(
            resolve_program("data", &env),
            Err(PathError::NotFound(_))
        ));
        assert_eq!(
            resolve_program("/abs/x", &env).unwrap(),
            PathBuf::from("/abs/x")
        );
        assert!(resolve_program("tool", &["PATH=/nonexistent".into()]).is_err());
        fs::remove_dir_all(&root).unwrap();
    }
}
