//! The escape suite (root): a probe compiled here tries each refused system-call family, outside
//! the sandbox (where it must not be refused, so the probe can fail) and inside (where it must be
//! refused with the profile's errno).

mod common;

use std::process::Command;

use common::{Fixture, require_root, sh};
use serde_json::json;

const PROBE: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static void report(const char *name, long rc) {
    printf("%s %d\n", name, rc < 0 ? errno : 0);
}

int main(void) {
    long rc;
    errno = 0; rc = syscall(SYS_ptrace, 3 /*PTRACE_PEEKUSER*/, 999999999, 0, 0); report("ptrace", rc);
    errno = 0; rc = syscall(SYS_process_vm_readv, getpid(), 0, 0, 0, 0, 0); report("process_vm_readv", rc);
    errno = 0; rc = syscall(SYS_io_uring_setup, 1, 0); report("io_uring_setup", rc);
    errno = 0; rc = syscall(SYS_bpf, 9999, 0, 0); report("bpf", rc);
    errno = 0; rc = syscall(SYS_perf_event_open, 0, 0, -1, -1, 0); report("perf_event_open", rc);
    errno = 0; rc = syscall(SYS_userfaultfd, 0); report("userfaultfd", rc);
    errno = 0; rc = syscall(SYS_kexec_file_load, -1, -1, 0, 0, 0); report("kexec_file_load", rc);
    errno = 0; rc = syscall(SYS_finit_module, -1, "", 0); report("finit_module", rc);
    errno = 0; rc = syscall(SYS_delete_module, "agentcell_none", 0); report("delete_module", rc);
    errno = 0; rc = syscall(SYS_mount, "none", "/agentcell-none", "tmpfs", 0, 0); report("mount", rc);
    errno = 0; rc = syscall(SYS_umount2, "/agentcell-none", 0); report("umount2", rc);
    errno = 0; rc = syscall(SYS_pivot_root, "/agentcell-none", "/agentcell-none"); report("pivot_root", rc);
    errno = 0; rc = syscall(SYS_fsopen, "tmpfs", 0); report("fsopen", rc);
    errno = 0; rc = syscall(SYS_open_tree, -1, "/agentcell-none", 0); report("open_tree", rc);
    errno = 0; rc = syscall(SYS_setns, -1, 0); report("setns", rc);
    errno = 0; rc = syscall(SYS_open_by_handle_at, -1, 0, 0); report("open_by_handle_at", rc);
    errno = 0; rc = syscall(SYS_keyctl, 0 /*KEYCTL_GET_KEYRING_ID*/, -3 /*session*/, 0); report("keyctl", rc);
    errno = 0; rc = syscall(SYS_add_key, "user", "agentcell", "x", 1, -3); report("add_key", rc);
    errno = 0; rc = syscall(SYS_clone3, 0, 0); report("clone3", rc);
    {
        pid_t p = fork();
        if (p == 0) { _exit(unshare(CLONE_NEWUSER) == 0 ? 0 : errno); }
        int st = 0; waitpid(p, &st, 0);
        printf("unshare_newuser %d\n", WEXITSTATUS(st));
    }
    errno = 0; rc = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
    if (rc == 0) _exit(0);
    if (rc > 0) waitpid(rc, 0, 0);
    report("clone_newuser", rc);
    errno = 0; rc = socket(40 /*AF_VSOCK*/, SOCK_STREAM, 0); report("socket_vsock", rc);
    errno = 0; rc = socket(AF_PACKET, SOCK_RAW, 0); report("socket_packet", rc);
    errno = 0; rc = syscall(SYS_landlock_create_ruleset, 0, 0, 1 /*VERSION*/); report("landlock_create_ruleset", rc);
    return 0;
}
"#;

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
];

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
    // Landlock must stay usable inside (the runner's own Landlock is applied after seccomp).
    let ll = inside
        .iter()
        .find(|(n, _)| n == "landlock_create_ruleset")
        .map(|(_, e)| *e);
    if ll != Some(0) {
        failures.push(format!("landlock_create_ruleset inside: {ll:?}"));
    }
    assert!(
        failures.is_empty(),
        "{}\noutside: {outside:?}\ninside: {inside:?}",
        failures.join("\n")
    );
}
