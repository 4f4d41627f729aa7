//! The step engine: the one owner of step state.
//!
//! Every change to a step goes through [`Engine::commit`], which, holding the
//! state lock, gives the change the next global revision, writes it to the store
//! (fsync), and only then updates memory and broadcasts it. So a client can never
//! see a state that a crash could take back, and watchers see changes in revision
//! order.
//!
//! Each accepted step gets a *driver*, a tokio task that waits for the step's
//! lock key, marks it RUNNING, runs the task under the deadline and commits the
//! end state. CancelStep commits CANCELLED itself and then fires the driver's
//! token; a driver never overwrites a terminal state or another attempt's record,
//! which is what makes cancel, retry and a late-finishing task race safely.
//!
//! The task itself runs in a tokio task of its own, which the driver awaits under
//! the deadline and the cancel token and aborts when either fires. So a task that
//! never completes, ignores its token or blocks its thread cannot keep its step
//! past the deadline, and a task that panics ends its step FAILED with code
//! INTERNAL instead of taking the driver down with it (which left the step
//! RUNNING for ever).
//!
//! On shutdown drivers return without committing: the steps stay RUNNING in the
//! store and are resolved on the next start like after a crash, so a graceful
//! restart and `kill -9` follow one code path.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::{Mutex, broadcast};
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};
use tracing::{error, info, warn};

use super::model::{Secrets, StepError, StepRecord, StepSpec, StepState, cap_record, codes};
use super::store::{Store, StoreError};
use super::task::{OnRestart, StepContext, StepFailure, StepResult, StepTask, TaskFactory};

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
}

/// Records a watch reads from the state per page of its backlog, so a watch
/// from revision 0 holds at most this many copies and the state lock for only
/// one page at a time.
const WATCH_PAGE: usize = 64;
/// Index entries one page may look at before it lets go of the lock, for filters
/// that match little of a large store.
const WATCH_SCAN: usize = 4096;

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
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("step '{0}' not found")]
    NotFound(String),
    #[error(
        "step '{id}' already exists with different {differs}; repeat the original request to follow it, or use a new step_id"
    )]
    Conflict { id: String, differs: String },
    #[error("step '{id}' is {state}; only FAILED, TIMED_OUT or CANCELLED steps can be retried")]
    NotRetryable { id: String, state: StepState },
    #[error("{0}")]
    InvalidParams(String),
    #[error(
        "{active} steps are already PENDING or RUNNING, the limit set by [limits] max_active_steps = {limit}; \
         wait for some to finish (or CancelStep them), or raise max_active_steps in obhostd's config"
    )]
    TooManyActive { active: usize, limit: usize },
    #[error(
        "{limit} WatchSteps streams are already open, the limit set by [limits] max_watchers = {limit}; \
         close streams you no longer read, or raise max_watchers in obhostd's config"
    )]
    TooManyWatchers { limit: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Which steps a list or watch wants. Empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub dag_id: String,
    pub step_ids: Vec<String>,
    pub state: Option<StepState>,
}

impl Filter {
    fn matches(&self, r: &StepRecord) -> bool {
        (self.dag_id.is_empty() || r.spec.dag_id == self.dag_id)
            && (self.step_ids.is_empty() || self.step_ids.iter().any(|id| id == r.id()))
            && self.state.is_none_or(|s| s == r.state)
    }
}

/// A change a running task makes to its own record.
pub(super) enum Update {
    Message(String),
    Output(String, String),
}

/// What a driver needs to know of the attempt it runs.
struct Run {
    id: String,
    attempt: u32,
    deadline: SystemTime,
    resumed: bool,
    earlier_outputs: BTreeMap<String, String>,
}

enum Outcome {
    Done(StepResult),
    TimedOut,
    /// The task panicked (or was torn down some other way): a bug of obhostd.
    Crashed(String),
}

#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

struct Shared {
    store: Store,
    factory: Arc<dyn TaskFactory>,
    state: Mutex<State>,
    changes: broadcast::Sender<Arc<StepRecord>>,
    shutdown: CancellationToken,
    drivers: TaskTracker,
    key_locks: std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Open watches, against `config.max_watchers`.
    watchers: Arc<AtomicUsize>,
    config: EngineConfig,
}

