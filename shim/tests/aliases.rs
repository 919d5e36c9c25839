//! Other names of denied objects (root): a grant that is a symlink to another grant (or has a
//! symlinked ancestor) and hard links of the files inside a denied directory must not show what
//! is denied; a denied directory too large to check is refused, naming the bound.

mod common;

use common::{Fixture, require_root, sh};
use serde_json::json;

fn policy(f: &Fixture, rw: &[String], ro: &[String], denied: &[String]) -> String {
    f.policy(&json!({"version": "1.0.0", "filesystem": {"readwritePaths": rw, "readonlyPaths": ro, "deniedPaths": denied}}))
}

#[test]
fn denied_paths_stay_denied_under_every_name_an_aliased_grant_gives_them() {
    require_root();
    let f = Fixture::new("alias-grant");
    f.write("a/secret", "ALIAS_SECRET_1");
    f.write("a/secret2", "ALIAS_SECRET_2");
    f.write("a/sub/s3", "ALIAS_SECRET_3");
    f.write("a/dir/inner", "ALIAS_SECRET_4");
    f.write("a/ok", "visible-ok");
    // `b` is a symlink to `a`; `l` too, and only `l/sub` (a symlinked ancestor) is granted.
    std::os::unix::fs::symlink(f.path("a"), f.path("b")).unwrap();
    std::os::unix::fs::symlink("a", f.path("l")).unwrap();
    let p = policy(
        &f,
        &[f.p("a"), f.p("b"), f.p("l/sub")],
        &[],
        // Named by the real path, by the alias, and a whole directory.
        &[
            f.p("a/secret"),
            f.p("b/secret2"),
            f.p("a/sub/s3"),
            f.p("a/dir"),
        ],
    );
    let script = ["a", "b", "l"]
        .iter()
        .flat_map(|d| {
            ["secret", "secret2", "sub/s3", "dir/inner"]
                .map(|s| format!("cat {}/{s} 2>/dev/null;", f.p(d)))
        })
        .collect::<String>()
        + &format!(" cat {}/ok; echo DONE", f.p("b"));
    let r = sh(&p, &script);
    assert!(
        r.stdout.contains("visible-ok") && r.stdout.contains("DONE"),
        "{} {}",
        r.stdout,
        r.stderr
    );
    assert!(!r.stdout.contains("ALIAS_SECRET"), "{}", r.stdout);
}

#[test]
fn hard_links_of_files_inside_a_denied_directory_are_not_readable() {
    require_root();
    let f = Fixture::new("alias-hard");
    f.write("denied_dir/token", "HARD_SECRET_1");
    f.write("denied_dir/deep/token2", "HARD_SECRET_2");
    f.write("ws/.ssh/id", "HARD_SECRET_3");
    f.write("ws/ok", "visible-ok");
    f.mkdir("allowed");
    f.mkdir("ws/sub");
    std::fs::hard_link(f.path("denied_dir/token"), f.path("allowed/copy")).unwrap();
    std::fs::hard_link(f.path("denied_dir/deep/token2"), f.path("pub")).unwrap();
    std::fs::hard_link(f.path("ws/.ssh/id"), f.path("ws/sub/id_copy")).unwrap();
    // A read-write tree with a denied directory inside it (the coding-agent preset's shape), an
    // allowed tree elsewhere, and an allowed file that is itself such a link.
    let p = policy(
        &f,
        &[f.p("ws"), f.p("allowed")],
        &[f.p("pub")],
        &[f.p("denied_dir"), f.p("ws/.ssh")],
    );
    let r = sh(
        &p,
        &format!(
            "cat {a}/copy {pub_} {ws}/sub/id_copy {ws}/.ssh/id 2>/dev/null; cat {ws}/ok; echo DONE",
            a = f.p("allowed"),
            pub_ = f.p("pub"),
            ws = f.p("ws")
        ),
    );
    // Masked (the run goes on) or refused naming the path: either way, nothing is read.
    assert!(!r.stdout.contains("HARD_SECRET"), "{}", r.stdout);
    assert!(
        (r.stdout.contains("visible-ok") && r.stdout.contains("DONE"))
            || (r.code == 125 && r.stderr.contains(&f.p("denied_dir"))),
        "{} {} {}",
        r.code,
        r.stdout,
        r.stderr
    );
}

#[test]
fn a_denied_directory_beyond_the_scan_bound_is_refused_naming_the_bound() {
    require_root();
    let f = Fixture::new("alias-bound");
    let big = f.mkdir("big");
    // One more entry than `DENIED_DIR_SCAN_LIMIT` (50 000).
    for i in 0..50_001 {
        std::fs::File::create(big.join(format!("f{i}"))).unwrap();
    }
    f.write("ws/ok", "visible-ok");
    let p = policy(&f, &[f.p("ws")], &[], &[f.p("big")]);
    let r = sh(&p, &format!("cat {}/ok", f.p("ws")));
    assert_eq!(r.code, 125, "{} {}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(&f.p("big")) && r.stderr.contains("50000"),
        "{}",
        r.stderr
    );
    assert!(!r.stdout.contains("visible-ok"), "{}", r.stdout);
}

/// Not an escape, a start that failed: a denied path inside a denied directory needed a mount
/// point inside that directory's read-only mask (125), and aliased grants double such masks.
#[test]
fn a_denied_path_inside_a_denied_directory_does_not_fail_the_run() {
    require_root();
    let f = Fixture::new("alias-nested");
    f.write("a/dir/f", "NESTED_SECRET");
    f.write("a/dir/pub/ok", "visible-ok");
    f.write("a/dir/pub/no", "NESTED_SECRET_2");
    std::os::unix::fs::symlink(f.path("a"), f.path("b")).unwrap();
    let p = policy(
        &f,
        &[f.p("a"), f.p("b"), f.p("a/dir/pub")],
        &[],
        &[f.p("a/dir"), f.p("a/dir/f"), f.p("a/dir/pub/no")],
    );
    let r = sh(
        &p,
        &format!(
            "cat {a}/dir/f {b}/dir/f {a}/dir/pub/no 2>/dev/null; cat {a}/dir/pub/ok; echo DONE",
            a = f.p("a"),
            b = f.p("b")
        ),
    );
    assert_eq!(r.code, 0, "{} {}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("visible-ok") && r.stdout.contains("DONE"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("NESTED_SECRET"), "{}", r.stdout);
}
