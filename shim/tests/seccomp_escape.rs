//! The escape suite (root): a probe compiled here tries each refused system-call family, outside
//! the sandbox (where it must not be refused, so the probe can fail) and inside (where it must be
//! refused with the profile's errno).

mod common;

use std::process::Command;

use common::{Fixture, require_root, sh};
use serde_json::json;

/// The probe (also run in the micro-VM tier by `microvm.rs`): `probe` tries each refused call,
/// `probe setid DIR` plants setuid/setgid files in DIR, `probe tty` attacks stdin's terminal.
const PROBE: &str = include_str!("seccomp_probe.c");

/// Family → the errno the profile answers with.
const EXPECTED: &[(&str, i32)] = &[
    ("ptrace", libc::EPERM),
    ("process_vm_readv", libc::EPERM),
    ("io_uring_setup", libc::EPERM),
    ("bpf", libc::EPERM),
    ("perf_event_open", libc::EPERM),
    ("userfaultfd", libc::EPERM),
    ("kexec_file_load", libc::EPERM),
    ("finit_module", libc::EPERM),
    ("delete_module", libc::EPERM),
    ("mount", libc::EPERM),
    ("umount2", libc::EPERM),
    ("pivot_root", libc::EPERM),
    ("fsopen", libc::EPERM),
    ("open_tree", libc::EPERM),
    ("setns", libc::EPERM),
    ("open_by_handle_at", libc::EPERM),
    ("keyctl", libc::EPERM),
    ("add_key", libc::EPERM),
    ("clone3", libc::ENOSYS),
    ("unshare_newuser", libc::EPERM),
    ("clone_newuser", libc::EPERM),
    ("socket_vsock", libc::EPERM),
    ("socket_packet", libc::EPERM),
    ("socket_vsock_high", libc::EPERM),
    ("socket_packet_high", libc::EPERM),
    ("netlink_uevent", libc::EPERM),
    ("netlink_uevent_high", libc::EPERM),
    ("netlink_uevent_family_high", libc::EPERM),
    ("netlink_audit", libc::EPERM),
    ("netlink_generic", libc::EPERM),
    ("netlink_netfilter", libc::EPERM),
    ("ioctl_tiocsti", libc::EPERM),
    ("ioctl_tiocsti_high", libc::EPERM),
    ("ioctl_tioclinux", libc::EPERM),
    ("ioctl_tiocscty_stdout", libc::EPERM),
];

/// What must keep working inside (the answer the kernel gives without a filter).
const KEPT: &[(&str, i32)] = &[
    // The runner's own Landlock is applied after seccomp.
    ("landlock_create_ruleset", 0),
    // getifaddrs, getaddrinfo's AI_ADDRCONFIG, ip.
    ("netlink_route", 0),
    // ss.
    ("netlink_sock_diag", 0),
    // Other ioctls reach the kernel (not a terminal: ENOTTY).
    ("ioctl_tcgets", libc::ENOTTY),
];

/// The probe, compiled into `f`'s `probe/` (the policies grant it read-only).
fn probe(f: &Fixture) -> std::path::PathBuf {
    let src = f.write("probe/probe.c", PROBE);
    let bin = f.path("probe/probe");
    let cc = Command::new("cc")
        .arg("-O1")
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("cc (build-essential)");
    assert!(cc.success(), "compiling the probe");
    bin
}

fn lookup(v: &[(String, i32)], name: &str) -> Option<i32> {
    v.iter().find(|(n, _)| n == name).map(|(_, e)| *e)
}

fn parse(out: &str) -> Vec<(String, i32)> {
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(n, e)| Some((n.to_string(), e.trim().parse().ok()?)))
        .collect()
}

