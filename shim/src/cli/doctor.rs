//! `agentcell doctor`: what this host can enforce, for people (a table) or scripts (`--json`).

use agentcell_policy::plan::{CompileOptions, Status};
use agentcell_policy::{ParseOptions, presets};
use clap::Args;
use serde_json::json;

use crate::host;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// One JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: DoctorArgs) -> i32 {
    let h = host::probe();
    let cgroup = host::cgroup_layout();
    let systemd = host::systemd_is_init();
    let (userns, userns_unpriv) = host::user_namespaces();
    let kvm = host::kvm();
    let wsl = host::wsl();
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
        "wsl": wsl,
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
    match &wsl {
        None => println!("{:24} no", "wsl"),
        Some(w) => println!(
            "{:24} WSL{} (interop {}; Windows drives: {}){}",
            "wsl",
            w.version,
            if w.interop {
                "ON: Windows programs can be launched from Linux"
            } else {
                "off"
            },
            if w.windows_drives.is_empty() {
                "none".to_string()
            } else {
                w.windows_drives.join(" ")
            },
            if w.version == 1 {
                " -- WSL1 has no Landlock or seccomp: agentcell refuses to run"
            } else {
                ""
            }
        ),
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
