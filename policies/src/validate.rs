//! MXC's runtime rules: what its one-shot parser checks after reading the document (version,
//! process, containment and backend sections, filesystem strings, every network cross-field rule,
//! proxies, experimental sections). The order follows MXC's; every violation names its JSON path.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::document::{Backend, Document, DocumentKind, FsLists, Note, ParseOptions};
use crate::error::{PolicyError, Violation};
use crate::model::{
    Action, ContainerConfig, Containment, DefaultPolicy, EnforcementMode, Network,
    ProcessContainer, Protocol, Proxy,
};
use crate::netspec::{
    self, DirectionalNetwork, LegacyNetwork, NetworkSpec, PeerSpec, PortSpec, ProxyEndpoint,
    ProxyForm, ProxySpec, RuleSpec,
};
use crate::path::JsonPath;
use crate::version::SchemaVersion;

type Errs = Vec<Violation>;

fn root() -> JsonPath {
    JsonPath::root()
}

fn bail(errs: Errs) -> Result<(), PolicyError> {
    if errs.is_empty() {
        Ok(())
    } else {
        Err(PolicyError::Invalid(errs))
    }
}

/// Applies MXC's runtime rules to a typed one-shot document (`raw` is the same document as JSON,
/// for the rules MXC applies to raw keys).
pub fn runtime(
    cfg: ContainerConfig,
    raw: &Value,
    kind: DocumentKind,
    opts: &ParseOptions,
) -> Result<Document, PolicyError> {
    let mut errs = Errs::new();
    let mut notes = Vec::new();

    // MXC checks raw keys first: directional sections are refused below 0.8 even when null.
    let raw_version = raw.get("version").and_then(Value::as_str);
    let raw_gate_applies = match raw_version {
        Some("") => false,
        Some(v) => semver::Version::parse(v).is_ok_and(|v| v.major == 0 && v.minor < 8),
        None => true,
    };
    if raw_gate_applies {
        let pc_key = if raw.get("appContainer").is_some() {
            "appContainer"
        } else {
            "processContainer"
        };
        let hits = [
            (
                raw.get("network")
                    .filter(|n| n.is_object())
                    .and_then(|n| n.get("egress")),
                root().key("network").key("egress"),
            ),
            (
                raw.get("network")
                    .filter(|n| n.is_object())
                    .and_then(|n| n.get("ingress")),
                root().key("network").key("ingress"),
            ),
            (raw.get("runtimeConfig"), root().key("runtimeConfig")),
            (
                raw.get(pc_key)
                    .filter(|n| n.is_object())
                    .and_then(|n| n.get("network")),
                root().key(pc_key).key("network"),
            ),
        ];
        for (v, path) in hits {
            if v.is_some() {
                errs.push(Violation::new(
                    path,
                    format!(
                        "requires schema version 0.8 or later (this document declares {})",
                        raw_version
                            .filter(|v| !v.is_empty())
                            .unwrap_or("no version")
                    ),
                ));
            }
        }
    }
    bail(std::mem::take(&mut errs))?;

    for (name, present) in [
        ("phase", cfg.phase.is_some()),
        ("sandboxId", cfg.sandbox_id.is_some()),
        ("correlationVector", cfg.correlation_vector.is_some()),
    ] {
        if present {
            errs.push(Violation::new(
                root().key(name),
                "only valid on state-aware lifecycle requests, which agentcell does not run",
            ));
        }
    }
    bail(std::mem::take(&mut errs))?;

    let version = SchemaVersion::parse(cfg.version.as_deref())
        .map_err(|m| PolicyError::one(root().key("version"), m))?;

    match &cfg.process {
        None if opts.require_command => {
            errs.push(Violation::new(root().key("process"), "section is required"));
        }
        None => {}
        Some(p) => {
            let path = root().key("process").key("commandLine");
            match p.command_line.as_deref() {
                None if opts.require_command => {
                    errs.push(Violation::new(path, "missing required field"))
                }
                None => {}
                Some("") => errs.push(Violation::new(path, "cannot be empty")),
                Some(c) if c.contains('\0') => {
                    errs.push(Violation::new(path, "must not contain null bytes"))
                }
                Some(_) => {}
            }
        }
    }
    bail(std::mem::take(&mut errs))?;

    let containment = cfg.containment.unwrap_or(Containment::Process);
    let backend = Backend::for_linux(containment);
    check_backend_sections(&cfg, raw, backend, &mut errs);
    bail(std::mem::take(&mut errs))?;

    if let Some(pc) = &cfg.process_container {
        let key = if raw.get("appContainer").is_some() {
            "appContainer"
        } else {
            "processContainer"
        };
        check_capabilities(pc, &root().key(key), &mut errs);
        if let Some(out) = pc
            .capture_denials
            .as_ref()
            .and_then(|c| c.output_path.as_deref())
            && !out.starts_with('/')
            && !is_windows_absolute(out)
        {
            errs.push(Violation::new(
                root().key(key).key("captureDenials").key("outputPath"),
                "must be an absolute path",
            ));
        }
    }
    bail(std::mem::take(&mut errs))?;

    let filesystem = check_filesystem(&cfg, &mut errs, &mut notes);
    bail(std::mem::take(&mut errs))?;

    let network = check_network(&cfg, raw, &version, &mut errs);
    bail(std::mem::take(&mut errs))?;
    if let NetworkSpec::Legacy(legacy) = &network
        && cfg.network.is_some()
    {
        check_legacy_backend_rules(legacy, backend, &mut errs);
    }
    bail(std::mem::take(&mut errs))?;

    check_experimental(&cfg, &mut errs);
    bail(std::mem::take(&mut errs))?;

    let uses_builtin = match &network {
        NetworkSpec::Legacy(l) => l.proxy.as_ref(),
        NetworkSpec::Directional(d) => d.proxy.as_ref(),
    }
    .is_some_and(|p| p.endpoint == ProxyEndpoint::BuiltinTestServer);
    if uses_builtin && !opts.allow_testing_features {
        errs.push(Violation::new(
            root().key("network").key("proxy").key("builtinTestServer"),
            "is a testing-only feature and requires --allow-testing-features",
        ));
    }
    bail(errs)?;

    Ok(Document {
        kind,
        version,
        release: opts.release,
        config: cfg,
        containment,
        backend,
        filesystem,
        network,
        notes,
    })
}

