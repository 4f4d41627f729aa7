//! Launching a supervised program, the one way both the observer and the OCP
//! agent are started: spawn, then find the process that will serve.
//!
//! - **Foreground**: the spawned process is the server; obhostd writes its pid
//!   file (when there is one).
//! - **Daemonizing**: the launcher must exit 0, then the pid file must name a
//!   live process obhostd accepts: one the launcher handed to obhostd (the
//!   subreaper, see [`Identity::daemonized_from`]) or one the caller vouches for
//!   by its own identity rules (e.g. `observer::locate`). The pid file is looked
//!   at at once and then every few ms: the real launcher exits before its
//!   server writes it, and a fixed pause would only add latency to every start.
//!
//! Whatever fails after the spawn comes back as a [`Died`] with the same exit
//! details (code, signal) for every caller, and the [`Spawned`] guard kills what
//! was spawned unless the caller keeps it. Blocking work (fork/exec, the pid
//! file's fsync) runs on the blocking pool, never on the runtime's threads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::pidfile::{self, PidFile};
use super::{Exit, Identity, Reaper, SpawnError, SpawnSpec, Spawned, spawn};

/// How the started program becomes its server.
#[derive(Debug, Clone)]
pub enum Mode {
    /// The spawned process serves; obhostd writes `pid_file` for it.
    Foreground { pid_file: Option<PathBuf> },
    /// The launcher forks the server, which writes `pid_file`, and exits 0.
    Daemonizing { pid_file: PathBuf },
}

/// A process that ended before it was accepted as the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Died {
    pub pid: i32,
    /// Its exit status, when obhostd reaped it.
    pub exit: Option<Exit>,
    /// When it happened, for the message ("while daemonizing").
    pub during: &'static str,
}

impl Died {
    /// "exited with code 3", "was killed by SIGKILL", or "ended (...unknown)".
    pub fn how(&self) -> String {
        describe(self.exit)
    }

    /// `pid`, `exit_code`, `signal`: the step error's details.
    pub fn details(&self) -> BTreeMap<String, String> {
        exit_details(self.pid, self.exit)
    }
}

/// How a process ended, in words, exit status or not.
pub fn describe(exit: Option<Exit>) -> String {
    exit.map(|e| e.describe())
        .unwrap_or_else(|| "ended (exit status unknown)".into())
}

/// The details every "it died" failure carries, whoever started the process.
pub fn exit_details(pid: i32, exit: Option<Exit>) -> BTreeMap<String, String> {
    let mut d = BTreeMap::new();
    d.insert("pid".to_string(), pid.to_string());
    if let Some(e) = exit {
        if let Some(c) = e.code {
            d.insert("exit_code".into(), c.to_string());
        }
        if let Some(s) = e.signal {
            d.insert("signal".into(), s.to_string());
        }
    }
    d
}

/// The exit of a process that just died, if it was our child: the reaper sees
/// it within moments. Bounded, because a process re-adopted after a restart of
/// obhostd is init's child and is never reaped here.
pub async fn exit_of(reaper: &Reaper, pid: i32) -> Option<Exit> {
    tokio::time::timeout(Duration::from_secs(1), reaper.wait(pid))
        .await
        .ok()
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{0}")]
    Spawn(#[from] SpawnError),
    #[error("cannot write pid file '{}': {cause}", path.display())]
    PidFile {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("process {} {} {}", .0.pid, .0.how(), .0.during)]
    Died(Died),
    #[error("the launcher {0}")]
    Panicked(String),
}

/// Spawns `spec` off the runtime and returns the launcher, guarded: dropping
/// the guard kills it (and what it forked) unless obhostd is shutting down.
pub async fn spawn_guarded(
    spec: SpawnSpec,
    shutting_down: impl Fn() -> bool + Send + Sync + 'static,
) -> Result<(Identity, Spawned), LaunchError> {
    let uid = spec.user.uid;
    let launcher = tokio::task::spawn_blocking(move || spawn(&spec))
        .await
        .map_err(|e| LaunchError::Panicked(e.to_string()))??;
    Ok((launcher, Spawned::new(launcher, uid, shutting_down)))
}

/// Writes a pid file off the runtime (it fsyncs).
pub async fn write_pid_file(path: &Path, pid: i32) -> Result<(), LaunchError> {
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || pidfile::write(&p, pid))
        .await
        .map_err(|e| LaunchError::Panicked(e.to_string()))?
        .map_err(|cause| LaunchError::PidFile {
            path: path.to_path_buf(),
            cause,
        })
}

