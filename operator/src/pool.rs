//! Pure logic of warm pools and claims: which members a pool should have, which to replace,
//! which member a claim may take. No API calls here; [`crate::pool_reconcile`] does the effects.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use agentcell_policy::canonical::digest_of;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};

use crate::conditions::{EXPIRED, POD_UNSCHEDULABLE, READY, UP_TO_DATE};
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

/// The unclaimed members of `pool` as a label selector: the scale subresource's
/// `status.selector` (what `status.replicas` counts).
pub fn member_selector(pool: &AgentSandboxPool) -> String {
    format!("{LABEL_POOL}={},!{LABEL_CLAIM}", pool.name_any())
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
    /// Unclaimed members now.
    pub replicas: usize,
    /// Unclaimed members once this plan's deletes and creates are done.
    pub replicas_after: usize,
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
    // An unclaimed member that expired (a template lifetime with `Retain`) keeps its sandbox but
    // has no pod: it serves nobody, so it is deleted and replaced.
    let expired: Vec<String> = members
        .iter()
        .filter(|m| !is_claimed(m) && !is_deleting(m) && cond_is(m, EXPIRED, "True"))
        .map(|m| m.name_any())
        .collect();
    let live: Vec<&AgentSandbox> = members
        .iter()
        .filter(|m| !is_claimed(m) && !is_deleting(m) && !cond_is(m, EXPIRED, "True"))
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

    let expired_count = expired.len();
    let mut delete = expired;
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
    let replicas_after = (live.len() + create).saturating_sub(delete.len() - expired_count);
    Plan {
        desired,
        create,
        delete,
        hold,
        replicas: live.len(),
        replicas_after,
        ready,
        updated_ready,
        claimed,
        outdated: stale.len(),
    }
}

/// How long a create waits to be seen in a list before it no longer counts as in flight (a
/// create the API server answered but whose object never shows up must not block the pool).
pub const EXPECTATION_TTL: Duration = Duration::from_secs(300);

/// When this operator first saw each unbound claim (by uid), for claim-to-Bound.
#[derive(Debug, Default)]
pub struct FirstSeen {
    inner: Mutex<HashMap<String, Timestamp>>,
}

impl FirstSeen {
    /// Records `now` unless the claim was seen before; the first sighting.
    pub fn record(&self, uid: &str, now: Timestamp) -> Timestamp {
        *self
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(uid.to_owned())
            .or_insert(now)
    }

    pub fn forget(&self, uid: &str) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
    }
}

