//! Reading an MXC document the way MXC's runtime does, into a [`Document`]: what the document
//! means, validated. Entry points: [`parse`] and [`parse_with`].

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::contract::RequestRoot;
use crate::error::{PolicyError, Violation};
use crate::json::parse_strict;
use crate::model::{ContainerConfig, Containment};
use crate::netspec::NetworkSpec;
use crate::path::JsonPath;
use crate::release::MxcRelease;
use crate::version::{ContractVersion, SchemaVersion};
use crate::{admission, sandbox_policy, shape, validate};

/// Which authoring shape a document uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum DocumentKind {
    /// MXC's wire format (`wxc-exec`/`lxc-exec` input).
    ContainerConfig,
    /// MXC's SDK authoring shape (`filesystem`, `network`, `ui`, `timeoutMs`, `version`).
    SandboxPolicy,
}

#[derive(Debug, Clone, Default)]
pub struct ParseOptions {
    /// Force an authoring shape instead of detecting it.
    pub kind: Option<DocumentKind>,
    /// Require `process.commandLine` (MXC's one-shot executor does). Off when the command comes
    /// from elsewhere: `agentcell run -- CMD`, or a container image in the shim.
    pub require_command: bool,
    /// MXC's `--allow-testing-features`: accept `network.proxy.builtinTestServer`.
    pub allow_testing_features: bool,
    /// Whose verdicts apply: MXC 1.0's (the default), or MXC 0.8's for retired documents.
    pub release: MxcRelease,
}

impl ParseOptions {
    /// The options of MXC's one-shot executor (`lxc-exec CONFIG`).
    pub fn executor() -> Self {
        Self {
            require_command: true,
            ..Self::default()
        }
    }
}

/// The Linux executor MXC would run a containment with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Backend {
    /// `process` (and an omitted containment) or `bubblewrap`.
    Bubblewrap,
    Lxc,
    /// `vm` and `microvm`.
    Microvm,
    Hyperlight,
    /// A Windows or macOS containment; MXC's Linux executor cannot run it.
    Foreign(Containment),
}

impl Backend {
    pub fn for_linux(c: Containment) -> Self {
        match c {
            Containment::Process | Containment::Bubblewrap => Self::Bubblewrap,
            Containment::Lxc => Self::Lxc,
            Containment::Microvm | Containment::Vm => Self::Microvm,
            Containment::Hyperlight => Self::Hyperlight,
            other => Self::Foreign(other),
        }
    }
    /// The concrete containment name MXC reports after resolving intents on Linux.
    pub fn resolved_containment(self) -> Containment {
        match self {
            Self::Bubblewrap => Containment::Bubblewrap,
            Self::Lxc => Containment::Lxc,
            Self::Microvm => Containment::Microvm,
            Self::Hyperlight => Containment::Hyperlight,
            Self::Foreign(c) => c,
        }
    }
}

/// Filesystem lists after same-string duplicates collapsed to the strictest list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FsLists {
    pub readwrite: Vec<String>,
    pub readonly: Vec<String>,
    pub denied: Vec<String>,
}

/// Something the reader decided that the author should know (never a weakening).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Note {
    pub path: String,
    pub message: String,
}

impl Note {
    pub fn new(path: JsonPath, message: impl Into<String>) -> Self {
        Self {
            path: path.to_string(),
            message: message.into(),
        }
    }
}

/// A validated MXC document and what it means.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub kind: DocumentKind,
    pub version: SchemaVersion,
    /// The MXC release whose verdicts were applied (`--mxc-release`).
    pub release: MxcRelease,
    /// The `ContainerConfig` the document means (a `SandboxPolicy` is converted as MXC's SDK does).
    pub config: ContainerConfig,
    pub containment: Containment,
    pub backend: Backend,
    pub filesystem: FsLists,
    pub network: NetworkSpec,
    pub notes: Vec<Note>,
}

/// Parses with MXC's executor options (command required, no testing features).
pub fn parse(text: &str) -> Result<Document, PolicyError> {
    parse_with(text, &ParseOptions::executor())
}

