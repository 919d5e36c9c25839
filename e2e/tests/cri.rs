//! The CRI path (root), what kubelet does: containerd's CRI plugin with the bridge CNI from
//! containernetworking-plugins and the runtime `agentcell` (`pod_annotations =
//! ["agentcell.dev/*"]`), driven by a small CRI client: RunPodSandbox with the policy annotation
//! → CreateContainer → StartContainer → ExecSync → ContainerStats → StopPodSandbox →
//! RemovePodSandbox. Images are built from busybox-static and imported from an OCI archive.

use std::collections::HashMap;

use agentcell_e2e::testhost::TestHost;
use agentcell_e2e::{Containerd, image};
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use serde_json::json;
use tonic::transport::{Channel, Endpoint, Uri};

async fn connect(c: &Containerd) -> RuntimeServiceClient<Channel> {
    let sock = c.sock.clone();
    // Every CRI call is bounded: one that never answers (a shim stuck in a create or an exec)
    // fails its test in minutes.
    let channel = Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .timeout(agentcell_e2e::bounded::step_limit())
        .connect_timeout(std::time::Duration::from_secs(30))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let sock = sock.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(sock).await?))
            }
        }))
        .await
        .expect("CRI socket");
    RuntimeServiceClient::new(channel)
}

fn sandbox_config(c: &Containerd, name: &str, policy: &serde_json::Value) -> cri::PodSandboxConfig {
    let logs = c.dir.join("logs").join(name);
    std::fs::create_dir_all(&logs).unwrap();
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "e2e".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: logs.to_string_lossy().into_owned(),
        annotations: HashMap::from([("agentcell.dev/mxc-policy".to_string(), policy.to_string())]),
        linux: Some(cri::LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

fn container_config(name: &str, script: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image::APP.into(),
            ..Default::default()
        }),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}.log"),
        linux: Some(cri::LinuxContainerConfig::default()),
        ..Default::default()
    }
}

fn policy() -> serde_json::Value {
    json!({"version": "1.0.0",
        "filesystem": {"readwritePaths": ["/work"], "deniedPaths": ["/etc/secret"]},
        "network": {"egress": {"default": "deny", "allow": [
            {"to": [{"cidr": "198.18.62.2/32"}], "ports": [{"protocol": "tcp", "port": 8080}]}]}}})
}

/// RunPodSandbox with `handler` → CreateContainer `name` (a shell sleeping) → StartContainer;
/// any failure panics with containerd's log. Returns the pod and container ids.
async fn start_pod(
    rt: &mut RuntimeServiceClient<Channel>,
    c: &Containerd,
    sandbox: &cri::PodSandboxConfig,
    handler: &str,
    name: &str,
) -> (String, String) {
    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(sandbox.clone()),
            runtime_handler: handler.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox ({handler}): {e}\n{}", c.log()))
        .into_inner()
        .pod_sandbox_id;
    let ctr = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config(name, "sleep 1000")),
            sandbox_config: Some(sandbox.clone()),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateContainer ({handler}): {e}\n{}", c.log()))
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest {
        container_id: ctr.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("StartContainer ({handler}): {e}\n{}", c.log()));
    (pod, ctr)
}

/// StopPodSandbox → RemovePodSandbox; any failure panics with containerd's log.
async fn remove_pod(rt: &mut RuntimeServiceClient<Channel>, c: &Containerd, pod: &str) {
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.to_string(),
    })
    .await
    .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\n{}", c.log()));
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.to_string(),
    })
    .await
    .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}\n{}", c.log()));
}

