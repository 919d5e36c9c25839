//! `agentcell exec CONFIG.json` and `agentcell run --policy P -- CMD`: run a workload confined by
//! an MXC document on this host.

use std::path::PathBuf;

use agentcell_policy::plan::{CompileOptions, PlanError, Status};
use agentcell_policy::request::ErrorEnvelope;
use agentcell_policy::{MxcRelease, ParseOptions, ParsedRequest, Plan};
use clap::Args;
use serde_json::json;

use crate::sandbox::runner::{self, RunRequest};

/// Exit code when the configuration is rejected or the sandbox cannot be built.
pub const EXIT_REJECTED: i32 = 125;

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// An MXC ContainerConfig (a one-shot request, MXC 1.0.0 or another registered contract);
    /// `process.commandLine` runs through `/bin/sh -c` as MXC's executors run it. A state-aware
    /// request (`phase`) is refused with MXC's error envelope, code `unsupported_phase`.
    #[arg(value_name = "CONFIG")]
    pub config: String,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The policy: an MXC SandboxPolicy or ContainerConfig (path, `-` or `preset:NAME`).
    #[arg(long, value_name = "POLICY")]
    pub policy: String,
    /// The command and its arguments (a ContainerConfig's commandLine is ignored).
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Start the view from this root filesystem directory (an image) instead of the host baseline.
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,
    /// Accept a partial enforcement; every missing right is reported on stderr first.
    #[arg(long)]
    pub best_effort: bool,
    /// Expose the host's GPU: /dev/dxg with /usr/lib/wsl/lib and /usr/lib/wsl/drivers read-only
    /// on WSL2, /dev/nvidia* with the driver's libraries on native Linux; nothing else. Refused
    /// when the host has no GPU.
    #[arg(long)]
    pub gpu: bool,
    /// Errors as one JSON object on stdout: {"error":{"field":…,"message":…}}.
    #[arg(long)]
    pub json: bool,
    /// Maximum number of processes (cgroup pids.max).
    #[arg(long, value_name = "N")]
    pub pids_max: Option<u64>,
    /// Memory limit in MiB (cgroup memory limit).
    #[arg(long, value_name = "MIB")]
    pub memory_mib: Option<u64>,
    /// MXC's flag: accept testing-only features (they are still refused when planning).
    #[arg(long)]
    pub allow_testing_features: bool,
    /// Whose verdicts apply: MXC 1.0 (the default), or `0.8` to run retired 0.6-0.8 documents
    /// as MXC 0.8 read them.
    #[arg(long, value_name = "RELEASE", default_value = "1.0")]
    pub mxc_release: MxcRelease,
    /// Write one JSON line per denial the kernel reports (Landlock audit, kernel ABI 7) to FILE;
    /// what is not observable is said in the file.
    #[arg(long, value_name = "FILE")]
    pub audit: Option<PathBuf>,
    /// Print the OCI runtime spec this run would use (root path `rootfs`) and exit; for
    /// comparisons with other runtimes (benches/exec.sh) and debugging.
    #[arg(long)]
    pub print_spec: bool,
    /// Isolation tier: `container` (namespaces on this kernel) or `microvm` (a qemu micro-VM
    /// with its own kernel; see `agentcell vm install-kernel`).
    #[arg(long, value_enum, default_value = "container")]
    pub isolation: Isolation,
    /// The micro-VM tier's asset directory (default AGENTCELL_VM_DIR, else /var/lib/agentcell/vm).
    #[arg(long, value_name = "DIR")]
    pub vm_dir: Option<PathBuf>,
    /// Where sandbox state lives.
    #[arg(long, value_name = "DIR", default_value = "/run/agentcell")]
    pub state_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Isolation {
    Container,
    Microvm,
}

