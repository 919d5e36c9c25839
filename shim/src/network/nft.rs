//! The nftables ruleset of a sandbox's network namespace, rendered from the plan as libnftables
//! JSON (`nft -j -f`). Pure: the addresses only the runner knows (the host's, resolved names, the
//! proxy endpoint) come in as arguments.
//!
//! One `inet` table per sandbox, owned by the runner; the workload has no CAP_NET_ADMIN. Egress:
//! loopback, established/related, IPv6 neighbour discovery (to link-scoped destinations only),
//! the proxy fence, the host itself (closed by default: its addresses, and every destination
//! that only the link's far end can receive: link-local, broadcast, multicast), the DNS
//! exemption, deny rules, allow rules, then the default verdict, the same for IPv4 and IPv6,
//! logged (rate-limited) and counted when it drops. The host's addresses listed here are those
//! of the moment the sandbox starts; what the host gains later is closed on the host's side
//! ([`super::hostguard`]). Destinations (the host's
//! addresses, the plan's rules) are elements of interval sets matched by a constant number of
//! rules, so a policy with 100 destinations costs the transaction about what one costs.

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
    /// The subnet broadcast addresses of the namespace's links (its /30's `.3`, a pod's
    /// CNI subnet): only the link's far end (the host) receives them.
    pub link_broadcasts: Vec<std::net::Ipv4Addr>,
    /// The namespace's on-link IPv6 prefixes: neighbour discovery to an address on them (a
    /// unicast probe of the gateway's global address, the answer to the gateway's solicitation)
    /// stays on the link, so it is let out with the link-scoped destinations.
    pub on_link_v6: Vec<ipnet::Ipv6Net>,
}

/// The ICMPv6 types of neighbour discovery and multicast listener reports, which the kernel
/// itself sends (and the workload, with CAP_NET_RAW).
const ND_TYPES: [&str; 5] = [
    "nd-router-solicit",
    "nd-neighbor-solicit",
    "nd-neighbor-advert",
    "mld-listener-report",
    "mld2-listener-report",
];

/// The named set of destinations neighbour discovery may go to.
pub const ND_SET: &str = "nd_v6";

/// `icmpv6 type { ND and MLD }`.
pub fn nd_types() -> Value {
    json!({"match": {"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}},
        "right": {"set": ND_TYPES}}})
}

/// Accepts outgoing neighbour discovery and listener reports only to link-scoped destinations
/// ([`ND_SET`]): without the limit they are a way out to any address, carrying whatever a
/// workload with CAP_NET_RAW writes into them.
pub fn nd_out_accept() -> Vec<Value> {
    vec![
        nd_types(),
        set_match(ND_SET, true, "daddr", false),
        json!({"accept": null}),
    ]
}

/// The destinations of [`ND_SET`]: link-local unicast (fe80::/10), solicited-node multicast
/// (ff02::1:ff00:0/104), all-nodes, all-routers and MLDv2-capable routers (ff02::1, ff02::2,
/// ff02::16), and the namespace's on-link prefixes.
fn nd_destinations(rt: &Runtime) -> Vec<Value> {
    let fixed = [
        "fe80::/10",
        "ff02::1:ff00:0/104",
        "ff02::1/128",
        "ff02::2/128",
        "ff02::16/128",
    ];
    let mut ranges: Vec<AddrRange> = fixed
        .iter()
        .map(|n| range_of(&n.parse::<IpNet>().expect("a valid prefix")))
        .collect();
    ranges.extend(rt.on_link_v6.iter().map(|n| range_of(&IpNet::V6(*n))));
    merge(ranges)
        .into_iter()
        .map(|r| addr_elem(r, true))
        .collect()
}

