//! MXC 1.0's registered contracts, `0.9.0-alpha`, `1.0.0` and `1.1.0-alpha`, as closed shapes:
//! every request root, every field, its type, range, enum values and whether it is required.
//! The shapes are written from MXC's published JSON Schemas (`../shared/mxc-conformance-1.0/
//! schemas/`); a test holds them to those schemas on generated documents.
//!
//! The check is structural (MXC's `malformed_request` stage). Cross-field and backend rules are
//! the runtime reader's ([`crate::validate`], [`crate::admission`]).

use serde_json::{Map, Value};

use super::{ContractVerdict, ContractVersion, RequestRoot};
use crate::error::{PolicyError, Violation};
use crate::path::JsonPath;
use crate::shape;

/// The type of one field.
#[derive(Debug, Clone, Copy)]
pub enum Ty {
    /// Anything, `null` included (`_comment`).
    Any,
    Str,
    NonEmptyStr,
    Bool,
    /// An integer in `min..=max` (JSON numbers with a fraction are refused, as MXC's reader does).
    Int {
        min: u64,
        max: u64,
    },
    Enum(&'static [&'static str]),
    /// A ProcessContainer capability: no comma, not one of the reserved learning-mode names.
    Capability,
    Array {
        item: &'static Ty,
        min_items: usize,
    },
    Object(&'static Obj),
}

#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub ty: Ty,
    pub required: bool,
}

/// A closed object.
#[derive(Debug)]
pub struct Obj {
    pub fields: &'static [Field],
}

