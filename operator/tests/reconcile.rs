//! One reconcile at a time against kube's mock API: every request the operator sends is asserted
//! (method, path, query, body) in order, and the responses are served by the test.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use agentcell_operator::desired::{ANN_DIGEST, ANN_POLICY, resolve_policy};
use agentcell_operator::reconcile::{RESYNC, RETRY_MISSING};
use agentcell_policy::canonical::{canonical_json, digest};
use agentcell_policy::{ParseOptions, parse_with, presets};
use common::*;
use http::Method;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

fn preset_doc(name: &str) -> (String, String) {
    let doc = parse_with(presets::get(name).unwrap(), &ParseOptions::default()).unwrap();
    (canonical_json(&doc), digest(&doc))
}

/// Runtime class, NetworkPolicy and Service: the requests every running reconcile starts with.
async fn expect_prelude(api: &mut ApiServer, rc: &str) {
    api.expect(Method::GET, &runtimeclass_path(rc))
        .await
        .reply(200, runtime_class(rc));
    api.expect_apply(&netpol_path()).await.echo();
    api.expect_apply(&service_path()).await.echo();
}

fn assert_owned(obj: &Value) {
    let owners = obj["metadata"]["ownerReferences"].as_array().unwrap();
    assert_eq!(
        owners,
        &vec![
            json!({"apiVersion": "agentcell.dev/v1alpha1", "kind": "AgentSandbox",
                     "name": NAME, "uid": UID, "controller": true})
        ]
    );
}

#[tokio::test]
async fn create_makes_pod_with_runtime_class_annotations_owner_service_and_networkpolicy() {
    let (ctx, mut api, _) = context(NOW);
    let asb = sandbox(spec_with(json!({"preset": "coding-agent"})));
    let (canonical, digest) = preset_doc("coding-agent");
    let action = run(asb, ctx, async {
        api.expect(Method::GET, &runtimeclass_path("agentcell"))
            .await
            .reply(200, runtime_class("agentcell"));

        let np = api.expect_apply(&netpol_path()).await;
        assert_eq!(np.body["apiVersion"], "networking.k8s.io/v1");
        assert_eq!(np.body["kind"], "NetworkPolicy");
        assert_owned(&np.body);
        let spec = &np.body["spec"];
        assert_eq!(spec["podSelector"]["matchLabels"]["agentcell.dev/sandbox"], NAME);
        assert_eq!(spec["policyTypes"], json!(["Ingress", "Egress"]));
        assert_eq!(spec["ingress"], json!([]));
        assert_eq!(
            spec["egress"][0],
            json!({"to": [{"ipBlock": {"cidr": "140.82.112.0/20"}}],
                   "ports": [{"protocol": "TCP", "port": 443}]})
        );
        assert_eq!(spec["egress"].as_array().unwrap().len(), 3);
        np.echo();

        let svc = api.expect_apply(&service_path()).await;
        assert_eq!(svc.body["kind"], "Service");
        assert_owned(&svc.body);
        assert_eq!(svc.body["spec"]["clusterIP"], "None");
        assert_eq!(
            svc.body["spec"]["selector"],
            json!({"agentcell.dev/sandbox": NAME})
        );
        svc.echo();

        api.expect(Method::GET, &pod_path()).await.not_found();
        let pod = api.expect_apply(&pod_path()).await;
        assert_eq!(pod.body["apiVersion"], "v1");
        assert_eq!(pod.body["kind"], "Pod");
        assert_owned(&pod.body);
        assert_eq!(pod.body["metadata"]["namespace"], NS);
        assert_eq!(pod.body["spec"]["runtimeClassName"], "agentcell");
        assert_eq!(pod.body["spec"]["containers"][0]["image"], "busybox");
        let ann = &pod.body["metadata"]["annotations"];
        assert_eq!(ann[ANN_POLICY], canonical.as_str());
        assert_eq!(ann[ANN_DIGEST], digest.as_str());
        assert_eq!(
            pod.body["metadata"]["labels"],
            json!({"agentcell.dev/sandbox": NAME, "app.kubernetes.io/managed-by": "agentcell-operator"})
        );
        let mut created = pod.body.clone();
        created["status"] = json!({"phase": "Pending"});
        pod.reply(201, created);

        let st = api.expect_status().await;
        assert_eq!(st["observedGeneration"], 1);
        assert_eq!(st["isolation"], "container");
        assert_eq!(st["podName"], NAME);
        assert_eq!(st["policyDigest"], digest.as_str());
        assert_eq!(st["policyShortDigest"], &digest[..19]);
        assert_eq!(st["serviceFQDN"], "agent-1.team-a.svc.cluster.local");
        assert_eq!(cond(&st, "PolicyValid").0, "True");
        assert_eq!(cond(&st, "RuntimeClassResolved").0, "True");
        assert_eq!(cond(&st, "UpToDate").0, "True");
        assert_eq!(cond(&st, "Suspended").0, "False");
        assert_eq!(cond(&st, "Expired").1, "NoLifetime");
        let ready = cond(&st, "Ready");
        assert_eq!((ready.0.as_str(), ready.1.as_str()), ("False", "PodPending"));
        assert_eq!(st["conditions"][0]["lastTransitionTime"], NOW);
        assert_eq!(st["conditions"][0]["observedGeneration"], 1);
    })
    .await
    .unwrap();
    assert_eq!(action, Action::requeue(RESYNC));
}

