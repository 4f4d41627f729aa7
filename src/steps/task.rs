//! What a step kind implements for the engine to run it.
//!
//! The engine owns everything generic (state machine, deadline, cancel, durability,
//! watch); a task only does its work and says how it ended. A task never writes
//! the store itself: it reports progress through its [`StepContext`], which goes
//! through the engine's single commit path.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::model::{CheckResult, Secrets, StepError, StepKind};

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// How a step ended, as its task sees it. Timeouts and cancellation are the
/// engine's business and never appear here.
pub type StepResult = Result<StepSuccess, StepFailure>;

#[derive(Debug, Default)]
pub struct StepSuccess {
    pub message: String,
    pub outputs: BTreeMap<String, String>,
    pub checks: Vec<CheckResult>,
}

#[derive(Debug)]
pub struct StepFailure {
    pub error: StepError,
    pub outputs: BTreeMap<String, String>,
    pub checks: Vec<CheckResult>,
}

impl StepFailure {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        StepFailure::from(StepError::new(code, message))
    }
}

impl From<StepError> for StepFailure {
    fn from(error: StepError) -> Self {
        StepFailure {
            error,
            outputs: BTreeMap::new(),
            checks: Vec::new(),
        }
    }
}

/// What to do with a step found RUNNING when the daemon starts (it crashed or was
/// restarted mid-step).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRestart {
    /// Run the task again with `StepContext::resumed` set and the original
    /// deadline; the task must be safe to run twice (e.g. a probe, or a start that
    /// first looks for the process it may already have spawned).
    Resume,
    /// Fail it with INTERRUPTED: its outcome is unknown and running it again could
    /// do harm. The operator or orchestrator decides (RetryStep).
    Interrupt,
}

pub trait StepTask: Send + Sync + 'static {
    /// Does the work. The engine drops the future at the deadline, on CancelStep
    /// and on shutdown, so a task must leave nothing half-done that a re-run
    /// cannot recognise.
    fn run(self: Box<Self>, ctx: StepContext) -> BoxFuture<StepResult>;

    /// Steps with the same key run one at a time, in the order they were
    /// accepted (e.g. one per observer home_path). The others wait as PENDING.
    fn lock_key(&self) -> Option<String> {
        None
    }

    fn on_restart(&self) -> OnRestart {
        OnRestart::Interrupt
    }
}

/// Builds a task from a stored record's parameters, for a retry or a restart:
/// what is stored must always be enough to run. (A new step's task comes with
/// its request, built from the same parameters before they were stored.)
pub trait TaskFactory: Send + Sync + 'static {
    fn build(
        &self,
        kind: StepKind,
        params: &serde_json::Value,
        secrets: &Secrets,
    ) -> Result<Box<dyn StepTask>, String>;
}

/// A change a running task makes to its own record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    Message(String),
    Output(String, String),
    /// A stage reached: `outputs.stage`, `outputs.stage_since` and the message
    /// change in one commit, so a watcher never sees a stage without its time.
    /// The message reads "`detail` (stage `name` since `since`)"; `since` is
    /// the time the stage was first reached, kept while it is repeated.
    Stage {
        name: String,
        detail: String,
    },
}

/// The output keys of a step's current stage (see [`StepContext::stage`]).
pub const STAGE: &str = "stage";
pub const STAGE_SINCE: &str = "stage_since";

/// Where a task's progress goes: the engine in the daemon, a fake in unit
/// tests. Tasks see only this (through [`StepContext`]), so a task module never
/// depends on the engine and can be tested without a store.
pub trait StepSink: Send + Sync + 'static {
    /// Commits `update` to step `id` if `attempt` is still its live attempt;
    /// returns once it is durable (or refused).
    fn update(&self, id: &str, attempt: u32, update: Update) -> BoxFuture<()>;

    /// A secret the request carried, from memory.
    fn secret(&self, id: &str, key: &str) -> Option<String>;
}

/// A task's view of its own step.
pub struct StepContext {
    pub(super) sink: Arc<dyn StepSink>,
    pub(super) id: String,
    pub(super) attempt: u32,
    pub(super) deadline: SystemTime,
    pub(super) resumed: bool,
    pub(super) cancel: CancellationToken,
    pub(super) earlier_outputs: BTreeMap<String, String>,
}

