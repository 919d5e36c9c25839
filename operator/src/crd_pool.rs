//! The warm-pool resources (`agentcell.dev/v1alpha1`): an `AgentSandboxPool` keeps pre-started
//! `AgentSandbox`es of one template; an `AgentSandboxClaim` takes one of them. The CRD YAML in
//! `crds/` is generated from these types by the `crdgen` binary.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::crd::{AgentSandboxSpec, Lifetime};

/// A warm pool: `replicas` unclaimed, pre-started sandboxes of `template`, handed out to claims.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "agentcell.dev",
    version = "v1alpha1",
    kind = "AgentSandboxPool",
    plural = "agentsandboxpools",
    doc = "A warm pool of pre-started AgentSandboxes handed out to AgentSandboxClaims.",
    shortname = "asbpool",
    namespaced,
    status = "AgentSandboxPoolStatus",
    // `kubectl scale` and a HorizontalPodAutoscaler set `spec.replicas` through this; the
    // selector picks the unclaimed members (what `status.replicas` counts).
    scale = r#"{"specReplicasPath":".spec.replicas","statusReplicasPath":".status.replicas","labelSelectorPath":".status.selector"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Updated","type":"integer","jsonPath":".status.updatedReadyReplicas"}"#,
    printcolumn = r#"{"name":"Claimed","type":"integer","jsonPath":".status.claimed"}"#,
    printcolumn = r#"{"name":"Policy","type":"string","jsonPath":".status.policyShortDigest"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.maxReplicas) || self.replicas <= self.maxReplicas"
).message("replicas must not exceed maxReplicas"))]
#[serde(rename_all = "camelCase")]
pub struct AgentSandboxPoolSpec {
    /// The `AgentSandbox` spec every member is made from. A change (or a change of the policy it
    /// names) replaces unclaimed members per `updateStrategy`; claimed ones are never touched.
    pub template: AgentSandboxSpec,

    /// How many unclaimed members to keep. Claimed members leave the pool and are replaced.
    #[schemars(range(min = 0))]
    pub replicas: i32,

    /// Upper bound of `replicas` (a CEL rule rejects more; the operator never creates more
    /// unclaimed members than this).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_replicas: Option<i32>,

    /// How unclaimed members of an old template or policy are replaced.
    #[serde(default)]
    pub update_strategy: PoolUpdateStrategy,
}

/// How a pool replaces outdated unclaimed members.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolUpdateStrategy {
    /// `RollingUpdate` (default: at most `rollingUpdate.maxUnavailable` members missing at a
    /// time) or `Recreate` (every outdated unclaimed member at once).
    #[serde(default, rename = "type")]
    pub type_: PoolUpdateType,
    /// Parameters of `RollingUpdate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_update: Option<RollingUpdate>,
}

impl PoolUpdateStrategy {
    /// How many members a rolling update may take away at once (at least one, so it progresses).
    pub fn max_unavailable(&self) -> usize {
        self.rolling_update
            .as_ref()
            .map_or(1, |r| r.max_unavailable.max(1) as usize)
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PoolUpdateType {
    #[default]
    RollingUpdate,
    Recreate,
}

/// Parameters of a rolling update.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollingUpdate {
    /// How many ready members may be missing during the update (default 1).
    #[serde(default = "one")]
    #[schemars(range(min = 1))]
    pub max_unavailable: i32,
}

fn one() -> i32 {
    1
}

/// What the operator observed of the pool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentSandboxPoolStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Unclaimed members (any template).
    #[serde(default)]
    pub replicas: i32,
    /// Unclaimed members that are Ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Unclaimed members that are Ready and run the current template and policy: what a claim
    /// can get now.
    #[serde(default)]
    pub updated_ready_replicas: i32,
    /// Members handed out to claims that still exist.
    #[serde(default)]
    pub claimed: i32,
    /// `sha256:…` of the template's canonical policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_digest: Option<String>,
    /// The first 12 hex digits of the digest (the `Policy` column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_short_digest: Option<String>,
    /// `Available`, `Progressing`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Label selector of the unclaimed members (the scale subresource's `status.selector`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}

/// A request for one sandbox from a pool: binds a Ready, current member.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "agentcell.dev",
    version = "v1alpha1",
    kind = "AgentSandboxClaim",
    plural = "agentsandboxclaims",
    doc = "A claim of one warm AgentSandbox from an AgentSandboxPool.",
    shortname = "asbclaim",
    namespaced,
    status = "AgentSandboxClaimStatus",
    printcolumn = r#"{"name":"Bound","type":"string","jsonPath":".status.conditions[?(@.type==\"Bound\")].status"}"#,
    printcolumn = r#"{"name":"Pool","type":"string","jsonPath":".spec.poolRef.name"}"#,
    printcolumn = r#"{"name":"Sandbox","type":"string","jsonPath":".status.sandbox"}"#,
    printcolumn = r#"{"name":"IP","type":"string","jsonPath":".status.podIP"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AgentSandboxClaimSpec {
    /// The pool (same namespace) to take a sandbox from.
    pub pool_ref: PoolRef,
    /// When the claimed sandbox ends (`shutdownAfter` counts from the claim's creation) and
    /// what deleting the claim does: `Delete` (default) deletes the sandbox, `Retain` releases
    /// it (the sandbox stays, owned by nobody).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime: Option<Lifetime>,
}

/// A pool in the claim's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
pub struct PoolRef {
    /// Name of the `AgentSandboxPool`.
    #[schemars(length(min = 1))]
    pub name: String,
}

/// What the claim got.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentSandboxClaimStatus {
    /// The bound `AgentSandbox`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// IP of its pod.
    #[serde(default, rename = "podIP", skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
    /// DNS name of its headless Service.
    #[serde(
        default,
        rename = "serviceFQDN",
        skip_serializing_if = "Option::is_none"
    )]
    pub service_fqdn: Option<String>,
    /// `sha256:…` of the bound sandbox's policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_digest: Option<String>,
    /// Milliseconds from the claim's creation to `Bound=True`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_to_bound_millis: Option<i64>,
    /// `Bound`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}
