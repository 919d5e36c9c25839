//! A Kubernetes NetworkPolicy mirroring an MXC policy's network rules, as defence in depth at the
//! CNI. The in-pod fence (nftables in the sandbox's namespace) stays the exact enforcement, so
//! the mirror must never be stricter than the policy (that would break traffic the policy allows):
//! where NetworkPolicy cannot say a rule, the mirror errs towards allowing and reports the rule
//! as [`Unmirrored`].

use std::collections::BTreeMap;
use std::net::IpAddr;

use agentcell_policy::plan::net::{self, Dest, L4, NetRule, Verdict};
use agentcell_policy::{Document, netspec};
use ipnet::IpNet;
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::desired::LABEL_SANDBOX;

/// A policy rule NetworkPolicy cannot express exactly, and what the mirror does instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmirrored {
    /// JSON path of the MXC rule.
    pub origin: String,
    pub why: &'static str,
}

const DENY_WITH_PORTS: &str =
    "a deny limited to ports or protocols: NetworkPolicy can only allow, so it is not mirrored";
const BY_NAME: &str = "a host name: NetworkPolicy matches addresses, so the rule's ports are allowed to any address not denied";
const ICMP: &str =
    "ICMP: NetworkPolicy has no ICMP selector, so every protocol to these addresses is allowed";
const HOST: &str =
    "traffic with the node itself: NetworkPolicy does not govern it reliably, it is not mirrored";
const PROXY_LOOPBACK: &str = "a proxy on the loopback: NetworkPolicy does not govern loopback traffic, so nothing leaves the pod by NetworkPolicy";
const PROXY_NAME: &str =
    "a proxy named by host name: TCP to its port is allowed to any address not denied";

pub fn mirror(doc: &Document, sandbox: &str) -> (NetworkPolicySpec, Vec<Unmirrored>) {
    let plan = net::build(
        &doc.network,
        doc.backend,
        doc.version.supports_directional(),
    );
    let mut notes = Vec::new();
    let mut egress = Vec::new();
    // Port-less denies seen so far: a first-match list means they carve every later allow.
    let mut blocked: Vec<IpNet> = Vec::new();

    if plan.host_loopback == Verdict::Accept {
        notes.push(Unmirrored {
            origin: "network.ingress.hostLoopback".into(),
            why: HOST,
        });
    }
    if plan.dns_exemption {
        egress.push(NetworkPolicyEgressRule {
            to: None,
            ports: Some(vec![
                port("UDP", Some((53, 53))),
                port("TCP", Some((53, 53))),
            ]),
        });
    }
    if let Some(p) = &plan.proxy {
        if netspec::is_loopback_host(&p.host) {
            // MXC requires a loopback proxy; the pod's own loopback is outside NetworkPolicy.
            notes.push(Unmirrored {
                origin: "network.proxy".into(),
                why: PROXY_LOOPBACK,
            });
        } else {
            let to = match p.host.trim_matches(['[', ']']).parse::<IpAddr>() {
                Ok(ip) => vec![block(IpNet::from(ip), &[])],
                Err(_) => {
                    notes.push(Unmirrored {
                        origin: "network.proxy".into(),
                        why: PROXY_NAME,
                    });
                    everywhere(&blocked)
                }
            };
            egress.push(NetworkPolicyEgressRule {
                to: Some(to),
                ports: Some(vec![port("TCP", Some((p.port, p.port)))]),
            });
        }
    }
    for r in &plan.egress {
        match r.verdict {
            Verdict::Drop => match (&r.dest, r.l4, r.ports) {
                (Dest::Net(n), L4::Any, None) => blocked.push(*n),
                _ => notes.push(Unmirrored {
                    origin: r.origin.clone(),
                    why: if matches!(r.dest, Dest::Name(_)) {
                        "a deny by host name: NetworkPolicy can only allow, so it is not mirrored"
                    } else {
                        DENY_WITH_PORTS
                    },
                }),
            },
            Verdict::Accept => {
                if let Some(rule) = allow(r, &blocked, &mut notes) {
                    egress.push(rule);
                }
            }
        }
    }
    if plan.egress_default == Verdict::Accept {
        egress.push(NetworkPolicyEgressRule {
            to: Some(everywhere(&blocked)),
            ports: None,
        });
    }
    dedup_notes(&mut notes);
    let spec = NetworkPolicySpec {
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                LABEL_SANDBOX.to_owned(),
                sandbox.to_owned(),
            )])),
            ..LabelSelector::default()
        }),
        policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
        ingress: Some(if plan.ingress_default == Verdict::Accept {
            vec![NetworkPolicyIngressRule::default()]
        } else {
            Vec::new()
        }),
        egress: Some(egress),
    };
    (spec, notes)
}

