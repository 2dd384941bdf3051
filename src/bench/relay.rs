//! The relay under measurement: this binary's `serve` as a child process
//! (one, or several on one PostgreSQL database), and what `/proc` says of
//! its CPU time and memory.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{Context as _, bail};

/// A relay child process.
pub(super) struct Relay {
    child: Child,
    /// `http://address:port` of its API.
    pub(super) base: String,
}

impl Relay {
    /// Starts `serve` with the configuration at `config` and waits until
    /// it listens (its log line naming the address).
    pub(super) fn start(config: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["--config", &config.display().to_string(), "serve"])
            // The production default: what the relay logs is part of its cost.
            .env("RUST_LOG", crate::telemetry::DEFAULT_FILTER)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start the relay")?;
        let stderr = child.stderr.take().expect("piped");
        let mut lines = BufReader::new(stderr).lines();
        let mut last = String::new();
        let address = loop {
            let Some(Ok(line)) = lines.next() else {
                // Its last line says why (e.g. a configuration error).
                bail!("the relay exited before listening: {last}");
            };
            if let Some(rest) = line.split("address=").nth(1) {
                break rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
            }
            last = line;
        };
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Self {
            child,
            base: format!("http://{address}"),
        })
    }

    /// User + system CPU seconds so far (all threads).
    pub(super) fn cpu_seconds(&self) -> f64 {
        ProcStat::read(self.child.id()).map_or(0.0, |stat| stat.cpu_seconds)
    }

    /// Peak resident set size, MiB.
    pub(super) fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }

    /// Asks it to stop (SIGTERM) without waiting.
    fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Waits for it to exit; an error unless it exited cleanly.
    fn wait(mut self) -> anyhow::Result<()> {
        let status = self.child.wait()?;
        if !status.success() {
            bail!("the relay exited with {status}");
        }
        Ok(())
    }

    /// Stops it (SIGTERM) and waits; an error unless it exited cleanly.
    pub(super) fn stop(self) -> anyhow::Result<()> {
        self.terminate();
        self.wait()
    }
}

/// The relays of one phase: one, or several on one PostgreSQL database,
/// each measured on its own.
pub(super) struct Fleet {
    relays: Vec<Relay>,
}

impl Fleet {
    /// Starts `instances` relays (at least one) with the configuration at
    /// `config`; each binds a port of its own.
    pub(super) fn start(config: &Path, instances: usize) -> anyhow::Result<Self> {
        let mut relays = Vec::with_capacity(instances);
        for i in 0..instances.max(1) {
            match Relay::start(config) {
                Ok(relay) => relays.push(relay),
                Err(err) => {
                    // Do not leave the ones already running behind.
                    let _ = Self { relays }.stop();
                    return Err(err.context(format!("relay {} of {instances}", i + 1)));
                }
            }
        }
        Ok(Self { relays })
    }

    /// Every relay's API base URL, in order.
    pub(super) fn bases(&self) -> Vec<String> {
        self.relays.iter().map(|r| r.base.clone()).collect()
    }

    /// Each relay's CPU seconds so far, in order.
    pub(super) fn cpu_seconds(&self) -> Vec<f64> {
        self.relays.iter().map(Relay::cpu_seconds).collect()
    }

    /// Each relay's peak RSS, MiB, in order.
    pub(super) fn peak_rss_mib(&self) -> Vec<f64> {
        self.relays.iter().map(Relay::peak_rss_mib).collect()
    }

    /// Stops every relay (all asked at once, so their shutdowns overlap)
    /// and waits for each; the first unclean exit is the error.
    pub(super) fn stop(self) -> anyhow::Result<()> {
        for relay in &self.relays {
            relay.terminate();
        }
        let mut outcome = Ok(());
        for (i, relay) in self.relays.into_iter().enumerate() {
            if let Err(err) = relay.wait()
                && outcome.is_ok()
            {
                outcome = Err(err.context(format!("relay {}", i + 1)));
            }
        }
        outcome
    }
}

/// The figures of `/proc/<pid>/stat` the bench reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct ProcStat {
    /// The parent's pid.
    pub(super) ppid: u32,
    /// User + system CPU seconds of the process itself (all threads).
    pub(super) cpu_seconds: f64,
    /// User + system CPU seconds of its children that exited and were
    /// waited for.
    pub(super) reaped_children_cpu_seconds: f64,
}

impl ProcStat {
    /// The process `pid`'s figures, or `None` when it is gone.
    pub(super) fn read(pid: u32) -> Option<Self> {
        Self::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// Parses the text of a `/proc/<pid>/stat` file.
    fn parse(stat: &str) -> Option<Self> {
        // The fields after the command name, which may contain spaces and
        // parentheses: it ends at the last `)`.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        // proc(5) numbers the fields from 1, the pid and the name first:
        // ppid is field 4, utime 14, stime 15, cutime 16, cstime 17. Linux
        // reports the times in USER_HZ, which is 100.
        let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
        Some(Self {
            ppid: field(4)? as u32,
            cpu_seconds: (field(14)? + field(15)?) / 100.0,
            reaped_children_cpu_seconds: (field(16)? + field(17)?) / 100.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_fields_are_read_past_a_name_with_spaces_and_parentheses() {
        // A line as Linux writes it (proc(5)), the name holding both.
        let line = "4242 (post (gres) x) S 4200 4242 4242 0 -1 4194560 1 0 0 0 \
                    250 50 7 3 20 0 1 0 100 1000 10 18446744073709551615";
        let stat = ProcStat::parse(line).expect("parses");
        assert_eq!(stat.ppid, 4200);
        assert!((stat.cpu_seconds - 3.0).abs() < 1e-9, "{stat:?}");
        assert!(
            (stat.reaped_children_cpu_seconds - 0.1).abs() < 1e-9,
            "{stat:?}"
        );
        // And this very process reads as itself.
        let own = ProcStat::read(std::process::id()).expect("our own stat");
        assert_eq!(own.ppid, std::os::unix::process::parent_id());
    }
}
