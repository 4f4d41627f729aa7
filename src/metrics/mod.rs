//! Prometheus metrics (`[metrics] listen`): the registry and its families, fed
//! from outside the engine so the engine knows nothing of them.
//!
//! - step counts, durations, starts and finishes come from the committer's change
//!   feed ([`steps::StepMetrics`]): every durable record passes through it once;
//! - gRPC requests come from a tower layer around every service ([`grpc`]);
//! - observers, store size and watchers are read at scrape time, on a blocking
//!   thread ([`http`] runs the whole encode there), so a scrape never blocks the
//!   runtime and costs nothing between scrapes;
//! - the commit latency histogram is a process-wide static, because the
//!   committer is a plain thread started before any handle exists.
//!
//! Label values that callers control (gRPC method names) are bounded: a hostile
//! client must not be able to grow the registry without limit (see [`grpc`]).

mod agent;
pub mod grpc;
pub mod http;
mod observers;
mod steps;

use std::sync::{Arc, LazyLock, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::observer::Registry as Observers;
use crate::steps::Engine;
use crate::steps::store::Store;

/// The build's version and git commit (build.rs; "unknown" outside a checkout).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const COMMIT: &str = env!("OBHOST_GIT_COMMIT");

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcLabels {
    method: String,
    code: String,
}

/// How "agent up" was judged: `health_check` or `process`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabels {
    judged_by: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    commit: String,
}

/// One `store.apply`: an fsync, so 100 µs (tmpfs) to ~1.6 s (a stalled disk).
static COMMIT_SECONDS: LazyLock<Histogram> =
    LazyLock::new(|| Histogram::new(exponential_buckets(0.0001, 2.5, 14)));

/// Counts one commit of the store (the committer's hook, set by the daemon).
/// A static, because the committer thread starts before [`Metrics`] exists.
pub fn observe_commit(took: std::time::Duration) {
    COMMIT_SECONDS.observe(took.as_secs_f64());
}

/// What the scrape reads live.
pub struct Sources {
    pub engine: Engine,
    pub observers: Arc<Observers>,
    pub store: Store,
}

/// The daemon's metrics; one per daemon, shared as `Arc<Metrics>`.
pub struct Metrics {
    registry: Registry,
    /// The step families and the tracker that feeds them.
    steps: Arc<steps::StepMetrics>,
    grpc_requests: Family<GrpcLabels, Counter>,
    report_lag: Gauge,
    report_failures: Counter,
    report_dropped: Counter,
    /// Set once the daemon has its sources; scrapes before see no live data.
    live: std::sync::OnceLock<Sources>,
    /// Serialises scrapes: each refreshes the live gauges before encoding.
    scrape: Mutex<()>,
    watchers: Gauge,
    /// Open TailObserverLog streams, kept by the streams themselves.
    log_tails: Gauge,
    store_size: Gauge,
    observers: Arc<observers::Collector>,
    agent_up: Family<AgentLabels, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// A constant 1 whose labels say which obhostd answers the scrape; nothing
/// changes it after registration, so no field keeps it.
fn register_build_info(registry: &mut Registry) {
    let build = Family::<BuildLabels, Gauge>::default();
    build
        .get_or_create(&BuildLabels {
            version: VERSION.into(),
            commit: COMMIT.into(),
        })
        .set(1);
    registry.register(
        "obhost_build_info",
        "Always 1; the labels say which obhostd this is",
        build,
    );
}

impl Metrics {
    /// Every family, registered once and in the order a scrape lists them.
    pub fn new() -> Arc<Metrics> {
        let mut metrics = Metrics::unregistered();
        let mut registry = Registry::default();
        metrics.register_steps(&mut registry);
        metrics.register_api(&mut registry);
        metrics.register_report(&mut registry);
        metrics.register_store(&mut registry);
        register_build_info(&mut registry);
        metrics.register_agent(&mut registry);
        registry.register_collector(Box::new(metrics.observers.clone()));
        metrics.registry = registry;
        Arc::new(metrics)
    }

    /// Every metric at zero, none of them in the registry yet: [`Metrics::new`]
    /// registers each before the value leaves it, so a scrape never misses one.
    fn unregistered() -> Metrics {
        Metrics {
            registry: Registry::default(),
            steps: Arc::new(steps::StepMetrics::default()),
            grpc_requests: Family::default(),
            report_lag: Gauge::default(),
            report_failures: Counter::default(),
            report_dropped: Counter::default(),
            live: std::sync::OnceLock::new(),
            scrape: Mutex::new(()),
            watchers: Gauge::default(),
            log_tails: Gauge::default(),
            store_size: Gauge::default(),
            observers: Arc::new(observers::Collector::default()),
            agent_up: Family::default(),
        }
    }