/// Finds the server of `launcher` (spawned by [`spawn_guarded`] as `uid`) and
/// records it in `spawned`. `accept` may vouch for a pid file's process beyond
/// "handed to obhostd by this launcher" (e.g. a process obhostd recorded).
/// Never returns while the pid file names nothing acceptable: the step's
/// deadline bounds it.
pub async fn server(
    launcher: Identity,
    spawned: &mut Spawned,
    mode: &Mode,
    reaper: &Reaper,
    accept: impl Fn(&Identity) -> bool + Send + Sync + 'static,
) -> Result<Identity, LaunchError> {
    let pid_file = match mode {
        Mode::Foreground { pid_file } => {
            if let Some(p) = pid_file {
                write_pid_file(p, launcher.pid).await?;
            }
            return Ok(launcher);
        }
        Mode::Daemonizing { pid_file } => pid_file,
    };
    let exit = reaper.wait(launcher.pid).await;
    if exit.code != Some(0) {
        return Err(LaunchError::Died(Died {
            pid: launcher.pid,
            exit: Some(exit),
            during: "while daemonizing",
        }));
    }
    let uid = spawned.uid();
    // Reading the pid file and vouching (which may walk /proc) block: they run
    // on the blocking pool, never on the runtime's threads.
    let accept = std::sync::Arc::new(accept);
    let mut pacer = crate::probe::Pacer::default();
    loop {
        let (file, accept) = (pid_file.clone(), accept.clone());
        let seen = tokio::task::spawn_blocking(move || match pidfile::inspect(&file) {
            PidFile::Live(id) if id.daemonized_from(&launcher, uid) || accept(&id) => Ok(id),
            other => Err(other),
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        match seen {
            Ok(id) => {
                spawned.server(id);
                return Ok(id);
            }
            Err(PidFile::Stale(Some(pid))) if reaper.exit_of(pid).is_some() => {
                return Err(LaunchError::Died(Died {
                    pid,
                    exit: reaper.exit_of(pid),
                    during: "right after it started",
                }));
            }
            Err(_) => {}
        }
        pacer.pause().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_details_name_code_or_signal() {
        let at = std::time::SystemTime::now();
        let code = Exit {
            pid: 7,
            code: Some(3),
            signal: None,
            at,
        };
        let d = exit_details(7, Some(code));
        assert_eq!(d["pid"], "7");
        assert_eq!(d["exit_code"], "3");
        assert!(!d.contains_key("signal"));
        let killed = Exit {
            code: None,
            signal: Some(9),
            ..code
        };
        let d = exit_details(7, Some(killed));
        assert_eq!(d["signal"], "9");
        assert!(!d.contains_key("exit_code"));
        assert_eq!(exit_details(7, None).len(), 1);
        assert_eq!(describe(Some(code)), "exited with code 3");
        assert!(describe(Some(killed)).contains("SIGKILL"));
        assert!(describe(None).contains("unknown"));
    }

    #[test]
    fn died_reads_as_a_sentence() {
        let died = Died {
            pid: 42,
            exit: None,
            during: "while daemonizing",
        };
        assert_eq!(
            LaunchError::Died(died).to_string(),
            "process 42 ended (exit status unknown) while daemonizing"
        );
    }
}
