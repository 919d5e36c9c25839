//! The effects: one reconcile of an `AgentSandbox` reads what it needs (ConfigMap, RuntimeClass,
//! Pod), applies the desired objects with server-side apply, and writes the status. Everything it
//! decides comes from [`crate::desired`] and [`crate::conditions`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::conditions::{
    Conditions, EXPIRED, POLICY_VALID, READY, RUNTIME_CLASS_RESOLVED, SUSPENDED, State, UP_TO_DATE,
    pod_readiness,
};
use crate::config::OperatorConfig;
use crate::crd::{AgentSandbox, AgentSandboxStatus, OperatingMode, ShutdownPolicy, UpdatePolicy};
use crate::desired::{
    self, ANN_DIGEST, ANN_TEMPLATE, MANAGER, ResolvedPolicy, SpecError, with_type_meta,
};
use crate::metrics::Metrics;

/// How often a sandbox is looked at again when nothing changes (a safety net; changes of the
/// sandbox and what it owns or references trigger a reconcile at once).
pub const RESYNC: Duration = Duration::from_secs(600);
/// Retry of what is not watched (a missing RuntimeClass or ConfigMap appearing).
pub const RETRY_MISSING: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("sandbox has no namespace")]
    NoNamespace,
}

impl Error {
    /// Label value for the errors metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Kube { source, .. } => match source {
                kube::Error::Api(_) => "api",
                _ => "client",
            },
            Self::NoNamespace => "spec",
        }
    }
}

pub(crate) fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let action = action.into();
    move |source| Error::Kube { action, source }
}

/// The time reconciles run at; fixed in tests so expiry is deterministic.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    System,
    Fixed(Timestamp),
}

impl Clock {
    pub fn now(self) -> Timestamp {
        match self {
            Self::System => Timestamp::now(),
            Self::Fixed(t) => t,
        }
    }
}

/// What every reconcile shares: the client, configuration, metrics, event recorder and clock.
pub struct Context {
    pub client: Client,
    pub config: OperatorConfig,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    pub clock: Clock,
    /// Pool member creates not yet seen in a list, per pool.
    pub expectations: crate::pool::Expectations,
    /// When each unbound claim was first seen (claim-to-Bound).
    pub claims_seen: crate::pool::FirstSeen,
}

impl Context {
    pub fn new(client: Client, config: OperatorConfig, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            config,
            metrics,
            clock: Clock::System,
            expectations: crate::pool::Expectations::default(),
            claims_seen: crate::pool::FirstSeen::default(),
        }
    }

    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }
}

pub(crate) fn apply_params() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

pub(crate) async fn get_opt<K>(api: &Api<K>, name: &str, what: &str) -> Result<Option<K>, Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name)
        .await
        .map_err(kube_err(format!("get {what} {name}")))
}

pub async fn reconcile(asb: Arc<AgentSandbox>, ctx: Arc<Context>) -> Result<Action, Error> {
    let start = Instant::now();
    let res = Sandbox::new(&asb, &ctx)?.reconcile().await;
    ctx.metrics
        .reconcile_duration
        .observe(start.elapsed().as_secs_f64());
    res
}

pub fn error_policy(asb: Arc<AgentSandbox>, err: &Error, ctx: Arc<Context>) -> Action {
    warn!(sandbox = %asb.name_any(), namespace = ?asb.namespace(), error = %err, "reconcile failed");
    count_error_and_retry(err, &ctx)
}

/// What every controller's error policy does after logging: count the error by kind, retry in
/// 15 s.
pub(crate) fn count_error_and_retry(err: &Error, ctx: &Context) -> Action {
    ctx.metrics
        .reconcile_errors
        .get_or_create(&crate::metrics::ErrorLabels {
            reason: err.kind().into(),
        })
        .inc();
    Action::requeue(Duration::from_secs(15))
}

/// One reconcile of one sandbox.
struct Sandbox<'a> {
    asb: &'a AgentSandbox,
    ctx: &'a Context,
    ns: String,
    name: String,
    now: Timestamp,
    conds: Conditions,
    status: AgentSandboxStatus,
}

