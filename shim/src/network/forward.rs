//! The fence for a micro-VM: the guest's traffic is FORWARDED by the sandbox's network
//! namespace (tap in, uplink out), so it never meets the `output`/`input` hooks the sandbox
//! ruleset uses. This turns that same ruleset ([`super::nft::ruleset`], unchanged rules) into
//! its VM variant: `egress` and `ingress` become regular chains, a `forward` base chain (policy
//! drop) jumps to `egress` for traffic from the tap and to `ingress` for traffic to it, and the
//! namespace's own addresses (the tap side, the uplink) are closed to the guest: `input` accepts
//! only loopback and replies, `output` only loopback, replies and neighbour discovery to
//! link-scoped destinations (nothing runs in the namespace but qemu, which has no business on the
//! network). The guest's /30 is masqueraded to the namespace's uplink address. What the guest
//! sends to link-local, broadcast or multicast destinations is forwarded into `egress`, which
//! closes them with the host; what reaches the host through the uplink meets the host's guard
//! ([`super::hostguard`]) like any sandbox's.

use serde_json::{Value, json};

use super::nft::TABLE;

fn rule(chain: &str, expr: Vec<Value>) -> Value {
    json!({"add": {"rule": {"family": "inet", "table": TABLE, "chain": chain, "expr": expr}}})
}

fn base(name: &str, kind: &str, hook: &str, prio: i32, policy: &str) -> Value {
    json!({"add": {"chain": {"family": "inet", "table": TABLE, "name": name, "type": kind, "hook": hook, "prio": prio, "policy": policy}}})
}

fn iface(key: &str, op: &str, name: &str) -> Value {
    json!({"match": {"op": op, "left": {"meta": {"key": key}}, "right": name}})
}

/// The VM variant of `ruleset` for a guest behind `tap` with addresses in `guest_net`
/// (`A.B.C.D/len`).
pub fn vm_ruleset(ruleset: Value, tap: &str, guest_net: ipnet::Ipv4Net) -> Value {
    let mut cmds: Vec<Value> = ruleset["nftables"].as_array().cloned().unwrap_or_default();
    for c in cmds.iter_mut() {
        if let Some(chain) = c.pointer_mut("/add/chain")
            && let Some(obj) = chain.as_object_mut()
            && matches!(
                obj.get("name").and_then(Value::as_str),
                Some("egress" | "ingress")
            )
        {
            for k in ["type", "hook", "prio", "policy"] {
                obj.remove(k);
            }
        }
    }
    let established = json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}});
    let nd = super::nft::nd_types();
    let accept = json!({"accept": null});
    cmds.push(base("vm_forward", "filter", "forward", 0, "drop"));
    cmds.push(rule(
        "vm_forward",
        vec![
            iface("iifname", "==", tap),
            json!({"jump": {"target": "egress"}}),
        ],
    ));
    cmds.push(rule(
        "vm_forward",
        vec![
            iface("oifname", "==", tap),
            json!({"jump": {"target": "ingress"}}),
        ],
    ));
    cmds.push(base("vm_input", "filter", "input", 0, "drop"));
    cmds.push(rule(
        "vm_input",
        vec![iface("iifname", "==", "lo"), accept.clone()],
    ));
    cmds.push(rule("vm_input", vec![established.clone(), accept.clone()]));
    cmds.push(rule("vm_input", vec![nd, accept.clone()]));
    cmds.push(base("vm_output", "filter", "output", 0, "drop"));
    cmds.push(rule(
        "vm_output",
        vec![iface("oifname", "==", "lo"), accept.clone()],
    ));
    cmds.push(rule("vm_output", vec![established, accept]));
    // The namespace's own neighbour discovery, to link-scoped destinations only (the set the
    // sandbox ruleset defines).
    cmds.push(rule("vm_output", super::nft::nd_out_accept()));
    cmds.push(base("vm_nat", "nat", "postrouting", 100, "accept"));
    cmds.push(rule(
        "vm_nat",
        vec![
            json!({"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                "right": {"prefix": {"addr": guest_net.network().to_string(), "len": guest_net.prefix_len()}}}}),
            iface("oifname", "!=", tap),
            json!({"masquerade": null}),
        ],
    ));
    json!({"nftables": cmds})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::nft::{Runtime, ruleset};
    use agentcell_policy::plan::{CompileOptions, Host, compile};
    use agentcell_policy::{ParseOptions, parse_with};

    #[test]
    fn the_same_rules_judge_forwarded_traffic_and_the_namespace_is_closed() {
        let d = parse_with(
            r#"{"version":"1.0.0","network":{"egress":{"default":"deny",
            "allow":[{"to":[{"cidr":"198.18.0.0/24"}],"ports":[{"protocol":"tcp","port":8080}]}]}}}"#,
            &ParseOptions::default(),
        )
        .unwrap();
        let p = compile(&d, &Host::reference(), &CompileOptions::default())
            .unwrap()
            .network;
        let base = ruleset(&p, &Runtime::default());
        let v = vm_ruleset(base.clone(), "actap0", "169.254.77.0/30".parse().unwrap());
        let cmds = v["nftables"].as_array().unwrap();
        let chain = |n: &str| {
            cmds.iter()
                .find(|c| c["add"]["chain"]["name"] == n)
                .unwrap_or_else(|| panic!("chain {n}"))["add"]["chain"]
                .clone()
        };
        // egress/ingress keep every rule but are no longer hooked.
        assert!(chain("egress").get("hook").is_none());
        assert!(chain("ingress").get("hook").is_none());
        let rules_of = |v: &Value, n: &str| {
            v["nftables"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["add"]["rule"]["chain"] == n)
                .count()
        };
        assert_eq!(rules_of(&v, "egress"), rules_of(&base, "egress"));
        assert!(rules_of(&v, "egress") > 0);
        assert_eq!(chain("vm_forward")["policy"], "drop");
        assert_eq!(chain("vm_forward")["hook"], "forward");
        assert_eq!(chain("vm_input")["policy"], "drop");
        let s = v.to_string();
        assert!(s.contains(r#"{"jump":{"target":"egress"}}"#));
        assert!(s.contains(r#""masquerade":null"#) && s.contains("169.254.77.0"));
        // The tap is never accepted on input: only loopback, replies and ND are.
        let input: Vec<String> = cmds
            .iter()
            .filter(|c| c["add"]["rule"]["chain"] == "vm_input")
            .map(|c| c.to_string())
            .collect();
        assert!(input.iter().all(|r| !r.contains("actap0")), "{input:?}");
        // The namespace's own neighbour discovery goes to link-scoped destinations only.
        let output: Vec<String> = cmds
            .iter()
            .filter(|c| c["add"]["rule"]["chain"] == "vm_output")
            .map(|c| c.to_string())
            .collect();
        let nd: Vec<&String> = output
            .iter()
            .filter(|r| r.contains("nd-neighbor"))
            .collect();
        assert!(nd.len() == 1 && nd[0].contains("\"@nd_v6\""), "{output:?}");
        assert!(cmds.iter().any(|c| c["add"]["set"]["name"] == "nd_v6"));
    }
}
