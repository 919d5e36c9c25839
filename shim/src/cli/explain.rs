//! The human-readable rendering of a plan (`agentcell policy explain`).

use std::fmt::Write as _;

use agentcell_policy::Document;
use agentcell_policy::plan::net::{Dest, L4, NetRule, Verdict};
use agentcell_policy::plan::{Access, Plan, RootSource, Status};

pub fn render(file: &str, doc: &Document, plan: &Plan) -> String {
    let mut o = String::new();
    let d = &plan.document;
    let _ = writeln!(o, "policy    {file}");
    let _ = writeln!(
        o,
        "          {:?}, schema {}, containment {} (MXC's Linux backend: {:?})",
        d.kind,
        d.version,
        d.containment.as_str(),
        d.backend
    );
    let _ = writeln!(o, "          MXC {} verdicts: {}", d.mxc_release, d.read_as);
    let _ = writeln!(o, "digest    {}", d.digest);
    let h = &plan.host;
    let _ = writeln!(
        o,
        "host      {} {}, Landlock ABI {}, seccomp {}, nftables {}, IPv6 {}",
        h.arch,
        h.kernel_release,
        h.landlock_abi.map_or("none".to_string(), |a| a.to_string()),
        yes(h.seccomp),
        yes(h.nftables),
        yes(h.ipv6)
    );
    if let Some(w) = &h.wsl {
        let _ = writeln!(
            o,
            "          WSL{}{}: interop {}, Windows drives: {}",
            w.version,
            if w.forced { " (forced for tests)" } else { "" },
            if w.interop() { "on" } else { "off" },
            if w.windows_drives.is_empty() {
                "none".to_string()
            } else {
                w.windows_drives.join(" ")
            }
        );
    }

    let _ = writeln!(
        o,
        "\nfilesystem (applied top to bottom; the deepest path wins)"
    );
    match &plan.filesystem.root {
        RootSource::HostBaseline => {
            let _ = writeln!(
                o,
                "  /                      empty root; host baseline bound read-only when present:"
            );
            let _ = writeln!(
                o,
                "                         {}",
                plan.filesystem.baseline.join(" ")
            );
        }
        RootSource::Rootfs { path } => {
            let _ = writeln!(o, "  /                      {path}, read-only");
        }
    }
    let _ = writeln!(o, "  /dev /proc             fresh");
    if let Some(w) = &plan.wsl {
        let _ = writeln!(
            o,
            "  {:22} masked in /proc   [wsl hardening]",
            w.proc_masked.join(" ")
        );
    }
    for d in plan.gpu.iter().flat_map(|g| &g.devices) {
        let _ = writeln!(
            o,
            "  {:22} device node {}:{}, read/write/ioctl   [--gpu]",
            d.path,
            d.major.unwrap_or_default(),
            d.minor.unwrap_or_default()
        );
    }
    let _ = writeln!(
        o,
        "  /tmp                   fresh tmpfs, read-write, {}",
        plan.filesystem.tmp_size
    );
    for e in &plan.filesystem.entries {
        let how = match e.access {
            Access::ReadWrite => "read-write".to_string(),
            Access::ReadOnly => "read-only".to_string(),
            Access::Denied => format!(
                "denied (file: /dev/null, directory: empty read-only tmpfs {})",
                plan.filesystem.denied_dir_tmpfs_size
            ),
        };
        let _ = writeln!(o, "  {:22} {how}   [{}]", e.path, e.origins.join(", "));
    }
    let _ = writeln!(o, "  everything else        absent");
    if let Some(note) = nested_note(plan) {
        let _ = writeln!(o, "{note}");
    }

    let n = &plan.network;
    let _ = writeln!(
        o,
        "\nnetwork (private namespace{})",
        if n.needs_uplink {
            " with an uplink"
        } else {
            ", loopback only"
        }
    );
    let _ = writeln!(
        o,
        "  egress                 loopback and established traffic, then:"
    );
    if n.dns_exemption {
        let _ = writeln!(
            o,
            "    accept  any                 udp,tcp/53   (MXC's LXC DNS exemption below 0.8)"
        );
    }
    if let Some(p) = &n.proxy {
        let _ = writeln!(
            o,
            "    accept  {}:{}   tcp only (proxy fence; {})",
            p.host, p.port, p.url
        );
    }
    for r in &n.egress {
        let _ = writeln!(o, "    {}", rule(r));
    }
    let _ = writeln!(
        o,
        "    {}  everything else (IPv4 and IPv6)",
        verdict(n.egress_default)
    );
    let _ = writeln!(o, "  inbound                {}", verdict(n.ingress_default));
    let _ = writeln!(
        o,
        "  host itself            {} (its loopback services and every address it owns, both ways)",
        verdict(n.host_loopback)
    );
    if !n.resolve_at_start.is_empty() {
        let _ = writeln!(
            o,
            "  resolved at start      {} (A and AAAA, pinned; not re-resolved)",
            n.resolve_at_start.join(", ")
        );
    }

    let p = &plan.process;
    let _ = writeln!(o, "\nprocess");
    match &p.command_line {
        Some(c) => {
            let _ = writeln!(o, "  command                /bin/sh -c {c:?}");
        }
        None => {
            let _ = writeln!(
                o,
                "  command                given by the caller (agentcell run -- CMD, or the container image)"
            );
        }
    }
    let _ = writeln!(o, "  cwd                    {} ({})", p.cwd, p.cwd_origin);
    let keys: Vec<&str> = p.env.iter().map(|(k, _)| k.as_str()).collect();
    let _ = writeln!(
        o,
        "  env                    cleared; {}: {}",
        p.env_source.describe(),
        if keys.is_empty() {
            "(none)".to_string()
        } else {
            keys.join(" ")
        }
    );
    let _ = writeln!(
        o,
        "  timeout                {}",
        p.timeout_ms.map_or("none".to_string(), |t| format!(
            "{t} ms, whole cgroup killed"
        ))
    );
    let _ = writeln!(
        o,
        "  limits                 pids {}, memory {} MiB, no capabilities, no_new_privs",
        p.pids_max,
        p.memory_max >> 20
    );
    let _ = writeln!(
        o,
        "  landlock               ABI {} requested, {} path rules, scopes: abstract UNIX sockets, signals",
        plan.landlock.requested_abi,
        plan.landlock.rules.len()
    );
    let _ = writeln!(
        o,
        "  seccomp                {} deny rules, default allow",
        plan.seccomp.syscalls.len()
    );

    let _ = writeln!(o, "\nenforcement");
    for e in &plan.enforcement {
        let (mark, tail) = match &e.status {
            Status::Enforced => ("enforced", String::new()),
            Status::Weakened { reason } => ("WEAKENED", format!("\n      why: {reason}")),
            Status::NotApplicable { reason } => ("n/a", format!("\n      why: {reason}")),
        };
        let by = if e.mechanisms.is_empty() {
            String::new()
        } else {
            format!("\n      by: {}", e.mechanisms.join("; "))
        };
        let _ = writeln!(o, "  [{mark}] {}: {}{by}{tail}", e.field, e.requirement);
    }
    if !plan.notes.is_empty() {
        let _ = writeln!(o, "\nnotes");
        for n in &plan.notes {
            let _ = writeln!(o, "  {}: {}", n.path, n.message);
        }
    }
    let _ = doc;
    o
}

