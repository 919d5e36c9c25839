//! The micro-VM tier of the task service (`containerd-shim-agentcell-vm-v2`): each container
//! boots its own VM (qemu `microvm`, the guest agent as PID 1) from the same confined spec the
//! container tier would run (`vmspec`), in a network namespace whose fence judges the VM's
//! forwarded traffic. The task operations map onto the agent protocol; exits and output come
//! from the agent channel instead of the reaper and the FIFOs.

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use agentcell_policy::Plan;
use containerd_shim::protos::events::task as ev;
use containerd_shim::protos::topics;
use serde_json::Value;

use super::{Ctr, Proc, Service};
use crate::containerd::io::ProcessSide;
use crate::containerd::reaper::{Exit, REAP_LOCK};
use crate::containerd::vmspec::{self, RO_TAG, RW_TAG};
use crate::vm::client::{Client, Sinks};
use crate::vm::spec::ViewOp;
use crate::vm::vmm::{Vm, VmConfig};
use crate::vm::{assets, seccomp};

/// The handle of a container's first process; execs count up from here.
pub const INIT_HANDLE: u32 = 1;

/// The VM of one container.
pub struct VmParts {
    /// Taken when the container is deleted (shutting the VM down).
    pub vm: Mutex<Option<Vm>>,
    pub client: Client,
    pub next_handle: AtomicU32,
    pub qemu_pid: i32,
}

/// An output stream whose writer is closed as soon as the process exits (so containerd's
/// reader sees end of file even while the handle is kept for `delete`).
#[derive(Clone, Default)]
pub struct SharedOut(Arc<Mutex<Option<File>>>);

impl SharedOut {
    fn new(fd: Option<OwnedFd>) -> Self {
        Self(Arc::new(Mutex::new(fd.map(File::from))))
    }
    pub fn close(&self) {
        self.0.lock().expect("out").take();
    }
}

