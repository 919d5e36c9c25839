//! Admission as MXC's Linux executor does it for the backend a document names: the checks its
//! bubblewrap, LXC, MicroVM and Hyperlight runners make before starting anything. A document
//! MXC's Linux backend refuses is refused here with the same reason, whatever agentcell itself
//! could enforce.

use crate::document::{Backend, Document};
use crate::error::{PolicyError, Violation};
use crate::model::{Action, DefaultPolicy, EnforcementMode};
use crate::netspec::{self, HostEntry, LegacyNetwork, NetworkSpec, ProxyEndpoint, ProxyForm};
use crate::path::JsonPath;

/// Per-peer and total limits of MXC's bubblewrap firewall plan.
pub const MAX_BLOCKS_PER_PEER: usize = 256;
pub const MAX_RULES: usize = 65536;

pub fn check(doc: &Document) -> Result<(), PolicyError> {
    let mut errs = Vec::new();
    if doc.version.is_current() && matches!(doc.backend, Backend::Bubblewrap | Backend::Lxc) {
        // MXC 1.0: a block that mixes IPv6 with the IPv4-mapped range is refused whatever the
        // mode (its IPv4 part would silently match nothing).
        v4_mapped_straddles(doc, &mut errs);
        if !errs.is_empty() {
            return Err(PolicyError::Invalid(errs));
        }
    }
    match doc.backend {
        Backend::Bubblewrap => bubblewrap(doc, &mut errs),
        Backend::Lxc => lxc(doc, &mut errs),
        Backend::Microvm | Backend::Hyperlight => vm(doc, &mut errs),
        Backend::Foreign(_) => {}
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(PolicyError::Invalid(errs))
    }
}

fn net() -> JsonPath {
    JsonPath::root().key("network")
}

/// How MXC's bubblewrap runner would network a document (it decides which checks apply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BwrapMode {
    Shared,
    Isolated,
    ProxyOnly,
    FirewallEnforced,
    /// Pre-0.8 modes that stay in the host namespace (cooperative proxy, host-side filters).
    LegacyHost,
}

fn bwrap_mode(doc: &Document) -> BwrapMode {
    let strict = doc.version.supports_directional();
    match &doc.network {
        NetworkSpec::Directional(d) => {
            if d.proxy.is_some() {
                BwrapMode::ProxyOnly
            } else if d.allow.is_empty() && d.deny.is_empty() && d.egress_default == Action::Deny {
                BwrapMode::Isolated
            } else {
                BwrapMode::FirewallEnforced
            }
        }
        NetworkSpec::Legacy(l) => {
            let lists = !l.allowed_hosts.is_empty() || !l.blocked_hosts.is_empty();
            let firewall = matches!(
                l.enforcement_mode,
                EnforcementMode::Firewall | EnforcementMode::Both
            );
            if l.proxy.is_some() {
                if strict {
                    BwrapMode::ProxyOnly
                } else {
                    BwrapMode::LegacyHost
                }
            } else if firewall && lists {
                if strict {
                    BwrapMode::FirewallEnforced
                } else {
                    BwrapMode::LegacyHost
                }
            } else if l.default_policy == DefaultPolicy::Block && !lists {
                BwrapMode::Isolated
            } else {
                BwrapMode::Shared
            }
        }
    }
}