fn is_windows_absolute(p: &str) -> bool {
    let b = p.as_bytes();
    b.len() >= 3 && b[0].is_ascii_alphabetic() && b[1] == b':' && (b[2] == b'\\' || b[2] == b'/')
}

/// One backend section at most, and only the one the resolved containment uses.
fn check_backend_sections(cfg: &ContainerConfig, raw: &Value, backend: Backend, errs: &mut Errs) {
    let exp = cfg.experimental.as_ref();
    let pc_key = if raw.get("appContainer").is_some() {
        "appContainer"
    } else {
        "processContainer"
    };
    let sb_key = if raw.get("macos_sandbox").is_some() {
        "macos_sandbox"
    } else {
        "seatbelt"
    };
    let present = [
        (
            cfg.process_container.is_some(),
            pc_key,
            Some(Containment::ProcessContainer),
        ),
        (cfg.lxc.is_some(), "lxc", Some(Containment::Lxc)),
        (cfg.seatbelt.is_some(), sb_key, Some(Containment::Seatbelt)),
        (
            exp.is_some_and(|e| e.windows_sandbox.is_some()),
            "experimental.windows_sandbox",
            Some(Containment::WindowsSandbox),
        ),
        (
            exp.is_some_and(|e| e.wslc.is_some()),
            "experimental.wslc",
            Some(Containment::Wslc),
        ),
        (
            exp.is_some_and(|e| e.isolation_session.is_some()),
            "experimental.isolation_session",
            Some(Containment::IsolationSession),
        ),
    ];
    let resolved = backend.resolved_containment();
    let unrelated: Vec<&str> = present
        .iter()
        .filter(|(p, _, owner)| *p && *owner != Some(resolved))
        .map(|(_, n, _)| *n)
        .collect();
    if unrelated.is_empty() {
        return;
    }
    let owns = match resolved {
        Containment::ProcessContainer => "allows the 'processContainer' section",
        Containment::Lxc => "allows the 'lxc' section",
        Containment::Seatbelt => "allows the 'seatbelt' section",
        Containment::WindowsSandbox => "allows the 'experimental.windows_sandbox' section",
        Containment::Wslc => "allows the 'experimental.wslc' section",
        Containment::IsolationSession => "allows the 'experimental.isolation_session' section",
        _ => "has no per-backend section",
    };
    for name in unrelated {
        errs.push(Violation::new(
            JsonPath::parse(name),
            format!(
                "backend section for another containment: 'containment' resolves to '{}' on Linux, \
                 which {owns}; remove the unused section",
                resolved.as_str()
            ),
        ));
    }
}

