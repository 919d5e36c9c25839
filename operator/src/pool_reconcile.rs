//! The effects of pools and claims: a pool reconcile lists its members and creates or deletes
//! what [`pool::plan`] says; a claim reconcile binds a member with a conditional patch and
//! releases it when the claim goes. Decisions come from [`crate::pool`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::conditions::{Conditions, State};
use crate::crd::{AgentSandbox, ShutdownPolicy};
use crate::crd_pool::{
    AgentSandboxClaim, AgentSandboxClaimStatus, AgentSandboxPool, AgentSandboxPoolStatus,
};
use crate::desired::{self, ResolvedPolicy, SpecError};
use crate::pool::{
    self, AVAILABLE, BOUND, CLAIM_FINALIZER, LABEL_CLAIM, LABEL_POOL, POOL_CONDITIONS, PROGRESSING,
    PoolIdentity,
};
use crate::reconcile::{Context, Error, RESYNC, RETRY_MISSING, apply_params, get_opt, kube_err};

/// Look again soon while members start (their status changes also trigger a reconcile).
pub const RETRY_SOON: Duration = Duration::from_secs(5);

fn ns_of<K: Resource>(obj: &K) -> Result<String, Error> {
    obj.meta().namespace.clone().ok_or(Error::NoNamespace)
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// The pool's template checked as a sandbox and its policy resolved: the identity members must
/// have. The outer error is an API failure; the inner one a spec problem.
async fn identity(
    pool: &AgentSandboxPool,
    ctx: &Context,
    ns: &str,
) -> Result<Result<(PoolIdentity, ResolvedPolicy), SpecError>, Error> {
    let asb = pool::template_sandbox(pool);
    if let Err(e) = desired::check_template(&asb, &ctx.config) {
        return Ok(Err(e));
    }
    let src = &pool.spec.template.policy;
    let cm = match desired::config_map_name(src) {
        Some(name) => {
            let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
            get_opt(&api, name, "configmap").await?
        }
        None => None,
    };
    Ok(
        desired::resolve_policy_with(src, cm.as_ref(), ctx.config.mxc_release)
            .map(|p| (PoolIdentity::new(&pool.spec.template, &p), p)),
    )
}

fn members_selector(pool: &str) -> String {
    format!("{LABEL_POOL}={pool}")
}

pub async fn reconcile_pool(
    pool: Arc<AgentSandboxPool>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let start = Instant::now();
    let res = Pool::reconcile(&pool, &ctx).await;
    ctx.metrics
        .reconcile_duration
        .observe(start.elapsed().as_secs_f64());
    res
}

pub fn pool_error_policy(pool: Arc<AgentSandboxPool>, err: &Error, ctx: Arc<Context>) -> Action {
    warn!(pool = %pool.name_any(), namespace = ?pool.namespace(), error = %err, "pool reconcile failed");
    crate::reconcile::count_error_and_retry(err, &ctx)
}

struct Pool;

impl Pool {
    async fn reconcile(pool: &AgentSandboxPool, ctx: &Context) -> Result<Action, Error> {
        let ns = ns_of(pool)?;
        let name = pool.name_any();
        let key = format!("{ns}/{name}");
        if pool.metadata.deletion_timestamp.is_some() {
            // Unclaimed members go with the pool through their owner references; claimed ones
            // belong to their claims.
            ctx.expectations.forget(&key);
            ctx.metrics.remove_pool(&ns, &name);
            return Ok(Action::await_change());
        }
        let now = ctx.clock.now();
        let prev = pool.status.clone().unwrap_or_default();
        let mut conds = Conditions::from_prev(&prev.conditions, pool.metadata.generation, now);
        let (id, policy) = match identity(pool, ctx, &ns).await? {
            Ok(x) => x,
            Err(e) => {
                let msg = e.to_string().replacen("spec.", "spec.template.", 1);
                conds.set(AVAILABLE, State::False, e.reason(), msg.clone());
                conds.set(PROGRESSING, State::False, e.reason(), msg);
                let status = AgentSandboxPoolStatus {
                    observed_generation: pool.metadata.generation,
                    conditions: conds.finish_types(&POOL_CONDITIONS),
                    policy_digest: None,
                    policy_short_digest: None,
                    ..prev.clone()
                };
                write_pool_status(pool, ctx, &ns, status).await?;
                return Ok(match e {
                    SpecError::ConfigMapNotFound { .. } | SpecError::ConfigMapKeyMissing { .. } => {
                        Action::requeue(RETRY_MISSING)
                    }
                    _ => Action::await_change(),
                });
            }
        };

        let api: Api<AgentSandbox> = Api::namespaced(ctx.client.clone(), &ns);
        // From the watch cache: cheap, maybe behind; the expectations cover the gap.
        let members = api
            .list(
                &ListParams::default()
                    .labels(&members_selector(&name))
                    .match_any(),
            )
            .await
            .map_err(kube_err(format!("list members of pool {name}")))?
            .items;
        let seen: HashSet<String> = members.iter().map(|m| m.name_any()).collect();
        let in_flight = ctx.expectations.in_flight(&key, &seen, now);
        let plan = pool::plan(pool, &id, &members, in_flight);
        debug!(pool = %name, namespace = %ns, ?plan, in_flight, "pool plan");

        for victim in &plan.delete {
            let m = members
                .iter()
                .find(|m| &m.name_any() == victim)
                .expect("planned from members");
            // Conditional on what was planned from: a member a claim took meanwhile changed its
            // resourceVersion, so the delete fails with 409 and the claimed sandbox lives.
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: m.resource_version(),
                    uid: m.uid(),
                }),
                ..DeleteParams::default()
            };
            match api.delete(victim, &dp).await {
                Ok(_) => info!(pool = %name, member = %victim, "member deleted"),
                Err(e) if is_conflict(&e) || is_not_found(&e) => {
                    debug!(pool = %name, member = %victim, error = %e, "member changed; left alone")
                }
                Err(e) => return Err(kube_err(format!("delete member {victim}"))(e)),
            }
        }
        let mut created = 0;
        for _ in 0..plan.create {
            let m = pool::new_member(pool, &id);
            let made = api
                .create(&PostParams::default(), &m)
                .await
                .map_err(kube_err(format!("create a member of pool {name}")))?;
            ctx.expectations.expect(&key, made.name_any(), now);
            created += 1;
            info!(pool = %name, member = %made.name_any(), digest = %id.policy_digest, "member created");
        }

        ctx.metrics.set_pool(&ns, &name, plan.ready, plan.desired);
        let (avail, avail_reason, avail_msg) = if plan.updated_ready > 0 {
            (
                State::True,
                "MembersReady",
                format!(
                    "{} of {} members ready for claims",
                    plan.updated_ready, plan.desired
                ),
            )
        } else {
            (
                State::False,
                "NoReadyMember",
                format!(
                    "no member of the current template is ready ({} wanted)",
                    plan.desired
                ),
            )
        };
        conds.set(AVAILABLE, avail, avail_reason, avail_msg);
        let busy = created > 0
            || !plan.delete.is_empty()
            || in_flight > 0
            || plan.outdated > 0
            || plan.updated_ready < plan.desired;
        if let Some(why) = &plan.hold {
            conds.set(
                PROGRESSING,
                State::False,
                "MembersUnschedulable",
                why.clone(),
            );
        } else if busy {
            let (reason, msg) = if plan.outdated > 0 {
                (
                    "Rolling",
                    format!("replacing {} outdated member(s)", plan.outdated),
                )
            } else {
                (
                    "Filling",
                    format!("{} of {} members ready", plan.updated_ready, plan.desired),
                )
            };
            conds.set(PROGRESSING, State::True, reason, msg);
        } else {
            conds.set(
                PROGRESSING,
                State::False,
                "Complete",
                format!("{} members ready, all current", plan.desired),
            );
        }
        let status = AgentSandboxPoolStatus {
            observed_generation: pool.metadata.generation,
            // Creates failed midway returned an error above, so the plan's count holds.
            replicas: plan.replicas_after as i32,
            ready_replicas: plan.ready as i32,
            updated_ready_replicas: plan.updated_ready as i32,
            claimed: plan.claimed as i32,
            policy_digest: Some(policy.digest.clone()),
            policy_short_digest: Some(policy.short_digest()),
            conditions: conds.finish_types(&POOL_CONDITIONS),
            selector: Some(crate::pool::member_selector(pool)),
        };
        write_pool_status(pool, ctx, &ns, status).await?;
        Ok(if plan.hold.is_some() {
            Action::requeue(RETRY_MISSING)
        } else if busy {
            Action::requeue(RETRY_SOON)
        } else {
            Action::requeue(RESYNC)
        })
    }
}