fn bubblewrap(doc: &Document, errs: &mut Vec<Violation>) {
    let strict = doc.version.supports_directional();
    let mode = bwrap_mode(doc);
    let (proxy, proxy_path) = match &doc.network {
        NetworkSpec::Legacy(l) => (l.proxy.as_ref(), net().key("proxy").key("url")),
        NetworkSpec::Directional(d) => (
            d.proxy.as_ref(),
            JsonPath::root().key("runtimeConfig").key("networkProxy"),
        ),
    };
    if proxy.is_some_and(|p| p.has_credentials) {
        errs.push(Violation::new(proxy_path.clone(), "Bubblewrap: the proxy URL must not carry credentials: it is passed into the workload's environment"));
        return;
    }
    if let (Some(_), NetworkSpec::Directional(d)) = (proxy, &doc.network)
        && (d.egress_default != Action::Deny || !d.allow.is_empty() || !d.deny.is_empty())
    {
        errs.push(Violation::new(
            net().key("egress"),
            "Bubblewrap: a network proxy cannot be combined with a directional egress rule set",
        ));
        return;
    }
    if let NetworkSpec::Legacy(l) = &doc.network {
        let lists = !l.allowed_hosts.is_empty() || !l.blocked_hosts.is_empty();
        if strict && lists && !matches!(mode, BwrapMode::FirewallEnforced | BwrapMode::ProxyOnly) {
            errs.push(Violation::new(net(), "Bubblewrap: allowedHosts and blockedHosts require an enforcement mechanism: set enforcementMode 'firewall' (or 'both'), or use a proxy"));
            return;
        }
        if strict {
            let private = matches!(
                mode,
                BwrapMode::Isolated | BwrapMode::ProxyOnly | BwrapMode::FirewallEnforced
            );
            if mode == BwrapMode::Shared && !l.allow_local_network {
                errs.push(Violation::new(net().key("allowLocalNetwork"), "Bubblewrap: allowLocalNetwork=false is not enforced while the sandbox shares the host network namespace (defaultPolicy 'allow'); set allowLocalNetwork true to acknowledge, or restrict egress"));
                return;
            }
            if private && l.allow_local_network {
                errs.push(Violation::new(net().key("allowLocalNetwork"), "Bubblewrap: allowLocalNetwork=true is confined to the sandbox's own network namespace and cannot be honoured; remove it"));
                return;
            }
        }
    }
    if let NetworkSpec::Directional(d) = &doc.network {
        if d.ingress_default == Action::Allow {
            errs.push(Violation::new(
                net().key("ingress").key("default"),
                "Bubblewrap: network.ingress.default='allow' is not supported (the sandbox's private network namespace takes no inbound connections)",
            ));
            return;
        }
        if d.host_loopback == Action::Allow {
            errs.push(Violation::new(
                net().key("ingress").key("hostLoopback"),
                "Bubblewrap: network.ingress.hostLoopback='allow' is not supported (the host's own services stay unreachable from the sandbox)",
            ));
            return;
        }
    }
    if mode == BwrapMode::ProxyOnly
        && let Some(p) = proxy.filter(|p| p.form != ProxyForm::BuiltinTestServer)
        && let ProxyEndpoint::Host { host, .. } = &p.endpoint
    {
        match p.endpoint.ip() {
            Some(std::net::IpAddr::V6(v6)) if v6.is_loopback() => {
                errs.push(Violation::new(proxy_path, format!("Bubblewrap: proxy address '{host}' is the IPv6 loopback, which the private network namespace cannot reach; use 127.0.0.1")));
                return;
            }
            Some(std::net::IpAddr::V6(v6)) if !v6.is_unspecified() => {
                errs.push(Violation::new(
                    proxy_path,
                    format!("Bubblewrap: IPv6 proxy address '{host}' is not supported"),
                ));
                return;
            }
            None if !host.eq_ignore_ascii_case("localhost") && denies_etc_hosts(doc) => {
                errs.push(Violation::new(proxy_path, format!("Bubblewrap: the proxy endpoint '{host}' is a host name, reached by pinning it in the sandbox's /etc/hosts, but the filesystem policy denies that path")));
                return;
            }
            _ => {}
        }
    }
    if mode == BwrapMode::FirewallEnforced {
        firewall_plan_limits(doc, errs);
    }
}

/// Whether the deepest filesystem entry covering `/etc/hosts` is a deny.
fn denies_etc_hosts(doc: &Document) -> bool {
    let covers = |p: &str| {
        let p = p.trim_end_matches('/');
        p.is_empty() || p == "/etc" || p == "/etc/hosts"
    };
    let depth = |p: &str| p.split('/').filter(|c| !c.is_empty()).count();
    let fs = &doc.filesystem;
    let mut best: Option<(usize, bool)> = None;
    for (list, denied) in [
        (&fs.readwrite, false),
        (&fs.readonly, false),
        (&fs.denied, true),
    ] {
        for p in list.iter().filter(|p| covers(p)) {
            let d = depth(p);
            if best.is_none_or(|(bd, _)| d >= bd) {
                best = Some((d, denied));
            }
        }
    }
    best.is_some_and(|(_, denied)| denied)
}

