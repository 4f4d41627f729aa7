//! The step engine: the one owner of step state.
//!
//! Split by job: this module is the API and the staging half of the commit
//! path; `commit` writes and publishes, `drivers` run steps, `recovery`
//! resolves what a previous run left unfinished, `retention` prunes,
//! `outbox` hands the reporter its changes, and `watch` follows changes.
//!
//! Every change goes through [`Engine::stage`]: under the state lock (a std
//! mutex, never held across an await or an fsync) it gets the next global
//! revision and is queued to the committer; the caller then waits for the
//! commit. Memory holds only unfinished steps, changes not yet durable and
//! secrets; finished records are read from the store's snapshots on demand,
//! so memory is bounded by what runs, not by history, and reads never wait for
//! a commit.

pub(super) mod commit;
mod drivers;
mod error;
pub mod open;
pub mod outbox;
mod read_ahead;
mod recovery;
mod retention;
pub mod watch;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

pub use super::model::Filter;
pub use commit::{Committer, on_commit};
pub use error::EngineError;

use super::model::{Secrets, StepError, StepRecord, StepSpec, StepState, cap_record, codes};
use super::store::{DEFAULT_CACHE_BYTES, PageLimit, Store, StoreError, Write};
use super::task::{BoxFuture, STAGE, STAGE_SINCE, StepSink, TaskFactory, Update};
use watch::{Watch, WatchSlot};

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Changes a watcher may lag behind before it is cut off (ABORTED).
    pub watch_buffer: usize,
    pub retention: Retention,
    /// Steps PENDING or RUNNING at once; beyond it new steps and retries are
    /// refused (RESOURCE_EXHAUSTED), so a caller cannot queue unbounded work.
    pub max_active_steps: usize,
    /// Open WatchSteps streams; each holds a task and buffers.
    pub max_watchers: usize,
    /// redb's page cache: the store's share of the daemon's memory.
    pub cache_bytes: usize,
    /// Changes kept until the orchestrator acknowledges them (`[report]
    /// max_unacked`); 0 when nothing is reported.
    pub outbox: usize,
}

/// Bounds the store: terminal steps older than `max_age` are forgotten, and beyond
/// `max_steps` the oldest terminal ones are. Steps still running are never pruned.
#[derive(Debug, Clone)]
pub struct Retention {
    pub max_steps: usize,
    pub max_age: Duration,
    pub interval: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            watch_buffer: 1024,
            retention: Retention {
                max_steps: 10_000,
                max_age: Duration::from_secs(7 * 24 * 3600),
                interval: Duration::from_secs(60),
            },
            max_active_steps: 64,
            max_watchers: 256,
            cache_bytes: DEFAULT_CACHE_BYTES,
            outbox: 0,
        }
    }
}

/// Records a list page may look at before it returns a short page (with a
/// token to go on), for filters that match little of a large store.
const LIST_SCAN: usize = 8192;

#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

struct Shared {
    store: Store,
    committer: Committer,
    factory: Arc<dyn TaskFactory>,
    state: Mutex<State>,
    shutdown: CancellationToken,
    drivers: TaskTracker,
    key_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Open watches, against `config.max_watchers`.
    watchers: Arc<AtomicUsize>,
    /// Wakes the pruner early when a step ends with the store over its bound.
    prune: Notify,
    read_ahead: read_ahead::ReadAhead,
    /// What a running step says about its progress (a message, a stage) is
    /// staged in order and committed with the next group, but the task does
    /// not wait for it to be durable: a stage is information, and a probe
    /// that passes three stages in a millisecond should not then wait three
    /// fsyncs to end. Outputs, which a restart needs, are still waited for.
    /// At most this many such commits are outstanding; past that a task does
    /// wait, so a task that floods progress cannot grow the queue unbounded.
    progress_commits: Arc<tokio::sync::Semaphore>,
    config: EngineConfig,
}

/// Progress commits outstanding at once before progress updates wait again
/// (see `Shared::progress_commits`).
const PROGRESS_COMMITS: usize = 256;

/// How a driver begins its attempt.
pub(super) enum Start {
    /// Staged RUNNING, holding its key's turn (None: the task has no key).
    Now(Option<Turn>),
    /// Staged PENDING (its key was busy), or left unfinished by the previous
    /// run (`resumed`): wait for the turn, then mark RUNNING.
    Waiting { resumed: bool },
}

