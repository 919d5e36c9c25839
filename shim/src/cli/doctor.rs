//! `agentcell doctor`: what this host can enforce, for people (a table) or scripts (`--json`).

use agentcell_policy::Host;
use agentcell_policy::plan::{CompileOptions, Status, WslHost};
use agentcell_policy::{ParseOptions, presets};
use clap::Args;
use serde_json::json;

use crate::host::{self, HostRoot};

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// One JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Describe a recorded host (a directory laid out like `/`, with `recorded.txt` for what
    /// only system calls answer) instead of this one: for tests against fixture trees.
    #[arg(long, value_name = "DIR", hide = true)]
    pub root: Option<std::path::PathBuf>,
}

pub fn run(args: DoctorArgs) -> i32 {
    let root = match &args.root {
        Some(dir) => HostRoot::recorded(dir),
        None => HostRoot::live(),
    };
    let h = if root.is_live() {
        host::probe()
    } else {
        host::describe(&root)
    };
    let cgroup = host::cgroup_layout_at(&root);
    let systemd = host::systemd_is_init_at(&root);
    let (userns, userns_unpriv) = host::user_namespaces(&root);
    let kvm = host::kvm(&root);
    let tiocsti = host::legacy_tiocsti(&root);
    let wsl = h.wsl.clone();
    let mut preset_rows = Vec::new();
    for (name, _, text) in presets::PRESETS {
        let verdict = match agentcell_policy::parse_with(text, &ParseOptions::default()) {
            Err(e) => json!({"runs": false, "why": e.to_string()}),
            Ok(doc) => match agentcell_policy::compile(
                &doc,
                &h,
                &CompileOptions {
                    best_effort: true,
                    rootfs: None,
                    gpu: false,
                    ..CompileOptions::default()
                },
            ) {
                Err(e) => json!({"runs": false, "why": e.to_string()}),
                Ok(plan) => {
                    let weakened: Vec<String> = plan
                        .weakened()
                        .filter_map(|w| match &w.status {
                            Status::Weakened { reason } => Some(format!("{}: {reason}", w.field)),
                            _ => None,
                        })
                        .collect();
                    let needs_fence = plan.network.proxy.is_some();
                    json!({
                        "runs": weakened.is_empty() && !needs_fence,
                        "fullyEnforced": weakened.is_empty(),
                        "weakened": weakened,
                        "why": if needs_fence { "needs the proxy fence (not in this build)" } else { "" },
                    })
                }
            },
        };
        preset_rows.push((name.to_string(), verdict));
    }
    let report = json!({
        "kernel": h.kernel_release,
        "arch": h.arch,
        "landlockAbi": h.landlock_abi,
        "seccomp": h.seccomp,
        "nftables": h.nftables,
        "ipv6": h.ipv6,
        "userNamespaces": {"available": userns, "unprivileged": userns_unpriv},
        "cgroup": {"layout": cgroup, "systemdInit": systemd, "driver": if systemd && cgroup == host::CgroupLayout::V2 { "systemd" } else { "cgroupfs" }},
        "kvm": kvm,
        "legacyTiocsti": {
            "value": tiocsti,
            "meaning": tiocsti_meaning(tiocsti),
        },
        "wsl": wsl.as_ref().map(|w| wsl_json(w, &h)),
        "gpu": h.gpu,
        "microvm": crate::vm::status::report(None),
        "presets": preset_rows.iter().map(|(n, v)| json!({"name": n, "verdict": v})).collect::<Vec<_>>(),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).expect("json"));
        return 0;
    }
    let yes = |b: bool| if b { "yes" } else { "no" };
    println!("{:24} {}", "kernel", h.kernel_release);
    println!(
        "{:24} {}",
        "landlock",
        match h.landlock_abi {
            Some(a) if a >= 6 => format!("ABI {a} (all agentcell needs)"),
            Some(a) => format!(
                "ABI {a} (older than 6: some rights and scopes missing; see policy explain)"
            ),
            None => "unavailable".into(),
        }
    );
    println!("{:24} {}", "seccomp", yes(h.seccomp));
    println!("{:24} {}", "nftables", yes(h.nftables));
    println!("{:24} {}", "ipv6", yes(h.ipv6));
    println!(
        "{:24} {} (unprivileged: {})",
        "user namespaces",
        yes(userns),
        yes(userns_unpriv)
    );
    println!(
        "{:24} {:?}, init {}, driver {}",
        "cgroups",
        cgroup,
        if systemd { "systemd" } else { "not systemd" },
        report["cgroup"]["driver"].as_str().unwrap_or("")
    );
    println!(
        "{:24} {}",
        "kvm",
        match (kvm.device, kvm.pvm) {
            (false, _) => "no /dev/kvm: micro-VMs run under qemu TCG (slow)".to_string(),
            (true, true) =>
                "nested PVM: stock guest kernels do not boot with KVM; micro-VMs use qemu TCG"
                    .to_string(),
            (true, false) => "yes: guests boot with KVM".to_string(),
        }
    );
    println!(
        "{:24} {}: {}",
        "legacy_tiocsti",
        match tiocsti {
            Some(true) => "1",
            Some(false) => "0",
            None => "absent",
        },
        tiocsti_meaning(tiocsti)
    );
    match &wsl {
        None => println!("{:24} no", "wsl"),
        Some(w) => print_wsl(w, &h),
    }
    println!(
        "{:24} {}",
        "gpu (--gpu)",
        match &h.gpu {
            None => "none: --gpu is refused".to_string(),
            Some(g) => format!(
                "{}: {}{}",
                g.kind.as_str(),
                g.devices
                    .iter()
                    .map(|d| d.path.as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
                if g.libraries.is_empty() {
                    String::new()
                } else {
                    format!(" + {} library path(s)", g.libraries.len())
                }
            ),
        }
    );
    for (k, v) in crate::vm::status::lines(&report["microvm"]) {
        println!("{k:24} {v}");
    }
    println!("\npresets on this host:");
    for (name, v) in &preset_rows {
        let state = if v["runs"].as_bool() == Some(true) {
            "runs, fully enforced".to_string()
        } else if !v["why"].as_str().unwrap_or("").is_empty() {
            format!("does not run: {}", v["why"].as_str().unwrap_or(""))
        } else {
            format!("weakened: {}", v["weakened"])
        };
        println!("  {name:16} {state}");
    }
    0
}

