//! `agentcell policy migrate`: a retired 0.6–0.8 document rewritten as MXC 1.0.0, where MXC's
//! mapping is exact, or refused naming every field that has no 1.0 equivalent.
//!
//! The mapping (the document's meaning as MXC 0.8 read it, see [`crate::document`]):
//! - `version` → `1.0.0`; aliases (`appcontainer`, `appContainer`, `macos_sandbox`) → their
//!   canonical spelling; `experimental.telemetry` and `experimental.wslc` → the top-level sections.
//! - Legacy network → directional: `defaultPolicy` → `egress.default`; IP/CIDR `blockedHosts` and
//!   `allowedHosts` → one deny and one allow rule (host bits masked, IPv4-mapped IPv6 written as
//!   IPv4, as MXC 0.8's backends read them); `allowLocalNetwork` → `ingress.default`, with
//!   `hostLoopback` deny; a loopback proxy → `runtimeConfig.networkProxy` (only the proxy was
//!   reachable: host lists and `defaultPolicy` beside it had no effect); `enforcementMode`
//!   dropped (1.0 always enforces); LXC's pre-0.8 DNS exemption → an explicit allow rule for
//!   UDP/TCP 53.
//! - `process.env` omitted → `[]`: MXC 0.8 set nothing, MXC 1.0 would add its default block.
//! - A `SandboxPolicy` becomes the `ContainerConfig` it means (MXC's SDK conversion); its `env`
//!   could not be written otherwise.
//!
//! No 1.0 equivalent: host names in host lists, malformed host entries, remote or built-in test
//! proxies, `seatbelt.launchMethod`, `experimental.test` and `experimental.windows_sandbox` (1.1
//! only), the DNS exemption together with blocked hosts (1.0's deny outranks it), IPv4-mapped
//! IPv6 in a 0.8 directional rule (0.8 read it as IPv6, 1.0 as IPv4), `correlationVector`, the
//! windows_sandbox provision root. The result must then be valid 1.0.0 under MXC 1.0's rules for
//! its backend, or the migration is refused with those rules' reasons.

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::document::{DocumentKind, Note, ParseOptions};
use crate::error::{PolicyError, Violation};
use crate::json::parse_strict;
use crate::model::{DefaultPolicy, EnforcementMode};
use crate::netspec::{self, HostEntry, NetworkSpec, ProxyEndpoint, ProxyForm};
use crate::path::JsonPath;
use crate::release::MxcRelease;
use crate::version::ContractVersion;

/// `$schema` of a migrated document that had one.
pub const SCHEMA_1_0: &str =
    "https://github.com/microsoft/mxc/blob/main/schemas/stable/mxc-config.schema.1.0.0.json";

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Migration {
    /// The 1.0.0 document.
    pub document: Value,
    /// What the rewrite did that the author should know.
    pub notes: Vec<Note>,
}

