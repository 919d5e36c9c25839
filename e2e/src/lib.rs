//! End-to-end harness: a private containerd (its own root, state, socket and configuration,
//! written by the test) running the shim built by this workspace, images built from Debian's
//! `busybox-static`, and test hosts in network namespaces the test creates. Everything it
//! creates is removed when the harness is dropped.

pub mod bounded;
pub mod cluster;
pub mod image;
pub mod testhost;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the e2e suite runs as root (it starts containerd)"
    );
}

/// Where cargo put the workspace's binaries (the shim among them).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    // target/<profile>/deps/<test> → target/<profile>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    let shim = dir.join("containerd-shim-agentcell-v2");
    assert!(
        shim.exists(),
        "{} is missing: build the workspace's binaries first (cargo test --workspace builds them)",
        shim.display()
    );
    dir
}

/// A containerd of the test's own.
pub struct Containerd {
    pub dir: PathBuf,
    pub sock: PathBuf,
    pub namespace: String,
    child: Option<Child>,
    cri: bool,
    /// containerd's extra environment (inherited by the shims it starts).
    env: Vec<(String, String)>,
}

#[derive(Debug)]
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Containerd {
    /// Starts containerd with the CRI plugin off (the `ctr` path).
    pub fn start(tag: &str) -> Self {
        Self::start_with(tag, false, None)
    }

    /// Starts containerd with its CRI plugin, the bridge CNI from containernetworking-plugins,
    /// and the `agentcell` and `agentcell-vm` runtimes passing `agentcell.dev/*` pod
    /// annotations through.
    pub fn start_cri(tag: &str) -> Self {
        Self::start_with(tag, true, None)
    }

    /// As `start_cri`, but the configuration has no `agentcell` runtime: `install` gets the
    /// directory (config.toml in it) and must add the runtime before containerd starts (the
    /// node installer's test); it returns environment variables for containerd (and so for the
    /// shims), such as an `AGENTCELL_VM_DIR` naming where it put the micro-VM assets.
    pub fn start_cri_installed(
        tag: &str,
        install: impl FnOnce(&Path) -> Vec<(String, String)>,
    ) -> Self {
        Self::start_with(tag, true, Some(Box::new(install)))
    }

    #[allow(clippy::type_complexity)]
    fn start_with(
        tag: &str,
        cri: bool,
        install: Option<Box<dyn FnOnce(&Path) -> Vec<(String, String)> + '_>>,
    ) -> Self {
        require_root();
        let dir = PathBuf::from(format!(
            "/var/tmp/agentcell-e2e-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("containerd.sock");
        let mut config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n[grpc]\n  address = \"{s}\"\n[ttrpc]\n  address = \"{d}/ttrpc.sock\"\n",
            d = dir.display(),
            s = sock.display()
        );
        if cri {
            let cni = dir.join("cni");
            std::fs::create_dir_all(&cni).unwrap();
            let subnet = cri_subnet(tag);
            std::fs::write(
                cni.join("10-e2e.conflist"),
                format!(
                    r#"{{"cniVersion":"0.4.0","name":"e2e-{tag}","plugins":[{{"type":"bridge","bridge":"{br}","isGateway":true,"ipMasq":true,"ipam":{{"type":"host-local","ranges":[[{{"subnet":"{subnet}"}}]],"routes":[{{"dst":"0.0.0.0/0"}}],"dataDir":"{d}/ipam"}}}},{{"type":"loopback"}}]}}"#,
                    br = bridge_name(tag),
                    d = dir.display(),
                ),
            )
            .unwrap();
            config.push_str(&format!(
                r#"[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
{agentcell}  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
"#,
                pause = image::PAUSE,
                cni = cni.display(),
                agentcell = if install.is_some() {
                    ""
                } else {
                    "    [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.agentcell]\n      runtime_type = \"io.containerd.agentcell.v2\"\n      pod_annotations = [\"agentcell.dev/*\"]\n    [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.agentcell-vm]\n      runtime_type = \"io.containerd.agentcell-vm.v2\"\n      pod_annotations = [\"agentcell.dev/*\"]\n"
                }
            ));
        } else {
            config.push_str("disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n");
            // `disabled_plugins` must precede the tables: rewrite in order.
            config = format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{s}\"\n[ttrpc]\n  address = \"{d}/ttrpc.sock\"\n",
                d = dir.display(),
                s = sock.display()
            );
        }
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let env = match install {
            Some(install) => install(&dir),
            None => Vec::new(),
        };
        let mut c = Self {
            dir,
            sock,
            // Per instance and test process: the shim keys its state root and the containers'
            // cgroups by namespace, so two suites running at once on one host (a developer's
            // and CI's) must not share container names.
            namespace: if cri {
                "k8s.io".into()
            } else {
                format!("e2e-{tag}-{}", std::process::id())
            },
            child: None,
            cri,
            env,
        };
        c.launch();
        c
    }

    /// Starts (or restarts) the containerd process.
    pub fn launch(&mut self) {
        let path = format!(
            "{}:{}",
            bin_dir().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("containerd.log"))
            .unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .env("PATH", path)
            .env("AGENTCELL_LOG", "debug,libcgroups=error,libcontainer=warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd (apt-get install containerd)");
        self.child = Some(child);
        let t0 = Instant::now();
        while self.ctr(&["version"]).code != 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "containerd did not come up: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops containerd (SIGTERM) without touching what it runs.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// `ctr` against this containerd, in its namespace; bounded by [`bounded::step_limit`].
    pub fn ctr(&self, args: &[&str]) -> Ran {
        self.ctr_within(args, None, bounded::step_limit())
    }

    /// `ctr` with stdin fed from `input`.
    pub fn ctr_input(&self, args: &[&str], input: &str) -> Ran {
        self.ctr_within(args, Some(input.as_bytes()), bounded::step_limit())
    }

    /// `ctr` bounded by `limit`: past it, the test fails with what ctr printed, the end of
    /// containerd's log (the shim logs into it) and where container processes are blocked.
    pub fn ctr_within(&self, args: &[&str], input: Option<&[u8]>, limit: Duration) -> Ran {
        let mut cmd = Command::new("ctr");
        cmd.arg("-a")
            .arg(&self.sock)
            .args(["-n", &self.namespace])
            .args(args);
        match bounded::output(&mut cmd, input, limit) {
            Ok(o) => Ran::from(o),
            Err(e) => {
                let log = self.log();
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!(
                    "{e}
--- where container processes wait ---
{}--- containerd log (end) ---
{}",
                    bounded::stuck_processes(),
                    tail.join("\n")
                )
            }
        }
    }

    /// The socket the shim of container `id` (or of the pod it groups under) listens on, as
    /// containerd-shim names it: a hash of containerd's address, the namespace and the id.
    pub fn shim_socket(&self, id: &str) -> PathBuf {
        use sha2::Digest;
        let key = self.sock.join(&self.namespace).join(id);
        let hash = sha2::Sha256::digest(key.to_string_lossy().as_bytes());
        Path::new("/run/containerd/s").join(hex::encode(hash))
    }

    /// Waits (up to ~10 s) until `ctr tasks ls` shows a stopped task; whether it did.
    pub fn wait_stopped(&self) -> bool {
        for _ in 0..200 {
            if self.ctr(&["tasks", "ls"]).stdout.contains("STOPPED") {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Pids of the shims serving this containerd.
    pub fn shim_pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            // A container's init is a fork of its shim (same command line) in a new PID
            // namespace: count only processes of the host's.
            let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
            let host_pidns = status
                .lines()
                .find(|l| l.starts_with("NSpid:"))
                .is_some_and(|l| l.split_whitespace().count() == 2);
            if host_pidns
                && (cmd.contains("containerd-shim-agentcell-v2")
                    || cmd.contains("containerd-shim-agentcell-vm-v2"))
                && cmd.contains(&*self.sock.to_string_lossy())
            {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Tasks first, while containerd can still delete them.
        if self.child.is_some() && !self.cri {
            for line in self.ctr(&["tasks", "ls", "-q"]).stdout.lines() {
                let _ = self.ctr(&["tasks", "kill", "-a", "-s", "SIGKILL", line]);
                let _ = self.ctr(&["tasks", "delete", "-f", line]);
            }
            for line in self.ctr(&["containers", "ls", "-q"]).stdout.lines() {
                let _ = self.ctr(&["containers", "delete", line]);
            }
        }
        self.stop();
        for pid in self.shim_pids() {
            // SAFETY: signalling a shim of this test's containerd.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // Whatever is still mounted under the test's directory (snapshots, rootfs).
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&*self.dir.to_string_lossy()))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
        if self.cri {
            let _ = Command::new("ip")
                .args(["link", "del", &bridge_name_of(&self.dir)])
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn bridge_name(tag: &str) -> String {
    let mut h: u32 = 2166136261;
    for b in tag.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(16777619);
    }
    format!("acbr{:06x}", (h ^ std::process::id()) & 0xff_ffff)
}

fn bridge_name_of(dir: &Path) -> String {
    let name = dir.file_name().unwrap().to_string_lossy();
    let tag = name
        .trim_start_matches("agentcell-e2e-")
        .rsplit_once('-')
        .map_or("", |(t, _)| t);
    bridge_name(tag)
}

/// A /24 of 198.18.0.0/15 for the pods of one test (test hosts use 198.18.1-99).
fn cri_subnet(tag: &str) -> String {
    let mut h: u32 = 0;
    for b in tag.bytes() {
        h = h.wrapping_mul(31).wrapping_add(u32::from(b));
    }
    format!("198.19.{}.0/24", 1 + (h ^ std::process::id()) % 120)
}