#[test]
fn each_refused_family_is_refused_inside_and_not_outside() {
    require_root();
    let f = Fixture::new("seccomp");
    let bin = probe(&f);

    let outside = Command::new(&bin).output().unwrap();
    let outside = parse(&String::from_utf8_lossy(&outside.stdout));
    let p = f.policy(&json!({"version": "1.0.0", "filesystem": {"readonlyPaths": [f.p("probe")]}}));
    let inside = sh(&p, &bin.display().to_string());
    assert_eq!(inside.code, 0, "{}", inside.stderr);
    let inside = parse(&inside.stdout);

    let mut failures = Vec::new();
    for (name, errno) in EXPECTED {
        let out = outside.iter().find(|(n, _)| n == name).map(|(_, e)| *e);
        let ins = inside.iter().find(|(n, _)| n == name).map(|(_, e)| *e);
        if out == Some(*errno) {
            failures.push(format!("{name}: refused with errno {errno} outside the sandbox too: the probe proves nothing"));
        }
        if ins != Some(*errno) {
            failures.push(format!(
                "{name}: inside the sandbox got {ins:?}, want errno {errno}"
            ));
        }
    }
    for (name, errno) in KEPT {
        let got = lookup(&inside, name);
        if got != Some(*errno) {
            failures.push(format!(
                "{name} inside: {got:?}, want {errno} (not refused)"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\noutside: {outside:?}\ninside: {inside:?}",
        failures.join("\n")
    );
}

/// Every file under `dir` (the directory included) whose mode has a setuid or setgid bit.
fn setid_files(dir: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        if meta.permissions().mode() & 0o6000 != 0 {
            found.push(format!("{} {:o}", p.display(), meta.permissions().mode()));
        }
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    found
}

/// The setuid planting attack: the workload (uid 0, capabilities dropped) copies a binary into
/// a read-write grant and gives it, or files it creates, setuid or setgid bits; on the host that
/// would be a root-owned setuid binary any user can run.
#[test]
fn setuid_and_setgid_bits_cannot_be_planted_in_a_read_write_grant() {
    require_root();
    let f = Fixture::new("seccomp-setid");
    let bin = probe(&f);
    let calls = [
        "chmod_6755",
        "chmod_2755",
        "fchmod_4755",
        "fchmodat_6755",
        "fchmodat2_4755",
        "open_creat_4755",
        "openat_creat_2755",
        "creat_6755",
        "mkdir_2755",
        "mkdirat_2755",
        "mknod_4755",
        "mknodat_2755",
    ];

    // Outside, every call works and leaves setuid/setgid files: the probe can plant.
    let out_dir = f.mkdir("outside");
    let outside = Command::new(&bin)
        .arg("setid")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(outside.status.success(), "{outside:?}");
    let outside = parse(&String::from_utf8_lossy(&outside.stdout));
    for name in calls {
        assert_eq!(
            lookup(&outside, name),
            Some(0),
            "{name} outside: {outside:?}"
        );
    }
    assert_eq!(lookup(&outside, "openat2_creat_4755"), Some(0));
    assert!(
        !setid_files(&out_dir).is_empty(),
        "the probe planted nothing outside"
    );

    let rw = f.mkdir("rw");
    let p = f.policy(&json!({"version": "1.0.0", "filesystem": {
        "readonlyPaths": [f.p("probe")],
        "readwritePaths": [f.p("rw")],
    }}));
    let ran = sh(&p, &format!("{} setid {}", bin.display(), rw.display()));
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let inside = parse(&ran.stdout);
    let mut failures: Vec<String> = calls
        .iter()
        .filter(|n| lookup(&inside, n) != Some(libc::EPERM))
        .map(|n| format!("{n}: {:?}, want EPERM", lookup(&inside, n)))
        .collect();
    if lookup(&inside, "openat2_creat_4755") != Some(libc::ENOSYS) {
        failures.push(format!(
            "openat2_creat_4755: {:?}, want ENOSYS",
            lookup(&inside, "openat2_creat_4755")
        ));
    }
    if lookup(&inside, "chmod_0755") != Some(0) {
        failures.push(format!(
            "chmod 0755 must still work: {:?}",
            lookup(&inside, "chmod_0755")
        ));
    }
    let planted = setid_files(&rw);
    if !planted.is_empty() {
        failures.push(format!("setuid/setgid on the host: {planted:?}"));
    }
    assert!(
        failures.is_empty(),
        "{}\ninside: {inside:?}",
        failures.join("\n")
    );
    // The copy itself landed, executable (the grant is writable; only the bits are refused).
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(rw.join("planted"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755);
}

/// A pty pair opened here: its slave is nobody's controlling terminal (this process never
/// makes it one), like the terminal of a harness that opened a pty for output. Raw mode, so
/// every byte pushed into its input is counted at once.
fn pty() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd as _;
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: out-pointers to two ints; no name, default termios and size.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: fresh descriptors we own.
    let (master, slave) = unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(master),
            std::os::fd::OwnedFd::from_raw_fd(slave),
        )
    };
    use std::os::fd::AsRawFd as _;
    // SAFETY: termios is plain data filled by tcgetattr on a terminal we own.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(slave.as_raw_fd(), &mut t), 0);
        libc::cfmakeraw(&mut t);
        assert_eq!(libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &t), 0);
    }
    (master, slave)
}

/// Bytes waiting in the terminal's input queue (what its reader, the caller's shell, would
/// read next).
fn pending_input(slave: &std::os::fd::OwnedFd) -> i32 {
    use std::os::fd::AsRawFd as _;
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    assert_eq!(
        unsafe { libc::ioctl(slave.as_raw_fd(), libc::FIONREAD, &mut n) },
        0
    );
    n
}

