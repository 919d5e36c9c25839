//! MXC's own Linux end-to-end configs (`../shared/mxc-conformance/configs/bubblewrap_*`, `lxc_*`)
//! run through `agentcell exec` with their fixtures made as MXC's scripts make them (the `/mnt/...`
//! paths are rewritten to a fixture directory, as MXC's LXC scripts do with `mktemp`). None may
//! print a failure sentinel; the `_rejected`/`_unsupported` ones must exit 125.
//!
//! The network configs target Internet hosts; tests send no traffic there. Every destination is
//! rewritten to a test host with the same role (`DESTINATIONS`: test hosts are namespaces this
//! test creates, serving TCP and UDP banners), host names resolve through a hosts file that both
//! the runner and the sandbox see (agentcell runs in a private mount namespace with it bound on
//! `/etc/hosts`), and each probe that would reach out (`wget`, `curl`, `nslookup`, bash
//! `/dev/tcp`) is replaced by a helper that succeeds only on reading our banner (directly, or
//! through the proxy the environment names) and fails otherwise; loopback probes stay as they are.
//! The helper is bound read-only into the sandbox (`filesystem.readonlyPaths`, the only change to
//! a config besides destinations and placeholders).
//!
//! Not run faithfully: the `proxy.builtinTestServer` configs (`bubblewrap_network_proxy_{allowlist,
//! blocklist,builtin,egress_denied,host_rules,legacy,namespace}`): agentcell ships no built-in test
//! proxy, so they are refused (exit 125, checked) instead of run.

mod common;

use std::path::{Path, PathBuf};

use std::process::Command;

use agentcell_e2e::testhost::TestHost;
use common::{Fixture, require_root};

fn configs_dir() -> PathBuf {
    let dir = std::env::var_os("AGENTCELL_MXC_CONFORMANCE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/mxc-conformance")
        });
    assert!(
        dir.join("README.md").is_file(),
        "MXC conformance data not found at {} (set AGENTCELL_MXC_CONFORMANCE)",
        dir.display()
    );
    dir.join("configs")
}

/// The fixture tree MXC's bubblewrap/LXC scripts create under /mnt.
fn make_fixtures(f: &Fixture) {
    for (rel, text) in [
        ("mnt/masktest/visible.txt", "VISIBLE_SECRET"),
        ("mnt/masktest/secret_file.txt", "FILE_SECRET"),
        ("mnt/masktest/secret_dir/inner.txt", "DIR_SECRET"),
        ("mnt/symmask/control.txt", "CONTROL_SECRET"),
        ("mnt/symmask/real_dir/inner.txt", "DIR_TARGET_SECRET"),
        ("mnt/symmask/real_file.txt", "FILE_TARGET_SECRET"),
        ("mnt/readonly/test.txt", "readonly content"),
        ("mnt/denied/secret.txt", "DENIED_SECRET"),
        ("mnt/msptest/data/secret_child/keep.txt", "CHILD_KEPT"),
        ("mnt/msptest/data/sibling.txt", "PARENT_SECRET"),
        ("mnt/msptest2/proj/notes.txt", "PROJ_NOTES"),
        ("mnt/msptest2/proj/secrets/key.txt", "DEEP_SECRET"),
        ("mnt/objtest/data/secret.txt", "OBJECT_SECRET"),
        ("mnt/objdata/secret.txt", "OBJECT_SECRET"),
    ] {
        f.write(rel, text);
    }
    f.mkdir("mnt/readwrite");
    let link =
        |target: &str, at: &str| std::os::unix::fs::symlink(f.path(target), f.path(at)).unwrap();
    link("mnt/symmask/real_dir", "mnt/symmask/link_to_dir");
    link("mnt/symmask/real_file.txt", "mnt/symmask/link_to_file");
    link("mnt/objtest/data", "mnt/objtest/data_link");
    link("mnt/objdata", "mnt/objlink");
}

