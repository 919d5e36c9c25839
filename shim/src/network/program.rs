//! Programs a sandbox's network namespace with the fence of its plan: the addresses only the
//! runner knows (the host's, the proxy's, names resolved at start) joined with the plan, then one
//! nft transaction inside the namespace. Used for the CLI's own namespaces (with their uplink)
//! and for pod namespaces that CNI made (given by path).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, ToSocketAddrs};
use std::path::Path;

use agentcell_policy::plan::net::{NetworkPlan, ProxyFence, Verdict};

use super::link::{self, SandboxNet};
use super::{fence, hostguard, nft};

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
                // The link's /30: its broadcast is `.3`.
                rt.link_broadcasts
                    .push(Ipv4Addr::from(u32::from(up.sandbox_ip) | 3));
                if let Some((h6, _)) = up.v6 {
                    rt.on_link_v6
                        .push(ipnet::Ipv6Net::new(h6, 64).expect("a /64").trunc());
                }
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
                if plan.host_loopback == Verdict::Drop {
                    // The host closed by where traffic goes, whatever addresses it has or gains.
                    let sanctioned = match (&plan.proxy, rt.proxy) {
                        // After the forward's DNAT, a loopback proxy's connections arrive for
                        // the host's loopback.
                        (Some(p), Some((_, port)))
                            if agentcell_policy::netspec::is_loopback_host(&p.host) =>
                        {
                            vec![(IpAddr::V4(Ipv4Addr::LOCALHOST), port)]
                        }
                        (Some(_), Some(endpoint)) => vec![endpoint],
                        _ => Vec::new(),
                    };
                    net.guard_host(&hostguard::Guard {
                        link: up.host_if.clone(),
                        id: id.to_string(),
                        sanctioned,
                    })?;
                }
            }
        }
        Attachment::Existing => {
            // A pod's links are CNI's: their broadcast and on-link prefixes are read from the
            // namespace (the host's side is CNI's too, so no host guard: see the README).
            let (broadcasts, on_link) = link_scope(netns)?;
            rt.link_broadcasts = broadcasts;
            rt.on_link_v6 = on_link;
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

/// The subnet broadcasts and on-link IPv6 prefixes of the addresses in the namespace at `netns`.
fn link_scope(netns: &Path) -> Result<(Vec<Ipv4Addr>, Vec<ipnet::Ipv6Net>), ProgramError> {
    let prefixes = super::rtnl::Rtnl::open_in(netns)
        .and_then(|mut r| r.prefixes())
        .map_err(|e| link::LinkError::Command {
            cmd: format!("listing the addresses of {}", netns.display()),
            message: e.to_string(),
        })?;
    Ok(scope_of(&prefixes))
}

/// Pure: [`link_scope`] of the listed addresses (loopback left out; /31 and /32 have no
/// broadcast, a /128 no neighbours).
fn scope_of(prefixes: &[(IpAddr, u8)]) -> (Vec<Ipv4Addr>, Vec<ipnet::Ipv6Net>) {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for (ip, len) in prefixes {
        match ip {
            IpAddr::V4(a) if !a.is_loopback() && *len <= 30 => {
                v4.push(Ipv4Addr::from(u32::from(*a) | (u32::MAX >> len)));
            }
            IpAddr::V6(a) if !a.is_loopback() && *len < 128 => {
                if let Ok(n) = ipnet::Ipv6Net::new(*a, *len) {
                    v6.push(n.trunc());
                }
            }
            _ => {}
        }
    }
    (v4, v6)
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_pods_links_give_their_broadcasts_and_on_link_prefixes() {
        let (v4, v6) = super::scope_of(&[
            ("127.0.0.1".parse().unwrap(), 8),
            ("10.244.1.7".parse().unwrap(), 24),
            ("10.0.0.5".parse().unwrap(), 32),
            ("::1".parse().unwrap(), 128),
            ("fd00:10:244:1::7".parse().unwrap(), 64),
            ("fd00:10:244:2::7".parse().unwrap(), 128),
        ]);
        assert_eq!(
            v4,
            vec!["10.244.1.255".parse::<std::net::Ipv4Addr>().unwrap()]
        );
        assert_eq!(
            v6,
            vec!["fd00:10:244:1::/64".parse::<ipnet::Ipv6Net>().unwrap()]
        );
    }
}