/// ProcessContainer capability strings: no commas, and the two reserved learning-mode names
/// (compared ASCII-case-insensitively) are refused.
pub fn check_capabilities(pc: &ProcessContainer, path: &JsonPath, errs: &mut Errs) {
    for (i, c) in pc.capabilities.iter().flatten().enumerate() {
        let p = path.key("capabilities").index(i);
        if c.contains(',') {
            errs.push(Violation::new(
                p,
                format!(
                    "capability \"{c}\" must not contain a comma; list each capability separately"
                ),
            ));
        } else if c.eq_ignore_ascii_case("learningModeLogging")
            || c.eq_ignore_ascii_case("permissiveLearningMode")
        {
            errs.push(Violation::new(
                p,
                format!("capability \"{c}\" is reserved; use processContainer.learningMode"),
            ));
        }
    }
}

fn check_filesystem(cfg: &ContainerConfig, errs: &mut Errs, notes: &mut Vec<Note>) -> FsLists {
    let Some(fs) = &cfg.filesystem else {
        return FsLists::default();
    };
    let lists = [
        (
            "readonlyPaths",
            fs.readonly_paths.as_deref().unwrap_or_default(),
        ),
        (
            "readwritePaths",
            fs.readwrite_paths.as_deref().unwrap_or_default(),
        ),
        (
            "deniedPaths",
            fs.denied_paths.as_deref().unwrap_or_default(),
        ),
    ];
    for (name, list) in lists {
        for (i, p) in list.iter().enumerate() {
            let path = || root().key("filesystem").key(name).index(i);
            if p.trim().is_empty() {
                errs.push(Violation::new(path(), "filesystem path is empty"));
            } else if p.contains('\0') {
                errs.push(Violation::new(
                    path(),
                    "filesystem path contains an embedded NUL character",
                ));
            } else if p.contains('"') {
                errs.push(Violation::new(
                    path(),
                    format!("filesystem path {p:?} contains the invalid character '\"'"),
                ));
            }
        }
    }
    // The same string in several lists collapses to the strictest intent (deny > ro > rw).
    let ro: Vec<String> = fs.readonly_paths.clone().unwrap_or_default();
    let rw: Vec<String> = fs.readwrite_paths.clone().unwrap_or_default();
    let denied: Vec<String> = fs.denied_paths.clone().unwrap_or_default();
    let dset: BTreeSet<&String> = denied.iter().collect();
    let roset: BTreeSet<&String> = ro.iter().collect();
    let mut out = FsLists {
        denied: denied.clone(),
        ..Default::default()
    };
    for (i, p) in rw.iter().enumerate() {
        let path = || root().key("filesystem").key("readwritePaths").index(i);
        if dset.contains(p) {
            notes.push(Note::new(
                path(),
                format!(
                    "{p:?} is also in deniedPaths; applying the most restrictive intent (denied)"
                ),
            ));
        } else if roset.contains(p) {
            notes.push(Note::new(path(), format!("{p:?} is also in readonlyPaths; applying the most restrictive intent (readonly)")));
        } else {
            out.readwrite.push(p.clone());
        }
    }
    for (i, p) in ro.iter().enumerate() {
        if dset.contains(p) {
            notes.push(Note::new(
                root().key("filesystem").key("readonlyPaths").index(i),
                format!(
                    "{p:?} is also in deniedPaths; applying the most restrictive intent (denied)"
                ),
            ));
        } else {
            out.readonly.push(p.clone());
        }
    }
    out
}

fn check_network(
    cfg: &ContainerConfig,
    raw: &Value,
    version: &SchemaVersion,
    errs: &mut Errs,
) -> NetworkSpec {
    let net = cfg.network.clone().unwrap_or_default();
    let np = root().key("network");
    let runtime_proxy = cfg
        .runtime_config
        .as_ref()
        .and_then(|r| r.network_proxy.clone());
    let peer = cfg
        .process_container
        .as_ref()
        .and_then(|p| p.network.as_ref())
        .and_then(|n| n.allowed_proxy_peer.clone());
    let has_legacy = net.has_legacy();
    let has_directional = net.has_directional()
        || runtime_proxy.is_some()
        || peer.as_ref().is_some_and(|p| !p.trim().is_empty());
    let has_directional_section = cfg.runtime_config.is_some()
        || cfg
            .process_container
            .as_ref()
            .is_some_and(|p| p.network.is_some());

    if has_legacy && has_directional {
        errs.push(Violation::new(
            np.clone(),
            "cannot mix defaultPolicy, enforcementMode, allowLocalNetwork, allowedHosts, blockedHosts \
             or proxy with egress, ingress, runtimeConfig or processContainer.network",
        ));
        return NetworkSpec::Legacy(legacy_defaults());
    }
    if (net.has_directional() || has_directional_section) && !version.supports_directional() {
        errs.push(Violation::new(
            np.clone(),
            format!("egress, ingress, runtimeConfig and processContainer.network require schema version 0.8 or later (this document declares {version})"),
        ));
        return NetworkSpec::Legacy(legacy_defaults());
    }
    if !has_legacy && version.supports_directional() {
        NetworkSpec::Directional(directional(
            &net,
            runtime_proxy,
            peer,
            cfg,
            raw,
            false,
            errs,
        ))
    } else {
        NetworkSpec::Legacy(legacy(&net, errs))
    }
}

