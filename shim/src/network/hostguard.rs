//! The host's side of the fence: what arrives at the host itself from a sandbox's link is
//! dropped unless it is a reply (established/related), neighbour discovery, or the proxy the plan
//! sanctions. The sandbox's own ruleset closes the host's addresses as they were when it started;
//! this closes the host by where the traffic goes (the host's input hook), so an address the host
//! gains later, another sandbox's gateway, the link-local address of the link's host end and
//! anything broadcast or multicast on the link are closed too, for both families.
//!
//! One host table, `inet agentcell_host`, shared by every sandbox: a base chain on the input hook
//! sends each packet, by the link it arrived on, through a verdict map (`links`) to that
//! sandbox's own chain (named after its link). Each sandbox adds and removes only its own map
//! element and chain, each in one transaction, so concurrent sandboxes never touch each other's
//! rules; the table, map and base chain are made by the first sandbox to find them missing, in a
//! transaction that `create`s the table (of two at once, one fails and joins the other's). They
//! stay once made: with no sandbox running the map is empty and
//! the base chain matches nothing (removing them when the last sandbox ends would race with one
//! starting). Pure rule text here, the effect in [`apply`].

use std::net::IpAddr;
use std::path::Path;

use serde_json::{Value, json};

use super::fence::{self, FenceError};
use super::nft::LOG_PREFIX;

pub const HOST_TABLE: &str = "agentcell_host";
/// The verdict map: a sandbox's host-side link name → jump to its chain.
pub const LINKS: &str = "links";
const BASE: &str = "input";

/// What the host lets in from one sandbox's link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    /// The host side of the sandbox's link (its chain is named after it).
    pub link: String,
    /// The sandbox id, in the prefix of logged drops (`agentcell <id> host-drop`).
    pub id: String,
    /// TCP endpoints on the host the sandbox may open connections to, as they arrive at the
    /// input hook (after the proxy forward's DNAT: `127.0.0.1:PORT` for a loopback proxy).
    pub sanctioned: Vec<(IpAddr, u16)>,
}

fn table() -> Value {
    json!({"table": {"family": "inet", "name": HOST_TABLE}})
}

fn chain(name: &str) -> Value {
    json!({"chain": {"family": "inet", "table": HOST_TABLE, "name": name}})
}

fn element(link: &str) -> Value {
    json!({"element": {"family": "inet", "table": HOST_TABLE, "name": LINKS,
        "elem": [[link, {"jump": {"target": link}}]]}})
}

fn rule(chain: &str, expr: Vec<Value>) -> Value {
    json!({"add": {"rule": {"family": "inet", "table": HOST_TABLE, "chain": chain, "expr": expr}}})
}

/// Table, map and base chain (the table's `add` is replaced by `create` where it is made).
fn scaffold() -> Vec<Value> {
    vec![
        json!({"add": table()}),
        json!({"add": {"map": {"family": "inet", "table": HOST_TABLE, "name": LINKS,
            "type": "ifname", "map": "verdict"}}}),
        // Before the usual filter priority: whatever else the host's firewall accepts, our
        // links' traffic to the host meets this first (a drop here is final).
        json!({"add": {"chain": {"family": "inet", "table": HOST_TABLE, "name": BASE,
            "type": "filter", "hook": "input", "prio": -10, "policy": "accept"}}}),
    ]
}

/// The base chain's one rule, added by the transaction that creates the table (`create`, not
/// `add`: of two sandboxes making it at once one fails and joins the other's), so there is
/// exactly one however registrations interleave.
fn dispatch() -> Value {
    rule(
        BASE,
        vec![json!({"vmap": {"key": {"meta": {"key": "iifname"}}, "data": format!("@{LINKS}")}})],
    )
}

/// The commands registering `g`: its chain, rules and map element; with `create`, first the
/// table itself with its map, base chain and dispatch rule (failing if the table exists); with
/// `replace`, the chain's old rules are flushed first (a chain of the same name a dead runner
/// left). Deleting costs the kernel a grace period (about 10 ms here), so nothing is deleted
/// unless something is there.
pub fn register_cmds(g: &Guard, create: bool, replace: bool) -> Value {
    let mut cmds = Vec::new();
    if create {
        cmds.push(json!({"create": table()}));
        cmds.extend(scaffold().into_iter().skip(1));
        cmds.push(dispatch());
    }
    cmds.push(json!({"add": chain(&g.link)}));
    if replace {
        cmds.push(json!({"flush": chain(&g.link)}));
    }
    let accept = json!({"accept": null});
    cmds.push(rule(
        &g.link,
        vec![
            json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}),
            accept.clone(),
        ],
    ));
    // Neighbour discovery is how the sandbox finds its gateway; the host's kernel consumes it.
    cmds.push(rule(&g.link, vec![super::nft::nd_types(), accept.clone()]));
    for (ip, port) in &g.sanctioned {
        let proto = if ip.is_ipv4() { "ip" } else { "ip6" };
        cmds.push(rule(
            &g.link,
            vec![
                json!({"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": "daddr"}}, "right": ip.to_string()}}),
                json!({"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": port}}),
                accept.clone(),
            ],
        ));
    }
    cmds.push(rule(
        &g.link,
        vec![
            json!({"counter": null}),
            json!({"limit": {"rate": 10, "per": "second"}}),
            json!({"log": {"prefix": format!("{LOG_PREFIX}{} host-drop ", g.id), "level": "info"}}),
            json!({"drop": null}),
        ],
    ));
    cmds.push(json!({"add": element(&g.link)}));
    json!({ "nftables": cmds })
}

