//! "Start observer process" (START_OBSERVER_PROCESS).
//!
//! Already running (by identity) → SUCCEEDED with already_running=true, nothing
//! spawned. Otherwise: clear a stale pid file, spawn the observer, and succeed
//! once the server process is alive, identified, and has either stayed alive
//! for the settle window or listens on its MySQL port. A daemonizing observer
//! is followed through its launcher (which must exit 0) to the pid file its
//! server writes ([`launch`]).
//!
//! Steps on one home_path run one at a time (lock key), so two racing starts
//! make one process: the second finds the first's observer running. A start
//! interrupted by a restart of obhostd resumes without spawning again while the
//! process it spawned before is alive.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::deps::Deps;
use super::process_steps::{self, fail_with_log, stage};
use crate::observer::diagnosis::LogMark;
use crate::observer::locate::{self, Found, Target};
use crate::observer::{ObserverRecord, ObserverSpec, command};
use crate::policy::SpecError;
use crate::probe;
use crate::process::inspect::{self, PortOwner};
use crate::process::launch::{self, Accept, Died, LaunchError, Launched};
use crate::process::{Handle, Identity, RunAs, SpawnError, SpawnSpec};
use crate::steps::model::codes::Code;
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

/// What a StartObserver request needs beyond a valid spec, checked before any
/// step exists: a first start needs the bootstrap fields, and the binary must
/// be there for `user` (the spec's, as resolved) to run.
pub fn resolve(spec: ObserverSpec, user: &RunAs) -> Result<ObserverSpec, SpecError> {
    spec.check_first_start()?;
    spec.check_binary(user)
        .map_err(|m| SpecError::Invalid(format!("observer.binary {m}")))?;
    Ok(spec)
}

/// What the start needs on disk before the spawn: the binary executable by
/// its user, and `log/` and `run/` in the home (new ones owned by the user).
/// Blocking (stat, mkdir): run on the blocking pool. Fails with the step's
/// error code and message.
fn preflight(spec: &ObserverSpec, user: &RunAs) -> Result<(), (Code, String)> {
    spec.check_binary(user)
        .map_err(|m| (Code::BinaryNotFound, format!("observer.binary {m}")))?;
    for dir in [spec.home_path.join("log"), spec.home_path.join("run")] {
        ensure_dir(&dir, user).map_err(|e| {
            (
                Code::DirNotWritable,
                format!(
                    "cannot create '{}': {e}; create it, owned by '{}'",
                    dir.display(),
                    spec.user
                ),
            )
        })?;
    }
    Ok(())
}

impl StartObserver {
    /// Where the observer is looked for; `uid` is its user's (None when the
    /// user does not exist: then no process is ever taken for it).
    fn target(&self, uid: Option<u32>) -> Target {
        Target {
            home_path: self.spec.home_path.clone(),
            pid_file: self.spec.pid_file.clone(),
            binary: self.spec.binary.clone(),
            uid,
        }
    }

    fn record(
        &self,
        id: Identity,
        command: Vec<String>,
        step: &str,
        uid: Option<u32>,
    ) -> ObserverRecord {
        ObserverRecord {
            home_path: self.spec.home_path.clone(),
            pid_file: self.spec.pid_file.clone(),
            binary: self.spec.binary.clone(),
            mysql_port: self.spec.mysql_port,
            rpc_port: self.spec.rpc_port,
            uid,
            owns_pid_file: self.spec.foreground,
            identity: Some(id),
            command,
            started_by: step.to_string(),
            last_exit: None,
            log_mark: LogMark::default(),
        }
    }

    fn mode(&self) -> launch::Mode {
        let pid_file = self.spec.pid_file.clone();
        if self.spec.foreground {
            launch::Mode::Foreground {
                pid_file: Some(pid_file),
            }
        } else {
            launch::Mode::Daemonizing { pid_file }
        }
    }

    /// A launch that failed, explained by what the observer logged since
    /// `mark` (its ERROR lines and error code, then the launcher's output).
    async fn failed(&self, e: LaunchError, mark: &LogMark) -> StepFailure {
        let mut f = process_steps::launch_failed(e, "observer", Vec::new()).await;
        process_steps::explain(&mut f, &self.spec.home_path, mark).await;
        f
    }