pub fn parse_with(text: &str, opts: &ParseOptions) -> Result<Document, PolicyError> {
    parse_value(parse_strict(text)?, opts)
}

pub fn parse_value(value: Value, opts: &ParseOptions) -> Result<Document, PolicyError> {
    let root = JsonPath::root();
    if !value.is_object() {
        return Err(PolicyError::one(
            root,
            format!(
                "a policy must be a JSON object, found {}",
                shape::kind(&value)
            ),
        ));
    }
    let kind = opts.kind.unwrap_or_else(|| detect_kind(&value));
    let declared = value.get("version");
    let registered = declared
        .and_then(Value::as_str)
        .and_then(ContractVersion::parse_exact)
        .filter(|v| v.is_registered());
    let doc = match registered {
        Some(version) => read_current(&value, kind, version, opts)?,
        None if opts.release.reads_retired() => read_retired(&value, kind, opts)?,
        None => {
            // MXC 1.0's stage 1: only a registered version reaches the contracts. A SandboxPolicy
            // without a version was refused by MXC's SDK too.
            let refusal =
                crate::version::check_registered(declared).expect_err("not a registered version");
            return Err(PolicyError::one(root.key("version"), refusal.message));
        }
    };
    admission::check(&doc)?;
    Ok(doc)
}

fn not_arrays(value: &Value) -> Result<(), PolicyError> {
    let mut errs = Vec::new();
    shape::check_objects_not_arrays(value, &JsonPath::root(), &mut errs);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(PolicyError::Invalid(errs))
    }
}

/// A retired document, read exactly as MXC 0.8's runtime read it (`--mxc-release 0.8`).
fn read_retired(
    value: &Value,
    kind: DocumentKind,
    opts: &ParseOptions,
) -> Result<Document, PolicyError> {
    let root = JsonPath::root();
    // Typed first (unknown fields, types), then the shape walk for what serde lets through.
    if kind == DocumentKind::ContainerConfig
        && let Some((path, message)) = crate::model::retired_unknown_field(value)
    {
        return Err(PolicyError::one(path, message));
    }
    match kind {
        DocumentKind::ContainerConfig => {
            let cfg: ContainerConfig = typed_at(value, &root)?;
            not_arrays(value)?;
            validate::runtime(cfg, value, kind, opts)
        }
        DocumentKind::SandboxPolicy => {
            let cfg = sandbox_policy::to_container_config(value)?;
            not_arrays(value)?;
            let raw = serde_json::to_value(&cfg).expect("model serializes");
            let opts = ParseOptions {
                require_command: false,
                ..opts.clone()
            };
            validate::runtime(cfg, &raw, kind, &opts)
        }
    }
}

/// A document that declares one of MXC 1.0's registered contracts: its exact shape first, then
/// MXC 1.0's runtime rules.
fn read_current(
    value: &Value,
    kind: DocumentKind,
    version: ContractVersion,
    opts: &ParseOptions,
) -> Result<Document, PolicyError> {
    let root = JsonPath::root();
    match kind {
        DocumentKind::ContainerConfig => {
            let obj = value.as_object().expect("checked by the caller");
            let request_root = crate::contract::current::select_root(obj, version)?;
            let shape =
                crate::contract::current::root_shape(version, request_root).ok_or_else(|| {
                    PolicyError::one(
                        root.key("phase"),
                        format!(
                            "contract {version} has no {} request root",
                            request_root.as_str()
                        ),
                    )
                })?;
            let mut errs = Vec::new();
            crate::contract::current::check_root(obj, shape, version, request_root, &mut errs);
            if !opts.require_command && request_root == RequestRoot::OneShot {
                // The command comes from elsewhere (`agentcell run -- CMD`, a container image).
                let process = root.key("process");
                let command = process.key("commandLine");
                errs.retain(|e| {
                    !(e.message == "missing required field"
                        && (e.path == process || e.path == command))
                });
            }
            if !errs.is_empty() {
                return Err(PolicyError::Invalid(errs));
            }
            if request_root.is_state_aware() {
                return Err(PolicyError::one(
                    root.key("phase"),
                    format!(
                        "a state-aware {} request: agentcell runs one-shot requests only (MXC error code {}); check it with `agentcell policy check`",
                        request_root.as_str(),
                        crate::request::ErrorCode::UnsupportedPhase.as_str()
                    ),
                ));
            }
            // The exact shape has been checked: read it without serde_path_to_error's tracking
            // (kept for the message if serde still refuses something).
            let cfg = match ContainerConfig::deserialize(value) {
                Ok(c) => c,
                Err(_) => typed_at(value, &root)?,
            };
            validate::current(cfg, value, kind, version, opts)
        }
        DocumentKind::SandboxPolicy => {
            let mut errs = Vec::new();
            shape::check_no_null_outside_comment(value, &root, &mut errs);
            if !errs.is_empty() {
                return Err(PolicyError::Invalid(errs));
            }
            let cfg = sandbox_policy::to_container_config_current(value, version)?;
            not_arrays(value)?;
            let raw = serde_json::to_value(&cfg).expect("model serializes");
            let opts = ParseOptions {
                require_command: false,
                ..opts.clone()
            };
            validate::current(cfg, &raw, kind, version, &opts)
        }
    }
}