const FAILURE_SENTINELS: &[&str] = &[
    "LEAK",
    "LEAKED",
    "UNREACHABLE",
    "_FAILED",
    "RETAINED",
    "SUCCEEDED",
    "OVERRIDDEN",
    "DROPPED\n",
    "MISSING",
    "_FAIL",
    "_BUG",
    "SHOULD_NOT_RUN",
    "should-never-run",
    "MUST_NEVER_RUN",
];

/// Each Internet destination of MXC's network configs (host, address, CIDR) and the test host
/// address standing in for it, with its role. Longer spellings first (they are replaced as text).
const DESTINATIONS: &[(&str, &str, &str)] = &[
    // Test host 40: GitHub (the allowed HTTPS API server and its range).
    (
        "140.82.112.0/20",
        "198.18.40.0/24",
        "GitHub's range, allowed",
    ),
    (
        "140.82.112.5/20",
        "198.18.40.2/24",
        "a CIDR with host bits set",
    ),
    (
        "140.82.112.5/32",
        "198.18.40.2/32",
        "api.github.com as a /32",
    ),
    ("140.82.112.5", "198.18.40.2", "api.github.com's address"),
    (
        "2606:50c0:8000::153/32",
        "fd00:18:40::2/64",
        "an IPv6 CIDR with host bits set",
    ),
    (
        "2606:50c0:8000::153",
        "fd00:18:40::2",
        "GitHub's IPv6 address",
    ),
    ("2606:50c0::/32", "fd00:18:40::/64", "GitHub's IPv6 range"),
    // Test host 41: Google public DNS (a resolver on UDP 53) and a sibling in its /16.
    ("8.8.0.0/16", "198.18.41.0/24", "the resolver's range"),
    ("8.8.8.8/32", "198.18.41.2/32", "the resolver as a /32"),
    ("8.8.8.8", "198.18.41.2", "the resolver"),
    ("8.8.4.4", "198.18.41.3", "a sibling resolver in the range"),
    (
        "2001:4860:4860::8888",
        "fd00:18:41::2",
        "the resolver over IPv6",
    ),
    // Test host 42: Cloudflare (a web server probed as "direct egress").
    ("1.1.1.0/24", "198.18.42.0/24", "Cloudflare's range"),
    ("1.1.1.1/32", "198.18.42.2/32", "1.1.1.1 as a /32"),
    ("1.1.1.1", "198.18.42.2", "a direct destination"),
    (
        "2606:4700:4700::1111",
        "fd00:18:42::2",
        "a direct IPv6 destination",
    ),
    // Test host 43: Quad9 (an address outside every allow-list range) and a listed address.
    (
        "9.9.9.9",
        "198.18.43.2",
        "a destination outside the allowed range",
    ),
    ("203.0.113.7", "198.18.43.3", "a host rule address"),
    // Test host 44: blocked-only addresses (documentation and private ranges, never probed).
    (
        "198.51.100.42/32",
        "198.18.44.2/32",
        "a blocked address as a /32",
    ),
    ("198.51.100.42", "198.18.44.2", "a blocked address"),
    (
        "2001:db8::5/128",
        "fd00:18:44::2/128",
        "a blocked IPv6 address as a /128",
    ),
    ("2001:db8::5", "fd00:18:44::2", "a blocked IPv6 address"),
    ("2001:db8::/32", "fd00:18:44::/64", "a blocked IPv6 range"),
    ("10.0.0.0/8", "198.18.44.0/24", "a blocked private range"),
    // Test host 46: bubblewrap's slirp gateway. With the listener port it is the host itself (the
    // host side of the test link is an address the host owns, with a host listener); with the
    // allowed port it is an ordinary allowed destination.
    (
        "10.0.2.2/{{LISTENER_PORT}}",
        "198.18.46.1/{{LISTENER_PORT}}",
        "the host itself",
    ),
    (
        "10.0.2.2",
        "198.18.46.2",
        "an allowed destination with a listener",
    ),
    // Test host 47: the LXC bridge gateway, where MXC's scripts run an HTTP proxy stub.
    ("10.0.3.1", "198.18.47.2", "the HTTP proxy"),
];