impl Obj {
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

const fn opt(name: &'static str, ty: Ty) -> Field {
    Field {
        name,
        ty,
        required: false,
    }
}
const fn req(name: &'static str, ty: Ty) -> Field {
    Field {
        name,
        ty,
        required: true,
    }
}
const fn arr(item: &'static Ty) -> Ty {
    Ty::Array { item, min_items: 0 }
}
const fn arr1(item: &'static Ty) -> Ty {
    Ty::Array { item, min_items: 1 }
}
const PORT: Ty = Ty::Int { min: 1, max: 65535 };
const U32: Ty = Ty::Int {
    min: 0,
    max: u32::MAX as u64,
};
const U64: Ty = Ty::Int {
    min: 0,
    max: u64::MAX,
};
const STR: Ty = Ty::Str;
const ACTION: Ty = Ty::Enum(&["allow", "deny"]);

static FALLBACK: Obj = Obj {
    fields: &[opt("allowDaclMutation", Ty::Bool)],
};
static FILESYSTEM: Obj = Obj {
    fields: &[
        opt("deniedPaths", arr(&STR)),
        opt("readonlyPaths", arr(&STR)),
        opt("readwritePaths", arr(&STR)),
    ],
};
static LIFECYCLE: Obj = Obj {
    fields: &[
        opt("destroyOnExit", Ty::Bool),
        opt("preservePolicy", Ty::Bool),
    ],
};
static LXC: Obj = Obj {
    fields: &[req("distribution", STR), req("release", STR)],
};
static NETWORK_PORT: Obj = Obj {
    fields: &[
        opt("endPort", PORT),
        opt("port", PORT),
        opt("protocol", Ty::Enum(&["tcp", "udp", "icmp", "any"])),
    ],
};
static NETWORK_PEER: Obj = Obj {
    fields: &[req("cidr", STR), opt("except", arr(&STR))],
};
const PORT_OBJ: Ty = Ty::Object(&NETWORK_PORT);
const PEER_OBJ: Ty = Ty::Object(&NETWORK_PEER);
static NETWORK_RULE: Obj = Obj {
    fields: &[opt("ports", arr1(&PORT_OBJ)), opt("to", arr1(&PEER_OBJ))],
};
const RULE_OBJ: Ty = Ty::Object(&NETWORK_RULE);
static NETWORK_EGRESS: Obj = Obj {
    fields: &[
        opt("allow", arr(&RULE_OBJ)),
        opt("default", ACTION),
        opt("deny", arr(&RULE_OBJ)),
    ],
};
static NETWORK_INGRESS: Obj = Obj {
    fields: &[opt("default", ACTION), opt("hostLoopback", ACTION)],
};
static NETWORK: Obj = Obj {
    fields: &[
        opt("egress", Ty::Object(&NETWORK_EGRESS)),
        opt("ingress", Ty::Object(&NETWORK_INGRESS)),
    ],
};
static PROCESS: Obj = Obj {
    fields: &[
        req("commandLine", Ty::NonEmptyStr),
        opt("cwd", STR),
        opt("env", arr(&STR)),
        opt("inheritDefaultEnv", Ty::Bool),
        opt("timeout", U32),
    ],
};
static CAPTURE_DENIALS: Obj = Obj {
    fields: &[
        opt("mode", Ty::Enum(&["block", "allow"])),
        opt("outputPath", STR),
        opt("retainEtl", Ty::Bool),
    ],
};
static PC_FILESYSTEM: Obj = Obj {
    fields: &[opt("enumeratePaths", arr(&STR))],
};
static PC_NETWORK: Obj = Obj {
    fields: &[opt("allowedProxyPeer", STR)],
};
static PC_UI: Obj = Obj {
    fields: &[
        opt("desktopSystemControl", Ty::Bool),
        opt("ime", Ty::Bool),
        opt(
            "isolation",
            Ty::Enum(&["container", "desktop", "handles", "atoms"]),
        ),
        opt("systemSettings", STR),
    ],
};
static PROCESS_CONTAINER: Obj = Obj {
    fields: &[
        opt("capabilities", arr(&Ty::Capability)),
        opt("captureDenials", Ty::Object(&CAPTURE_DENIALS)),
        opt("filesystem", Ty::Object(&PC_FILESYSTEM)),
        opt("learningMode", Ty::Bool),
        opt("leastPrivilege", Ty::Bool),
        opt("network", Ty::Object(&PC_NETWORK)),
        opt("ui", Ty::Object(&PC_UI)),
    ],
};
static RUNTIME_CONFIG: Obj = Obj {
    fields: &[opt("networkProxy", STR)],
};
static SEATBELT: Obj = Obj {
    fields: &[
        opt("extraMachLookups", arr(&STR)),
        opt("guiAccess", Ty::Bool),
        opt("keychainAccess", Ty::Bool),
        opt("nestedPty", Ty::Bool),
        opt("profileOverride", STR),
    ],
};
static TELEMETRY: Obj = Obj {
    fields: &[opt("enabled", Ty::Bool)],
};
static UI: Obj = Obj {
    fields: &[
        opt("clipboard", Ty::Enum(&["none", "read", "write", "all"])),
        opt("disable", Ty::Bool),
        opt("injection", Ty::Bool),
    ],
};
static PORT_MAPPING: Obj = Obj {
    fields: &[
        req("containerPort", PORT),
        opt("protocol", Ty::Enum(&["tcp"])),
        req("windowsPort", PORT),
    ],
};
const PORT_MAPPING_OBJ: Ty = Ty::Object(&PORT_MAPPING);
static ONE_SHOT_WSLC: Obj = Obj {
    fields: &[
        opt("cpuCount", U32),
        opt("gpu", Ty::Bool),
        opt("image", STR),
        opt("imageTarPath", STR),
        opt("memoryMb", U64),
        opt("portMappings", arr(&PORT_MAPPING_OBJ)),
        opt("storagePath", STR),
        opt("targetOs", STR),
    ],
};
static HYPERLIGHT_1_1: Obj = Obj {
    fields: &[opt(
        "runtime",
        Ty::Enum(&[
            "agent",
            "python",
            "python-shell",
            "node",
            "bash",
            "dotnet-jit",
        ]),
    )],
};
static TEST_1_1: Obj = Obj {
    fields: &[opt("message", STR)],
};
static WINDOWS_SANDBOX_1_1: Obj = Obj {
    fields: &[
        opt("daemonPipeName", STR),
        opt("idleTimeout", U32),
        opt("idleTimeoutMs", U32),
    ],
};
static IS_PROVISION: Obj = Obj {
    fields: &[opt("appId", STR)],
};
static STATE_AWARE_IS: Obj = Obj {
    fields: &[opt("provision", Ty::Object(&IS_PROVISION))],
};
const ALLOW_ONLY: Ty = Ty::Enum(&["allow"]);
static IS_EGRESS: Obj = Obj {
    fields: &[req("default", ALLOW_ONLY)],
};
static IS_INGRESS: Obj = Obj {
    fields: &[req("default", ALLOW_ONLY), req("hostLoopback", ALLOW_ONLY)],
};
/// IsolationSession's fixed all-allow posture (it cannot restrict the network, so it must say so).
static IS_NETWORK: Obj = Obj {
    fields: &[
        req("egress", Ty::Object(&IS_EGRESS)),
        req("ingress", Ty::Object(&IS_INGRESS)),
    ],
};
static WSLC_PROVISION_1_0: Obj = Obj {
    fields: &[opt("image", STR), opt("imageTarPath", STR)],
};
static WSLC_PROVISION_1_1: Obj = Obj {
    fields: &[
        opt("image", STR),
        opt("imageTarPath", STR),
        opt("portMappings", arr(&PORT_MAPPING_OBJ)),
    ],
};
static STATE_AWARE_WSLC_1_0: Obj = Obj {
    fields: &[opt("provision", Ty::Object(&WSLC_PROVISION_1_0))],
};
static STATE_AWARE_WSLC_1_1: Obj = Obj {
    fields: &[opt("provision", Ty::Object(&WSLC_PROVISION_1_1))],
};

const V0_9: Ty = Ty::Enum(&["0.9.0-alpha"]);
const V1_0: Ty = Ty::Enum(&["1.0.0"]);
const V1_1: Ty = Ty::Enum(&["1.1.0-alpha"]);

const CONTAINMENT_0_9: Ty = Ty::Enum(&[
    "process",
    "processcontainer",
    "appcontainer",
    "lxc",
    "bubblewrap",
    "seatbelt",
    "macos_sandbox",
    "isolation_session",
    "wslc",
]);
const CONTAINMENT_1_0: Ty = Ty::Enum(&[
    "process",
    "processcontainer",
    "lxc",
    "bubblewrap",
    "seatbelt",
    "isolation_session",
    "wslc",
]);
const CONTAINMENT_1_1: Ty = Ty::Enum(&[
    "process",
    "processcontainer",
    "lxc",
    "bubblewrap",
    "seatbelt",
    "vm",
    "windows_sandbox",
    "microvm",
    "hyperlight",
    "wslc",
    "isolation_session",
]);

macro_rules! one_shot {
    ($version:expr, $containment:expr; $($extra:expr),* $(,)?) => {
        Obj {
            fields: &[
                opt("$schema", STR),
                opt("_comment", Ty::Any),
                opt("containerId", STR),
                opt("containment", $containment),
                opt("filesystem", Ty::Object(&FILESYSTEM)),
                opt("lifecycle", Ty::Object(&LIFECYCLE)),
                opt("lxc", Ty::Object(&LXC)),
                opt("network", Ty::Object(&NETWORK)),
                req("process", Ty::Object(&PROCESS)),
                opt("processContainer", Ty::Object(&PROCESS_CONTAINER)),
                opt("runtimeConfig", Ty::Object(&RUNTIME_CONFIG)),
                opt("seatbelt", Ty::Object(&SEATBELT)),
                opt("telemetry", Ty::Object(&TELEMETRY)),
                opt("ui", Ty::Object(&UI)),
                req("version", $version),
                opt("wslc", Ty::Object(&ONE_SHOT_WSLC)),
                $($extra),*
            ],
        }
    };
}

static ONE_SHOT_0_9: Obj = one_shot!(V0_9, CONTAINMENT_0_9;
    opt("fallback", Ty::Object(&FALLBACK)),
    opt("appContainer", Ty::Object(&PROCESS_CONTAINER)),
    opt("macos_sandbox", Ty::Object(&SEATBELT)),
);
static ONE_SHOT_1_0: Obj = one_shot!(V1_0, CONTAINMENT_1_0;
    opt("fallback", Ty::Object(&FALLBACK)),
);
static ONE_SHOT_1_1: Obj = one_shot!(V1_1, CONTAINMENT_1_1;
    opt("hyperlight", Ty::Object(&HYPERLIGHT_1_1)),
    opt("test", Ty::Object(&TEST_1_1)),
    opt("windowsSandbox", Ty::Object(&WINDOWS_SANDBOX_1_1)),
);

macro_rules! lifecycle_root {
    ($version:expr, $phase:expr) => {
        Obj {
            fields: &[
                opt("$schema", STR),
                opt("_comment", Ty::Any),
                req("phase", Ty::Enum(&[$phase])),
                req("sandboxId", STR),
                opt("telemetry", Ty::Object(&TELEMETRY)),
                req("version", $version),
            ],
        }
    };
}
macro_rules! exec_root {
    ($version:expr) => {
        Obj {
            fields: &[
                opt("$schema", STR),
                opt("_comment", Ty::Any),
                opt("network", Ty::Object(&NETWORK)),
                req("phase", Ty::Enum(&["exec"])),
                req("process", Ty::Object(&PROCESS)),
                opt("runtimeConfig", Ty::Object(&RUNTIME_CONFIG)),
                req("sandboxId", STR),
                opt("telemetry", Ty::Object(&TELEMETRY)),
                req("version", $version),
            ],
        }
    };
}
macro_rules! is_provision_root {
    ($version:expr) => {
        Obj {
            fields: &[
                opt("$schema", STR),
                opt("_comment", Ty::Any),
                req("containment", Ty::Enum(&["isolation_session"])),
                opt("isolationSession", Ty::Object(&STATE_AWARE_IS)),
                req("network", Ty::Object(&IS_NETWORK)),
                req("phase", Ty::Enum(&["provision"])),
                opt("telemetry", Ty::Object(&TELEMETRY)),
                req("version", $version),
            ],
        }
    };
}
macro_rules! wslc_provision_root {
    ($version:expr, $wslc:expr) => {
        Obj {
            fields: &[
                opt("$schema", STR),
                opt("_comment", Ty::Any),
                req("containment", Ty::Enum(&["wslc"])),
                opt("filesystem", Ty::Object(&FILESYSTEM)),
                opt("network", Ty::Object(&NETWORK)),
                req("phase", Ty::Enum(&["provision"])),
                opt("telemetry", Ty::Object(&TELEMETRY)),
                req("version", $version),
                opt("wslc", Ty::Object($wslc)),
            ],
        }
    };
}

static START_0_9: Obj = lifecycle_root!(V0_9, "start");
static STOP_0_9: Obj = lifecycle_root!(V0_9, "stop");
static DEPROVISION_0_9: Obj = lifecycle_root!(V0_9, "deprovision");
static EXEC_0_9: Obj = exec_root!(V0_9);
static IS_PROVISION_0_9: Obj = is_provision_root!(V0_9);
static WSLC_PROVISION_0_9: Obj = wslc_provision_root!(V0_9, &STATE_AWARE_WSLC_1_0);

static START_1_0: Obj = lifecycle_root!(V1_0, "start");
static STOP_1_0: Obj = lifecycle_root!(V1_0, "stop");
static DEPROVISION_1_0: Obj = lifecycle_root!(V1_0, "deprovision");
static EXEC_1_0: Obj = exec_root!(V1_0);
static IS_PROVISION_1_0: Obj = is_provision_root!(V1_0);
static WSLC_PROVISION_1_0_ROOT: Obj = wslc_provision_root!(V1_0, &STATE_AWARE_WSLC_1_0);

static START_1_1: Obj = lifecycle_root!(V1_1, "start");
static STOP_1_1: Obj = lifecycle_root!(V1_1, "stop");
static DEPROVISION_1_1: Obj = lifecycle_root!(V1_1, "deprovision");
static EXEC_1_1: Obj = exec_root!(V1_1);
static IS_PROVISION_1_1: Obj = is_provision_root!(V1_1);
static WSLC_PROVISION_1_1_ROOT: Obj = wslc_provision_root!(V1_1, &STATE_AWARE_WSLC_1_1);
static WINDOWS_SANDBOX_PROVISION_1_1: Obj = Obj {
    fields: &[
        opt("$schema", STR),
        opt("_comment", Ty::Any),
        req("containment", Ty::Enum(&["windows_sandbox"])),
        opt("filesystem", Ty::Object(&FILESYSTEM)),
        req("phase", Ty::Enum(&["provision"])),
        opt("telemetry", Ty::Object(&TELEMETRY)),
        req("version", V1_1),
    ],
};

/// The closed shape of `root` in `version`, or `None` when the version has no such root.
pub fn root_shape(version: ContractVersion, root: RequestRoot) -> Option<&'static Obj> {
    use ContractVersion as V;
    use RequestRoot as R;
    Some(match (version, root) {
        (V::V0_9Alpha, R::OneShot) => &ONE_SHOT_0_9,
        (V::V0_9Alpha, R::Start) => &START_0_9,
        (V::V0_9Alpha, R::Stop) => &STOP_0_9,
        (V::V0_9Alpha, R::Deprovision) => &DEPROVISION_0_9,
        (V::V0_9Alpha, R::Exec) => &EXEC_0_9,
        (V::V0_9Alpha, R::IsolationSessionProvision) => &IS_PROVISION_0_9,
        (V::V0_9Alpha, R::WslcProvision) => &WSLC_PROVISION_0_9,
        (V::V1_0, R::OneShot) => &ONE_SHOT_1_0,
        (V::V1_0, R::Start) => &START_1_0,
        (V::V1_0, R::Stop) => &STOP_1_0,
        (V::V1_0, R::Deprovision) => &DEPROVISION_1_0,
        (V::V1_0, R::Exec) => &EXEC_1_0,
        (V::V1_0, R::IsolationSessionProvision) => &IS_PROVISION_1_0,
        (V::V1_0, R::WslcProvision) => &WSLC_PROVISION_1_0_ROOT,
        (V::V1_1Alpha, R::OneShot) => &ONE_SHOT_1_1,
        (V::V1_1Alpha, R::Start) => &START_1_1,
        (V::V1_1Alpha, R::Stop) => &STOP_1_1,
        (V::V1_1Alpha, R::Deprovision) => &DEPROVISION_1_1,
        (V::V1_1Alpha, R::Exec) => &EXEC_1_1,
        (V::V1_1Alpha, R::IsolationSessionProvision) => &IS_PROVISION_1_1,
        (V::V1_1Alpha, R::WslcProvision) => &WSLC_PROVISION_1_1_ROOT,
        (V::V1_1Alpha, R::WindowsSandboxProvision) => &WINDOWS_SANDBOX_PROVISION_1_1,
        _ => return None,
    })
}

