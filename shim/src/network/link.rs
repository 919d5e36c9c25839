//! The sandbox's network namespace and, when its plan lets traffic out, a veth link to the host
//! with masquerading. Named after the sandbox id (`ac-<runner pid>-<nonce>`) so a startup sweep
//! can remove what a dead runner left.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::rtnl::{self, Rtnl};

/// Sandbox links are numbered /30s of this block (RFC 2544 benchmarking space, never routed).
const LINK_BLOCK: [u8; 2] = [198, 19];
/// The host-wide tables that masquerade sandbox traffic leaving the host.
pub const NAT_TABLE: &str = "agentcell_nat";
pub const NAT6_TABLE: &str = "agentcell_nat6";

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
    /// Whether a host-side proxy forward (table `ip ac_<id>`) was installed.
    proxy_forward: bool,
    /// Whether the link's chain is registered in the host's guard table
    /// ([`super::hostguard`]); cleared by the first [`SandboxNet::destroy`].
    host_guard: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Clone)]
pub struct Uplink {
    pub host_if: String,
    pub host_ip: Ipv4Addr,
    pub sandbox_ip: Ipv4Addr,
    /// The IPv6 pair (a /64 of fdac::/16), when the host has IPv6.
    pub v6: Option<(Ipv6Addr, Ipv6Addr)>,
}

impl SandboxNet {
    pub fn path(&self) -> PathBuf {
        netns_path(&self.name)
    }

    /// Creates the namespace `id`; with `uplink`, a veth pair to the host, addresses (IPv4, and
    /// IPv6 when the host has it), default routes and masquerading of its traffic.
    pub fn create(id: &str, uplink: bool) -> Result<Self, LinkError> {
        Self::start(id, uplink, true, |_| Ok::<(), LinkError>(()))?.finish()
    }

    /// [`Self::create`], then `then` (the fence), on a thread of its own while the caller goes
    /// on (the runner prepares the view and the spec meanwhile). Link and fence are in place
    /// once [`PendingNet::finish`] returns; dropping the [`PendingNet`] unfinished destroys what
    /// was made.
    ///
    /// Finish before forking with raw `clone` (libcontainer's build): such a child inherits
    /// whatever lock this thread holds at that instant (the allocator's, say) and hangs at its
    /// next `fork` or log line.
    pub fn start<E, F>(
        id: &str,
        uplink: bool,
        link_first: bool,
        then: F,
    ) -> Result<PendingNet<E>, LinkError>
    where
        E: From<LinkError> + Send + 'static,
        F: FnOnce(&mut SandboxNet) -> Result<(), E> + Send + 'static,
    {
        let err = |m: String| LinkError::Command {
            cmd: format!("creating network namespace {id}"),
            message: m,
        };
        std::fs::create_dir_all("/run/netns").map_err(|e| err(e.to_string()))?;
        let path = netns_path(id);
        std::fs::File::create(&path).map_err(|e| err(e.to_string()))?;
        let target = std::ffi::CString::new(path.to_string_lossy().as_bytes())
            .map_err(|e| err(e.to_string()))?;
        let name = id.to_string();
        let thread = std::thread::spawn(move || -> Result<SandboxNet, E> {
            // libnftables (for the fence) loads while the namespace is made; joined before this
            // thread ends, as everything it starts (see above: the caller forks after).
            let preload = uplink.then(|| std::thread::spawn(super::fence::preload));
            let made = made_and_connected(&name, &target, uplink, link_first, then);
            if let Some(p) = preload {
                let _ = p.join();
            }
            made
        });
        Ok(PendingNet {
            name: id.to_string(),
            thread: Some(thread),
        })
    }
}

