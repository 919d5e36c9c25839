//! Pure logic of warm pools and claims: which members a pool should have, which to replace,
//! which member a claim may take. No API calls here; [`crate::pool_reconcile`] does the effects.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use agentcell_policy::canonical::digest_of;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};

use crate::conditions::{POD_UNSCHEDULABLE, READY, UP_TO_DATE};
use crate::crd::{AgentSandbox, AgentSandboxSpec, Isolation, Lifetime};
use crate::crd_pool::{AgentSandboxClaim, AgentSandboxPool, PoolUpdateType};
use crate::desired::{self, LABEL_MANAGED_BY, MANAGER, ResolvedPolicy, SpecError};

/// Label naming the pool a member was made by (kept after it is claimed).
pub const LABEL_POOL: &str = "agentcell.dev/pool";
/// Label: the member's policy digest, hex truncated to fit a label value.
pub const LABEL_POLICY: &str = "agentcell.dev/policy";
/// Label: digest of the pool template the member was made from, truncated like the policy.
pub const LABEL_TEMPLATE: &str = "agentcell.dev/pool-template";
/// Label: the member's isolation tier.
pub const LABEL_ISOLATION: &str = "agentcell.dev/isolation";
/// Label naming the claim a member was handed to. A member with it never returns to the pool.
pub const LABEL_CLAIM: &str = "agentcell.dev/claim";
/// Finalizer on a claim: its deletion waits until the sandbox is deleted or released. Not an
/// annotation, so the `agentcell.dev/` rule of the shim does not apply; kept apart anyway.
pub const CLAIM_FINALIZER: &str = "operator.agentcell.dev/claim-release";

/// Pool conditions.
pub const AVAILABLE: &str = "Available";
pub const PROGRESSING: &str = "Progressing";
pub const POOL_CONDITIONS: [&str; 2] = [AVAILABLE, PROGRESSING];
/// Claim condition.
pub const BOUND: &str = "Bound";

/// Hex digits of a digest that go in a label (labels hold at most 63 characters and no `:`).
const LABEL_HEX: usize = 40;

/// A `sha256:…` digest as a label value.
pub fn label_value(digest: &str) -> String {
    digest
        .trim_start_matches("sha256:")
        .chars()
        .take(LABEL_HEX)
        .collect()
}

/// What makes a member current: the pool's template, policy and isolation as they are now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolIdentity {
    pub policy_digest: String,
    pub template_hash: String,
    pub isolation: Isolation,
}

impl PoolIdentity {
    pub fn new(template: &AgentSandboxSpec, policy: &ResolvedPolicy) -> Self {
        Self {
            policy_digest: policy.digest.clone(),
            template_hash: template_hash(template),
            isolation: template.isolation,
        }
    }
}

/// Digest of a pool template (serde_json maps are sorted, so key order does not matter).
pub fn template_hash(t: &AgentSandboxSpec) -> String {
    let v = serde_json::to_value(t).expect("template serializes");
    digest_of(&v.to_string())
}

/// The template as a sandbox named after the pool, so the sandbox checks apply to it unchanged.
pub fn template_sandbox(pool: &AgentSandboxPool) -> AgentSandbox {
    let mut asb = AgentSandbox::new(&pool.name_any(), pool.spec.template.clone());
    asb.metadata.namespace = pool.namespace();
    asb
}

fn pool_labels(pool: &AgentSandboxPool, id: &PoolIdentity) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_POOL.to_owned(), pool.name_any()),
        (LABEL_POLICY.to_owned(), label_value(&id.policy_digest)),
        (LABEL_TEMPLATE.to_owned(), label_value(&id.template_hash)),
        (LABEL_ISOLATION.to_owned(), id.isolation.as_str().to_owned()),
        (LABEL_MANAGED_BY.to_owned(), MANAGER.to_owned()),
    ])
}

/// A new member: the template, owned by the pool, labelled with what makes it current. The API
/// server picks the name (`generateName`).
pub fn new_member(pool: &AgentSandboxPool, id: &PoolIdentity) -> AgentSandbox {
    AgentSandbox {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", pool.name_any())),
            namespace: pool.namespace(),
            labels: Some(pool_labels(pool, id)),
            owner_references: Some(vec![owner_ref(pool)]),
            ..ObjectMeta::default()
        },
        spec: pool.spec.template.clone(),
        status: None,
    }
}

pub fn owner_ref<K: Resource<DynamicType = ()>>(obj: &K) -> OwnerReference {
    obj.controller_owner_ref(&())
        .expect("an object read from the API server has a name and uid")
}

fn label<'a>(asb: &'a AgentSandbox, key: &str) -> Option<&'a str> {
    asb.labels().get(key).map(String::as_str)
}

pub fn is_claimed(asb: &AgentSandbox) -> bool {
    label(asb, LABEL_CLAIM).is_some()
}

