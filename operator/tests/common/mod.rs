//! kube's mock API pattern (tower-test): the client sends each request to a handle the test
//! holds; the test asserts the request (method, path, query, body) and serves the response.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use agentcell_operator::metrics::Metrics;
use agentcell_operator::reconcile::Clock;
use agentcell_operator::{AgentSandbox, Context, OperatorConfig};
use http::{Method, Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock::{Handle, SendResponse};

pub const NS: &str = "team-a";
pub const NAME: &str = "agent-1";
pub const UID: &str = "uid-1";
pub const CREATED: &str = "2026-01-01T00:00:00Z";
/// Ten minutes after creation.
pub const NOW: &str = "2026-01-01T00:10:00Z";
/// Query of every server-side apply the operator sends.
pub const APPLY: &str = "&force=true&fieldManager=agentcell-operator";

pub struct ApiServer(pub Handle<Request<Body>, Response<Body>>);

/// One request the operator sent, waiting for its response.
pub struct Call {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub content_type: Option<String>,
    pub body: Value,
    send: SendResponse<Response<Body>>,
}

impl Call {
    pub fn reply(self, status: u16, body: Value) {
        self.send.send_response(
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap(),
        );
    }

    /// Replies 200 with the request's own body (what an apply of a new object returns).
    pub fn echo(self) {
        let body = self.body.clone();
        self.reply(200, body);
    }

    pub fn not_found(self) {
        let name = self.path.rsplit('/').next().unwrap_or_default().to_owned();
        self.reply(
            404,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                   "message": format!("{name} not found"), "reason": "NotFound", "code": 404}),
        );
    }

    /// Leaves the request unanswered for good (a watch that stays open).
    pub fn hold(self) -> SendResponse<Response<Body>> {
        self.send
    }
}

impl ApiServer {
    pub async fn next(&mut self) -> Call {
        tokio::time::timeout(Duration::from_secs(10), self.next_or_none())
            .await
            .expect("the operator sent no further request within 10 s")
            .expect("the client is gone")
    }

    /// The next request, or `None` once the client is gone.
    pub async fn next_or_none(&mut self) -> Option<Call> {
        let (req, send) = self.0.next_request().await?;
        let (parts, body) = req.into_parts();
        let bytes = body.collect_bytes().await.unwrap();
        Some(Call {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().unwrap_or_default().to_owned(),
            content_type: parts
                .headers
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned()),
            body: if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).expect("request bodies are JSON")
            },
            send,
        })
    }

    /// The next request must be `method path`.
    pub async fn expect(&mut self, method: Method, path: &str) -> Call {
        let c = self.next().await;
        assert_eq!(
            (&c.method, c.path.as_str()),
            (&method, path),
            "unexpected request (query {:?}, body {})",
            c.query,
            c.body
        );
        c
    }

    /// The next request must be a server-side apply of `path` by the operator.
    pub async fn expect_apply(&mut self, path: &str) -> Call {
        let c = self.expect(Method::PATCH, path).await;
        assert_eq!(c.query, APPLY, "apply of {path}");
        assert_eq!(
            c.content_type.as_deref(),
            Some("application/apply-patch+yaml")
        );
        c
    }

    /// A Warning or Normal event about the sandbox; returns the event body.
    pub async fn expect_event(&mut self, type_: &str, reason: &str) -> Value {
        let c = self
            .expect(
                Method::POST,
                &format!("/apis/events.k8s.io/v1/namespaces/{NS}/events"),
            )
            .await;
        let ev = c.body.clone();
        assert_eq!(ev["type"], type_, "{ev}");
        assert_eq!(ev["reason"], reason, "{ev}");
        assert_eq!(ev["regarding"]["kind"], "AgentSandbox");
        assert_eq!(ev["regarding"]["name"], NAME);
        assert_eq!(ev["reportingController"], "agentcell-operator");
        c.echo();
        ev
    }

    /// The status apply; returns the status written.
    pub async fn expect_status(&mut self) -> Value {
        let c = self.expect_apply(&status_path()).await;
        assert_eq!(c.body["apiVersion"], "agentcell.dev/v1alpha1");
        assert_eq!(c.body["kind"], "AgentSandbox");
        let status = c.body["status"].clone();
        // The API server answers with the whole object.
        let mut whole =
            serde_json::to_value(sandbox(spec_with(json!({"preset": "offline"})))).unwrap();
        whole["status"] = status.clone();
        c.reply(200, whole);
        status
    }
}

