//! How a container that containerd asks for is confined: its OCI spec (from CRI or `ctr`) is
//! rebuilt around the plan. The image is the read-only root; the plan's mounts, masks and fresh
//! `/dev`, `/proc`, `/tmp` come first; of the mounts the pod spec adds, only the resolver files
//! (read-only) and those a policy path grants survive. Pure: unit-tested without containerd.

use std::path::{Path, PathBuf};

use agentcell_policy::Plan;
use agentcell_policy::plan::fs::Access;
use serde_json::{Value, json};

use crate::sandbox::landlock::LandlockRules;
use crate::sandbox::prepare::Prepared;
use crate::sandbox::runner;
use crate::sandbox::spec::{self, SpecInput};

/// Capabilities that would let a workload undo its confinement (unmount a mask, rewrite the
/// fence, load a module, open files by handle, trace other processes). A container asking for
/// one is refused, not silently trimmed.
pub const REFUSED_CAPABILITIES: &[&str] = &[
    "CAP_SYS_ADMIN",
    "CAP_NET_ADMIN",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_PTRACE",
    "CAP_DAC_READ_SEARCH",
    "CAP_BPF",
    "CAP_PERFMON",
    "CAP_SYS_BOOT",
    "CAP_MAC_ADMIN",
    "CAP_MAC_OVERRIDE",
    "CAP_SYSLOG",
];

/// Files CRI mounts that MXC's baseline has too (read-only resolver files).
const RESOLVER_FILES: &[&str] = &["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"];
/// Filesystems the view makes itself.
const REPLACED: &[&str] = &[
    "/proc",
    "/dev",
    "/dev/pts",
    "/dev/shm",
    "/dev/mqueue",
    "/sys",
    "/sys/fs/cgroup",
    "/tmp",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error(
        "process.capabilities: {0} requested (privileged, or securityContext.capabilities.add): refused, it would let the workload undo its confinement"
    )]
    Capability(String),
    #[error("the container spec has no {0}")]
    Missing(&'static str),
    #[error("the confined spec is not a valid OCI spec: {0}")]
    Spec(#[from] serde_json::Error),
}

/// The confined container.
#[derive(Debug)]
pub struct Confined {
    pub spec: Value,
    pub landlock: LandlockRules,
    /// What was dropped or narrowed, for the log and `explain`.
    pub notes: Vec<String>,
    /// The destinations of the pod's mounts that were kept (host paths the runtime would bind
    /// by name: `podview` stages them), and of the masks inside them.
    pub pod_mounts: Vec<String>,
}

pub struct Input<'a> {
    /// The spec containerd wrote into the bundle.
    pub original: &'a Value,
    pub plan: &'a Plan,
    /// The plan's mounts resolved in the image (`prepare` with the image as root).
    pub prepared: &'a Prepared,
    /// The image's root filesystem, absolute.
    pub rootfs: &'a Path,
    /// The network namespace to join instead of the spec's (one the shim made for a `ctr`
    /// container that asked for a new one).
    pub netns: Option<PathBuf>,
    /// Keep CAP_NET_RAW when the spec has it: the pod asked (`agentcell.dev/net-raw`) and the
    /// node allows it (`allow_net_raw`). Otherwise it is dropped from every set.
    pub net_raw: bool,
}

/// What unprivileged ICMP echo sockets need: every group may open one (as containerd 2.x sets
/// for pods, and as the CLI's namespaces have). Only echo: the fence's `icmp` rules still decide
/// where it may go.
pub const PING_GROUP_RANGE: (&str, &str) = ("net.ipv4.ping_group_range", "0 2147483647");

/// Removes `cap` from every capability set of an OCI `process`; whether it was in one.
pub fn drop_capability(process: &mut Value, cap: &str) -> bool {
    let mut dropped = false;
    if let Some(caps) = process
        .get_mut("capabilities")
        .and_then(Value::as_object_mut)
    {
        for set in caps.values_mut() {
            if let Some(list) = set.as_array_mut() {
                let before = list.len();
                list.retain(|c| c.as_str() != Some(cap));
                dropped |= list.len() != before;
            }
        }
    }
    dropped
}

