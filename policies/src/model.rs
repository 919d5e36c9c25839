//! The MXC `ContainerConfig`: one model for every version. For the retired 0.6–0.8 documents it is
//! what MXC 0.8's runtime parser read (the 0.9.0-dev superset of those contracts; `experimental`
//! open at run time), and the fields MXC added later ([`CURRENT_ONLY`]) are refused there. For
//! MXC 1.0's registered contracts the exact shapes ([`crate::contract::current`]) are checked
//! first, then the document is read into this model. Every object is closed.
//!
//! Field spellings, aliases and enum values follow MXC exactly; see `../shared/mxc-conformance`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerConfig {
    #[serde(rename = "$schema", default, skip_serializing)]
    pub schema: Option<String>,
    #[serde(rename = "_comment", default, skip_serializing)]
    pub comment: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containment: Option<Containment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Lifecycle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<Filesystem>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ui: Option<Ui>,
    #[serde(
        default,
        alias = "appContainer",
        skip_serializing_if = "Option::is_none"
    )]
    pub process_container: Option<ProcessContainer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lxc: Option<Lxc>,
    #[serde(
        default,
        alias = "macos_sandbox",
        skip_serializing_if = "Option::is_none"
    )]
    pub seatbelt: Option<Seatbelt>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_config: Option<RuntimeConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experimental: Option<Experimental>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_vector: Option<String>,
    // Since 0.9.0-alpha (MXC 1.0's contracts): permanent sections that left `experimental`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<Telemetry>,
    /// The one-shot WSLC section (0.8: `experimental.wslc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wslc: Option<Wslc>,
    /// 1.1.0-alpha: the Hyperlight guest runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hyperlight: Option<Hyperlight>,
    /// 1.1.0-alpha: the placeholder development feature (0.8: `experimental.test`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<TestFeature>,
    /// 1.1.0-alpha: one-shot Windows Sandbox settings (0.8: `experimental.windows_sandbox`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub windows_sandbox: Option<WindowsSandbox>,
    /// The IsolationSession provision settings (0.8: `experimental.isolation_session`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation_session: Option<IsolationSession>,
}

/// Fields (JSON paths, `*` for any section holding the key) that exist only in MXC 1.0's
/// registered contracts; MXC 0.8's parser refused them as unknown.
pub const CURRENT_ONLY: &[(&str, &str)] = &[
    ("", "telemetry"),
    ("", "wslc"),
    ("", "hyperlight"),
    ("", "test"),
    ("", "windowsSandbox"),
    ("", "isolationSession"),
    ("process", "inheritDefaultEnv"),
    ("processContainer", "filesystem"),
    ("appContainer", "filesystem"),
];

/// The first [`CURRENT_ONLY`] field in a retired document, as MXC 0.8's serde reader named it.
pub fn retired_unknown_field(raw: &Value) -> Option<(crate::path::JsonPath, String)> {
    let root = crate::path::JsonPath::root();
    for (section, key) in CURRENT_ONLY {
        let (holder, path) = if section.is_empty() {
            (Some(raw), root.clone())
        } else {
            (raw.get(*section), root.key(section))
        };
        if holder
            .and_then(Value::as_object)
            .is_some_and(|o| o.contains_key(*key))
        {
            return Some((
                path.key(key),
                format!(
                    "unknown field `{key}`: it exists from MXC contract 0.9.0-alpha on, and this document declares a retired version"
                ),
            ));
        }
    }
    None
}

/// Containment backends and abstract intents. Aliases are folded into their canonical variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Containment {
    Process,
    #[serde(rename = "processcontainer", alias = "appcontainer")]
    ProcessContainer,
    Vm,
    WindowsSandbox,
    Lxc,
    Microvm,
    Hyperlight,
    Wslc,
    #[serde(alias = "macos_sandbox")]
    Seatbelt,
    IsolationSession,
    Bubblewrap,
}

