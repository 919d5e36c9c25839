//! The network suite (root): test hosts are network namespaces this test creates (198.18.0.0/16
//! behind a veth), each serving TCP banners; a probe inside the sandbox reports, per destination,
//! the banner it received or that it was blocked. Reachability is proven by our own banner,
//! never by a bare connect. No traffic goes anywhere else.

mod common;

use std::process::Command;

use agentcell_e2e::testhost::TestHost;
use common::{Fixture, require_root};
use serde_json::json;

const PROBE: &str = r#"
import socket, sys
def ping(host):
    v6 = ":" in host
    s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM,
                      socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
    s.settimeout(1.0)
    s.sendto(bytes([128 if v6 else 8, 0, 0, 0, 0, 1, 0, 1]) + b"agentcell", (host, 0))
    data, _ = s.recvfrom(128)
    return "ECHO-REPLY" if data[0] in (0, 129) else "OTHER"
for target in sys.argv[1:]:
    if target.startswith("icmp:"):
        try:
            print(target, ping(target[5:]))
        except Exception as e:
            print(target, "BLOCKED")
        continue
    host, port = target.rsplit(":", 1)
    try:
        s = socket.create_connection((host, int(port)), timeout=1.0)
        s.settimeout(1.0)
        print(target, s.recv(64).decode().strip() or "NO-BANNER")
    except Exception as e:
        print(target, "BLOCKED")
"#;

/// Runs the probe in a sandbox under `network`, returning destination → outcome.
fn probe(
    f: &Fixture,
    network: serde_json::Value,
    targets: &[&str],
) -> std::collections::BTreeMap<String, String> {
    let script = f.write("probe/probe.py", PROBE);
    let p = f.policy(&json!({"version": "1.0.0", "filesystem": {"readonlyPaths": [f.p("probe")]}, "network": network}));
    let mut args = vec![
        "run",
        "--policy",
        &p,
        "--",
        "python3",
        script.to_str().unwrap(),
    ];
    args.extend_from_slice(targets);
    let r = common::agentcell(&args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    r.stdout
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(t, o)| (t.to_string(), o.to_string()))
        .collect()
}

#[test]
fn allow_by_cidr_and_port_lets_exactly_that_through() {
    require_root();
    let _h = TestHost::new(10, &[8080, 8081]);
    let f = Fixture::new("net-allow");
    let got = probe(
        &f,
        json!({"egress": {"default": "deny", "allow": [{"to": [{"cidr": "198.18.10.2/32"}], "ports": [{"protocol": "tcp", "port": 8080}]}]}}),
        &["198.18.10.2:8080", "198.18.10.2:8081", "198.18.10.3:8080"],
    );
    assert_eq!(got["198.18.10.2:8080"], "BANNER-8080", "{got:?}");
    assert_eq!(got["198.18.10.2:8081"], "BLOCKED", "wrong port: {got:?}");
    assert_eq!(
        got["198.18.10.3:8080"], "BLOCKED",
        "neighbour address: {got:?}"
    );
}

#[test]
fn deny_wins_except_carves_and_ranges_hold() {
    require_root();
    let _h = TestHost::new(11, &[8080, 8081, 8082]);
    let f = Fixture::new("net-deny");
    let got = probe(
        &f,
        json!({"egress": {"default": "deny",
            "allow": [{"to": [{"cidr": "198.18.11.0/24", "except": ["198.18.11.3/32"]}], "ports": [{"protocol": "tcp", "port": 8080, "endPort": 8081}]}],
            "deny": [{"to": [{"cidr": "198.18.11.2/32"}], "ports": [{"protocol": "tcp", "port": 8081}]}]}}),
        &[
            "198.18.11.2:8080",
            "198.18.11.2:8081",
            "198.18.11.2:8082",
            "198.18.11.3:8080",
        ],
    );
    assert_eq!(got["198.18.11.2:8080"], "BANNER-8080", "{got:?}");
    assert_eq!(
        got["198.18.11.2:8081"], "BLOCKED",
        "deny wins over an overlapping allow: {got:?}"
    );
    assert_eq!(
        got["198.18.11.2:8082"], "BLOCKED",
        "outside the range: {got:?}"
    );
    assert_eq!(
        got["198.18.11.3:8080"], "BLOCKED",
        "except carve-out: {got:?}"
    );
}

