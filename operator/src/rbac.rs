//! Every API call the operator makes, as RBAC rules: the chart's ClusterRole and Role and
//! `deploy/operator.yaml` must grant exactly these (operator/tests/chart.rs compares). When a
//! call is added to `reconcile`, `controller` or `leader`, add its verb here, or the operator
//! gets 403 in a cluster while every mock-API test still passes.

/// One rule: API group, resource, verbs (sorted as written in the manifests).
pub struct Rule {
    pub group: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
    /// Where the calls are made.
    pub why: &'static str,
}

/// Cluster-wide: the controller watches and writes in every namespace.
pub const CLUSTER_RULES: &[Rule] = &[
    Rule {
        group: "agentcell.dev",
        resource: "agentsandboxes",
        verbs: &["get", "list", "watch", "create", "patch", "delete"],
        why: "controller: Controller::new (list, watch); reconcile::expire deletes with shutdownPolicy Delete; pool_reconcile creates and deletes members, a claim gets, binds (patch) and releases them",
    },
    Rule {
        group: "agentcell.dev",
        resource: "agentsandboxes/status",
        verbs: &["patch"],
        why: "reconcile: patch_status by server-side apply",
    },
    Rule {
        group: "agentcell.dev",
        resource: "agentsandboxpools",
        verbs: &["get", "list", "watch"],
        why: "controller: pools (list, watch); a claim gets its pool",
    },
    Rule {
        group: "agentcell.dev",
        resource: "agentsandboxclaims",
        verbs: &["list", "watch", "patch"],
        why: "controller: claims (list, watch); the claim's finalizer (patch)",
    },
    Rule {
        group: "agentcell.dev",
        resource: "agentsandboxpools/status",
        verbs: &["patch"],
        why: "pool_reconcile: patch_status by server-side apply",
    },
    Rule {
        group: "agentcell.dev",
        resource: "agentsandboxclaims/status",
        verbs: &["patch"],
        why: "pool_reconcile: patch_status by server-side apply",
    },
    Rule {
        group: "",
        resource: "pods",
        verbs: &["get", "list", "watch", "create", "patch", "delete"],
        why: "controller owns (list, watch); reconcile get_opt, apply (patch; create when absent), delete_pod",
    },
    Rule {
        group: "",
        resource: "services",
        verbs: &["get", "list", "watch", "create", "patch", "delete"],
        why: "controller owns; reconcile apply and delete_owned",
    },
    Rule {
        group: "networking.k8s.io",
        resource: "networkpolicies",
        verbs: &["get", "list", "watch", "create", "patch", "delete"],
        why: "controller owns; reconcile apply and delete_owned",
    },
    Rule {
        group: "",
        resource: "configmaps",
        verbs: &["get", "list", "watch"],
        why: "controller watches (policy from a ConfigMap key); reconcile get_opt",
    },
    Rule {
        group: "node.k8s.io",
        resource: "runtimeclasses",
        verbs: &["get"],
        why: "reconcile: RuntimeClassResolved",
    },
    Rule {
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
        why: "kube Recorder: create, patch for a repeated event",
    },
];

/// In the operator's own namespace: the leader Lease (kube-lease-manager).
pub const LEASE_RULES: &[Rule] = &[Rule {
    group: "coordination.k8s.io",
    resource: "leases",
    verbs: &["get", "create", "patch", "update"],
    why: "leader: kube-lease-manager reads, creates, and renews/releases the Lease",
}];
