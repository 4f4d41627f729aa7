//! What obhostd remembers of the observers it started, across its own restarts:
//! for each home_path, the pid file, the process identity, the command line and
//! the last exit it saw. Kept in the `observers` table of the step store
//! (`obhostd.redb`), written through the engine's committer: a save is queued,
//! never an fsync on the caller's thread. An `observers.json` left by an older
//! obhostd is read once, moved into the table and then deleted.
//!
//! Each live observer has a watcher task that waits on its pidfd and records the
//! exit the moment it happens (with the exit status when the observer is our
//! child, which the subreaper makes it for everything we started in this run).
//! On start the registry re-adopts every recorded observer that is still alive.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::diagnosis::LogMark;
use crate::process::{Exit, Handle, Identity, Reaper, launch, pidfile};
use crate::steps::Committer;
use crate::steps::store::{Store, Write};

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
    /// Where the observer's logs stood when obhostd started it: a report of
    /// its death shows only what this run wrote.
    #[serde(default)]
    pub log_mark: LogMark,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "observer registry '{path}' cannot be read: {cause}. obhostd will not start over it: move it aside (mv '{path}' '{path}.bad'); running observers are then found again by their pid files"
    )]
    Unreadable { path: PathBuf, cause: String },
}

pub struct Registry {
    committer: Committer,
    /// Held while a record changes and its save is queued, so the store gets
    /// the saves in the order the records changed, and an exit is recorded
    /// once. Never held across file work: pid files are guarded by their own
    /// check ([`pidfile::remove_if_owned`]), not by this lock.
    records: Mutex<BTreeMap<PathBuf, ObserverRecord>>,
    reaper: Reaper,
    shutdown: CancellationToken,
}

impl Registry {
    /// Loads the registry and re-adopts every observer still alive. Must run
    /// inside the runtime (it starts watcher tasks).
    pub fn open(
        state_dir: &Path,
        (store, committer): (Store, Committer),
        reaper: Reaper,
        shutdown: CancellationToken,
    ) -> Result<Arc<Registry>, RegistryError> {
        let mut records = load_table(&store)?;
        upgrade_json(state_dir, &committer, &mut records)?;
        let registry = Arc::new(Registry {
            committer,
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

    /// A copy of every record, for the metrics' scrape.
    pub fn all(&self) -> Vec<ObserverRecord> {
        self.lock().values().cloned().collect()
    }

    /// Records a started (or found running) observer and watches it.
    pub fn started(self: &Arc<Self>, record: ObserverRecord) {
        let id = record.identity;
        let home = record.home_path.clone();
        {
            let mut records = self.lock();
            let last_exit = records.get(&home).and_then(|r| r.last_exit);
            let already_watched = records.get(&home).and_then(|r| r.identity) == id && id.is_some();
            let record = ObserverRecord {
                last_exit: record.last_exit.or(last_exit),
                ..record
            };
            self.save(&record);
            records.insert(home.clone(), record);
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
                    // Died before it could be watched (a start that just
                    // succeeded can lose its observer a moment later): the
                    // reaper still has how it ended.
                    let exit = launch::exit_of_process(&registry.reaper, &id).await;
                    registry.record_exit_async(&home, id, exit).await;
                    return;
                }
            };
            tokio::select! {
                () = registry.shutdown.cancelled() => {}
                () = handle.exited() => {
                    // Ours (subreaper) is reaped within moments; a process
                    // re-adopted after a restart is init's, and its status
                    // comes from the kernel's exit events.
                    let exit = launch::exit_of_process(&registry.reaper, &id).await;
                    registry.record_exit_async(&home, id, exit).await;
                }
            }
        });
    }

    /// Records how the observer `id` at `home` ended, once, after removing
    /// the pid file obhostd wrote for it: whoever sees the exit recorded
    /// finds that file gone. The removal blocks (a home may be on a slow
    /// disk): on the runtime, use [`Registry::record_exit_async`].
    pub fn record_exit(&self, home: &Path, id: Identity, exit: Option<Exit>) {
        if let Some(pid_file) = self.pid_file_to_remove(home, id) {
            remove_pid_file(&pid_file, &id);
        }
        self.commit_exit(home, id, exit);
    }

    /// [`Registry::record_exit`] with the pid file removed on the blocking
    /// pool, and the lock never held across it.
    pub async fn record_exit_async(&self, home: &Path, id: Identity, exit: Option<Exit>) {
        if let Some(pid_file) = self.pid_file_to_remove(home, id) {
            let removed = tokio::task::spawn_blocking(move || remove_pid_file(&pid_file, &id));
            if let Err(e) = removed.await {
                warn!(pid = id.pid, error = %e, "the pid file removal did not finish");
            }
        }
        self.commit_exit(home, id, exit);
    }

