//! Status conditions: their types, and a builder that keeps `lastTransitionTime` when a
//! condition's status did not change (so a status write that changes nothing is skipped).

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::crd::AgentSandboxStatus;

pub const READY: &str = "Ready";
pub const POLICY_VALID: &str = "PolicyValid";
pub const RUNTIME_CLASS_RESOLVED: &str = "RuntimeClassResolved";
pub const UP_TO_DATE: &str = "UpToDate";
pub const SUSPENDED: &str = "Suspended";
pub const EXPIRED: &str = "Expired";

/// Every condition type, in the order they are written.
pub const ALL: [&str; 6] = [
    READY,
    POLICY_VALID,
    RUNTIME_CLASS_RESOLVED,
    UP_TO_DATE,
    SUSPENDED,
    EXPIRED,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    True,
    False,
    Unknown,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

/// Builds the next status from the previous one.
#[derive(Debug)]
pub struct Conditions {
    prev: Vec<Condition>,
    next: Vec<Condition>,
    generation: Option<i64>,
    now: Timestamp,
}

impl Conditions {
    pub fn new(prev: &AgentSandboxStatus, generation: Option<i64>, now: Timestamp) -> Self {
        Self::from_prev(&prev.conditions, generation, now)
    }

    /// From the previous conditions of any resource (pools and claims have their own types).
    pub fn from_prev(prev: &[Condition], generation: Option<i64>, now: Timestamp) -> Self {
        Self {
            prev: prev.to_vec(),
            next: Vec::new(),
            generation,
            now,
        }
    }

    pub fn set(&mut self, type_: &str, state: State, reason: &str, message: impl Into<String>) {
        let status = state.as_str();
        let since = self
            .prev
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(self.now));
        self.next.retain(|c| c.type_ != type_);
        self.next.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: self.generation,
            last_transition_time: since,
        });
    }

    /// Whether `type_` was already set in this reconcile.
    pub fn is_set(&self, type_: &str) -> bool {
        self.next.iter().any(|c| c.type_ == type_)
    }

    /// Whether `type_` changes (status, reason or message) from the previous status.
    pub fn changed(&self, type_: &str) -> bool {
        let key = |c: &Condition| (c.status.clone(), c.reason.clone(), c.message.clone());
        self.prev.iter().find(|c| c.type_ == type_).map(key)
            != self.next.iter().find(|c| c.type_ == type_).map(key)
    }

    pub fn message(&self, type_: &str) -> Option<&str> {
        self.next
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| c.message.as_str())
    }

    pub fn state(&self, type_: &str) -> Option<&str> {
        self.next
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| c.status.as_str())
    }

    pub fn was_true(&self, type_: &str) -> bool {
        self.prev
            .iter()
            .any(|c| c.type_ == type_ && c.status == "True")
    }

    /// The conditions, every type present (`Unknown` for those this reconcile did not reach),
    /// in [`ALL`] order.
    pub fn finish(self) -> Vec<Condition> {
        self.finish_types(&ALL)
    }

    /// The conditions, every one of `all` present (`Unknown` for those not set), in that order.
    pub fn finish_types(mut self, all: &[&str]) -> Vec<Condition> {
        for &t in all {
            if !self.is_set(t) {
                self.set(
                    t,
                    State::Unknown,
                    "NotEvaluated",
                    "not evaluated in this reconcile",
                );
            }
        }
        let mut out = self.next;
        out.sort_by_key(|c| all.iter().position(|t| *t == c.type_));
        out
    }
}

/// Readiness of the sandbox from its pod: `(state, reason, message, pod IP)`.
pub fn pod_readiness(pod: &Pod) -> (State, &'static str, String, Option<String>) {
    let Some(st) = &pod.status else {
        return (
            State::False,
            "PodPending",
            "pod has no status yet".into(),
            None,
        );
    };
    let ip = st.pod_ip.clone();
    let ready = st
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    match st.phase.as_deref() {
        Some("Running") if ready => (
            State::True,
            "PodReady",
            "pod is running and ready".into(),
            ip,
        ),
        Some("Failed") => (State::False, "PodFailed", failure(pod), None),
        Some("Succeeded") => (
            State::False,
            "PodSucceeded",
            "pod ran to completion".into(),
            None,
        ),
        Some("Running") => (
            State::False,
            "PodNotReady",
            waiting(pod).unwrap_or_else(|| "pod is running, not ready".into()),
            ip,
        ),
        _ => match unschedulable(pod) {
            // Said apart from a plain Pending so a pool holds back instead of adding members
            // that cannot be scheduled either.
            Some(why) => (State::False, POD_UNSCHEDULABLE, why, None),
            None => (
                State::False,
                "PodPending",
                waiting(pod).unwrap_or_else(|| "pod is pending".into()),
                None,
            ),
        },
    }
}

