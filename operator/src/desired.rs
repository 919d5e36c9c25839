//! Pure desired state: an `AgentSandbox` (plus the ConfigMap its policy may name) becomes the
//! Pod, Service and NetworkPolicy the operator applies. No API calls here, so every rule is unit
//! tested without an API server.

use std::collections::BTreeMap;

use agentcell_policy::canonical::{canonical_json, digest_of};
use agentcell_policy::{Document, MxcRelease, ParseOptions, parse_with, presets};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodSpec, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::{Resource, ResourceExt};
use serde_json::Value;

use crate::config::OperatorConfig;
use crate::crd::{AgentSandbox, GROUP, PolicySource, ShutdownPolicy};
use crate::netpol;

/// The canonical policy (MXC document, canonical JSON) on the pod.
pub const ANN_POLICY: &str = "agentcell.dev/mxc-policy";
/// `sha256:…` of [`ANN_POLICY`]'s value; the shim recomputes and compares it.
pub const ANN_DIGEST: &str = "agentcell.dev/policy-digest";
/// Digest of the pod template the pod was made from, to detect template changes.
/// Not under `agentcell.dev/`: the shim refuses keys there it does not know, and containerd
/// passes `agentcell.dev/*` through to it.
pub const ANN_TEMPLATE: &str = "operator.agentcell.dev/template-digest";
/// Label on everything a sandbox owns, naming the sandbox (the Service and NetworkPolicy select
/// the pod by it).
pub const LABEL_SANDBOX: &str = "agentcell.dev/sandbox";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGER: &str = "agentcell-operator";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error(
        "spec.podTemplate.metadata.annotations[\"{key}\"]: the agentcell.dev/ prefix is reserved for the operator"
    )]
    ReservedAnnotation { key: String },
    #[error(
        "spec.podTemplate.spec.runtimeClassName: {requested} disagrees with isolation {isolation} (runtime class {expected})"
    )]
    RuntimeClassConflict {
        requested: String,
        isolation: String,
        expected: String,
    },
    #[error("spec.policy.{from}: {message}")]
    InvalidPolicy { from: &'static str, message: String },
    /// A retired (0.6-0.8) document under MXC 1.0's verdicts.
    #[error(
        "spec.policy.{from}: {message}; on a cluster that must keep it, run the operator with --mxc-release 0.8 (chart value mxcRelease: \"0.8\") and the nodes with mxc_release = \"0.8\""
    )]
    RetiredVersion { from: &'static str, message: String },
    #[error("spec.policy.configMapRef: configmap {name} not found")]
    ConfigMapNotFound { name: String },
    #[error("spec.policy.configMapRef.key: configmap {name} has no key {key}")]
    ConfigMapKeyMissing { name: String, key: String },
    #[error("spec.policy.preset: unknown preset {0}")]
    UnknownPreset(String),
    #[error("spec.policy: exactly one of inline, configMapRef, preset must be set")]
    NoPolicySource,
    #[error("spec.lifetime.{field}: {message}")]
    BadLifetime {
        field: &'static str,
        message: String,
    },
}

impl SpecError {
    /// The condition reason (CamelCase) this error is reported with.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ReservedAnnotation { .. } => "ReservedAnnotation",
            Self::RuntimeClassConflict { .. } => "RuntimeClassConflict",
            Self::InvalidPolicy { .. } => "InvalidPolicy",
            Self::RetiredVersion { .. } => "RetiredVersion",
            Self::ConfigMapNotFound { .. } => "ConfigMapNotFound",
            Self::ConfigMapKeyMissing { .. } => "ConfigMapKeyMissing",
            Self::UnknownPreset(_) => "UnknownPreset",
            Self::NoPolicySource => "NoPolicySource",
            Self::BadLifetime { .. } => "InvalidLifetime",
        }
    }
}

/// A validated policy as it goes on the pod.
#[derive(Debug, Clone)]
pub struct ResolvedPolicy {
    pub document: Document,
    pub canonical: String,
    pub digest: String,
}

impl ResolvedPolicy {
    /// `sha256:` and 12 hex digits: enough to tell policies apart in `kubectl get`.
    pub fn short_digest(&self) -> String {
        short_digest(&self.digest)
    }
}

