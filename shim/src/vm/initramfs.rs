//! The initramfs a micro-VM boots from: two newc cpio archives, concatenated (the kernel unpacks
//! them in order). The static part (PID 1 = the guest agent, the kernel modules the guest needs
//! and `/agentcell/modules.load`) depends only on the installed assets, so it is built once and
//! cached in the VM directory under its content digest; the per-VM part is tiny and carries
//! `/agentcell/boot.json`. Archives are uncompressed: unpacking is cheaper than decompressing
//! under TCG, and the static part is a few megabytes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use agentcell_vmproto::{BOOT_CONFIG_PATH, BootConfig, MODULES_LIST_PATH};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error(
        "kernel module {0}: neither built in nor listed in modules.dep (the installed kernel lacks it)"
    )]
    MissingModule(String),
    #[error(
        "kernel module {0}: compressed modules are not supported; install a kernel whose modules are plain .ko"
    )]
    Compressed(String),
    #[error("{step} {path}: {source}")]
    Io {
        step: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("malformed archive: {0}")]
    Malformed(String),
}

fn io(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> InitramfsError {
    let path = path.to_path_buf();
    move |source| InitramfsError::Io { step, path, source }
}

/// A newc (`070701`) cpio archive being written. Parent directories are emitted before their
/// entries: the kernel's unpacker does not create them.
#[derive(Debug, Default)]
pub struct Archive {
    buf: Vec<u8>,
    ino: u32,
    dirs: BTreeSet<String>,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    fn header(&mut self, name: &str, mode: u32, size: usize) {
        self.header_rdev(name, mode, size, (0, 0));
    }

    fn header_rdev(&mut self, name: &str, mode: u32, size: usize, rdev: (u32, u32)) {
        self.ino += 1;
        let name_len = name.len() + 1;
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            if mode & S_IFDIR != 0 { 2 } else { 1 },
            0, // mtime: fixed, so the same inputs give the same bytes
            size as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name_len as u32,
            0, // check
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn parents(&mut self, path: &str) {
        let mut acc = String::new();
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for p in &parts[..parts.len().saturating_sub(1)] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(p);
            if self.dirs.insert(acc.clone()) {
                let a = acc.clone();
                self.header(&a, S_IFDIR | 0o755, 0);
            }
        }
    }

    /// Adds a directory (and its parents).
    pub fn dir(&mut self, path: &str) {
        let name = path.trim_start_matches('/').to_string();
        self.parents(&name);
        if self.dirs.insert(name.clone()) {
            self.header(&name, S_IFDIR | 0o755, 0);
        }
    }

    /// Adds a regular file (and its parents) with permission bits `perm`.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) {
        let name = path.trim_start_matches('/').to_string();
        self.parents(&name);
        self.header(&name, S_IFREG | (perm & 0o7777), data.len());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    /// Adds a character device node (and its parents).
    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) {
        let name = path.trim_start_matches('/').to_string();
        self.parents(&name);
        self.header_rdev(&name, S_IFCHR | (perm & 0o7777), 0, (major, minor));
    }

    /// The archive with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.header("TRAILER!!!", 0, 0);
        self.buf
    }
}

/// One entry read back from a newc archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub mode: u32,
    pub data: Vec<u8>,
}

/// Reads every entry of one or more concatenated newc archives (trailers skipped).
pub fn read_entries(mut buf: &[u8]) -> Result<Vec<Entry>, InitramfsError> {
    let bad = |m: &str| InitramfsError::Malformed(m.to_string());
    let mut out = Vec::new();
    let align = |n: usize| n.div_ceil(4) * 4;
    while !buf.is_empty() {
        // Padding between concatenated archives.
        if buf[0] == 0 {
            buf = &buf[1..];
            continue;
        }
        if buf.len() < 110 || &buf[..6] != b"070701" {
            return Err(bad("bad magic"));
        }
        let field = |i: usize| -> Result<usize, InitramfsError> {
            let s = std::str::from_utf8(&buf[6 + i * 8..14 + i * 8]).map_err(|_| bad("header"))?;
            usize::from_str_radix(s, 16).map_err(|_| bad("header"))
        };
        let mode = field(1)? as u32;
        let size = field(6)?;
        let name_len = field(11)?;
        let name_end = 110 + name_len;
        let data_start = align(name_end);
        let data_end = data_start + size;
        if buf.len() < data_end || name_len == 0 {
            return Err(bad("truncated entry"));
        }
        let name = String::from_utf8_lossy(&buf[110..name_end - 1]).into_owned();
        let data = buf[data_start..data_end].to_vec();
        buf = &buf[align(data_end).min(buf.len())..];
        if name != "TRAILER!!!" {
            out.push(Entry { name, mode, data });
        }
    }
    Ok(out)
}

fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = base.split(".ko").next().unwrap_or(base);
    stem.replace('-', "_")
}

