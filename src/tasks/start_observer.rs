//! "Start observer process" (START_OBSERVER_PROCESS).
//!
//! Already running (by identity) → SUCCEEDED with already_running=true, nothing
//! spawned. Otherwise: clear a stale pid file, spawn the observer, and succeed
//! once the server process is alive, identified, and has stayed alive for the
//! settle window. A daemonizing observer is followed through its launcher (which
//! must exit 0) to the pid file its server writes.
//!
//! Steps on one home_path run one at a time (lock key), so two racing starts
//! make one process: the second finds the first's observer running. A start
//! interrupted by a restart of obhostd resumes without spawning again while the
//! process it spawned before is alive.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::{Deps, fail_with_log};
use crate::observer::locate::{self, Found, Target};
use crate::observer::{ObserverRecord, ObserverSpec, command};
use crate::process::pidfile::{self, PidFile};
use crate::process::{Handle, Identity, RunAs, SpawnSpec, Spawned, spawn};
use crate::steps::task::BoxFuture;
use crate::steps::{OnRestart, StepContext, StepFailure, StepResult, StepSuccess, StepTask};

pub struct StartObserver {
    pub spec: ObserverSpec,
    pub deps: Arc<Deps>,
}

fn timestamp(id: &Identity) -> String {
    id.start_time()
        .map(|t| humantime::format_rfc3339_millis(t).to_string())
        .unwrap_or_default()
}

fn success(
    id: &Identity,
    command: &str,
    already_running: bool,
    spec: &ObserverSpec,
) -> StepSuccess {
    let mut outputs = BTreeMap::new();
    outputs.insert("pid".to_string(), id.pid.to_string());
    outputs.insert("process_start_time".to_string(), timestamp(id));
    outputs.insert("already_running".to_string(), already_running.to_string());
    outputs.insert("command".to_string(), command.to_string());
    outputs.insert("pid_file".to_string(), spec.pid_file.display().to_string());
    StepSuccess {
        message: if already_running {
            format!("observer already running (pid {})", id.pid)
        } else {
            format!("observer started (pid {})", id.pid)
        },
        outputs,
        checks: Vec::new(),
    }
}

