//! Denials the kernel reports, for `--audit FILE`: Landlock (ABI 7) audit records read from the
//! audit netlink multicast group and kept when they belong to this sandbox's Landlock domain.
//! Seccomp refusals answer with an errno and are not logged by the kernel: not observable.

use std::collections::HashSet;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

const NETLINK_AUDIT: libc::c_int = 9;
const AUDIT_GET: u16 = 1000;
const AUDIT_SET: u16 = 1001;
const AUDIT_NLGRP_READLOG: u32 = 1;
const AUDIT_STATUS_ENABLED: u32 = 1;
pub const AUDIT_LANDLOCK_ACCESS: u16 = 1423;
pub const AUDIT_LANDLOCK_DOMAIN: u16 = 1424;

/// A record: its netlink type and text (`audit(TIME:SERIAL): key=value ...`).
#[derive(Debug, Clone)]
pub struct Record {
    pub kind: u16,
    pub text: String,
}

pub struct Listener {
    records: Arc<Mutex<Vec<Record>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// What the caller should know (audit had to be enabled, or cannot be).
    pub notices: Vec<String>,
}

fn socket() -> std::io::Result<i32> {
    // SAFETY: plain socket call.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_AUDIT,
        )
    };
    if fd < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(fd)
    }
}

/// Whether kernel audit is enabled (`audit_enabled`); Landlock logs nothing when it is not.
fn audit_enabled() -> std::io::Result<bool> {
    let fd = socket()?;
    let mut req = [0u8; 16];
    req[0..4].copy_from_slice(&16u32.to_ne_bytes());
    req[4..6].copy_from_slice(&AUDIT_GET.to_ne_bytes());
    req[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    let mut buf = [0u8; 8192];
    // SAFETY: local buffers, our fd.
    let enabled = unsafe {
        libc::send(fd, req.as_ptr().cast(), req.len(), 0);
        let mut found = None;
        for _ in 0..4 {
            let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
            if n < 16 {
                break;
            }
            if u16::from_ne_bytes([buf[4], buf[5]]) == AUDIT_GET && n >= 24 {
                found = Some(u32::from_ne_bytes([buf[20], buf[21], buf[22], buf[23]]) != 0);
                break;
            }
        }
        libc::close(fd);
        found
    };
    enabled.ok_or_else(|| std::io::Error::other("no AUDIT_GET reply"))
}

fn enable_audit() -> std::io::Result<()> {
    let fd = socket()?;
    // struct audit_status: mask, enabled, then fields we leave zero (not in the mask).
    let mut req = [0u8; 16 + 40];
    let len = req.len() as u32;
    req[0..4].copy_from_slice(&len.to_ne_bytes());
    req[4..6].copy_from_slice(&AUDIT_SET.to_ne_bytes());
    req[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    req[16..20].copy_from_slice(&AUDIT_STATUS_ENABLED.to_ne_bytes());
    req[20..24].copy_from_slice(&1u32.to_ne_bytes());
    let mut buf = [0u8; 1024];
    // SAFETY: local buffers, our fd.
    let err = unsafe {
        libc::send(fd, req.as_ptr().cast(), req.len(), 0);
        let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
        libc::close(fd);
        if n >= 20 {
            i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]])
        } else {
            -libc::EIO
        }
    };
    if err == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(-err))
    }
}

impl Listener {
    /// Starts listening. Enables kernel audit when it is off (Landlock only logs with audit on),
    /// and says so.
    pub fn start() -> std::io::Result<Self> {
        let mut notices = Vec::new();
        if !audit_enabled()? {
            enable_audit()?;
            notices.push("kernel audit was disabled; agentcell enabled it so Landlock reports denials (auditctl -e 0 turns it off)".into());
        }
        let fd = socket()?;
        // SAFETY: sockaddr_nl is plain data; bind to the read-log multicast group.
        unsafe {
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as u16;
            addr.nl_groups = AUDIT_NLGRP_READLOG;
            if libc::bind(
                fd,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            ) != 0
            {
                let e = std::io::Error::last_os_error();
                libc::close(fd);
                return Err(e);
            }
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 50_000,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
        }
        let records = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (records.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            loop {
                // SAFETY: our fd and buffer.
                let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n <= 0 {
                    if s.load(Ordering::Relaxed) {
                        break;
                    }
                    continue;
                }
                let mut off = 0usize;
                let n = n as usize;
                while off + 16 <= n {
                    let len =
                        u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
                    let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                    if len < 16 || off + len > n {
                        break;
                    }
                    let text = String::from_utf8_lossy(&buf[off + 16..off + len])
                        .trim_end_matches('\0')
                        .to_string();
                    if kind == AUDIT_LANDLOCK_ACCESS || kind == AUDIT_LANDLOCK_DOMAIN {
                        r.lock().expect("records").push(Record { kind, text });
                    }
                    off += (len + 3) & !3;
                }
            }
            // SAFETY: our fd.
            unsafe { libc::close(fd) };
        });
        Ok(Self {
            records,
            stop,
            thread: Some(thread),
            notices,
        })
    }

    /// Stops (after a short drain) and returns the records of the domains `pid` created.
    pub fn finish(mut self, pid: i32) -> Vec<Record> {
        std::thread::sleep(Duration::from_millis(100));
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let all = std::mem::take(&mut *self.records.lock().expect("records"));
        let ours: HashSet<String> = all
            .iter()
            .filter(|r| {
                r.kind == AUDIT_LANDLOCK_DOMAIN
                    && field(&r.text, "pid").as_deref() == Some(&pid.to_string())
            })
            .filter_map(|r| field(&r.text, "domain"))
            .collect();
        all.into_iter()
            .filter(|r| {
                r.kind == AUDIT_LANDLOCK_ACCESS
                    && field(&r.text, "domain").is_some_and(|d| ours.contains(&d))
            })
            .collect()
    }
}

