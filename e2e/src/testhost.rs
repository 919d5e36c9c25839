//! Test hosts: network namespaces the test creates (198.18.K.0/24 and fd00:18:K::/64 behind a
//! veth from the host), serving banners over TCP and UDP (a datagram answered with the banner).
//! Reachability is proven by our own banner, never by a bare connect; no test traffic goes
//! anywhere else.

use std::process::{Child, Command};

pub const BANNER_SERVER: &str = r#"
import socket, sys, threading
def serve(port):
    s = socket.socket(socket.AF_INET6); s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port)); s.listen(16)
    while True:
        c, _ = s.accept(); c.sendall(f"BANNER-{port}\n".encode()); c.close()
# UDP: one socket per address, so each answer comes from the address that was asked (a firewall
# tracking the flow drops an answer from another one).
import re, subprocess
addrs = re.findall(r"inet6? ([0-9a-f.:]+)/", subprocess.run(["ip", "-o", "addr", "show", "dev", "eth0", "scope", "global"], capture_output=True, text=True).stdout)
def serve_udp(addr, port):
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, port))
    while True:
        _, peer = s.recvfrom(512); s.sendto(f"BANNER-{port}\n".encode(), peer)
for p in sys.argv[1:]:
    threading.Thread(target=serve, args=(int(p),), daemon=True).start()
    for a in addrs:
        threading.Thread(target=serve_udp, args=(a, int(p)), daemon=True).start()
open("/dev/stdout", "w").write("ready\n")
threading.Event().wait()
"#;

/// A test host: a namespace with a veth to the host (198.18.K.1 and fd00:18:K::1 host side; .2,
/// .3, ::2 and ::3 inside; fd00:18::/32 stays clear of this machine's own fd00::/64), serving
/// banners on the given ports over both families, TCP and UDP.
pub struct TestHost {
    pub ns: String,
    link: String,
    server: Child,
}

impl TestHost {
    pub fn new(k: u8, ports: &[u16]) -> Self {
        let ns = format!("acth-{k}-{}", std::process::id());
        let link = format!("acth{k}h{}", std::process::id() % 10000);
        let ip = |args: &[&str]| {
            assert!(
                Command::new("ip").args(args).status().unwrap().success(),
                "ip {args:?}"
            )
        };
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        ip(&["addr", "add", &format!("198.18.{k}.1/24"), "dev", &link]);
        ip(&["link", "set", &link, "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("198.18.{k}.2/24"),
            "dev",
            "eth0",
        ]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("198.18.{k}.3/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &format!("198.18.{k}.1"),
        ]);
        let (h6, a6, b6, gw6) = (
            format!("fd00:18:{k}::1/64"),
            format!("fd00:18:{k}::2/64"),
            format!("fd00:18:{k}::3/64"),
            format!("fd00:18:{k}::1"),
        );
        ip(&["-6", "addr", "add", &h6, "dev", &link, "nodad"]);
        ip(&["-n", &ns, "-6", "addr", "add", &a6, "dev", "eth0", "nodad"]);
        ip(&["-n", &ns, "-6", "addr", "add", &b6, "dev", "eth0", "nodad"]);
        ip(&["-n", &ns, "-6", "route", "add", "default", "via", &gw6]);
        // Neighbour discovery needs the link-local addresses out of duplicate detection.
        let started = std::time::Instant::now();
        loop {
            let tentative = |args: &[&str]| {
                let out = Command::new("ip").args(args).output().unwrap();
                String::from_utf8_lossy(&out.stdout).contains("tentative")
            };
            if !tentative(&["-6", "addr", "show", "dev", &link])
                && !tentative(&["-n", &ns, "-6", "addr", "show", "dev", "eth0"])
            {
                break;
            }
            assert!(
                started.elapsed().as_secs() < 10,
                "IPv6 addresses stayed tentative"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let mut server = Command::new("ip")
            .args(["netns", "exec", &ns, "python3", "-c", BANNER_SERVER])
            .args(ports.iter().map(|p| p.to_string()))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(server.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "ready");
        Self { ns, link, server }
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.link])
            .status();
    }
}
