//! `agentcell run --isolation microvm`: one VM for one workload, with the same plan, exit codes
//! and stdio as the container tier.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use agentcell_policy::Plan;

use super::assets;
use super::client::{ClientError, Sinks};
use super::spec::{self, SpecInput};
use super::vmm::{Vm, VmConfig};
use crate::network::link::SandboxNet;
use crate::sandbox::prepare;
use crate::sandbox::runner::{self, Outcome};

/// A failure before the workload ran: the field or step, and why (exit code 125).
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RunError {
    pub field: String,
    pub message: String,
}

fn err(field: &str) -> impl FnOnce(String) -> RunError {
    let field = field.to_string();
    move |message| RunError { field, message }
}

pub struct MicroVmRun<'a> {
    pub plan: &'a Plan,
    pub args: Vec<String>,
    pub id: String,
    pub uid: u32,
    pub gid: u32,
    /// `--vm-dir` (else AGENTCELL_VM_DIR, else the default).
    pub vm_dir: Option<PathBuf>,
    /// Where the container tier keeps state (swept for dead runners' namespaces).
    pub state_root: PathBuf,
}

/// Runs the workload in a fresh VM; returns how it ended and the reports of preparing the view
/// (the caller logs them).
pub fn run(req: &MicroVmRun) -> Result<(Outcome, Vec<String>), RunError> {
    let plan = req.plan;
    for gone in runner::sweep(&req.state_root) {
        tracing::info!(path = %gone, "removed what a dead runner left behind");
    }
    let dir = assets::vm_dir(req.vm_dir.as_deref());
    let assets = assets::load(&dir).map_err(|e| err("vm.assets")(e.to_string()))?;
    let mut prepared =
        prepare::prepare(&plan.filesystem).map_err(|e| err("filesystem")(e.to_string()))?;
    let cwd = runner::working_directory(plan, &mut prepared)
        .map_err(|e| err("process.cwd")(e.to_string()))?;
    let mut plan = plan.clone();
    plan.process.cwd = cwd;
    let plan = &plan;
    // The view is known before boot; the guest's Landlock ABI only after: built again then.
    let input = |abi| SpecInput {
        plan,
        prepared: &prepared,
        id: &req.id,
        args: req.args.clone(),
        uid: req.uid,
        gid: req.gid,
        guest_landlock_abi: abi,
    };
    let pre = spec::build(&input(0)).map_err(|e| err("spec")(e.to_string()))?;

    let mut net = SandboxNet::create(&req.id, plan.network.needs_uplink)
        .map_err(|e| err("network")(e.to_string()))?;
    let nic = net.uplink.is_some();
    if nic {
        super::net::attach(&mut net, &plan.network, &req.id)
            .map_err(|e| err("network")(e.to_string()))?;
    }
    let mut cfg = VmConfig::new(req.id.clone(), assets);
    cfg.view = pre.view.clone();
    cfg.export_rw = pre.needs_rw;
    cfg.netns = Some(net.path());
    cfg.nic = nic;
    cfg.die_with_parent = true;
    cfg.debug = tracing::enabled!(tracing::Level::DEBUG);
    if plan.process.memory_max > 0 {
        // The workload's limit plus room for the guest kernel and agent, within reason.
        let mib = (plan.process.memory_max >> 20).saturating_add(128);
        cfg.memory_mib = mib.clamp(256, 2048) as u32;
    }
    let forward = Forwarder::install().map_err(|e| err("signals")(e.to_string()))?;
    let result = (|| {
        let vm = Vm::boot(&cfg).map_err(|e| err("vm.boot")(e.to_string()))?;
        let outcome = workload(&vm, plan, &input, &forward);
        vm.shutdown(Duration::from_secs(2));
        outcome
    })();
    if nic {
        super::net::detach(&net);
    }
    drop(net);
    result.map(|o| (o, prepared.reports.clone()))
}

/// SIGINT, SIGTERM and SIGHUP of the CLI go to the workload's container (as a terminal's ^C
/// reaches a local process), so the run still ends through the normal path and cleans up. One
/// arriving before the workload starts is delivered when it does.
struct Forwarder {
    target: std::sync::Arc<std::sync::Mutex<(Option<super::client::Client>, Option<i32>)>>,
}