impl<'a> Sandbox<'a> {
    fn new(asb: &'a AgentSandbox, ctx: &'a Context) -> Result<Self, Error> {
        let now = ctx.clock.now();
        let prev = asb.status.clone().unwrap_or_default();
        Ok(Self {
            ns: asb.namespace().ok_or(Error::NoNamespace)?,
            name: asb.name_any(),
            conds: Conditions::new(&prev, asb.metadata.generation, now),
            status: AgentSandboxStatus {
                observed_generation: asb.metadata.generation,
                isolation: Some(asb.spec.isolation),
                ..AgentSandboxStatus::default()
            },
            asb,
            ctx,
            now,
        })
    }

    fn api<K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>>(
        &self,
    ) -> Api<K> {
        Api::namespaced(self.ctx.client.clone(), &self.ns)
    }

    async fn reconcile(mut self) -> Result<Action, Error> {
        if self.asb.metadata.deletion_timestamp.is_some() {
            // Owned objects go with the sandbox through their owner references.
            return Ok(Action::await_change());
        }
        let prev = self.asb.status.clone().unwrap_or_default();
        // Carried over until this reconcile learns better.
        self.status.pod_name = prev.pod_name.clone();
        self.status.pod_ip = prev.pod_ip.clone();
        self.status.service_fqdn = prev.service_fqdn.clone();

        let deadline = match desired::deadline(self.asb) {
            Ok(d) => d,
            Err(e) => return self.reject(READY, e).await,
        };
        if let Some((at, policy)) = deadline {
            if at <= self.now {
                return self.expire(at, policy).await;
            }
            self.conds
                .set(EXPIRED, State::False, "NotExpired", format!("ends at {at}"));
        } else {
            self.conds
                .set(EXPIRED, State::False, "NoLifetime", "no lifetime set");
        }

        if let Err(e) = desired::check_template(self.asb, &self.ctx.config) {
            let cond = match e {
                SpecError::RuntimeClassConflict { .. } => RUNTIME_CLASS_RESOLVED,
                _ => POLICY_VALID,
            };
            return self.reject(cond, e).await;
        }

        let policy = match self.policy().await? {
            Ok(p) => p,
            Err(e) => return self.reject(POLICY_VALID, e).await,
        };
        self.status.policy_digest = Some(policy.digest.clone());
        self.status.policy_short_digest = Some(policy.short_digest());
        self.conds.set(
            POLICY_VALID,
            State::True,
            "Valid",
            format!(
                "MXC policy {} (schema {}) accepted with MXC {} verdicts ({})",
                policy.digest,
                policy.document.version,
                policy.document.release,
                agentcell_policy::plan::read_as(&policy.document)
            ),
        );

        let rc_name = self
            .ctx
            .config
            .runtime_class(self.asb.spec.isolation)
            .to_owned();
        let rcs: Api<RuntimeClass> = Api::all(self.ctx.client.clone());
        match get_opt(&rcs, &rc_name, "runtimeclass").await? {
            Some(rc) => self.conds.set(
                RUNTIME_CLASS_RESOLVED,
                State::True,
                "Found",
                format!(
                    "isolation {} runs with runtime class {rc_name} (handler {})",
                    self.asb.spec.isolation.as_str(),
                    rc.handler
                ),
            ),
            None => {
                self.conds.set(
                    RUNTIME_CLASS_RESOLVED,
                    State::False,
                    "RuntimeClassNotFound",
                    format!(
                        "runtime class {rc_name} of isolation {} does not exist: install the agentcell node runtime",
                        self.asb.spec.isolation.as_str()
                    ),
                );
                self.conds.set(
                    READY,
                    State::False,
                    "RuntimeClassNotFound",
                    format!("no pod until runtime class {rc_name} exists"),
                );
                self.warn_if_changed(RUNTIME_CLASS_RESOLVED, "RuntimeClassNotFound")
                    .await;
                self.write_status().await?;
                return Ok(Action::requeue(RETRY_MISSING));
            }
        }

        // The CNI policy exists before the pod does, so the pod never runs without it.
        if self.asb.spec.network_policy {
            let np = desired::network_policy(self.asb, &policy);
            self.api::<NetworkPolicy>()
                .patch(
                    &self.name,
                    &apply_params(),
                    &Patch::Apply(with_type_meta(&np)),
                )
                .await
                .map_err(kube_err(format!("apply networkpolicy {}", self.name)))?;
        } else {
            // Switched off after it was made: it must not linger.
            self.delete_owned::<NetworkPolicy>("networkpolicy").await?;
        }
        if self.asb.spec.service.enabled {
            let svc = desired::service(self.asb);
            self.api::<Service>()
                .patch(
                    &self.name,
                    &apply_params(),
                    &Patch::Apply(with_type_meta(&svc)),
                )
                .await
                .map_err(kube_err(format!("apply service {}", self.name)))?;
            self.status.service_fqdn = Some(desired::service_fqdn(self.asb, &self.ctx.config));
        } else {
            self.delete_owned::<Service>("service").await?;
            self.status.service_fqdn = None;
        }

        let mut again = self.pod(&policy).await?;
        self.write_status().await?;
        if let Some((at, _)) = deadline {
            // Requeue at the deadline so expiry happens on time.
            let left = self.now.duration_until(at).unsigned_abs();
            again = again.min(left.max(Duration::from_secs(1)));
        }
        Ok(Action::requeue(again))
    }

