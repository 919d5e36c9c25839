//! MXC's request roots as one typed model: a one-shot request (the [`Document`] agentcell runs)
//! or a state-aware lifecycle request (`provision` per containment, `start`, `exec`, `stop`,
//! `deprovision`), with MXC's sandbox ids and its closed set of error codes.
//!
//! agentcell parses and judges every root ([`parse_request`]); it runs one-shot requests only. A
//! state-aware request is answered with MXC's error envelope, code `unsupported_phase`, as MXC's
//! own Linux backends (bubblewrap, LXC) answer it.

use serde::Serialize;
use serde_json::{Value, json};

use crate::contract::{ContractVersion, RequestRoot};
use crate::document::{Document, ParseOptions, detect_kind, typed_at};
use crate::error::{PolicyError, Violation};
use crate::json::parse_strict;
use crate::model::{Action, ContainerConfig, Containment};
use crate::netspec::NetworkSpec;
use crate::path::JsonPath;

/// MXC's 12 lifecycle error codes (a closed set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Structure: the request does not fit its root's contract.
    MalformedRequest,
    UnsupportedContainment,
    /// A lifecycle call to a backend that runs one-shot requests only.
    UnsupportedPhase,
    BackendUnavailable,
    MalformedId,
    StaleId,
    NotProvisioned,
    NotStarted,
    AlreadyStarted,
    AlreadyStopped,
    /// A semantic refusal after structural success.
    PolicyValidation,
    BackendError,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 12] = [
        Self::MalformedRequest,
        Self::UnsupportedContainment,
        Self::UnsupportedPhase,
        Self::BackendUnavailable,
        Self::MalformedId,
        Self::StaleId,
        Self::NotProvisioned,
        Self::NotStarted,
        Self::AlreadyStarted,
        Self::AlreadyStopped,
        Self::PolicyValidation,
        Self::BackendError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::MalformedRequest => "malformed_request",
            Self::UnsupportedContainment => "unsupported_containment",
            Self::UnsupportedPhase => "unsupported_phase",
            Self::BackendUnavailable => "backend_unavailable",
            Self::MalformedId => "malformed_id",
            Self::StaleId => "stale_id",
            Self::NotProvisioned => "not_provisioned",
            Self::NotStarted => "not_started",
            Self::AlreadyStarted => "already_started",
            Self::AlreadyStopped => "already_stopped",
            Self::PolicyValidation => "policy_validation",
            Self::BackendError => "backend_error",
        }
    }
}

/// MXC's error envelope: `{"error": {"code", "message", "operation"?, "remediation"?, "details"?}}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorEnvelope {
    pub code: ErrorCode,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remediation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

impl ErrorEnvelope {
    pub fn to_json(&self) -> Value {
        json!({ "error": self })
    }
}

/// `<prefix>:<opaque>`: the prefix routes a non-provision call to its backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SandboxId {
    pub prefix: String,
    pub opaque: String,
}

impl SandboxId {
    /// Empty ids, ids without a prefix and ids with NUL are malformed (`malformed_id`).
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("is empty".into());
        }
        if s.contains('\0') {
            return Err("contains a NUL character".into());
        }
        let Some((prefix, opaque)) = s.split_once(':') else {
            return Err(format!(
                "{s:?} has no prefix: a sandbox id is <prefix>:<opaque> (e.g. wslc:0123…)"
            ));
        };
        let well_formed = !prefix.is_empty()
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !well_formed {
            return Err(format!("{s:?}: the prefix {prefix:?} is not well-formed"));
        }
        if opaque.is_empty() {
            return Err(format!("{s:?}: nothing follows the prefix"));
        }
        Ok(Self {
            prefix: prefix.to_string(),
            opaque: opaque.to_string(),
        })
    }

    /// The containment MXC routes this prefix to (`None`: MXC answers `unsupported_containment`).
    pub fn containment(&self) -> Option<Containment> {
        match self.prefix.as_str() {
            "iso" => Some(Containment::IsolationSession),
            "wsb" => Some(Containment::WindowsSandbox),
            "wslc" => Some(Containment::Wslc),
            _ => None,
        }
    }
}

/// A validated state-aware request.
#[derive(Debug, Clone, PartialEq)]
pub struct StateAwareRequest {
    pub root: RequestRoot,
    pub version: ContractVersion,
    /// Start, exec, stop and deprovision address a sandbox.
    pub sandbox_id: Option<SandboxId>,
    /// The root's fields (its exact shape admits only those of its root).
    pub config: ContainerConfig,
    /// Exec and provision: the directional network the request names, validated.
    pub network: Option<NetworkSpec>,
    /// What agentcell or MXC would say when dispatching it.
    pub notes: Vec<crate::document::Note>,
}

