//! Resolve a path once, act on what was resolved. A policy path is opened as an `O_PATH`
//! descriptor with `openat2` (below a grant: no symlink, no magic link, never above the grant),
//! and the runtime is given a private copy of that mount (`open_tree` + `move_mount` onto a
//! root-only staging directory) instead of the path string: whatever a workload with write access
//! to a granted tree renames or swaps after that moment changes nothing that gets mounted. After
//! the runtime has built the view, every target is checked inside it (`verify`).

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path}: a symlink where the policy expects a directory or file (not followed); it was planted in a tree something can write: remove it (rm {path}) to run"
    )]
    Symlink { path: String },
    #[error(
        "{path}: became a symlink while the sandbox's view was built (something with write access swapped it; not followed); refusing to start"
    )]
    Swapped { path: String },
    #[error(
        "{path}: the sandbox's view does not hold what was resolved ({what}); refusing to start"
    )]
    Mismatch { path: String, what: String },
    #[error(
        "{path}: the source of the mount at {dest} has a symlink on the way (not followed: something with write access may have swapped it); name the source by its real path"
    )]
    SourceSymlink { path: String, dest: String },
}

impl ResolveError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Self::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// An object opened once: its descriptor and identity.
#[derive(Debug, Clone)]
pub struct Handle {
    pub fd: Arc<OwnedFd>,
    pub dev: u64,
    pub ino: u64,
    pub is_dir: bool,
}

impl PartialEq for Handle {
    fn eq(&self, o: &Self) -> bool {
        (self.dev, self.ino) == (o.dev, o.ino)
    }
}
impl Eq for Handle {}

impl Handle {
    pub fn new(fd: OwnedFd) -> std::io::Result<Self> {
        let st = fstat(fd.as_fd())?;
        Ok(Self {
            fd: Arc::new(fd),
            dev: st.st_dev,
            ino: st.st_ino,
            is_dir: st.st_mode & libc::S_IFMT == libc::S_IFDIR,
        })
    }