    async fn start(self: Box<Self>, ctx: StepContext) -> StepResult {
        let user = RunAs::lookup_async(&self.spec.user).await;
        let uid = user.as_ref().ok().map(|u| u.uid);
        if let Some(done) = self.found_running(&ctx, uid).await? {
            return Ok(done);
        }
        // Where the logs stand before the spawn: a failure shows only what
        // this start wrote.
        let home = self.spec.home_path.clone();
        let mark = tokio::task::spawn_blocking(move || LogMark::take(&home))
            .await
            .unwrap_or_default();
        let (mut launched, command) = self.spawn(&ctx, user, &mark).await?;
        let launcher = launched.launcher;
        ctx.output("launcher_pid", launcher.pid.to_string()).await;
        ctx.stage(
            stage::LAUNCHED,
            format!("launched pid {}: {command}", launcher.pid),
        )
        .await;
        let registry = &self.deps.registry;
        let target = self.target(uid);
        let vouch = registry.clone();
        let accept: Accept = Arc::new(move |id| locate::belongs_to(id, &target, &vouch));
        let pid_file = (!self.spec.foreground).then_some(self.spec.pid_file.as_path());
        let server =
            match process_steps::follow_launch(&ctx, &mut launched, &accept, pid_file).await {
                Ok(server) => server,
                Err(e) => {
                    // GetObserver shows how it ended, even when it died before
                    // it was accepted as the server (the launcher itself, or a
                    // server that died before its pid file was seen).
                    if let LaunchError::Died(d) = &e
                        && let Some(id) = d.id
                    {
                        registry.started(ObserverRecord {
                            identity: None,
                            last_exit: Some(d.exit.unwrap_or(crate::process::Exit::unknown(&id))),
                            ..self.record(id, Vec::new(), ctx.step_id(), uid)
                        });
                    }
                    return Err(self.failed(e, &mark).await);
                }
            };
        let pid = server.pid;
        let argv = process_steps::blocking(move || argv(pid)).await;
        let record = ObserverRecord {
            log_mark: mark.clone(),
            ..self.record(server, argv, ctx.step_id(), uid)
        };
        self.settle(&ctx, server, &record, &mark).await?;
        registry.started(record);
        launched.spawned.keep();
        Ok(success(&server, &command, false, &self.spec))
    }

    /// The observer when one runs already (nothing is spawned then), after a
    /// stale pid file is cleared. A run resumed after a restart of obhostd
    /// first looks for what the interrupted run spawned (`launcher_pid`), so it
    /// never starts a second observer, and reports a process it started as its
    /// own (already_running=false).
    async fn found_running(
        &self,
        ctx: &StepContext,
        uid: Option<u32>,
    ) -> Result<Option<StepSuccess>, StepFailure> {
        let spec = &self.spec;
        let registry = &self.deps.registry;
        let spawned_before = ctx.resumed() && ctx.earlier_outputs().contains_key("launcher_pid");
        match locate::find_async(self.target(uid), registry.clone()).await {
            Found::Running(id) => {
                let pid = id.pid;
                let argv = process_steps::blocking(move || argv(pid)).await;
                let command = argv.join(" ");
                registry.started(self.record(id, argv, ctx.step_id(), uid));
                return Ok(Some(success(&id, &command, !spawned_before, spec)));
            }
            Found::Stale(pid) => self.remove_stale(ctx, pid).await?,
            Found::NotRunning => {}
        }
        if spawned_before {
            // Spawned before the restart, and neither running nor in the pid
            // file now: it died. Starting again is the orchestrator's call.
            let pid = &ctx.earlier_outputs()["launcher_pid"];
            return Err(fail_with_log(
                Code::ProcessExited,
                format!(
                    "the observer obhostd started (launcher pid {pid}) before it restarted is no longer running; RetryStep '{}' to start it again",
                    ctx.step_id()
                ),
                &spec.home_path,
            )
            .await);
        }
        Ok(None)
    }

