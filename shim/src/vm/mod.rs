//! The micro-VM isolation tier, host side: one qemu `microvm` per sandbox, a stock distribution
//! kernel, an initramfs whose PID 1 is the guest agent (`agentcell-guest`), and the
//! `agentcell-vmproto` protocol over a virtio-serial port.
//!
//! - [`assets`]: where the kernel, its modules and the agent live; `agentcell vm install-kernel`.
//! - [`initramfs`]: the newc archives the VM boots from (a cached static part, a per-VM part).
//! - [`qemu`]: the qemu command line (pure); [`vmm`]: booting, watching and stopping qemu.
//! - [`client`]: the container operations over the agent channel (thread-safe, synchronous).
//! - [`spec`]: a compiled plan as the guest's `ContainerSpec` plus the 9p shares it needs.
//! - [`net`]: the VM's tap in the sandbox network namespace and the fence on forwarded traffic.
//! - [`run`]: `agentcell run --isolation microvm`, built on the above.
//!
//! The shim tier (`containerd-shim-agentcell-vm-v2`) uses [`vmm::Vm::boot`] and
//! [`client::Client`] the same way [`run`] does:
//!
//! ```no_run
//! # fn demo(plan: &agentcell_policy::Plan, prepared: &agentcell::sandbox::prepare::Prepared,
//! #         netns: std::path::PathBuf) -> Result<(), Box<dyn std::error::Error>> {
//! use agentcell::vm::{assets, client::Sinks, spec, vmm};
//! let assets = assets::load(&assets::vm_dir(None))?;          // kernel, modules, agent
//! let mut input = spec::SpecInput { plan, prepared, id: "ac-1-pod", args: vec!["/bin/true".into()],
//!     uid: 0, gid: 0, guest_landlock_abi: 0 };
//! let view = spec::build(&input)?;                             // host view + guest spec
//! let mut cfg = vmm::VmConfig::new("ac-1-pod", assets);
//! (cfg.view, cfg.export_rw, cfg.netns, cfg.nic) = (view.view, view.needs_rw, Some(netns), true);
//! let vm = vmm::Vm::boot(&cfg)?;                                // waits for Ready
//! input.guest_landlock_abi = vm.info.landlock_abi;
//! vm.client.register(1, Sinks { stdout: Some(Box::new(std::io::stdout())), ..Default::default() })?;
//! vm.client.create(1, spec::build(&input)?.spec)?;
//! vm.client.start(1)?;
//! let exit = vm.client.wait(1, None)?;                          // Some(Exit { status, timed_out, .. })
//! vm.shutdown(std::time::Duration::from_secs(2));              // Drop also kills qemu, cleans up
//! # let _ = exit; Ok(()) }
//! ```
//!
//! For a pod, the tap goes into the pod's network namespace ([`net::attach`] does it for a
//! namespace with an uplink made by `SandboxNet`; a CNI-made one needs the same tap, sysctl and
//! `program(.., Attachment::Vm(..))`), and `exec` adds processes to a running container.

pub mod assets;
pub mod client;
pub mod initramfs;
pub mod net;
pub mod qemu;
pub mod run;
pub mod seccomp;
pub mod spec;
pub mod status;
pub mod vmm;
