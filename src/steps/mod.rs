//! Steps: the model, the durable store, the engine that runs them and the
//! watch that follows them.
//!
//! The engine knows nothing of observers. A step kind is a [`task::StepTask`]:
//! a new step's comes with its request, already built from the parameters the
//! engine stores (as JSON) beside it; a retried or restarted step's is built
//! again from those stored parameters by a [`task::TaskFactory`]. The engine
//! gives every step the same life:
//!
//! ```text
//! PENDING ──> RUNNING ──> SUCCEEDED | FAILED | TIMED_OUT
//!    └──────────┴──────> CANCELLED            (CancelStep)
//! FAILED | TIMED_OUT | CANCELLED ──> PENDING  (RetryStep, attempt + 1)
//! ```
//!
//! Dependencies point one way: `task` knows only `model` (a task reports
//! through the [`task::StepSink`] trait); `engine` knows all of them, and its
//! `watch` (backlog pages, then the committer's live feed) is part of it. Nothing here knows a step kind, the metrics or the API: commit
//! timing leaves through a hook the daemon sets ([`engine::on_commit`]).

pub mod engine;
pub mod model;
pub mod store;
pub mod task;

pub use engine::open::Opened;
pub use engine::watch::{Watch, WatchError};
pub use engine::{Committer, Engine, EngineConfig, EngineError, Retention};
pub use model::Filter;
pub use model::{
    CheckResult, CheckStatus, Secrets, StepError, StepKind, StepRecord, StepSpec, StepState,
};
pub use task::{
    OnRestart, StepContext, StepFailure, StepResult, StepSink, StepSuccess, StepTask, TaskFactory,
    Update,
};
