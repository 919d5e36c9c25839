//! MXC's retired exact contracts (`0.6.0-alpha`, `0.7.0-alpha`, `0.8.0-alpha` and the 0.8
//! state-aware request roots), as MXC 0.8's `mxc_config_contract` crate defined them. Read only
//! under `--mxc-release 0.8`; unchanged from agentcell's MXC 0.8 reader.

use serde_json::{Map, Value};

use super::{ContractVerdict, ContractVersion, RequestRoot};
use crate::error::{PolicyError, Violation};
use crate::model::{ContainerConfig, Experimental};
use crate::path::JsonPath;
use crate::shape;

const ANNOTATIONS: [&str; 2] = ["$schema", "_comment"];
const ONE_SHOT_06: &[&str] = &[
    "version",
    "containerId",
    "containment",
    "lifecycle",
    "process",
    "filesystem",
    "fallback",
    "network",
    "ui",
    "processContainer",
    "appContainer",
    "lxc",
];
const ONE_SHOT_07_EXTRA: &[&str] = &["$schema", "_comment", "seatbelt", "macos_sandbox"];
const ONE_SHOT_08_EXTRA: &[&str] = &["runtimeConfig", "experimental"];
const PHASE_COMMON: &[&str] = &["$schema", "_comment", "version", "phase"];

const CONTAINMENT_06: &[&str] = &[
    "process",
    "processcontainer",
    "appcontainer",
    "lxc",
    "bubblewrap",
];
const CONTAINMENT_07_EXTRA: &[&str] = &["seatbelt", "macos_sandbox"];
const CONTAINMENT_08_EXTRA: &[&str] = &[
    "vm",
    "windows_sandbox",
    "microvm",
    "hyperlight",
    "wslc",
    "isolation_session",
];

