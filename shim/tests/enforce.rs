//! The enforcement suite (root): real sandboxes, and for each MXC filesystem and process rule the
//! outcome a workload observes.

mod common;

use common::{Fixture, require_root, sh};
use serde_json::json;

fn policy(f: &Fixture, rw: &[String], ro: &[String], denied: &[String]) -> String {
    f.policy(&json!({"version": "1.0.0", "filesystem": {"readwritePaths": rw, "readonlyPaths": ro, "deniedPaths": denied}}))
}

#[test]
fn read_only_read_write_and_unlisted_paths() {
    require_root();
    let f = Fixture::new("rorw");
    f.write("ro/data.txt", "ro-content");
    f.mkdir("rw");
    let p = policy(&f, &[f.p("rw")], &[f.p("ro")], &[]);
    let script = format!(
        "cat {ro}/data.txt; echo; echo x > {ro}/new 2>/dev/null && echo RO_LEAK || echo RO_OK; \
         echo written > {rw}/out && echo RW_OK; \
         for d in /root /opt /home /srv /var/lib /var/log /usr/local /boot; do ls $d >/dev/null 2>&1 && echo UNLISTED_LEAK:$d; done; \
         [ \"$(ls /var)\" = tmp ] || echo UNLISTED_LEAK:var-has-more-than-the-mount-skeleton; echo UNLISTED_DONE",
        ro = f.p("ro"),
        rw = f.p("rw")
    );
    let r = sh(&p, &script);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("ro-content") && r.stdout.contains("RO_OK") && r.stdout.contains("RW_OK"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("LEAK"), "{}", r.stdout);
    assert!(r.stdout.contains("UNLISTED_DONE"));
    // The write is visible on the host afterwards.
    assert_eq!(
        std::fs::read_to_string(f.path("rw/out")).unwrap(),
        "written\n"
    );
}

#[test]
fn denied_file_and_directory_inside_a_read_write_parent() {
    require_root();
    let f = Fixture::new("denied");
    f.write("ws/.env", "TOKEN=secret");
    f.write("ws/.ssh/id", "key");
    f.write("ws/ok.txt", "ok");
    let p = policy(&f, &[f.p("ws")], &[], &[f.p("ws/.env"), f.p("ws/.ssh")]);
    let ws = f.p("ws");
    let r = sh(
        &p,
        &format!(
            "cat {ws}/ok.txt; cat {ws}/.env && echo ENV_LEAK; ls {ws}/.ssh/id && echo SSH_LEAK; cat {ws}/.ssh/id && echo SSH_LEAK; echo x > {ws}/.env && echo ENV_WRITE_LEAK; echo DONE"
        ),
    );
    assert!(
        r.stdout.contains("ok") && r.stdout.contains("DONE"),
        "{} {}",
        r.stdout,
        r.stderr
    );
    assert!(!r.stdout.contains("LEAK"), "{}", r.stdout);
    assert!(
        !r.stdout.contains("secret") && !r.stdout.contains("key"),
        "{}",
        r.stdout
    );
    assert_eq!(
        std::fs::read_to_string(f.path("ws/.env")).unwrap(),
        "TOKEN=secret"
    );
}

#[test]
fn deepest_path_wins_in_both_directions() {
    require_root();
    let f = Fixture::new("deep");
    f.write("a/hidden.txt", "hidden");
    f.mkdir("a/b");
    f.write("w/secrets/s", "s3cret");
    let p = policy(
        &f,
        &[f.p("a/b"), f.p("w")],
        &[],
        &[f.p("a"), f.p("w/secrets")],
    );
    let r = sh(
        &p,
        &format!(
            "cat {a}/hidden.txt && echo PARENT_LEAK; echo y > {a}/b/x && echo CHILD_RW_OK; cat {w}/secrets/s && echo CHILD_DENY_LEAK; echo z > {w}/z && echo PARENT_RW_OK",
            a = f.p("a"),
            w = f.p("w")
        ),
    );
    assert!(
        r.stdout.contains("CHILD_RW_OK") && r.stdout.contains("PARENT_RW_OK"),
        "{} {}",
        r.stdout,
        r.stderr
    );
    assert!(!r.stdout.contains("LEAK"), "{}", r.stdout);
}