/// The body of [`SandboxNet::start`]'s thread.
fn made_and_connected<E, F>(
    name: &str,
    target: &std::ffi::CStr,
    uplink: bool,
    link_first: bool,
    then: F,
) -> Result<SandboxNet, E>
where
    E: From<LinkError>,
    F: FnOnce(&mut SandboxNet) -> Result<(), E>,
{
    if let Err(e) = make_netns(target) {
        let _ = delete_netns(name);
        return Err(LinkError::Command {
            cmd: format!("creating network namespace {name}"),
            message: e.to_string(),
        }
        .into());
    }
    // From here on, an error drops `net`, which destroys the namespace and link.
    let mut net = SandboxNet {
        name: name.to_string(),
        uplink: None,
        proxy_forward: false,
        host_guard: std::sync::atomic::AtomicBool::new(false),
    };
    if !uplink {
        then(&mut net)?;
        return Ok(net);
    }
    let up = net.reserve_uplink()?;
    if link_first {
        connect(&up, &net.path())?;
        return then(&mut net).map(|()| net);
    }
    // The link (host side) and the fence (inside) are independent: made at once.
    let path = net.path();
    let (linked, fenced) = std::thread::scope(|s| {
        let link = s.spawn(|| connect(&up, &path));
        let fenced = then(&mut net);
        (link.join(), fenced)
    });
    linked.unwrap_or_else(|_| {
        Err(LinkError::Command {
            cmd: "connecting the sandbox".into(),
            message: "the link thread panicked".into(),
        })
    })?;
    fenced?;
    Ok(net)
}

/// A sandbox network namespace being made, connected and fenced (see [`SandboxNet::start`]).
pub struct PendingNet<E: From<LinkError>> {
    name: String,
    thread: Option<std::thread::JoinHandle<Result<SandboxNet, E>>>,
}

impl<E: From<LinkError>> PendingNet<E> {
    /// Waits until the namespace is connected and `then` has run; its result.
    pub fn finish(mut self) -> Result<SandboxNet, E> {
        self.join()
    }

    fn join(&mut self) -> Result<SandboxNet, E> {
        let Some(thread) = self.thread.take() else {
            return Err(LinkError::Command {
                cmd: format!("creating network namespace {}", self.name),
                message: "already finished".into(),
            }
            .into());
        };
        thread.join().unwrap_or_else(|_| {
            let _ = delete_netns(&self.name);
            Err(LinkError::Command {
                cmd: format!("creating network namespace {}", self.name),
                message: "the network thread panicked".into(),
            }
            .into())
        })
    }
}

impl<E: From<LinkError>> Drop for PendingNet<E> {
    fn drop(&mut self) {
        // Never finished (the run failed first): wait for the thread; what it made goes with
        // the `SandboxNet` it returns, or went when it failed.
        if self.thread.is_some() {
            drop(self.join());
        }
    }
}

impl SandboxNet {
    /// Picks the sandbox's link name and addresses (a free /30 of 198.19.128.0/17, and a /64
    /// of fdac::/16 when the host has IPv6); [`connect`] makes them.
    fn reserve_uplink(&mut self) -> Result<Uplink, LinkError> {
        let (n, host_ip, sandbox_ip) = free_subnet()?;
        let v6 = Path::new("/proc/net/if_inet6").exists().then(|| {
            let n = n as u16;
            (
                Ipv6Addr::new(0xfdac, 0, n, 0, 0, 0, 0, 1),
                Ipv6Addr::new(0xfdac, 0, n, 0, 0, 0, 0, 2),
            )
        });
        let up = Uplink {
            host_if: host_ifname(&self.name),
            host_ip,
            sandbox_ip,
            v6,
        };
        self.uplink = Some(up.clone());
        Ok(up)
    }
}

/// Makes the uplink `up` of the namespace at `netns`: the veth pair, its addresses and default
/// routes, host forwarding and masquerading.
fn connect(up: &Uplink, netns: &Path) -> Result<(), LinkError> {
    // Over rtnetlink in process: two sockets, the host's and one opened inside the sandbox's
    // namespace (spawning `ip` cost about 3 ms a process).
    let rt_err = |e: rtnl::RtnlError| LinkError::Command {
        cmd: "rtnetlink".into(),
        message: e.to_string(),
    };
    let ns_file = std::fs::File::open(netns).map_err(|e| LinkError::Command {
        cmd: format!("open {}", netns.display()),
        message: e.to_string(),
    })?;
    let mut host = Rtnl::open().map_err(rt_err)?;
    host.add_veth(
        &up.host_if,
        "eth0",
        std::os::fd::AsRawFd::as_raw_fd(&ns_file),
    )
    .map_err(rt_err)?;
    let host_index = host.link_index(&up.host_if).map_err(rt_err)?;
    host.add_addr(host_index, IpAddr::V4(up.host_ip), 30, false)
        .map_err(rt_err)?;
    if let Some((h6, _)) = up.v6 {
        host.add_addr(host_index, IpAddr::V6(h6), 64, true)
            .map_err(rt_err)?;
    }
    host.set_up(host_index).map_err(rt_err)?;
    let mut inside = Rtnl::open_in(netns).map_err(rt_err)?;
    let index = inside.link_index("eth0").map_err(rt_err)?;
    inside
        .add_addr(index, IpAddr::V4(up.sandbox_ip), 30, false)
        .map_err(rt_err)?;
    if let Some((_, s6)) = up.v6 {
        inside
            .add_addr(index, IpAddr::V6(s6), 64, true)
            .map_err(rt_err)?;
    }
    inside.set_up(index).map_err(rt_err)?;
    inside
        .add_default_route(IpAddr::V4(up.host_ip))
        .map_err(rt_err)?;
    if let Some((h6, _)) = up.v6 {
        inside.add_default_route(IpAddr::V6(h6)).map_err(rt_err)?;
    }
    enable_forwarding_and_nat(up.v6.is_some())
}

