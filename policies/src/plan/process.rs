//! Process settings: command, environment, working directory, timeout, resource limits.

use serde::Serialize;

use crate::document::Note;
use crate::model::ContainerConfig;
use crate::path::JsonPath;

use super::net::NetworkPlan;

/// Default cgroup limits; the CLI and the shim can override them.
pub const DEFAULT_PIDS_MAX: u64 = 1024;
pub const DEFAULT_MEMORY_MAX: u64 = 4 << 30;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessPlan {
    /// `process.commandLine`, run through `/bin/sh -c` as MXC does.
    pub command_line: Option<String>,
    /// The complete environment: cleared, then the policy's, then the proxy variables.
    pub env: Vec<(String, String)>,
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

/// `first_rw` is the first `readwritePaths` entry (normalised) and its JSON path.
pub fn build(
    cfg: &ContainerConfig,
    first_rw: Option<(String, String)>,
    net: &NetworkPlan,
    notes: &mut Vec<Note>,
) -> ProcessPlan {
    let process = cfg.process.clone().unwrap_or_default();
    let mut env: Vec<(String, String)> = Vec::new();
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
        cwd,
        cwd_origin,
        timeout_ms: process.timeout.filter(|t| *t > 0).map(u64::from),
        pids_max: DEFAULT_PIDS_MAX,
        memory_max: DEFAULT_MEMORY_MAX,
        no_new_privileges: true,
        capabilities: Vec::new(),
    }
}
