//! The controller loop: watches `AgentSandbox`es, the Pods, Services and NetworkPolicies they own,
//! and the ConfigMaps their policies name, and reconciles each sandbox when any of them changes.

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, ResourceExt};
use tracing::{debug, warn};

use crate::crd::AgentSandbox;
use crate::desired::{self, LABEL_MANAGED_BY, MANAGER};
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