impl Write for SharedOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.lock().expect("out").as_mut() {
            Some(f) => f.write(buf),
            // Nobody reads this stream: the bytes go nowhere, as with a closed FIFO.
            None => Ok(buf.len()),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The memory a VM gets: the container's limit plus room for the guest kernel and agent, at
/// least 256 MiB (the guest kernel alone wants ~100 MiB under qemu).
pub fn memory_mib(limit_bytes: u64) -> u32 {
    let want = (limit_bytes >> 20) + 160;
    want.clamp(256, 16 << 10) as u32
}

static NEXT_VM: AtomicU32 = AtomicU32::new(1);

impl Service {
    /// Boots the container's VM and creates its first process there (held until `start`).
    /// Returns the VM parts and the qemu pid (the host process that is the container).
    pub(super) fn create_vm(
        &self,
        ctr: &Ctr,
        pside: ProcessSide,
        confined: &Value,
        plan: &Plan,
    ) -> Result<(VmParts, i32), String> {
        let seccomp_bpf = if plan.host.seccomp {
            let profile = serde_json::to_value(&plan.seccomp).map_err(|e| e.to_string())?;
            seccomp::compile(&profile).map_err(|e| format!("seccomp for the guest: {e}"))?
        } else {
            Vec::new()
        };
        // The pod's own profile (kept in the confined spec, landlock_* allowed) is stacked
        // under the plan's in the guest, as the container tier stacks them on the host.
        let seccomp_pod_bpf = match confined.pointer("/linux/seccomp") {
            Some(profile) => seccomp::compile(profile)
                .map_err(|e| format!("linux.seccomp (the pod's profile) for the guest: {e}"))?,
            None => Vec::new(),
        };
        let translated = vmspec::translate(&vmspec::Input {
            id: &ctr.id,
            spec: confined,
            landlock: &ctr.landlock,
            seccomp_bpf,
            seccomp_pod_bpf,
            timeout_ms: ctr.timeout_ms,
            terminal: ctr.init.stdio.terminal,
            stdin: pside.stdin.is_some(),
        })
        .map_err(|e| e.to_string())?;
        tracing::debug!(container = %ctr.id, spec = %serde_json::to_string(&translated.spec).unwrap_or_default(), exports = ?translated.exports, "guest container spec");
        for n in &translated.notes {
            tracing::info!(container = %ctr.id, "{n}");
        }
        if let agentcell_vmproto::Root::Share { .. } = &translated.spec.root
            && let Some(root) = confined.pointer("/root/path").and_then(Value::as_str)
        {
            let made =
                vmspec::make_mount_points(std::path::Path::new(root), &translated.spec.mounts)
                    .map_err(|e| format!("making mount points in {root}: {e}"))?;
            if !made.is_empty() {
                tracing::debug!(container = %ctr.id, ?made, "mount points made in the image");
            }
        }
        let dir = assets::vm_dir(None);
        let assets = assets::load(&dir).map_err(|e| format!("micro-VM assets: {e}"))?;
        let mut cfg = VmConfig::new(
            format!(
                "ac-{}-{}",
                std::process::id(),
                NEXT_VM.fetch_add(1, Ordering::SeqCst)
            ),
            assets,
        );
        cfg.state_root = self.s.root.join("vm");
        cfg.view = translated
            .exports
            .iter()
            .map(|e| ViewOp::Bind {
                source: e.path.clone(),
                target: PathBuf::from(if e.readonly { RO_TAG } else { RW_TAG }).join(&e.name),
                readonly: e.readonly,
                dir: true,
                // Named by string: the shim's pod mounts are not resolved once yet.
                handle: None,
            })
            .collect();
        cfg.export_rw = translated.exports.iter().any(|e| !e.readonly);
        let own = ctr.own_netns.lock().expect("netns");
        if let Some(net) = own.as_ref() {
            cfg.netns = Some(net.path());
            cfg.nic = net.uplink.is_some();
        }
        drop(own);
        if let Some((netns, sid)) = &ctr.pod_netns {
            // A pod's container: its VM's tap joins the pod's namespace, on a /30 of its own.
            let index = {
                let mut links = self.s.pod_links.lock().expect("links");
                let used = links.entry(sid.clone()).or_default();
                let free = (0..crate::vm::net::POD_MAX_VMS)
                    .find(|i| !used.contains(i))
                    .ok_or_else(|| {
                        format!(
                            "pod {sid}: already {} micro-VMs, the most one pod holds",
                            crate::vm::net::POD_MAX_VMS
                        )
                    })?;
                used.insert(free);
                free
            };
            let link = crate::vm::net::pod_link(index);
            // `ip` runs: its exit is ours to wait for, not the reaper's.
            let attached = {
                let _g = REAP_LOCK.lock().unwrap_or_else(|p| p.into_inner());
                crate::vm::net::attach_pod(netns, &link)
            };
            if let Err(e) = attached {
                if let Some(used) = self.s.pod_links.lock().expect("links").get_mut(sid) {
                    used.remove(&index);
                }
                return Err(format!("network: the VM's tap in {}: {e}", netns.display()));
            }
            *ctr.pod_link.lock().expect("link") = Some(link.clone());
            cfg.netns = Some(netns.clone());
            cfg.nic = true;
            cfg.link = Some(link);
        }
        cfg.hostname = translated.spec.hostname.clone();
        cfg.memory_mib = memory_mib(translated.spec.memory_bytes);
        // qemu is our child until it is gone: a boot that fails must see its exit, which the
        // reaper would otherwise take.
        let vm = {
            let _g = REAP_LOCK.lock().unwrap_or_else(|p| p.into_inner());
            Vm::boot(&cfg).map_err(|e| format!("booting the micro-VM: {e}"))?
        };
        tracing::info!(
            container = %ctr.id,
            guest_kernel = %vm.info.kernel_release,
            landlock_abi = vm.info.landlock_abi,
            accel = vm.accel.as_str(),
            boot_ms = vm.info.boot_ms,
            boot_wall_ms = vm.boot_wall.as_millis() as u64,
            "micro-VM booted"
        );
        for (right, missing) in crate::vm::spec::landlock_gaps(plan, vm.info.landlock_abi) {
            if missing {
                tracing::warn!(container = %ctr.id, right, "the guest kernel's Landlock ABI lacks this right: enforced by the guest's mount view only");
            }
        }
        for w in &vm.info.warnings {
            tracing::warn!(container = %ctr.id, "guest: {w}");
        }
        let qemu_pid = vm.pid().unwrap_or(0) as i32;
        let client = vm.client.clone();
        let parts = VmParts {
            vm: Mutex::new(Some(vm)),
            client: client.clone(),
            next_handle: AtomicU32::new(INIT_HANDLE + 1),
            qemu_pid,
        };
        let stdin = self
            .attach_io(&client, INIT_HANDLE, &ctr.init, pside)
            .map_err(|e| e.to_string())?;
        client
            .create(INIT_HANDLE, translated.spec)
            .map_err(|e| format!("creating the container in the guest: {e}"))?;
        Self::pump_stdin(&client, INIT_HANDLE, stdin);
        Ok((parts, qemu_pid))
    }

    /// Wires a process's containerd output streams to the agent channel. Returns its stdin,
    /// for `pump_stdin` once the guest knows the handle: the agent drops input for a handle it
    /// has not created yet, and a pump started before `create`/`exec` lost a fast writer's bytes
    /// (an exec's `cat` saw only the end of file).
    fn attach_io(
        &self,
        client: &Client,
        handle: u32,
        p: &Proc,
        pside: ProcessSide,
    ) -> Result<Option<OwnedFd>, crate::vm::client::ClientError> {
        let out = SharedOut::new(pside.stdout);
        let err = SharedOut::new(pside.stderr);
        *p.vm_out.lock().expect("vm out") = vec![out.clone(), err.clone()];
        client.register(
            handle,
            Sinks {
                stdout: Some(Box::new(out)),
                stderr: Some(Box::new(err)),
                exit: None,
            },
        )?;
        Ok(pside.stdin)
    }

    /// Copies containerd's stdin of a process the guest has created to it, then closes it.
    fn pump_stdin(client: &Client, handle: u32, stdin: Option<OwnedFd>) {
        let Some(fd) = stdin else { return };
        let client = client.clone();
        std::thread::spawn(move || client.copy_stdin(handle, File::from(fd)));
    }

