//! `compile(document, host) -> Plan`: one explicit enforcement plan, pure. Everything the runner
//! does comes from the plan, and the plan says which mechanism enforces each policy field and
//! what cannot be enforced on the described host.

pub mod fs;
pub mod gpu;
pub mod landlock;
pub mod net;
pub mod process;
pub mod seccomp;
pub mod wsl;

use serde::Serialize;

use crate::canonical;
use crate::document::{Backend, Document, DocumentKind, Note};
use crate::error::Violation;
use crate::model::Containment;
use crate::netspec::{NetworkSpec, ProxyEndpoint};
use crate::path::JsonPath;

pub use fs::{Access, FsView, RootSource};
pub use gpu::{GpuHost, GpuKind, GpuPlan};
pub use landlock::LandlockPlan;
pub use net::NetworkPlan;
pub use process::ProcessPlan;
pub use seccomp::LinuxSeccomp;
pub use wsl::{WslHost, WslPlan};

/// What the planner knows of the host. Built by the runner (`agentcell doctor` shows it); tests
/// describe hosts directly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Host {
    pub arch: String,
    pub kernel_release: String,
    /// Landlock ABI from `landlock_create_ruleset(.., LANDLOCK_CREATE_RULESET_VERSION)`.
    pub landlock_abi: Option<u32>,
    pub seccomp: bool,
    pub nftables: bool,
    pub ipv6: bool,
    /// WSL, when the host is a WSL distribution (or the hardening is forced for tests).
    pub wsl: Option<WslHost>,
    /// The GPU `--gpu` would expose, if any.
    pub gpu: Option<GpuHost>,
}

