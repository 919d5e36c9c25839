//! Keeps long-lived, mostly idle processes small: the containerd shim (one per pod) and each
//! sandbox's PID 1 (a fork of the runner that only reaps): their resident sets are what they cost. Most of it is the program text faulted in (and
//! mapped around each fault) while serving the pod's first requests. Text is never written, so
//! dropping its page-table entries loses nothing: the pages stay in the page cache and the next
//! request faults back in only what it runs.

/// Drops the resident pages of every read-only executable file mapping of this process
/// (`r-xp`: program and library text). Returns the bytes of mappings advised.
pub fn trim_text() -> usize {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return 0;
    };
    let mut advised = 0;
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        // Only private, read+execute, never-writable file text: a written page (relocated data,
        // a breakpoint) would be lost by MADV_DONTNEED, text pages never are written.
        let path = f.nth(3);
        if perms != "r-xp" || !path.is_some_and(|p| p.starts_with('/')) {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        // SAFETY: an existing mapping of this process, taken from /proc/self/maps; for private
        // unmodified file pages MADV_DONTNEED only drops page-table entries.
        if unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) }
            == 0
        {
            advised += end - start;
        }
    }
    advised
}

/// This process's resident set in bytes (VmRSS).
pub fn resident() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimming_text_lowers_the_resident_set_and_the_program_still_runs() {
        // Touch a lot of text first (formatting, collections, JSON).
        let v: Vec<String> = (0..2000).map(|i| format!("{i:x}")).collect();
        let _ = serde_json::to_string(&v).unwrap();
        let before = resident();
        let advised = trim_text();
        let after = resident();
        assert!(advised > 0, "no text mapping found");
        assert!(after < before, "resident {before} -> {after}");
        // Code keeps working: it faults back in.
        let again: Vec<String> = (0..10).map(|i| format!("{i}")).collect();
        assert_eq!(again.len(), 10);
    }
}