/// The roots `version` defines.
pub fn roots(version: ContractVersion) -> Vec<RequestRoot> {
    RequestRoot::ALL
        .into_iter()
        .filter(|r| root_shape(version, *r).is_some())
        .collect()
}

/// MXC's root selection: `phase`, then the provision `containment`.
pub fn select_root(
    obj: &Map<String, Value>,
    version: ContractVersion,
) -> Result<RequestRoot, PolicyError> {
    let root = JsonPath::root();
    let Some(phase) = obj.get("phase") else {
        return Ok(RequestRoot::OneShot);
    };
    let Value::String(phase) = phase else {
        return Err(PolicyError::one(
            root.key("phase"),
            format!("expected a string, found {}", shape::kind(phase)),
        ));
    };
    let r = match phase.as_str() {
        "start" => RequestRoot::Start,
        "exec" => RequestRoot::Exec,
        "stop" => RequestRoot::Stop,
        "deprovision" => RequestRoot::Deprovision,
        "provision" => {
            let provisionable: Vec<&str> = roots(version)
                .into_iter()
                .filter_map(RequestRoot::provision_containment)
                .collect();
            let named = obj.get("containment").and_then(Value::as_str);
            match RequestRoot::ALL
                .into_iter()
                .find(|r| r.provision_containment().is_some() && r.provision_containment() == named)
            {
                Some(r) if root_shape(version, r).is_some() => r,
                _ => {
                    return Err(PolicyError::one(
                        root.key("containment"),
                        format!(
                            "{}: a {} provision request needs containment {}",
                            match obj.get("containment") {
                                Some(Value::String(c)) => format!("\"{c}\" cannot be provisioned"),
                                Some(other) =>
                                    format!("expected a string, found {}", shape::kind(other)),
                                None => "missing".to_string(),
                            },
                            version.as_str(),
                            provisionable.join(" or ")
                        ),
                    ));
                }
            }
        }
        other => {
            return Err(PolicyError::one(
                root.key("phase"),
                format!("unknown phase \"{other}\" (provision, start, exec, stop or deprovision)"),
            ));
        }
    };
    Ok(r)
}

