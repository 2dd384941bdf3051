//! The standard `process_*` metrics (CPU time, resident memory, open file
//! descriptors and their limit), read from `/proc/self` at scrape time.
//!
//! The Prometheus exporter the relay uses does not collect them. On systems
//! without `/proc` (anything but Linux) they are absent from `/metrics`
//! rather than reported as zero.

use std::fmt::Write as _;

/// The process figures, each `None` when it could not be read.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: Option<f64>,
    /// Resident set size, in bytes.
    pub resident_memory_bytes: Option<u64>,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
    /// The soft limit on open file descriptors.
    pub max_fds: Option<u64>,
}

impl ProcessStats {
    /// The current figures of this process.
    pub fn read() -> Self {
        #[cfg(target_os = "linux")]
        {
            linux::read()
        }
        #[cfg(not(target_os = "linux"))]
        {
            Self::default()
        }
    }

    /// Appends the figures that could be read to `out`, in the Prometheus
    /// text format with their help and type lines.
    pub fn render(&self, out: &mut String) {
        let mut family = |name: &str, kind: &str, help: &str, value: Option<String>| {
            if let Some(value) = value {
                let _ = write!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n\n"
                );
            }
        };
        family(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            self.cpu_seconds.map(|v| v.to_string()),
        );
        family(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            self.resident_memory_bytes.map(|v| v.to_string()),
        );
        family(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            self.open_fds.map(|v| v.to_string()),
        );
        family(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            self.max_fds.map(|v| v.to_string()),
        );
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use super::ProcessStats;

    pub(super) fn read() -> ProcessStats {
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let status = std::fs::read_to_string("/proc/self/status").ok();
        let limits = std::fs::read_to_string("/proc/self/limits").ok();
        ProcessStats {
            cpu_seconds: stat.as_deref().and_then(cpu_seconds),
            resident_memory_bytes: status.as_deref().and_then(resident_bytes),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|entries| entries.count() as u64),
            max_fds: limits.as_deref().and_then(max_open_files),
        }
    }

    /// `utime + stime` from `/proc/self/stat`, in clock ticks, as seconds.
    pub(super) fn cpu_seconds(stat: &str) -> Option<f64> {
        // The command name (field 2) is in parentheses and may contain
        // spaces; the fields after its closing parenthesis start at 3.
        let after_name = &stat[stat.rfind(')')? + 1..];
        let mut fields = after_name.split_whitespace().skip(11);
        let utime: u64 = fields.next()?.parse().ok()?;
        let stime: u64 = fields.next()?.parse().ok()?;
        // SAFETY: sysconf has no preconditions; it only reads a constant.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        (ticks > 0).then(|| (utime + stime) as f64 / ticks as f64)
    }

    /// `VmRSS` from `/proc/self/status` (in kB), as bytes.
    pub(super) fn resident_bytes(status: &str) -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// The soft limit of `Max open files` from `/proc/self/limits`.
    pub(super) fn max_open_files(limits: &str) -> Option<u64> {
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        let soft = line["Max open files".len()..].split_whitespace().next()?;
        // "unlimited" is not a number: no figure rather than a wrong one.
        soft.parse().ok()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn parses_proc_files() {
            let stat = "1234 (a (weird) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 4";
            let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
            assert_eq!(cpu_seconds(stat), Some(300.0 / ticks));
            assert_eq!(
                resident_bytes("Name:\tx\nVmRSS:\t   2048 kB\nVmSwap:\t0 kB\n"),
                Some(2048 * 1024)
            );
            let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                          Max open files            1024                 524288               files     \n";
            assert_eq!(max_open_files(limits), Some(1024));
        }
    }
}
