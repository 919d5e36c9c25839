//! `agentcell policy check|explain|digest|presets`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use agentcell_policy::plan::{CompileOptions, PlanError};
use agentcell_policy::{DocumentKind, ParseOptions, PolicyError, canonical, contract, presets};
use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

/// Exit code when a document is invalid or cannot be enforced.
const EXIT_INVALID: u8 = 2;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check documents with MXC's verdicts; exit 0 when every file is valid, 2 otherwise.
    ///
    /// Each error is printed on stderr as `FILE: JSON.PATH: message`. By default the verdict is
    /// that of MXC's runtime executor on Linux (`lxc-exec`); `--contract` applies MXC's exact
    /// published per-version contract instead. A FILE of `-` reads standard input; a FILE of
    /// `preset:NAME` checks a shipped preset.
    Check {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<String>,
        /// Apply MXC's exact published contract (0.6.0-alpha, 0.7.0-alpha, 0.8.0-alpha).
        #[arg(long)]
        contract: bool,
        #[command(flatten)]
        read: ReadArgs,
        /// One JSON object per file on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Show the enforcement plan a document compiles to on this host.
    ///
    /// The plan lists the filesystem view (deepest path wins), the network rules per address
    /// family, process settings, the Landlock and seccomp configuration, and which mechanism
    /// enforces each policy field. A plan that cannot be fully enforced here is an error unless
    /// `--best-effort` is given; weakened items are always listed.
    Explain {
        #[arg(value_name = "FILE")]
        file: String,
        #[command(flatten)]
        read: ReadArgs,
        /// Accept a partial enforcement (still listed).
        #[arg(long)]
        best_effort: bool,
        /// Plan with the host's GPU exposed, as `run --gpu` would.
        #[arg(long)]
        gpu: bool,
        /// Plan for a root filesystem directory instead of the host baseline.
        #[arg(long, value_name = "DIR")]
        rootfs: Option<PathBuf>,
        /// Plan for this host (probed) or for a reference host that can enforce everything.
        #[arg(long, value_enum, default_value_t = HostChoice::This)]
        host: HostChoice,
        /// Plan as the containerd shim does for a pod's container: the image (`--rootfs`, else
        /// `/` standing for it) is the read-only root, `process.commandLine` is ignored, and the
        /// pod's own mounts are left out unless a policy path grants them.
        #[arg(long)]
        pod: bool,
        /// The whole plan as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Print the canonical digest (`sha256:…`) of a document, as the operator and shim compare.
    Digest {
        #[arg(value_name = "FILE")]
        file: String,
        #[command(flatten)]
        read: ReadArgs,
        /// Print the canonical JSON the digest is taken over instead.
        #[arg(long)]
        canonical: bool,
    },
    /// List the shipped presets (use them as `preset:NAME`).
    Presets {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct ReadArgs {
    /// Read the document as this authoring shape instead of detecting it.
    #[arg(long, value_enum, value_name = "KIND")]
    kind: Option<Kind>,
    /// Do not require `process.commandLine` (the command comes from elsewhere).
    #[arg(long)]
    no_command: bool,
    /// Accept MXC's testing-only features (`network.proxy.builtinTestServer`).
    #[arg(long)]
    allow_testing_features: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Kind {
    ContainerConfig,
    SandboxPolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HostChoice {
    This,
    Reference,
}

impl ReadArgs {
    fn options(&self) -> ParseOptions {
        ParseOptions {
            kind: self.kind.map(|k| match k {
                Kind::ContainerConfig => DocumentKind::ContainerConfig,
                Kind::SandboxPolicy => DocumentKind::SandboxPolicy,
            }),
            // A SandboxPolicy never carries a command; a ContainerConfig does unless told.
            require_command: !self.no_command,
            allow_testing_features: self.allow_testing_features,
        }
    }
}

/// Reads FILE, `-` (stdin) or `preset:NAME`.
pub fn read_source(file: &str) -> Result<String> {
    if file == "-" {
        return std::io::read_to_string(std::io::stdin()).context("reading standard input");
    }
    if let Some(name) = file.strip_prefix("preset:") {
        return presets::get(name).map(str::to_owned).with_context(|| {
            let names: Vec<&str> = presets::PRESETS.iter().map(|p| p.0).collect();
            format!("no preset named {name:?} (known: {})", names.join(", "))
        });
    }
    std::fs::read_to_string(Path::new(file)).with_context(|| format!("reading {file}"))
}

pub fn run(cmd: PolicyCommand) -> ExitCode {
    match cmd {
        PolicyCommand::Check {
            files,
            contract,
            read,
            json,
        } => check(&files, contract, &read, json),
        PolicyCommand::Explain {
            file,
            read,
            best_effort,
            gpu,
            rootfs,
            host,
            pod,
            json,
        } => {
            let rootfs = match (rootfs, pod) {
                (Some(p), _) => Some(p.display().to_string()),
                (None, true) => Some("/".to_string()),
                (None, false) => None,
            };
            let opts = CompileOptions {
                best_effort,
                rootfs,
                gpu,
            };
            let mut read = read;
            if pod {
                read.no_command = true;
            }
            explain(&file, &read, &opts, host, pod, json)
        }
        PolicyCommand::Digest {
            file,
            read,
            canonical,
        } => digest(&file, &read, canonical),
        PolicyCommand::Presets { json } => {
            if json {
                let v: Vec<_> = presets::PRESETS
                    .iter()
                    .map(|(n, d, _)| json!({"name": n, "description": d}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v).expect("json"));
            } else {
                for (n, d, _) in presets::PRESETS {
                    println!("{n:16} {d}");
                }
            }
            ExitCode::SUCCESS
        }
    }
}

fn check(files: &[String], use_contract: bool, read: &ReadArgs, json: bool) -> ExitCode {
    let mut all_ok = true;
    for file in files {
        let text = match read_source(file) {
            Ok(t) => t,
            Err(e) => {
                all_ok = false;
                report_io(file, &e, json);
                continue;
            }
        };
        let verdict: Result<serde_json::Value, PolicyError> = if use_contract {
            contract::check(&text)
                .map(|v| json!({"contract": v.version.as_str(), "root": v.root.as_str()}))
        } else {
            agentcell_policy::parse_with(&text, &read.options()).map(|d| {
                json!({
                    "kind": d.kind,
                    "version": d.version.to_string(),
                    "containment": d.containment.as_str(),
                    "backend": d.backend,
                    "digest": canonical::digest(&d),
                    "notes": d.notes,
                })
            })
        };
        match verdict {
            Ok(v) => {
                if json {
                    println!("{}", json!({"file": file, "valid": true, "document": v}));
                } else {
                    println!("{file}: ok");
                }
            }
            Err(e) => {
                all_ok = false;
                let violations = e.violations();
                if json {
                    let errs: Vec<_> = violations
                        .iter()
                        .map(|v| json!({"path": v.path.to_string(), "message": v.message}))
                        .collect();
                    println!("{}", json!({"file": file, "valid": false, "errors": errs}));
                }
                print_violations(file, &violations);
            }
        }
    }
    if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_INVALID)
    }
}

/// Each violation on stderr as `FILE: JSON.PATH: message`.
fn print_violations(file: &str, violations: &[agentcell_policy::Violation]) {
    for v in violations {
        eprintln!("{file}: {}: {}", v.path, v.message);
    }
}

fn report_io(file: &str, e: &anyhow::Error, json: bool) {
    if json {
        println!(
            "{}",
            json!({"file": file, "valid": false, "errors": [{"path": "", "message": format!("{e:#}")}]})
        );
    }
    eprintln!("{file}: {e:#}");
}

fn explain(
    file: &str,
    read: &ReadArgs,
    opts: &CompileOptions,
    host: HostChoice,
    pod: bool,
    json: bool,
) -> ExitCode {
    let text = match read_source(file) {
        Ok(t) => t,
        Err(e) => {
            report_io(file, &e, json);
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let doc = match agentcell_policy::parse_with(&text, &read.options()) {
        Ok(d) => d,
        Err(e) => {
            print_violations(file, &e.violations());
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let host = match host {
        HostChoice::This => crate::host::probe(),
        HostChoice::Reference => agentcell_policy::Host::reference(),
    };
    match agentcell_policy::compile(&doc, &host, opts) {
        Ok(plan) => {
            if json {
                let mut v = serde_json::to_value(&plan).expect("plan serializes");
                if pod {
                    v["pod"] = serde_json::json!(super::explain::pod_notes(&doc, &plan));
                }
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v).expect("plan serializes")
                );
            } else {
                print!("{}", super::explain::render(file, &doc, &plan));
                if pod {
                    println!("pod (containerd shim)");
                    for n in super::explain::pod_notes(&doc, &plan) {
                        println!("          {n}");
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            match &e {
                PlanError::Unsupported(v) => print_violations(file, v),
                PlanError::Host { field, message } => eprintln!("{file}: {field}: {message}"),
                PlanError::Unenforceable(items) => {
                    eprintln!(
                        "{file}: not fully enforceable on this host (--best-effort accepts and reports):"
                    );
                    for i in items {
                        if let agentcell_policy::plan::Status::Weakened { reason } = &i.status {
                            eprintln!("{file}: {}: {reason}", i.field);
                        }
                    }
                }
            }
            ExitCode::from(EXIT_INVALID)
        }
    }
}

fn digest(file: &str, read: &ReadArgs, show_canonical: bool) -> ExitCode {
    let text = match read_source(file) {
        Ok(t) => t,
        Err(e) => {
            report_io(file, &e, false);
            return ExitCode::from(EXIT_INVALID);
        }
    };
    match agentcell_policy::parse_with(&text, &read.options()) {
        Ok(d) => {
            if show_canonical {
                println!("{}", canonical::canonical_json(&d));
            } else {
                println!("{}", canonical::digest(&d));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            print_violations(file, &e.violations());
            ExitCode::from(EXIT_INVALID)
        }
    }
}