/// The module files to load, in load order (dependencies first, each once), for `wanted`
/// module names, from a `modules.dep` (`path: dep dep ...`, paths relative to the modules
/// directory). Built-in modules (`modules.builtin`) need nothing.
pub fn resolve_modules(
    modules_dep: &str,
    modules_builtin: &str,
    wanted: &[&str],
) -> Result<Vec<String>, InitramfsError> {
    let builtin: BTreeSet<String> = modules_builtin
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(module_name)
        .collect();
    let mut deps: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in modules_dep.lines() {
        let Some((path, rest)) = line.split_once(':') else {
            continue;
        };
        let path = path.trim().to_string();
        let ds = rest.split_whitespace().map(String::from).collect();
        deps.insert(module_name(&path), (path, ds));
    }
    fn visit(
        name: &str,
        deps: &BTreeMap<String, (String, Vec<String>)>,
        builtin: &BTreeSet<String>,
        seen: &mut BTreeSet<String>,
        out: &mut Vec<String>,
    ) -> Result<(), InitramfsError> {
        let name = name.replace('-', "_");
        if builtin.contains(&name) || !seen.insert(name.clone()) {
            return Ok(());
        }
        let (path, ds) = deps
            .get(&name)
            .ok_or_else(|| InitramfsError::MissingModule(name.clone()))?;
        if path.ends_with(".xz") || path.ends_with(".zst") || path.ends_with(".gz") {
            return Err(InitramfsError::Compressed(path.clone()));
        }
        for d in ds {
            visit(&module_name(d), deps, builtin, seen, out)?;
        }
        out.push(path.clone());
        Ok(())
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for w in wanted {
        visit(w, &deps, &builtin, &mut seen, &mut out)?;
    }
    Ok(out)
}

/// What the static part is made of.
#[derive(Debug, Clone)]
pub struct StaticInputs {
    /// The guest agent binary (becomes `/init`).
    pub agent: PathBuf,
    /// A modules directory holding `modules.dep`, `modules.builtin` and the `.ko` files.
    pub modules_dir: PathBuf,
    /// The kernel release (`/lib/modules/<release>` in the guest).
    pub release: String,
    /// Module names the guest needs.
    pub wanted: Vec<String>,
}

/// Builds the static archive in memory: `/init`, the modules under `/lib/modules/<release>/`,
/// and `/agentcell/modules.load` listing them in load order.
pub fn build_static(inputs: &StaticInputs) -> Result<Vec<u8>, InitramfsError> {
    let read = |p: &Path| std::fs::read(p).map_err(io("reading", p));
    let dep_path = inputs.modules_dir.join("modules.dep");
    let builtin_path = inputs.modules_dir.join("modules.builtin");
    let dep = String::from_utf8_lossy(&read(&dep_path)?).into_owned();
    let builtin = std::fs::read_to_string(&builtin_path).unwrap_or_default();
    let wanted: Vec<&str> = inputs.wanted.iter().map(String::as_str).collect();
    let modules = resolve_modules(&dep, &builtin, &wanted)?;
    let mut a = Archive::new();
    a.file("init", 0o755, &read(&inputs.agent)?);
    a.dir("dev");
    // The kernel opens /dev/console for PID 1 before any devtmpfs exists: without the node the
    // agent starts with no stdio and its early messages are lost.
    a.char_dev("dev/console", 0o600, 5, 1);
    a.dir("proc");
    a.dir("sys");
    a.dir("run");
    a.dir("tmp");
    let mut list = String::new();
    for m in &modules {
        let guest = format!("lib/modules/{}/{m}", inputs.release);
        a.file(&guest, 0o644, &read(&inputs.modules_dir.join(m))?);
        list.push_str(&guest);
        list.push('\n');
    }
    a.file(MODULES_LIST_PATH, 0o644, list.as_bytes());
    Ok(a.finish())
}

/// The static archive, cached in `cache_dir` as `initramfs-<digest>.cpio` where the digest
/// covers every input byte: a new agent or kernel gives a new file, an unchanged one is reused.
pub fn cached_static(inputs: &StaticInputs, cache_dir: &Path) -> Result<PathBuf, InitramfsError> {
    let mut h = Sha256::new();
    // The layout version: bump it when build_static changes what it writes.
    h.update(b"agentcell-initramfs-v2\0");
    h.update(std::fs::read(&inputs.agent).map_err(io("reading", &inputs.agent))?);
    h.update(inputs.release.as_bytes());
    for w in &inputs.wanted {
        h.update(w.as_bytes());
        h.update(b"\0");
    }
    let dep = inputs.modules_dir.join("modules.dep");
    h.update(std::fs::read(&dep).map_err(io("reading", &dep))?);
    let digest = hex::encode(&h.finalize()[..12]);
    let path = cache_dir.join(format!("initramfs-{digest}.cpio"));
    if path.exists() {
        return Ok(path);
    }
    std::fs::create_dir_all(cache_dir).map_err(io("creating", cache_dir))?;
    let bytes = build_static(inputs)?;
    // Written aside and renamed: a concurrent boot never reads half an archive.
    let tmp = cache_dir.join(format!(".initramfs-{digest}.{}", std::process::id()));
    std::fs::write(&tmp, &bytes).map_err(io("writing", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("renaming", &path))?;
    tracing::info!(path = %path.display(), bytes = bytes.len(), "built the static initramfs");
    // Archives of replaced agents or kernels: removed once an hour old (a boot that just chose
    // one reads it within milliseconds).
    for e in std::fs::read_dir(cache_dir).into_iter().flatten().flatten() {
        let old = e.path();
        let stale = old != path
            && e.file_name().to_string_lossy().starts_with("initramfs-")
            && e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|a| a.as_secs() > 3600));
        if stale {
            let _ = std::fs::remove_file(&old);
        }
    }
    Ok(path)
}

