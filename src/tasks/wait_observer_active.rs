//! "Wait observer active" (WAIT_OBSERVER_ACTIVE).
//!
//! Succeeds when the observer's process is alive, its MySQL port answers with a
//! handshake, and (with a user) login works and the query returns a row. Until
//! the port accepts, it is looked at every few ms (a refused loopback connect
//! costs microseconds), and the probe runs the moment it does: readiness is seen
//! within ~10 ms, not after a backoff of hundreds (OceanBase's own tools poll
//! every 1-3 s, which is seconds of a start lost for nothing). The observer's
//! death is seen at once through its pidfd, not at the next probe.
//!
//! The password lives in the engine's memory only. After a restart of obhostd a
//! resumed wait that needs it says so in its message and waits (within its
//! original deadline) for the caller to repeat the request, which supplies it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::deps::Deps;
use super::process_steps::{self, fail_with_log, stage};
use crate::observer::ObserverRecord;
use crate::observer::locate::{self, Found, Target};
use crate::observer::spec;
use crate::policy::{self, Policy, SpecError};
use crate::probe::{
    self,
    mysql::{self, Credentials, ProbeError},
};
use crate::process::{Exit, Handle, Identity, inspect, launch};
use crate::steps::model::codes::Code;
use crate::steps::task::BoxFuture;
use crate::steps::{OnRestart, StepContext, StepFailure, StepResult, StepSuccess, StepTask};

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

impl WaitParams {
    /// Judges the stored parameters by the policy as it is now (see
    /// [`ObserverSpec::recheck`](crate::observer::ObserverSpec::recheck)).
    pub fn recheck(&self, policy: &Policy) -> Result<(), SpecError> {
        let home = self.home_path.to_string_lossy();
        policy::same_path(
            "home_path",
            &self.home_path,
            policy::checked_path("home_path", &home, policy)?,
        )
    }
}

/// A WaitObserverActive request before checks (a copy of the wire message's
/// fields).
#[derive(Debug, Clone, Default)]
pub struct RawWait {
    pub home_path: String,
    pub mysql_port: u32,
    pub user: String,
    pub password_len: usize,
    pub sql: String,
}

/// Checks a request against the host's policy, before any step exists.
pub fn resolve(raw: RawWait, policy: &Policy) -> Result<WaitParams, SpecError> {
    let invalid = SpecError::Invalid;
    let home_path = policy::checked_path("home_path", &raw.home_path, policy)?;
    let mysql_port = policy::port(
        "mysql_port",
        raw.mysql_port,
        policy::PortUse::Listen {
            default: spec::DEFAULT_MYSQL_PORT,
        },
    )?;
    crate::bounds::check_len("user", &raw.user, crate::bounds::MAX_NAME).map_err(invalid)?;
    if raw.password_len > crate::bounds::MAX_VALUE {
        return Err(invalid("password is longer than 4096 bytes".into()));
    }
    if raw.user.is_empty() && raw.password_len > 0 {
        return Err(invalid(
            "password is set but user is not; give the user to log in as".into(),
        ));
    }
    let sql = if raw.sql.trim().is_empty() {
        "SELECT 1".to_string()
    } else {
        raw.sql
    };
    if sql.len() > 4096 {
        return Err(invalid(
            "sql is longer than 4096 bytes; give a short probe query".into(),
        ));
    }
    Ok(WaitParams {
        home_path,
        mysql_port,
        user: raw.user,
        with_password: raw.password_len > 0,
        sql,
    })
}

pub struct WaitObserverActive {
    pub params: WaitParams,
    pub deps: Arc<Deps>,
}

/// Once the port accepts, a probe that still fails (login refused, no rows yet:
/// the observer is up but not ready) is repeated after this, doubling up to
/// [`RETRY_MAX`]: each try is a full login, which is worth not hammering.
const RETRY_FIRST: Duration = Duration::from_millis(10);
const RETRY_MAX: Duration = Duration::from_millis(100);
/// How often a resumed wait looks for the password the caller must resend.
const PASSWORD_PAUSE: Duration = Duration::from_millis(200);