/// The commands removing `link`'s element and chain; idempotent (each is added first, so a
/// second removal, or one for a sandbox that never registered, is not an error). They need the
/// table and map: without them there is nothing to remove (see [`unregister`]).
pub fn unregister_cmds(link: &str) -> Value {
    let mut cmds = Vec::new();
    cmds.extend([
        json!({"add": chain(link)}),
        json!({"add": element(link)}),
        json!({"delete": element(link)}),
        json!({"flush": chain(link)}),
        json!({"delete": chain(link)}),
    ]);
    json!({ "nftables": cmds })
}

/// Registers `g` in the host namespace at `netns` (`/proc/self/ns/net` in production): one
/// listing of the table (does it exist, is a chain of this name left?), then one transaction.
pub fn register(netns: &Path, g: &Guard) -> Result<(), FenceError> {
    let listed = json!({"nftables": [{"list": {"table": {"family": "inet", "name": HOST_TABLE}}}]});
    let (exists, left) = match fence::nft_json_in(netns, &listed.to_string()) {
        Ok(text) => {
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let left = v["nftables"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|o| o["chain"]["name"] == g.link.as_str());
            (true, left)
        }
        Err(FenceError::Nft(_)) => (false, false),
        Err(e) => return Err(e),
    };
    if !exists {
        match fence::nft_json_in(netns, &register_cmds(g, true, false).to_string()) {
            Ok(_) => return Ok(()),
            // Made meanwhile by another sandbox: join it (a real error shows again below).
            Err(FenceError::Nft(e)) => {
                tracing::debug!(error = %e, "the host guard table appeared meanwhile")
            }
            Err(e) => return Err(e),
        }
    }
    fence::nft_json_in(netns, &register_cmds(g, false, left).to_string()).map(|_| ())
}

/// Removes `link`'s chain and element from the host namespace at `netns`. Where the table was
/// never made there is nothing to remove, and it is not made for that (a sweep of a dead
/// runner's namespaces leaves a host without sandboxes as it was).
pub fn unregister(netns: &Path, link: &str) -> Result<(), FenceError> {
    match fence::nft_json_in(netns, &unregister_cmds(link).to_string()) {
        Err(FenceError::Nft(e)) => {
            let listed =
                json!({"nftables": [{"list": {"table": {"family": "inet", "name": HOST_TABLE}}}]});
            match fence::nft_json_in(netns, &listed.to_string()) {
                Err(FenceError::Nft(_)) => Ok(()),
                _ => Err(FenceError::Nft(e)),
            }
        }
        other => other.map(|_| ()),
    }
}

/// [`register`] in the host's own namespace.
pub fn apply(g: &Guard) -> Result<(), FenceError> {
    register(Path::new("/proc/self/ns/net"), g)
}