async fn write_pool_status(
    pool: &AgentSandboxPool,
    ctx: &Context,
    ns: &str,
    status: AgentSandboxPoolStatus,
) -> Result<(), Error> {
    if pool.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let patch = json!({
        "apiVersion": AgentSandboxPool::api_version(&()),
        "kind": AgentSandboxPool::kind(&()),
        "status": status,
    });
    Api::<AgentSandboxPool>::namespaced(ctx.client.clone(), ns)
        .patch_status(&pool.name_any(), &apply_params(), &Patch::Apply(patch))
        .await
        .map_err(kube_err(format!(
            "apply status of agentsandboxpool {}",
            pool.name_any()
        )))?;
    Ok(())
}

pub async fn reconcile_claim(
    claim: Arc<AgentSandboxClaim>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let start = Instant::now();
    let res = Claim::reconcile(&claim, &ctx).await;
    ctx.metrics
        .reconcile_duration
        .observe(start.elapsed().as_secs_f64());
    res
}

pub fn claim_error_policy(claim: Arc<AgentSandboxClaim>, err: &Error, ctx: Arc<Context>) -> Action {
    warn!(claim = %claim.name_any(), namespace = ?claim.namespace(), error = %err, "claim reconcile failed");
    crate::reconcile::count_error_and_retry(err, &ctx)
}