struct State {
    revision: u64,
    steps: BTreeMap<String, StepRecord>,
    /// Each step's current revision → its id: the order watches page through.
    by_revision: BTreeMap<u64, String>,
    /// Token of the driver of each step's current attempt.
    runs: HashMap<String, CancellationToken>,
    secrets: HashMap<String, Secrets>,
}

impl State {
    fn record(&self, id: &str) -> Result<StepRecord, EngineError> {
        self.steps
            .get(id)
            .cloned()
            .ok_or_else(|| EngineError::NotFound(id.to_string()))
    }

    /// Refuses another unfinished step when the limit is reached.
    fn check_active(&self, limit: usize) -> Result<(), EngineError> {
        let active = self
            .steps
            .values()
            .filter(|r| !r.state.is_terminal())
            .count();
        if active >= limit {
            return Err(EngineError::TooManyActive { active, limit });
        }
        Ok(())
    }
}

impl Engine {
    /// Loads the store and resolves every step a previous run left unfinished,
    /// before anyone can call in. Drivers stop when `shutdown` fires.
    pub async fn open(
        state_dir: &Path,
        factory: Arc<dyn TaskFactory>,
        config: EngineConfig,
        shutdown: CancellationToken,
    ) -> Result<Engine, StoreError> {
        let dir = state_dir.to_path_buf();
        let (store, loaded) = tokio::task::spawn_blocking(move || Store::open(&dir))
            .await
            .map_err(|e| StoreError::CreateDir {
                path: state_dir.to_path_buf(),
                cause: std::io::Error::other(e),
            })??;
        let (changes, _) = broadcast::channel(config.watch_buffer.max(1));
        let steps = loaded
            .records
            .into_iter()
            .map(|r| (r.id().to_string(), r))
            .collect::<BTreeMap<_, _>>();
        let by_revision = steps
            .values()
            .map(|r| (r.revision, r.id().to_string()))
            .collect();
        info!(
            state_file = %store.path().display(),
            steps = steps.len(),
            revision = loaded.revision,
            "state loaded"
        );
        let engine = Engine {
            shared: Arc::new(Shared {
                store,
                factory,
                state: Mutex::new(State {
                    revision: loaded.revision,
                    steps,
                    by_revision,
                    runs: HashMap::new(),
                    secrets: HashMap::new(),
                }),
                changes,
                shutdown,
                drivers: TaskTracker::new(),
                key_locks: std::sync::Mutex::new(HashMap::new()),
                watchers: Arc::new(AtomicUsize::new(0)),
                config,
            }),
        };
        engine.resolve_unfinished().await?;
        engine.prune().await;
        engine.spawn_pruner();
        Ok(engine)
    }

