//! Task metrics in the form containerd and kubelet decode: `io.containerd.cgroups.v1.Metrics`
//! on cgroup v1 (and hybrid) hosts, `io.containerd.cgroups.v2.Metrics` on cgroup v2, read from
//! the cgroup of the container's init process.

use std::path::{Path, PathBuf};

use containerd_shim::protos::cgroups::metrics as v1;
use containerd_shim::protos::cgroups_v2::metrics as v2;
use containerd_shim::protos::protobuf::well_known_types::any::Any;

/// The cgroup directory of `pid` for a v1 `controller` (or the unified one for `None`).
pub fn cgroup_dir(pid: i32, controller: Option<&str>) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        match controller {
            Some(c) if ctrls.split(',').any(|x| x == c) => {
                return Some(
                    Path::new("/sys/fs/cgroup")
                        .join(c)
                        .join(path.trim_start_matches('/')),
                );
            }
            None if ctrls.is_empty() => {
                let base = if Path::new("/sys/fs/cgroup/unified").is_dir() {
                    "/sys/fs/cgroup/unified"
                } else {
                    "/sys/fs/cgroup"
                };
                return Some(Path::new(base).join(path.trim_start_matches('/')));
            }
            _ => {}
        }
    }
    None
}

fn read_u64(p: &Path) -> u64 {
    std::fs::read_to_string(p)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn keyed(p: &Path) -> Vec<(String, u64)> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

fn get(kv: &[(String, u64)], key: &str) -> u64 {
    kv.iter().find(|(k, _)| k == key).map_or(0, |(_, v)| *v)
}

fn is_v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// The metrics of the container whose init is `pid`, packed for `StatsResponse`.
pub fn metrics(pid: i32) -> Result<Any, String> {
    if is_v2() {
        return metrics_v2(pid);
    }
    let mut m = v1::Metrics::new();
    if let Some(d) = cgroup_dir(pid, Some("memory")) {
        let stat = keyed(&d.join("memory.stat"));
        let mut mem = v1::MemoryStat::new();
        mem.cache = get(&stat, "cache");
        mem.rss = get(&stat, "rss");
        mem.mapped_file = get(&stat, "mapped_file");
        mem.total_inactive_file = get(&stat, "total_inactive_file");
        mem.total_active_file = get(&stat, "total_active_file");
        mem.total_rss = get(&stat, "total_rss");
        mem.total_cache = get(&stat, "total_cache");
        mem.pg_fault = get(&stat, "pgfault");
        mem.pg_maj_fault = get(&stat, "pgmajfault");
        let mut usage = v1::MemoryEntry::new();
        usage.usage = read_u64(&d.join("memory.usage_in_bytes"));
        usage.limit = read_u64(&d.join("memory.limit_in_bytes"));
        usage.max = read_u64(&d.join("memory.max_usage_in_bytes"));
        usage.failcnt = read_u64(&d.join("memory.failcnt"));
        mem.usage = Some(usage).into();
        m.memory = Some(mem).into();
    }
    if let Some(d) = cgroup_dir(pid, Some("cpuacct")) {
        let mut cpu = v1::CPUStat::new();
        let mut usage = v1::CPUUsage::new();
        usage.total = read_u64(&d.join("cpuacct.usage"));
        let stat = keyed(&d.join("cpuacct.stat"));
        // USER_HZ ticks to nanoseconds.
        usage.user = get(&stat, "user") * 10_000_000;
        usage.kernel = get(&stat, "system") * 10_000_000;
        usage.per_cpu = std::fs::read_to_string(d.join("cpuacct.usage_percpu"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        cpu.usage = Some(usage).into();
        m.cpu = Some(cpu).into();
    }
    if let Some(d) = cgroup_dir(pid, Some("pids")) {
        let mut p = v1::PidsStat::new();
        p.current = read_u64(&d.join("pids.current"));
        p.limit = read_u64(&d.join("pids.max"));
        m.pids = Some(p).into();
    }
    pack("io.containerd.cgroups.v1.Metrics", &m)
}

fn metrics_v2(pid: i32) -> Result<Any, String> {
    let d = cgroup_dir(pid, None).ok_or("no cgroup for the container's init")?;
    let mut m = v2::Metrics::new();
    let mut mem = v2::MemoryStat::new();
    let stat = keyed(&d.join("memory.stat"));
    mem.anon = get(&stat, "anon");
    mem.file = get(&stat, "file");
    mem.inactive_file = get(&stat, "inactive_file");
    mem.active_file = get(&stat, "active_file");
    mem.pgfault = get(&stat, "pgfault");
    mem.pgmajfault = get(&stat, "pgmajfault");
    mem.usage = read_u64(&d.join("memory.current"));
    mem.usage_limit = read_u64(&d.join("memory.max"));
    m.memory = Some(mem).into();
    let cs = keyed(&d.join("cpu.stat"));
    let mut cpu = v2::CPUStat::new();
    cpu.usage_usec = get(&cs, "usage_usec");
    cpu.user_usec = get(&cs, "user_usec");
    cpu.system_usec = get(&cs, "system_usec");
    m.cpu = Some(cpu).into();
    let mut p = v2::PidsStat::new();
    p.current = read_u64(&d.join("pids.current"));
    p.limit = read_u64(&d.join("pids.max"));
    m.pids = Some(p).into();
    pack("io.containerd.cgroups.v2.Metrics", &m)
}

fn pack(
    type_name: &str,
    m: &dyn containerd_shim::protos::protobuf::MessageDyn,
) -> Result<Any, String> {
    let mut any = Any::new();
    any.type_url = type_name.to_string();
    any.value = m.write_to_bytes_dyn().map_err(|e| e.to_string())?;
    Ok(any)
}

/// Every pid in the cgroup of `pid` (the container's processes).
pub fn pids(pid: i32) -> Vec<u32> {
    let dir = if is_v2() {
        cgroup_dir(pid, None)
    } else {
        cgroup_dir(pid, Some("pids")).or_else(|| cgroup_dir(pid, Some("memory")))
    };
    let Some(dir) = dir else {
        return vec![pid as u32];
    };
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// A micro-VM container's metrics, from what its guest agent reports (the whole VM's memory,
/// the containers' CPU time and processes), in the v1 shape kubelet and `ctr` decode.
pub fn vm_metrics(s: &agentcell_vmproto::VmStats) -> Result<Any, String> {
    let mut m = v1::Metrics::new();
    let mut mem = v1::MemoryStat::new();
    let mut usage = v1::MemoryEntry::new();
    usage.usage = s.mem_total_bytes.saturating_sub(s.mem_available_bytes);
    usage.limit = s.mem_total_bytes;
    mem.usage = Some(usage).into();
    m.memory = Some(mem).into();
    let mut cpu = v1::CPUStat::new();
    let mut cu = v1::CPUUsage::new();
    cu.total = s.cpu_usage_ns;
    cpu.usage = Some(cu).into();
    m.cpu = Some(cpu).into();
    let mut p = v1::PidsStat::new();
    p.current = s.pids;
    m.pids = Some(p).into();
    pack("io.containerd.cgroups.v1.Metrics", &m)
}