fn cri_ready(c: &Containerd) {
    image::import(c, image::APP, &["/bin/sh"]);
    image::import(c, image::PAUSE, &["/bin/sleep", "2147483647"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_runs_confined_through_cri() {
    let host = TestHost::new(62, &[8080, 8081]);
    let c = Containerd::start_cri("cri");
    cri_ready(&c);
    let mut rt = connect(&c).await;
    let sandbox = sandbox_config(&c, "pod-a", &policy());
    let (pod, ctr) = start_pod(&mut rt, &c, &sandbox, "agentcell", "app").await;

    // One shim serves the whole pod (the sandbox and its container).
    assert_eq!(c.shim_pids().len(), 1, "one shim per pod");
    let out = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: ctr.clone(),
            cmd: vec![
                "/bin/sh".into(),
                "-c".into(),
                "cat /etc/secret && echo READ-SECRET; echo x > /work/f && echo WROTE; \
                 echo y > /f 2>/dev/null || echo ROOT-READONLY; \
                 ls /var/run/secrets 2>/dev/null; \
                 for p in 8080 8081; do echo \"$p $(nc -w 5 198.18.62.2 $p </dev/null 2>/dev/null || echo BLOCKED)\"; done; exit 5"
                    .into(),
            ],
            timeout: 20,
        })
        .await
        .unwrap_or_else(|e| panic!("ExecSync: {e}\n{}", c.log()))
        .into_inner();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.exit_code,
        5,
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("READ-SECRET"), "{stdout}");
    assert!(
        stdout.contains("WROTE") && stdout.contains("ROOT-READONLY"),
        "{stdout}"
    );
    assert!(stdout.contains("8080 BANNER-8080"), "{stdout}");
    assert!(stdout.contains("8081 BLOCKED"), "{stdout}");

    let stats = rt
        .container_stats(cri::ContainerStatsRequest {
            container_id: ctr.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("ContainerStats: {e}\n{}", c.log()))
        .into_inner()
        .stats
        .expect("stats");
    let mem = stats.memory.expect("memory stats");
    assert!(
        mem.working_set_bytes.map_or(0, |v| v.value) > 0
            || mem.usage_bytes.map_or(0, |v| v.value) > 0,
        "{mem:?}"
    );

    // UpdateContainerResources (the task API's Update) reaches the container's cgroup.
    rt.update_container_resources(cri::UpdateContainerResourcesRequest {
        container_id: ctr.clone(),
        linux: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 200 * 1024 * 1024,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("UpdateContainerResources: {e}\n{}", c.log()));

    remove_pod(&mut rt, &c, &pod).await;
    drop(host);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_with_an_invalid_policy_is_refused_with_the_reason() {
    let c = Containerd::start_cri("cri-bad");
    cri_ready(&c);
    let mut rt = connect(&c).await;
    let bad = json!({"version": "1.0.0", "network": {"egress": {"default": "maybe"}}});
    let e = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(sandbox_config(&c, "pod-bad", &bad)),
            runtime_handler: "agentcell".into(),
        })
        .await
        .expect_err("an invalid policy must not run");
    let msg = e.message().to_string();
    assert!(msg.contains("agentcell.dev/mxc-policy"), "{msg}");
    assert!(msg.contains("network.egress.default"), "{msg}");
    let pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(
        pods.iter()
            .all(|p| p.state != cri::PodSandboxState::SandboxReady as i32),
        "{pods:?}"
    );
}

/// `agentcell node install --microvm` as the chart's DaemonSet runs it, against this containerd
/// 1.6 (Debian's) configuration without an agentcell runtime: the edited file starts containerd,
/// a pod runs through `agentcell` with its policy annotation passed through, another through
/// `agentcell-vm` boots the guest kernel the installer copied, a second install changes nothing,
/// and uninstall puts the file back byte for byte and removes the copies (with the VM shim's
/// cache). Host root `/` with every path moved into the suite's directory, so the test
/// machine's /etc, /usr and /var/lib/agentcell stay untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_installer_s_configuration_runs_a_pod_through_cri() {
    let bin = agentcell_e2e::bin_dir();
    let node = |dir: &std::path::Path, cmd: &str, extra: &[&str]| -> serde_json::Value {
        let d = dir.to_str().unwrap();
        let mut args = vec![
            "node".to_owned(),
            cmd.to_owned(),
            "--host-root=/".to_owned(),
            format!("--shim-dir={d}/node-bin"),
            format!("--shim-config-path={d}/node-etc/shim.toml"),
            format!("--state-dir={d}/node-etc"),
            "--no-restart".to_owned(),
            "--json".to_owned(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let out = agentcell_e2e::bounded::output(
            std::process::Command::new(bin.join("agentcell")).args(&args),
            None,
            agentcell_e2e::bounded::step_limit(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.status.success(),
            "agentcell {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let shim = bin.join("containerd-shim-agentcell-v2");
    // The machine's assets (as the micro-VM tests use them) are the image's VM directory here.
    let assets = std::env::var("AGENTCELL_VM_DIR").unwrap_or("/var/lib/agentcell/vm".into());
    let mut original = Vec::new();
    let mut release = String::new();
    let mut c = Containerd::start_cri_installed("cri-inst", |dir| {
        original = std::fs::read(dir.join("config.toml")).unwrap();
        let cfg = format!("--containerd-config={}/config.toml", dir.display());
        let shim_arg = format!("--shim={}", shim.display());
        let vm_shim = format!(
            "--vm-shim={}",
            bin.join("containerd-shim-agentcell-vm-v2").display()
        );
        let vm_assets = format!("--vm-assets={assets}");
        let vm_dir = format!("--vm-dir={}/node-vm", dir.display());
        // No --containerd-version: the installer asks this machine's containerd.
        let extra = [
            cfg.as_str(),
            shim_arg.as_str(),
            "--idle-exit-seconds=30",
            "--microvm",
            vm_shim.as_str(),
            vm_assets.as_str(),
            vm_dir.as_str(),
        ];
        let rep = node(dir, "install", &extra);
        assert_eq!(rep["config_version"], "v2", "{rep}");
        assert_eq!(rep["mode"], "inline", "{rep}");
        release = rep["vm_kernel_release"].as_str().unwrap().to_owned();
        assert!(
            rep["containerd_version"]
                .as_str()
                .unwrap()
                .starts_with("1."),
            "{rep}"
        );
        let again = node(dir, "install", &extra);
        assert_eq!(again["changed"], false, "{again}");
        let text = std::fs::read_to_string(dir.join("config.toml")).unwrap();
        assert!(
            text.contains(&format!(
                "ConfigPath = \"{}/node-etc/shim.toml\"",
                dir.display()
            )),
            "{text}"
        );
        assert!(text.contains("runtimes.agentcell-vm]"), "{text}");
        // The VM shim reads the installed copy, not the machine's directory.
        vec![(
            "AGENTCELL_VM_DIR".to_owned(),
            format!("{}/node-vm", dir.display()),
        )]
    });
    cri_ready(&c);
    let mut rt = connect(&c).await;
    let sandbox = sandbox_config(&c, "pod-inst", &policy());
    let (pod, ctr) = start_pod(&mut rt, &c, &sandbox, "agentcell", "app").await;
    let out = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: ctr.clone(),
            cmd: vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo x > /work/f && echo WROTE; echo y > /f 2>/dev/null || echo ROOT-READONLY"
                    .into(),
            ],
            timeout: 20,
        })
        .await
        .unwrap_or_else(|e| panic!("ExecSync: {e}\n{}", c.log()))
        .into_inner();
    // The policy came from the pod's annotation: the container is confined by it.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("WROTE") && stdout.contains("ROOT-READONLY"),
        "{stdout}"
    );
    remove_pod(&mut rt, &c, &pod).await;

    // The micro-VM runtime the same install wrote boots the kernel it copied.
    let sandbox = sandbox_config(&c, "pod-inst-vm", &policy());
    let (pod, ctr) = start_pod(&mut rt, &c, &sandbox, "agentcell-vm", "app-vm").await;
    let out = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: ctr.clone(),
            cmd: vec!["/bin/sh".into(), "-c".into(), "uname -r".into()],
            timeout: 60,
        })
        .await
        .unwrap_or_else(|e| panic!("ExecSync (agentcell-vm): {e}\n{}", c.log()))
        .into_inner();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        release,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    remove_pod(&mut rt, &c, &pod).await;
    // The VM shim built its initramfs cache in the installed directory.
    assert!(c.dir.join("node-vm/cache").is_dir());
    c.stop();
    assert!(
        c.dir.join("node-etc/node-install.json").is_file(),
        "the install state is gone before uninstall"
    );

    let rep = node(&c.dir, "uninstall", &[]);
    assert_eq!(rep["installed"], true, "{rep}");
    assert_eq!(
        std::fs::read(c.dir.join("config.toml")).unwrap(),
        original,
        "uninstall did not restore containerd's configuration byte for byte"
    );
    assert!(!c.dir.join("node-bin").exists());
    assert!(!c.dir.join("node-etc").exists());
    assert!(!c.dir.join("node-vm").exists());
}