/// Destinations only the far end of the namespace's link can receive, which is the host:
/// link-local (169.254.0.0/16, fe80::/10), multicast (224.0.0.0/4, ff00::/8), limited and the
/// links' subnet broadcast. Closed with the host (neighbour discovery, accepted before, is the
/// one link-scoped traffic a namespace needs).
fn link_scope_sets(rt: &Runtime) -> Vec<Value> {
    let mut v4: Vec<AddrRange> = ["169.254.0.0/16", "224.0.0.0/4", "255.255.255.255/32"]
        .iter()
        .map(|n| range_of(&n.parse::<IpNet>().expect("a valid prefix")))
        .collect();
    v4.extend(
        rt.link_broadcasts
            .iter()
            .map(|b| range_of(&IpNet::from(IpAddr::V4(*b)))),
    );
    let v6: Vec<AddrRange> = ["fe80::/10", "ff00::/8"]
        .iter()
        .map(|n| range_of(&n.parse::<IpNet>().expect("a valid prefix")))
        .collect();
    let mut out = Vec::new();
    for (v6, ranges) in [(false, v4), (true, v6)] {
        let elems = merge(ranges)
            .into_iter()
            .map(|r| addr_elem(r, v6))
            .collect();
        out.extend(set_cmds(link_scope_set(v6), v6, false, elems));
    }
    out
}

fn link_scope_set(v6: bool) -> &'static str {
    if v6 { "link_scope_v6" } else { "link_scope_v4" }
}