/// Made from the pool's current template, policy and isolation (by its labels and spec).
pub fn is_current(asb: &AgentSandbox, id: &PoolIdentity) -> bool {
    label(asb, LABEL_POLICY) == Some(label_value(&id.policy_digest).as_str())
        && label(asb, LABEL_TEMPLATE) == Some(label_value(&id.template_hash).as_str())
        && label(asb, LABEL_ISOLATION) == Some(id.isolation.as_str())
        && asb.spec.isolation == id.isolation
}

fn cond_is(asb: &AgentSandbox, type_: &str, status: &str) -> bool {
    asb.status
        .as_ref()
        .and_then(|s| s.condition(type_))
        .is_some_and(|c| c.status == status)
}

pub fn is_ready(asb: &AgentSandbox) -> bool {
    cond_is(asb, READY, "True")
}

pub fn is_unschedulable(asb: &AgentSandbox) -> bool {
    asb.status
        .as_ref()
        .and_then(|s| s.condition(READY))
        .is_some_and(|c| c.status == "False" && c.reason == POD_UNSCHEDULABLE)
}

fn is_deleting(asb: &AgentSandbox) -> bool {
    asb.metadata.deletion_timestamp.is_some()
}

/// Whether a claim may take `asb` from `pool`: an unclaimed member the pool still owns, Ready,
/// its pod up to date, and its reported policy digest and isolation exactly the pool's current
/// ones (the labels alone could be stale; the status is what the sandbox's pod runs).
pub fn is_bindable(asb: &AgentSandbox, pool: &AgentSandboxPool, id: &PoolIdentity) -> bool {
    let owned = asb
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == pool.metadata.uid.as_ref());
    let st = asb.status.as_ref();
    owned
        && !is_claimed(asb)
        && !is_deleting(asb)
        && is_current(asb, id)
        && is_ready(asb)
        && cond_is(asb, UP_TO_DATE, "True")
        && st.and_then(|s| s.policy_digest.as_deref()) == Some(id.policy_digest.as_str())
        && st.and_then(|s| s.isolation) == Some(id.isolation)
}

/// The members a claim may take, best first: the oldest (longest warm), then by name, so
/// concurrent claims contend in the same order and the loser moves to the next one.
pub fn bind_candidates<'a>(
    members: &'a [AgentSandbox],
    pool: &AgentSandboxPool,
    id: &PoolIdentity,
) -> Vec<&'a AgentSandbox> {
    let mut out: Vec<&AgentSandbox> = members
        .iter()
        .filter(|m| is_bindable(m, pool, id))
        .collect();
    out.sort_by_key(|m| (m.creation_timestamp().map(|t| t.0), m.name_any()));
    out
}

/// The member a claim already holds (a bind whose status write was lost).
pub fn held_by<'a>(
    members: &'a [AgentSandbox],
    claim: &AgentSandboxClaim,
) -> Option<&'a AgentSandbox> {
    members.iter().find(|m| {
        label(m, LABEL_CLAIM) == Some(claim.name_any().as_str())
            && m.owner_references()
                .iter()
                .any(|o| Some(&o.uid) == claim.metadata.uid.as_ref())
    })
}

/// The lifetime the bound sandbox gets: `shutdownAfter` counts from the claim's creation, so it
/// becomes an absolute `shutdownTime` (the sandbox itself was created earlier, when warmed).
pub fn claim_lifetime(claim: &AgentSandboxClaim) -> Result<Option<Lifetime>, SpecError> {
    let Some(l) = &claim.spec.lifetime else {
        return Ok(None);
    };
    let at = match (&l.shutdown_after, &l.shutdown_time) {
        (Some(after), None) => {
            let bad = |message: String| SpecError::BadLifetime {
                field: "shutdownAfter",
                message,
            };
            let d = desired::parse_duration(after).map_err(bad)?;
            let created = claim
                .metadata
                .creation_timestamp
                .as_ref()
                .ok_or_else(|| bad("the claim has no creationTimestamp yet".into()))?;
            created.0.checked_add(d).map_err(|e| bad(e.to_string()))?
        }
        (None, Some(time)) => time
            .parse::<Timestamp>()
            .map_err(|e| SpecError::BadLifetime {
                field: "shutdownTime",
                message: format!("not an RFC 3339 time: {e}"),
            })?,
        _ => {
            return Err(SpecError::BadLifetime {
                field: "shutdownAfter",
                message: "exactly one of shutdownAfter, shutdownTime must be set".into(),
            });
        }
    };
    Ok(Some(Lifetime {
        shutdown_after: None,
        shutdown_time: Some(at.to_string()),
        shutdown_policy: l.shutdown_policy,
    }))
}

/// What one pool reconcile does, and the status it reports.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Unclaimed members to keep: `min(replicas, maxReplicas)`.
    pub desired: usize,
    /// Members to create now.
    pub create: usize,
    /// Unclaimed members to delete (outdated or surplus), by name.
    pub delete: Vec<String>,
    /// Why creation holds back (members the scheduler cannot place).
    pub hold: Option<String>,
    pub replicas: usize,
    pub ready: usize,
    pub updated_ready: usize,
    pub claimed: usize,
    pub outdated: usize,
}