/// Checks `value` (which declares `version`, a registered contract) against its exact contract,
/// as the root MXC selects or as `forced`.
pub fn check_value_as(
    value: &Value,
    version: ContractVersion,
    forced: Option<RequestRoot>,
) -> Result<ContractVerdict, PolicyError> {
    let path = JsonPath::root();
    let Some(obj) = value.as_object() else {
        return Err(PolicyError::one(
            path,
            "a configuration must be a JSON object",
        ));
    };
    let root = match forced {
        Some(r) => r,
        None => select_root(obj, version)?,
    };
    let Some(shape) = root_shape(version, root) else {
        return Err(PolicyError::one(
            path,
            format!(
                "contract {} has no {} request root",
                version.as_str(),
                root.as_str()
            ),
        ));
    };
    let mut errs = Vec::new();
    check_root(obj, shape, version, root, &mut errs);
    if errs.is_empty() {
        Ok(ContractVerdict { version, root })
    } else {
        Err(PolicyError::Invalid(errs))
    }
}

/// The root object and the rules the schemas state beside the shapes: IsolationSession's fixed
/// posture, and (0.9) no alias together with its canonical spelling.
pub fn check_root(
    obj: &Map<String, Value>,
    shape: &Obj,
    version: ContractVersion,
    root: RequestRoot,
    errs: &mut Vec<Violation>,
) {
    let mut path = JsonPath::root();
    check_object(obj, shape, &mut path, Some((version, root)), errs);
    if root == RequestRoot::OneShot
        && obj.get("containment").and_then(Value::as_str) == Some("isolation_session")
    {
        match obj.get("network") {
            None => errs.push(Violation::new(
                path.key("network"),
                "missing required field: an isolation_session request must state its unrestricted network posture (egress.default, ingress.default and ingress.hostLoopback 'allow')",
            )),
            Some(n) => {
                let before = errs.len();
                let mut p = path.key("network");
                check(n, &Ty::Object(&IS_NETWORK), &mut p, errs);
                for e in &mut errs[before..] {
                    e.message = format!(
                        "{} (isolation_session cannot restrict the network: it requires egress.default, ingress.default and ingress.hostLoopback 'allow', and nothing else)",
                        e.message
                    );
                }
            }
        }
        if obj
            .get("runtimeConfig")
            .and_then(Value::as_object)
            .is_some_and(|r| r.contains_key("networkProxy"))
        {
            errs.push(Violation::new(
                path.key("runtimeConfig").key("networkProxy"),
                "not allowed for isolation_session (it cannot route through a proxy)",
            ));
        }
    }
    if version == ContractVersion::V0_9Alpha && root == RequestRoot::OneShot {
        for (a, b) in [
            ("processContainer", "appContainer"),
            ("seatbelt", "macos_sandbox"),
        ] {
            if obj.contains_key(a) && obj.contains_key(b) {
                errs.push(Violation::new(
                    path.key(b),
                    format!("duplicate field: \"{b}\" is an alias of \"{a}\""),
                ));
            }
        }
    }
}

