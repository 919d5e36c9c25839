//! The network plan: every MXC network field lowered to per-family rules for a private network
//! namespace. The runner installs them (nftables, outside the workload's reach).

use ipnet::IpNet;
use serde::Serialize;

use crate::document::Backend;
use crate::model::{Action, DefaultPolicy, EnforcementMode, Protocol};
use crate::netspec::{self, HostEntry, NetworkSpec, ProxyEndpoint, ProxySpec, RuleSpec};
use crate::path::JsonPath;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Accept,
    Drop,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accept => "accept",
            Self::Drop => "drop",
        }
    }
}

impl From<Action> for Verdict {
    fn from(a: Action) -> Self {
        match a {
            Action::Allow => Self::Accept,
            Action::Deny => Self::Drop,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum L4 {
    Tcp,
    Udp,
    /// ICMP for IPv4, ICMPv6 for IPv6.
    Icmp,
    Any,
}

/// A destination: a block, every address of one family, or a name the runner resolves once at
/// start (A and AAAA) and pins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "lowercase")]
pub enum Dest {
    Net(IpNet),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NetRule {
    pub verdict: Verdict,
    pub dest: Dest,
    pub l4: L4,
    /// Inclusive destination port range; `None` = every port.
    pub ports: Option<(u16, u16)>,
    /// The JSON path of the MXC rule this comes from.
    pub origin: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyFence {
    pub host: String,
    pub port: u16,
    pub url: String,
    /// Variables set for the workload, both cases of each name.
    pub env: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPlan {
    /// Egress, evaluated in order after loopback and established/related traffic.
    pub egress: Vec<NetRule>,
    /// Terminal egress verdict, identical for IPv4 and IPv6.
    pub egress_default: Verdict,
    /// Inbound connections from outside the sandbox (LAN, other hosts).
    pub ingress_default: Verdict,
    /// Traffic between the sandbox and the host itself (its loopback services and every address
    /// the host owns), in both directions.
    pub host_loopback: Verdict,
    /// UDP/TCP 53 accepted before the rules (MXC's LXC backend below schema 0.8 only).
    pub dns_exemption: bool,
    pub proxy: Option<ProxyFence>,
    /// Names resolved once when the sandbox starts (re-resolution is not followed).
    pub resolve_at_start: Vec<String>,
    /// Whether the namespace needs a link to the outside at all.
    pub needs_uplink: bool,
}

impl NetworkPlan {
    pub fn rule_count(&self) -> usize {
        self.egress.len()
    }
}

pub fn build(spec: &NetworkSpec, backend: Backend, directional_schema: bool) -> NetworkPlan {
    let np = JsonPath::root().key("network");
    let mut plan = NetworkPlan {
        egress: Vec::new(),
        egress_default: Verdict::Drop,
        ingress_default: Verdict::Drop,
        host_loopback: Verdict::Drop,
        dns_exemption: false,
        proxy: None,
        resolve_at_start: Vec::new(),
        needs_uplink: false,
    };
    let proxy = match spec {
        NetworkSpec::Directional(d) => {
            for (name, rules, verdict) in [
                ("deny", &d.deny, Verdict::Drop),
                ("allow", &d.allow, Verdict::Accept),
            ] {
                for (i, r) in rules.iter().enumerate() {
                    lower_rule(
                        r,
                        verdict,
                        &np.key("egress").key(name).index(i),
                        &mut plan.egress,
                    );
                }
            }
            plan.egress_default = d.egress_default.into();
            plan.ingress_default = d.ingress_default.into();
            plan.host_loopback = d.host_loopback.into();
            d.proxy.as_ref()
        }
        NetworkSpec::Legacy(l) => {
            for (name, list, verdict) in [
                ("blockedHosts", &l.blocked_hosts, Verdict::Drop),
                ("allowedHosts", &l.allowed_hosts, Verdict::Accept),
            ] {
                for (i, e) in list.iter().enumerate() {
                    let origin = np.key(name).index(i).to_string();
                    let dest = match e {
                        HostEntry::Net(n) => Dest::Net(*n),
                        HostEntry::Name(n) => {
                            if !plan.resolve_at_start.contains(n) {
                                plan.resolve_at_start.push(n.clone());
                            }
                            Dest::Name(n.clone())
                        }
                        // An unusable allow entry grants nothing; unusable block entries are
                        // refused at admission where they would weaken the policy.
                        HostEntry::Malformed { .. } => continue,
                    };
                    plan.egress.push(NetRule {
                        verdict,
                        dest,
                        l4: L4::Any,
                        ports: None,
                        origin,
                    });
                }
            }
            plan.egress_default = match l.default_policy {
                DefaultPolicy::Allow => Verdict::Accept,
                DefaultPolicy::Block => Verdict::Drop,
            };
            plan.ingress_default = if l.allow_local_network {
                Verdict::Accept
            } else {
                Verdict::Drop
            };
            // MXC's LXC backend exempts DNS in the firewall it installs below schema 0.8 (and
            // installs no firewall at all under `capabilities`, where agentcell blocks).
            let firewall = matches!(
                l.enforcement_mode,
                EnforcementMode::Firewall | EnforcementMode::Both
            );
            plan.dns_exemption = backend == Backend::Lxc && !directional_schema && firewall;
            l.proxy.as_ref()
        }
    };
    if let Some(p) = proxy {
        plan.proxy = fence(p);
        if plan.proxy.is_some() {
            // A proxy is a fence: only TCP to the proxy endpoint leaves the sandbox.
            plan.egress.clear();
            plan.egress_default = Verdict::Drop;
            plan.dns_exemption = false;
        }
    }
    plan.needs_uplink = plan.proxy.is_some()
        || plan.egress_default == Verdict::Accept
        || plan.dns_exemption
        || plan.egress.iter().any(|r| r.verdict == Verdict::Accept)
        || plan.ingress_default == Verdict::Accept;
    plan
}

fn fence(p: &ProxySpec) -> Option<ProxyFence> {
    let ProxyEndpoint::Host { host, port, .. } = &p.endpoint else {
        return None;
    };
    let mut env = Vec::new();
    for name in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "FTP_PROXY"] {
        env.push((name.to_string(), p.url.clone()));
        env.push((name.to_ascii_lowercase(), p.url.clone()));
    }
    Some(ProxyFence {
        host: host.clone(),
        port: *port,
        url: p.url.clone(),
        env,
    })
}

/// One MXC rule → (peers minus excepts) × port selectors, both families when `to` is omitted.
fn lower_rule(r: &RuleSpec, verdict: Verdict, path: &JsonPath, out: &mut Vec<NetRule>) {
    let origin = path.to_string();
    let dests: Vec<Dest> = match &r.to {
        None => vec![
            Dest::Net("0.0.0.0/0".parse().expect("const")),
            Dest::Net("::/0".parse().expect("const")),
        ],
        Some(peers) => peers
            .iter()
            .flat_map(|p| netspec::subtract(p.cidr, &p.except))
            .map(Dest::Net)
            .collect(),
    };
    let selectors: Vec<(L4, Option<(u16, u16)>)> = match &r.ports {
        None => vec![(L4::Any, None)],
        Some(ports) => ports
            .iter()
            .flat_map(|p| match (p.protocol, p.range) {
                (Protocol::Any, Some(range)) => {
                    vec![(L4::Tcp, Some(range)), (L4::Udp, Some(range))]
                }
                (Protocol::Any, None) => vec![(L4::Any, None)],
                (Protocol::Tcp, r) => vec![(L4::Tcp, r)],
                (Protocol::Udp, r) => vec![(L4::Udp, r)],
                (Protocol::Icmp, _) => vec![(L4::Icmp, None)],
            })
            .collect(),
    };
    for d in &dests {
        for (l4, ports) in &selectors {
            out.push(NetRule {
                verdict,
                dest: d.clone(),
                l4: *l4,
                ports: *ports,
                origin: origin.clone(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::{ParseOptions, parse_with};

    fn plan(json: &str) -> NetworkPlan {
        let d = parse_with(json, &ParseOptions::default()).unwrap();
        build(&d.network, d.backend, d.version.supports_directional())
    }

    fn plan_0_8(json: &str) -> NetworkPlan {
        let opts = ParseOptions {
            release: crate::MxcRelease::V0_8,
            ..ParseOptions::default()
        };
        let d = parse_with(json, &opts).unwrap();
        build(&d.network, d.backend, d.version.supports_directional())
    }

    #[test]
    fn deny_before_allow_and_both_families() {
        let p = plan(
            r#"{"version":"1.0.0","network":{"egress":{"default":"deny",
            "allow":[{"ports":[{"protocol":"tcp","port":443}]}],
            "deny":[{"to":[{"cidr":"10.0.0.0/8"}]}]}}}"#,
        );
        assert_eq!(p.egress[0].verdict, Verdict::Drop);
        assert_eq!(p.egress[0].dest, Dest::Net("10.0.0.0/8".parse().unwrap()));
        let allows: Vec<_> = p
            .egress
            .iter()
            .filter(|r| r.verdict == Verdict::Accept)
            .collect();
        assert_eq!(allows.len(), 2, "v4 and v6");
        assert!(
            allows
                .iter()
                .all(|r| r.l4 == L4::Tcp && r.ports == Some((443, 443)))
        );
        assert_eq!(p.egress_default, Verdict::Drop);
        assert!(p.needs_uplink);
    }

    #[test]
    fn except_is_subtracted_and_any_port_splits() {
        let p = plan(
            r#"{"version":"1.0.0","network":{"egress":{"allow":[{"to":[{"cidr":"10.0.0.0/8","except":["10.1.0.0/16"]}],
            "ports":[{"port":53,"endPort":54}]}]}}}"#,
        );
        assert!(p.egress.iter().all(|r| match &r.dest {
            Dest::Net(n) => !n.contains(&"10.1.2.3/32".parse::<IpNet>().unwrap()),
            _ => false,
        }));
        assert!(
            p.egress
                .iter()
                .any(|r| r.l4 == L4::Udp && r.ports == Some((53, 54)))
        );
        assert_eq!(p.egress.len(), 8 * 2);
    }

    #[test]
    fn no_network_at_0_8_is_closed() {
        let p = plan(r#"{"version":"1.0.0"}"#);
        assert!(p.egress.is_empty() && p.egress_default == Verdict::Drop && !p.needs_uplink);
        assert_eq!(p.host_loopback, Verdict::Drop);
    }

    #[test]
    fn proxy_is_a_fence() {
        let p =
            plan(r#"{"version":"1.0.0","runtimeConfig":{"networkProxy":"http://127.0.0.1:3128"}}"#);
        let f = p.proxy.unwrap();
        assert_eq!((f.host.as_str(), f.port), ("127.0.0.1", 3128));
        assert!(f.env.iter().any(|(k, _)| k == "https_proxy"));
        assert!(p.egress.is_empty() && p.egress_default == Verdict::Drop);
    }

    #[test]
    fn legacy_lists_and_names() {
        let p = plan_0_8(
            r#"{"version":"0.7.0-alpha","containment":"lxc","lxc":{"distribution":"a","release":"1"},
            "network":{"defaultPolicy":"block","enforcementMode":"firewall","allowedHosts":["api.github.com","10.0.0.5/24"],"blockedHosts":["10.0.0.9"]}}"#,
        );
        assert_eq!(p.egress[0].verdict, Verdict::Drop);
        assert_eq!(p.resolve_at_start, vec!["api.github.com".to_string()]);
        assert!(p.dns_exemption, "MXC's LXC backend exempts DNS below 0.8");
        assert!(
            p.egress
                .iter()
                .any(|r| r.dest == Dest::Net("10.0.0.0/24".parse().unwrap()))
        );
    }

    /// MXC 1.0: no implicit DNS exemption (LXC included), and IPv4-mapped IPv6 is IPv4.
    #[test]
    fn current_lxc_has_no_dns_exemption_and_mapped_is_ipv4() {
        let p = plan(
            r#"{"version":"1.0.0","containment":"lxc","lxc":{"distribution":"a","release":"1"},
            "network":{"egress":{"default":"deny","allow":[{"to":[{"cidr":"::ffff:198.18.0.0/112"}],"ports":[{"protocol":"udp","port":53}]}]}}}"#,
        );
        assert!(!p.dns_exemption);
        assert_eq!(p.egress.len(), 1);
        assert_eq!(
            p.egress[0].dest,
            Dest::Net("198.18.0.0/16".parse().unwrap())
        );
        assert_eq!(
            (p.egress[0].l4, p.egress[0].ports),
            (L4::Udp, Some((53, 53)))
        );
    }
}