pub fn confine(input: &Input) -> Result<Confined, ConfineError> {
    let orig = input.original;
    let plan = input.plan;
    let oprocess = orig
        .get("process")
        .ok_or(ConfineError::Missing("process"))?;
    check_capabilities(oprocess.get("capabilities"))?;
    let user = oprocess
        .get("user")
        .cloned()
        .unwrap_or(json!({"uid": 0, "gid": 0}));
    let uid = user.get("uid").and_then(Value::as_u64).unwrap_or(0) as u32;
    let gid = user.get("gid").and_then(Value::as_u64).unwrap_or(0) as u32;
    let olinux = orig.get("linux").cloned().unwrap_or(json!({}));
    let cgroups_path = olinux
        .get("cgroupsPath")
        .and_then(Value::as_str)
        .map(String::from)
        .unwrap_or_default();
    let args = strings(oprocess.get("args"));
    let mut out = spec::build_json(&SpecInput {
        plan,
        prepared: input.prepared,
        rootfs: input.rootfs,
        args,
        cgroups_path,
        uid,
        gid,
        netns: None,
    });
    let mut notes = Vec::new();
    let mut pod_mounts = Vec::new();

    // The process: what the image and pod spec say, with the plan's environment, working
    // directory (when the policy sets one), and no privilege gain.
    let mut process = oprocess.clone();
    process["env"] = json!(with_plan_env(oprocess, &plan.process.env));
    if plan.process.cwd_origin == "process.cwd" {
        process["cwd"] = json!(plan.process.cwd);
    }
    process["noNewPrivileges"] = json!(true);
    // CAP_NET_RAW writes any packet (neighbour solicitations to any address, spoofed sources):
    // a way around the fence's protocol rules. containerd grants it by default.
    let drop_net_raw = !input.net_raw;
    if drop_net_raw && drop_capability(&mut process, "CAP_NET_RAW") {
        notes.push(
            "CAP_NET_RAW dropped (raw sockets); ping uses unprivileged ICMP sockets (annotation agentcell.dev/net-raw and allow_net_raw in shim.toml keep it)".into(),
        );
    }
    out["process"] = process;
    if let Some(h) = orig.get("hostname") {
        out["hostname"] = h.clone();
    }
    if let Some(a) = orig.get("annotations") {
        out["annotations"] = a.clone();
    }

    // Linux: containerd's namespaces, cgroup, devices, sysctls; the plan's masks added to the
    // spec's; resource limits the pod sets win over the plan's defaults.
    let linux = out["linux"].as_object_mut().expect("linux is an object");
    let mut namespaces = olinux.get("namespaces").cloned().unwrap_or(json!([]));
    if let (Some(path), Some(list)) = (&input.netns, namespaces.as_array_mut()) {
        list.retain(|n| n.get("type").and_then(Value::as_str) != Some("network"));
        list.push(json!({"type": "network", "path": path}));
    }
    linux.insert("namespaces".into(), namespaces);
    if let Some(p) = olinux.get("cgroupsPath") {
        linux.insert("cgroupsPath".into(), p.clone());
    }
    for key in [
        "devices",
        "sysctl",
        "uidMappings",
        "gidMappings",
        "mountLabel",
    ] {
        if let Some(v) = olinux.get(key) {
            linux.insert(key.into(), v.clone());
        }
    }
    // Without CAP_NET_RAW, ping needs unprivileged ICMP sockets in the container's network
    // namespace (its own or the pod's: a host network namespace is refused before this).
    let has_netns = linux
        .get("namespaces")
        .and_then(Value::as_array)
        .is_some_and(|l| {
            l.iter()
                .any(|n| n.get("type").and_then(Value::as_str) == Some("network"))
        });
    if drop_net_raw && has_netns {
        let sysctl = linux.entry("sysctl").or_insert_with(|| json!({}));
        if let Some(map) = sysctl.as_object_mut() {
            let (key, value) = PING_GROUP_RANGE;
            map.entry(key).or_insert_with(|| json!(value));
        }
    }
    // The pod's own seccomp profile stays; the plan's filter is stacked on it by the executor.
    linux.remove("seccomp");
    if let Some(s) = olinux.get("seccomp") {
        linux.insert("seccomp".into(), allow_landlock(s.clone()));
    }
    for key in ["maskedPaths", "readonlyPaths"] {
        let mut all: Vec<Value> = linux
            .get(key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for v in olinux
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !all.contains(v) {
                all.push(v.clone());
            }
        }
        linux.insert(key.into(), json!(all));
    }
    let mut resources = olinux.get("resources").cloned().unwrap_or(json!({}));
    if resources
        .pointer("/pids/limit")
        .and_then(Value::as_i64)
        .is_none_or(|l| l <= 0)
    {
        resources["pids"] = json!({"limit": plan.process.pids_max});
    }
    if resources
        .pointer("/memory/limit")
        .and_then(Value::as_i64)
        .is_none_or(|l| l <= 0)
    {
        if !resources.get("memory").is_some_and(Value::is_object) {
            resources["memory"] = json!({});
        }
        resources["memory"]["limit"] = json!(plan.process.memory_max);
    }
    if resources.get("devices").is_none() {
        resources["devices"] = json!([{"allow": false, "access": "rwm"}]);
    }
    linux.insert("resources".into(), resources);

    // Mounts: the view's own, then the pod's that survive, ordered shallow to deep.
    let mut landlock = runner::landlock_rules(plan, input.prepared);
    let base_len = 6; // proc, dev, devpts, shm, mqueue, tmp: see spec::build_json
    let mounts = out["mounts"].as_array().cloned().unwrap_or_default();
    let (base, policy) = mounts.split_at(base_len.min(mounts.len()));
    let mut ordered: Vec<(usize, u8, Value)> = policy
        .iter()
        .map(|m| {
            let rank = if is_mask(m) { 2 } else { 0 };
            (depth(m), rank, m.clone())
        })
        .collect();
    for m in orig
        .get("mounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(dest) = m.get("destination").and_then(Value::as_str) else {
            continue;
        };
        let dest = agentcell_policy::plan::fs::normalize(dest).unwrap_or_else(|_| dest.to_string());
        if REPLACED.contains(&dest.as_str()) || dest.starts_with("/sys/") {
            continue;
        }
        if RESOLVER_FILES.contains(&dest.as_str()) {
            ordered.push((depth_of(&dest), 1, read_only(m.clone())));
            pod_mounts.push(dest);
            continue;
        }
        let granted = grant(plan, &dest);
        if matches!(granted, Some(Access::ReadWrite | Access::ReadOnly)) {
            pod_mounts.push(dest.clone());
        }
        match granted {
            Some(Access::ReadWrite) if !has_option(m, "ro") => {
                landlock.write.push(PathBuf::from(&dest));
                ordered.push((depth_of(&dest), 1, m.clone()));
                mask_denied_inside(plan, m, &dest, &mut ordered, &mut notes);
            }
            Some(Access::ReadWrite) | Some(Access::ReadOnly) => {
                landlock.read.push(PathBuf::from(&dest));
                ordered.push((depth_of(&dest), 1, read_only(m.clone())));
                mask_denied_inside(plan, m, &dest, &mut ordered, &mut notes);
            }
            Some(Access::Denied) | None => {
                notes.push(format!(
                    "mount {dest} from the pod spec is not granted by a policy path: left out"
                ));
            }
        }
    }
    ordered.sort_by_key(|(d, r, _)| (*d, *r));
    let mut all: Vec<Value> = base.to_vec();
    all.extend(ordered.into_iter().map(|(_, _, m)| m));
    out["mounts"] = json!(all);
    out["ociVersion"] = orig.get("ociVersion").cloned().unwrap_or(json!("1.0.2"));
    // Read back: a malformed spec fails here, not inside the runtime.
    let _: libcontainer::oci_spec::runtime::Spec = serde_json::from_value(out.clone())?;
    Ok(Confined {
        spec: out,
        landlock,
        notes,
        pod_mounts,
    })
}