struct Claim<'a> {
    claim: &'a AgentSandboxClaim,
    ctx: &'a Context,
    name: String,
    now: Timestamp,
    sandboxes: Api<AgentSandbox>,
    claims: Api<AgentSandboxClaim>,
    conds: Conditions,
}

impl<'a> Claim<'a> {
    async fn reconcile(claim: &'a AgentSandboxClaim, ctx: &'a Context) -> Result<Action, Error> {
        let ns = ns_of(claim)?;
        let now = ctx.clock.now();
        let prev = claim.status.clone().unwrap_or_default();
        let c = Claim {
            claim,
            ctx,
            name: claim.name_any(),
            now,
            sandboxes: Api::namespaced(ctx.client.clone(), &ns),
            claims: Api::namespaced(ctx.client.clone(), &ns),
            conds: Conditions::from_prev(&prev.conditions, claim.metadata.generation, now),
        };
        let has_finalizer = claim.finalizers().iter().any(|f| f == CLAIM_FINALIZER);
        let uid = claim.metadata.uid.clone().unwrap_or_default();
        if claim.metadata.deletion_timestamp.is_some() {
            ctx.claims_seen.forget(&uid);
            if has_finalizer {
                c.release().await?;
            }
            return Ok(Action::await_change());
        }
        if prev.claim_to_bound_millis.is_none() {
            ctx.claims_seen.record(&uid, now);
        }
        // The finalizer patch and the reads the bind decides from are independent round trips:
        // sent together, the claim waits for the slower of them, not for their sum. The bind
        // itself (a conditional patch of the member) waits for both, so a claim never holds a
        // member without its finalizer.
        let pool_name = claim.spec.pool_ref.name.clone();
        let finalize = async {
            match has_finalizer {
                true => Ok(()),
                false => c.add_finalizer().await,
            }
        };
        let (finalized, read) = futures::join!(finalize, c.read_pool(&ns, &pool_name));
        finalized?;
        c.bind(&ns, read?).await
    }

    /// The pool and its members as the bind sees them (`None` when the pool does not exist).
    async fn read_pool(
        &self,
        ns: &str,
        pool_name: &str,
    ) -> Result<Option<(AgentSandboxPool, Vec<AgentSandbox>)>, Error> {
        let pools: Api<AgentSandboxPool> = Api::namespaced(self.ctx.client.clone(), ns);
        let members_of = ListParams::default().labels(&members_selector(pool_name));
        let (pool, members) = futures::join!(
            get_opt(&pools, pool_name, "agentsandboxpool"),
            self.sandboxes.list(&members_of)
        );
        let Some(pool) = pool? else {
            return Ok(None);
        };
        let members = members
            .map_err(kube_err(format!("list members of pool {pool_name}")))?
            .items;
        Ok(Some((pool, members)))
    }

    async fn add_finalizer(&self) -> Result<(), Error> {
        // Merge patches replace lists: conditional on the resourceVersion read, so a finalizer
        // someone added meanwhile makes this fail (409, retried) instead of vanishing.
        let mut list = self.claim.finalizers().to_vec();
        list.push(CLAIM_FINALIZER.to_owned());
        let body = json!({"metadata": {
            "resourceVersion": self.claim.resource_version(),
            "finalizers": list,
        }});
        self.claims
            .patch(&self.name, &Default::default(), &Patch::Merge(&body))
            .await
            .map_err(kube_err(format!("add finalizer to claim {}", self.name)))?;
        Ok(())
    }

