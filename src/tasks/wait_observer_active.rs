//! "Wait observer active" (WAIT_OBSERVER_ACTIVE).
//!
//! Succeeds when the observer's process is alive, its MySQL port answers with a
//! handshake, and (with a user) login works and the query returns a row. Probes
//! every few tens of ms, backing off to 200 ms: OceanBase's own tools poll every
//! 1-3 s, which is seconds of a start lost for nothing. The observer's death is
//! seen at once through its pidfd, not at the next probe.
//!
//! The password lives in the engine's memory only. After a restart of obhostd a
//! resumed wait that needs it says so in its message and waits (within its
//! original deadline) for the caller to repeat the request, which supplies it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Deps, fail_with_log};
use crate::observer::locate::{self, Found, Target};
use crate::probe::mysql::{self, Credentials};
use crate::process::Handle;
use crate::steps::task::BoxFuture;
use crate::steps::{OnRestart, StepContext, StepResult, StepSuccess, StepTask};

pub const PASSWORD: &str = "password";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitParams {
    pub home_path: PathBuf,
    pub mysql_port: u16,
    /// Empty: handshake only.
    pub user: String,
    /// Whether the request carried a password (the password itself is never here).
    pub with_password: bool,
    pub sql: String,
}

pub struct WaitObserverActive {
    pub params: WaitParams,
    pub deps: Arc<Deps>,
}

const FIRST_PAUSE: Duration = Duration::from_millis(20);
const MAX_PAUSE: Duration = Duration::from_millis(200);

impl WaitObserverActive {
    async fn wait(self: Box<Self>, ctx: StepContext) -> StepResult {
        let p = &self.params;
        let registry = &self.deps.registry;
        let target = Target::for_home(&p.home_path, registry);
        let id = match locate::find(&target, registry) {
            Found::Running(id) => id,
            Found::Stale(_) | Found::NotRunning => {
                return Err(fail_with_log(
                    "PROCESS_NOT_RUNNING",
                    format!(
                        "no observer is running for home_path '{}'; start it (StartObserver) before waiting for it",
                        p.home_path.display()
                    ),
                    &p.home_path,
                ));
            }
        };
        let handle = Handle::open(id).map_err(|_| {
            fail_with_log(
                "PROCESS_EXITED",
                format!("the observer (pid {}) exited before the wait began", id.pid),
                &p.home_path,
            )
        })?;

        let probing = async {
            let mut pause = FIRST_PAUSE;
            loop {
                let password = if p.with_password {
                    match ctx.secret(PASSWORD).await {
                        Some(pw) => Some(pw),
                        None => {
                            ctx.progress(
                                "obhostd restarted and keeps passwords in memory only: repeat this WaitObserverActive request (same step_id) to supply it",
                            )
                            .await;
                            tokio::time::sleep(MAX_PAUSE).await;
                            continue;
                        }
                    }
                } else {
                    None
                };
                let creds = (!p.user.is_empty()).then(|| Credentials {
                    user: &p.user,
                    password: password.as_deref().unwrap_or(""),
                    sql: &p.sql,
                });
                match mysql::probe(p.mysql_port, id.pid, creds.as_ref()).await {
                    Ok(()) => return,
                    Err(e) => ctx.progress(e.to_string()).await,
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
        };
        tokio::select! {
            () = probing => {}
            () = handle.exited() => {
                let exit = tokio::time::timeout(Duration::from_secs(1), registry.reaper().wait(id.pid)).await.ok();
                let how = exit.map(|e| e.describe()).unwrap_or_else(|| "exited".into());
                let mut f = fail_with_log(
                    "PROCESS_EXITED",
                    format!("the observer (pid {}) {how} while waiting for it to become active", id.pid),
                    &p.home_path,
                );
                f.error.details.insert("pid".into(), id.pid.to_string());
                if let Some(e) = exit {
                    if let Some(c) = e.code {
                        f.error.details.insert("exit_code".into(), c.to_string());
                    }
                    if let Some(s) = e.signal {
                        f.error.details.insert("signal".into(), s.to_string());
                    }
                }
                return Err(f);
            }
        }
        let mut success = StepSuccess {
            message: if p.user.is_empty() {
                format!(
                    "observer (pid {}) answers MySQL on port {}",
                    id.pid, p.mysql_port
                )
            } else {
                format!(
                    "observer (pid {}) active: '{}' logged in on port {} and the query returned rows",
                    id.pid, p.user, p.mysql_port
                )
            },
            ..StepSuccess::default()
        };
        success.outputs.insert("pid".into(), id.pid.to_string());
        Ok(success)
    }
}

impl StepTask for WaitObserverActive {
    fn run(self: Box<Self>, ctx: StepContext) -> BoxFuture<StepResult> {
        Box::pin(self.wait(ctx))
    }

    /// Waiting is harmless to repeat: resume with the original deadline.
    fn on_restart(&self) -> OnRestart {
        OnRestart::Resume
    }
}