    /// The pid file obhostd wrote for `id`, while `id` is still the running
    /// observer of `home`. Two callers may both get it (the watcher and a
    /// stop): removing it twice is harmless, and the exit is still recorded
    /// once, by [`Registry::commit_exit`].
    fn pid_file_to_remove(&self, home: &Path, id: Identity) -> Option<PathBuf> {
        let records = self.lock();
        let r = records.get(home)?;
        (r.identity == Some(id) && r.owns_pid_file).then(|| r.pid_file.clone())
    }

    /// Marks `id` exited with `exit`, if it is still the observer of `home`
    /// (not already recorded, not replaced by a newer start).
    fn commit_exit(&self, home: &Path, id: Identity, exit: Option<Exit>) {
        let mut records = self.lock();
        let Some(r) = records.get_mut(home) else {
            return;
        };
        if r.identity != Some(id) {
            return;
        }
        let exit = exit.unwrap_or(Exit::unknown(&id));
        info!(home = %home.display(), pid = id.pid, status = %exit.describe(), "observer exited");
        r.identity = None;
        r.last_exit = Some(exit);
        self.save(r);
    }

    /// Queues the record to the store; a failure is logged by the committer,
    /// not fatal: the registry only speeds up finding observers, which pid
    /// files and /proc can always do.
    fn save(&self, record: &ObserverRecord) {
        match serde_json::to_vec(record) {
            Ok(bytes) => self.committer.queue_detached(vec![Write::Observer {
                home: record.home_path.to_string_lossy().into_owned(),
                bytes: Some(bytes),
            }]),
            Err(e) => {
                warn!(home = %record.home_path.display(), error = %e, "cannot encode observer record")
            }
        }
    }
}

/// Removes `id`'s pid file unless it names another live process by now (a
/// newer start may have written its own).
fn remove_pid_file(path: &Path, id: &Identity) {
    if let Err(e) = pidfile::remove_if_owned(path, Some(id)) {
        warn!(file = %path.display(), error = %e, "cannot remove pid file");
    }
}

/// `std::fs::remove_file` on the blocking pool: the caller is a task on the
/// runtime.
async fn remove_blocking(path: PathBuf) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || std::fs::remove_file(path))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// The registry's table. A record this version cannot decode is dropped with
/// a warning: pid files and /proc find that observer again.
fn load_table(store: &Store) -> Result<BTreeMap<PathBuf, ObserverRecord>, RegistryError> {
    let rows = store.observers().map_err(|e| RegistryError::Unreadable {
        path: store.path().to_path_buf(),
        cause: e.to_string(),
    })?;
    let mut records = BTreeMap::new();
    for (home, bytes) in rows {
        match serde_json::from_slice::<ObserverRecord>(&bytes) {
            Ok(r) => {
                records.insert(PathBuf::from(home), r);
            }
            Err(e) => {
                warn!(home = %home, error = %e, "dropping an observer record that cannot be decoded")
            }
        }
    }
    Ok(records)
}