    /// Accepts a step, or returns the existing record of the same request.
    pub async fn submit(
        &self,
        spec: StepSpec,
        secrets: Secrets,
    ) -> Result<StepRecord, EngineError> {
        let mut state = self.shared.state.lock().await;
        if let Some(existing) = state.steps.get(&spec.id) {
            let differs = differences(&existing.spec, &spec);
            if !differs.is_empty() {
                return Err(EngineError::Conflict {
                    id: spec.id,
                    differs: differs.join(", "),
                });
            }
            let existing = existing.clone();
            // A repeated request after a restart brings back secrets the daemon
            // could not keep; a different secret for a known step is not ours to
            // compare (we never stored it), so the first one held wins.
            if !secrets.is_empty() {
                state.secrets.entry(spec.id.clone()).or_insert(secrets);
            }
            return Ok(existing);
        }
        state.check_active(self.shared.config.max_active_steps)?;
        let task = self
            .shared
            .factory
            .build(spec.kind, &spec.params, &secrets)
            .map_err(EngineError::InvalidParams)?;
        let now = SystemTime::now();
        let record = StepRecord {
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
        let record = self.commit(&mut state, record).await?;
        if !secrets.is_empty() {
            state.secrets.insert(record.id().to_string(), secrets);
        }
        self.start_driver(&mut state, &record, task, false);
        Ok(record)
    }

    pub async fn get(&self, id: &str) -> Result<StepRecord, EngineError> {
        self.shared.state.lock().await.record(id)
    }

    /// One page of matching steps in id order, starting after `after_id`, and the
    /// id to continue from when there may be more.
    pub async fn list(
        &self,
        filter: &Filter,
        page_size: usize,
        after_id: Option<&str>,
    ) -> (Vec<StepRecord>, Option<String>) {
        use std::ops::Bound;
        let state = self.shared.state.lock().await;
        let start = match after_id {
            Some(id) => Bound::Excluded(id.to_string()),
            None => Bound::Unbounded,
        };
        let mut page: Vec<StepRecord> = state
            .steps
            .range((start, Bound::Unbounded))
            .map(|(_, r)| r)
            .filter(|r| filter.matches(r))
            .take(page_size + 1)
            .cloned()
            .collect();
        let next = if page.len() > page_size {
            page.truncate(page_size);
            page.last().map(|r| r.id().to_string())
        } else {
            None
        };
        (page, next)
    }

    pub async fn cancel(&self, id: &str) -> Result<StepRecord, EngineError> {
        let mut state = self.shared.state.lock().await;
        let record = state.record(id)?;
        if record.state.is_terminal() {
            return Ok(record);
        }
        let mut next = record;
        next.state = StepState::Cancelled;
        next.finished_at = Some(SystemTime::now());
        next.message = "cancelled by CancelStep".into();
        next.error = Some(StepError::new(
            codes::CANCELLED,
            format!("step '{id}' was cancelled by CancelStep; RetryStep '{id}' runs it again"),
        ));
        let committed = self.commit(&mut state, next).await?;
        if let Some(token) = state.runs.remove(id) {
            token.cancel();
        }
        info!(step = id, "step cancelled");
        Ok(committed)
    }

    pub async fn retry(&self, id: &str) -> Result<StepRecord, EngineError> {
        let mut state = self.shared.state.lock().await;
        let record = state.record(id)?;
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
        let next = StepRecord {
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
        let committed = self.commit(&mut state, next).await?;
        info!(step = id, attempt = committed.attempt, "step retried");
        self.start_driver(&mut state, &committed, task, false);
        Ok(committed)
    }

    /// Starts a watch: the records matching `filter` changed after `after_revision`
    /// (oldest first), then every matching change as it is committed. The backlog
    /// is read from the state a page at a time as the watcher consumes it, never
    /// copied whole. Refused beyond `max_watchers` open watches.
    pub fn watch(&self, filter: Filter, after_revision: u64) -> Result<Watch, EngineError> {
        let limit = self.shared.config.max_watchers;
        let slot = self
            .shared
            .watchers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .map_err(|_| EngineError::TooManyWatchers { limit })?;
        debug_assert!(slot < limit);
        Ok(Watch {
            engine: self.clone(),
            page: VecDeque::new(),
            cursor: after_revision,
            live: None,
            filter,
            delivered: after_revision,
            shutdown: self.shared.shutdown.clone(),
            _slot: WatchSlot(self.shared.watchers.clone()),
        })
    }

    /// Waits (bounded) for drivers to drop their tasks after shutdown fired.
    pub async fn drain(&self, bound: Duration) -> bool {
        self.shared.drivers.close();
        tokio::time::timeout(bound, self.shared.drivers.wait())
            .await
            .is_ok()
    }

    /// A secret of a step, from memory (never stored). A repeated request for the
    /// same step can supply it after a restart, so tasks ask each time.
    pub(super) async fn secret(&self, id: &str, key: &str) -> Option<String> {
        let state = self.shared.state.lock().await;
        state.secrets.get(id)?.get(key).map(str::to_string)
    }

    pub async fn revision(&self) -> u64 {
        self.shared.state.lock().await.revision
    }

    // ---- the commit path -------------------------------------------------------

    /// The only way a record changes: next revision, store, memory, broadcast.
    async fn commit(
        &self,
        state: &mut State,
        mut record: StepRecord,
    ) -> Result<StepRecord, StoreError> {
        cap_record(&mut record);
        record.revision = state.revision + 1;
        let store = self.shared.store.clone();
        let to_store = record.clone();
        tokio::task::spawn_blocking(move || store.put(&to_store))
            .await
            .map_err(|e| StoreError::Encode(serde_json::Error::io(std::io::Error::other(e))))??;
        state.revision = record.revision;
        if let Some(old) = state.steps.insert(record.id().to_string(), record.clone()) {
            state.by_revision.remove(&old.revision);
        }
        state
            .by_revision
            .insert(record.revision, record.id().to_string());
        // No receivers is fine; a lagging one finds out on its next receive.
        let _ = self.shared.changes.send(Arc::new(record.clone()));
        Ok(record)
    }

    /// Applies `f` to the current attempt of a step while it is not terminal.
    async fn update_if_live(
        &self,
        id: &str,
        attempt: u32,
        f: impl FnOnce(&mut StepRecord) -> bool,
    ) -> Option<StepRecord> {
        let mut state = self.shared.state.lock().await;
        let current = state.steps.get(id)?;
        if current.attempt != attempt || current.state.is_terminal() {
            return None;
        }
        let mut next = current.clone();
        if !f(&mut next) {
            return Some(next);
        }
        match self.commit(&mut state, next).await {
            Ok(r) => Some(r),
            Err(e) => {
                error!(step = id, error = %e, "cannot commit step change");
                None
            }
        }
    }

    pub(super) async fn update_running(&self, id: &str, attempt: u32, update: Update) {
        self.update_if_live(id, attempt, |r| match update {
            Update::Message(m) => {
                let changed = r.message != m;
                r.message = m;
                changed
            }
            Update::Output(k, v) => r.outputs.insert(k, v.clone()).as_ref() != Some(&v),
        })
        .await;
    }

    // ---- drivers ---------------------------------------------------------------

    fn start_driver(
        &self,
        state: &mut State,
        record: &StepRecord,
        task: Box<dyn StepTask>,
        resumed: bool,
    ) {
        let token = self.shared.shutdown.child_token();
        state.runs.insert(record.id().to_string(), token.clone());
        let engine = self.clone();
        let run = Run {
            id: record.id().to_string(),
            attempt: record.attempt,
            deadline: record.deadline,
            resumed,
            earlier_outputs: record.outputs.clone(),
        };
        self.shared.drivers.spawn(async move {
            engine.drive(run, task, token).await;
        });
    }

    async fn drive(self, run: Run, task: Box<dyn StepTask>, token: CancellationToken) {
        let Run {
            id,
            attempt,
            deadline,
            resumed,
            earlier_outputs,
        } = run;
        let remaining = deadline
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        let at = tokio::time::Instant::now() + remaining;
        let ctx = StepContext {
            engine: self.clone(),
            id: id.clone(),
            attempt,
            deadline,
            resumed,
            cancel: token.clone(),
            earlier_outputs,
        };
        let engine = self.clone();
        let tasks = self.shared.drivers.clone();
        let work = async move {
            let turn = match task.lock_key() {
                Some(key) => Some(engine.take_turn(&key, &ctx).await),
                None => None,
            };
            if !engine.mark_running(&ctx).await {
                return None;
            }
            // The task gets a tokio task of its own: the deadline below is then
            // enforced here, outside it, whatever the task does, and its panic
            // comes back as a JoinError instead of unwinding through the driver.
            // The key's turn goes with it, so the next step on the key starts
            // only once this task is really gone. Dropping the handle (deadline,
            // cancel, shutdown) aborts the task.
            let handle = AbortOnDropHandle::new(tasks.spawn(async move {
                let _turn = turn;
                task.run(ctx).await
            }));
            Some(match handle.await {
                Ok(result) => Outcome::Done(result),
                Err(e) => Outcome::Crashed(match e.try_into_panic() {
                    Ok(payload) => panic_text(payload.as_ref()),
                    Err(e) => e.to_string(),
                }),
            })
        };
        let outcome = tokio::select! {
            biased;
            // CancelStep has committed CANCELLED, or the daemon is stopping and
            // the next start resolves this step: either way, nothing to commit.
            () = token.cancelled() => return,
            r = tokio::time::timeout_at(at, work) => match r {
                Ok(Some(outcome)) => outcome,
                Ok(None) => return,
                Err(_) => {
                    // Tasks that hold something get told; the abort follows.
                    token.cancel();
                    Outcome::TimedOut
                }
            },
        };
        self.finish(&id, attempt, outcome).await;
        let mut state = self.shared.state.lock().await;
        if state.steps.get(&id).is_some_and(|r| r.attempt == attempt) {
            state.runs.remove(&id);
        }
        let over = state.steps.len() > self.shared.config.retention.max_steps;
        drop(state);
        if over {
            self.prune().await;
        }
    }

    /// Serialises steps that share a lock key (e.g. one observer home_path).
    async fn take_turn(&self, key: &str, ctx: &StepContext) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self
                .shared
                .key_locks
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            locks.entry(key.to_string()).or_default().clone()
        };
        match lock.clone().try_lock_owned() {
            Ok(guard) => guard,
            Err(_) => {
                ctx.progress(format!("waiting for another step on {key} to finish"))
                    .await;
                lock.lock_owned().await
            }
        }
    }

