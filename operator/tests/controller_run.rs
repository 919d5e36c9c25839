//! The real `Controller::run` loop on kube's mock API: it lists and watches sandboxes and what
//! they own, reconciles the listed sandbox (apply of NetworkPolicy, Service, Pod, status), and
//! stops on graceful shutdown.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use agentcell_operator::controller;
use common::*;
use http::Method;
use serde_json::{Value, json};

fn list(api_version: &str, kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": api_version, "kind": kind,
           "metadata": {"resourceVersion": "1000"}, "items": items})
}

#[tokio::test]
async fn controller_run_lists_watches_reconciles_and_shuts_down() {
    let (ctx, mut api, metrics) = context(NOW);
    let mut asb =
        serde_json::to_value(sandbox(spec_with(json!({"preset": "coding-agent"})))).unwrap();
    asb["apiVersion"] = json!("agentcell.dev/v1alpha1");
    asb["kind"] = json!("AgentSandbox");

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(controller::run(ctx, async {
        let _ = stop_rx.await;
    }));

    let mut lists = BTreeSet::new();
    let mut watches = BTreeSet::new();
    let mut held = Vec::new();
    let mut reconcile = Vec::new();
    let mut status = Value::Null;
    let owned_selector = "labelSelector=app.kubernetes.io%2Fmanaged-by%3Dagentcell-operator";
    while watches.len() < 5 || status.is_null() {
        let c = api.next().await;
        let is_watch = c.query.contains("watch=true");
        let collection = match c.path.as_str() {
            "/apis/agentcell.dev/v1alpha1/agentsandboxes" => {
                Some(("agentcell.dev/v1alpha1", "AgentSandboxList"))
            }
            "/api/v1/pods" => Some(("v1", "PodList")),
            "/api/v1/services" => Some(("v1", "ServiceList")),
            "/apis/networking.k8s.io/v1/networkpolicies" => {
                Some(("networking.k8s.io/v1", "NetworkPolicyList"))
            }
            "/api/v1/configmaps" => Some(("v1", "ConfigMapList")),
            _ => None,
        };
        if let Some((version, kind)) = collection {
            assert_eq!(c.method, Method::GET);
            if ["PodList", "ServiceList", "NetworkPolicyList"].contains(&kind) {
                assert!(
                    c.query.contains(owned_selector),
                    "owned objects by label: {}",
                    c.query
                );
            }
            if is_watch {
                assert!(c.query.contains("resourceVersion=1000"), "{}", c.query);
                watches.insert(kind);
                held.push(c.hold());
            } else {
                lists.insert(kind);
                let items = if kind == "AgentSandboxList" {
                    vec![asb.clone()]
                } else {
                    vec![]
                };
                c.reply(200, list(version, kind, items));
            }
            continue;
        }
        reconcile.push(format!("{} {}", c.method, c.path));
        match (c.method.clone(), c.path.as_str()) {
            (Method::GET, p) if p == runtimeclass_path("agentcell") => {
                c.reply(200, runtime_class("agentcell"))
            }
            (Method::GET, p) if p == pod_path() => c.not_found(),
            (Method::PATCH, p) if p == status_path() => {
                assert_eq!(c.query, APPLY);
                status = c.body["status"].clone();
                let mut whole = asb.clone();
                whole["status"] = status.clone();
                c.reply(200, whole);
            }
            (Method::PATCH, _) => {
                assert_eq!(c.query, APPLY);
                c.echo()
            }
            _ => panic!("unexpected request {} {}?{}", c.method, c.path, c.query),
        }
    }
    assert_eq!(lists, watches, "every list is followed by its watch");
    assert_eq!(lists.len(), 5);
    assert_eq!(
        reconcile,
        vec![
            format!("GET {}", runtimeclass_path("agentcell")),
            format!("PATCH {}", netpol_path()),
            format!("PATCH {}", service_path()),
            format!("GET {}", pod_path()),
            format!("PATCH {}", pod_path()),
            format!("PATCH {}", status_path()),
        ]
    );
    assert_eq!(cond(&status, "PolicyValid").0, "True");
    assert_eq!(status["podName"], NAME);

    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the controller stops on graceful shutdown")
        .unwrap();
    drop(held);
    let text = metrics.encode();
    assert!(
        text.contains(r#"agentcell_operator_sandboxes{phase="Pending",isolation="container"} 1"#),
        "{text}"
    );
}
