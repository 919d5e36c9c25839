//! The VM's link: a tap in the sandbox's network namespace (qemu runs in that namespace and
//! attaches to it), a private /30 between the tap (`.1`) and the guest (`.2`), forwarding on in
//! that namespace only, and the plan's fence judging the forwarded traffic
//! ([`crate::network::forward`]). The guest gets IPv4 only: an IPv6 route would need its own
//! NAT66 and fence checks, and fail-closed means the guest never gets more than the policy.

use std::path::Path;
use std::process::Command;

use agentcell_policy::plan::NetworkPlan;
use agentcell_vmproto::GuestNetwork;

use crate::network::link::SandboxNet;
use crate::network::program::{self, Attachment};

/// The tap's name inside the sandbox namespace (each VM has its own namespace).
pub const TAP: &str = "actap0";
pub const GUEST_NET: &str = "169.254.77.0/30";
pub const TAP_IP: &str = "169.254.77.1";
pub const GUEST_IP: &str = "169.254.77.2";
pub const GUEST_MAC: &str = "52:54:00:ac:77:02";
pub const MTU: u32 = 1500;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{step}: {message}")]
    Step { step: String, message: String },
    #[error(
        "a proxy on the host's loopback is not reachable from the micro-VM tier; name the proxy by an address the host routes"
    )]
    LoopbackProxy,
    #[error("fence: {0}")]
    Program(#[from] program::ProgramError),
}

/// What the guest is told about its link.
pub fn guest_network() -> GuestNetwork {
    GuestNetwork {
        mac: GUEST_MAC.into(),
        ipv4: format!("{GUEST_IP}/30"),
        gateway4: TAP_IP.into(),
        ipv6: None,
        gateway6: None,
        nameservers: vec![],
        mtu: MTU,
    }
}