pub(super) type Turn = tokio::sync::OwnedMutexGuard<()>;

/// A new step staged: its commit to wait for, its record, its task, and how
/// its driver begins.
type Staged = (
    commit::Pending,
    Arc<StepRecord>,
    Box<dyn super::task::StepTask>,
    Start,
);

/// A change queued but not yet durable.
struct Inflight {
    /// The newest version queued.
    latest: Arc<StepRecord>,
    /// The newest durable version while unfinished (what memory goes back to
    /// if the queued ones fail); None when it was finished or did not exist.
    durable: Option<StepRecord>,
}

#[derive(Default)]
struct State {
    /// The last revision handed out.
    revision: u64,
    /// Unfinished steps, newest version (durable or queued).
    active: HashMap<String, StepRecord>,
    inflight: HashMap<String, Inflight>,
    /// The driver of each step's current attempt.
    runs: HashMap<String, (u32, CancellationToken)>,
    secrets: HashMap<String, Secrets>,
}

impl State {
    /// The newest version of a record: queued, unfinished, or from the store.
    fn latest(&self, store: &Store, id: &str) -> Result<Option<StepRecord>, StoreError> {
        if let Some(f) = self.inflight.get(id) {
            return Ok(Some((*f.latest).clone()));
        }
        if let Some(r) = self.active.get(id) {
            return Ok(Some(r.clone()));
        }
        // A point read of a finished record from a snapshot: microseconds, and
        // it never waits for a commit.
        store.get(id)
    }

    /// Refuses another unfinished step when the limit is reached.
    fn check_active(&self, limit: usize) -> Result<(), EngineError> {
        let active = self.active.len();
        if active >= limit {
            return Err(EngineError::TooManyActive { active, limit });
        }
        Ok(())
    }
}

impl Engine {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What [`Engine::submit`] would refuse before starting anything, a
    /// different request under a known id (ALREADY_EXISTS), for a request that
    /// only asks to be checked. Starts and stores nothing.
    pub fn check(&self, spec: &StepSpec) -> Result<(), EngineError> {
        let state = self.lock();
        if let Some(existing) = state.latest(&self.shared.store, &spec.id)? {
            let differs = differences(&existing.spec, spec);
            if !differs.is_empty() {
                return Err(EngineError::Conflict {
                    id: spec.id.clone(),
                    differs: differs.join(", "),
                });
            }
        }
        Ok(())
    }

    /// Accepts a step, or returns the existing record of the same request.
    /// `task` is the work `spec.params` describe, built by the caller from the
    /// request it resolved (the factory builds tasks only from stored
    /// parameters: retries and restarts); it is dropped when the step exists.
    pub async fn submit(
        &self,
        spec: StepSpec,
        task: Box<dyn crate::steps::task::StepTask>,
        secrets: Secrets,
    ) -> Result<StepRecord, EngineError> {
        let id = spec.id.clone();
        let staged = {
            let mut state = self.lock();
            if let Some(existing) = state.latest(&self.shared.store, &spec.id)? {
                let differs = differences(&existing.spec, &spec);
                if !differs.is_empty() {
                    return Err(EngineError::Conflict {
                        id: spec.id,
                        differs: differs.join(", "),
                    });
                }
                // A repeated request after a restart brings back secrets the
                // daemon could not keep; a different secret for a known step is
                // not ours to compare (we never stored it), so the first wins.
                if !secrets.is_empty() {
                    state.secrets.entry(spec.id.clone()).or_insert(secrets);
                }
                Err(existing)
            } else {
                Ok(self.stage_new(&mut state, spec, task, secrets)?)
            }
        };
        let (pending, record, task, start) = match staged {
            Ok(staged) => staged,
            // What the caller sees should be durable: the committed version,
            // unless a concurrent identical request has not committed yet.
            Err(existing) => {
                return match self.get(&id).await {
                    Err(EngineError::NotFound(_)) => Ok(existing),
                    other => other,
                };
            }
        };
        self.start_once_committed(pending, record.clone(), task, start)
            .await?;
        Ok((*record).clone())
    }

