//! The OCI runtime spec of a sandbox, built from the plan and the prepared mounts. Written as JSON
//! (the OCI format itself) and read back through `oci_spec`, so it can be checked in unit tests.

use std::path::Path;

use agentcell_policy::Plan;
use agentcell_policy::plan::RootSource;
use libcontainer::oci_spec::runtime::Spec;
use serde_json::{Value, json};

use super::prepare::{Mount, Prepared};

/// `/proc` entries hidden or read-only, as every OCI runtime does by default.
const MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
];
const READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Annotation listing the symlinks the root directory must hold before the runtime starts (a JSON
/// object, link -> target, sandbox paths): OCI has no mount type for a symlink, so the runner
/// creates them in the root and other runtimes given this spec (benches/exec.sh) must too.
pub const ROOT_SYMLINKS: &str = "org.agentcell.root.symlinks";

pub struct SpecInput<'a> {
    pub plan: &'a Plan,
    pub prepared: &'a Prepared,
    /// The empty directory the new root is built on.
    pub rootfs: &'a Path,
    pub args: Vec<String>,
    pub cgroups_path: String,
    pub uid: u32,
    pub gid: u32,
    /// The network namespace to join (the runner's, with its fence); a new empty one otherwise.
    pub netns: Option<std::path::PathBuf>,
}

pub fn build(input: &SpecInput) -> Result<Spec, serde_json::Error> {
    serde_json::from_value(build_json(input))
}

pub fn build_json(input: &SpecInput) -> Value {
    let plan = input.plan;
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
    ];
    if let RootSource::HostBaseline = plan.filesystem.root {
        for b in &plan.filesystem.baseline {
            let linked = input
                .prepared
                .baseline_links
                .iter()
                .any(|(l, _)| l == Path::new(b));
            // Bound when present, like bubblewrap's --ro-bind-try; a symlink to another baseline
            // entry is a symlink in the root instead (the runner makes it; see `ROOT_SYMLINKS`).
            if !linked && super::resolver::bindable(Path::new(b)) {
                mounts.push(bind(b, b, true));
            }
        }
        for (source, target) in &input.prepared.resolver_files {
            mounts.push(bind(
                &source.to_string_lossy(),
                &target.to_string_lossy(),
                true,
            ));
        }
    }
    mounts.push(
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
        "options": ["nosuid", "nodev", "mode=1777", format!("size={}", plan.filesystem.tmp_size)]}),
    );
    for m in &input.prepared.mounts {
        mounts.push(match m {
            Mount::Bind {
                source,
                target,
                readonly,
            } => bind(
                &source.to_string_lossy(),
                &target.to_string_lossy(),
                *readonly,
            ),
            Mount::Pin { source, target } => {
                bind(&source.to_string_lossy(), &target.to_string_lossy(), false)
            }
            Mount::MaskFile { target } => bind("/dev/null", &target.to_string_lossy(), true),
            Mount::MaskDir { target, size, has_children } => {
                let mut options: Vec<String> = ["nosuid", "nodev", "noexec", "uid=65534", "gid=65534"]
                    .map(String::from)
                    .to_vec();
                options.push(format!("size={size}"));
                if *has_children {
                    options.push("mode=0111".into());
                } else {
                    options.extend(["ro".to_string(), "mode=000".into()]);
                }
                json!({"destination": target, "type": "tmpfs", "source": "tmpfs", "options": options})
            }
        });
    }
    let env: Vec<String> = std::iter::once(("PATH".to_string(), default_path(plan)))
        .filter(|(k, _)| !plan.process.env.iter().any(|(pk, _)| pk == k))
        .chain(plan.process.env.iter().cloned())
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let (devices, device_rules) = gpu_devices(plan);
    let masked: Vec<&str> = MASKED
        .iter()
        .copied()
        .chain(
            plan.wsl
                .iter()
                .flat_map(|w| w.proc_masked.iter().map(String::as_str)),
        )
        .collect();
    let mut linux = json!({
        "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"},
            match &input.netns { Some(p) => json!({"type": "network", "path": p}), None => json!({"type": "network"}) }],
        "cgroupsPath": input.cgroups_path,
        "resources": {
            "pids": {"limit": plan.process.pids_max},
            "memory": {"limit": plan.process.memory_max},
            "devices": std::iter::once(json!({"allow": false, "access": "rwm"})).chain(device_rules).collect::<Vec<_>>()
        },
        "devices": devices,
        "maskedPaths": masked,
        "readonlyPaths": READONLY,
        "seccomp": plan.seccomp,
    });
    if !plan.host.seccomp {
        linux.as_object_mut().expect("object").remove("seccomp");
    }
    let mut annotations = serde_json::Map::new();
    if !input.prepared.baseline_links.is_empty() {
        let links: serde_json::Map<String, Value> = input
            .prepared
            .baseline_links
            .iter()
            .map(|(l, t)| (l.display().to_string(), json!(t)))
            .collect();
        annotations.insert(
            ROOT_SYMLINKS.into(),
            json!(Value::Object(links).to_string()),
        );
    }
    json!({
        "ociVersion": "1.0.2",
        "annotations": annotations,
        "process": {
            "terminal": false,
            "user": {"uid": input.uid, "gid": input.gid},
            "args": input.args,
            "env": env,
            "cwd": plan.process.cwd,
            "noNewPrivileges": true,
            "capabilities": {"bounding": [], "effective": [], "permitted": [], "inheritable": [], "ambient": []},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 4096}]
        },
        "root": {"path": input.rootfs, "readonly": true},
        "hostname": "agentcell",
        "mounts": mounts,
        "linux": linux,
    })
}

