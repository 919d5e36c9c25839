//! What PID 1 does before serving: file systems, kernel modules, boot config, hostname, shares,
//! network, and finding the host's port.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agentcell_vmproto::{BootConfig, GuestNetwork, PORT_NAME, Share};

use crate::sys::{self, mount};

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("mount {path}: {source}")]
    Mount {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {source}")]
    Config {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("no virtio-serial port named {PORT_NAME} appeared in /sys/class/virtio-ports")]
    NoPort,
    #[error("open {path}: {source}")]
    Port {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("module {path}: {source}")]
    Module {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("network: {0}")]
    Network(String),
}

/// Makes the initramfs root a mount with a parent: `pivot_root` refuses to move away from the
/// initial rootfs, so containers could not pivot otherwise. The root is bound onto a directory
/// of itself, moved over `/`, and entered with chroot (what switch_root does, without copying).
pub fn leave_rootfs() -> Result<(), BootError> {
    let m = |source| BootError::Mount {
        path: "/ (leaving rootfs)".into(),
        source,
    };
    let new = Path::new("/.agentcell-root");
    fs::create_dir_all(new).map_err(m)?;
    mount(
        Some(Path::new("/")),
        new,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )
    .map_err(m)?;
    let c = sys::cpath(new).map_err(m)?;
    let dot = sys::cstr(".").map_err(m)?;
    // SAFETY: valid C strings; PID 1 is alone at this point.
    unsafe {
        sys::check(libc::chdir(c.as_ptr())).map_err(m)?;
    }
    mount(
        Some(Path::new(".")),
        Path::new("/"),
        None,
        libc::MS_MOVE,
        None,
    )
    .map_err(m)?;
    // SAFETY: as above.
    unsafe {
        sys::check(libc::chroot(dot.as_ptr())).map_err(m)?;
        let slash = sys::cstr("/").map_err(m)?;
        sys::check(libc::chdir(slash.as_ptr())).map_err(m)?;
    }
    Ok(())
}

/// /proc, /sys, /dev (+pts, shm), /run, the cgroup2 hierarchy. Also gives PID 1 standard
/// descriptors when the initramfs had no /dev/console for the kernel to open.
pub fn mount_basics() -> Result<(), BootError> {
    let table: [(&str, &str, &str, libc::c_ulong, Option<&str>); 7] = [
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            libc::MS_NOSUID,
            Some("mode=0755"),
        ),
        (
            "proc",
            "/proc",
            "proc",
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
        ),
        (
            "sysfs",
            "/sys",
            "sysfs",
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
        ),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some("ptmxmode=0666,mode=0620"),
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("mode=0755"),
        ),
        (
            "shm",
            "/dev/shm",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            Some("mode=1777"),
        ),
        (
            "cgroup2",
            "/sys/fs/cgroup",
            "cgroup2",
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
        ),
    ];
    for (i, (src, target, fstype, flags, data)) in table.into_iter().enumerate() {
        let t = Path::new(target);
        let _ = fs::create_dir_all(t);
        mount(Some(Path::new(src)), t, Some(fstype), flags, data).map_err(|source| {
            BootError::Mount {
                path: target.into(),
                source,
            }
        })?;
        if i == 0 {
            fix_std_fds();
        }
    }
    Ok(())
}

fn fix_std_fds() {
    for fd in 0..3 {
        // SAFETY: F_GETFD probes a descriptor number.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0 {
            continue;
        }
        for dev in ["/dev/console", "/dev/null"] {
            if let Ok(f) = fs::OpenOptions::new().read(true).write(true).open(dev) {
                let f = OwnedFd::from(f);
                // SAFETY: dup2 onto a free standard descriptor.
                unsafe { libc::dup2(f.as_raw_fd(), fd) };
                break;
            }
        }
    }
}

/// The module files of `modules.load`: one path per line, `#` comments and blanks skipped.
pub fn parse_modules_list(text: &str) -> Vec<PathBuf> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| Path::new("/").join(l.trim_start_matches('/')))
        .collect()
}

/// Loads each module in order; an already loaded one is fine. Returns the failures (warnings).
pub fn load_modules(list: &[PathBuf]) -> Vec<String> {
    let mut warnings = Vec::new();
    for path in list {
        if let Err(e) = load_module(path) {
            warnings.push(e.to_string());
        }
    }
    warnings
}

