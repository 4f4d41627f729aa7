//! Finding the observer of a home_path, if one runs.
//!
//! obhostd signals what it finds here and reports it as "already running", so
//! a process counts as this home's observer only on evidence an unprivileged
//! user cannot forge: obhostd itself started and recorded it (pid, start time,
//! boot id), or its executable is the home's resolved binary. In both cases it
//! must run as the observer's user, and it is never obhostd itself or init. A
//! command line or a working dir proves nothing: anyone can put a home path in
//! their argv, and obhostd's own cwd may lie under a home.

use std::path::{Path, PathBuf};

use crate::confined;
use crate::process::pidfile::{self, PidFile};
use crate::process::{Identity, inspect};

use super::registry::Registry;

/// Where to look for one observer, and whose it must be.
#[derive(Debug, Clone)]
pub struct Target {
    pub home_path: PathBuf,
    pub pid_file: PathBuf,
    pub binary: PathBuf,
    /// The uid the observer runs as; None matches nothing (an unknown user's
    /// process is never ours).
    pub uid: Option<u32>,
}

impl Target {
    /// For requests that name only a home_path: what obhostd recorded, else the
    /// defaults, run by the owner of the home.
    pub fn for_home(home: &Path, registry: &Registry) -> Target {
        let owner = || confined::metadata(home).ok().map(|m| m.st_uid);
        match registry.get(home) {
            Some(r) => Target {
                uid: r.uid.or_else(owner),
                home_path: r.home_path,
                pid_file: r.pid_file,
                binary: r.binary,
            },
            None => Target {
                home_path: home.to_path_buf(),
                pid_file: home.join("run/observer.pid"),
                binary: home.join("bin/observer"),
                uid: owner(),
            },
        }
    }

    /// Whether `id` runs as this target's user (and is not obhostd or init).
    fn runs_as_user(&self, id: &Identity) -> bool {
        !id.is_protected() && self.uid.is_some() && id.uid() == self.uid
    }

    /// Whether `id` runs this target's binary.
    fn runs_binary(&self, id: &Identity) -> bool {
        let binary = confined::canonical(&self.binary).unwrap_or_else(|_| self.binary.clone());
        id.exe().is_some_and(|exe| exe == binary)
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

/// Whether a live process is the observer of `t`: recorded by obhostd, or
/// running its binary; and running as its user.
pub fn belongs_to(id: &Identity, t: &Target, registry: &Registry) -> bool {
    let recorded = registry
        .get(&t.home_path)
        .and_then(|r| r.identity)
        .is_some_and(|r| r == *id);
    t.runs_as_user(id) && (recorded || t.runs_binary(id))
}

pub fn find(t: &Target, registry: &Registry) -> Found {
    if let Some(id) = registry.get(&t.home_path).and_then(|r| r.identity)
        && id.is_alive()
        && t.runs_as_user(&id)
    {
        return Found::Running(id);
    }
    let from_file = match pidfile::inspect(&t.pid_file) {
        PidFile::Live(id) if belongs_to(&id, t, registry) => return Found::Running(id),
        PidFile::Live(id) => Found::Stale(Some(id.pid)),
        PidFile::Stale(pid) => Found::Stale(pid),
        PidFile::Missing => Found::NotRunning,
    };
    let home = confined::canonical(&t.home_path).unwrap_or_else(|_| t.home_path.clone());
    match inspect::find_by_exe_and_cwd(&t.binary, &home)
        .into_iter()
        .find(|id| t.runs_as_user(id))
    {
        Some(id) => Found::Running(id),
        None => from_file,
    }
}