    async fn mark_running(&self, ctx: &StepContext) -> bool {
        let resumed = ctx.resumed;
        self.update_if_live(&ctx.id, ctx.attempt, |r| {
            r.state = StepState::Running;
            if resumed {
                r.message = "resumed after obhostd restarted".into();
            } else {
                r.started_at = Some(SystemTime::now());
                r.message = "running".into();
            }
            true
        })
        .await
        .is_some()
    }

    async fn finish(&self, id: &str, attempt: u32, outcome: Outcome) {
        let done = self
            .update_if_live(id, attempt, |r| {
                r.finished_at = Some(SystemTime::now());
                match outcome {
                    Outcome::Done(Ok(success)) => {
                        r.state = StepState::Succeeded;
                        r.message = if success.message.is_empty() {
                            "succeeded".into()
                        } else {
                            success.message
                        };
                        r.outputs.extend(success.outputs);
                        r.checks = success.checks;
                    }
                    Outcome::Done(Err(StepFailure {
                        error,
                        outputs,
                        checks,
                    })) => {
                        r.state = StepState::Failed;
                        r.message = error.message.clone();
                        r.error = Some(error);
                        r.outputs.extend(outputs);
                        r.checks = checks;
                    }
                    Outcome::Crashed(panic) => {
                        let panic = super::model::truncated(&panic, 1024);
                        error!(step = id, attempt, panic = %panic, "step task panicked: a bug in obhostd");
                        let message = format!(
                            "obhostd hit a bug while running this step (its task panicked); \
                             the daemon's log has the details (journalctl -u obhostd). \
                             Check the host, then RetryStep '{id}'"
                        );
                        r.state = StepState::Failed;
                        r.error = Some(StepError::new(codes::INTERNAL, message.clone()));
                        r.message = message;
                    }
                    Outcome::TimedOut => {
                        let timeout = humantime::format_duration(r.spec.timeout);
                        let message = format!(
                            "step did not finish within its timeout of {timeout}; last: {}. \
                             Give a longer meta.timeout, or fix what it waited for and RetryStep",
                            r.message
                        );
                        r.state = StepState::TimedOut;
                        r.error = Some(StepError::new(codes::DEADLINE_EXCEEDED, message.clone()));
                        r.message = message;
                    }
                }
                true
            })
            .await;
        if let Some(r) = done {
            info!(step = id, attempt, state = %r.state, message = %r.message, "step finished");
        }
    }

