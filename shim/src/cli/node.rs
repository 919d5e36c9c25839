//! `agentcell node install|uninstall|status`: put the shim on a Kubernetes node (or take it off),
//! as the chart's DaemonSet does with the host's root at `/host`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;

use crate::node::{self, Host, InstallSpec, RestartMode};

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Copy the shim to the host, add the `agentcell` runtime to containerd's configuration
    /// (a drop-in when containerd imports one, otherwise a marked block, with a backup), write
    /// /etc/agentcell/shim.toml, and restart containerd when its configuration changed.
    ///
    /// Running it again with the same inputs changes nothing. It does not label the node: the
    /// RuntimeClasses schedule onto nodes labelled `agentcell.dev/node=true` (kubectl label).
    ///
    /// With `--microvm --vm-assets DIR` it also installs the micro-VM tier: the VM shim, the
    /// `agentcell-vm` runtime, and the guest kernel and agent in /var/lib/agentcell/vm. The host
    /// needs qemu-system-x86_64 for it, which the installer does not install (`status` reports it).
    Install(InstallArgs),
    /// Put back every file `install` wrote, byte for byte, and remove what it created.
    Uninstall(CommonArgs),
    /// What `install` left on this host and whether it still holds (`--check`: exit 1 if not).
    Status(StatusArgs),
}

/// Where on the host the installer works (absolute host paths).
#[derive(Debug, Args)]
pub struct LayoutArgs {
    /// The host's root directory (`/host` in the chart's DaemonSet).
    #[arg(long, value_name = "DIR", default_value = "/")]
    host_root: PathBuf,
    /// Directory the shim binary is copied to (on containerd's PATH).
    #[arg(long, value_name = "DIR", default_value = node::SHIM_DIR)]
    shim_dir: String,
    /// The node's shim settings file (written, and named as the runtime's ConfigPath).
    #[arg(long, value_name = "PATH", default_value = node::SHIM_TOML)]
    shim_config_path: String,
    /// Directory of the install record (node-install.json) and the backups.
    #[arg(long, value_name = "DIR", default_value = node::STATE_DIR)]
    state_dir: String,
    /// Directory the micro-VM assets are copied to (`--microvm`). The VM shim reads
    /// /var/lib/agentcell/vm unless containerd's environment sets AGENTCELL_VM_DIR.
    #[arg(long, value_name = "DIR", default_value = node::VM_DIR)]
    vm_dir: String,
}

impl LayoutArgs {
    fn host(&self) -> Result<Host> {
        for (flag, p) in [
            ("--shim-dir", &self.shim_dir),
            ("--shim-config-path", &self.shim_config_path),
            ("--state-dir", &self.state_dir),
            ("--vm-dir", &self.vm_dir),
        ] {
            if !p.starts_with('/') {
                bail!("{flag} {p}: must be absolute on the host");
            }
        }
        let mut h = Host::new(&self.host_root);
        h.shim_dir = self.shim_dir.clone();
        h.shim_toml = self.shim_config_path.clone();
        h.state_dir = self.state_dir.clone();
        h.vm_dir = self.vm_dir.clone();
        Ok(h)
    }
}