/// `process` means a `ContainerConfig`; a field only the SDK shape has means a `SandboxPolicy`;
/// a field only the wire shape has means a `ContainerConfig`. A document with neither (only
/// `version`, `filesystem`, the directional network, `runtimeConfig`) means the same either way,
/// and is read as a `SandboxPolicy` when it declares a version (the SDK requires one).
pub fn detect_kind(v: &Value) -> DocumentKind {
    let has = |p: &[&str]| {
        let mut cur = v;
        for k in p {
            match cur.get(k) {
                Some(n) => cur = n,
                None => return false,
            }
        }
        true
    };
    if has(&["process"]) {
        return DocumentKind::ContainerConfig;
    }
    let sdk_only = [
        &["timeoutMs"][..],
        &["filesystem", "clearPolicyOnExit"],
        &["network", "allowOutbound"],
        &["ui", "allowWindows"],
        &["ui", "allowInputInjection"],
    ];
    if sdk_only.iter().any(|p| has(p)) {
        return DocumentKind::SandboxPolicy;
    }
    let wire_only = [
        &["containment"][..],
        &["containerId"],
        &["lifecycle"],
        &["fallback"],
        &["lxc"],
        &["seatbelt"],
        &["macos_sandbox"],
        &["appContainer"],
        &["experimental"],
        &["phase"],
        &["sandboxId"],
        &["correlationVector"],
        &["network", "defaultPolicy"],
        &["network", "enforcementMode"],
        &["ui", "disable"],
        &["ui", "injection"],
        &["telemetry"],
        &["wslc"],
        &["hyperlight"],
        &["test"],
        &["windowsSandbox"],
        &["isolationSession"],
    ];
    if wire_only.iter().any(|p| has(p)) || !has(&["version"]) {
        return DocumentKind::ContainerConfig;
    }
    if let Some(pc) = v.get("processContainer").and_then(Value::as_object)
        && pc.keys().any(|k| k != "network")
    {
        return DocumentKind::ContainerConfig;
    }
    DocumentKind::SandboxPolicy
}

/// Reads a typed value, reporting serde's first error with the JSON path below `base`.
pub fn typed_at<T: DeserializeOwned>(value: &Value, base: &JsonPath) -> Result<T, PolicyError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let rel = e.path().to_string();
        let mut path = if rel == "." || rel.is_empty() {
            base.clone()
        } else {
            JsonPath::parse(&format!("{base}.{rel}").replace("(document).", ""))
        };
        let message = tidy_serde_message(&e.inner().to_string());
        // Name the unknown key itself, not the object holding it.
        if let Some(rest) = message.strip_prefix("unknown field `")
            && let Some(key) = rest.split('`').next()
            && path.last_key().as_deref() != Some(key)
        {
            path = path.key(key);
        }
        PolicyError::Invalid(vec![Violation::new(path, message)])
    })
}

fn tidy_serde_message(m: &str) -> String {
    // serde's wording is fine, but its "unit variant" vocabulary is not the author's.
    m.replace("variant", "value")
        .replace("invalid type: null", "null is not allowed")
}
