//! The commit path's durable half: one thread that owns every write to the
//! store.
//!
//! Changes are queued (under the engine's state lock, so queue order is
//! revision order); the thread takes everything queued at that moment and
//! writes it in one transaction, one fsync for all. Only after that commit does
//! it settle the engine's in-memory bookkeeping, broadcast the records to
//! watchers and answer the callers, so a client never sees a change a crash
//! could take back, and watchers see changes in revision order. Nobody holds a
//! lock while the fsync runs: readers use redb snapshots.
//!
//! A failed commit (disk full, I/O error) fails that batch and everything queued
//! behind it, turns health NOT_SERVING and makes the thread reopen the store
//! with backoff until a write succeeds again; then health is SERVING again.
//! Nothing committed before is lost: redb's last good commit stays intact.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{broadcast, oneshot, watch};
use tracing::{error, info, warn};

use crate::steps::model::StepRecord;
use crate::steps::store::{Store, StoreError, Write};

/// Told how long each commit of the store took (the daemon points it at the
/// metrics). A static set once, because the committer thread starts before
/// anything that would hold a handle to it, and the engine knows nothing of
/// what the figure is for.
static COMMIT_HOOK: std::sync::OnceLock<fn(std::time::Duration)> = std::sync::OnceLock::new();

/// Sets the commit hook; the first call wins.
pub fn on_commit(hook: fn(std::time::Duration)) {
    let _ = COMMIT_HOOK.set(hook);
}

/// Changes one transaction takes at most; beyond it the rest waits one fsync.
/// A batch is published at once, so the live feed holds this many on top of
/// `watch_buffer`: a watcher that keeps reading is never cut off by a burst.
const MAX_BATCH: usize = 256;
const FIRST_RETRY: Duration = Duration::from_millis(20);
const MAX_RETRY: Duration = Duration::from_secs(1);

/// What the engine does, on the committer's thread and in commit order, once
/// a change is durable (`ok`) or refused.
pub(crate) trait Settle: Send + Sync + 'static {
    fn settled(&self, records: &[Arc<StepRecord>], ok: bool);
}

struct Job {
    writes: Vec<Write>,
    publish: Vec<Arc<StepRecord>>,
    reply: Option<oneshot::Sender<Result<(), StoreError>>>,
}

/// A handle to the committer thread; the thread ends when the last is dropped.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Job>,
    changes: broadcast::Sender<Arc<StepRecord>>,
    healthy: watch::Receiver<bool>,
    settle: Arc<OnceLock<Arc<dyn Settle>>>,
    durable: Arc<AtomicU64>,
}

/// Waits for one queued change.
pub(crate) struct Pending(oneshot::Receiver<Result<(), StoreError>>);

impl Pending {
    pub async fn wait(self) -> Result<(), StoreError> {
        self.0.await.unwrap_or_else(|_| {
            Err(StoreError::Internal {
                what: "the state store's committer",
                cause: "it stopped: obhostd is shutting down".into(),
            })
        })
    }
}

impl Committer {
    pub fn start(store: Store, watch_buffer: usize, revision: u64) -> Committer {
        let (tx, rx) = mpsc::channel();
        let (changes, _) = broadcast::channel(watch_buffer.max(1) + MAX_BATCH);
        let (health_tx, healthy) = watch::channel(true);
        let settle: Arc<OnceLock<Arc<dyn Settle>>> = Arc::new(OnceLock::new());
        let durable = Arc::new(AtomicU64::new(revision));
        let thread = Thread {
            store,
            rx,
            changes: changes.clone(),
            health: health_tx,
            settle: settle.clone(),
            durable: durable.clone(),
        };
        std::thread::Builder::new()
            .name("obhostd-commit".into())
            .spawn(move || thread.run())
            .expect("cannot start the committer thread");
        Committer {
            tx,
            changes,
            healthy,
            settle,
            durable,
        }
    }

    pub(crate) fn set_settle(&self, settle: Arc<dyn Settle>) {
        let _ = self.settle.set(settle);
    }

