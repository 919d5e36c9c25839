//! `agentcell policy check|explain|digest|migrate|presets`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use agentcell_policy::plan::{CompileOptions, PlanError};
use agentcell_policy::request::RequestError;
use agentcell_policy::{
    DocumentKind, MxcRelease, ParseOptions, ParsedRequest, PolicyError, canonical, contract,
    migrate, presets,
};
use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

/// Exit code when a document is invalid or cannot be enforced.
const EXIT_INVALID: u8 = 2;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check documents with MXC 1.0's verdicts; exit 0 when every file is valid, 2 otherwise.
    ///
    /// Each error is printed on stderr as `FILE: JSON.PATH: message`. A document must declare one
    /// of MXC's registered contracts (0.9.0-alpha, 1.0.0, 1.1.0-alpha); a retired one (0.6-0.8,
    /// or none) is refused with the migration command, unless `--mxc-release 0.8` reads it as
    /// MXC 0.8 did. By default the verdict is that of MXC's runtime on Linux (its exact contract,
    /// then its cross-field and backend rules), for every request root (one-shot, and the
    /// state-aware provision, start, exec, stop and deprovision, which agentcell judges but does
    /// not run); `--contract` applies the exact per-version contract alone. A FILE of `-` reads
    /// standard input; a FILE of `preset:NAME` checks a shipped preset.
    Check {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<String>,
        /// Apply MXC's exact per-version contract alone (structural: versions, closed objects,
        /// types, required fields, ranges), for every request root.
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
    /// Rewrite a retired (0.6-0.8) document as MXC 1.0.0 and print it on stdout (exit 0).
    ///
    /// Only where MXC's mapping is exact: legacy `defaultPolicy`, IP/CIDR host lists,
    /// `allowLocalNetwork`, loopback proxies, aliases, the version. Otherwise exit 2, naming every
    /// field that has no 1.0 equivalent (host names in host lists, remote or built-in test
    /// proxies, ...) or the MXC 1.0 rule the result would break. Notes on stderr.
    Migrate {
        #[arg(value_name = "FILE")]
        file: String,
        /// The contract to write (1.0.0, MXC's stable contract, is the only target).
        #[arg(long, value_name = "VERSION", default_value = "1.0.0")]
        to: String,
        /// Read the document as this authoring shape instead of detecting it.
        #[arg(long, value_enum, value_name = "KIND")]
        kind: Option<Kind>,
        /// One JSON object on stdout: {"file","migrated","document","notes"} or {"file","migrated":false,"errors"}.
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
    /// Whose verdicts apply: MXC 1.0 (the default), or `0.8` to read retired 0.6-0.8 documents
    /// as MXC 0.8 did (registered versions still get MXC 1.0's).
    #[arg(long, value_name = "RELEASE", default_value = "1.0")]
    pub mxc_release: MxcRelease,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Kind {
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
            release: self.mxc_release,
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
                // A pod's image environment is its default (as in the shim).
                image_env: pod,
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
        PolicyCommand::Migrate {
            file,
            to,
            kind,
            json,
        } => migrate_file(&file, &to, kind, json),
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
        let release = read.mxc_release;
        let verdict: Result<serde_json::Value, PolicyError> = if use_contract {
            contract::check_with(&text, release).map(|v| {
                json!({"contract": v.version.as_str(), "root": v.root.as_str(), "mxcRelease": release})
            })
        } else {
            agentcell_policy::parse_request(&text, &read.options())
                .map(|r| match r {
                    ParsedRequest::OneShot(d) => json!({
                        "root": "one-shot",
                        "kind": d.kind,
                        "version": d.version.to_string(),
                        "mxcRelease": release,
                        "readAs": agentcell_policy::plan::read_as(&d),
                        "containment": d.containment.as_str(),
                        "backend": d.backend,
                        "digest": canonical::digest(&d),
                        "notes": d.notes,
                    }),
                    ParsedRequest::StateAware(r) => json!({
                        "root": r.root.as_str(),
                        "version": r.version.as_str(),
                        "mxcRelease": release,
                        "sandboxId": r.sandbox_id,
                        "containment": r.containment().map(|c| c.as_str()),
                        "notes": r.notes,
                        // Judged, not run: what `agentcell exec` answers.
                        "run": r.refusal().to_json(),
                    }),
                })
                .map_err(|RequestError { error, .. }| error)
        };
        match verdict {
            Ok(v) => {
                if json {
                    println!("{}", json!({"file": file, "valid": true, "document": v}));
                } else {
                    let what = match (v.get("contract"), v.get("version")) {
                        (Some(c), _) => format!("contract {}", c.as_str().unwrap_or_default()),
                        (None, Some(ver)) => ver.as_str().unwrap_or_default().to_string(),
                        _ => String::new(),
                    };
                    println!(
                        "{file}: ok ({what} {}, MXC {release} verdicts)",
                        v["root"].as_str().unwrap_or_default()
                    );
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

fn migrate_file(file: &str, to: &str, kind: Option<Kind>, json: bool) -> ExitCode {
    let text = match read_source(file) {
        Ok(t) => t,
        Err(e) => {
            report_io(file, &e, json);
            return ExitCode::from(EXIT_INVALID);
        }
    };
    // A document without a command is a policy for `run` or a pod: migrate it as one.
    let opts = ParseOptions {
        kind: kind.map(|k| match k {
            Kind::ContainerConfig => DocumentKind::ContainerConfig,
            Kind::SandboxPolicy => DocumentKind::SandboxPolicy,
        }),
        require_command: text.contains("\"commandLine\""),
        ..ParseOptions::default()
    };
    match migrate::migrate(&text, &opts, to) {
        Ok(m) => {
            if json {
                println!(
                    "{}",
                    json!({"file": file, "migrated": true, "document": m.document, "notes": m.notes})
                );
            } else {
                println!("{}", m.pretty());
                for n in &m.notes {
                    eprintln!("{file}: note: {}: {}", n.path, n.message);
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let violations = e.violations();
            if json {
                let errs: Vec<_> = violations
                    .iter()
                    .map(|v| json!({"path": v.path.to_string(), "message": v.message}))
                    .collect();
                println!(
                    "{}",
                    json!({"file": file, "migrated": false, "reason": match &e {
                        migrate::MigrateError::NoEquivalent(_) => "noEquivalent",
                        migrate::MigrateError::Refused(_) => "refusedByMxc1",
                        migrate::MigrateError::Invalid(_) => "invalid",
                        migrate::MigrateError::AlreadyCurrent(_) => "alreadyCurrent",
                        migrate::MigrateError::Target(_) => "target",
                    }, "errors": errs})
                );
            }
            let why = match &e {
                migrate::MigrateError::NoEquivalent(_) => "no MXC 1.0 equivalent: ",
                migrate::MigrateError::Refused(_) => "the 1.0.0 document would be refused: ",
                _ => "",
            };
            for v in &violations {
                eprintln!("{file}: {}: {why}{}", v.path, v.message);
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