impl WaitObserverActive {
    async fn wait(self: Box<Self>, ctx: StepContext) -> StepResult {
        let id = self.observer().await?;
        let Ok(handle) = Handle::open(id) else {
            return Err(self.exited(id).await);
        };
        ctx.stage(
            stage::SERVER_ALIVE,
            format!("observer running (pid {}); waiting for its ports", id.pid),
        )
        .await;
        tokio::select! {
            () = self.until_active(&ctx, id.pid) => Ok(self.success(id.pid)),
            () = handle.exited() => Err(self.exited(id).await),
        }
    }

    /// The observer that must become active: it must run already. One that
    /// obhostd started and that has died since is reported as that death (how
    /// it ended, its log), never as "start it first": it was started.
    async fn observer(&self) -> Result<Identity, StepFailure> {
        let p = &self.params;
        let registry = self.deps.registry.clone();
        let target = Target::for_home(&p.home_path, &registry);
        match locate::find_async(target, registry.clone()).await {
            Found::Running(id) => Ok(id),
            Found::Stale(_) | Found::NotRunning => {
                if let Some(record) = registry.get(&p.home_path) {
                    let exit = match record.identity {
                        // Died a moment ago: the registry has yet to hear.
                        Some(id) if !id.is_alive() => {
                            Some(self.exit_of(id).await.unwrap_or(Exit::unknown(&id)))
                        }
                        Some(_) => None,
                        None => record.last_exit,
                    };
                    if let Some(exit) = exit {
                        return Err(self.ended(&record, exit).await);
                    }
                }
                Err(fail_with_log(
                    Code::ProcessNotRunning,
                    format!(
                        "no observer is running for home_path '{}'; start it (StartObserver) before waiting for it",
                        p.home_path.display()
                    ),
                    &p.home_path,
                )
                .await)
            }
        }
    }

    /// The observer obhostd last started here has ended: PROCESS_EXITED with
    /// how, when, and the step that started it.
    async fn ended(&self, record: &ObserverRecord, exit: Exit) -> StepFailure {
        let at = humantime::format_rfc3339_seconds(exit.at);
        let mut f = StepFailure::new(
            Code::ProcessExited,
            format!(
                "the observer obhostd started for '{}' (pid {}, by step '{}') {} at {at}, before this wait began",
                record.home_path.display(),
                exit.pid,
                record.started_by,
                exit.describe(),
            ),
        );
        let id = exit.start_ticks.map(|start_ticks| Identity {
            pid: exit.pid,
            start_ticks,
            boot: record
                .identity
                .map(|i| i.boot)
                .unwrap_or_else(Identity::this_boot),
        });
        f.error.details = launch::Died {
            pid: exit.pid,
            exit: Some(exit),
            during: "",
            id,
        }
        .details();
        process_steps::oom(&mut f, id, Some(exit)).await;
        f.error
            .message
            .push_str("; fix what its log (log_tail) reports, then start it again (StartObserver)");
        process_steps::explain(&mut f, &self.params.home_path, &record.log_mark).await;
        f
    }