pub fn exec(args: ExecArgs) -> i32 {
    let opts = ParseOptions {
        require_command: true,
        allow_testing_features: args.common.allow_testing_features,
        release: args.common.mxc_release,
        ..ParseOptions::default()
    };
    match load(&args.config, &opts, &args.common) {
        Ok(plan) => {
            let cmd = plan.process.command_line.clone().unwrap_or_default();
            go(
                &plan,
                vec!["/bin/sh".into(), "-c".into(), cmd],
                &args.common,
            )
        }
        Err(Refused::Fields(e)) => reject(&e, args.common.json),
        Err(Refused::Envelope(e)) => reject_envelope(&e, args.common.json),
    }
}

pub fn run(args: RunArgs) -> i32 {
    let opts = ParseOptions {
        require_command: false,
        allow_testing_features: args.common.allow_testing_features,
        release: args.common.mxc_release,
        ..ParseOptions::default()
    };
    match load(&args.policy, &opts, &args.common) {
        Ok(plan) => go(&plan, args.command.clone(), &args.common),
        Err(Refused::Fields(e)) => reject(&e, args.common.json),
        Err(Refused::Envelope(e)) => reject_envelope(&e, args.common.json),
    }
}

/// Why a document is not run: its fields, or (a state-aware request) MXC's error envelope.
enum Refused {
    Fields(Vec<Refusal>),
    Envelope(ErrorEnvelope),
}

impl From<Vec<Refusal>> for Refused {
    fn from(v: Vec<Refusal>) -> Self {
        Self::Fields(v)
    }
}

/// A refusal: the field (JSON path or step) and why.
struct Refusal {
    field: String,
    message: String,
}

fn load(source: &str, opts: &ParseOptions, common: &CommonArgs) -> Result<Plan, Refused> {
    let text = super::policy::read_source(source).map_err(|e| {
        vec![Refusal {
            field: String::new(),
            message: format!("{e:#}"),
        }]
    })?;
    let doc = match agentcell_policy::parse_request(&text, opts) {
        Ok(ParsedRequest::OneShot(doc)) => *doc,
        // Judged, not run (MXC's Linux backends have no lifecycle either).
        Ok(ParsedRequest::StateAware(r)) => return Err(Refused::Envelope(r.refusal())),
        Err(e) => {
            return Err(e
                .error
                .violations()
                .into_iter()
                .map(|v| Refusal {
                    field: v.path.to_string(),
                    message: v.message,
                })
                .collect::<Vec<_>>()
                .into());
        }
    };
    tracing::debug!(
        mxc_release = %doc.release,
        read_as = %agentcell_policy::plan::read_as(&doc),
        "document accepted"
    );
    let host = crate::host::probe();
    let copts = CompileOptions {
        best_effort: common.best_effort,
        rootfs: common.rootfs.as_ref().map(|p| p.display().to_string()),
        gpu: common.gpu,
        image_env: false,
    };
    let mut plan = agentcell_policy::compile(&doc, &host, &copts).map_err(|e| -> Vec<Refusal> {
        match e {
            PlanError::Unsupported(v) => v
                .into_iter()
                .map(|v| Refusal {
                    field: v.path.to_string(),
                    message: v.message,
                })
                .collect(),
            PlanError::Host { field, message } => vec![Refusal { field, message }],
            PlanError::Unenforceable(items) => items
                .into_iter()
                .map(|i| Refusal {
                    field: i.field,
                    message: match i.status {
                        Status::Weakened { reason } => {
                            format!("{reason} (--best-effort accepts and reports)")
                        }
                        _ => String::new(),
                    },
                })
                .collect(),
        }
    })?;
    for w in plan.weakened() {
        if let Status::Weakened { reason } = &w.status {
            eprintln!("agentcell: best effort: {}: {reason}", w.field);
        }
    }
    if let Some(n) = common.pids_max {
        plan.process.pids_max = n;
    }
    if let Some(m) = common.memory_mib {
        plan.process.memory_max = m << 20;
    }
    Ok(plan)
}