    /// Starts the step's driver once its record is durable, in a task of its
    /// own: the caller's future may be dropped while it waits (an RPC whose
    /// client went away), and a step already committed RUNNING must still be
    /// run, not left to the next restart.
    async fn start_once_committed(
        &self,
        pending: commit::Pending,
        record: Arc<StepRecord>,
        task: Box<dyn crate::steps::task::StepTask>,
        start: Start,
    ) -> Result<(), EngineError> {
        let engine = self.clone();
        let started = self.shared.drivers.spawn(async move {
            match pending.wait().await {
                Ok(()) => {
                    engine.start_driver(&record, task, start);
                    Ok(())
                }
                Err(e) => {
                    engine.lock().secrets.remove(record.id());
                    Err(e)
                }
            }
        });
        match started.await {
            Ok(r) => Ok(r?),
            Err(e) => Err(EngineError::Store(StoreError::Internal {
                what: "starting the step's driver",
                cause: e.to_string(),
            })),
        }
    }

    /// Stages the PENDING record of a new step, to run `task`.
    fn stage_new(
        &self,
        state: &mut State,
        spec: StepSpec,
        task: Box<dyn crate::steps::task::StepTask>,
        secrets: Secrets,
    ) -> Result<Staged, EngineError> {
        state.check_active(self.shared.config.max_active_steps)?;
        let now = SystemTime::now();
        let mut record = StepRecord {
            deadline: now + spec.timeout,
            spec,
            state: StepState::Pending,
            attempt: 1,
            revision: 0,
            created_at: now,
            started_at: None,
            finished_at: None,
            message: "accepted".into(),
            error: None,
            outputs: BTreeMap::new(),
            checks: Vec::new(),
        };
        let start = self.begin(&mut record, task.as_ref(), now);
        let (record, pending) = self.stage(state, record, None)?;
        if !secrets.is_empty() {
            state.secrets.insert(record.id().to_string(), secrets);
        }
        Ok((pending, record, task, start))
    }

    /// The committed record: a snapshot read, never behind a commit. On the
    /// blocking pool: a page not in redb's cache is read from disk.
    pub async fn get(&self, id: &str) -> Result<StepRecord, EngineError> {
        let store = self.shared.store.clone();
        let key = id.to_string();
        let found = tokio::task::spawn_blocking(move || store.get(&key))
            .await
            .map_err(|e| StoreError::Internal {
                what: "a step read",
                cause: e.to_string(),
            })??;
        found.ok_or_else(|| EngineError::NotFound(id.to_string()))
    }

    /// One page of matching steps in id order, starting after `after_id`, and the
    /// id to continue from when there may be more. Read from a snapshot; a
    /// filter that matches little may give a short page with a token.
    pub async fn list(
        &self,
        filter: &Filter,
        page_size: usize,
        max_bytes: usize,
        after_id: Option<&str>,
    ) -> Result<(Vec<StepRecord>, Option<String>), EngineError> {
        let limit = PageLimit {
            records: page_size,
            scan: LIST_SCAN,
            bytes: max_bytes,
        };
        let page = self
            .shared
            .read_ahead
            .page(&self.shared.store, filter, limit, after_id)
            .await?;
        let next = if page.exhausted { None } else { page.cursor };
        Ok((page.records, next))
    }

    pub async fn cancel(&self, id: &str) -> Result<StepRecord, EngineError> {
        // Decided and staged under one lock: nothing can end the step between.
        let staged = {
            let mut state = self.lock();
            let record = state
                .latest(&self.shared.store, id)?
                .ok_or_else(|| EngineError::NotFound(id.to_string()))?;
            if record.state.is_terminal() {
                None
            } else {
                let previous = record.revision;
                let mut next = record;
                next.state = StepState::Cancelled;
                next.finished_at = Some(SystemTime::now());
                next.message = "cancelled by CancelStep".into();
                next.error = Some(StepError::new(
                    codes::CANCELLED,
                    format!(
                        "step '{id}' was cancelled by CancelStep; RetryStep '{id}' runs it again"
                    ),
                ));
                Some(self.stage(&mut state, next, Some(previous))?)
            }
        };
        let Some((record, pending)) = staged else {
            return self.get(id).await;
        };
        // In a task of its own, as a start is (start_once_committed): a caller
        // gone mid-commit must not leave a step CANCELLED whose task runs on.
        let engine = self.clone();
        let step = id.to_string();
        let stopped = self.shared.drivers.spawn(async move {
            pending.wait().await?;
            let run = engine.lock().runs.remove(&step);
            if let Some((_, token)) = run {
                token.cancel();
            }
            info!(step, "step cancelled");
            Ok::<(), StoreError>(())
        });
        match stopped.await {
            Ok(r) => r?,
            Err(e) => {
                return Err(EngineError::Store(StoreError::Internal {
                    what: "cancelling the step's task",
                    cause: e.to_string(),
                }));
            }
        }
        Ok((*record).clone())
    }