/// Terminal injection: with stdin on a terminal that is nobody's controlling terminal, the
/// workload calls setsid(), takes the terminal with TIOCSCTTY and pushes a command into its
/// input with TIOCSTI; the caller's shell would run it after the sandbox exits.
#[test]
fn the_workload_cannot_push_input_into_an_inherited_terminal() {
    require_root();
    let f = Fixture::new("seccomp-tty");
    let bin = probe(&f);
    let legacy =
        std::fs::read_to_string("/proc/sys/dev/tty/legacy_tiocsti").is_ok_and(|v| v.trim() == "1");

    // Outside: on a host with dev.tty.legacy_tiocsti=1 the attack works, so the probe can fail.
    if legacy {
        let (_master, slave) = pty();
        let outside = Command::new(&bin)
            .arg("tty")
            .stdin(std::process::Stdio::from(slave.try_clone().unwrap()))
            .output()
            .unwrap();
        let outside = parse(&String::from_utf8_lossy(&outside.stdout));
        assert_eq!(lookup(&outside, "tty_sctty_stdin"), Some(0), "{outside:?}");
        assert_eq!(lookup(&outside, "tty_sti"), Some(0), "{outside:?}");
        assert!(pending_input(&slave) > 0, "TIOCSTI pushed nothing outside");
    }

    let (master, slave) = pty();
    let p = f.policy(&json!({"version": "1.0.0", "filesystem": {"readonlyPaths": [f.p("probe")]}}));
    let out = Command::new(env!("CARGO_BIN_EXE_agentcell"))
        .args(["run", "--policy", &p, "--"])
        .arg(&bin)
        .arg("tty")
        .stdin(std::process::Stdio::from(slave.try_clone().unwrap()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inside = parse(&stdout);
    assert_eq!(lookup(&inside, "setsid"), Some(0), "{inside:?}");
    assert_eq!(
        lookup(&inside, "tty_sctty_stdin"),
        Some(libc::EPERM),
        "{inside:?}"
    );
    // The documented gap in the TIOCSCTTY rule: a copy of stdin under another number takes the
    // terminal. That leaves TIOCSTI as the refusal under test (with the terminal held, only
    // the filter stands between the workload and the caller's input).
    assert_eq!(lookup(&inside, "tty_sctty_copy"), Some(0), "{inside:?}");
    for name in ["tty_sti", "tty_sti_copy", "tty_sti_high"] {
        assert_eq!(
            lookup(&inside, name),
            Some(libc::EPERM),
            "{name}: {inside:?}"
        );
    }
    assert_eq!(
        pending_input(&slave),
        0,
        "bytes were pushed into the caller's terminal"
    );
    // Nothing came out on the master side either (raw mode: no echo to hide it).
    use std::io::Read as _;
    use std::os::fd::AsRawFd as _;
    // SAFETY: O_NONBLOCK on a descriptor we own.
    unsafe {
        let fl = libc::fcntl(master.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(master.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    let mut buf = [0u8; 64];
    let got = std::fs::File::from(master).read(&mut buf);
    assert!(
        matches!(&got, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "master: {got:?}"
    );
}

/// The caller's terminal is not handed over at all: a workload whose stdio are terminals gets a
/// pty of agentcell's, whose output and input are relayed.
#[test]
fn a_terminal_on_stdio_is_relayed_through_a_pty_of_our_own() {
    use std::io::{Read as _, Write as _};
    use std::os::fd::AsRawFd as _;
    require_root();
    let f = Fixture::new("seccomp-relay");
    let (master, slave) = pty();
    // SAFETY: fstat fills a stat we own.
    let rdev = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        assert_eq!(libc::fstat(slave.as_raw_fd(), &mut st), 0);
        st.st_rdev
    };
    let caller = format!("{:x}:{:x}", libc::major(rdev), libc::minor(rdev));
    // Typed before the workload starts: it waits in the caller's terminal until relayed.
    let mut m = std::fs::File::from(master);
    m.write_all(b"typed line\n").unwrap();
    let p = f.policy(&json!({"version": "1.0.0"}));
    let status = Command::new(env!("CARGO_BIN_EXE_agentcell"))
        .args(["run", "--policy", &p, "--", "/bin/sh", "-c"])
        .arg("test -t 0 && test -t 1 && test -t 2 && echo tty-ok; echo rdev=$(stat -L -c %t:%T /proc/self/fd/0); read l; echo \"got:$l\"")
        .stdin(std::process::Stdio::from(slave.try_clone().unwrap()))
        .stdout(std::process::Stdio::from(slave.try_clone().unwrap()))
        .stderr(std::process::Stdio::from(slave.try_clone().unwrap()))
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    // Everything the workload wrote was relayed before agentcell exited.
    // SAFETY: O_NONBLOCK on a descriptor we own.
    unsafe {
        let fl = libc::fcntl(m.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(m.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = m.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("tty-ok"), "{out}");
    assert!(out.contains("got:typed line"), "{out}");
    let theirs = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("rdev="))
        .unwrap_or_else(|| panic!("{out}"));
    assert_ne!(theirs, caller, "the workload holds the caller's terminal");
}
