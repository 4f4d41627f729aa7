//! The push of step changes to the orchestrator's `StepReporter` (`[report]`).
//!
//! An orchestrator that polls every host, or holds a stream open to each, loses
//! track of tasks when it restarts or a network blips. Instead obhostd pushes
//! every change, at least once, in revision order:
//!
//! - every commit that changes a step also copies the change into the store's
//!   outbox (same transaction), so nothing durable can be missed and nothing
//!   is reported before it is durable;
//! - this task reads the outbox and sends a change at once when no batch is
//!   in flight: an idle agent's step end reaches the orchestrator a round trip
//!   after its commit. While a batch is in flight, changes gather and go
//!   when its answer arrives, or sooner when `batch_max` of them wait or the
//!   oldest has waited `batch_delay` (then a second batch follows the first
//!   on the same connection; at most [`MAX_IN_FLIGHT`]). So load makes
//!   batches bigger, never changes later than `batch_delay` plus a round trip.
//!   Each batch's `after_revision` is the last revision answered for, never
//!   an earlier batch still in flight: a receiver may handle two concurrent
//!   calls in either order, and one told that changes it has not seen were
//!   acknowledged would see a gap;
//! - acknowledgements are committed in order, each once the orchestrator has
//!   answered OK, which empties the outbox up to there. A failed call drops
//!   every later answer and resends from the last acknowledgement. A crash of
//!   either side at any point leads to a resend, never to a gap; the receiver
//!   dedupes by step id + revision;
//! - failures back off exponentially with jitter up to `max_backoff`, and are
//!   logged when the error changes, not at every retry. Steps never wait for
//!   any of this.

mod client;

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::api::convert;
use crate::config::ReportConfig;
use crate::metrics::Metrics;
use crate::proto::v1 as pb;
use crate::steps::StepRecord;
use crate::steps::engine::outbox::Outgoing;

pub use client::ClientError;

/// What a start would refuse about `[report]`: the endpoint and the files.
pub fn check(config: &ReportConfig) -> Result<(), ClientError> {
    client::Client::new(config).map(|_| ())
}

/// The first pause after a failure; it doubles up to `max_backoff`.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Batches sent and not yet answered, at most: a slow orchestrator gets
/// bigger batches, not more calls.
pub const MAX_IN_FLIGHT: usize = 2;

/// A batch sent and not yet acknowledged.
struct InFlight {
    /// The highest revision it carries.
    through: u64,
    /// The dropped changes it announces.
    announced: u64,
    call: tokio::task::JoinHandle<Result<usize, String>>,
}

/// What the reporting loop knows between one wake-up and the next.
struct Pump {
    /// Batches sent, oldest first, at most [`MAX_IN_FLIGHT`].
    flight: std::collections::VecDeque<InFlight>,
    /// Changes seen committed and not in a batch yet (counted from the change
    /// feed while batches are in flight, so the outbox is read again only
    /// when a batch is due, not at every change).
    waiting: usize,
    /// When the oldest of them was seen.
    waiting_since: Option<tokio::time::Instant>,
    feed_open: bool,
    /// The highest revision the orchestrator has answered OK for; its
    /// acknowledgement may still be on its way to disk.
    answered: u64,
    /// Dropped changes announced in acknowledgements not yet on disk: the
    /// store still counts them, and they must not be announced twice.
    in_transit: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Dropped changes already counted in the metric, not yet announced.
    counted_drops: u64,
    errors: ErrorLog,
    backoff: Duration,
}

impl Pump {
    fn new() -> Pump {
        Pump {
            flight: Default::default(),
            waiting: 0,
            waiting_since: None,
            feed_open: true,
            answered: 0,
            in_transit: Default::default(),
            counted_drops: 0,
            errors: ErrorLog::default(),
            backoff: FIRST_BACKOFF,
        }
    }

    fn overdue(&self, batch_delay: Duration) -> bool {
        self.waiting_since
            .is_some_and(|t| t.elapsed() >= batch_delay)
    }