    /// Decides the fate of every step a previous run left PENDING or RUNNING.
    async fn resolve_unfinished(&self) -> Result<(), StoreError> {
        let mut state = self.shared.state.lock().await;
        let mut unfinished: Vec<StepRecord> = state
            .steps
            .values()
            .filter(|r| !r.state.is_terminal())
            .cloned()
            .collect();
        unfinished.sort_by_key(|r| r.revision);
        let now = SystemTime::now();
        for record in unfinished {
            let id = record.id().to_string();
            let built = self.shared.factory.build(
                record.spec.kind,
                &record.spec.params,
                &Secrets::default(),
            );
            let mut next = record.clone();
            next.finished_at = Some(now);
            match built {
                Err(why) => {
                    next.state = StepState::Failed;
                    next.error = Some(StepError::new(
                        codes::INTERRUPTED,
                        format!(
                            "obhostd restarted and cannot run this step again ({why}); RetryStep '{id}' with a daemon that knows it"
                        ),
                    ));
                }
                Ok(_) if record.deadline <= now => {
                    next.state = StepState::TimedOut;
                    next.error = Some(StepError::new(
                        codes::DEADLINE_EXCEEDED,
                        format!(
                            "the deadline passed while obhostd was not running; last: {}. RetryStep '{id}' runs it again",
                            record.message
                        ),
                    ));
                }
                Ok(task) if record.state == StepState::Pending => {
                    info!(step = %id, "starting step accepted before restart");
                    self.start_driver(&mut state, &record, task, false);
                    continue;
                }
                Ok(task) => match task.on_restart() {
                    OnRestart::Resume => {
                        info!(step = %id, "resuming step after restart");
                        self.start_driver(&mut state, &record, task, true);
                        continue;
                    }
                    OnRestart::Interrupt => {
                        next.state = StepState::Failed;
                        next.error = Some(StepError::new(
                            codes::INTERRUPTED,
                            format!(
                                "obhostd stopped while this step was running, so its outcome is unknown; \
                                 check the host, then RetryStep '{id}' to run it again"
                            ),
                        ));
                    }
                },
            }
            if let Some(e) = &next.error {
                next.message = e.message.clone();
            }
            warn!(step = %id, state = %next.state, "step left unfinished by the previous run resolved");
            self.commit(&mut state, next).await?;
        }
        Ok(())
    }