impl Forwarder {
    fn install() -> std::io::Result<Self> {
        let target: std::sync::Arc<std::sync::Mutex<(Option<super::client::Client>, Option<i32>)>> =
            Default::default();
        let mut signals =
            signal_hook::iterator::Signals::new([libc::SIGINT, libc::SIGTERM, libc::SIGHUP])?;
        let t = target.clone();
        std::thread::Builder::new()
            .name("vm-signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    let mut g = t.lock().expect("signal target");
                    match &g.0 {
                        Some(c) => {
                            tracing::info!(sig, "forwarding the signal to the workload");
                            let _ = c.signal(WORKLOAD, sig, true);
                        }
                        None => g.1 = Some(sig),
                    }
                }
            })?;
        Ok(Self { target })
    }

    fn arm(&self, c: &super::client::Client) {
        let mut g = self.target.lock().expect("signal target");
        if let Some(sig) = g.1.take() {
            let _ = c.signal(WORKLOAD, sig, true);
        }
        g.0 = Some(c.clone());
    }
}

const WORKLOAD: u32 = 1;

fn workload<'a>(
    vm: &Vm,
    plan: &Plan,
    input: &dyn Fn(i32) -> SpecInput<'a>,
    forward: &Forwarder,
) -> Result<Outcome, RunError> {
    let info = &vm.info;
    tracing::info!(
        kernel = %info.kernel_release,
        landlock_abi = info.landlock_abi,
        boot_ms = info.boot_ms,
        "guest kernel"
    );
    for (right, covered) in spec::landlock_gaps(plan, info.landlock_abi) {
        let how = if covered {
            "covered in the VM by read-only mounts and the guest's own /dev and namespaces"
        } else if plan.best_effort {
            "accepted by --best-effort"
        } else {
            "refused by the guest unless --best-effort"
        };
        eprintln!(
            "agentcell: warning: the guest kernel's Landlock ABI {} lacks {right} ({how})",
            info.landlock_abi
        );
    }
    if plan.network.needs_uplink {
        eprintln!(
            "agentcell: warning: IPv6 unavailable in the guest (IPv4 only; the fence is unchanged)"
        );
    }
    let g = spec::build(&input(info.landlock_abi)).map_err(|e| err("spec")(e.to_string()))?;
    let c = &vm.client;
    const H: u32 = WORKLOAD;
    c.register(
        H,
        Sinks {
            stdout: Some(Box::new(std::io::stdout())),
            stderr: Some(Box::new(std::io::stderr())),
            exit: None,
        },
    )
    .map_err(|e| err("vm.channel")(e.to_string()))?;
    let failed = |e: ClientError| match e {
        ClientError::Failed { step, message, .. } => RunError {
            field: format!("vm.{step}"),
            message,
        },
        e => err("vm.channel")(e.to_string()),
    };
    c.create(H, g.spec).map_err(failed)?;
    c.start(H).map_err(failed)?;
    forward.arm(c);
    // Stdin relay: a daemon-like thread; at our EOF the workload's stdin closes too.
    let stdin_client = c.clone();
    std::thread::Builder::new()
        .name("vm-stdin".into())
        .spawn(move || stdin_client.copy_stdin(H, std::io::stdin().lock()))
        .map_err(|e| err("vm.stdin")(e.to_string()))?;
    // The guest enforces the deadline (it kills the whole container); the host waits a little
    // longer, then gives up on the guest and reports the timeout itself.
    let limit = plan
        .process
        .timeout_ms
        .map(|ms| Duration::from_millis(ms) + Duration::from_secs(10));
    let exit = c
        .wait(H, limit)
        .map_err(|e| err("vm.channel")(e.to_string()))?;
    let _ = std::io::stdout().flush();
    Ok(match exit {
        None => Outcome::TimedOut,
        Some(e) if e.timed_out => Outcome::TimedOut,
        Some(e) if e.status > 128 => Outcome::Signaled(e.status - 128),
        Some(e) => Outcome::Exited(e.status),
    })
}
