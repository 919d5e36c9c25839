//! The node's shim settings, `/etc/agentcell/shim.toml` (the path can be overridden by the
//! runtime options containerd passes: `ConfigPath` of the CRI runtime's `options`).
//!
//! ```toml
//! # Policy for pods without an agentcell.dev/mxc-policy annotation: preset:NAME, a file path,
//! # or the JSON document itself. Without it such pods are refused.
//! default_policy = "preset:untrusted-code"
//! # Honour agentcell.dev/best-effort: "true" (partial enforcement, reported).
//! allow_best_effort = false
//! # Honour agentcell.dev/net-raw: "true" (the container keeps CAP_NET_RAW: raw sockets, crafted
//! # packets such as neighbour solicitations). Otherwise confined containers lose it; ping
//! # works through unprivileged ICMP sockets (net.ipv4.ping_group_range).
//! allow_net_raw = false
//! # cgroupfs, systemd, or auto (systemd when it is PID 1 on cgroup v2).
//! cgroup_driver = "auto"
//! # Exit after this many seconds without containers (nothing connects to an idle shim).
//! idle_exit_seconds = 60
//! # Whose verdicts apply to pod policies: "1.0" (MXC 1.0, the default) or "0.8" (also read
//! # retired 0.6-0.8 documents as MXC 0.8 did; the operator needs its --mxc-release 0.8 too).
//! mxc_release = "1.0"
//! ```

use std::path::Path;

use serde::Deserialize;

pub const DEFAULT_PATH: &str = "/etc/agentcell/shim.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: default_policy: {message}")]
    DefaultPolicy { path: String, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    #[default]
    Auto,
    Cgroupfs,
    Systemd,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShimConfig {
    #[serde(default)]
    pub default_policy: Option<String>,
    #[serde(default)]
    pub allow_best_effort: bool,
    #[serde(default)]
    pub allow_net_raw: bool,
    #[serde(default)]
    pub cgroup_driver: CgroupDriver,
    #[serde(default = "default_idle")]
    pub idle_exit_seconds: u64,
    #[serde(default)]
    pub mxc_release: agentcell_policy::MxcRelease,
    /// The file it was read from (empty for the built-in defaults).
    #[serde(skip)]
    pub path: String,
}

fn default_idle() -> u64 {
    60
}

impl Default for ShimConfig {
    fn default() -> Self {
        Self {
            default_policy: None,
            allow_best_effort: false,
            allow_net_raw: false,
            cgroup_driver: CgroupDriver::Auto,
            idle_exit_seconds: default_idle(),
            mxc_release: agentcell_policy::MxcRelease::default(),
            path: String::new(),
        }
    }
}

impl ShimConfig {
    /// Reads `path`; a missing file at the default path means the built-in defaults (no
    /// default policy: pods without one are refused). A missing file named explicitly is an
    /// error.
    pub fn load(path: &str, explicit: bool) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Self {
                    path: path.to_string(),
                    ..Self::default()
                });
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.into(),
                    source,
                });
            }
        };
        let mut c: Self = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        c.path = path.to_string();
        Ok(c)
    }

    /// The default policy's document text.
    pub fn default_policy_text(&self) -> Result<Option<String>, ConfigError> {
        let Some(p) = &self.default_policy else {
            return Ok(None);
        };
        let err = |message: String| ConfigError::DefaultPolicy {
            path: self.path.clone(),
            message,
        };
        if let Some(name) = p.strip_prefix("preset:") {
            return agentcell_policy::presets::get(name)
                .map(|t| Some(t.to_string()))
                .ok_or_else(|| err(format!("no preset named {name}")));
        }
        if p.trim_start().starts_with('{') {
            return Ok(Some(p.clone()));
        }
        std::fs::read_to_string(Path::new(p))
            .map(Some)
            .map_err(|e| err(format!("{p}: {e}")))
    }

    pub fn use_systemd(&self) -> bool {
        match self.cgroup_driver {
            CgroupDriver::Systemd => true,
            CgroupDriver::Cgroupfs => false,
            CgroupDriver::Auto => crate::sandbox::runner::systemd_driver(),
        }
    }
}

/// `ConfigPath` from containerd's CRI runtime options (`cri.runtimeoptions.v1.Options`:
/// `type_url` = 1, `config_path` = 2, `config_body` = 3), decoded by hand: it is the only field
/// the shim reads.
pub fn config_path_from_options(any_value: &[u8]) -> Option<String> {
    let mut i = 0;
    while i < any_value.len() {
        let key = any_value[i];
        i += 1;
        let (field, wire) = (key >> 3, key & 7);
        if wire != 2 {
            return None;
        }
        let (len, used) = varint(&any_value[i..])?;
        i += used;
        let end = i.checked_add(len as usize)?;
        let bytes = any_value.get(i..end)?;
        if field == 2 {
            return String::from_utf8(bytes.to_vec())
                .ok()
                .filter(|s| !s.is_empty());
        }
        i = end;
    }
    None
}

fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let dir = std::env::temp_dir().join(format!("ac-shimcfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("shim.toml");
        std::fs::write(
            &p,
            "default_policy = \"preset:untrusted-code\"\nallow_best_effort = true\ncgroup_driver = \"cgroupfs\"\n",
        )
        .unwrap();
        let c = ShimConfig::load(p.to_str().unwrap(), true).unwrap();
        assert!(c.allow_best_effort);
        assert!(!c.allow_net_raw, "off unless set");
        assert_eq!(c.cgroup_driver, CgroupDriver::Cgroupfs);
        assert!(
            c.default_policy_text()
                .unwrap()
                .unwrap()
                .contains("version")
        );
        assert_eq!(c.mxc_release, agentcell_policy::MxcRelease::V1_0);
        std::fs::write(&p, "allow_net_raw = true\n").unwrap();
        assert!(
            ShimConfig::load(p.to_str().unwrap(), true)
                .unwrap()
                .allow_net_raw
        );
        std::fs::write(&p, "mxc_release = \"0.8\"\n").unwrap();
        let c = ShimConfig::load(p.to_str().unwrap(), true).unwrap();
        assert_eq!(c.mxc_release, agentcell_policy::MxcRelease::V0_8);
        std::fs::write(&p, "mxc_release = \"0.9\"\n").unwrap();
        let e = ShimConfig::load(p.to_str().unwrap(), true).unwrap_err();
        assert!(e.to_string().contains("0.8 for retired"), "{e}");
        std::fs::write(&p, "default_polcy = 1\n").unwrap();
        let e = ShimConfig::load(p.to_str().unwrap(), true).unwrap_err();
        assert!(e.to_string().contains("default_polcy"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        // Absent at the default path: defaults, no default policy.
        let c = ShimConfig::load("/nonexistent/agentcell/shim.toml", false).unwrap();
        assert!(c.default_policy_text().unwrap().is_none());
        assert!(ShimConfig::load("/nonexistent/agentcell/shim.toml", true).is_err());
    }

    #[test]
    fn config_path_from_cri_runtime_options() {
        // type_url "x", config_path "/etc/a.toml"
        let mut b = vec![0x0a, 1, b'x', 0x12, 11];
        b.extend_from_slice(b"/etc/a.toml");
        assert_eq!(config_path_from_options(&b).as_deref(), Some("/etc/a.toml"));
        assert_eq!(config_path_from_options(&[0x0a, 1, b'x']), None);
    }
}
