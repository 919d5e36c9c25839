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
    // (The host's own guard table, `inet agentcell_host`, may stay: it is shared.)
    assert!(
        !tables.lines().any(|l| l.trim() == "table inet agentcell"),
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

/// The workload of the reachability attacks: waits for the test to write its targets (the
/// attacks need things that exist only after the sandbox started), then per line `tcp H:P`
/// reports the banner or BLOCKED, `udp H:P` sends marked datagrams (broadcast allowed) and
/// reports the answer, SENT (none) or ERROR (the send was refused).
const LATE_PROBE: &str = r#"
import os, socket, sys, time
go = sys.argv[1]
print("waiting", flush=True)
for _ in range(1200):
    if os.path.exists(go):
        break
    time.sleep(0.05)
time.sleep(0.1)
for t in open(go).read().split("\n"):
    if not t:
        continue
    kind, target = t.split(" ", 1)
    host, port = target.rsplit(":", 1)
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    if kind == "tcp":
        try:
            s = socket.create_connection((host, int(port)), timeout=1.0)
            s.settimeout(1.0)
            print(t, s.recv(64).decode().strip() or "NO-BANNER", flush=True)
        except Exception:
            print(t, "BLOCKED", flush=True)
    else:
        try:
            s = socket.socket(fam, socket.SOCK_DGRAM)
            if fam == socket.AF_INET:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            s.settimeout(1.0)
            addr = socket.getaddrinfo(host, int(port), fam, socket.SOCK_DGRAM)[0][4]
            for _ in range(3):
                s.sendto(("SANDBOX-DATAGRAM " + t).encode(), addr)
            try:
                data, _ = s.recvfrom(64)
                print(t, data.decode().strip(), flush=True)
            except Exception:
                print(t, "SENT", flush=True)
        except Exception as e:
            print(t, "ERROR", type(e).__name__, flush=True)
print("done", flush=True)
"#;

/// A listener on the host itself: a TCP banner on every address (both families), and UDP on
/// every address reporting each datagram it receives (`GOT ...`) until an `END` on each family.
const HOST_LISTENER: &str = r#"
import socket, sys, threading
tcp_port, udp_port = int(sys.argv[1]), int(sys.argv[2])
t = socket.socket(socket.AF_INET6); t.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); t.bind(("::", tcp_port)); t.listen(16)
def serve():
    while True:
        c, _ = t.accept(); c.sendall(b"HOST-BANNER\n"); c.close()
threading.Thread(target=serve, daemon=True).start()
u4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u4.bind(("0.0.0.0", udp_port))
u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
u6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1); u6.bind(("::", udp_port))
lock = threading.Lock()
def receive(s):
    while True:
        data, peer = s.recvfrom(512)
        with lock:
            print("GOT" if data != b"END" else "END", data.decode(errors="replace"), peer[0], flush=True)
        if data == b"END":
            return
threads = [threading.Thread(target=receive, args=(s,)) for s in (u4, u6)]
for th in threads: th.start()
print("ready", flush=True)
for th in threads: th.join()
"#;

