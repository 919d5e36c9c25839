//! The pod's policy, from its annotations: which document applies to a container, the tamper
//! check, and the refusals (unknown `agentcell.dev/` keys, a per-container override that would
//! change the pod's network). Pure: unit-tested without containerd.

use std::collections::BTreeMap;

use agentcell_policy::{Document, MxcRelease, ParseOptions, PolicyError, canonical};

/// The MXC document of every container of the pod (a SandboxPolicy or a ContainerConfig).
pub const POLICY: &str = "agentcell.dev/mxc-policy";
/// `agentcell.dev/mxc-policy.<container-name>`: one container's document.
pub const POLICY_FOR: &str = "agentcell.dev/mxc-policy.";
/// sha256 of the pod policy's canonical JSON; when present it must match (tamper check).
pub const DIGEST: &str = "agentcell.dev/policy-digest";
/// `"true"`: accept a partial enforcement (only where the node allows best effort).
pub const BEST_EFFORT: &str = "agentcell.dev/best-effort";
/// `"true"`: keep CAP_NET_RAW (only where the node allows it). containerd gives every container
/// CAP_NET_RAW by default, so the capability list cannot say whether a pod asked for it: this
/// annotation is how it asks. Without it confined containers lose CAP_NET_RAW (ping still works
/// through unprivileged ICMP sockets).
pub const NET_RAW: &str = "agentcell.dev/net-raw";
pub const PREFIX: &str = "agentcell.dev/";

/// What containerd's CRI plugin puts on every container it creates.
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
pub const CRI_CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AnnotationError {
    #[error(
        "annotation {key}: unknown key under {PREFIX} (known: {POLICY}, {POLICY_FOR}<container>, {DIGEST}, {BEST_EFFORT}, {NET_RAW})"
    )]
    UnknownKey { key: String },
    #[error("annotation {key}: {}", render(.error))]
    Invalid { key: String, error: PolicyError },
    #[error(
        "annotation {DIGEST}: {expected} is not the digest of the policy in {POLICY} ({actual}): refusing a policy that changed after it was signed off"
    )]
    DigestMismatch { expected: String, actual: String },
    #[error("annotation {DIGEST}: present, but the pod has no {POLICY} to check it against")]
    DigestWithoutPolicy,
    #[error(
        "annotation {key}: a per-container policy may not change the network policy (the pod's containers share one network namespace); move the network part to {POLICY}"
    )]
    NetworkOverride { key: String },
    #[error("annotation {key}: {value:?} is neither \"true\" nor \"false\"")]
    NotABool { key: String, value: String },
    #[error(
        "annotation {BEST_EFFORT}: this node does not allow best effort (allow_best_effort in {config})"
    )]
    BestEffortRefused { config: String },
    #[error(
        "annotation {NET_RAW}: this node does not allow CAP_NET_RAW in confined containers (allow_net_raw in {config})"
    )]
    NetRawRefused { config: String },
    #[error(
        "no policy: the pod has no annotation {POLICY} and this node has no default_policy (in {config})"
    )]
    Missing { config: String },
    #[error("default_policy in {config}: {message}")]
    Default { config: String, message: String },
}

