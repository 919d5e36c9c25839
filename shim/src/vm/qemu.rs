//! The qemu command line of a micro-VM (pure), and the host facts it depends on (accelerator,
//! TSC frequency).
//!
//! qemu's `microvm` machine: no PCI, no firmware tables beyond ACPI's device list, virtio-mmio
//! devices only. The kernel console is a file in the VM's state directory (shown when a boot
//! fails); the agent channel is a virtio-serial port named `agentcell.0` connected to a Unix
//! socket the host listens on; shares are 9p over virtio-mmio; the NIC is virtio-net on a tap.

use std::path::{Path, PathBuf};

pub const ENV_ACCEL: &str = "AGENTCELL_VM_ACCEL";
pub const ENV_QEMU: &str = "AGENTCELL_QEMU";
pub const DEFAULT_QEMU: &str = "qemu-system-x86_64";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        }
    }
}

/// The accelerator to use and why: `AGENTCELL_VM_ACCEL=tcg|kvm` wins; no `/dev/kvm` means TCG;
/// `/sys/module/kvm_pvm` (nested PVM, on which stock distribution kernels do not boot) means
/// TCG; otherwise KVM.
pub fn detect_accel() -> (Accel, String) {
    decide_accel(
        std::env::var(ENV_ACCEL).ok().as_deref(),
        Path::new("/dev/kvm").exists(),
        Path::new("/sys/module/kvm_pvm").exists(),
    )
}

fn decide_accel(env: Option<&str>, dev_kvm: bool, kvm_pvm: bool) -> (Accel, String) {
    match env {
        Some("tcg") => return (Accel::Tcg, format!("{ENV_ACCEL}=tcg")),
        Some("kvm") => return (Accel::Kvm, format!("{ENV_ACCEL}=kvm")),
        _ => {}
    }
    if !dev_kvm {
        (Accel::Tcg, "no /dev/kvm".into())
    } else if kvm_pvm {
        (
            Accel::Tcg,
            "/dev/kvm is nested PVM (module kvm_pvm), which stock guest kernels cannot boot on"
                .into(),
        )
    } else {
        (Accel::Kvm, "/dev/kvm".into())
    }
}

/// The qemu binary: `AGENTCELL_QEMU`, else `qemu-system-x86_64` on PATH.
pub fn binary() -> PathBuf {
    std::env::var_os(ENV_QEMU)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_QEMU))
}

/// The host TSC frequency in kHz, measured once per process against CLOCK_MONOTONIC over
/// 20 ms. Under TCG the guest TSC runs at the host's rate; telling the guest (`tsc_early_khz`)
/// spares it a calibration that hangs or takes seconds on an emulated PIT.
pub fn tsc_khz() -> u64 {
    static KHZ: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *KHZ.get_or_init(measure_tsc_khz)
}

fn measure_tsc_khz() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: rdtsc has no preconditions on x86_64.
        let t0 = std::time::Instant::now();
        let c0 = unsafe { core::arch::x86_64::_rdtsc() };
        std::thread::sleep(std::time::Duration::from_millis(20));
        let c1 = unsafe { core::arch::x86_64::_rdtsc() };
        let ns = t0.elapsed().as_nanos() as u64;
        (c1.wrapping_sub(c0)).saturating_mul(1_000_000) / ns.max(1)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        0
    }
}

/// One directory exported over 9p.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareExport {
    pub tag: String,
    pub path: PathBuf,
    /// Exported read-only by qemu itself (the host refuses writes whatever the guest does).
    pub readonly: bool,
}

/// The VM's NIC: a tap that exists (in qemu's network namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapNic {
    pub ifname: String,
    pub mac: String,
}

#[derive(Debug, Clone)]
pub struct QemuConfig {
    pub accel: Accel,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Appended to the kernel command line.
    pub tsc_khz: u64,
    pub console_log: PathBuf,
    /// The host's listening socket for the agent channel (qemu connects to it).
    pub channel: PathBuf,
    pub shares: Vec<ShareExport>,
    pub nic: Option<TapNic>,
    /// Kernel messages up to warnings on the console (`debug`: everything).
    pub debug: bool,
}

/// The kernel command line.
pub fn kernel_cmdline(cfg: &QemuConfig) -> String {
    let mut c = vec![
        "console=ttyS0".to_string(),
        // Power off (not reboot) on panic or on the agent's exit: -no-reboot makes qemu exit.
        "panic=-1".into(),
        "reboot=t".into(),
        "rdinit=/init".into(),
        // Nothing on this machine needs them; probing them costs seconds under TCG.
        "i8042.noaux".into(),
        "i8042.nomux".into(),
        "i8042.nopnp".into(),
        "i8042.dumbkbd".into(),
        "nomodeset".into(),
        // microvm has no PCI bus.
        "pci=off".into(),
        "mitigations=off".into(),
        "random.trust_cpu=on".into(),
    ];
    if cfg.tsc_khz > 0 {
        c.push(format!("tsc_early_khz={}", cfg.tsc_khz));
        c.push("tsc=reliable".into());
    }
    c.push(
        if cfg.debug {
            "loglevel=8"
        } else {
            "loglevel=4"
        }
        .into(),
    );
    c.join(" ")
}

fn opt_escape(s: &str) -> String {
    // qemu option values escape ',' by doubling it.
    s.replace(',', ",,")
}

