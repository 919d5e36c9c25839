//! `agentcell vm ...`: install and inspect the micro-VM tier's assets.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use crate::vm::assets::{self, Flavour};

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Download Debian's kernel package (apt-get download), unpack it, and keep vmlinuz, the
    /// modules the guest needs and a manifest in the VM directory. Idempotent.
    InstallKernel {
        /// Kernel flavour: generic (has 9p) or cloud (smaller, no 9p: refused).
        #[arg(long, value_enum, default_value = "generic")]
        flavour: Flavour,
        /// The VM directory (default AGENTCELL_VM_DIR, else /var/lib/agentcell/vm).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// An exact package (`linux-image-6.1.0-56-amd64`) instead of the flavour's current one.
        #[arg(long, value_name = "NAME")]
        package: Option<String>,
    },
    /// Copy the static guest agent (`agentcell-guest`, musl) into the VM directory.
    InstallAgent {
        #[arg(value_name = "PATH")]
        path: PathBuf,
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

pub fn run(cmd: VmCommand) -> ExitCode {
    let result = match cmd {
        VmCommand::InstallKernel {
            flavour,
            dir,
            package,
        } => {
            let dir = assets::vm_dir(dir.as_deref());
            assets::install_kernel(&dir, flavour, package.as_deref()).map(|(m, changed)| {
                println!(
                    "{} {} ({} {}) in {}",
                    if changed {
                        "installed"
                    } else {
                        "already installed:"
                    },
                    m.release,
                    m.package,
                    m.version,
                    dir.join("kernel").display()
                );
            })
        }
        VmCommand::InstallAgent { path, dir } => {
            let dir = assets::vm_dir(dir.as_deref());
            assets::install_agent(&dir, &path).map(|p| println!("installed {}", p.display()))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agentcell: vm: {e}");
            ExitCode::FAILURE
        }
    }
}