    /// The policy, or why there is none. The outer error is an API failure (retried); the inner
    /// one a spec problem (reported).
    async fn policy(&self) -> Result<Result<ResolvedPolicy, SpecError>, Error> {
        let src = &self.asb.spec.policy;
        let cm = match desired::config_map_name(src) {
            Some(name) => get_opt(&self.api::<ConfigMap>(), name, "configmap").await?,
            None => None,
        };
        Ok(desired::resolve_policy_with(
            src,
            cm.as_ref(),
            self.ctx.config.mxc_release,
        ))
    }

    /// Makes the pod what the spec says; returns when to look again.
    async fn pod(&mut self, policy: &ResolvedPolicy) -> Result<Duration, Error> {
        let pods = self.api::<Pod>();
        let current = get_opt(&pods, &self.name, "pod").await?;
        if let Some(p) = &current {
            let ours = p
                .owner_references()
                .iter()
                .any(|o| Some(&o.uid) == self.asb.metadata.uid.as_ref());
            if !ours {
                self.conds.set(
                    READY,
                    State::False,
                    "PodNameTaken",
                    format!("a pod named {} exists and is not this sandbox's", self.name),
                );
                self.warn_if_changed(READY, "PodNameTaken").await;
                self.status.pod_name = None;
                self.status.pod_ip = None;
                return Ok(RETRY_MISSING);
            }
        }

        if self.asb.spec.operating_mode == OperatingMode::Suspended {
            if let Some(p) = &current
                && p.metadata.deletion_timestamp.is_none()
            {
                self.delete_pod("suspended").await?;
            }
            self.conds.set(
                SUSPENDED,
                State::True,
                "Suspended",
                "operatingMode is Suspended: pod deleted, volumes kept",
            );
            self.conds
                .set(READY, State::False, "Suspended", "the sandbox is suspended");
            self.conds
                .set(UP_TO_DATE, State::True, "NoPod", "no pod runs");
            self.status.pod_name = None;
            self.status.pod_ip = None;
            return Ok(RESYNC);
        }
        self.conds.set(
            SUSPENDED,
            State::False,
            "Running",
            "operatingMode is Running",
        );

        let Some(pod) = current else {
            let want = desired::pod(self.asb, &self.ctx.config, policy);
            let created = pods
                .patch(
                    &self.name,
                    &apply_params(),
                    &Patch::Apply(with_type_meta(&want)),
                )
                .await
                .map_err(kube_err(format!("apply pod {}", self.name)))?;
            info!(sandbox = %self.name, namespace = %self.ns, digest = %policy.digest, "pod applied");
            self.conds.set(
                UP_TO_DATE,
                State::True,
                "Current",
                "the pod runs the current template and policy",
            );
            self.readiness(&created);
            return Ok(RESYNC);
        };
        if pod.metadata.deletion_timestamp.is_some() {
            self.conds.set(
                READY,
                State::False,
                "PodTerminating",
                "the pod is being deleted; a new one follows",
            );
            self.conds.set(
                UP_TO_DATE,
                State::False,
                "Recreating",
                "the pod is being replaced",
            );
            self.status.pod_ip = None;
            self.status.pod_name = Some(self.name.clone());
            return Ok(Duration::from_secs(5));
        }

        let ann = pod.annotations();
        let stale_policy = ann.get(ANN_DIGEST) != Some(&policy.digest);
        let stale_template = ann.get(ANN_TEMPLATE) != Some(&desired::template_digest(self.asb));
        if !stale_policy && !stale_template {
            self.conds.set(
                UP_TO_DATE,
                State::True,
                "Current",
                "the pod runs the current template and policy",
            );
            self.readiness(&pod);
            return Ok(RESYNC);
        }
        let (reason, what) = if stale_policy {
            (
                "PolicyChanged",
                format!(
                    "the pod runs policy {}, the spec says {}",
                    ann.get(ANN_DIGEST).map_or("(none)", String::as_str),
                    policy.digest
                ),
            )
        } else {
            (
                "TemplateChanged",
                "the pod template changed since the pod was created".to_owned(),
            )
        };
        match self.asb.spec.update_policy {
            UpdatePolicy::Never => {
                self.conds.set(
                    UP_TO_DATE,
                    State::False,
                    reason,
                    format!("{what}; updatePolicy Never: delete the pod or set Recreate"),
                );
                self.readiness(&pod);
            }
            UpdatePolicy::Recreate => {
                self.delete_pod(reason).await?;
                self.conds.set(
                    UP_TO_DATE,
                    State::False,
                    reason,
                    format!("{what}; updatePolicy Recreate: pod deleted, a new one follows"),
                );
                self.conds.set(
                    READY,
                    State::False,
                    "Recreating",
                    "the pod is being replaced",
                );
                self.status.pod_ip = None;
                self.publish(EventType::Normal, "Recreating", what).await;
            }
        }
        Ok(RESYNC)
    }