/// The argv of a live process, as the kernel keeps it (NUL-separated), so that
/// arguments containing spaces stay whole.
fn argv(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Creates `dir` (and parents) if missing; new dirs belong to the observer's user.
fn ensure_dir(dir: &std::path::Path, user: &RunAs) -> std::io::Result<()> {
    crate::confined::create_dirs(dir, Some((user.uid, user.gid)), 0o750).map(drop)
}

impl StartObserver {
    fn target(&self) -> Target {
        Target {
            home_path: self.spec.home_path.clone(),
            pid_file: self.spec.pid_file.clone(),
            binary: self.spec.binary.clone(),
            uid: RunAs::lookup(&self.spec.user).ok().map(|u| u.uid),
        }
    }

    fn record(&self, id: Identity, command: Vec<String>, step: &str) -> ObserverRecord {
        ObserverRecord {
            home_path: self.spec.home_path.clone(),
            pid_file: self.spec.pid_file.clone(),
            binary: self.spec.binary.clone(),
            mysql_port: self.spec.mysql_port,
            rpc_port: self.spec.rpc_port,
            uid: self.target().uid,
            owns_pid_file: self.spec.foreground,
            identity: Some(id),
            command,
            started_by: step.to_string(),
            last_exit: None,
        }
    }

    /// The observer died before the start succeeded: PROCESS_EXITED with how it
    /// ended and what it wrote.
    async fn died(&self, pid: i32, during: &str) -> StepFailure {
        let exit = tokio::time::timeout(
            Duration::from_secs(1),
            self.deps.registry.reaper().wait(pid),
        )
        .await
        .ok();
        let how = exit
            .map(|e| e.describe())
            .unwrap_or_else(|| "ended (exit status unknown)".into());
        let mut f = fail_with_log(
            "PROCESS_EXITED",
            format!(
                "observer (pid {pid}) {how} {during}; its output and log are in log_tail (and under {})",
                self.spec.home_path.join("log").display()
            ),
            &self.spec.home_path,
        );
        f.error.details.insert("pid".into(), pid.to_string());
        if let Some(e) = exit {
            if let Some(c) = e.code {
                f.error.details.insert("exit_code".into(), c.to_string());
            }
            if let Some(s) = e.signal {
                f.error.details.insert("signal".into(), s.to_string());
            }
        }
        f
    }

    /// Waits for the server process of a daemonizing observer: the launcher
    /// exits 0, then the pid file names a live process.
    async fn follow_launcher(
        &self,
        ctx: &StepContext,
        launcher: Identity,
    ) -> Result<Identity, StepFailure> {
        ctx.progress(format!(
            "waiting for the launcher (pid {}) to daemonize",
            launcher.pid
        ))
        .await;
        let exit = self.deps.registry.reaper().wait(launcher.pid).await;
        if exit.code != Some(0) {
            return Err(self.died(launcher.pid, "while daemonizing").await);
        }
        ctx.progress(format!("waiting for {}", self.spec.pid_file.display()))
            .await;
        // The real launcher exits before its server writes the pid file, so this
        // polls; a pid file left by an earlier run was removed above.
        let target = self.target();
        loop {
            match pidfile::inspect(&self.spec.pid_file) {
                PidFile::Live(id)
                    if locate::belongs_to(&id, &target, &self.deps.registry)
                        || target
                            .uid
                            .is_some_and(|uid| id.daemonized_from(&launcher, uid)) =>
                {
                    return Ok(id);
                }
                PidFile::Live(_) => {}
                PidFile::Stale(Some(pid)) if self.deps.registry.reaper().exit_of(pid).is_some() => {
                    return Err(self.died(pid, "right after it started").await);
                }
                PidFile::Stale(_) | PidFile::Missing => {}
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn start(self: Box<Self>, ctx: StepContext) -> StepResult {
        let spec = &self.spec;
        let registry = &self.deps.registry;
        let target = self.target();

        // A run resumed after a restart first looks for what the interrupted run
        // spawned, so that it never starts a second observer.
        let earlier = ctx
            .earlier_outputs()
            .get("launcher_pid")
            .and_then(|p| p.parse::<i32>().ok());
        match locate::find(&target, registry) {
            Found::Running(id) => {
                let argv = argv(id.pid);
                let ours = ctx.resumed() && earlier.is_some();
                let command = argv.join(" ");
                registry.started(self.record(id, argv, ctx.step_id()));
                return Ok(success(&id, &command, !ours, spec));
            }
            Found::Stale(pid) => {
                // locate found that it names no observer of this home (dead,
                // or a recycled pid now used by something else): it must go,
                // or the launcher's server could be mistaken for its old pid.
                match crate::confined::remove_file(&spec.pid_file) {
                    Ok(_) => {}
                    Err(e) => {
                        return Err(StepFailure::new(
                            "PIDFILE_NOT_REMOVABLE",
                            format!(
                                "stale pid file '{}' (pid {}) cannot be removed: {e}; remove it by hand",
                                spec.pid_file.display(),
                                pid.map(|p| p.to_string()).unwrap_or_else(|| "none".into())
                            ),
                        ));
                    }
                }
                ctx.progress(format!(
                    "removed stale pid file {} (pid {})",
                    spec.pid_file.display(),
                    pid.map(|p| p.to_string()).unwrap_or_else(|| "none".into())
                ))
                .await;
            }
            Found::NotRunning => {}
        }
        if ctx.resumed()
            && let Some(pid) = earlier
        {
            // Spawned before the restart, and neither running nor in the pid
            // file now: it died. Starting again is the orchestrator's call.
            return Err(fail_with_log(
                "PROCESS_EXITED",
                format!(
                    "the observer obhostd started (pid {pid}) before it restarted is no longer running; RetryStep '{}' to start it again",
                    ctx.step_id()
                ),
                &spec.home_path,
            ));
        }

        spec.check_binary()
            .map_err(|m| StepFailure::new("BINARY_NOT_FOUND", format!("observer.binary {m}")))?;
        let user = RunAs::lookup(&spec.user)
            .map_err(|e| StepFailure::new("USER_NOT_FOUND", e.to_string()))?;
        for dir in [spec.home_path.join("log"), spec.home_path.join("run")] {
            ensure_dir(&dir, &user).map_err(|e| {
                StepFailure::new(
                    "DIR_NOT_WRITABLE",
                    format!(
                        "cannot create '{}': {e}; create it, owned by '{}'",
                        dir.display(),
                        spec.user
                    ),
                )
            })?;
        }
        let uid = user.uid;
        let run = SpawnSpec {
            program: spec.binary.clone(),
            args: command::args(spec),
            cwd: spec.home_path.clone(),
            user,
            env: spec.environment(),
            output: crate::process::spawn::Output::Append(spec.output_file()),
            limits: self.deps.policy.limits,
        };
        let command = run.display();
        ctx.progress(format!("starting: {command}")).await;
        let launcher = spawn(&run).map_err(|e| StepFailure::new("SPAWN_FAILED", e.to_string()))?;
        let registry_now = self.deps.registry.clone();
        let mut spawned = Spawned::new(launcher, uid, move || registry_now.shutting_down());
        ctx.output("launcher_pid", launcher.pid.to_string()).await;

        let server = if spec.foreground {
            if let Err(e) = pidfile::write(&spec.pid_file, launcher.pid) {
                return Err(StepFailure::new(
                    "DIR_NOT_WRITABLE",
                    format!("cannot write pid file '{}': {e}", spec.pid_file.display()),
                ));
            }
            launcher
        } else {
            self.follow_launcher(&ctx, launcher).await?
        };

        spawned.server(server);
        // Settle: a bad flag or a missing library kills it within moments.
        let settle = self.deps.policy.start_settle;
        ctx.progress(format!(
            "observer running (pid {}); watching it for {}",
            server.pid,
            humantime::format_duration(settle)
        ))
        .await;
        let handle = match Handle::open(server) {
            Ok(h) => h,
            Err(_) => return Err(self.died(server.pid, "right after it started").await),
        };
        if handle.exited_within(settle).await {
            return Err(self.died(server.pid, "right after it started").await);
        }
        registry.started(self.record(server, argv(server.pid), ctx.step_id()));
        spawned.keep();
        Ok(success(&server, &command, false, spec))
    }
}

impl StepTask for StartObserver {
    fn run(self: Box<Self>, ctx: StepContext) -> BoxFuture<StepResult> {
        Box::pin(self.start(ctx))
    }

    fn lock_key(&self) -> Option<String> {
        Some(super::observer_lock(&self.spec.home_path))
    }

    fn on_restart(&self) -> OnRestart {
        OnRestart::Resume
    }
}