#[tokio::test]
async fn microvm_isolation_uses_its_runtime_class() {
    let (ctx, mut api, _) = context(NOW);
    let mut spec = spec_with(json!({"preset": "offline"}));
    spec["isolation"] = json!("microvm");
    spec["networkPolicy"] = json!(false);
    spec["service"] = json!({"enabled": false});
    run(sandbox(spec), ctx, async {
        api.expect(Method::GET, &runtimeclass_path("agentcell-vm"))
            .await
            .reply(200, runtime_class("agentcell-vm"));
        // Both switched off: a NetworkPolicy left from before is deleted, a Service someone
        // else made under that name is kept, and neither is applied.
        let np = existing_owned(&netpol_path(), "networking.k8s.io/v1", "NetworkPolicy", UID);
        api.expect(Method::GET, &netpol_path())
            .await
            .reply(200, np.clone());
        api.expect(Method::DELETE, &netpol_path())
            .await
            .reply(200, np);
        let foreign = existing_owned(&service_path(), "v1", "Service", "someone-else");
        api.expect(Method::GET, &service_path())
            .await
            .reply(200, foreign);
        api.expect(Method::GET, &pod_path()).await.not_found();
        let pod = api.expect_apply(&pod_path()).await;
        assert_eq!(pod.body["spec"]["runtimeClassName"], "agentcell-vm");
        pod.echo();
        let st = api.expect_status().await;
        assert_eq!(st["isolation"], "microvm");
        assert_eq!(st["serviceFQDN"], Value::Null);
    })
    .await
    .unwrap();
}

fn existing_owned(path: &str, api_version: &str, kind: &str, owner_uid: &str) -> Value {
    json!({"apiVersion": api_version, "kind": kind,
           "metadata": {"name": path.rsplit('/').next().unwrap(), "namespace": NS,
                        "ownerReferences": [{"apiVersion": "agentcell.dev/v1alpha1",
                            "kind": "AgentSandbox", "name": NAME, "uid": owner_uid,
                            "controller": true}]},
           "spec": {}})
}

