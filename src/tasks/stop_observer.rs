//! "Stop observer process" (STOP_OBSERVER_PROCESS).
//!
//! SIGTERM, then SIGKILL after `grace` (`force`: SIGKILL at once), only ever to
//! the identified process (through a pidfd). SUCCEEDED once the process is gone
//! *and* the ports it listened on are free, because the next start needs them.
//! The real observer's SIGTERM handler ends in SIGKILL anyway; OBD kills -9
//! straight away. We give it the grace first.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use super::deps::Deps;
use super::process_steps::blocking;
use crate::observer::locate::{self, Found, Target};
use crate::policy::{Policy, SpecError, checked_path};
use crate::process::{Handle, inspect, pidfile};
use crate::steps::model::codes::Code;
use crate::steps::task::BoxFuture;
use crate::steps::{OnRestart, StepContext, StepFailure, StepResult, StepSuccess, StepTask};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopParams {
    pub home_path: PathBuf,
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    pub force: bool,
}

impl StopParams {
    /// Judges the stored parameters by the policy as it is now (see
    /// [`ObserverSpec::recheck`](crate::observer::ObserverSpec::recheck)).
    pub fn recheck(&self, policy: &Policy) -> Result<(), SpecError> {
        let home = self.home_path.to_string_lossy();
        crate::policy::same_path(
            "home_path",
            &self.home_path,
            checked_path("home_path", &home, policy)?,
        )
    }
}

/// SIGTERM's grace when the request gives none.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// Checks a StopObserver request, before any step exists. `timeout` is the
/// step's: a grace as long would leave no time to SIGKILL and wait.
pub fn resolve(
    home_path: &str,
    grace: Option<Duration>,
    force: bool,
    timeout: Duration,
    policy: &Policy,
) -> Result<StopParams, SpecError> {
    let home_path = checked_path("home_path", home_path, policy)?;
    let grace = grace.unwrap_or(DEFAULT_GRACE);
    if grace >= timeout {
        return Err(SpecError::Invalid(format!(
            "grace {} is not shorter than the step's timeout {}; give a shorter grace or a longer meta.timeout",
            humantime::format_duration(grace),
            humantime::format_duration(timeout)
        )));
    }
    Ok(StopParams {
        home_path,
        grace,
        force,
    })
}

pub struct StopObserver {
    pub params: StopParams,
    pub deps: Arc<Deps>,
}

impl StopObserver {
    async fn stop(self: Box<Self>, ctx: StepContext) -> StepResult {
        let registry = &self.deps.registry;
        let target = Target::for_home(&self.params.home_path, registry);
        let mut outputs = BTreeMap::new();
        let id = match locate::find_async(target.clone(), registry.clone()).await {
            Found::Running(id) => id,
            Found::Stale(_) | Found::NotRunning => {
                let pid_file = target.pid_file.clone();
                blocking(move || pidfile::remove_if_owned(&pid_file, None).ok()).await;
                outputs.insert("already_stopped".to_string(), "true".to_string());
                return Ok(StepSuccess {
                    message: "observer already stopped".into(),
                    outputs,
                    checks: Vec::new(),
                });
            }
        };
        outputs.insert("pid".to_string(), id.pid.to_string());
        outputs.insert("already_stopped".to_string(), "false".to_string());
        // Only what this process holds: a port someone else listens on is not
        // ours to wait for.
        let pid = id.pid;
        let ports = blocking(move || inspect::listening_ports(pid)).await;

        let handle = match Handle::open(id) {
            Ok(h) => h,
            Err(_) => {
                // Died between the look and the stop: say how, when obhostd
                // collected it (a stop is often what follows a failed start).
                let exit = crate::process::launch::exit_of_process(registry.reaper(), &id).await;
                outputs.insert("already_stopped".to_string(), "true".to_string());
                if let Some(e) = exit {
                    outputs.insert("exit".to_string(), e.describe());
                }
                return Ok(StepSuccess {
                    message: match exit {
                        Some(e) => format!(
                            "observer (pid {}) had exited on its own: it {}",
                            id.pid,
                            e.describe()
                        ),
                        None => "observer exited on its own".into(),
                    },
                    outputs,
                    checks: Vec::new(),
                });
            }
        };
        let killed = self.terminate(&ctx, &handle).await?;
        handle.exited().await;
        let exit = tokio::time::timeout(Duration::from_secs(1), registry.reaper().wait(id.pid))
            .await
            .ok();
        registry
            .record_exit_async(&target.home_path, id, exit)
            .await;
        outputs.insert("killed".to_string(), killed.to_string());
        if let Some(e) = exit {
            outputs.insert("exit".to_string(), e.describe());
        }

        wait_ports_free(&ctx, id.pid, ports).await;
        let pid_file = target.pid_file.clone();
        blocking(move || pidfile::remove_if_owned(&pid_file, Some(&id)).ok()).await;
        Ok(StepSuccess {
            message: format!(
                "observer (pid {}) stopped{}",
                id.pid,
                if killed { " with SIGKILL" } else { "" }
            ),
            outputs,
            checks: Vec::new(),
        })
    }