    pub async fn retry(&self, id: &str) -> Result<StepRecord, EngineError> {
        let (record, pending, task, start) = {
            let mut state = self.lock();
            let record = state
                .latest(&self.shared.store, id)?
                .ok_or_else(|| EngineError::NotFound(id.to_string()))?;
            if !record.state.is_retryable() {
                return Err(EngineError::NotRetryable {
                    id: id.to_string(),
                    state: record.state,
                });
            }
            state.check_active(self.shared.config.max_active_steps)?;
            let secrets = state.secrets.get(id).cloned().unwrap_or_default();
            let task = self
                .shared
                .factory
                .build(record.spec.kind, &record.spec.params, &secrets)
                .map_err(EngineError::InvalidParams)?;
            let now = SystemTime::now();
            let previous = record.revision;
            let mut next = StepRecord {
                state: StepState::Pending,
                attempt: record.attempt + 1,
                started_at: None,
                finished_at: None,
                deadline: now + record.spec.timeout,
                message: format!("retrying (attempt {})", record.attempt + 1),
                error: None,
                outputs: BTreeMap::new(),
                checks: Vec::new(),
                ..record
            };
            let start = self.begin(&mut next, task.as_ref(), now);
            let (record, pending) = self.stage(&mut state, next, Some(previous))?;
            (record, pending, task, start)
        };
        self.start_once_committed(pending, record.clone(), task, start)
            .await?;
        info!(step = id, attempt = record.attempt, "step retried");
        Ok((*record).clone())
    }

    /// Starts a watch: the records matching `filter` changed after `after_revision`
    /// (oldest first), then every matching change as it is committed. Refused
    /// beyond `max_watchers` open watches.
    pub fn watch(&self, filter: Filter, after_revision: u64) -> Result<Watch, EngineError> {
        let limit = self.shared.config.max_watchers;
        self.shared
            .watchers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .map_err(|_| EngineError::TooManyWatchers { limit })?;
        Ok(Watch::new(
            self.shared.store.clone(),
            self.shared.committer.clone(),
            filter,
            after_revision,
            self.shared.shutdown.clone(),
            WatchSlot::new(self.shared.watchers.clone()),
        ))
    }

    /// Waits (bounded) for drivers to drop their tasks after shutdown fired.
    pub async fn drain(&self, bound: Duration) -> bool {
        self.shared.drivers.close();
        tokio::time::timeout(bound, self.shared.drivers.wait())
            .await
            .is_ok()
    }

    /// After shutdown and [`Engine::drain`]: commits what is queued, then closes
    /// the store cleanly so the next start opens it at once (an unclean close
    /// makes redb walk the whole file). Nothing can change a step afterwards.
    pub async fn close(&self) {
        self.shared.committer.flush().await;
        let store = self.shared.store.clone();
        let closed = tokio::task::spawn_blocking(move || store.close()).await;
        if !matches!(closed, Ok(true)) {
            tracing::warn!("state store still in use at shutdown; the next start checks it");
        }
    }

    /// A secret of a step, from memory (never stored). A repeated request for the
    /// same step can supply it after a restart, so tasks ask each time.
    fn secret(&self, id: &str, key: &str) -> Option<String> {
        let state = self.lock();
        state.secrets.get(id)?.get(key).map(str::to_string)
    }

    /// Open WatchSteps streams (the metrics' `obhost_watchers`).
    pub fn watchers(&self) -> usize {
        self.shared.watchers.load(Ordering::Acquire)
    }

    /// Steps PENDING or RUNNING now.
    pub fn unfinished(&self) -> usize {
        self.lock().active.len()
    }

    /// The highest committed revision, as a reader of the store sees it.
    pub async fn revision(&self) -> u64 {
        self.shared
            .store
            .revision()
            .unwrap_or_else(|_| self.shared.committer.durable_revision())
    }

    /// True while the store accepts writes; the health service follows it.
    pub fn healthy(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shared.committer.healthy()
    }

    // ---- the commit path -------------------------------------------------------