/// Checks a document that declares the retired contract `version` (already matched exactly).
pub(super) fn check_value_as(
    value: &Value,
    version: ContractVersion,
    forced: Option<RequestRoot>,
) -> Result<ContractVerdict, PolicyError> {
    let root = JsonPath::root();
    let Some(obj) = value.as_object() else {
        return Err(PolicyError::one(
            root,
            "a configuration must be a JSON object",
        ));
    };
    // Fields MXC added from 0.9.0-alpha on did not exist in these contracts.
    if let Some((path, message)) = crate::model::retired_unknown_field(value) {
        return Err(PolicyError::one(path, message));
    }
    let mut errs = Vec::new();
    shape::check_no_null_outside_comment(value, &root, &mut errs);
    if !errs.is_empty() {
        return Err(PolicyError::Invalid(errs));
    }

    let root_kind = match forced {
        None => select_root(obj, version)?,
        Some(r) => {
            check_markers(obj, r)?;
            r
        }
    };
    let (allowed, required) = root_keys(version, root_kind);
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) {
            errs.push(Violation::new(
                root.key(k),
                format!(
                    "unknown field for a {} {} request",
                    version.as_str(),
                    root_kind.as_str()
                ),
            ));
        }
    }
    for k in &required {
        if !obj.contains_key(*k) {
            errs.push(Violation::new(root.key(k), "missing required field"));
        }
    }
    for (a, b) in [
        ("processContainer", "appContainer"),
        ("seatbelt", "macos_sandbox"),
    ] {
        if obj.contains_key(a) && obj.contains_key(b) {
            errs.push(Violation::new(
                root.key(b),
                format!("duplicate field: \"{b}\" is an alias of \"{a}\""),
            ));
        }
    }
    if !errs.is_empty() {
        return Err(PolicyError::Invalid(errs));
    }

    // Shapes, types and enum values of everything but `experimental` come from the runtime model
    // (closed objects); what the contracts add is checked below.
    let mut stripped = obj.clone();
    let experimental = stripped.remove("experimental");
    if root_kind == RequestRoot::IsolationSessionProvision {
        stripped.remove("network");
    }
    let cfg: ContainerConfig = crate::document::typed_at(&Value::Object(stripped), &root)?;

    shape::check_objects_not_arrays(value, &root, &mut errs);
    if !errs.is_empty() {
        return Err(PolicyError::Invalid(errs));
    }
    if let Some(Value::String(c)) = obj.get("containment") {
        let mut ok: Vec<&str> = CONTAINMENT_06.to_vec();
        if version >= ContractVersion::V0_7 {
            ok.extend(CONTAINMENT_07_EXTRA);
        }
        if version >= ContractVersion::V0_8 {
            ok.extend(CONTAINMENT_08_EXTRA);
        }
        if root_kind == RequestRoot::OneShot && !ok.contains(&c.as_str()) {
            errs.push(Violation::new(
                root.key("containment"),
                format!(
                    "\"{c}\" is not a containment of schema {}",
                    version.as_str()
                ),
            ));
        }
    }
    if let Some(p) = &cfg.process {
        let path = root.key("process").key("commandLine");
        match p.command_line.as_deref() {
            None => errs.push(Violation::new(path, "missing required field")),
            Some("") => errs.push(Violation::new(path, "must not be empty")),
            Some(_) => {}
        }
    }
    if let Some(l) = &cfg.lxc {
        for (name, v) in [("distribution", &l.distribution), ("release", &l.release)] {
            if v.is_none() {
                errs.push(Violation::new(
                    root.key("lxc").key(name),
                    "missing required field",
                ));
            }
        }
    }
    if let Some(n) = &cfg.network {
        let np = root.key("network");
        if version < ContractVersion::V0_8 {
            for (k, present) in [
                ("egress", n.egress.is_some()),
                ("ingress", n.ingress.is_some()),
            ] {
                if present {
                    errs.push(Violation::new(np.key(k), "unknown field before schema 0.8"));
                }
            }
        }
        if let Some(raw) = obj.get("network").and_then(|v| v.get("proxy")) {
            check_contract_proxy(raw, &np.key("proxy"), &mut errs);
        }
        for (list, rules) in n
            .egress
            .iter()
            .flat_map(|e| [("allow", &e.allow), ("deny", &e.deny)])
        {
            for (i, r) in rules.iter().flatten().enumerate() {
                let rp = np.key("egress").key(list).index(i);
                if r.to.as_ref().is_some_and(Vec::is_empty) {
                    errs.push(Violation::new(rp.key("to"), "array must not be empty"));
                }
                if r.ports.as_ref().is_some_and(Vec::is_empty) {
                    errs.push(Violation::new(rp.key("ports"), "array must not be empty"));
                }
                for (j, p) in r.ports.iter().flatten().enumerate() {
                    for (k, v) in [("port", p.port), ("endPort", p.end_port)] {
                        if v == Some(0) {
                            errs.push(Violation::new(
                                rp.key("ports").index(j).key(k),
                                "must be between 1 and 65535",
                            ));
                        }
                    }
                }
            }
        }
    }
    if let Some(pc) = &cfg.process_container {
        let key = if obj.contains_key("appContainer") {
            "appContainer"
        } else {
            "processContainer"
        };
        let pp = root.key(key);
        if version < ContractVersion::V0_8 {
            for (k, present) in [
                ("learningMode", pc.learning_mode.is_some()),
                ("captureDenials", pc.capture_denials.is_some()),
                ("network", pc.network.is_some()),
            ] {
                if present {
                    errs.push(Violation::new(pp.key(k), "unknown field before schema 0.8"));
                }
            }
        } else {
            crate::validate::check_capabilities(pc, &pp, &mut errs);
        }
    }
    if root_kind == RequestRoot::IsolationSessionProvision {
        check_isolation_session_network(obj.get("network"), &root.key("network"), &mut errs);
    }
    if let Some(exp) = &experimental {
        check_contract_experimental(exp, root_kind, &root.key("experimental"), &mut errs);
    }
    if errs.is_empty() {
        Ok(ContractVerdict {
            version,
            root: root_kind,
        })
    } else {
        Err(PolicyError::Invalid(errs))
    }
}

fn select_root(
    obj: &Map<String, Value>,
    version: ContractVersion,
) -> Result<RequestRoot, PolicyError> {
    let root = JsonPath::root();
    let Some(phase) = obj.get("phase") else {
        return Ok(RequestRoot::OneShot);
    };
    if version < ContractVersion::V0_8 {
        // 0.6 and 0.7 have no state-aware roots: `phase` is an unknown field there.
        return Err(PolicyError::one(
            root.key("phase"),
            format!(
                "unknown field: schema {} has no state-aware requests",
                version.as_str()
            ),
        ));
    }
    let Value::String(phase) = phase else {
        return Err(PolicyError::one(root.key("phase"), "expected a string"));
    };
    Ok(match phase.as_str() {
        "start" => RequestRoot::Start,
        "exec" => RequestRoot::Exec,
        "stop" => RequestRoot::Stop,
        "deprovision" => RequestRoot::Deprovision,
        "provision" => match obj.get("containment") {
            Some(Value::String(c)) if c == "windows_sandbox" => {
                RequestRoot::WindowsSandboxProvision
            }
            Some(Value::String(c)) if c == "isolation_session" => {
                RequestRoot::IsolationSessionProvision
            }
            Some(Value::String(c)) if c == "wslc" => RequestRoot::WslcProvision,
            Some(Value::String(c)) => {
                return Err(PolicyError::one(
                    root.key("containment"),
                    format!(
                        "\"{c}\" cannot be provisioned (windows_sandbox, isolation_session or wslc)"
                    ),
                ));
            }
            _ => {
                return Err(PolicyError::one(
                    root.key("containment"),
                    "a provision request requires a containment string",
                ));
            }
        },
        other => {
            return Err(PolicyError::one(
                root.key("phase"),
                format!("unknown phase \"{other}\" (provision, start, exec, stop or deprovision)"),
            ));
        }
    })
}