    // ---- retention -------------------------------------------------------------

    fn spawn_pruner(&self) {
        let engine = self.clone();
        let every = self.shared.config.retention.interval;
        let shutdown = self.shared.shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(every) => engine.prune().await,
                }
            }
        });
    }

    async fn prune(&self) {
        let retention = &self.shared.config.retention;
        let mut state = self.shared.state.lock().await;
        let now = SystemTime::now();
        let mut terminal: Vec<(SystemTime, String)> = state
            .steps
            .values()
            .filter(|r| r.state.is_terminal())
            .map(|r| (r.finished_at.unwrap_or(r.created_at), r.id().to_string()))
            .collect();
        terminal.sort();
        let excess = state.steps.len().saturating_sub(retention.max_steps);
        let doomed: Vec<String> = terminal
            .into_iter()
            .enumerate()
            .filter(|(i, (finished, _))| {
                *i < excess || now.duration_since(*finished).unwrap_or_default() > retention.max_age
            })
            .map(|(_, (_, id))| id)
            .collect();
        if doomed.is_empty() {
            return;
        }
        let store = self.shared.store.clone();
        let ids = doomed.clone();
        match tokio::task::spawn_blocking(move || store.delete(&ids)).await {
            Ok(Ok(())) => {
                for id in &doomed {
                    if let Some(r) = state.steps.remove(id) {
                        state.by_revision.remove(&r.revision);
                    }
                    state.secrets.remove(id);
                }
                info!(
                    pruned = doomed.len(),
                    kept = state.steps.len(),
                    "old steps pruned"
                );
            }
            Ok(Err(e)) => error!(error = %e, "pruning old steps failed"),
            Err(e) => error!(error = %e, "pruning old steps failed"),
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
        d.push("parameters".into());
    }
    d
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(
        "this watch fell behind and {missed} changes were dropped; watch again with after_revision={resume_after} to continue without a gap"
    )]
    FellBehind { missed: u64, resume_after: u64 },
    #[error(
        "obhostd is shutting down; reconnect and watch again with after_revision={resume_after}"
    )]
    ShuttingDown { resume_after: u64 },
}

/// Gives back a watch's place under `max_watchers` when the watch is dropped.
struct WatchSlot(Arc<AtomicUsize>);

impl Drop for WatchSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One subscriber's view of the change feed: first its backlog, paged out of the
/// state in revision order, then the live broadcast.
pub struct Watch {
    engine: Engine,
    /// The current page of the backlog.
    page: VecDeque<StepRecord>,
    /// Last revision of the index the backlog has looked at.
    cursor: u64,
    /// Subscribed once the backlog is exhausted, under the state lock, so the
    /// last page and the live feed meet exactly: no gap, no duplicate.
    live: Option<broadcast::Receiver<Arc<StepRecord>>>,
    filter: Filter,
    /// Revision of the last record handed out (or the caller's after_revision).
    delivered: u64,
    shutdown: CancellationToken,
    _slot: WatchSlot,
}