pub fn short_digest(digest: &str) -> String {
    digest.chars().take("sha256:".len() + 12).collect()
}

/// Checks what the template may not say: `agentcell.dev/*` annotations (the operator is their
/// only writer, so the shim can trust them) and a runtime class other than the isolation tier's.
pub fn check_template(asb: &AgentSandbox, cfg: &OperatorConfig) -> Result<(), SpecError> {
    let tmpl = &asb.spec.pod_template;
    if let Some(ann) = tmpl.metadata.as_ref().and_then(|m| m.annotations.as_ref())
        && let Some(key) = ann.keys().find(|k| is_reserved(k))
    {
        return Err(SpecError::ReservedAnnotation { key: key.clone() });
    }
    let expected = cfg.runtime_class(asb.spec.isolation);
    if let Some(requested) = tmpl
        .spec
        .as_ref()
        .and_then(|s| s.runtime_class_name.as_ref())
        && requested != expected
    {
        return Err(SpecError::RuntimeClassConflict {
            requested: requested.clone(),
            isolation: asb.spec.isolation.as_str().into(),
            expected: expected.into(),
        });
    }
    Ok(())
}

fn is_reserved(key: &str) -> bool {
    key.split_once('/')
        .is_some_and(|(prefix, _)| prefix == GROUP || prefix.ends_with(".agentcell.dev"))
}

/// The ConfigMap a policy source needs, if any.
pub fn config_map_name(src: &PolicySource) -> Option<&str> {
    src.config_map_ref.as_ref().map(|r| r.name.as_str())
}

/// Reads and validates the policy with the policy engine, with MXC 1.0's verdicts.
/// `config_map` is the ConfigMap named by `configMapRef` (`None` when it does not exist).
pub fn resolve_policy(
    src: &PolicySource,
    config_map: Option<&ConfigMap>,
) -> Result<ResolvedPolicy, SpecError> {
    resolve_policy_with(src, config_map, MxcRelease::default())
}

/// [`resolve_policy`] with the verdicts of `release` (the operator's `--mxc-release`).
pub fn resolve_policy_with(
    src: &PolicySource,
    config_map: Option<&ConfigMap>,
    release: MxcRelease,
) -> Result<ResolvedPolicy, SpecError> {
    let count = [
        src.inline.is_some(),
        src.config_map_ref.is_some(),
        src.preset.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if count != 1 {
        return Err(SpecError::NoPolicySource);
    }
    let (from, text) = if let Some(v) = &src.inline {
        (
            "inline",
            serde_json::to_string(v).expect("json value serializes"),
        )
    } else if let Some(name) = &src.preset {
        let text = presets::get(name).ok_or_else(|| SpecError::UnknownPreset(name.clone()))?;
        ("preset", text.to_owned())
    } else {
        let r = src.config_map_ref.as_ref().expect("counted above");
        let cm = config_map.ok_or_else(|| SpecError::ConfigMapNotFound {
            name: r.name.clone(),
        })?;
        let text = cm
            .data
            .as_ref()
            .and_then(|d| d.get(&r.key))
            .ok_or_else(|| SpecError::ConfigMapKeyMissing {
                name: r.name.clone(),
                key: r.key.clone(),
            })?;
        ("configMapRef", text.clone())
    };
    // The command comes from the pod's image, never from the policy.
    let opts = ParseOptions {
        require_command: false,
        release,
        ..ParseOptions::default()
    };
    let document = parse_with(&text, &opts).map_err(|e| {
        let retired = !release.reads_retired()
            && serde_json::from_str::<Value>(&text).is_ok_and(|v| {
                v.is_object()
                    && agentcell_policy::version::check_registered(v.get("version"))
                        .is_err_and(|r| r.retired)
            });
        if retired {
            SpecError::RetiredVersion {
                from,
                message: e.to_string(),
            }
        } else {
            SpecError::InvalidPolicy {
                from,
                message: e.to_string(),
            }
        }
    })?;
    let canonical = canonical_json(&document);
    let digest = digest_of(&canonical);
    Ok(ResolvedPolicy {
        document,
        canonical,
        digest,
    })
}

pub fn owner_reference(asb: &AgentSandbox) -> OwnerReference {
    asb.controller_owner_ref(&())
        .expect("a sandbox read from the API server has a name and uid")
}

fn labels(asb: &AgentSandbox) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_SANDBOX.to_owned(), asb.name_any()),
        (LABEL_MANAGED_BY.to_owned(), MANAGER.to_owned()),
    ])
}

