//! Peak resident set size of this process, per phase: Linux resets the high-water mark when "5"
//! is written to `/proc/self/clear_refs`, and reports it as `VmHWM` in `/proc/self/status`.

/// Starts a new measurement phase. Returns false where the kernel does not support it.
pub fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Peak RSS in bytes since the last [`reset_peak`] (or process start).
pub fn peak_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
