//! Attacks on the filesystem view from a read-write tree (root): a sandbox swapping a granted
//! path's component between a directory and a symlink while other sandboxes start (issue 15,
//! class 1), and renames or plants by one run that would unmask or unlock for the next (class 4).
//!
//! `AGENTCELL_TEST_BIN` runs the same attacks against another `agentcell` binary (the previous
//! release, say), to show they succeed there.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{Fixture, Ran, require_root};
use serde_json::json;

fn bin() -> String {
    std::env::var("AGENTCELL_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_agentcell").into())
}

fn sh(policy: &Path, script: &str) -> Ran {
    sh_in(&[], policy, script)
}

/// `sh` with extra `run` options before the policy (`--isolation microvm`).
fn sh_in(opts: &[&str], policy: &Path, script: &str) -> Ran {
    let out = Command::new(bin())
        .arg("run")
        .args(opts)
        .arg("--policy")
        .arg(policy)
        .args(["--", "/bin/sh", "-c", script])
        .output()
        .expect("run agentcell");
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn write_policy(f: &Fixture, name: &str, fs: serde_json::Value) -> PathBuf {
    let p = f.path(&format!("{name}.json"));
    // Long enough for the attacker to outlast 50 micro-VM victims booted under TCG.
    let doc = json!({"version": "1.0.0", "filesystem": fs, "timeoutMs": 600000});
    std::fs::write(&p, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    p
}

/// Swaps `<dir>/<name>` (a directory) with `<dir>/<name>.swap` (a symlink to `<target>`) with
/// `renameat2(RENAME_EXCHANGE)` until `<stop>` exists, then prints how many swaps succeeded.
const SWAPPER: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE 2
#endif
int main(int argc, char **argv) {
    if (argc != 5 || chdir(argv[1]) != 0) return 2;
    char swap[512];
    snprintf(swap, sizeof swap, "%s.swap", argv[2]);
    mkdir(argv[2], 0755);
    unlink(swap);
    if (symlink(argv[3], swap) != 0) return 3;
    long n = 0;
    while (access(argv[4], F_OK) != 0)
        if (syscall(SYS_renameat2, AT_FDCWD, argv[2], AT_FDCWD, swap, RENAME_EXCHANGE) == 0) n++;
    printf("swaps %ld\n", n);
    return 0;
}
"#;

fn compile_swapper(f: &Fixture) -> PathBuf {
    let src = f.write("probe/swap.c", SWAPPER);
    let out = f.path("probe/swap");
    let ok = Command::new("cc")
        .arg("-O1")
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .status()
        .expect("cc (build-essential)")
        .success();
    assert!(ok, "compiling the swapper");
    out
}

/// A file at the host's root (and so outside every view) the victims look for; removed on drop.
struct Marker(PathBuf);
impl Marker {
    fn new(tag: &str) -> Self {
        let p = PathBuf::from(format!("/agentcell-view-race-{tag}-{}", std::process::id()));
        std::fs::write(&p, "HOST_ROOT_MARKER").unwrap();
        Self(p)
    }
    fn name(&self) -> String {
        self.0.file_name().unwrap().to_string_lossy().into_owned()
    }
}
impl Drop for Marker {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Starts the attacker: a sandbox with read-write `ws` only (another policy on the same tree)
/// swapping `ws/<name>` with a symlink to `target`. Returns it and the stop file.
fn start_swapper(
    f: &Fixture,
    swapper: &Path,
    name: &str,
    target: &str,
) -> (std::process::Child, PathBuf) {
    let stop = f.path(&format!("ws/stop-{name}"));
    let _ = std::fs::remove_file(&stop);
    let p = write_policy(
        f,
        &format!("attacker-{name}"),
        json!({"readwritePaths": [f.p("ws")], "readonlyPaths": [f.p("probe")]}),
    );
    let child = Command::new(bin())
        .arg("run")
        .arg("--policy")
        .arg(&p)
        .arg("--")
        .arg(swapper)
        .arg(f.p("ws"))
        .arg(name)
        .arg(target)
        .arg(&stop)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the attacker");
    // Wait until it is swapping: the symlink exists.
    let swap = f.path(&format!("ws/{name}.swap"));
    for _ in 0..600 {
        if std::fs::symlink_metadata(&swap).is_ok()
            || std::fs::symlink_metadata(f.path(&format!("ws/{name}")))
                .is_ok_and(|m| m.file_type().is_symlink())
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    (child, stop)
}

fn stop_swapper(child: std::process::Child, stop: &Path) -> u64 {
    std::fs::write(stop, "").unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "attacker: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.trim()
        .strip_prefix("swaps ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("attacker said {text:?}"))
}

/// Runs `n` victims, two at a time; returns every result.
fn victims(n: usize, policy: &Path, script: &str) -> Vec<Ran> {
    victims_in(&[], n, policy, script)
}

fn victims_in(opts: &[&str], n: usize, policy: &Path, script: &str) -> Vec<Ran> {
    let per = n.div_ceil(2);
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    (0..per)
                        .map(|_| sh_in(opts, policy, script))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    })
}

/// Every victim either ran with a clean view or refused (125) naming the swapped path; none saw
/// the host. At least one ran, so the check inside is exercised.
fn judge(results: &[Ran], swapped: &str) {
    let (mut ran, mut refused) = (0, 0);
    let mut reasons = std::collections::BTreeMap::<String, usize>::new();
    for r in results {
        assert!(
            !r.stdout.contains("LEAK"),
            "a victim saw outside its view: {}\n{}",
            r.stdout,
            r.stderr
        );
        match r.code {
            0 => {
                assert!(r.stdout.contains("DONE"), "{} {}", r.stdout, r.stderr);
                ran += 1;
            }
            // Refused: the path was a symlink when resolved, or became one while the runtime
            // built the view (its mount then fails, or the check before start catches it).
            125 => {
                refused += 1;
                let last = r.stderr.lines().last().unwrap_or_default();
                // Group by the message's shape (the path and the step, not the details).
                let key: String = last.split(':').take(3).collect::<Vec<_>>().join(":");
                *reasons.entry(key).or_insert(0) += 1;
            }
            c => panic!("victim exited {c}: {} {}", r.stdout, r.stderr),
        }
    }
    eprintln!("{swapped}: {ran} victims ran with a clean view, {refused} refused: {reasons:#?}");
    assert!(
        ran > 0,
        "no victim ever started: {:?}",
        results.iter().map(|r| &r.stderr).collect::<Vec<_>>()
    );
}

/// The coding-agent shape (read-write `ws`, read-only `ws/.git`) while another sandbox swaps
/// `ws/.git` with a symlink to `/`: 50 victims started with `opts` run `probes` (given the path
/// of `ws/.git` and the host marker's name; each prints `LEAK:...` on a leak), then `DONE`.
fn swap_read_only_git(name: &str, opts: &[&str], probes: impl Fn(&str, &str) -> String) {
    let f = Fixture::new(&format!("race-{name}"));
    f.mkdir("ws/.git");
    let swapper = compile_swapper(&f);
    let marker = Marker::new(name);
    let (child, stop) = start_swapper(&f, &swapper, ".git", "/");
    let p = write_policy(
        &f,
        "victim",
        json!({"readwritePaths": [f.p("ws")], "readonlyPaths": [f.p("ws/.git")]}),
    );
    let git = f.p("ws/.git");
    let script = format!("{} echo DONE", probes(&git, &marker.name()));
    let results = victims_in(opts, 50, &p, &script);
    let swaps = stop_swapper(child, &stop);
    assert!(
        swaps > 0,
        "the attacker never swapped: the test proves nothing"
    );
    judge(&results, &git);
}

/// No victim gets the host's root (a marker placed there, the host's writable /proc) at
/// `ws/.git`.
#[test]
fn a_swapped_read_only_path_never_mounts_the_host_root() {
    require_root();
    swap_read_only_git("ro", &[], |git, m| {
        format!(
            "[ -e {git}/{m} ] && echo LEAK:marker; [ -w {git}/proc/sys/kernel/core_pattern ] && echo LEAK:core_pattern; \
             [ -w /proc/sys/kernel/core_pattern ] && echo LEAK:own_core_pattern;"
        )
    });
}

/// The same attack on the micro-VM tier: qemu exports what `prepare` resolved (copies of its
/// descriptors' mounts), never the swapped name, so no guest sees the host's root at `ws/.git`
/// (through the read-only share) or anything of the host outside the grants.
#[test]
fn a_swapped_read_only_path_never_reaches_a_micro_vm() {
    require_root();
    if let Err(e) = agentcell::vm::assets::load(&agentcell::vm::assets::vm_dir(None)) {
        panic!("micro-VM assets missing ({e}); scripts/test.sh installs them");
    }
    swap_read_only_git("vm", &["--isolation", "microvm"], |git, m| {
        format!(
            "[ -e {git}/{m} ] && echo LEAK:marker; [ -e {git}/etc/shadow ] && echo LEAK:shadow;"
        )
    });
}

/// The read-write variant: a nested read-write `ws/out` swapped with a symlink to a host
/// directory outside the view; whatever the victims write lands inside `ws`, never there.
#[test]
fn a_swapped_read_write_path_never_writes_outside_the_view() {
    require_root();
    let f = Fixture::new("race-rw");
    f.mkdir("ws/out");
    let outside = f.mkdir("outside");
    let swapper = compile_swapper(&f);
    let (child, stop) = start_swapper(&f, &swapper, "out", &outside.display().to_string());
    let p = write_policy(
        &f,
        "victim",
        json!({"readwritePaths": [f.p("ws"), f.p("ws/out")]}),
    );
    let out = f.p("ws/out");
    let script = format!("echo PWNED > {out}/pwned-$$ 2>/dev/null; echo DONE");
    let results = victims(50, &p, &script);
    let swaps = stop_swapper(child, &stop);
    assert!(
        swaps > 0,
        "the attacker never swapped: the test proves nothing"
    );
    let leaked: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(leaked.is_empty(), "written outside the view: {leaked:?}");
    judge(&results, &out);
}

/// Class 4, the ml-toolchain shape: run 1 tries to move the denied `.cache/hf` (and its parent)
/// aside inside the read-write home; both renames fail, so run 2 cannot read the token under
/// another name.
#[test]
fn renaming_a_denied_path_or_its_ancestor_does_not_unmask_it_next_run() {
    require_root();
    let f = Fixture::new("rename-denied");
    f.write("home/.cache/hf/token", "HF_TOKEN_SECRET");
    let p = write_policy(
        &f,
        "p",
        json!({"readwritePaths": [f.p("home")], "deniedPaths": [f.p("home/.cache/hf")]}),
    );
    let home = f.p("home");
    let r1 = sh(
        &p,
        &format!(
            "mv {home}/.cache/hf {home}/.cache/hf_old 2>&1 && echo MOVED_HF; \
             mv {home}/.cache {home}/cache_old 2>&1 && echo MOVED_CACHE; echo DONE"
        ),
    );
    assert_eq!(r1.code, 0, "{}", r1.stderr);
    assert!(r1.stdout.contains("DONE"), "{}", r1.stdout);
    assert!(
        !r1.stdout.contains("MOVED"),
        "a rename succeeded: {}",
        r1.stdout
    );
    let r2 = sh(
        &p,
        &format!(
            "cat {home}/.cache/hf_old/token {home}/cache_old/hf/token {home}/cache_old/hf_old/token {home}/.cache/hf/token 2>/dev/null; echo DONE"
        ),
    );
    assert!(r2.stdout.contains("DONE"), "{}", r2.stderr);
    assert!(!r2.stdout.contains("HF_TOKEN_SECRET"), "{}", r2.stdout);
    assert_eq!(
        std::fs::read_to_string(f.path("home/.cache/hf/token")).unwrap(),
        "HF_TOKEN_SECRET",
        "the token stays where it was on the host"
    );
}

/// Class 4: `mv tools tools_old` inside read-write `ws` would make a read-only `tools/bin`
/// writable in the next run (as `tools_old/bin`); the rename fails.
#[test]
fn renaming_an_ancestor_of_a_read_only_path_does_not_unlock_it_next_run() {
    require_root();
    let f = Fixture::new("rename-ro");
    f.write("ws/tools/bin/tool", "original");
    let p = write_policy(
        &f,
        "p",
        json!({"readwritePaths": [f.p("ws")], "readonlyPaths": [f.p("ws/tools/bin")]}),
    );
    let ws = f.p("ws");
    let r1 = sh(
        &p,
        &format!(
            "mv {ws}/tools {ws}/tools_old 2>&1 && echo MOVED; rm -rf {ws}/tools 2>/dev/null; echo DONE"
        ),
    );
    assert!(r1.stdout.contains("DONE"), "{}", r1.stderr);
    assert!(
        !r1.stdout.contains("MOVED"),
        "the rename succeeded: {}",
        r1.stdout
    );
    let r2 = sh(
        &p,
        &format!(
            "for d in {ws}/tools_old/bin {ws}/tools/bin; do echo changed > $d/tool 2>/dev/null && echo WRITE_LEAK:$d; done; echo DONE"
        ),
    );
    assert!(r2.stdout.contains("DONE"), "{}", r2.stderr);
    assert!(!r2.stdout.contains("WRITE_LEAK"), "{}", r2.stdout);
    assert_eq!(
        std::fs::read_to_string(f.path("ws/tools/bin/tool")).unwrap(),
        "original"
    );
}

/// Class 4 and the planted symlink: a missing read-only `ws/.git` is held for the run, so a run
/// of this policy cannot plant a symlink there; one planted by something else is refused (125,
/// naming the path and the fix), never followed, and once removed the next run starts.
#[test]
fn a_missing_read_only_path_cannot_be_planted_and_a_planted_symlink_is_not_followed() {
    require_root();
    let f = Fixture::new("plant");
    f.mkdir("ws");
    let marker = Marker::new("plant");
    let p = write_policy(
        &f,
        "p",
        json!({"readwritePaths": [f.p("ws")], "readonlyPaths": [f.p("ws/.git")]}),
    );
    let git = f.p("ws/.git");
    let check = format!(
        "[ -e {git}/{} ] && echo LEAK:marker; echo DONE",
        marker.name()
    );
    // Run 1 tries to plant.
    let r1 = sh(
        &p,
        &format!(
            "rmdir {git} 2>/dev/null; rm -f {git} 2>/dev/null; ln -s / {git} 2>/dev/null && echo PLANTED; echo DONE"
        ),
    );
    assert_eq!(r1.code, 0, "{}", r1.stderr);
    assert!(
        !r1.stdout.contains("PLANTED"),
        "run 1 planted a symlink: {}",
        r1.stdout
    );
    // Run 2 starts and sees nothing of the host.
    let r2 = sh(&p, &check);
    assert_eq!(r2.code, 0, "{}", r2.stderr);
    assert!(!r2.stdout.contains("LEAK"), "{}", r2.stdout);
    // Something outside the policy plants one: refused, named, with the fix; not followed.
    let _ = std::fs::remove_dir(f.path("ws/.git"));
    std::os::unix::fs::symlink("/", f.path("ws/.git")).unwrap();
    let r3 = sh(&p, &check);
    assert!(
        !r3.stdout.contains("LEAK"),
        "the planted symlink was followed: {}",
        r3.stdout
    );
    assert_eq!(r3.code, 125, "{} {}", r3.stdout, r3.stderr);
    assert!(
        r3.stderr.contains(&git) && r3.stderr.contains("rm "),
        "{}",
        r3.stderr
    );
    // Not permanent: after the fix the message names, runs start again.
    std::fs::remove_file(f.path("ws/.git")).unwrap();
    let r4 = sh(&p, &check);
    assert_eq!(r4.code, 0, "{}", r4.stderr);
    assert!(!r4.stdout.contains("LEAK"), "{}", r4.stdout);
}

/// Below read-only grants only (nothing this policy lets write there), a nested path through
/// the host's own symlink is still followed, as before, and the view check accepts it.
#[test]
fn a_host_symlink_below_a_read_only_grant_is_still_followed() {
    require_root();
    let f = Fixture::new("ro-link");
    f.write("ro/real/data", "REAL_DATA");
    std::os::unix::fs::symlink("real", f.path("ro/link")).unwrap();
    let p = write_policy(
        &f,
        "p",
        json!({"readonlyPaths": [f.p("ro"), f.p("ro/link")]}),
    );
    let r = sh(&p, &format!("cat {}/data; echo DONE", f.p("ro/link")));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("REAL_DATA"), "{} {}", r.stdout, r.stderr);
}

/// A runner killed while its sources were staged leaves `<state>/<id>/src` mounted, with grants
/// (host trees) below it: the next run's sweep detaches them before removing the directory,
/// and never deletes what is inside a grant.
#[test]
fn the_sweep_detaches_a_dead_runners_staged_sources_and_never_deletes_a_grant() {
    require_root();
    let f = Fixture::new("sweep-staged");
    let grant = f.write("grant/keep.txt", "KEEP");
    let dead = {
        let mut c = Command::new("/bin/true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    };
    let state = f.mkdir("state");
    let src = f.mkdir(&format!("state/ac-{dead}-deadbeef/src"));
    let staged = f.mkdir(&format!("state/ac-{dead}-deadbeef/src/0"));
    let mount =
        |args: &[&str]| assert!(Command::new("mount").args(args).status().unwrap().success());
    mount(&[
        "-t",
        "tmpfs",
        "-o",
        "mode=0700",
        "agentcell-src",
        &src.display().to_string(),
    ]);
    std::fs::create_dir(&staged).unwrap();
    mount(&["--bind", &f.p("grant"), &staged.display().to_string()]);
    let p = write_policy(&f, "p", json!({}));
    let out = Command::new(bin())
        .arg("run")
        .arg("--state-dir")
        .arg(&state)
        .arg("--policy")
        .arg(&p)
        .args(["--", "/bin/true"])
        .output()
        .unwrap();
    let mounted = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(&src.display().to_string());
    if mounted {
        let _ = Command::new("umount").args(["-R", "-l"]).arg(&src).status();
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&grant).ok().as_deref(),
        Some("KEEP"),
        "the sweep deleted a file inside a staged grant"
    );
    assert!(!mounted, "the dead runner's staging is still mounted");
    assert!(
        !src.exists(),
        "the dead runner's state directory is still there"
    );
}