/// Moves an older obhostd's `observers.json` into the table (entries the table
/// lacks) and deletes the file once that is durable.
fn upgrade_json(
    state_dir: &Path,
    committer: &Committer,
    records: &mut BTreeMap<PathBuf, ObserverRecord>,
) -> Result<(), RegistryError> {
    let path = state_dir.join(REGISTRY_FILE);
    let old: BTreeMap<PathBuf, ObserverRecord> = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| RegistryError::Unreadable {
            path: path.clone(),
            cause: e.to_string(),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(RegistryError::Unreadable {
                path,
                cause: e.to_string(),
            });
        }
    };
    let mut writes = Vec::new();
    for (home, record) in old {
        if records.contains_key(&home) {
            continue;
        }
        let bytes = serde_json::to_vec(&record).map_err(|e| RegistryError::Unreadable {
            path: path.clone(),
            cause: e.to_string(),
        })?;
        writes.push(Write::Observer {
            home: home.to_string_lossy().into_owned(),
            bytes: Some(bytes),
        });
        records.insert(home, record);
    }
    let pending = committer.queue(writes, Vec::new());
    tokio::spawn(async move {
        match pending.wait().await {
            Ok(()) => match remove_blocking(path.clone()).await {
                Ok(()) => {
                    info!(file = %path.display(), "observer registry moved into the state store")
                }
                Err(e) => {
                    warn!(file = %path.display(), error = %e, "cannot remove the old observer registry")
                }
            },
            Err(e) => {
                warn!(file = %path.display(), error = %e, "cannot move the old observer registry into the state store; it stays")
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn record(home: &str) -> ObserverRecord {
        ObserverRecord {
            home_path: PathBuf::from(home),
            pid_file: PathBuf::from(home).join("run/observer.pid"),
            binary: PathBuf::from(home).join("bin/observer"),
            mysql_port: 2881,
            rpc_port: 2882,
            uid: Some(1000),
            owns_pid_file: false,
            identity: None,
            command: vec!["observer".into()],
            started_by: "s1".into(),
            last_exit: None,
            log_mark: LogMark::default(),
        }
    }

    /// An older obhostd's observers.json moves into the store's table once,
    /// and the file goes once that is durable; saves land in the table.
    #[tokio::test]
    async fn observers_json_is_moved_into_the_store_and_saves_go_there() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join(REGISTRY_FILE);
        let old = BTreeMap::from([(PathBuf::from("/h/a"), record("/h/a"))]);
        std::fs::write(&json, serde_json::to_vec(&old).unwrap()).unwrap();

        let (store, _) = Store::open(dir.path()).unwrap();
        let committer = Committer::start(store.clone(), 16, 0);
        let mut records = load_table(&store).unwrap();
        assert!(records.is_empty());
        upgrade_json(dir.path(), &committer, &mut records).unwrap();
        assert_eq!(records, old);
        committer.flush().await;
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while json.exists() {
            assert!(
                std::time::Instant::now() < until,
                "observers.json left behind"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(load_table(&store).unwrap(), old, "moved into the table");

        committer.queue_detached(vec![Write::Observer {
            home: "/h/b".into(),
            bytes: Some(serde_json::to_vec(&record("/h/b")).unwrap()),
        }]);
        committer.flush().await;
        let table = load_table(&store).unwrap();
        assert_eq!(table.len(), 2);
        assert_eq!(table[Path::new("/h/b")], record("/h/b"));
    }

    /// A registry on a fresh store in `dir`, with a reaper that reaps nothing.
    fn registry(dir: &Path) -> Arc<Registry> {
        let (store, _) = Store::open(dir).unwrap();
        let committer = Committer::start(store.clone(), 16, 0);
        Registry::open(
            dir,
            (store, committer),
            Reaper::detached(),
            CancellationToken::new(),
        )
        .unwrap()
    }

    /// An observer started in the foreground (obhostd wrote its pid file) and
    /// watched, in a home under `dir`.
    fn watched(registry: &Arc<Registry>, dir: &Path, id: Identity) -> (PathBuf, PathBuf) {
        let home = dir.join("home");
        let pid_file = home.join("run/observer.pid");
        std::fs::create_dir_all(home.join("run")).unwrap();
        pidfile::write(&pid_file, id.pid).unwrap();
        registry.started(ObserverRecord {
            home_path: home.clone(),
            pid_file: pid_file.clone(),
            owns_pid_file: true,
            identity: Some(id),
            ..record("/unused")
        });
        (home, pid_file)
    }

    /// Killed behind obhostd's back: the watcher removes the pid file obhostd
    /// wrote and records the exit.
    #[tokio::test]
    async fn a_watched_observer_that_dies_is_recorded_and_its_pid_file_removed() {
        let dir = tempfile::tempdir().unwrap();
        let registry = registry(dir.path());
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let id = Identity::of(child.id() as i32).expect("the child runs");
        let (home, pid_file) = watched(&registry, dir.path(), id);
        child.kill().unwrap();
        child.wait().unwrap();
        let until = std::time::Instant::now() + Duration::from_secs(10);
        let exit = loop {
            let r = registry.get(&home).expect("the record");
            if let Some(exit) = r.last_exit {
                assert!(
                    !pid_file.exists(),
                    "the exit shows before its pid file went"
                );
                assert_eq!(r.identity, None);
                break exit;
            }
            assert!(
                std::time::Instant::now() < until,
                "the exit was not recorded within 10 s: {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert_eq!(exit.pid, id.pid);
    }

    /// An exit reported for an earlier process with the same pid (a stop
    /// that raced a restart) neither records an exit nor removes the pid
    /// file, which names the same pid, of the observer running now.
    #[tokio::test]
    async fn a_late_exit_of_a_replaced_observer_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let registry = registry(dir.path());
        // The running observer: this test's own process, alive throughout.
        let now = Identity::of(std::process::id() as i32).unwrap();
        let (home, pid_file) = watched(&registry, dir.path(), now);
        let earlier = Identity {
            start_ticks: now.start_ticks - 1,
            ..now
        };
        registry.record_exit_async(&home, earlier, None).await;
        registry.record_exit(&home, earlier, None);
        assert!(pid_file.exists(), "the running observer's pid file went");
        let r = registry.get(&home).unwrap();
        assert_eq!(r.identity, Some(now), "the running observer was forgotten");
        assert_eq!(r.last_exit, None, "an exit recorded for it");
    }
}