impl SandboxNet {
    /// Forwards `port` on the host's side of the link to the host's loopback (for a proxy that
    /// listens on 127.0.0.1): a per-sandbox host table `ip ac_<id>` DNATs it, `route_localnet`
    /// lets the host and the sandbox route loopback addresses over the link.
    pub fn forward_to_host_loopback(&mut self, port: u16) -> Result<(), LinkError> {
        self.proxy_forward = true;
        let up = self.uplink.as_ref().ok_or(LinkError::Command {
            cmd: "proxy forward".into(),
            message: "no uplink".into(),
        })?;
        sysctl_on(&format!(
            "/proc/sys/net/ipv4/conf/{}/route_localnet",
            up.host_if
        ))?;
        in_netns(
            &self.path(),
            &[
                "/proc/sys/net/ipv4/conf/all/route_localnet",
                "/proc/sys/net/ipv4/conf/eth0/route_localnet",
            ],
        )?;
        let table = host_table(&self.name);
        let rules = serde_json::json!({"nftables": [
            {"add": {"table": {"family": "ip", "name": table}}},
            {"add": {"chain": {"family": "ip", "table": table, "name": "prerouting", "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}}},
            {"add": {"rule": {"family": "ip", "table": table, "chain": "prerouting", "expr": [
                {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": up.host_if}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": up.host_ip.to_string()}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": port}},
                {"dnat": {"addr": "127.0.0.1", "port": port}}
            ]}}}
        ]});
        super::fence::nft_in(
            Path::new("/proc/self/ns/net"),
            &["-j", "-f", "-"],
            Some(&rules.to_string()),
        )
        .map(|_| ())
        .map_err(|e| LinkError::Command {
            cmd: "nft (proxy forward)".into(),
            message: e.to_string(),
        })
    }

    /// Closes the host to what arrives from this sandbox's link but `guard` lets in (before the
    /// workload starts: a failure fails the start); undone by [`Self::destroy`].
    pub fn guard_host(&self, guard: &super::hostguard::Guard) -> Result<(), LinkError> {
        self.host_guard
            .store(true, std::sync::atomic::Ordering::SeqCst);
        super::hostguard::apply(guard).map_err(|e| LinkError::Command {
            cmd: format!("nft (host guard of {})", guard.link),
            message: e.to_string(),
        })
    }

    /// Deleting the namespace deletes its end of the veth, and so the pair.
    pub fn destroy(&self) {
        // Removing the host guard's chain costs the kernel a grace period (about 10 ms here), as
        // deleting the link does: the two overlap.
        let guard = self
            .host_guard
            .swap(false, std::sync::atomic::Ordering::SeqCst)
            .then(|| self.uplink.as_ref().map(|up| up.host_if.clone()))
            .flatten()
            .map(|link| {
                std::thread::spawn(move || {
                    if let Err(e) = super::hostguard::remove(&link) {
                        tracing::warn!(error = %e, %link, "removing the sandbox's host guard");
                    }
                })
            });
        self.destroy_rest();
        if let Some(t) = guard {
            let _ = t.join();
        }
    }

    fn destroy_rest(&self) {
        if self.proxy_forward {
            let _ = run("nft", &["delete", "table", "ip", &host_table(&self.name)]);
        }
        // The namespace is freed asynchronously by the kernel, and its veth end with it; delete
        // the pair now so nothing of the sandbox outlives the run.
        if let Some(up) = &self.uplink
            && let Err(e) = Rtnl::open().and_then(|mut r| r.del_link(&up.host_if))
        {
            tracing::warn!(error = %e, link = %up.host_if, "removing the sandbox link");
        }
        if let Err(e) = delete_netns(&self.name) {
            tracing::warn!(error = %e, netns = %self.name, "removing the sandbox network namespace");
        }
    }
}

impl Drop for SandboxNet {
    fn drop(&mut self) {
        self.destroy();
    }
}

/// Where the network namespace `name` is (or will be) bound, as `ip netns` does.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// Makes the calling thread's own network namespace, with its loopback up, binds it at `target`
/// (as `ip netns add` does), and returns the thread to the namespace it was in: unsharing moves
/// only the calling thread, so this runs on a thread of the sandbox's own.
fn make_netns(target: &std::ffi::CStr) -> std::io::Result<()> {
    let host = std::fs::File::open("/proc/thread-self/ns/net")?;
    // SAFETY: these calls act on this thread only (its network namespace), on a socket it owns,
    // and on the target path.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNET) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        let ok = libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req) == 0 && {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(sock, libc::SIOCSIFFLAGS, &req) == 0
        };
        let e = std::io::Error::last_os_error();
        libc::close(sock);
        if !ok {
            return Err(e);
        }
        // Unprivileged ICMP echo sockets (ping) for the workload, as most distributions
        // allow on the host; what they may reach is still the fence's `icmp` rules.
        let range = c"/proc/sys/net/ipv4/ping_group_range";
        let f = libc::open(range.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if f >= 0 {
            let v = b"0 2147483647";
            libc::write(f, v.as_ptr().cast(), v.len());
            libc::close(f);
        }
        let src = c"/proc/thread-self/ns/net";
        if libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        if libc::setns(std::os::fd::AsRawFd::as_raw_fd(&host), libc::CLONE_NEWNET) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Unmounts and removes /run/netns/NAME; the namespace (and its veth end) goes with its last user.
fn delete_netns(name: &str) -> std::io::Result<()> {
    let path = Path::new("/run/netns").join(name);
    let c =
        std::ffi::CString::new(path.to_string_lossy().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: a NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) && e.raw_os_error() != Some(libc::ENOENT) {
            return Err(e);
        }
    }
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The host table of a sandbox's own host-side rules (nft names take no `-`).
fn host_table(id: &str) -> String {
    id.replace('-', "_")
}

/// Writes 1 to each sysctl file inside the network namespace at `netns`.
fn in_netns(netns: &Path, files: &[&str]) -> Result<(), LinkError> {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::process::CommandExt as _;
    let ns = std::fs::File::open(netns).map_err(|e| LinkError::Command {
        cmd: format!("open {}", netns.display()),
        message: e.to_string(),
    })?;
    let fd = ns.as_raw_fd();
    let paths: Vec<std::ffi::CString> = files
        .iter()
        .map(|f| std::ffi::CString::new(*f).expect("no NUL"))
        .collect();
    let mut cmd = Command::new("true");
    // SAFETY: setns, open, write and close are async-signal-safe; the buffers were made before
    // the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            for p in &paths {
                let f = libc::open(p.as_ptr(), libc::O_WRONLY);
                if f < 0 || libc::write(f, b"1".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(f);
            }
            Ok(())
        });
    }
    let status = cmd.status().map_err(|e| LinkError::Command {
        cmd: "sysctl in the sandbox namespace".into(),
        message: e.to_string(),
    })?;
    drop(ns);
    if status.success() {
        Ok(())
    } else {
        Err(LinkError::Command {
            cmd: "sysctl in the sandbox namespace".into(),
            message: status.to_string(),
        })
    }
}

/// Removes the namespace `name` and its link, made by a process that is gone (the shim's
/// `delete` after the shim died). Missing parts are not an error.
pub fn remove(name: &str) {
    let _ = run("nft", &["delete", "table", "ip", &host_table(name)]);
    let _ = super::hostguard::remove(&host_ifname(name));
    let _ = Rtnl::open().and_then(|mut r| r.del_link(&host_ifname(name)));
    let _ = delete_netns(name);
}

/// `ac` + 12 hex digits of a hash of the id: unique enough, and under IFNAMSIZ.
fn host_ifname(id: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    format!("ac{:012x}", h & 0xffff_ffff_ffff)
}

/// A /30 of 198.19.128.0/17 no host interface uses yet, and its index (which numbers the /64).
fn free_subnet() -> Result<(usize, Ipv4Addr, Ipv4Addr), LinkError> {
    let used = local_addresses()?;
    let start = (std::process::id() as usize * 7919 + used.len() * 31) % 8192;
    for k in 0..8192 {
        let n = (start + k) % 8192;
        let (c, d) = (128 + (n / 64) as u8, ((n % 64) * 4) as u8);
        let host = Ipv4Addr::new(LINK_BLOCK[0], LINK_BLOCK[1], c, d + 1);
        if !used.contains(&IpAddr::V4(host)) {
            return Ok((
                n,
                host,
                Ipv4Addr::new(LINK_BLOCK[0], LINK_BLOCK[1], c, d + 2),
            ));
        }
    }
    Err(LinkError::Exhausted)
}

fn sysctl_on(path: &str) -> Result<(), LinkError> {
    std::fs::write(path, "1").map_err(|e| LinkError::Command {
        cmd: format!("echo 1 > {path}"),
        message: e.to_string(),
    })
}

/// One host-wide table per family masquerading sandbox traffic that leaves through any interface
/// but a sandbox link.
fn nat_table(family: &str, table: &str, addr: &str, len: u8) -> Vec<serde_json::Value> {
    use serde_json::json;
    vec![
        json!({"add": {"table": {"family": family, "name": table}}}),
        json!({"flush": {"table": {"family": family, "name": table}}}),
        json!({"add": {"chain": {"family": family, "table": table, "name": "postrouting",
            "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}}),
        json!({"add": {"rule": {"family": family, "table": table, "chain": "postrouting", "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": family, "field": "saddr"}},
                "right": {"prefix": {"addr": addr, "len": len}}}},
            {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "ac*"}},
            {"masquerade": null}
        ]}}}),
    ]
}