    /// SIGTERM, then SIGKILL after the grace (`force`: SIGKILL at once), through
    /// the pidfd; true when SIGKILL was sent.
    async fn terminate(&self, ctx: &StepContext, handle: &Handle) -> Result<bool, StepFailure> {
        let pid = handle.identity().pid;
        let signal_failed =
            |e: crate::process::ControlError| StepFailure::new(Code::SignalFailed, e.to_string());
        if self.params.force {
            ctx.progress(format!("sent SIGKILL to pid {pid}")).await;
            ignore_gone(handle.signal(Signal::SIGKILL)).map_err(signal_failed)?;
            return Ok(true);
        }
        ignore_gone(handle.signal(Signal::SIGTERM)).map_err(signal_failed)?;
        ctx.progress(format!(
            "sent SIGTERM to pid {pid}; waiting up to {} before SIGKILL",
            humantime::format_duration(self.params.grace)
        ))
        .await;
        if handle.exited_within(self.params.grace).await {
            return Ok(false);
        }
        ctx.progress(format!("pid {pid} outlived the grace period; sent SIGKILL"))
            .await;
        ignore_gone(handle.signal(Signal::SIGKILL)).map_err(signal_failed)?;
        Ok(true)
    }
}

/// A process that exited between our look and our signal is stopped already.
fn ignore_gone(
    r: Result<(), crate::process::ControlError>,
) -> Result<(), crate::process::ControlError> {
    match r {
        Err(crate::process::ControlError::NotThatProcess { .. }) => Ok(()),
        other => other,
    }
}

/// Returns once nothing listens on the ports the stopped process held: the
/// next start needs them, and the kernel may release them a moment after the
/// process is gone.
async fn wait_ports_free(ctx: &StepContext, pid: i32, ports: Vec<u16>) {
    for port in ports {
        let listening = move || blocking(move || inspect::port_listening(port));
        if listening().await {
            ctx.progress(format!(
                "pid {pid} is gone; waiting for port {port} to be released"
            ))
            .await;
            while listening().await {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

impl StepTask for StopObserver {
    fn run(self: Box<Self>, ctx: StepContext) -> BoxFuture<StepResult> {
        Box::pin(self.stop(ctx))
    }

    fn lock_key(&self) -> Option<String> {
        Some(super::process_steps::observer_lock(&self.params.home_path))
    }

    /// Stopping is idempotent: run it again.
    fn on_restart(&self) -> OnRestart {
        OnRestart::Resume
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_defaults_and_must_leave_time_to_kill() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path().display().to_string();
        let policy = Policy::default();
        let minute = Duration::from_secs(60);
        let p = resolve(&h, None, false, minute, &policy).unwrap();
        assert_eq!(p.grace, DEFAULT_GRACE);
        let p = resolve(&h, Some(Duration::ZERO), true, minute, &policy).unwrap();
        assert!(p.force);
        let e = resolve(&h, Some(minute), false, minute, &policy).unwrap_err();
        assert!(
            e.to_string()
                .contains("is not shorter than the step's timeout"),
            "{e}"
        );
        assert!(resolve("not/absolute", None, false, minute, &policy).is_err());
    }
}