/// A retired (0.8) policy: refused as such under MXC 1.0's verdicts, with the migration and the
/// compatibility flag named; accepted (and said so) with --mxc-release 0.8.
#[tokio::test]
async fn a_retired_policy_is_policy_valid_false_retired_version_unless_the_flag_is_set() {
    let retired =
        json!({"inline": {"version": "0.8.0-alpha", "network": {"defaultPolicy": "block"}}});
    let (ctx, mut api, _) = context(NOW);
    let asb = sandbox(spec_with(retired.clone()));
    let mut written = Value::Null;
    run(asb, ctx, async {
        let ev = api.expect_event("Warning", "RetiredVersion").await;
        assert!(
            ev["note"]
                .as_str()
                .unwrap()
                .contains("agentcell policy migrate"),
            "{ev}"
        );
        written = api.expect_status().await;
    })
    .await
    .unwrap();
    let (s, r, m) = cond(&written, "PolicyValid");
    assert_eq!((s.as_str(), r.as_str()), ("False", "RetiredVersion"));
    assert!(
        m.contains("\"0.8.0-alpha\" is a retired MXC contract version")
            && m.contains("0.9.0-alpha, 1.0.0 and 1.1.0-alpha")
            && m.contains("agentcell policy migrate")
            && m.contains("--mxc-release 0.8"),
        "{m}"
    );
    assert_eq!(written.get("podName"), None);

    let config = agentcell_operator::OperatorConfig {
        mxc_release: agentcell_policy::MxcRelease::V0_8,
        ..Default::default()
    };
    let (ctx, mut api, _) = common::context_with(NOW, config);
    let asb = sandbox(spec_with(retired));
    run(asb, ctx, async {
        expect_prelude(&mut api, "agentcell").await;
        api.expect(Method::GET, &pod_path()).await.not_found();
        let pod = api.expect_apply(&pod_path()).await;
        assert!(
            pod.body["metadata"]["annotations"][ANN_POLICY]
                .as_str()
                .unwrap()
                .contains("0.8.0-alpha")
        );
        pod.echo();
        let st = api.expect_status().await;
        let (s, _, m) = cond(&st, "PolicyValid");
        assert_eq!(s, "True");
        assert!(m.contains("with MXC 0.8 verdicts (retired document"), "{m}");
    })
    .await
    .unwrap();
}

fn invalid_inline() -> Value {
    json!({"inline": {"version": "1.0.0", "network": {"egress": {"allow": [
        {"to": [{"cidr": "10.0.0.0/16", "except": ["10.1.0.0/16"]}]}]}}}})
}