impl StepContext {
    /// A context for a task's unit test: `sink` records what the task reports;
    /// a deadline `timeout` from now, attempt 1, not resumed.
    #[cfg(any(test, feature = "test-kinds"))]
    pub fn for_test(
        id: &str,
        sink: Arc<dyn StepSink>,
        timeout: std::time::Duration,
        resumed: bool,
        earlier_outputs: BTreeMap<String, String>,
    ) -> StepContext {
        StepContext {
            sink,
            id: id.to_string(),
            attempt: 1,
            deadline: SystemTime::now() + timeout,
            resumed,
            cancel: CancellationToken::new(),
            earlier_outputs,
        }
    }

    pub fn step_id(&self) -> &str {
        &self.id
    }

    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    pub fn deadline(&self) -> SystemTime {
        self.deadline
    }

    /// True when this run continues a step that was RUNNING when the daemon
    /// stopped.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// Outputs recorded before this run began: on a resumed run, what the
    /// interrupted one wrote down (e.g. the pid it spawned).
    pub fn earlier_outputs(&self) -> &BTreeMap<String, String> {
        &self.earlier_outputs
    }

    /// A secret the request carried (e.g. a password). Kept in memory only, so
    /// after a restart of obhostd it is None until the caller repeats its request.
    pub async fn secret(&self, key: &str) -> Option<String> {
        self.sink.secret(&self.id, key)
    }

    /// Fires on CancelStep, at the deadline and on shutdown, for tasks that hold
    /// something they want to release before their future is dropped.
    pub fn cancelled(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Sets the one-line `message` clients see while the step runs. Unchanged
    /// messages are not committed, so tasks may call this on every poll.
    pub async fn progress(&self, message: impl Into<String>) {
        self.sink
            .update(&self.id, self.attempt, Update::Message(message.into()))
            .await;
    }

    /// Records that the step reached stage `name` now, with a one-line
    /// `message` about it. The stage and its start (RFC 3339, ms) are kept in
    /// `outputs.stage` / `outputs.stage_since` and named in the message, so an
    /// orchestrator tells a slow step (a stage held long, but moving) from a
    /// stuck one, and a timeout can say which stage it was held in.
    pub async fn stage(&self, name: &str, detail: impl Into<String>) {
        let update = Update::Stage {
            name: name.to_string(),
            detail: detail.into(),
        };
        self.sink.update(&self.id, self.attempt, update).await;
    }

    /// Records an output before the step ends (e.g. the pid right after a spawn,
    /// so that a restart mid-step can find the process).
    pub async fn output(&self, key: &str, value: impl Into<String>) {
        let update = Update::Output(key.to_string(), value.into());
        self.sink.update(&self.id, self.attempt, update).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A fake sink: what a task reports, in order.
    #[derive(Default)]
    struct Recorded(Mutex<Vec<Update>>);

    impl StepSink for Recorded {
        fn update(&self, _: &str, _: u32, update: Update) -> BoxFuture<()> {
            self.0.lock().unwrap().push(update);
            Box::pin(async {})
        }

        fn secret(&self, _: &str, key: &str) -> Option<String> {
            (key == "password").then(|| "s3cret".to_string())
        }
    }

    /// A task is tested without an engine or a store: its context writes to
    /// the fake sink.
    #[tokio::test]
    async fn a_context_reports_to_its_sink() {
        let sink = Arc::new(Recorded::default());
        let ctx = StepContext::for_test(
            "s1",
            sink.clone(),
            std::time::Duration::from_secs(5),
            true,
            BTreeMap::from([("pid".to_string(), "42".to_string())]),
        );
        ctx.progress("probing").await;
        ctx.output("pid", "43").await;
        assert_eq!(ctx.secret("password").await.as_deref(), Some("s3cret"));
        assert_eq!(ctx.secret("other").await, None);
        assert!(ctx.resumed());
        assert_eq!(ctx.earlier_outputs()["pid"], "42");
        assert!(ctx.deadline() > SystemTime::now());
        assert_eq!(
            *sink.0.lock().unwrap(),
            [
                Update::Message("probing".into()),
                Update::Output("pid".into(), "43".into())
            ]
        );
    }
}
