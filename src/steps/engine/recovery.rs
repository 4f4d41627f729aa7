//! Restart recovery: every step a previous run left PENDING or RUNNING is
//! resolved before anyone can call in. PENDING starts again; RUNNING resumes
//! (with its original deadline) when its task says that is safe, and is failed
//! INTERRUPTED otherwise; a step whose deadline passed while obhostd was down is
//! TIMED_OUT; one no task can be built for (a kind this build does not know) is
//! failed INTERRUPTED.

use std::time::SystemTime;

use tracing::{info, warn};

use super::Engine;
use super::Start;
use crate::steps::model::{Secrets, StepError, StepRecord, StepState, codes};
use crate::steps::store::StoreError;
use crate::steps::task::{OnRestart, StepTask};

/// What happens to one unfinished record.
enum Fate {
    Start(Box<dyn StepTask>, bool),
    End(Box<StepRecord>),
}

impl Engine {
    pub(super) async fn resolve_unfinished(
        &self,
        mut unfinished: Vec<StepRecord>,
    ) -> Result<(), StoreError> {
        unfinished.sort_by_key(|r| r.revision);
        let now = SystemTime::now();
        for record in unfinished {
            match self.fate(&record, now) {
                Fate::Start(task, resumed) => {
                    info!(step = %record.id(), resumed, "continuing step left unfinished by the previous run");
                    self.start_driver(&record, task, Start::Waiting { resumed });
                }
                Fate::End(next) => {
                    warn!(step = %next.id(), state = %next.state, "step left unfinished by the previous run resolved");
                    let previous = record.revision;
                    let (_, pending) = self.stage(&mut self.lock(), *next, Some(previous))?;
                    pending.wait().await?;
                }
            }
        }
        Ok(())
    }

    fn fate(&self, record: &StepRecord, now: SystemTime) -> Fate {
        let id = record.id();
        let built =
            self.shared
                .factory
                .build(record.spec.kind, &record.spec.params, &Secrets::default());
        let end = |state: StepState, code: &str, message: String| {
            let mut next = record.clone();
            next.finished_at = Some(now);
            next.state = state;
            next.message = message.clone();
            next.error = Some(StepError::new(code, message));
            Fate::End(Box::new(next))
        };
        match built {
            Err(why) => end(
                StepState::Failed,
                codes::INTERRUPTED,
                format!(
                    "obhostd restarted and cannot run this step again ({why}); RetryStep '{id}' with a daemon that knows it"
                ),
            ),
            Ok(_) if record.deadline <= now => end(
                StepState::TimedOut,
                codes::DEADLINE_EXCEEDED,
                format!(
                    "the deadline passed while obhostd was not running; last: {}. RetryStep '{id}' runs it again",
                    record.message
                ),
            ),
            Ok(task) if record.state == StepState::Pending => Fate::Start(task, false),
            Ok(task) => match task.on_restart() {
                OnRestart::Resume => Fate::Start(task, true),
                OnRestart::Interrupt => end(
                    StepState::Failed,
                    codes::INTERRUPTED,
                    format!(
                        "obhostd stopped while this step was running, so its outcome is unknown; \
                         check the host, then RetryStep '{id}' to run it again"
                    ),
                ),
            },
        }
    }
}