    /// A batch goes at once when none is in flight; beside one, only when
    /// `batch_max` changes wait or the oldest has waited `batch_delay`.
    fn may_send(&self, batch_max: usize, batch_delay: Duration) -> bool {
        self.flight.len() < MAX_IN_FLIGHT
            && (self.flight.is_empty() || self.waiting >= batch_max || self.overdue(batch_delay))
    }

    /// When the oldest waiting change reaches `batch_delay`, once a batch
    /// may be added to those in flight.
    fn deadline(&self, batch_delay: Duration) -> Option<tokio::time::Instant> {
        self.waiting_since
            .filter(|_| self.flight.len() < MAX_IN_FLIGHT && !self.flight.is_empty())
            .map(|t| t + batch_delay)
    }

    fn saw<T>(&mut self, r: Result<T, RecvError>) {
        match r {
            Ok(_) => self.waiting += 1,
            Err(RecvError::Lagged(n)) => self.waiting += n as usize,
            Err(RecvError::Closed) => self.feed_open = false,
        }
    }
}

pub struct Reporter {
    outgoing: Outgoing,
    metrics: std::sync::Arc<Metrics>,
    client: std::sync::Arc<client::Client>,
    host: pb::ReporterHost,
    batch_max: usize,
    batch_delay: Duration,
    max_backoff: Duration,
}

impl Reporter {
    /// Reads the certificates and builds the client; the connection itself is
    /// made when there is something to send (the orchestrator may be down).
    pub fn new(
        config: &ReportConfig,
        outgoing: Outgoing,
        metrics: std::sync::Arc<Metrics>,
    ) -> Result<Reporter, ClientError> {
        let hostname = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default();
        let agent_id = config.agent_id.clone().unwrap_or_else(|| hostname.clone());
        Ok(Reporter {
            outgoing,
            metrics,
            client: std::sync::Arc::new(client::Client::new(config)?),
            host: pb::ReporterHost {
                agent_id,
                hostname,
                version: env!("CARGO_PKG_VERSION").to_string(),
            },
            batch_max: config.batch_max,
            batch_delay: config.batch_delay,
            max_backoff: config.max_backoff,
        })
    }