fn allow(
    r: &NetRule,
    blocked: &[IpNet],
    notes: &mut Vec<Unmirrored>,
) -> Option<NetworkPolicyEgressRule> {
    let to = match &r.dest {
        Dest::Net(n) => {
            if blocked.iter().any(|b| b.contains(n)) {
                // An earlier port-less deny covers the whole destination: the fence never
                // reaches this allow.
                return None;
            }
            vec![block(*n, blocked)]
        }
        Dest::Name(_) => {
            notes.push(Unmirrored {
                origin: r.origin.clone(),
                why: BY_NAME,
            });
            everywhere(blocked)
        }
    };
    if to.is_empty() {
        return None;
    }
    let ports = match (r.l4, r.ports) {
        (L4::Tcp, p) => Some(vec![port("TCP", p)]),
        (L4::Udp, p) => Some(vec![port("UDP", p)]),
        (L4::Icmp, _) => {
            notes.push(Unmirrored {
                origin: r.origin.clone(),
                why: ICMP,
            });
            None
        }
        (L4::Any, _) => None,
    };
    Some(NetworkPolicyEgressRule {
        to: Some(to),
        ports,
    })
}

fn port(protocol: &str, range: Option<(u16, u16)>) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: Some(protocol.into()),
        port: range.map(|(a, _)| IntOrString::Int(a.into())),
        end_port: range.and_then(|(a, b)| (b > a).then_some(b.into())),
    }
}

fn block(net: IpNet, blocked: &[IpNet]) -> NetworkPolicyPeer {
    let except: Vec<String> = blocked
        .iter()
        .filter(|b| **b != net && net.contains(*b))
        .map(ToString::to_string)
        .collect();
    NetworkPolicyPeer {
        ip_block: Some(IPBlock {
            cidr: net.to_string(),
            except: (!except.is_empty()).then_some(except),
        }),
        ..NetworkPolicyPeer::default()
    }
}

/// Both address families, minus the port-less denies (a family denied whole is left out).
fn everywhere(blocked: &[IpNet]) -> Vec<NetworkPolicyPeer> {
    ["0.0.0.0/0", "::/0"]
        .into_iter()
        .map(|s| s.parse::<IpNet>().expect("const"))
        .filter(|n| !blocked.iter().any(|b| b.contains(n)))
        .map(|n| block(n, blocked))
        .collect()
}

