//! The nftables ruleset of a sandbox's network namespace, rendered from the plan as libnftables
//! JSON (`nft -j -f`). Pure: the addresses only the runner knows (the host's, resolved names, the
//! proxy endpoint) come in as arguments.
//!
//! One `inet` table per sandbox, owned by the runner; the workload has no CAP_NET_ADMIN. Egress:
//! loopback, established/related, IPv6 neighbour discovery, the host itself (closed by default),
//! the proxy fence or DNS exemption, deny rules, allow rules, then the default verdict, the same
//! for IPv4 and IPv6, logged (rate-limited) and counted when it drops.

use std::collections::BTreeMap;
use std::net::IpAddr;

use agentcell_policy::plan::NetworkPlan;
use agentcell_policy::plan::net::{Dest, L4, NetRule, Verdict};
use ipnet::IpNet;
use serde_json::{Value, json};

pub const TABLE: &str = "agentcell";
/// Kernel log lines of dropped packets start with `agentcell <sandbox id> <chain>-drop `.
pub const LOG_PREFIX: &str = "agentcell ";

/// What only the runner knows.
#[derive(Debug, Clone, Default)]
pub struct Runtime {
    /// Every address of the host as seen from the sandbox (the veth peer, the host's own).
    pub host_addresses: Vec<IpAddr>,
    /// A→addresses of the names the plan resolves at start.
    pub resolved: BTreeMap<String, Vec<IpAddr>>,
    /// Where the proxy is reachable from inside the namespace.
    pub proxy: Option<(IpAddr, u16)>,
    /// The sandbox id, in the prefix of logged drops (so `--audit` keeps only its own).
    pub id: String,
}

/// Counter, rate-limited log line and drop: every drop is visible (counters always, the kernel
/// log at up to 10 packets a second per rule).
fn logged_drop(chain: &str, rt: &Runtime) -> Vec<Value> {
    vec![
        json!({"counter": null}),
        json!({"limit": {"rate": 10, "per": "second"}}),
        json!({"log": {"prefix": format!("{LOG_PREFIX}{} {chain}-drop ", rt.id), "level": "info"}}),
        json!({"drop": null}),
    ]
}

fn rule(chain: &str, expr: Vec<Value>) -> Value {
    json!({"add": {"rule": {"family": "inet", "table": TABLE, "chain": chain, "expr": expr}}})
}

fn daddr_match(net: &IpNet) -> Value {
    let (proto, addr, len) = match net {
        IpNet::V4(n) => ("ip", n.network().to_string(), n.prefix_len()),
        IpNet::V6(n) => ("ip6", n.network().to_string(), n.prefix_len()),
    };
    let right = if net.max_prefix_len() == len {
        json!(addr)
    } else {
        json!({"prefix": {"addr": addr, "len": len}})
    };
    json!({"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": "daddr"}}, "right": right}})
}

fn addr_match(ip: &IpAddr, field: &str) -> Value {
    let proto = if ip.is_ipv4() { "ip" } else { "ip6" };
    json!({"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": field}}, "right": ip.to_string()}})
}

fn l4_matches(l4: L4, ports: Option<(u16, u16)>, v6: bool) -> Vec<Value> {
    let proto = match l4 {
        L4::Tcp => Some("tcp"),
        L4::Udp => Some("udp"),
        L4::Icmp => Some(if v6 { "ipv6-icmp" } else { "icmp" }),
        L4::Any => None,
    };
    let mut out = Vec::new();
    if let Some(p) = proto {
        out.push(json!({"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": p}}));
    }
    if let Some((a, b)) = ports {
        let right = if a == b {
            json!(a)
        } else {
            json!({"range": [a, b]})
        };
        out.push(json!({"match": {"op": "==", "left": {"payload": {"protocol": "th", "field": "dport"}}, "right": right}}));
    }
    out
}

fn net_rule(chain: &str, r: &NetRule, rt: &Runtime, out: &mut Vec<Value>) {
    let nets: Vec<IpNet> = match &r.dest {
        Dest::Net(n) => vec![*n],
        Dest::Name(name) => rt
            .resolved
            .get(name)
            .into_iter()
            .flatten()
            .map(|ip| IpNet::from(*ip))
            .collect(),
    };
    for n in nets {
        let mut expr = vec![daddr_match(&n)];
        expr.extend(l4_matches(r.l4, r.ports, n.addr().is_ipv6()));
        match r.verdict {
            Verdict::Drop => expr.extend(logged_drop(chain, rt)),
            Verdict::Accept => expr.extend([json!({"counter": null}), json!({"accept": null})]),
        }
        out.push(rule(chain, expr));
    }
}

fn terminal(chain: &str, v: Verdict, rt: &Runtime) -> Value {
    match v {
        Verdict::Drop => rule(chain, logged_drop(chain, rt)),
        Verdict::Accept => rule(
            chain,
            vec![json!({"counter": null}), json!({"accept": null})],
        ),
    }
}

