//! The `AgentSandbox` custom resource (`agentcell.dev/v1alpha1`). The CRD YAML in `crds/` is
//! generated from these types by the `crdgen` binary, so the doc comments are what
//! `kubectl explain agentsandbox.spec` prints.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::{JsonSchema, Schema};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// API group of every agentcell resource and prefix of the annotations only the operator writes.
pub const GROUP: &str = "agentcell.dev";

/// A sandbox for an AI agent: one pod confined by an MXC policy, under a typed isolation tier,
/// with a stable DNS name and a NetworkPolicy mirroring the policy's egress rules.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "agentcell.dev",
    version = "v1alpha1",
    kind = "AgentSandbox",
    plural = "agentsandboxes",
    doc = "A sandbox for an AI agent: one pod confined by an MXC policy (kubectl explain agentsandbox.spec).",
    shortname = "asb",
    namespaced,
    status = "AgentSandboxStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Isolation","type":"string","jsonPath":".status.isolation"}"#,
    printcolumn = r#"{"name":"Policy","type":"string","jsonPath":".status.policyShortDigest"}"#,
    printcolumn = r#"{"name":"Pod","type":"string","jsonPath":".status.podName"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AgentSandboxSpec {
    /// The pod to run. The operator adds the RuntimeClass of `isolation`, the policy annotations
    /// (`agentcell.dev/*`, which the template must not set) and an owner reference.
    pub pod_template: PodTemplateSpec,

    /// Isolation tier: `container` (the agentcell runtime: namespaces, Landlock, seccomp and the
    /// network fence) or `microvm` (the same inside a lightweight VM). Mapped to a RuntimeClass by
    /// the operator's configuration (defaults `agentcell` and `agentcell-vm`); a
    /// `podTemplate.spec.runtimeClassName` that disagrees is rejected.
    #[serde(default)]
    pub isolation: Isolation,

    /// The MXC policy confining the pod: exactly one of `inline`, `configMapRef`, `preset`.
    pub policy: PolicySource,

    /// `Running` (default) keeps the pod running; `Suspended` deletes the pod and keeps the
    /// sandbox, its Service and its volumes (PersistentVolumeClaims are not touched).
    #[serde(default)]
    pub operating_mode: OperatingMode,

    /// When the sandbox ends, and what happens then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime: Option<Lifetime>,

    /// Headless Service giving the pod a stable DNS name (`NAME.NAMESPACE.svc`).
    #[serde(default)]
    pub service: ServiceSpec,

    /// Also create a Kubernetes NetworkPolicy mirroring the MXC egress CIDR/port rules and the
    /// ingress default (defence in depth at the CNI; the in-pod fence stays the exact
    /// enforcement). Default true.
    #[serde(default = "default_true")]
    pub network_policy: bool,

    /// What a changed pod template or policy does to a running pod: `Never` (default) reports
    /// `UpToDate=False` and leaves the pod alone; `Recreate` deletes it so the new one starts.
    #[serde(default)]
    pub update_policy: UpdatePolicy,
}

fn default_true() -> bool {
    true
}

/// Isolation tier of a sandbox.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    #[default]
    Container,
    Microvm,
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Container => "container",
            Self::Microvm => "microvm",
        }
    }
}

/// Where the MXC policy comes from. Exactly one field is set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "(has(self.inline) ? 1 : 0) + (has(self.configMapRef) ? 1 : 0) + (has(self.preset) ? 1 : 0) == 1"
).message("exactly one of inline, configMapRef, preset must be set"))]
pub struct PolicySource {
    /// The MXC document itself (a `SandboxPolicy` or a `ContainerConfig`), as an object. It
    /// declares one of MXC 1.0's contracts (`1.0.0`; `0.9.0-alpha`, `1.1.0-alpha`); a retired
    /// 0.6-0.8 document is `PolicyValid=False` (`RetiredVersion`) unless the operator runs with
    /// `--mxc-release 0.8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "inline_policy_schema")]
    pub inline: Option<Value>,

    /// A key of a ConfigMap in the sandbox's namespace holding the MXC document as JSON. A
    /// change of the ConfigMap changes the policy digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<ConfigMapPolicyRef>,

    /// A policy shipped with agentcell (`agentcell policy presets` lists them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preset_schema")]
    pub preset: Option<String>,
}