impl StateAwareRequest {
    /// The containment the request goes to: the provision marker, or the id's prefix.
    pub fn containment(&self) -> Option<Containment> {
        match self.root {
            RequestRoot::IsolationSessionProvision => Some(Containment::IsolationSession),
            RequestRoot::WslcProvision => Some(Containment::Wslc),
            RequestRoot::WindowsSandboxProvision => Some(Containment::WindowsSandbox),
            _ => self.sandbox_id.as_ref().and_then(SandboxId::containment),
        }
    }

    /// agentcell's answer when asked to run it (issue 19 adds a lifecycle).
    pub fn refusal(&self) -> ErrorEnvelope {
        ErrorEnvelope {
            code: ErrorCode::UnsupportedPhase,
            message: format!(
                "agentcell runs one-shot requests only; this is a state-aware {} request ({}), which MXC's Linux backends (bubblewrap, lxc) do not run either",
                self.root.as_str(),
                self.version
            ),
            operation: self.root.phase().map(str::to_string),
            remediation: Some(
                "send a one-shot request (no `phase`): `agentcell exec CONFIG`, or `agentcell run --policy POLICY -- CMD`".into(),
            ),
            details: None,
        }
    }
}

/// Any request MXC defines.
#[derive(Debug, Clone, PartialEq)]
pub enum ParsedRequest {
    OneShot(Box<Document>),
    StateAware(Box<StateAwareRequest>),
}

impl ParsedRequest {
    pub fn root(&self) -> RequestRoot {
        match self {
            Self::OneShot(_) => RequestRoot::OneShot,
            Self::StateAware(r) => r.root,
        }
    }
}

/// A refused request: MXC's error code and every violation (each names its JSON path).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{error}")]
pub struct RequestError {
    pub code: ErrorCode,
    pub error: PolicyError,
}

impl RequestError {
    pub fn envelope(&self) -> ErrorEnvelope {
        ErrorEnvelope {
            code: self.code,
            message: self.error.to_string(),
            operation: None,
            remediation: None,
            details: None,
        }
    }
}

/// Reads any request root. A one-shot request is read as [`crate::parse_with`] reads it; a
/// state-aware one (a registered contract with a `phase`) is checked against its root's exact
/// shape and MXC's rules for it.
pub fn parse_request(text: &str, opts: &ParseOptions) -> Result<ParsedRequest, RequestError> {
    let value = parse_strict(text).map_err(|e| RequestError {
        code: ErrorCode::MalformedRequest,
        error: e.into(),
    })?;
    let registered = value
        .get("version")
        .and_then(Value::as_str)
        .and_then(ContractVersion::parse_exact)
        .filter(|v| v.is_registered());
    let state_aware = value.get("phase").is_some()
        && detect_kind(&value) == crate::DocumentKind::ContainerConfig
        && opts.kind != Some(crate::DocumentKind::SandboxPolicy);
    match (registered, state_aware) {
        (Some(version), true) => {
            read_state_aware(&value, version).map(|r| ParsedRequest::StateAware(Box::new(r)))
        }
        _ => crate::document::parse_value(value, opts)
            .map(|d| ParsedRequest::OneShot(Box::new(d)))
            .map_err(|error| RequestError {
                code: classify(&error),
                error,
            }),
    }
}

/// Structural refusals are `malformed_request`; the rest `policy_validation`.
fn classify(e: &PolicyError) -> ErrorCode {
    let structural = e.violations().iter().any(|v| {
        let m = v.message.as_str();
        m.starts_with("unknown field")
            || m.starts_with("missing")
            || m.starts_with("expected ")
            || m.starts_with("null is not allowed")
            || m.contains("is not one of")
            || m.contains("invalid JSON")
            || m.contains("duplicate key")
            || m.contains("contract version")
            || m.contains("must be between")
            || m == "must not be empty"
    });
    if structural {
        ErrorCode::MalformedRequest
    } else {
        ErrorCode::PolicyValidation
    }
}