    pub fn spawn(self, shutdown: CancellationToken) {
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = self.run() => {}
            }
        });
    }

    async fn run(self) {
        let mut changes = self.outgoing.changes();
        let mut p = Pump::new();
        info!(endpoint = %self.client.endpoint(), agent_id = %self.host.agent_id, "reporting step changes");
        loop {
            if p.may_send(self.batch_max, self.batch_delay) {
                match self.next_batch(&mut p).await {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(e) => {
                        self.back_off(&mut p, e).await;
                        continue;
                    }
                }
            }
            if !p.feed_open && p.flight.is_empty() {
                return;
            }
            let deadline = p.deadline(self.batch_delay);
            tokio::select! {
                answer = async { (&mut p.flight.front_mut().expect("guarded").call).await },
                    if !p.flight.is_empty() =>
                {
                    let done = p.flight.pop_front().expect("guarded");
                    match answer.unwrap_or_else(|e| Err(format!("the call ended abnormally: {e}"))) {
                        Ok(_) => self.answered(&mut p, done),
                        Err(e) => {
                            // Later batches followed this one: resend them
                            // all from the last acknowledgement, in order.
                            for later in p.flight.drain(..) {
                                later.call.abort();
                            }
                            self.back_off(&mut p, e).await;
                        }
                    }
                }
                r = changes.recv(), if p.feed_open => p.saw(r),
                () = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                }, if deadline.is_some() => {}
            }
            if p.waiting > 0 && p.waiting_since.is_none() {
                p.waiting_since = Some(tokio::time::Instant::now());
            }
        }
    }

    /// Reads what waits in the outbox and sends it as a batch when one is
    /// due: `Ok(true)` when a batch went. An outbox that cannot be read is an
    /// error only when nothing is in flight (else the answer retries it).
    async fn next_batch(&self, p: &mut Pump) -> Result<bool, String> {
        let overdue = p.overdue(self.batch_delay);
        // Read on from the last batch sent, but claim as acknowledged only
        // what the orchestrator answered for: a batch sent beside another
        // may be handled first, and must not tell its receiver that changes
        // it has not yet seen were acknowledged (it would see a gap).
        let from = p.flight.back().map_or(p.answered, |f| f.through);
        let out = match self.outgoing.read(from, self.batch_max).await {
            Ok(out) => out,
            Err(e) if p.flight.is_empty() => return Err(format!("cannot read the outbox: {e}")),
            Err(_) => return Ok(false),
        };
        self.lag(p, out.acked);
        if out.dropped > p.counted_drops {
            self.metrics.report_dropped(out.dropped - p.counted_drops);
            p.counted_drops = out.dropped;
        }
        // Only the batch that leads announces drops.
        let announce = if p.flight.is_empty() {
            out.dropped
                .saturating_sub(p.in_transit.load(std::sync::atomic::Ordering::Acquire))
        } else {
            0
        };
        let something = !out.changes.is_empty() || announce > 0;
        let due = p.flight.is_empty() || overdue || out.changes.len() >= self.batch_max;
        if something && due {
            p.waiting = 0;
            p.waiting_since = None;
            p.flight
                .push_back(self.send(out, from, p.answered, announce));
            return Ok(true);
        }
        p.waiting = out.changes.len();
        if p.waiting == 0 {
            p.waiting_since = None;
        } else if p.waiting_since.is_none() {
            p.waiting_since = Some(tokio::time::Instant::now());
        }
        Ok(false)
    }

    /// The orchestrator answered OK for `done`. Its acknowledgement is queued
    /// in order, not waited for: the next batch goes now, and a failed write
    /// is only logged (the changes it covers are sent again after a restart,
    /// which receivers dedupe).
    fn answered(&self, p: &mut Pump, done: InFlight) {
        let (through, announced) = (done.through, done.announced);
        let transit = p.in_transit.clone();
        transit.fetch_add(announced, std::sync::atomic::Ordering::AcqRel);
        let ack = self.outgoing.ack(through, announced);
        tokio::spawn(async move {
            let written = ack.await;
            transit.fetch_sub(announced, std::sync::atomic::Ordering::AcqRel);
            if let Err(e) = written {
                warn!(through, error = %e, "the orchestrator took these changes, but recording that failed; they will be sent again after a restart");
            }
        });
        p.answered = p.answered.max(through);
        self.lag(p, 0);
        p.counted_drops = p.counted_drops.saturating_sub(announced);
        p.errors.ok(self.client.endpoint());
        p.backoff = FIRST_BACKOFF;
    }

    /// The lag metric: changes durable and not yet answered for by the
    /// orchestrator (`acked`: what the store counts as acknowledged, which
    /// may trail what was answered while its write is on the way to disk).
    fn lag(&self, p: &Pump, acked: u64) {
        let answered = p.answered.max(acked);
        self.metrics
            .report_lag(self.outgoing.durable_revision().saturating_sub(answered));
    }

    /// Counts and logs a failure, then pauses: `backoff` with jitter, which
    /// doubles up to `max_backoff` for the next one.
    async fn back_off(&self, p: &mut Pump, e: String) {
        self.metrics.report_failure();
        p.errors.failed(self.client.endpoint(), e);
        tokio::time::sleep(jitter(p.backoff)).await;
        p.backoff = (p.backoff * 2).min(self.max_backoff);
    }

    /// Sends one batch (a task of its own: the loop goes on gathering) of
    /// the changes after `from`, continuing from `answered` (the last
    /// revision the orchestrator answered for), announcing `announced`
    /// dropped changes.
    fn send(
        &self,
        out: crate::steps::store::Outbox,
        from: u64,
        answered: u64,
        announced: u64,
    ) -> InFlight {
        let after = answered.max(out.acked);
        let through = out
            .changes
            .iter()
            .map(|r| r.revision)
            .max()
            .unwrap_or(from.max(out.acked));
        let steps: Vec<pb::Step> = coalesce(out.changes)
            .into_iter()
            .map(convert::step)
            .collect();
        let n = steps.len();
        let request = pb::ReportStepsRequest {
            agent_id: self.host.agent_id.clone(),
            steps,
            after_revision: after,
            host: Some(self.host.clone()),
            dropped: announced,
        };
        let client = self.client.clone();
        let call = tokio::spawn(async move {
            client.report(request).await.map_err(|s| describe(&s))?;
            debug!(changes = n, after, through, dropped = announced, "reported");
            Ok(n)
        });
        InFlight {
            through,
            announced,
            call,
        }
    }
}

