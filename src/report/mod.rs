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
//!   batches bigger, never changes later than `batch_delay` plus a round trip;
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
use crate::steps::engine::Outgoing;

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
        let mut errors = ErrorLog::default();
        let mut backoff = FIRST_BACKOFF;
        let mut flight: std::collections::VecDeque<InFlight> = Default::default();
        // Changes seen committed and not in a batch yet (counted from the
        // change feed while batches are in flight, so the outbox is read
        // again only when a batch is due, not at every change).
        let mut waiting: usize = 0;
        // When the oldest of them was seen.
        let mut waiting_since: Option<tokio::time::Instant> = None;
        let mut feed_open = true;
        // The highest revision the orchestrator has answered OK for; its
        // acknowledgement may still be on its way to disk.
        let mut answered: u64 = 0;
        // Dropped changes announced in acknowledgements not yet on disk: the
        // store still counts them, and they must not be announced twice.
        let in_transit = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        // Dropped changes already counted in the metric, not yet announced.
        let mut counted_drops = 0;
        info!(endpoint = %self.client.endpoint(), agent_id = %self.host.agent_id, "reporting step changes");
        loop {
            let overdue = waiting_since.is_some_and(|t| t.elapsed() >= self.batch_delay);
            if flight.len() < MAX_IN_FLIGHT
                && (flight.is_empty() || waiting >= self.batch_max || overdue)
            {
                let after = flight.back().map_or(answered, |f| f.through);
                match self.outgoing.read(after, self.batch_max).await {
                    Ok(out) => {
                        // Behind by what the orchestrator has not answered
                        // for (its acknowledgement may still be on its way
                        // to disk).
                        self.metrics.report_lag(
                            self.outgoing
                                .durable_revision()
                                .saturating_sub(out.acked.max(answered)),
                        );
                        if out.dropped > counted_drops {
                            self.metrics.report_dropped(out.dropped - counted_drops);
                            counted_drops = out.dropped;
                        }
                        // Only the batch that leads announces drops.
                        let announce = if flight.is_empty() {
                            out.dropped.saturating_sub(
                                in_transit.load(std::sync::atomic::Ordering::Acquire),
                            )
                        } else {
                            0
                        };
                        let something = !out.changes.is_empty() || announce > 0;
                        let due =
                            flight.is_empty() || overdue || out.changes.len() >= self.batch_max;
                        if something && due {
                            waiting = 0;
                            waiting_since = None;
                            flight.push_back(self.send(out, after, announce));
                            continue;
                        }
                        waiting = out.changes.len();
                        if waiting == 0 {
                            waiting_since = None;
                        } else if waiting_since.is_none() {
                            waiting_since = Some(tokio::time::Instant::now());
                        }
                    }
                    Err(e) => {
                        if flight.is_empty() {
                            let e = format!("cannot read the outbox: {e}");
                            self.back_off(&mut errors, e, &mut backoff).await;
                            continue;
                        }
                    }
                }
            }
            if !feed_open && flight.is_empty() {
                return;
            }
            // The batch_delay of the oldest waiting change, once a batch may
            // be added to those in flight.
            let deadline = waiting_since
                .filter(|_| flight.len() < MAX_IN_FLIGHT && !flight.is_empty())
                .map(|t| t + self.batch_delay);
            tokio::select! {
                answer = async { (&mut flight.front_mut().expect("guarded").call).await },
                    if !flight.is_empty() =>
                {
                    let done = flight.pop_front().expect("guarded");
                    let answer = answer.unwrap_or_else(|e| Err(format!("the call ended abnormally: {e}")));
                    match answer {
                        Ok(_) => {
                            // Queued in order, not waited for: the next batch
                            // goes now, and a failed write is only logged (the
                            // changes it covers are sent again after a
                            // restart, which receivers dedupe).
                            let through = done.through;
                            let transit = in_transit.clone();
                            transit.fetch_add(done.announced, std::sync::atomic::Ordering::AcqRel);
                            let ack = self.outgoing.ack(through, done.announced);
                            let announced = done.announced;
                            tokio::spawn(async move {
                                let written = ack.await;
                                transit.fetch_sub(announced, std::sync::atomic::Ordering::AcqRel);
                                if let Err(e) = written {
                                    warn!(through, error = %e, "the orchestrator took these changes, but recording that failed; they will be sent again after a restart");
                                }
                            });
                            answered = answered.max(through);
                            self.metrics.report_lag(
                                self.outgoing.durable_revision().saturating_sub(answered),
                            );
                            counted_drops = counted_drops.saturating_sub(done.announced);
                            errors.ok(self.client.endpoint());
                            backoff = FIRST_BACKOFF;
                        }
                        Err(e) => {
                            // Later batches followed this one: resend them
                            // all from the last acknowledgement, in order.
                            for later in flight.drain(..) {
                                later.call.abort();
                            }
                            self.back_off(&mut errors, e, &mut backoff).await;
                        }
                    }
                }
                r = changes.recv(), if feed_open => match r {
                    Ok(_) => waiting += 1,
                    Err(RecvError::Lagged(n)) => waiting += n as usize,
                    Err(RecvError::Closed) => feed_open = false,
                },
                () = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                }, if deadline.is_some() => {}
            }
            if waiting > 0 && waiting_since.is_none() {
                waiting_since = Some(tokio::time::Instant::now());
            }
        }
    }

    /// Counts and logs a failure, then pauses: `backoff` with jitter, which
    /// doubles up to `max_backoff` for the next one.
    async fn back_off(&self, errors: &mut ErrorLog, e: String, backoff: &mut Duration) {
        self.metrics.report_failure();
        errors.failed(self.client.endpoint(), e);
        tokio::time::sleep(jitter(*backoff)).await;
        *backoff = (*backoff * 2).min(self.max_backoff);
    }

    /// Sends one batch (a task of its own: the loop goes on gathering),
    /// announcing `announced` dropped changes.
    fn send(&self, out: crate::steps::store::Outbox, after: u64, announced: u64) -> InFlight {
        let through = out
            .changes
            .iter()
            .map(|r| r.revision)
            .max()
            .unwrap_or(after.max(out.acked));
        let steps: Vec<pb::Step> = coalesce(out.changes)
            .into_iter()
            .map(convert::step)
            .collect();
        let n = steps.len();
        let request = pb::ReportStepsRequest {
            agent_id: self.host.agent_id.clone(),
            steps,
            after_revision: after.max(out.acked),
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
