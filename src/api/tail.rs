//! TailObserverLog's stream: the reader ([`crate::observer::log::Tail`]) runs
//! on the blocking pool one batch at a time, and between polls the stream
//! sleeps on the runtime. So an open follow costs a file descriptor and a few
//! buffers, never a thread, and it ends at once when its client goes away (the
//! channel closes) or obhostd shuts down (UNAVAILABLE), whatever the log does.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::{debug, error};

use super::status;
use crate::observer::log::Tail;
use crate::proto::v1 as pb;

/// How often a follow that has caught up looks at the log again. OceanBase
/// flushes its log asynchronously anyway; a person does not see 250 ms.
const POLL: Duration = Duration::from_millis(250);
/// Batches a stream holds for a slow client before the reader waits: with
/// each batch at most ~0.5 MiB, a stream's memory stays small.
const BUFFER: usize = 2;
/// TailObserverLog streams open at once; one more is RESOURCE_EXHAUSTED. Each
/// holds a file descriptor and up to ~1.5 MiB; 64 is far more than operators
/// and an orchestrator need, and far less than would hurt the host.
pub const MAX_TAILS: usize = 64;

pub type Item = Result<pb::TailObserverLogResponse, Status>;

/// The open tails, counted against [`MAX_TAILS`] and shown as the
/// `obhost_log_tails` gauge.
pub struct Slots {
    open: Arc<AtomicUsize>,
    gauge: Gauge,
}

impl Slots {
    pub fn new(gauge: Gauge) -> Slots {
        Slots {
            open: Arc::new(AtomicUsize::new(0)),
            gauge,
        }
    }

    pub fn acquire(&self) -> Result<Slot, Status> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_TAILS).then_some(n + 1)
            });
        if taken.is_err() {
            return Err(Status::resource_exhausted(format!(
                "{MAX_TAILS} TailObserverLog streams are already open, the most obhostd allows; \
                 close follows you no longer read and try again"
            )));
        }
        self.gauge.inc();
        Ok(Slot {
            open: self.open.clone(),
            gauge: self.gauge.clone(),
        })
    }
}

/// One open tail; given back when its stream's task ends.
pub struct Slot {
    open: Arc<AtomicUsize>,
    gauge: Gauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}

/// Starts sending `tail`'s lines; the receiver is the RPC's stream.
pub fn spawn(
    tail: Tail,
    follow: bool,
    shutdown: CancellationToken,
    slot: Slot,
) -> mpsc::Receiver<Item> {
    let (tx, rx) = mpsc::channel(BUFFER);
    tokio::spawn(async move {
        run(tail, follow, &tx, &shutdown).await;
        drop(slot);
    });
    rx
}

async fn run(mut tail: Tail, follow: bool, tx: &mpsc::Sender<Item>, shutdown: &CancellationToken) {
    loop {
        let read = tokio::task::spawn_blocking(move || {
            let batch = tail.read();
            (tail, batch)
        })
        .await;
        let (back, batch) = match read {
            Ok(r) => r,
            Err(e) => {
                error!(error = %e, "the observer log reader failed");
                let _ = tx
                    .send(Err(Status::internal(
                        "obhostd's log reader failed; see the daemon's log (journalctl -u obhostd)",
                    )))
                    .await;
                return;
            }
        };
        tail = back;
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                // The file at the path became something we may not read (a
                // link, a stranger's file), or a read failed: say so, stop.
                let _ = tx.send(Err(status::from_log(e))).await;
                return;
            }
        };
        if !batch.lines.is_empty() {
            let message = Ok(pb::TailObserverLogResponse { lines: batch.lines });
            tokio::select! {
                () = tx.closed() => return gone(),
                () = shutdown.cancelled() => return shutting_down(tx).await,
                sent = tx.send(message) => if sent.is_err() { return gone() },
            }
        }
        if batch.caught_up {
            if !follow {
                return;
            }
            tokio::select! {
                () = tx.closed() => return gone(),
                () = shutdown.cancelled() => return shutting_down(tx).await,
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }
}

fn gone() {
    debug!("log tail's client went away");
}

/// Ends the stream as WatchSteps' do at shutdown, so a client knows to come
/// back rather than take it for the end of the log. Bounded: a client that
/// reads nothing cannot hold up the drain.
async fn shutting_down(tx: &mpsc::Sender<Item>) {
    let status =
        Status::unavailable("obhostd is shutting down; follow the log again once it is back");
    let _ = tokio::time::timeout(Duration::from_secs(1), tx.send(Err(status))).await;
}
