//! Steps: the model, the durable store and the engine that runs them.
//!
//! The engine knows nothing of observers. A step kind is a [`task::StepTask`] built
//! by a [`task::TaskFactory`] from parameters the engine stores; the engine gives
//! every step the same life:
//!
//! ```text
//! PENDING ──> RUNNING ──> SUCCEEDED | FAILED | TIMED_OUT
//!    └──────────┴──────> CANCELLED            (CancelStep)
//! FAILED | TIMED_OUT | CANCELLED ──> PENDING  (RetryStep, attempt + 1)
//! ```

pub mod engine;
pub mod model;
pub mod store;
pub mod task;

pub use engine::{Engine, EngineConfig, EngineError, Filter, Retention, Watch, WatchError};
pub use model::{
    CheckResult, CheckStatus, Secrets, StepError, StepKind, StepRecord, StepSpec, StepState,
};
pub use task::{
    OnRestart, StepContext, StepFailure, StepResult, StepSuccess, StepTask, TaskFactory,
};
