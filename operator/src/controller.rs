//! The controller loop: watches `AgentSandbox`es, the Pods, Services and NetworkPolicies they own,
//! and the ConfigMaps their policies name, and reconciles each sandbox when any of them changes;
//! beside it the pool and claim controllers ([`run_all`] runs the three).

use std::future::Future;
use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, ResourceExt};
use tracing::{debug, warn};

use crate::crd::AgentSandbox;
use crate::crd_pool::{AgentSandboxClaim, AgentSandboxPool};
use crate::desired::{self, LABEL_MANAGED_BY, MANAGER};
use crate::pool::{LABEL_CLAIM, LABEL_POOL};
use crate::pool_reconcile::{
    claim_error_policy, pool_error_policy, reconcile_claim, reconcile_pool,
};
use crate::reconcile::{Context, error_policy, reconcile};

/// Runs the controller until `shutdown` resolves; in-flight reconciles finish first.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let client = ctx.client.clone();
    // Only what this operator made: other pods in the cluster never wake it.
    let owned = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGER}"));
    let controller = Controller::new(
        Api::<AgentSandbox>::all(client.clone()),
        watcher::Config::default(),
    );
    let store = controller.store();
    let lookup = store.clone();
    let controller = controller
        .owns(Api::<Pod>::all(client.clone()), owned.clone())
        .owns(Api::<Service>::all(client.clone()), owned.clone())
        .owns(Api::<NetworkPolicy>::all(client.clone()), owned)
        .watches(
            Api::<ConfigMap>::all(client),
            watcher::Config::default(),
            move |cm: ConfigMap| {
                let (ns, name) = (cm.namespace(), cm.name_any());
                lookup
                    .state()
                    .into_iter()
                    .filter(|asb| {
                        asb.namespace() == ns
                            && desired::config_map_name(&asb.spec.policy) == Some(name.as_str())
                    })
                    .map(|asb| ObjectRef::from_obj(asb.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(shutdown);
    let metrics = ctx.metrics.clone();
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|res| {
            match res {
                Ok((obj, action)) => debug!(sandbox = %obj, ?action, "reconciled"),
                Err(e) => warn!(error = %e, "controller"),
            }
            metrics.count_sandboxes(store.state().iter().map(AsRef::as_ref));
            futures::future::ready(())
        })
        .await;
}

/// Runs the pool controller until `shutdown` resolves. Members are watched by their pool label,
/// not their owner reference: a claimed member is owned by its claim but still wakes its pool
/// (which then counts it as claimed and replaces it).
pub async fn run_pools(
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let members = watcher::Config::default().labels(LABEL_POOL);
    Controller::new(
        Api::<AgentSandboxPool>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(
        Api::<AgentSandbox>::all(client),
        members,
        |asb: AgentSandbox| {
            let ns = asb.namespace()?;
            let pool = asb.labels().get(LABEL_POOL)?.clone();
            Some(ObjectRef::<AgentSandboxPool>::new(&pool).within(&ns))
        },
    )
    .graceful_shutdown_on(shutdown)
    .run(reconcile_pool, pool_error_policy, ctx)
    .for_each(|res| {
        match res {
            Ok((obj, action)) => debug!(pool = %obj, ?action, "reconciled"),
            Err(e) => warn!(error = %e, "pool controller"),
        }
        futures::future::ready(())
    })
    .await;
}

/// Runs the claim controller until `shutdown` resolves. A member changing wakes the claim that
/// holds it, or, while it is unclaimed, every unbound claim of its pool (one may bind it now).
pub async fn run_claims(
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let members = watcher::Config::default().labels(LABEL_POOL);
    let controller = Controller::new(
        Api::<AgentSandboxClaim>::all(client.clone()),
        watcher::Config::default(),
    );
    let store = controller.store();
    controller
        .watches(
            Api::<AgentSandbox>::all(client),
            members,
            move |asb: AgentSandbox| {
                let ns = asb.namespace();
                if let Some(claim) = asb.labels().get(LABEL_CLAIM) {
                    let r =
                        ObjectRef::<AgentSandboxClaim>::new(claim).within(&ns.unwrap_or_default());
                    return vec![r];
                }
                let pool = asb.labels().get(LABEL_POOL).cloned();
                store
                    .state()
                    .into_iter()
                    .filter(|c| {
                        c.namespace() == ns
                            && Some(&c.spec.pool_ref.name) == pool.as_ref()
                            && c.status.as_ref().is_none_or(|s| s.sandbox.is_none())
                    })
                    .map(|c| ObjectRef::from_obj(c.as_ref()))
                    .collect()
            },
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile_claim, claim_error_policy, ctx)
        .for_each(|res| {
            match res {
                Ok((obj, action)) => debug!(claim = %obj, ?action, "reconciled"),
                Err(e) => warn!(error = %e, "claim controller"),
            }
            futures::future::ready(())
        })
        .await;
}

/// The three controllers (sandboxes, pools, claims) side by side, under one shutdown signal.
pub async fn run_all(
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let shutdown = shutdown.shared();
    futures::join!(
        run(ctx.clone(), shutdown.clone()),
        run_pools(ctx.clone(), shutdown.clone()),
        run_claims(ctx, shutdown),
    );
}