#[test]
fn aliases_of_a_denied_file_are_denied() {
    require_root();
    let mut f = Fixture::new("alias");
    f.write("ws/secret.txt", "TOPSECRET");
    f.mkdir("ws/sub");
    std::os::unix::fs::symlink(f.path("ws/secret.txt"), f.path("ws/link")).unwrap();
    std::fs::hard_link(f.path("ws/secret.txt"), f.path("ws/sub/hard")).unwrap();
    f.mkdir("other/data");
    f.write("other/data/s2", "BINDSECRET");
    f.bind(&f.path("other/data"), &f.path("ws/bound"));
    let p = policy(
        &f,
        &[f.p("ws")],
        &[],
        &[f.p("ws/secret.txt"), f.p("other/data/s2")],
    );
    let ws = f.p("ws");
    let r = sh(
        &p,
        &format!(
            "cat {ws}/link; cat {ws}/sub/../secret.txt; cat {ws}/sub/hard; cat {ws}/bound/s2; ls {ws}/bound; echo DONE"
        ),
    );
    assert!(r.stdout.contains("DONE"), "{}", r.stderr);
    assert!(
        !r.stdout.contains("TOPSECRET") && !r.stdout.contains("BINDSECRET"),
        "{}",
        r.stdout
    );
}

#[test]
fn environment_and_working_directory() {
    require_root();
    let f = Fixture::new("env");
    f.mkdir("work");
    let p = f.policy(&json!({"version": "1.0.0", "process": {"cwd": f.p("work"), "env": ["GREETING=hello world", "EQ=a=b"]},
        "filesystem": {"readwritePaths": [f.p("work")]}}));
    // SAFETY: set before any thread of this test reads the environment of the sandbox.
    let r = common::agentcell(&[
        "run",
        "--policy",
        &p,
        "--",
        "/bin/sh",
        "-c",
        "pwd; echo \"$GREETING|$EQ|${HOME:-nohome}\"",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        format!("{}\nhello world|a=b|nohome\n", f.p("work"))
    );
    // Without a cwd, the first read-write path (MXC's ProcessContainer rule).
    let p2 =
        f.policy(&json!({"version": "1.0.0", "filesystem": {"readwritePaths": [f.p("work")]}}));
    let r = common::sh(&p2, "pwd");
    assert_eq!(r.stdout.trim(), f.p("work"));
}

#[test]
fn timeout_kills_background_children_and_exit_codes() {
    require_root();
    let f = Fixture::new("timeout");
    let marker = f.mkdir("m");
    let p = f.policy(&json!({"version": "1.0.0", "filesystem": {"readwritePaths": [f.p("m")]}, "timeoutMs": 800}));
    let start = std::time::Instant::now();
    let r = sh(
        &p,
        &format!(
            "(sleep 3; echo late > {}/late) & sleep 30",
            marker.display()
        ),
    );
    let took = start.elapsed();
    assert_eq!(r.code, 124, "{}", r.stderr);
    // Background child gone: nothing written after the deadline (checked after its own delay).
    std::thread::sleep(std::time::Duration::from_millis(
        3500u64.saturating_sub(took.as_millis() as u64),
    ));
    assert!(
        !marker.join("late").exists(),
        "a background child survived the deadline"
    );
    assert!(
        took.as_secs_f64() < 0.8 + 1.0,
        "deadline overshoot: {took:?}"
    );

    let p = f.policy(&json!({"version": "1.0.0"}));
    assert_eq!(sh(&p, "exit 7").code, 7);
    assert_eq!(sh(&p, "kill -TERM $$").code, 128 + 15);
    assert_eq!(sh(&p, "kill -KILL $$").code, 128 + 9);
}

#[test]
fn rejected_configurations_exit_125_with_the_field() {
    require_root();
    let f = Fixture::new("reject");
    let p = f.policy(&json!({"version": "1.0.0", "network": {"egress": {"allow": [{"to": [{"cidr": "10.0.0.0/8", "except": ["11.0.0.0/8"]}]}]}}}));
    let r = sh(&p, "true");
    assert_eq!(r.code, 125);
    assert!(
        r.stderr.contains("network.egress.allow[0].to[0].except[0]"),
        "{}",
        r.stderr
    );
    let r = common::agentcell(&["run", "--json", "--policy", &p, "--", "true"]);
    assert_eq!(r.code, 125);
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(
        v["error"]["field"],
        "network.egress.allow[0].to[0].except[0]"
    );
    // A relative path is refused before anything starts.
    let p = f.policy(&json!({"version": "1.0.0", "filesystem": {"readonlyPaths": ["relative/x"]}}));
    let r = sh(&p, "echo SHOULD_NOT_RUN");
    assert_eq!(r.code, 125);
    assert!(!r.stdout.contains("SHOULD_NOT_RUN"));
}

#[test]
fn best_effort_reports_every_missing_right() {
    require_root();
    let f = Fixture::new("besteffort");
    let p = f.policy(&json!({"version": "1.0.0"}));
    let run = |extra: &[&str]| {
        let mut args = vec!["run"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--policy", &p, "--", "/bin/true"]);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_agentcell"))
            .args(&args)
            .env("AGENTCELL_HOST_LANDLOCK_ABI", "3")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Planned for a Landlock ABI 3 kernel: refused by default, naming the gaps...
    let (code, err) = run(&[]);
    assert_eq!(code, Some(125), "{err}");
    assert!(
        err.contains("IoctlDev") && err.contains("--best-effort"),
        "{err}"
    );
    // ...accepted with --best-effort, every gap still reported.
    let (code, err) = run(&["--best-effort"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("best effort") && err.contains("IoctlDev") && err.contains("scoping"),
        "{err}"
    );
}

#[test]
fn missing_denied_paths_are_masked_only_where_they_could_be_created() {
    require_root();
    let f = Fixture::new("missing");
    f.mkdir("ws");
    f.mkdir("ro");
    let p = policy(
        &f,
        &[f.p("ws")],
        &[f.p("ro")],
        &[f.p("ws/.env"), f.p("ro/absent")],
    );
    let r = sh(
        &p,
        &format!("echo x > {}/.env && echo CREATE_LEAK; echo DONE", f.p("ws")),
    );
    assert!(
        r.stdout.contains("DONE") && !r.stdout.contains("LEAK"),
        "{} {}",
        r.stdout,
        r.stderr
    );
}

#[test]
fn audit_reports_landlock_denials() {
    require_root();
    let f = Fixture::new("audit");
    let p = f.policy(&json!({"version": "1.0.0"}));
    let report = f.path("audit.jsonl");
    let r = common::agentcell(&[
        "run",
        "--audit",
        report.to_str().unwrap(),
        "--policy",
        &p,
        "--",
        "/bin/sh",
        "-c",
        "touch /proc/agentcell-probe; true",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<serde_json::Value> = common::json_lines(&report);
    assert!(lines.iter().any(
        |l| l["kind"] == "notice" && l["message"].as_str().unwrap().contains("not observable")
    ));
    let abi = common::kernel_landlock_abi();
    if abi >= 7 {
        assert!(
            lines.iter().any(|l| l["kind"] == "landlock"
                && l["blockers"] == "fs.make_reg"
                && l["path"] == "/proc"),
            "{lines:?}"
        );
    } else {
        assert!(
            lines
                .iter()
                .any(|l| l["message"].as_str().is_some_and(|m| m.contains("ABI 7"))),
            "{lines:?}"
        );
    }
}

#[test]
fn rootfs_paths_are_paths_inside_the_image() {
    require_root();
    let f = Fixture::new("rootfs");
    for d in [
        "rootfs/bin",
        "rootfs/etc",
        "rootfs/work",
        "rootfs/proc",
        "rootfs/dev",
        "rootfs/tmp",
    ] {
        f.mkdir(d);
    }
    std::fs::copy("/bin/busybox", f.path("rootfs/bin/busybox"))
        .expect("busybox-static (scripts/setup.sh installs it)");
    for applet in ["sh", "cat", "echo", "ls"] {
        std::os::unix::fs::symlink("busybox", f.path(&format!("rootfs/bin/{applet}"))).unwrap();
    }
    f.write("rootfs/etc/secret", "IMG_SECRET");
    // An absolute symlink inside the image resolves inside the image, not on the host.
    std::os::unix::fs::symlink("/etc/secret", f.path("rootfs/work/link")).unwrap();
    let p = f.policy(&json!({"version": "1.0.0", "filesystem": {"readwritePaths": ["/work"], "deniedPaths": ["/etc/secret"]}}));
    let r = common::agentcell(&[
        "run",
        "--rootfs",
        &f.p("rootfs"),
        "--policy",
        &p,
        "--",
        "/bin/sh",
        "-c",
        "cat /etc/secret; cat /work/link; echo w > /work/f && echo RW_OK; echo x > /bin/x || echo RO_OK",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stdout.contains("IMG_SECRET"), "{}", r.stdout);
    assert!(
        r.stdout.contains("RW_OK") && r.stdout.contains("RO_OK"),
        "{} {}",
        r.stdout,
        r.stderr
    );
    assert_eq!(
        std::fs::read_to_string(f.path("rootfs/work/f")).unwrap(),
        "w\n"
    );
}

#[test]
fn killing_the_runner_kills_the_sandbox_and_the_next_run_sweeps_its_state() {
    require_root();
    let f = Fixture::new("kill9");
    let state = f.mkdir("state");
    let marker = f.mkdir("m");
    let p = f.policy(&json!({"version": "1.0.0", "filesystem": {"readwritePaths": [f.p("m")]}}));
    let mut runner = std::process::Command::new(env!("CARGO_BIN_EXE_agentcell"))
        .args([
            "run",
            "--state-dir",
            state.to_str().unwrap(),
            "--policy",
            &p,
            "--",
            "/bin/sh",
            "-c",
        ])
        .arg(format!(
            "echo started > {m}/started; sleep 2; echo survived > {m}/survived",
            m = marker.display()
        ))
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !marker.join("started").exists() {
        assert!(
            started.elapsed().as_secs() < 10,
            "the workload never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let dead = format!("ac-{}-", runner.id());
    runner.kill().unwrap(); // SIGKILL
    runner.wait().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert!(
        !marker.join("survived").exists(),
        "the workload outlived its runner"
    );
    // Sandboxes' own state directories; `roots` (the shared, kept root skeletons) is not one.
    let sandboxes = || {
        std::fs::read_dir(&state)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("ac-"))
            .count()
    };
    assert_eq!(
        sandboxes(),
        1,
        "the dead runner's state is still there (until the sweep)"
    );
    // (Its network namespace is swept by whichever run comes next, which in a parallel test
    // run may be another test's: only the outcome is checked below.)
    let r = common::agentcell(&[
        "run",
        "--state-dir",
        state.to_str().unwrap(),
        "--policy",
        &p,
        "--",
        "/bin/true",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        sandboxes(),
        0,
        "the next run sweeps what the dead runner left"
    );
    let netns: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !netns.iter().any(|n| n.starts_with(&dead)),
        "the dead runner's network namespace survived the sweep: {netns:?}"
    );
}
