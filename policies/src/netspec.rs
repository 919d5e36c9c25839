//! The network section resolved into one meaning: MXC's legacy fields or its 0.8 directional
//! fields (never both), with addresses parsed. Pure; no name resolution happens here.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use crate::model::{Action, DefaultPolicy, EnforcementMode, Protocol};

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "format", rename_all = "lowercase")]
pub enum NetworkSpec {
    Legacy(LegacyNetwork),
    Directional(DirectionalNetwork),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LegacyNetwork {
    pub default_policy: DefaultPolicy,
    pub enforcement_mode: EnforcementMode,
    pub allow_local_network: bool,
    pub allowed_hosts: Vec<HostEntry>,
    pub blocked_hosts: Vec<HostEntry>,
    pub proxy: Option<ProxySpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectionalNetwork {
    pub egress_default: Action,
    pub allow: Vec<RuleSpec>,
    pub deny: Vec<RuleSpec>,
    pub ingress_default: Action,
    pub host_loopback: Action,
    /// `runtimeConfig.networkProxy`.
    pub proxy: Option<ProxySpec>,
    pub allowed_proxy_peer: Option<String>,
}

/// One legacy `allowedHosts`/`blockedHosts` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "lowercase")]
pub enum HostEntry {
    /// An IP literal or CIDR (host bits masked, IPv4-mapped IPv6 folded to IPv4).
    Net(IpNet),
    /// A host name, resolved by the runner when the sandbox starts.
    Name(String),
    /// An entry that is neither; kept verbatim so the backend rules can decide.
    Malformed { raw: String, reason: String },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleSpec {
    /// `None` = every destination of both families.
    pub to: Option<Vec<PeerSpec>>,
    /// `None` = every protocol and port.
    pub ports: Option<Vec<PortSpec>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerSpec {
    pub cidr: IpNet,
    pub except: Vec<IpNet>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortSpec {
    pub protocol: Protocol,
    /// Inclusive destination port range; `None` = every port.
    pub range: Option<(u16, u16)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxySpec {
    pub form: ProxyForm,
    pub endpoint: ProxyEndpoint,
    /// The URL exported to the workload in `HTTP_PROXY` and friends.
    pub url: String,
    pub has_credentials: bool,
}

/// Which spelling named the proxy: MXC's rules differ per spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ProxyForm {
    BuiltinTestServer,
    Localhost,
    Url,
    /// `runtimeConfig.networkProxy` (schema 0.8).
    Runtime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum ProxyEndpoint {
    BuiltinTestServer,
    Host {
        scheme: String,
        host: String,
        port: u16,
    },
}

impl ProxyEndpoint {
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Self::Host { host, .. } => host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .ok(),
            Self::BuiltinTestServer => None,
        }
    }
}

/// Parses a CIDR as MXC's directional rules do (the `cidr` crate): a bare address means a host
/// route, host bits must be zero, the prefix is a decimal `u8` no wider than the family.
pub fn parse_cidr_strict(s: &str) -> Result<IpNet, String> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("\"{addr}\" is not an IP address"))?;
    let width = if ip.is_ipv4() { 32 } else { 128 };
    let len = match prefix {
        None => width,
        Some(p) => p
            .parse::<u8>()
            .map_err(|_| format!("\"{p}\" is not a prefix length"))?,
    };
    if len > width {
        return Err(format!(
            "prefix /{len} is too long for {} (maximum {width})",
            family(&ip)
        ));
    }
    let net = IpNet::new(ip, len).map_err(|e| e.to_string())?;
    if net.network() != ip {
        return Err(format!(
            "host part of {s} is not zero (the network is {})",
            net.trunc()
        ));
    }
    Ok(net)
}

/// Parses a CIDR as MXC 1.0 does ([`parse_cidr_strict`]), and reads an IPv4-mapped IPv6 block
/// (`::ffff:a.b.c.d/96+n`) as the IPv4 block it names: the kernel sees those destinations as IPv4
/// traffic, so an IPv6 rule for them would match nothing.
pub fn parse_cidr_current(s: &str) -> Result<IpNet, String> {
    let net = parse_cidr_strict(s)?;
    Ok(fold_v4_mapped(net))
}

/// `::ffff:a.b.c.d/96+n` → `a.b.c.d/n`; everything else unchanged.
pub fn fold_v4_mapped(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.addr().to_ipv4_mapped()
    {
        return IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96)
            .expect("prefix - 96 <= 32")
            .trunc();
    }
    net
}

/// Parses a legacy host-list entry the way MXC's Linux backends do: trimmed; an IP literal or
/// CIDR with host bits allowed (masked); IPv4-mapped IPv6 folded to IPv4; otherwise a name.
pub fn parse_host_entry(raw: &str) -> HostEntry {
    let s = raw.trim();
    if s.is_empty() {
        return HostEntry::Malformed {
            raw: raw.into(),
            reason: "empty address".into(),
        };
    }
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let Ok(ip) = addr
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    else {
        if prefix.is_none() && is_hostname(s) {
            return HostEntry::Name(s.to_ascii_lowercase());
        }
        return HostEntry::Malformed {
            raw: raw.into(),
            reason: "not an IP address, CIDR or host name".into(),
        };
    };
    let width: u8 = if ip.is_ipv4() { 32 } else { 128 };
    let len = match prefix {
        None => width,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            match p.parse::<u8>() {
                Ok(l) if l <= width => l,
                _ => {
                    return HostEntry::Malformed {
                        raw: raw.into(),
                        reason: format!(
                            "CIDR prefix wider than the address family allows (maximum {width})"
                        ),
                    };
                }
            }
        }
        Some(_) => {
            return HostEntry::Malformed {
                raw: raw.into(),
                reason: format!("malformed CIDR prefix; expected a number between 0 and {width}"),
            };
        }
    };
    // IPv4-mapped IPv6 (::ffff:a.b.c.d/96+n) names an IPv4 destination.
    if let IpAddr::V6(v6) = ip
        && let Some(v4) = v6.to_ipv4_mapped()
        && len >= 96
    {
        return HostEntry::Net(
            IpNet::new(IpAddr::V4(v4), len - 96)
                .expect("len-96 <= 32")
                .trunc(),
        );
    }
    HostEntry::Net(IpNet::new(ip, len).expect("checked prefix").trunc())
}