/// Each step's latest change, in revision order. A terminal change stays even
/// when a later one of the same step follows (a retry): an orchestrator must
/// see every attempt end.
fn coalesce(changes: Vec<StepRecord>) -> Vec<StepRecord> {
    let mut latest: HashMap<String, u64> = HashMap::new();
    for r in &changes {
        let e = latest.entry(r.id().to_string()).or_default();
        *e = (*e).max(r.revision);
    }
    changes
        .into_iter()
        .filter(|r| r.state.is_terminal() || latest.get(r.id()) == Some(&r.revision))
        .collect()
}

/// A pause of between half and all of `d`: many agents failing together do
/// not retry together.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// What a failed call means for the operator, in one line.
fn describe(s: &tonic::Status) -> String {
    use tonic::Code;
    let hint = match s.code() {
        Code::Unimplemented => {
            "the endpoint does not serve obhost.v1.StepReporter; check [report] endpoint"
        }
        Code::PermissionDenied | Code::Unauthenticated => {
            "the orchestrator refused this agent; check [report] cert_file/key_file and the orchestrator's allow list"
        }
        Code::InvalidArgument => "the orchestrator rejected the batch; its log says why",
        _ => "retrying with backoff",
    };
    format!(
        "{:?}: {}; {hint}",
        s.code(),
        crate::bounds::quote(s.message())
    )
}

/// Logs a failure when it differs from the previous one, not at every retry.
#[derive(Default)]
struct ErrorLog {
    last: Option<String>,
    failures: u64,
}

impl ErrorLog {
    fn failed(&mut self, endpoint: &str, e: String) {
        self.failures += 1;
        if self.last.as_deref() != Some(e.as_str()) {
            warn!(endpoint, error = %e, "cannot report step changes; they are kept until the orchestrator takes them");
            self.last = Some(e);
        }
    }

    fn ok(&mut self, endpoint: &str) {
        if self.last.take().is_some() {
            info!(
                endpoint,
                failed_attempts = self.failures,
                "reporting step changes again"
            );
        }
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::StepState;

    fn change(id: &str, revision: u64, state: StepState) -> StepRecord {
        StepRecord::for_test(id, state, 1, revision)
    }

    #[test]
    fn a_batch_keeps_each_steps_latest_change_and_every_end() {
        use StepState::*;
        let batch = coalesce(vec![
            change("a", 1, Running),
            change("b", 2, Running),
            change("a", 3, Failed),
            change("a", 4, Running),
            change("b", 5, Succeeded),
            change("c", 6, Running),
        ]);
        let kept: Vec<(&str, u64)> = batch.iter().map(|r| (r.id(), r.revision)).collect();
        assert_eq!(kept, [("a", 3), ("a", 4), ("b", 5), ("c", 6)]);
    }

    #[test]
    fn jitter_stays_within_half_and_whole() {
        for _ in 0..1000 {
            let j = jitter(Duration::from_secs(2));
            assert!(
                j >= Duration::from_secs(1) && j <= Duration::from_secs(2),
                "{j:?}"
            );
        }
    }
}
