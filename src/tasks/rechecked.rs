//! Every run of a step is judged by the host's policy as it is then.
//!
//! A step's parameters are checked against `allowed_roots`, `allowed_users`
//! and `[agent_service] allowed_units` when it is requested, then stored.
//! RetryStep, and the resume after obhostd restarts, run those stored
//! parameters again, perhaps long after an administrator tightened the policy:
//! the same request made anew would be PERMISSION_DENIED, and so must the old
//! one be. So every stored step is built wrapped in [`Rechecked`], whose run first
//! judges the stored parameters by today's policy (on the blocking pool: it
//! resolves paths and looks users up) and, when they are refused, fails the
//! step with PERMISSION_DENIED before it touches anything.
//!
//! The check runs in the step, not when the engine builds it, because the
//! engine builds under its lock, where no file or user lookup belongs. A new
//! step is not wrapped: its request was judged a moment before, and judging
//! it again would only look the same user up twice.

use crate::policy::SpecError;
use crate::steps::model::codes::Code;
use crate::steps::task::BoxFuture;
use crate::steps::{OnRestart, StepContext, StepFailure, StepResult, StepTask};

/// The stored parameters' check against today's policy.
pub(crate) type Check = Box<dyn FnOnce() -> Result<(), SpecError> + Send + Sync>;

/// A step kind whose every run starts with [`Check`].
pub(crate) struct Rechecked {
    pub inner: Box<dyn StepTask>,
    pub check: Check,
}

impl StepTask for Rechecked {
    fn run(self: Box<Self>, ctx: StepContext) -> BoxFuture<StepResult> {
        Box::pin(async move {
            let Rechecked { inner, check } = *self;
            let judged = tokio::task::spawn_blocking(check)
                .await
                .unwrap_or_else(|e| {
                    Err(SpecError::Invalid(format!(
                        "the policy check of this step failed: {e}"
                    )))
                });
            match judged {
                Ok(()) => inner.run(ctx).await,
                Err(SpecError::Denied(m)) => Err(StepFailure::new(
                    Code::PermissionDenied,
                    format!(
                        "the host's policy refuses this step as it stands now: {m} (the policy was changed after the step was made)"
                    ),
                )),
                Err(SpecError::Invalid(m)) => Err(StepFailure::new(
                    Code::InvalidArgument,
                    format!("this step's parameters no longer hold: {m}"),
                )),
            }
        })
    }

    fn lock_key(&self) -> Option<String> {
        self.inner.lock_key()
    }

    fn on_restart(&self) -> OnRestart {
        self.inner.on_restart()
    }
}
