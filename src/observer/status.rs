//! GetObserver: what is known of the observer of one home_path.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::process::{Exit, inspect};

use super::locate::{self, Found, Target};
use super::registry::Registry;

#[derive(Debug, Clone, Default)]
pub struct ObserverStatus {
    pub home_path: PathBuf,
    pub running: bool,
    pub pid: u32,
    pub process_start_time: Option<SystemTime>,
    pub uptime: Option<Duration>,
    pub rss_bytes: u64,
    pub cpu_percent: f64,
    pub threads: u32,
    pub listening_ports: Vec<u16>,
    pub command: Vec<String>,
    pub last_exit: Option<Exit>,
}

/// Blocking (samples CPU for ~200 ms): call from a blocking thread.
pub fn status(home: &Path, registry: &Arc<Registry>) -> ObserverStatus {
    let target = Target::for_home(home, registry);
    let last_exit = registry.get(home).and_then(|r| r.last_exit);
    let mut s = ObserverStatus {
        home_path: home.to_path_buf(),
        last_exit,
        ..ObserverStatus::default()
    };
    let Found::Running(id) = locate::find(&target, registry) else {
        return s;
    };
    let Some(info) = inspect::process_info(&id) else {
        return s;
    };
    s.running = true;
    s.pid = id.pid as u32;
    s.process_start_time = id.start_time();
    s.uptime = s
        .process_start_time
        .and_then(|t| SystemTime::now().duration_since(t).ok());
    s.rss_bytes = info.rss_bytes;
    s.cpu_percent = info.cpu_percent;
    s.threads = info.threads;
    s.listening_ports = inspect::listening_ports(id.pid);
    s.command = info.command;
    s
}
