//! Helpers for the root suites: fixture directories that clean up after themselves, and running
//! `agentcell` as a user would.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn require_root() {
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this suite needs root (CI runs as root)"
    );
}

/// A directory under /var/tmp (not /tmp: the sandbox's /tmp is its own tmpfs, and tests must
/// show paths that pass through from the host), removed on drop along with any mounts in it.
pub struct Fixture {
    pub dir: PathBuf,
    mounts: Vec<PathBuf>,
}

impl Fixture {
    pub fn new(name: &str) -> Self {
        let dir = PathBuf::from(format!(
            "/var/tmp/agentcell-test-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            dir,
            mounts: Vec::new(),
        }
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
    pub fn p(&self, rel: &str) -> String {
        self.path(rel).display().to_string()
    }
    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }
    pub fn mkdir(&self, rel: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
    pub fn bind(&mut self, source: &Path, target: &Path) {
        std::fs::create_dir_all(target).unwrap();
        let ok = Command::new("mount")
            .arg("--bind")
            .arg(source)
            .arg(target)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount --bind");
        self.mounts.push(target.to_path_buf());
    }
    /// Writes `policy` (JSON) into the fixture and returns its path.
    pub fn policy(&self, policy: &serde_json::Value) -> String {
        let p = self.path("policy.json");
        std::fs::write(&p, serde_json::to_vec_pretty(policy).unwrap()).unwrap();
        p.display().to_string()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for m in self.mounts.iter().rev() {
            let _ = Command::new("umount").arg(m).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn agentcell(args: &[&str]) -> Ran {
    let out: Output = Command::new(env!("CARGO_BIN_EXE_agentcell"))
        .args(args)
        .output()
        .expect("run agentcell");
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `agentcell run --policy POLICY -- /bin/sh -c SCRIPT`.
pub fn sh(policy: &str, script: &str) -> Ran {
    agentcell(&["run", "--policy", policy, "--", "/bin/sh", "-c", script])
}

/// A JSON Lines file (e.g. an `--audit` report), one value per line.
pub fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The kernel's Landlock ABI, asked directly (0 or negative when unavailable).
pub fn kernel_landlock_abi() -> i64 {
    // SAFETY: with a null attribute, size 0 and the VERSION flag the syscall only returns the ABI.
    unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    }
}