impl Migration {
    /// The document as `policy migrate` prints it.
    pub fn pretty(&self) -> String {
        serde_json::to_string_pretty(&self.document).expect("json")
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MigrateError {
    #[error("only 1.0.0 (MXC's stable contract) is a migration target, not {0:?}")]
    Target(String),
    #[error("version: already {0}, one of MXC 1.0's registered contracts; nothing to migrate")]
    AlreadyCurrent(ContractVersion),
    /// MXC 0.8 refused the document itself.
    #[error("not a valid retired document: {0}")]
    Invalid(PolicyError),
    /// Fields that mean something MXC 1.0 cannot say.
    #[error("no MXC 1.0 equivalent: {}", join(.0))]
    NoEquivalent(Vec<Violation>),
    /// The rewritten document is refused by MXC 1.0's rules (for its backend).
    #[error("the 1.0.0 document would be refused: {}", join(.0))]
    Refused(Vec<Violation>),
}

impl MigrateError {
    pub fn violations(&self) -> Vec<Violation> {
        match self {
            Self::Target(_) | Self::AlreadyCurrent(_) => {
                vec![Violation::new(
                    JsonPath::root().key("version"),
                    self.to_string(),
                )]
            }
            Self::Invalid(e) => e.violations(),
            Self::NoEquivalent(v) | Self::Refused(v) => v.clone(),
        }
    }
}

fn join(v: &[Violation]) -> String {
    v.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Rewrites `text` (a retired document) as `to` (`1.0.0`). `opts` are the reading options of the
/// document's use (`require_command`, `kind`); the release is MXC 0.8's for the original and MXC
/// 1.0's for the result.
pub fn migrate(text: &str, opts: &ParseOptions, to: &str) -> Result<Migration, MigrateError> {
    if ContractVersion::parse_exact(to) != Some(ContractVersion::STABLE) {
        return Err(MigrateError::Target(to.to_string()));
    }
    let raw = parse_strict(text).map_err(|e| MigrateError::Invalid(e.into()))?;
    if let Some(v) = raw
        .get("version")
        .and_then(Value::as_str)
        .and_then(ContractVersion::parse_exact)
        .filter(|v| v.is_registered())
    {
        return Err(MigrateError::AlreadyCurrent(v));
    }
    if raw.get("phase").is_some() {
        return migrate_state_aware(&raw);
    }
    let read = ParseOptions {
        release: MxcRelease::V0_8,
        // Read them to name them: the built-in test proxy has no 1.0 equivalent.
        allow_testing_features: true,
        ..opts.clone()
    };
    let doc = crate::document::parse_value(raw.clone(), &read).map_err(MigrateError::Invalid)?;
    let root = JsonPath::root();
    let mut notes = Vec::new();
    let mut blockers = Vec::new();

    // The wire document to rewrite: the author's, or the ContainerConfig a SandboxPolicy means.
    let mut out: Map<String, Value> = match doc.kind {
        DocumentKind::ContainerConfig => strip_nulls(raw.clone())
            .as_object()
            .cloned()
            .expect("a document is an object"),
        DocumentKind::SandboxPolicy => {
            notes.push(Note::new(
                root.clone(),
                "a SandboxPolicy, rewritten as the ContainerConfig it means (MXC's SDK conversion): MXC 1.0 gives an omitted process.env its default block, and only a ContainerConfig can say `env: []`",
            ));
            let mut m = serde_json::to_value(&doc.config)
                .expect("model serializes")
                .as_object()
                .cloned()
                .expect("object");
            if let Some(c) = raw.get("_comment") {
                m.insert("_comment".into(), c.clone());
            }
            m
        }
    };
    out.insert("version".into(), json!(ContractVersion::STABLE.as_str()));
    if out.contains_key("$schema") {
        out.insert("$schema".into(), json!(SCHEMA_1_0));
    }

    // Aliases MXC 1.0 removed.
    if let Some(c) = out.get_mut("containment") {
        match c.as_str() {
            Some("appcontainer") => *c = json!("processcontainer"),
            Some("macos_sandbox") => *c = json!("seatbelt"),
            _ => {}
        }
    }
    for (alias, canonical) in [
        ("appContainer", "processContainer"),
        ("macos_sandbox", "seatbelt"),
    ] {
        if let Some(v) = out.remove(alias) {
            out.insert(canonical.into(), v);
        }
    }
    if let Some(sb) = out.get("seatbelt").and_then(Value::as_object)
        && sb.contains_key("launchMethod")
    {
        blockers.push(Violation::new(
            root.key("seatbelt").key("launchMethod"),
            "removed in MXC 0.9.0-alpha: Seatbelt always launches the process itself",
        ));
    }

    // experimental: what moved to permanent sections moves; the rest meant nothing at run time.
    if let Some(Value::Object(exp)) = out.remove("experimental") {
        for (k, v) in exp {
            let p = root.key("experimental").key(&k);
            match k.as_str() {
                "telemetry" => {
                    out.insert("telemetry".into(), v);
                }
                "wslc" => {
                    let mut w = v.as_object().cloned().unwrap_or_default();
                    if w.remove("provision").is_some() {
                        notes.push(Note::new(
                            p.key("provision"),
                            "provision settings apply to a provision request only; dropped",
                        ));
                    }
                    out.insert("wslc".into(), Value::Object(w));
                }
                "test" | "windows_sandbox" => blockers.push(Violation::new(
                    p,
                    "exists again only in MXC's development contract 1.1.0-alpha, not in 1.0.0",
                )),
                _ => notes.push(Note::new(
                    p,
                    "an experimental feature MXC 0.8's runtime ignored; dropped",
                )),
            }
        }
    }

    // The network, from what MXC 0.8 read.
    match &doc.network {
        NetworkSpec::Legacy(l) if doc.config.network.is_some() || l.proxy.is_some() => {
            let np = root.key("network");
            let mut egress = Map::new();
            let mut ingress = Map::new();
            let mut runtime_proxy = None;
            if let Some(p) = &l.proxy {
                let pp = np.key("proxy");
                match (&p.form, &p.endpoint) {
                    (ProxyForm::BuiltinTestServer, _) => blockers.push(Violation::new(
                        pp.key("builtinTestServer"),
                        "MXC's built-in test proxy is gone; name a running proxy on loopback in runtimeConfig.networkProxy",
                    )),
                    (_, ProxyEndpoint::Host { host, .. }) if netspec::is_canonical_loopback(host) => {
                        if p.has_credentials {
                            blockers.push(Violation::new(
                                pp.key("url"),
                                "carries credentials, which MXC 1.0's Linux backends refuse",
                            ));
                        }
                        runtime_proxy = Some(p.url.clone());
                        if !l.allowed_hosts.is_empty()
                            || !l.blocked_hosts.is_empty()
                            || l.default_policy == DefaultPolicy::Allow
                        {
                            notes.push(Note::new(
                                np.clone(),
                                "with a proxy only the proxy was reachable: defaultPolicy, allowedHosts and blockedHosts had no effect and are dropped",
                            ));
                        }
                    }
                    (_, ProxyEndpoint::Host { host, .. }) => blockers.push(Violation::new(
                        if p.form == ProxyForm::Localhost { pp.key("localhost") } else { pp.key("url") },
                        format!("a proxy on {host}: MXC 1.0's runtimeConfig.networkProxy must be a loopback endpoint (localhost, 127.0.0.1 or [::1])"),
                    )),
                    (_, ProxyEndpoint::BuiltinTestServer) => {}
                }
            } else {
                egress.insert(
                    "default".into(),
                    json!(match l.default_policy {
                        DefaultPolicy::Allow => "allow",
                        DefaultPolicy::Block => "deny",
                    }),
                );
                let mut nets = |name: &str, list: &[HostEntry]| -> Vec<Value> {
                    let mut out = Vec::new();
                    for (i, e) in list.iter().enumerate() {
                        let p = np.key(name).index(i);
                        match e {
                            HostEntry::Net(n) => {
                                let cidr = json!({"cidr": n.to_string()});
                                if !out.contains(&cidr) {
                                    out.push(cidr);
                                }
                            }
                            HostEntry::Name(n) => blockers.push(Violation::new(
                                p,
                                format!("{n:?} is a host name: MXC 1.0's rules take IP addresses and CIDR blocks only (resolve it and list its addresses, or use a proxy)"),
                            )),
                            HostEntry::Malformed { raw, reason } => blockers.push(Violation::new(
                                p,
                                format!("{raw:?}: {reason}; fix or remove it"),
                            )),
                        }
                    }
                    out
                };
                let denied = nets("blockedHosts", &l.blocked_hosts);
                let allowed = nets("allowedHosts", &l.allowed_hosts);
                if !denied.is_empty() {
                    egress.insert("deny".into(), json!([{ "to": denied }]));
                }
                let mut allow = Vec::new();
                if !allowed.is_empty() {
                    allow.push(json!({ "to": allowed }));
                }
                let firewall = matches!(
                    l.enforcement_mode,
                    EnforcementMode::Firewall | EnforcementMode::Both
                );
                let dns_exemption = doc.backend == crate::document::Backend::Lxc
                    && !doc.version.supports_directional()
                    && firewall;
                if dns_exemption {
                    if l.blocked_hosts.is_empty() {
                        allow.push(json!({"ports": [
                            {"protocol": "udp", "port": 53},
                            {"protocol": "tcp", "port": 53}
                        ]}));
                        notes.push(Note::new(
                            np.key("enforcementMode"),
                            "MXC 0.8's LXC firewall allowed DNS (port 53) to anywhere below schema 0.8; written as an explicit allow rule (MXC 1.0 has no implicit exemption)",
                        ));
                    } else {
                        blockers.push(Violation::new(
                            np.key("blockedHosts"),
                            "MXC 0.8's LXC firewall let DNS (port 53) through to blocked hosts too; in MXC 1.0 a deny rule outranks every allow rule",
                        ));
                    }
                }
                if !allow.is_empty() {
                    egress.insert("allow".into(), Value::Array(allow));
                }
            }
            if l.enforcement_mode != EnforcementMode::Capabilities {
                notes.push(Note::new(
                    np.key("enforcementMode"),
                    "dropped: MXC 1.0 always enforces the directional rules",
                ));
            }
            ingress.insert(
                "default".into(),
                json!(if l.allow_local_network {
                    "allow"
                } else {
                    "deny"
                }),
            );
            ingress.insert("hostLoopback".into(), json!("deny"));
            let mut network = Map::new();
            if !egress.is_empty() {
                network.insert("egress".into(), Value::Object(egress));
            }
            network.insert("ingress".into(), Value::Object(ingress));
            out.insert("network".into(), Value::Object(network));
            if let Some(url) = runtime_proxy {
                out.insert("runtimeConfig".into(), json!({ "networkProxy": url }));
            }
        }
        NetworkSpec::Legacy(_) => {
            // No network section: MXC 0.8 read that as defaultPolicy block (the 1.0 default).
            out.remove("network");
        }
        NetworkSpec::Directional(_) => {
            for (list, rules) in out
                .get("network")
                .and_then(|n| n.get("egress"))
                .map(|e| [("allow", e.get("allow")), ("deny", e.get("deny"))])
                .into_iter()
                .flatten()
            {
                for (i, r) in rules
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    for (j, peer) in r
                        .get("to")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .enumerate()
                    {
                        let pp = root
                            .key("network")
                            .key("egress")
                            .key(list)
                            .index(i)
                            .key("to")
                            .index(j);
                        let cidrs = std::iter::once((pp.key("cidr"), peer.get("cidr"))).chain(
                            peer.get("except")
                                .and_then(Value::as_array)
                                .into_iter()
                                .flatten()
                                .enumerate()
                                .map(|(k, e)| (pp.key("except").index(k), Some(e))),
                        );
                        for (path, c) in cidrs {
                            if let Some(net) = c
                                .and_then(Value::as_str)
                                .and_then(|c| netspec::parse_cidr_strict(c).ok())
                                && netspec::fold_v4_mapped(net) != net
                            {
                                blockers.push(Violation::new(
                                    path,
                                    format!("{net} is IPv4-mapped IPv6: MXC 0.8 matched it as IPv6 (no traffic), MXC 1.0 enforces it as {}", netspec::fold_v4_mapped(net)),
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
    if let Some(Value::Object(n)) = out.get_mut("network") {
        for k in [
            "defaultPolicy",
            "enforcementMode",
            "allowLocalNetwork",
            "allowedHosts",
            "blockedHosts",
            "proxy",
        ] {
            n.remove(k);
        }
    }

    // process.env: MXC 0.8 set only the entries; MXC 1.0 gives an omitted env its default block.
    let process = out
        .entry("process")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("process is an object");
    if !process.contains_key("env") {
        process.insert("env".into(), json!([]));
        notes.push(Note::new(
            root.key("process").key("env"),
            "set to []: MXC 0.8 set no variable here, MXC 1.0 would add its default block (PATH, TERM)",
        ));
    }

    if !blockers.is_empty() {
        return Err(MigrateError::NoEquivalent(blockers));
    }
    let document = Value::Object(out);
    let check = ParseOptions {
        release: MxcRelease::V1_0,
        kind: Some(DocumentKind::ContainerConfig),
        allow_testing_features: false,
        ..opts.clone()
    };
    crate::document::parse_value(document.clone(), &check)
        .map_err(|e| MigrateError::Refused(e.violations()))?;
    Ok(Migration { document, notes })
}

/// A 0.8 state-aware request: the same root in 1.0.0, checked against its exact contract.
fn migrate_state_aware(raw: &Value) -> Result<Migration, MigrateError> {
    let root = JsonPath::root();
    crate::contract::check_value_as(raw, None, MxcRelease::V0_8).map_err(MigrateError::Invalid)?;
    let mut out = raw.as_object().cloned().expect("object");
    let mut blockers = Vec::new();
    let mut notes = Vec::new();
    out.insert("version".into(), json!(ContractVersion::STABLE.as_str()));
    if out.contains_key("$schema") {
        out.insert("$schema".into(), json!(SCHEMA_1_0));
    }
    if out.remove("correlationVector").is_some() {
        blockers.push(Violation::new(
            root.key("correlationVector"),
            "left the start/exec/stop/deprovision roots in MXC 0.9.0-alpha",
        ));
    }
    let containment = out
        .get("containment")
        .and_then(Value::as_str)
        .map(str::to_owned);
    if containment.as_deref() == Some("windows_sandbox") {
        blockers.push(Violation::new(
            root.key("containment"),
            "the windows_sandbox provision root exists only in MXC's development contract 1.1.0-alpha",
        ));
    }
    if containment.as_deref() == Some("isolation_session") {
        out.insert(
            "network".into(),
            json!({"egress": {"default": "allow"}, "ingress": {"default": "allow", "hostLoopback": "allow"}}),
        );
        notes.push(Note::new(
            root.key("network"),
            "the 0.8 acknowledgement {defaultPolicy: allow, allowLocalNetwork: true} is MXC 1.0's all-allow posture",
        ));
    }
    if let Some(Value::Object(exp)) = out.remove("experimental") {
        for (k, v) in exp {
            match k.as_str() {
                "telemetry" => {
                    out.insert("telemetry".into(), v);
                }
                "isolation_session" => {
                    out.insert("isolationSession".into(), v);
                }
                "wslc" => {
                    out.insert("wslc".into(), v);
                }
                _ => blockers.push(Violation::new(
                    root.key("experimental").key(&k),
                    "no MXC 1.0 equivalent",
                )),
            }
        }
    }
    if let Some(n) = out.get("network").and_then(Value::as_object)
        && n.keys().any(|k| k != "egress" && k != "ingress")
    {
        blockers.push(Violation::new(
            root.key("network"),
            "legacy network fields: MXC 1.0's state-aware roots take the directional shape only",
        ));
    }
    if !blockers.is_empty() {
        return Err(MigrateError::NoEquivalent(blockers));
    }
    let document = Value::Object(out);
    crate::contract::check_value(&document).map_err(|e| MigrateError::Refused(e.violations()))?;
    Ok(Migration { document, notes })
}

/// MXC 0.8 read an explicit `null` as absent; MXC 1.0 refuses it.
fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.into_iter()
                .filter(|(k, v)| !v.is_null() || k == "_comment")
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_nulls).collect()),
        other => other,
    }
}