fn firewall_plan_limits(doc: &Document, errs: &mut Vec<Violation>) {
    let mut total = 0usize;
    match &doc.network {
        NetworkSpec::Legacy(l) => {
            for (name, list) in [
                ("allowedHosts", &l.allowed_hosts),
                ("blockedHosts", &l.blocked_hosts),
            ] {
                for (i, e) in list.iter().enumerate() {
                    let p = net().key(name).index(i);
                    match e {
                        HostEntry::Malformed { raw, reason } => errs.push(Violation::new(p, format!("Bubblewrap: network rule {raw:?}: {reason}"))),
                        HostEntry::Name(n) => errs.push(Violation::new(p, format!("Bubblewrap: network rule '{n}' is not an IP address or CIDR block; host filtering matches addresses, not names"))),
                        HostEntry::Net(n) if netspec::straddles_v4_mapped(n) => errs.push(Violation::new(p, straddle_msg(n))),
                        HostEntry::Net(_) => total += 1,
                    }
                }
            }
        }
        NetworkSpec::Directional(d) => {
            for (list, rules) in [("allow", &d.allow), ("deny", &d.deny)] {
                for (i, r) in rules.iter().enumerate() {
                    let rp = net().key("egress").key(list).index(i);
                    let ports = r.ports.as_ref().map_or(1, |p| p.len().max(1));
                    let Some(peers) = &r.to else {
                        total += 2 * ports;
                        continue;
                    };
                    for (j, peer) in peers.iter().enumerate() {
                        let pp = rp.key("to").index(j);
                        if !doc.version.is_current() && netspec::straddles_v4_mapped(&peer.cidr) {
                            errs.push(Violation::new(pp.key("cidr"), straddle_msg(&peer.cidr)));
                            continue;
                        }
                        for (k, e) in peer.except.iter().enumerate() {
                            if !doc.version.is_current() && netspec::straddles_v4_mapped(e) {
                                errs.push(Violation::new(
                                    pp.key("except").index(k),
                                    straddle_msg(e),
                                ));
                            }
                        }
                        let blocks = netspec::subtract(peer.cidr, &peer.except).len();
                        if blocks > MAX_BLOCKS_PER_PEER {
                            errs.push(Violation::new(pp, format!("Bubblewrap: this peer expands into more than {MAX_BLOCKS_PER_PEER} address blocks ({blocks} once its except list is subtracted); simplify the except list")));
                        }
                        total += blocks * ports;
                    }
                }
            }
        }
    }
    if total > MAX_RULES {
        errs.push(Violation::new(net(), format!("Bubblewrap: the egress policy expands into {total} firewall rules (more than {MAX_RULES})")));
    }
}

/// Every peer and except block of a directional document that straddles `::ffff:0:0/96`.
fn v4_mapped_straddles(doc: &Document, errs: &mut Vec<Violation>) {
    let NetworkSpec::Directional(d) = &doc.network else {
        return;
    };
    let backend = if doc.backend == Backend::Lxc {
        "LXC"
    } else {
        "Bubblewrap"
    };
    for (list, rules) in [("allow", &d.allow), ("deny", &d.deny)] {
        for (i, r) in rules.iter().enumerate() {
            for (j, peer) in r.to.iter().flatten().enumerate() {
                let pp = net().key("egress").key(list).index(i).key("to").index(j);
                if netspec::straddles_v4_mapped(&peer.cidr) {
                    errs.push(Violation::new(
                        pp.key("cidr"),
                        straddle_msg(&peer.cidr).replacen("Bubblewrap", backend, 1),
                    ));
                }
                for (k, e) in peer.except.iter().enumerate() {
                    if netspec::straddles_v4_mapped(e) {
                        errs.push(Violation::new(
                            pp.key("except").index(k),
                            straddle_msg(e).replacen("Bubblewrap", backend, 1),
                        ));
                    }
                }
            }
        }
    }
}

fn straddle_msg(n: &ipnet::IpNet) -> String {
    format!(
        "Bubblewrap: {n} is an IPv6 block shorter than /96 that contains the IPv4-mapped range ::ffff:0:0/96; list the IPv4 and IPv6 ranges separately"
    )
}

fn lxc(doc: &Document, errs: &mut Vec<Violation>) {
    let lxc_section = doc.config.lxc.as_ref();
    for (k, v) in [
        (
            "distribution",
            lxc_section.and_then(|l| l.distribution.as_deref()),
        ),
        ("release", lxc_section.and_then(|l| l.release.as_deref())),
    ] {
        if v.is_none_or(str::is_empty) {
            errs.push(Violation::new(JsonPath::root().key("lxc").key(k), "LXC: distribution and release are required (e.g. \"distribution\": \"alpine\", \"release\": \"3.23\")"));
        }
    }
    if !errs.is_empty() {
        return;
    }
    match &doc.network {
        NetworkSpec::Directional(d) => {
            if d.proxy.is_some() {
                errs.push(Violation::new(
                    JsonPath::root().key("runtimeConfig").key("networkProxy"),
                    "is not supported by the lxc backend",
                ));
            } else if d.ingress_default == Action::Allow {
                errs.push(Violation::new(
                    net().key("ingress").key("default"),
                    "LXC: network.ingress.default='allow' (permissive inbound) is not supported",
                ));
            } else if d.host_loopback == Action::Allow {
                errs.push(Violation::new(net().key("ingress").key("hostLoopback"), "LXC: network.ingress.hostLoopback='allow' (permissive host-loopback inbound) is not supported"));
            }
        }
        NetworkSpec::Legacy(l) => lxc_legacy(doc, l, errs),
    }
}

