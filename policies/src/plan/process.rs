//! Process settings: command, environment, working directory, timeout, resource limits.

use serde::Serialize;

use crate::document::Note;
use crate::model::ContainerConfig;
use crate::path::JsonPath;

use super::net::NetworkPlan;

/// MXC's default environment block (bubblewrap's; LXC's `lxc-attach` sets the same PATH):
/// `HOME` joins it, set to the working directory, only when `process.cwd` is given.
pub const MXC_DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
pub const MXC_DEFAULT_TERM: &str = "xterm-256color";

/// Default cgroup limits; the CLI and the shim can override them.
pub const DEFAULT_PIDS_MAX: u64 = 1024;
pub const DEFAULT_MEMORY_MAX: u64 = 4 << 30;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessPlan {
    /// `process.commandLine`, run through `/bin/sh -c` as MXC does.
    pub command_line: Option<String>,
    /// The complete environment: cleared, then what `process.env` means (MXC 1.0: its four
    /// states, see [`EnvSource`]), then the proxy variables.
    pub env: Vec<(String, String)>,
    /// Which of `process.env`'s states gave `env`.
    pub env_source: EnvSource,
    pub cwd: String,
    /// Where `cwd` came from.
    pub cwd_origin: String,
    /// Wall-clock limit in milliseconds; the whole cgroup is killed at the deadline.
    pub timeout_ms: Option<u64>,
    pub pids_max: u64,
    pub memory_max: u64,
    pub no_new_privileges: bool,
    pub capabilities: Vec<String>,
}

/// What `process.env` means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum EnvSource {
    /// MXC 1.0, `env` omitted: MXC's default block (`PATH`, `TERM`, `HOME` when `cwd` is given).
    DefaultBlock,
    /// MXC 1.0, `env` given (`[]` included): exactly its entries.
    Exactly,
    /// MXC 1.0, `env` with `inheritDefaultEnv`: the default block, then the entries (a caller's
    /// entry replaces a default of the same name).
    DefaultBlockAndEntries,
    /// A retired document (MXC 0.8's reading): the entries, nothing else.
    Entries,
    /// A container image's environment is the default (the containerd shim); `env`'s entries are
    /// set over it.
    ImageAndEntries,
}

impl EnvSource {
    pub fn describe(self) -> &'static str {
        match self {
            Self::DefaultBlock => "MXC's default block (process.env omitted)",
            Self::Exactly => "exactly process.env",
            Self::DefaultBlockAndEntries => {
                "MXC's default block, then process.env (inheritDefaultEnv)"
            }
            Self::Entries => "process.env only (MXC 0.8's reading)",
            Self::ImageAndEntries => "the image's environment, then process.env",
        }
    }
}

/// `first_rw` is the first `readwritePaths` entry (normalised) and its JSON path. `current`: the
/// document declares one of MXC 1.0's contracts. `image_env`: the workload's default environment
/// is a container image's (the shim merges the plan's variables over it).
pub fn build(
    cfg: &ContainerConfig,
    first_rw: Option<(String, String)>,
    net: &NetworkPlan,
    current: bool,
    image_env: bool,
    notes: &mut Vec<Note>,
) -> ProcessPlan {
    let process = cfg.process.clone().unwrap_or_default();
    let cwd_given = process.cwd.as_deref().filter(|c| !c.is_empty());
    let env_source = match (
        current,
        image_env,
        &process.env,
        process.inherit_default_env,
    ) {
        (_, true, _, _) => EnvSource::ImageAndEntries,
        (false, _, _, _) => EnvSource::Entries,
        (true, _, None, _) => EnvSource::DefaultBlock,
        (true, _, Some(_), Some(true)) => EnvSource::DefaultBlockAndEntries,
        (true, _, Some(_), _) => EnvSource::Exactly,
    };
    let mut env: Vec<(String, String)> = Vec::new();
    if matches!(
        env_source,
        EnvSource::DefaultBlock | EnvSource::DefaultBlockAndEntries
    ) {
        env.push(("PATH".into(), MXC_DEFAULT_PATH.into()));
        env.push(("TERM".into(), MXC_DEFAULT_TERM.into()));
        if let Some(c) = cwd_given {
            env.push(("HOME".into(), c.to_string()));
        }
    }
    for (i, e) in process.env.iter().flatten().enumerate() {
        match e.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                env.retain(|(ek, _)| ek != k);
                env.push((k.to_string(), v.to_string()));
            }
            _ => notes.push(Note::new(
                JsonPath::root().key("process").key("env").index(i),
                format!("{e:?} is not KEY=VALUE and is ignored (as in MXC)"),
            )),
        }
    }
    if let Some(f) = &net.proxy {
        // The proxy variables are authoritative: a policy's own proxy variables are replaced.
        env.retain(|(k, _)| !f.env.iter().any(|(fk, _)| fk == k));
        env.extend(f.env.iter().cloned());
    }
    let (cwd, cwd_origin) = match process.cwd.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => (c.to_string(), "process.cwd".to_string()),
        // MXC's ProcessContainer rule: the first read-write path.
        None => match first_rw {
            Some((p, origin)) => (p, format!("first read-write path, {origin}")),
            None => ("/".to_string(), "default (no read-write path)".to_string()),
        },
    };
    ProcessPlan {
        command_line: process.command_line.clone(),
        env,
        env_source,
        cwd,
        cwd_origin,
        timeout_ms: process.timeout.filter(|t| *t > 0).map(u64::from),
        pids_max: DEFAULT_PIDS_MAX,
        memory_max: DEFAULT_MEMORY_MAX,
        no_new_privileges: true,
        capabilities: Vec::new(),
    }
}
