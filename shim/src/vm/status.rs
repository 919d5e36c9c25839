//! What `agentcell doctor` says about the micro-VM tier on this host.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use super::{assets, qemu};

/// The micro-VM section of the doctor report: qemu, accelerator and why, kernel assets, agent.
pub fn report(vm_dir: Option<&Path>) -> Value {
    let bin = qemu::binary();
    let version = Command::new(&bin)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        });
    let (accel, why) = qemu::detect_accel();
    let dir = assets::vm_dir(vm_dir);
    let kernel = assets::manifest(&dir).ok().flatten();
    let agent = assets::agent_path(&dir);
    json!({
        "qemu": {"binary": bin, "version": version},
        "accel": accel,
        "accelWhy": why,
        "dir": dir,
        "kernel": kernel.as_ref().map(|m| json!({"release": m.release, "package": m.package, "version": m.version})),
        "agent": {"path": agent, "present": agent.is_file()},
        "ready": version.is_some() && kernel.is_some() && agent.is_file(),
    })
}

/// The human lines of [`report`].
pub fn lines(r: &Value) -> Vec<(String, String)> {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    vec![
        (
            "micro-VM qemu".into(),
            match r["qemu"]["version"].as_str() {
                Some(v) => format!("{} ({v})", s(&r["qemu"]["binary"])),
                None => format!(
                    "{} not found: install qemu-system-x86",
                    s(&r["qemu"]["binary"])
                ),
            },
        ),
        (
            "micro-VM accel".into(),
            format!("{} ({})", s(&r["accel"]), s(&r["accelWhy"])),
        ),
        (
            "micro-VM kernel".into(),
            match &r["kernel"] {
                Value::Null => format!(
                    "not installed in {} (agentcell vm install-kernel)",
                    s(&r["dir"])
                ),
                k => format!(
                    "{} ({} {})",
                    s(&k["release"]),
                    s(&k["package"]),
                    s(&k["version"])
                ),
            },
        ),
        (
            "micro-VM agent".into(),
            if r["agent"]["present"].as_bool() == Some(true) {
                s(&r["agent"]["path"])
            } else {
                format!(
                    "missing at {} (agentcell vm install-agent PATH)",
                    s(&r["agent"]["path"])
                )
            },
        ),
    ]
}