/// The `Ready` reason of a sandbox whose pod the scheduler cannot place.
pub const POD_UNSCHEDULABLE: &str = "PodUnschedulable";

/// Why the scheduler cannot place the pod (`PodScheduled=False`), if it cannot.
fn unschedulable(pod: &Pod) -> Option<String> {
    let c = pod
        .status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")?;
    Some(format!(
        "pod cannot be scheduled: {}",
        c.message
            .as_deref()
            .or(c.reason.as_deref())
            .unwrap_or("no reason given")
    ))
}

fn failure(pod: &Pod) -> String {
    let st = pod.status.as_ref().expect("checked by the caller");
    let mut parts = Vec::new();
    if let Some(r) = &st.reason {
        parts.push(r.clone());
    }
    if let Some(m) = &st.message {
        parts.push(m.clone());
    }
    for cs in st.container_statuses.iter().flatten() {
        if let Some(t) = cs.state.as_ref().and_then(|s| s.terminated.as_ref()) {
            parts.push(format!(
                "container {} terminated: {} (exit code {}){}",
                cs.name,
                t.reason.as_deref().unwrap_or("Error"),
                t.exit_code,
                t.message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ));
        }
    }
    if parts.is_empty() {
        "pod failed".into()
    } else {
        parts.join("; ")
    }
}

fn waiting(pod: &Pod) -> Option<String> {
    let st = pod.status.as_ref()?;
    let msgs: Vec<String> = st
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|cs| {
            let w = cs.state.as_ref()?.waiting.as_ref()?;
            Some(format!(
                "container {} waiting: {}",
                cs.name,
                w.reason.as_deref().unwrap_or("unknown")
            ))
        })
        .collect();
    (!msgs.is_empty()).then(|| msgs.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "status": status})).unwrap()
    }

    #[test]
    fn transition_time_is_kept_while_the_status_holds() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T00:05:00Z".parse().unwrap();
        let mut c = Conditions::new(&AgentSandboxStatus::default(), Some(1), t0);
        c.set(READY, State::False, "PodPending", "x");
        let first = AgentSandboxStatus {
            conditions: c.finish(),
            ..Default::default()
        };
        let mut c = Conditions::new(&first, Some(1), t1);
        c.set(READY, State::False, "PodPending", "y");
        assert!(c.changed(READY));
        let next = c.finish();
        assert_eq!(next[0].last_transition_time.0, t0);
        assert_eq!(next.len(), ALL.len());
        let mut c = Conditions::new(&first, Some(1), t1);
        c.set(READY, State::True, "PodReady", "z");
        assert_eq!(c.finish()[0].last_transition_time.0, t1);
    }

    #[test]
    fn readiness_from_pod_status() {
        let ready = pod(json!({"phase": "Running", "podIP": "10.0.0.9",
            "conditions": [{"type": "Ready", "status": "True"}]}));
        let (s, r, _, ip) = pod_readiness(&ready);
        assert_eq!(
            (s, r, ip.as_deref()),
            (State::True, "PodReady", Some("10.0.0.9"))
        );

        let failed = pod(
            json!({"phase": "Failed", "containerStatuses": [{"name": "agent",
            "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 125, "reason": "Error",
                      "message": "policy rejected"}}}]}),
        );
        let (s, r, m, _) = pod_readiness(&failed);
        assert_eq!((s, r), (State::False, "PodFailed"));
        assert_eq!(
            m,
            "container agent terminated: Error (exit code 125): policy rejected"
        );

        let (s, r, _, _) = pod_readiness(&pod(json!({"phase": "Pending"})));
        assert_eq!((s, r), (State::False, "PodPending"));

        let stuck = pod(
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled",
            "status": "False", "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 Insufficient cpu."}]}),
        );
        let (s, r, m, _) = pod_readiness(&stuck);
        assert_eq!((s, r), (State::False, POD_UNSCHEDULABLE));
        assert_eq!(
            m,
            "pod cannot be scheduled: 0/3 nodes are available: 3 Insufficient cpu."
        );
    }
}