fn load_module(path: &Path) -> Result<(), BootError> {
    let err = |source| BootError::Module {
        path: path.display().to_string(),
        source,
    };
    let f = fs::File::open(path).map_err(err)?;
    // Compressed modules are decompressed by the kernel (MODULE_INIT_COMPRESSED_FILE, 5.17+).
    let flags: libc::c_int = match path.extension().and_then(|e| e.to_str()) {
        Some("xz" | "zst" | "gz") => 4,
        _ => 0,
    };
    let params = sys::cstr("").map_err(err)?;
    // SAFETY: finit_module on an open module file with an empty parameter string.
    let r = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            f.as_raw_fd(),
            params.as_ptr(),
            flags,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(err(e));
        }
    }
    Ok(())
}

pub fn read_boot_config(path: &Path) -> Result<BootConfig, BootError> {
    let text = fs::read_to_string(path).map_err(|source| BootError::Read {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| BootError::Config {
        path: path.display().to_string(),
        source,
    })
}

pub fn set_hostname(name: &str) -> io::Result<()> {
    // SAFETY: pointer and length describe `name`.
    sys::check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })?;
    Ok(())
}

/// 9p options. `cache=loose`, because Landlock needs it: with `none`/`mmap` a 6.1 kernel makes a
/// new inode at every lookup, so a rule (bound to the inode of the path it was given) never
/// matches later accesses and everything is denied. The cost is coherence: changes the host
/// makes to a share while the VM runs may not be seen, and guest writes reach the host on
/// writeback (the agent syncs when a container's init exits).
pub fn share_options(s: &Share) -> String {
    let mut o = "trans=virtio,version=9p2000.L,msize=262144,cache=loose,access=client".to_string();
    if s.readonly {
        o.push_str(",ro");
    }
    o
}

/// Mounts each share at `shares_dir/tag`; failures are warnings (a container that needs the
/// share then fails with its step).
pub fn mount_shares(shares: &[Share], shares_dir: &Path) -> Vec<String> {
    let mut warnings = Vec::new();
    for s in shares {
        let Ok(tag) = crate::paths::plain_name(&s.tag) else {
            warnings.push(format!("share {:?}: bad tag", s.tag));
            continue;
        };
        let target = shares_dir.join(tag);
        let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
        if s.readonly {
            flags |= libc::MS_RDONLY;
        }
        let r = fs::create_dir_all(&target).and_then(|()| {
            mount(
                Some(Path::new(tag)),
                &target,
                Some("9p"),
                flags,
                Some(&share_options(s)),
            )
        });
        if let Err(e) = r {
            warnings.push(format!("share {tag}: mount {}: {e}", target.display()));
        }
    }
    warnings
}

