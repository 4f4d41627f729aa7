//! Step metrics from the committer's change feed: every durable record passes
//! through once, in revision order, so the engine needs no hook. At start the
//! store is read once (paged, on a blocking thread) to know the steps it
//! already holds; after that only changes are applied, and a scrape costs one
//! table-length read (to notice retention's pruning).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::steps::model::{StepKind, StepRecord, StepState};
use crate::steps::store::Store;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindState {
    kind: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindResult {
    kind: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Finished {
    kind: String,
    state: String,
    code: String,
}

/// Step durations: 10 ms to ~5.8 h (a start that waits for a slow kernel takes
/// minutes; a test step milliseconds).
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 3.0, 14))
}

/// The step families, and the tracker that feeds them from the change feed
/// (also read at scrape time, for retention's pruning and the last agent).
pub struct StepMetrics {
    steps: Family<KindState, Gauge>,
    step_duration: Family<KindResult, Histogram, fn() -> Histogram>,
    steps_started: Family<KindLabels, Counter>,
    steps_finished: Family<Finished, Counter>,
    tracker: Mutex<Tracker>,
}

impl Default for StepMetrics {
    fn default() -> Self {
        StepMetrics {
            steps: Family::default(),
            step_duration: Family::new_with_constructor(duration_histogram),
            steps_started: Family::default(),
            steps_finished: Family::default(),
            tracker: Mutex::new(Tracker::default()),
        }
    }
}

impl StepMetrics {
    fn lock_tracker(&self) -> MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The store holds `stored` steps (see [`Tracker::reconcile`]).
    pub(super) fn reconcile(&self, stored: u64) {
        self.lock_tracker().reconcile(stored, &self.steps);
    }

    /// The newest StartAgentService that succeeded, if any.
    pub(super) fn last_agent(&self) -> Option<super::agent::Started> {
        self.lock_tracker().agent.clone()
    }

    /// Registers the four families.
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "obhost_steps",
            "Steps in the store by kind and state (finished ones drop out as retention prunes them)",
            self.steps.clone(),
        );
        registry.register(
            "obhost_step_duration_seconds",
            "Time from a step attempt's start to its end, by kind and final state",
            self.step_duration.clone(),
        );
        registry.register(
            "obhost_steps_started",
            "Step attempts that began running, by kind",
            self.steps_started.clone(),
        );
        registry.register(
            "obhost_steps_finished",
            "Step attempts that ended, by kind, final state and error code (\"\" on success)",
            self.steps_finished.clone(),
        );
    }
}

/// Seconds as f64 between two times; 0 when `end` is before `start` (a clock
/// step back).
fn seconds_between(start: SystemTime, end: SystemTime) -> f64 {
    end.duration_since(start)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

/// Records read per page while seeding.
const SEED_PAGE: usize = 1024;
/// Error codes come from the step kinds' catalogs; the cap only keeps a
/// misbehaving kind from making huge label values.
const MAX_CODE: usize = 64;

pub(super) fn kind_name(kind: StepKind) -> &'static str {
    match kind {
        StepKind::PrepareStartObserver => "PREPARE_START_OBSERVER",
        StepKind::StartObserverProcess => "START_OBSERVER_PROCESS",
        StepKind::WaitObserverActive => "WAIT_OBSERVER_ACTIVE",
        StepKind::StartAgentService => "START_AGENT_SERVICE",
        StepKind::StopObserverProcess => "STOP_OBSERVER_PROCESS",
        StepKind::Test => "TEST",
    }
}

struct Entry {
    kind: StepKind,
    state: StepState,
    attempt: u32,
    revision: u64,
}

/// What the metrics know of each step in the store: its kind, state and
/// revision. Finished steps are also indexed by revision, because retention
/// prunes the oldest finished ones first.
#[derive(Default)]
struct Tracker {
    steps: HashMap<String, Entry>,
    finished: BTreeMap<u64, String>,
    /// The newest StartAgentService that succeeded: what "agent up" checks.
    agent: Option<super::agent::Started>,
}