fn link_scope_rules(chain: &str, rt: &Runtime) -> Vec<Value> {
    [false, true]
        .into_iter()
        .map(|v6| {
            let mut expr = vec![set_match(link_scope_set(v6), v6, "daddr", false)];
            expr.extend(logged_drop(chain, rt));
            rule(chain, expr)
        })
        .collect()
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

/// An inclusive range of addresses of one family (IPv4 in the low 32 bits).
type AddrRange = (u128, u128);
/// Addresses × an inclusive destination port range.
type Rect = (u128, u128, u16, u16);

fn range_of(net: &IpNet) -> AddrRange {
    match net {
        IpNet::V4(n) => (
            u128::from(u32::from(n.network())),
            u128::from(u32::from(n.broadcast())),
        ),
        IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
    }
}

/// One address, a prefix when the range is one, otherwise a range (libnftables JSON).
fn addr_elem((a, b): AddrRange, v6: bool) -> Value {
    let show = |x: u128| {
        if v6 {
            std::net::Ipv6Addr::from(x).to_string()
        } else {
            std::net::Ipv4Addr::from(x as u32).to_string()
        }
    };
    let bits = if v6 { 128 } else { 32 };
    let span = b - a;
    if span == 0 {
        return json!(show(a));
    }
    let size = span.wrapping_add(1);
    if (size == 0 || size.is_power_of_two()) && a & span == 0 {
        let len = bits - span.count_ones();
        return json!({"prefix": {"addr": show(a), "len": len}});
    }
    json!({"range": [show(a), show(b)]})
}

fn port_elem(a: u16, b: u16) -> Value {
    if a == b {
        json!(a)
    } else {
        json!({"range": [a, b]})
    }
}

/// Sorted, disjoint, non-adjacent ranges covering exactly the union of `v`.
fn merge(mut v: Vec<AddrRange>) -> Vec<AddrRange> {
    v.sort_unstable();
    let mut out: Vec<AddrRange> = Vec::with_capacity(v.len());
    for (a, b) in v {
        match out.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// Disjoint rectangles covering exactly the union of `rects`: the kernel refuses overlapping
/// elements in an interval set of concatenations (and cannot merge them itself). The port axis is
/// cut at every rule's boundaries; each piece gets the merged addresses of the rules covering it,
/// and neighbouring pieces with the same addresses are joined again.
fn disjoint(rects: &[Rect]) -> Vec<Rect> {
    let mut cuts: Vec<u32> = rects
        .iter()
        .flat_map(|r| [u32::from(r.2), u32::from(r.3) + 1])
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut pieces: Vec<(Vec<AddrRange>, u16, u16)> = Vec::new();
    for w in cuts.windows(2) {
        let (lo, hi) = (w[0] as u16, (w[1] - 1) as u16);
        let addrs = merge(
            rects
                .iter()
                .filter(|r| r.2 <= lo && hi <= r.3)
                .map(|r| (r.0, r.1))
                .collect(),
        );
        if addrs.is_empty() {
            continue;
        }
        match pieces.last_mut() {
            Some(last) if last.0 == addrs && u32::from(last.2) + 1 == u32::from(lo) => last.2 = hi,
            _ => pieces.push((addrs, lo, hi)),
        }
    }
    pieces
        .into_iter()
        .flat_map(|(addrs, lo, hi)| addrs.into_iter().map(move |(a, b)| (a, b, lo, hi)))
        .collect()
}

fn addr_payload(v6: bool, field: &str) -> Value {
    json!({"payload": {"protocol": if v6 { "ip6" } else { "ip" }, "field": field}})
}

/// A named interval set of addresses (`ports` false) or of address . port concatenations, and
/// the command filling it.
fn set_cmds(name: &str, v6: bool, ports: bool, elems: Vec<Value>) -> [Value; 2] {
    let addr_type = if v6 { "ipv6_addr" } else { "ipv4_addr" };
    let ty = if ports {
        json!([addr_type, "inet_service"])
    } else {
        json!(addr_type)
    };
    [
        json!({"add": {"set": {"family": "inet", "table": TABLE, "name": name, "type": ty, "flags": ["interval"]}}}),
        json!({"add": {"element": {"family": "inet", "table": TABLE, "name": name, "elem": elems}}}),
    ]
}

/// `[ip|ip6] FIELD @name` (or `. th dport` with `ports`).
fn set_match(name: &str, v6: bool, field: &str, ports: bool) -> Value {
    let left = if ports {
        json!({"concat": [addr_payload(v6, field), {"payload": {"protocol": "th", "field": "dport"}}]})
    } else {
        addr_payload(v6, field)
    };
    json!({"match": {"op": "==", "left": left, "right": format!("@{name}")}})
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
        out.push(json!({"match": {"op": "==", "left": {"payload": {"protocol": "th", "field": "dport"}}, "right": port_elem(a, b)}}));
    }
    out
}

fn l4_index(l4: L4) -> u8 {
    match l4 {
        L4::Tcp => 0,
        L4::Udp => 1,
        L4::Icmp => 2,
        L4::Any => 3,
    }
}

fn l4_name(l4: L4) -> &'static str {
    match l4 {
        L4::Tcp => "tcp",
        L4::Udp => "udp",
        L4::Icmp => "icmp",
        L4::Any => "any",
    }
}

/// The plan's rules as sets: each run of consecutive rules with the same verdict (the plan puts
/// every deny before every allow) becomes one set and one rule per address family, protocol and
/// "with ports or not". Within a run every match has the same verdict, so matching the union is
/// the same as matching the rules one by one; the order of runs is kept. The rule count stays
/// constant however many destinations a policy lists: each rule costs the nft transaction about
/// 45 µs, a set element a few.
fn net_rules(chain: &str, rules: &[NetRule], rt: &Runtime, out: &mut Vec<Value>) {
    let mut run = 0;
    let mut i = 0;
    while i < rules.len() {
        let verdict = rules[i].verdict;
        let len = rules[i..]
            .iter()
            .take_while(|r| r.verdict == verdict)
            .count();
        // (v6, protocol, with ports) -> (protocol, rectangles; ports 0-65535 when none).
        let mut groups: BTreeMap<(bool, u8, bool), (L4, Vec<Rect>)> = BTreeMap::new();
        for r in &rules[i..i + len] {
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
                let v6 = n.addr().is_ipv6();
                let (a, b) = range_of(&n);
                let (p, q) = r.ports.unwrap_or((0, u16::MAX));
                groups
                    .entry((v6, l4_index(r.l4), r.ports.is_some()))
                    .or_insert_with(|| (r.l4, Vec::new()))
                    .1
                    .push((a, b, p, q));
            }
        }
        for ((v6, _, ports), (l4, rects)) in groups {
            let name = format!(
                "{chain}{run}_{}_{}{}",
                if v6 { "v6" } else { "v4" },
                l4_name(l4),
                if ports { "_ports" } else { "" }
            );
            let elems: Vec<Value> = if ports {
                disjoint(&rects)
                    .into_iter()
                    .map(|(a, b, p, q)| json!({"concat": [addr_elem((a, b), v6), port_elem(p, q)]}))
                    .collect()
            } else {
                merge(rects.iter().map(|r| (r.0, r.1)).collect())
                    .into_iter()
                    .map(|r| addr_elem(r, v6))
                    .collect()
            };
            out.extend(set_cmds(&name, v6, ports, elems));
            let mut expr = l4_matches(l4, None, v6);
            expr.push(set_match(&name, v6, "daddr", ports));
            match verdict {
                Verdict::Drop => expr.extend(logged_drop(chain, rt)),
                Verdict::Accept => expr.extend([json!({"counter": null}), json!({"accept": null})]),
            }
            out.push(rule(chain, expr));
        }
        run += 1;
        i += len;
    }
}

