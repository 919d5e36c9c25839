//! Programs a sandbox's network namespace with the fence of its plan: the addresses only the
//! runner knows (the host's, the proxy's, names resolved at start) joined with the plan, then one
//! nft transaction inside the namespace. Used for the CLI's own namespaces (with their uplink)
//! and for pod namespaces that CNI made (given by path).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, ToSocketAddrs};
use std::path::Path;

use agentcell_policy::plan::net::{NetworkPlan, ProxyFence};

use super::link::{self, SandboxNet};
use super::{fence, nft};

#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    #[error("{0}")]
    Link(#[from] link::LinkError),
    #[error("{0}")]
    Fence(#[from] fence::FenceError),
    #[error("could not resolve the proxy host {0}")]
    ProxyHost(String),
    #[error(
        "blocked host(s) {0} resolved to no address while traffic could pass: the block would block nothing"
    )]
    Unresolved(String),
}

/// Where the namespace is connected.
pub enum Attachment<'a> {
    /// The runner's own namespace and veth uplink (the CLI).
    Uplink(&'a mut SandboxNet),
    /// A namespace someone else connected (a pod's, made by CNI).
    Existing,
    /// The runner's namespace and uplink with a micro-VM behind the tap `.1` on the guest /30
    /// `.2`: the fence judges forwarded traffic ([`super::forward`]).
    Vm(&'a mut SandboxNet, &'a str, ipnet::Ipv4Net),
    /// A pod's namespace (made by CNI) whose containers run in micro-VMs behind taps matching
    /// the pattern (`actap*`), guests in the given network: as `Vm`, for every tap.
    PodVm(&'a str, ipnet::Ipv4Net),
}

/// Installs the fence of `plan` in the namespace at `netns`; `id` names the drops in the log.
pub fn program(
    netns: &Path,
    plan: &NetworkPlan,
    id: &str,
    attachment: Attachment,
) -> Result<(), ProgramError> {
    let mut rt = nft::Runtime {
        host_addresses: link::host_addresses()?,
        id: id.to_string(),
        ..Default::default()
    };
    // The runner's own namespaces were made just now, empty; a pod's may hold an earlier fence.
    let fresh = matches!(attachment, Attachment::Uplink(_) | Attachment::Vm(..));
    let (attachment, vm) = match attachment {
        Attachment::Vm(net, tap, guest) => (Attachment::Uplink(net), Some((tap, guest))),
        Attachment::PodVm(taps, guests) => (Attachment::Existing, Some((taps, guests))),
        a => (a, None),
    };
    match attachment {
        Attachment::Vm(..) | Attachment::PodVm(..) => unreachable!("mapped above"),
        Attachment::Uplink(net) => {
            if let Some(up) = net.uplink.clone() {
                rt.host_addresses.push(IpAddr::V4(up.host_ip));
                match up.v6 {
                    Some((h6, _)) => rt.host_addresses.push(IpAddr::V6(h6)),
                    None => tracing::warn!(
                        "this host has no IPv6: IPv6 destinations the policy allows are unreachable"
                    ),
                }
                if let Some(p) = &plan.proxy {
                    rt.proxy = Some(if agentcell_policy::netspec::is_loopback_host(&p.host) {
                        // The proxy listens on the host's loopback: reach it through the host's
                        // side of the link, forwarded there.
                        net.forward_to_host_loopback(p.port)?;
                        (IpAddr::V4(up.host_ip), p.port)
                    } else {
                        proxy_address(p)?
                    });
                }
            }
        }
        Attachment::Existing => {
            if let Some(p) = &plan.proxy {
                // In a pod, loopback is the pod's own: a proxy there is a sidecar.
                rt.proxy = Some(if agentcell_policy::netspec::is_loopback_host(&p.host) {
                    let ip = if p.host.contains(':') {
                        IpAddr::V6(Ipv6Addr::LOCALHOST)
                    } else {
                        IpAddr::V4(Ipv4Addr::LOCALHOST)
                    };
                    (ip, p.port)
                } else {
                    proxy_address(p)?
                });
            }
        }
    }
    for name in &plan.resolve_at_start {
        let addrs: Vec<IpAddr> = (name.as_str(), 0)
            .to_socket_addrs()
            .map(|it| it.map(|sa| sa.ip()).collect())
            .unwrap_or_default();
        tracing::info!(%name, ?addrs, "resolved once at start and pinned");
        rt.resolved.insert(name.clone(), addrs);
    }
    let unresolved = nft::unresolved_blocks(plan, &rt);
    if !unresolved.is_empty() {
        return Err(ProgramError::Unresolved(unresolved.join(", ")));
    }
    let rules = nft::ruleset(plan, &rt);
    let rules = match vm {
        Some((tap, guest)) => super::forward::vm_ruleset(rules, tap, guest),
        None => rules,
    };
    if fresh {
        fence::install_fresh(netns, &rules)?;
    } else {
        fence::install(netns, &rules)?;
    }
    Ok(())
}

/// A proxy given by address is used as it is; a name is resolved once, now, and pinned.
fn proxy_address(p: &ProxyFence) -> Result<(IpAddr, u16), ProgramError> {
    let host = p.host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse() {
        return Ok((ip, p.port));
    }
    let ip = (host, p.port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut it| it.next())
        .map(|sa| sa.ip())
        .ok_or_else(|| ProgramError::ProxyHost(host.to_string()))?;
    tracing::info!(%host, %ip, "proxy host resolved once at start and pinned");
    Ok((ip, p.port))
}
