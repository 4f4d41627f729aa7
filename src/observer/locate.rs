//! Finding the observer of a home_path, if one runs: by the process obhostd
//! recorded, by its pid file, or by scanning /proc for its binary running in its
//! home. A pid file only counts when the process it names plausibly is that
//! observer, so a recycled pid never reads as "already running".

use std::path::{Path, PathBuf};

use crate::process::pidfile::{self, PidFile};
use crate::process::{Identity, inspect};

use super::registry::Registry;

/// Where to look for one observer.
#[derive(Debug, Clone)]
pub struct Target {
    pub home_path: PathBuf,
    pub pid_file: PathBuf,
    pub binary: PathBuf,
}

impl Target {
    /// For requests that name only a home_path: what obhostd recorded, else the
    /// defaults.
    pub fn for_home(home: &Path, registry: &Registry) -> Target {
        match registry.get(home) {
            Some(r) => Target {
                home_path: r.home_path,
                pid_file: r.pid_file,
                binary: r.binary,
            },
            None => Target {
                home_path: home.to_path_buf(),
                pid_file: home.join("run/observer.pid"),
                binary: home.join("bin/observer"),
            },
        }
    }
}

/// What the pid file of a target says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Running(Identity),
    /// A pid file that names no live observer (its pid, if it had one).
    Stale(Option<i32>),
    NotRunning,
}

/// Whether a live process plausibly is the observer of `t`: its binary, its
/// working dir under the home, or the home on its command line.
pub fn belongs_to(id: &Identity, t: &Target) -> bool {
    let pid = id.pid;
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let home = canon(&t.home_path);
    let exe_ok =
        std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == canon(&t.binary));
    let cwd_ok = std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|c| c.starts_with(&home));
    let cmd_ok = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        let home = home.to_string_lossy();
        String::from_utf8_lossy(&c).contains(home.as_ref())
    });
    exe_ok || cwd_ok || cmd_ok
}

pub fn find(t: &Target, registry: &Registry) -> Found {
    if let Some(id) = registry.get(&t.home_path).and_then(|r| r.identity)
        && id.is_alive()
    {
        return Found::Running(id);
    }
    let from_file = match pidfile::inspect(&t.pid_file) {
        PidFile::Live(id) if belongs_to(&id, t) => return Found::Running(id),
        PidFile::Live(id) => Found::Stale(Some(id.pid)),
        PidFile::Stale(pid) => Found::Stale(pid),
        PidFile::Missing => Found::NotRunning,
    };
    match inspect::find_by_exe_and_cwd(&t.binary, &t.home_path).first() {
        Some(id) => Found::Running(*id),
        None => from_file,
    }
}