    /// locate found that the pid file names no observer of this home (dead, or
    /// a recycled pid now used by something else): it must go, or the
    /// launcher's server could be mistaken for its old pid.
    async fn remove_stale(&self, ctx: &StepContext, pid: Option<i32>) -> Result<(), StepFailure> {
        let pid_file = &self.spec.pid_file;
        let pid = pid.map(|p| p.to_string()).unwrap_or_else(|| "none".into());
        let file = pid_file.clone();
        let removed = process_steps::blocking(move || crate::confined::remove_file(&file)).await;
        removed.map_err(|e| {
            StepFailure::new(
                Code::PidfileNotRemovable,
                format!(
                    "stale pid file '{}' (pid {pid}) cannot be removed: {e}; remove it by hand",
                    pid_file.display()
                ),
            )
        })?;
        ctx.progress(format!(
            "removed stale pid file {} (pid {pid})",
            pid_file.display()
        ))
        .await;
        Ok(())
    }

    /// Checks what the start needs, then spawns the observer: the launcher, its
    /// guard, and the command line as recorded.
    async fn spawn(
        &self,
        ctx: &StepContext,
        user: Result<RunAs, SpawnError>,
        mark: &LogMark,
    ) -> Result<(Launched, String), StepFailure> {
        let spec = &self.spec;
        let user = user.map_err(|e| StepFailure::new(Code::UserNotFound, e.to_string()))?;
        let (checked, who) = (spec.clone(), user.clone());
        process_steps::blocking(move || preflight(&checked, &who))
            .await
            .map_err(|(code, message)| StepFailure::new(code, message))?;
        let run = SpawnSpec {
            program: spec.binary.clone(),
            args: command::args(spec),
            cwd: spec.home_path.clone(),
            user,
            env: spec.environment(),
            output: crate::process::spawn::Output::Append(spec.output_file()),
            limits: self.deps.policy.limits,
            scope: self.deps.scope(
                "observer",
                &spec.home_path,
                "OceanBase observer",
                ctx.step_id(),
            ),
        };
        let command = run.display();
        ctx.progress(format!("starting: {command}")).await;
        let registry = self.deps.registry.clone();
        let reaper = registry.reaper().clone();
        let launched =
            match launch::start(run, &self.mode(), &reaper, move || registry.shutting_down()).await
            {
                Ok(launched) => launched,
                Err(e) => return Err(self.failed(e, mark).await),
            };
        Ok((launched, command))
    }

    /// Succeeds once the server has survived `start_settle` (a bad flag or a
    /// missing library kills it within moments) or listens on its MySQL port
    /// already (then it is past its riskiest phase, and waiting longer only
    /// delays the orchestrator; a later death is WaitObserverActive's to see).
    async fn settle(
        &self,
        ctx: &StepContext,
        server: Identity,
        record: &ObserverRecord,
        mark: &LogMark,
    ) -> Result<(), StepFailure> {
        let settle = self.deps.policy.start_settle;
        let port = self.spec.mysql_port;
        ctx.stage(
            stage::SERVER_ALIVE,
            format!(
                "observer running (pid {}); watching it for {} or until it listens on port {port}",
                server.pid,
                humantime::format_duration(settle)
            ),
        )
        .await;
        let died = || async {
            let reaper = self.deps.registry.reaper();
            let exit = launch::exit_of_process(reaper, &server).await;
            // GetObserver shows how it ended, as for any observer obhostd ran.
            self.deps.registry.started(ObserverRecord {
                identity: None,
                last_exit: Some(exit.unwrap_or(crate::process::Exit::unknown(&server))),
                ..record.clone()
            });
            let died = Died {
                pid: server.pid,
                exit,
                during: "right after it started",
                id: Some(server),
            };
            self.failed(LaunchError::Died(died), mark).await
        };
        let Ok(handle) = Handle::open(server) else {
            return Err(died().await);
        };
        tokio::select! {
            () = handle.exited() => Err(died().await),
            () = tokio::time::sleep(settle) => Ok(()),
            () = listening(port, server.pid) => {
                ctx.stage(stage::MYSQL_LISTENING, format!("observer (pid {}) listens on MySQL port {port}", server.pid)).await;
                Ok(())
            }
        }
    }
}