impl Watch {
    pub async fn next(&mut self) -> Result<StepRecord, WatchError> {
        loop {
            if let Some(r) = self.page.pop_front() {
                self.delivered = r.revision;
                return Ok(r);
            }
            if self.shutdown.is_cancelled() {
                return Err(WatchError::ShuttingDown {
                    resume_after: self.delivered,
                });
            }
            let Some(live) = &mut self.live else {
                self.next_page().await;
                continue;
            };
            let received = tokio::select! {
                () = self.shutdown.cancelled() => {
                    return Err(WatchError::ShuttingDown { resume_after: self.delivered });
                }
                r = live.recv() => r,
            };
            match received {
                Ok(r) if r.revision > self.delivered && self.filter.matches(&r) => {
                    self.delivered = r.revision;
                    return Ok((*r).clone());
                }
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    return Err(WatchError::FellBehind {
                        missed,
                        resume_after: self.delivered,
                    });
                }
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(WatchError::ShuttingDown {
                        resume_after: self.delivered,
                    });
                }
            }
        }
    }

    /// Reads the next page of the backlog: records whose current revision is past
    /// the cursor. A record changed after it was paged has a new revision past
    /// the cursor, so it comes again, later and in order; one changed before it
    /// was reached comes once, at its new revision. When the index is exhausted,
    /// switches to the live feed while still holding the lock.
    async fn next_page(&mut self) {
        use std::ops::Bound;
        let state = self.engine.shared.state.lock().await;
        let mut exhausted = true;
        for (scanned, (&revision, id)) in state
            .by_revision
            .range((Bound::Excluded(self.cursor), Bound::Unbounded))
            .enumerate()
        {
            if scanned == WATCH_SCAN || self.page.len() == WATCH_PAGE {
                exhausted = false;
                break;
            }
            self.cursor = revision;
            if let Some(r) = state.steps.get(id)
                && self.filter.matches(r)
            {
                self.page.push_back(r.clone());
            }
        }
        if exhausted {
            self.live = Some(self.engine.shared.changes.subscribe());
        }
    }
}