fn go(plan: &Plan, args: Vec<String>, common: &CommonArgs) -> i32 {
    let id = format!(
        "ac-{}-{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    );
    let req = RunRequest {
        plan,
        args,
        id,
        state_root: common.state_dir.clone(),
        // SAFETY: getuid/getgid cannot fail.
        uid: unsafe { libc::getuid() },
        gid: unsafe { libc::getgid() },
        audit: common.audit.clone(),
    };
    if common.isolation == Isolation::Microvm && !common.print_spec {
        return microvm(&req, common);
    }
    if common.print_spec {
        let spec = runner::spec_only(&req, std::path::Path::new("rootfs"));
        return match spec {
            Ok(s) => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&s).expect("spec serializes")
                );
                0
            }
            Err(e) => reject(
                &[Refusal {
                    field: step_field(&e),
                    message: e.to_string(),
                }],
                common.json,
            ),
        };
    }
    match runner::run(&req) {
        Ok((outcome, reports)) => {
            for r in reports {
                tracing::info!("{r}");
            }
            if outcome == runner::Outcome::TimedOut {
                eprintln!(
                    "agentcell: timed out after {} ms",
                    plan.process.timeout_ms.unwrap_or(0)
                );
            }
            outcome.exit_code()
        }
        Err(e) => reject(
            &[Refusal {
                field: step_field(&e),
                message: e.to_string(),
            }],
            common.json,
        ),
    }
}

fn microvm(req: &RunRequest, common: &CommonArgs) -> i32 {
    if common.audit.is_some() || common.gpu {
        let field = if common.gpu { "--gpu" } else { "--audit" };
        return reject(
            &[Refusal {
                field: field.into(),
                message: "not available with --isolation microvm".into(),
            }],
            common.json,
        );
    }
    let r = crate::vm::run::MicroVmRun {
        plan: req.plan,
        args: req.args.clone(),
        id: req.id.clone(),
        uid: req.uid,
        gid: req.gid,
        vm_dir: common.vm_dir.clone(),
        state_root: req.state_root.clone(),
    };
    match crate::vm::run::run(&r) {
        Ok((outcome, reports)) => {
            for r in reports {
                tracing::info!("{r}");
            }
            if outcome == runner::Outcome::TimedOut {
                eprintln!(
                    "agentcell: timed out after {} ms",
                    req.plan.process.timeout_ms.unwrap_or(0)
                );
            }
            outcome.exit_code()
        }
        Err(e) => reject(
            &[Refusal {
                field: e.field,
                message: e.message,
            }],
            common.json,
        ),
    }
}

fn step_field(e: &runner::RunError) -> String {
    match e {
        runner::RunError::Network(_) => "network".into(),
        runner::RunError::Prepare(_) | runner::RunError::View(_) => "filesystem".into(),
        runner::RunError::Cwd(_) => "process.cwd".into(),
        _ => "sandbox".into(),
    }
}

/// MXC's dispatch failure: a message, then the error envelope as the last line of stderr (and
/// on stdout with `--json`).
fn reject_envelope(e: &ErrorEnvelope, json: bool) -> i32 {
    let envelope = e.to_json();
    if json {
        println!("{envelope}");
    }
    eprintln!("agentcell: phase: {} ({})", e.message, e.code.as_str());
    eprintln!("{envelope}");
    EXIT_REJECTED
}

fn reject(errs: &[Refusal], json: bool) -> i32 {
    if json {
        let first = errs.first();
        println!(
            "{}",
            json!({"error": {"field": first.map(|r| r.field.as_str()).unwrap_or(""), "message": first.map(|r| r.message.as_str()).unwrap_or(""),
                "all": errs.iter().map(|r| json!({"field": r.field, "message": r.message})).collect::<Vec<_>>()}})
        );
    }
    for r in errs {
        if r.field.is_empty() {
            eprintln!("agentcell: {}", r.message);
        } else {
            eprintln!("agentcell: {}: {}", r.field, r.message);
        }
    }
    EXIT_REJECTED
}