fn render(e: &PolicyError) -> String {
    e.violations()
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A parsed document and where it came from.
#[derive(Debug, Clone)]
pub struct Sourced {
    /// The annotation key, or `default_policy (<config path>)`.
    pub origin: String,
    pub document: Document,
    pub digest: String,
}

/// The documents that apply to one container.
#[derive(Debug, Clone)]
pub struct Selection {
    /// The pod's document: its network part governs the pod's network namespace.
    pub pod: Sourced,
    /// The container's own document when `agentcell.dev/mxc-policy.<name>` is set.
    pub container: Option<Sourced>,
    pub best_effort: bool,
    /// Whether the containers keep CAP_NET_RAW: asked for ([`NET_RAW`]) and allowed by the node.
    pub net_raw: bool,
}

impl Selection {
    /// The document the container's filesystem, process and seccomp come from.
    pub fn effective(&self) -> &Sourced {
        self.container.as_ref().unwrap_or(&self.pod)
    }
}

/// The node's side of the decision (from `shim.toml`).
#[derive(Debug, Clone, Default)]
pub struct NodeDefaults {
    /// The default policy's text, for pods without one.
    pub default_policy: Option<String>,
    pub allow_best_effort: bool,
    /// Honour [`NET_RAW`] (`allow_net_raw` in `shim.toml`).
    pub allow_net_raw: bool,
    /// Whose verdicts apply (`mxc_release` in `shim.toml`).
    pub mxc_release: MxcRelease,
    /// The configuration file, named in errors.
    pub config_path: String,
}

fn parse(origin: &str, text: &str, node: &NodeDefaults) -> Result<Sourced, AnnotationError> {
    let opts = ParseOptions {
        // The image and the pod spec decide what runs.
        require_command: false,
        release: node.mxc_release,
        ..ParseOptions::default()
    };
    let document =
        agentcell_policy::parse_with(text, &opts).map_err(|error| AnnotationError::Invalid {
            key: origin.to_string(),
            error,
        })?;
    let digest = canonical::digest(&document);
    Ok(Sourced {
        origin: origin.to_string(),
        document,
        digest,
    })
}

/// Picks and parses the documents for the container named `container` (none for containers that
/// did not come from CRI) from the annotations of its OCI spec.
pub fn select(
    annotations: &BTreeMap<String, String>,
    container: Option<&str>,
    node: &NodeDefaults,
) -> Result<Selection, AnnotationError> {
    for key in annotations.keys().filter(|k| k.starts_with(PREFIX)) {
        let known = key == POLICY
            || key == DIGEST
            || key == BEST_EFFORT
            || key == NET_RAW
            || key
                .strip_prefix(POLICY_FOR)
                .is_some_and(|name| !name.is_empty());
        if !known {
            return Err(AnnotationError::UnknownKey { key: key.clone() });
        }
    }
    let pod = match annotations.get(POLICY) {
        Some(text) => {
            let pod = parse(POLICY, text, node)?;
            if let Some(expected) = annotations.get(DIGEST)
                && *expected != pod.digest
            {
                return Err(AnnotationError::DigestMismatch {
                    expected: expected.clone(),
                    actual: pod.digest,
                });
            }
            pod
        }
        None if annotations.contains_key(DIGEST) => {
            return Err(AnnotationError::DigestWithoutPolicy);
        }
        None => {
            let text = node
                .default_policy
                .as_deref()
                .ok_or_else(|| AnnotationError::Missing {
                    config: node.config_path.clone(),
                })?;
            parse(
                &format!("default_policy ({})", node.config_path),
                text,
                node,
            )?
        }
    };
    let container = match container {
        Some(name) => {
            let key = format!("{POLICY_FOR}{name}");
            match annotations.get(&key) {
                Some(text) => {
                    let own = parse(&key, text, node)?;
                    if !same_network(&own.document, &pod.document) {
                        return Err(AnnotationError::NetworkOverride { key });
                    }
                    Some(own)
                }
                None => None,
            }
        }
        None => None,
    };
    let best_effort = match annotations.get(BEST_EFFORT).map(String::as_str) {
        None | Some("false") => false,
        Some("true") if node.allow_best_effort => true,
        Some("true") => {
            return Err(AnnotationError::BestEffortRefused {
                config: node.config_path.clone(),
            });
        }
        Some(other) => {
            return Err(AnnotationError::NotABool {
                key: BEST_EFFORT.into(),
                value: other.into(),
            });
        }
    };
    let net_raw = match annotations.get(NET_RAW).map(String::as_str) {
        None | Some("false") => false,
        Some("true") if node.allow_net_raw => true,
        Some("true") => {
            return Err(AnnotationError::NetRawRefused {
                config: node.config_path.clone(),
            });
        }
        Some(other) => {
            return Err(AnnotationError::NotABool {
                key: NET_RAW.into(),
                value: other.into(),
            });
        }
    };
    Ok(Selection {
        pod,
        container,
        best_effort,
        net_raw,
    })
}

/// Two documents mean the same network policy: the same parsed network specification (the
/// legacy and directional forms are kept apart: a change of form is a change).
pub fn same_network(a: &Document, b: &Document) -> bool {
    a.network == b.network
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str = r#"{"version":"1.0.0","filesystem":{"readwritePaths":["/work"]},"network":{"egress":{"default":"deny"}}}"#;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn node() -> NodeDefaults {
        NodeDefaults {
            config_path: "/etc/agentcell/shim.toml".into(),
            ..Default::default()
        }
    }

    #[test]
    fn pod_policy_applies_to_every_container() {
        let s = select(&ann(&[(POLICY, POD)]), Some("app"), &node()).unwrap();
        assert!(s.container.is_none());
        assert_eq!(s.effective().origin, POLICY);
        assert!(s.pod.digest.starts_with("sha256:"));
    }

    #[test]
    fn digest_must_match() {
        let s = select(&ann(&[(POLICY, POD)]), None, &node()).unwrap();
        let ok = ann(&[(POLICY, POD), (DIGEST, &s.pod.digest)]);
        assert!(select(&ok, None, &node()).is_ok());
        let bad = ann(&[(POLICY, POD), (DIGEST, "sha256:00")]);
        let e = select(&bad, None, &node()).unwrap_err();
        assert!(matches!(e, AnnotationError::DigestMismatch { .. }));
        assert!(e.to_string().contains(DIGEST));
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let e = select(
            &ann(&[(POLICY, POD), ("agentcell.dev/mxc-polcy", "{}")]),
            None,
            &node(),
        )
        .unwrap_err();
        assert_eq!(
            e,
            AnnotationError::UnknownKey {
                key: "agentcell.dev/mxc-polcy".into()
            }
        );
        // Other prefixes are not ours.
        assert!(
            select(
                &ann(&[(POLICY, POD), ("example.com/x", "1")]),
                None,
                &node()
            )
            .is_ok()
        );
    }

    #[test]
    fn net_raw_is_kept_only_when_the_pod_asks_and_the_node_allows() {
        let allowing = NodeDefaults {
            allow_net_raw: true,
            ..node()
        };
        let asked = ann(&[(POLICY, POD), (NET_RAW, "true")]);
        // Neither, or only one of the two: not kept (asked on a node that does not allow it is
        // refused by name, rather than started without what the pod asked for).
        assert!(
            !select(&ann(&[(POLICY, POD)]), None, &node())
                .unwrap()
                .net_raw
        );
        assert!(
            !select(&ann(&[(POLICY, POD)]), None, &allowing)
                .unwrap()
                .net_raw
        );
        assert!(
            !select(&ann(&[(POLICY, POD), (NET_RAW, "false")]), None, &allowing)
                .unwrap()
                .net_raw
        );
        let e = select(&asked, None, &node()).unwrap_err();
        assert!(matches!(e, AnnotationError::NetRawRefused { .. }), "{e}");
        assert!(e.to_string().contains("allow_net_raw"), "{e}");
        // Both.
        assert!(select(&asked, None, &allowing).unwrap().net_raw);
        let e = select(&ann(&[(POLICY, POD), (NET_RAW, "yes")]), None, &allowing).unwrap_err();
        assert!(matches!(e, AnnotationError::NotABool { .. }), "{e}");
    }

    #[test]
    fn invalid_policy_names_key_path_and_reason() {
        let bad = r#"{"version":"1.0.0","network":{"egress":{"default":"maybe"}}}"#;
        let e = select(&ann(&[(POLICY, bad)]), None, &node()).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("annotation agentcell.dev/mxc-policy: "),
            "{msg}"
        );
        assert!(
            msg.contains("network.egress.default: unknown value `maybe`"),
            "{msg}"
        );
    }

    /// A retired policy is refused (naming the migration) unless the node reads MXC 0.8's.
    #[test]
    fn retired_policies_need_the_node_s_compatibility_setting() {
        let old = r#"{"version":"0.8.0-alpha","filesystem":{"readwritePaths":["/work"]}}"#;
        let e = select(&ann(&[(POLICY, old)]), None, &node()).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("version: \"0.8.0-alpha\" is a retired MXC contract version")
                && msg.contains("agentcell policy migrate"),
            "{msg}"
        );
        let compat = NodeDefaults {
            mxc_release: MxcRelease::V0_8,
            ..node()
        };
        let s = select(&ann(&[(POLICY, old)]), None, &compat).unwrap();
        assert_eq!(s.pod.document.release, MxcRelease::V0_8);
        assert!(select(&ann(&[(POLICY, POD)]), None, &compat).is_ok());
    }

    #[test]
    fn container_override_keeps_the_pod_network() {
        let own = r#"{"version":"1.0.0","filesystem":{"readonlyPaths":["/data"]},"network":{"egress":{"default":"deny"}}}"#;
        let s = select(
            &ann(&[(POLICY, POD), ("agentcell.dev/mxc-policy.tool", own)]),
            Some("tool"),
            &node(),
        )
        .unwrap();
        assert_eq!(s.effective().origin, "agentcell.dev/mxc-policy.tool");
        // Another container of the pod keeps the pod's document.
        let s = select(
            &ann(&[(POLICY, POD), ("agentcell.dev/mxc-policy.tool", own)]),
            Some("app"),
            &node(),
        )
        .unwrap();
        assert!(s.container.is_none());
        let wider = r#"{"version":"1.0.0","network":{"egress":{"default":"allow"}}}"#;
        let e = select(
            &ann(&[(POLICY, POD), ("agentcell.dev/mxc-policy.tool", wider)]),
            Some("tool"),
            &node(),
        )
        .unwrap_err();
        assert!(matches!(e, AnnotationError::NetworkOverride { .. }));
    }

    #[test]
    fn missing_policy_uses_the_node_default_or_fails() {
        let e = select(&ann(&[]), None, &node()).unwrap_err();
        assert!(e.to_string().contains("no policy"));
        let with_default = NodeDefaults {
            default_policy: Some(POD.into()),
            ..node()
        };
        let s = select(&ann(&[]), None, &with_default).unwrap();
        assert!(s.pod.origin.starts_with("default_policy"));
    }

    #[test]
    fn best_effort_needs_the_node_s_consent() {
        let a = ann(&[(POLICY, POD), (BEST_EFFORT, "true")]);
        assert!(matches!(
            select(&a, None, &node()),
            Err(AnnotationError::BestEffortRefused { .. })
        ));
        let allowing = NodeDefaults {
            allow_best_effort: true,
            ..node()
        };
        assert!(select(&a, None, &allowing).unwrap().best_effort);
        let a = ann(&[(POLICY, POD), (BEST_EFFORT, "yes")]);
        assert!(matches!(
            select(&a, None, &allowing),
            Err(AnnotationError::NotABool { .. })
        ));
    }
}