/// Returns once `pid` holds every socket listening where 127.0.0.1:`port`
/// lands. The port is watched with cheap connects; the socket table is read
/// (off the runtime) only once something accepts.
async fn listening(port: u16, pid: i32) {
    let mut pacer = probe::Pacer::default();
    loop {
        probe::until_accepting(port).await;
        let owner =
            tokio::task::spawn_blocking(move || inspect::loopback_port_owner(port, pid)).await;
        if matches!(owner, Ok(PortOwner::Only)) {
            return;
        }
        pacer.pause().await;
    }
}

impl StepTask for StartObserver {
    fn run(self: Box<Self>, ctx: StepContext) -> BoxFuture<StepResult> {
        Box::pin(self.start(ctx))
    }

    fn lock_key(&self) -> Option<String> {
        Some(process_steps::observer_lock(&self.spec.home_path))
    }

    fn on_restart(&self) -> OnRestart {
        OnRestart::Resume
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn spec(home: &std::path::Path, user: &str) -> ObserverSpec {
        ObserverSpec::for_test(home, user)
    }

    /// A home whose bin/observer exists with `mode`.
    fn home(mode: u32) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        let binary = dir.path().join("bin/observer");
        std::fs::write(&binary, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(mode)).unwrap();
        dir
    }

    #[test]
    fn preflight_makes_log_and_run_for_the_observers_user() {
        let Ok(nobody) = RunAs::lookup("nobody") else {
            eprintln!("SKIPPED: no user nobody");
            return;
        };
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIPPED: making dirs for another user needs root");
            return;
        }
        let dir = home(0o755);
        preflight(&spec(dir.path(), "nobody"), &nobody).unwrap();
        for sub in ["log", "run"] {
            let meta = std::fs::metadata(dir.path().join(sub)).unwrap();
            assert!(meta.is_dir(), "{sub}");
            assert_eq!(meta.uid(), nobody.uid, "{sub} must be the observer's");
        }
    }

    #[test]
    fn preflight_refuses_a_binary_the_user_cannot_run_and_a_home_it_cannot_fill() {
        let me = RunAs::current().unwrap();
        let dir = home(0o644);
        let (code, message) = preflight(&spec(dir.path(), &me.name), &me).unwrap_err();
        assert_eq!(code, Code::BinaryNotFound, "{message}");
        assert!(message.starts_with("observer.binary"), "{message}");
        assert!(
            !dir.path().join("log").exists(),
            "nothing is made before the binary is fine"
        );

        let dir = home(0o755);
        std::fs::write(dir.path().join("log"), "a file where log/ belongs").unwrap();
        let (code, message) = preflight(&spec(dir.path(), &me.name), &me).unwrap_err();
        assert_eq!(code, Code::DirNotWritable, "{message}");
        assert!(message.contains("/log'"), "{message}");
    }

    /// Arguments are kept whole, as the kernel has them: a space inside one
    /// does not split it.
    #[test]
    fn argv_reads_a_live_process_s_arguments_whole() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30", "name with spaces"])
            .spawn()
            .unwrap();
        // Until the exec, /proc shows the parent's (or, mid-spawn, nothing).
        let pid = child.id() as i32;
        let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut got = argv(pid);
        while got.first().map(String::as_str) != Some("sh") && std::time::Instant::now() < end {
            std::thread::sleep(std::time::Duration::from_millis(5));
            got = argv(pid);
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(got, ["sh", "-c", "sleep 30", "name with spaces"]);
        assert!(argv(i32::MAX).is_empty(), "no process: no arguments");
    }

    #[test]
    fn a_first_start_needs_the_cluster_s_identity() {
        let me = RunAs::current().unwrap();
        let dir = home(0o755);
        let e = resolve(spec(dir.path(), &me.name), &me).unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("observer.zone, observer.cluster_name, observer.cluster_id required"),
            "{m}"
        );
        let mut s = spec(dir.path(), &me.name);
        (s.zone, s.cluster_name, s.cluster_id) = ("z1".into(), "c".into(), 1);
        assert_eq!(resolve(s.clone(), &me).unwrap(), s);
    }
}
