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
        assert!(!host.contains("table inet agentcell"), "{host}");
    }
}