impl Tracker {
    /// Applies one record. `count` is false while seeding: records already in
    /// the store at start move the gauge but no counter.
    fn apply(&mut self, r: &StepRecord, m: &StepMetrics, count: bool) {
        let prev = self.steps.get(r.id());
        if prev.is_some_and(|p| p.revision >= r.revision) {
            return;
        }
        if let Some(started) = super::agent::Started::from_record(r)
            && self
                .agent
                .as_ref()
                .is_none_or(|a| a.revision < started.revision)
        {
            self.agent = Some(started);
        }
        let kind = kind_name(r.spec.kind);
        if count {
            let was_running =
                prev.is_some_and(|p| p.state == StepState::Running && p.attempt == r.attempt);
            if r.state == StepState::Running && !was_running {
                m.steps_started
                    .get_or_create(&KindLabels { kind: kind.into() })
                    .inc();
            }
            let was_finished =
                prev.is_some_and(|p| p.state.is_terminal() && p.attempt == r.attempt);
            if r.state.is_terminal() && !was_finished {
                let code = r.error.as_ref().map_or("", |e| e.code.as_str());
                m.steps_finished
                    .get_or_create(&Finished {
                        kind: kind.into(),
                        state: r.state.as_str().into(),
                        code: code.chars().take(MAX_CODE).collect(),
                    })
                    .inc();
                if let Some(end) = r.finished_at {
                    let start = r.started_at.unwrap_or(r.created_at);
                    m.step_duration
                        .get_or_create(&KindResult {
                            kind: kind.into(),
                            result: r.state.as_str().into(),
                        })
                        .observe(seconds_between(start, end));
                }
            }
        }
        if let Some(p) = self.steps.remove(r.id()) {
            self.forget(&p, &m.steps);
        }
        gauge(&m.steps, r.spec.kind, r.state).inc();
        if r.state.is_terminal() {
            self.finished.insert(r.revision, r.id().to_string());
        }
        self.steps.insert(
            r.id().to_string(),
            Entry {
                kind: r.spec.kind,
                state: r.state,
                attempt: r.attempt,
                revision: r.revision,
            },
        );
    }

    fn forget(&mut self, e: &Entry, steps: &Family<KindState, Gauge>) {
        gauge(steps, e.kind, e.state).dec();
        if e.state.is_terminal() {
            self.finished.remove(&e.revision);
        }
    }

    /// The store holds `stored` steps: any beyond that which this tracker
    /// still counts were pruned, and pruning takes the oldest finished first.
    /// Never removes too many: records the feed has not delivered yet only
    /// make the tracker count fewer.
    fn reconcile(&mut self, stored: u64, steps: &Family<KindState, Gauge>) {
        let mut excess = (self.steps.len() as u64).saturating_sub(stored);
        while excess > 0 {
            let Some((_, id)) = self.finished.pop_first() else {
                return;
            };
            if let Some(e) = self.steps.remove(&id) {
                gauge(steps, e.kind, e.state).dec();
            }
            excess -= 1;
        }
    }

    fn clear(&mut self, steps: &Family<KindState, Gauge>) {
        self.steps.clear();
        self.finished.clear();
        steps.clear();
    }
}

fn gauge(
    steps: &Family<KindState, Gauge>,
    kind: StepKind,
    state: StepState,
) -> prometheus_client::metrics::gauge::Gauge {
    steps
        .get_or_create(&KindState {
            kind: kind_name(kind).into(),
            state: state.as_str().into(),
        })
        .clone()
}