    async fn bind(
        mut self,
        ns: &str,
        read: Option<(AgentSandboxPool, Vec<AgentSandbox>)>,
    ) -> Result<Action, Error> {
        let prev = self.claim.status.clone().unwrap_or_default();
        let pool_name = &self.claim.spec.pool_ref.name;
        let Some((pool, members)) = read else {
            if prev.sandbox.is_some() {
                // Bound already: the pool is no longer needed.
                return self.refresh(prev).await;
            }
            self.conds.set(
                BOUND,
                State::False,
                "PoolNotFound",
                format!("agentsandboxpool {pool_name} does not exist"),
            );
            self.write(AgentSandboxClaimStatus::default()).await?;
            return Ok(Action::requeue(RETRY_MISSING));
        };
        if let Some(mine) = pool::held_by(&members, self.claim) {
            return self.bound(mine.clone(), prev).await;
        }
        if prev.sandbox.is_some() {
            return self.refresh(prev).await;
        }
        let lifetime = match pool::claim_lifetime(self.claim) {
            Ok(l) => l,
            Err(e) => {
                let msg = e.to_string();
                self.conds.set(BOUND, State::False, e.reason(), msg);
                self.write(AgentSandboxClaimStatus::default()).await?;
                return Ok(Action::await_change());
            }
        };
        let (id, _) = match identity(&pool, self.ctx, ns).await? {
            Ok(x) => x,
            Err(e) => {
                self.conds.set(
                    BOUND,
                    State::False,
                    "PoolInvalid",
                    format!("agentsandboxpool {pool_name}: {e}"),
                );
                self.write(AgentSandboxClaimStatus::default()).await?;
                return Ok(Action::requeue(RETRY_MISSING));
            }
        };
        for m in pool::bind_candidates(&members, &pool, &id) {
            let member = m.name_any();
            // Conditional on the resourceVersion the choice was made from: of claims racing for
            // this member exactly one patch succeeds, the others get 409 and try the next one.
            let mut body = json!({"metadata": {
                "resourceVersion": m.resource_version(),
                "labels": {LABEL_CLAIM: self.name},
                "ownerReferences": [pool::owner_ref(self.claim)],
            }});
            if let Some(l) = &lifetime {
                body["spec"] = json!({"lifetime": l});
            }
            match self
                .sandboxes
                .patch(&member, &Default::default(), &Patch::Merge(&body))
                .await
            {
                Ok(took) => {
                    info!(claim = %self.name, sandbox = %member, "bound");
                    return self.bound(took, prev).await;
                }
                Err(e) if is_conflict(&e) => {
                    debug!(claim = %self.name, sandbox = %member, "member changed meanwhile; next one");
                }
                Err(e) => return Err(kube_err(format!("bind sandbox {member}"))(e)),
            }
        }
        self.conds.set(
            BOUND,
            State::False,
            "NoReadyMember",
            format!(
                "pool {pool_name} has no ready member with policy {} and isolation {}",
                desired::short_digest(&id.policy_digest),
                id.isolation.as_str()
            ),
        );
        self.write(AgentSandboxClaimStatus::default()).await?;
        // Members turning Ready trigger a reconcile through the watch; this is the safety net.
        Ok(Action::requeue(RETRY_SOON))
    }

    /// Status of a claim bound to `asb`.
    async fn bound(
        mut self,
        asb: AgentSandbox,
        prev: AgentSandboxClaimStatus,
    ) -> Result<Action, Error> {
        let st = asb.status.clone().unwrap_or_default();
        let millis = match prev.claim_to_bound_millis {
            Some(ms) => ms,
            None => {
                let uid = self.claim.metadata.uid.clone().unwrap_or_default();
                let seen = self.ctx.claims_seen.record(&uid, self.now);
                self.ctx.claims_seen.forget(&uid);
                let start = crate::pool::claim_wait_start(
                    self.claim.creation_timestamp().map(|t| t.0),
                    seen,
                );
                // Now, not the reconcile's start (`self.now`): the bind and its patches count.
                let secs = start
                    .duration_until(self.ctx.clock.now())
                    .as_secs_f64()
                    .max(0.0);
                self.ctx.metrics.claim_to_bound.observe(secs);
                (secs * 1000.0).round() as i64
            }
        };
        self.conds.set(
            BOUND,
            State::True,
            "Bound",
            format!("bound to agentsandbox {}", asb.name_any()),
        );
        let status = AgentSandboxClaimStatus {
            sandbox: Some(asb.name_any()),
            pod_ip: st.pod_ip,
            service_fqdn: st.service_fqdn,
            policy_digest: st.policy_digest,
            claim_to_bound_millis: Some(millis),
            conditions: Vec::new(),
        };
        self.write(status).await?;
        Ok(Action::await_change())
    }

