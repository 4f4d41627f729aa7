//! Drivers: each accepted step gets one, a tokio task that waits for the step's
//! lock key, marks it RUNNING, runs the task under the deadline and commits the
//! end state. A step whose key is free when it is accepted is staged RUNNING
//! with its turn already taken ([`Start::Now`]): one commit fewer between a
//! request and the work, which is most of a step's cost to a caller. CancelStep commits CANCELLED itself and then fires the driver's
//! token; a driver never overwrites a terminal state or another attempt's record
//! ([`Engine::update_if_live`]), which is what makes cancel, retry and a
//! late-finishing task race safely.
//!
//! The task itself runs in a tokio task of its own, which the driver awaits under
//! the deadline and the cancel token and aborts when either fires. So a task that
//! never completes, ignores its token or blocks its thread cannot keep its step
//! past the deadline, and a task that panics ends its step FAILED with code
//! INTERNAL instead of taking the driver down with it.
//!
//! On shutdown drivers return without committing: the steps stay RUNNING in the
//! store and are resolved on the next start like after a crash, so a graceful
//! restart and `kill -9` follow one code path.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, error, info, warn};

use super::{Engine, Start, Turn};
use crate::steps::model::{StepError, StepRecord, StepState, codes, truncated};
use crate::steps::task::{STAGE, STAGE_SINCE, StepContext, StepFailure, StepResult, StepTask};

/// What a driver needs to know of the attempt it runs.
struct Run {
    id: String,
    attempt: u32,
    deadline: SystemTime,
    start: Start,
    earlier_outputs: BTreeMap<String, String>,
}

pub(super) enum Outcome {
    Done(StepResult),
    TimedOut,
    /// The task panicked (or was torn down some other way): a bug of obhostd.
    Crashed(String),
}

impl Engine {
    /// Decides how a new attempt begins and, when its turn is free, makes the
    /// record RUNNING before it is staged.
    pub(super) fn begin(
        &self,
        record: &mut StepRecord,
        task: &dyn StepTask,
        now: SystemTime,
    ) -> Start {
        let turn = match task.lock_key() {
            None => None,
            Some(key) => match self.key_lock(&key).try_lock_owned() {
                Ok(turn) => Some(turn),
                Err(_) => return Start::Waiting { resumed: false },
            },
        };
        record.state = StepState::Running;
        record.started_at = Some(now);
        record.message = "running".into();
        Start::Now(turn)
    }

    pub(super) fn start_driver(&self, record: &StepRecord, task: Box<dyn StepTask>, start: Start) {
        debug!(
            step = record.id(),
            attempt = record.attempt,
            kind = ?record.spec.kind,
            key = task.lock_key().as_deref().unwrap_or("-"),
            waits = matches!(start, Start::Waiting { resumed: false }),
            resumed = matches!(start, Start::Waiting { resumed: true }),
            deadline = %humantime::format_rfc3339_seconds(record.deadline),
            "step driver started"
        );
        let token = self.shared.shutdown.child_token();
        self.lock()
            .runs
            .insert(record.id().to_string(), (record.attempt, token.clone()));
        let engine = self.clone();
        let run = Run {
            id: record.id().to_string(),
            attempt: record.attempt,
            deadline: record.deadline,
            start,
            earlier_outputs: record.outputs.clone(),
        };
        self.shared.drivers.spawn(async move {
            engine.drive(run, task, token).await;
        });
    }

    async fn drive(self, run: Run, task: Box<dyn StepTask>, token: CancellationToken) {
        let (id, attempt) = (run.id.clone(), run.attempt);
        let remaining = run
            .deadline
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        let at = tokio::time::Instant::now() + remaining;
        let work = self.clone().work(run, task, token.clone());
        let outcome = tokio::select! {
            biased;
            // CancelStep has committed CANCELLED, or the daemon is stopping and
            // the next start resolves this step: either way, nothing to commit.
            () = token.cancelled() => None,
            r = tokio::time::timeout_at(at, work) => match r {
                Ok(done) => done,
                Err(_) => {
                    debug!(step = %id, attempt, "deadline reached: the task is told, then aborted");
                    // Tasks that hold something get told; the abort follows.
                    token.cancel();
                    Some((Outcome::TimedOut, None))
                }
            },
        };
        if let Some((outcome, turn)) = outcome {
            self.finish(&id, attempt, outcome).await;
            // Only now may the next step on the key start: a watcher never
            // sees it RUNNING beside this one, which is still RUNNING.
            drop(turn);
        }
        let mut state = self.lock();
        if state.runs.get(&id).is_some_and(|(a, _)| *a == attempt) {
            state.runs.remove(&id);
        }
        drop(state);
        if !self.shared.shutdown.is_cancelled() {
            self.shared.prune.notify_one();
        }
    }

    /// Waits for the key, marks RUNNING, runs the task in a task of its own.
    /// A task that ends hands back the key's turn, for the driver to release
    /// once the outcome is committed.
    async fn work(
        self,
        run: Run,
        task: Box<dyn StepTask>,
        token: CancellationToken,
    ) -> Option<(Outcome, Option<Turn>)> {
        let resumed = matches!(run.start, Start::Waiting { resumed: true });
        let ctx = StepContext {
            sink: Arc::new(self.clone()),
            id: run.id,
            attempt: run.attempt,
            deadline: run.deadline,
            resumed,
            cancel: token,
            earlier_outputs: run.earlier_outputs,
        };
        let turn = match run.start {
            Start::Now(turn) => turn,
            Start::Waiting { .. } => {
                let turn = match task.lock_key() {
                    Some(key) => Some(self.take_turn(&key, &ctx).await),
                    None => None,
                };
                if !self.mark_running(&ctx).await {
                    return None;
                }
                turn
            }
        };
        // The task gets a tokio task of its own: the deadline is then enforced
        // by the driver, outside it, whatever the task does, and its panic comes
        // back as a JoinError. The key's turn goes with it, so the next step on
        // the key starts only once this task is really gone (a panic or an
        // abort drops it with the task). Dropping the handle (deadline,
        // cancel, shutdown) aborts the task.
        let handle = AbortOnDropHandle::new(self.shared.drivers.spawn(async move {
            let result = task.run(ctx).await;
            (result, turn)
        }));
        Some(match handle.await {
            Ok((result, turn)) => (Outcome::Done(result), turn),
            Err(e) => (
                Outcome::Crashed(match e.try_into_panic() {
                    Ok(payload) => panic_text(payload.as_ref()),
                    Err(e) => e.to_string(),
                }),
                None,
            ),
        })
    }

