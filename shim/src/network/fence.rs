//! Installing a ruleset into a network namespace (given by path: a sandbox's own, or a pod's
//! from CNI), through nftables' JSON interface (`nft -j -f -` run inside that namespace).

use std::io::Write as _;
use std::os::fd::AsRawFd as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

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
pub fn install(netns: &Path, ruleset: &Value) -> Result<(), FenceError> {
    nft_in(netns, &["-j", "-f", "-"], Some(&ruleset.to_string())).map(|_| ())
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
            r#"{"version":"0.8.0-alpha","network":{"egress":{"default":"deny",
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
        install(&ns.path(), &rs).expect("the kernel accepts the ruleset");
        // Installing again replaces the table rather than duplicating its rules.
        install(&ns.path(), &rs).expect("idempotent");
        let listed = nft_in(&ns.path(), &["-j", "list", "ruleset"], None).unwrap();
        let v: Value = serde_json::from_str(&listed).unwrap();
        let rules = v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o.get("rule").is_some())
            .count();
        let expected = rs["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["add"].get("rule").is_some())
            .count();
        assert_eq!(rules, expected, "{listed}");
        assert!(listed.contains("egress-drop"));
        // The host's own namespace is untouched.
        let host = nft_in(Path::new("/proc/self/ns/net"), &["list", "tables"], None).unwrap();
        assert!(!host.contains("table inet agentcell"), "{host}");
    }
}
