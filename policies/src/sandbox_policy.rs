//! MXC's SDK authoring shape, `SandboxPolicy`, and its conversion to the `ContainerConfig` it
//! means (MXC's `createConfigFromPolicy` for Linux with the abstract `process` containment).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::PolicyError;
use crate::model::{
    Clipboard, ContainerConfig, Containment, DefaultPolicy, EnforcementMode, Filesystem, Lifecycle,
    Network, Process, ProcessContainer, ProcessContainerNetwork, Proxy, RuntimeConfig, Ui,
};
use crate::model::{Egress, Ingress};
use crate::path::JsonPath;
use crate::version::SchemaVersion;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SandboxPolicy {
    #[serde(rename = "$schema", default, skip_serializing)]
    pub schema: Option<String>,
    #[serde(rename = "_comment", default, skip_serializing)]
    pub comment: Option<Value>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<PolicyFilesystem>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<PolicyNetwork>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_config: Option<RuntimeConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_container: Option<PolicyProcessContainer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ui: Option<PolicyUi>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyFilesystem {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readwrite_paths: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readonly_paths: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denied_paths: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_policy_on_exit: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyNetwork {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_outbound: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_local_network: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_hosts: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_hosts: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<Proxy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Egress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Ingress>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyProcessContainer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<ProcessContainerNetwork>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyUi {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_windows: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clipboard: Option<Clipboard>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_input_injection: Option<bool>,
}

/// Converts a `SandboxPolicy` document to the `ContainerConfig` it means, applying the SDK's own
/// checks (version required and in range; legacy and directional network never mixed; directional
/// fields only from 0.8).
pub fn to_container_config(value: &Value) -> Result<ContainerConfig, PolicyError> {
    let root = JsonPath::root();
    let p: SandboxPolicy = crate::document::typed_at(value, &root)?;
    let version = match p.version.as_deref() {
        None | Some("") => {
            return Err(PolicyError::one(
                root.key("version"),
                "a SandboxPolicy requires a version",
            ));
        }
        Some(v) => {
            SchemaVersion::parse(Some(v)).map_err(|m| PolicyError::one(root.key("version"), m))?
        }
    };
    let net = p.network.clone().unwrap_or_default();
    let has_legacy = net.allow_outbound.is_some()
        || net.allow_local_network.is_some()
        || net.allowed_hosts.is_some()
        || net.blocked_hosts.is_some()
        || net.proxy.is_some();
    let peer = p
        .process_container
        .as_ref()
        .and_then(|c| c.network.as_ref())
        .and_then(|n| n.allowed_proxy_peer.clone());
    let runtime_proxy = p
        .runtime_config
        .as_ref()
        .and_then(|r| r.network_proxy.clone());
    let has_directional =
        net.egress.is_some() || net.ingress.is_some() || runtime_proxy.is_some() || peer.is_some();
    if has_legacy && has_directional {
        return Err(PolicyError::one(
            root.key("network"),
            "cannot mix allowOutbound, allowLocalNetwork, allowedHosts, blockedHosts or proxy with \
             egress, ingress, runtimeConfig or processContainer.network",
        ));
    }
    if has_directional && !version.supports_directional() {
        return Err(PolicyError::one(
            root.key("network"),
            format!(
                "schema {version} does not support network.egress, network.ingress, runtimeConfig or processContainer.network; use 0.8.0-alpha or later"
            ),
        ));
    }
    let directional = has_directional || (version.supports_directional() && !has_legacy);

    let fs = p.filesystem.clone().unwrap_or_default();
    let ui = p.ui.clone().unwrap_or_default();
    let mut cfg = ContainerConfig {
        version: p.version.clone(),
        containment: Some(Containment::Process),
        lifecycle: Some(Lifecycle {
            destroy_on_exit: Some(true),
            preserve_policy: Some(!fs.clear_policy_on_exit.unwrap_or(true)),
        }),
        process: Some(Process {
            timeout: Some(p.timeout_ms.unwrap_or(0)),
            ..Process::default()
        }),
        filesystem: Some(Filesystem {
            readwrite_paths: Some(fs.readwrite_paths.unwrap_or_default()),
            readonly_paths: Some(fs.readonly_paths.unwrap_or_default()),
            denied_paths: Some(fs.denied_paths.unwrap_or_default()),
        }),
        ui: Some(Ui {
            disable: Some(!ui.allow_windows.unwrap_or(false)),
            clipboard: Some(ui.clipboard.unwrap_or(Clipboard::None)),
            injection: Some(ui.allow_input_injection.unwrap_or(false)),
        }),
        ..ContainerConfig::default()
    };
    if directional {
        if net.egress.is_some() || net.ingress.is_some() {
            cfg.network = Some(Network {
                egress: net.egress,
                ingress: net.ingress,
                ..Network::default()
            });
        }
        if runtime_proxy.is_some() {
            cfg.runtime_config = Some(RuntimeConfig {
                network_proxy: runtime_proxy,
            });
        }
        if peer.is_some() {
            cfg.process_container = Some(ProcessContainer {
                network: Some(ProcessContainerNetwork {
                    allowed_proxy_peer: peer,
                }),
                ..ProcessContainer::default()
            });
        }
    } else if p.network.is_some() {
        let lists = net.allowed_hosts.as_ref().is_some_and(|l| !l.is_empty())
            || net.blocked_hosts.as_ref().is_some_and(|l| !l.is_empty());
        // On Linux the SDK asks for firewall enforcement when host lists are given (no proxy).
        let enforcement_mode = (lists && net.proxy.is_none()).then_some(EnforcementMode::Firewall);
        cfg.network = Some(Network {
            default_policy: Some(if net.allow_outbound == Some(true) {
                DefaultPolicy::Allow
            } else {
                DefaultPolicy::Block
            }),
            enforcement_mode,
            allow_local_network: net.allow_local_network,
            allowed_hosts: net.allowed_hosts,
            blocked_hosts: net.blocked_hosts,
            proxy: net.proxy,
            ..Network::default()
        });
    } else {
        cfg.network = Some(Network {
            default_policy: Some(DefaultPolicy::Block),
            ..Network::default()
        });
    }
    Ok(cfg)
}

/// A `SandboxPolicy` that declares one of MXC 1.0's registered contracts: only the directional
/// network exists there (`allowOutbound`, `allowLocalNetwork`, `allowedHosts`, `blockedHosts`
/// and `proxy` were removed with MXC's legacy network fields), and the conversion is MXC's SDK
/// conversion as for 0.8.
pub fn to_container_config_current(
    value: &Value,
    version: crate::version::ContractVersion,
) -> Result<ContainerConfig, PolicyError> {
    let root = JsonPath::root();
    let p: SandboxPolicy = crate::document::typed_at(value, &root)?;
    if let Some(n) = &p.network {
        for (k, present) in [
            ("allowOutbound", n.allow_outbound.is_some()),
            ("allowLocalNetwork", n.allow_local_network.is_some()),
            ("allowedHosts", n.allowed_hosts.is_some()),
            ("blockedHosts", n.blocked_hosts.is_some()),
            ("proxy", n.proxy.is_some()),
        ] {
            if present {
                return Err(PolicyError::one(
                    root.key("network").key(k),
                    format!(
                        "unknown field: MXC removed the legacy network fields in 0.9.0-alpha (this document declares {version}); use network.egress / network.ingress and runtimeConfig.networkProxy, or `agentcell policy migrate` on the 0.8 document"
                    ),
                ));
            }
        }
    }
    let fs = p.filesystem.clone().unwrap_or_default();
    let ui = p.ui.clone().unwrap_or_default();
    let net = p.network.clone().unwrap_or_default();
    let peer = p
        .process_container
        .as_ref()
        .and_then(|c| c.network.as_ref())
        .and_then(|n| n.allowed_proxy_peer.clone());
    Ok(ContainerConfig {
        version: p.version.clone(),
        containment: Some(Containment::Process),
        lifecycle: Some(Lifecycle {
            destroy_on_exit: Some(true),
            preserve_policy: Some(!fs.clear_policy_on_exit.unwrap_or(true)),
        }),
        process: Some(Process {
            timeout: Some(p.timeout_ms.unwrap_or(0)),
            ..Process::default()
        }),
        filesystem: Some(Filesystem {
            readwrite_paths: Some(fs.readwrite_paths.unwrap_or_default()),
            readonly_paths: Some(fs.readonly_paths.unwrap_or_default()),
            denied_paths: Some(fs.denied_paths.unwrap_or_default()),
        }),
        ui: Some(Ui {
            disable: Some(!ui.allow_windows.unwrap_or(false)),
            clipboard: Some(ui.clipboard.unwrap_or(Clipboard::None)),
            injection: Some(ui.allow_input_injection.unwrap_or(false)),
        }),
        network: (net.egress.is_some() || net.ingress.is_some()).then(|| Network {
            egress: net.egress,
            ingress: net.ingress,
            ..Network::default()
        }),
        runtime_config: p
            .runtime_config
            .as_ref()
            .filter(|r| r.network_proxy.is_some())
            .cloned(),
        process_container: peer.map(|peer| ProcessContainer {
            network: Some(ProcessContainerNetwork {
                allowed_proxy_peer: Some(peer),
            }),
            ..ProcessContainer::default()
        }),
        ..ContainerConfig::default()
    })
}