/// Dropped packets of one sandbox, from the kernel log (`/dev/kmsg`): the fence logs them with the
/// prefix `agentcell <id> <chain>-drop `. Logging from a non-initial network namespace needs
/// `net.netfilter.nf_log_all_netns=1`, which `start` sets (host-wide) and reports.
pub struct KmsgListener {
    lines: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub notices: Vec<String>,
}

impl KmsgListener {
    pub fn start() -> std::io::Result<Self> {
        use std::io::{BufRead as _, Seek as _};
        let mut notices = Vec::new();
        let knob = "/proc/sys/net/netfilter/nf_log_all_netns";
        if std::fs::read_to_string(knob)
            .map(|v| v.trim() != "1")
            .unwrap_or(true)
        {
            std::fs::write(knob, "1")?;
            notices.push("net.netfilter.nf_log_all_netns was 0; agentcell set it to 1 so dropped packets are logged".into());
        }
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")?;
        f.seek(std::io::SeekFrom::End(0))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (lines.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut r = std::io::BufReader::new(f);
            loop {
                let mut line = String::new();
                match r.read_line(&mut line) {
                    Ok(n) if n > 0 => {
                        if line.contains(LOG_MARK) {
                            l.lock().expect("lines").push(line);
                        }
                    }
                    _ => {
                        if s.load(Ordering::Relaxed) {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        });
        Ok(Self {
            lines,
            stop,
            thread: Some(thread),
            notices,
        })
    }

    /// Stops (after a short drain) and returns the drops of sandbox `id` as JSON objects.
    pub fn finish(mut self, id: &str) -> Vec<serde_json::Value> {
        std::thread::sleep(Duration::from_millis(100));
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mark = format!("{LOG_MARK}{id} ");
        let lines = std::mem::take(&mut *self.lines.lock().expect("lines"));
        lines
            .iter()
            .filter_map(|l| l.find(&mark).map(|i| &l[i + mark.len()..]))
            .map(|rest| {
                let chain = rest.split('-').next().unwrap_or("").to_string();
                let kv = |k: &str| {
                    rest.split_whitespace()
                        .find_map(|w| w.strip_prefix(&format!("{k}=")))
                        .map(str::to_string)
                };
                serde_json::json!({
                    "kind": "network",
                    "chain": chain,
                    "protocol": kv("PROTO"),
                    "source": kv("SRC"),
                    "destination": kv("DST"),
                    "port": kv("DPT").and_then(|p| p.parse::<u16>().ok()),
                    "record": rest.trim(),
                })
            })
            .collect()
    }
}

const LOG_MARK: &str = "agentcell ";

/// `key=value` or `key="value"` from an audit record.
pub fn field(text: &str, key: &str) -> Option<String> {
    let start = text.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &text[start..];
    if let Some(q) = rest.strip_prefix('"') {
        q.split('"').next().map(str::to_string)
    } else {
        rest.split(' ').next().map(str::to_string)
    }
}

/// Writes one JSON line per denial, after the notices and a line naming what is not observable.
pub fn write_report(
    path: &Path,
    notices: &[String],
    records: &[Record],
    network: &[serde_json::Value],
) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    for n in notices {
        writeln!(f, "{}", serde_json::json!({"kind": "notice", "message": n}))?;
    }
    writeln!(
        f,
        "{}",
        serde_json::json!({"kind": "notice", "message": "seccomp refusals (errno) and mount-masked paths are not reported by the kernel: not observable"})
    )?;
    for n in network {
        writeln!(f, "{n}")?;
    }
    for r in records {
        writeln!(
            f,
            "{}",
            serde_json::json!({
                "kind": "landlock",
                "blockers": field(&r.text, "blockers"),
                "path": field(&r.text, "path"),
                "domain": field(&r.text, "domain"),
                "record": r.text,
            })
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_landlock_records() {
        let t = r#"audit(1729738800.349:44): domain=195ba459b blockers=fs.read_file path="/etc/my file" dev="vda2" ino=351"#;
        assert_eq!(field(t, "domain").as_deref(), Some("195ba459b"));
        assert_eq!(field(t, "blockers").as_deref(), Some("fs.read_file"));
        assert_eq!(field(t, "path").as_deref(), Some("/etc/my file"));
        assert_eq!(field(t, "missing"), None);
    }
}