fn lxc_legacy(doc: &Document, l: &LegacyNetwork, errs: &mut Vec<Violation>) {
    let firewall = doc.version.supports_directional()
        || matches!(
            l.enforcement_mode,
            EnforcementMode::Firewall | EnforcementMode::Both
        );
    if let Some(p) = &l.proxy {
        if p.has_credentials {
            errs.push(Violation::new(
                net().key("proxy").key("url"),
                "LXC: the proxy URL must not carry credentials",
            ));
            return;
        }
        if matches!(p.endpoint.ip(), Some(std::net::IpAddr::V6(_))) {
            errs.push(Violation::new(
                net().key("proxy").key("url"),
                "LXC: IPv6 network proxy endpoints are not supported",
            ));
            return;
        }
        if !l.blocked_hosts.is_empty() {
            errs.push(Violation::new(
                net().key("blockedHosts"),
                "LXC: network.proxy cannot be combined with blockedHosts",
            ));
            return;
        }
    }
    if l.default_policy == DefaultPolicy::Allow && firewall {
        for (i, e) in l.blocked_hosts.iter().enumerate() {
            if let HostEntry::Malformed { raw, reason } = e {
                errs.push(Violation::new(net().key("blockedHosts").index(i), format!("LXC: blocked host {raw:?} resolves to no address ({reason}), so it would block nothing under defaultPolicy 'allow'")));
            }
        }
        if !errs.is_empty() {
            return;
        }
    }
    if firewall && l.allow_local_network {
        errs.push(Violation::new(
            net().key("allowLocalNetwork"),
            "LXC: allowLocalNetwork=true (permissive inbound) is not implemented",
        ));
    }
}

fn vm(doc: &Document, errs: &mut Vec<Violation>) {
    let name = if doc.backend == Backend::Hyperlight {
        "hyperlight"
    } else {
        "microvm"
    };
    if let NetworkSpec::Directional(d) = &doc.network {
        let net_cfg = doc.config.network.as_ref();
        if net_cfg.is_some_and(|n| n.egress.is_some()) {
            errs.push(Violation::new(
                net().key("egress").key("default"),
                format!("is not supported by the {name} backend"),
            ));
        } else if net_cfg.is_some_and(|n| n.ingress.is_some()) {
            errs.push(Violation::new(
                net().key("ingress").key("default"),
                format!("is not supported by the {name} backend"),
            ));
        } else if d.proxy.is_some() {
            errs.push(Violation::new(
                JsonPath::root().key("runtimeConfig").key("networkProxy"),
                format!("is not supported by the {name} backend"),
            ));
        }
    }
    if let NetworkSpec::Legacy(l) = &doc.network
        && !l.allowed_hosts.is_empty()
        && !l.blocked_hosts.is_empty()
    {
        errs.push(Violation::new(
            net(),
            format!("allowedHosts and blockedHosts are mutually exclusive for the {name} backend"),
        ));
    }
    if doc
        .config
        .process
        .as_ref()
        .and_then(|p| p.cwd.as_deref())
        .is_some_and(|c| !c.is_empty())
    {
        errs.push(Violation::new(
            JsonPath::root().key("process").key("cwd"),
            format!("a working directory is not supported by the {name} backend"),
        ));
    }
    let fs = &doc.filesystem;
    if doc.backend == Backend::Microvm && !fs.denied.is_empty() {
        errs.push(Violation::new(
            JsonPath::root().key("filesystem").key("deniedPaths"),
            "is not supported by the microvm (NanVix) backend",
        ));
    } else if doc.backend == Backend::Hyperlight {
        for p in &fs.denied {
            if fs.readwrite.contains(p) || fs.readonly.contains(p) {
                errs.push(Violation::new(
                    JsonPath::root().key("filesystem").key("deniedPaths"),
                    format!("path {p:?} appears in both deniedPaths and an allow list"),
                ));
            }
        }
    }
}
