//! The task service (containerd's task API v2): one shim process serves every container of a
//! pod. Containers are made with libcontainer from the confined spec (`confine`), their exits
//! come from the reaper, their events go to containerd through one publisher thread.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use agentcell_policy::Plan;
use agentcell_policy::plan::{CompileOptions, PlanError};
use containerd_shim::api;
use containerd_shim::protos::events::task as ev;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{ExitSignal, Task, TtrpcContext, TtrpcResult};
use libcontainer::container::Container;
use libcontainer::oci_spec::runtime::LinuxSeccomp;
use nix::sys::signal::Signal;
use serde_json::Value;

use super::annotations::{self, NodeDefaults};
use super::build::{self, BuildError, BuildKind, BuildRequest};
use super::config::{self, ShimConfig};
use super::confine::{self, Input};
use super::io::{self, ShimSide, StdioPaths};
use super::reaper::{self, Exit, ExitCell, REAP_LOCK};
use super::stats;
use crate::network::link::{self, SandboxNet};
use crate::network::program::{self, Attachment};
use crate::sandbox::landlock::LandlockRules;
use crate::sandbox::{prepare, runner};

mod vm;

/// Where the shim keeps its state: `<root>/<namespace>/<container id>/` (the confined bundle)
/// and `<root>/<namespace>/lc/` (libcontainer's state).
pub const STATE_ROOT: &str = "/run/agentcell/shim";

type Event = (&'static str, Box<dyn MessageDyn + Send>);

pub struct Service {
    s: Arc<Shared>,
}

impl Clone for Service {
    fn clone(&self) -> Self {
        Self { s: self.s.clone() }
    }
}

struct Shared {
    namespace: String,
    root: PathBuf,
    events: Mutex<mpsc::Sender<Event>>,
    containers: Mutex<HashMap<String, Arc<Ctr>>>,
    /// Pod sandbox id → fingerprint of the network plan its namespace was fenced with.
    pods: Mutex<HashMap<String, String>>,
    /// Pod sandbox id → indexes of the container VMs' links in its namespace.
    pod_links: Mutex<HashMap<String, std::collections::BTreeSet<u32>>>,
    exit: Arc<ExitSignal>,
    last_activity: Mutex<Instant>,
    idle_exit: Mutex<Duration>,
    /// Requests being served (a slow `create` is activity, not idleness).
    in_flight: std::sync::atomic::AtomicUsize,
    /// The socket this shim serves on.
    socket: String,
}

impl Shared {
    /// Exits the shim. The socket is removed here: containerd-shim removes it only after
    /// reading the `address` file in the bundle, which containerd may have deleted by then.
    fn exit(&self) {
        let _ = std::fs::remove_file(&self.socket);
        self.exit.signal();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Created,
    Running,
    Paused,
}

struct Proc {
    exec_id: String,
    pid: Mutex<i32>,
    exit: Arc<ExitCell>,
    stdio: StdioPaths,
    io: Mutex<ShimSide>,
    /// The exec's process spec (`None` for the init process).
    spec: Option<Value>,
    /// Its handle on the guest agent (micro-VM tier).
    handle: Mutex<u32>,
    /// Its output streams, closed when it exits (micro-VM tier).
    vm_out: Mutex<Vec<vm::SharedOut>>,
}

struct Ctr {
    id: String,
    bundle: String,
    dir: PathBuf,
    lc_root: PathBuf,
    init: Arc<Proc>,
    execs: Mutex<HashMap<String, Arc<Proc>>>,
    phase: Mutex<Phase>,
    rootfs_mount: Option<PathBuf>,
    own_netns: Mutex<Option<SandboxNet>>,
    timeout_ms: Option<u64>,
    landlock: LandlockRules,
    stacked: Option<LinuxSeccomp>,
    plan_env: Vec<(String, String)>,
    pod_sandbox: Option<String>,
    /// Runs in a micro-VM (the VM tier's containers, but not its pod sandboxes).
    tier_vm: bool,
    /// The pod namespace the VM's tap goes into, and the pod (micro-VM tier under CRI).
    pod_netns: Option<(PathBuf, String)>,
    /// The tap this container's VM got in the pod's namespace.
    pod_link: Mutex<Option<crate::vm::net::PodLink>>,
    cgroups_path: String,
    systemd: bool,
    /// Applied to the init from outside: libcontainer would write it into the shim itself.
    oom_score_adj: Option<i64>,
    /// The container's VM (micro-VM tier); `None`: a libcontainer container.
    vm: Option<vm::VmParts>,
    /// The pod mounts' staged sources until the build, and what the built view must hold.
    view: Mutex<Option<super::podview::PodView>>,
}

/// Removes `oomScoreAdj` from a process spec: libcontainer writes it into the process that
/// builds; the shim sets it on the new process from outside instead (`after_build`).
fn take_oom_score_adj(process: &mut Value) -> Option<i64> {
    process
        .as_object_mut()
        .and_then(|p| p.remove("oomScoreAdj"))
        .and_then(|v| v.as_i64())
}

/// Gives the new process its OOM score adjustment (from outside: libcontainer would write it
/// into the process that builds, the build helper).
fn after_build(pid: i32, oom_score_adj: Option<i64>) {
    if let Some(v) = oom_score_adj
        && pid > 0
        && let Err(e) = std::fs::write(format!("/proc/{pid}/oom_score_adj"), v.to_string())
    {
        tracing::warn!(pid, oom_score_adj = v, error = %e, "setting the OOM score adjustment");
    }
}

/// Counts a request in flight until dropped.
struct Busy<'a>(&'a Shared);

impl<'a> Busy<'a> {
    fn new(s: &'a Shared) -> Self {
        s.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(s)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        *self.0.last_activity.lock().expect("activity") = Instant::now();
    }
}

fn err(code: Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.into()))
}

fn ts(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut x = Timestamp::new();
    x.seconds = d.as_secs() as i64;
    x.nanos = d.subsec_nanos() as i32;
    x
}

fn host() -> &'static agentcell_policy::Host {
    static H: OnceLock<agentcell_policy::Host> = OnceLock::new();
    H.get_or_init(crate::host::probe)
}