/// Names in the configs, as the hosts file the runner and the sandbox see resolves them (the
/// proxy pin `proxy.mxc.test` as MXC's scripts pin it). `sentinel.invalid` never resolves: only
/// the proxy can fetch it.
const HOSTS: &[(&str, &str)] = &[
    ("198.18.40.2", "api.github.com"),
    ("198.18.41.2", "dns.google"),
    ("fd00:18:41::2", "dns.google"),
    ("198.18.42.2", "one.one.one.one"),
    ("fd00:18:42::2", "one.one.one.one"),
    ("198.18.45.2", "example.com"),
    ("198.18.45.3", "evil.example.com"),
    ("198.18.47.2", "proxy.mxc.test"),
];

/// Banner ports of every test host: HTTP, HTTPS, DNS (UDP and TCP), the wrong port of
/// `ga_egress_wrong_port`, and the configs' allowed port.
const PORTS: &[u16] = &[53, 80, 443, 444, ALLOWED_PORT];
const LISTENER_PORT: u16 = 18080;
const ALLOWED_PORT: u16 = 18081;
const PROXY_PORT: u16 = 3128;
const LOOPBACK_PROXY_PORT: u16 = 13128;

/// The probe standing in for `wget`/`curl` (`fetch URL`), `nslookup` (`dns [SERVER]`) and bash
/// `/dev/tcp` (`tcp HOST PORT`): exit 0 and the banner only when our own listener answered.
/// `fetch` goes through the proxy its environment names (as wget and curl do) unless `--noproxy`;
/// the proxy stub answers with `MXC_PROXY_SENTINEL`.
const PROBE: &str = r#"#!/usr/bin/env python3
import os, socket, sys, urllib.parse
def banner(data):
    if b"BANNER-" not in data:
        sys.exit(1)
    print(data.decode(errors="replace").strip())
    sys.exit(0)
def tcp(host, port, send=b""):
    try:
        s = socket.create_connection((host, int(port)), timeout=3); s.settimeout(3)
        if send: s.sendall(send)
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk: break
            data += chunk
            if not send: break
    except OSError:
        sys.exit(1)
    return data
args = sys.argv[1:]
if args[0] == "tcp":
    banner(tcp(args[1], args[2]))
elif args[0] == "dns":
    server = args[1] if len(args) > 1 else "198.18.46.1"
    try:
        s = socket.socket(socket.AF_INET6 if ":" in server else socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(3); s.sendto(b"query", (server, 53)); data = s.recv(512)
    except OSError:
        sys.exit(1)
    banner(data)
elif args[0] == "fetch":
    noproxy = "--noproxy" in args
    url = urllib.parse.urlsplit(args[-1])
    port = url.port or (443 if url.scheme == "https" else 80)
    proxy = "" if noproxy else next((os.environ[k] for k in (url.scheme + "_proxy", url.scheme.upper() + "_PROXY", "all_proxy", "ALL_PROXY") if os.environ.get(k)), "")
    if proxy:
        p = urllib.parse.urlsplit(proxy)
        data = tcp(p.hostname, p.port or 80, f"GET {args[-1]} HTTP/1.0\r\nHost: {url.hostname}\r\n\r\n".encode())
    else:
        data = tcp(url.hostname, port)
    banner(data)
sys.exit(2)
"#;

/// An HTTP proxy stub (as MXC's scripts run one): answers any request with MXC's sentinel and a
/// banner, and a client that sends nothing within a second with the banner alone.
const PROXY_STUB: &str = r#"
import socket, sys, threading
def handle(c):
    c.settimeout(1.0)
    try:
        c.recv(4096)
        c.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nMXC_PROXY_SENTINEL BANNER-PROXY\n")
    except socket.timeout:
        c.sendall(b"BANNER-PROXY\n")
    except OSError:
        pass
    c.close()
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((host, port)); s.listen(16)
print("ready", flush=True)
while True:
    c, _ = s.accept(); threading.Thread(target=handle, args=(c,), daemon=True).start()
"#;

struct Server(std::process::Child);
impl Server {
    fn start(netns: Option<&str>, program: &str, args: &[&str]) -> Self {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "python3"]);
                c
            }
            None => Command::new("python3"),
        };
        let mut child = cmd
            .arg("-c")
            .arg(program)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "ready");
        Self(child)
    }
}
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A banner listener on the host itself (every address), standing in for the host loopback
/// service MXC's scripts start on `{{LISTENER_PORT}}`.
const HOST_LISTENER: &str = r#"
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(16)
print("ready", flush=True)
while True:
    c, _ = s.accept(); c.sendall(b"BANNER-HOST\n"); c.close()