/// Where a claim's wait for Bound starts. The API server gives `creationTimestamp` in whole
/// seconds, so alone it overstates claim-to-Bound by up to a second (on a real API server the
/// p50 read ~500 ms where the bind took milliseconds). A first sighting by this operator within
/// that second is the closer bound (it lags creation only by the watch); one later than that
/// means the claim waited for the operator (a restart, a failover), which the creation time
/// counts.
pub fn claim_wait_start(created: Option<Timestamp>, first_seen: Timestamp) -> Timestamp {
    match created {
        Some(c)
            if first_seen >= c
                && first_seen
                    < c.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(1))
                        .unwrap_or(c) =>
        {
            first_seen
        }
        Some(c) => c,
        None => first_seen,
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd_pool::{AgentSandboxPoolSpec, PoolUpdateStrategy, RollingUpdate};
    use serde_json::{Value, json};

    fn pool(replicas: i32, max: Option<i32>, strategy: PoolUpdateType) -> AgentSandboxPool {
        let template = serde_json::from_value(json!({
            "podTemplate": {"spec": {"containers": [{"name": "agent", "image": "busybox"}]}},
            "policy": {"preset": "offline"},
        }))
        .unwrap();
        let mut p = AgentSandboxPool::new(
            "warm",
            AgentSandboxPoolSpec {
                template,
                replicas,
                max_replicas: max,
                update_strategy: PoolUpdateStrategy {
                    type_: strategy,
                    rolling_update: Some(RollingUpdate { max_unavailable: 1 }),
                },
            },
        );
        p.metadata.namespace = Some("team-a".into());
        p.metadata.uid = Some("pool-uid".into());
        p
    }

    fn ident(p: &AgentSandboxPool) -> PoolIdentity {
        let policy = desired::resolve_policy(&p.spec.template.policy, None).unwrap();
        PoolIdentity::new(&p.spec.template, &policy)
    }

    /// A member as the API server lists it: `ready` sets Ready/UpToDate and the status digest.
    fn member(
        p: &AgentSandboxPool,
        id: &PoolIdentity,
        name: &str,
        age: u32,
        ready: bool,
    ) -> AgentSandbox {
        let mut m = new_member(p, id);
        m.metadata.generate_name = None;
        m.metadata.name = Some(name.into());
        m.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            format!("2026-01-01T00:{:02}:00Z", 59 - age)
                .parse()
                .unwrap(),
        ));
        m.metadata.owner_references.as_mut().unwrap()[0].uid = "pool-uid".into();
        let c = |t: &str, s: &str, r: &str| {
            json!({"type": t, "status": s, "reason": r, "message": "",
                   "lastTransitionTime": "2026-01-01T00:00:00Z"})
        };
        let conds: Value = if ready {
            json!([
                c("Ready", "True", "PodReady"),
                c("UpToDate", "True", "Current")
            ])
        } else {
            json!([c("Ready", "False", "PodPending")])
        };
        m.status = Some(
            serde_json::from_value(json!({"conditions": conds,
                "policyDigest": id.policy_digest, "isolation": id.isolation}))
            .unwrap(),
        );
        m
    }

    fn claimed(mut m: AgentSandbox) -> AgentSandbox {
        m.labels_mut().insert(LABEL_CLAIM.into(), "c".into());
        m.metadata.owner_references.as_mut().unwrap()[0].uid = "claim-uid".into();
        m
    }

    fn stale(mut m: AgentSandbox) -> AgentSandbox {
        m.labels_mut().insert(LABEL_TEMPLATE.into(), "0000".into());
        m
    }

    #[test]
    fn claim_wait_starts_at_the_first_sighting_within_the_creation_second() {
        let c: Timestamp = "2026-01-01T00:00:07Z".parse().unwrap();
        let seen: Timestamp = "2026-01-01T00:00:07.420Z".parse().unwrap();
        assert_eq!(claim_wait_start(Some(c), seen), seen);
        // Seen a second or more later: the claim waited for us; creation counts.
        let late: Timestamp = "2026-01-01T00:00:08Z".parse().unwrap();
        assert_eq!(claim_wait_start(Some(c), late), c);
        // A sighting before the (truncated) creation cannot be; keep the creation.
        let early: Timestamp = "2026-01-01T00:00:06.900Z".parse().unwrap();
        assert_eq!(claim_wait_start(Some(c), early), c);
        assert_eq!(claim_wait_start(None, seen), seen);
        let f = FirstSeen::default();
        assert_eq!(f.record("u", seen), seen);
        assert_eq!(f.record("u", late), seen);
        f.forget("u");
        assert_eq!(f.record("u", late), late);
    }

    #[test]
    fn member_selector_names_the_pool_and_excludes_claimed() {
        let pool: AgentSandboxPool = serde_json::from_value(serde_json::json!({
            "apiVersion": "agentcell.dev/v1alpha1", "kind": "AgentSandboxPool",
            "metadata": {"name": "p1", "namespace": "n"},
            "spec": {"replicas": 1, "template": {"policy": {"preset": "coding-agent"},
                     "podTemplate": {"spec": {"containers": [{"name": "a", "image": "i"}]}}}}
        }))
        .unwrap();
        assert_eq!(
            member_selector(&pool),
            "agentcell.dev/pool=p1,!agentcell.dev/claim"
        );
    }

    #[test]
    fn labels_are_label_safe() {
        let p = pool(1, None, PoolUpdateType::RollingUpdate);
        let id = ident(&p);
        let m = new_member(&p, &id);
        for (k, v) in m.labels() {
            assert!(v.len() <= 63 && !v.contains(':'), "{k}={v}");
        }
        assert_eq!(m.labels()[LABEL_POLICY].len(), 40);
        assert!(id.policy_digest.contains(&m.labels()[LABEL_POLICY]));
        assert_eq!(m.metadata.generate_name.as_deref(), Some("warm-"));
        assert_eq!(m.spec, p.spec.template);
    }

    #[test]
    fn empty_pool_fills_to_replicas_capped_by_max_replicas() {
        let p = pool(3, None, PoolUpdateType::RollingUpdate);
        let id = ident(&p);
        assert_eq!(plan(&p, &id, &[], 0).create, 3);
        // Creates in flight count as members.
        assert_eq!(plan(&p, &id, &[], 2).create, 1);
        let one = [member(&p, &id, "a", 1, true)];
        assert_eq!(plan(&p, &id, &one, 0).create, 2);
        // maxReplicas below replicas (the CEL rule rejects it, an old object may still say it).
        let p = pool(5, Some(2), PoolUpdateType::RollingUpdate);
        let pl = plan(&p, &id, &one, 0);
        assert_eq!((pl.desired, pl.create), (2, 1));
        // Claimed members do not count: the pool replenishes.
        let p = pool(2, Some(2), PoolUpdateType::RollingUpdate);
        let ms = [
            claimed(member(&p, &id, "a", 2, true)),
            member(&p, &id, "b", 1, true),
        ];
        let pl = plan(&p, &id, &ms, 0);
        assert_eq!((pl.create, pl.claimed, pl.replicas), (1, 1, 1));
        assert!(pl.delete.is_empty());
    }

    #[test]
    fn surplus_goes_newest_and_not_ready_first() {
        let p = pool(1, None, PoolUpdateType::RollingUpdate);
        let id = ident(&p);
        let ms = [
            member(&p, &id, "old", 9, true),
            member(&p, &id, "new", 1, true),
            member(&p, &id, "pending", 5, false),
        ];
        let pl = plan(&p, &id, &ms, 0);
        assert_eq!(pl.delete, ["pending", "new"]);
        assert_eq!(pl.create, 0);
    }

    #[test]
    fn expired_unclaimed_members_are_replaced() {
        let p = pool(1, None, PoolUpdateType::RollingUpdate);
        let id = ident(&p);
        let mut gone = member(&p, &id, "gone", 3, false);
        gone.status.as_mut().unwrap().conditions.push(
            serde_json::from_value(json!({"type": "Expired", "status": "True",
                "reason": "Expired", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}))
            .unwrap(),
        );
        let pl = plan(&p, &id, &[gone], 0);
        assert_eq!(
            (pl.delete.as_slice(), pl.create, pl.replicas),
            (&["gone".to_owned()][..], 1, 0)
        );
    }

    #[test]
    fn unschedulable_members_hold_creation_back() {
        let p = pool(3, None, PoolUpdateType::RollingUpdate);
        let id = ident(&p);
        let mut stuck = member(&p, &id, "a", 1, false);
        stuck.status.as_mut().unwrap().conditions[0].reason = POD_UNSCHEDULABLE.into();
        let pl = plan(&p, &id, &[stuck], 0);
        assert_eq!(pl.create, 0);
        assert_eq!(
            pl.hold.as_deref(),
            Some("holding back: 1 member(s) cannot be scheduled (a)")
        );
    }

    #[test]
    fn recreate_replaces_every_outdated_unclaimed_member_and_no_claimed_one() {
        let p = pool(2, None, PoolUpdateType::Recreate);
        let id = ident(&p);
        let ms = [
            stale(member(&p, &id, "a", 3, true)),
            stale(member(&p, &id, "b", 2, true)),
            claimed(stale(member(&p, &id, "c", 1, true))),
        ];
        let pl = plan(&p, &id, &ms, 0);
        assert_eq!(pl.delete, ["a", "b"]);
        assert_eq!((pl.create, pl.outdated, pl.claimed), (2, 2, 1));
        assert_eq!((pl.replicas, pl.replicas_after), (2, 2));
    }

    #[test]
    fn rolling_update_takes_at_most_max_unavailable() {
        let p = pool(3, None, PoolUpdateType::RollingUpdate);
        let id = ident(&p);
        let ms = [
            stale(member(&p, &id, "a", 3, true)),
            stale(member(&p, &id, "b", 2, true)),
            stale(member(&p, &id, "c", 1, true)),
            claimed(stale(member(&p, &id, "d", 4, true))),
        ];
        let pl = plan(&p, &id, &ms, 0);
        assert_eq!(
            pl.delete,
            ["a"],
            "the oldest outdated member, one at a time"
        );
        assert_eq!(pl.create, 1);
        // Next round: the new member is not ready yet, so nothing more goes.
        let ms = [
            stale(member(&p, &id, "b", 2, true)),
            stale(member(&p, &id, "c", 1, true)),
            member(&p, &id, "n", 0, false),
        ];
        let pl = plan(&p, &id, &ms, 0);
        assert!(pl.delete.is_empty());
        assert_eq!(pl.create, 0);
        // An outdated member that is not ready serves nobody: it goes regardless.
        let ms = [
            stale(member(&p, &id, "b", 2, false)),
            stale(member(&p, &id, "c", 1, true)),
            member(&p, &id, "n", 0, false),
        ];
        assert_eq!(plan(&p, &id, &ms, 0).delete, ["b"]);
    }

    #[test]
    fn only_ready_current_unclaimed_members_are_bindable_oldest_first() {
        let p = pool(3, None, PoolUpdateType::RollingUpdate);
        let id = ident(&p);
        let mut wrong_digest = member(&p, &id, "digest", 9, true);
        wrong_digest.status.as_mut().unwrap().policy_digest = Some("sha256:00".into());
        let mut wrong_iso = member(&p, &id, "iso", 8, true);
        wrong_iso.status.as_mut().unwrap().isolation = Some(Isolation::Microvm);
        let mut not_up_to_date = member(&p, &id, "utd", 7, true);
        not_up_to_date.status.as_mut().unwrap().conditions[1].status = "False".into();
        let mut foreign = member(&p, &id, "foreign", 6, true);
        foreign.metadata.owner_references.as_mut().unwrap()[0].uid = "other".into();
        let ms = [
            wrong_digest,
            wrong_iso,
            not_up_to_date,
            foreign,
            stale(member(&p, &id, "stale", 5, true)),
            claimed(member(&p, &id, "claimed", 4, true)),
            member(&p, &id, "pending", 3, false),
            member(&p, &id, "young", 1, true),
            member(&p, &id, "old", 2, true),
        ];
        let names: Vec<String> = bind_candidates(&ms, &p, &id)
            .iter()
            .map(|m| m.name_any())
            .collect();
        assert_eq!(names, ["old", "young"]);
        assert_eq!(plan(&p, &id, &ms, 0).updated_ready, 2);
    }

    #[test]
    fn a_policy_change_makes_members_outdated() {
        let p = pool(1, None, PoolUpdateType::RollingUpdate);
        let id = ident(&p);
        let m = member(&p, &id, "a", 1, true);
        let mut p2 = p.clone();
        p2.spec.template.policy.preset = Some("coding-agent".into());
        let id2 = ident(&p2);
        assert_ne!(id.policy_digest, id2.policy_digest);
        assert!(is_current(&m, &id) && !is_current(&m, &id2));
        assert!(bind_candidates(std::slice::from_ref(&m), &p2, &id2).is_empty());
    }

    #[test]
    fn expectations_count_unseen_creates_until_seen_or_expired() {
        let e = Expectations::default();
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        e.expect("ns/p", "p-1".into(), t0);
        e.expect("ns/p", "p-2".into(), t0);
        assert_eq!(e.in_flight("ns/p", &HashSet::new(), t0), 2);
        assert_eq!(e.in_flight("ns/q", &HashSet::new(), t0), 0);
        let seen = HashSet::from(["p-1".to_owned()]);
        assert_eq!(e.in_flight("ns/p", &seen, t0), 1);
        let later = t0.checked_add(EXPECTATION_TTL).unwrap();
        assert_eq!(e.in_flight("ns/p", &HashSet::new(), later), 0);
    }

    #[test]
    fn claim_lifetime_counts_from_the_claim() {
        let mut c: AgentSandboxClaim = serde_json::from_value(json!({
            "apiVersion": "agentcell.dev/v1alpha1", "kind": "AgentSandboxClaim",
            "metadata": {"name": "c", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"poolRef": {"name": "warm"},
                     "lifetime": {"shutdownAfter": "1h", "shutdownPolicy": "Retain"}}}))
        .unwrap();
        let l = claim_lifetime(&c).unwrap().unwrap();
        assert_eq!(l.shutdown_time.as_deref(), Some("2026-01-01T01:00:00Z"));
        assert_eq!(l.shutdown_policy, crate::crd::ShutdownPolicy::Retain);
        c.spec.lifetime.as_mut().unwrap().shutdown_after = Some("soon".into());
        assert_eq!(claim_lifetime(&c).unwrap_err().reason(), "InvalidLifetime");
        c.spec.lifetime = None;
        assert_eq!(claim_lifetime(&c).unwrap(), None);
    }
}
