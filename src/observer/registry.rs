//! What obhostd remembers of the observers it started, across its own restarts:
//! for each home_path, the pid file, the process identity, the command line and
//! the last exit it saw. `<state_dir>/observers.json`, written atomically.
//!
//! Each live observer has a watcher task that waits on its pidfd and records the
//! exit the moment it happens (with the exit status when the observer is our
//! child, which the subreaper makes it for everything we started in this run).
//! On start the registry re-adopts every recorded observer that is still alive.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::process::{Exit, Handle, Identity, Reaper, pidfile};

pub const REGISTRY_FILE: &str = "observers.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObserverRecord {
    pub home_path: PathBuf,
    pub pid_file: PathBuf,
    pub binary: PathBuf,
    pub mysql_port: u16,
    pub rpc_port: u16,
    /// The uid the observer runs as (absent in records of older versions: then
    /// the home's owner is assumed).
    #[serde(default)]
    pub uid: Option<u32>,
    /// The daemon wrote the pid file (foreground mode), so it removes it too.
    pub owns_pid_file: bool,
    /// Set while the observer runs.
    pub identity: Option<Identity>,
    pub command: Vec<String>,
    pub started_by: String,
    pub last_exit: Option<Exit>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "observer registry '{path}' cannot be read: {cause}. obhostd will not start over it: move it aside (mv '{path}' '{path}.bad'); running observers are then found again by their pid files"
    )]
    Unreadable { path: PathBuf, cause: String },
}

pub struct Registry {
    path: PathBuf,
    records: Mutex<BTreeMap<PathBuf, ObserverRecord>>,
    reaper: Reaper,
    shutdown: CancellationToken,
}

impl Registry {
    /// Loads the registry and re-adopts every observer still alive. Must run
    /// inside the runtime (it starts watcher tasks).
    pub fn open(
        state_dir: &Path,
        reaper: Reaper,
        shutdown: CancellationToken,
    ) -> Result<Arc<Registry>, RegistryError> {
        let path = state_dir.join(REGISTRY_FILE);
        let records: BTreeMap<PathBuf, ObserverRecord> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| RegistryError::Unreadable {
                path: path.clone(),
                cause: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(RegistryError::Unreadable {
                    path,
                    cause: e.to_string(),
                });
            }
        };
        let registry = Arc::new(Registry {
            path,
            records: Mutex::new(records),
            reaper,
            shutdown,
        });
        let live: Vec<(PathBuf, Identity)> = registry
            .lock()
            .values()
            .filter_map(|r| Some((r.home_path.clone(), r.identity?)))
            .collect();
        for (home, id) in live {
            if id.is_alive() {
                info!(home = %home.display(), pid = id.pid, "re-adopted running observer");
                registry.supervise(home, id);
            } else {
                warn!(home = %home.display(), pid = id.pid, "observer ended while obhostd was down");
                registry.record_exit(&home, id, None);
            }
        }
        Ok(registry)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<PathBuf, ObserverRecord>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True once obhostd is stopping: what it started must then be left
    /// running (see [`crate::process::Spawned`]).
    pub fn shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    pub fn reaper(&self) -> &Reaper {
        &self.reaper
    }

    pub fn get(&self, home: &Path) -> Option<ObserverRecord> {
        self.lock().get(home).cloned()
    }

    /// Records a started (or found running) observer and watches it.
    pub fn started(self: &Arc<Self>, record: ObserverRecord) {
        let id = record.identity;
        let home = record.home_path.clone();
        {
            let mut records = self.lock();
            let last_exit = records.get(&home).and_then(|r| r.last_exit);
            let already_watched = records.get(&home).and_then(|r| r.identity) == id && id.is_some();
            records.insert(
                home.clone(),
                ObserverRecord {
                    last_exit: record.last_exit.or(last_exit),
                    ..record
                },
            );
            self.save(&records);
            if already_watched {
                return;
            }
        }
        if let Some(id) = id {
            self.supervise(home, id);
        }
    }

    fn supervise(self: &Arc<Self>, home: PathBuf, id: Identity) {
        let registry = self.clone();
        tokio::spawn(async move {
            let handle = match Handle::open(id) {
                Ok(h) => h,
                Err(_) => {
                    registry.record_exit(&home, id, None);
                    return;
                }
            };
            tokio::select! {
                () = registry.shutdown.cancelled() => {}
                () = handle.exited() => {
                    // Ours (subreaper) yields a status within moments; a process
                    // re-adopted after a restart is init's, and never will.
                    let exit = tokio::time::timeout(Duration::from_secs(1), registry.reaper.wait(id.pid)).await.ok();
                    registry.record_exit(&home, id, exit);
                }
            }
        });
    }

    /// Records how the observer `id` at `home` ended, once.
    pub fn record_exit(&self, home: &Path, id: Identity, exit: Option<Exit>) {
        let mut records = self.lock();
        let Some(r) = records.get_mut(home) else {
            return;
        };
        if r.identity != Some(id) {
            return;
        }
        let exit = exit.unwrap_or(Exit {
            pid: id.pid,
            code: None,
            signal: None,
            at: SystemTime::now(),
        });
        info!(home = %home.display(), pid = id.pid, status = %exit.describe(), "observer exited");
        r.identity = None;
        r.last_exit = Some(exit);
        if r.owns_pid_file
            && let Err(e) = pidfile::remove_if_owned(&r.pid_file, Some(&id))
        {
            warn!(file = %r.pid_file.display(), error = %e, "cannot remove pid file");
        }
        self.save(&records);
    }

    /// Atomic replace; a failure is logged, not fatal: the registry only speeds up
    /// finding observers, which pid files and /proc can always do.
    fn save(&self, records: &BTreeMap<PathBuf, ObserverRecord>) {
        let result = serde_json::to_vec_pretty(records)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                let tmp = self.path.with_extension("json.tmp");
                std::fs::write(&tmp, bytes)?;
                std::fs::File::open(&tmp)?.sync_all()?;
                std::fs::rename(&tmp, &self.path)
            });
        if let Err(e) = result {
            warn!(file = %self.path.display(), error = %e, "cannot save observer registry");
        }
    }
}
