//! PID 1 of the micro-VM: boots the guest (`boot`), then serves the host until `Shutdown` or
//! the channel's end, then powers off. It never exits: PID 1 exiting panics the kernel.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agentcell_guest::{Config, boot, serve, sys};
use agentcell_vmproto::{BOOT_CONFIG_PATH, GuestInfo, MODULES_LIST_PATH, SHARES_DIR, VERSION};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const PORT_WAIT: Duration = Duration::from_secs(10);

fn main() {
    std::panic::set_hook(Box::new(|info| fatal(&format!("panic: {info}"))));
    if let Err(e) = run() {
        fatal(&e);
    }
    power_off();
}

fn run() -> Result<(), String> {
    let mut warnings = Vec::new();
    boot::leave_rootfs().map_err(|e| e.to_string())?;
    boot::mount_basics().map_err(|e| e.to_string())?;
    if let Ok(list) = std::fs::read_to_string(MODULES_LIST_PATH) {
        warnings.extend(boot::load_modules(&boot::parse_modules_list(&list)));
    }
    let cfg = boot::read_boot_config(Path::new(BOOT_CONFIG_PATH)).map_err(|e| e.to_string())?;
    sys::set_debug(cfg.log_level == "debug");
    if !cfg.hostname.is_empty()
        && let Err(e) = boot::set_hostname(&cfg.hostname)
    {
        warnings.push(format!("hostname {}: {e}", cfg.hostname));
    }
    warnings.extend(boot::mount_shares(&cfg.shares, Path::new(SHARES_DIR)));
    warnings.extend(boot::configure_network(cfg.network.as_ref()));
    let ours = Path::new(CGROUP_ROOT).join("agentcell");
    let cg_warnings = boot::prepare_cgroups(Path::new(CGROUP_ROOT), &ours);
    let cgroup_root = if ours.is_dir() { Some(ours) } else { None };
    warnings.extend(cg_warnings);
    for w in &warnings {
        kmsg(&format!("agentcell-guest: warning: {w}"));
    }
    let port = boot::open_port(PORT_WAIT).map_err(|e| e.to_string())?;
    boot::wait_for_host(&port);
    let landlock_abi = sys::landlock_abi();
    let info = GuestInfo {
        version: VERSION,
        kernel_release: boot::kernel_release(),
        landlock_abi,
        boot_ms: boot::boot_ms(),
        warnings,
    };
    let config = Config {
        shares_dir: PathBuf::from(SHARES_DIR),
        state_dir: PathBuf::from("/run/agentcell/containers"),
        dev_dir: PathBuf::from("/dev"),
        cgroup_root,
        landlock_abi,
        sync_on_exit: true,
    };
    let ending = serve(port, config, info).map_err(|e| e.to_string())?;
    kmsg(&format!("agentcell-guest: {ending:?}, powering off"));
    Ok(())
}

fn kmsg(msg: &str) {
    let line = format!("{msg}\n");
    let wrote = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/kmsg")
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .is_ok();
    if !wrote {
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
}

fn fatal(msg: &str) -> ! {
    kmsg(&format!("agentcell-guest: fatal: {msg}"));
    let _ = std::io::stderr().write_all(format!("agentcell-guest: fatal: {msg}\n").as_bytes());
    power_off()
}

fn power_off() -> ! {
    // SAFETY: sync and reboot take no pointers; PID 1 must not return from here.
    unsafe {
        libc::kill(-1, libc::SIGKILL);
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    // reboot only returns on failure; halting keeps PID 1 from exiting (a kernel panic).
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