    /// Returns once the observer answers (and, with a user, logs in and the
    /// query returns rows). The port is watched every few ms until it accepts,
    /// then probed at once.
    async fn until_active(&self, ctx: &StepContext, pid: i32) {
        let p = &self.params;
        let mut retry = RETRY_FIRST;
        let mut was_closed = false;
        // The furthest of PROBED reached so far, and the step's stage.
        let mut at: Option<usize> = None;
        let mut current = stage::SERVER_ALIVE;
        loop {
            let Some(password) = self.password(ctx).await else {
                tokio::time::sleep(PASSWORD_PAUSE).await;
                continue;
            };
            let creds = (!p.user.is_empty()).then(|| Credentials {
                user: &p.user,
                password: password.as_deref().unwrap_or(""),
                sql: &p.sql,
            });
            let result = mysql::probe(p.mysql_port, pid, creds.as_ref()).await;
            let detail = match &result {
                Ok(()) => format!("observer (pid {pid}) answered on port {}", p.mysql_port),
                Err(e) => e.to_string(),
            };
            // One probe may pass several stages at once (a ready observer
            // greets, logs in and answers in a millisecond): each is still
            // reported, in order, so every watcher sees the same sequence
            // however fast the observer is. Only forward: a stage once
            // reached stays the step's stage, and later messages say why it
            // has not moved on.
            if let Some(to) =
                reached(&result, creds.is_some()).and_then(|r| PROBED.iter().position(|s| *s == r))
                && at.is_none_or(|a| to > a)
            {
                for s in &PROBED[at.map_or(0, |a| a + 1)..to] {
                    ctx.stage(s, self.passed(s, pid)).await;
                }
                ctx.stage(PROBED[to], detail.clone()).await;
                at = Some(to);
                current = PROBED[to];
            }
            match result {
                Ok(()) => return,
                Err(ProbeError::NotListening(_)) => {
                    if current == stage::SERVER_ALIVE && self.rpc_listening(pid).await {
                        current = stage::RPC_LISTENING;
                    }
                    ctx.stage(current, detail).await;
                    if was_closed {
                        // Something accepts but nothing listens where the probe
                        // looks: do not spin on the socket table.
                        tokio::time::sleep(probe::MAX_PAUSE).await;
                    }
                    probe::until_accepting(p.mysql_port).await;
                    was_closed = true;
                    retry = RETRY_FIRST;
                }
                Err(_) => {
                    ctx.stage(current, detail).await;
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(RETRY_MAX);
                    was_closed = false;
                }
            }
        }
    }

    /// What reaching stage `s` meant, for a stage a probe passed on its way
    /// further (the furthest one gets the probe's own words).
    fn passed(&self, s: &str, pid: i32) -> String {
        let port = self.params.mysql_port;
        match s {
            stage::MYSQL_LISTENING => format!("observer (pid {pid}) listens on port {port}"),
            stage::HANDSHAKE => {
                format!("observer (pid {pid}) sent its MySQL handshake on port {port}")
            }
            stage::LOGIN => format!("'{}' logged in on port {port}", self.params.user),
            other => format!("reached {other}"),
        }
    }

    /// Whether the observer listens on its RPC port (known when obhostd
    /// started it): the stage before MySQL, which comes up last.
    async fn rpc_listening(&self, pid: i32) -> bool {
        let Some(port) = self
            .deps
            .registry
            .get(&self.params.home_path)
            .map(|r| r.rpc_port)
            .filter(|p| *p != self.params.mysql_port && *p != 0)
        else {
            return false;
        };
        if probe::connect_loopback(port).await.is_err() {
            return false;
        }
        tokio::task::spawn_blocking(move || {
            matches!(
                inspect::loopback_port_owner(port, pid),
                inspect::PortOwner::Only
            )
        })
        .await
        .unwrap_or(false)
    }

    /// `Some(None)`: no password needed; `None`: needed but not in memory (a
    /// resumed wait), so the step says so and waits for the caller to resend.
    async fn password(&self, ctx: &StepContext) -> Option<Option<String>> {
        if !self.params.with_password {
            return Some(None);
        }
        let pw = ctx.secret(PASSWORD).await;
        if pw.is_none() {
            ctx.progress(
                "obhostd restarted and keeps passwords in memory only: repeat this WaitObserverActive request (same step_id) to supply it",
            )
            .await;
        }
        pw.map(Some)
    }

    /// How the observer `id` ended, if obhostd reaped it (within a moment
    /// of its death).
    async fn exit_of(&self, id: Identity) -> Option<Exit> {
        let reaper = self.deps.registry.reaper();
        let by_pid = launch::exit_of(reaper, id.pid).await?;
        let exit = reaper.exit_of_process(&id);
        if exit.is_none() {
            tracing::debug!(
                pid = id.pid,
                start_ticks = id.start_ticks,
                reaped_start_ticks = ?by_pid.start_ticks,
                "the exit obhostd reaped for this pid is not this observer's"
            );
        }
        exit
    }