#[test]
fn the_host_is_closed_and_the_workload_cannot_change_its_rules() {
    require_root();
    let _h = TestHost::new(12, &[8080]);
    let f = Fixture::new("net-host");
    // Everything allowed but the host itself (hostLoopback defaults to deny).
    let got = probe(
        &f,
        json!({"egress": {"default": "allow"}}),
        &["198.18.12.2:8080", "198.18.12.1:8080"],
    );
    assert_eq!(got["198.18.12.2:8080"], "BANNER-8080", "{got:?}");
    assert_eq!(
        got["198.18.12.1:8080"], "BLOCKED",
        "the host's side of the test link is the host: {got:?}"
    );

    let script = f.write("probe/probe.py", PROBE);
    let p = f.policy(&json!({"version": "1.0.0", "filesystem": {"readonlyPaths": [f.p("probe")]},
        "network": {"egress": {"default": "deny", "allow": [{"to": [{"cidr": "198.18.12.3/32"}]}]}}}));
    let r = common::agentcell(&[
        "run",
        "--policy",
        &p,
        "--",
        "/bin/sh",
        "-c",
        &format!(
            "nft flush ruleset && echo FLUSH_LEAK; python3 {} 198.18.12.2:8080",
            script.display()
        ),
    ]);
    assert!(!r.stdout.contains("FLUSH_LEAK"), "{}", r.stdout);
    assert!(
        r.stdout.contains("198.18.12.2:8080 BLOCKED"),
        "{} {}",
        r.stdout,
        r.stderr
    );
}