fn meta(asb: &AgentSandbox) -> ObjectMeta {
    ObjectMeta {
        name: Some(asb.name_any()),
        namespace: asb.namespace(),
        labels: Some(labels(asb)),
        owner_references: Some(vec![owner_reference(asb)]),
        ..ObjectMeta::default()
    }
}

/// Digest of the pod template as the user wrote it (key order does not matter: serde_json maps
/// are sorted).
pub fn template_digest(asb: &AgentSandbox) -> String {
    let v = serde_json::to_value(&asb.spec.pod_template).expect("template serializes");
    digest_of(&v.to_string())
}

/// The sandbox's pod: the template, plus runtime class, policy annotations, labels and owner.
pub fn pod(asb: &AgentSandbox, cfg: &OperatorConfig, policy: &ResolvedPolicy) -> Pod {
    let tmpl = &asb.spec.pod_template;
    let tmeta = tmpl.metadata.clone().unwrap_or_default();
    let mut m = meta(asb);
    let mut lbl = tmeta.labels.unwrap_or_default();
    lbl.extend(labels(asb));
    m.labels = Some(lbl);
    let mut ann = tmeta.annotations.unwrap_or_default();
    ann.insert(ANN_POLICY.into(), policy.canonical.clone());
    ann.insert(ANN_DIGEST.into(), policy.digest.clone());
    ann.insert(ANN_TEMPLATE.into(), template_digest(asb));
    m.annotations = Some(ann);
    let mut spec: PodSpec = tmpl.spec.clone().unwrap_or_default();
    spec.runtime_class_name = Some(cfg.runtime_class(asb.spec.isolation).to_owned());
    Pod {
        metadata: m,
        spec: Some(spec),
        status: None,
    }
}

/// The headless Service: stable DNS for the pod.
pub fn service(asb: &AgentSandbox) -> Service {
    let ports: Vec<ServicePort> = asb
        .spec
        .service
        .ports
        .iter()
        .map(|p| ServicePort {
            name: p.name.clone(),
            port: p.port,
            protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
            target_port: Some(IntOrString::Int(p.port)),
            ..ServicePort::default()
        })
        .collect();
    Service {
        metadata: meta(asb),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(BTreeMap::from([(LABEL_SANDBOX.to_owned(), asb.name_any())])),
            ports: (!ports.is_empty()).then_some(ports),
            publish_not_ready_addresses: Some(true),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

pub fn service_fqdn(asb: &AgentSandbox, cfg: &OperatorConfig) -> String {
    format!(
        "{}.{}.svc.{}",
        asb.name_any(),
        asb.namespace().unwrap_or_default(),
        cfg.cluster_domain
    )
}

/// The NetworkPolicy mirroring the policy (see [`netpol`] for what cannot be mirrored).
pub fn network_policy(asb: &AgentSandbox, policy: &ResolvedPolicy) -> NetworkPolicy {
    let (spec, _) = netpol::mirror(&policy.document, &asb.name_any());
    NetworkPolicy {
        metadata: meta(asb),
        spec: Some(spec),
    }
}

/// When the sandbox ends, and how, from `spec.lifetime` and its creation time.
pub fn deadline(asb: &AgentSandbox) -> Result<Option<(Timestamp, ShutdownPolicy)>, SpecError> {
    let Some(l) = &asb.spec.lifetime else {
        return Ok(None);
    };
    let at = match (&l.shutdown_after, &l.shutdown_time) {
        (Some(after), None) => {
            let d = parse_duration(after).map_err(|message| SpecError::BadLifetime {
                field: "shutdownAfter",
                message,
            })?;
            let created = asb
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0)
                .ok_or(SpecError::BadLifetime {
                    field: "shutdownAfter",
                    message: "the sandbox has no creationTimestamp yet".into(),
                })?;
            created.checked_add(d).map_err(|e| SpecError::BadLifetime {
                field: "shutdownAfter",
                message: e.to_string(),
            })?
        }
        (None, Some(time)) => time
            .parse::<Timestamp>()
            .map_err(|e| SpecError::BadLifetime {
                field: "shutdownTime",
                message: format!("not an RFC 3339 time: {e}"),
            })?,
        _ => {
            return Err(SpecError::BadLifetime {
                field: "shutdownAfter",
                message: "exactly one of shutdownAfter, shutdownTime must be set".into(),
            });
        }
    };
    Ok(Some((at, l.shutdown_policy)))
}

/// A Go-style duration as Kubernetes writes them (`90s`, `1.5h`, `2h45m`, `500ms`).
pub fn parse_duration(s: &str) -> Result<SignedDuration, String> {
    let bad = || format!("{s:?} is not a duration like 90s, 30m or 2h45m");
    let mut secs = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let value: f64 = rest[..n].parse().map_err(|_| bad())?;
        rest = &rest[n..];
        let (unit, len) = if rest.starts_with("ms") {
            (0.001, 2)
        } else if rest.starts_with('s') {
            (1.0, 1)
        } else if rest.starts_with('m') {
            (60.0, 1)
        } else if rest.starts_with('h') {
            (3600.0, 1)
        } else {
            return Err(bad());
        };
        secs += value * unit;
        rest = &rest[len..];
    }
    SignedDuration::try_from_secs_f64(secs).map_err(|_| bad())
}

