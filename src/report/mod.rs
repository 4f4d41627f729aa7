//! The push of step changes to the orchestrator's `StepReporter` (`[report]`).
//!
//! An orchestrator that polls every host, or holds a stream open to each, loses
//! track of tasks when it restarts or a network blips. Instead obhostd pushes
//! every change, at least once, in revision order:
//!
//! - every commit that changes a step also copies the change into the store's
//!   outbox (same transaction), so nothing durable can be missed and nothing
//!   is reported before it is durable;
//! - this task reads the outbox, sends a batch (up to `batch_max` changes,
//!   `batch_delay` after the first one), and only once the orchestrator has
//!   answered OK commits the acknowledgement, which empties the outbox up to
//!   there. A crash of either side at any point leads to a resend, never to a
//!   gap; the receiver dedupes by step id + revision;
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

pub struct Reporter {
    outgoing: Outgoing,
    metrics: std::sync::Arc<Metrics>,
    client: client::Client,
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
            client: client::Client::new(config)?,
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
        // Whether the changes waiting have had their batch_delay to gather.
        let mut gathered = false;
        // Dropped changes already counted in the metric, not yet announced.
        let mut counted_drops = 0;
        info!(endpoint = %self.client.endpoint(), agent_id = %self.host.agent_id, "reporting step changes");
        loop {
            let read = self.outgoing.read(self.batch_max).await;
            if let Ok(out) = &read {
                self.metrics
                    .report_lag(self.outgoing.durable_revision().saturating_sub(out.acked));
                if out.dropped > counted_drops {
                    self.metrics.report_dropped(out.dropped - counted_drops);
                    counted_drops = out.dropped;
                }
            }
            let sent = match read {
                Ok(out) if out.changes.is_empty() && out.dropped == 0 => {
                    if changes.recv().await == Err(RecvError::Closed) {
                        return;
                    }
                    self.gather(&mut changes, 1).await;
                    gathered = true;
                    continue;
                }
                Ok(out) if out.changes.len() < self.batch_max && !gathered => {
                    self.gather(&mut changes, out.changes.len()).await;
                    gathered = true;
                    continue;
                }
                Ok(out) => {
                    let announced = out.dropped;
                    let sent = self.send(out).await;
                    if sent.is_ok() {
                        counted_drops = counted_drops.saturating_sub(announced);
                    }
                    sent
                }
                Err(e) => Err(format!("cannot read the outbox: {e}")),
            };
            gathered = false;
            match sent {
                Ok(()) => {
                    errors.ok(self.client.endpoint());
                    backoff = FIRST_BACKOFF;
                }
                Err(e) => {
                    self.metrics.report_failure();
                    errors.failed(self.client.endpoint(), e);
                    tokio::time::sleep(jitter(backoff)).await;
                    backoff = (backoff * 2).min(self.max_backoff);
                }
            }
        }
    }

    /// Gives `waiting` unsent changes up to `batch_delay` for more to join
    /// them, until a batch would be full.
    async fn gather(
        &self,
        changes: &mut tokio::sync::broadcast::Receiver<std::sync::Arc<StepRecord>>,
        waiting: usize,
    ) {
        let until = tokio::time::Instant::now() + self.batch_delay;
        let mut seen = waiting;
        while seen < self.batch_max {
            tokio::select! {
                () = tokio::time::sleep_until(until) => return,
                r = changes.recv() => match r {
                    Ok(_) => seen += 1,
                    Err(RecvError::Lagged(n)) => seen += n as usize,
                    Err(RecvError::Closed) => return,
                },
            }
        }
    }

    /// One batch, and its acknowledgement once the orchestrator took it.
    async fn send(&self, out: crate::steps::store::Outbox) -> Result<(), String> {
        let through = out
            .changes
            .iter()
            .map(|r| r.revision)
            .max()
            .unwrap_or(out.acked);
        let steps: Vec<pb::Step> = coalesce(out.changes)
            .into_iter()
            .map(convert::step)
            .collect();
        let n = steps.len();
        let request = pb::ReportStepsRequest {
            agent_id: self.host.agent_id.clone(),
            steps,
            after_revision: out.acked,
            host: Some(self.host.clone()),
            dropped: out.dropped,
        };
        self.client
            .report(request)
            .await
            .map_err(|s| describe(&s))?;
        self.outgoing.ack(through, out.dropped).await.map_err(|e| {
            format!(
                "the orchestrator took revisions up to {through}, but recording that failed: {e}"
            )
        })?;
        debug!(
            changes = n,
            after = out.acked,
            through,
            dropped = out.dropped,
            "reported"
        );
        Ok(())
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