fn dedup_notes(notes: &mut Vec<Unmirrored>) {
    let mut seen = std::collections::BTreeSet::new();
    notes.retain(|n| seen.insert((n.origin.clone(), n.why)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentcell_policy::{ParseOptions, parse_with};
    use serde_json::{Value, json};

    fn mirror_of(policy: Value) -> (Value, Vec<Unmirrored>) {
        // Retired (0.7) documents too: MXC 0.8's legacy fields (--mxc-release 0.8).
        let opts = ParseOptions {
            release: agentcell_policy::MxcRelease::V0_8,
            ..ParseOptions::default()
        };
        let doc = parse_with(&policy.to_string(), &opts).unwrap();
        let (spec, notes) = mirror(&doc, "sb");
        (serde_json::to_value(spec).unwrap(), notes)
    }

    #[test]
    fn coding_agent_preset_allows_only_https_to_its_cidrs() {
        let doc = parse_with(
            agentcell_policy::presets::get("coding-agent").unwrap(),
            &ParseOptions::default(),
        )
        .unwrap();
        let (spec, notes) = mirror(&doc, "sb");
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v["podSelector"]["matchLabels"][LABEL_SANDBOX], "sb");
        assert_eq!(v["policyTypes"], json!(["Ingress", "Egress"]));
        assert_eq!(v["ingress"], json!([]), "ingress default deny");
        let egress = v["egress"].as_array().unwrap();
        let cidrs: Vec<&str> = egress
            .iter()
            .map(|r| r["to"][0]["ipBlock"]["cidr"].as_str().unwrap())
            .collect();
        assert_eq!(
            cidrs,
            ["140.82.112.0/20", "185.199.108.0/22", "2606:50c0::/32"]
        );
        for r in egress {
            assert_eq!(r["ports"], json!([{"protocol": "TCP", "port": 443}]));
        }
        assert!(notes.is_empty(), "{notes:?}");
    }

    #[test]
    fn closed_policy_is_deny_all() {
        let (v, _) = mirror_of(json!({"version": "1.0.0"}));
        assert_eq!(v["egress"], json!([]));
        assert_eq!(v["ingress"], json!([]));
    }

    #[test]
    fn except_and_earlier_denies_carve_allows() {
        let (v, notes) = mirror_of(json!({"version": "1.0.0", "network": {"egress": {
            "default": "deny",
            "deny": [{"to": [{"cidr": "10.2.0.0/16"}]}, {"to": [{"cidr": "192.168.0.0/16"}]},
                     {"to": [{"cidr": "10.3.0.0/16"}], "ports": [{"protocol": "tcp", "port": 22}]}],
            "allow": [{"to": [{"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}],
                       "ports": [{"protocol": "tcp", "port": 8000, "endPort": 8100}]},
                      {"to": [{"cidr": "192.168.1.0/24"}]}]}}}));
        let egress = v["egress"].as_array().unwrap();
        // 10.0.0.0/8 minus 10.1.0.0/16 is split by the planner; every piece excepts 10.2.0.0/16
        // when it holds it, and none holds 10.1.0.0/16.
        assert!(egress.iter().all(|r| {
            let cidr: IpNet = r["to"][0]["ipBlock"]["cidr"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            !cidr.contains(&"10.1.2.3/32".parse::<IpNet>().unwrap())
        }));
        assert!(
            egress
                .iter()
                .any(|r| r["to"][0]["ipBlock"]["except"] == json!(["10.2.0.0/16"]))
        );
        assert!(
            egress
                .iter()
                .all(|r| r["ports"] == json!([{"protocol": "TCP", "port": 8000, "endPort": 8100}]))
        );
        assert!(
            !egress
                .iter()
                .any(|r| r["to"][0]["ipBlock"]["cidr"] == "192.168.1.0/24"),
            "fully denied allow dropped"
        );
        assert_eq!(
            notes,
            vec![Unmirrored {
                origin: "network.egress.deny[2]".into(),
                why: DENY_WITH_PORTS
            }]
        );
    }

    #[test]
    fn default_allow_is_everywhere_minus_denies_and_ingress_allow() {
        let (v, _) = mirror_of(json!({"version": "1.0.0", "network": {
            "egress": {"default": "allow", "deny": [{"to": [{"cidr": "169.254.0.0/16"}]}]}}}));
        assert_eq!(
            v["egress"],
            json!([{"to": [
                {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.0.0/16"]}},
                {"ipBlock": {"cidr": "::/0"}}]}])
        );
        assert_eq!(v["ingress"], json!([]));
        // MXC's legacy allowLocalNetwork is the one way to accept inbound connections.
        let (v, _) = mirror_of(json!({"version": "0.7.0-alpha", "containment": "lxc",
            "lxc": {"distribution": "a", "release": "1"},
            "network": {"allowLocalNetwork": true}}));
        assert_eq!(v["ingress"], json!([{}]));
    }

    #[test]
    fn names_and_icmp_are_reported_and_not_stricter() {
        let (v, notes) = mirror_of(json!({"version": "0.7.0-alpha", "containment": "lxc",
            "lxc": {"distribution": "a", "release": "1"},
            "network": {"defaultPolicy": "block", "enforcementMode": "firewall",
                        "allowedHosts": ["api.github.com"]}}));
        let egress = v["egress"].as_array().unwrap();
        // DNS exemption of MXC's LXC backend below 0.8, then the name allowed anywhere.
        assert_eq!(
            egress[0]["ports"][0],
            json!({"protocol": "UDP", "port": 53})
        );
        assert_eq!(egress[1]["to"].as_array().unwrap().len(), 2);
        assert_eq!(notes[0].why, BY_NAME);
        assert_eq!(notes[0].origin, "network.allowedHosts[0]");

        let (v, notes) = mirror_of(json!({"version": "1.0.0", "network": {"egress": {
            "allow": [{"to": [{"cidr": "10.0.0.1/32"}], "ports": [{"protocol": "icmp"}]}]}}}));
        assert_eq!(v["egress"][0]["ports"], Value::Null);
        assert_eq!(notes[0].why, ICMP);
    }

    #[test]
    fn loopback_proxy_opens_nothing() {
        let (v, notes) = mirror_of(json!({"version": "1.0.0",
            "runtimeConfig": {"networkProxy": "http://127.0.0.1:3128"}}));
        assert_eq!(v["egress"], json!([]));
        assert_eq!(notes[0].why, PROXY_LOOPBACK);
    }
}
