//! Operator configuration: what the cluster calls things (runtime classes, DNS domain).

use crate::crd::Isolation;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorConfig {
    /// RuntimeClass of `isolation: container`.
    pub container_runtime_class: String,
    /// RuntimeClass of `isolation: microvm`.
    pub microvm_runtime_class: String,
    /// Cluster DNS domain, for `status.serviceFQDN`.
    pub cluster_domain: String,
    /// Whose verdicts policies get (`--mxc-release`): MXC 1.0's, or MXC 0.8's for retired
    /// documents. The nodes' `mxc_release` in `/etc/agentcell/shim.toml` must agree.
    pub mxc_release: agentcell_policy::MxcRelease,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        Self {
            container_runtime_class: "agentcell".into(),
            microvm_runtime_class: "agentcell-vm".into(),
            cluster_domain: "cluster.local".into(),
            mxc_release: agentcell_policy::MxcRelease::default(),
        }
    }
}

impl OperatorConfig {
    pub fn runtime_class(&self, isolation: Isolation) -> &str {
        match isolation {
            Isolation::Container => &self.container_runtime_class,
            Isolation::Microvm => &self.microvm_runtime_class,
        }
    }
}