/// Finds `/dev/<vportNpM>` of the port named [`PORT_NAME`], waiting up to `wait` for the driver
/// (udev is absent; devtmpfs creates the node), and opens it.
pub fn open_port(wait: Duration) -> Result<OwnedFd, BootError> {
    let until = Instant::now() + wait;
    loop {
        if let Some(dev) = find_port(Path::new("/sys/class/virtio-ports")) {
            let path = Path::new("/dev").join(&dev);
            if let Ok(f) = fs::OpenOptions::new().read(true).write(true).open(&path) {
                return Ok(OwnedFd::from(f));
            }
            if Instant::now() > until {
                return Err(BootError::Port {
                    path: path.display().to_string(),
                    source: io::Error::last_os_error(),
                });
            }
        } else if Instant::now() > until {
            return Err(BootError::NoPort);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn find_port(class_dir: &Path) -> Option<String> {
    fs::read_dir(class_dir).ok()?.flatten().find_map(|e| {
        let name = fs::read_to_string(e.path().join("name")).ok()?;
        (name.trim() == PORT_NAME).then(|| e.file_name().to_string_lossy().into_owned())
    })
}

/// A virtio-serial port reads end of file (and polls POLLHUP) until the host side is open; the
/// agent must not take that for the host going away, so it waits for the host first.
pub fn wait_for_host(port: &OwnedFd) {
    loop {
        let mut p = libc::pollfd {
            fd: port.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: polling one valid descriptor.
        unsafe { libc::poll(&mut p, 1, 100) };
        if p.revents & libc::POLLHUP == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Milliseconds since the kernel started (CLOCK_BOOTTIME).
pub fn boot_ms() -> u64 {
    // SAFETY: clock_gettime fills a zeroed timespec.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

pub fn kernel_release() -> String {
    // SAFETY: uname fills a zeroed struct.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } < 0 {
        return String::new();
    }
    // SAFETY: uname NUL-terminates its fields.
    unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// Turns on the controllers containers' limits need, at the root and in `agentcell/`.
pub fn prepare_cgroups(root: &Path, ours: &Path) -> Vec<String> {
    let mut warnings = Vec::new();
    if let Err(e) = fs::create_dir_all(ours) {
        warnings.push(format!("cgroup {}: {e}", ours.display()));
        return warnings;
    }
    for dir in [root, ours] {
        for c in ["+cpu", "+memory", "+pids"] {
            if let Err(e) = fs::write(dir.join("cgroup.subtree_control"), c) {
                warnings.push(format!("cgroup {}: {c}: {e}", dir.display()));
            }
        }
    }
    warnings
}

/// `A.B.C.D/len` into the address and its netmask.
pub fn parse_cidr4(s: &str) -> Result<([u8; 4], [u8; 4]), BootError> {
    let bad = || BootError::Network(format!("{s}: not an IPv4 address/prefix"));
    let (addr, len) = s.split_once('/').ok_or_else(bad)?;
    let addr: std::net::Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let len: u32 = len.parse().map_err(|_| bad())?;
    if len > 32 {
        return Err(bad());
    }
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Ok((addr.octets(), mask.to_be_bytes()))
}

#[repr(C)]
struct IfReqAddr {
    name: [u8; libc::IFNAMSIZ],
    addr: libc::sockaddr_in,
    _pad: [u8; 8],
}

#[repr(C)]
struct IfReqInt {
    name: [u8; libc::IFNAMSIZ],
    value: libc::c_int,
    _pad: [u8; 20],
}

/// `struct rtentry` of <net/route.h>.
#[repr(C)]
struct RtEntry {
    pad1: libc::c_ulong,
    dst: libc::sockaddr,
    gateway: libc::sockaddr,
    genmask: libc::sockaddr,
    flags: libc::c_ushort,
    pad2: libc::c_short,
    pad3: libc::c_ulong,
    pad4: *mut libc::c_void,
    metric: libc::c_short,
    dev: *mut libc::c_char,
    mtu: libc::c_ulong,
    window: libc::c_ulong,
    irtt: libc::c_ushort,
}

fn sockaddr_in(ip: [u8; 4]) -> libc::sockaddr_in {
    // SAFETY: an all-zero sockaddr_in is valid.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_addr.s_addr = u32::from_ne_bytes(ip);
    sa
}

fn as_sockaddr(sa: libc::sockaddr_in) -> libc::sockaddr {
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes).
    unsafe { std::mem::transmute(sa) }
}

fn ifname(name: &str) -> [u8; libc::IFNAMSIZ] {
    let mut n = [0u8; libc::IFNAMSIZ];
    let b = name.as_bytes();
    n[..b.len().min(libc::IFNAMSIZ - 1)].copy_from_slice(&b[..b.len().min(libc::IFNAMSIZ - 1)]);
    n
}

/// The interface whose MAC is `mac` (case-insensitive).
pub fn find_interface(net_dir: &Path, mac: &str) -> Option<String> {
    fs::read_dir(net_dir).ok()?.flatten().find_map(|e| {
        let addr = fs::read_to_string(e.path().join("address")).ok()?;
        addr.trim()
            .eq_ignore_ascii_case(mac.trim())
            .then(|| e.file_name().to_string_lossy().into_owned())
    })
}

/// `lo` up, then the link of `net`: address, netmask, MTU, up, default route (ioctls; IPv6
/// is reported as a warning, it needs rtnetlink).
pub fn configure_network(net: Option<&GuestNetwork>) -> Vec<String> {
    let mut warnings = Vec::new();
    // SAFETY: a plain socket for interface ioctls.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        warnings.push(format!("network: socket: {}", io::Error::last_os_error()));
        return warnings;
    }
    // SAFETY: the socket was just created and is owned here.
    let sock = unsafe { OwnedFd::from_raw_fd(s) };
    if let Err(e) = link_up(&sock, "lo") {
        warnings.push(format!("network: lo up: {e}"));
    }
    let Some(net) = net else { return warnings };
    if let Err(e) = configure_link(&sock, net) {
        warnings.push(e.to_string());
    }
    if net.ipv6.is_some() {
        warnings.push("network: IPv6 is not configured by this agent (IPv4 only)".into());
    }
    warnings
}

fn link_up(sock: &OwnedFd, name: &str) -> io::Result<()> {
    let mut req = IfReqInt {
        name: ifname(name),
        value: 0,
        _pad: [0; 20],
    };
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the short flags at the union's start.
    unsafe {
        sys::check(libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCGIFFLAGS as _,
            &mut req,
        ))?;
        req.value |= libc::IFF_UP | libc::IFF_RUNNING;
        sys::check(libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req))?;
    }
    Ok(())
}

fn configure_link(sock: &OwnedFd, net: &GuestNetwork) -> Result<(), BootError> {
    let e = |step: &str, err: io::Error| BootError::Network(format!("{step}: {err}"));
    let name = find_interface(Path::new("/sys/class/net"), &net.mac)
        .ok_or_else(|| BootError::Network(format!("no interface with MAC {}", net.mac)))?;
    let (addr, mask) = parse_cidr4(&net.ipv4)?;
    let fd = sock.as_raw_fd();
    for (req, ip, what) in [
        (libc::SIOCSIFADDR, addr, "address"),
        (libc::SIOCSIFNETMASK, mask, "netmask"),
    ] {
        let r = IfReqAddr {
            name: ifname(&name),
            addr: sockaddr_in(ip),
            _pad: [0; 8],
        };
        // SAFETY: the request reads an ifreq with a sockaddr_in.
        sys::check(unsafe { libc::ioctl(fd, req as _, &r) })
            .map_err(|err| e(&format!("{name} {what}"), err))?;
    }
    if net.mtu > 0 {
        let r = IfReqInt {
            name: ifname(&name),
            value: net.mtu as libc::c_int,
            _pad: [0; 20],
        };
        // SAFETY: SIOCSIFMTU reads an int.
        sys::check(unsafe { libc::ioctl(fd, libc::SIOCSIFMTU as _, &r) })
            .map_err(|err| e(&format!("{name} mtu"), err))?;
    }
    link_up(sock, &name).map_err(|err| e(&format!("{name} up"), err))?;
    if !net.gateway4.is_empty() {
        let gw: std::net::Ipv4Addr = net
            .gateway4
            .parse()
            .map_err(|_| BootError::Network(format!("{}: not an IPv4 gateway", net.gateway4)))?;
        let rt = RtEntry {
            pad1: 0,
            dst: as_sockaddr(sockaddr_in([0; 4])),
            gateway: as_sockaddr(sockaddr_in(gw.octets())),
            genmask: as_sockaddr(sockaddr_in([0; 4])),
            flags: (libc::RTF_UP | libc::RTF_GATEWAY),
            pad2: 0,
            pad3: 0,
            pad4: std::ptr::null_mut(),
            metric: 0,
            dev: std::ptr::null_mut(),
            mtu: 0,
            window: 0,
            irtt: 0,
        };
        // SAFETY: SIOCADDRT reads an rtentry.
        sys::check(unsafe { libc::ioctl(fd, libc::SIOCADDRT as _, &rt) })
            .map_err(|err| e("default route", err))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_list_skips_comments_and_blanks() {
        let l = parse_modules_list(
            "# order matters\nlib/modules/6.1/virtio_mmio.ko\n\n  /lib/modules/6.1/9p.ko.xz \n",
        );
        assert_eq!(
            l,
            vec![
                PathBuf::from("/lib/modules/6.1/virtio_mmio.ko"),
                PathBuf::from("/lib/modules/6.1/9p.ko.xz"),
            ]
        );
    }

    #[test]
    fn cidr_gives_address_and_mask() {
        assert_eq!(
            parse_cidr4("10.0.2.15/24").unwrap(),
            ([10, 0, 2, 15], [255, 255, 255, 0])
        );
        assert_eq!(parse_cidr4("1.2.3.4/0").unwrap().1, [0, 0, 0, 0]);
        assert_eq!(parse_cidr4("1.2.3.4/32").unwrap().1, [255; 4]);
        assert!(parse_cidr4("1.2.3.4/33").is_err());
        assert!(parse_cidr4("1.2.3.4").is_err());
    }

    #[test]
    fn share_options_add_ro_when_readonly() {
        let ro = share_options(&Share {
            tag: "a".into(),
            readonly: true,
        });
        assert!(ro.starts_with("trans=virtio,version=9p2000.L,msize=262144"));
        assert!(ro.ends_with(",ro"));
        let rw = share_options(&Share {
            tag: "a".into(),
            readonly: false,
        });
        assert!(!rw.contains(",ro"));
    }

    #[test]
    fn ports_and_interfaces_are_found_by_name_and_mac() {
        let d = std::env::temp_dir().join(format!("agentcell-guest-sysfs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        for (p, n) in [("vport0p0", "other"), ("vport0p1", "agentcell.0")] {
            fs::create_dir_all(d.join("ports").join(p)).unwrap();
            fs::write(d.join("ports").join(p).join("name"), format!("{n}\n")).unwrap();
        }
        fs::create_dir_all(d.join("net/eth0")).unwrap();
        fs::write(d.join("net/eth0/address"), "52:54:00:ab:cd:ef\n").unwrap();
        assert_eq!(find_port(&d.join("ports")).as_deref(), Some("vport0p1"));
        assert_eq!(
            find_interface(&d.join("net"), "52:54:00:AB:CD:EF").as_deref(),
            Some("eth0")
        );
        assert_eq!(find_interface(&d.join("net"), "52:54:00:00:00:00"), None);
        fs::remove_dir_all(&d).unwrap();
    }
}
