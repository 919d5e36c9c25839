//! The product on a real Kubernetes (root): `scripts/cluster.sh up` (control plane and kubelet
//! built from upstream sources, the cluster's own containerd), then, in order: `helm install`
//! of the chart with `ci/local-values.yaml`; AgentSandboxes from a preset, an inline policy and
//! a ConfigMap, checked from inside their pods; the API server's own verdicts; pools, claims,
//! the scale subresource and an HPA; lifetime, suspension, a policy edit, garbage collection,
//! the Lease and the operator's log; a micro-VM pod; `helm uninstall` restoring the node.
//!
//! The stages depend on each other, so this is one ordered run (`harness = false`): each stage
//! prints `test NAME ... ok|FAILED`, a stage after a failed one it needs is reported failed
//! without running, and the closing line is libtest's. It leaves the cluster up for the next
//! run (`cluster.sh down` stops it) unless AGENTCELL_CLUSTER_DOWN=1, which scripts/test.sh sets. Run it alone under the global lock:
//! `flock /tmp/agentcell-root-tests.lock cargo test -p agentcell-e2e --test cluster`.

use std::collections::BTreeSet;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use agentcell_e2e::cluster::{Cluster, NODE, STATE, condition, repo, wait};
use agentcell_e2e::testhost::TestHost;
use serde_json::{Value, json};

const SYS: &str = "agentcell-system";
const RELEASE: &str = "agentcell";
const NS: &str = "acl-e2e";
const IMAGE: &str = "localhost/agentcell/busybox:dev";
/// The test host of this suite (198.18.90.2 and .3 serve banners on 8080 and 8081).
const HOST_K: u8 = 90;

struct Suite {
    passed: usize,
    failed: Vec<String>,
    started: Instant,
}

impl Suite {
    /// Runs one stage unless a stage it needs failed.
    fn stage(&mut self, name: &str, needs: &[&str], f: impl FnOnce()) -> bool {
        print!("test {name} ... ");
        if let Some(n) = needs.iter().find(|n| self.failed.iter().any(|f| f == *n)) {
            println!("FAILED (not run: {n} failed)");
            self.failed.push(name.to_owned());
            return false;
        }
        println!();
        let t0 = Instant::now();
        let r = std::panic::catch_unwind(AssertUnwindSafe(f));
        let secs = t0.elapsed().as_secs_f64();
        match r {
            Ok(()) => {
                println!("test {name} ... ok ({secs:.1} s)");
                self.passed += 1;
                true
            }
            Err(_) => {
                println!("test {name} ... FAILED ({secs:.1} s)");
                self.failed.push(name.to_owned());
                false
            }
        }
    }

    fn finish(self) -> ! {
        let ok = self.failed.is_empty();
        if !ok {
            println!("\nfailures:");
            for f in &self.failed {
                println!("    {f}");
            }
        }
        println!(
            "\ntest result: {}. {} passed; {} failed; 0 ignored; 0 measured; 0 filtered out; finished in {:.2}s\n",
            if ok { "ok" } else { "FAILED" },
            self.passed,
            self.failed.len(),
            self.started.elapsed().as_secs_f64()
        );
        std::process::exit(if ok { 0 } else { 101 });
    }
}

/// `up (pid N) S seconds` of a daemontools service of the cluster.
fn service_pid(name: &str) -> Option<u32> {
    let out = std::process::Command::new("svstat")
        .arg(format!("{STATE}/sv/{name}"))
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout);
    let i = s.find("(pid ")?;
    s[i + 5..].split(')').next()?.parse().ok()
}