/// The `phase` and provision `containment` markers a forced root requires.
fn check_markers(obj: &Map<String, Value>, root: RequestRoot) -> Result<(), PolicyError> {
    let (phase, containment) = match root {
        RequestRoot::OneShot => return Ok(()),
        RequestRoot::Start => ("start", None),
        RequestRoot::Exec => ("exec", None),
        RequestRoot::Stop => ("stop", None),
        RequestRoot::Deprovision => ("deprovision", None),
        RequestRoot::WindowsSandboxProvision => ("provision", Some("windows_sandbox")),
        RequestRoot::IsolationSessionProvision => ("provision", Some("isolation_session")),
        RequestRoot::WslcProvision => ("provision", Some("wslc")),
    };
    let p = JsonPath::root();
    if obj.get("phase") != Some(&Value::String(phase.into())) {
        return Err(PolicyError::one(
            p.key("phase"),
            format!("must be \"{phase}\" for a {} request", root.as_str()),
        ));
    }
    if let Some(c) = containment
        && obj.get("containment") != Some(&Value::String(c.into()))
    {
        return Err(PolicyError::one(
            p.key("containment"),
            format!("must be \"{c}\" for a {} request", root.as_str()),
        ));
    }
    Ok(())
}

fn root_keys(
    version: ContractVersion,
    root: RequestRoot,
) -> (Vec<&'static str>, Vec<&'static str>) {
    let mut allowed: Vec<&str> = Vec::new();
    let mut required = vec!["version"];
    match root {
        RequestRoot::OneShot => {
            allowed.extend(ONE_SHOT_06);
            if version >= ContractVersion::V0_7 {
                allowed.extend(ONE_SHOT_07_EXTRA);
            }
            if version >= ContractVersion::V0_8 {
                allowed.extend(ONE_SHOT_08_EXTRA);
            }
            required.push("process");
        }
        RequestRoot::Start | RequestRoot::Stop | RequestRoot::Deprovision | RequestRoot::Exec => {
            allowed.extend(PHASE_COMMON);
            allowed.extend(["sandboxId", "correlationVector", "experimental"]);
            required.extend(["phase", "sandboxId"]);
            if root == RequestRoot::Exec {
                allowed.extend(["process", "network"]);
                required.push("process");
            }
        }
        RequestRoot::WindowsSandboxProvision
        | RequestRoot::IsolationSessionProvision
        | RequestRoot::WslcProvision => {
            allowed.extend(PHASE_COMMON);
            allowed.extend(["containment", "experimental"]);
            required.extend(["phase", "containment"]);
            match root {
                RequestRoot::WindowsSandboxProvision => allowed.push("filesystem"),
                RequestRoot::IsolationSessionProvision => {
                    allowed.push("network");
                    required.push("network");
                }
                _ => allowed.extend(["filesystem", "network"]),
            }
        }
    }
    debug_assert!(
        ANNOTATIONS
            .iter()
            .all(|a| version == ContractVersion::V0_6 || allowed.contains(a))
    );
    (allowed, required)
}

/// The contracts read a proxy as an externally tagged enum: an object with exactly one key.
fn check_contract_proxy(raw: &Value, path: &JsonPath, errs: &mut Vec<Violation>) {
    let Some(o) = raw.as_object() else { return };
    if o.len() != 1 {
        errs.push(Violation::new(
            path.clone(),
            "must have exactly one of builtinTestServer, localhost or url",
        ));
        return;
    }
    match o.iter().next() {
        Some((k, Value::Number(n)))
            if k == "localhost" && !matches!(n.as_u64(), Some(1..=65535)) =>
        {
            errs.push(Violation::new(
                path.key(k),
                "must be a port between 1 and 65535",
            ));
        }
        Some((k, v)) if k == "builtinTestServer" && v != &Value::Bool(true) => {
            errs.push(Violation::new(path.key(k), "expected true"));
        }
        _ => {}
    }
}

