//! Launching a supervised program, the one way both the observer and the OCP
//! agent are started: spawn, then find the process that will serve.
//!
//! - **Foreground**: the spawned process is the server; obhostd writes its pid
//!   file (when there is one).
//! - **Daemonizing** ([`Follow`]): the launcher must exit 0, and the pid file
//!   must name a live process obhostd accepts: one the launcher handed to
//!   obhostd (the subreaper, see [`Identity::daemonized_from`]) or one the
//!   caller vouches for by its own identity rules (e.g. `observer::locate`).
//!   The pid file is looked at at once and then every few ms: the real launcher
//!   exits before its server writes it, and a fixed pause would only add
//!   latency to every start. Beside it, a census of the launch's processes
//!   ([`tree`](super::tree)) ends the wait the moment nothing of the launch is
//!   alive, and a pid file that names a dead process ends it too: a start never
//!   waits for its deadline with nothing left to wait for.
//!
//! Whatever fails after the spawn comes back as a [`Died`] with the same exit
//! details (code, signal, core dump, how long it lived) for every caller, and
//! the [`Spawned`] guard kills what was spawned unless the caller keeps it.
//! Blocking work (fork/exec, the pid file's fsync, /proc walks) runs on the
//! blocking pool, never on the runtime's threads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::exit::Exit;
use super::identity::Identity;
use super::pidfile::{self, PidFile};
use super::reaper::Reaper;
use super::spawn::SpawnError;
use super::spawn::SpawnSpec;
use super::spawned::Spawned;
use super::tree::{Census, Launch, Snapshot};

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
    /// Which process it was, when known: for how long it lived, and to ask
    /// the kernel's log whether the OOM killer ended it.
    pub id: Option<Identity>,
}

impl Died {
    /// "exited with code 3", "was killed by SIGKILL", or "ended (...unknown)".
    pub fn how(&self) -> String {
        describe(self.exit)
    }

    /// `pid`, `exit_code` or `signal` (+ `core_dumped`), `lived`: the step
    /// error's details.
    pub fn details(&self) -> BTreeMap<String, String> {
        let mut d = exit_details(self.pid, self.exit);
        if let Some(lived) = lived(self.id.and_then(|i| i.start_time()), self.exit) {
            d.insert("lived".into(), lived);
        }
        d
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
            d.insert("core_dumped".into(), e.core_dumped.to_string());
        }
    }
    d
}

/// How long a process lived, to the millisecond ("1s 203ms"), when both ends
/// are known.
pub fn lived(started: Option<SystemTime>, exit: Option<Exit>) -> Option<String> {
    let d = exit?.at.duration_since(started?).ok()?;
    Some(humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string())
}

/// The exit of a process that just died, if it was our child: the reaper sees
/// it within moments. Bounded, because a process re-adopted after a restart of
/// obhostd is init's child and is never reaped here.
pub async fn exit_of(reaper: &Reaper, pid: i32) -> Option<Exit> {
    tokio::time::timeout(Duration::from_secs(1), reaper.wait(pid))
        .await
        .ok()
}

/// [`exit_of`] for the process `id` itself: its exit, never that of an
/// earlier process that had the same pid.
pub async fn exit_of_process(reaper: &Reaper, id: &Identity) -> Option<Exit> {
    if let Some(exit) = reaper.exit_of_process(id) {
        return Some(exit);
    }
    exit_of(reaper, id.pid).await?;
    reaper.exit_of_process(id)
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

/// Vouches for a pid file's process beyond "handed to obhostd by this
/// launcher" (e.g. the observer of this home by `observer::locate`'s rules).
pub type Accept = Arc<dyn Fn(&Identity) -> bool + Send + Sync>;

/// A program spawned and being followed to its server.
pub struct Launched {
    pub launcher: Identity,
    pub spawned: Spawned,
    reaper: Reaper,
    /// Foreground: the pid file to write for the launcher, taken once.
    foreground: Option<Option<PathBuf>>,
    follow: Option<Follow>,
}

/// What the launch did, as it happened: stages for the step's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The launcher exited 0 (a non-zero exit is a [`Died`]).
    LauncherExited(Exit),
    /// The pid file names this pid (not accepted as the server yet).
    PidFile(i32),
    /// The server: alive, identified, accepted. The last event.
    Server(Identity),
}