    /// Waits for `p` (handle `handle`) to exit in the guest; records it and tells containerd.
    fn watch_vm_exit(&self, c: &Arc<Ctr>, p: &Arc<Proc>, handle: u32, pid: i32) {
        let events = self.s.events.lock().expect("events").clone();
        let (ctr, p) = (c.clone(), p.clone());
        let client = c.vm.as_ref().expect("a VM container").client.clone();
        std::thread::spawn(move || {
            let status = match client.wait(handle, None) {
                Ok(Some(e)) => {
                    if e.timed_out {
                        tracing::info!(container = %ctr.id, "process.timeout reached: the guest killed the container");
                    }
                    e.status as u32
                }
                // The VM is gone (qemu died, the agent closed the channel).
                Ok(None) | Err(_) => {
                    tracing::warn!(container = %ctr.id, why = ?client.closed(), "the VM's agent channel closed");
                    137
                }
            };
            for o in p.vm_out.lock().expect("vm out").iter() {
                o.close();
            }
            let e = Exit {
                status,
                at: SystemTime::now(),
            };
            p.exit.set(e);
            if p.exec_id.is_empty() {
                for x in ctr.execs.lock().expect("execs").values() {
                    if x.exit.get().is_none() {
                        x.exit.set(e);
                    }
                }
            }
            let mut x = ev::TaskExit::new();
            x.container_id = ctr.id.clone();
            x.id = if p.exec_id.is_empty() {
                ctr.id.clone()
            } else {
                p.exec_id.clone()
            };
            x.pid = pid as u32;
            x.exit_status = status;
            x.exited_at = Some(super::ts(e.at)).into();
            let _ = events.send((topics::TASK_EXIT_EVENT_TOPIC, Box::new(x)));
        });
    }

    pub(super) fn start_vm_init(&self, c: &Arc<Ctr>) -> Result<i32, String> {
        let v = c.vm.as_ref().expect("a VM container");
        v.client
            .start(INIT_HANDLE)
            .map_err(|e| format!("starting {}: {e}", c.id))?;
        *c.phase.lock().expect("phase") = super::Phase::Running;
        self.watch_vm_exit(c, &c.init, INIT_HANDLE, v.qemu_pid);
        Ok(v.qemu_pid)
    }

    pub(super) fn start_vm_exec(&self, c: &Arc<Ctr>, p: &Arc<Proc>) -> Result<i32, String> {
        let v = c.vm.as_ref().expect("a VM container");
        let spec = p.spec.clone().unwrap_or_default();
        super::confine::check_capabilities(spec.get("capabilities"))
            .map_err(|e| format!("exec {}: {e}", p.exec_id))?;
        let mut process = spec.clone();
        process["env"] = serde_json::json!(super::confine::with_plan_env(&spec, &c.plan_env));
        let mut plain = p.stdio.clone();
        plain.terminal = false;
        let (pside, sside) =
            super::io::setup(&plain, &c.dir, &p.exec_id).map_err(|e| format!("exec stdio: {e}"))?;
        let handle = v.next_handle.fetch_add(1, Ordering::SeqCst);
        *p.handle.lock().expect("handle") = handle;
        let proc_spec = vmspec::exec_process(&process, p.stdio.terminal, pside.stdin.is_some());
        let stdin = self
            .attach_io(&v.client, handle, p, pside)
            .map_err(|e| e.to_string())?;
        *p.io.lock().expect("io") = sside;
        let guest_pid = v
            .client
            .exec(handle, INIT_HANDLE, proc_spec)
            .map_err(|e| format!("exec {}: {e}", p.exec_id))?;
        Self::pump_stdin(&v.client, handle, stdin);
        tracing::debug!(container = %c.id, exec = %p.exec_id, guest_pid, "exec started in the guest");
        *p.pid.lock().expect("pid") = v.qemu_pid;
        self.watch_vm_exit(c, p, handle, v.qemu_pid);
        Ok(v.qemu_pid)
    }

    pub(super) fn kill_vm(&self, c: &Ctr, p: &Proc, signal: i32, all: bool) -> Result<(), String> {
        let v = c.vm.as_ref().expect("a VM container");
        if p.exit.get().is_some() {
            return Err("process already finished".into());
        }
        let handle = *p.handle.lock().expect("handle");
        v.client
            .signal(handle, signal, all)
            .map_err(|e| e.to_string())
    }

    /// Stops the VM (the agent powers off; qemu is killed after a grace period) and forgets it.
    pub(super) fn stop_vm(&self, c: &Ctr) {
        let Some(v) = c.vm.as_ref() else { return };
        if c.init.exit.get().is_none() {
            let _ = v.client.signal(INIT_HANDLE, libc::SIGKILL, true);
            let _ = c.init.exit.wait_timeout(Duration::from_secs(5));
        }
        if let Some(vm) = v.vm.lock().expect("vm").take() {
            // qemu is our child: keep the reaper off its exit while we wait for it.
            let _g = REAP_LOCK.lock().unwrap_or_else(|p| p.into_inner());
            vm.shutdown(Duration::from_secs(3));
        }
    }
}