/// Decides creates and deletes from the members (every sandbox labelled with the pool) and the
/// creates still in flight. Claimed members are counted and never touched. Unclaimed members
/// plus creates never exceed `desired` through creation, so `maxReplicas` holds.
pub fn plan(
    pool: &AgentSandboxPool,
    id: &PoolIdentity,
    members: &[AgentSandbox],
    in_flight: usize,
) -> Plan {
    let spec = &pool.spec;
    let cap = spec.max_replicas.unwrap_or(spec.replicas);
    let desired = spec.replicas.min(cap).max(0) as usize;
    let claimed = members.iter().filter(|m| is_claimed(m)).count();
    let live: Vec<&AgentSandbox> = members
        .iter()
        .filter(|m| !is_claimed(m) && !is_deleting(m))
        .collect();
    let (mut current, stale): (Vec<&AgentSandbox>, Vec<&AgentSandbox>) =
        live.iter().partition(|m| is_current(m, id));
    let ready = live.iter().filter(|m| is_ready(m)).count();
    let updated_ready = live.iter().filter(|m| is_bindable(m, pool, id)).count();
    let stuck: Vec<String> = live
        .iter()
        .filter(|m| is_unschedulable(m))
        .map(|m| m.name_any())
        .collect();
    let hold = (!stuck.is_empty()).then(|| {
        format!(
            "holding back: {} member(s) cannot be scheduled ({})",
            stuck.len(),
            stuck.join(", ")
        )
    });

    let mut delete = Vec::new();
    // Surplus current members (replicas lowered): the not-ready and newest go first.
    if current.len() > desired {
        current.sort_by_key(|m| {
            (
                is_ready(m),
                std::cmp::Reverse(m.creation_timestamp().map(|t| t.0)),
            )
        });
        let surplus = current.len() - desired;
        delete.extend(current.drain(..surplus).map(|m| m.name_any()));
    }
    // Outdated members: not-ready ones serve nobody and go at once; ready ones per strategy.
    let (stale_ready, stale_idle): (Vec<&&AgentSandbox>, Vec<&&AgentSandbox>) =
        stale.iter().partition(|m| is_ready(m));
    delete.extend(stale_idle.iter().map(|m| m.name_any()));
    let budget = match spec.update_strategy.type_ {
        PoolUpdateType::Recreate => stale_ready.len(),
        PoolUpdateType::RollingUpdate if hold.is_some() => 0,
        PoolUpdateType::RollingUpdate => {
            let unavailable = desired.saturating_sub(ready);
            spec.update_strategy
                .max_unavailable()
                .saturating_sub(unavailable)
        }
    };
    let mut stale_ready = stale_ready;
    stale_ready.sort_by_key(|m| (m.creation_timestamp().map(|t| t.0), m.name_any()));
    delete.extend(stale_ready.iter().take(budget).map(|m| m.name_any()));
    let kept_stale = stale_ready.len().saturating_sub(budget);

    let have = current.len() + kept_stale + in_flight;
    let create = if hold.is_some() {
        0
    } else {
        desired.saturating_sub(have)
    };
    Plan {
        desired,
        create,
        delete,
        hold,
        replicas: live.len(),
        ready,
        updated_ready,
        claimed,
        outdated: stale.len(),
    }
}

/// How long a create waits to be seen in a list before it no longer counts as in flight (a
/// create the API server answered but whose object never shows up must not block the pool).
pub const EXPECTATION_TTL: Duration = Duration::from_secs(300);

/// Creates in flight per pool: members created but not yet seen in a list. Lists are served
/// from the API server's watch cache (cheap, possibly behind), so without this a reconcile
/// right after a create would count too few members and create again.
#[derive(Debug, Default)]
pub struct Expectations {
    inner: Mutex<HashMap<String, HashMap<String, Timestamp>>>,
}

impl Expectations {
    pub fn expect(&self, pool: &str, member: String, at: Timestamp) {
        self.lock()
            .entry(pool.to_owned())
            .or_default()
            .insert(member, at);
    }

    /// Drops what the list shows (and what expired) and returns how many creates remain unseen.
    pub fn in_flight(&self, pool: &str, seen: &HashSet<String>, now: Timestamp) -> usize {
        let mut all = self.lock();
        let Some(e) = all.get_mut(pool) else {
            return 0;
        };
        e.retain(|name, at| {
            !seen.contains(name) && now.duration_since(*at).unsigned_abs() < EXPECTATION_TTL
        });
        let n = e.len();
        if n == 0 {
            all.remove(pool);
        }
        n
    }

    pub fn forget(&self, pool: &str) {
        self.lock().remove(pool);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<String, Timestamp>>> {
        // A panic while holding the lock leaves plain data behind; keep using it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}