fn nft_tables() -> BTreeSet<String> {
    let out = std::process::Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn containerd_config() -> Vec<u8> {
    std::fs::read(format!("{STATE}/containerd/config.toml"))
        .expect("the cluster's containerd config")
}

fn pod_template(extra_volumes: &str) -> String {
    format!(
        r#"    podTemplate:
      spec:
        terminationGracePeriodSeconds: 1
        containers:
          - name: agent
            image: {IMAGE}
            imagePullPolicy: Never
            command: ["/bin/sleep", "infinity"]
            securityContext:
              allowPrivilegeEscalation: false
              capabilities: {{drop: [ALL]}}
            volumeMounts:
              - {{name: work, mountPath: /work}}
              - {{name: sandbox, mountPath: /sandbox}}
              - {{name: workspace, mountPath: /workspace}}
        volumes:
          - {{name: work, emptyDir: {{}}}}
          - {{name: sandbox, emptyDir: {{}}}}
          - {{name: workspace, emptyDir: {{}}}}{extra_volumes}
"#
    )
}

/// The inline policy: /work writable, /etc/group denied, egress only to the test host's first
/// address on 8080.
fn inline_policy() -> Value {
    json!({"version": "1.0.0",
        "filesystem": {"readwritePaths": ["/work"], "deniedPaths": ["/etc/group"]},
        "network": {"egress": {"default": "deny", "allow": [
            {"to": [{"cidr": format!("198.18.{HOST_K}.2/32")}], "ports": [{"protocol": "tcp", "port": 8080}]}]}}})
}

/// The ConfigMap's policy: grants the service-account token read-only.
fn configmap_policy(extra_ro: &[&str]) -> Value {
    let mut ro = vec!["/var/run/secrets/kubernetes.io/serviceaccount"];
    ro.extend_from_slice(extra_ro);
    json!({"version": "1.0.0",
        "filesystem": {"readwritePaths": ["/work"], "readonlyPaths": ro},
        "network": {"egress": {"default": "deny"}}})
}

fn sandbox(name: &str, policy: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: agentcell.dev/v1alpha1\nkind: AgentSandbox\nmetadata:\n  name: {name}\n  namespace: {NS}\nspec:\n    policy:\n{policy}\n{extra_spec}{}",
        pod_template("")
    )
}

fn indent(v: &Value, n: usize) -> String {
    let pad = " ".repeat(n);
    format!("{pad}{}", serde_json::to_string(v).unwrap())
}

fn ready_sandbox(k: &Cluster, name: &str, secs: u64) -> Value {
    wait(&format!("sandbox {name} Ready with a pod IP"), secs, || {
        let s = k.get("asb", NS, name).ok_or("no sandbox")?;
        match condition(&s, "Ready") {
            Some((st, _, _)) if st == "True" && s["status"]["podIP"].is_string() => Ok(s),
            c => Err(format!("{c:?} {}", s["status"])),
        }
    })
}

fn gone(k: &Cluster, kind: &str, ns: &str, name: &str, secs: u64) {
    wait(&format!("{kind} {name} deleted"), secs, || {
        match k.get(kind, ns, name) {
            None => Ok(()),
            Some(o) => Err(format!(
                "still there: {}",
                o["metadata"]["deletionTimestamp"]
            )),
        }
    })
}

fn pod_uid(k: &Cluster, name: &str) -> Option<String> {
    k.get("pod", NS, name)
        .map(|p| p["metadata"]["uid"].as_str().unwrap().to_owned())
}

const PROBE: &str = r#"cat /etc/group >/dev/null 2>&1 && echo READ-DENIED || echo DENIED-OK
cat /etc/passwd >/dev/null && echo READ-PASSWD
echo x > /work/f && echo WROTE-WORK
echo y > /f 2>/dev/null && echo WROTE-ROOT || echo ROOT-READONLY
cat /var/run/secrets/kubernetes.io/serviceaccount/token >/dev/null 2>&1 && echo TOKEN-READ || echo TOKEN-HIDDEN
grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status
for t in H.2:8080 H.2:8081 H.3:8080; do echo "$t $(nc -w 3 ${t%:*} ${t#*:} </dev/null 2>/dev/null || echo BLOCKED)"; done
exit 0"#;

fn probe(k: &Cluster, pod: &str) -> String {
    let script = PROBE.replace("H.", &format!("198.18.{HOST_K}."));
    k.exec(NS, pod, &script).expect("kubectl exec")
}