/// What `dev.tty.legacy_tiocsti` means for a caller whose terminal a workload could reach.
fn tiocsti_meaning(v: Option<bool>) -> &'static str {
    match v {
        Some(false) => {
            "TIOCSTI needs CAP_SYS_ADMIN on this host; sandboxes also refuse it (seccomp)"
        }
        Some(true) | None => {
            "any process may push input into its controlling terminal with TIOCSTI; sandboxes refuse it (seccomp), other programs on this host do not (sysctl dev.tty.legacy_tiocsti=0 closes it)"
        }
    }
}

/// The WSL section of `doctor --json`: the facts, and what every sandbox gets because of them.
fn wsl_json(w: &WslHost, h: &Host) -> serde_json::Value {
    json!({
        "version": w.version,
        "forced": w.forced,
        "kernel": h.kernel_release,
        "interop": w.interop(),
        "interopEntries": w.interop_entries,
        "windowsDrives": w.windows_drives,
        "init": w.init,
        "runWsl": w.run_wsl,
        "wslg": w.wslg,
        "dxg": w.dxg,
        "wslLib": w.wsl_lib,
        "landlockAbi": h.landlock_abi,
        "supported": w.version >= 2,
        "hardening": hardening_lines(w),
    })
}

/// What the hardening does on this host, one line each (also the human output).
fn hardening_lines(w: &WslHost) -> Vec<String> {
    if w.version < 2 {
        return vec![agentcell_policy::plan::wsl::WSL1_REFUSAL.to_string()];
    }
    let mut v = vec![
        "AF_VSOCK sockets refused (seccomp)".to_string(),
        "/init, /run/WSL and binfmt_misc unreachable (masked), whatever the policy says"
            .to_string(),
    ];
    if !w.windows_drives.is_empty() {
        v.push(format!(
            "{} invisible unless a policy path grants them",
            w.windows_drives.join(" ")
        ));
    }
    if w.wslg {
        v.push(
            "/mnt/wslg (display and audio sockets) hidden unless a policy path grants it".into(),
        );
    }
    v.push("/usr/lib/wsl (Windows driver store) hidden unless --gpu or a policy path".into());
    v
}

fn print_wsl(w: &WslHost, h: &Host) {
    let yes = |b: bool| if b { "yes" } else { "no" };
    println!(
        "{:24} WSL{}{}",
        "wsl",
        w.version,
        if w.forced {
            " (forced for tests: this host is not WSL)"
        } else {
            ""
        }
    );
    if w.version < 2 {
        println!(
            "  {:22} {}",
            "refused",
            agentcell_policy::plan::wsl::WSL1_REFUSAL
        );
        return;
    }
    println!(
        "  {:22} {}",
        "interop",
        if w.interop() {
            format!(
                "ON ({}): Windows programs can be started from Linux",
                w.interop_entries.join(", ")
            )
        } else {
            "off".to_string()
        }
    );
    println!(
        "  {:22} {}",
        "windows drives",
        if w.windows_drives.is_empty() {
            "none".to_string()
        } else {
            w.windows_drives.join(" ")
        }
    );
    println!(
        "  {:22} /init {}, /run/WSL {}, /mnt/wslg {}",
        "interop paths",
        yes(w.init),
        yes(w.run_wsl),
        yes(w.wslg)
    );
    println!(
        "  {:22} /dev/dxg {}, /usr/lib/wsl/lib {}",
        "gpu paths",
        yes(w.dxg),
        yes(w.wsl_lib)
    );
    println!(
        "  {:22} {}",
        "landlock",
        match h.landlock_abi {
            Some(a) if a >= 4 => format!("ABI {a} (by system call; securityfs is not mounted on WSL)"),
            Some(3) => "ABI 3: no network rules (the namespace fence does it), no device ioctl or scoping: --best-effort".to_string(),
            Some(a) => format!("ABI {a}: no network rules, truncate not controllable (ABI 3), no device ioctl or scoping: --best-effort"),
            None => "unavailable (a kernel command line without landlock in lsm=?)".to_string(),
        }
    );
    for line in hardening_lines(w) {
        println!("  {:22} {line}", "hardening");
    }
}
