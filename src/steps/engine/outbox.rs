//! What the reporter ([`crate::report`]) needs of the engine: the changes not
//! yet acknowledged, a wake-up when there are new ones, and a way to record an
//! acknowledgement. The outbox itself lives in the store and is filled by the
//! same commits that make a change durable, so a change is never reported
//! before it is durable, and never lost by a crash after it is.

use std::sync::Arc;

use tokio::sync::broadcast;

use super::{Committer, Engine};
use crate::steps::model::StepRecord;
use crate::steps::store::{Outbox, Store, StoreError, Write};

#[derive(Clone)]
pub struct Outgoing {
    store: Store,
    committer: Committer,
}

impl Engine {
    pub fn outgoing(&self) -> Outgoing {
        Outgoing {
            store: self.shared.store.clone(),
            committer: self.shared.committer.clone(),
        }
    }
}

impl Outgoing {
    /// Every durable change as it is committed: a reporter's wake-up call
    /// (what to send is read from the outbox, which misses nothing).
    pub fn changes(&self) -> broadcast::Receiver<Arc<StepRecord>> {
        self.committer.subscribe()
    }

    /// Up to `max` unacknowledged changes after revision `after` (what
    /// batches in flight carry), oldest first.
    pub async fn read(&self, after: u64, max: usize) -> Result<Outbox, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.outbox_after(after, max))
            .await
            .map_err(|e| StoreError::Internal {
                what: "an outbox read",
                cause: e.to_string(),
            })?
    }

    /// Records (durably) that the orchestrator has every change up to
    /// `through` and was told of `announced` dropped ones. Queued at once, in
    /// the order of the calls; the future says when it is on disk (the
    /// reporter does not wait: a lost acknowledgement only means a resend).
    pub fn ack(
        &self,
        through: u64,
        announced: u64,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static {
        self.committer
            .queue(vec![Write::Ack { through, announced }], Vec::new())
            .wait()
    }

    /// The highest revision committed: how far behind the orchestrator is.
    pub fn durable_revision(&self) -> u64 {
        self.committer.durable_revision()
    }
}