fn main() {
    agentcell_e2e::require_root();
    let mut suite = Suite {
        passed: 0,
        failed: Vec::new(),
        started: Instant::now(),
    };
    let bin = agentcell_e2e::bin_dir();
    let k = Cluster::up(&bin);
    let chart = repo().join("charts/agentcell");
    let values = chart.join("ci/local-values.yaml");
    let (chart, values) = (chart.to_str().unwrap(), values.to_str().unwrap());

    // A release left by an interrupted run goes first, so the install below is a first one.
    if k.helm(&["status", RELEASE, "-n", SYS]).ok() {
        let _ = k.kubectl(&["delete", "ns", NS, "--wait=true", "--timeout=120s"]);
        k.helm(&["uninstall", RELEASE, "-n", SYS, "--wait", "--timeout", "5m"])
            .expect("helm uninstall of a leftover release");
    }
    // Helm returns before the pods are gone: an old node pod's preStop uninstall must not run
    // after the install below (it would take that install back).
    wait("no pods left in the release namespace", 300, || {
        let p = k.list("pods", SYS, &[]);
        if p.is_empty() {
            Ok(())
        } else {
            Err(format!("{} pods", p.len()))
        }
    });
    let _ = k.kubectl(&["delete", "ns", NS, "--wait=true", "--timeout=120s"]);
    let original = containerd_config();
    let tables_before = nft_tables();
    let host = TestHost::new(HOST_K, &[8080, 8081]);

    suite.stage(
        "helm_install_runs_the_operator_and_installs_the_node",
        &[],
        || {
            let before = service_pid("containerd").expect("the cluster's containerd runs");
            k.helm(&[
                "install",
                RELEASE,
                chart,
                "-n",
                SYS,
                "--create-namespace",
                "-f",
                values,
                "--wait",
                "--timeout",
                "10m",
            ])
            .expect("helm install");
            let dep = &k.list(
                "deploy",
                SYS,
                &["-l", "app.kubernetes.io/name=agentcell-operator"],
            )[0];
            assert_eq!(
                condition(dep, "Available").unwrap().0,
                "True",
                "{}",
                dep["status"]
            );
            // Under the chart's own ServiceAccount (its RBAC is checked by the no-403 stage).
            let sa = dep["spec"]["template"]["spec"]["serviceAccountName"]
                .as_str()
                .unwrap()
                .to_owned();
            let sa_obj = k.get("sa", SYS, &sa).expect("the chart's ServiceAccount");
            assert_eq!(
                sa_obj["metadata"]["labels"]["app.kubernetes.io/managed-by"],
                "Helm"
            );
            // Helm's --wait does not wait for a DaemonSet with maxUnavailable 1 on one node.
            wait("the node DaemonSet Ready", 180, || {
                let ds = &k.list("ds", SYS, &[])[0];
                if ds["status"]["numberReady"] == 1 {
                    Ok(())
                } else {
                    Err(ds["status"].to_string())
                }
            });
            let pods = k.list(
                "pods",
                SYS,
                &["-l", "app.kubernetes.io/name=agentcell-node"],
            );
            assert_eq!(pods.len(), 1);
            assert_eq!(pods[0]["spec"]["nodeName"], NODE);
            let log = k
                .kubectl(&[
                    "logs",
                    "-n",
                    SYS,
                    pods[0]["metadata"]["name"].as_str().unwrap(),
                ])
                .expect("installer log");
            assert!(log.contains("containerd restart: Command"), "{log}");
            // The installer changed the cluster containerd's configuration and restarted it with
            // the host's supervisor (no systemd here).
            let now = String::from_utf8(containerd_config()).unwrap();
            assert!(
                now.contains("runtimes.agentcell]") && now.contains("runtimes.agentcell-vm]"),
                "{now}"
            );
            let after = service_pid("containerd").expect("containerd back up");
            assert_ne!(before, after, "containerd was not restarted");
            assert!(
                std::path::Path::new(&format!("{STATE}/bin/containerd-shim-agentcell-v2")).exists()
            );
            for rc in ["agentcell", "agentcell-vm"] {
                let rc = k.get("runtimeclass", "", rc).expect("RuntimeClass");
                assert_eq!(
                    rc["scheduling"]["nodeSelector"]["agentcell.dev/node"],
                    "true"
                );
            }
        },
    );

    let install = ["helm_install_runs_the_operator_and_installs_the_node"];
    suite.stage("sandboxes_from_preset_inline_and_configmap_are_ready_and_confined", &install, || {
        k.kubectl(&["create", "ns", NS]).expect("namespace");
        // PodSecurity admission is on: this namespace enforces `baseline`.
        k.kubectl(&["label", "ns", NS, "pod-security.kubernetes.io/enforce=baseline"])
            .expect("label");
        let refused = k.kubectl_in(
            &["apply", "-f", "-"],
            &format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: priv, namespace: {NS}}}\nspec:\n  containers: [{{name: c, image: {IMAGE}, securityContext: {{privileged: true}}}}]\n"),
        );
        assert!(!refused.ok() && refused.stderr.contains("violates PodSecurity \"baseline"), "{refused:?}");
        k.apply(&format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: acl-policy, namespace: {NS}}}\ndata:\n  policy.json: '{}'\n",
            configmap_policy(&[])
        ));
        // offline, not untrusted-code: that preset's 60 s timeoutMs ends the container every
        // minute (and the kubelet restarts it), which a long suite would see.
        k.apply(&sandbox("sb-preset", "      preset: offline", ""));
        k.apply(&sandbox(
            "sb-inline",
            &format!("      inline:\n{}", indent(&inline_policy(), 8)),
            "",
        ));
        k.apply(&sandbox(
            "sb-cm",
            "      configMapRef: {name: acl-policy, key: policy.json}",
            "    updatePolicy: Recreate\n",
        ));
        for name in ["sb-preset", "sb-inline", "sb-cm"] {
            let s = ready_sandbox(&k, name, 240);
            let pod = k.get("pod", NS, name).expect("the sandbox's pod");
            assert_eq!(pod["spec"]["runtimeClassName"], "agentcell");
            assert_eq!(pod["spec"]["nodeName"], NODE);
            assert_eq!(pod["status"]["podIP"], s["status"]["podIP"]);
            assert_eq!(
                pod["metadata"]["annotations"]["agentcell.dev/policy-digest"],
                s["status"]["policyDigest"]
            );
        }
        // The printer columns, as operator/README.md shows them.
        let table = k.kubectl(&["get", "asb", "-n", NS]).expect("kubectl get asb");
        let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
        assert_eq!(header, ["NAME", "READY", "ISOLATION", "POLICY", "POD", "AGE"], "{table}");
        let row: Vec<&str> = table
            .lines()
            .find(|l| l.starts_with("sb-inline "))
            .unwrap()
            .split_whitespace()
            .collect();
        assert_eq!(&row[..3], ["sb-inline", "True", "container"], "{table}");
        assert!(row[3].starts_with("sha256:") && row[3].len() == 19, "{table}");
        assert_eq!(row[4], "sb-inline", "{table}");
        // The kubelet's events for the pod: scheduled onto the node, started by the runtime.
        let ev = k.events(NS, "sb-inline");
        assert!(ev.iter().any(|e| e.starts_with("Normal Scheduled")), "{ev:?}");
        assert!(ev.iter().any(|e| e.starts_with("Normal Started")), "{ev:?}");

        let out = probe(&k, "sb-inline");
        for want in [
            "DENIED-OK", "READ-PASSWD", "WROTE-WORK", "ROOT-READONLY", "TOKEN-HIDDEN",
            "NoNewPrivs:\t1", "Seccomp:\t2", "CapEff:\t0000000000000000",
            "CapBnd:\t0000000000000000",
        ] {
            assert!(out.contains(want), "{want} in\n{out}");
        }
        let h = format!("198.18.{HOST_K}");
        assert!(out.contains(&format!("{h}.2:8080 BANNER-8080")), "{out}");
        assert!(out.contains(&format!("{h}.2:8081 BLOCKED")), "{out}");
        assert!(out.contains(&format!("{h}.3:8080 BLOCKED")), "{out}");
        // The ConfigMap's policy grants the token, and allows no egress at all.
        let out = probe(&k, "sb-cm");
        assert!(out.contains("TOKEN-READ") && out.contains("ROOT-READONLY"), "{out}");
        assert!(out.contains(&format!("{h}.2:8080 BLOCKED")), "{out}");
        // The preset (offline): /workspace writable, /work not granted.
        let out = k
            .exec(NS, "sb-preset", "echo a > /workspace/a && echo WROTE-WORKSPACE; echo b > /work/b 2>/dev/null || echo WORK-DENIED")
            .expect("exec");
        assert!(out.contains("WROTE-WORKSPACE") && out.contains("WORK-DENIED"), "{out}");
    });

    suite.stage("the_api_server_refuses_bad_manifests_naming_the_field", &install, || {
        let bad = |yaml: String, want: &[&str]| {
            let o = k.kubectl_in(&["apply", "-f", "-"], &yaml);
            assert!(!o.ok(), "accepted: {yaml}");
            for w in want {
                assert!(o.stderr.contains(w), "{w} not in: {}", o.stderr);
            }
        };
        bad(
            sandbox("bad-enum", "      preset: offline", "    isolation: bogus\n"),
            &["spec.isolation", "Unsupported value: \"bogus\""],
        );
        bad(
            sandbox(
                "bad-two-sources",
                &format!("      preset: offline\n      inline:\n{}", indent(&inline_policy(), 8)),
                "",
            ),
            &["spec.policy", "exactly one of inline, configMapRef, preset must be set"],
        );
        bad(
            sandbox(
                "bad-lifetime",
                "      preset: offline",
                "    lifetime: {shutdownAfter: 1h, shutdownTime: \"2030-01-01T00:00:00Z\"}\n",
            ),
            &["spec.lifetime", "exactly one of shutdownAfter, shutdownTime must be set"],
        );
        bad(
            format!(
                "apiVersion: agentcell.dev/v1alpha1\nkind: AgentSandboxPool\nmetadata: {{name: bad-pool, namespace: {NS}}}\nspec:\n  replicas: 5\n  maxReplicas: 2\n  template:\n    policy: {{preset: offline}}\n    podTemplate: {{spec: {{containers: [{{name: a, image: {IMAGE}}}]}}}}\n"
            ),
            &["spec", "replicas must not exceed maxReplicas"],
        );
        // Valid for the schema, invalid MXC: PolicyValid=False, a Warning event, no pod.
        k.apply(&sandbox(
            "sb-invalid",
            "      inline: {\"version\": \"1.0.0\", \"filesystem\": {\"readwritePaths\": [42]}}",
            "",
        ));
        let s = wait("PolicyValid=False", 60, || {
            let s = k.get("asb", NS, "sb-invalid").ok_or("no sandbox")?;
            match condition(&s, "PolicyValid") {
                Some((st, reason, msg)) if st == "False" => Ok((reason, msg)),
                c => Err(format!("{c:?}")),
            }
        });
        assert_eq!(s.0, "InvalidPolicy", "{s:?}");
        assert!(s.1.starts_with("spec.policy.inline"), "{s:?}");
        let ev = wait("a Warning event", 30, || {
            let ev = k.events(NS, "sb-invalid");
            if ev.iter().any(|e| e.starts_with("Warning InvalidPolicy")) {
                Ok(ev)
            } else {
                Err(format!("{ev:?}"))
            }
        });
        assert!(ev.iter().any(|e| e.contains("spec.policy.inline")), "{ev:?}");
        std::thread::sleep(Duration::from_secs(2));
        assert!(k.get("pod", NS, "sb-invalid").is_none(), "a pod was made");
        k.kubectl(&["delete", "asb", "-n", NS, "sb-invalid"]).expect("delete");
    });

    suite.stage("pools_fill_claims_bind_once_and_scale_through_the_subresource", &install, || {
        k.apply(&format!(
            "apiVersion: agentcell.dev/v1alpha1\nkind: AgentSandboxPool\nmetadata: {{name: p1, namespace: {NS}}}\nspec:\n  replicas: 2\n  maxReplicas: 6\n  template:\n    policy: {{preset: offline}}\n{}",
            pod_template("")
        ));
        let ready = |n: i64, secs| {
            wait(&format!("pool p1 with {n} ready"), secs, || {
                let p = k.get("asbpool", NS, "p1").ok_or("no pool")?;
                if p["status"]["readyReplicas"] == n && p["status"]["replicas"] == n {
                    Ok(p)
                } else {
                    Err(p["status"].to_string())
                }
            })
        };
        let p = ready(2, 240);
        assert_eq!(condition(&p, "Available").unwrap().0, "True");
        // The scale subresource: kubectl scale, and what an HPA reads.
        k.kubectl(&["scale", "asbpool", "-n", NS, "p1", "--replicas=3"])
            .expect("kubectl scale");
        ready(3, 240);
        let scale: Value = serde_json::from_str(
            &k.kubectl(&[
                "get", "--raw",
                &format!("/apis/agentcell.dev/v1alpha1/namespaces/{NS}/agentsandboxpools/p1/scale"),
            ])
            .expect("get scale"),
        )
        .unwrap();
        assert_eq!(scale["spec"]["replicas"], 3, "{scale}");
        assert_eq!(scale["status"]["replicas"], 3, "{scale}");
        assert_eq!(scale["status"]["selector"], "agentcell.dev/pool=p1,!agentcell.dev/claim");

        // Four claims at once for three Ready members: each binds a different member, never
        // one twice; the fourth gets the replacement.
        for (i, policy) in ["Delete", "Retain", "Delete", "Delete"].iter().enumerate() {
            k.apply(&format!(
                "apiVersion: agentcell.dev/v1alpha1\nkind: AgentSandboxClaim\nmetadata: {{name: c{i}, namespace: {NS}}}\nspec:\n  poolRef: {{name: p1}}\n  lifetime: {{shutdownAfter: 1h, shutdownPolicy: {policy}}}\n"
            ));
        }
        let bound = wait("four claims bound", 300, || {
            let mut names = Vec::new();
            for i in 0..4 {
                let c = k.get("asbclaim", NS, &format!("c{i}")).ok_or("no claim")?;
                match condition(&c, "Bound") {
                    Some((st, _, _)) if st == "True" => {
                        names.push(c["status"]["sandbox"].as_str().unwrap().to_owned())
                    }
                    c => return Err(format!("c{i}: {c:?}")),
                }
            }
            Ok(names)
        });
        let distinct: BTreeSet<_> = bound.iter().collect();
        assert_eq!(distinct.len(), 4, "a member bound twice: {bound:?}");
        for (i, sb) in bound.iter().enumerate() {
            let s = k.get("asb", NS, sb).expect("bound sandbox");
            assert_eq!(s["metadata"]["labels"]["agentcell.dev/claim"], format!("c{i}"));
            assert_eq!(s["metadata"]["ownerReferences"][0]["kind"], "AgentSandboxClaim");
            let c = k.get("asbclaim", NS, &format!("c{i}")).unwrap();
            assert!(c["status"]["podIP"].is_string(), "{}", c["status"]);
        }
        // Deleting a claim: Delete deletes its sandbox, Retain releases it.
        k.kubectl(&["delete", "asbclaim", "-n", NS, "c0", "c1"]).expect("delete claims");
        gone(&k, "asb", NS, &bound[0], 120);
        let kept = k.get("asb", NS, &bound[1]).expect("the retained sandbox");
        assert!(kept["metadata"]["ownerReferences"].as_array().is_none_or(|o| o.is_empty()), "{}", kept["metadata"]);
        k.kubectl(&["delete", "asb", "-n", NS, &bound[1]]).expect("delete retained");
        // The pool refilled to three unclaimed members meanwhile.
        ready(3, 240);

        // An HPA drives the pool through the scale subresource (below its minimum, it scales
        // up without metrics).
        k.apply(&format!(
            "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {{name: p1, namespace: {NS}}}\nspec:\n  scaleTargetRef: {{apiVersion: agentcell.dev/v1alpha1, kind: AgentSandboxPool, name: p1}}\n  minReplicas: 4\n  maxReplicas: 5\n  metrics: [{{type: Resource, resource: {{name: cpu, target: {{type: Utilization, averageUtilization: 80}}}}}}]\n"
        ));
        wait("the HPA scaled the pool to 4", 120, || {
            let p = k.get("asbpool", NS, "p1").ok_or("no pool")?;
            if p["spec"]["replicas"] == 4 { Ok(()) } else { Err(p["spec"].to_string()) }
        });
        k.kubectl(&["delete", "hpa", "-n", NS, "p1"]).expect("delete hpa");
        ready(4, 240);

        // Deleting the pool garbage-collects its unclaimed members; claimed ones stay.
        k.kubectl(&["delete", "asbpool", "-n", NS, "p1"]).expect("delete pool");
        wait("unclaimed members collected", 120, || {
            let left = k.list("asb", NS, &["-l", "agentcell.dev/pool=p1,!agentcell.dev/claim"]);
            if left.is_empty() { Ok(()) } else { Err(format!("{} left", left.len())) }
        });
        for sb in &bound[2..] {
            assert!(k.get("asb", NS, sb).is_some(), "claimed {sb} was collected with the pool");
        }
        k.kubectl(&["delete", "asbclaim", "-n", NS, "c2", "c3"]).expect("delete claims");
        for sb in &bound[2..] {
            gone(&k, "asb", NS, sb, 120);
        }
    });

    let sandboxes = ["sandboxes_from_preset_inline_and_configmap_are_ready_and_confined"];
    suite.stage("lifetime_suspend_policy_edit_and_garbage_collection", &sandboxes, || {
        // Lifetime: Delete at the deadline, with an Expired event.
        k.apply(&sandbox(
            "sb-expire",
            "      preset: offline",
            "    lifetime: {shutdownAfter: 20s, shutdownPolicy: Delete}\n",
        ));
        ready_sandbox(&k, "sb-expire", 240);
        gone(&k, "asb", NS, "sb-expire", 120);
        let ev = k.events(NS, "sb-expire");
        assert!(ev.iter().any(|e| e.starts_with("Normal Expired")), "{ev:?}");

        // Suspend deletes the pod and keeps the sandbox; Running makes a new one.
        let uid = pod_uid(&k, "sb-preset").expect("pod");
        k.kubectl(&["patch", "asb", "-n", NS, "sb-preset", "--type=merge", "-p", r#"{"spec":{"operatingMode":"Suspended"}}"#])
            .expect("suspend");
        gone(&k, "pod", NS, "sb-preset", 120);
        let s = k.get("asb", NS, "sb-preset").unwrap();
        assert_eq!(condition(&s, "Suspended").unwrap().0, "True", "{}", s["status"]);
        assert_eq!(condition(&s, "Ready").unwrap().1, "Suspended");
        assert!(k.get("svc", NS, "sb-preset").is_some(), "the Service stays");
        k.kubectl(&["patch", "asb", "-n", NS, "sb-preset", "--type=merge", "-p", r#"{"spec":{"operatingMode":"Running"}}"#])
            .expect("resume");
        ready_sandbox(&k, "sb-preset", 240);
        assert_ne!(pod_uid(&k, "sb-preset").unwrap(), uid);

        // A ConfigMap edit with updatePolicy Recreate: a new pod under the new digest.
        let before = k.get("asb", NS, "sb-cm").unwrap();
        let uid = pod_uid(&k, "sb-cm").unwrap();
        k.apply(&format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: acl-policy, namespace: {NS}}}\ndata:\n  policy.json: '{}'\n",
            // (Not /etc: a read-only /etc of an image without /etc/resolv.conf makes the pod
            // sandbox fail, "pathrs create_file" of the resolv.conf mountpoint; reported.)
            configmap_policy(&["/sandbox"])
        ));
        let after = wait("sb-cm recreated under the new policy", 240, || {
            let s = k.get("asb", NS, "sb-cm").ok_or("gone")?;
            let ready = condition(&s, "Ready").is_some_and(|c| c.0 == "True");
            let new_pod = pod_uid(&k, "sb-cm").is_some_and(|u| u != uid);
            if ready && new_pod && s["status"]["policyDigest"] != before["status"]["policyDigest"] {
                Ok(s)
            } else {
                Err(s["status"].to_string())
            }
        });
        assert_eq!(condition(&after, "UpToDate").unwrap().0, "True");
        let ev = k.events(NS, "sb-cm");
        assert!(ev.iter().any(|e| e.starts_with("Normal Recreating")), "{ev:?}");

        // Deleting the sandbox collects its pod, Service and NetworkPolicy (owner references).
        for kind in ["pod", "svc", "networkpolicy"] {
            assert!(k.get(kind, NS, "sb-inline").is_some(), "{kind} before the delete");
        }
        k.kubectl(&["delete", "asb", "-n", NS, "sb-inline", "--wait=false"]).expect("delete");
        for kind in ["asb", "pod", "svc", "networkpolicy"] {
            gone(&k, kind, NS, "sb-inline", 120);
        }
    });

    suite.stage(
        "the_lease_is_held_and_renewed_and_the_operator_log_has_no_403",
        &install,
        || {
            let lease = format!("{RELEASE}-operator");
            let get = || k.get("lease", SYS, &lease).expect("the operator's Lease");
            let l1 = get();
            let holder = l1["spec"]["holderIdentity"].as_str().unwrap().to_owned();
            let pods = k.list(
                "pods",
                SYS,
                &["-l", "app.kubernetes.io/name=agentcell-operator"],
            );
            assert!(
                pods.iter()
                    .any(|p| p["metadata"]["name"] == holder.as_str()),
                "holder {holder}"
            );
            let l2 = wait("the Lease renewed", 30, || {
                let l = get();
                if l["spec"]["renewTime"] != l1["spec"]["renewTime"] {
                    Ok(l)
                } else {
                    Err(l["spec"].to_string())
                }
            });
            assert_eq!(l2["spec"]["holderIdentity"], holder.as_str());
            let mut all = String::new();
            for p in &pods {
                let log = k
                    .kubectl(&["logs", "-n", SYS, p["metadata"]["name"].as_str().unwrap()])
                    .expect("operator log");
                // A refused call is logged with the API's status (code 403, reason Forbidden);
                // digests may contain the digits 403, so match the status, not the number.
                for bad in ["Forbidden", "forbidden", "\"code\":403", "403 Forbidden"] {
                    assert!(!log.contains(bad), "{bad} in the operator's log:\n{log}");
                }
                all.push_str(&log);
            }
            // The leader's log is among them: it did the suite's work.
            assert!(all.contains("pod applied"), "no leader log read:\n{all}");
        },
    );

    suite.stage("a_micro_vm_sandbox_is_ready_and_confined", &install, || {
        k.apply(&sandbox(
            "sb-vm",
            &format!("      inline:\n{}", indent(&inline_policy(), 8)),
            "    isolation: microvm\n",
        ));
        ready_sandbox(&k, "sb-vm", 420);
        let pod = k.get("pod", NS, "sb-vm").unwrap();
        assert_eq!(pod["spec"]["runtimeClassName"], "agentcell-vm");
        let out = k
            .exec(NS, "sb-vm", &format!(
                "uname -r; cat /etc/group >/dev/null 2>&1 && echo READ-DENIED || echo DENIED-OK; echo x > /work/f && echo WROTE-WORK; echo y > /f 2>/dev/null && echo WROTE-ROOT || echo ROOT-READONLY; \
                 for p in 8080 8081; do echo \"$p $(nc -w 5 198.18.{HOST_K}.2 $p </dev/null 2>/dev/null || echo BLOCKED)\"; done"
            ))
            .expect("exec in the VM");
        let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        assert_ne!(out.lines().next().unwrap(), host_kernel.trim(), "not a VM: {out}");
        for want in ["DENIED-OK", "WROTE-WORK", "ROOT-READONLY", "8080 BANNER-8080", "8081 BLOCKED"] {
            assert!(out.contains(want), "{want} in\n{out}");
        }
        k.kubectl(&["delete", "asb", "-n", NS, "sb-vm"]).expect("delete");
        gone(&k, "pod", NS, "sb-vm", 180);
    });

    suite.stage("helm_uninstall_restores_the_node", &install, || {
        k.kubectl(&["delete", "ns", NS, "--timeout=300s"])
            .expect("delete the test namespace");
        k.helm(&["uninstall", RELEASE, "-n", SYS, "--wait", "--timeout", "5m"])
            .expect("helm uninstall");
        wait("the node pod gone", 180, || {
            let p = k.list("pods", SYS, &[]);
            if p.is_empty() {
                Ok(())
            } else {
                Err(format!("{} pods", p.len()))
            }
        });
        // The preStop uninstall put containerd's configuration back byte for byte.
        let now = containerd_config();
        assert!(
            now == original,
            "config.toml differs:\n{}",
            String::from_utf8_lossy(&now)
        );
        assert!(
            !std::path::Path::new(&format!("{STATE}/bin/containerd-shim-agentcell-v2")).exists()
        );
        assert!(!std::path::Path::new(&format!("{STATE}/agentcell/node-install.json")).exists());
        let pods = k.list("pods", "", &["-A"]);
        assert!(pods.is_empty(), "pods left: {}", pods.len());
        // No shim or VM of ours runs, and no pod network namespace of our containerd is left.
        wait("no agentcell shim or qemu left", 60, || {
            let mut left = Vec::new();
            for e in std::fs::read_dir("/proc").unwrap().flatten() {
                let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                if (cmd.contains("containerd-shim-agentcell") || cmd.contains("qemu-system"))
                    && cmd.contains(STATE)
                {
                    left.push(cmd);
                }
            }
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            }
        });
        let tasks = agentcell_e2e::bounded::output(
            std::process::Command::new("ctr").args([
                "-a",
                &format!("{STATE}/containerd/containerd.sock"),
                "-n",
                "k8s.io",
                "tasks",
                "ls",
                "-q",
            ]),
            None,
            agentcell_e2e::bounded::step_limit(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            String::from_utf8_lossy(&tasks.stdout).trim().is_empty(),
            "tasks left"
        );
        // No nft table was left on the host (the fences live in the pods' namespaces).
        let after = nft_tables();
        let new: Vec<_> = after.difference(&tables_before).collect();
        assert!(new.is_empty(), "tables left: {new:?}");
    });

    drop(host);
    // scripts/test.sh: the test binaries after this one find the machine as before.
    if std::env::var("AGENTCELL_CLUSTER_DOWN").is_ok_and(|v| v == "1") {
        let st = std::process::Command::new("bash")
            .arg(repo().join("scripts/cluster.sh"))
            .arg("down")
            .status();
        println!("scripts/cluster.sh down: {st:?}");
    }
    suite.finish();
}
