//! The sandbox's network namespace and, when its plan lets traffic out, a veth link to the host
//! with masquerading. Named after the sandbox id (`ac-<runner pid>-<nonce>`) so a startup sweep
//! can remove what a dead runner left.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Sandbox links are numbered /30s of this block (RFC 2544 benchmarking space, never routed).
const LINK_BLOCK: [u8; 2] = [198, 19];
/// The host-wide table that masquerades sandbox traffic leaving the host.
pub const NAT_TABLE: &str = "agentcell_nat";

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{cmd}: {message}")]
    Command { cmd: String, message: String },
    #[error("no free link subnet")]
    Exhausted,
}

fn run(program: &str, args: &[&str]) -> Result<String, LinkError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| LinkError::Command {
            cmd: format!("{program} {}", args.join(" ")),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(LinkError::Command {
            cmd: format!("{program} {}", args.join(" ")),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A sandbox's network namespace (and link).
#[derive(Debug)]
pub struct SandboxNet {
    pub name: String,
    /// The host side of the link and both addresses, when the sandbox has an uplink.
    pub uplink: Option<Uplink>,
}

#[derive(Debug, Clone)]
pub struct Uplink {
    pub host_if: String,
    pub host_ip: Ipv4Addr,
    pub sandbox_ip: Ipv4Addr,
}

impl SandboxNet {
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Creates the namespace `id`; with `uplink`, a veth pair to the host, addresses, a default
    /// route and masquerading of its traffic.
    pub fn create(id: &str, uplink: bool) -> Result<Self, LinkError> {
        run("ip", &["netns", "add", id])?;
        let mut net = Self {
            name: id.to_string(),
            uplink: None,
        };
        let ns = id;
        if let Err(e) = (|| -> Result<(), LinkError> {
            run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
            if !uplink {
                return Ok(());
            }
            let host_if = host_ifname(id);
            let (host_ip, sandbox_ip) = free_subnet()?;
            run(
                "ip",
                &[
                    "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", ns,
                ],
            )?;
            net.uplink = Some(Uplink {
                host_if: host_if.clone(),
                host_ip,
                sandbox_ip,
            });
            run(
                "ip",
                &["addr", "add", &format!("{host_ip}/30"), "dev", &host_if],
            )?;
            run("ip", &["link", "set", &host_if, "up"])?;
            run(
                "ip",
                &[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{sandbox_ip}/30"),
                    "dev",
                    "eth0",
                ],
            )?;
            run("ip", &["-n", ns, "link", "set", "eth0", "up"])?;
            run(
                "ip",
                &[
                    "-n",
                    ns,
                    "route",
                    "add",
                    "default",
                    "via",
                    &host_ip.to_string(),
                ],
            )?;
            enable_forwarding_and_nat()?;
            Ok(())
        })() {
            net.destroy();
            return Err(e);
        }
        Ok(net)
    }

    /// Deleting the namespace deletes its end of the veth, and so the pair.
    pub fn destroy(&self) {
        if let Err(e) = run("ip", &["netns", "del", &self.name]) {
            tracing::warn!(error = %e, netns = %self.name, "removing the sandbox network namespace");
        }
    }
}

impl Drop for SandboxNet {
    fn drop(&mut self) {
        self.destroy();
    }
}

/// `ac` + 12 hex digits of a hash of the id: unique enough, and under IFNAMSIZ.
fn host_ifname(id: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    format!("ac{:012x}", h & 0xffff_ffff_ffff)
}

/// A /30 of 198.19.128.0/17 no host interface uses yet.
fn free_subnet() -> Result<(Ipv4Addr, Ipv4Addr), LinkError> {
    let used = run("ip", &["-4", "-o", "addr", "show"])?;
    let start = (std::process::id() as usize * 7919 + used.len()) % 8192;
    for k in 0..8192 {
        let n = (start + k) % 8192;
        let (c, d) = (128 + (n / 64) as u8, ((n % 64) * 4) as u8);
        let host = Ipv4Addr::new(LINK_BLOCK[0], LINK_BLOCK[1], c, d + 1);
        if !used.contains(&format!(" {host}/")) {
            return Ok((host, Ipv4Addr::new(LINK_BLOCK[0], LINK_BLOCK[1], c, d + 2)));
        }
    }
    Err(LinkError::Exhausted)
}

fn enable_forwarding_and_nat() -> Result<(), LinkError> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|e| LinkError::Command {
        cmd: "sysctl net.ipv4.ip_forward=1".into(),
        message: e.to_string(),
    })?;
    let ruleset = serde_json::json!({"nftables": [
        {"add": {"table": {"family": "ip", "name": NAT_TABLE}}},
        {"flush": {"table": {"family": "ip", "name": NAT_TABLE}}},
        {"add": {"chain": {"family": "ip", "table": NAT_TABLE, "name": "postrouting", "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}},
        {"add": {"rule": {"family": "ip", "table": NAT_TABLE, "chain": "postrouting", "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "198.19.128.0", "len": 17}}}},
            {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "ac*"}},
            {"masquerade": null}
        ]}}}
    ]});
    super::fence::nft_in(
        Path::new("/proc/self/ns/net"),
        &["-j", "-f", "-"],
        Some(&ruleset.to_string()),
    )
    .map(|_| ())
    .map_err(|e| LinkError::Command {
        cmd: "nft (host masquerade)".into(),
        message: e.to_string(),
    })
}

/// Every address the host owns (IPv4 and IPv6), as the sandbox could reach them.
pub fn host_addresses() -> Vec<IpAddr> {
    let Ok(out) = run("ip", &["-j", "addr", "show"]) else {
        return Vec::new();
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&out) else {
        return Vec::new();
    };
    v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|i| i["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["local"].as_str().and_then(|s| s.parse().ok()))
        .collect()
}

/// Network namespaces of runners that died.
pub fn sweep(runner_alive: impl Fn(&str) -> bool) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    rd.flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ac-") && !runner_alive(n))
        .filter(|n| run("ip", &["netns", "del", n]).is_ok())
        .collect()
}