#[test]
fn links_and_namespaces_are_gone_after_exit() {
    require_root();
    let f = Fixture::new("net-clean");
    let p = f.policy(&json!({"version": "1.0.0", "network": {"egress": {"default": "allow"}}}));
    let r = common::agentcell(&[
        "--log",
        "agentcell=debug",
        "run",
        "--policy",
        &p,
        "--",
        "/bin/true",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let log = r.stderr.replace("\u{1b}", "");
    let field = |key: &str| {
        let i = log
            .find(&format!("{key}="))
            .unwrap_or_else(|| panic!("{key} not logged: {log}"))
            + key.len()
            + 1;
        log[i..]
            .split(|c: char| c.is_whitespace() || c == '\u{1b}')
            .next()
            .unwrap()
            .to_string()
    };
    let (netns, link) = (field("netns"), field("link"));
    assert!(
        netns.starts_with("ac-") && link.starts_with("ac"),
        "{netns} {link}"
    );
    assert!(
        !std::path::Path::new("/run/netns").join(&netns).exists(),
        "{netns} left behind"
    );
    let links = String::from_utf8(
        Command::new("ip")
            .args(["-o", "link"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        !links.contains(&format!(": {link}@")) && !links.contains(&format!(": {link}:")),
        "{link} left behind"
    );
    let tables = String::from_utf8(
        Command::new("nft")
            .args(["list", "tables"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        !tables.contains("table inet agentcell"),
        "the sandbox's table leaked into the host namespace: {tables}"
    );
}

#[test]
fn ipv6_is_fenced_like_ipv4_and_a_v4_only_allow_list_does_not_open_it() {
    require_root();
    let _h = TestHost::new(13, &[8080, 8081]);
    let f = Fixture::new("net-v6");
    let got = probe(
        &f,
        json!({"egress": {"default": "deny", "allow": [{"to": [{"cidr": "fd00:18:13::2/128"}], "ports": [{"protocol": "tcp", "port": 8080}]}],
            "deny": [{"to": [{"cidr": "fd00:18:13::3/128"}]}]}}),
        &[
            "fd00:18:13::2:8080",
            "fd00:18:13::2:8081",
            "fd00:18:13::3:8080",
            "198.18.13.2:8080",
        ],
    );
    assert_eq!(got["fd00:18:13::2:8080"], "BANNER-8080", "{got:?}");
    assert_eq!(got["fd00:18:13::2:8081"], "BLOCKED", "{got:?}");
    assert_eq!(got["fd00:18:13::3:8080"], "BLOCKED", "{got:?}");
    assert_eq!(
        got["198.18.13.2:8080"], "BLOCKED",
        "a v6 allow-list does not open v4: {got:?}"
    );

    let got = probe(
        &f,
        json!({"egress": {"default": "deny", "allow": [{"to": [{"cidr": "198.18.13.2/32"}]}]}}),
        &["198.18.13.2:8080", "fd00:18:13::2:8080"],
    );
    assert_eq!(got["198.18.13.2:8080"], "BANNER-8080", "{got:?}");
    assert_eq!(
        got["fd00:18:13::2:8080"], "BLOCKED",
        "a v4-only allow-list must not open v6: {got:?}"
    );
}

#[test]
fn a_proxy_is_a_fence() {
    require_root();
    let _h = TestHost::new(14, &[8080]);
    // The proxy: a banner on the host's loopback (as MXC's runtimeConfig requires).
    let port = 13000 + (std::process::id() % 1000) as u16;
    let mut proxy = Command::new("python3")
        .args(["-c", &format!(
            "import socket\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('127.0.0.1',{port}));s.listen(8)\nprint('ready',flush=True)\nwhile True:\n c,_=s.accept();c.sendall(b'PROXY-BANNER\\n');c.close()"
        )])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(proxy.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let f = Fixture::new("net-proxy");
    let script = f.write("probe/probe.py", PROBE);
    let p = f.policy(&json!({"version": "1.0.0", "filesystem": {"readonlyPaths": [f.p("probe")]},
        "runtimeConfig": {"networkProxy": format!("http://127.0.0.1:{port}")}, "network": {"egress": {"default": "deny"}}}));
    let r = common::agentcell(&[
        "run",
        "--policy",
        &p,
        "--",
        "/bin/sh",
        "-c",
        &format!(
            "python3 {} 127.0.0.1:{port} 198.18.14.2:8080 fd00:18:14::2:8080; echo \"ENV $HTTP_PROXY $https_proxy $ALL_PROXY\"",
            script.display()
        ),
    ]);
    let _ = proxy.kill();
    let _ = proxy.wait();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains(&format!("127.0.0.1:{port} PROXY-BANNER")),
        "the proxy is reachable: {}",
        r.stdout
    );
    assert!(
        r.stdout.contains("198.18.14.2:8080 BLOCKED"),
        "direct IPv4 fails: {}",
        r.stdout
    );
    assert!(
        r.stdout.contains("fd00:18:14::2:8080 BLOCKED"),
        "direct IPv6 fails: {}",
        r.stdout
    );
    let url = format!("http://127.0.0.1:{port}");
    assert!(
        r.stdout.contains(&format!("ENV {url} {url} {url}")),
        "variables set in both cases: {}",
        r.stdout
    );
}

#[test]
fn a_listener_in_the_sandbox_is_unreachable_from_test_hosts_and_the_host() {
    require_root();
    let h = TestHost::new(15, &[8080]);
    let f = Fixture::new("net-ingress");
    let listener = f.write(
        "probe/listen.py",
        "import socket,time\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',9090));s.listen(8);s.settimeout(4)\nprint('listening',flush=True)\nn=0\ntry:\n  while True:\n    c,_=s.accept();c.sendall(b'SANDBOX-BANNER\\n');c.close();n+=1\nexcept OSError:\n  pass\nprint('accepted',n,flush=True)\n",
    );
    let p = f.policy(&json!({"version": "1.0.0", "filesystem": {"readonlyPaths": [f.p("probe")]},
        "network": {"egress": {"default": "deny", "allow": [{"to": [{"cidr": "198.18.15.0/24"}]}]}}}));
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentcell"))
        .args([
            "--log",
            "agentcell=debug",
            "run",
            "--policy",
            &p,
            "--",
            "python3",
            listener.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut sandbox_ip = String::new();
    for _ in 0..50 {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut err, &mut line).unwrap() == 0 {
            break;
        }
        if let Some(i) = line.find("sandbox_ip=") {
            sandbox_ip = line[i + 11..]
                .split_whitespace()
                .next()
                .unwrap()
                .to_string();
            break;
        }
    }
    assert!(!sandbox_ip.is_empty(), "no sandbox address logged");
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "listening");
    let target = format!("{sandbox_ip}:9090");
    let from_test_host = Command::new("ip")
        .args(["netns", "exec", &h.ns, "python3", "-c", PROBE, &target])
        .output()
        .unwrap();
    let from_host = Command::new("python3")
        .args(["-c", PROBE, &target])
        .output()
        .unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(child.wait().unwrap().success());
    assert!(
        String::from_utf8_lossy(&from_test_host.stdout).contains("BLOCKED"),
        "{from_test_host:?}"
    );
    assert!(
        String::from_utf8_lossy(&from_host.stdout).contains("BLOCKED"),
        "{from_host:?}"
    );
    assert_eq!(
        rest.trim(),
        "accepted 0",
        "the listener accepted a connection"
    );
}

#[test]
fn icmp_rules_hold_for_both_families() {
    require_root();
    let _h = TestHost::new(16, &[8080]);
    let f = Fixture::new("net-icmp");
    let got = probe(
        &f,
        json!({"egress": {"default": "deny", "allow": [
            {"to": [{"cidr": "198.18.16.2/32"}, {"cidr": "fd00:18:16::2/128"}], "ports": [{"protocol": "icmp"}]}]}}),
        &[
            "icmp:198.18.16.2",
            "icmp:fd00:18:16::2",
            "icmp:198.18.16.3",
            "icmp:fd00:18:16::3",
            "198.18.16.2:8080",
        ],
    );
    assert_eq!(got["icmp:198.18.16.2"], "ECHO-REPLY", "{got:?}");
    assert_eq!(got["icmp:fd00:18:16::2"], "ECHO-REPLY", "{got:?}");
    assert_eq!(got["icmp:198.18.16.3"], "BLOCKED", "{got:?}");
    assert_eq!(got["icmp:fd00:18:16::3"], "BLOCKED", "{got:?}");
    assert_eq!(
        got["198.18.16.2:8080"], "BLOCKED",
        "an icmp rule opens no TCP: {got:?}"
    );
}

#[test]
fn audit_reports_network_denials() {
    require_root();
    let _h = TestHost::new(17, &[8080]);
    let f = Fixture::new("net-audit");
    let script = f.write("probe/probe.py", PROBE);
    let report = f.path("audit.jsonl");
    let p = f.policy(&json!({"version": "1.0.0", "filesystem": {"readonlyPaths": [f.p("probe")]},
        "network": {"egress": {"default": "deny", "allow": [{"to": [{"cidr": "198.18.17.2/32"}], "ports": [{"protocol": "tcp", "port": 8080}]}]}}}));
    let r = common::agentcell(&[
        "run",
        "--audit",
        report.to_str().unwrap(),
        "--policy",
        &p,
        "--",
        "python3",
        script.to_str().unwrap(),
        "198.18.17.2:8081",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<serde_json::Value> = common::json_lines(&report);
    assert!(
        lines.iter().any(|l| l["kind"] == "network"
            && l["destination"] == "198.18.17.2"
            && l["port"] == 8081
            && l["protocol"] == "TCP"),
        "{lines:#?}"
    );
}

#[test]
fn default_deny_blocks_everything() {
    require_root();
    let _h = TestHost::new(18, &[8080]);
    let f = Fixture::new("net-default");
    // No rules: no link out at all.
    let got = probe(
        &f,
        json!({"egress": {"default": "deny"}}),
        &["198.18.18.2:8080", "fd00:18:18::2:8080", "icmp:198.18.18.2"],
    );
    assert!(got.values().all(|v| v == "BLOCKED"), "{got:?}");
    // A link out for one destination: everything else still falls to the default.
    let got = probe(
        &f,
        json!({"egress": {"default": "deny", "allow": [{"to": [{"cidr": "198.18.18.3/32"}], "ports": [{"protocol": "udp", "port": 53}]}]}}),
        &[
            "198.18.18.2:8080",
            "198.18.18.3:8080",
            "fd00:18:18::2:8080",
            "icmp:198.18.18.2",
        ],
    );
    assert!(got.values().all(|v| v == "BLOCKED"), "{got:?}");
}