impl Containment {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Process => "process",
            Self::ProcessContainer => "processcontainer",
            Self::Vm => "vm",
            Self::WindowsSandbox => "windows_sandbox",
            Self::Lxc => "lxc",
            Self::Microvm => "microvm",
            Self::Hyperlight => "hyperlight",
            Self::Wslc => "wslc",
            Self::Seatbelt => "seatbelt",
            Self::IsolationSession => "isolation_session",
            Self::Bubblewrap => "bubblewrap",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Provision,
    Start,
    Exec,
    Stop,
    Deprovision,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Lifecycle {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destroy_on_exit: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preserve_policy: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Process {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_line: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// Wall-clock timeout in milliseconds; 0 means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u32>,
    /// 0.9.0-alpha: layer `env` on top of MXC's default environment instead of replacing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inherit_default_env: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Filesystem {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readwrite_paths: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readonly_paths: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denied_paths: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fallback {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_dacl_mutation: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Network {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_policy: Option<DefaultPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcement_mode: Option<EnforcementMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_hosts: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_hosts: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_local_network: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<Proxy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Egress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Ingress>,
}

impl Network {
    pub fn has_legacy(&self) -> bool {
        self.default_policy.is_some()
            || self.enforcement_mode.is_some()
            || self.allowed_hosts.is_some()
            || self.blocked_hosts.is_some()
            || self.allow_local_network.is_some()
            || self.proxy.is_some()
    }
    pub fn has_directional(&self) -> bool {
        self.egress.is_some() || self.ingress.is_some()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultPolicy {
    Allow,
    Block,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EnforcementMode {
    Capabilities,
    Firewall,
    Both,
}

/// Legacy proxy as MXC's runtime reads it: a closed object; which key wins when several are
/// present is decided by the validator (builtinTestServer, then localhost, then url), as in MXC.
/// The published contracts additionally require exactly one key (see `contract`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Proxy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub localhost: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin_test_server: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Egress {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Action>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<Rule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny: Option<Vec<Rule>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ingress {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Action>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_loopback: Option<Action>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<Peer>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<PortSelector>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Peer {
    pub cidr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Any,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ui {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clipboard: Option<Clipboard>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injection: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Clipboard {
    None,
    Read,
    Write,
    All,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProcessContainer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub least_privilege: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_mode: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_denials: Option<CaptureDenials>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ui: Option<ProcessContainerUi>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<ProcessContainerNetwork>,
    /// 0.9.0-alpha: Windows ProcessContainer enumerate-only paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<ProcessContainerFilesystem>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProcessContainerFilesystem {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enumerate_paths: Option<Vec<String>>,
}

/// 1.1.0-alpha: `hyperlight.runtime`, the guest runtime `process.commandLine` is source for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hyperlight {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CaptureDenials {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<CaptureDenialsMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_etl: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureDenialsMode {
    Block,
    Allow,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProcessContainerUi {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<UiIsolation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desktop_system_control: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_settings: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ime: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UiIsolation {
    Container,
    Desktop,
    Handles,
    Atoms,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProcessContainerNetwork {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_proxy_peer: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Lxc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distribution: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Seatbelt {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_override: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gui_access: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_method: Option<LaunchMethod>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nested_pty: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keychain_access: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_mach_lookups: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LaunchMethod {
    Exec,
    Open,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuntimeConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_proxy: Option<String>,
}

/// Open at run time, as in MXC (experimental backends are in flux): unknown keys are ignored,
/// known keys are type-checked. The published contracts close it per request root.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Experimental {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<TestFeature>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub windows_sandbox: Option<WindowsSandbox>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wslc: Option<Wslc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation_session: Option<IsolationSession>,
    #[serde(
        default,
        alias = "macos_sandbox",
        skip_serializing_if = "Option::is_none"
    )]
    pub seatbelt: Option<Seatbelt>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<Telemetry>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TestFeature {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Telemetry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WindowsSandbox {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon_pipe_name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Wslc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_os: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_tar_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_mappings: Option<Vec<PortMapping>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provision: Option<WslcProvision>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub windows_port: u16,
    pub container_port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<TransportProtocol>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportProtocol {
    Tcp,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WslcProvision {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_tar_path: Option<String>,
    /// 1.1.0-alpha.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_mappings: Option<Vec<PortMapping>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IsolationSession {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provision: Option<IsolationSessionProvision>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IsolationSessionProvision {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
}