/// Spawns `spec` off the runtime, guarded: dropping [`Launched::spawned`]
/// kills what the launch made unless obhostd is shutting down.
pub async fn start(
    spec: SpawnSpec,
    mode: &Mode,
    reaper: &Reaper,
    shutting_down: impl Fn() -> bool + Send + Sync + 'static,
) -> Result<Launched, LaunchError> {
    let uid = spec.user.uid;
    let before = match mode {
        Mode::Daemonizing { pid_file } => {
            let p = pid_file.clone();
            tokio::task::spawn_blocking(move || pidfile::read(&p))
                .await
                .map_err(|e| LaunchError::Panicked(e.to_string()))?
        }
        Mode::Foreground { .. } => None,
    };
    let mut launcher = super::spawn::start(spec).await?;
    if launcher.boot == 0 {
        // Reaped before spawn could look: the reaper read its start time.
        if let Some(ticks) = reaper.exit_of(launcher.pid).and_then(|e| e.start_ticks) {
            launcher = Identity {
                pid: launcher.pid,
                start_ticks: ticks,
                boot: Identity::this_boot(),
            };
        }
    }
    let mut spawned = Spawned::new(launcher, uid, shutting_down);
    let (foreground, follow) = match mode {
        Mode::Foreground { pid_file } => (Some(pid_file.clone()), None),
        Mode::Daemonizing { pid_file } => {
            let follow = Follow::new(launcher, pid_file, before, &mut spawned, reaper);
            (None, Some(follow))
        }
    };
    Ok(Launched {
        launcher,
        spawned,
        reaper: reaper.clone(),
        foreground,
        follow,
    })
}

impl Launched {
    /// The next thing the launch did; an error as soon as it cannot produce
    /// a server any more. Never returns while something of the launch lives
    /// and nothing changed: the step's deadline bounds it.
    pub async fn next(&mut self, accept: &Accept) -> Result<Event, LaunchError> {
        if let Some(pid_file) = self.foreground.take() {
            if let Some(p) = pid_file {
                write_pid_file(&p, self.launcher.pid).await?;
            }
            return Ok(Event::Server(self.launcher));
        }
        match self.follow.as_mut() {
            Some(follow) => follow.next(&mut self.spawned, &self.reaper, accept).await,
            None => Err(LaunchError::Panicked(
                "was asked for more after it named its server".into(),
            )),
        }
    }

    /// The server, past every intermediate event.
    pub async fn server(&mut self, accept: &Accept) -> Result<Identity, LaunchError> {
        loop {
            if let Event::Server(id) = self.next(accept).await? {
                return Ok(id);
            }
        }
    }
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

/// A daemonizing launch being followed to its server: the launcher's exit,
/// the pid file and the census of the launch's processes, looked at together
/// so that a death is seen at once whatever the order in which launcher,
/// server and pid file came and went.
struct Follow {
    launcher: Identity,
    pid_file: PathBuf,
    /// The pid the pid file named before the spawn: a stale file the launch
    /// has not rewritten yet says nothing about this launch.
    before: Option<i32>,
    tree: Arc<Mutex<Launch>>,
    launcher_exit: Option<Exit>,
    /// The pid the pid file last named, once reported.
    named: Option<i32>,
    /// A dead pid the pid file named at the previous look: a death is only
    /// believed when two looks agree (a file caught mid-write may name a
    /// number no process has).
    named_dead: Option<i32>,
    pacer: super::pacer::Pacer,
    started: Instant,
    last_census: Option<Instant>,
    reaps_seen: u64,
    /// The last census found nothing of the launch alive.
    seen_empty: bool,
}

/// The census is taken on every look this long after the spawn (a launch
/// forks in its first moments), then at most this often, and at once
/// whenever obhostd reaps a child.
const CENSUS_EAGER: Duration = Duration::from_millis(100);
const CENSUS_EVERY: Duration = Duration::from_millis(50);

/// How `id` ended, if that can be known now: obhostd reaped it, or it is a
/// zombie whose status /proc still shows (a child not collected yet, by
/// obhostd's reaper a moment from now or by its own parent). Asked in that
/// order and the reaper once more, so a reap between the two looks is not
/// missed.
fn exit_now(id: &Identity, reaper: &Reaper) -> Option<Exit> {
    reaper
        .exit_of_process(id)
        .or_else(|| {
            let s = super::identity::stat(id.pid)?;
            if s.state != 'Z' || s.start_ticks != id.start_ticks {
                return None;
            }
            Some(Exit {
                start_ticks: Some(id.start_ticks),
                ..Exit::from_status(id.pid, s.exit_code?)
            })
        })
        .or_else(|| reaper.exit_of_process(id))
}

struct Look {
    pid_file: PidFile,
    accepted: bool,
    census: Option<Census>,
}

impl Follow {
    fn new(
        launcher: Identity,
        pid_file: &Path,
        before: Option<i32>,
        spawned: &mut Spawned,
        reaper: &Reaper,
    ) -> Follow {
        let tree = Arc::new(Mutex::new(Launch::new(launcher, spawned.uid())));
        spawned.track(tree.clone());
        reaper.claim(launcher, launcher);
        Follow {
            launcher,
            pid_file: pid_file.to_path_buf(),
            before,
            tree,
            launcher_exit: None,
            named: None,
            named_dead: None,
            pacer: super::pacer::Pacer::default(),
            started: Instant::now(),
            last_census: None,
            reaps_seen: reaper.reaps(),
            seen_empty: false,
        }
    }