fn legacy_defaults() -> LegacyNetwork {
    LegacyNetwork {
        default_policy: DefaultPolicy::Block,
        enforcement_mode: EnforcementMode::Capabilities,
        allow_local_network: false,
        allowed_hosts: Vec::new(),
        blocked_hosts: Vec::new(),
        proxy: None,
    }
}

fn legacy(net: &Network, errs: &mut Errs) -> LegacyNetwork {
    let mut out = legacy_defaults();
    out.default_policy = net.default_policy.unwrap_or(DefaultPolicy::Block);
    out.enforcement_mode = net
        .enforcement_mode
        .unwrap_or(EnforcementMode::Capabilities);
    out.allow_local_network = net.allow_local_network.unwrap_or(false);
    out.allowed_hosts = net
        .allowed_hosts
        .iter()
        .flatten()
        .map(|h| netspec::parse_host_entry(h))
        .collect();
    out.blocked_hosts = net
        .blocked_hosts
        .iter()
        .flatten()
        .map(|h| netspec::parse_host_entry(h))
        .collect();
    if let Some(p) = &net.proxy {
        out.proxy = legacy_proxy(p, &root().key("network").key("proxy"), errs);
    }
    out
}

/// MXC's precedence: builtinTestServer, then localhost (a `url` beside it is ignored), then url.
fn legacy_proxy(p: &Proxy, path: &JsonPath, errs: &mut Errs) -> Option<ProxySpec> {
    if let Some(b) = p.builtin_test_server {
        if !b {
            errs.push(Violation::new(
                path.key("builtinTestServer"),
                "must be true when present",
            ));
        } else if p.localhost.is_some() || p.url.is_some() {
            errs.push(Violation::new(
                path.clone(),
                "when builtinTestServer is true, no other proxy option may be set",
            ));
        }
        return Some(ProxySpec {
            form: ProxyForm::BuiltinTestServer,
            endpoint: ProxyEndpoint::BuiltinTestServer,
            url: String::new(),
            has_credentials: false,
        });
    }
    if let Some(port) = p.localhost {
        if port == 0 {
            errs.push(Violation::new(
                path.key("localhost"),
                "must be a port between 1 and 65535",
            ));
            return None;
        }
        let url = format!("http://127.0.0.1:{port}");
        return Some(ProxySpec {
            form: ProxyForm::Localhost,
            endpoint: ProxyEndpoint::Host {
                scheme: "http".into(),
                host: "127.0.0.1".into(),
                port,
            },
            url,
            has_credentials: false,
        });
    }
    if let Some(u) = &p.url {
        return match netspec::parse_proxy_url(u) {
            Ok(spec) => Some(spec),
            Err(m) => {
                errs.push(Violation::new(path.key("url"), m));
                None
            }
        };
    }
    errs.push(Violation::new(
        path.clone(),
        "must specify builtinTestServer, localhost or url",
    ));
    None
}