/// A panic's message, as far as it is text.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::model::StepKind;
    use crate::steps::store::Store;
    use crate::steps::task::{BoxFuture, StepSuccess};

    struct Quick;
    impl StepTask for Quick {
        fn run(self: Box<Self>, _ctx: StepContext) -> BoxFuture<StepResult> {
            Box::pin(async { Ok(StepSuccess::default()) })
        }
    }
    struct QuickFactory;
    impl TaskFactory for QuickFactory {
        fn build(
            &self,
            _: StepKind,
            _: &serde_json::Value,
            _: &Secrets,
        ) -> Result<Box<dyn StepTask>, String> {
            Ok(Box::new(Quick))
        }
    }

    fn spec(id: &str) -> StepSpec {
        StepSpec {
            id: id.into(),
            dag_id: String::new(),
            kind: StepKind::Test,
            name: "t".into(),
            timeout: Duration::from_secs(30),
            params: serde_json::Value::Null,
        }
    }

    /// `n` FAILED records with revisions 1..=n, written in one transaction.
    fn seed(dir: &Path, n: u64) {
        let now = SystemTime::now();
        let records: Vec<StepRecord> = (1..=n)
            .map(|i| StepRecord {
                spec: spec(&format!("seed-{i:05}")),
                state: StepState::Failed,
                attempt: 1,
                revision: i,
                created_at: now,
                started_at: None,
                finished_at: Some(now),
                deadline: now,
                message: "seeded".into(),
                error: None,
                outputs: BTreeMap::new(),
                checks: Vec::new(),
            })
            .collect();
        let (store, _) = Store::open(dir).unwrap();
        store.put_all(&records).unwrap();
    }

    async fn open(dir: &Path) -> Engine {
        Engine::open(
            dir,
            Arc::new(QuickFactory),
            EngineConfig::default(),
            CancellationToken::new(),
        )
        .await
        .unwrap()
    }

    async fn next(w: &mut Watch) -> StepRecord {
        tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("watch went quiet")
            .expect("watch failed")
    }

    /// Changes committed while the backlog is paged come exactly once, in
    /// revision order: a record changed after it was paged comes again at its
    /// new revision, one changed before it was reached comes only at its new
    /// one, and the switch to the live feed loses and repeats nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn backlog_pages_meet_the_live_feed_without_gap_or_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        seed(dir.path(), 300);
        let engine = open(dir.path()).await;
        let mut w = engine.watch(Filter::default(), 0).unwrap();
        let mut seen: Vec<(String, u64)> = Vec::new();
        for _ in 0..100 {
            let r = next(&mut w).await;
            seen.push((r.id().to_string(), r.revision));
        }
        assert_eq!(
            w.page.len() + seen.len(),
            2 * WATCH_PAGE,
            "holds one page at a time, not the store"
        );
        // One already delivered, one not reached yet, and a new step.
        engine.retry("seed-00010").await.unwrap();
        engine.retry("seed-00250").await.unwrap();
        engine
            .submit(spec("new-1"), Secrets::default())
            .await
            .unwrap();
        let done = |e: &Engine| {
            let e = e.clone();
            async move {
                let s = e.shared.state.lock().await;
                ["seed-00010", "seed-00250", "new-1"]
                    .iter()
                    .all(|id| s.steps[*id].state == StepState::Succeeded)
            }
        };
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        while !done(&engine).await {
            assert!(tokio::time::Instant::now() < until, "steps did not finish");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let last = engine.revision().await;
        while seen.last().is_none_or(|(_, rev)| *rev < last) {
            let r = next(&mut w).await;
            seen.push((r.id().to_string(), r.revision));
        }
        assert!(
            seen.windows(2).all(|p| p[0].1 < p[1].1),
            "revisions must strictly grow"
        );
        let count = |id: &str| seen.iter().filter(|(i, _)| i == id).count();
        assert_eq!(count("seed-00001"), 1);
        assert_eq!(count("seed-00300"), 1);
        // Delivered at 10, then once more at its latest revision: the backlog
        // is the current records, so versions it moved past are not replayed.
        assert_eq!(count("seed-00010"), 2, "{seen:?}");
        // Its seeded revision was never delivered: it had moved on before the
        // backlog reached it.
        assert!(!seen.contains(&("seed-00250".to_string(), 250)), "{seen:?}");
        assert!(count("seed-00250") >= 1);
        assert!(count("new-1") >= 1);
        // And the latest revision of every record was delivered.
        {
            let state = engine.shared.state.lock().await;
            for r in state.steps.values() {
                assert!(
                    seen.contains(&(r.id().to_string(), r.revision)),
                    "{} at {} missing",
                    r.id(),
                    r.revision
                );
            }
        }
        // Now live: every change of a new step arrives, in order.
        assert!(w.live.is_some(), "the backlog is exhausted");
        engine
            .submit(spec("new-2"), Secrets::default())
            .await
            .unwrap();
        let mut states = Vec::new();
        while states.last() != Some(&StepState::Succeeded) {
            let r = next(&mut w).await;
            assert_eq!(r.id(), "new-2");
            assert!(r.revision > seen.last().unwrap().1);
            seen.push((r.id().to_string(), r.revision));
            states.push(r.state);
        }
        assert_eq!(
            states,
            [StepState::Pending, StepState::Running, StepState::Succeeded]
        );
    }

    #[tokio::test]
    async fn watches_are_capped_and_give_back_their_slot_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(
            dir.path(),
            Arc::new(QuickFactory),
            EngineConfig {
                max_watchers: 2,
                ..EngineConfig::default()
            },
            CancellationToken::new(),
        )
        .await
        .unwrap();
        let a = engine.watch(Filter::default(), 0).unwrap();
        let _b = engine.watch(Filter::default(), 0).unwrap();
        let e = engine
            .watch(Filter::default(), 0)
            .err()
            .expect("third watch refused");
        assert!(e.to_string().contains("max_watchers = 2"), "{e}");
        drop(a);
        engine.watch(Filter::default(), 0).expect("slot given back");
    }
}
