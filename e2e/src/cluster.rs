//! The real single-node cluster of `scripts/cluster.sh` (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, kubelet built from upstream sources; its own
//! containerd): `kubectl` and `helm` against it, JSON reads and waits. Used by
//! `tests/cluster.rs` and the benchmarks' helpers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The cluster's state directory (`S` in scripts/cluster.sh).
pub const STATE: &str = "/var/lib/agentcell-cluster";
pub const NODE: &str = "agentcell-node";

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub struct Cluster {
    pub kubeconfig: String,
    /// The directory of the cluster's kubectl (and the other components).
    pub bin: String,
    pub helm: String,
}

#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn ok(&self) -> bool {
        self.code == 0
    }
    /// stdout, or a panic with both streams.
    pub fn expect(self, what: &str) -> String {
        assert!(
            self.ok(),
            "{what}: exit {}\n{}{}",
            self.code,
            self.stdout,
            self.stderr
        );
        self.stdout
    }
}

/// The limit of one kubectl or helm step: above the longest wait a step asks the server for
/// (`helm install --wait --timeout 10m`), so only a hang reaches it.
const STEP_LIMIT: Duration = Duration::from_secs(15 * 60);

fn run(cmd: &mut Command, input: Option<&str>) -> Out {
    let o = crate::bounded::output(cmd, input.map(str::as_bytes), STEP_LIMIT)
        .unwrap_or_else(|e| panic!("{e}"));
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

impl Cluster {
    /// `scripts/cluster.sh up` (builds what is missing, starts what is not running; harmless
    /// when the cluster is up), with the images made from `bin_dir`'s binaries.
    pub fn up(bin_dir: &Path) -> Self {
        let script = repo().join("scripts/cluster.sh");
        let st = Command::new("bash")
            .arg(&script)
            .arg("up")
            .env("AGENTCELL_CLUSTER_BIN_DIR", bin_dir)
            .status()
            .expect("bash scripts/cluster.sh up");
        assert!(st.success(), "scripts/cluster.sh up failed");
        let env = run(Command::new("bash").arg(&script).arg("env"), None).expect("cluster.sh env");
        let mut kubeconfig = String::new();
        let mut bin = String::new();
        for l in env.lines() {
            if let Some(v) = l.strip_prefix("export KUBECONFIG=") {
                kubeconfig = v.to_owned();
            }
            if let Some(v) = l.strip_prefix("export PATH=") {
                bin = v.split(':').next().unwrap().to_owned();
            }
        }
        assert!(
            !kubeconfig.is_empty() && !bin.is_empty(),
            "cluster.sh env: {env}"
        );
        let helm = std::env::var("AGENTCELL_HELM")
            .unwrap_or_else(|_| "/opt/agentcell-tools/bin/helm".to_owned());
        Cluster {
            kubeconfig,
            bin,
            helm,
        }
    }

    pub fn kubectl_cmd(&self) -> Command {
        let mut c = Command::new(format!("{}/kubectl", self.bin));
        c.env("KUBECONFIG", &self.kubeconfig);
        c
    }

    pub fn kubectl(&self, args: &[&str]) -> Out {
        run(self.kubectl_cmd().args(args), None)
    }

    pub fn kubectl_in(&self, args: &[&str], input: &str) -> Out {
        run(self.kubectl_cmd().args(args), Some(input))
    }

    /// `kubectl apply -f -` of `yaml`; stdout, or a panic with the server's answer.
    pub fn apply(&self, yaml: &str) -> String {
        self.kubectl_in(&["apply", "-f", "-"], yaml)
            .expect("kubectl apply")
    }

    pub fn helm(&self, args: &[&str]) -> Out {
        run(
            Command::new(&self.helm)
                .args(args)
                .env("KUBECONFIG", &self.kubeconfig),
            None,
        )
    }

    /// `kubectl get -o json` of one object, None when it does not exist.
    pub fn get(&self, kind: &str, ns: &str, name: &str) -> Option<Value> {
        let o = self.kubectl(&["get", kind, "-n", ns, name, "-o", "json"]);
        if !o.ok() {
            assert!(
                o.stderr.contains("NotFound"),
                "kubectl get {kind} {name}: {}",
                o.stderr
            );
            return None;
        }
        Some(serde_json::from_str(&o.stdout).unwrap())
    }

    /// The items of `kubectl get KIND -o json` with extra selectors.
    pub fn list(&self, kind: &str, ns: &str, extra: &[&str]) -> Vec<Value> {
        let mut args = vec!["get", kind, "-n", ns, "-o", "json"];
        args.extend_from_slice(extra);
        let v: Value =
            serde_json::from_str(&self.kubectl(&args).expect("kubectl get list")).unwrap();
        v["items"].as_array().cloned().unwrap_or_default()
    }

    /// `kubectl exec` into `pod` (its first container): the command's result. Bounded (two
    /// minutes): an exec stream that never ends fails the stage instead of hanging the suite.
    pub fn exec(&self, ns: &str, pod: &str, script: &str) -> Out {
        let mut c = Command::new("timeout");
        c.arg("120")
            .arg(format!("{}/kubectl", self.bin))
            .env("KUBECONFIG", &self.kubeconfig)
            .args(["exec", "-n", ns, pod, "--", "/bin/sh", "-c", script]);
        run(&mut c, None)
    }

    /// Events of one object, as `type reason: message` lines.
    pub fn events(&self, ns: &str, name: &str) -> Vec<String> {
        self.list(
            "events",
            ns,
            &["--field-selector", &format!("involvedObject.name={name}")],
        )
        .iter()
        .map(|e| {
            format!(
                "{} {}: {}",
                e["type"].as_str().unwrap_or(""),
                e["reason"].as_str().unwrap_or(""),
                e["message"].as_str().unwrap_or("")
            )
        })
        .collect()
    }
}

/// A condition's status (`True`/`False`/`Unknown`) and reason from an object's status.
pub fn condition(obj: &Value, kind: &str) -> Option<(String, String, String)> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or("").to_owned(),
                c["reason"].as_str().unwrap_or("").to_owned(),
                c["message"].as_str().unwrap_or("").to_owned(),
            )
        })
}

/// Polls `f` every 250 ms until it gives Some, or panics after `secs` with `what` and the last
/// state `f` described.
pub fn wait<T>(what: &str, secs: u64, mut f: impl FnMut() -> Result<T, String>) -> T {
    let t0 = Instant::now();
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) => {
                assert!(
                    t0.elapsed() < Duration::from_secs(secs),
                    "{what}: not after {secs} s; last: {last}"
                );
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