    /// The families fed by the committer's change feed (see [`steps`]).
    fn register_steps(&self, registry: &mut Registry) {
        self.steps.register(registry);
    }

    /// The gRPC service's calls and its open streams.
    fn register_api(&self, registry: &mut Registry) {
        registry.register(
            "obhost_grpc_requests",
            "gRPC calls by method and final status code",
            self.grpc_requests.clone(),
        );
        registry.register(
            "obhost_watchers",
            "Open WatchSteps streams",
            self.watchers.clone(),
        );
        registry.register(
            "obhost_log_tails",
            "Open TailObserverLog streams",
            self.log_tails.clone(),
        );
    }

    /// The push to the `[report]` endpoint.
    fn register_report(&self, registry: &mut Registry) {
        registry.register(
            "obhost_report_lag_revisions",
            "Step changes committed but not yet acknowledged by the [report] endpoint",
            self.report_lag.clone(),
        );
        registry.register(
            "obhost_report_failures",
            "Failed ReportSteps calls to the [report] endpoint",
            self.report_failures.clone(),
        );
        registry.register(
            "obhost_report_dropped",
            "Unacknowledged step changes dropped past [report] max_unacked",
            self.report_dropped.clone(),
        );
    }

    /// The state store: its file's size and the process-wide commit histogram.
    fn register_store(&self, registry: &mut Registry) {
        registry.register(
            "obhost_store_size_bytes",
            "Size of the state store file (obhostd.redb)",
            self.store_size.clone(),
        );
        registry.register(
            "obhost_store_commit_duration_seconds",
            "Time of one state store commit (one transaction, one fsync)",
            COMMIT_SECONDS.clone(),
        );
    }

    fn register_agent(&self, registry: &mut Registry) {
        registry.register(
            "obhost_agent_service_up",
            "1 if the agent StartAgentService last started is up (its health check passes, or \
             without one its process still runs); absent until one was started",
            self.agent_up.clone(),
        );
    }

    /// Gives the scrape its live sources and starts following the change
    /// feed. `feed` must be subscribed before the engine starts, so no change
    /// made while resolving unfinished steps is missed.
    pub fn attach(
        self: &Arc<Self>,
        sources: Sources,
        feed: tokio::sync::broadcast::Receiver<Arc<crate::steps::StepRecord>>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let store = sources.store.clone();
        let _ = self.live.set(sources);
        steps::spawn_follower(self.steps.clone(), store, feed, shutdown);
    }

    /// The gauge of open TailObserverLog streams: each stream holds one count
    /// while it is open (see `api::service`), so a scrape needs no source.
    pub fn log_tails(&self) -> Gauge {
        self.log_tails.clone()
    }

    /// `[report]`: revisions committed but not yet acknowledged.
    pub fn report_lag(&self, revisions: u64) {
        self.report_lag
            .set(i64::try_from(revisions).unwrap_or(i64::MAX));
    }

    /// `[report]`: one failed ReportSteps call.
    pub fn report_failure(&self) {
        self.report_failures.inc();
    }

    /// `[report]`: changes dropped past `max_unacked`.
    pub fn report_dropped(&self, changes: u64) {
        self.report_dropped.inc_by(changes);
    }

    /// The OpenMetrics text of every family. Blocking (it reads /proc and the
    /// store): call it on a blocking thread.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let _one = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(live) = self.live.get() {
            self.watchers
                .set(i64::try_from(live.engine.watchers()).unwrap_or(i64::MAX));
            let size = std::fs::metadata(live.store.path()).map_or(0, |m| m.len());
            self.store_size.set(i64::try_from(size).unwrap_or(i64::MAX));
            // Cheap (a table's length): tells how many finished steps
            // retention has pruned since the last scrape.
            if let Ok(stored) = live.store.count() {
                self.steps.reconcile(stored);
            }
            self.observers.sample(&live.observers.all());
            self.sample_agent();
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    /// Judges the last started agent now (outside the tracker's lock: a health
    /// check may take up to a second).
    fn sample_agent(&self) {
        let started = self.steps.last_agent();
        let (Some(started), Ok(runtime)) = (started, tokio::runtime::Handle::try_current()) else {
            return;
        };
        if let Some(up) = started.up(&runtime) {
            self.agent_up.clear();
            self.agent_up
                .get_or_create(&AgentLabels {
                    judged_by: started.judged_by().into(),
                })
                .set(i64::from(up));
        }
    }

    /// Counts one finished gRPC call. `method` is bounded by [`grpc`].
    fn grpc_request(&self, method: &str, code: &str) {
        self.grpc_requests
            .get_or_create(&GrpcLabels {
                method: method.into(),
                code: code.into(),
            })
            .inc();
    }
}
