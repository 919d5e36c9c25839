//! `agentcell`: run Microsoft MXC policies confined on Linux.

use agentcell::cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Run AI agents' code confined by Microsoft MXC policies, on any Linux host or Kubernetes node.
///
/// agentcell reads MXC configuration documents (a ContainerConfig, or the SDK's SandboxPolicy)
/// with MXC 1.0's own verdicts: the registered contracts 0.9.0-alpha, 1.0.0 and 1.1.0-alpha
/// (`--mxc-release 0.8` also reads the retired 0.6-0.8 ones as MXC 0.8 did; `policy migrate`
/// rewrites them as 1.0.0). Each accepted document compiles into one enforcement plan: mounts,
/// Landlock, seccomp, and an nftables fence in a private network namespace.
#[derive(Debug, Parser)]
#[command(
    name = "agentcell",
    version,
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    /// Log filter (also AGENTCELL_LOG), e.g. `debug` or `agentcell=trace`.
    #[arg(long, global = true, value_name = "FILTER")]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate, explain and fingerprint MXC policy documents.
    #[command(subcommand)]
    Policy(cli::policy::PolicyCommand),
    /// Run an MXC ContainerConfig as MXC's executors do (`process.commandLine` via /bin/sh -c).
    ///
    /// Exit code: the workload's own; 128+N when killed by signal N; 124 on timeout; 125 when the
    /// configuration is rejected or the sandbox cannot be built (the field and reason on stderr).
    Exec(cli::run::ExecArgs),
    /// What this host can enforce: kernel, Landlock ABI, seccomp, namespaces, cgroups,
    /// nftables, KVM, WSL, and which presets run here fully enforced.
    Doctor(cli::doctor::DoctorArgs),
    /// Run a command confined by a policy (a SandboxPolicy or a ContainerConfig).
    ///
    /// Exit codes as for `exec`.
    Run(cli::run::RunArgs),
    /// Install the containerd shim on this Kubernetes node, remove it, or report its state
    /// (what the chart's node DaemonSet runs, with the host's root at /host).
    #[command(subcommand)]
    Node(cli::node::NodeCommand),
    /// Install the micro-VM tier's guest kernel and agent (`run --isolation microvm`).
    #[command(subcommand)]
    Vm(cli::vm::VmCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log.as_deref());
    match cli.command {
        Command::Policy(cmd) => cli::policy::run(cmd),
        Command::Doctor(args) => code(cli::doctor::run(args)),
        Command::Exec(args) => code(cli::run::exec(args)),
        Command::Run(args) => code(cli::run::run(args)),
        Command::Node(cmd) => cli::node::run(cmd),
        Command::Vm(cmd) => cli::vm::run(cmd),
    }
}

fn code(c: i32) -> ExitCode {
    ExitCode::from(c.clamp(0, 255) as u8)
}

fn init_logging(filter: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = filter
        .map(EnvFilter::new)
        .or_else(|| EnvFilter::try_from_env("AGENTCELL_LOG").ok())
        .unwrap_or_else(|| EnvFilter::new("warn,libcgroups=error,libcontainer=error"));
    // Colour only for a terminal: logs in files and CI stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}
