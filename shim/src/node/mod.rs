//! Installing the shim on a Kubernetes node (`agentcell node install|uninstall|status`), usually
//! from the chart's privileged DaemonSet with the host's root mounted at `/host`.
//!
//! Every file the installer writes is recorded in a state file with what was there before (a
//! byte copy, or "absent"), together with the directories it created; `uninstall` puts each one
//! back and removes what it created, so the host ends byte for byte as it was. The text
//! transforms of containerd's configuration are in `config` (pure); this module does the file
//! system and process work.
//!
//! With `--microvm` the install also covers the micro-VM tier: `containerd-shim-agentcell-vm-v2`
//! beside the container shim, the `agentcell-vm` runtime in the same marked block (or drop-in),
//! and the guest kernel and agent copied into `/var/lib/agentcell/vm`, each file recorded like
//! the others. qemu is a host package: the installer only reports whether it is there.

pub mod config;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

pub use config::{ConfigVersion, NodeConfigError, Runtimes};

/// Where the shim binary goes on the host (on containerd's `PATH` under systemd's default).
pub const SHIM_DIR: &str = "/usr/local/bin";
pub const SHIM_NAME: &str = "containerd-shim-agentcell-v2";
/// The micro-VM tier's shim, copied beside the container tier's with `--microvm`.
pub const VM_SHIM_NAME: &str = "containerd-shim-agentcell-vm-v2";
/// Where the micro-VM assets go on the host: where the VM shim looks when containerd's
/// environment sets no `AGENTCELL_VM_DIR`.
pub const VM_DIR: &str = crate::vm::assets::DEFAULT_DIR;
/// The directories of the host's `PATH` as systemd gives it to containerd, where the VM shim
/// finds `qemu-system-x86_64`.
pub const HOST_PATH: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];
/// The node's shim settings (the runtime's `ConfigPath`).
pub const SHIM_TOML: &str = crate::containerd::config::DEFAULT_PATH;
/// Holds `node-install.json` (what the installer did, for `uninstall` and `status`) and
/// `backup/` (byte copies of the files it replaced).
pub const STATE_DIR: &str = "/etc/agentcell";

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error(transparent)]
    Config(#[from] NodeConfigError),
    #[error("{path}: install state: {message}")]
    State { path: String, message: String },
    #[error("containerd --version: {0}")]
    Detect(String),
    #[error("shim.toml: {0}")]
    ShimToml(String),
    #[error("restart containerd: {0}")]
    Restart(String),
    #[error("{path}: micro-VM assets: {message}")]
    VmAssets { path: String, message: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> NodeError + '_ {
    move |source| NodeError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The host's file system, seen from `root` (`/`, or `/host` in the DaemonSet), and where on it
/// the installer puts things (absolute host paths; the defaults suit a node, the e2e suite moves
/// them into its own directory to leave the test machine alone).
#[derive(Debug, Clone)]
pub struct Host {
    pub root: PathBuf,
    pub shim_dir: String,
    pub shim_toml: String,
    pub state_dir: String,
    /// Where `--microvm` puts the guest kernel and agent.
    pub vm_dir: String,
}

impl Host {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Host {
            root: root.into(),
            shim_dir: SHIM_DIR.to_owned(),
            shim_toml: SHIM_TOML.to_owned(),
            state_dir: STATE_DIR.to_owned(),
            vm_dir: VM_DIR.to_owned(),
        }
    }

    fn shim_dest(&self) -> String {
        format!("{}/{SHIM_NAME}", self.shim_dir.trim_end_matches('/'))
    }

    fn vm_shim_dest(&self) -> String {
        format!("{}/{VM_SHIM_NAME}", self.shim_dir.trim_end_matches('/'))
    }

    fn state_file(&self) -> String {
        format!("{}/node-install.json", self.state_dir.trim_end_matches('/'))
    }

    fn backup_dir(&self) -> String {
        format!("{}/backup", self.state_dir.trim_end_matches('/'))
    }

    /// The host path `abs` (absolute on the host) as seen from here.
    pub fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    /// A host program, run in the host's root when that is not ours (its own libraries).
    fn command(&self, program: &str) -> Command {
        if self.root == Path::new("/") {
            Command::new(program)
        } else {
            let mut c = Command::new("chroot");
            c.arg(&self.root).arg(program);
            c
        }
    }
}

/// How containerd is restarted after its configuration changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestartMode {
    /// systemd when the host runs it, otherwise report that a restart is needed.
    Auto,
    /// Never (tests, or the operator restarts containerd itself).
    Skip,
    /// This host command, run by the host's `/bin/sh -c` in the host's root: for hosts whose
    /// containerd is not a systemd unit (`rc-service containerd restart` under OpenRC,
    /// `sv restart containerd` under runit, `svc -t /service/containerd` under daemontools).
    Command(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    /// containerd's configuration did not change.
    NotNeeded,
    Skipped,
    Systemd,
    /// Changed, but containerd is not a systemd unit here: whoever runs it must restart it.
    Manual,
    /// Restarted by the `--restart-command` given.
    Command,
}

pub struct InstallSpec {
    /// The shim binary to copy.
    pub shim: PathBuf,
    /// containerd's configuration, absolute on the host.
    pub containerd_config: String,
    /// `containerd --version`'s number, when not detected (tests, or no containerd binary).
    pub containerd_version: Option<String>,
    /// The content of /etc/agentcell/shim.toml.
    pub shim_toml: String,
    pub restart: RestartMode,
    /// The micro-VM tier too (`--microvm`).
    pub microvm: Option<MicrovmSpec>,
}

pub struct MicrovmSpec {
    /// The VM shim binary to copy.
    pub shim: PathBuf,
    /// A VM directory as `agentcell vm install-kernel --dir` and `install-agent --dir` leave it.
    pub assets: PathBuf,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
struct State {
    /// Files written, in order, with what was there before.
    files: Vec<FileRecord>,
    /// Directories created, outermost first.
    created_dirs: Vec<String>,
    /// The containerd configuration file this install edited or added (drop-in).
    containerd_file: Option<String>,
    /// The host's VM directory when the micro-VM tier is installed (state files written before
    /// the tier existed have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vm_dir: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct FileRecord {
    path: String,
    /// The backup of the original, or None when the file did not exist.
    backup: Option<String>,
    /// FNV-1a of what the installer wrote: a file changed since is somebody else's edit.
    written: String,
}

#[derive(Debug, Serialize)]
pub struct FileChange {
    pub path: String,
    pub action: &'static str,
}

#[derive(Debug, Serialize)]
pub struct InstallReport {
    pub containerd_version: String,
    pub config_version: ConfigVersion,
    pub section: String,
    /// `drop-in` or `inline`.
    pub mode: &'static str,
    pub containerd_file: String,
    pub files: Vec<FileChange>,
    pub changed: bool,
    pub restart: Restart,
    /// The `agentcell-vm` runtime's section, with `--microvm`.
    pub vm_section: Option<String>,
    /// The guest kernel's release (`uname -r`), with `--microvm`.
    pub vm_kernel_release: Option<String>,
    /// Files of an earlier install that were undone with a caveat.
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct UninstallReport {
    pub installed: bool,
    pub files: Vec<FileChange>,
    pub warnings: Vec<String>,
    pub restart: Restart,
}

#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub installed: bool,
    pub containerd_file: Option<String>,
    /// Each recorded file: `as-installed`, `modified` or `missing`.
    pub files: BTreeMap<String, &'static str>,
    /// The micro-VM tier, when the install included it.
    pub microvm: Option<MicrovmStatus>,
    /// What keeps the installed tiers from running pods (empty when healthy).
    pub problems: Vec<String>,
    pub healthy: bool,
}

#[derive(Debug, Serialize)]
pub struct MicrovmStatus {
    /// containerd-shim-agentcell-vm-v2 in the shim directory.
    pub shim: bool,
    /// The `agentcell-vm` runtime in the containerd file the install wrote.
    pub runtime: bool,
    /// Kernel, manifest and guest agent in the VM directory.
    pub assets: bool,
    pub vm_dir: String,
    pub kernel_release: Option<String>,
    /// Where `qemu-system-x86_64` is on the host's PATH, if anywhere.
    pub qemu: Option<String>,
}

/// FNV-1a, 64 bits: enough to tell "still what we wrote" from "edited since".
fn fnv(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// FNV-1a of a file read in chunks, or None when it does not exist: the guest kernel is ~65 MiB
/// and the DaemonSet's container may not hold two copies in memory.
fn fnv_file(path: &Path) -> Result<Option<String>, NodeError> {
    let mut f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        for b in &buf[..n] {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    Ok(Some(format!("{h:016x}")))
}

/// Whether the file at `path` holds exactly what `src` yields (`len` bytes), compared in chunks.
fn same_as(path: &Path, mut src: impl Read, len: u64, src_path: &Path) -> Result<bool, NodeError> {
    let mut f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err(path)(e)),
    };
    if f.metadata().map_err(io_err(path))?.len() != len {
        return Ok(false);
    }
    let mut a = vec![0u8; 1 << 16];
    let mut b = vec![0u8; 1 << 16];
    loop {
        let n = read_full(&mut src, &mut a).map_err(io_err(src_path))?;
        let m = read_full(&mut f, &mut b[..n.max(1)]).map_err(io_err(path))?;
        if n != m || a[..n] != b[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

/// Reads until `buf` is full or the end: chunks of both sides then line up.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// An input file that can be opened for reading (checked before anything is written).
fn readable_file(path: &Path) -> Result<(), NodeError> {
    let meta = fs::File::open(path)
        .and_then(|f| f.metadata())
        .map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(io_err(path)(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    Ok(())
}

fn read_opt(path: &Path) -> Result<Option<Vec<u8>>, NodeError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn load_state(host: &Host) -> Result<Option<State>, NodeError> {
    let path = host.path(&host.state_file());
    let Some(bytes) = read_opt(&path)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| NodeError::State {
            path: host.state_file(),
            message: e.to_string(),
        })
}

/// The containerd release on the host.
pub fn detect_containerd(host: &Host) -> Result<String, NodeError> {
    let out = host
        .command("containerd")
        .arg("--version")
        .output()
        .map_err(|e| NodeError::Detect(e.to_string()))?;
    if !out.status.success() {
        return Err(NodeError::Detect(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(config::parse_containerd_version(&String::from_utf8_lossy(
        &out.stdout,
    ))?)
}

/// Checks shim.toml the way the shim will read it.
pub fn check_shim_toml(text: &str) -> Result<(), NodeError> {
    toml::from_str::<crate::containerd::config::ShimConfig>(text)
        .map(|_| ())
        .map_err(|e| NodeError::ShimToml(e.message().to_owned()))
}

/// What a recorded file is written from.
#[derive(Clone, Copy)]
enum Source<'a> {
    Bytes(&'a [u8]),
    /// A file copied in chunks (the guest kernel is too big to hold twice in the DaemonSet's
    /// memory limit).
    File(&'a Path),
}

/// Writes files, recording originals and created directories in the state.
struct Writer<'a> {
    host: &'a Host,
    state: State,
    changes: Vec<FileChange>,
    /// Every path this run wrote or found as wanted: a recorded file not among them is left
    /// from an earlier install with other inputs and is undone.
    visited: BTreeSet<String>,
}

impl Writer<'_> {
    fn mkdirs(&mut self, abs: &str) -> Result<(), NodeError> {
        let mut missing = Vec::new();
        let mut p = Path::new(abs);
        while !self.host.path(&p.to_string_lossy()).exists() {
            missing.push(p.to_string_lossy().into_owned());
            match p.parent() {
                Some(parent) => p = parent,
                None => break,
            }
        }
        for dir in missing.into_iter().rev() {
            let local = self.host.path(&dir);
            fs::create_dir(&local).map_err(io_err(&local))?;
            self.state.created_dirs.push(dir);
        }
        Ok(())
    }

    fn write(&mut self, abs: &str, content: &[u8], mode: u32) -> Result<bool, NodeError> {
        self.put(abs, Source::Bytes(content), mode)
    }

    fn put(&mut self, abs: &str, src: Source<'_>, mode: u32) -> Result<bool, NodeError> {
        let local = self.host.path(abs);
        self.visited.insert(abs.to_owned());
        let same = match src {
            Source::Bytes(b) => same_as(&local, b, b.len() as u64, &local)?,
            Source::File(p) => {
                let f = fs::File::open(p).map_err(io_err(p))?;
                let len = f.metadata().map_err(io_err(p))?.len();
                same_as(&local, f, len, p)?
            }
        };
        if same {
            self.changes.push(FileChange {
                path: abs.to_owned(),
                action: "unchanged",
            });
            return Ok(false);
        }
        let exists = fs::symlink_metadata(&local).is_ok();
        if let Some(parent) = Path::new(abs).parent() {
            self.mkdirs(&parent.to_string_lossy())?;
        }
        let recorded = self.state.files.iter().position(|f| f.path == abs);
        let index = match recorded {
            Some(i) => i,
            None => {
                // First write of this path: keep what was there, byte for byte.
                let backup = if exists {
                    let backup_dir = self.host.backup_dir();
                    self.mkdirs(&backup_dir)?;
                    let name = format!(
                        "{backup_dir}/{}",
                        abs.trim_start_matches('/').replace('/', "__")
                    );
                    let to = self.host.path(&name);
                    fs::copy(&local, &to).map_err(io_err(&to))?;
                    Some(name)
                } else {
                    None
                };
                self.state.files.push(FileRecord {
                    path: abs.to_owned(),
                    backup,
                    written: String::new(),
                });
                self.state.files.len() - 1
            }
        };
        let written = match src {
            Source::Bytes(b) => {
                // Keep the mode of a file we replace (containerd's config may be 0600).
                write_atomic(&local, b, perm(&local).unwrap_or(mode))?;
                fnv(b)
            }
            // Copied assets take the source's mode: the guest agent must stay executable
            // whatever a hand-installed predecessor had.
            Source::File(p) => copy_atomic(p, &local, mode)?,
        };
        self.state.files[index].written = written;
        self.changes.push(FileChange {
            path: abs.to_owned(),
            action: if recorded.is_some() || self.state.files[index].backup.is_some() {
                "replaced"
            } else {
                "created"
            },
        });
        Ok(true)
    }
}

/// A sibling for the write-then-rename: the name plus a suffix, so `modules.dep` and
/// `modules.builtin` do not share one.
fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".agentcell-tmp");
    path.with_file_name(name)
}

fn write_atomic(path: &Path, content: &[u8], mode: u32) -> Result<(), NodeError> {
    let tmp = tmp_path(path);
    fs::write(&tmp, content).map_err(io_err(&tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(io_err(&tmp))?;
    // A rename: a running containerd or shim never reads a half-written file; a busy shim
    // binary (ETXTBSY) is replaced, not overwritten.
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// `write_atomic` from a file, in chunks; returns the FNV-1a of what was written.
fn copy_atomic(from: &Path, path: &Path, mode: u32) -> Result<String, NodeError> {
    let tmp = tmp_path(path);
    fs::copy(from, &tmp).map_err(io_err(from))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(io_err(&tmp))?;
    let written = fnv_file(&tmp)?.unwrap_or_default();
    fs::rename(&tmp, path).map_err(io_err(path))?;
    Ok(written)
}

fn save_state(host: &Host, state: &State) -> Result<(), NodeError> {
    let path = host.path(&host.state_file());
    let mut text = serde_json::to_string_pretty(state).map_err(|e| NodeError::State {
        path: host.state_file(),
        message: e.to_string(),
    })?;
    text.push('\n');
    write_atomic(&path, text.as_bytes(), 0o644)
}

/// The files of a VM directory the shim boots from, relative to it: the guest agent and
/// everything under `kernel/` (not `cache/`, which the shim derives from them, nor hidden
/// leftovers of an interrupted `install-kernel`). Checked complete before anything is written.
fn vm_asset_files(dir: &Path) -> Result<(Vec<String>, String), NodeError> {
    let missing = |p: &Path, what: &str| NodeError::VmAssets {
        path: p.display().to_string(),
        message: format!("missing ({what})"),
    };
    let agent = dir.join(crate::vm::assets::AGENT_NAME);
    if !agent.is_file() {
        return Err(missing(
            &agent,
            "the static guest agent: `agentcell vm install-agent PATH --dir DIR`",
        ));
    }
    let manifest_path = dir.join("kernel/manifest.json");
    let manifest = crate::vm::assets::manifest(dir)
        .map_err(|e| NodeError::VmAssets {
            path: manifest_path.display().to_string(),
            message: e.to_string(),
        })?
        .ok_or_else(|| {
            missing(
                &manifest_path,
                "the guest kernel: `agentcell vm install-kernel --dir DIR`",
            )
        })?;
    let kernel = dir.join("kernel");
    if !kernel.join("vmlinux").is_file() && !kernel.join("vmlinuz").is_file() {
        return Err(missing(&kernel.join("vmlinuz"), "the guest kernel image"));
    }
    for m in &manifest.modules {
        let p = kernel.join("modules").join(m);
        if !p.is_file() {
            return Err(missing(&p, "a module the manifest lists"));
        }
    }
    let mut files = vec![crate::vm::assets::AGENT_NAME.to_owned()];
    let mut stack = vec![kernel];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).map_err(io_err(&d))? {
            let e = e.map_err(io_err(&d))?;
            let p = e.path();
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let meta = fs::metadata(&p).map_err(io_err(&p))?;
            if meta.is_dir() {
                stack.push(p);
            } else if meta.is_file()
                && let Ok(rel) = p.strip_prefix(dir)
            {
                files.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    files.sort();
    Ok((files, manifest.release))
}

/// Installs (or brings up to date) the shim, its settings and containerd's runtime entry, and
/// with `spec.microvm` the micro-VM tier. Idempotent: a second run with the same inputs writes
/// nothing and restarts nothing; a run with fewer inputs (no `--microvm` after one with) undoes
/// what is no longer wanted.
pub fn install(host: &Host, spec: &InstallSpec) -> Result<InstallReport, NodeError> {
    check_shim_toml(&spec.shim_toml)?;
    // Every input is checked before the first write, so a bad one leaves the host alone.
    // The shims are copied in chunks like the VM assets, never read whole: a debug build is
    // ~220 MiB and the chart's DaemonSet container is limited to 128 MiB (the installer was
    // OOM-killed there, on the first real cluster).
    readable_file(&spec.shim)?;
    let vm = match &spec.microvm {
        Some(m) => {
            readable_file(&m.shim)?;
            let (files, release) = vm_asset_files(&m.assets)?;
            Some((m, &m.shim, files, release))
        }
        None => None,
    };
    let runtimes = Runtimes {
        microvm: vm.is_some(),
    };
    let containerd_version = match &spec.containerd_version {
        Some(v) => v.clone(),
        None => detect_containerd(host)?,
    };
    let detected = ConfigVersion::for_containerd(&containerd_version)?;
    let cfg_abs = spec.containerd_config.as_str();
    let cfg_local = host.path(cfg_abs);
    let cfg_text = match read_opt(&cfg_local)? {
        Some(b) => String::from_utf8(b).map_err(|e| NodeError::Io {
            path: cfg_abs.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        })?,
        None => String::new(),
    };
    let v = config::file_version(cfg_abs, &cfg_text, detected)?;
    let cfg_dir = Path::new(cfg_abs).parent().unwrap_or(Path::new("/"));
    let (mode, target, content) = match config::drop_in_dir(cfg_abs, &cfg_text, cfg_dir)? {
        Some(dir) => {
            let file = dir
                .join(config::DROP_IN_NAME)
                .to_string_lossy()
                .into_owned();
            (
                "drop-in",
                file,
                config::drop_in_text(v, &host.shim_toml, runtimes),
            )
        }
        None => (
            "inline",
            cfg_abs.to_owned(),
            config::edit_inline(cfg_abs, &cfg_text, v, &host.shim_toml, runtimes)?,
        ),
    };

    let previous = load_state(host)?;
    let mut w = Writer {
        host,
        state: previous.clone().unwrap_or_default(),
        changes: Vec::new(),
        visited: BTreeSet::new(),
    };
    w.mkdirs(&host.state_dir)?;
    w.put(&host.shim_dest(), Source::File(&spec.shim), 0o755)?;
    if let Some((m, vm_shim, files, _)) = &vm {
        w.put(&host.vm_shim_dest(), Source::File(vm_shim), 0o755)?;
        let vm_dir = host.vm_dir.trim_end_matches('/');
        for rel in files {
            let src = m.assets.join(rel);
            // The source's mode: the agent is executable, the kernel and modules are not.
            let mode = perm(&src).unwrap_or(0o644);
            w.put(&format!("{vm_dir}/{rel}"), Source::File(&src), mode)?;
        }
    }
    w.write(&host.shim_toml, spec.shim_toml.as_bytes(), 0o644)?;
    let mut containerd_changed = w.write(&target, content.as_bytes(), 0o644)?;
    let old_containerd = w.state.containerd_file.replace(target.clone());
    let old_vm_dir = std::mem::replace(
        &mut w.state.vm_dir,
        vm.as_ref().map(|_| host.vm_dir.clone()),
    );
    // What an earlier install wrote and this one does not (the VM tier, a guest kernel's old
    // modules, a containerd file that moved to a drop-in) goes back as uninstall would put it.
    let stale: Vec<FileRecord> = w
        .state
        .files
        .iter()
        .filter(|r| !w.visited.contains(&r.path))
        .cloned()
        .collect();
    let mut stale_warnings = Vec::new();
    for rec in stale.iter().rev() {
        let is_containerd = old_containerd.as_deref() == Some(rec.path.as_str());
        let undone = undo(host, rec, is_containerd)?;
        containerd_changed |= undone.containerd_changed;
        stale_warnings.extend(undone.warnings);
        w.state.files.retain(|r| r.path != rec.path);
        w.changes.push(FileChange {
            path: rec.path.clone(),
            action: undone.action,
        });
    }
    if let Some(old) = old_vm_dir
        && w.state.vm_dir.as_deref() != Some(old.as_str())
    {
        drop_vm_cache(host, &w.state, &old);
    }
    let changed = w.changes.iter().any(|c| c.action != "unchanged");
    if previous.as_ref() != Some(&w.state) {
        save_state(host, &w.state)?;
    }
    let restart = restart(host, containerd_changed, spec.restart.clone())?;
    info!(mode, file = %target, changed, microvm = runtimes.microvm, ?restart, "agentcell runtime installed");
    Ok(InstallReport {
        containerd_version,
        config_version: v,
        section: v.section(),
        mode,
        containerd_file: target,
        files: w.changes,
        changed,
        restart,
        vm_section: vm.as_ref().map(|_| v.section_of(config::VM_RUNTIME_NAME)),
        vm_kernel_release: vm.map(|(_, _, _, release)| release),
        warnings: stale_warnings,
    })
}

/// The initramfs cache the VM shim keeps in a VM directory the install created: derived from
/// the installed assets, so it goes with them (a directory that was there before is not ours).
fn drop_vm_cache(host: &Host, state: &State, vm_dir: &str) {
    if !state.created_dirs.iter().any(|d| d == vm_dir) {
        return;
    }
    let cache = host.path(&format!("{}/cache", vm_dir.trim_end_matches('/')));
    match fs::remove_dir_all(&cache) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => warn!(path = %cache.display(), error = %e, "the VM cache stays"),
    }
}

struct Undone {
    action: &'static str,
    warnings: Vec<String>,
    containerd_changed: bool,
}

/// Puts one recorded file back: the backup, or nothing when there was none.
fn undo(host: &Host, rec: &FileRecord, is_containerd: bool) -> Result<Undone, NodeError> {
    let local = host.path(&rec.path);
    let current = fnv_file(&local)?;
    let edited = current.as_deref() != Some(rec.written.as_str());
    let mut warnings = Vec::new();
    if edited && is_containerd && rec.backup.is_some() && current.is_some() {
        // Someone edited containerd's configuration after the install: take out only
        // agentcell's block and keep their edits (and the backup, for reference).
        let bytes = fs::read(&local).map_err(io_err(&local))?;
        let text = String::from_utf8_lossy(&bytes);
        let (stripped, had) = config::strip_block(&rec.path, &text)?;
        let msg = format!(
            "{}: changed since the install; removed only agentcell's block (the original is kept at {})",
            rec.path,
            rec.backup.as_deref().unwrap_or_default()
        );
        warn!("{msg}");
        warnings.push(msg);
        if had {
            let mode = perm(&local).unwrap_or(0o644);
            write_atomic(&local, stripped.as_bytes(), mode)?;
        }
        return Ok(Undone {
            action: "block-removed",
            warnings,
            containerd_changed: had,
        });
    }
    if edited && current.is_some() {
        let msg = format!("{}: changed since the install; restored anyway", rec.path);
        warn!("{msg}");
        warnings.push(msg);
    }
    let action = match &rec.backup {
        Some(b) => {
            let from = host.path(b);
            let mode = perm(&from).unwrap_or(0o644);
            copy_atomic(&from, &local, mode)?;
            fs::remove_file(&from).map_err(io_err(&from))?;
            "restored"
        }
        None => {
            match fs::remove_file(&local) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&local)(e)),
            }
            "removed"
        }
    };
    Ok(Undone {
        action,
        warnings,
        containerd_changed: is_containerd,
    })
}

/// Puts back every file the install wrote and removes what it created.
pub fn uninstall(host: &Host, restart_mode: RestartMode) -> Result<UninstallReport, NodeError> {
    let Some(state) = load_state(host)? else {
        return Ok(UninstallReport {
            installed: false,
            files: Vec::new(),
            warnings: Vec::new(),
            restart: Restart::NotNeeded,
        });
    };
    let mut files = Vec::new();
    let mut warnings = Vec::new();
    let mut containerd_changed = false;
    for rec in state.files.iter().rev() {
        let is_containerd = state.containerd_file.as_deref() == Some(rec.path.as_str());
        let undone = undo(host, rec, is_containerd)?;
        containerd_changed |= undone.containerd_changed;
        warnings.extend(undone.warnings);
        files.push(FileChange {
            path: rec.path.clone(),
            action: undone.action,
        });
    }
    if let Some(vm_dir) = &state.vm_dir {
        drop_vm_cache(host, &state, vm_dir);
    }
    let state_path = host.path(&host.state_file());
    fs::remove_file(&state_path).map_err(io_err(&state_path))?;
    for dir in state.created_dirs.iter().rev() {
        let local = host.path(dir);
        // Only if empty: anything else in it is not ours.
        if let Err(e) = fs::remove_dir(&local)
            && e.kind() != io::ErrorKind::NotFound
        {
            let msg = format!("{dir}: kept ({e})");
            warn!("{msg}");
            warnings.push(msg);
        }
    }
    let restart = restart(host, containerd_changed, restart_mode)?;
    Ok(UninstallReport {
        installed: true,
        files,
        warnings,
        restart,
    })
}

fn perm(path: &Path) -> Option<u32> {
    fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777)
}

/// `qemu-system-x86_64` on the host's PATH (a symlink counts: its target may be absolute on the
/// host, which this process cannot follow from outside the host's root).
fn host_qemu(host: &Host) -> Option<String> {
    HOST_PATH.iter().find_map(|dir| {
        let abs = format!("{dir}/{}", crate::vm::qemu::DEFAULT_QEMU);
        let meta = fs::symlink_metadata(host.path(&abs)).ok()?;
        let runnable = meta.file_type().is_symlink()
            || (meta.is_file() && meta.permissions().mode() & 0o111 != 0);
        runnable.then_some(abs)
    })
}

/// The micro-VM tier as the VM shim will find it, and what is missing.
fn microvm_status(
    host: &Host,
    state: &State,
    vm_dir: &str,
    problems: &mut Vec<String>,
) -> MicrovmStatus {
    let shim = host.path(&host.vm_shim_dest()).is_file();
    if !shim {
        problems.push(format!("{}: missing", host.vm_shim_dest()));
    }
    let runtime = state.containerd_file.as_deref().is_some_and(|f| {
        fs::read_to_string(host.path(f))
            .is_ok_and(|t| config::has_runtime(&t, config::VM_RUNTIME_NAME))
    });
    if !runtime {
        problems.push(format!(
            "{}: no {} runtime",
            state
                .containerd_file
                .as_deref()
                .unwrap_or("containerd's configuration"),
            config::VM_RUNTIME_NAME
        ));
    }
    let local = host.path(vm_dir);
    let kernel_release = crate::vm::assets::manifest(&local)
        .ok()
        .flatten()
        .map(|m| m.release);
    let kernel = local.join("kernel/vmlinux").is_file() || local.join("kernel/vmlinuz").is_file();
    let agent = local.join(crate::vm::assets::AGENT_NAME).is_file();
    let assets = kernel_release.is_some() && kernel && agent;
    if !assets {
        problems.push(format!(
            "{vm_dir}: micro-VM assets incomplete (kernel manifest: {}, kernel image: {kernel}, guest agent: {agent})",
            kernel_release.is_some()
        ));
    }
    let qemu = host_qemu(host);
    if qemu.is_none() {
        problems.push(format!(
            "{} not found on the host's PATH ({}): micro-VM pods cannot start; install the host's qemu-system-x86 package (the installer does not install host packages)",
            crate::vm::qemu::DEFAULT_QEMU,
            HOST_PATH.join(":")
        ));
    }
    MicrovmStatus {
        shim,
        runtime,
        assets,
        vm_dir: vm_dir.to_owned(),
        kernel_release,
        qemu,
    }
}

/// What the install left, and whether it still holds (every file as written and, with the
/// micro-VM tier, everything the VM shim needs on the host, qemu included).
pub fn status(host: &Host) -> Result<StatusReport, NodeError> {
    let Some(state) = load_state(host)? else {
        return Ok(StatusReport {
            installed: false,
            containerd_file: None,
            files: BTreeMap::new(),
            microvm: None,
            problems: Vec::new(),
            healthy: false,
        });
    };
    let mut files = BTreeMap::new();
    let mut problems = Vec::new();
    for rec in &state.files {
        let s = match fnv_file(&host.path(&rec.path))? {
            None => "missing",
            Some(h) if h == rec.written => "as-installed",
            Some(_) => "modified",
        };
        if s != "as-installed" {
            problems.push(format!("{}: {s}", rec.path));
        }
        files.insert(rec.path.clone(), s);
    }
    let microvm = state
        .vm_dir
        .as_deref()
        .map(|d| microvm_status(host, &state, d, &mut problems));
    Ok(StatusReport {
        installed: true,
        containerd_file: state.containerd_file,
        files,
        microvm,
        healthy: problems.is_empty(),
        problems,
    })
}

fn restart(host: &Host, changed: bool, mode: RestartMode) -> Result<Restart, NodeError> {
    if !changed {
        return Ok(Restart::NotNeeded);
    }
    match mode {
        RestartMode::Skip => return Ok(Restart::Skipped),
        RestartMode::Command(cmd) => return restart_command(host, &cmd),
        RestartMode::Auto => {}
    }
    // systemd's own test for "booted with systemd" (sd_booted).
    if !host.path("/run/systemd/system").is_dir() {
        warn!("containerd's configuration changed and it is not run by systemd here: restart it");
        return Ok(Restart::Manual);
    }
    // Running containers survive: their shims are separate processes.
    let out = host
        .command("systemctl")
        .args(["restart", "containerd"])
        .output()
        .map_err(|e| NodeError::Restart(e.to_string()))?;
    if !out.status.success() {
        return Err(NodeError::Restart(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    info!("containerd restarted (systemctl restart containerd)");
    Ok(Restart::Systemd)
}

/// The host's own restart of containerd (its init system or supervisor), through the host's
/// shell so the command's programs and libraries are the host's. Running shims and their
/// containers survive a containerd restart, like under systemd.
fn restart_command(host: &Host, cmd: &str) -> Result<Restart, NodeError> {
    let out = host
        .command("/bin/sh")
        .args(["-c", cmd])
        .output()
        .map_err(|e| NodeError::Restart(format!("{cmd}: {e}")))?;
    if !out.status.success() {
        return Err(NodeError::Restart(format!(
            "{cmd}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    info!(command = cmd, "containerd restarted");
    Ok(Restart::Command)
}