pub fn pod_path() -> String {
    format!("/api/v1/namespaces/{NS}/pods/{NAME}")
}
pub fn service_path() -> String {
    format!("/api/v1/namespaces/{NS}/services/{NAME}")
}
pub fn netpol_path() -> String {
    format!("/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies/{NAME}")
}
pub fn sandbox_path() -> String {
    format!("/apis/agentcell.dev/v1alpha1/namespaces/{NS}/agentsandboxes/{NAME}")
}
pub fn status_path() -> String {
    format!("{}/status", sandbox_path())
}
pub fn configmap_path(name: &str) -> String {
    format!("/api/v1/namespaces/{NS}/configmaps/{name}")
}
pub fn runtimeclass_path(name: &str) -> String {
    format!("/apis/node.k8s.io/v1/runtimeclasses/{name}")
}

pub fn runtime_class(name: &str) -> Value {
    json!({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
           "metadata": {"name": name}, "handler": name})
}

pub fn context(now: &str) -> (Arc<Context>, ApiServer, Arc<Metrics>) {
    context_with(now, OperatorConfig::default())
}

pub fn context_with(now: &str, config: OperatorConfig) -> (Arc<Context>, ApiServer, Arc<Metrics>) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let metrics = Arc::new(Metrics::new());
    let ctx = Context::new(client, config, metrics.clone())
        .with_clock(Clock::Fixed(now.parse().unwrap()));
    (Arc::new(ctx), ApiServer(handle), metrics)
}

/// A sandbox as the API server would hand it out, with `spec` as given.
pub fn sandbox(spec: Value) -> AgentSandbox {
    serde_json::from_value(json!({
        "apiVersion": "agentcell.dev/v1alpha1",
        "kind": "AgentSandbox",
        "metadata": {"name": NAME, "namespace": NS, "uid": UID, "generation": 1,
                     "resourceVersion": "100", "creationTimestamp": CREATED},
        "spec": spec,
    }))
    .unwrap()
}

/// A minimal spec around a policy source.
pub fn spec_with(policy: Value) -> Value {
    json!({
        "podTemplate": {"spec": {"containers": [{"name": "agent", "image": "busybox"}]}},
        "policy": policy,
    })
}

/// Runs one reconcile against the scenario; both must finish (an unexpected request leaves the
/// reconcile waiting and the scenario times out).
pub async fn run<F>(
    asb: AgentSandbox,
    ctx: Arc<Context>,
    scenario: F,
) -> Result<kube::runtime::controller::Action, agentcell_operator::reconcile::Error>
where
    F: std::future::Future<Output = ()>,
{
    let (res, ()) = tokio::time::timeout(
        Duration::from_secs(20),
        futures::future::join(
            agentcell_operator::reconcile::reconcile(Arc::new(asb), ctx),
            scenario,
        ),
    )
    .await
    .expect("reconcile and scenario finish");
    res
}

/// The pod an earlier reconcile made for `asb` (with `config_map` as its policy source, if any),
/// as the API server returns it, with `status`.
pub fn existing_pod(
    asb: &AgentSandbox,
    config_map: Option<&k8s_openapi::api::core::v1::ConfigMap>,
    status: Value,
) -> Value {
    use agentcell_operator::desired;
    let policy = desired::resolve_policy(&asb.spec.policy, config_map).unwrap();
    let pod = desired::pod(asb, &OperatorConfig::default(), &policy);
    let mut v = serde_json::to_value(pod).unwrap();
    v["apiVersion"] = json!("v1");
    v["kind"] = json!("Pod");
    v["metadata"]["uid"] = json!("pod-uid-1");
    v["metadata"]["resourceVersion"] = json!("200");
    v["status"] = status;
    v
}

pub fn running_ready(ip: &str) -> Value {
    json!({"phase": "Running", "podIP": ip,
           "conditions": [{"type": "Ready", "status": "True"}]})
}

/// The condition `type_` of a status, as `(status, reason, message)`.
pub fn cond(status: &Value, type_: &str) -> (String, String, String) {
    let c = status["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no condition {type_} in {status}"));
    (
        c["status"].as_str().unwrap().to_owned(),
        c["reason"].as_str().unwrap().to_owned(),
        c["message"].as_str().unwrap().to_owned(),
    )
}
