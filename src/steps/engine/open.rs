//! Opening the engine: the store read and its unfinished steps loaded
//! ([`Opened`]), then the engine built over them, every step a previous run
//! left unfinished resolved, and the pruner started. Apart from the engine's
//! API because it is the one place that sets the engine going.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use super::commit::{self, Committer};
use super::{Engine, EngineConfig, PROGRESS_COMMITS, SettleHook, Shared, State};
use crate::steps::model::StepRecord;
use crate::steps::store::{Loaded, Store, StoreError};
use crate::steps::task::TaskFactory;

/// The store opened and its unfinished steps loaded, before anything runs:
/// the observer registry shares the store (its table) before the engine
/// starts resuming steps that may look for observers.
pub struct Opened {
    store: Store,
    committer: Committer,
    loaded: Loaded,
    config: EngineConfig,
}

impl Opened {
    pub async fn open(state_dir: &Path, config: EngineConfig) -> Result<Opened, StoreError> {
        let dir = state_dir.to_path_buf();
        let cache = config.cache_bytes;
        let (store, loaded) =
            tokio::task::spawn_blocking(move || Store::open_with_cache(&dir, cache))
                .await
                .map_err(|e| StoreError::CreateDir {
                    path: state_dir.to_path_buf(),
                    cause: std::io::Error::other(e),
                })??;
        // Before anything can change: a step resumed at start is reported too.
        store.keep_outbox(config.outbox);
        let committer = Committer::start(store.clone(), config.watch_buffer, loaded.revision);
        info!(
            state_file = %store.path().display(),
            steps = loaded.count,
            unfinished = loaded.active.len(),
            revision = loaded.revision,
            "state loaded"
        );
        Ok(Opened {
            store,
            committer,
            loaded,
            config,
        })
    }

    /// The store and its committer, for the observer registry's table.
    pub fn store(&self) -> (Store, Committer) {
        (self.store.clone(), self.committer.clone())
    }

    /// Resolves every step a previous run left unfinished, then serves.
    /// Drivers stop when `shutdown` fires.
    pub async fn start(
        self,
        factory: Arc<dyn TaskFactory>,
        shutdown: CancellationToken,
    ) -> Result<Engine, StoreError> {
        let Opened {
            store,
            committer,
            loaded,
            config,
        } = self;
        let active: HashMap<String, StepRecord> = loaded
            .active
            .iter()
            .map(|r| (r.id().to_string(), r.clone()))
            .collect();
        let engine = Engine {
            shared: Arc::new(Shared {
                store,
                committer,
                factory,
                state: Mutex::new(State {
                    revision: loaded.revision,
                    active,
                    ..State::default()
                }),
                shutdown,
                drivers: TaskTracker::new(),
                key_locks: Mutex::new(HashMap::new()),
                watchers: Arc::new(AtomicUsize::new(0)),
                prune: Notify::new(),
                read_ahead: Default::default(),
                progress_commits: Arc::new(tokio::sync::Semaphore::new(PROGRESS_COMMITS)),
                config,
            }),
        };
        let settle: Arc<dyn commit::Settle> = Arc::new(SettleHook(Arc::downgrade(&engine.shared)));
        engine.shared.committer.set_settle(settle);
        engine.resolve_unfinished(loaded.active).await?;
        engine.spawn_pruner();
        Ok(engine)
    }
}

impl Engine {
    /// Opens the store and starts: [`Opened::open`] then [`Opened::start`].
    pub async fn open(
        state_dir: &Path,
        factory: Arc<dyn TaskFactory>,
        config: EngineConfig,
        shutdown: CancellationToken,
    ) -> Result<Engine, StoreError> {
        Opened::open(state_dir, config)
            .await?
            .start(factory, shutdown)
            .await
    }
}