/// The name of the network namespace the shim makes for a container that asked for a new one:
/// unique per containerd namespace and container id, short enough for interface names.
fn netns_name(namespace: &str, id: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in namespace.bytes().chain([b'/']).chain(id.bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    format!("acs-{:012x}", h & 0xffff_ffff_ffff)
}

/// The fingerprint of a network plan (what a pod's namespace was fenced with).
fn network_fingerprint(plan: &Plan) -> String {
    agentcell_policy::canonical::digest_of(
        &serde_json::to_string(&plan.network).unwrap_or_default(),
    )
}

impl Service {
    pub fn new(
        namespace: &str,
        socket: &str,
        publisher: RemotePublisher,
        exit: Arc<ExitSignal>,
    ) -> Self {
        let (tx, rx) = mpsc::channel::<Event>();
        let ns = namespace.to_string();
        std::thread::Builder::new()
            .name("events".into())
            .spawn(move || {
                for (topic, event) in rx {
                    if let Err(e) =
                        publisher.publish(ttrpc::context::Context::default(), topic, &ns, event)
                    {
                        tracing::warn!(topic, error = %e, "publishing an event to containerd");
                    }
                }
            })
            .expect("event thread");
        let s = Arc::new(Shared {
            namespace: namespace.to_string(),
            root: Path::new(STATE_ROOT).join(namespace),
            events: Mutex::new(tx),
            containers: Mutex::new(HashMap::new()),
            pods: Mutex::new(HashMap::new()),
            pod_links: Mutex::new(HashMap::new()),
            exit,
            last_activity: Mutex::new(Instant::now()),
            idle_exit: Mutex::new(Duration::from_secs(60)),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            socket: socket.trim_start_matches("unix://").to_string(),
        });
        if let Err(e) = reaper::start() {
            tracing::error!(error = %e, "starting the reaper");
        }
        // Nothing connects to an idle shim for long: exit by ourselves. An idle shim with
        // containers gives back the text pages its last requests faulted in.
        let watch = s.clone();
        std::thread::spawn(move || {
            let mut trimmed_at = None;
            loop {
                std::thread::sleep(Duration::from_secs(1));
                let last = *watch.last_activity.lock().expect("activity");
                if last.elapsed() >= Duration::from_secs(2)
                    && watch.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 0
                    && trimmed_at != Some(last)
                {
                    let before = crate::sandbox::memory::resident();
                    let advised = crate::sandbox::memory::trim_text();
                    tracing::debug!(
                        before,
                        after = crate::sandbox::memory::resident(),
                        advised,
                        "trimmed idle text pages"
                    );
                    trimmed_at = Some(last);
                }
                let idle = *watch.idle_exit.lock().expect("idle");
                let empty = watch.containers.lock().expect("containers").is_empty()
                    && watch.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 0;
                if empty && watch.last_activity.lock().expect("activity").elapsed() > idle {
                    tracing::info!(idle_s = idle.as_secs(), "no containers: the shim exits");
                    watch.exit();
                    return;
                }
            }
        });
        Self { s }
    }

    fn touch(&self) {
        *self.s.last_activity.lock().expect("activity") = Instant::now();
    }

    fn publish(&self, topic: &'static str, event: Box<dyn MessageDyn + Send>) {
        let _ = self.s.events.lock().expect("events").send((topic, event));
    }

    fn get(&self, id: &str) -> TtrpcResult<Arc<Ctr>> {
        self.s
            .containers
            .lock()
            .expect("containers")
            .get(id)
            .cloned()
            .ok_or_else(|| err(Code::NOT_FOUND, format!("container {id} not found")))
    }

    fn process(&self, c: &Ctr, exec_id: &str) -> TtrpcResult<Arc<Proc>> {
        if exec_id.is_empty() {
            return Ok(c.init.clone());
        }
        c.execs
            .lock()
            .expect("execs")
            .get(exec_id)
            .cloned()
            .ok_or_else(|| {
                err(
                    Code::NOT_FOUND,
                    format!("exec {exec_id} not found in {}", c.id),
                )
            })
    }

    /// Everything `create` does before libcontainer: policy, rootfs, network, confined spec.
    #[allow(clippy::type_complexity)]
    fn prepare_container(
        &self,
        req: &api::CreateTaskRequest,
    ) -> Result<(Ctr, io::ProcessSide, ShimSide, Value, Plan), String> {
        let bundle = PathBuf::from(&req.bundle);
        let text = std::fs::read_to_string(bundle.join("config.json"))
            .map_err(|e| format!("reading {}/config.json: {e}", req.bundle))?;
        let original: Value =
            serde_json::from_str(&text).map_err(|e| format!("config.json: {e}"))?;
        let ann: BTreeMap<String, String> = original
            .get("annotations")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        let ctype = ann.get(annotations::CRI_CONTAINER_TYPE).cloned();
        let name = ann.get(annotations::CRI_CONTAINER_NAME).cloned();
        let sandbox_id = ann.get(annotations::CRI_SANDBOX_ID).cloned();

        let explicit = req
            .options
            .as_ref()
            .and_then(|o| config::config_path_from_options(&o.value));
        let cfg = ShimConfig::load(
            explicit.as_deref().unwrap_or(config::DEFAULT_PATH),
            explicit.is_some(),
        )
        .map_err(|e| e.to_string())?;
        *self.s.idle_exit.lock().expect("idle") = Duration::from_secs(cfg.idle_exit_seconds);
        let node = NodeDefaults {
            default_policy: cfg.default_policy_text().map_err(|e| e.to_string())?,
            allow_best_effort: cfg.allow_best_effort,
            allow_net_raw: cfg.allow_net_raw,
            mxc_release: cfg.mxc_release,
            config_path: cfg.path.clone(),
        };
        let selection =
            annotations::select(&ann, name.as_deref(), &node).map_err(|e| e.to_string())?;
        let chosen = selection.effective();

        // The image: mounted from the snapshot containerd prepared, or a directory (ctr --rootfs).
        let mut rootfs_mount = None;
        let root = match original.pointer("/root/path").and_then(Value::as_str) {
            Some(p) if Path::new(p).is_absolute() => PathBuf::from(p),
            Some(p) => bundle.join(p),
            None => return Err("config.json: root.path is missing".into()),
        };
        if !req.rootfs.is_empty() {
            std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
            for m in &req.rootfs {
                containerd_shim::mount::mount_rootfs(
                    Some(m.type_.as_str()),
                    Some(m.source.as_str()),
                    &m.options,
                    &root,
                )
                .map_err(|e| format!("mounting the rootfs ({}): {e}", m.type_))?;
            }
            rootfs_mount = Some(root.clone());
        }
        let fail = |msg: String| {
            if let Some(r) = &rootfs_mount {
                let _ = nix::mount::umount2(r, nix::mount::MntFlags::MNT_DETACH);
            }
            msg
        };

        // From here on the shim runs `ip` and `nft`: their exits must not be taken by the
        // reaper (it waits for this lock before reaping). Not before: the rootfs mount above
        // waits for a helper the reaper has to reap.
        let _reaping_paused = REAP_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let opts = CompileOptions {
            best_effort: selection.best_effort,
            rootfs: Some(root.display().to_string()),
            // The image's environment is the default one; the plan's variables go over it.
            image_env: true,
            ..CompileOptions::default()
        };
        let plan = agentcell_policy::compile(&chosen.document, host(), &opts).map_err(|e| {
            fail(match e {
                PlanError::Unsupported(v) => format!(
                    "annotation {}: {}",
                    chosen.origin,
                    v.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
                other => format!("annotation {}: {other}", chosen.origin),
            })
        })?;
        for w in plan.weakened() {
            tracing::warn!(field = %w.field, status = ?w.status, "weakened (best effort)");
        }
        tracing::info!(
            container = %req.id,
            policy = %chosen.origin,
            digest = %chosen.digest,
            mxc_release = %chosen.document.release,
            read_as = %plan.document.read_as,
            "policy accepted"
        );
        tracing::debug!(
            container = %req.id,
            policy = %chosen.origin,
            digest = %chosen.digest,
            plan = %serde_json::to_string(&plan).unwrap_or_default(),
            "compiled plan"
        );

        // The network: the pod's namespace is fenced once, when its sandbox is created; later
        // containers must bring the same network policy.
        let netns_entry = original
            .pointer("/linux/namespaces")
            .and_then(Value::as_array)
            .and_then(|l| {
                l.iter()
                    .find(|n| n.get("type").and_then(Value::as_str) == Some("network"))
            })
            .cloned();
        let fingerprint = network_fingerprint(&plan);
        // The VM tier runs a pod's sandbox (pause) container as a container: it only holds the
        // pod's namespaces.
        let as_vm = super::vm_tier() && ctype.as_deref() != Some("sandbox");
        let mut pod_netns: Option<PathBuf> = None;
        let mut pod_sandbox_of_vm: Option<String> = None;
        let mut own_netns = None;
        let mut pod_sandbox = None;
        match netns_entry {
            None => {
                return Err(fail(
                    "linux.namespaces: the container shares the host's network namespace (hostNetwork or --net-host): its egress cannot be fenced; refused".into(),
                ));
            }
            Some(ns) => match ns.get("path").and_then(Value::as_str) {
                Some(path) if ctype.as_deref() == Some("container") => {
                    let sid = sandbox_id.clone().unwrap_or_default();
                    let recorded = self.pod_fingerprint(&sid);
                    match recorded {
                        Some(f) if f == fingerprint => {}
                        Some(_) => {
                            return Err(fail(format!(
                                "annotation {}: the pod's network namespace ({path}) was fenced with another network policy; all containers of a pod share one",
                                chosen.origin
                            )));
                        }
                        None => {
                            return Err(fail(format!(
                                "pod sandbox {sid} was not fenced by agentcell: refusing to run in its network namespace ({path})"
                            )));
                        }
                    }
                    if as_vm {
                        // The VM's tap goes into the pod's namespace when it boots.
                        pod_netns = Some(PathBuf::from(path));
                        pod_sandbox_of_vm = Some(sid);
                    }
                }
                Some(path) => {
                    // Under the micro-VM tier the pod's containers run in VMs behind taps: the
                    // fence judges their forwarded traffic (the sandbox's pause process has
                    // no business on the network).
                    let attachment = if super::vm_tier() {
                        Attachment::PodVm(
                            crate::vm::net::POD_TAPS,
                            crate::vm::net::POD_GUEST_NET
                                .parse()
                                .expect("a valid network"),
                        )
                    } else {
                        Attachment::Existing
                    };
                    program::program(Path::new(path), &plan.network, &req.id, attachment)
                        .map_err(|e| fail(format!("network: fencing {path}: {e}")))?;
                    let sid = sandbox_id.clone().unwrap_or_else(|| req.id.clone());
                    self.record_pod(&sid, &fingerprint);
                    pod_sandbox = Some(sid);
                    tracing::info!(netns = %path, "pod network fenced");
                }
                None => {
                    let name = netns_name(&self.s.namespace, &req.id);
                    // A namespace of this name is what a killed shim left behind.
                    if Path::new("/run/netns").join(&name).exists() {
                        link::remove(&name);
                    }
                    let mut net = SandboxNet::create(&name, plan.network.needs_uplink)
                        .map_err(|e| fail(format!("network: {e}")))?;
                    if net.uplink.is_some() && as_vm {
                        // The VM's traffic is forwarded through this namespace: the fence
                        // judges it there, outside the guest.
                        if let Err(e) = crate::vm::net::attach(&mut net, &plan.network, &req.id) {
                            net.destroy();
                            return Err(fail(format!("network: {e}")));
                        }
                    } else if net.uplink.is_some() {
                        let path = net.path();
                        program::program(
                            &path,
                            &plan.network,
                            &req.id,
                            Attachment::Uplink(&mut net),
                        )
                        .map_err(|e| fail(format!("network: {e}")))?;
                    }
                    own_netns = Some(net);
                }
            },
        }
        let fail = |msg: String| {
            if let Some(n) = own_netns.as_ref() {
                n.destroy();
            }
            fail(msg)
        };

        let prepared = prepare::prepare(&plan.filesystem).map_err(|e| fail(e.to_string()))?;
        for r in &prepared.reports {
            tracing::info!(container = %req.id, "{r}");
        }
        let confined = confine::confine(&Input {
            original: &original,
            plan: &plan,
            prepared: &prepared,
            rootfs: &root,
            netns: own_netns.as_ref().map(|n| n.path()),
            net_raw: selection.net_raw,
        })
        .map_err(|e| fail(e.to_string()))?;
        for n in &confined.notes {
            tracing::info!(container = %req.id, "{n}");
        }
        let mut confined = confined;
        let oom_score_adj = take_oom_score_adj(&mut confined.spec["process"]);
        let dir = self.s.root.join(&req.id);
        std::fs::create_dir_all(&dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
        // The runtime is given staged copies of the pod mounts' resolved sources, never their
        // host paths (the micro-VM tier exports its view otherwise: `vmspec`).
        let view = if as_vm {
            None
        } else {
            Some(
                super::podview::stage(&mut confined.spec, &confined.pod_mounts, &dir)
                    .map_err(|e| fail(e.to_string()))?,
            )
        };
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_vec(&confined.spec).unwrap_or_default(),
        )
        .map_err(|e| fail(format!("writing the confined spec: {e}")))?;
        let meta = serde_json::json!({
            "rootfs": rootfs_mount,
            "netns": own_netns.as_ref().map(|n| n.name.clone()),
            "policy": chosen.origin,
            "digest": chosen.digest,
        });
        let _ = std::fs::write(dir.join("meta.json"), meta.to_string());
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        // In a VM a terminal is the guest's: its output arrives as plain bytes.
        let mut plain = stdio.clone();
        plain.terminal &= !as_vm;
        let (pside, sside) =
            io::setup(&plain, &dir, "init").map_err(|e| fail(format!("stdio: {e}")))?;
        let stacked = if plan.host.seccomp {
            serde_json::to_value(&plan.seccomp)
                .ok()
                .and_then(|v| serde_json::from_value(v).ok())
        } else {
            None
        };
        let cfg_systemd = cfg.use_systemd();
        let ctr = Ctr {
            id: req.id.clone(),
            bundle: req.bundle.clone(),
            lc_root: self.s.root.join("lc"),
            dir,
            init: Arc::new(Proc {
                exec_id: String::new(),
                pid: Mutex::new(0),
                exit: Arc::new(ExitCell::default()),
                stdio,
                io: Mutex::new(ShimSide::default()),
                spec: None,
                handle: Mutex::new(0),
                vm_out: Mutex::new(Vec::new()),
            }),
            execs: Mutex::new(HashMap::new()),
            phase: Mutex::new(Phase::Created),
            rootfs_mount,
            own_netns: Mutex::new(own_netns),
            timeout_ms: plan.process.timeout_ms,
            landlock: confined.landlock,
            stacked,
            plan_env: plan.process.env.clone(),
            pod_sandbox,
            tier_vm: as_vm,
            pod_netns: pod_netns.zip(pod_sandbox_of_vm),
            pod_link: Mutex::new(None),
            cgroups_path: confined
                .spec
                .pointer("/linux/cgroupsPath")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            systemd: cfg_systemd,
            oom_score_adj,
            vm: None,
            view: Mutex::new(view),
        };
        Ok((ctr, pside, sside, confined.spec, plan))
    }

    fn pod_fingerprint(&self, sandbox: &str) -> Option<String> {
        if let Some(f) = self.s.pods.lock().expect("pods").get(sandbox) {
            return Some(f.clone());
        }
        std::fs::read_to_string(self.s.root.join("pods").join(sandbox)).ok()
    }

    fn record_pod(&self, sandbox: &str, fingerprint: &str) {
        self.s
            .pods
            .lock()
            .expect("pods")
            .insert(sandbox.to_string(), fingerprint.to_string());
        let dir = self.s.root.join("pods");
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join(sandbox), fingerprint);
    }

    /// Builds `kind` for `c` in the build helper (`build`: never in this multi-threaded
    /// process); the new process's pid. Call with `REAP_LOCK` held until the pid is watched.
    fn build(c: &Ctr, pside: io::ProcessSide, kind: BuildKind) -> Result<i32, BuildError> {
        let req = BuildRequest {
            id: c.id.clone(),
            root: c.lc_root.clone(),
            kind,
            landlock: c.landlock.clone(),
            stacked_seccomp: c.stacked.clone(),
            stdio: [None; 3],
            console_socket: pside.console_socket,
        };
        build::build(
            req,
            [pside.stdin, pside.stdout, pside.stderr],
            build::TIMEOUT,
        )
    }

    /// Watches `p`'s pid: on exit, the status is recorded and the exit event published.
    fn watch_exit(&self, c: &Arc<Ctr>, p: &Arc<Proc>, pid: i32) {
        let events = self.s.events.lock().expect("events").clone();
        let (cid, eid) = (c.id.clone(), p.exec_id.clone());
        let ctr = c.clone();
        reaper::watch(
            pid,
            p.exit.clone(),
            Some(Box::new(move |e: Exit| {
                if eid.is_empty() {
                    // The init is gone: so is every exec (the PID namespace dies with it).
                    for x in ctr.execs.lock().expect("execs").values() {
                        if x.exit.get().is_none() && *x.pid.lock().expect("pid") == 0 {
                            x.exit.set(e);
                        }
                    }
                }
                let mut x = ev::TaskExit::new();
                x.container_id = cid.clone();
                x.id = if eid.is_empty() { cid } else { eid };
                x.pid = pid as u32;
                x.exit_status = e.status;
                x.exited_at = Some(ts(e.at)).into();
                let _ = events.send((topics::TASK_EXIT_EVENT_TOPIC, Box::new(x)));
            })),
        );
    }

    fn start_init(&self, c: &Arc<Ctr>) -> TtrpcResult<i32> {
        let mut lc = Container::load(c.lc_root.join(&c.id))
            .map_err(|e| err(Code::INTERNAL, format!("loading {}: {e}", c.id)))?;
        {
            let _g = REAP_LOCK.lock().unwrap_or_else(|p| p.into_inner());
            lc.start()
                .map_err(|e| err(Code::INTERNAL, format!("starting {}: {e}", c.id)))?;
        }
        *c.phase.lock().expect("phase") = Phase::Running;
        let pid = *c.init.pid.lock().expect("pid");
        if let Some(ms) = c.timeout_ms {
            // process.timeout: the whole container is killed at the deadline.
            let (cell, root, id) = (c.init.exit.clone(), c.lc_root.clone(), c.id.clone());
            std::thread::spawn(move || {
                if cell.wait_timeout(Duration::from_millis(ms)).is_none() {
                    tracing::info!(container = %id, timeout_ms = ms, "process.timeout reached: killing the container");
                    if let Ok(mut lc) = Container::load(root.join(&id)) {
                        let _ = lc.kill(Signal::SIGKILL, true);
                    }
                }
            });
        }
        Ok(pid)
    }

    fn start_exec(&self, c: &Arc<Ctr>, p: &Arc<Proc>) -> TtrpcResult<i32> {
        let mut spec = p.spec.clone().unwrap_or_default();
        confine::check_capabilities(spec.get("capabilities"))
            .map_err(|e| err(Code::PERMISSION_DENIED, format!("exec {}: {e}", p.exec_id)))?;
        spec["noNewPrivileges"] = Value::Bool(true);
        let oom = take_oom_score_adj(&mut spec);
        spec["env"] = serde_json::json!(confine::with_plan_env(&spec, &c.plan_env));
        let path = c.dir.join(format!("exec-{}.json", p.exec_id));
        std::fs::write(&path, spec.to_string())
            .map_err(|e| err(Code::INTERNAL, format!("{}: {e}", path.display())))?;
        let (pside, mut sside) = io::setup(&p.stdio, &c.dir, &p.exec_id)
            .map_err(|e| err(Code::INTERNAL, format!("exec stdio: {e}")))?;
        let console = sside.receive_console(p.stdio.clone());
        let pid = {
            let _g = REAP_LOCK.lock().unwrap_or_else(|p| p.into_inner());
            let pid = Self::build(c, pside, BuildKind::Exec { process: path })
                .map_err(|e| err(Code::INTERNAL, format!("exec {}: {e}", p.exec_id)))?;
            after_build(pid, oom);
            *p.pid.lock().expect("pid") = pid;
            self.watch_exit(c, p, pid);
            pid
        };
        if let Some(h) = console {
            let _ = h.join();
        }
        *p.io.lock().expect("io") = sside;
        Ok(pid)
    }

    /// Records a created container and tells containerd.
    fn created(
        &self,
        req: &api::CreateTaskRequest,
        ctr: Arc<Ctr>,
        pid: i32,
    ) -> api::CreateTaskResponse {
        self.s
            .containers
            .lock()
            .expect("containers")
            .insert(req.id.clone(), ctr);
        let mut e = ev::TaskCreate::new();
        e.container_id = req.id.clone();
        e.bundle = req.bundle.clone();
        e.rootfs = req.rootfs.clone();
        e.io = Some(ev::TaskIO {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
            ..Default::default()
        })
        .into();
        e.pid = pid as u32;
        self.publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(e));
        api::CreateTaskResponse {
            pid: pid as u32,
            ..Default::default()
        }
    }

    fn cleanup(&self, c: &Ctr) {
        self.stop_vm(c);
        if let (Some((netns, sid)), Some(link)) =
            (&c.pod_netns, c.pod_link.lock().expect("link").take())
        {
            let _g = REAP_LOCK.lock().unwrap_or_else(|p| p.into_inner());
            crate::vm::net::detach_pod(netns, &link.tap);
            if let Some(used) = self.s.pod_links.lock().expect("links").get_mut(sid) {
                used.retain(|i| crate::vm::net::pod_link(*i).tap != link.tap);
            }
        }
        if let Ok(mut lc) = Container::load(c.lc_root.join(&c.id)) {
            let _g = REAP_LOCK.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = lc.delete(true) {
                tracing::warn!(container = %c.id, error = %e, "deleting the container");
            }
        }
        if let Some(r) = &c.rootfs_mount
            && let Err(e) = nix::mount::umount2(r, nix::mount::MntFlags::MNT_DETACH)
        {
            tracing::warn!(rootfs = %r.display(), error = %e, "unmounting the rootfs");
        }
        if let Some(n) = c.own_netns.lock().expect("netns").take() {
            // Removing it runs `ip` and `nft`: keep the reaper off their exits.
            let _g = REAP_LOCK.lock().unwrap_or_else(|p| p.into_inner());
            drop(n);
        }
        if let Some(sid) = &c.pod_sandbox {
            self.s.pods.lock().expect("pods").remove(sid);
            let _ = std::fs::remove_file(self.s.root.join("pods").join(sid));
        }
        // Staged sources are host trees: detached before the directory is removed.
        drop(c.view.lock().expect("view").take());
        if let Err(e) = runner::remove_tree(&c.dir) {
            tracing::warn!(container = %c.id, error = %e, "removing the state directory");
        }
    }
}

