//! External processes with a time limit. Every step of the suites that waits on a process
//! (`ctr`, `kubectl`, `helm`, `script`) goes through [`output`]: a step that hangs (a shim that
//! never answers, an exec that never returns) fails its test in minutes, with what the process
//! had printed, instead of holding the suite until CI's own limit.

use std::os::unix::process::CommandExt as _;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The limit of one step, unless the step says otherwise: `AGENTCELL_E2E_STEP_TIMEOUT_S`
/// seconds, default 300 (the slowest legitimate step, a micro-VM booting under TCG, takes well
/// under a minute).
pub fn step_limit() -> Duration {
    let secs = std::env::var("AGENTCELL_E2E_STEP_TIMEOUT_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    Duration::from_secs(secs)
}

/// A step that did not end in time; its process group was killed.
#[derive(Debug)]
pub struct TimedOut {
    pub command: String,
    pub limit: Duration,
    /// What it printed before it was killed.
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} did not end within {} s (killed)\nstdout: {}\nstderr: {}",
            self.command,
            self.limit.as_secs(),
            self.stdout,
            self.stderr
        )
    }
}

/// Runs `cmd` (stdin from `input`, or /dev/null) to its end, or kills its process group at
/// `limit`. The command runs in a process group of its own so that what it started dies too.
pub fn output(
    cmd: &mut Command,
    input: Option<&[u8]>,
    limit: Duration,
) -> Result<Output, TimedOut> {
    use std::io::Write;
    let command = format!("{cmd:?}");
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{command}: {e}"));
    let pid = child.id() as i32;
    if let (Some(i), Some(mut w)) = (input, child.stdin.take()) {
        let i = i.to_vec();
        // A writer of its own: the process may print before it has read everything.
        std::thread::spawn(move || {
            let _ = w.write_all(&i);
        });
    }
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(r) => Ok(r.unwrap_or_else(|e| panic!("{command}: {e}"))),
        Err(_) => {
            // SAFETY: signalling the process group of our own child.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            let partial = rx
                .recv_timeout(Duration::from_secs(10))
                .ok()
                .and_then(Result::ok);
            let text = |b: Option<&Vec<u8>>| b.map(|b| String::from_utf8_lossy(b).into_owned());
            Err(TimedOut {
                command,
                limit,
                stdout: text(partial.as_ref().map(|o| &o.stdout)).unwrap_or_default(),
                stderr: text(partial.as_ref().map(|o| &o.stderr)).unwrap_or_default(),
            })
        }
    }
}

/// Where the container processes of the host are blocked: each `youki:*` process (a container
/// init that has not exec'd yet) with its kernel wait channel and stack, for the message of a
/// step that hung.
pub fn stuck_processes() -> String {
    let mut out = String::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("youki:") {
            continue;
        }
        let wchan = std::fs::read_to_string(e.path().join("wchan")).unwrap_or_default();
        let stack = std::fs::read_to_string(e.path().join("stack")).unwrap_or_default();
        let threads = std::fs::read_dir(e.path().join("task")).map_or(0, |d| d.count());
        out.push_str(&format!(
            "pid {pid} {} threads {threads} wchan {wchan}\n{stack}",
            comm.trim()
        ));
    }
    if out.is_empty() {
        out.push_str("no youki:* process\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_that_ends_gives_its_output_and_one_that_hangs_is_killed() {
        let o = output(
            Command::new("sh").args(["-c", "cat; echo err >&2"]),
            Some(b"in\n"),
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(String::from_utf8_lossy(&o.stdout), "in\n");
        assert_eq!(String::from_utf8_lossy(&o.stderr), "err\n");
        // A child of the step keeps the pipes open: killing the group ends it too.
        let e = output(
            Command::new("sh").args(["-c", "echo started; sleep 600 & wait"]),
            None,
            Duration::from_millis(500),
        )
        .unwrap_err();
        assert_eq!(e.stdout, "started\n");
        assert!(e.to_string().contains("did not end within 0 s"), "{e}");
    }
}