impl Host {
    /// A host that can enforce everything (kernel 6.18, Landlock ABI 7).
    pub fn reference() -> Self {
        Self {
            arch: "x86_64".into(),
            kernel_release: "6.18.0".into(),
            landlock_abi: Some(7),
            seccomp: true,
            nftables: true,
            ipv6: true,
            wsl: None,
            gpu: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompileOptions {
    /// Accept a partial enforcement; every weakened item is still listed in the plan.
    pub best_effort: bool,
    /// Start the view from this root filesystem instead of the host baseline.
    pub rootfs: Option<String>,
    /// Expose the host's GPU (`--gpu`): its device nodes and driver libraries, nothing else.
    pub gpu: bool,
    /// The workload's default environment is its container image's (the containerd shim): an
    /// omitted `process.env` adds nothing over it, instead of MXC's default block.
    pub image_env: bool,
}

/// How well one requirement is enforced on the described host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "camelCase")]
pub enum Status {
    Enforced,
    /// Less than the policy asks: an error unless best effort was requested.
    Weakened {
        reason: String,
    },
    /// The field has no meaning for this runner (MXC's Linux backends ignore it too).
    NotApplicable {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Enforcement {
    /// The policy field (JSON path) or area.
    pub field: String,
    pub requirement: String,
    pub mechanisms: Vec<String>,
    #[serde(flatten)]
    pub status: Status,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentSummary {
    pub kind: DocumentKind,
    pub version: String,
    /// The MXC release whose verdicts were applied, and how this document was read under it.
    pub mxc_release: crate::release::MxcRelease,
    pub read_as: String,
    pub containment: Containment,
    pub backend: Backend,
    pub digest: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub document: DocumentSummary,
    pub host: Host,
    pub best_effort: bool,
    pub filesystem: FsView,
    pub landlock: LandlockPlan,
    pub seccomp: LinuxSeccomp,
    pub network: NetworkPlan,
    pub process: ProcessPlan,
    /// The WSL2 hardening (on WSL2 hosts, whatever the policy says).
    pub wsl: Option<WslPlan>,
    /// What `--gpu` added.
    pub gpu: Option<GpuPlan>,
    pub enforcement: Vec<Enforcement>,
    pub notes: Vec<Note>,
}

impl Plan {
    pub fn weakened(&self) -> impl Iterator<Item = &Enforcement> {
        self.enforcement
            .iter()
            .filter(|e| matches!(e.status, Status::Weakened { .. }))
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    /// The document asks for something this runner cannot do at all.
    #[error("{}", join(.0))]
    Unsupported(Vec<Violation>),
    /// The host cannot enforce parts of the plan, and best effort was not requested.
    /// The host itself rules the run out (WSL1), or a host-dependent option cannot be honoured
    /// (`--gpu` without a GPU); best effort does not change that.
    #[error("{field}: {message}")]
    Host { field: String, message: String },
    #[error("not fully enforceable on this host (use --best-effort to accept and report): {}", .0.iter().map(|e| format!("{}: {}", e.field, match &e.status { Status::Weakened { reason } => reason.as_str(), _ => "" })).collect::<Vec<_>>().join("; "))]
    Unenforceable(Vec<Enforcement>),
}

fn join(v: &[Violation]) -> String {
    v.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Compiles an accepted document into the plan for `host`.
pub fn compile(doc: &Document, host: &Host, opts: &CompileOptions) -> Result<Plan, PlanError> {
    let mut errs = Vec::new();
    let root = JsonPath::root();
    match doc.backend {
        Backend::Bubblewrap | Backend::Lxc => {}
        Backend::Microvm | Backend::Hyperlight => errs.push(Violation::new(
            root.key("containment"),
            format!(
                "'{}' names one of MXC's micro-VM backends, which agentcell does not run; use \
                 the agentcell micro-VM isolation tier instead",
                doc.containment.as_str()
            ),
        )),
        Backend::Foreign(c) => errs.push(Violation::new(
            root.key("containment"),
            format!(
                "'{}' is a Windows or macOS backend; on Linux agentcell runs process, bubblewrap \
                 and lxc documents",
                c.as_str()
            ),
        )),
    }
    let proxy = match &doc.network {
        NetworkSpec::Legacy(l) => l
            .proxy
            .as_ref()
            .map(|p| (p, root.key("network").key("proxy"))),
        NetworkSpec::Directional(d) => d
            .proxy
            .as_ref()
            .map(|p| (p, root.key("runtimeConfig").key("networkProxy"))),
    };
    if let Some((p, path)) = proxy
        && p.endpoint == ProxyEndpoint::BuiltinTestServer
    {
        errs.push(Violation::new(
            path.key("builtinTestServer"),
            "agentcell has no built-in test proxy; run a proxy and name it with url",
        ));
    }
    let root_source = match &opts.rootfs {
        Some(p) => RootSource::Rootfs { path: p.clone() },
        None => RootSource::HostBaseline,
    };
    let mut view = fs::build(&doc.filesystem, root_source, &mut errs);
    if !errs.is_empty() {
        return Err(PlanError::Unsupported(errs));
    }
    if host.wsl.as_ref().is_some_and(|w| w.version < 2) {
        return Err(PlanError::Host {
            field: "host".into(),
            message: wsl::WSL1_REFUSAL.into(),
        });
    }
    if opts.gpu
        && let Some(message) = gpu::unavailable_reason(host.gpu.as_ref(), opts.rootfs.is_some())
    {
        return Err(PlanError::Host {
            field: "--gpu".into(),
            message,
        });
    }
    // The hardening first: --gpu then re-exposes its own libraries below the driver-store mask.
    let wsl_plan = host.wsl.as_ref().map(|w| wsl::harden(&mut view, w));
    let gpu_plan = match (&host.gpu, opts.gpu) {
        (Some(g), true) => Some(gpu::apply(&mut view, g)),
        _ => None,
    };

    let mut landlock = landlock::build(&view);
    for d in gpu_plan.iter().flat_map(|g| &g.devices) {
        landlock::add_device(&mut landlock, &d.path, gpu::ORIGIN);
    }
    let seccomp = seccomp::default_profile(&host.arch);
    let network = net::build(
        &doc.network,
        doc.backend,
        doc.version.supports_directional(),
    );
    let mut notes = doc.notes.clone();
    let first_rw = doc.filesystem.readwrite.first().and_then(|p| {
        fs::normalize(p).ok().map(|n| {
            (
                n,
                root.key("filesystem")
                    .key("readwritePaths")
                    .index(0)
                    .to_string(),
            )
        })
    });
    let process = process::build(
        &doc.config,
        first_rw,
        &network,
        doc.version.is_current(),
        opts.image_env,
        &mut notes,
    );
    let mut enforcement = report(doc, host, &view, &landlock, &network, &process);
    if let (Some(w), Some(p)) = (&host.wsl, &wsl_plan) {
        let vsock = seccomp::denies_socket_family(&seccomp, seccomp::AF_VSOCK);
        enforcement.extend(wsl::report(w, p, vsock, host.seccomp, &view));
    }
    if let Some(g) = &gpu_plan {
        enforcement.push(gpu_item(g, host));
    }

    let plan = Plan {
        document: DocumentSummary {
            kind: doc.kind,
            version: doc.version.to_string(),
            mxc_release: doc.release,
            read_as: read_as(doc),
            containment: doc.containment,
            backend: doc.backend,
            digest: canonical::digest(doc),
        },
        host: host.clone(),
        best_effort: opts.best_effort,
        filesystem: view,
        landlock,
        seccomp,
        network,
        process,
        wsl: wsl_plan,
        gpu: gpu_plan,
        enforcement,
        notes,
    };
    let weakened: Vec<Enforcement> = plan.weakened().cloned().collect();
    if !weakened.is_empty() && !opts.best_effort {
        return Err(PlanError::Unenforceable(weakened));
    }
    Ok(plan)
}

/// How the document was read: MXC 1.0's exact contract, or MXC 0.8's reading of a retired one.
pub fn read_as(doc: &Document) -> String {
    match doc.version.contract() {
        Some(v) => format!("MXC {} contract {v}", doc.release),
        None => format!(
            "retired document, read as MXC 0.8 read it (--mxc-release {})",
            doc.release
        ),
    }
}

fn item(
    field: &str,
    requirement: impl Into<String>,
    mechanisms: &[&str],
    status: Status,
) -> Enforcement {
    Enforcement {
        field: field.into(),
        requirement: requirement.into(),
        mechanisms: mechanisms.iter().map(|m| m.to_string()).collect(),
        status,
    }
}

/// The enforcement entry of `--gpu`: exactly what was added.
fn gpu_item(g: &GpuPlan, host: &Host) -> Enforcement {
    let devices: Vec<&str> = g.devices.iter().map(|d| d.path.as_str()).collect();
    let mut libs = Vec::new();
    if !g.added_read_only.is_empty() {
        libs.push(format!("{} read-only", g.added_read_only.join(", ")));
    }
    if !g.already_visible.is_empty() {
        libs.push(format!(
            "{} already in the view",
            g.already_visible.join(", ")
        ));
    }
    if !g.denied_by_policy.is_empty() {
        libs.push(format!(
            "{} left denied by the policy",
            g.denied_by_policy.join(", ")
        ));
    }
    let ioctl_note = match host.landlock_abi {
        Some(a) if a >= 5 => {
            "Landlock read, write and ioctl rule on each node (other devices get no ioctl)"
        }
        _ => {
            "Landlock read and write rule on each node (this kernel's Landlock cannot restrict device ioctl: needs ABI 5)"
        }
    };
    item(
        "--gpu",
        format!(
            "{} GPU: {} usable; libraries: {}; nothing else added",
            g.kind.as_str(),
            devices.join(", "),
            if libs.is_empty() {
                "none".to_string()
            } else {
                libs.join("; ")
            }
        ),
        &[
            "device nodes created in the sandbox's /dev with the host's major:minor; a cgroup device rule allows exactly those numbers",
            ioctl_note,
            "read-only bind mounts and Landlock read rules for the libraries",
            "seccomp unchanged: mmap and the ioctls GPU drivers use are not filtered (only three terminal requests are)",
        ],
        Status::Enforced,
    )
}

fn report(
    doc: &Document,
    host: &Host,
    view: &FsView,
    landlock: &LandlockPlan,
    network: &NetworkPlan,
    process: &ProcessPlan,
) -> Vec<Enforcement> {
    let mut out = Vec::new();
    let landlock_gaps = landlock::missing_on(landlock, host.landlock_abi);
    let ll_status = if landlock_gaps.is_empty() {
        Status::Enforced
    } else {
        Status::Weakened {
            reason: landlock_gaps.join("; "),
        }
    };
    // The policy's own paths: the WSL hardening's masks and --gpu's libraries are listed apart.
    let count = |a: Access| {
        view.entries
            .iter()
            .filter(|e| e.access == a && e.origins.iter().any(|o| o.starts_with("filesystem.")))
            .count()
    };
    out.push(item(
        "filesystem.readonlyPaths",
        format!("{} path(s) readable, not writable", count(Access::ReadOnly)),
        &[
            "read-only bind mount in a private mount namespace",
            "Landlock read/execute rule",
        ],
        ll_status.clone(),
    ));
    out.push(item(
        "filesystem.readwritePaths",
        format!("{} path(s) readable and writable", count(Access::ReadWrite)),
        &["bind mount", "Landlock full-access rule"],
        ll_status.clone(),
    ));
    out.push(item(
        "filesystem.deniedPaths",
        format!(
            "{} path(s) inaccessible, even inside an allowed parent",
            count(Access::Denied)
        ),
        &[
            "file masked with /dev/null, directory with an empty read-only size-capped tmpfs",
            "symlink, '..', bind-mount and hard-link aliases resolved on the host and masked too",
        ],
        Status::Enforced,
    ));
    out.push(item(
        "filesystem (unlisted paths)",
        "every host path outside the baseline and the policy is absent",
        &[
            "new root with only the baseline bound read-only",
            "Landlock grants nothing outside its rules",
        ],
        ll_status,
    ));
    // Degraded kernels (WSL2's 5.15 and 6.6 among them): say what the missing ABIs mean.
    if host.landlock_abi.is_none_or(|a| a < 4) {
        out.push(item(
            "network (Landlock)",
            "egress and ingress rules",
            &[match host.landlock_abi {
                Some(a) => format!(
                    "the private network namespace and its nftables fence only: Landlock ABI {a} has no network rules (ABI 4)"
                ),
                None => "the private network namespace and its nftables fence only: Landlock is unavailable".to_string(),
            }
            .as_str()],
            Status::Enforced,
        ));
    }
    if let Some(a) = host.landlock_abi.filter(|a| *a < 3) {
        out.push(item(
            "filesystem (truncate)",
            "files outside read-write paths cannot be truncated",
            &["read-only bind mounts (truncate fails with EROFS)"],
            Status::Weakened {
                reason: format!(
                    "Landlock ABI {a} cannot control truncate (needs ABI 3): only the read-only mounts refuse it"
                ),
            },
        ));
    }
    out.push(item(
        "filesystem (nesting)",
        "read-only inside read-write and denied inside allowed hold",
        &["mount order shallow to deep (Landlock grants are additive and cannot narrow a parent)"],
        Status::Enforced,
    ));
    let net_status = if host.nftables || !network.needs_uplink && network.egress.is_empty() {
        Status::Enforced
    } else {
        Status::Weakened {
            reason: "nftables is unavailable on this host".into(),
        }
    };
    let net_field = match &doc.network {
        NetworkSpec::Directional(_) => "network.egress / network.ingress",
        NetworkSpec::Legacy(_) => "network (legacy fields)",
    };
    let egress_mech: &[&str] = if network.needs_uplink {
        &[
            "private network namespace",
            "nftables inet table owned by the runner (the workload has no CAP_NET_ADMIN)",
        ]
    } else {
        &["private network namespace with no link to the outside (loopback only)"]
    };
    out.push(item(
        net_field,
        format!(
            "{} egress rule(s), default {}, identical for IPv4 and IPv6; inbound {}; host loopback {}",
            network.egress.len(),
            network.egress_default.as_str(),
            network.ingress_default.as_str(),
            network.host_loopback.as_str()
        ),
        egress_mech,
        net_status.clone(),
    ));
    if !host.ipv6 && network.needs_uplink {
        out.push(item(
            "network (IPv6)",
            "IPv6 rules",
            &["IPv6 is disabled on this host: no IPv6 traffic leaves the sandbox at all"],
            Status::Enforced,
        ));
    }
    if let Some(p) = &network.proxy {
        out.push(item(
            "network proxy",
            format!(
                "only TCP to {}:{} leaves the sandbox; proxy variables set",
                p.host, p.port
            ),
            &[
                "nftables fence (UDP and IPv6 included)",
                "HTTP(S)_PROXY/ALL_PROXY/FTP_PROXY in both cases",
            ],
            net_status,
        ));
    }
    if !network.resolve_at_start.is_empty() {
        out.push(item(
            "network (host names)",
            format!(
                "{} resolved once at start (A and AAAA) and pinned",
                network.resolve_at_start.join(", ")
            ),
            &["nftables rules for the resolved addresses; later DNS changes are not followed"],
            Status::Enforced,
        ));
    }
    if network.dns_exemption {
        out.push(item(
            "network (DNS)",
            "UDP/TCP port 53 allowed to any destination",
            &["as MXC's LXC backend does for documents below schema 0.8"],
            Status::Enforced,
        ));
    }
    let sc_status = if host.seccomp {
        Status::Enforced
    } else {
        Status::Weakened {
            reason: "seccomp is unavailable on this host".into(),
        }
    };
    out.push(item(
        "seccomp (beyond MXC)",
        "ptrace, io_uring, bpf, mount API, setns, user namespaces, keyrings, AF_VSOCK/AF_PACKET, setuid/setgid modes, netlink beyond route and sock_diag, TIOCSTI/TIOCLINUX/TIOCSCTTY on stdio refused",
        &["seccomp filter installed before exec"],
        sc_status,
    ));
    out.push(item(
        "process.env",
        format!(
            "{} variable(s) from {}; nothing inherited from the caller",
            process.env.len(),
            process.env_source.describe()
        ),
        &["environment cleared, then set from the plan"],
        Status::Enforced,
    ));
    out.push(item(
        "process.cwd",
        format!("{} ({})", process.cwd, process.cwd_origin),
        &["chdir before exec"],
        Status::Enforced,
    ));
    out.push(item(
        "process.timeout",
        match process.timeout_ms {
            Some(t) => format!("{t} ms"),
            None => "none".into(),
        },
        &["the whole cgroup is killed at the deadline (background children too)"],
        Status::Enforced,
    ));
    out.push(item(
        "process (privileges)",
        format!(
            "no capabilities, no_new_privileges, pids ≤ {}, memory ≤ {} MiB",
            process.pids_max,
            process.memory_max >> 20
        ),
        &[
            "pid, ipc, uts, mount, cgroup and network namespaces",
            "cgroup limits",
        ],
        Status::Enforced,
    ));
    if doc.config.ui.is_some() {
        out.push(item(
            "ui",
            "UI isolation",
            &[],
            Status::NotApplicable {
                reason:
                    "no display is reachable from the sandbox; MXC's Linux backends ignore ui too"
                        .into(),
            },
        ));
    }
    if let Some(l) = &doc.config.lifecycle
        && (l.preserve_policy == Some(true) || l.destroy_on_exit == Some(false))
    {
        out.push(item(
            "lifecycle",
            "keep the sandbox or its policy after exit",
            &[],
            Status::NotApplicable {
                reason: "agentcell sandboxes and their rules are always removed at exit".into(),
            },
        ));
    }
    // Fields only Windows or macOS backends act on: parsed where MXC accepts them, nothing here.
    if let Some(f) = &doc.config.fallback {
        out.push(item(
            "fallback",
            format!(
                "allowDaclMutation {}",
                f.allow_dacl_mutation.map_or("unset".to_string(), |b| b.to_string())
            ),
            &[],
            Status::NotApplicable {
                reason: "a Windows fallback (host filesystem DACL changes); Linux backends have no DACLs to change".into(),
            },
        ));
    }
    if doc.config.telemetry.is_some() {
        out.push(item(
            "telemetry",
            "MXC telemetry setting",
            &[],
            Status::NotApplicable {
                reason: "agentcell sends no telemetry".into(),
            },
        ));
    }
    if doc.config.container_id.is_some() {
        out.push(item(
            "containerId",
            "externally assigned container name",
            &[],
            Status::NotApplicable {
                reason: "agentcell names its sandboxes itself (the id is not used)".into(),
            },
        ));
    }
    if doc.backend == Backend::Lxc {
        out.push(item(
            "lxc",
            "distribution image",
            &[],
            Status::NotApplicable { reason: "agentcell downloads no images: the workload runs on the read-only host baseline, or --rootfs".into() },
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::{ParseOptions, parse_with};

    fn doc(json: &str) -> Document {
        parse_with(json, &ParseOptions::default()).unwrap()
    }

    #[test]
    fn reference_host_enforces_everything() {
        let d = doc(
            r#"{"version":"1.0.0","filesystem":{"readwritePaths":["/work"],"deniedPaths":["/work/.env"]}}"#,
        );
        let p = compile(&d, &Host::reference(), &CompileOptions::default()).unwrap();
        assert_eq!(p.weakened().count(), 0);
        assert_eq!(p.process.cwd, "/work");
        assert_eq!(p.filesystem.access_of("/work/.env"), Some(Access::Denied));
    }

    #[test]
    fn old_landlock_is_an_error_unless_best_effort() {
        let d = doc(r#"{"version":"1.0.0"}"#);
        let host = Host {
            landlock_abi: Some(3),
            ..Host::reference()
        };
        let err = compile(&d, &host, &CompileOptions::default()).unwrap_err();
        assert!(err.to_string().contains("IoctlDev"), "{err}");
        let p = compile(
            &d,
            &host,
            &CompileOptions {
                best_effort: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(p.weakened().count() > 0);
        let none = Host {
            landlock_abi: None,
            seccomp: false,
            ..Host::reference()
        };
        let p = compile(
            &d,
            &none,
            &CompileOptions {
                best_effort: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(p.weakened().any(|e| e.field.starts_with("seccomp")));
    }

    /// WSL2's 6.6 kernel (ABI 3) and 5.15 (ABI 1): what the missing ABIs mean is said, and the
    /// gaps are weakenings (an error unless best effort), as for any other ABI shortfall.
    #[test]
    fn degraded_kernels_say_what_they_lose() {
        let d = doc(r#"{"version":"1.0.0","filesystem":{"readwritePaths":["/w"]}}"#);
        let be = CompileOptions {
            best_effort: true,
            ..Default::default()
        };
        let at = |abi: Option<u32>| {
            let host = Host {
                landlock_abi: abi,
                ..Host::reference()
            };
            compile(&d, &host, &be).unwrap()
        };
        let field = |p: &Plan, f: &str| p.enforcement.iter().find(|e| e.field == f).cloned();
        for abi in [Some(4), Some(7)] {
            let p = at(abi);
            assert!(field(&p, "network (Landlock)").is_none());
            assert!(field(&p, "filesystem (truncate)").is_none());
        }
        let p = at(Some(3));
        let net = field(&p, "network (Landlock)").unwrap();
        assert_eq!(net.status, Status::Enforced);
        assert!(
            net.mechanisms[0].contains("nftables fence only: Landlock ABI 3 has no network rules"),
            "{net:?}"
        );
        assert!(field(&p, "filesystem (truncate)").is_none());
        let p = at(Some(1));
        assert!(field(&p, "network (Landlock)").is_some());
        let t = field(&p, "filesystem (truncate)").unwrap();
        assert!(
            matches!(&t.status, Status::Weakened { reason } if reason.contains("cannot control truncate")),
            "{t:?}"
        );
        let host = Host {
            landlock_abi: Some(1),
            ..Host::reference()
        };
        let e = compile(&d, &host, &CompileOptions::default()).unwrap_err();
        assert!(e.to_string().contains("filesystem (truncate)"), "{e}");
        assert!(field(&at(None), "network (Landlock)").is_some());
    }

    #[test]
    fn foreign_containments_and_relative_paths_are_refused() {
        let d =
            doc(r#"{"version":"1.0.0","containment":"seatbelt","process":{"commandLine":"x"}}"#);
        let e = compile(&d, &Host::reference(), &CompileOptions::default()).unwrap_err();
        assert!(e.to_string().contains("containment"), "{e}");
        let d = doc(r#"{"version":"1.0.0","filesystem":{"readonlyPaths":["rel"]}}"#);
        let e = compile(&d, &Host::reference(), &CompileOptions::default()).unwrap_err();
        assert!(e.to_string().contains("filesystem.readonlyPaths[0]"), "{e}");
    }

    #[test]
    fn nftables_missing_matters_only_with_an_uplink() {
        let host = Host {
            nftables: false,
            ..Host::reference()
        };
        let closed = doc(r#"{"version":"1.0.0"}"#);
        assert!(compile(&closed, &host, &CompileOptions::default()).is_ok());
        let open = doc(
            r#"{"version":"1.0.0","network":{"egress":{"allow":[{"to":[{"cidr":"198.18.0.0/15"}]}]}}}"#,
        );
        assert!(compile(&open, &host, &CompileOptions::default()).is_err());
    }
}