/// The directional network. `current`: MXC 1.0's reading (IPv4-mapped IPv6 read as IPv4; a
/// runtime proxy must be on loopback only for host-process backends, WSLc's is routable from its
/// container).
fn directional(
    net: &Network,
    runtime_proxy: Option<String>,
    peer: Option<String>,
    cfg: &ContainerConfig,
    raw: &Value,
    current: bool,
    errs: &mut Errs,
) -> DirectionalNetwork {
    let np = root().key("network");
    let egress = net.egress.clone().unwrap_or_default();
    let ingress = net.ingress.clone().unwrap_or_default();
    let mut out = DirectionalNetwork {
        egress_default: egress.default.unwrap_or(Action::Deny),
        allow: Vec::new(),
        deny: Vec::new(),
        ingress_default: ingress.default.unwrap_or(Action::Deny),
        host_loopback: ingress.host_loopback.unwrap_or(Action::Deny),
        proxy: None,
        allowed_proxy_peer: peer.clone(),
    };
    for (list, rules, dst) in [
        ("allow", &egress.allow, &mut out.allow),
        ("deny", &egress.deny, &mut out.deny),
    ] {
        for (i, r) in rules.iter().flatten().enumerate() {
            if let Some(spec) = rule(r, &np.key("egress").key(list).index(i), current, errs) {
                dst.push(spec);
            }
        }
    }
    let proxy_path = root().key("runtimeConfig").key("networkProxy");
    if let Some(u) = &runtime_proxy {
        match netspec::parse_proxy_url(u) {
            Err(m) => errs.push(Violation::new(proxy_path.clone(), m)),
            Ok(mut spec) => {
                let routable_from_container = current && cfg.containment == Some(Containment::Wslc);
                if let ProxyEndpoint::Host { host, .. } = &spec.endpoint
                    && !netspec::is_canonical_loopback(host)
                    && !routable_from_container
                {
                    errs.push(Violation::new(
                        proxy_path.clone(),
                        "must use localhost, 127.0.0.1 or [::1]",
                    ));
                }
                spec.form = ProxyForm::Runtime;
                out.proxy = Some(spec);
            }
        }
        let mode_specified = net.egress.is_some() || net.ingress.is_some();
        if mode_specified
            && (out.egress_default != Action::Deny
                || !out.allow.is_empty()
                || !out.deny.is_empty()
                || egress.allow.as_ref().is_some_and(|a| !a.is_empty())
                || egress.deny.as_ref().is_some_and(|a| !a.is_empty()))
        {
            errs.push(Violation::new(
                proxy_path.clone(),
                "requires network.egress.default='deny' with no direct allow or deny rules",
            ));
        }
    }
    // ProcessContainer proxy-peer rules live in MXC's parser, so they apply on every host.
    let pc_key = if raw.get("appContainer").is_some() {
        "appContainer"
    } else {
        "processContainer"
    };
    let peer_path = root().key(pc_key).key("network").key("allowedProxyPeer");
    if let Some(p) = &peer
        && p.eq_ignore_ascii_case("MXC-Loopback")
    {
        errs.push(Violation::new(
            peer_path.clone(),
            "\"MXC-Loopback\" is reserved",
        ));
    }
    let peer_set = peer.as_ref().is_some_and(|p| !p.trim().is_empty());
    if runtime_proxy.is_none() && peer_set {
        errs.push(Violation::new(
            peer_path,
            "requires runtimeConfig.networkProxy",
        ));
    } else if runtime_proxy.is_some() && cfg.containment == Some(Containment::ProcessContainer) {
        if out.ingress_default != Action::Allow {
            errs.push(Violation::new(
                np.key("ingress").key("default"),
                "must be 'allow' when a ProcessContainer uses runtimeConfig.networkProxy",
            ));
        }
        let want = if peer_set {
            Action::Deny
        } else {
            Action::Allow
        };
        if out.host_loopback != want {
            errs.push(Violation::new(
                np.key("ingress").key("hostLoopback"),
                format!(
                    "must be '{}' for a ProcessContainer runtime proxy {} allowedProxyPeer",
                    if peer_set { "deny" } else { "allow" },
                    if peer_set { "with" } else { "without" }
                ),
            ));
        }
    }
    out
}