    /// The only way a record changes: next revision, queued to the committer,
    /// memory updated to the newest version. The caller waits on the returned
    /// [`commit::Pending`] outside the lock; watchers and readers see the change
    /// only once it is durable.
    fn stage(
        &self,
        state: &mut State,
        mut record: StepRecord,
        previous: Option<u64>,
    ) -> Result<(Arc<StepRecord>, commit::Pending), StoreError> {
        cap_record(&mut record);
        record.revision = state.revision + 1;
        let bytes = serde_json::to_vec(&record)?;
        state.revision = record.revision;
        let id = record.id().to_string();
        let active = !record.state.is_terminal();
        let record = Arc::new(record);
        let durable = state.active.get(&id).cloned();
        state
            .inflight
            .entry(id.clone())
            .or_insert(Inflight {
                latest: record.clone(),
                durable,
            })
            .latest = record.clone();
        if active {
            state.active.insert(id.clone(), (*record).clone());
        } else {
            state.active.remove(&id);
        }
        let write = Write::Put {
            id,
            revision: record.revision,
            previous,
            active,
            bytes,
        };
        let pending = self
            .shared
            .committer
            .queue(vec![write], vec![record.clone()]);
        Ok((record, pending))
    }

    /// Applies `f` to the current attempt of a step while it is not terminal
    /// and commits the result. A late result of a cancelled, timed-out or
    /// retried attempt is dropped here.
    async fn update_if_live(
        &self,
        id: &str,
        attempt: u32,
        f: impl FnOnce(&mut StepRecord) -> bool,
    ) -> Option<StepRecord> {
        let (record, pending) = self.stage_if_live(id, attempt, f)?;
        let Some(pending) = pending else {
            return Some(record);
        };
        match pending.wait().await {
            Ok(()) => Some(record),
            Err(e) => {
                tracing::error!(step = id, error = %e, "cannot commit step change");
                None
            }
        }
    }

    /// Stages `f`'s change to a live step (same attempt, not ended): the
    /// record as changed, and its commit to wait for (None when `f` changed
    /// nothing).
    fn stage_if_live(
        &self,
        id: &str,
        attempt: u32,
        f: impl FnOnce(&mut StepRecord) -> bool,
    ) -> Option<(StepRecord, Option<commit::Pending>)> {
        let (record, pending) = {
            let mut state = self.lock();
            // Unfinished steps are in memory; the store is read only for a
            // late result of a step that already ended.
            let current = match state.latest(&self.shared.store, id) {
                Ok(Some(r)) => r,
                Ok(None) => return None,
                Err(e) => {
                    tracing::error!(step = id, error = %e, "cannot read step");
                    return None;
                }
            };
            // The "already terminal" guard: CANCELLED (or any end) is final.
            if current.attempt != attempt || current.state.is_terminal() {
                return None;
            }
            let previous = current.revision;
            let mut next = current;
            if !f(&mut next) {
                return Some((next, None));
            }
            match self.stage(&mut state, next, Some(previous)) {
                Ok(staged) => staged,
                Err(e) => {
                    tracing::error!(step = id, error = %e, "cannot commit step change");
                    return None;
                }
            }
        };
        Some(((*record).clone(), Some(pending)))
    }

    async fn update_running(&self, id: &str, attempt: u32, update: Update) {
        if matches!(update, Update::Output(..)) {
            // A restart mid-step reads outputs (the pid just spawned): the
            // task goes on only once this one is durable.
            self.update_if_live(id, attempt, |r| apply_update(id, attempt, r, update))
                .await;
            return;
        }
        let Ok(slot) = self.shared.progress_commits.clone().acquire_owned().await else {
            return;
        };
        let staged = self.stage_if_live(id, attempt, |r| apply_update(id, attempt, r, update));
        if let Some((_, Some(pending))) = staged {
            let id = id.to_string();
            tokio::spawn(async move {
                if let Err(e) = pending.wait().await {
                    tracing::error!(step = id, error = %e, "cannot commit step change");
                }
                drop(slot);
            });
        }
    }
}