    /// Queues writes (never blocks); `publish` goes to watchers once durable.
    pub(crate) fn queue(&self, writes: Vec<Write>, publish: Vec<Arc<StepRecord>>) -> Pending {
        let (reply, rx) = oneshot::channel();
        // The thread only ends when every handle is gone, so this cannot fail
        // while `self` exists; if it did, the dropped reply reports it.
        let _ = self.tx.send(Job {
            writes,
            publish,
            reply: Some(reply),
        });
        Pending(rx)
    }

    /// Waits until everything queued before is committed (or refused).
    pub async fn flush(&self) {
        let _ = self.queue(Vec::new(), Vec::new()).wait().await;
    }

    /// Queues writes nobody waits for (the observer registry's).
    pub fn queue_detached(&self, writes: Vec<Write>) {
        let _ = self.tx.send(Job {
            writes,
            publish: Vec::new(),
            reply: None,
        });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<StepRecord>> {
        self.changes.subscribe()
    }

    /// True while writes succeed; false from a failed commit until the store
    /// has been reopened and written again.
    pub fn healthy(&self) -> watch::Receiver<bool> {
        self.healthy.clone()
    }

    /// The highest revision committed.
    pub fn durable_revision(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }
}

struct Thread {
    store: Store,
    rx: mpsc::Receiver<Job>,
    changes: broadcast::Sender<Arc<StepRecord>>,
    health: watch::Sender<bool>,
    settle: Arc<OnceLock<Arc<dyn Settle>>>,
    durable: Arc<AtomicU64>,
}

impl Thread {
    fn run(self) {
        let mut failure: Option<StoreError> = None;
        let mut retry = FIRST_RETRY;
        loop {
            let first = match &failure {
                None => match self.rx.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                },
                // Everything queued behind a failure fails too; only with the
                // queue empty is the store reopened.
                Some(_) => match self.rx.recv_timeout(retry) {
                    Ok(job) => job,
                    Err(RecvTimeoutError::Timeout) => {
                        match self.store.reopen() {
                            Ok(()) => {
                                info!(file = %self.store.path().display(), "state store writable again; accepting changes");
                                failure = None;
                                retry = FIRST_RETRY;
                                self.health.send_replace(true);
                            }
                            Err(e) => {
                                warn!(error = %e, retry_in = ?retry, "state store still refuses writes");
                                retry = (retry * 2).min(MAX_RETRY);
                            }
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                },
            };
            let mut jobs = vec![first];
            while jobs.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            let result = match &failure {
                Some(e) => Err(e.duplicate()),
                None => self.commit(&mut jobs),
            };
            match result {
                Ok(()) => self.answer(jobs, None),
                Err(e) => {
                    if failure.is_none() {
                        error!(error = %e, "state store commit failed; refusing changes until a write succeeds again");
                        self.health.send_replace(false);
                    }
                    self.answer(jobs, Some(&e));
                    failure = Some(e);
                }
            }
        }
    }

    fn commit(&self, jobs: &mut [Job]) -> Result<(), StoreError> {
        let mut writes = Vec::new();
        for job in jobs.iter_mut() {
            writes.append(&mut job.writes);
        }
        let start = std::time::Instant::now();
        let applied = self.store.apply(&writes);
        if let Some(hook) = COMMIT_HOOK.get() {
            hook(start.elapsed());
        }
        applied
    }

    fn answer(&self, jobs: Vec<Job>, failed: Option<&StoreError>) {
        let settle = self.settle.get();
        for job in jobs {
            if let Some(settle) = settle
                && !job.publish.is_empty()
            {
                settle.settled(&job.publish, failed.is_none());
            }
            if failed.is_none() {
                for r in &job.publish {
                    self.durable.fetch_max(r.revision, Ordering::AcqRel);
                    // No receivers is fine; a lagging one finds out on its
                    // next receive.
                    let _ = self.changes.send(r.clone());
                }
            }
            if let Some(reply) = job.reply {
                let _ = reply.send(match failed {
                    None => Ok(()),
                    Some(e) => Err(e.duplicate()),
                });
            }
        }
    }
}