fn check_object(
    obj: &Map<String, Value>,
    shape: &Obj,
    path: &mut JsonPath,
    at_root: Option<(ContractVersion, RequestRoot)>,
    errs: &mut Vec<Violation>,
) {
    for (k, v) in obj {
        match shape.field(k) {
            Some(f) => {
                path.push_key(k);
                check(v, &f.ty, path, errs);
                path.pop();
            }
            None => {
                let known: Vec<&str> = shape.fields.iter().map(|f| f.name).collect();
                let message = match at_root {
                    Some((version, root)) => format!(
                        "unknown field for a {} {} request (known: {})",
                        version.as_str(),
                        root.as_str(),
                        known.join(", ")
                    ),
                    None => format!("unknown field (known: {})", known.join(", ")),
                };
                errs.push(Violation::new(path.key(k), message));
            }
        }
    }
    for f in shape.fields.iter().filter(|f| f.required) {
        if !obj.contains_key(f.name) {
            errs.push(Violation::new(path.key(f.name), "missing required field"));
        }
    }
}

fn check(v: &Value, ty: &Ty, path: &mut JsonPath, errs: &mut Vec<Violation>) {
    let wrong = |want: &str, errs: &mut Vec<Violation>, path: &JsonPath| {
        let message = if v.is_null() {
            "null is not allowed; omit the field".to_string()
        } else {
            format!("expected {want}, found {}", shape::kind(v))
        };
        errs.push(Violation::new(path.clone(), message));
    };
    match ty {
        Ty::Any => {}
        Ty::Str => {
            if !v.is_string() {
                wrong("a string", errs, path);
            }
        }
        Ty::NonEmptyStr => match v {
            Value::String(s) if s.is_empty() => {
                errs.push(Violation::new(path.clone(), "must not be empty"))
            }
            Value::String(_) => {}
            _ => wrong("a non-empty string", errs, path),
        },
        Ty::Bool => {
            if !v.is_boolean() {
                wrong("a boolean", errs, path);
            }
        }
        Ty::Int { min, max } => match v.as_u64() {
            Some(n) if n >= *min && n <= *max => {}
            Some(_) => errs.push(Violation::new(
                path.clone(),
                format!("must be between {min} and {max}"),
            )),
            None if v.is_i64() => errs.push(Violation::new(
                path.clone(),
                format!("must be between {min} and {max}"),
            )),
            None => wrong("an integer", errs, path),
        },
        Ty::Enum(values) => match v.as_str() {
            Some(s) if values.contains(&s) => {}
            Some(s) => errs.push(Violation::new(
                path.clone(),
                format!("\"{s}\" is not one of: {}", values.join(", ")),
            )),
            None => wrong("a string", errs, path),
        },
        Ty::Capability => match v.as_str() {
            Some(c) if c.contains(',') => errs.push(Violation::new(
                path.clone(),
                format!(
                    "capability \"{c}\" must not contain a comma; list each capability separately"
                ),
            )),
            Some(c)
                if c.eq_ignore_ascii_case("learningModeLogging")
                    || c.eq_ignore_ascii_case("permissiveLearningMode") =>
            {
                errs.push(Violation::new(
                    path.clone(),
                    format!("capability \"{c}\" is reserved; use processContainer.learningMode"),
                ))
            }
            Some(_) => {}
            None => wrong("a string", errs, path),
        },
        Ty::Array { item, min_items } => match v.as_array() {
            Some(a) => {
                if a.len() < *min_items {
                    errs.push(Violation::new(path.clone(), "must not be empty"));
                }
                for (i, x) in a.iter().enumerate() {
                    path.push_index(i);
                    check(x, item, path, errs);
                    path.pop();
                }
            }
            None => wrong("an array", errs, path),
        },
        Ty::Object(shape) => match v.as_object() {
            Some(o) => check_object(o, shape, path, None, errs),
            None => wrong("an object", errs, path),
        },
    }
}