    async fn next(
        &mut self,
        spawned: &mut Spawned,
        reaper: &Reaper,
        accept: &Accept,
    ) -> Result<Event, LaunchError> {
        loop {
            if self.launcher_exit.is_none()
                && let Some(exit) = reaper.exit_of(self.launcher.pid)
            {
                self.launcher_exit = Some(exit);
                if exit.code != Some(0) {
                    return Err(LaunchError::Died(Died {
                        pid: exit.pid,
                        exit: Some(exit),
                        during: "while daemonizing",
                        id: Some(self.launcher),
                    }));
                }
                return Ok(Event::LauncherExited(exit));
            }
            let reaps = reaper.reaps();
            let look = self.look(spawned.uid(), reaper, accept).await;
            match look.pid_file {
                PidFile::Live(id) if look.accepted => {
                    spawned.server(id);
                    reaper.claim(self.launcher, id);
                    return Ok(Event::Server(id));
                }
                PidFile::Live(Identity { pid, .. }) | PidFile::Stale(Some(pid))
                    if self.named != Some(pid) && self.before != Some(pid) =>
                {
                    self.named = Some(pid);
                    return Ok(Event::PidFile(pid));
                }
                PidFile::Stale(Some(pid)) if self.before != Some(pid) => {
                    if self.named_dead == Some(pid) {
                        return Err(self.named_is_dead(pid, reaper));
                    }
                    self.named_dead = Some(pid);
                    continue;
                }
                _ => self.named_dead = None,
            }
            if let Some(census) = look.census {
                // A /proc walk is no snapshot: a process read under a parent
                // that exits before the walk reaches it (its child moving to
                // obhostd meanwhile) is in neither place. So "nothing alive"
                // must hold at two walks in a row; the second is taken at once.
                let empty = self.launcher_exit.is_some() && census.is_empty();
                if empty {
                    tracing::debug!(
                        launcher = self.launcher.pid,
                        again = self.seen_empty,
                        "the census found nothing of the launch alive"
                    );
                }
                if empty && self.seen_empty {
                    return Err(self.nothing_left(reaper, spawned.uid()));
                }
                self.seen_empty = empty;
                if empty {
                    self.last_census = None;
                    continue;
                }
            }
            // Wake early when a child is reaped: its death is then seen at once.
            let pause = self.pacer.next_pause();
            let _ = tokio::time::timeout(pause, reaper.reaped_after(reaps)).await;
        }
    }