/// Applies a running step's update to its record; whether anything changed.
fn apply_update(id: &str, attempt: u32, r: &mut StepRecord, update: Update) -> bool {
    match update {
        // What a step says it is doing is also RUST_LOG=obhost=debug's
        // account of it, once per change (a probe repeating the same
        // refusal every few ms says it once).
        Update::Message(m) => {
            let changed = r.message != m;
            if changed {
                tracing::debug!(step = id, attempt, detail = %m, "step progress");
            }
            r.message = m;
            changed
        }
        Update::Output(k, v) => {
            let changed = r.outputs.get(&k) != Some(&v);
            if changed {
                tracing::debug!(step = id, attempt, key = %k, value = %v, "step output");
            }
            r.outputs.insert(k, v);
            changed
        }
        Update::Stage { name, detail } => {
            // Within a stage only the detail moves: the stage keeps the
            // time it was first reached.
            let same = r.outputs.get(STAGE) == Some(&name);
            let since = match r.outputs.get(STAGE_SINCE) {
                Some(since) if same => since.clone(),
                _ => humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            };
            let message = format!("{detail} (stage {name} since {since})");
            let changed = !same || r.message != message;
            if !same {
                tracing::debug!(step = id, attempt, stage = %name, detail = %detail, "step stage");
            } else if changed {
                tracing::debug!(step = id, attempt, detail = %detail, "step progress");
            }
            r.outputs.insert(STAGE.to_string(), name);
            r.outputs.insert(STAGE_SINCE.to_string(), since);
            r.message = message;
            changed
        }
    }
}

impl StepSink for Engine {
    fn update(&self, id: &str, attempt: u32, update: Update) -> BoxFuture<()> {
        let engine = self.clone();
        let id = id.to_string();
        Box::pin(async move { engine.update_running(&id, attempt, update).await })
    }

    fn secret(&self, id: &str, key: &str) -> Option<String> {
        Engine::secret(self, id, key)
    }
}

/// Settles the engine's memory in commit order: a durable change leaves the
/// in-flight set; a refused one puts the durable version back.
struct SettleHook(std::sync::Weak<Shared>);

impl commit::Settle for SettleHook {
    fn settled(&self, records: &[Arc<StepRecord>], ok: bool) {
        let Some(shared) = self.0.upgrade() else {
            return;
        };
        let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        for r in records {
            let id = r.id();
            let Some(f) = state.inflight.get_mut(id) else {
                continue;
            };
            let newest = f.latest.revision == r.revision;
            if ok && newest {
                state.inflight.remove(id);
            } else if ok {
                f.durable = (!r.state.is_terminal()).then(|| (**r).clone());
            } else if newest && let Some(f) = state.inflight.remove(id) {
                match f.durable {
                    Some(d) => state.active.insert(id.to_string(), d),
                    None => state.active.remove(id),
                };
            }
        }
    }
}

/// Names the fields in which a repeated request differs from the stored one.
fn differences(stored: &StepSpec, new: &StepSpec) -> Vec<String> {
    let mut d = Vec::new();
    if stored.kind != new.kind {
        d.push(format!("kind (stored {:?})", stored.kind));
    }
    if stored.dag_id != new.dag_id {
        d.push(format!("dag_id (stored '{}')", stored.dag_id));
    }
    if stored.name != new.name {
        d.push(format!("name (stored '{}')", stored.name));
    }
    if stored.timeout != new.timeout {
        d.push(format!(
            "timeout (stored {})",
            humantime::format_duration(stored.timeout)
        ));
    }
    if stored.params != new.params {
        let mut keys = Vec::new();
        differing_keys(&stored.params, &new.params, "", &mut keys);
        let shown: Vec<&str> = keys.iter().take(5).map(String::as_str).collect();
        let more = keys.len().saturating_sub(shown.len());
        d.push(match (shown.is_empty(), more) {
            (true, _) => "parameters".into(),
            (false, 0) => format!("parameters ({})", shown.join(", ")),
            (false, n) => format!("parameters ({} and {n} more)", shown.join(", ")),
        });
    }
    d
}

/// Dotted paths (e.g. `observer.mysql_port`) where two parameter documents
/// differ, so a conflict names the field rather than "parameters".
fn differing_keys(a: &serde_json::Value, b: &serde_json::Value, at: &str, out: &mut Vec<String>) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                let null = Value::Null;
                differing_keys(
                    x.get(k).unwrap_or(&null),
                    y.get(k).unwrap_or(&null),
                    &path,
                    out,
                );
            }
        }
        _ if a != b => out.push(crate::bounds::quote(at)),
        _ => {}
    }
}

#[cfg(test)]
mod tests;