/// The qemu arguments (without the binary).
pub fn command_line(cfg: &QemuConfig) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
    push(&["-M", "microvm,rtc=on,x-option-roms=off,isa-serial=on"]);
    match cfg.accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => push(&["-accel", "tcg", "-cpu", "max"]),
    }
    let mem = cfg.memory_mib.to_string();
    let smp = cfg.vcpus.to_string();
    push(&["-m", &mem, "-smp", &smp]);
    push(&["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
    let kernel = cfg.kernel.to_string_lossy();
    let initrd = cfg.initrd.to_string_lossy();
    let cmdline = kernel_cmdline(cfg);
    push(&["-kernel", &kernel, "-initrd", &initrd, "-append", &cmdline]);
    let con = format!(
        "file,id=con,path={}",
        opt_escape(&cfg.console_log.to_string_lossy())
    );
    push(&["-chardev", &con, "-serial", "chardev:con"]);
    let chan = format!(
        "socket,id=agent,path={}",
        opt_escape(&cfg.channel.to_string_lossy())
    );
    push(&["-chardev", &chan, "-device", "virtio-serial-device"]);
    let port = format!(
        "virtserialport,chardev=agent,name={}",
        agentcell_vmproto::PORT_NAME
    );
    push(&["-device", &port]);
    for (i, s) in cfg.shares.iter().enumerate() {
        // Read-only shares cannot be written through qemu at all (`none`: no ownership
        // mapping needed); writable ones keep the guest's owners on the host (`passthrough`).
        let model = if s.readonly { "none" } else { "passthrough" };
        let fsdev = format!(
            "local,id=fs{i},path={},security_model={model},readonly={},multidevs=remap",
            opt_escape(&s.path.to_string_lossy()),
            if s.readonly { "on" } else { "off" }
        );
        let dev = format!("virtio-9p-device,fsdev=fs{i},mount_tag={}", s.tag);
        push(&["-fsdev", &fsdev, "-device", &dev]);
    }
    if let Some(nic) = &cfg.nic {
        let netdev = format!("tap,id=net0,ifname={},script=no,downscript=no", nic.ifname);
        let dev = format!("virtio-net-device,netdev=net0,mac={}", nic.mac);
        push(&["-netdev", &netdev, "-device", &dev]);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> QemuConfig {
        QemuConfig {
            accel: Accel::Tcg,
            memory_mib: 512,
            vcpus: 1,
            kernel: "/v/kernel/vmlinuz".into(),
            initrd: "/run/agentcell/vm/x/initrd".into(),
            tsc_khz: 2_999_998,
            console_log: "/run/agentcell/vm/x/console.log".into(),
            channel: "/run/agentcell/vm/x/agent.sock".into(),
            shares: vec![
                ShareExport {
                    tag: "s0".into(),
                    path: "/usr".into(),
                    readonly: true,
                },
                ShareExport {
                    tag: "s1".into(),
                    path: "/home/a,b".into(),
                    readonly: false,
                },
            ],
            nic: Some(TapNic {
                ifname: "actap0".into(),
                mac: "52:54:00:ac:77:02".into(),
            }),
            debug: false,
        }
    }

    fn after<'a>(a: &'a [String], flag: &str) -> Vec<&'a str> {
        a.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn the_command_line_has_the_machine_the_channel_the_shares_and_the_nic() {
        let a = command_line(&cfg());
        assert_eq!(
            after(&a, "-M"),
            ["microvm,rtc=on,x-option-roms=off,isa-serial=on"]
        );
        assert_eq!(after(&a, "-accel"), ["tcg"]);
        assert_eq!(after(&a, "-cpu"), ["max"]);
        for f in ["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"] {
            assert!(a.iter().any(|x| x == f), "{f}");
        }
        let append = after(&a, "-append")[0];
        assert!(append.contains("tsc_early_khz=2999998") && append.contains("console=ttyS0"));
        assert!(after(&a, "-device").contains(&"virtserialport,chardev=agent,name=agentcell.0"));
        let fsdevs = after(&a, "-fsdev");
        assert_eq!(
            fsdevs,
            [
                "local,id=fs0,path=/usr,security_model=none,readonly=on,multidevs=remap",
                "local,id=fs1,path=/home/a,,b,security_model=passthrough,readonly=off,multidevs=remap"
            ]
        );
        assert!(after(&a, "-device").contains(&"virtio-9p-device,fsdev=fs1,mount_tag=s1"));
        assert_eq!(
            after(&a, "-netdev"),
            ["tap,id=net0,ifname=actap0,script=no,downscript=no"]
        );
        let mut k = cfg();
        k.accel = Accel::Kvm;
        k.nic = None;
        let a = command_line(&k);
        assert_eq!(after(&a, "-cpu"), ["host"]);
        assert!(after(&a, "-netdev").is_empty());
    }

    #[test]
    fn accel_follows_the_override_then_the_host() {
        assert_eq!(decide_accel(Some("kvm"), false, true).0, Accel::Kvm);
        assert_eq!(decide_accel(Some("tcg"), true, false).0, Accel::Tcg);
        assert_eq!(decide_accel(None, false, false).0, Accel::Tcg);
        let (a, why) = decide_accel(None, true, true);
        assert_eq!(a, Accel::Tcg);
        assert!(why.contains("kvm_pvm"));
        assert_eq!(decide_accel(None, true, false).0, Accel::Kvm);
    }
}
