//! What the engine refuses, and why: one error enum for the engine's API,
//! mapped to gRPC codes in one place (`api::status`). Every message says what
//! the caller can do about it.

use crate::steps::model::StepState;
use crate::steps::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("step '{0}' not found")]
    NotFound(String),
    #[error(
        "step '{id}' already exists with different {differs}; repeat the original request to follow it, or use a new step_id"
    )]
    Conflict { id: String, differs: String },
    #[error("step '{id}' is {state}; only FAILED, TIMED_OUT or CANCELLED steps can be retried")]
    NotRetryable { id: String, state: StepState },
    #[error("{0}")]
    InvalidParams(String),
    #[error(
        "{active} steps are already PENDING or RUNNING, the limit set by [limits] max_active_steps = {limit}; \
         wait for some to finish (or CancelStep them), or raise max_active_steps in obhostd's config"
    )]
    TooManyActive { active: usize, limit: usize },
    #[error(
        "{limit} WatchSteps streams are already open, the limit set by [limits] max_watchers = {limit}; \
         close streams you no longer read, or raise max_watchers in obhostd's config"
    )]
    TooManyWatchers { limit: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
}