    fn readiness(&mut self, pod: &Pod) {
        let (state, reason, message, ip) = pod_readiness(pod);
        self.conds.set(READY, state, reason, message);
        self.status.pod_name = Some(pod.name_any());
        self.status.pod_ip = ip;
    }

    /// Deletes this sandbox's object of kind `K` if it exists and is ours.
    async fn delete_owned<K>(&self, what: &str) -> Result<(), Error>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let Some(uid) = self.asb.metadata.uid.clone() else {
            return Ok(());
        };
        let api = self.api::<K>();
        let Some(obj) = get_opt(&api, &self.name, what).await? else {
            return Ok(());
        };
        // A same-named object someone else made is not ours to delete.
        if !obj.owner_references().iter().any(|o| o.uid == uid) {
            return Ok(());
        }
        match api.delete(&self.name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(kube_err(format!("delete {what} {}", self.name))(e)),
        }
    }

    async fn delete_pod(&self, why: &str) -> Result<(), Error> {
        let r = self
            .api::<Pod>()
            .delete(&self.name, &DeleteParams::default())
            .await;
        match r {
            Ok(_) => {
                info!(sandbox = %self.name, namespace = %self.ns, why, "pod deleted");
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(kube_err(format!("delete pod {}", self.name))(e)),
        }
    }

    async fn expire(mut self, at: Timestamp, policy: ShutdownPolicy) -> Result<Action, Error> {
        let msg = format!("lifetime ended at {at}");
        match policy {
            ShutdownPolicy::Delete => {
                self.publish(
                    EventType::Normal,
                    "Expired",
                    format!("{msg}: deleting the sandbox"),
                )
                .await;
                let api = self.api::<AgentSandbox>();
                match api.delete(&self.name, &DeleteParams::background()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => {
                        return Err(kube_err(format!("delete agentsandbox {}", self.name))(e));
                    }
                }
                info!(sandbox = %self.name, namespace = %self.ns, "expired: deleted");
                Ok(Action::await_change())
            }
            ShutdownPolicy::Retain => {
                let pods = self.api::<Pod>();
                if let Some(p) = get_opt(&pods, &self.name, "pod").await?
                    && p.metadata.deletion_timestamp.is_none()
                {
                    self.delete_pod("expired").await?;
                }
                self.conds.set(
                    EXPIRED,
                    State::True,
                    "LifetimeEnded",
                    format!("{msg}: pod deleted, sandbox retained"),
                );
                self.conds.set(READY, State::False, "Expired", msg.clone());
                if self.conds.changed(EXPIRED) {
                    self.publish(EventType::Normal, "Expired", format!("{msg}: pod deleted"))
                        .await;
                }
                self.status.pod_name = None;
                self.status.pod_ip = None;
                let prev = self.asb.status.clone().unwrap_or_default();
                self.status.policy_digest = prev.policy_digest;
                self.status.policy_short_digest = prev.policy_short_digest;
                self.write_status().await?;
                Ok(Action::await_change())
            }
        }
    }

    /// A spec the operator will not act on: the condition and `Ready=False` say why, a Warning
    /// event is published when the reason is new, and no pod is made.
    async fn reject(mut self, cond: &str, e: SpecError) -> Result<Action, Error> {
        let reason = e.reason();
        let msg = e.to_string();
        self.conds.set(cond, State::False, reason, msg.clone());
        if cond != READY {
            self.conds.set(READY, State::False, reason, msg.clone());
        }
        if matches!(
            e,
            SpecError::InvalidPolicy { .. }
                | SpecError::ReservedAnnotation { .. }
                | SpecError::NoPolicySource
                | SpecError::UnknownPreset(_)
                | SpecError::ConfigMapNotFound { .. }
                | SpecError::ConfigMapKeyMissing { .. }
        ) {
            self.status.policy_digest = None;
            self.status.policy_short_digest = None;
        } else {
            let prev = self.asb.status.clone().unwrap_or_default();
            self.status.policy_digest = prev.policy_digest;
            self.status.policy_short_digest = prev.policy_short_digest;
        }
        self.warn_if_changed(cond, reason).await;
        self.write_status().await?;
        // A missing ConfigMap is watched (its creation triggers a reconcile); a bad spec waits
        // for its own change.
        Ok(match e {
            SpecError::ConfigMapNotFound { .. } | SpecError::ConfigMapKeyMissing { .. } => {
                Action::requeue(RETRY_MISSING)
            }
            _ => Action::await_change(),
        })
    }

    async fn warn_if_changed(&self, cond: &str, reason: &str) {
        if self.conds.changed(cond) {
            let msg = self.conds.message(cond).unwrap_or_default().to_owned();
            self.publish(EventType::Warning, reason, msg).await;
        }
    }

    async fn publish(&self, type_: EventType, reason: &str, note: String) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        // An event that cannot be written must not stop the reconcile: status says it all too.
        if let Err(e) = self
            .ctx
            .recorder
            .publish(&ev, &self.asb.object_ref(&()))
            .await
        {
            warn!(sandbox = %self.name, error = %e, "event not published");
        }
    }

    async fn write_status(&mut self) -> Result<(), Error> {
        let became_ready = !self.conds.was_true(READY)
            && self
                .conds
                .state(READY)
                .is_some_and(|s| s == State::True.as_str());
        let conds = std::mem::replace(
            &mut self.conds,
            Conditions::new(&AgentSandboxStatus::default(), None, self.now),
        );
        self.status.conditions = conds.finish();
        if became_ready && let Some(created) = &self.asb.metadata.creation_timestamp {
            let secs = created.0.duration_until(self.now).as_secs_f64();
            self.ctx.metrics.time_to_ready.observe(secs.max(0.0));
        }
        if self.asb.status.as_ref() == Some(&self.status) {
            return Ok(());
        }
        let patch = json!({
            "apiVersion": AgentSandbox::api_version(&()),
            "kind": AgentSandbox::kind(&()),
            "status": self.status,
        });
        self.api::<AgentSandbox>()
            .patch_status(&self.name, &apply_params(), &Patch::Apply(patch))
            .await
            .map_err(kube_err(format!(
                "apply status of agentsandbox {}",
                self.name
            )))?;
        Ok(())
    }
}