/// Removes ANSI colour sequences from a log line.
fn plain(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A running `agentcell run` (debug log), with its link's names and addresses as it logged them.
struct Running {
    child: Option<std::process::Child>,
    fields: std::collections::BTreeMap<String, String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        // A failed test does not leave the sandbox running.
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Kills a helper process on drop (a failed assertion leaves nothing listening).
struct Reaped(std::process::Child);
impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    fn start(policy: &str, argv: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_agentcell"))
            .args(["--log", "agentcell=debug", "run", "--policy", policy, "--"])
            .args(argv)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let err = child.stderr.take().unwrap();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log = stderr.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in std::io::BufRead::lines(std::io::BufReader::new(err)).map_while(Result::ok)
            {
                let line = plain(&line);
                if !sent && line.contains("sandbox_ip=") {
                    let fields: std::collections::BTreeMap<String, String> = line
                        .split_whitespace()
                        .filter_map(|w| w.split_once('='))
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect();
                    let _ = tx.send(fields);
                    sent = true;
                }
                log.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let fields = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no link logged: {}", stderr.lock().unwrap()));
        Self {
            child: Some(child),
            fields,
        }
    }

    fn field(&self, key: &str) -> &str {
        self.fields
            .get(key)
            .unwrap_or_else(|| panic!("{key} in {:?}", self.fields))
    }

    /// Waits for the run to end; its exit code and stdout.
    fn finish(&mut self) -> (i32, String) {
        let mut child = self.child.take().expect("running");
        let mut out = String::new();
        std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
        let status = child.wait().unwrap();
        (status.code().unwrap_or(-1), out)
    }
}

/// The link-local address of `dev` (in `netns`, or the host's with `None`) once it is out of
/// duplicate address detection (a tentative source cannot be used, which would fake a block).
fn link_local(netns: Option<&str>, dev: &str) -> String {
    let started = std::time::Instant::now();
    loop {
        let mut cmd = Command::new("ip");
        if let Some(n) = netns {
            cmd.args(["-n", n]);
        }
        let out = cmd
            .args(["-6", "-o", "addr", "show", "dev", dev, "scope", "link"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if !text.is_empty() && !text.contains("tentative") {
            let addr = text
                .split_whitespace()
                .skip_while(|w| *w != "inet6")
                .nth(1)
                .unwrap();
            return addr.split('/').next().unwrap().to_string();
        }
        assert!(
            started.elapsed().as_secs() < 20,
            "no usable link-local address on {dev}: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Removes a host interface (and its peer) on drop.
struct Dummy(String);
impl Drop for Dummy {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

#[test]
fn the_host_is_closed_by_where_traffic_goes_not_by_the_addresses_it_had_at_start() {
    require_root();
    let _h = TestHost::new(19, &[8080]);
    let (tcp_port, udp_port) = (
        14000 + (std::process::id() % 1000) as u16,
        15000 + (std::process::id() % 1000) as u16,
    );
    let mut listener = Reaped(
        Command::new("python3")
            .args([
                "-c",
                HOST_LISTENER,
                &tcp_port.to_string(),
                &udp_port.to_string(),
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut heard = std::io::BufReader::new(listener.0.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut heard, &mut line).unwrap();
    assert_eq!(line.trim(), "ready");

    // Sandbox A: everything allowed but the host (hostLoopback deny by default).
    let fa = Fixture::new("net-reach-a");
    let script = fa.write("probe/probe.py", LATE_PROBE);
    let go = fa.path("probe/go");
    let pa = fa.policy(
        &json!({"version": "1.0.0", "filesystem": {"readonlyPaths": [fa.p("probe")]},
        "network": {"egress": {"default": "allow"}}}),
    );
    let mut a = Running::start(
        &pa,
        &["python3", script.to_str().unwrap(), go.to_str().unwrap()],
    );

    // After A started: an address the host gains (on a link of its own: a veth pair, both ends
    // on the host), and a second sandbox (its gateway is one).
    let dummy = Dummy(format!("acdum{}", std::process::id() % 100000));
    let peer = format!("acdup{}", std::process::id() % 100000);
    for args in [
        vec![
            "link", "add", &dummy.0, "type", "veth", "peer", "name", &peer,
        ],
        vec!["addr", "add", "198.18.77.1/32", "dev", &dummy.0],
        vec!["link", "set", &dummy.0, "up"],
    ] {
        assert!(
            Command::new("ip").args(&args).status().unwrap().success(),
            "ip {args:?}"
        );
    }
    let fb = Fixture::new("net-reach-b");
    fb.mkdir("wait");
    let stop = fb.path("wait/stop");
    let pb = fb.policy(
        &json!({"version": "1.0.0", "filesystem": {"readonlyPaths": [fb.p("wait")]},
        "network": {"egress": {"default": "allow"}}}),
    );
    let mut b = Running::start(
        &pb,
        &[
            "/bin/sh",
            "-c",
            &format!(
                "i=0; while [ ! -e {} ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done",
                stop.display()
            ),
        ],
    );

    let host_end = link_local(None, a.field("link"));
    // The sandbox's own end too: a tentative source would fail the connection by itself.
    link_local(Some(a.field("netns")), "eth0");
    let sandbox_ip: std::net::Ipv4Addr = a.field("sandbox_ip").parse().unwrap();
    let subnet_broadcast = std::net::Ipv4Addr::from(u32::from(sandbox_ip) | 3);
    let targets = [
        "tcp 198.18.19.2:8080".to_string(),
        "udp 198.18.19.2:8080".to_string(),
        format!("tcp {host_end}%eth0:{tcp_port}"),
        format!("tcp 198.18.77.1:{tcp_port}"),
        format!("tcp {}:{tcp_port}", b.field("host_ip")),
        format!("udp 255.255.255.255:{udp_port}"),
        format!("udp {subnet_broadcast}:{udp_port}"),
        format!("udp 224.0.0.1:{udp_port}"),
        format!("udp ff02::1%eth0:{udp_port}"),
    ];
    let links = [a.field("link").to_string(), b.field("link").to_string()];
    std::fs::write(&go, targets.join("\n") + "\n").unwrap();
    let (code, out) = a.finish();
    std::fs::write(&stop, "").unwrap();
    let (b_code, _) = b.finish();
    assert_eq!(code, 0, "{out}");
    assert_eq!(b_code, 0);
    let got: std::collections::BTreeMap<String, String> = out
        .lines()
        .filter_map(|l| {
            let (kind, rest) = l.split_once(' ')?;
            let (target, outcome) = rest.split_once(' ')?;
            Some((format!("{kind} {target}"), outcome.to_string()))
        })
        .collect();

    // What arrived at the host's UDP sockets before the test's own END on each family.
    std::thread::sleep(std::time::Duration::from_millis(300));
    for to in ["127.0.0.1", "::1"] {
        let s = std::net::UdpSocket::bind(if to.contains(':') {
            "[::1]:0"
        } else {
            "127.0.0.1:0"
        })
        .unwrap();
        s.send_to(b"END", (to, udp_port)).unwrap();
    }
    let mut datagrams = String::new();
    std::io::Read::read_to_string(&mut heard, &mut datagrams).unwrap();
    let _ = listener.0.wait();

    // The control: allowed destinations work, so the blocks below are the fence's.
    assert_eq!(got[&targets[0]], "BANNER-8080", "{got:#?}");
    assert_eq!(got[&targets[1]], "BANNER-8080", "{got:#?}");
    // Every attack is checked before any assertion fails, so a failure shows them all.
    let mut open = Vec::new();
    for (t, what) in [
        (
            &targets[2],
            "the link-local address of the host's end of the link",
        ),
        (
            &targets[3],
            "an address the host gained after the sandbox started",
        ),
        (&targets[4], "another sandbox's gateway"),
    ] {
        if got.get(t).map(String::as_str) != Some("BLOCKED") {
            open.push(format!("{what} ({t}): {:?}", got.get(t)));
        }
    }
    for t in &targets[5..] {
        assert!(got.contains_key(t), "{t} not sent: {got:#?}");
    }
    for l in datagrams.lines().filter(|l| l.starts_with("GOT")) {
        open.push(format!("broadcast or multicast reached the host: {l}"));
    }
    assert!(
        open.is_empty(),
        "the host is reachable:\n{}\n{got:#?}",
        open.join("\n")
    );
    assert_eq!(
        datagrams.lines().filter(|l| l.starts_with("END")).count(),
        2,
        "both listeners heard the test's own END: {datagrams}"
    );

    // Both sandboxes took their host-side chains with them.
    let ruleset = Command::new("nft")
        .args(["list", "ruleset"])
        .output()
        .unwrap();
    let ruleset = String::from_utf8_lossy(&ruleset.stdout);
    for link in &links {
        assert!(
            !ruleset.contains(link.as_str()),
            "{link} left in the host's ruleset: {ruleset}"
        );
    }
    drop(dummy);
}