    /// One look, off the runtime: the pid file, whether its process is
    /// acceptable, and the census when it is due.
    async fn look(&mut self, uid: u32, reaper: &Reaper, accept: &Accept) -> Look {
        let reaps = reaper.reaps();
        let due = self.started.elapsed() < CENSUS_EAGER
            || reaps != self.reaps_seen
            || self
                .last_census
                .is_none_or(|at| at.elapsed() >= CENSUS_EVERY);
        if due {
            self.reaps_seen = reaps;
            self.last_census = Some(Instant::now());
        }
        let (file, launcher, tree, accept) = (
            self.pid_file.clone(),
            self.launcher,
            self.tree.clone(),
            accept.clone(),
        );
        let claims = reaper.clone();
        tokio::task::spawn_blocking(move || {
            // The census before the pid file: a server that writes the file
            // and dies between the two is then seen dead, never missed.
            let census = due.then(|| {
                let snap = Snapshot::take();
                let mut tree = tree.lock().unwrap_or_else(|p| p.into_inner());
                tree.census(&snap, |id| claims.claimed_by_other(id, &launcher))
            });
            let pid_file = pidfile::inspect(&file);
            let accepted = match &pid_file {
                PidFile::Live(id) => id.daemonized_from(&launcher, uid) || accept(id),
                _ => false,
            };
            Look {
                pid_file,
                accepted,
                census,
            }
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// How `id`, a process of this launch, ended: the status obhostd reaped
    /// (if it reaped this very process), else the status /proc showed while
    /// it was a zombie (its parent collected it), else unknown.
    fn died(&self, id: Identity, reaper: &Reaper, during: &'static str) -> LaunchError {
        let seen = {
            let tree = self.tree.lock().unwrap_or_else(|p| p.into_inner());
            tree.seen_status(&id)
        };
        let exit = exit_now(&id, reaper).or_else(|| seen.map(|s| Exit::from_status(id.pid, s)));
        LaunchError::Died(Died {
            pid: id.pid,
            exit,
            during,
            id: Some(id),
        })
    }

    /// The pid file names `pid`, dead at two looks. A member of this launch
    /// is reported as it ended; any other pid is a server that wrote its file
    /// and died before the census saw it, or a file naming nobody.
    fn named_is_dead(&self, pid: i32, reaper: &Reaper) -> LaunchError {
        let member = {
            let tree = self.tree.lock().unwrap_or_else(|p| p.into_inner());
            tree.known(pid)
        };
        match member {
            Some(id) => self.died(id, reaper, "after it wrote its pid file"),
            None => {
                // Never seen alive by the census (it lived between two looks):
                // still a zombie, or reaped by obhostd, it says who it was.
                let zombie = super::identity::stat(pid)
                    .filter(|s| s.state == 'Z' && s.start_ticks >= self.launcher.start_ticks);
                if let Some(s) = zombie {
                    let id = Identity {
                        pid,
                        start_ticks: s.start_ticks,
                        boot: self.launcher.boot,
                    };
                    return self.died(id, reaper, "after it wrote its pid file");
                }
                let exit = reaper.exit_since(pid, self.started_at());
                let id = exit.and_then(|e| {
                    Some(Identity {
                        pid,
                        start_ticks: e.start_ticks?,
                        boot: self.launcher.boot,
                    })
                });
                LaunchError::Died(Died {
                    pid,
                    exit,
                    during: match exit {
                        Some(_) => "after it wrote its pid file",
                        None => "(named by the pid file) is not running",
                    },
                    id,
                })
            }
        }
    }

    fn started_at(&self) -> SystemTime {
        SystemTime::now() - self.started.elapsed()
    }

    /// The launcher exited 0 and the census found nothing alive: the launch
    /// is over without a server. The process to blame is the one the pid file
    /// named, else the first-started member that ended badly (the server, not
    /// a helper it forked), else the launcher.
    fn nothing_left(&self, reaper: &Reaper, uid: u32) -> LaunchError {
        let (named, mut bad) = {
            let tree = self.tree.lock().unwrap_or_else(|p| p.into_inner());
            let named = self.named.and_then(|pid| tree.known(pid));
            let bad = tree
                .members()
                .chain(tree.presumed())
                .filter(|m| *m != self.launcher)
                .filter(|m| {
                    let exit = exit_now(m, reaper)
                        .or_else(|| tree.seen_status(m).map(|s| Exit::from_status(m.pid, s)));
                    exit.is_some_and(|e| e.code != Some(0))
                })
                // The first to start of those that ended badly: the server, not
                // a helper it forked later that failed with it (seekdb has one).
                .min_by_key(|m| (m.start_ticks, m.pid));
            (named, bad)
        };
        if bad.is_none() {
            // A server forked, handed to obhostd and dead between two looks is
            // in no census, but obhostd reaped it: by the rule a census
            // presumes with (a child of obhostd, of the launch's user, started
            // since the launcher), it was this launch's.
            bad = reaper
                .exits_since(self.started_at())
                .into_iter()
                .filter(|e| e.pid != self.launcher.pid && e.code != Some(0))
                .filter(|e| e.uid == Some(uid))
                .filter_map(|e| {
                    let start_ticks = e.start_ticks.filter(|t| *t >= self.launcher.start_ticks)?;
                    Some(Identity {
                        pid: e.pid,
                        start_ticks,
                        boot: self.launcher.boot,
                    })
                })
                .min_by_key(|m| (m.start_ticks, m.pid));
        }
        match (named, bad) {
            (Some(id), _) => self.died(id, reaper, "after it wrote its pid file"),
            (None, Some(id)) => self.died(id, reaper, "before any server wrote the pid file"),
            (None, None) => self.died(
                self.launcher,
                reaper,
                "and nothing it started is running: no server wrote the pid file",
            ),
        }
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
            core_dumped: false,
            at,
            start_ticks: None,
            uid: None,
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
            id: None,
        };
        assert_eq!(
            LaunchError::Died(died).to_string(),
            "process 42 ended (exit status unknown) while daemonizing"
        );
    }
}
