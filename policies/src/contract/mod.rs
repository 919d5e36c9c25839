//! MXC's exact per-version contracts: the structural verdict of `agentcell policy check
//! --contract`, held to MXC's own fixtures by the conformance suite.
//!
//! - [`current`]: MXC 1.0's registered contracts, `0.9.0-alpha`, `1.0.0` and `1.1.0-alpha`, for
//!   every request root (one-shot; state-aware `provision` per containment, `start`, `exec`,
//!   `stop`, `deprovision`).
//! - [`legacy`]: the retired `0.6.0-alpha`, `0.7.0-alpha` and `0.8.0-alpha` contracts, read only
//!   under `--mxc-release 0.8`.
//!
//! These are stricter than the runtime reader ([`crate::document`]): the version marker is one
//! exact spelling, explicit `null` is refused everywhere but `_comment`, required fields are
//! required (a one-shot request needs `process.commandLine`), and each request root is closed.
//! They carry no cross-field or backend rule (those are the runtime reader's).

pub mod current;
mod legacy;

use serde::Serialize;
use serde_json::Value;

use crate::error::PolicyError;
use crate::json::parse_strict;
use crate::path::JsonPath;
use crate::release::MxcRelease;
pub use crate::version::ContractVersion;

/// Which request root a document is: MXC selects it by `phase`, then (for `provision`) by
/// `containment`. This one enum names every kind of request MXC defines; the typed requests are
/// in [`crate::request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestRoot {
    OneShot,
    Start,
    Exec,
    Stop,
    Deprovision,
    WindowsSandboxProvision,
    IsolationSessionProvision,
    WslcProvision,
}

impl RequestRoot {
    pub const ALL: [RequestRoot; 8] = [
        Self::OneShot,
        Self::Start,
        Self::Exec,
        Self::Stop,
        Self::Deprovision,
        Self::WindowsSandboxProvision,
        Self::IsolationSessionProvision,
        Self::WslcProvision,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::OneShot => "one-shot",
            Self::Start => "start",
            Self::Exec => "exec",
            Self::Stop => "stop",
            Self::Deprovision => "deprovision",
            Self::WindowsSandboxProvision => "windows_sandbox provision",
            Self::IsolationSessionProvision => "isolation_session provision",
            Self::WslcProvision => "wslc provision",
        }
    }

    /// The `phase` marker (`None` for one-shot requests).
    pub fn phase(self) -> Option<&'static str> {
        match self {
            Self::OneShot => None,
            Self::Start => Some("start"),
            Self::Exec => Some("exec"),
            Self::Stop => Some("stop"),
            Self::Deprovision => Some("deprovision"),
            Self::WindowsSandboxProvision
            | Self::IsolationSessionProvision
            | Self::WslcProvision => Some("provision"),
        }
    }

    /// The `containment` marker of a provision root.
    pub fn provision_containment(self) -> Option<&'static str> {
        match self {
            Self::WindowsSandboxProvision => Some("windows_sandbox"),
            Self::IsolationSessionProvision => Some("isolation_session"),
            Self::WslcProvision => Some("wslc"),
            _ => None,
        }
    }

    /// A state-aware (lifecycle) request.
    pub fn is_state_aware(self) -> bool {
        self != Self::OneShot
    }

    /// The fixture folder name MXC's contract crate uses for this root.
    pub fn fixture_dir(self) -> &'static str {
        match self {
            Self::OneShot => "one_shot",
            Self::Start => "start",
            Self::Exec => "exec",
            Self::Stop => "stop",
            Self::Deprovision => "deprovision",
            Self::WindowsSandboxProvision => "windows_sandbox_provision",
            Self::IsolationSessionProvision => "isolation_session_provision",
            Self::WslcProvision => "wslc_provision",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ContractVerdict {
    pub version: ContractVersion,
    pub root: RequestRoot,
}

/// Checks `text` against the exact contract its `version` names, with MXC 1.0's verdicts.
pub fn check(text: &str) -> Result<ContractVerdict, PolicyError> {
    check_with(text, MxcRelease::default())
}

pub fn check_with(text: &str, release: MxcRelease) -> Result<ContractVerdict, PolicyError> {
    check_value_as(&parse_strict(text)?, None, release)
}

pub fn check_value(value: &Value) -> Result<ContractVerdict, PolicyError> {
    check_value_as(value, None, MxcRelease::default())
}

/// Checks `text` as one given request root, without MXC's root selection (as MXC's fixture tests
/// read each folder: a one-shot document with a `phase` is an unknown field, not an exec request).
pub fn check_as(text: &str, root: RequestRoot) -> Result<ContractVerdict, PolicyError> {
    check_as_with(text, root, MxcRelease::default())
}

pub fn check_as_with(
    text: &str,
    root: RequestRoot,
    release: MxcRelease,
) -> Result<ContractVerdict, PolicyError> {
    check_value_as(&parse_strict(text)?, Some(root), release)
}

/// Stage 1 reads the version declaration alone; only a known contract reaches stage 2, its exact
/// contract. Under MXC 1.0 the retired contracts stop at stage 1 (with the migration hint).
pub fn check_value_as(
    value: &Value,
    forced: Option<RequestRoot>,
    release: MxcRelease,
) -> Result<ContractVerdict, PolicyError> {
    let root = JsonPath::root();
    let Some(obj) = value.as_object() else {
        return Err(PolicyError::one(
            root,
            "a configuration must be a JSON object",
        ));
    };
    let declared = obj.get("version");
    let exact = declared
        .and_then(Value::as_str)
        .and_then(ContractVersion::parse_exact);
    match exact {
        Some(v) if v.is_registered() => current::check_value_as(value, v, forced),
        Some(v) if release.reads_retired() => legacy::check_value_as(value, v, forced),
        _ if release.reads_retired() => Err(PolicyError::one(
            root.key("version"),
            match declared {
                None => "missing required field".to_string(),
                Some(Value::String(s)) => format!(
                    "\"{s}\" is not a published contract version (0.6.0-alpha, 0.7.0-alpha, \
                     0.8.0-alpha, 0.9.0-alpha, 1.0.0 or 1.1.0-alpha)"
                ),
                Some(other) => format!("expected a string, found {}", crate::shape::kind(other)),
            },
        )),
        _ => {
            let refusal =
                crate::version::check_registered(declared).expect_err("not a registered version");
            Err(PolicyError::one(root.key("version"), refusal.message))
        }
    }
}