/// `--gpu`'s device nodes (created by the runtime in the fresh `/dev`, with the host node's
/// numbers, mode and owner) and the cgroup rules allowing exactly those numbers. The planner
/// refuses `--gpu` when a node has no numbers, so none is skipped here.
fn gpu_devices(plan: &Plan) -> (Vec<Value>, Vec<Value>) {
    let mut nodes = Vec::new();
    let mut rules = Vec::new();
    for d in plan.gpu.iter().flat_map(|g| &g.devices) {
        let (Some(major), Some(minor)) = (d.major, d.minor) else {
            continue;
        };
        nodes.push(
            json!({"path": d.path, "type": "c", "major": major, "minor": minor,
            "fileMode": d.mode, "uid": d.uid, "gid": d.gid}),
        );
        rules.push(
            json!({"allow": true, "type": "c", "major": major, "minor": minor, "access": "rw"}),
        );
    }
    (nodes, rules)
}

fn bind(source: &str, target: &str, readonly: bool) -> Value {
    let mut options = vec!["rbind", "nosuid", "nodev"];
    if readonly {
        options.push("ro");
    }
    json!({"destination": target, "type": "bind", "source": source, "options": options})
}

/// A PATH that finds the baseline's programs unless the policy sets its own.
fn default_path(_plan: &Plan) -> String {
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentcell_policy::plan::{CompileOptions, Host, compile};
    use agentcell_policy::{ParseOptions, parse_with};

    #[test]
    fn spec_carries_the_plan() {
        let doc = parse_with(
            r#"{"version":"1.0.0","filesystem":{"readwritePaths":["/w"]},"timeoutMs":5}"#,
            &ParseOptions::default(),
        )
        .unwrap();
        let plan = compile(&doc, &Host::reference(), &CompileOptions::default()).unwrap();
        let prepared = Prepared {
            mounts: vec![
                Mount::Bind {
                    source: "/w".into(),
                    target: "/w".into(),
                    readonly: false,
                },
                Mount::MaskFile {
                    target: "/w/.env".into(),
                },
            ],
            ..Default::default()
        };
        let input = SpecInput {
            plan: &plan,
            prepared: &prepared,
            rootfs: Path::new("/run/x/rootfs"),
            args: vec!["/bin/true".into()],
            cgroups_path: "/agentcell/x".into(),
            uid: 0,
            gid: 0,
            netns: None,
        };
        // A baseline symlink is a symlink in the root (listed for other runtimes), not a bind.
        let linked = Prepared {
            baseline_links: vec![("/bin".into(), "/usr/bin".into())],
            ..prepared.clone()
        };
        let v = build_json(&SpecInput {
            prepared: &linked,
            args: input.args.clone(),
            cgroups_path: input.cgroups_path.clone(),
            netns: None,
            ..input
        });
        assert!(
            !v["mounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["destination"] == "/bin")
        );
        assert_eq!(
            v["annotations"][ROOT_SYMLINKS],
            json!(r#"{"/bin":"/usr/bin"}"#)
        );
        let spec = build(&input).expect("valid OCI spec");
        let mounts = spec.mounts().as_ref().unwrap();
        let w = mounts
            .iter()
            .position(|m| m.destination() == Path::new("/w"))
            .unwrap();
        let env = mounts
            .iter()
            .position(|m| m.destination() == Path::new("/w/.env"))
            .unwrap();
        assert!(w < env, "deeper mounts come later");
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.no_new_privileges(), Some(true));
        assert_eq!(p.cwd(), Path::new("/w"));
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux.seccomp().is_some());
        assert_eq!(linux.namespaces().as_ref().unwrap().len(), 6);
    }

    /// `--gpu` on WSL2: the node is created with the host's numbers and exactly those numbers
    /// are allowed by the device cgroup; the hardening masks binfmt_misc in the fresh /proc.
    #[test]
    fn gpu_nodes_and_wsl_masks_reach_the_spec() {
        use agentcell_policy::plan::gpu::{GpuDevice, GpuHost, GpuKind};
        use agentcell_policy::plan::wsl::WslHost;
        let doc = parse_with(r#"{"version":"1.0.0"}"#, &ParseOptions::default()).unwrap();
        let host = Host {
            wsl: Some(WslHost {
                version: 2,
                root: "/".into(),
                forced: false,
                interop_entries: vec![],
                windows_drives: vec![],
                init: true,
                run_wsl: true,
                wslg: false,
                dxg: true,
                wsl_lib: false,
                usr_lib_wsl: false,
            }),
            gpu: Some(GpuHost {
                kind: GpuKind::Dxg,
                devices: vec![GpuDevice {
                    path: "/dev/dxg".into(),
                    host_path: "/dev/dxg".into(),
                    major: Some(10),
                    minor: Some(125),
                    mode: 0o666,
                    uid: 0,
                    gid: 0,
                }],
                libraries: vec![],
            }),
            ..Host::reference()
        };
        let opts = CompileOptions {
            gpu: true,
            ..Default::default()
        };
        let plan = compile(&doc, &host, &opts).unwrap();
        let prepared = Prepared::default();
        let input = SpecInput {
            plan: &plan,
            prepared: &prepared,
            rootfs: Path::new("/run/x/rootfs"),
            args: vec!["/bin/true".into()],
            cgroups_path: "/agentcell/x".into(),
            uid: 0,
            gid: 0,
            netns: None,
        };
        let v = build_json(&input);
        assert_eq!(
            v["linux"]["devices"],
            json!([{"path": "/dev/dxg", "type": "c", "major": 10, "minor": 125, "fileMode": 0o666, "uid": 0, "gid": 0}])
        );
        assert_eq!(
            v["linux"]["resources"]["devices"],
            json!([{"allow": false, "access": "rwm"},
                {"allow": true, "type": "c", "major": 10, "minor": 125, "access": "rw"}])
        );
        let masked = v["linux"]["maskedPaths"].as_array().unwrap();
        assert!(masked.contains(&json!("/proc/sys/fs/binfmt_misc")));
        build(&input).expect("valid OCI spec");
        // Without --gpu and off WSL: no node, no rule, no extra mask.
        let plain = compile(&doc, &Host::reference(), &CompileOptions::default()).unwrap();
        let v = build_json(&SpecInput {
            plan: &plain,
            ..input
        });
        assert_eq!(v["linux"]["devices"], json!([]));
        assert_eq!(
            v["linux"]["resources"]["devices"].as_array().unwrap().len(),
            1
        );
        assert_eq!(
            v["linux"]["maskedPaths"].as_array().unwrap().len(),
            MASKED.len()
        );
    }
}
