//! The resolver files of the host baseline. The baseline names files, never the directories that
//! hold them (`/run/systemd/resolve` also holds systemd-resolved's varlink socket: binding the
//! directory would let a deny-all workload resolve names, and so send data, through the host).
//! A socket reaches a view only through a policy path that grants it.

use std::path::{Path, PathBuf};

use agentcell_policy::plan::fs::{is_within, normalize};

/// Whether the baseline entry `b` is bound in the view: only a directory or a regular file
/// (symlinks followed, as a bind mount follows them). A socket, FIFO or device the host happens
/// to have at a baseline name is left out.
pub fn bindable(b: &Path) -> bool {
    std::fs::metadata(b).is_ok_and(|m| m.is_dir() || m.is_file())
}

/// When `etc_resolv` (the host's `/etc/resolv.conf`) is a symlink to a regular file the baseline
/// does not already show at the link's target, that file and the path to bind it at (the target
/// as the link names it, so the link bound with `/etc` resolves inside the view as it does on the
/// host): `(source, target)`. The file, not its directory, is bound.
pub fn resolv_conf_target(etc_resolv: &Path, baseline: &[String]) -> Option<(PathBuf, PathBuf)> {
    let link = std::fs::read_link(etc_resolv).ok()?;
    let named = if link.is_absolute() {
        link
    } else {
        etc_resolv.parent()?.join(link)
    };
    let target = PathBuf::from(normalize(named.to_str()?).ok()?);
    let source = std::fs::canonicalize(etc_resolv).ok()?;
    if !std::fs::metadata(&source).is_ok_and(|m| m.is_file()) {
        return None;
    }
    let t = target.to_str()?;
    // Already in the view: the baseline binds that file, or a directory holding it.
    if baseline
        .iter()
        .any(|b| is_within(t, b) && bindable(Path::new(b)))
    {
        return None;
    }
    Some((source, target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlinked_resolv_conf_binds_its_file_not_its_directory() {
        let dir = std::env::temp_dir().join(format!("ac-resolv-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::create_dir_all(dir.join("run/connman")).unwrap();
        std::fs::create_dir_all(dir.join("run/known")).unwrap();
        let dir = std::fs::canonicalize(&dir).unwrap();
        std::fs::write(
            dir.join("run/connman/resolv.conf"),
            "nameserver 198.18.0.1\n",
        )
        .unwrap();
        std::fs::write(dir.join("run/known/resolv.conf"), "nameserver 198.18.0.2\n").unwrap();
        let etc = dir.join("etc/resolv.conf");
        let p = |s: &str| dir.join(s).display().to_string();

        // A relative link to a file outside the baseline: that file, at the link's target.
        std::os::unix::fs::symlink("../run/connman/resolv.conf", &etc).unwrap();
        assert_eq!(
            resolv_conf_target(&etc, &[p("etc"), p("run/known/resolv.conf")]),
            Some((
                dir.join("run/connman/resolv.conf"),
                dir.join("run/connman/resolv.conf")
            ))
        );
        // A target the baseline binds already (as a file) needs nothing more.
        std::fs::remove_file(&etc).unwrap();
        std::os::unix::fs::symlink(dir.join("run/known/resolv.conf"), &etc).unwrap();
        assert_eq!(
            resolv_conf_target(&etc, &[p("etc"), p("run/known/resolv.conf")]),
            None
        );
        // A dangling link, a link to a directory and a regular file: nothing.
        std::fs::remove_file(&etc).unwrap();
        std::os::unix::fs::symlink("../run/none", &etc).unwrap();
        assert_eq!(resolv_conf_target(&etc, &[p("etc")]), None);
        std::fs::remove_file(&etc).unwrap();
        std::os::unix::fs::symlink("../run/connman", &etc).unwrap();
        assert_eq!(resolv_conf_target(&etc, &[p("etc")]), None);
        std::fs::remove_file(&etc).unwrap();
        std::fs::write(&etc, "nameserver 198.18.0.3\n").unwrap();
        assert_eq!(resolv_conf_target(&etc, &[p("etc")]), None);

        // A socket at a baseline name is not bound; the file and directory are.
        let sock = dir.join("run/known/io.systemd.Resolve");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        assert!(!bindable(&sock));
        assert!(bindable(&dir.join("run/known/resolv.conf")) && bindable(&dir.join("run")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
