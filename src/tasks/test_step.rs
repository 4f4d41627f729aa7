//! A step kind for tests only (feature `test-kinds`): it works for a while, updates
//! its message, then succeeds or fails as asked. It lets the integration tests
//! drive every engine path (deadline, cancel, retry, restart, watch) through the
//! real daemon without an observer.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::steps::task::BoxFuture;
use crate::steps::{OnRestart, StepContext, StepFailure, StepResult, StepSuccess, StepTask};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestStep {
    #[serde(with = "humantime_serde")]
    pub run_for: Duration,
    pub fail_code: String,
    pub resumable: bool,
    pub progress_updates: u32,
}

impl StepTask for TestStep {
    fn run(self: Box<Self>, ctx: StepContext) -> BoxFuture<StepResult> {
        Box::pin(async move {
            let slices = self.progress_updates.max(1);
            for i in 0..slices {
                if self.progress_updates > 0 {
                    ctx.progress(format!("working {}/{}", i + 1, slices)).await;
                }
                tokio::time::sleep(self.run_for / slices).await;
            }
            ctx.output("resumed", ctx.resumed().to_string()).await;
            if self.fail_code.is_empty() {
                Ok(StepSuccess {
                    message: format!("worked for {}", humantime::format_duration(self.run_for)),
                    ..StepSuccess::default()
                })
            } else {
                Err(StepFailure::new(
                    self.fail_code.clone(),
                    format!("failed as asked with {}", self.fail_code),
                ))
            }
        })
    }

    fn on_restart(&self) -> OnRestart {
        if self.resumable {
            OnRestart::Resume
        } else {
            OnRestart::Interrupt
        }
    }
}