fn rule(
    r: &crate::model::Rule,
    path: &JsonPath,
    current: bool,
    errs: &mut Errs,
) -> Option<RuleSpec> {
    let parse = if current {
        netspec::parse_cidr_current
    } else {
        netspec::parse_cidr_strict
    };
    let before = errs.len();
    if r.to.as_ref().is_some_and(Vec::is_empty) {
        errs.push(Violation::new(
            path.key("to"),
            "must contain at least one destination when specified",
        ));
    }
    if r.ports.as_ref().is_some_and(Vec::is_empty) {
        errs.push(Violation::new(
            path.key("ports"),
            "must contain at least one selector when specified",
        ));
    }
    let mut to = Vec::new();
    for (j, peer) in r.to.iter().flatten().enumerate() {
        let pp = || path.key("to").index(j);
        let cidr = match parse(&peer.cidr) {
            Ok(c) => c,
            Err(m) => {
                errs.push(Violation::new(
                    pp().key("cidr"),
                    format!("{:?} is not a valid network CIDR: {m}", peer.cidr),
                ));
                continue;
            }
        };
        let mut except = Vec::new();
        for (k, e) in peer.except.iter().flatten().enumerate() {
            let ep = || pp().key("except").index(k);
            match parse(e) {
                Err(m) => errs.push(Violation::new(
                    ep(),
                    format!("{e:?} is not a valid network CIDR: {m}"),
                )),
                Ok(x) if !netspec::contains(&cidr, &x) => {
                    let why = if x.addr().is_ipv4() != cidr.addr().is_ipv4() {
                        " (different address family)"
                    } else {
                        ""
                    };
                    errs.push(Violation::new(
                        ep(),
                        format!("{x} is not inside {cidr}{why}"),
                    ));
                }
                Ok(x) => except.push(x),
            }
        }
        to.push(PeerSpec { cidr, except });
    }
    let mut ports = Vec::new();
    for (j, p) in r.ports.iter().flatten().enumerate() {
        let pp = || path.key("ports").index(j);
        let protocol = p.protocol.unwrap_or(Protocol::Any);
        if p.port == Some(0) {
            errs.push(Violation::new(
                pp().key("port"),
                "must be between 1 and 65535",
            ));
            continue;
        }
        if p.end_port == Some(0) {
            errs.push(Violation::new(
                pp().key("endPort"),
                "must be between 1 and 65535",
            ));
            continue;
        }
        match (p.port, p.end_port) {
            (None, Some(_)) => errs.push(Violation::new(pp().key("endPort"), "requires port")),
            (Some(a), Some(b)) if b < a => errs.push(Violation::new(
                pp().key("endPort"),
                format!("{b} must be greater than or equal to port {a}"),
            )),
            _ if protocol == Protocol::Icmp && (p.port.is_some() || p.end_port.is_some()) => errs
                .push(Violation::new(
                    pp(),
                    "cannot specify port or endPort for protocol 'icmp'",
                )),
            (a, b) => ports.push(PortSpec {
                protocol,
                range: a.map(|a| (a, b.unwrap_or(a))),
            }),
        }
    }
    (errs.len() == before).then(|| RuleSpec {
        to: r.to.as_ref().map(|_| to),
        ports: r.ports.as_ref().map(|_| ports),
    })
}

/// MXC's parser-level rules for the legacy shape, per resolved containment (they never run for
/// the 0.8 directional shape). Order as in MXC: the first failing rule is reported.
fn check_legacy_backend_rules(l: &LegacyNetwork, backend: Backend, errs: &mut Errs) {
    use Containment as C;
    let np = root().key("network");
    let path = np.key("proxy");
    let resolved = backend.resolved_containment();
    let firewall = matches!(
        l.enforcement_mode,
        EnforcementMode::Firewall | EnforcementMode::Both
    );
    let lists = !l.allowed_hosts.is_empty() || !l.blocked_hosts.is_empty();
    let block = l.default_policy == DefaultPolicy::Block;
    if let Some(proxy) = &l.proxy {
        let host = match &proxy.endpoint {
            ProxyEndpoint::Host { host, .. } => Some(host.as_str()),
            ProxyEndpoint::BuiltinTestServer => None,
        };
        let refusal: Option<(JsonPath, String)> = if !matches!(
            resolved,
            C::ProcessContainer | C::Bubblewrap | C::Lxc | C::Seatbelt | C::Wslc
        ) {
            Some((
                path.clone(),
                format!(
                    "a network proxy is only supported with the processcontainer, bubblewrap, lxc, seatbelt or wslc containments (this document resolves to '{}')",
                    resolved.as_str()
                ),
            ))
        } else if resolved == C::Lxc && proxy.form == ProxyForm::BuiltinTestServer {
            Some((
                path.key("builtinTestServer"),
                "LXC: builtinTestServer is not supported; use network.proxy.url".into(),
            ))
        } else if resolved == C::Lxc && proxy.form == ProxyForm::Localhost {
            Some((path.key("localhost"), "LXC: a localhost proxy is not reachable from the container's network namespace (127.0.0.1 is the container's own loopback); use network.proxy.url with a host routable from inside the container".into()))
        } else if resolved == C::Wslc && proxy.form != ProxyForm::Url {
            Some((
                path.clone(),
                "WSLc: network.proxy must use the 'url' form".into(),
            ))
        } else if resolved == C::Lxc && host.is_some_and(netspec::is_loopback_host) {
            Some((path.key("url"), "LXC: the proxy host is a loopback address (127.0.0.0/8, ::1 or localhost), which names the container's own loopback rather than the host; use a proxy host routable from inside the container".into()))
        } else if resolved == C::Wslc && (block || lists) {
            Some((path.clone(), "WSLc: network.proxy requires defaultPolicy 'allow' and no allowedHosts or blockedHosts".into()))
        } else if matches!(resolved, C::Bubblewrap | C::Seatbelt) && firewall {
            Some((
                np.key("enforcementMode"),
                format!(
                    "{}: network.proxy cannot be combined with enforcementMode 'firewall' or 'both'",
                    if resolved == C::Bubblewrap {
                        "Bubblewrap"
                    } else {
                        "Seatbelt"
                    }
                ),
            ))
        } else if resolved == C::Seatbelt
            && block
            && host.is_some_and(|h| !["127.0.0.1", "::1", "localhost"].contains(&h))
        {
            Some((
                path.clone(),
                "Seatbelt: a remote proxy cannot be reached under defaultPolicy 'block'".into(),
            ))
        } else if resolved == C::Lxc && !firewall {
            Some((
                np.key("enforcementMode"),
                "LXC: network.proxy requires enforcementMode 'firewall' or 'both'".into(),
            ))
        } else if matches!(resolved, C::Lxc | C::Bubblewrap) && proxy.has_credentials {
            Some((path.key("url"), "must not carry credentials: LXC and Bubblewrap pass the proxy URL into the workload's environment".into()))
        } else if resolved == C::Bubblewrap
            && proxy.form != ProxyForm::BuiltinTestServer
            && (lists || block)
        {
            Some((path.clone(), "Bubblewrap: an external proxy (url or localhost) cannot be combined with allowedHosts, blockedHosts or defaultPolicy 'block' (the default): a cooperative proxy cannot enforce them".into()))
        } else {
            None
        };
        if let Some((p, m)) = refusal {
            errs.push(Violation::new(p, m));
            return;
        }
    }
    if resolved == C::Wslc {
        if (block && !l.allowed_hosts.is_empty()) || (!block && !l.blocked_hosts.is_empty()) {
            errs.push(Violation::new(
                np.clone(),
                "WSLc: per-host egress filtering is not supported",
            ));
        } else if l.allow_local_network {
            errs.push(Violation::new(
                np.key("allowLocalNetwork"),
                "WSLc: allowLocalNetwork=true is not supported",
            ));
        }
    }
}

