//! Prometheus metrics of the operator (text exposition on `/metrics`).

use std::collections::BTreeMap;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::conditions::{EXPIRED, POLICY_VALID, READY, RUNTIME_CLASS_RESOLVED, SUSPENDED};
use crate::crd::AgentSandbox;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SandboxLabels {
    pub phase: String,
    pub isolation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub namespace: String,
    pub pool: String,
}

pub struct Metrics {
    registry: Registry,
    /// Time from a claim's creation to `Bound=True`.
    pub claim_to_bound: Histogram,
    /// Unclaimed Ready members per pool.
    pub pool_ready: Family<PoolLabels, Gauge>,
    /// Unclaimed members a pool wants (`min(replicas, maxReplicas)`).
    pub pool_desired: Family<PoolLabels, Gauge>,
    pub reconcile_duration: Histogram,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub sandboxes: Family<SandboxLabels, Gauge>,
    pub time_to_ready: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("agentcell_operator");
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let sandboxes = Family::<SandboxLabels, Gauge>::default();
        let time_to_ready = Histogram::new(exponential_buckets(0.5, 2.0, 12));
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile of an AgentSandbox took",
            reconcile_duration.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by error kind",
            reconcile_errors.clone(),
        );
        registry.register(
            "sandboxes",
            "AgentSandboxes by phase and isolation tier",
            sandboxes.clone(),
        );
        registry.register(
            "time_to_ready_seconds",
            "Time from an AgentSandbox's creation to its first Ready=True",
            time_to_ready.clone(),
        );
        // 1 ms to ~33 s: a warm bind takes milliseconds, a bind waiting for a member seconds.
        let claim_to_bound = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let pool_ready = Family::<PoolLabels, Gauge>::default();
        let pool_desired = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "claim_to_bound_seconds",
            "Time from an AgentSandboxClaim's creation to Bound=True",
            claim_to_bound.clone(),
        );
        registry.register(
            "pool_ready_replicas",
            "Unclaimed Ready members of an AgentSandboxPool",
            pool_ready.clone(),
        );
        registry.register(
            "pool_desired_replicas",
            "Unclaimed members an AgentSandboxPool wants",
            pool_desired.clone(),
        );
        Self {
            registry,
            claim_to_bound,
            pool_ready,
            pool_desired,
            reconcile_duration,
            reconcile_errors,
            sandboxes,
            time_to_ready,
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String does not fail");
        out
    }

    /// Sets a pool's gauges.
    pub fn set_pool(&self, namespace: &str, pool: &str, ready: usize, desired: usize) {
        let l = PoolLabels {
            namespace: namespace.into(),
            pool: pool.into(),
        };
        self.pool_ready.get_or_create(&l).set(ready as i64);
        self.pool_desired.get_or_create(&l).set(desired as i64);
    }

    /// Drops a deleted pool's gauges.
    pub fn remove_pool(&self, namespace: &str, pool: &str) {
        let l = PoolLabels {
            namespace: namespace.into(),
            pool: pool.into(),
        };
        self.pool_ready.remove(&l);
        self.pool_desired.remove(&l);
    }

    /// Recounts the sandboxes gauge from a snapshot of every sandbox.
    pub fn count_sandboxes<'a>(&self, all: impl IntoIterator<Item = &'a AgentSandbox>) {
        let mut counts: BTreeMap<(&'static str, &'static str), i64> = BTreeMap::new();
        for asb in all {
            *counts
                .entry((phase(asb), asb.spec.isolation.as_str()))
                .or_default() += 1;
        }
        self.sandboxes.clear();
        for ((phase, isolation), n) in counts {
            self.sandboxes
                .get_or_create(&SandboxLabels {
                    phase: phase.into(),
                    isolation: isolation.into(),
                })
                .set(n);
        }
    }
}

/// One word for where a sandbox is, from its status.
pub fn phase(asb: &AgentSandbox) -> &'static str {
    let Some(st) = &asb.status else {
        return "Pending";
    };
    let is = |t: &str, s: &str| st.condition(t).is_some_and(|c| c.status == s);
    if is(EXPIRED, "True") {
        "Expired"
    } else if is(POLICY_VALID, "False") || is(RUNTIME_CLASS_RESOLVED, "False") {
        "Invalid"
    } else if is(SUSPENDED, "True") {
        "Suspended"
    } else if is(READY, "True") {
        "Ready"
    } else {
        "Pending"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn asb(isolation: &str, conditions: serde_json::Value) -> AgentSandbox {
        serde_json::from_value(json!({
            "apiVersion": "agentcell.dev/v1alpha1", "kind": "AgentSandbox",
            "metadata": {"name": "x", "namespace": "n"},
            "spec": {"isolation": isolation, "policy": {"preset": "offline"},
                     "podTemplate": {"spec": {"containers": []}}},
            "status": {"conditions": conditions},
        }))
        .unwrap()
    }

    fn c(type_: &str, status: &str) -> serde_json::Value {
        json!({"type": type_, "status": status, "reason": "R", "message": "",
               "lastTransitionTime": "2026-01-01T00:00:00Z"})
    }

    #[test]
    fn sandboxes_are_counted_by_phase_and_isolation() {
        let m = Metrics::new();
        let all = [
            asb("container", json!([c(READY, "True")])),
            asb("container", json!([c(READY, "True")])),
            asb(
                "microvm",
                json!([c(POLICY_VALID, "False"), c(READY, "False")]),
            ),
            asb("microvm", json!([c(SUSPENDED, "True"), c(READY, "False")])),
            asb(
                "container",
                json!([c(EXPIRED, "True"), c(SUSPENDED, "True")]),
            ),
            asb("container", json!([])),
        ];
        m.count_sandboxes(all.iter());
        let text = m.encode();
        for line in [
            r#"agentcell_operator_sandboxes{phase="Ready",isolation="container"} 2"#,
            r#"agentcell_operator_sandboxes{phase="Invalid",isolation="microvm"} 1"#,
            r#"agentcell_operator_sandboxes{phase="Suspended",isolation="microvm"} 1"#,
            r#"agentcell_operator_sandboxes{phase="Expired",isolation="container"} 1"#,
            r#"agentcell_operator_sandboxes{phase="Pending",isolation="container"} 1"#,
        ] {
            assert!(text.contains(line), "{line} not in {text}");
        }
        // A recount replaces the previous one.
        m.count_sandboxes(all[..1].iter());
        assert!(!m.encode().contains("microvm"));
    }

    #[test]
    fn pool_gauges_and_claim_latency() {
        let m = Metrics::new();
        m.set_pool("team-a", "warm", 2, 3);
        m.claim_to_bound.observe(0.004);
        m.claim_to_bound.observe(0.004);
        m.claim_to_bound.observe(3.0);
        let text = m.encode();
        for line in [
            r#"agentcell_operator_pool_ready_replicas{namespace="team-a",pool="warm"} 2"#,
            r#"agentcell_operator_pool_desired_replicas{namespace="team-a",pool="warm"} 3"#,
            "agentcell_operator_claim_to_bound_seconds_count 3",
            r#"agentcell_operator_claim_to_bound_seconds_bucket{le="0.004"} 2"#,
            r#"agentcell_operator_claim_to_bound_seconds_bucket{le="2.048"} 2"#,
            r#"agentcell_operator_claim_to_bound_seconds_bucket{le="4.096"} 3"#,
        ] {
            assert!(text.contains(line), "{line} not in {text}");
        }
        m.remove_pool("team-a", "warm");
        assert!(!m.encode().contains(r#"pool="warm""#));
    }
}
