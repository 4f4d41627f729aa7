//! Per-observer metrics, sampled at scrape time from the observer registry and
//! /proc (the scrape runs on a blocking thread): nothing is polled between
//! scrapes.

use std::sync::Mutex;
use std::time::UNIX_EPOCH;

use prometheus_client::collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::observer::ObserverRecord;
use crate::process::Identity;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HomeLabels {
    home: String,
}

/// One observer as last sampled.
#[derive(Debug)]
struct Sample {
    home: HomeLabels,
    up: bool,
    start_time: Option<f64>,
    rss_bytes: Option<u64>,
    cpu_seconds: Option<f64>,
    last_exit_code: Option<i64>,
}

/// The families written from the last sample.
#[derive(Debug, Default)]
pub(super) struct Collector {
    samples: Mutex<Vec<Sample>>,
}

impl Collector {
    /// Reads each recorded observer's process. Blocking (/proc).
    pub(super) fn sample(&self, records: &[ObserverRecord]) {
        let samples = records.iter().map(sample_one).collect();
        *self.samples.lock().unwrap_or_else(|p| p.into_inner()) = samples;
    }
}

fn sample_one(r: &ObserverRecord) -> Sample {
    let live = r.identity.filter(Identity::is_alive);
    let usage = live.and_then(|id| usage(id.pid));
    Sample {
        home: HomeLabels {
            home: r.home_path.to_string_lossy().into_owned(),
        },
        up: live.is_some(),
        start_time: live
            .and_then(|id| id.start_time())
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs_f64()),
        rss_bytes: usage.map(|u| u.0),
        cpu_seconds: usage.map(|u| u.1),
        // A death by signal reads as the shell shows it: 128 + signal.
        last_exit_code: r.last_exit.as_ref().and_then(|e| {
            e.code
                .map(i64::from)
                .or(e.signal.map(|s| 128 + i64::from(s)))
        }),
    }
}

/// Resident bytes and CPU seconds (user + system) of `pid`, from /proc.
fn usage(pid: i32) -> Option<(u64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces and ')'.
    let rest: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    // rest[0] is field 3; utime is field 14, stime 15, rss (pages) 24.
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    let rss_pages: u64 = rest.get(21)?.parse().ok()?;
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)? as f64;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| u64::try_from(p).ok())?;
    Some((rss_pages * page, (utime + stime) as f64 / ticks))
}

/// How a gauge reads its value from a sample (None: no sample line).
type Value = fn(&Sample) -> Option<f64>;

impl collector::Collector for Collector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let gauges: [(&str, &str, Value); 4] = [
            (
                "obhost_observer_up",
                "1 while the observer obhostd started (or re-adopted) for this home runs",
                |s| Some(if s.up { 1.0 } else { 0.0 }),
            ),
            (
                "obhost_observer_start_time_seconds",
                "Start time of the observer process, seconds since the Unix epoch",
                |s| s.start_time,
            ),
            (
                "obhost_observer_resident_memory_bytes",
                "Resident memory of the observer process",
                |s| s.rss_bytes.map(|b| b as f64),
            ),
            (
                "obhost_observer_last_exit_code",
                "Exit code of the observer's last exit (128 + signal when killed)",
                |s| s.last_exit_code.map(|c| c as f64),
            ),
        ];
        for (name, help, value) in gauges {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for s in samples.iter() {
                if let Some(v) = value(s) {
                    ConstGauge::new(v).encode(family.encode_family(&s.home)?)?;
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "obhost_observer_cpu_seconds",
            "CPU time (user + system) the observer process has used",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for s in samples.iter() {
            if let Some(v) = s.cpu_seconds {
                ConstCounter::new(v).encode(family.encode_family(&s.home)?)?;
            }
        }
        Ok(())
    }
}
