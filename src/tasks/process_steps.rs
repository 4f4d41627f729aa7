//! What the kinds that start and watch programs share: the lock that keeps
//! the steps of one observer home in turn, the stages of a start and
//! following a launch through them to its server, and a failure told in the
//! terms an operator acts on (how the process ended, whether the kernel's
//! OOM killer did it, the observer's own ERROR lines and error code).

use std::path::Path;

use crate::observer::diagnosis::{self, LogMark};
use crate::process::launch::{Accept, Event, LaunchError, Launched};
use crate::process::{Exit, Identity};
use crate::steps::model::codes::Code;
use crate::steps::{StepContext, StepFailure};

/// Runs file or /proc work (a socket table read takes milliseconds on a busy
/// host) on the blocking pool, so the runtime's threads never wait on it. A
/// panic there is the task's: it goes on unwinding, and the engine ends the
/// step INTERNAL with its message, as for a panic anywhere in a task.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// Steps that touch the observer of one home_path run one at a time.
pub(crate) fn observer_lock(home: &Path) -> String {
    format!("observer {}", home.display())
}

/// A failure that carries the tail of the observer's output and log (read
/// on the blocking pool: they are files in a dir its user controls).
pub(crate) async fn fail_with_log(code: Code, message: String, home: &Path) -> StepFailure {
    let mut f = StepFailure::new(code, message);
    let home = home.to_path_buf();
    f.error.log_tail = tokio::task::spawn_blocking(move || crate::observer::log_tail(&home))
        .await
        .unwrap_or_default();
    f
}

/// How a launch that failed after the spawn reads as a step failure, the same
/// for the observer and the agent: PROCESS_EXITED with the exit details (and
/// whether the kernel's OOM killer did it) when the process died, else what
/// went wrong. `what` names the program ("the observer"), `log_tail` is its
/// output.
pub(crate) async fn launch_failed(
    e: LaunchError,
    what: &str,
    log_tail: Vec<String>,
) -> StepFailure {
    let mut f = match &e {
        LaunchError::Died(died) => {
            let mut f = StepFailure::new(
                Code::ProcessExited,
                format!("{what} (pid {}) {} {}", died.pid, died.how(), died.during),
            );
            f.error.details = died.details();
            oom(&mut f, died.id, died.exit).await;
            f.error.message.push_str("; its output is in log_tail");
            f
        }
        LaunchError::Spawn(_) => StepFailure::new(Code::SpawnFailed, e.to_string()),
        LaunchError::PidFile { .. } => StepFailure::new(Code::DirNotWritable, e.to_string()),
        LaunchError::Panicked(_) => StepFailure::new(Code::Internal, e.to_string()),
    };
    f.error.log_tail = log_tail;
    f
}

/// Adds to a failure whether the kernel's OOM killer ended the process
/// (`details.oom_killed`), when a SIGKILL ended it and the kernel's log can
/// tell: a SIGKILL from nobody in particular and one from the kernel for want
/// of memory call for different fixes.
pub(crate) async fn oom(f: &mut StepFailure, id: Option<Identity>, exit: Option<Exit>) {
    let (
        Some(id),
        Some(Exit {
            signal: Some(9), ..
        }),
    ) = (id, exit)
    else {
        return;
    };
    let killed = tokio::task::spawn_blocking(move || crate::process::oom::oom_killed(&id))
        .await
        .ok()
        .flatten();
    let Some(killed) = killed else {
        return;
    };
    f.error
        .details
        .insert("oom_killed".into(), killed.to_string());
    if killed {
        f.error.message.push_str(
            ": the kernel's OOM killer ended it for want of memory (give the host or its cgroup more memory, or lower the observer's memory_limit)",
        );
    }
}

/// What the observer's own logs say about its end, since `mark`: its ERROR
/// lines (then the launcher's output) become `log_tail`, the first OceanBase
/// error code `details.ob_errcode`, and a known code's meaning and fix end
/// the message.
pub(crate) async fn explain(f: &mut StepFailure, home: &Path, mark: &LogMark) {
    let (home, mark) = (home.to_path_buf(), mark.clone());
    let d = tokio::task::spawn_blocking(move || diagnosis::diagnose(&home, &mark))
        .await
        .unwrap_or_default();
    f.error.log_tail = d.lines;
    if let Some(code) = d.ob_errcode {
        let said = match d.hint {
            Some(hint) => format!("; the observer's log reports {hint}"),
            None => format!("; the observer's log reports error code {code}"),
        };
        f.error.message.push_str(&said);
        f.error.details.insert("ob_errcode".into(), code);
    }
}

/// Follows a launch to its server, recording each stage as it is reached
/// (`launched` is the caller's, before the spawn's first event): the launcher's
/// exit, the pid file naming a pid, and the server found. A death ends it at
/// once as `fail` says.
pub(crate) async fn follow_launch(
    ctx: &StepContext,
    launched: &mut Launched,
    accept: &Accept,
    pid_file: Option<&Path>,
) -> Result<Identity, LaunchError> {
    let file = pid_file
        .map(|p| format!("'{}'", p.display()))
        .unwrap_or_else(|| "the pid file".into());
    loop {
        match launched.next(accept).await? {
            Event::LauncherExited(_) => {
                let pid = launched.launcher.pid;
                ctx.stage(
                    stage::LAUNCHER_EXITED,
                    format!(
                        "the launcher (pid {pid}) exited 0; waiting for {file} to name its server"
                    ),
                )
                .await
            }
            Event::PidFile(pid) => {
                ctx.stage(
                    stage::PID_FILE,
                    format!(
                        "{file} names pid {pid}; checking that it is the server this launch made"
                    ),
                )
                .await
            }
            Event::Server(id) => return Ok(id),
        }
    }
}

/// The stages of a start, in the order they are reached (DESIGN.md): each is
/// `outputs.stage` while it is the latest.
pub mod stage {
    pub const LAUNCHED: &str = "launched";
    pub const LAUNCHER_EXITED: &str = "launcher_exited";
    pub const PID_FILE: &str = "pid_file";
    pub const SERVER_ALIVE: &str = "server_alive";
    pub const RPC_LISTENING: &str = "rpc_listening";
    pub const MYSQL_LISTENING: &str = "mysql_listening";
    pub const HANDSHAKE: &str = "handshake";
    pub const LOGIN: &str = "login";
    pub const QUERY: &str = "query";
}