/// The strings of a JSON array (none when it is absent or not an array).
pub fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The OCI `process`'s environment with the plan's variables set over it ([`merge_env`]).
pub fn with_plan_env(process: &Value, plan_env: &[(String, String)]) -> Vec<String> {
    merge_env(strings(process.get("env")), plan_env)
}

/// The process's environment with the plan's variables set over it, and a PATH when it has
/// none (what runc and containerd assume when an image sets none).
pub fn merge_env(mut env: Vec<String>, plan_env: &[(String, String)]) -> Vec<String> {
    for (k, v) in plan_env {
        env.retain(|e| e.split_once('=').map(|(ek, _)| ek) != Some(k.as_str()));
        env.push(format!("{k}={v}"));
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    env
}

/// Refuses a process that asks for a capability in [`REFUSED_CAPABILITIES`].
pub fn check_capabilities(caps: Option<&Value>) -> Result<(), ConfineError> {
    let Some(caps) = caps else { return Ok(()) };
    for set in [
        "bounding",
        "effective",
        "permitted",
        "inheritable",
        "ambient",
    ] {
        for c in caps
            .get(set)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(c) = c.as_str()
                && REFUSED_CAPABILITIES.contains(&c)
            {
                return Err(ConfineError::Capability(c.to_string()));
            }
        }
    }
    Ok(())
}