fn inline_policy_schema(_: &mut schemars::SchemaGenerator) -> Schema {
    Schema::try_from(json!({
        "description": "The MXC document itself (a SandboxPolicy or a ContainerConfig), as an object. It declares one of MXC 1.0's contracts (1.0.0; 0.9.0-alpha, 1.1.0-alpha); a retired 0.6-0.8 document is PolicyValid=False (RetiredVersion) unless the operator runs with --mxc-release 0.8.",
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    }))
    .expect("an object schema")
}

fn preset_schema(_: &mut schemars::SchemaGenerator) -> Schema {
    let names: Vec<&str> = agentcell_policy::presets::PRESETS
        .iter()
        .map(|(n, _, _)| *n)
        .collect();
    Schema::try_from(json!({
        "description": "A policy shipped with agentcell (`agentcell policy presets` lists them).",
        "type": "string",
        "enum": names
    }))
    .expect("an object schema")
}

/// A ConfigMap key holding an MXC document.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
pub struct ConfigMapPolicyRef {
    /// Name of the ConfigMap (same namespace as the sandbox).
    #[schemars(length(min = 1))]
    pub name: String,
    /// Key whose value is the JSON document.
    #[schemars(length(min = 1))]
    pub key: String,
}

/// Whether the sandbox's pod should run.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum OperatingMode {
    #[default]
    Running,
    Suspended,
}

/// When a sandbox ends. Exactly one of `shutdownAfter` and `shutdownTime` is set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "has(self.shutdownAfter) != has(self.shutdownTime)"
).message("exactly one of shutdownAfter, shutdownTime must be set"))]
pub struct Lifetime {
    /// How long after the sandbox's creation it ends, as a duration (`90s`, `30m`, `2h45m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub shutdown_after: Option<String>,

    /// When the sandbox ends, as an RFC 3339 time (`2026-01-31T18:00:00Z`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "date_time_schema")]
    pub shutdown_time: Option<String>,

    /// `Delete` (default) deletes the sandbox and everything it owns; `Retain` deletes the pod
    /// and keeps the sandbox (with `Expired=True`), its Service and NetworkPolicy.
    #[serde(default)]
    pub shutdown_policy: ShutdownPolicy,
}

fn date_time_schema(_: &mut schemars::SchemaGenerator) -> Schema {
    Schema::try_from(json!({
        "description": "When the sandbox ends, as an RFC 3339 time (`2026-01-31T18:00:00Z`).",
        "type": "string",
        "format": "date-time"
    }))
    .expect("an object schema")
}

/// What expiry does.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ShutdownPolicy {
    #[default]
    Delete,
    Retain,
}

/// The headless Service of a sandbox.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Create the Service (default true).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Ports to publish (none: DNS only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<SandboxPort>,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            ports: Vec::new(),
        }
    }
}

/// A port of the sandbox's Service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxPort {
    /// Port name (a DNS label), required when there are several ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Port number, also the container port targeted.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "protocol_schema")]
    pub protocol: Option<String>,
}

fn protocol_schema(_: &mut schemars::SchemaGenerator) -> Schema {
    Schema::try_from(json!({
        "description": "`TCP` (default), `UDP` or `SCTP`.",
        "type": "string",
        "enum": ["TCP", "UDP", "SCTP"]
    }))
    .expect("an object schema")
}

/// What a change of template or policy does to a running pod.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum UpdatePolicy {
    #[default]
    Never,
    Recreate,
}

/// What the operator observed and did.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentSandboxStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `PolicyValid`, `RuntimeClassResolved`, `UpToDate`, `Suspended`, `Expired`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Name of the sandbox's pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// IP of the pod once it runs.
    #[serde(default, rename = "podIP", skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
    /// DNS name of the headless Service.
    #[serde(
        default,
        rename = "serviceFQDN",
        skip_serializing_if = "Option::is_none"
    )]
    pub service_fqdn: Option<String>,
    /// `sha256:…` of the canonical policy (the value of `agentcell.dev/policy-digest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_digest: Option<String>,
    /// The first 12 hex digits of the digest (the `Policy` column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_short_digest: Option<String>,
    /// The isolation tier in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<Isolation>,
}

impl AgentSandboxStatus {
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}
