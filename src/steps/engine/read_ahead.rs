//! ListSteps pages with the next one read ahead.
//!
//! A client walking a long history asks for page N+1 as soon as it has page N.
//! Reading a page from redb (mostly decoding its records) costs about as much
//! as encoding and sending it, and the two can run on different cores: while
//! page N travels, page N+1 is read. That nearly halves a full listing.
//!
//! A page read ahead is handed out only if no commit ended since its read
//! began, so the caller gets exactly what a read at its own request would have
//! returned; otherwise it is read again. There is one slot for the whole
//! daemon, so memory holds at most one extra page, and concurrent listings
//! only lose the overlap.

use std::sync::Mutex;

use tokio::task::JoinHandle;

use super::error::EngineError;
use crate::steps::model::Filter;
use crate::steps::store::{Page, PageLimit, Store, StoreError};

#[derive(Default)]
pub(super) struct ReadAhead {
    slot: Mutex<Option<Ahead>>,
    /// A return of freed memory is pending (see [`trim_after_walk`]).
    trim_pending: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// A read started for the page after `after`.
struct Ahead {
    filter: Filter,
    limit: PageLimit,
    after: String,
    /// The store's generation before the read began.
    generation: u64,
    page: JoinHandle<Result<Page, StoreError>>,
}

impl ReadAhead {
    /// The page of `filter` after `after`; starts reading the one after it.
    pub(super) async fn page(
        &self,
        store: &Store,
        filter: &Filter,
        limit: PageLimit,
        after: Option<&str>,
    ) -> Result<Page, EngineError> {
        let page = match self.take(filter, limit, after) {
            Some(ahead) => {
                let page = joined(ahead.page.await)?;
                if store.generation() == ahead.generation {
                    page
                } else {
                    read(store, filter, limit, after).await?
                }
            }
            None => read(store, filter, limit, after).await?,
        };
        if page.exhausted && after.is_some() {
            trim_after_walk(&self.trim_pending);
        }
        if !page.exhausted
            && let Some(cursor) = &page.cursor
        {
            let generation = store.generation();
            let task = spawn_read(store, filter, limit, Some(cursor));
            *self.lock() = Some(Ahead {
                filter: filter.clone(),
                limit,
                after: cursor.clone(),
                generation,
                page: task,
            });
        }
        Ok(page)
    }

    /// The read ahead for exactly this request, if there is one.
    fn take(&self, filter: &Filter, limit: PageLimit, after: Option<&str>) -> Option<Ahead> {
        let after = after?;
        let mut slot = self.lock();
        let matches = slot
            .as_ref()
            .is_some_and(|a| a.after == after && a.limit == limit && &a.filter == filter);
        if matches { slot.take() } else { None }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Ahead>> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A walk through a long history decodes and frees hundreds of megabytes on
/// several threads; glibc keeps much of that in its per-thread arenas, so RSS
/// would stay at the walk's peak. Once a walk ends (and its last page has had
/// a moment to be sent), hand the free memory back, at most once per second.
fn trim_after_walk(pending: &std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::Ordering;
    if pending.swap(true, Ordering::AcqRel) {
        return;
    }
    let pending = pending.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let _ = tokio::task::spawn_blocking(|| {
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            // SAFETY: malloc_trim only returns free memory to the OS.
            unsafe {
                libc::malloc_trim(0);
            }
        })
        .await;
        pending.store(false, Ordering::Release);
    });
}

async fn read(
    store: &Store,
    filter: &Filter,
    limit: PageLimit,
    after: Option<&str>,
) -> Result<Page, EngineError> {
    joined(spawn_read(store, filter, limit, after).await)
}

/// Store reads block (redb, the page cache): they run on the blocking pool.
fn spawn_read(
    store: &Store,
    filter: &Filter,
    limit: PageLimit,
    after: Option<&str>,
) -> JoinHandle<Result<Page, StoreError>> {
    let store = store.clone();
    let filter = filter.clone();
    let after = after.map(str::to_string);
    tokio::task::spawn_blocking(move || {
        store.page_by_id(after.as_deref(), limit, |r| filter.matches(r))
    })
}

fn joined(
    r: Result<Result<Page, StoreError>, tokio::task::JoinError>,
) -> Result<Page, EngineError> {
    let page = r.map_err(|e| StoreError::Internal {
        what: "a step list read",
        cause: e.to_string(),
    })?;
    Ok(page?)
}
