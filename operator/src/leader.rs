//! Leader election on a `coordination.k8s.io/v1` Lease (kube-lease-manager): one replica
//! reconciles, the others wait and take over when its lease lapses.

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};

#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub lease_name: String,
    pub namespace: String,
    /// Unique per replica (the pod name).
    pub identity: String,
    /// Seconds a lease is held without renewal before another replica may take it.
    pub lease_seconds: u64,
    /// Seconds before expiry the holder renews.
    pub grace_seconds: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("lease {namespace}/{name}: {source}")]
    Lease {
        namespace: String,
        name: String,
        #[source]
        source: kube_lease_manager::LeaseManagerError,
    },
}

pub async fn manager(client: Client, cfg: &LeaderConfig) -> Result<LeaseManager, LeaderError> {
    LeaseManagerBuilder::new(client, &cfg.lease_name)
        .with_namespace(&cfg.namespace)
        .with_identity(&cfg.identity)
        .with_duration(cfg.lease_seconds)
        .with_grace(cfg.grace_seconds)
        .with_field_manager(crate::desired::MANAGER)
        .build()
        .await
        .map_err(|source| LeaderError::Lease {
            namespace: cfg.namespace.clone(),
            name: cfg.lease_name.clone(),
            source,
        })
}