    async fn exited(&self, id: Identity) -> StepFailure {
        let exit = self.exit_of(id).await;
        let mut f = StepFailure::new(
            Code::ProcessExited,
            format!(
                "the observer (pid {}) {} while waiting for it to become active",
                id.pid,
                launch::describe(exit)
            ),
        );
        f.error.details = launch::Died {
            pid: id.pid,
            exit,
            during: "",
            id: Some(id),
        }
        .details();
        process_steps::oom(&mut f, Some(id), exit).await;
        f.error.message.push_str("; its log is in log_tail");
        let mark = self
            .deps
            .registry
            .get(&self.params.home_path)
            .filter(|r| r.identity == Some(id))
            .map(|r| r.log_mark)
            .unwrap_or_default();
        process_steps::explain(&mut f, &self.params.home_path, &mark).await;
        f
    }

    fn success(&self, pid: i32) -> StepSuccess {
        let p = &self.params;
        let mut success = StepSuccess {
            message: if p.user.is_empty() {
                format!(
                    "observer (pid {pid}) answers MySQL on port {}",
                    p.mysql_port
                )
            } else {
                format!(
                    "observer (pid {pid}) active: '{}' logged in on port {} and the query returned rows",
                    p.user, p.mysql_port
                )
            },
            ..StepSuccess::default()
        };
        success.outputs.insert("pid".into(), pid.to_string());
        success
    }
}

/// The stages a MySQL probe passes through, in order.
const PROBED: [&str; 4] = [
    stage::MYSQL_LISTENING,
    stage::HANDSHAKE,
    stage::LOGIN,
    stage::QUERY,
];

/// The furthest stage a probe's outcome shows: an error names the step it
/// stopped at, so the one before it was reached.
fn reached(result: &Result<(), ProbeError>, login: bool) -> Option<&'static str> {
    match result {
        Ok(()) if login => Some(stage::QUERY),
        Ok(()) => Some(stage::HANDSHAKE),
        Err(ProbeError::NotListening(_) | ProbeError::NotTheObserver { .. }) => None,
        Err(ProbeError::NoHandshake { .. }) => Some(stage::MYSQL_LISTENING),
        Err(ProbeError::LoginRefused { .. }) => Some(stage::HANDSHAKE),
        Err(ProbeError::QueryFailed(_) | ProbeError::NoRows) => Some(stage::LOGIN),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(home: &std::path::Path) -> RawWait {
        RawWait {
            home_path: home.display().to_string(),
            ..RawWait::default()
        }
    }

    #[test]
    fn defaults_port_and_query() {
        let home = tempfile::tempdir().unwrap();
        let p = resolve(raw(home.path()), &Policy::default()).unwrap();
        assert_eq!(p.mysql_port, spec::DEFAULT_MYSQL_PORT);
        assert_eq!(p.sql, "SELECT 1");
        assert!(!p.with_password);
        assert_eq!(p.home_path, std::fs::canonicalize(home.path()).unwrap());
    }

    #[test]
    fn refusals_name_the_field() {
        let home = tempfile::tempdir().unwrap();
        let cases: Vec<(RawWait, &str)> = vec![
            (
                RawWait {
                    mysql_port: 80,
                    ..raw(home.path())
                },
                "mysql_port 80 is out of range",
            ),
            (
                RawWait {
                    password_len: 3,
                    ..raw(home.path())
                },
                "password is set but user is not",
            ),
            (
                RawWait {
                    user: "root".into(),
                    password_len: 4097,
                    ..raw(home.path())
                },
                "password is longer than 4096 bytes",
            ),
            (
                RawWait {
                    sql: "x".repeat(4097),
                    ..raw(home.path())
                },
                "sql is longer than 4096 bytes",
            ),
            (
                RawWait {
                    home_path: "relative/home".into(),
                    ..RawWait::default()
                },
                "home_path",
            ),
        ];
        for (r, want) in cases {
            let e = resolve(r, &Policy::default()).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