/// Blocked names that resolved to no address while something could still let their traffic out
/// (an accepting default or an allow rule): such a block would block nothing, so the sandbox is
/// refused rather than started less confined than asked (as MXC's LXC backend refuses).
pub fn unresolved_blocks(plan: &NetworkPlan, rt: &Runtime) -> Vec<String> {
    let anything_open = plan.egress_default == Verdict::Accept
        || plan.egress.iter().any(|r| r.verdict == Verdict::Accept);
    if !anything_open {
        return Vec::new();
    }
    let mut out: Vec<String> = plan
        .egress
        .iter()
        .filter(|r| r.verdict == Verdict::Drop)
        .filter_map(|r| match &r.dest {
            Dest::Name(n) if rt.resolved.get(n).is_none_or(Vec::is_empty) => Some(n.clone()),
            _ => None,
        })
        .collect();
    out.dedup();
    out
}

/// The whole ruleset: a fresh table (deleted first if present) with its two chains.
pub fn ruleset(plan: &NetworkPlan, rt: &Runtime) -> Value {
    let mut cmds = vec![
        json!({"add": {"table": {"family": "inet", "name": TABLE}}}),
        json!({"delete": {"table": {"family": "inet", "name": TABLE}}}),
        json!({"add": {"table": {"family": "inet", "name": TABLE}}}),
        json!({"add": {"chain": {"family": "inet", "table": TABLE, "name": "egress", "type": "filter", "hook": "output", "prio": 0, "policy": "drop"}}}),
        json!({"add": {"chain": {"family": "inet", "table": TABLE, "name": "ingress", "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}}}),
    ];
    let lo =
        |key: &str| json!({"match": {"op": "==", "left": {"meta": {"key": key}}, "right": "lo"}});
    let established = json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}});
    let nd = json!({"match": {"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}},
        "right": {"set": ["nd-router-solicit", "nd-neighbor-solicit", "nd-neighbor-advert", "mld-listener-report", "mld2-listener-report"]}}});

    // Egress.
    cmds.push(rule("egress", vec![lo("oifname"), json!({"accept": null})]));
    cmds.push(rule(
        "egress",
        vec![established.clone(), json!({"accept": null})],
    ));
    cmds.push(rule("egress", vec![nd.clone(), json!({"accept": null})]));
    // The proxy first: a loopback proxy is reached through the host's side of the link (DNAT
    // below), which the next rules otherwise close.
    if let (Some(_), Some((ip, port))) = (&plan.proxy, rt.proxy) {
        let mut expr = vec![addr_match(&ip, "daddr")];
        expr.extend(l4_matches(L4::Tcp, Some((port, port)), ip.is_ipv6()));
        expr.push(json!({"accept": null}));
        cmds.push(rule("egress", expr));
    }
    if plan.host_loopback == Verdict::Drop {
        for ip in &rt.host_addresses {
            let mut expr = vec![addr_match(ip, "daddr")];
            expr.extend(logged_drop("egress", rt));
            cmds.push(rule("egress", expr));
        }
    }
    if plan.dns_exemption {
        for l4 in [L4::Udp, L4::Tcp] {
            let mut expr = l4_matches(l4, Some((53, 53)), false);
            expr.push(json!({"accept": null}));
            cmds.push(rule("egress", expr));
        }
    }
    let mut rules = Vec::new();
    for r in &plan.egress {
        net_rule("egress", r, rt, &mut rules);
    }
    cmds.extend(rules);
    cmds.push(terminal("egress", plan.egress_default, rt));

    // Ingress.
    cmds.push(rule(
        "ingress",
        vec![lo("iifname"), json!({"accept": null})],
    ));
    cmds.push(rule("ingress", vec![established, json!({"accept": null})]));
    cmds.push(rule("ingress", vec![nd, json!({"accept": null})]));
    if plan.host_loopback == Verdict::Drop {
        for ip in &rt.host_addresses {
            let mut expr = vec![addr_match(ip, "saddr")];
            expr.extend(logged_drop("ingress", rt));
            cmds.push(rule("ingress", expr));
        }
    }
    cmds.push(terminal("ingress", plan.ingress_default, rt));

    // A proxy on the host's loopback (the only kind MXC's runtimeConfig allows) is not reachable
    // from the sandbox's own loopback: its connections to 127.0.0.1:PORT are sent to the host's
    // side of the link, where the host forwards them to its loopback.
    if let (Some(fence), Some((IpAddr::V4(via), port))) = (&plan.proxy, rt.proxy)
        && agentcell_policy::netspec::is_loopback_host(&fence.host)
    {
        cmds.push(json!({"add": {"chain": {"family": "inet", "table": TABLE, "name": "proxy_out", "type": "nat", "hook": "output", "prio": -100, "policy": "accept"}}}));
        cmds.push(json!({"add": {"chain": {"family": "inet", "table": TABLE, "name": "proxy_post", "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}}));
        cmds.push(rule("proxy_out", vec![
            json!({"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "127.0.0.0", "len": 8}}}}),
            json!({"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}),
            json!({"match": {"op": "==", "left": {"payload": {"protocol": "th", "field": "dport"}}, "right": port}}),
            json!({"dnat": {"family": "ip", "addr": via.to_string(), "port": port}}),
        ]));
        cmds.push(rule("proxy_post", vec![
            json!({"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "127.0.0.0", "len": 8}}}}),
            json!({"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "lo"}}),
            json!({"masquerade": null}),
        ]));
    }
    json!({"nftables": cmds})
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentcell_policy::plan::{CompileOptions, Host, compile};
    use agentcell_policy::{ParseOptions, parse_with};

    fn plan(json: &str) -> NetworkPlan {
        let d = parse_with(json, &ParseOptions::default()).unwrap();
        compile(&d, &Host::reference(), &CompileOptions::default())
            .unwrap()
            .network
    }

    fn rules(v: &Value, chain: &str) -> Vec<String> {
        v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["add"]["rule"]["chain"] == chain)
            .map(|c| c["add"]["rule"]["expr"].to_string())
            .collect()
    }

    #[test]
    fn deny_before_allow_then_the_default_for_both_families() {
        let p = plan(
            r#"{"version":"0.8.0-alpha","network":{"egress":{"default":"deny",
            "allow":[{"to":[{"cidr":"198.18.0.0/24"},{"cidr":"fd00::/64"}],"ports":[{"protocol":"tcp","port":8080,"endPort":8081}]}],
            "deny":[{"to":[{"cidr":"198.18.0.7/32"}]}]}}}"#,
        );
        let rt = Runtime {
            host_addresses: vec!["198.19.0.1".parse().unwrap()],
            ..Default::default()
        };
        let v = ruleset(&p, &rt);
        let eg = rules(&v, "egress");
        let pos = |needle: &str| {
            eg.iter()
                .position(|r| r.contains(needle))
                .unwrap_or_else(|| panic!("{needle} in {eg:#?}"))
        };
        assert!(pos("\"lo\"") < pos("established"));
        assert!(
            pos("198.19.0.1") < pos("198.18.0.7"),
            "the host is closed before any rule"
        );
        assert!(
            pos("198.18.0.7") < pos("\"198.18.0.0\""),
            "deny before allow"
        );
        assert!(eg.iter().any(|r| r.contains("fd00::")
            && r.contains("\"range\":[8080,8081]")
            && r.contains("\"tcp\"")));
        let last = eg.last().unwrap();
        assert!(
            last.contains("\"drop\"") && last.contains("egress-drop"),
            "{last}"
        );
        // Both families share the table, so the default covers IPv6 too.
        assert_eq!(v["nftables"][0]["add"]["table"]["family"], "inet");
    }

    #[test]
    fn a_block_that_resolves_to_nothing_is_reported_when_traffic_could_pass() {
        let doc = |default: &str| {
            format!(
                r#"{{"version":"0.7.0-alpha","containment":"lxc","lxc":{{"distribution":"a","release":"1"}},
                "network":{{"defaultPolicy":"{default}","enforcementMode":"firewall","blockedHosts":["gone.example"]}}}}"#
            )
        };
        let open = plan(&doc("allow"));
        assert_eq!(
            unresolved_blocks(&open, &Runtime::default()),
            vec!["gone.example".to_string()]
        );
        let mut rt = Runtime::default();
        rt.resolved
            .insert("gone.example".into(), vec!["198.18.0.9".parse().unwrap()]);
        assert!(unresolved_blocks(&open, &rt).is_empty());
        assert!(unresolved_blocks(&plan(&doc("block")), &Runtime::default()).is_empty());
    }

    #[test]
    fn names_use_their_pinned_addresses_and_the_proxy_is_the_only_way_out() {
        let p = plan(
            r#"{"version":"0.7.0-alpha","containment":"lxc","lxc":{"distribution":"a","release":"1"},
            "network":{"defaultPolicy":"block","enforcementMode":"firewall","allowedHosts":["api.example"]}}"#,
        );
        let mut rt = Runtime::default();
        rt.resolved.insert(
            "api.example".into(),
            vec!["198.18.0.9".parse().unwrap(), "fd00::9".parse().unwrap()],
        );
        let eg = rules(&ruleset(&p, &rt), "egress");
        assert!(
            eg.iter().any(|r| r.contains("198.18.0.9")) && eg.iter().any(|r| r.contains("fd00::9"))
        );
        assert!(
            eg.iter().any(|r| r.contains("53")),
            "LXC below 0.8 with a firewall exempts DNS"
        );

        let p = plan(
            r#"{"version":"0.8.0-alpha","runtimeConfig":{"networkProxy":"http://127.0.0.1:3128"}}"#,
        );
        let rt = Runtime {
            proxy: Some(("198.19.0.1".parse().unwrap(), 3128)),
            ..Default::default()
        };
        let eg = rules(&ruleset(&p, &rt), "egress");
        let accepts: Vec<&String> = eg
            .iter()
            .filter(|r| {
                r.contains("accept")
                    && !r.contains("\"lo\"")
                    && !r.contains("established")
                    && !r.contains("nd-")
            })
            .collect();
        assert_eq!(accepts.len(), 1, "{accepts:#?}");
        assert!(accepts[0].contains("3128") && accepts[0].contains("\"tcp\""));
    }
}