/// Seeds the tracker from the store, then applies the feed until shutdown.
/// A feed that lagged (a burst beyond its buffer) is re-seeded: the gauge is
/// right again, counters miss what was skipped (logged).
pub(super) fn spawn_follower(
    metrics: Arc<StepMetrics>,
    store: Store,
    mut feed: broadcast::Receiver<Arc<StepRecord>>,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        seed(&metrics, &store).await;
        loop {
            let r = tokio::select! {
                () = shutdown.cancelled() => return,
                r = feed.recv() => r,
            };
            match r {
                Ok(record) => metrics.lock_tracker().apply(&record, &metrics, true),
                Err(RecvError::Lagged(n)) => {
                    warn!(
                        skipped = n,
                        "metrics fell behind the step feed; recounting steps from the store (start/finish counters miss those changes)"
                    );
                    seed(&metrics, &store).await;
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
}

async fn seed(metrics: &Arc<StepMetrics>, store: &Store) {
    metrics.lock_tracker().clear(&metrics.steps);
    let mut after = 0;
    loop {
        let s = store.clone();
        let page = tokio::task::spawn_blocking(move || {
            s.page_by_revision(after, SEED_PAGE, usize::MAX, |_| true)
        })
        .await;
        let (records, cursor, exhausted) = match page {
            Ok(Ok(page)) => page,
            Ok(Err(e)) => {
                warn!(error = %e, "metrics cannot read the steps in the store; obhost_steps counts only changes from now on");
                return;
            }
            Err(e) => {
                warn!(error = %e, "metrics cannot read the steps in the store");
                return;
            }
        };
        {
            let mut tracker = metrics.lock_tracker();
            for r in &records {
                tracker.apply(r, metrics, false);
            }
        }
        if exhausted || cursor <= after {
            return;
        }
        after = cursor;
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::steps::model::StepError;

    fn record(id: &str, state: StepState, attempt: u32, revision: u64) -> StepRecord {
        let now = SystemTime::now();
        let mut r = StepRecord::for_test(id, state, attempt, revision);
        r.spec.timeout = Duration::from_secs(30);
        r.started_at = Some(now);
        r.finished_at = state.is_terminal().then_some(now);
        r.deadline = now + Duration::from_secs(30);
        r.error = (state == StepState::Failed).then(|| StepError {
            code: "BOOM".into(),
            message: "m".into(),
            details: Default::default(),
            log_tail: Vec::new(),
        });
        r
    }

    fn steps(m: &StepMetrics, state: &str) -> i64 {
        gauge(
            &m.steps,
            StepKind::Test,
            match state {
                "RUNNING" => StepState::Running,
                "PENDING" => StepState::Pending,
                "FAILED" => StepState::Failed,
                _ => StepState::Succeeded,
            },
        )
        .get()
    }

    fn started(m: &StepMetrics) -> u64 {
        m.steps_started
            .get_or_create(&KindLabels {
                kind: "TEST".into(),
            })
            .get()
    }

    fn finished(m: &StepMetrics, state: &str, code: &str) -> u64 {
        m.steps_finished
            .get_or_create(&Finished {
                kind: "TEST".into(),
                state: state.into(),
                code: code.into(),
            })
            .get()
    }

    /// A retried step counts each attempt's start and end once, and the
    /// gauge holds it in one state only; a repeated or older record changes
    /// nothing.
    #[test]
    fn a_retry_counts_each_attempt_once() {
        let m = StepMetrics::default();
        let mut t = Tracker::default();
        t.apply(&record("a", StepState::Running, 1, 1), &m, true);
        t.apply(&record("a", StepState::Running, 1, 2), &m, true);
        t.apply(&record("a", StepState::Failed, 1, 3), &m, true);
        t.apply(&record("a", StepState::Running, 1, 2), &m, true);
        assert_eq!((started(&m), finished(&m, "FAILED", "BOOM")), (1, 1));
        t.apply(&record("a", StepState::Pending, 2, 4), &m, true);
        assert_eq!((steps(&m, "FAILED"), steps(&m, "PENDING")), (0, 1));
        t.apply(&record("a", StepState::Running, 2, 5), &m, true);
        t.apply(&record("a", StepState::Succeeded, 2, 6), &m, true);
        assert_eq!(started(&m), 2);
        assert_eq!(finished(&m, "SUCCEEDED", ""), 1);
        assert_eq!(
            (
                steps(&m, "RUNNING"),
                steps(&m, "PENDING"),
                steps(&m, "SUCCEEDED")
            ),
            (0, 0, 1)
        );
    }

    /// Pruning takes the oldest finished steps out of the gauge, never a
    /// running one, and never more than the store lost.
    #[test]
    fn reconcile_drops_the_oldest_finished() {
        let m = StepMetrics::default();
        let mut t = Tracker::default();
        t.apply(&record("old", StepState::Succeeded, 1, 1), &m, false);
        t.apply(&record("run", StepState::Running, 1, 2), &m, false);
        t.apply(&record("new", StepState::Succeeded, 1, 3), &m, false);
        t.reconcile(3, &m.steps);
        assert_eq!(steps(&m, "SUCCEEDED"), 2);
        t.reconcile(2, &m.steps);
        assert_eq!((steps(&m, "SUCCEEDED"), steps(&m, "RUNNING")), (1, 1));
        assert!(t.steps.contains_key("new") && !t.steps.contains_key("old"));
        t.reconcile(0, &m.steps);
        assert_eq!((steps(&m, "SUCCEEDED"), steps(&m, "RUNNING")), (0, 1));
        // Seeding counted nothing.
        assert_eq!((started(&m), finished(&m, "SUCCEEDED", "")), (0, 0));
    }
}