/// Adds `apiVersion`/`kind` so the object can be sent as a server-side apply patch.
pub fn with_type_meta<K: Resource<DynamicType = ()> + serde::Serialize>(obj: &K) -> Value {
    let mut v = serde_json::to_value(obj).expect("object serializes");
    if let Value::Object(o) = &mut v {
        o.insert("apiVersion".into(), K::api_version(&()).into());
        o.insert("kind".into(), K::kind(&()).into());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{AgentSandboxSpec, ConfigMapPolicyRef, Isolation};
    use k8s_openapi::api::core::v1::{Container, PodTemplateSpec};
    use serde_json::json;

    pub(crate) fn sandbox(policy: PolicySource) -> AgentSandbox {
        let mut asb = AgentSandbox::new(
            "agent-1",
            AgentSandboxSpec {
                pod_template: PodTemplateSpec {
                    metadata: None,
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "agent".into(),
                            image: Some("busybox".into()),
                            ..Container::default()
                        }],
                        ..PodSpec::default()
                    }),
                },
                isolation: Isolation::Container,
                policy,
                operating_mode: Default::default(),
                lifetime: None,
                service: Default::default(),
                network_policy: true,
                update_policy: Default::default(),
            },
        );
        asb.metadata.namespace = Some("team-a".into());
        asb.metadata.uid = Some("uid-1".into());
        asb
    }

    fn preset(name: &str) -> PolicySource {
        PolicySource {
            preset: Some(name.into()),
            ..PolicySource::default()
        }
    }

    #[test]
    fn pod_carries_runtime_class_annotations_and_owner() {
        let asb = sandbox(preset("coding-agent"));
        let cfg = OperatorConfig::default();
        let pol = resolve_policy(&asb.spec.policy, None).unwrap();
        let pod = pod(&asb, &cfg, &pol);
        assert_eq!(
            pod.spec.as_ref().unwrap().runtime_class_name.as_deref(),
            Some("agentcell")
        );
        let ann = pod.metadata.annotations.as_ref().unwrap();
        assert_eq!(ann[ANN_POLICY], pol.canonical);
        assert!(ann[ANN_DIGEST].starts_with("sha256:"));
        let doc = agentcell_policy::parse_with(&ann[ANN_POLICY], &ParseOptions::default()).unwrap();
        assert_eq!(agentcell_policy::canonical::digest(&doc), ann[ANN_DIGEST]);
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (
                owner.kind.as_str(),
                owner.name.as_str(),
                owner.uid.as_str(),
                owner.controller
            ),
            ("AgentSandbox", "agent-1", "uid-1", Some(true))
        );
        assert_eq!(
            pod.metadata.labels.as_ref().unwrap()[LABEL_SANDBOX],
            "agent-1"
        );
    }

    #[test]
    fn microvm_maps_to_its_runtime_class() {
        let mut asb = sandbox(preset("offline"));
        asb.spec.isolation = Isolation::Microvm;
        let cfg = OperatorConfig::default();
        let pol = resolve_policy(&asb.spec.policy, None).unwrap();
        assert_eq!(
            pod(&asb, &cfg, &pol)
                .spec
                .unwrap()
                .runtime_class_name
                .as_deref(),
            Some("agentcell-vm")
        );
    }

    #[test]
    fn reserved_annotations_and_conflicting_runtime_class_are_rejected() {
        let cfg = OperatorConfig::default();
        let mut asb = sandbox(preset("offline"));
        asb.spec.pod_template.metadata = Some(ObjectMeta {
            annotations: Some(BTreeMap::from([
                ("example.com/ok".to_owned(), "1".to_owned()),
                (
                    "agentcell.dev/policy-digest".to_owned(),
                    "sha256:0".to_owned(),
                ),
            ])),
            ..ObjectMeta::default()
        });
        let e = check_template(&asb, &cfg).unwrap_err();
        assert_eq!(e.reason(), "ReservedAnnotation");
        assert!(e.to_string().contains("agentcell.dev/policy-digest"), "{e}");

        let mut asb = sandbox(preset("offline"));
        asb.spec
            .pod_template
            .spec
            .as_mut()
            .unwrap()
            .runtime_class_name = Some("runc".into());
        let e = check_template(&asb, &cfg).unwrap_err();
        assert_eq!(e.reason(), "RuntimeClassConflict");
        asb.spec
            .pod_template
            .spec
            .as_mut()
            .unwrap()
            .runtime_class_name = Some("agentcell".into());
        check_template(&asb, &cfg).unwrap();
    }

    #[test]
    fn a_retired_policy_is_refused_as_retired_unless_the_operator_reads_mxc_0_8() {
        let src = PolicySource {
            inline: Some(
                json!({"version": "0.8.0-alpha", "filesystem": {"readwritePaths": ["/w"]}}),
            ),
            ..PolicySource::default()
        };
        let e = resolve_policy(&src, None).unwrap_err();
        assert_eq!(e.reason(), "RetiredVersion");
        let m = e.to_string();
        assert!(
            m.contains("0.8.0-alpha")
                && m.contains("1.0.0")
                && m.contains("agentcell policy migrate")
                && m.contains("--mxc-release 0.8"),
            "{m}"
        );
        let p = resolve_policy_with(&src, None, MxcRelease::V0_8).unwrap();
        assert_eq!(p.document.release, MxcRelease::V0_8);
        assert_eq!(p.document.version.to_string(), "0.8.0-alpha");
        // A current document that is wrong is an invalid policy, whatever the release.
        let bad = PolicySource {
            inline: Some(json!({"version": "1.0.0", "network": {"defaultPolicy": "block"}})),
            ..PolicySource::default()
        };
        for r in MxcRelease::ALL {
            assert_eq!(
                resolve_policy_with(&bad, None, r).unwrap_err().reason(),
                "InvalidPolicy"
            );
        }
    }

    #[test]
    fn invalid_inline_policy_names_the_json_path() {
        let src = PolicySource {
            inline: Some(json!({"version": "1.0.0", "network": {"egress": {"allow": [
                {"to": [{"cidr": "10.0.0.0/16", "except": ["10.1.0.0/16"]}]}]}}})),
            ..PolicySource::default()
        };
        let e = resolve_policy(&src, None).unwrap_err();
        assert_eq!(e.reason(), "InvalidPolicy");
        assert!(
            e.to_string()
                .contains("spec.policy.inline: network.egress.allow[0].to[0].except[0]"),
            "{e}"
        );
    }

    #[test]
    fn config_map_source_and_its_errors() {
        let src = PolicySource {
            config_map_ref: Some(ConfigMapPolicyRef {
                name: "pol".into(),
                key: "policy.json".into(),
            }),
            ..PolicySource::default()
        };
        assert_eq!(
            resolve_policy(&src, None).unwrap_err().reason(),
            "ConfigMapNotFound"
        );
        let mut cm = ConfigMap::default();
        assert_eq!(
            resolve_policy(&src, Some(&cm)).unwrap_err().reason(),
            "ConfigMapKeyMissing"
        );
        cm.data = Some(BTreeMap::from([(
            "policy.json".to_owned(),
            presets::get("offline").unwrap().to_owned(),
        )]));
        let from_cm = resolve_policy(&src, Some(&cm)).unwrap();
        let from_preset = resolve_policy(&preset("offline"), None).unwrap();
        assert_eq!(from_cm.digest, from_preset.digest);
    }

    #[test]
    fn zero_or_two_sources_are_rejected() {
        assert_eq!(
            resolve_policy(&PolicySource::default(), None)
                .unwrap_err()
                .reason(),
            "NoPolicySource"
        );
        let mut two = preset("offline");
        two.inline = Some(json!({}));
        assert_eq!(
            resolve_policy(&two, None).unwrap_err().reason(),
            "NoPolicySource"
        );
    }

    #[test]
    fn service_is_headless_and_selects_the_pod() {
        let mut asb = sandbox(preset("offline"));
        asb.spec.service.ports = vec![crate::crd::SandboxPort {
            name: Some("http".into()),
            port: 8080,
            protocol: None,
        }];
        let svc = service(&asb);
        let spec = svc.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.selector.unwrap()[LABEL_SANDBOX], "agent-1");
        assert_eq!(spec.ports.unwrap()[0].port, 8080);
        assert_eq!(
            service_fqdn(&asb, &OperatorConfig::default()),
            "agent-1.team-a.svc.cluster.local"
        );
    }

    #[test]
    fn durations_and_deadlines() {
        assert_eq!(
            parse_duration("90s").unwrap(),
            SignedDuration::from_secs(90)
        );
        assert_eq!(
            parse_duration("2h45m").unwrap(),
            SignedDuration::from_secs(9900)
        );
        assert_eq!(
            parse_duration("1.5h").unwrap(),
            SignedDuration::from_secs(5400)
        );
        assert_eq!(
            parse_duration("250ms").unwrap(),
            SignedDuration::from_millis(250)
        );
        for bad in ["", "5", "5d", "h", "1h-5m"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        let mut asb = sandbox(preset("offline"));
        assert_eq!(deadline(&asb).unwrap(), None);
        asb.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-01-01T00:00:00Z".parse().unwrap(),
            ));
        asb.spec.lifetime = Some(crate::crd::Lifetime {
            shutdown_after: Some("1h".into()),
            shutdown_time: None,
            shutdown_policy: ShutdownPolicy::Retain,
        });
        assert_eq!(
            deadline(&asb).unwrap(),
            Some((
                "2026-01-01T01:00:00Z".parse().unwrap(),
                ShutdownPolicy::Retain
            ))
        );
        asb.spec.lifetime = Some(crate::crd::Lifetime {
            shutdown_after: None,
            shutdown_time: Some("2026-02-01T00:00:00Z".into()),
            shutdown_policy: ShutdownPolicy::Delete,
        });
        assert_eq!(
            deadline(&asb).unwrap(),
            Some((
                "2026-02-01T00:00:00Z".parse().unwrap(),
                ShutdownPolicy::Delete
            ))
        );
        asb.spec.lifetime.as_mut().unwrap().shutdown_time = Some("tomorrow".into());
        assert_eq!(deadline(&asb).unwrap_err().reason(), "InvalidLifetime");
    }

    #[test]
    fn template_digest_follows_the_template() {
        let a = sandbox(preset("offline"));
        let mut b = a.clone();
        assert_eq!(template_digest(&a), template_digest(&b));
        b.spec.pod_template.spec.as_mut().unwrap().containers[0].image = Some("alpine".into());
        assert_ne!(template_digest(&a), template_digest(&b));
    }
}