/// The access the policy grants at `dest`: the deepest policy path containing it.
fn grant(plan: &Plan, dest: &str) -> Option<Access> {
    plan.filesystem
        .entries
        .iter()
        .filter(|e| Path::new(dest).starts_with(&e.path))
        .max_by_key(|e| e.path.len())
        .map(|e| e.access)
}

/// Denied policy paths inside a kept pod mount are masked in it (what the image shows there is
/// irrelevant: the mount covers it).
fn mask_denied_inside(
    plan: &Plan,
    mount: &Value,
    dest: &str,
    ordered: &mut Vec<(usize, u8, Value)>,
    notes: &mut Vec<String>,
) {
    let source = mount.get("source").and_then(Value::as_str).unwrap_or("");
    for e in &plan.filesystem.entries {
        if e.access != Access::Denied || e.path == dest || !Path::new(&e.path).starts_with(dest) {
            continue;
        }
        let rel = Path::new(&e.path)
            .strip_prefix(dest)
            .expect("checked above");
        let is_file = Path::new(source)
            .join(rel)
            .metadata()
            .is_ok_and(|m| !m.is_dir());
        let m = if is_file {
            json!({"destination": e.path, "type": "bind", "source": "/dev/null", "options": ["rbind", "nosuid", "nodev", "ro"]})
        } else {
            json!({"destination": e.path, "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "nodev", "noexec", "uid=65534", "gid=65534", format!("size={}", plan.filesystem.denied_dir_tmpfs_size), "ro", "mode=000"]})
        };
        notes.push(format!(
            "denied {} masked inside the pod mount {dest}",
            e.path
        ));
        ordered.push((depth_of(&e.path), 2, m));
    }
}

/// Landlock needs its three system calls; a pod profile that does not name them (older
/// containerd defaults) gets them allowed. They only ever take rights away.
fn allow_landlock(mut seccomp: Value) -> Value {
    let default = seccomp
        .get("defaultAction")
        .and_then(Value::as_str)
        .unwrap_or("SCMP_ACT_ALLOW");
    if default == "SCMP_ACT_ALLOW" {
        return seccomp;
    }
    let named = |name: &str| {
        seccomp
            .get("syscalls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|r| {
                r.get("names")
                    .and_then(Value::as_array)
                    .is_some_and(|n| n.iter().any(|v| v.as_str() == Some(name)))
            })
    };
    let missing: Vec<&str> = [
        "landlock_create_ruleset",
        "landlock_add_rule",
        "landlock_restrict_self",
    ]
    .into_iter()
    .filter(|n| !named(n))
    .collect();
    if !missing.is_empty() {
        if !seccomp.get("syscalls").is_some_and(Value::is_array) {
            seccomp["syscalls"] = json!([]);
        }
        seccomp["syscalls"]
            .as_array_mut()
            .expect("array")
            .push(json!({"names": missing, "action": "SCMP_ACT_ALLOW"}));
    }
    seccomp
}

fn is_mask(m: &Value) -> bool {
    m.get("source").and_then(Value::as_str) == Some("/dev/null")
        || (m.get("type").and_then(Value::as_str) == Some("tmpfs")
            && m.get("options")
                .and_then(Value::as_array)
                .is_some_and(|o| o.iter().any(|v| v.as_str() == Some("uid=65534"))))
}

fn has_option(m: &Value, opt: &str) -> bool {
    m.get("options")
        .and_then(Value::as_array)
        .is_some_and(|o| o.iter().any(|v| v.as_str() == Some(opt)))
}

fn read_only(mut m: Value) -> Value {
    let mut opts: Vec<Value> = m
        .get("options")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    opts.retain(|o| o.as_str() != Some("rw"));
    if !opts.iter().any(|o| o.as_str() == Some("ro")) {
        opts.push(json!("ro"));
    }
    m["options"] = json!(opts);
    m
}

fn depth(m: &Value) -> usize {
    depth_of(m.get("destination").and_then(Value::as_str).unwrap_or("/"))
}

fn depth_of(p: &str) -> usize {
    Path::new(p).components().count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentcell_policy::plan::{CompileOptions, Host, compile};
    use agentcell_policy::{ParseOptions, parse_with};

    fn plan(policy: &str) -> Plan {
        let doc = parse_with(policy, &ParseOptions::default()).unwrap();
        let opts = CompileOptions {
            rootfs: Some("/run/b/rootfs".into()),
            ..Default::default()
        };
        compile(&doc, &Host::reference(), &opts).unwrap()
    }

    fn cri_spec() -> Value {
        json!({
            "ociVersion": "1.0.2-dev",
            "process": {
                "user": {"uid": 1000, "gid": 1000, "additionalGids": [1000]},
                "args": ["/app/run", "--serve"],
                "env": ["PATH=/usr/bin:/bin", "HOME=/root", "MODE=pod"],
                "cwd": "/app",
                "capabilities": {"bounding": ["CAP_CHOWN", "CAP_KILL"], "effective": ["CAP_CHOWN", "CAP_KILL"], "permitted": ["CAP_CHOWN", "CAP_KILL"]},
                "noNewPrivileges": false,
                "oomScoreAdj": 1000
            },
            "root": {"path": "rootfs"},
            "hostname": "pod-a",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["ro"]},
                {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup"},
                {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/k/hosts", "options": ["rbind", "rw"]},
                {"destination": "/etc/resolv.conf", "type": "bind", "source": "/var/lib/k/resolv.conf", "options": ["rbind", "ro"]},
                {"destination": "/var/run/secrets/kubernetes.io/serviceaccount", "type": "bind", "source": "/var/lib/kubelet/pods/x/token", "options": ["rbind", "ro"]},
                {"destination": "/work", "type": "bind", "source": "/var/lib/kubelet/pods/x/work", "options": ["rbind", "rw"]},
                {"destination": "/data", "type": "bind", "source": "/var/lib/kubelet/pods/x/data", "options": ["rbind", "rw"]}
            ],
            "annotations": {"io.kubernetes.cri.container-type": "container"},
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "ipc", "path": "/proc/1/ns/ipc"}, {"type": "network", "path": "/var/run/netns/cni-1"}, {"type": "mount"}],
                "cgroupsPath": "/kubepods/besteffort/podx/abc",
                "resources": {"memory": {"limit": 268435456}, "devices": [{"allow": false, "access": "rwm"}]},
                "maskedPaths": ["/proc/kcore", "/sys/firmware"],
                "seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}]}
            }
        })
    }

    fn run(policy: &str, orig: &Value) -> Confined {
        let plan = plan(policy);
        let prepared = Prepared::default();
        confine(&Input {
            original: orig,
            plan: &plan,
            prepared: &prepared,
            rootfs: Path::new("/run/b/rootfs"),
            netns: None,
            net_raw: false,
        })
        .unwrap()
    }

    fn dests(c: &Confined) -> Vec<String> {
        c.spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap().to_string())
            .collect()
    }

    fn mount<'a>(c: &'a Confined, dest: &str) -> &'a Value {
        c.spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == dest)
            .unwrap()
    }

    const POLICY: &str = r#"{"version":"1.0.0","filesystem":{"readwritePaths":["/work"],"readonlyPaths":["/data"],"deniedPaths":["/work/.ssh"]}}"#;

    #[test]
    fn pod_mounts_survive_only_where_a_policy_path_grants_them() {
        let c = run(POLICY, &cri_spec());
        let d = dests(&c);
        assert!(!d.iter().any(|p| p.contains("serviceaccount")), "{d:?}");
        assert!(!d.contains(&"/sys".to_string()));
        assert!(!d.contains(&"/sys/fs/cgroup".to_string()));
        assert!(d.contains(&"/work".to_string()));
        // Granted read-only: forced read-only even though the pod mounted it rw.
        let data = mount(&c, "/data");
        assert!(data["options"].as_array().unwrap().contains(&json!("ro")));
        assert!(!data["options"].as_array().unwrap().contains(&json!("rw")));
        // Resolver files stay, read-only.
        assert!(
            mount(&c, "/etc/hosts")["options"]
                .as_array()
                .unwrap()
                .contains(&json!("ro"))
        );
        // The denied path inside the volume is masked after the volume.
        let work = d.iter().position(|p| p == "/work").unwrap();
        let ssh = d.iter().position(|p| p == "/work/.ssh").unwrap();
        assert!(work < ssh);
        assert!(c.landlock.write.contains(&PathBuf::from("/work")));
        assert!(c.notes.iter().any(|n| n.contains("serviceaccount")));
    }

    #[test]
    fn process_keeps_the_pod_s_command_and_gains_no_privileges() {
        let c = run(
            r#"{"version":"1.0.0","process":{"env":["MODE=policy"],"cwd":"/work","commandLine":"ignored"},"filesystem":{"readwritePaths":["/work"]}}"#,
            &cri_spec(),
        );
        let p = &c.spec["process"];
        assert_eq!(p["args"], json!(["/app/run", "--serve"]));
        assert_eq!(p["user"]["uid"], 1000);
        assert_eq!(p["noNewPrivileges"], true);
        assert_eq!(p["cwd"], "/work");
        let env: Vec<&str> = p["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(
            env.contains(&"MODE=policy") && !env.contains(&"MODE=pod"),
            "{env:?}"
        );
        assert!(env.contains(&"HOME=/root"));
        assert_eq!(
            p["capabilities"]["bounding"],
            json!(["CAP_CHOWN", "CAP_KILL"])
        );
    }

    #[test]
    fn linux_section_keeps_containerd_s_and_adds_the_plan_s() {
        let c = run(POLICY, &cri_spec());
        let l = &c.spec["linux"];
        assert_eq!(l["cgroupsPath"], "/kubepods/besteffort/podx/abc");
        assert_eq!(l["namespaces"].as_array().unwrap().len(), 4);
        assert_eq!(l["resources"]["memory"]["limit"], 268435456);
        assert!(l["resources"]["pids"]["limit"].as_u64().unwrap() > 0);
        let masked = l["maskedPaths"].as_array().unwrap();
        assert!(masked.contains(&json!("/sys/firmware")) && masked.contains(&json!("/proc/keys")));
        let names: Vec<&str> = l["seccomp"]["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| {
                r["names"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap())
            })
            .collect();
        assert!(names.contains(&"landlock_restrict_self"));
        assert_eq!(c.spec["root"]["readonly"], true);
        assert_eq!(c.spec["root"]["path"], "/run/b/rootfs");
        assert_eq!(c.spec["hostname"], "pod-a");
    }

    #[test]
    fn dangerous_capabilities_are_refused() {
        let mut s = cri_spec();
        s["process"]["capabilities"]["bounding"] = json!(["CAP_CHOWN", "CAP_SYS_ADMIN"]);
        let plan = plan(POLICY);
        let e = confine(&Input {
            original: &s,
            plan: &plan,
            prepared: &Prepared::default(),
            rootfs: Path::new("/r"),
            netns: None,
            net_raw: false,
        })
        .unwrap_err();
        assert!(e.to_string().contains("CAP_SYS_ADMIN"));
    }

    #[test]
    fn a_new_network_namespace_is_replaced_by_the_shim_s() {
        let mut s = cri_spec();
        s["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "network"}]);
        let plan = plan(POLICY);
        let c = confine(&Input {
            original: &s,
            plan: &plan,
            prepared: &Prepared::default(),
            rootfs: Path::new("/r"),
            netns: Some("/run/netns/ac-1".into()),
            net_raw: false,
        })
        .unwrap();
        let ns = c.spec["linux"]["namespaces"].as_array().unwrap();
        assert!(ns.contains(&json!({"type": "network", "path": "/run/netns/ac-1"})));
        assert_eq!(ns.len(), 2);
    }

    #[test]
    fn net_raw_is_dropped_unless_kept_and_ping_keeps_its_icmp_sockets() {
        let mut s = cri_spec();
        // containerd's default set carries CAP_NET_RAW.
        for set in ["bounding", "effective", "permitted"] {
            s["process"]["capabilities"][set] = json!(["CAP_CHOWN", "CAP_NET_RAW", "CAP_KILL"]);
        }
        let plan = plan(POLICY);
        let confined = |net_raw: bool, s: &Value| {
            confine(&Input {
                original: s,
                plan: &plan,
                prepared: &Prepared::default(),
                rootfs: Path::new("/r"),
                netns: None,
                net_raw,
            })
            .unwrap()
        };
        let c = confined(false, &s);
        for set in ["bounding", "effective", "permitted"] {
            assert_eq!(
                c.spec["process"]["capabilities"][set],
                json!(["CAP_CHOWN", "CAP_KILL"]),
                "{set}"
            );
        }
        assert!(
            c.notes.iter().any(|n| n.contains("CAP_NET_RAW dropped")),
            "{:?}",
            c.notes
        );
        assert_eq!(
            c.spec["linux"]["sysctl"]["net.ipv4.ping_group_range"],
            "0 2147483647"
        );
        // Kept (asked and allowed): untouched, and no sysctl added on its behalf.
        let c = confined(true, &s);
        assert_eq!(
            c.spec["process"]["capabilities"]["bounding"],
            json!(["CAP_CHOWN", "CAP_NET_RAW", "CAP_KILL"])
        );
        assert!(c.spec["linux"]["sysctl"]["net.ipv4.ping_group_range"].is_null());
        // A range the pod spec sets (containerd's own) stays as it is.
        s["linux"]["sysctl"] = json!({"net.ipv4.ping_group_range": "0 0"});
        let c = confined(false, &s);
        assert_eq!(
            c.spec["linux"]["sysctl"]["net.ipv4.ping_group_range"],
            "0 0"
        );
    }
}
