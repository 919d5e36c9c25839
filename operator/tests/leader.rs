//! Leader election through kube-lease-manager against a fake Lease API on kube's mock client: a
//! free lease is taken with the operator's field manager; a lease another live replica holds is
//! not.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentcell_operator::leader::{LeaderConfig, manager};
use common::*;
use http::{Method, Request, Response};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

const LEASE: &str =
    "/apis/coordination.k8s.io/v1/namespaces/agentcell-system/leases/agentcell-operator";

fn merge(into: &mut Value, patch: &Value) {
    match (into, patch) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b.clone(),
    }
}

type Shared<T> = Arc<Mutex<T>>;

/// Serves one Lease: GET, POST (create) and PATCH (merged), recording every request.
fn fake_lease_api(initial: Option<Value>) -> (Client, Shared<Option<Value>>, Shared<Vec<String>>) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let lease = Arc::new(Mutex::new(initial));
    let log = Arc::new(Mutex::new(Vec::new()));
    let (l, g) = (lease.clone(), log.clone());
    tokio::spawn(async move {
        let mut api = ApiServer(handle);
        loop {
            let c = api.next_or_none().await;
            let Some(c) = c else { return };
            g.lock()
                .unwrap()
                .push(format!("{} {}?{}", c.method, c.path, c.query));
            let mut cur = l.lock().unwrap().clone();
            match c.method {
                Method::GET if c.path == LEASE => match cur {
                    Some(v) => c.reply(200, v),
                    None => c.not_found(),
                },
                Method::POST => {
                    let mut v = c.body.clone();
                    v["metadata"]["resourceVersion"] = json!("1");
                    *l.lock().unwrap() = Some(v.clone());
                    c.reply(201, v);
                }
                Method::PATCH if c.path == LEASE => {
                    let v = cur.as_mut().expect("lease exists before a patch");
                    merge(&mut v["spec"], &c.body["spec"]);
                    *l.lock().unwrap() = Some(v.clone());
                    c.reply(200, v.clone());
                }
                _ => panic!("unexpected lease request {} {}", c.method, c.path),
            }
        }
    });
    (Client::new(svc, "default"), lease, log)
}

fn cfg(identity: &str) -> LeaderConfig {
    LeaderConfig {
        lease_name: "agentcell-operator".into(),
        namespace: "agentcell-system".into(),
        identity: identity.into(),
        lease_seconds: 15,
        grace_seconds: 5,
    }
}

#[tokio::test]
async fn a_free_lease_is_taken_with_the_operators_field_manager() {
    let (client, lease, log) = fake_lease_api(None);
    let m = manager(client, &cfg("replica-a")).await.unwrap();
    let leader = tokio::time::timeout(Duration::from_secs(10), m.changed())
        .await
        .expect("lease taken in time")
        .unwrap();
    assert!(leader);
    let l = lease.lock().unwrap().clone().unwrap();
    assert_eq!(l["spec"]["holderIdentity"], "replica-a");
    assert_eq!(l["spec"]["leaseDurationSeconds"], 15);
    let log = log.lock().unwrap().clone();
    assert!(log[0].starts_with(&format!("GET {LEASE}")), "{log:?}");
    assert!(
        log.iter().any(|r| r.starts_with(&format!("PATCH {LEASE}?"))
            && r.contains("fieldManager=agentcell-operator")),
        "{log:?}"
    );
}

#[tokio::test]
async fn a_lease_held_by_a_live_replica_is_not_taken() {
    let now = Timestamp::now().to_string();
    let held = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "agentcell-operator", "namespace": "agentcell-system",
                     "resourceVersion": "7"},
        "spec": {"holderIdentity": "replica-b", "leaseDurationSeconds": 15,
                 "acquireTime": now, "renewTime": now}});
    let (client, lease, _) = fake_lease_api(Some(held));
    let m = manager(client, &cfg("replica-a")).await.unwrap();
    let r = tokio::time::timeout(Duration::from_millis(1500), m.changed()).await;
    assert!(r.is_err(), "replica-a became leader: {r:?}");
    assert_eq!(
        lease.lock().unwrap().as_ref().unwrap()["spec"]["holderIdentity"],
        "replica-b"
    );
}