#[derive(Debug, Args)]
pub struct CommonArgs {
    #[command(flatten)]
    layout: LayoutArgs,
    /// Do not restart containerd (report that it needs one instead).
    #[arg(long, conflicts_with = "restart_command")]
    no_restart: bool,
    /// Restart containerd with this host command (run by the host's /bin/sh in the host's
    /// root) instead of systemd: for hosts without systemd, e.g. `rc-service containerd
    /// restart`, `sv restart containerd`, `svc -t /service/containerd`.
    #[arg(long, value_name = "CMD")]
    restart_command: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CgroupDriver {
    Auto,
    Cgroupfs,
    Systemd,
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// The shim binary to copy (default: containerd-shim-agentcell-v2 next to this program).
    #[arg(long, value_name = "PATH")]
    shim: Option<PathBuf>,
    /// containerd's configuration on the host.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/etc/containerd/config.toml"
    )]
    containerd_config: String,
    /// The containerd version instead of running the host's `containerd --version`.
    #[arg(long, value_name = "X.Y.Z")]
    containerd_version: Option<String>,
    /// Copy this file to /etc/agentcell/shim.toml (checked as the shim reads it); the flags
    /// below build it otherwise.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["default_policy", "allow_best_effort", "allow_net_raw", "cgroup_driver", "idle_exit_seconds"])]
    shim_config_from: Option<PathBuf>,
    /// shim.toml `default_policy`: the policy of pods without one (`preset:NAME`, a path, JSON).
    #[arg(long, value_name = "POLICY")]
    default_policy: Option<String>,
    /// shim.toml `allow_best_effort = true`.
    #[arg(long)]
    allow_best_effort: bool,
    /// shim.toml `allow_net_raw = true` (pods annotated `agentcell.dev/net-raw: "true"` keep
    /// CAP_NET_RAW).
    #[arg(long)]
    allow_net_raw: bool,
    /// shim.toml `cgroup_driver`.
    #[arg(long, value_enum)]
    cgroup_driver: Option<CgroupDriver>,
    /// shim.toml `idle_exit_seconds`.
    #[arg(long, value_name = "SECONDS")]
    idle_exit_seconds: Option<u64>,
    /// Also install the micro-VM tier (`agentcell-vm` runtime, VM shim, guest assets).
    #[arg(long, requires = "vm_assets")]
    microvm: bool,
    /// The micro-VM tier's shim (default: containerd-shim-agentcell-vm-v2 next to this program).
    #[arg(long, value_name = "PATH", requires = "microvm")]
    vm_shim: Option<PathBuf>,
    /// A VM directory with the guest kernel and agent to copy to the host, as
    /// `agentcell vm install-kernel --dir DIR` and `agentcell vm install-agent PATH --dir DIR`
    /// leave it.
    #[arg(long, value_name = "DIR", requires = "microvm")]
    vm_assets: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    layout: LayoutArgs,
    /// Exit 1 unless installed, every file is as the install wrote it and, with the micro-VM
    /// tier, its shim, runtime, assets and the host's qemu are there (readiness probe).
    #[arg(long)]
    check: bool,
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: NodeCommand) -> ExitCode {
    let r = match cmd {
        NodeCommand::Install(a) => install(a),
        NodeCommand::Uninstall(a) => uninstall(a),
        NodeCommand::Status(a) => status(a),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agentcell node: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn restart_mode(c: &CommonArgs) -> RestartMode {
    if c.no_restart {
        RestartMode::Skip
    } else if let Some(cmd) = &c.restart_command {
        RestartMode::Command(cmd.clone())
    } else {
        RestartMode::Auto
    }
}

/// shim.toml from the flags: only the keys given, so the shim's defaults stay its own.
fn shim_toml_from_flags(a: &InstallArgs) -> String {
    let mut t = toml::Table::new();
    if let Some(p) = &a.default_policy {
        t.insert("default_policy".into(), p.clone().into());
    }
    if a.allow_best_effort {
        t.insert("allow_best_effort".into(), true.into());
    }
    if a.allow_net_raw {
        t.insert("allow_net_raw".into(), true.into());
    }
    if let Some(d) = a.cgroup_driver {
        let d = match d {
            CgroupDriver::Auto => "auto",
            CgroupDriver::Cgroupfs => "cgroupfs",
            CgroupDriver::Systemd => "systemd",
        };
        t.insert("cgroup_driver".into(), d.into());
    }
    if let Some(s) = a.idle_exit_seconds {
        t.insert(
            "idle_exit_seconds".into(),
            i64::try_from(s).unwrap_or(i64::MAX).into(),
        );
    }
    format!(
        "# Written by `agentcell node install`.\n{}",
        toml::to_string(&t).unwrap_or_default()
    )
}

fn install(a: InstallArgs) -> Result<ExitCode> {
    let beside_me = |name: &str| -> Result<PathBuf> {
        Ok(std::env::current_exe()
            .context("locating this program")?
            .with_file_name(name))
    };
    let shim = match &a.shim {
        Some(p) => p.clone(),
        None => beside_me(node::SHIM_NAME)?,
    };
    let microvm = match (a.microvm, &a.vm_assets) {
        (true, Some(assets)) => Some(node::MicrovmSpec {
            shim: match &a.vm_shim {
                Some(p) => p.clone(),
                None => beside_me(node::VM_SHIM_NAME)?,
            },
            assets: assets.clone(),
        }),
        (true, None) => bail!("--microvm needs --vm-assets DIR"),
        (false, _) => None,
    };
    let shim_toml = match &a.shim_config_from {
        Some(f) => std::fs::read_to_string(f).with_context(|| format!("{}", f.display()))?,
        None => shim_toml_from_flags(&a),
    };
    if !a.containerd_config.starts_with('/') {
        bail!(
            "--containerd-config {}: must be absolute on the host",
            a.containerd_config
        );
    }
    let host = a.common.layout.host()?;
    let spec = InstallSpec {
        shim,
        containerd_config: a.containerd_config.clone(),
        containerd_version: a.containerd_version.clone(),
        shim_toml,
        restart: restart_mode(&a.common),
        microvm,
    };
    let report = node::install(&host, &spec).with_context(|| {
        format!(
            "installing agentcell on the host at {}",
            a.common.layout.host_root.display()
        )
    })?;
    if a.common.json {
        print_json(&report)?;
    } else {
        println!(
            "containerd {} (configuration version {}): runtime {} ({}, {})",
            report.containerd_version,
            report.config_version.number(),
            report.section,
            report.mode,
            report.containerd_file
        );
        if let Some(section) = &report.vm_section {
            println!(
                "micro-VM tier: runtime {section}, guest kernel {}",
                report.vm_kernel_release.as_deref().unwrap_or("?")
            );
        }
        for f in &report.files {
            println!("  {:<13} {}", f.action, f.path);
        }
        for w in &report.warnings {
            println!("warning: {w}");
        }
        println!("containerd restart: {:?}", report.restart);
        println!(
            "node label: not set by the installer; pods of the agentcell RuntimeClasses go to nodes labelled agentcell.dev/node=true (kubectl label node NODE agentcell.dev/node=true)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn uninstall(a: CommonArgs) -> Result<ExitCode> {
    let host = a.layout.host()?;
    let report = node::uninstall(&host, restart_mode(&a)).with_context(|| {
        format!(
            "uninstalling agentcell from the host at {}",
            a.layout.host_root.display()
        )
    })?;
    if a.json {
        print_json(&report)?;
    } else if !report.installed {
        println!("nothing to uninstall: no install state on this host");
    } else {
        for f in &report.files {
            println!("  {:<13} {}", f.action, f.path);
        }
        for w in &report.warnings {
            println!("warning: {w}");
        }
        println!("containerd restart: {:?}", report.restart);
    }
    Ok(ExitCode::SUCCESS)
}

fn status(a: StatusArgs) -> Result<ExitCode> {
    let host = a.layout.host()?;
    let report = node::status(&host).with_context(|| {
        format!(
            "reading the install state at {}",
            a.layout.host_root.display()
        )
    })?;
    if a.json {
        print_json(&report)?;
    } else if !report.installed {
        println!("not installed");
    } else {
        for (path, s) in &report.files {
            println!("  {s:<12} {path}");
        }
        if let Some(vm) = &report.microvm {
            println!(
                "micro-VM tier: shim {}, runtime {}, assets {} (guest kernel {}), qemu {}",
                present(vm.shim),
                present(vm.runtime),
                present(vm.assets),
                vm.kernel_release.as_deref().unwrap_or("none"),
                vm.qemu.as_deref().unwrap_or("not found")
            );
        }
        // On stdout: the readiness probe's failure message in the pod's events.
        for p in &report.problems {
            println!("problem: {p}");
        }
        println!("healthy: {}", report.healthy);
    }
    Ok(if a.check && !report.healthy {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn present(yes: bool) -> &'static str {
    if yes { "present" } else { "missing" }
}

fn print_json(v: &impl Serialize) -> Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).context("encoding the report")?
    );
    Ok(())
}