impl Task for Service {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        self.touch();
        let _busy = Busy::new(&self.s);
        let _span = tracing::info_span!("create", container = %req.id).entered();
        let t0 = Instant::now();
        let (mut ctr, pside, mut sside, confined, plan) =
            self.prepare_container(&req).map_err(|m| {
                tracing::error!(container = %req.id, "refused: {m}");
                err(Code::FAILED_PRECONDITION, m)
            })?;
        if ctr.tier_vm {
            *ctr.init.handle.lock().expect("handle") = vm::INIT_HANDLE;
            let booted = self.create_vm(&ctr, pside, &confined, &plan);
            let pid = match booted {
                Ok((parts, pid)) => {
                    ctr.vm = Some(parts);
                    pid
                }
                Err(m) => {
                    self.cleanup(&ctr);
                    tracing::error!(container = %req.id, "refused: {m}");
                    return Err(err(Code::FAILED_PRECONDITION, m));
                }
            };
            *ctr.init.io.lock().expect("io") = sside;
            *ctr.init.pid.lock().expect("pid") = pid;
            if let Some(v) = &ctr.vm {
                let mut meta: Value = std::fs::read_to_string(ctr.dir.join("meta.json"))
                    .ok()
                    .and_then(|t| serde_json::from_str(&t).ok())
                    .unwrap_or_else(|| serde_json::json!({}));
                meta["qemu_pid"] = serde_json::json!(v.qemu_pid);
                if let Some(vm) = v.vm.lock().expect("vm").as_ref() {
                    meta["vm_state"] = serde_json::json!(vm.state_dir);
                }
                if let (Some((ns, _)), Some(l)) =
                    (&ctr.pod_netns, ctr.pod_link.lock().expect("link").as_ref())
                {
                    meta["pod_netns"] = serde_json::json!(ns);
                    meta["pod_tap"] = serde_json::json!(l.tap);
                }
                let _ = std::fs::write(ctr.dir.join("meta.json"), meta.to_string());
            }
            tracing::info!(container = %req.id, pid, elapsed_us = t0.elapsed().as_micros() as u64, "created in a micro-VM");
            return Ok(self.created(&req, Arc::new(ctr), pid));
        }
        drop((confined, plan));
        let ctr = Arc::new(ctr);
        let console = sside.receive_console(ctr.init.stdio.clone());
        let built = {
            let _g = REAP_LOCK.lock().unwrap_or_else(|p| p.into_inner());
            let kind = BuildKind::Init {
                bundle: ctr.dir.clone(),
                systemd: ctr.systemd,
            };
            match Self::build(&ctr, pside, kind) {
                Ok(pid) => {
                    after_build(pid, ctr.oom_score_adj);
                    *ctr.init.pid.lock().expect("pid") = pid;
                    self.watch_exit(&ctr, &ctr.init, pid);
                    Ok(pid)
                }
                Err(e) => Err(e.to_string()),
            }
        };
        if let Some(h) = console {
            let _ = h.join();
        }
        *ctr.init.io.lock().expect("io") = sside;
        let pid = match built {
            Ok(pid) => pid,
            Err(m) => {
                let why = ctr
                    .view
                    .lock()
                    .expect("view")
                    .as_ref()
                    .and_then(|v| v.explain());
                self.cleanup(&ctr);
                if let Some(e) = why {
                    tracing::error!(container = %req.id, "refused: {e} (the runtime: {m})");
                    return Err(err(
                        Code::FAILED_PRECONDITION,
                        format!("creating {}: {e} (the runtime: {m})", req.id),
                    ));
                }
                return Err(err(Code::INTERNAL, format!("creating {}: {m}", req.id)));
            }
        };
        // The view is built (in the container's mount namespace, which keeps its copies): the
        // staged sources go, and what was built is checked before anything runs in it.
        let checked = ctr
            .view
            .lock()
            .expect("view")
            .as_mut()
            .map_or(Ok(()), |v| v.detach().and_then(|()| v.verify(pid)));
        if let Err(e) = checked {
            tracing::error!(container = %req.id, "refused: {e}");
            self.cleanup(&ctr);
            return Err(err(Code::FAILED_PRECONDITION, e.to_string()));
        }
        tracing::info!(container = %req.id, pid, elapsed_us = t0.elapsed().as_micros() as u64, "created");
        let events = self.s.events.lock().expect("events").clone();
        let cid = req.id.clone();
        if let Err(e) = super::oom::watch(pid, move || {
            tracing::warn!(container = %cid, "out of memory: the kernel killed a process");
            let mut x = ev::TaskOOM::new();
            x.container_id = cid.clone();
            let _ = events.send((topics::TASK_OOM_EVENT_TOPIC, Box::new(x)));
        }) {
            tracing::warn!(container = %req.id, error = %e, "OOM events unavailable");
        }
        Ok(self.created(&req, ctr, pid))
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        self.touch();
        let c = self.get(&req.id)?;
        let pid = if req.exec_id.is_empty() {
            let pid = if c.vm.is_some() {
                self.start_vm_init(&c).map_err(|m| err(Code::INTERNAL, m))?
            } else {
                self.start_init(&c)?
            };
            let mut e = ev::TaskStart::new();
            e.container_id = c.id.clone();
            e.pid = pid as u32;
            self.publish(topics::TASK_START_EVENT_TOPIC, Box::new(e));
            pid
        } else {
            let p = self.process(&c, &req.exec_id)?;
            let pid = if c.vm.is_some() {
                self.start_vm_exec(&c, &p)
                    .map_err(|m| err(Code::INTERNAL, m))?
            } else {
                self.start_exec(&c, &p)?
            };
            let mut e = ev::TaskExecStarted::new();
            e.container_id = c.id.clone();
            e.exec_id = req.exec_id.clone();
            e.pid = pid as u32;
            self.publish(topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(e));
            pid
        };
        Ok(api::StartResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        self.touch();
        let c = self.get(&req.id)?;
        if !req.exec_id.is_empty() {
            let p = self.process(&c, &req.exec_id)?;
            let e = p.exit.get().ok_or_else(|| {
                err(
                    Code::FAILED_PRECONDITION,
                    format!("exec {} is still running", req.exec_id),
                )
            })?;
            c.execs.lock().expect("execs").remove(&req.exec_id);
            if let Some(v) = &c.vm {
                let _ = v.client.delete(*p.handle.lock().expect("handle"));
            }
            let _ = std::fs::remove_file(c.dir.join(format!("exec-{}.json", req.exec_id)));
            return Ok(api::DeleteResponse {
                pid: *p.pid.lock().expect("pid") as u32,
                exit_status: e.status,
                exited_at: Some(ts(e.at)).into(),
                ..Default::default()
            });
        }
        let pid = *c.init.pid.lock().expect("pid");
        if c.init.exit.get().is_none() && c.vm.is_none() {
            // Deleting a created (never started) or still running task kills it first.
            if let Ok(mut lc) = Container::load(c.lc_root.join(&c.id)) {
                let _ = lc.kill(Signal::SIGKILL, true);
            }
            let _ = c.init.exit.wait_timeout(Duration::from_secs(10));
        }
        self.cleanup(&c);
        self.s
            .containers
            .lock()
            .expect("containers")
            .remove(&req.id);
        let e = c.init.exit.get().unwrap_or(Exit {
            status: 137,
            at: SystemTime::now(),
        });
        let mut ev = ev::TaskDelete::new();
        ev.container_id = c.id.clone();
        ev.pid = pid as u32;
        ev.exit_status = e.status;
        ev.exited_at = Some(ts(e.at)).into();
        self.publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(ev));
        tracing::info!(container = %c.id, status = e.status, "deleted");
        Ok(api::DeleteResponse {
            pid: pid as u32,
            exit_status: e.status,
            exited_at: Some(ts(e.at)).into(),
            ..Default::default()
        })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let c = self.get(&req.id)?;
        let pid = *c.init.pid.lock().expect("pid");
        // A VM's processes are the guest's: on the host the container is qemu.
        let list = match &c.vm {
            Some(v) => vec![v.qemu_pid as u32],
            None => stats::pids(pid),
        };
        let processes = list
            .into_iter()
            .map(|p| containerd_shim::protos::types::task::ProcessInfo {
                pid: p,
                ..Default::default()
            })
            .collect();
        Ok(api::PidsResponse {
            processes,
            ..Default::default()
        })
    }

    fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        let c = self.get(&req.id)?;
        if c.vm.is_some() {
            return Err(err(
                Code::UNIMPLEMENTED,
                "pause: not supported by the micro-VM tier",
            ));
        }
        let mut lc = Container::load(c.lc_root.join(&c.id))
            .map_err(|e| err(Code::INTERNAL, e.to_string()))?;
        lc.pause().map_err(|e| err(Code::INTERNAL, e.to_string()))?;
        *c.phase.lock().expect("phase") = Phase::Paused;
        let mut e = ev::TaskPaused::new();
        e.container_id = c.id.clone();
        self.publish(topics::TASK_PAUSED_EVENT_TOPIC, Box::new(e));
        Ok(api::Empty::new())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        let c = self.get(&req.id)?;
        if c.vm.is_some() {
            return Err(err(
                Code::UNIMPLEMENTED,
                "resume: not supported by the micro-VM tier",
            ));
        }
        let mut lc = Container::load(c.lc_root.join(&c.id))
            .map_err(|e| err(Code::INTERNAL, e.to_string()))?;
        lc.resume()
            .map_err(|e| err(Code::INTERNAL, e.to_string()))?;
        *c.phase.lock().expect("phase") = Phase::Running;
        let mut e = ev::TaskResumed::new();
        e.container_id = c.id.clone();
        self.publish(topics::TASK_RESUMED_EVENT_TOPIC, Box::new(e));
        Ok(api::Empty::new())
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        self.touch();
        let c = self.get(&req.id)?;
        let sig = Signal::try_from(req.signal as i32)
            .map_err(|_| err(Code::INVALID_ARGUMENT, format!("signal {}", req.signal)))?;
        if c.vm.is_some() {
            let p = self.process(&c, &req.exec_id)?;
            return self
                .kill_vm(&c, &p, req.signal as i32, req.all)
                .map(|_| api::Empty::new())
                .map_err(|m| err(Code::NOT_FOUND, m));
        }
        if req.all && req.exec_id.is_empty() {
            let mut lc = Container::load(c.lc_root.join(&c.id))
                .map_err(|e| err(Code::INTERNAL, e.to_string()))?;
            return lc
                .kill(sig, true)
                .map(|_| api::Empty::new())
                .map_err(|e| err(Code::INTERNAL, e.to_string()));
        }
        let p = self.process(&c, &req.exec_id)?;
        // Under the reap lock an unreaped pid cannot be reused: the signal reaches our process.
        let _g = REAP_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        if p.exit.get().is_some() {
            return Err(err(Code::NOT_FOUND, "process already finished"));
        }
        let pid = *p.pid.lock().expect("pid");
        if pid <= 0 {
            return Err(err(Code::FAILED_PRECONDITION, "process not started"));
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
            .map_err(|e| err(Code::INTERNAL, format!("kill {pid}: {e}")))?;
        Ok(api::Empty::new())
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        self.touch();
        let c = self.get(&req.id)?;
        let spec: Value = req
            .spec
            .as_ref()
            .map(|a| serde_json::from_slice(&a.value))
            .transpose()
            .map_err(|e| err(Code::INVALID_ARGUMENT, format!("exec process spec: {e}")))?
            .ok_or_else(|| err(Code::INVALID_ARGUMENT, "exec without a process spec"))?;
        let mut execs = c.execs.lock().expect("execs");
        if execs.contains_key(&req.exec_id) {
            return Err(err(
                Code::ALREADY_EXISTS,
                format!("exec {} exists", req.exec_id),
            ));
        }
        let terminal = spec
            .get("terminal")
            .and_then(Value::as_bool)
            .unwrap_or(req.terminal);
        execs.insert(
            req.exec_id.clone(),
            Arc::new(Proc {
                exec_id: req.exec_id.clone(),
                pid: Mutex::new(0),
                exit: Arc::new(ExitCell::default()),
                stdio: StdioPaths {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal,
                },
                io: Mutex::new(ShimSide::default()),
                spec: Some(spec),
                handle: Mutex::new(0),
                vm_out: Mutex::new(Vec::new()),
            }),
        );
        let mut e = ev::TaskExecAdded::new();
        e.container_id = c.id.clone();
        e.exec_id = req.exec_id.clone();
        self.publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(e));
        Ok(api::Empty::new())
    }

    fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let c = self.get(&req.id)?;
        let p = self.process(&c, &req.exec_id)?;
        if let Some(v) = &c.vm {
            let handle = *p.handle.lock().expect("handle");
            return v
                .client
                .resize(handle, req.height as u16, req.width as u16)
                .map(|_| api::Empty::new())
                .map_err(|e| err(Code::FAILED_PRECONDITION, e.to_string()));
        }
        p.io.lock()
            .expect("io")
            .resize(req.width, req.height)
            .map_err(|e| err(Code::FAILED_PRECONDITION, e.to_string()))?;
        Ok(api::Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        let c = self.get(&req.id)?;
        let p = self.process(&c, &req.exec_id)?;
        if req.stdin {
            p.io.lock().expect("io").close_stdin();
        }
        Ok(api::Empty::new())
    }

    fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        let c = self.get(&req.id)?;
        if c.vm.is_some() {
            return Err(err(
                Code::UNIMPLEMENTED,
                "update: a micro-VM's resources are fixed when it boots",
            ));
        }
        let resources: libcontainer::oci_spec::runtime::LinuxResources = req
            .resources
            .as_ref()
            .map(|a| serde_json::from_slice(&a.value))
            .transpose()
            .map_err(|e| err(Code::INVALID_ARGUMENT, format!("resources: {e}")))?
            .unwrap_or_default();
        let manager = libcgroups::common::create_cgroup_manager(libcgroups::common::CgroupConfig {
            cgroup_path: PathBuf::from(&c.cgroups_path),
            systemd_cgroup: c.systemd,
            container_name: c.id.clone(),
        })
        .map_err(|e| err(Code::INTERNAL, format!("cgroup of {}: {e}", c.id)))?;
        use libcgroups::common::CgroupManager as _;
        manager
            .apply(&libcgroups::common::ControllerOpt {
                resources: &resources,
                freezer_state: None,
                oom_score_adj: None,
                disable_oom_killer: false,
            })
            .map_err(|e| {
                err(
                    Code::INTERNAL,
                    format!("updating resources of {}: {e}", c.id),
                )
            })?;
        Ok(api::Empty::new())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let c = self.get(&req.id)?;
        let p = self.process(&c, &req.exec_id)?;
        let e = p.exit.wait();
        self.touch();
        Ok(api::WaitResponse {
            exit_status: e.status,
            exited_at: Some(ts(e.at)).into(),
            ..Default::default()
        })
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let c = self.get(&req.id)?;
        let p = self.process(&c, &req.exec_id)?;
        let pid = *p.pid.lock().expect("pid");
        let exit = p.exit.get();
        let status = match (exit, *c.phase.lock().expect("phase")) {
            (Some(_), _) => api::Status::STOPPED,
            (None, _) if pid == 0 => api::Status::CREATED,
            (None, Phase::Created) if req.exec_id.is_empty() => api::Status::CREATED,
            (None, Phase::Paused) => api::Status::PAUSED,
            (None, _) => api::Status::RUNNING,
        };
        Ok(api::StateResponse {
            id: req.id.clone(),
            bundle: c.bundle.clone(),
            pid: pid as u32,
            status: status.into(),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status: exit.map_or(0, |e| e.status),
            exited_at: exit.map(|e| ts(e.at)).into(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let c = self.get(&req.id)?;
        let pid = *c.init.pid.lock().expect("pid");
        let any = match &c.vm {
            Some(v) => v
                .client
                .stats()
                .map_err(|e| e.to_string())
                .and_then(|s| stats::vm_metrics(&s)),
            None => stats::metrics(pid),
        }
        .map_err(|e| err(Code::INTERNAL, e))?;
        Ok(api::StatsResponse {
            stats: Some(any).into(),
            ..Default::default()
        })
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        self.touch();
        let task_pid = self
            .s
            .containers
            .lock()
            .expect("containers")
            .get(&req.id)
            .map_or(0, |c| *c.init.pid.lock().expect("pid"));
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: task_pid as u32,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        if self.s.containers.lock().expect("containers").is_empty() {
            tracing::info!(namespace = %self.s.namespace, "shutdown: no containers left");
            self.s.exit();
        }
        Ok(api::Empty::new())
    }
}

/// `containerd-shim-agentcell-v2 delete`: cleans up a container whose shim is gone (killed,
/// crashed): kills what is left of it, deletes its cgroup and state, unmounts its rootfs,
/// removes the network namespace the shim made for it.
pub fn delete_orphan(namespace: &str, id: &str, bundle: &Path) -> api::DeleteResponse {
    let root = Path::new(STATE_ROOT).join(namespace);
    let dir = root.join(id);
    let mut pid = 0;
    if let Ok(mut lc) = Container::load(root.join("lc").join(id)) {
        pid = lc.pid().map_or(0, |p| p.as_raw());
        let _ = lc.kill(Signal::SIGKILL, true);
        // The processes must be gone before the cgroup can be removed.
        for _ in 0..100 {
            if lc.refresh_status().is_ok()
                && lc.status() == libcontainer::container::ContainerStatus::Stopped
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Err(e) = lc.delete(true) {
            tracing::warn!(container = %id, error = %e, "deleting the container");
        }
    }
    let meta: Value = std::fs::read_to_string(dir.join("meta.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let rootfs = meta
        .get("rootfs")
        .and_then(Value::as_str)
        .map(PathBuf::from)
        .unwrap_or_else(|| bundle.join("rootfs"));
    if let (Some(qpid), Some(state)) = (
        meta.get("qemu_pid").and_then(Value::as_i64),
        meta.get("vm_state").and_then(Value::as_str),
    ) {
        // Only that VM's qemu: its command line names its state directory (pids are reused).
        let cmdline = std::fs::read(format!("/proc/{qpid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(state) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(qpid as i32), Signal::SIGKILL);
            for _ in 0..100 {
                if !Path::new(&format!("/proc/{qpid}")).exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = std::fs::remove_dir_all(state);
    }
    if let (Some(ns), Some(tap)) = (
        meta.get("pod_netns").and_then(Value::as_str),
        meta.get("pod_tap").and_then(Value::as_str),
    ) {
        crate::vm::net::detach_pod(Path::new(ns), tap);
    }
    let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
    if let Some(n) = meta.get("netns").and_then(Value::as_str) {
        link::remove(n);
    }
    let _ = std::fs::remove_file(root.join("pods").join(id));
    // A staging a killed shim left mounted is detached first (`remove_tree`).
    let _ = runner::remove_tree(&dir);
    api::DeleteResponse {
        pid: pid as u32,
        exit_status: 137,
        exited_at: Some(ts(SystemTime::now())).into(),
        ..Default::default()
    }
}