    /// Where the descriptor's object is on the host now (for reports and `--print-spec`).
    pub fn path(&self) -> std::io::Result<PathBuf> {
        std::fs::read_link(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }
}

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_NO_SYMLINKS: u64 = 0x04;
const RESOLVE_BENEATH: u64 = 0x08;
const RESOLVE_IN_ROOT: u64 = 0x10;
const OPEN_TREE_CLONE: libc::c_uint = 1;
const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x04;
const STATX_ATTR_MOUNT_ROOT: u64 = 0x2000;
const TMPFS_MAGIC: i64 = 0x0102_1994;

fn cstr(p: &Path) -> std::io::Result<CString> {
    let b = p.as_os_str().as_bytes();
    CString::new(if b.is_empty() { b"." as &[u8] } else { b })
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

fn openat2(dir: libc::c_int, p: &Path, flags: i32, resolve: u64) -> std::io::Result<OwnedFd> {
    let c = cstr(p)?;
    let fd = openat2_raw(dir, &c, flags, resolve);
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `openat2` with `O_CLOEXEC` added, retried on `EAGAIN` (a concurrent rename somewhere on the
/// host made the kernel's check inconclusive). Allocates nothing and takes no lock, so a forked
/// child may call it before `exec` (the micro-VM's view is built there). -1 and errno on error.
pub fn openat2_raw(dir: libc::c_int, p: &std::ffi::CStr, flags: i32, resolve: u64) -> libc::c_int {
    // SAFETY: open_how is plain data; zeroed is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = resolve;
    loop {
        // SAFETY: a valid (or AT_FDCWD) dirfd, a NUL-terminated path, open_how of the size passed.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir,
                p.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        // SAFETY: reading this thread's errno.
        if fd >= 0 || unsafe { *libc::__errno_location() } != libc::EAGAIN {
            return fd as libc::c_int;
        }
    }
}

/// The resolution a path step below a directory we hold uses: no symlink, no magic link,
/// never above that directory.
pub const BENEATH_NO_SYMLINKS: u64 = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;

/// Opens an absolute host path, following the host's own symlinks (never magic links): a
/// policy path's prefix outside every grant is the host's business.
pub fn open_host(p: &Path) -> std::io::Result<Handle> {
    Handle::new(openat2(
        libc::AT_FDCWD,
        p,
        libc::O_PATH,
        RESOLVE_NO_MAGICLINKS,
    )?)
}

/// Opens an absolute host path without following any symlink on the way: a mount source the
/// shim did not choose (a pod's volume), where any component may lie in a tree a workload
/// writes. A symlink on the way is `ELOOP`.
pub fn open_host_nofollow(p: &Path) -> std::io::Result<Handle> {
    Handle::new(openat2(
        libc::AT_FDCWD,
        p,
        libc::O_PATH,
        RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
    )?)
}

/// Opens `rel` below `dir` without following any symlink or leaving `dir`. A symlink on the
/// way (or at the end) is `ELOOP`.
pub fn open_beneath(dir: BorrowedFd, rel: &Path) -> std::io::Result<Handle> {
    Handle::new(openat2(
        dir.as_raw_fd(),
        rel,
        libc::O_PATH,
        RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
    )?)
}

/// Opens `rel` below `dir` as a directory to work in (mkdir, statfs), same rules.
fn open_dir_beneath(dir: BorrowedFd, rel: &Path) -> std::io::Result<OwnedFd> {
    openat2(
        dir.as_raw_fd(),
        rel,
        libc::O_PATH | libc::O_DIRECTORY,
        RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
    )
}

/// Like `open_beneath`, creating the missing directories of `rel` (mode 0755) one component at
/// a time, each below the one opened before: a directory for a mount point that the runtime
/// would otherwise create by name.
pub fn create_beneath(dir: BorrowedFd, rel: &Path) -> std::io::Result<Handle> {
    let mut cur: OwnedFd = dir.try_clone_to_owned()?;
    for c in rel.components() {
        let Component::Normal(name) = c else {
            return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
        };
        let n = cstr(Path::new(name))?;
        // SAFETY: a valid dirfd and a NUL-terminated single component.
        if unsafe { libc::mkdirat(cur.as_raw_fd(), n.as_ptr(), 0o755) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(e);
            }
        }
        cur = open_dir_beneath(cur.as_fd(), Path::new(name))?;
    }
    Handle::new(cur)
}

pub fn fstat(fd: BorrowedFd) -> std::io::Result<libc::stat> {
    // SAFETY: stat is plain data; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a stat buffer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}

/// Whether the descriptor's object is the root of a mount.
pub fn is_mount_root(fd: BorrowedFd) -> std::io::Result<bool> {
    // SAFETY: statx is plain data.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let empty = c"";
    // SAFETY: a valid descriptor, an empty path with AT_EMPTY_PATH, a statx buffer.
    let r = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            0,
            &mut stx,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT != 0
        && stx.stx_attributes & STATX_ATTR_MOUNT_ROOT != 0)
}

/// (read-only?, filesystem magic) of the mount the descriptor lies on.
fn mount_kind(fd: BorrowedFd) -> std::io::Result<(bool, i64)> {
    // SAFETY: statfs is plain data.
    let mut sf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a statfs buffer.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut sf) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs is plain data.
    let mut sv: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a statvfs buffer.
    if unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut sv) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((sv.f_flag & libc::ST_RDONLY != 0, sf.f_type as i64))
}

/// A private copy of the mount tree at `fd` (with its submounts), attached to nothing.
pub fn clone_tree(fd: BorrowedFd) -> std::io::Result<OwnedFd> {
    // SAFETY: a valid descriptor, an empty path with AT_EMPTY_PATH.
    let r = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            fd.as_raw_fd(),
            c"".as_ptr(),
            OPEN_TREE_CLONE
                | OPEN_TREE_CLOEXEC
                | libc::AT_EMPTY_PATH as libc::c_uint
                | libc::AT_RECURSIVE as libc::c_uint,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

/// Makes a detached copy (`clone_tree`) read-only, nosuid and nodev, with all its submounts.
pub fn set_readonly_tree(tree: BorrowedFd) -> std::io::Result<()> {
    const MOUNT_ATTR_RDONLY: u64 = 0x01;
    const MOUNT_ATTR_NOSUID: u64 = 0x02;
    const MOUNT_ATTR_NODEV: u64 = 0x04;
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: a valid descriptor, an empty path with AT_EMPTY_PATH, mount_attr of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn move_mount(from: BorrowedFd, to: &Path) -> std::io::Result<()> {
    let to = cstr(to)?;
    // SAFETY: valid descriptors and NUL-terminated paths.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            from.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn mount_tmpfs(at: &Path) -> std::io::Result<()> {
    let at = cstr(at)?;
    // SAFETY: NUL-terminated strings; a fresh tmpfs, then made private so nothing staged in it
    // propagates into another mount namespace.
    unsafe {
        if libc::mount(
            c"agentcell-src".as_ptr(),
            at.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            c"mode=0700,size=64k".as_ptr().cast(),
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        if libc::mount(
            std::ptr::null(),
            at.as_ptr(),
            std::ptr::null(),
            libc::MS_PRIVATE | libc::MS_REC,
            std::ptr::null(),
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Detaches the mount at `p` and everything below it (lazily: a copy held by a container's
/// namespace stays). Not mounted is not an error.
pub fn detach(p: &Path) -> std::io::Result<()> {
    let c = cstr(p)?;
    // SAFETY: a NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) } != 0 {
        let e = std::io::Error::last_os_error();
        if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) {
            return Err(e);
        }
    }
    Ok(())
}

/// Whether `p` (not followed) is a mount point.
pub fn path_is_mount_point(p: &Path) -> bool {
    openat2(
        libc::AT_FDCWD,
        p,
        libc::O_PATH | libc::O_NOFOLLOW,
        RESOLVE_NO_MAGICLINKS,
    )
    .and_then(|fd| is_mount_root(fd.as_fd()))
    .unwrap_or(false)
}

/// The staging directory: a private, root-only tmpfs at `<sandbox state>/src`, holding one
/// copy of each resolved source mount under `N`. Its path is what the runtime is told: no
/// workload can write anything on it, so the runtime's own resolution of the string is safe.
pub struct Staging {
    dir: PathBuf,
    next: usize,
    mounted: bool,
}

impl Staging {
    pub fn new(dir: &Path) -> Result<Self, ResolveError> {
        std::fs::create_dir_all(dir).map_err(ResolveError::io(dir))?;
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(ResolveError::io(dir))?;
        mount_tmpfs(dir).map_err(ResolveError::io(dir))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            next: 0,
            mounted: true,
        })
    }

    /// Attaches a copy of `h`'s mount tree (rooted at `h`) under the staging directory and
    /// returns that path.
    pub fn stage(&mut self, h: &Handle, name: &Path) -> Result<PathBuf, ResolveError> {
        let at = self.dir.join(self.next.to_string());
        self.next += 1;
        let made = if h.is_dir {
            std::fs::create_dir(&at)
        } else {
            std::fs::File::create(&at).map(drop)
        };
        made.map_err(ResolveError::io(&at))?;
        let tree = clone_tree(h.fd.as_fd()).map_err(ResolveError::io(name))?;
        move_mount(tree.as_fd(), &at).map_err(ResolveError::io(name))?;
        Ok(at)
    }

    /// Detaches every staged copy (the container's view keeps its own).
    pub fn detach(&mut self) -> Result<(), ResolveError> {
        if self.mounted {
            detach(&self.dir).map_err(ResolveError::io(&self.dir))?;
            self.mounted = false;
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(e) = self.detach() {
            tracing::warn!(error = %e, "detaching the staged sources");
        }
    }
}

/// What a target of the view must be once the runtime has built it.
#[derive(Debug, Clone)]
pub enum Expect<'a> {
    /// A mount of exactly this object, read-only or not.
    Bind { handle: &'a Handle, readonly: bool },
    /// An empty tmpfs of ours (a placeholder or a denied directory's mask).
    Tmpfs { readonly: Option<bool> },
    /// `/dev/null` bound over a denied file.
    Null,
}

/// Checks each (target, expectation, follow symlinks in the view?) inside the view rooted at `root` (`/proc/<pid>/root` of
/// the container's init, which has pivoted into it): the target is reached without a symlink
/// and is a mount root holding what was resolved.
pub fn verify(root: &Path, targets: &[(PathBuf, Expect, bool)]) -> Result<(), ResolveError> {
    let rootfd = openat2(libc::AT_FDCWD, root, libc::O_PATH | libc::O_DIRECTORY, 0)
        .map_err(ResolveError::io(root))?;
    let null = std::fs::metadata("/dev/null").map_err(ResolveError::io(Path::new("/dev/null")))?;
    for (target, expect, follow) in targets {
        let name = target.display().to_string();
        let mismatch = |what: String| ResolveError::Mismatch {
            path: name.clone(),
            what,
        };
        let rel = target.strip_prefix("/").unwrap_or(target);
        let fd = match openat2(
            rootfd.as_raw_fd(),
            rel,
            libc::O_PATH,
            // A name through a followed host symlink resolves inside the view, never out of it.
            if *follow {
                RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS
            } else {
                RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
            },
        ) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(ResolveError::Symlink { path: name });
            }
            Err(e) => return Err(mismatch(format!("cannot be opened: {e}"))),
        };
        if !is_mount_root(fd.as_fd()).map_err(ResolveError::io(target))? {
            return Err(mismatch("not a mount point".into()));
        }
        let st = fstat(fd.as_fd()).map_err(ResolveError::io(target))?;
        let (ro, magic) = mount_kind(fd.as_fd()).map_err(ResolveError::io(target))?;
        match expect {
            Expect::Bind { handle, readonly } => {
                if (st.st_dev, st.st_ino) != (handle.dev, handle.ino) {
                    return Err(mismatch("another object is mounted there".into()));
                }
                if *readonly && !ro {
                    return Err(mismatch("writable where read-only was asked".into()));
                }
            }
            Expect::Tmpfs { readonly } => {
                if magic != TMPFS_MAGIC {
                    return Err(mismatch("not the expected empty tmpfs".into()));
                }
                if readonly.is_some_and(|r| r && !ro) {
                    return Err(mismatch("writable where read-only was asked".into()));
                }
            }
            Expect::Null => {
                use std::os::unix::fs::MetadataExt;
                if st.st_mode & libc::S_IFMT != libc::S_IFCHR || st.st_rdev != null.rdev() {
                    return Err(mismatch("not /dev/null".into()));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Below a grant, a symlink on the way or at the end is refused, `..` cannot climb out, and
    /// a plain path opens; creating makes each missing component without following anything.
    #[test]
    fn beneath_follows_no_symlink_and_stays_below() {
        let dir = std::env::temp_dir().join(format!("ac-resolve-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("g/a/b")).unwrap();
        std::os::unix::fs::symlink("/", dir.join("g/root")).unwrap();
        std::os::unix::fs::symlink("a", dir.join("g/alias")).unwrap();
        let g = open_host(&dir.join("g")).unwrap();
        let loops = |r: std::io::Result<Handle>| r.unwrap_err().raw_os_error() == Some(libc::ELOOP);
        assert!(loops(open_beneath(g.fd.as_fd(), Path::new("root"))));
        assert!(loops(open_beneath(g.fd.as_fd(), Path::new("alias/b"))));
        assert_eq!(
            open_beneath(g.fd.as_fd(), Path::new("../g"))
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EXDEV)
        );
        let b = open_beneath(g.fd.as_fd(), Path::new("a/b")).unwrap();
        assert!(b.is_dir);
        assert_eq!(b.path().unwrap(), dir.join("g/a/b"));
        let made = create_beneath(g.fd.as_fd(), Path::new("a/new/deeper")).unwrap();
        assert_eq!(made.path().unwrap(), dir.join("g/a/new/deeper"));
        assert!(loops(create_beneath(g.fd.as_fd(), Path::new("root/x"))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