fn enable_forwarding_and_nat(v6: bool) -> Result<(), LinkError> {
    sysctl_on("/proc/sys/net/ipv4/ip_forward")?;
    let mut cmds = nat_table("ip", NAT_TABLE, "198.19.128.0", 17);
    if v6 {
        // IPv6 forwarding is host-wide, and makes interfaces with accept_ra=1 ignore router
        // advertisements (README: host side effects).
        sysctl_on("/proc/sys/net/ipv6/conf/all/forwarding")?;
        cmds.extend(nat_table("ip6", NAT6_TABLE, "fdac::", 16));
    }
    // The NAT tables are the same for every sandbox: install them once per boot (/run is a
    // tmpfs). If someone deletes them, sandbox traffic is no longer masqueraded and simply gets
    // no replies: connectivity breaks, confinement does not.
    let marker = Path::new("/run/agentcell").join(if v6 {
        "nat-installed-46"
    } else {
        "nat-installed-4"
    });
    if marker.exists() {
        return Ok(());
    }
    let ruleset = serde_json::json!({ "nftables": cmds });
    super::fence::nft_in(
        Path::new("/proc/self/ns/net"),
        &["-j", "-f", "-"],
        Some(&ruleset.to_string()),
    )
    .map_err(|e| LinkError::Command {
        cmd: "nft (host masquerade)".into(),
        message: e.to_string(),
    })?;
    let _ = std::fs::create_dir_all("/run/agentcell").and_then(|_| std::fs::write(&marker, ""));
    Ok(())
}

/// Every address the host owns (IPv4 and IPv6), as the sandbox could reach them. An error when
/// they cannot be listed: the fence closes the host by these addresses, so guessing is not an
/// option.
pub fn host_addresses() -> Result<Vec<IpAddr>, LinkError> {
    let addrs = local_addresses()?;
    if addrs.is_empty() {
        return Err(LinkError::Command {
            cmd: "listing the host's addresses".into(),
            message: "the host has no addresses to close".into(),
        });
    }
    Ok(addrs)
}

/// Every address of the calling thread's network namespace, over rtnetlink.
fn local_addresses() -> Result<Vec<IpAddr>, LinkError> {
    Rtnl::open()
        .and_then(|mut r| r.addresses())
        .map_err(|e| LinkError::Command {
            cmd: "listing the host's addresses".into(),
            message: e.to_string(),
        })
}

/// Network namespaces of runners that died.
pub fn sweep(runner_alive: impl Fn(&str) -> bool) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    rd.flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ac-") && !runner_alive(n))
        .filter(|n| {
            let _ = run("nft", &["delete", "table", "ip", &host_table(n)]);
            let _ = super::hostguard::remove(&host_ifname(n));
            delete_netns(n).is_ok()
        })
        .collect()
}