/// [`unregister`] in the host's own namespace.
pub fn remove(link: &str) -> Result<(), FenceError> {
    unregister(Path::new("/proc/self/ns/net"), link)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(link: &str) -> Guard {
        Guard {
            link: link.into(),
            id: format!("ac-1-{link}"),
            sanctioned: vec![("127.0.0.1".parse().unwrap(), 3128)],
        }
    }

    #[test]
    fn a_sandbox_chain_lets_in_replies_nd_and_the_proxy_then_drops_logged() {
        let v = register_cmds(&guard("ac0123456789ab"), true, false);
        let cmds = v["nftables"].as_array().unwrap();
        let rules: Vec<String> = cmds
            .iter()
            .filter(|c| c["add"]["rule"]["chain"] == "ac0123456789ab")
            .map(|c| c["add"]["rule"]["expr"].to_string())
            .collect();
        assert_eq!(rules.len(), 4, "{rules:#?}");
        assert!(rules[0].contains("established") && rules[0].contains("accept"));
        assert!(rules[1].contains("nd-neighbor-solicit"));
        assert!(rules[2].contains("\"127.0.0.1\"") && rules[2].contains("3128"));
        assert!(rules[3].contains("agentcell ac-1-ac0123456789ab host-drop "));
        assert!(rules[3].contains("\"drop\""));
        // The base chain is on the input hook and dispatches by the arriving link.
        let base = cmds
            .iter()
            .find(|c| c["add"]["chain"]["name"] == BASE)
            .unwrap();
        assert_eq!(base["add"]["chain"]["hook"], "input");
        assert_eq!(base["add"]["chain"]["policy"], "accept");
        let vmap = cmds
            .iter()
            .find_map(|c| c.pointer("/add/rule/expr/0/vmap"))
            .expect("the dispatch rule");
        assert_eq!(vmap["key"]["meta"]["key"], "iifname");
        assert_eq!(vmap["data"], "@links");
        // The element is added after the chain it jumps to is complete.
        let el = cmds
            .iter()
            .position(|c| c["add"].get("element").is_some())
            .unwrap();
        let last_rule = cmds
            .iter()
            .rposition(|c| c["add"].get("rule").is_some())
            .unwrap();
        assert!(el > last_rule);
        // The table is created (not added) by the transaction that adds the dispatch rule, and
        // nothing is flushed or deleted on the way.
        assert!(cmds[0].get("create").is_some(), "{}", cmds[0]);
        assert!(
            cmds.iter()
                .all(|c| c.get("flush").is_none() && c.get("delete").is_none())
        );
        // Joining a made table touches only the sandbox's own chain and element; replacing a
        // left chain flushes it before its rules.
        let join = register_cmds(&guard("ac0123456789ab"), false, false).to_string();
        assert!(!join.contains("vmap") && !join.contains("\"table\":{") && !join.contains("flush"));
        let again = register_cmds(&guard("ac0123456789ab"), false, true);
        let again = again["nftables"].as_array().unwrap();
        assert_eq!(
            again[1].pointer("/flush/chain/name"),
            Some(&json!("ac0123456789ab"))
        );
        assert!(again[2].pointer("/add/rule").is_some());
    }

    #[test]
    fn removal_touches_only_its_own_chain_and_element() {
        let v = unregister_cmds("acffffffffffff");
        let s = v.to_string();
        assert!(
            !s.contains("\"delete\":{\"table\""),
            "the shared table stays"
        );
        assert!(!s.contains("\"flush\":{\"table\""));
        for c in v["nftables"].as_array().unwrap() {
            for verb in ["delete", "flush"] {
                if let Some(obj) = c.get(verb) {
                    let name = obj
                        .pointer("/chain/name")
                        .or_else(|| obj.pointer("/element/elem/0/0"))
                        .and_then(Value::as_str);
                    assert_eq!(name, Some("acffffffffffff"), "{c}");
                }
            }
        }
    }

    /// A network namespace made for the test, removed on drop.
    struct Netns(String);
    impl Netns {
        fn new(tag: &str) -> Self {
            let name = format!("acguard-{tag}-{}", std::process::id());
            assert!(
                std::process::Command::new("ip")
                    .args(["netns", "add", &name])
                    .status()
                    .unwrap()
                    .success()
            );
            Self(name)
        }
        fn path(&self) -> std::path::PathBuf {
            Path::new("/run/netns").join(&self.0)
        }
    }
    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }

    fn listed(ns: &Netns) -> String {
        fence::nft_in(&ns.path(), &["list", "table", "inet", HOST_TABLE], None).unwrap()
    }

    #[test]
    fn the_kernel_accepts_it_and_sandboxes_come_and_go_without_touching_each_other() {
        // SAFETY: geteuid cannot fail.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "needs root (CI runs as root)"
        );
        // A scratch namespace stands in for the host's.
        let ns = Netns::new("reg");
        // Removing where nothing was ever registered is no error and makes nothing.
        unregister(&ns.path(), "acaaaaaaaaaaaa").unwrap();
        let tables = fence::nft_in(&ns.path(), &["list", "tables"], None).unwrap();
        assert!(!tables.contains(HOST_TABLE), "{tables}");
        let (a, b) = (guard("acaaaaaaaaaaaa"), guard("acbbbbbbbbbbbb"));
        // Concurrent registrations (threads: the in-process path serializes them, the command
        // path does not) both land.
        let p = ns.path();
        std::thread::scope(|s| {
            let ta = s.spawn(|| register(&p, &a));
            let tb = s.spawn(|| register(&p, &b));
            ta.join().unwrap().unwrap();
            tb.join().unwrap().unwrap();
        });
        let l = listed(&ns);
        assert!(
            l.contains("chain acaaaaaaaaaaaa") && l.contains("chain acbbbbbbbbbbbb"),
            "{l}"
        );
        assert!(
            l.contains("\"acaaaaaaaaaaaa\" : jump acaaaaaaaaaaaa"),
            "{l}"
        );
        // Registering again (a restarted sandbox of the same name) replaces, not duplicates,
        // and the dispatch rule stays single however registrations interleave.
        register(&ns.path(), &a).unwrap();
        let l = listed(&ns);
        assert_eq!(l.matches("host-drop").count(), 2, "{l}");
        assert_eq!(l.matches("iifname vmap @links").count(), 1, "{l}");
        // One goes; the other's chain and element stay; removing twice is no error.
        unregister(&ns.path(), &a.link).unwrap();
        unregister(&ns.path(), &a.link).unwrap();
        let l = listed(&ns);
        assert!(!l.contains("acaaaaaaaaaaaa"), "{l}");
        assert!(
            l.contains("chain acbbbbbbbbbbbb") && l.contains("\"acbbbbbbbbbbbb\" : jump"),
            "{l}"
        );
        unregister(&ns.path(), &b.link).unwrap();
        let l = listed(&ns);
        assert!(!l.contains("acbbbbbbbbbbbb"), "{l}");
        assert!(
            l.contains("iifname vmap @links"),
            "the shared base chain stays: {l}"
        );
    }
}