    /// A bound claim: follows its sandbox (pod IP after a restart; gone after expiry).
    async fn refresh(self, prev: AgentSandboxClaimStatus) -> Result<Action, Error> {
        let name = prev.sandbox.clone().expect("bound");
        match get_opt(&self.sandboxes, &name, "agentsandbox").await? {
            Some(asb) if asb.labels().get(LABEL_CLAIM) == Some(&self.name) => {
                self.bound(asb, prev).await
            }
            _ => {
                let mut me = self;
                me.conds.set(
                    BOUND,
                    State::False,
                    "SandboxGone",
                    format!("agentsandbox {name} no longer exists"),
                );
                let status = AgentSandboxClaimStatus {
                    sandbox: Some(name),
                    claim_to_bound_millis: prev.claim_to_bound_millis,
                    ..AgentSandboxClaimStatus::default()
                };
                me.write(status).await?;
                Ok(Action::await_change())
            }
        }
    }

    /// The claim is being deleted: its sandbox is deleted (`Delete`, the default) or released
    /// (`Retain`: owner reference removed, the claim label kept so no pool takes it back).
    async fn release(&self) -> Result<(), Error> {
        let policy = self
            .claim
            .spec
            .lifetime
            .as_ref()
            .map_or(ShutdownPolicy::Delete, |l| l.shutdown_policy);
        let held = self
            .sandboxes
            .list(&ListParams::default().labels(&format!("{LABEL_CLAIM}={}", self.name)))
            .await
            .map_err(kube_err(format!("list sandboxes of claim {}", self.name)))?
            .items;
        for asb in held.iter().filter(|a| {
            a.owner_references()
                .iter()
                .any(|o| Some(&o.uid) == self.claim.metadata.uid.as_ref())
        }) {
            let name = asb.name_any();
            match policy {
                ShutdownPolicy::Delete => {
                    match self.sandboxes.delete(&name, &DeleteParams::default()).await {
                        Ok(_) => {
                            info!(claim = %self.name, sandbox = %name, "claim deleted: sandbox deleted")
                        }
                        Err(e) if is_not_found(&e) => {}
                        Err(e) => return Err(kube_err(format!("delete sandbox {name}"))(e)),
                    }
                }
                ShutdownPolicy::Retain => {
                    let body = json!({"metadata": {"ownerReferences": null}});
                    self.sandboxes
                        .patch(&name, &Default::default(), &Patch::Merge(&body))
                        .await
                        .map_err(kube_err(format!("release sandbox {name}")))?;
                    info!(claim = %self.name, sandbox = %name, "claim deleted: sandbox retained");
                }
            }
        }
        let list = self.claim.finalizers();
        let rest: Vec<&String> = list.iter().filter(|f| *f != CLAIM_FINALIZER).collect();
        let body = json!({"metadata": {
            "resourceVersion": self.claim.resource_version(),
            "finalizers": rest,
        }});
        match self
            .claims
            .patch(&self.name, &Default::default(), &Patch::Merge(&body))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(kube_err(format!("remove finalizer of claim {}", self.name))(e)),
        }
    }

    async fn write(&mut self, mut status: AgentSandboxClaimStatus) -> Result<(), Error> {
        let conds = std::mem::replace(&mut self.conds, Conditions::from_prev(&[], None, self.now));
        status.conditions = conds.finish_types(&[BOUND]);
        if self.claim.status.as_ref() == Some(&status) {
            return Ok(());
        }
        let patch = json!({
            "apiVersion": AgentSandboxClaim::api_version(&()),
            "kind": AgentSandboxClaim::kind(&()),
            "status": status,
        });
        self.claims
            .patch_status(&self.name, &apply_params(), &Patch::Apply(patch))
            .await
            .map_err(kube_err(format!(
                "apply status of agentsandboxclaim {}",
                self.name
            )))?;
        Ok(())
    }
}