fn read_state_aware(
    value: &Value,
    version: ContractVersion,
) -> Result<StateAwareRequest, RequestError> {
    let malformed = |error: PolicyError| RequestError {
        code: ErrorCode::MalformedRequest,
        error,
    };
    let root = JsonPath::root();
    let obj = value.as_object().expect("a JSON object with a phase");
    let request_root = crate::contract::current::select_root(obj, version).map_err(malformed)?;
    crate::contract::current::check_value_as(value, version, Some(request_root))
        .map_err(malformed)?;
    let config: ContainerConfig = typed_at(value, &root).map_err(malformed)?;
    let mut errs = Vec::new();
    let mut notes = Vec::new();
    let sandbox_id = match config.sandbox_id.as_deref() {
        None => None,
        Some(s) => match SandboxId::parse(s) {
            Ok(id) => Some(id),
            Err(m) => {
                return Err(RequestError {
                    code: ErrorCode::MalformedId,
                    error: PolicyError::one(root.key("sandboxId"), m),
                });
            }
        },
    };
    if let Some(id) = &sandbox_id
        && id.containment().is_none()
    {
        notes.push(crate::document::Note::new(
            root.key("sandboxId"),
            format!(
                "the prefix {:?} names no containment MXC routes to (iso, wsb, wslc): MXC answers unsupported_containment",
                id.prefix
            ),
        ));
    }
    let target = match request_root {
        RequestRoot::IsolationSessionProvision => Some(Containment::IsolationSession),
        RequestRoot::WslcProvision => Some(Containment::Wslc),
        RequestRoot::WindowsSandboxProvision => Some(Containment::WindowsSandbox),
        _ => sandbox_id.as_ref().and_then(SandboxId::containment),
    };
    if let Some(c) = config
        .process
        .as_ref()
        .and_then(|p| p.command_line.as_deref())
        && c.contains('\0')
    {
        errs.push(Violation::new(
            root.key("process").key("commandLine"),
            "must not contain null bytes",
        ));
    }
    let mut network = None;
    if matches!(request_root, RequestRoot::Exec | RequestRoot::WslcProvision) {
        // The directional network and proxy rules, as for a one-shot request of that backend.
        let probe = ContainerConfig {
            containment: target,
            network: config.network.clone(),
            runtime_config: config.runtime_config.clone(),
            filesystem: config.filesystem.clone(),
            ..ContainerConfig::default()
        };
        let raw = serde_json::to_value(&probe).expect("model serializes");
        let opts = ParseOptions {
            require_command: false,
            ..ParseOptions::default()
        };
        match crate::validate::current(
            probe,
            &raw,
            crate::DocumentKind::ContainerConfig,
            version,
            &opts,
        ) {
            Ok(d) => network = Some(d.network),
            Err(e) => errs.extend(e.violations()),
        }
    }
    match (request_root, target) {
        (RequestRoot::Exec, Some(Containment::Wslc)) if config.network.is_some() => {
            errs.push(Violation::new(
                root.key("network"),
                "WSLC fixes the network at provision time; an exec request cannot change it",
            ));
        }
        (RequestRoot::Exec, Some(Containment::IsolationSession)) => {
            if config
                .runtime_config
                .as_ref()
                .is_some_and(|r| r.network_proxy.is_some())
            {
                errs.push(Violation::new(
                    root.key("runtimeConfig").key("networkProxy"),
                    "not allowed for isolation_session (it cannot route through a proxy)",
                ));
            }
            if let Some(n) = &config.network {
                let all_allow = n.egress.as_ref().is_some_and(|e| {
                    e.default == Some(Action::Allow)
                        && e.allow.as_ref().is_none_or(Vec::is_empty)
                        && e.deny.as_ref().is_none_or(Vec::is_empty)
                }) && n.ingress.as_ref().is_some_and(|i| {
                    i.default == Some(Action::Allow) && i.host_loopback == Some(Action::Allow)
                });
                if !all_allow {
                    errs.push(Violation::new(
                        root.key("network"),
                        "isolation_session cannot restrict the network: its network must be the all-allow posture",
                    ));
                }
            }
        }
        _ => {}
    }
    if request_root == RequestRoot::WslcProvision
        && let Some(maps) = config
            .wslc
            .as_ref()
            .and_then(|w| w.provision.as_ref())
            .and_then(|p| p.port_mappings.as_deref())
        && !maps.is_empty()
    {
        let path = root.key("wslc").key("provision").key("portMappings");
        crate::validate::check_port_mappings(maps, &path, &mut errs);
        let n = config.network.as_ref();
        let bridged = n.and_then(|n| n.egress.as_ref()).is_some_and(|e| {
            e.default == Some(Action::Allow)
                && e.allow.as_ref().is_none_or(Vec::is_empty)
                && e.deny.as_ref().is_none_or(Vec::is_empty)
        }) && n.and_then(|n| n.ingress.as_ref()).is_some_and(|i| {
            i.default == Some(Action::Allow) && i.host_loopback == Some(Action::Allow)
        });
        if !bridged {
            errs.push(Violation::new(
                path,
                "port mappings require the bridged all-allow network posture (egress.default, ingress.default and ingress.hostLoopback 'allow', no rules)",
            ));
        }
    }
    if let Some(fs) = &config.filesystem {
        for (name, list) in [
            ("readonlyPaths", &fs.readonly_paths),
            ("readwritePaths", &fs.readwrite_paths),
            ("deniedPaths", &fs.denied_paths),
        ] {
            for (i, p) in list.iter().flatten().enumerate() {
                if p.trim().is_empty() || p.contains('\0') {
                    errs.push(Violation::new(
                        root.key("filesystem").key(name).index(i),
                        "filesystem path is empty or contains a NUL character",
                    ));
                }
            }
        }
    }
    if !errs.is_empty() {
        return Err(RequestError {
            code: ErrorCode::PolicyValidation,
            error: PolicyError::Invalid(errs),
        });
    }
    Ok(StateAwareRequest {
        root: request_root,
        version,
        sandbox_id,
        config,
        network,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_ids() {
        let id = SandboxId::parse("wslc:0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(id.containment(), Some(Containment::Wslc));
        assert_eq!(SandboxId::parse("example:1").unwrap().containment(), None);
        for bad in ["", "noprefix", ":x", "a b:x", "iso:", "iso:\0"] {
            assert!(SandboxId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_root_is_typed() {
        let opts = ParseOptions::default();
        let cases = [
            (
                r#"{"version":"1.0.0","process":{"commandLine":"true"}}"#,
                RequestRoot::OneShot,
            ),
            (
                r#"{"version":"1.0.0","phase":"start","sandboxId":"iso:1"}"#,
                RequestRoot::Start,
            ),
            (
                r#"{"version":"1.0.0","phase":"stop","sandboxId":"iso:1"}"#,
                RequestRoot::Stop,
            ),
            (
                r#"{"version":"0.9.0-alpha","phase":"deprovision","sandboxId":"wslc:1"}"#,
                RequestRoot::Deprovision,
            ),
            (
                r#"{"version":"1.0.0","phase":"exec","sandboxId":"wslc:1","process":{"commandLine":"x"}}"#,
                RequestRoot::Exec,
            ),
            (
                r#"{"version":"1.0.0","phase":"provision","containment":"wslc"}"#,
                RequestRoot::WslcProvision,
            ),
            (
                r#"{"version":"1.1.0-alpha","phase":"provision","containment":"windows_sandbox"}"#,
                RequestRoot::WindowsSandboxProvision,
            ),
            (
                r#"{"version":"1.0.0","phase":"provision","containment":"isolation_session","network":{"egress":{"default":"allow"},"ingress":{"default":"allow","hostLoopback":"allow"}}}"#,
                RequestRoot::IsolationSessionProvision,
            ),
        ];
        for (text, root) in cases {
            let r = parse_request(text, &opts).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(r.root(), root, "{text}");
            if let ParsedRequest::StateAware(s) = &r {
                let env = s.refusal().to_json();
                assert_eq!(env["error"]["code"], "unsupported_phase");
            }
        }
    }

    #[test]
    fn codes_of_refusals() {
        let opts = ParseOptions::default();
        let code = |t: &str| parse_request(t, &opts).unwrap_err().code;
        assert_eq!(
            code(
                r#"{"version":"1.0.0","phase":"start","sandboxId":"iso:1","process":{"commandLine":"x"}}"#
            ),
            ErrorCode::MalformedRequest
        );
        assert_eq!(
            code(r#"{"version":"1.0.0","phase":"start","sandboxId":"nope"}"#),
            ErrorCode::MalformedId
        );
        assert_eq!(
            code(
                r#"{"version":"1.0.0","phase":"exec","sandboxId":"wslc:1","process":{"commandLine":"x"},"network":{"egress":{"default":"deny"}}}"#
            ),
            ErrorCode::PolicyValidation
        );
        assert_eq!(
            code(
                r#"{"version":"1.1.0-alpha","phase":"provision","containment":"wslc","wslc":{"provision":{"portMappings":[{"windowsPort":80,"containerPort":80},{"windowsPort":80,"containerPort":81}]}},"network":{"egress":{"default":"allow"},"ingress":{"default":"allow","hostLoopback":"allow"}}}"#
            ),
            ErrorCode::PolicyValidation
        );
        assert_eq!(
            code(
                r#"{"version":"1.0.0","process":{"commandLine":"x"},"network":{"ingress":{"default":"allow"}}}"#
            ),
            ErrorCode::PolicyValidation
        );
        assert_eq!(
            code(r#"{"version":"0.8.0-alpha","process":{"commandLine":"x"}}"#),
            ErrorCode::MalformedRequest
        );
    }
}