fn check_experimental(cfg: &ContainerConfig, errs: &mut Errs) {
    let Some(exp) = &cfg.experimental else { return };
    let ep = root().key("experimental");
    if exp.seatbelt.is_some() {
        errs.push(Violation::new(
            ep.key("seatbelt"),
            "has moved to the stable section; use top-level 'seatbelt'",
        ));
    }
    if let Some(w) = &exp.wslc {
        let mut seen = BTreeSet::new();
        for (i, m) in w.port_mappings.iter().flatten().enumerate() {
            let mp = ep.key("wslc").key("portMappings").index(i);
            if m.windows_port == 0 {
                errs.push(Violation::new(mp.key("windowsPort"), "must be > 0"));
            }
            if m.container_port == 0 {
                errs.push(Violation::new(mp.key("containerPort"), "must be > 0"));
            }
            if m.windows_port != 0 && !seen.insert(m.windows_port) {
                errs.push(Violation::new(
                    mp.key("windowsPort"),
                    format!(
                        "duplicate windowsPort {} for protocol 'tcp'",
                        m.windows_port
                    ),
                ));
            }
        }
    }
}

/// MXC 1.0's runtime rules for a one-shot document that declares a registered contract and passed
/// its exact shape ([`crate::contract::current`]): what MXC checks when it converts the request
/// to run it. Legacy network fields cannot occur (the shapes have none).
pub fn current(
    cfg: ContainerConfig,
    raw: &Value,
    kind: DocumentKind,
    version: crate::version::ContractVersion,
    opts: &ParseOptions,
) -> Result<Document, PolicyError> {
    let mut errs = Errs::new();
    let mut notes = Vec::new();

    if let Some(c) = cfg.process.as_ref().and_then(|p| p.command_line.as_deref())
        && c.contains('\0')
    {
        errs.push(Violation::new(
            root().key("process").key("commandLine"),
            "must not contain null bytes",
        ));
    }
    if opts.require_command && cfg.process.is_none() {
        errs.push(Violation::new(root().key("process"), "section is required"));
    }
    bail(std::mem::take(&mut errs))?;

    let containment = cfg.containment.unwrap_or(Containment::Process);
    let backend = Backend::for_linux(containment);
    check_current_backend_sections(&cfg, raw, backend, &mut errs);
    bail(std::mem::take(&mut errs))?;

    if let Some(pc) = &cfg.process_container {
        let key = if raw.get("appContainer").is_some() {
            "appContainer"
        } else {
            "processContainer"
        };
        if let Some(out) = pc
            .capture_denials
            .as_ref()
            .and_then(|c| c.output_path.as_deref())
            && !out.starts_with('/')
            && !is_windows_absolute(out)
        {
            errs.push(Violation::new(
                root().key(key).key("captureDenials").key("outputPath"),
                "must be an absolute path",
            ));
        }
    }
    bail(std::mem::take(&mut errs))?;

    let filesystem = check_filesystem(&cfg, &mut errs, &mut notes);
    bail(std::mem::take(&mut errs))?;

    let net = cfg.network.clone().unwrap_or_default();
    let runtime_proxy = cfg
        .runtime_config
        .as_ref()
        .and_then(|r| r.network_proxy.clone());
    let peer = cfg
        .process_container
        .as_ref()
        .and_then(|p| p.network.as_ref())
        .and_then(|n| n.allowed_proxy_peer.clone());
    let network = NetworkSpec::Directional(directional(
        &net,
        runtime_proxy,
        peer,
        &cfg,
        raw,
        true,
        &mut errs,
    ));
    bail(std::mem::take(&mut errs))?;

    if let Some(w) = &cfg.wslc {
        check_port_mappings(
            w.port_mappings.as_deref().unwrap_or_default(),
            &root().key("wslc").key("portMappings"),
            &mut errs,
        );
    }
    bail(errs)?;

    Ok(Document {
        kind,
        version: SchemaVersion::Current(version),
        release: opts.release,
        config: cfg,
        containment,
        backend,
        filesystem,
        network,
        notes,
    })
}

