//! Retention, off the commit path: a task of its own wakes every
//! `prune_interval` (and when a step ends), reads the oldest finished records
//! from a snapshot and forgets them in batches, each one transaction queued to
//! the committer like any change. Running steps are never pruned.

use tracing::{error, info};

use super::Engine;
use crate::steps::store::{StoreError, Write};

/// Records forgotten per transaction.
const BATCH: usize = 1024;

impl Engine {
    pub(super) fn spawn_pruner(&self) {
        let engine = self.clone();
        let every = self.shared.config.retention.interval;
        let shutdown = self.shared.shutdown.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = engine.prune().await {
                    error!(error = %e, "pruning old steps failed");
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                    () = engine.shared.prune.notified() => {}
                }
            }
        });
    }

    /// Forgets what retention says to, one batch at a time.
    pub(super) async fn prune(&self) -> Result<usize, StoreError> {
        let retention = self.shared.config.retention.clone();
        let mut pruned = 0;
        loop {
            let store = self.shared.store.clone();
            let max = retention.max_steps as u64;
            let max_age = retention.max_age;
            let doomed = tokio::task::spawn_blocking(move || {
                let excess = store.count()?.saturating_sub(max);
                store.prune_candidates(excess, max_age, BATCH)
            })
            .await
            .map_err(|e| StoreError::Internal {
                what: "a retention pass",
                cause: e.to_string(),
            })??;
            if doomed.is_empty() {
                break;
            }
            let full = doomed.len() == BATCH;
            let writes: Vec<Write> = {
                let state = self.lock();
                doomed
                    .iter()
                    .filter(|(id, _)| {
                        !state.active.contains_key(id) && !state.inflight.contains_key(id)
                    })
                    .map(|(id, revision)| Write::Delete {
                        id: id.clone(),
                        revision: *revision,
                    })
                    .collect()
            };
            let n = writes.len();
            let ids: Vec<String> = writes
                .iter()
                .filter_map(|w| match w {
                    Write::Delete { id, .. } => Some(id.clone()),
                    _ => None,
                })
                .collect();
            self.shared
                .committer
                .queue(writes, Vec::new())
                .wait()
                .await?;
            {
                let mut state = self.lock();
                for id in &ids {
                    state.secrets.remove(id);
                }
            }
            pruned += n;
            if !full || n == 0 {
                break;
            }
        }
        if pruned > 0 {
            info!(pruned, "old steps pruned");
        }
        Ok(pruned)
    }
}