/// The micro-VM tier under CRI (`runtime_handler: agentcell-vm`): the pod's sandbox container
/// holds the namespaces as in the container tier, the app container boots its own VM whose tap
/// sits in the pod's namespace, and the fence programmed for the pod judges the VM's traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_runs_in_a_micro_vm_through_cri() {
    let host = TestHost::new(63, &[8080, 8081]);
    let c = Containerd::start_cri("cri-vm");
    cri_ready(&c);
    let mut rt = connect(&c).await;
    let p = json!({"version": "1.0.0",
        "filesystem": {"readwritePaths": ["/work"], "deniedPaths": ["/etc/secret"]},
        "network": {"egress": {"default": "deny", "allow": [
            {"to": [{"cidr": "198.18.63.2/32"}], "ports": [{"protocol": "tcp", "port": 8080}]}]}}});
    let sandbox = sandbox_config(&c, "pod-vm", &p);
    let (pod, ctr) = start_pod(&mut rt, &c, &sandbox, "agentcell-vm", "app").await;
    let out = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: ctr.clone(),
            cmd: vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo RELEASE=$(uname -r); cat /etc/secret && echo READ-SECRET; \
                 echo x > /work/f && echo WROTE; echo y > /f 2>/dev/null || echo ROOT-READONLY; \
                 for p in 8080 8081; do echo \"$p $(nc -w 3 198.18.63.2 $p </dev/null 2>/dev/null || echo BLOCKED)\"; done; exit 5"
                    .into(),
            ],
            timeout: 60,
        })
        .await
        .unwrap_or_else(|e| panic!("ExecSync: {e}\n{}", c.log()))
        .into_inner();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.exit_code,
        5,
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.log()
    );
    let host_release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let release = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RELEASE="))
        .unwrap_or_default();
    assert!(
        !release.is_empty() && release != host_release.trim(),
        "not in a VM: {stdout}"
    );
    assert!(!stdout.contains("READ-SECRET"), "{stdout}");
    assert!(
        stdout.contains("WROTE") && stdout.contains("ROOT-READONLY"),
        "{stdout}"
    );
    assert!(stdout.contains("8080 BANNER-8080"), "{stdout}");
    assert!(stdout.contains("8081 BLOCKED"), "{stdout}");
    let stats = rt
        .container_stats(cri::ContainerStatsRequest {
            container_id: ctr.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("ContainerStats: {e}\n{}", c.log()))
        .into_inner()
        .stats
        .expect("stats");
    assert!(
        stats
            .memory
            .and_then(|m| m.usage_bytes)
            .map_or(0, |v| v.value)
            > 0,
        "the guest's memory use is reported"
    );
    remove_pod(&mut rt, &c, &pod).await;
    // The VM is gone with its container.
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        assert!(
            !(cmd.contains("qemu-system") && cmd.contains(&*c.dir.to_string_lossy())),
            "a VM is left: {cmd}"
        );
    }
    drop(host);
}
