//! A subscriber's view of the change feed: first its backlog, paged out of a
//! store snapshot in revision order, then the live broadcast of commits.
//!
//! The backlog is read a page at a time as the watcher consumes it, so a watch
//! from revision 0 costs one page of memory however large the store. When a
//! page reaches the end of the index, the watch subscribes to the live feed and
//! then reads the index once more from a new snapshot: anything committed
//! before the subscription is in that snapshot, anything after comes live, and
//! revisions already delivered are skipped, so there is no gap and no
//! duplicate.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::commit::Committer;
use crate::steps::model::{Filter, StepRecord};
use crate::steps::store::{Store, StoreError};

/// Records a watch holds per page of its backlog.
pub(crate) const WATCH_PAGE: usize = 64;
/// Index entries one page may look at, for filters that match little.
const WATCH_SCAN: usize = 4096;

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
    #[error(
        "obhostd cannot read its state store ({cause}); watch again with after_revision={resume_after} in a moment"
    )]
    Store { cause: String, resume_after: u64 },
}

/// Gives back a watch's place under `max_watchers` when the watch is dropped.
pub(crate) struct WatchSlot(Arc<AtomicUsize>);

impl WatchSlot {
    /// Takes over one place already counted in `counter`.
    pub(crate) fn new(counter: Arc<AtomicUsize>) -> WatchSlot {
        WatchSlot(counter)
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct Watch {
    store: Store,
    committer: Committer,
    /// The current page of the backlog.
    page: VecDeque<StepRecord>,
    /// Last revision of the index the backlog has looked at.
    cursor: u64,
    live: Option<broadcast::Receiver<Arc<StepRecord>>>,
    filter: Filter,
    /// Revision of the last record handed out (or the caller's after_revision).
    delivered: u64,
    shutdown: CancellationToken,
    _slot: WatchSlot,
}

impl Watch {
    pub(crate) fn new(
        store: Store,
        committer: Committer,
        filter: Filter,
        after_revision: u64,
        shutdown: CancellationToken,
        slot: WatchSlot,
    ) -> Watch {
        Watch {
            store,
            committer,
            page: VecDeque::new(),
            cursor: after_revision,
            live: None,
            filter,
            delivered: after_revision,
            shutdown,
            _slot: slot,
        }
    }

    pub async fn next(&mut self) -> Result<StepRecord, WatchError> {
        loop {
            if let Some(r) = self.page.pop_front() {
                if r.revision <= self.delivered {
                    continue;
                }
                self.delivered = r.revision;
                return Ok(r);
            }
            if self.shutdown.is_cancelled() {
                return Err(WatchError::ShuttingDown {
                    resume_after: self.delivered,
                });
            }
            let Some(live) = &mut self.live else {
                self.next_page().await?;
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

    /// Reads the next page of the backlog: records whose current revision is
    /// past the cursor. A record changed after it was paged has a new revision
    /// past the cursor, so it comes again, later and in order. At the end of
    /// the index, subscribes and reads the rest once more (see the module doc).
    async fn next_page(&mut self) -> Result<(), WatchError> {
        let exhausted = self.read_page(WATCH_PAGE).await?;
        if exhausted {
            self.live = Some(self.committer.subscribe());
            // Committed between the read above and the subscription.
            let all = self.read_page(WATCH_SCAN).await?;
            if !all {
                // Much arrived meanwhile: page on, subscribe again later.
                self.live = None;
            }
        }
        Ok(())
    }

    async fn read_page(&mut self, take: usize) -> Result<bool, WatchError> {
        let store = self.store.clone();
        let filter = self.filter.clone();
        let cursor = self.cursor;
        let read = tokio::task::spawn_blocking(move || {
            store.page_by_revision(cursor, take, WATCH_SCAN, |r| filter.matches(r))
        })
        .await;
        let err = |cause: String| WatchError::Store {
            cause,
            resume_after: self.delivered,
        };
        let (records, cursor, exhausted) = match read {
            Ok(Ok(page)) => page,
            Ok(Err(e)) => return Err(err(StoreError::to_string(&e))),
            Err(e) => return Err(err(e.to_string())),
        };
        self.cursor = cursor;
        self.page.extend(records);
        Ok(exhausted)
    }

    #[cfg(test)]
    pub(crate) fn is_live(&self) -> bool {
        self.live.is_some()
    }

    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.page.len()
    }
}
