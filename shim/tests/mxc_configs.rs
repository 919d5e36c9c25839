//! MXC's own Linux end-to-end configs run through `agentcell exec` with their fixtures made as MXC's
//! scripts make them (the `/mnt/...` paths are rewritten to a fixture directory, as MXC's LXC
//! scripts do with `mktemp`):
//!
//! - the retired 0.6-0.8 corpus (`../shared/mxc-conformance/configs/bubblewrap_*`, `lxc_*`) under
//!   `--mxc-release 0.8`, exactly as before MXC 1.0: none may print a failure sentinel; the
//!   `_rejected`/`_unsupported` ones must exit 125;
//! - MXC 1.0's configs (`../shared/mxc-conformance-1.0/configs/`) with MXC 1.0's verdicts, each as
//!   the table of that folder's README says (markers that must appear, outcomes, refusals with
//!   their message; the retired ones refused, and run migrated where MXC's script verdict applies
//!   to a migrated copy).
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

fn configs_dir_1_0() -> PathBuf {
    let dir = std::env::var_os("AGENTCELL_MXC_CONFORMANCE_1_0")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/mxc-conformance-1.0")
        });
    assert!(
        dir.join("MXC-1.0-NOTES.md").is_file(),
        "MXC 1.0 conformance data not found at {} (set AGENTCELL_MXC_CONFORMANCE_1_0)",
        dir.display()
    );
    dir.join("configs")
}

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
elif args[0] == "udp":
    # `echo X | nc -u -w 3 HOST PORT`: the datagram's answer, with what was sent.
    line = sys.stdin.readline().strip()
    try:
        s = socket.socket(socket.AF_INET6 if ":" in args[1] else socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(3); s.sendto(line.encode(), (args[1], int(args[2]))); data = s.recv(512)
    except OSError:
        sys.exit(1)
    if b"BANNER-" not in data:
        sys.exit(1)
    print(line, data.decode(errors="replace").strip())
    sys.exit(0)
elif args[0] == "icmp":
    # `ping -c 1 HOST`: an ICMP echo over a datagram socket.
    v6 = ":" in args[1]
    try:
        s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM,
                          socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
        s.settimeout(3)
        s.sendto(bytes([128 if v6 else 8, 0, 0, 0, 0, 1, 0, 1]) + b"agentcell", (args[1], 0))
        data, _ = s.recvfrom(128)
    except OSError:
        sys.exit(1)
    sys.exit(0 if data[0] in (0, 129) else 1)
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
ORIGIN = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nMXC_PROXY_SENTINEL MXC_TEST_ORIGIN_OK BANNER-PROXY\n"
def handle(c):
    c.settimeout(1.0)
    try:
        req = c.recv(4096)
        if req.startswith(b"CONNECT "):
            # A tunnel to MXC's test origin: whatever is asked through it gets the origin's answer.
            c.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            c.settimeout(10.0)
            c.recv(4096)
        c.sendall(ORIGIN)
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
    // Only a bare `bash -c "exec 3<>/dev/tcp/H/P"` (a connect test); a script that goes on to talk
    // over the descriptor keeps it.
    let dev_tcp =
        regex::Regex::new(r#"bash -c \\?"exec 3<>/dev/tcp/([^/"\\;\s]+)/([^"\\;\s]+)\\?""#)
            .unwrap();
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
    let out = dns.replace_all(&out, |c: &regex::Captures| {
        format!("{probe} dns {}", c.get(1).map_or("", |m| m.as_str()))
    });
    let udp = regex::Regex::new(r"nc -u(?:\s+-w\s+[0-9]+)?\s+([0-9a-f.:]+)\s+([0-9]+)").unwrap();
    let out = udp.replace_all(&out, |c: &regex::Captures| {
        format!("{probe} udp {} {}", &c[1], &c[2])
    });
    let ping = regex::Regex::new(r"ping(?:\s+-[cW]\s+[0-9]+)*\s+([0-9a-f.:]+)").unwrap();
    ping.replace_all(&out, |c: &regex::Captures| {
        format!("{probe} icmp {}", &c[1])
    })
    .into_owned()
}

/// The two corpora use the same test hosts: one at a time.
static TEST_HOSTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn mxc_linux_configs_run_without_a_leak() {
    require_root();
    let _hosts = TEST_HOSTS.lock().unwrap_or_else(|p| p.into_inner());
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
            // The retired corpus, read as MXC 0.8 read it.
            .args([
                "exec",
                "--mxc-release",
                "0.8",
                "--allow-testing-features",
                cfg.to_str().unwrap(),
            ])
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

/// What MXC 1.0's scripts expect of one config of `../shared/mxc-conformance-1.0/configs` (that
/// folder's README, table "Expected outcome of the added configs").
#[derive(Debug, Clone)]
enum Want {
    /// Declares 0.7/0.8: refused (retired), the workload never starts.
    Retired,
    /// Retired, and MXC's script verdict applies to a migrated copy: refused as is, and the
    /// output of `agentcell policy migrate` run gives this marker.
    RetiredThenMigrated(&'static str),
    /// Refused (exit 125) with this message fragment.
    Refused(&'static str),
    /// Runs: exit code, markers that must appear, strings that must not, and whether the generic
    /// failure sentinels apply.
    Runs {
        code: i32,
        markers: Vec<String>,
        absent: Vec<String>,
        sentinels: bool,
    },
    /// Runs to its deadline (exit 124); nothing it started survives.
    Deadline {
        absent: &'static str,
        survivor: &'static str,
    },
    /// The network provider is lost mid-run: here the runner that owns the fence is killed; the
    /// workload must not outlive it.
    ProviderLoss {
        started: &'static str,
        survivor: &'static str,
    },
    /// Cannot be run faithfully here (the reason); it must still be accepted and run.
    NotFaithful(&'static str),
}

const DEFAULT_PATH: &str = "PATH=[/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin]";

/// Configs whose name says "rejected" from a 0.9-era script, and that MXC 1.0's rules accept (the
/// policy crate's conformance test holds the same list, with the reasons).
const STALE_REJECTED: &[&str] = &[
    "bubblewrap_network_localnet_omitted_rejected.json",
    "bubblewrap_network_localnet_shared_rejected.json",
    "bubblewrap_network_hostrules_unenforced_rejected.json",
];

fn runs(markers: &[&str], absent: &[&str], sentinels: bool) -> Want {
    Want::Runs {
        code: 0,
        markers: markers.iter().map(|s| s.to_string()).collect(),
        absent: absent.iter().map(|s| s.to_string()).collect(),
        sentinels,
    }
}

fn want_1_0(name: &str, text: &str) -> Want {
    let net = |allowed: bool| {
        let (yes, no) = if allowed {
            ("MXC_NET_ALLOWED", "MXC_NET_BLOCKED")
        } else {
            ("MXC_NET_BLOCKED", "MXC_NET_ALLOWED")
        };
        runs(&[yes], &[no], true)
    };
    let stem = name.trim_end_matches(".json");
    let leak = if name.starts_with("lxc_") {
        "LXC_HOST_ENV_LEAKED"
    } else {
        "BWRAP_HOST_ENV_LEAKED"
    };
    let env = |markers: &[&str], absent: &[&str]| {
        let mut a = absent.to_vec();
        a.push(leak);
        runs(markers, &a, false)
    };
    match stem {
        "lxc_network_ga_egress_allow"
        | "lxc_network_ga_egress_any_icmp"
        | "lxc_network_ga_egress_any_tcp"
        | "lxc_network_ga_egress_any_udp" => return Want::RetiredThenMigrated("MXC_NET_ALLOWED"),
        "lxc_network_ga_egress_icmp_denied" | "lxc_network_ga_egress_wrong_port" => {
            return Want::RetiredThenMigrated("MXC_NET_BLOCKED");
        }
        _ => {}
    }
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    let declared = v["version"].as_str().unwrap_or_default();
    if declared.starts_with("0.7.") || declared.starts_with("0.8.") {
        return Want::Retired;
    }
    match stem {
        "bubblewrap_network_block" => runs(&["NETWORK_BLOCKED_OK"], &[], true),
        "bubblewrap_network_directional_cidr" => runs(
            &[
                "ALLOWED_DEST_OK",
                "DENIED_DEST_BLOCKED_OK",
                "HOST_LOOPBACK_BLOCKED_OK",
                "LOOPBACK_EXEMPT_OK",
                "CAP_NET_ADMIN_DROPPED_OK",
            ],
            &[],
            true,
        ),
        "bubblewrap_network_directional_except" => runs(
            &[
                "INCLUDED_DEST_OK",
                "EXCLUDED_DEST_BLOCKED_OK",
                "HOST_LOOPBACK_BLOCKED_OK",
            ],
            &[],
            true,
        ),
        "bubblewrap_network_directional_ipv6_icmp" => runs(
            &["V6_ICMP_RULES_INSTALLED_OK", "CAP_NET_ADMIN_DROPPED_OK"],
            &[],
            true,
        ),
        "bubblewrap_network_localnet_implicit_deny" => {
            runs(&["LOCALNET_IMPLICIT_DENY_OK"], &[], true)
        }
        "bubblewrap_network_proxy_connect" => runs(
            &[
                "CONNECT_DIRECT_BLOCKED_OK",
                "CONNECT_TUNNEL_ESTABLISHED_OK",
                "CONNECT_TUNNEL_BODY_OK",
            ],
            &[],
            true,
        ),
        "bubblewrap_network_proxy_egress_denied" => runs(
            &[
                "CONTROL_PROXY_REACHABLE_OK",
                "DIRECT_EGRESS_BLOCKED_OK",
                "LOOPBACK_EXEMPT_OK",
                "CAP_NET_ADMIN_DROPPED_OK",
                "TAMPER_REFUSED_OK",
                "TAMPER_INEFFECTIVE_OK",
                "PROXY_STILL_OK",
            ],
            &[],
            true,
        ),
        "bubblewrap_network_proxy_parity_implicit_ingress" => runs(
            &[
                "PARITY_DIRECT_BLOCKED_OK",
                "PARITY_PROXIED_FETCH_OK",
                "PARITY_PROXY_ENV_OK",
                "PARITY_PROXY_REACHABLE_OK",
            ],
            &[],
            true,
        ),
        "bubblewrap_network_dns_stub" => Want::NotFaithful(
            "MXC's bubblewrap points the sandbox's resolv.conf at slirp4netns's DNS forwarder (10.0.2.3) when the host uses a loopback stub resolver; agentcell's sandbox keeps the host's resolv.conf and runs no forwarder (README: differences from MXC)",
        ),
        "bubblewrap_network_directional_ingress_allow_rejected"
        | "bubblewrap_network_localnet_ingress_allow_rejected"
        | "bubblewrap_network_localnet_acknowledged" => {
            Want::Refused("network.ingress.default='allow' is not supported")
        }
        "bubblewrap_network_localnet_hostloopback_allow_rejected" => {
            Want::Refused("network.ingress.hostLoopback='allow' is not supported")
        }
        "bubblewrap_network_egress_budget_rejected" => {
            Want::Refused("expands into more than 256 address blocks")
        }
        "bubblewrap_network_firewall_hostname_rejected" => {
            Want::Refused("is not a valid network CIDR")
        }
        "bubblewrap_provider_loss" => Want::ProviderLoss {
            started: "PROVIDER_LOSS_STARTED",
            survivor: "/bin/sleep 985",
        },
        "bubblewrap_teardown_timeout" => Want::Deadline {
            absent: "TEARDOWN_DESCENDANT_LEAKED",
            survivor: "/bin/sleep 987",
        },
        "lxc_timeout" => Want::Deadline {
            absent: "Should not reach here",
            survivor: "sleep 120",
        },
        // The environment's four states (HOME follows process.cwd: the 0.9 spellings give none).
        "bwrap_env_default_block" | "lxc_env_default_block" => env(
            &[
                DEFAULT_PATH,
                "HOME=[/tmp]",
                "TERM=[xterm-256color]",
                "LEAK=[]",
            ],
            &[],
        ),
        "bwrap_env_09_default_block" => env(
            &[DEFAULT_PATH, "HOME=[]", "TERM=[xterm-256color]", "LEAK=[]"],
            &[],
        ),
        "bwrap_env_empty" | "bwrap_env_09_empty" => env(
            &["ENV_PROBE_DONE", "HOME=[]", "LEAK=[]"],
            &["TERM=[xterm-256color]"],
        ),
        "lxc_env_empty" => env(&["ENV_PROBE_DONE", "HOME=[]", "TERM=[]", "LEAK=[]"], &[]),
        "bwrap_env_inherit" | "lxc_env_inherit" => env(
            &[DEFAULT_PATH, "HOME=[/tmp]", "FOO=[bar]", "TERM=[vt100]"],
            &[],
        ),
        "bwrap_env_09_inherit" => env(&[DEFAULT_PATH, "HOME=[]", "FOO=[bar]", "TERM=[vt100]"], &[]),
        "bwrap_env_no_cwd" | "bwrap_env_09_no_cwd" | "lxc_env_no_cwd" => {
            env(&["HOME=[]", DEFAULT_PATH, "LEAK=[]"], &[])
        }
        "bwrap_env_verbatim" | "bwrap_env_09_verbatim" => env(
            &[
                "FOO=[bar]",
                "HOME=[]",
                "PATH=[/mxc-probe/bin:/usr/bin:/bin]",
            ],
            &["TERM=[xterm-256color]", DEFAULT_PATH],
        ),
        "lxc_env_verbatim" => env(
            &[
                "FOO=[bar]",
                "HOME=[]",
                "TERM=[]",
                "PATH=[/mxc-probe/bin:/usr/bin:/bin]",
            ],
            &[DEFAULT_PATH],
        ),
        "lxc_network_ga_egress_any_port_match"
        | "lxc_network_ga_egress_any_udp_unscoped"
        | "lxc_network_ga_egress_dns_allowed"
        | "lxc_network_ga_egress_except_shadow_control"
        | "lxc_network_ga_egress_except_sibling"
        | "lxc_network_ga_egress_icmp_allowed"
        | "lxc_network_ga_egress_port_range_inside" => net(true),
        "lxc_network_ga_egress_any_udp_wrong_port"
        | "lxc_network_ga_egress_any_wrong_port"
        | "lxc_network_ga_egress_deny_rule"
        | "lxc_network_ga_egress_dns_denied"
        | "lxc_network_ga_egress_except_excluded"
        | "lxc_network_ga_egress_except_shadow"
        | "lxc_network_ga_egress_icmp_no_tcp"
        | "lxc_network_ga_egress_port_range_above"
        | "lxc_network_ga_egress_port_range_outside" => net(false),
        _ if STALE_REJECTED.contains(&name) => {
            // Accepted by MXC 1.0's rules: it runs (its own echo is the whole workload).
            runs(&[], &[], false)
        }
        _ => {
            // "Expected accepted; look for the config's own *_OK markers".
            let cmd = v["process"]["commandLine"].as_str().unwrap_or_default();
            let ok = regex::Regex::new(r"\b[A-Z][A-Z0-9_]*_OK\b").unwrap();
            let markers: Vec<String> = ok.find_iter(cmd).map(|m| m.as_str().to_string()).collect();
            Want::Runs {
                code: 0,
                markers,
                absent: vec![],
                sentinels: true,
            }
        }
    }
}

/// MXC 1.0's destinations: `203.0.113.0/24` (the LXC egress scripts' peer namespace: `.2` serves
/// tcp/443 and udp/8053, `.53` and `.54` DNS) is test host 50 (`.2`, and `.3` for `.54`).
fn fill_1_0(text: &str, fixture: &Path) -> String {
    let mut t = text.replace("/mnt/", &format!("{}/mnt/", fixture.display()));
    let peer = regex::Regex::new(r"203\.0\.113\.([0-9]+)").unwrap();
    t = peer
        .replace_all(&t, |c: &regex::Captures| {
            let host = match &c[1] {
                "0" => "0",
                "54" | "7" => "3",
                _ => "2",
            };
            format!("198.18.50.{host}")
        })
        .into_owned();
    for (mxc, ours, _) in DESTINATIONS {
        t = t.replace(mxc, ours);
    }
    t.replace("{{LISTENER_PORT}}", &LISTENER_PORT.to_string())
        .replace("{{ALLOWED_PORT}}", &ALLOWED_PORT.to_string())
        .replace("{{CONTROL_PORT}}", &CONTROL_PORT.to_string())
        .replace("{{PROXY_HOST}}", "127.0.0.1")
        .replace("{{PROXY_PORT}}", &LOOPBACK_PROXY_PORT.to_string())
        .replace("{{TARGET_IP}}", "198.18.40.2")
        .replace("{{TARGET_PORT}}", "443")
}

const CONTROL_PORT: u16 = 18082;
const PORTS_1_0: &[u16] = &[53, 80, 443, 444, 8053, 8054, ALLOWED_PORT, CONTROL_PORT];

/// Whether a process whose command line contains `needle` is alive.
fn alive(needle: &str) -> bool {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .any(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(needle)
                })
                .unwrap_or(false)
        })
}

fn gone_within(needle: &str, secs: u64) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed().as_secs() < secs {
        if !alive(needle) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    !alive(needle)
}

#[test]
fn mxc_1_0_linux_configs_run_as_mxcs_scripts_expect() {
    require_root();
    let _hosts = TEST_HOSTS.lock().unwrap_or_else(|p| p.into_inner());
    let hosts: Vec<TestHost> = [40u8, 41, 42, 43, 44, 45, 46, 50]
        .iter()
        .map(|k| TestHost::new(*k, PORTS_1_0))
        .collect();
    let _loopback_proxy = Server::start(
        None,
        PROXY_STUB,
        &["127.0.0.1", &LOOPBACK_PROXY_PORT.to_string()],
    );
    let _host_listener = Server::start(None, HOST_LISTENER, &[&LISTENER_PORT.to_string()]);
    let shared = Fixture::new("mxc10-shared");
    let probe = shared.write("probe/acprobe", PROBE);
    std::fs::set_permissions(&probe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut hosts_file = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    for (ip, name) in HOSTS {
        hosts_file.push_str(&format!("{ip} {name}\n"));
    }
    let hosts_path = shared.write("hosts", &hosts_file);
    let host_netns = std::fs::read_link("/proc/self/ns/net")
        .unwrap()
        .display()
        .to_string();

    let mut names: Vec<String> = std::fs::read_dir(configs_dir_1_0())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    let mut listing = Vec::new();
    let mut failures = Vec::new();
    // What to run: the config's document, rewritten (destinations, probes, the probe's directory).
    let prepare = |doc: &mut serde_json::Value| {
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
    };
    let command = |cfg: &Path, leak: Option<&str>| {
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount --bind "$1" /etc/hosts && shift && exec "$@""#)
            .arg("sh")
            .arg(&hosts_path)
            .arg(env!("CARGO_BIN_EXE_agentcell"))
            .args(["exec", cfg.to_str().unwrap()]);
        if let Some(v) = leak {
            // The host value MXC's env scripts export: it must never reach the workload.
            c.env("MXC_LEAK_PROBE", v);
        }
        c
    };
    let ran = |c: &mut Command| {
        let out = c.output().unwrap();
        common::Ran {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    };
    for name in &names {
        let text = std::fs::read_to_string(configs_dir_1_0().join(name)).unwrap();
        let want = want_1_0(name, &text);
        let f = Fixture::new(&format!(
            "mxc10-{}",
            name.trim_end_matches(".json").replace('_', "-")
        ));
        make_fixtures(&f);
        let filled = fill_1_0(&text, &f.dir);
        let mut doc: serde_json::Value = serde_json::from_str(&filled).unwrap();
        prepare(&mut doc);
        let cfg = f.write("config.json", &doc.to_string());
        let leak = if name.contains("env_") {
            Some(if name.starts_with("lxc_") {
                "LXC_HOST_ENV_LEAKED"
            } else {
                "BWRAP_HOST_ENV_LEAKED"
            })
        } else {
            None
        };
        let mut fail = |why: String| failures.push(format!("{name}: {why}\n{doc}"));
        let verdict = match &want {
            Want::Retired | Want::RetiredThenMigrated(_) => {
                let r = ran(&mut command(&cfg, None));
                let out = format!("{}{}", r.stdout, r.stderr);
                if r.code != 125
                    || !r.stderr.contains("is a retired MXC contract version")
                    || !r.stderr.contains("agentcell policy migrate")
                    || !r.stdout.is_empty()
                {
                    fail(format!(
                        "a retired config was not refused as such (exit {})\n{out}",
                        r.code
                    ));
                }
                for s in ["MXC_WORKLOAD_RAN", "MXC_NET_ALLOWED", "MXC_NET_BLOCKED"] {
                    if out.contains(s) {
                        fail(format!("the workload of a refused config ran: {s}"));
                    }
                }
                match &want {
                    Want::RetiredThenMigrated(marker) => {
                        // `policy migrate` on the (rewritten) retired config, then run it.
                        let src = f.write("retired.json", &filled);
                        let m = Command::new(env!("CARGO_BIN_EXE_agentcell"))
                            .args(["policy", "migrate", src.to_str().unwrap()])
                            .output()
                            .unwrap();
                        if !m.status.success() {
                            fail(format!(
                                "migrate failed: {}",
                                String::from_utf8_lossy(&m.stderr)
                            ));
                            "refused; migrate FAILED".to_string()
                        } else {
                            let mut mdoc: serde_json::Value =
                                serde_json::from_slice(&m.stdout).unwrap();
                            prepare(&mut mdoc);
                            let mcfg = f.write("migrated.json", &mdoc.to_string());
                            let r = ran(&mut command(&mcfg, None));
                            if r.code != 0 || !r.stdout.contains(marker) {
                                fail(format!(
                                    "migrated copy: exit {}, no {marker}\n{}{}",
                                    r.code, r.stdout, r.stderr
                                ));
                            }
                            format!("refused (retired); migrated copy: {marker}")
                        }
                    }
                    _ => "refused (retired)".to_string(),
                }
            }
            Want::Refused(fragment) => {
                let r = ran(&mut command(&cfg, None));
                if r.code != 125
                    || !r.stderr.contains(fragment)
                    || r.stdout.contains("SHOULD_NOT_RUN")
                    || r.stdout.contains("_RAN")
                {
                    fail(format!(
                        "expected a refusal with {fragment:?}: exit {}\n{}{}",
                        r.code, r.stdout, r.stderr
                    ));
                }
                format!("refused: {fragment}")
            }
            Want::Runs {
                code,
                markers,
                absent,
                sentinels,
            } => {
                let r = ran(&mut command(&cfg, leak));
                if r.code != *code {
                    fail(format!(
                        "exit {} (want {code})\n{}{}",
                        r.code, r.stdout, r.stderr
                    ));
                }
                for m in markers {
                    if !r.stdout.contains(m.as_str()) {
                        fail(format!("no {m} in\n{}{}", r.stdout, r.stderr));
                    }
                }
                for a in absent {
                    if r.stdout.contains(a.as_str()) {
                        fail(format!("printed {a}\n{}", r.stdout));
                    }
                }
                if *sentinels
                    && let Some(s) = FAILURE_SENTINELS.iter().find(|s| r.stdout.contains(*s))
                {
                    fail(format!("printed {s}\n{}", r.stdout));
                }
                if let Some(ns) = r
                    .stdout
                    .lines()
                    .find_map(|l| l.strip_prefix("SANDBOX_NETNS="))
                    && ns.trim() == host_netns
                {
                    fail("ran in the host's network namespace".into());
                }
                if STALE_REJECTED.contains(&name.as_str()) {
                    "accepted by MXC 1.0's rules (the name's 0.9-era refusal is superseded); ran"
                        .to_string()
                } else {
                    format!("ran: exit {}, {}", r.code, markers.join(" "))
                }
            }
            Want::Deadline { absent, survivor } => {
                let r = ran(&mut command(&cfg, None));
                if r.code != 124 || r.stdout.contains(absent) {
                    fail(format!(
                        "exit {} (want 124)\n{}{}",
                        r.code, r.stdout, r.stderr
                    ));
                }
                if !gone_within(survivor, 10) {
                    fail(format!("{survivor} survived the deadline"));
                }
                "killed at its deadline (exit 124); nothing survived".to_string()
            }
            Want::ProviderLoss { started, survivor } => {
                let mut child = command(&cfg, None)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                let mut line = String::new();
                let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
                std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
                if line.trim() != *started {
                    fail(format!("printed {line:?} first"));
                }
                // The runner (it owns the sandbox's network) disappears.
                // SAFETY: kill on our own child's pid.
                unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
                let _ = child.wait();
                if !gone_within(survivor, 15) {
                    fail(format!("the workload ({survivor}) outlived its runner"));
                }
                "runner killed mid-run; the workload did not outlive it".to_string()
            }
            Want::NotFaithful(why) => {
                let r = ran(&mut command(&cfg, None));
                if r.code != 0 {
                    fail(format!("exit {}\n{}{}", r.code, r.stdout, r.stderr));
                }
                format!("accepted and ran; not checked faithfully: {why}")
            }
        };
        listing.push(format!("{name:62} {verdict}"));
    }
    drop(hosts);
    eprintln!(
        "MXC 1.0 configs ({}):\n  {}",
        names.len(),
        listing.join("\n  ")
    );
    assert_eq!(names.len(), 91, "the README's 91 configs");
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