/// WSLC port mappings: one mapping per Windows port (TCP is the only protocol).
pub fn check_port_mappings(maps: &[crate::model::PortMapping], path: &JsonPath, errs: &mut Errs) {
    let mut seen = BTreeSet::new();
    for (i, m) in maps.iter().enumerate() {
        if !seen.insert(m.windows_port) {
            errs.push(Violation::new(
                path.index(i).key("windowsPort"),
                format!(
                    "duplicate windowsPort {} for protocol 'tcp'",
                    m.windows_port
                ),
            ));
        }
    }
}

/// MXC 1.0: at most one backend section ("Multiple containment backends configured"), and only
/// the one the resolved containment uses.
fn check_current_backend_sections(
    cfg: &ContainerConfig,
    raw: &Value,
    backend: Backend,
    errs: &mut Errs,
) {
    let pc_key = if raw.get("appContainer").is_some() {
        "appContainer"
    } else {
        "processContainer"
    };
    let sb_key = if raw.get("macos_sandbox").is_some() {
        "macos_sandbox"
    } else {
        "seatbelt"
    };
    let present: Vec<(&str, Containment)> = [
        (
            cfg.process_container.is_some(),
            pc_key,
            Containment::ProcessContainer,
        ),
        (cfg.lxc.is_some(), "lxc", Containment::Lxc),
        (cfg.seatbelt.is_some(), sb_key, Containment::Seatbelt),
        (cfg.wslc.is_some(), "wslc", Containment::Wslc),
        (
            cfg.hyperlight.is_some(),
            "hyperlight",
            Containment::Hyperlight,
        ),
        (
            cfg.windows_sandbox.is_some(),
            "windowsSandbox",
            Containment::WindowsSandbox,
        ),
    ]
    .into_iter()
    .filter(|(p, _, _)| *p)
    .map(|(_, n, c)| (n, c))
    .collect();
    if present.len() > 1 {
        let names: Vec<&str> = present.iter().map(|(n, _)| *n).collect();
        errs.push(Violation::new(
            root().key(present[1].0),
            format!(
                "Multiple containment backends configured ({}); keep only the section of the containment this document uses",
                names.join(", ")
            ),
        ));
        return;
    }
    let resolved = backend.resolved_containment();
    for (name, owner) in present {
        if owner != resolved {
            let owns = match resolved {
                Containment::ProcessContainer => {
                    "allows the 'processContainer' section".to_string()
                }
                Containment::Lxc => "allows the 'lxc' section".to_string(),
                Containment::Seatbelt => "allows the 'seatbelt' section".to_string(),
                Containment::Wslc => "allows the 'wslc' section".to_string(),
                Containment::Hyperlight => "allows the 'hyperlight' section".to_string(),
                Containment::WindowsSandbox => "allows the 'windowsSandbox' section".to_string(),
                _ => "has no per-backend section".to_string(),
            };
            errs.push(Violation::new(
                root().key(name),
                format!(
                    "backend section for another containment: 'containment' resolves to '{}' on Linux, which {owns}; remove the unused section",
                    resolved.as_str()
                ),
            ));
        }
    }
}