"#;

/// Rewrites a config's text: destinations to test hosts, placeholders filled.
fn fill(name: &str, text: &str, fixture: &Path) -> String {
    let mut t = text.replace("/mnt/", &format!("{}/mnt/", fixture.display()));
    for (mxc, ours, _) in DESTINATIONS {
        t = t.replace(mxc, ours);
    }
    // A name for the hostname config (it checks the pin), the host's loopback otherwise (the
    // only proxy host MXC's runtimeConfig accepts).
    let (proxy_host, proxy_port) = if name == "bubblewrap_network_proxy_hostname.json" {
        ("proxy.mxc.test".to_string(), PROXY_PORT)
    } else {
        ("127.0.0.1".to_string(), LOOPBACK_PROXY_PORT)
    };
    t.replace("{{LISTENER_PORT}}", &LISTENER_PORT.to_string())
        .replace("{{ALLOWED_PORT}}", &ALLOWED_PORT.to_string())
        .replace("{{PROXY_HOST}}", &proxy_host)
        .replace("{{PROXY_PORT}}", &proxy_port.to_string())
}

/// Replaces each outward probe of `cmd` by the helper at `probe` (see `PROBE`).
fn rewrite_probes(cmd: &str, probe: &str) -> String {
    let dev_tcp =
        regex::Regex::new(r#"bash -c \\?"exec 3<>/dev/tcp/([^/"\\]+)/([^"\\]+)\\?""#).unwrap();
    let out = dev_tcp.replace_all(cmd, |c: &regex::Captures| {
        if c[1].starts_with("127.") {
            c[0].to_string()
        } else {
            format!("{probe} tcp {} {}", &c[1], &c[2])
        }
    });
    let fetch = regex::Regex::new(
        r#"(wget|curl)((?:\s+-[-\w=]+(?:\s+(?:\\?"\*\\?"|[0-9]+))?)*)\s+'?(https?://[^\s'"\\]+)'?"#,
    )
    .unwrap();
    let out = fetch.replace_all(&out, |c: &regex::Captures| {
        let noproxy = if c[2].contains("--noproxy") {
            " --noproxy"
        } else {
            ""
        };
        format!("{probe} fetch{noproxy} {}", &c[3])
    });
    let dns = regex::Regex::new(r"nslookup(?:\s+-type=a)?\s+[\w.]+(?:\s+([0-9a-f.:]+))?").unwrap();
    dns.replace_all(&out, |c: &regex::Captures| {
        format!("{probe} dns {}", c.get(1).map_or("", |m| m.as_str()))
    })
    .into_owned()
}

#[test]
fn mxc_linux_configs_run_without_a_leak() {
    require_root();
    // The test hosts every rewritten destination lives on, the proxy stubs and the host listener.
    let hosts: Vec<TestHost> = [40u8, 41, 42, 43, 44, 45, 46]
        .iter()
        .map(|k| TestHost::new(*k, PORTS))
        .collect();
    let proxy_host = TestHost::new(47, &[80, 443]);
    let _proxy = Server::start(
        Some(&proxy_host.ns),
        PROXY_STUB,
        &["198.18.47.2", &PROXY_PORT.to_string()],
    );
    let _loopback_proxy = Server::start(
        None,
        PROXY_STUB,
        &["127.0.0.1", &LOOPBACK_PROXY_PORT.to_string()],
    );
    let _host_listener = Server::start(None, HOST_LISTENER, &[&LISTENER_PORT.to_string()]);
    let shared = Fixture::new("mxc-net-shared");
    let probe = shared.write("probe/acprobe", PROBE);
    std::fs::set_permissions(&probe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut hosts_file = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    for (ip, name) in HOSTS {
        hosts_file.push_str(&format!("{ip} {name}\n"));
    }
    let hosts_path = shared.write("hosts", &hosts_file);

    let mut ran = Vec::new();
    let mut skipped = Vec::new();
    let mut failures = Vec::new();
    let mut names: Vec<String> = std::fs::read_dir(configs_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| (n.starts_with("bubblewrap_") || n.starts_with("lxc_")) && n.ends_with(".json"))
        .collect();
    names.sort();
    for name in names {
        let text = std::fs::read_to_string(configs_dir().join(&name)).unwrap();
        let refused = name.contains("_rejected")
            || name.ends_with("_unsupported.json")
            || text.contains("this-should-never-run");
        let f = Fixture::new(&format!(
            "mxc-{}",
            name.trim_end_matches(".json").replace('_', "-")
        ));
        make_fixtures(&f);
        let mut doc: serde_json::Value = serde_json::from_str(&fill(&name, &text, &f.dir)).unwrap();
        if doc.get("network").is_some() || doc.get("runtimeConfig").is_some() {
            if let Some(cmd) = doc["process"]["commandLine"].as_str() {
                doc["process"]["commandLine"] = rewrite_probes(cmd, probe.to_str().unwrap()).into();
            }
            let fs = doc
                .as_object_mut()
                .unwrap()
                .entry("filesystem")
                .or_insert_with(|| serde_json::json!({}));
            fs.as_object_mut()
                .unwrap()
                .entry("readonlyPaths")
                .or_insert_with(|| serde_json::json!([]))
                .as_array_mut()
                .unwrap()
                .push(shared.p("probe").into());
        }
        let cfg = f.write("config.json", &doc.to_string());
        // In a private mount namespace with the hosts file bound on /etc/hosts: the runner
        // resolves the configs' names through it, and the sandbox's /etc shows it.
        let out = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount --bind "$1" /etc/hosts && shift && exec "$@""#)
            .arg("sh")
            .arg(&hosts_path)
            .arg(env!("CARGO_BIN_EXE_agentcell"))
            .args(["exec", "--allow-testing-features", cfg.to_str().unwrap()])
            .output()
            .unwrap();
        let r = common::Ran {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        let out = format!("{}{}", r.stdout, r.stderr);
        if !refused && text.contains("builtinTestServer") {
            if r.code != 125 || !r.stderr.contains("no built-in test proxy") {
                failures.push(format!(
                    "{name}: a built-in test proxy config was not refused\n{out}"
                ));
            }
            skipped.push(format!(
                "{name}: uses MXC's built-in test proxy, which agentcell does not ship (refused, exit 125)"
            ));
            continue;
        }
        let want = if refused {
            125
        } else if name == "lxc_timeout.json" {
            124
        } else if name == "lxc_network_invalid_cidr.json" {
            // Its only allowed hosts are malformed: they open nothing, so the fetch (the command
            // itself) fails under the default block.
            1
        } else {
            0
        };
        if r.code != want {
            failures.push(format!(
                "{name}: exit {} (want {want})\n{out}\n{doc}",
                r.code
            ));
        }
        if let Some(s) = FAILURE_SENTINELS.iter().find(|s| r.stdout.contains(*s)) {
            failures.push(format!("{name}: printed {s}\n{}\n{doc}", r.stdout));
        }
        for (marker, why) in POSITIVE {
            if name.starts_with(marker.0) && !r.stdout.contains(marker.1) {
                failures.push(format!(
                    "{name}: {why}: no {} in\n{}\n{doc}",
                    marker.1, r.stdout
                ));
            }
        }
        ran.push(name);
    }
    drop(hosts);
    eprintln!(
        "ran: {}\nnot run faithfully:\n  {}",
        ran.join(" "),
        skipped.join("\n  ")
    );
    assert!(ran.len() >= 60, "ran only {ran:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// What the allowed/blocked configs must print (MXC's scripts check these outcomes; a config
/// whose probe prints neither outcome-word would otherwise pass by printing nothing).
const POSITIVE: &[((&str, &str), &str)] = &[
    (
        ("lxc_network_enforcement_allow", "MXC_NET_ALLOWED"),
        "the allowed host is reachable",
    ),
    (
        ("lxc_network_enforcement_deny", "MXC_NET_BLOCKED"),
        "default block",
    ),
    (
        ("lxc_network_deny_precedence_control", "MXC_NET_ALLOWED"),
        "allow everything reaches the host",
    ),
    (
        ("lxc_network_deny_precedence_overlap", "MXC_NET_BLOCKED"),
        "the block wins",
    ),
    (
        ("lxc_network_ga_egress_allow", "MXC_NET_ALLOWED"),
        "allowed CIDR and port",
    ),
    (
        ("lxc_network_ga_egress_deny.json", "MXC_NET_BLOCKED"),
        "default deny",
    ),
    (
        ("lxc_network_ga_egress_deny_rule", "MXC_NET_BLOCKED"),
        "the deny rule",
    ),
    (
        ("lxc_network_ga_egress_dns_allowed", "MXC_NET_ALLOWED"),
        "the allowed resolver",
    ),
    (
        ("lxc_network_ga_egress_dns_denied", "MXC_NET_BLOCKED"),
        "no DNS exemption in 0.8",
    ),
    (
        ("lxc_network_ga_egress_except_excluded", "MXC_NET_BLOCKED"),
        "the except carve-out",
    ),
    (
        ("lxc_network_ga_egress_except_sibling", "MXC_NET_ALLOWED"),
        "a sibling of the carve-out",
    ),
    (
        ("lxc_network_ga_egress_wrong_port", "MXC_NET_BLOCKED"),
        "the wrong port",
    ),
    (
        ("lxc_network_v07_dns_exemption", "MXC_NET_ALLOWED"),
        "the LXC pre-0.8 DNS exemption",
    ),
    (("lxc_network_proxy.json", "PROXY_OK"), "the proxy fetches"),
    (
        ("lxc_network_proxy_hostname", "PROXY_OK"),
        "the pinned proxy fetches",
    ),
    (
        ("lxc_network_dualstack_hostname", "BANNER-443"),
        "the allowed name is reachable",
    ),
    (
        ("lxc_network_ipv6_cidr", "BANNER-443"),
        "the allowed range is reachable",
    ),
    (
        ("lxc_network_test", "BANNER-443"),
        "the allowed name is reachable",
    ),
    (
        ("bubblewrap_network_directional_cidr", "ALLOWED_DEST_OK"),
        "the allowed /32",
    ),
    (
        ("bubblewrap_network_directional_except", "INCLUDED_DEST_OK"),
        "the allowed range",
    ),
    (
        ("bubblewrap_network_firewall_cidr", "ALLOWED_DEST_OK"),
        "the allowed /32",
    ),
    (
        ("bubblewrap_network_firewall_denylist", "DENY_WINS_OK"),
        "deny wins",
    ),
    (
        (
            "bubblewrap_network_directional_proxy",
            "PARITY_PROXIED_FETCH_OK",
        ),
        "the proxy fetches",
    ),
];