fn is_hostname(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn family(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// Whether `inner` lies inside `outer` (same family, at least as long a prefix).
pub fn contains(outer: &IpNet, inner: &IpNet) -> bool {
    outer.contains(inner)
}

/// Parses an HTTP(S) proxy URL as MXC does: scheme http or https, a host, and an explicit port
/// that is not the scheme's default (the `url` crate drops default ports, so MXC rejects them).
pub fn parse_proxy_url(raw: &str) -> Result<ProxySpec, String> {
    let u = url::Url::parse(raw).map_err(|e| format!("is invalid: {e}"))?;
    let scheme = u.scheme().to_owned();
    if scheme != "http" && scheme != "https" {
        return Err(format!(
            "must use the 'http' or 'https' scheme (got '{scheme}')"
        ));
    }
    let host = u
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or("must include a host")?
        .to_owned();
    let port = u
        .port()
        .ok_or("must include a port (e.g. http://localhost:8080)")?;
    let has_credentials = !u.username().is_empty() || u.password().is_some();
    Ok(ProxySpec {
        form: ProxyForm::Url,
        endpoint: ProxyEndpoint::Host { scheme, host, port },
        url: raw.to_owned(),
        has_credentials,
    })
}

/// `localhost` (any case), `127.0.0.1` or `::1`, bracketed or not.
pub fn is_canonical_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h == "127.0.0.1" || h == "::1"
}

/// Any loopback: 127.0.0.0/8, ::1 or `localhost`.
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_cidr_matches_mxc() {
        assert_eq!(
            parse_cidr_strict("10.0.0.1").unwrap().to_string(),
            "10.0.0.1/32"
        );
        assert_eq!(parse_cidr_strict("::1").unwrap().to_string(), "::1/128");
        assert!(parse_cidr_strict("10.0.0.0/08").is_ok());
        assert!(parse_cidr_strict("10.0.0.0/+8").is_ok());
        assert!(parse_cidr_strict("0.0.0.0/0").is_ok());
        for bad in [
            "10.0.0.1/24",
            "2001:db8::1/32",
            "10.0.0.0/33",
            "10/8",
            "010.0.0.0/8",
            "host",
            "/8",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "10.0.0.0/8/8",
            " 10.0.0.0/8",
            "fe80::1%eth0",
        ] {
            assert!(parse_cidr_strict(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_entries_like_the_linux_backends() {
        assert_eq!(
            parse_host_entry(" 140.82.112.5/20 "),
            HostEntry::Net("140.82.112.0/20".parse().unwrap())
        );
        assert_eq!(
            parse_host_entry("::ffff:1.2.3.4"),
            HostEntry::Net("1.2.3.4/32".parse().unwrap())
        );
        assert_eq!(
            parse_host_entry("API.github.com"),
            HostEntry::Name("api.github.com".into())
        );
        assert!(matches!(
            parse_host_entry("10.0.0.0/33"),
            HostEntry::Malformed { .. }
        ));
        assert!(matches!(
            parse_host_entry("10.0.0.0/x"),
            HostEntry::Malformed { .. }
        ));
        assert!(matches!(parse_host_entry(""), HostEntry::Malformed { .. }));
    }

    #[test]
    fn proxy_urls() {
        let p = parse_proxy_url("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            p.endpoint,
            ProxyEndpoint::Host {
                scheme: "http".into(),
                host: "127.0.0.1".into(),
                port: 8080
            }
        );
        assert!(
            parse_proxy_url("http://127.0.0.1:80")
                .unwrap_err()
                .contains("port")
        );
        assert!(
            parse_proxy_url("https://x:443")
                .unwrap_err()
                .contains("port")
        );
        assert!(
            parse_proxy_url("socks5://x:1080")
                .unwrap_err()
                .contains("scheme")
        );
        assert!(parse_proxy_url("http://{{PROXY_HOST}}:{{PROXY_PORT}}").is_err());
        assert!(
            parse_proxy_url("http://u:p@h:3128")
                .unwrap()
                .has_credentials
        );
        assert!(is_canonical_loopback("[::1]") && is_canonical_loopback("LOCALHOST"));
        assert!(!is_canonical_loopback("127.0.0.2") && is_loopback_host("127.0.0.2"));
    }
}

/// `net` minus every block in `except` (same family only), as the minimal list of CIDR blocks:
/// MXC's bubblewrap semantics, where an `except` carves the range out of its own rule only.
pub fn subtract(net: IpNet, except: &[IpNet]) -> Vec<IpNet> {
    let mut out = Vec::new();
    let mut stack = vec![net];
    while let Some(block) = stack.pop() {
        let same_family = except
            .iter()
            .filter(|e| e.addr().is_ipv4() == block.addr().is_ipv4());
        let mut overlapping = false;
        let mut covered = false;
        for e in same_family {
            if e.contains(&block) {
                covered = true;
                break;
            }
            if block.contains(e) {
                overlapping = true;
            }
        }
        if covered {
            continue;
        }
        if !overlapping {
            out.push(block);
            continue;
        }
        if let Ok(halves) = block.subnets(block.prefix_len() + 1) {
            stack.extend(halves.collect::<Vec<_>>().into_iter().rev())
        }
    }
    out.sort();
    out
}

/// An IPv6 block shorter than /96 that contains the IPv4-mapped range `::ffff:0:0/96`.
pub fn straddles_v4_mapped(net: &IpNet) -> bool {
    let mapped: IpNet = "::ffff:0:0/96".parse().expect("constant");
    matches!(net, IpNet::V6(_)) && net.prefix_len() < 96 && net.contains(&mapped)
}

#[cfg(test)]
mod subtract_tests {
    use super::*;

    fn n(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn carves_exactly() {
        let r = subtract(n("0.0.0.0/0"), &[n("1.1.1.0/24")]);
        assert_eq!(r.len(), 24);
        assert!(r.iter().all(|b| !b.contains(&n("1.1.1.7/32"))));
        assert!(r.iter().any(|b| b.contains(&n("1.1.0.255/32"))));
        assert!(r.iter().any(|b| b.contains(&n("1.1.2.0/32"))));
        assert_eq!(subtract(n("10.0.0.0/8"), &[n("10.0.0.0/8")]), vec![]);
        assert_eq!(
            subtract(n("10.0.0.0/8"), &[n("::/0")]),
            vec![n("10.0.0.0/8")]
        );
        assert_eq!(subtract(n("10.0.0.0/8"), &[]), vec![n("10.0.0.0/8")]);
    }

    #[test]
    fn v4_mapped_folds_to_ipv4() {
        assert_eq!(
            parse_cidr_current("::ffff:10.1.2.0/120").unwrap(),
            n("10.1.2.0/24")
        );
        assert_eq!(parse_cidr_current("::ffff:0:0/96").unwrap(), n("0.0.0.0/0"));
        assert_eq!(
            parse_cidr_current("::ffff:198.18.0.1").unwrap(),
            n("198.18.0.1/32")
        );
        assert_eq!(
            parse_cidr_current("2001:db8::/32").unwrap(),
            n("2001:db8::/32")
        );
        // Shorter than /96: stays IPv6 (and is refused by the backend rules when it straddles).
        assert_eq!(parse_cidr_current("::/0").unwrap(), n("::/0"));
        assert!(
            parse_cidr_current("::ffff:10.1.2.3/120").is_err(),
            "host bits"
        );
    }

    #[test]
    fn straddle() {
        assert!(straddles_v4_mapped(&n("::/0")));
        assert!(!straddles_v4_mapped(&n("2001:db8::/32")));
        assert!(!straddles_v4_mapped(&n("0.0.0.0/0")));
    }
}
