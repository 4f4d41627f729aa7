//! A step kind for tests only (feature `test-kinds`): it works for a while, updates
//! its message, then succeeds or fails as asked. It lets the integration tests
//! drive every engine path (deadline, cancel, retry, restart, watch) through the
//! real daemon without an observer, including the misbehaviours the engine must
//! survive: a task that panics, never completes, blocks its thread or reports
//! far too much text.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::steps::task::BoxFuture;
use crate::steps::{
    OnRestart, StepContext, StepError, StepFailure, StepResult, StepSuccess, StepTask,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestStep {
    #[serde(with = "humantime_serde")]
    pub run_for: Duration,
    pub fail_code: String,
    pub resumable: bool,
    pub progress_updates: u32,
    #[serde(default)]
    pub panic_message: String,
    #[serde(default)]
    pub ignore_cancel: bool,
    #[serde(default, with = "humantime_serde")]
    pub block_thread: Duration,
    #[serde(default)]
    pub lock_key: String,
    #[serde(default)]
    pub report_bytes: u32,
}

/// `n` bytes of text over several lines.
fn filler(n: u32) -> String {
    (0..n as usize)
        .map(|i| if i % 100 == 99 { '\n' } else { 'x' })
        .collect()
}

impl StepTask for TestStep {
    fn run(self: Box<Self>, ctx: StepContext) -> BoxFuture<StepResult> {
        Box::pin(async move {
            if !self.block_thread.is_zero() {
                std::thread::sleep(self.block_thread);
            }
            if self.report_bytes > 0 {
                ctx.progress(filler(self.report_bytes)).await;
                ctx.output("report", filler(self.report_bytes)).await;
            }
            let slices = self.progress_updates.max(1);
            for i in 0..slices {
                if self.progress_updates > 0 {
                    ctx.progress(format!("working {}/{}", i + 1, slices)).await;
                }
                tokio::time::sleep(self.run_for / slices).await;
            }
            if !self.panic_message.is_empty() {
                panic!("{}", self.panic_message);
            }
            if self.ignore_cancel {
                std::future::pending::<()>().await;
            }
            ctx.output("resumed", ctx.resumed().to_string()).await;
            if self.fail_code.is_empty() {
                Ok(StepSuccess {
                    message: format!("worked for {}", humantime::format_duration(self.run_for)),
                    ..StepSuccess::default()
                })
            } else if self.report_bytes > 0 {
                let text = filler(self.report_bytes);
                Err(StepFailure::from(StepError {
                    code: self.fail_code.clone(),
                    message: text.clone(),
                    details: (0..100)
                        .map(|i| (format!("d{i:03}"), text.clone()))
                        .collect(),
                    log_tail: text.lines().map(str::to_string).collect(),
                }))
            } else {
                Err(StepFailure::new(
                    self.fail_code.clone(),
                    format!("failed as asked with {}", self.fail_code),
                ))
            }
        })
    }

    fn lock_key(&self) -> Option<String> {
        (!self.lock_key.is_empty()).then(|| self.lock_key.clone())
    }

    fn on_restart(&self) -> OnRestart {
        if self.resumable {
            OnRestart::Resume
        } else {
            OnRestart::Interrupt
        }
    }
}
