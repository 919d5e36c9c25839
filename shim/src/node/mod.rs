//! Installing the shim on a Kubernetes node (`agentcell node install|uninstall|status`), usually
//! from the chart's privileged DaemonSet with the host's root mounted at `/host`.
//!
//! Every file the installer writes is recorded in a state file with what was there before (a
//! byte copy, or "absent"), together with the directories it created; `uninstall` puts each one
//! back and removes what it created, so the host ends byte for byte as it was. The text
//! transforms of containerd's configuration are in `config` (pure); this module does the file
//! system and process work.

pub mod config;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

pub use config::{ConfigVersion, NodeConfigError};

/// Where the shim binary goes on the host (on containerd's `PATH` under systemd's default).
pub const SHIM_DIR: &str = "/usr/local/bin";
pub const SHIM_NAME: &str = "containerd-shim-agentcell-v2";
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
}

impl Host {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Host {
            root: root.into(),
            shim_dir: SHIM_DIR.to_owned(),
            shim_toml: SHIM_TOML.to_owned(),
            state_dir: STATE_DIR.to_owned(),
        }
    }

    fn shim_dest(&self) -> String {
        format!("{}/{SHIM_NAME}", self.shim_dir.trim_end_matches('/'))
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartMode {
    /// systemd when the host runs it, otherwise report that a restart is needed.
    Auto,
    /// Never (tests, or the operator restarts containerd itself).
    Skip,
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
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
struct State {
    /// Files written, in order, with what was there before.
    files: Vec<FileRecord>,
    /// Directories created, outermost first.
    created_dirs: Vec<String>,
    /// The containerd configuration file this install edited or added (drop-in).
    containerd_file: Option<String>,
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
    pub healthy: bool,
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

/// Writes files, recording originals and created directories in the state.
struct Writer<'a> {
    host: &'a Host,
    state: State,
    changes: Vec<FileChange>,
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
        let local = self.host.path(abs);
        let current = read_opt(&local)?;
        if current.as_deref() == Some(content) {
            self.changes.push(FileChange {
                path: abs.to_owned(),
                action: "unchanged",
            });
            return Ok(false);
        }
        if let Some(parent) = Path::new(abs).parent() {
            self.mkdirs(&parent.to_string_lossy())?;
        }
        let recorded = self.state.files.iter().position(|f| f.path == abs);
        let index = match recorded {
            Some(i) => i,
            None => {
                // First write of this path: keep what was there, byte for byte.
                let backup = match current {
                    None => None,
                    Some(_) => {
                        let backup_dir = self.host.backup_dir();
                        self.mkdirs(&backup_dir)?;
                        let name = format!(
                            "{backup_dir}/{}",
                            abs.trim_start_matches('/').replace('/', "__")
                        );
                        let to = self.host.path(&name);
                        fs::copy(&local, &to).map_err(io_err(&to))?;
                        Some(name)
                    }
                };
                self.state.files.push(FileRecord {
                    path: abs.to_owned(),
                    backup,
                    written: String::new(),
                });
                self.state.files.len() - 1
            }
        };
        // Keep the mode of a file we replace (containerd's config may be 0600).
        let mode = fs::metadata(&local)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(mode);
        write_atomic(&local, content, mode)?;
        self.state.files[index].written = fnv(content);
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

fn write_atomic(path: &Path, content: &[u8], mode: u32) -> Result<(), NodeError> {
    let tmp = path.with_extension("agentcell-tmp");
    fs::write(&tmp, content).map_err(io_err(&tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(io_err(&tmp))?;
    // A rename: a running containerd or shim never reads a half-written file; a busy shim
    // binary (ETXTBSY) is replaced, not overwritten.
    fs::rename(&tmp, path).map_err(io_err(path))
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

/// Installs (or brings up to date) the shim, its settings and containerd's runtime entry.
/// Idempotent: a second run with the same inputs writes nothing and restarts nothing.
pub fn install(host: &Host, spec: &InstallSpec) -> Result<InstallReport, NodeError> {
    check_shim_toml(&spec.shim_toml)?;
    let shim = fs::read(&spec.shim).map_err(io_err(&spec.shim))?;
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
            ("drop-in", file, config::drop_in_text(v, &host.shim_toml))
        }
        None => (
            "inline",
            cfg_abs.to_owned(),
            config::edit_inline(cfg_abs, &cfg_text, v, &host.shim_toml)?,
        ),
    };

    let previous = load_state(host)?;
    let mut w = Writer {
        host,
        state: previous.clone().unwrap_or_default(),
        changes: Vec::new(),
    };
    w.mkdirs(&host.state_dir)?;
    w.write(&host.shim_dest(), &shim, 0o755)?;
    w.write(&host.shim_toml, spec.shim_toml.as_bytes(), 0o644)?;
    let containerd_changed = w.write(&target, content.as_bytes(), 0o644)?;
    w.state.containerd_file = Some(target.clone());
    let changed = w.changes.iter().any(|c| c.action != "unchanged");
    if previous.as_ref() != Some(&w.state) {
        save_state(host, &w.state)?;
    }
    let restart = restart(host, containerd_changed, spec.restart)?;
    info!(mode, file = %target, changed, ?restart, "agentcell runtime installed");
    Ok(InstallReport {
        containerd_version,
        config_version: v,
        section: v.section(),
        mode,
        containerd_file: target,
        files: w.changes,
        changed,
        restart,
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
        let local = host.path(&rec.path);
        let current = read_opt(&local)?;
        let edited = current.as_deref().map(fnv).as_deref() != Some(rec.written.as_str());
        let is_containerd = state.containerd_file.as_deref() == Some(rec.path.as_str());
        let action = if edited && is_containerd && rec.backup.is_some() && current.is_some() {
            // Someone edited containerd's configuration after the install: take out only
            // agentcell's block and keep their edits (and the backup, for reference).
            let text = String::from_utf8_lossy(current.as_deref().unwrap_or_default());
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
                containerd_changed = true;
            }
            "block-removed"
        } else {
            if edited && current.is_some() {
                let msg = format!("{}: changed since the install; restored anyway", rec.path);
                warn!("{msg}");
                warnings.push(msg);
            }
            match &rec.backup {
                Some(b) => {
                    let from = host.path(b);
                    let bytes = fs::read(&from).map_err(io_err(&from))?;
                    let mode = perm(&from).unwrap_or(0o644);
                    write_atomic(&local, &bytes, mode)?;
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
            }
        };
        containerd_changed |= is_containerd && action != "block-removed";
        files.push(FileChange {
            path: rec.path.clone(),
            action,
        });
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

/// What the install left, and whether it still holds.
pub fn status(host: &Host) -> Result<StatusReport, NodeError> {
    let Some(state) = load_state(host)? else {
        return Ok(StatusReport {
            installed: false,
            containerd_file: None,
            files: BTreeMap::new(),
            healthy: false,
        });
    };
    let mut files = BTreeMap::new();
    for rec in &state.files {
        let s = match read_opt(&host.path(&rec.path))? {
            None => "missing",
            Some(b) if fnv(&b) == rec.written => "as-installed",
            Some(_) => "modified",
        };
        files.insert(rec.path.clone(), s);
    }
    let healthy = files.values().all(|s| *s == "as-installed");
    Ok(StatusReport {
        installed: true,
        containerd_file: state.containerd_file,
        files,
        healthy,
    })
}

fn restart(host: &Host, changed: bool, mode: RestartMode) -> Result<Restart, NodeError> {
    if !changed {
        return Ok(Restart::NotNeeded);
    }
    if mode == RestartMode::Skip {
        return Ok(Restart::Skipped);
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