/// Sets `host_v4`/`host_v6` of every address the host owns, and the rules closing them in
/// `chain` (matching `field`: daddr out, saddr in).
fn host_sets(rt: &Runtime) -> Vec<Value> {
    let mut out = Vec::new();
    for v6 in [false, true] {
        let elems = merge(
            rt.host_addresses
                .iter()
                .filter(|ip| ip.is_ipv6() == v6)
                .map(|ip| range_of(&IpNet::from(*ip)))
                .collect(),
        );
        if !elems.is_empty() {
            let elems = elems.into_iter().map(|r| addr_elem(r, v6)).collect();
            out.extend(set_cmds(host_set(v6), v6, false, elems));
        }
    }
    out
}

fn host_set(v6: bool) -> &'static str {
    if v6 { "host_v6" } else { "host_v4" }
}

fn host_rules(chain: &str, field: &str, rt: &Runtime) -> Vec<Value> {
    [false, true]
        .into_iter()
        .filter(|v6| rt.host_addresses.iter().any(|ip| ip.is_ipv6() == *v6))
        .map(|v6| {
            let mut expr = vec![set_match(host_set(v6), v6, field, false)];
            expr.extend(logged_drop(chain, rt));
            rule(chain, expr)
        })
        .collect()
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

/// The whole ruleset: the table with its chains and sets, for a namespace that has no such table
/// yet (`fence::install` deletes an existing one in the same transaction).
pub fn ruleset(plan: &NetworkPlan, rt: &Runtime) -> Value {
    let mut cmds = vec![
        json!({"add": {"table": {"family": "inet", "name": TABLE}}}),
        json!({"add": {"chain": {"family": "inet", "table": TABLE, "name": "egress", "type": "filter", "hook": "output", "prio": 0, "policy": "drop"}}}),
        json!({"add": {"chain": {"family": "inet", "table": TABLE, "name": "ingress", "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}}}),
    ];
    cmds.extend(set_cmds(ND_SET, true, false, nd_destinations(rt)));
    if plan.host_loopback == Verdict::Drop {
        cmds.extend(host_sets(rt));
        cmds.extend(link_scope_sets(rt));
    }
    let lo =
        |key: &str| json!({"match": {"op": "==", "left": {"meta": {"key": key}}, "right": "lo"}});
    let established = json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}});
    // Egress.
    cmds.push(rule("egress", vec![lo("oifname"), json!({"accept": null})]));
    cmds.push(rule(
        "egress",
        vec![established.clone(), json!({"accept": null})],
    ));
    cmds.push(rule("egress", nd_out_accept()));
    // The proxy first: a loopback proxy is reached through the host's side of the link (DNAT
    // below), which the next rules otherwise close.
    if let (Some(_), Some((ip, port))) = (&plan.proxy, rt.proxy) {
        let mut expr = vec![addr_match(&ip, "daddr")];
        expr.extend(l4_matches(L4::Tcp, Some((port, port)), ip.is_ipv6()));
        expr.push(json!({"accept": null}));
        cmds.push(rule("egress", expr));
    }
    if plan.host_loopback == Verdict::Drop {
        cmds.extend(host_rules("egress", "daddr", rt));
        cmds.extend(link_scope_rules("egress", rt));
    }
    if plan.dns_exemption {
        for l4 in [L4::Udp, L4::Tcp] {
            let mut expr = l4_matches(l4, Some((53, 53)), false);
            expr.push(json!({"accept": null}));
            cmds.push(rule("egress", expr));
        }
    }
    net_rules("egress", &plan.egress, rt, &mut cmds);
    cmds.push(terminal("egress", plan.egress_default, rt));

    // Ingress.
    cmds.push(rule(
        "ingress",
        vec![lo("iifname"), json!({"accept": null})],
    ));
    cmds.push(rule("ingress", vec![established, json!({"accept": null})]));
    // Neighbour discovery arriving is consumed by the namespace's kernel (and its answers go
    // out through the limited egress rule).
    cmds.push(rule("ingress", vec![nd_types(), json!({"accept": null})]));
    if plan.host_loopback == Verdict::Drop {
        cmds.extend(host_rules("ingress", "saddr", rt));
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
        // Retired (0.7) documents too: MXC 0.8's legacy host lists and DNS exemption.
        let opts = ParseOptions {
            release: agentcell_policy::MxcRelease::V0_8,
            ..ParseOptions::default()
        };
        let d = parse_with(json, &opts).unwrap();
        compile(&d, &Host::reference(), &CompileOptions::default())
            .unwrap()
            .network
    }

    /// The rules of `chain`, each with its set references replaced by the sets' elements, so the
    /// checks see every address and port a rule matches.
    fn rules(v: &Value, chain: &str) -> Vec<String> {
        let cmds = v["nftables"].as_array().unwrap();
        let sets: BTreeMap<String, String> = cmds
            .iter()
            .filter_map(|c| c["add"].get("element"))
            .map(|e| {
                (
                    format!("\"@{}\"", e["name"].as_str().unwrap()),
                    e["elem"].to_string(),
                )
            })
            .collect();
        cmds.iter()
            .filter(|c| c["add"]["rule"]["chain"] == chain)
            .map(|c| {
                let mut r = c["add"]["rule"]["expr"].to_string();
                for (name, elems) in &sets {
                    r = r.replace(name, elems);
                }
                r
            })
            .collect()
    }

    #[test]
    fn deny_before_allow_then_the_default_for_both_families() {
        let p = plan(
            r#"{"version":"1.0.0","network":{"egress":{"default":"deny",
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
    fn link_scoped_destinations_are_closed_with_the_host_before_any_rule() {
        // Everything allowed: link-local, multicast and broadcast still reach only the host.
        let p = plan(
            r#"{"version":"1.0.0","network":{"egress":{"default":"allow",
            "allow":[{"to":[{"cidr":"169.254.169.254/32"},{"cidr":"ff05::1/128"}]}]}}}"#,
        );
        let rt = Runtime {
            host_addresses: vec!["198.19.128.1".parse().unwrap()],
            link_broadcasts: vec!["198.19.128.3".parse().unwrap()],
            ..Default::default()
        };
        let eg = rules(&ruleset(&p, &rt), "egress");
        let pos = |needle: &str| {
            eg.iter()
                .position(|r| r.contains(needle) && r.contains("\"drop\""))
                .unwrap_or_else(|| panic!("a drop of {needle} in {eg:#?}"))
        };
        let allow = eg
            .iter()
            .position(|r| r.contains("169.254.169.254"))
            .expect("the allow rule");
        for needle in [
            "\"169.254.0.0\",\"len\":16",
            "\"224.0.0.0\",\"len\":4",
            "\"255.255.255.255\"",
            "\"198.19.128.3\"",
            "\"fe80::\",\"len\":10",
            "\"ff00::\",\"len\":8",
        ] {
            assert!(pos(needle) < allow, "{needle} closed before the rules");
            assert!(eg[pos(needle)].contains("egress-drop"), "{needle} logged");
        }
    }

    #[test]
    fn neighbour_discovery_goes_to_link_scoped_destinations_only() {
        let p = plan(r#"{"version":"1.0.0","network":{"egress":{"default":"deny"}}}"#);
        let rt = Runtime {
            on_link_v6: vec!["fdac:0:5::/64".parse().unwrap()],
            ..Default::default()
        };
        let v = ruleset(&p, &rt);
        let eg = rules(&v, "egress");
        let nd: Vec<&String> = eg
            .iter()
            .filter(|r| r.contains("nd-neighbor-solicit"))
            .collect();
        assert_eq!(nd.len(), 1, "{eg:#?}");
        let nd = nd[0];
        for dest in [
            "{\"prefix\":{\"addr\":\"fe80::\",\"len\":10}}",
            "{\"prefix\":{\"addr\":\"ff02::1:ff00:0\",\"len\":104}}",
            "\"ff02::1\"",
            "\"ff02::2\"",
            "\"ff02::16\"",
            "{\"prefix\":{\"addr\":\"fdac:0:5::\",\"len\":64}}",
        ] {
            assert!(nd.contains(dest), "{dest} in {nd}");
        }
        assert!(nd.contains("\"daddr\""), "limited by destination: {nd}");
        // Nothing else: no wider prefix slipped in.
        let set = v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["add"]["element"]["name"] == ND_SET)
            .unwrap();
        assert_eq!(
            set["add"]["element"]["elem"],
            json!([
                {"prefix": {"addr": "fdac:0:5::", "len": 64}},
                {"prefix": {"addr": "fe80::", "len": 10}},
                {"range": ["ff02::1", "ff02::2"]},
                "ff02::16",
                {"prefix": {"addr": "ff02::1:ff00:0", "len": 104}}
            ])
        );
        // Arriving ND is consumed by the namespace's own kernel: not limited.
        let ing = rules(&v, "ingress");
        assert!(
            ing.iter()
                .any(|r| r.contains("nd-neighbor-advert") && !r.contains("daddr"))
        );
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

        let p =
            plan(r#"{"version":"1.0.0","runtimeConfig":{"networkProxy":"http://127.0.0.1:3128"}}"#);
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

    #[test]
    fn sets_cover_exactly_the_rules_union_without_overlap() {
        // Small rectangles, checked point by point: the pieces are disjoint (the kernel refuses
        // overlaps) and cover exactly what the rules cover.
        let rects: Vec<Rect> = vec![
            (0, 9, 80, 90),
            (5, 14, 85, 100),
            (7, 7, 85, 85),
            (0, 9, 80, 90),
            (20, 20, 0, 65535),
            (3, 4, 91, 91),
        ];
        let pieces = disjoint(&rects);
        for a in 0..25u128 {
            for p in [0u16, 79, 80, 84, 85, 90, 91, 92, 100, 101, 65535] {
                let want = rects
                    .iter()
                    .any(|r| r.0 <= a && a <= r.1 && r.2 <= p && p <= r.3);
                let n = pieces
                    .iter()
                    .filter(|r| r.0 <= a && a <= r.1 && r.2 <= p && p <= r.3)
                    .count();
                assert_eq!(n, usize::from(want), "{a} {p} in {pieces:?}");
            }
        }
        assert_eq!(
            merge(vec![(5, 9), (0, 4), (11, 12), (12, 20)]),
            vec![(0, 9), (11, 20)]
        );
        assert_eq!(
            addr_elem((0, u128::from(u32::MAX)), false),
            json!({"prefix": {"addr": "0.0.0.0", "len": 0}})
        );
        assert_eq!(
            addr_elem((0, u128::MAX), true),
            json!({"prefix": {"addr": "::", "len": 0}})
        );
        assert_eq!(
            addr_elem((8, 15), false),
            json!({"prefix": {"addr": "0.0.0.8", "len": 29}})
        );
        assert_eq!(
            addr_elem((8, 16), false),
            json!({"range": ["0.0.0.8", "0.0.0.16"]})
        );
    }

    #[test]
    fn the_rule_count_does_not_grow_with_the_destinations() {
        let doc = |n: usize| {
            let allow: Vec<Value> = (0..n)
                .map(|i| {
                    json!({"to": [{"cidr": format!("198.18.{}.{}/32", i / 250, i % 250 + 1)}],
                    "ports": [{"protocol": "tcp", "port": 9000 + i}]})
                })
                .collect();
            json!({"version": "1.0.0", "network": {"egress": {"default": "deny", "allow": allow}}})
                .to_string()
        };
        let count = |n| {
            let v = ruleset(&plan(&doc(n)), &Runtime::default());
            v["nftables"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["add"].get("rule").is_some())
                .count()
        };
        assert_eq!(count(1), count(100));
        let eg = rules(&ruleset(&plan(&doc(100)), &Runtime::default()), "egress");
        assert!(
            eg.iter().any(|r| r.contains("\"198.18.0.99\",9098")),
            "{eg:#?}"
        );
    }
}