#[tokio::test]
async fn invalid_inline_policy_sets_policy_valid_false_with_the_path_and_a_warning_and_no_pod() {
    let (ctx, mut api, _) = context(NOW);
    let asb = sandbox(spec_with(invalid_inline()));
    let mut written = Value::Null;
    let action = run(asb.clone(), ctx.clone(), async {
        let ev = api.expect_event("Warning", "InvalidPolicy").await;
        assert_eq!(
            ev["note"],
            "spec.policy.inline: network.egress.allow[0].to[0].except[0]: 10.1.0.0/16 is not inside 10.0.0.0/16"
        );
        // Then the status; no Pod, Service, NetworkPolicy or RuntimeClass request.
        written = api.expect_status().await;
    })
    .await
    .unwrap();
    assert_eq!(action, Action::await_change());
    let (s, r, m) = cond(&written, "PolicyValid");
    assert_eq!((s.as_str(), r.as_str()), ("False", "InvalidPolicy"));
    assert!(m.contains("network.egress.allow[0].to[0].except[0]"), "{m}");
    assert_eq!(cond(&written, "Ready").1, "InvalidPolicy");
    assert_eq!(written.get("podName"), None);
    assert_eq!(written.get("policyDigest"), None);

    // The same sandbox seen again with that status: nothing new to say, so no request at all.
    let mut again = asb;
    again.status = Some(serde_json::from_value(written).unwrap());
    let action = run(again, ctx, async {}).await.unwrap();
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn user_supplied_agentcell_annotation_is_rejected() {
    let (ctx, mut api, _) = context(NOW);
    let mut spec = spec_with(json!({"preset": "offline"}));
    spec["podTemplate"]["metadata"] =
        json!({"annotations": {"agentcell.dev/policy-digest": "sha256:forged"}});
    run(sandbox(spec), ctx, async {
        let ev = api.expect_event("Warning", "ReservedAnnotation").await;
        assert!(
            ev["note"]
                .as_str()
                .unwrap()
                .contains("annotations[\"agentcell.dev/policy-digest\"]")
        );
        let st = api.expect_status().await;
        assert_eq!(cond(&st, "PolicyValid").1, "ReservedAnnotation");
        assert_eq!(cond(&st, "Ready").0, "False");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn conflicting_runtime_class_name_is_rejected() {
    let (ctx, mut api, _) = context(NOW);
    let mut spec = spec_with(json!({"preset": "offline"}));
    spec["podTemplate"]["spec"]["runtimeClassName"] = json!("runc");
    run(sandbox(spec), ctx, async {
        let ev = api.expect_event("Warning", "RuntimeClassConflict").await;
        assert_eq!(
            ev["note"],
            "spec.podTemplate.spec.runtimeClassName: runc disagrees with isolation container (runtime class agentcell)"
        );
        let st = api.expect_status().await;
        let (s, r, _) = cond(&st, "RuntimeClassResolved");
        assert_eq!((s.as_str(), r.as_str()), ("False", "RuntimeClassConflict"));
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn missing_runtime_class_sets_condition_and_makes_no_pod() {
    let (ctx, mut api, _) = context(NOW);
    let action = run(
        sandbox(spec_with(json!({"preset": "offline"}))),
        ctx,
        async {
            api.expect(Method::GET, &runtimeclass_path("agentcell"))
                .await
                .not_found();
            api.expect_event("Warning", "RuntimeClassNotFound").await;
            let st = api.expect_status().await;
            let (s, r, m) = cond(&st, "RuntimeClassResolved");
            assert_eq!((s.as_str(), r.as_str()), ("False", "RuntimeClassNotFound"));
            assert!(m.contains("runtime class agentcell"), "{m}");
            assert_eq!(cond(&st, "PolicyValid").0, "True");
        },
    )
    .await
    .unwrap();
    assert_eq!(action, Action::requeue(RETRY_MISSING));
}

fn configmap(policy: &str) -> ConfigMap {
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("agent-policy".into()),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "policy.json".to_owned(),
            policy.to_owned(),
        )])),
        ..Default::default()
    }
}

fn cm_spec(update: &str) -> Value {
    let mut spec =
        spec_with(json!({"configMapRef": {"name": "agent-policy", "key": "policy.json"}}));
    spec["updatePolicy"] = json!(update);
    spec
}

#[tokio::test]
async fn configmap_source_creates_pod_with_its_digest() {
    let (ctx, mut api, _) = context(NOW);
    let cm = configmap(presets::get("untrusted-code").unwrap());
    let (_, digest) = preset_doc("untrusted-code");
    run(sandbox(cm_spec("Never")), ctx, async {
        api.expect(Method::GET, &configmap_path("agent-policy"))
            .await
            .reply(200, serde_json::to_value(&cm).unwrap());
        expect_prelude(&mut api, "agentcell").await;
        api.expect(Method::GET, &pod_path()).await.not_found();
        let pod = api.expect_apply(&pod_path()).await;
        assert_eq!(
            pod.body["metadata"]["annotations"][ANN_DIGEST],
            digest.as_str()
        );
        pod.echo();
        assert_eq!(api.expect_status().await["policyDigest"], digest.as_str());
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn missing_configmap_is_reported_and_retried() {
    let (ctx, mut api, _) = context(NOW);
    let action = run(sandbox(cm_spec("Never")), ctx, async {
        api.expect(Method::GET, &configmap_path("agent-policy"))
            .await
            .not_found();
        api.expect_event("Warning", "ConfigMapNotFound").await;
        let st = api.expect_status().await;
        assert_eq!(cond(&st, "PolicyValid").1, "ConfigMapNotFound");
    })
    .await
    .unwrap();
    assert_eq!(action, Action::requeue(RETRY_MISSING));
}

#[tokio::test]
async fn configmap_change_with_update_policy_never_marks_up_to_date_false() {
    let (ctx, mut api, _) = context(NOW);
    let old = configmap(presets::get("untrusted-code").unwrap());
    let new = configmap(presets::get("offline").unwrap());
    let asb = sandbox(cm_spec("Never"));
    let pod = existing_pod(&asb, Some(&old), running_ready("10.0.0.9"));
    let (_, old_digest) = preset_doc("untrusted-code");
    let (_, new_digest) = preset_doc("offline");
    assert_ne!(old_digest, new_digest);
    run(asb, ctx, async {
        api.expect(Method::GET, &configmap_path("agent-policy"))
            .await
            .reply(200, serde_json::to_value(&new).unwrap());
        expect_prelude(&mut api, "agentcell").await;
        api.expect(Method::GET, &pod_path()).await.reply(200, pod);
        // No pod write or delete: straight to the status.
        let st = api.expect_status().await;
        let (s, r, m) = cond(&st, "UpToDate");
        assert_eq!((s.as_str(), r.as_str()), ("False", "PolicyChanged"));
        assert!(m.contains(&old_digest) && m.contains(&new_digest), "{m}");
        assert_eq!(st["policyDigest"], new_digest.as_str());
        assert_eq!(cond(&st, "Ready").0, "True", "the old pod still runs");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn configmap_change_with_update_policy_recreate_replaces_the_pod() {
    let (ctx, mut api, _) = context(NOW);
    let old = configmap(presets::get("untrusted-code").unwrap());
    let new = configmap(presets::get("offline").unwrap());
    let asb = sandbox(cm_spec("Recreate"));
    let pod = existing_pod(&asb, Some(&old), running_ready("10.0.0.9"));
    let (_, new_digest) = preset_doc("offline");
    run(asb.clone(), ctx.clone(), async {
        api.expect(Method::GET, &configmap_path("agent-policy"))
            .await
            .reply(200, serde_json::to_value(&new).unwrap());
        expect_prelude(&mut api, "agentcell").await;
        api.expect(Method::GET, &pod_path())
            .await
            .reply(200, pod.clone());
        let del = api.expect(Method::DELETE, &pod_path()).await;
        let mut deleting = pod.clone();
        deleting["metadata"]["deletionTimestamp"] = json!(NOW);
        del.reply(200, deleting);
        api.expect_event("Normal", "Recreating").await;
        let st = api.expect_status().await;
        assert_eq!(cond(&st, "UpToDate").1, "PolicyChanged");
        assert_eq!(cond(&st, "Ready").1, "Recreating");
        assert_eq!(st.get("podIP"), None);
    })
    .await
    .unwrap();

    // Once the old pod is gone, the next reconcile makes the new one with the new digest.
    run(asb, ctx, async {
        api.expect(Method::GET, &configmap_path("agent-policy"))
            .await
            .reply(200, serde_json::to_value(&new).unwrap());
        expect_prelude(&mut api, "agentcell").await;
        api.expect(Method::GET, &pod_path()).await.not_found();
        let p = api.expect_apply(&pod_path()).await;
        assert_eq!(
            p.body["metadata"]["annotations"][ANN_DIGEST],
            new_digest.as_str()
        );
        p.echo();
        api.expect_status().await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn suspend_deletes_the_pod_and_running_again_recreates_it() {
    let (ctx, mut api, _) = context(NOW);
    let mut spec = spec_with(json!({"preset": "offline"}));
    spec["operatingMode"] = json!("Suspended");
    let suspended = sandbox(spec.clone());
    let pod = existing_pod(&suspended, None, running_ready("10.0.0.9"));
    let mut status = Value::Null;
    run(suspended, ctx.clone(), async {
        expect_prelude(&mut api, "agentcell").await;
        api.expect(Method::GET, &pod_path())
            .await
            .reply(200, pod.clone());
        api.expect(Method::DELETE, &pod_path())
            .await
            .reply(200, pod.clone());
        status = api.expect_status().await;
    })
    .await
    .unwrap();
    let (s, r, _) = cond(&status, "Suspended");
    assert_eq!((s.as_str(), r.as_str()), ("True", "Suspended"));
    assert_eq!(cond(&status, "Ready").1, "Suspended");
    assert_eq!(status.get("podName"), None);
    assert_eq!(
        status["serviceFQDN"], "agent-1.team-a.svc.cluster.local",
        "the Service stays"
    );

    spec["operatingMode"] = json!("Running");
    let mut running = sandbox(spec);
    running.status = Some(serde_json::from_value(status).unwrap());
    run(running, ctx, async {
        expect_prelude(&mut api, "agentcell").await;
        api.expect(Method::GET, &pod_path()).await.not_found();
        let p = api.expect_apply(&pod_path()).await;
        assert_eq!(p.body["spec"]["runtimeClassName"], "agentcell");
        p.echo();
        let st = api.expect_status().await;
        assert_eq!(cond(&st, "Suspended").0, "False");
        assert_eq!(st["podName"], NAME);
    })
    .await
    .unwrap();
}

fn with_lifetime(lifetime: Value) -> Value {
    let mut spec = spec_with(json!({"preset": "offline"}));
    spec["lifetime"] = lifetime;
    spec
}

#[tokio::test]
async fn expiry_with_delete_deletes_the_sandbox() {
    let (ctx, mut api, _) = context(NOW);
    let asb = sandbox(with_lifetime(json!({"shutdownAfter": "5m"})));
    let action = run(asb, ctx, async {
        let ev = api.expect_event("Normal", "Expired").await;
        assert!(
            ev["note"]
                .as_str()
                .unwrap()
                .contains("lifetime ended at 2026-01-01T00:05:00Z")
        );
        let del = api.expect(Method::DELETE, &sandbox_path()).await;
        assert_eq!(del.body["propagationPolicy"], "Background");
        del.reply(
            200,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
        );
    })
    .await
    .unwrap();
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn expiry_with_retain_deletes_the_pod_and_keeps_the_sandbox() {
    let (ctx, mut api, _) = context(NOW);
    let asb = sandbox(with_lifetime(
        json!({"shutdownTime": "2026-01-01T00:09:59Z", "shutdownPolicy": "Retain"}),
    ));
    let pod = existing_pod(&asb, None, running_ready("10.0.0.9"));
    let action = run(asb, ctx, async {
        api.expect(Method::GET, &pod_path())
            .await
            .reply(200, pod.clone());
        api.expect(Method::DELETE, &pod_path())
            .await
            .reply(200, pod);
        api.expect_event("Normal", "Expired").await;
        let st = api.expect_status().await;
        let (s, r, _) = cond(&st, "Expired");
        assert_eq!((s.as_str(), r.as_str()), ("True", "LifetimeEnded"));
        assert_eq!(cond(&st, "Ready").1, "Expired");
        assert_eq!(st.get("podName"), None);
    })
    .await
    .unwrap();
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn a_sandbox_with_a_lifetime_is_requeued_at_its_deadline() {
    let (ctx, mut api, _) = context(NOW);
    let asb = sandbox(with_lifetime(json!({"shutdownAfter": "15m"})));
    let pod = existing_pod(&asb, None, running_ready("10.0.0.9"));
    let action = run(asb, ctx, async {
        expect_prelude(&mut api, "agentcell").await;
        api.expect(Method::GET, &pod_path()).await.reply(200, pod);
        let st = api.expect_status().await;
        assert_eq!(
            cond(&st, "Expired"),
            (
                "False".into(),
                "NotExpired".into(),
                "ends at 2026-01-01T00:15:00Z".into()
            )
        );
    })
    .await
    .unwrap();
    // Five minutes left: sooner than the resync.
    assert!(Duration::from_secs(5 * 60) < RESYNC);
    assert_eq!(action, Action::requeue(Duration::from_secs(5 * 60)));
}

#[tokio::test]
async fn running_and_ready_pod_makes_the_sandbox_ready_with_its_ip() {
    let (ctx, mut api, metrics) = context(NOW);
    let asb = sandbox(spec_with(json!({"preset": "coding-agent"})));
    let pod = existing_pod(&asb, None, running_ready("10.244.1.7"));
    run(asb, ctx, async {
        expect_prelude(&mut api, "agentcell").await;
        api.expect(Method::GET, &pod_path()).await.reply(200, pod);
        let st = api.expect_status().await;
        let (s, r, _) = cond(&st, "Ready");
        assert_eq!((s.as_str(), r.as_str()), ("True", "PodReady"));
        assert_eq!(st["podIP"], "10.244.1.7");
        assert_eq!(cond(&st, "UpToDate").0, "True");
    })
    .await
    .unwrap();
    // Created 10 minutes before it was first seen ready.
    let text = metrics.encode();
    assert!(
        text.contains("agentcell_operator_time_to_ready_seconds_sum 600.0"),
        "{text}"
    );
    assert!(text.contains("agentcell_operator_reconcile_duration_seconds_count 1"));
}

#[tokio::test]
async fn failed_pod_makes_the_sandbox_not_ready_with_the_reason() {
    let (ctx, mut api, _) = context(NOW);
    let asb = sandbox(spec_with(json!({"preset": "offline"})));
    let pod = existing_pod(
        &asb,
        None,
        json!({"phase": "Failed", "reason": "Evicted",
               "message": "The node was low on resource: memory.",
               "containerStatuses": [{"name": "agent", "image": "busybox", "imageID": "",
                   "ready": false, "restartCount": 0,
                   "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}),
    );
    run(asb, ctx, async {
        expect_prelude(&mut api, "agentcell").await;
        api.expect(Method::GET, &pod_path()).await.reply(200, pod);
        let st = api.expect_status().await;
        assert_eq!(
            cond(&st, "Ready"),
            (
                "False".into(),
                "PodFailed".into(),
                "Evicted; The node was low on resource: memory.; container agent terminated: OOMKilled (exit code 137)".into()
            )
        );
        assert_eq!(st.get("podIP"), None);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn template_change_with_never_is_reported() {
    let (ctx, mut api, _) = context(NOW);
    let asb = sandbox(spec_with(json!({"preset": "offline"})));
    let pod = existing_pod(&asb, None, running_ready("10.0.0.9"));
    let mut changed = asb.clone();
    changed.spec.pod_template.spec.as_mut().unwrap().containers[0].image = Some("alpine".into());
    run(changed, ctx, async {
        expect_prelude(&mut api, "agentcell").await;
        api.expect(Method::GET, &pod_path()).await.reply(200, pod);
        let st = api.expect_status().await;
        assert_eq!(cond(&st, "UpToDate").1, "TemplateChanged");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn api_errors_are_returned_for_retry() {
    let (ctx, mut api, _) = context(NOW);
    let res = run(
        sandbox(spec_with(json!({"preset": "offline"}))),
        ctx.clone(),
        async {
            api.expect(Method::GET, &runtimeclass_path("agentcell"))
                .await
                .reply(
                    500,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                           "message": "etcd unavailable", "reason": "InternalError", "code": 500}),
                );
        },
    )
    .await;
    let err = res.unwrap_err();
    assert!(
        err.to_string().starts_with("get runtimeclass agentcell: "),
        "{err}"
    );
    assert_eq!(err.kind(), "api");
}

#[test]
fn policy_annotation_round_trips_through_the_policy_engine() {
    // What the shim will do with the annotations: parse the canonical JSON and recompute the
    // digest.
    let src = serde_json::from_value(json!({"preset": "ml-toolchain"})).unwrap();
    let p = resolve_policy(&src, None).unwrap();
    let doc = parse_with(&p.canonical, &ParseOptions::default()).unwrap();
    assert_eq!(digest(&doc), p.digest);
}

#[tokio::test]
async fn a_foreign_pod_with_the_sandbox_name_is_left_alone() {
    let (ctx, mut api, _) = context(NOW);
    let asb = sandbox(spec_with(json!({"preset": "offline"})));
    let mut foreign = existing_pod(&asb, None, running_ready("10.0.0.9"));
    foreign["metadata"]["ownerReferences"][0]["uid"] = json!("someone-else");
    let action = run(asb, ctx, async {
        expect_prelude(&mut api, "agentcell").await;
        api.expect(Method::GET, &pod_path())
            .await
            .reply(200, foreign);
        // Neither deleted nor applied over: a Warning, then the status.
        api.expect_event("Warning", "PodNameTaken").await;
        let st = api.expect_status().await;
        assert_eq!(cond(&st, "Ready").1, "PodNameTaken");
        assert_eq!(st.get("podName"), None);
    })
    .await
    .unwrap();
    assert_eq!(action, Action::requeue(RETRY_MISSING));
}