/// What the view does about paths inside a read-write grant, and what it cannot cover.
fn nested_note(plan: &Plan) -> Option<&'static str> {
    use agentcell_policy::plan::fs::is_within;
    let entries = &plan.filesystem.entries;
    let nested = entries.iter().any(|e| {
        e.access != Access::ReadWrite
            && entries.iter().any(|g| {
                g.access == Access::ReadWrite && g.path != e.path && is_within(&e.path, &g.path)
            })
    });
    nested.then_some(
        "  inside read-write trees: each path is resolved once, below its grant, following no\n\
     \x20 symlink (a symlink there is refused, naming it); during a run its ancestors are mount\n\
     \x20 points (cannot be renamed or removed) and a missing read-only or denied path is created\n\
     \x20 empty and held. Not covered: what a host process (or an earlier tool, or a sandbox of\n\
     \x20 another policy) already moved or copied elsewhere; a denied object is masked only where\n\
     \x20 it is when the run starts.",
    )
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn verdict(v: Verdict) -> &'static str {
    match v {
        Verdict::Accept => "accept",
        Verdict::Drop => "drop  ",
    }
}

fn rule(r: &NetRule) -> String {
    let dest = match &r.dest {
        Dest::Net(n) => n.to_string(),
        Dest::Name(n) => format!("{n} (resolved at start)"),
    };
    let l4 = match r.l4 {
        L4::Tcp => "tcp",
        L4::Udp => "udp",
        L4::Icmp => "icmp",
        L4::Any => "any",
    };
    let ports = match r.ports {
        None => String::new(),
        Some((a, b)) if a == b => format!("/{a}"),
        Some((a, b)) => format!("/{a}-{b}"),
    };
    format!(
        "{}  {:20} {:12} [{}]",
        verdict(r.verdict),
        dest,
        format!("{l4}{ports}"),
        r.origin
    )
}

/// What the containerd shim does beyond the plan for a pod's container (`explain --pod`).
pub fn pod_notes(doc: &Document, plan: &Plan) -> Vec<String> {
    use agentcell_policy::plan::fs::Access;
    let mut n = Vec::new();
    if doc
        .config
        .process
        .as_ref()
        .is_some_and(|p| p.command_line.is_some())
    {
        n.push(
            "process.commandLine is ignored: the image and the pod spec decide what runs (process.env, process.cwd and the timeout apply)"
                .to_string(),
        );
    }
    n.push("root: the image, read-only; fresh /dev, /proc, /tmp; no /sys".into());
    let granted: Vec<String> = plan
        .filesystem
        .entries
        .iter()
        .filter(|e| e.access != Access::Denied)
        .map(|e| format!("{} ({:?})", e.path, e.access))
        .collect();
    n.push(format!(
        "pod mounts (volumes, secrets, the service-account token, hostPath) are left out unless under a granted path: {}",
        if granted.is_empty() {
            "none granted".to_string()
        } else {
            granted.join(", ")
        }
    ));
    n.push("/etc/hosts, /etc/hostname, /etc/resolv.conf from the pod: read-only".into());
    n.push(format!(
        "refused capabilities: {}; privilege gain off (no_new_privs)",
        crate::containerd::confine::REFUSED_CAPABILITIES.join(", ")
    ));
    n.push("the pod's own seccomp profile is kept; the plan's filter is stacked on it".into());
    n.push("network: the pod's namespace is fenced once, when its sandbox starts; host network is refused; a per-container policy may not change the network".into());
    n
}