    /// Serialises steps that share a lock key (e.g. one observer home_path).
    async fn take_turn(&self, key: &str, ctx: &StepContext) -> Turn {
        let lock = self.key_lock(key);
        match lock.clone().try_lock_owned() {
            Ok(guard) => guard,
            Err(_) => {
                ctx.progress(format!("waiting for another step on {key} to finish"))
                    .await;
                let turn = lock.lock_owned().await;
                debug!(step = %ctx.id, key, "the key is free: the step's turn");
                turn
            }
        }
    }

    fn key_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .shared
            .key_locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        locks.entry(key.to_string()).or_default().clone()
    }

    async fn mark_running(&self, ctx: &StepContext) -> bool {
        let resumed = ctx.resumed;
        self.update_if_live(&ctx.id, ctx.attempt, |r| {
            r.state = StepState::Running;
            if resumed {
                r.message = "resumed after obhostd restarted".into();
            } else {
                r.started_at = Some(SystemTime::now());
                r.message = "running".into();
            }
            true
        })
        .await
        .is_some()
    }

    pub(super) async fn finish(&self, id: &str, attempt: u32, outcome: Outcome) {
        let done = self
            .update_if_live(id, attempt, |r| {
                r.finished_at = Some(SystemTime::now());
                apply_outcome(r, outcome);
                true
            })
            .await;
        // A step that did not succeed is something an operator looks for in
        // the journal: WARN, with its code.
        match done {
            Some(r) if r.state == StepState::Succeeded => {
                info!(step = id, attempt, state = %r.state, detail = %r.message, "step finished");
            }
            Some(r) => {
                let code = r.error.as_ref().map_or("", |e| e.code.as_str());
                warn!(step = id, attempt, state = %r.state, code, detail = %r.message, "step finished");
            }
            None => {}
        }
    }
}

/// Writes how an attempt ended into its record.
fn apply_outcome(r: &mut StepRecord, outcome: Outcome) {
    let id = r.id().to_string();
    match outcome {
        Outcome::Done(Ok(success)) => {
            r.state = StepState::Succeeded;
            r.message = if success.message.is_empty() {
                "succeeded".into()
            } else {
                success.message
            };
            r.outputs.extend(success.outputs);
            r.checks = success.checks;
        }
        Outcome::Done(Err(StepFailure {
            mut error,
            outputs,
            checks,
        })) => {
            // The last stage reached is part of every failure of a staged
            // step: how far it got is half of why it failed.
            if let Some(stage) = r.outputs.get(STAGE) {
                error
                    .details
                    .entry(STAGE.to_string())
                    .or_insert_with(|| stage.clone());
            }
            r.state = StepState::Failed;
            r.message = error.message.clone();
            r.error = Some(error);
            r.outputs.extend(outputs);
            r.checks = checks;
        }
        Outcome::Crashed(panic) => {
            let panic = truncated(&panic, 1024);
            error!(step = %id, attempt = r.attempt, panic = %panic, "step task panicked: a bug in obhostd");
            let message = format!(
                "obhostd hit a bug while running this step (its task panicked); \
                 the daemon's log has the details (journalctl -u obhostd). \
                 Check the host, then RetryStep '{id}'"
            );
            r.state = StepState::Failed;
            r.error = Some(StepError::new(codes::INTERNAL, message.clone()));
            r.message = message;
        }
        Outcome::TimedOut => {
            let timeout = humantime::format_duration(r.spec.timeout);
            let held = held_stage(&r.outputs);
            let message = format!(
                "step did not finish within its timeout of {timeout}; {}last: {}. \
                 Give a longer meta.timeout, or fix what it waited for and RetryStep",
                held.as_ref()
                    .map(|(stage, held)| format!("held at stage {stage} for {held}; "))
                    .unwrap_or_default(),
                r.message
            );
            let mut error = StepError::new(codes::DEADLINE_EXCEEDED, message.clone());
            if let Some((stage, _)) = held {
                error.details.insert(STAGE.to_string(), stage);
            }
            r.state = StepState::TimedOut;
            r.error = Some(error);
            r.message = message;
        }
    }
}

/// The stage a step was in when it timed out, and how long it had been there
/// (to the second): what the orchestrator needs to tell a start that was
/// still moving from one stuck in one place.
fn held_stage(outputs: &BTreeMap<String, String>) -> Option<(String, String)> {
    let stage = outputs.get(STAGE)?.clone();
    let held = outputs
        .get(STAGE_SINCE)
        .and_then(|s| humantime::parse_rfc3339(s).ok())
        .and_then(|since| SystemTime::now().duration_since(since).ok())
        .map(|d| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string())
        .unwrap_or_else(|| "an unknown time".into());
    Some((stage, held))
}

/// A panic's message, as far as it is text.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".into()
    }
}