fn check_isolation_session_network(
    raw: Option<&Value>,
    path: &JsonPath,
    errs: &mut Vec<Violation>,
) {
    let Some(Value::Object(o)) = raw else {
        if raw.is_some() {
            errs.push(Violation::new(path.clone(), "expected an object"));
        }
        return;
    };
    for k in o.keys() {
        if k != "defaultPolicy" && k != "allowLocalNetwork" {
            errs.push(Violation::new(
                path.key(k),
                "unknown field for an isolation_session provision",
            ));
        }
    }
    if o.get("defaultPolicy") != Some(&Value::String("allow".into())) {
        errs.push(Violation::new(
            path.key("defaultPolicy"),
            "must be \"allow\" (required acknowledgement)",
        ));
    }
    if o.get("allowLocalNetwork") != Some(&Value::Bool(true)) {
        errs.push(Violation::new(
            path.key("allowLocalNetwork"),
            "must be true (required acknowledgement)",
        ));
    }
}

fn check_contract_experimental(
    raw: &Value,
    root: RequestRoot,
    path: &JsonPath,
    errs: &mut Vec<Violation>,
) {
    let Some(o) = raw.as_object() else {
        errs.push(Violation::new(path.clone(), "expected an object"));
        return;
    };
    // Allowed keys per level; nested tables name the closed sub-objects.
    type Level = (&'static str, &'static [&'static str]);
    let top: &[&str] = match root {
        RequestRoot::OneShot => &["test", "windows_sandbox", "wslc", "telemetry"],
        RequestRoot::IsolationSessionProvision => &["isolation_session", "telemetry"],
        RequestRoot::WslcProvision => &["wslc", "telemetry"],
        _ => &["telemetry"],
    };
    let nested: &[Level] = match root {
        RequestRoot::OneShot => &[
            ("test", &["message"]),
            (
                "windows_sandbox",
                &["idleTimeoutMs", "idleTimeout", "daemonPipeName"],
            ),
            (
                "wslc",
                &[
                    "targetOs",
                    "image",
                    "imageTarPath",
                    "cpuCount",
                    "memoryMb",
                    "gpu",
                    "storagePath",
                    "portMappings",
                ],
            ),
            ("telemetry", &["enabled"]),
        ],
        RequestRoot::IsolationSessionProvision => &[
            ("isolation_session", &["provision"]),
            ("telemetry", &["enabled"]),
        ],
        RequestRoot::WslcProvision => &[("wslc", &["provision"]), ("telemetry", &["enabled"])],
        _ => &[("telemetry", &["enabled"])],
    };
    for (k, v) in o {
        if !top.contains(&k.as_str()) {
            errs.push(Violation::new(
                path.key(k),
                format!(
                    "unknown experimental feature for a {} request",
                    root.as_str()
                ),
            ));
            continue;
        }
        let Some(inner) = v.as_object() else {
            errs.push(Violation::new(path.key(k), "expected an object"));
            continue;
        };
        let keys = nested
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, ks)| *ks)
            .unwrap_or_default();
        for ik in inner.keys() {
            if !keys.contains(&ik.as_str()) {
                errs.push(Violation::new(path.key(k).key(ik), "unknown field"));
            }
        }
        let sub_closed: &[&str] = match (k.as_str(), root) {
            ("wslc", RequestRoot::WslcProvision) => &["image", "imageTarPath"],
            ("isolation_session", _) => &["appId"],
            _ => &[],
        };
        if let Some(Value::Object(p)) = inner.get("provision") {
            for pk in p.keys() {
                if !sub_closed.contains(&pk.as_str()) {
                    errs.push(Violation::new(
                        path.key(k).key("provision").key(pk),
                        "unknown field",
                    ));
                }
            }
        }
        if let Some(Value::Array(maps)) = inner.get("portMappings") {
            for (i, m) in maps.iter().enumerate() {
                let mp = path.key(k).key("portMappings").index(i);
                let Some(m) = m.as_object() else { continue };
                for mk in m.keys() {
                    if !["windowsPort", "containerPort", "protocol"].contains(&mk.as_str()) {
                        errs.push(Violation::new(mp.key(mk), "unknown field"));
                    }
                }
                for rk in ["windowsPort", "containerPort"] {
                    match m.get(rk).and_then(Value::as_u64) {
                        Some(1..=65535) => {}
                        Some(_) => {
                            errs.push(Violation::new(mp.key(rk), "must be between 1 and 65535"))
                        }
                        None => errs.push(Violation::new(mp.key(rk), "missing required field")),
                    }
                }
            }
        }
    }
    if errs.is_empty()
        && let Err(e) = crate::document::typed_at::<Experimental>(raw, path)
    {
        errs.extend(e.violations());
    }
}