/// The per-VM archive: `/agentcell/boot.json`.
pub fn boot_archive(cfg: &BootConfig) -> Vec<u8> {
    let mut a = Archive::new();
    a.file(
        BOOT_CONFIG_PATH,
        0o644,
        &serde_json::to_vec(cfg).expect("boot config serializes"),
    );
    a.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archives_read_back_with_parents_first_and_concatenate() {
        let mut a = Archive::new();
        a.file("/lib/modules/6.1/kernel/x.ko", 0o644, b"abc");
        a.file("init", 0o755, b"\x7fELF12345");
        let first = a.finish();
        assert_eq!(first.len() % 4, 0);
        let cfg = BootConfig {
            hostname: "vm1".into(),
            ..Default::default()
        };
        let mut both = first.clone();
        both.extend(boot_archive(&cfg));
        let e = read_entries(&both).unwrap();
        let names: Vec<&str> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "lib",
                "lib/modules",
                "lib/modules/6.1",
                "lib/modules/6.1/kernel",
                "lib/modules/6.1/kernel/x.ko",
                "init",
                "agentcell",
                "agentcell/boot.json"
            ]
        );
        assert_eq!(e[4].data, b"abc");
        assert_eq!(e[5].mode, S_IFREG | 0o755);
        assert_eq!(e[0].mode & S_IFDIR, S_IFDIR);
        let back: BootConfig = serde_json::from_slice(&e[7].data).unwrap();
        assert_eq!(back, cfg);
    }

    /// Debian's own cpio reads what we write (the format is the kernel's, not just ours).
    #[test]
    fn cpio_lists_the_archive() {
        use std::io::Write as _;
        let mut a = Archive::new();
        a.file("agentcell/modules.load", 0o644, b"x\n");
        a.char_dev("dev/console", 0o600, 5, 1);
        let bytes = a.finish();
        let mut child = std::process::Command::new("cpio")
            .args(["-it", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("cpio (scripts/setup.sh installs it)");
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "agentcell\nagentcell/modules.load\ndev\ndev/console\n"
        );
        let mut child = std::process::Command::new("cpio")
            .args(["-itv", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        let listing = String::from_utf8_lossy(&out.stdout);
        let console = listing
            .lines()
            .find(|l| l.ends_with("dev/console"))
            .unwrap();
        assert!(
            console.starts_with("crw-------") && console.contains("5,") && console.contains(" 1 "),
            "{console}"
        );
    }

    #[test]
    fn modules_resolve_dependencies_first_once_and_skip_builtins() {
        let dep = "kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko kernel/fs/fscache/fscache.ko\n\
                   kernel/net/9p/9pnet.ko:\n\
                   kernel/fs/netfs/netfs.ko:\n\
                   kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko\n\
                   kernel/net/9p/9pnet_virtio.ko: kernel/drivers/virtio/virtio.ko kernel/net/9p/9pnet.ko\n\
                   kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n\
                   kernel/drivers/virtio/virtio_ring.ko:\n";
        let got = resolve_modules(dep, "", &["9pnet-virtio", "9p"]).unwrap();
        assert_eq!(
            got,
            [
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/virtio/virtio.ko",
                "kernel/net/9p/9pnet.ko",
                "kernel/net/9p/9pnet_virtio.ko",
                "kernel/fs/netfs/netfs.ko",
                "kernel/fs/fscache/fscache.ko",
                "kernel/fs/9p/9p.ko",
            ]
        );
        let builtin = "kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio_ring.ko\n";
        let got = resolve_modules(dep, builtin, &["9pnet_virtio"]).unwrap();
        assert_eq!(
            got,
            ["kernel/net/9p/9pnet.ko", "kernel/net/9p/9pnet_virtio.ko"]
        );
        assert!(
            resolve_modules(dep, builtin, &["virtio"])
                .unwrap()
                .is_empty()
        );
        assert!(matches!(
            resolve_modules(dep, "", &["virtio_net"]),
            Err(InitramfsError::MissingModule(m)) if m == "virtio_net"
        ));
        assert!(matches!(
            resolve_modules("kernel/a.ko.xz:\n", "", &["a"]),
            Err(InitramfsError::Compressed(_))
        ));
    }
}