fn ip(args: &[&str]) -> Result<(), NetError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| NetError::Step {
            step: format!("ip {}", args.join(" ")),
            message: e.to_string(),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError::Step {
            step: format!("ip {}", args.join(" ")),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Writes `value` to a sysctl file inside the namespace at `netns` (on a short-lived thread:
/// /proc/sys/net follows the opening thread's network namespace).
fn sysctl_in(netns: &Path, file: &'static str, value: &'static str) -> Result<(), NetError> {
    let ns = std::fs::File::open(netns).map_err(|e| NetError::Step {
        step: format!("open {}", netns.display()),
        message: e.to_string(),
    })?;
    std::thread::spawn(move || -> std::io::Result<()> {
        use std::os::fd::AsRawFd as _;
        // SAFETY: changes only this thread's network namespace; the thread ends right after.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        std::fs::write(file, value)
    })
    .join()
    .map_err(|_| NetError::Step {
        step: format!("sysctl {file}"),
        message: "thread panicked".into(),
    })?
    .map_err(|e| NetError::Step {
        step: format!("sysctl {file}"),
        message: e.to_string(),
    })
}

/// Adds the tap to the sandbox namespace `net` (which has its uplink), turns forwarding on
/// there, and installs the plan's fence for forwarded traffic. The tap goes with the namespace.
pub fn attach(net: &mut SandboxNet, plan: &NetworkPlan, id: &str) -> Result<(), NetError> {
    if plan
        .proxy
        .as_ref()
        .is_some_and(|p| agentcell_policy::netspec::is_loopback_host(&p.host))
    {
        return Err(NetError::LoopbackProxy);
    }
    let ns = net.name.clone();
    ip(&["-n", &ns, "tuntap", "add", "dev", TAP, "mode", "tap"])?;
    ip(&[
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{TAP_IP}/30"),
        "dev",
        TAP,
    ])?;
    ip(&["-n", &ns, "link", "set", TAP, "mtu", &MTU.to_string(), "up"])?;
    let path = net.path();
    sysctl_in(&path, "/proc/sys/net/ipv4/ip_forward", "1")?;
    let guest: ipnet::Ipv4Net = GUEST_NET.parse().expect("a valid /30");
    program::program(&path, plan, id, Attachment::Vm(net, TAP, guest))?;
    Ok(())
}

/// Removes the tap (before the namespace goes; harmless when it is already gone).
pub fn detach(net: &SandboxNet) {
    let _ = ip(&["-n", &net.name, "link", "del", TAP]);
}

/// Taps of container VMs in a pod's namespace: `actap<N>`.
pub const POD_TAPS: &str = "actap*";
/// The guests of a pod's namespace: container `N` gets `169.254.77.(4N+2)/30`.
pub const POD_GUEST_NET: &str = "169.254.77.0/24";
/// Container VMs one pod can hold (one /30 each in [`POD_GUEST_NET`]).
pub const POD_MAX_VMS: u32 = 64;

/// The link of the `index`-th container VM of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLink {
    pub tap: String,
    pub guest: GuestNetwork,
}

/// Pure: the tap name and addresses of container VM `index` (< [`POD_MAX_VMS`]).
pub fn pod_link(index: u32) -> PodLink {
    let base = 4 * index;
    PodLink {
        tap: format!("actap{index}"),
        guest: GuestNetwork {
            mac: format!("52:54:00:ac:78:{:02x}", index),
            ipv4: format!("169.254.77.{}/30", base + 2),
            gateway4: format!("169.254.77.{}", base + 1),
            ipv6: None,
            gateway6: None,
            nameservers: vec![],
            mtu: MTU,
        },
    }
}

/// Runs `ip ARGS` inside the namespace at `netns` (a CNI namespace need not be named).
fn ip_in(netns: &Path, args: &[&str]) -> Result<(), NetError> {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::process::CommandExt as _;
    let step = format!("ip {} (in {})", args.join(" "), netns.display());
    let ns = std::fs::File::open(netns).map_err(|e| NetError::Step {
        step: step.clone(),
        message: e.to_string(),
    })?;
    let fd = ns.as_raw_fd();
    let mut cmd = Command::new("ip");
    cmd.args(args);
    // SAFETY: setns(2) is async-signal-safe; it changes only the child's network namespace.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().map_err(|e| NetError::Step {
        step: step.clone(),
        message: e.to_string(),
    })?;
    drop(ns);
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError::Step {
            step,
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Adds container VM `link`'s tap to the pod's namespace at `netns` (fenced for VMs when the
/// pod sandbox was created: [`crate::network::program::Attachment::PodVm`]) and turns
/// forwarding on there.
pub fn attach_pod(netns: &Path, link: &PodLink) -> Result<(), NetError> {
    let gw = format!("{}/30", link.guest.gateway4);
    ip_in(netns, &["tuntap", "add", "dev", &link.tap, "mode", "tap"])?;
    let done = ip_in(netns, &["addr", "add", &gw, "dev", &link.tap])
        .and_then(|_| {
            ip_in(
                netns,
                &["link", "set", &link.tap, "mtu", &MTU.to_string(), "up"],
            )
        })
        .and_then(|_| sysctl_in(netns, "/proc/sys/net/ipv4/ip_forward", "1"));
    if done.is_err() {
        detach_pod(netns, &link.tap);
    }
    done
}

/// Removes a container VM's tap from the pod's namespace (harmless when it is gone).
pub fn detach_pod(netns: &Path, tap: &str) {
    let _ = ip_in(netns, &["link", "del", tap]);
}

#[cfg(test)]
mod pod_tests {
    use super::*;

    #[test]
    fn pod_links_get_disjoint_30s_inside_the_fenced_range() {
        let net: ipnet::Ipv4Net = POD_GUEST_NET.parse().unwrap();
        let mut seen = std::collections::HashSet::new();
        for i in 0..POD_MAX_VMS {
            let l = pod_link(i);
            let g: ipnet::Ipv4Net = l.guest.ipv4.parse().unwrap();
            let gw: std::net::Ipv4Addr = l.guest.gateway4.parse().unwrap();
            assert!(net.contains(&g.addr()) && net.contains(&gw), "{l:?}");
            assert!(g.contains(&gw), "gateway on the guest's /30: {l:?}");
            assert!(seen.insert(g.network()), "two VMs share {g}");
            assert!(l.tap.starts_with(POD_TAPS.trim_end_matches('*')));
            assert!(l.tap.len() <= 15, "interface names are 15 bytes at most");
        }
        assert_ne!(pod_link(0).guest.mac, pod_link(1).guest.mac);
    }
}
