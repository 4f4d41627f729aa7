//! Reaping: obhostd is a child subreaper and waits for every child it gets.
//!
//! A daemonizing observer's launcher exits at once and its server would be
//! re-parented to init, where nobody we can ask sees it die. As a subreaper
//! (PR_SET_CHILD_SUBREAPER) the server becomes *our* child instead, so we reap it
//! and learn how it ended. One task calls `waitpid(-1)` on every SIGCHLD; this is
//! the only place that waits, so nothing else in the daemon may wait for
//! children (no `std::process::Child::wait`, no `tokio::process`).
//!
//! After a restart of obhostd the processes it started are init's children, not
//! ours: their end is seen through a pidfd, without an exit status.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::Pid;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::exit::Exit;
use super::exits::ExitEvents;
use super::identity;
use super::identity::Identity;

/// Recent exits by pid. Bounded: the oldest are forgotten.
const REMEMBERED: usize = 4096;

#[derive(Clone)]
pub struct Reaper {
    exits: Arc<Mutex<HashMap<i32, Exit>>>,
    /// Bumped on every reap, so waiters wake and look.
    tick: watch::Sender<u64>,
    /// Which launch each of obhostd's children belongs to, by identity: the
    /// launcher of every launch in progress and every server a launch kept
    /// (keyed by pid, forgotten when that pid is reaped). A launch's census
    /// never presumes a process another launch owns (see `tree`).
    claims: Arc<Mutex<HashMap<i32, (Identity, Identity)>>>,
    /// Exits of processes obhostd never reaps (collected by their own
    /// parent), from the kernel; None where it cannot listen.
    elsewhere: Option<ExitEvents>,
}

impl Reaper {
    /// Becomes a subreaper and starts the reaping task. Call once, at start, from
    /// within the runtime.
    pub fn start() -> Reaper {
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            warn!(error = %e, "cannot become a child subreaper; exit codes of daemonizing observers will be unknown");
        }
        let elsewhere = ExitEvents::listen()
            .inspect_err(|e| {
                warn!(error = %e, "cannot listen for process exits; the exit status of a server its launcher collects will be unknown")
            })
            .ok();
        let reaper = Reaper {
            exits: Arc::new(Mutex::new(HashMap::new())),
            tick: watch::channel(0).0,
            claims: Arc::default(),
            elsewhere,
        };
        let r = reaper.clone();
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
            Ok(mut sigchld) => {
                tokio::spawn(async move {
                    loop {
                        r.reap_all();
                        if sigchld.recv().await.is_none() {
                            return;
                        }
                    }
                });
            }
            Err(e) => warn!(error = %e, "cannot watch SIGCHLD; children will be reaped late"),
        }
        reaper
    }

    fn reap_all(&self) {
        loop {
            // Peek first (WNOWAIT): while the child is a zombie its start time
            // is still in /proc, and the exit is recorded with it, so that it
            // is never mistaken for the exit of a later process of that pid.
            let peek = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
            let peeked = waitid(Id::All, peek).ok().and_then(|s| s.pid());
            let start_ticks = peeked
                .and_then(|p| identity::stat(p.as_raw()))
                .map(|s| s.start_ticks);
            let uid = peeked.and_then(|p| {
                use std::os::unix::fs::MetadataExt;
                std::fs::metadata(format!("/proc/{p}"))
                    .ok()
                    .map(|m| m.uid())
            });
            // Reap the very child peeked at, so the start time is its own.
            // The table stays locked from the reap to the record: whoever sees
            // the process gone from /proc and then asks `exit_of` gets its exit,
            // never a moment in between where it is in neither place.
            let which = peeked.unwrap_or(Pid::from_raw(-1));
            let mut exits = self.exits.lock().unwrap_or_else(|p| p.into_inner());
            let exit = match waitpid(which, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    self.exit(pid.as_raw(), Some(code), None, false)
                }
                Ok(WaitStatus::Signaled(pid, sig, core)) => {
                    self.exit(pid.as_raw(), None, Some(sig as i32), core)
                }
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return,
                Ok(other) => {
                    debug!(?other, "child state change");
                    continue;
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    warn!(error = %e, "waitpid failed");
                    return;
                }
            };
            Self::remember(
                &mut exits,
                Exit {
                    start_ticks,
                    uid,
                    ..exit
                },
            );
            drop(exits);
            self.recorded(&exit);
        }
    }

    fn exit(&self, pid: i32, code: Option<i32>, signal: Option<i32>, core_dumped: bool) -> Exit {
        Exit {
            pid,
            code,
            signal,
            core_dumped,
            at: SystemTime::now(),
            start_ticks: None,
            uid: None,
        }
    }

    #[cfg(test)]
    fn record(&self, exit: Exit) {
        Self::remember(
            &mut self.exits.lock().unwrap_or_else(|p| p.into_inner()),
            exit,
        );
        self.recorded(&exit);
    }

    fn remember(exits: &mut HashMap<i32, Exit>, exit: Exit) {
        if exits.len() >= REMEMBERED
            && let Some(oldest) = exits.values().min_by_key(|e| e.at).map(|e| e.pid)
        {
            exits.remove(&oldest);
        }
        exits.insert(exit.pid, exit);
    }

    /// After an exit is in the table: the pid's claim is over, and waiters
    /// wake.
    fn recorded(&self, exit: &Exit) {
        self.claims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&exit.pid);
        info!(pid = exit.pid, status = %exit.describe(), "child reaped");
        self.tick.send_modify(|t| *t += 1);
    }

    /// The exit of `pid` if we reaped it.
    pub fn exit_of(&self, pid: i32) -> Option<Exit> {
        self.exits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&pid)
            .copied()
    }

    /// The exit of the process `id`: that very process, not an earlier one of
    /// the same pid. Reaped by obhostd, else announced by the kernel (its
    /// parent collected it).
    pub fn exit_of_process(&self, id: &Identity) -> Option<Exit> {
        self.exit_of(id.pid)
            .filter(|e| match e.start_ticks {
                Some(t) => t == id.start_ticks,
                // Unknown (the zombie was gone from /proc): it ended after the
                // process started, within the start time's one-second grain.
                None => id
                    .start_time()
                    .is_some_and(|s| e.at + Duration::from_secs(1) >= s),
            })
            .or_else(|| self.elsewhere.as_ref()?.exit_of_process(id))
    }

    /// The latest exit of a process of `pid` since `since`, wherever it was
    /// collected: for a pid whose start time was never seen.
    pub fn exit_since(&self, pid: i32, since: SystemTime) -> Option<Exit> {
        self.exit_of(pid)
            .filter(|e| e.at >= since)
            .or_else(|| self.elsewhere.as_ref()?.exit_of(pid, since))
    }

    /// Every exit recorded since `since`, oldest first.
    pub fn exits_since(&self, since: SystemTime) -> Vec<Exit> {
        let mut exits: Vec<Exit> = self
            .exits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|e| e.at >= since)
            .copied()
            .collect();
        exits.sort_by_key(|e| e.at);
        exits
    }

    /// How many children were reaped so far; see [`Reaper::reaped_after`].
    pub fn reaps(&self) -> u64 {
        *self.tick.borrow()
    }

    /// Returns once more than `seen` children were reaped in all.
    pub async fn reaped_after(&self, seen: u64) {
        let mut rx = self.tick.subscribe();
        let _ = rx.wait_for(|n| *n > seen).await;
    }

    /// Records that `id`, one of obhostd's children, belongs to the launch
    /// of `launcher` (until `id`'s pid is reaped).
    pub fn claim(&self, launcher: Identity, id: Identity) {
        self.claims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.pid, (id, launcher));
    }

    /// True when `id` belongs to a launch other than `launcher`'s.
    pub fn claimed_by_other(&self, id: &Identity, launcher: &Identity) -> bool {
        self.claims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id.pid)
            .is_some_and(|(claimed, owner)| claimed == id && owner != launcher)
    }

    /// Waits until we reap `pid`. Only for our own children: anything else never
    /// resolves, so callers bound it.
    pub async fn wait(&self, pid: i32) -> Exit {
        let mut rx = self.tick.subscribe();
        loop {
            if let Some(e) = self.exit_of(pid) {
                return e;
            }
            // A SIGCHLD can be coalesced with one we already handled; look again.
            self.reap_all();
            if let Some(e) = self.exit_of(pid) {
                return e;
            }
            let _ = tokio::time::timeout(std::time::Duration::from_millis(200), rx.changed()).await;
        }
    }
}

#[cfg(test)]
impl Reaper {
    /// A reaper that reaps nothing (no subreaper, no SIGCHLD task), for unit
    /// tests of what holds one: waitpid(-1) in a test binary would steal
    /// other tests' children.
    pub(crate) fn detached() -> Reaper {
        Reaper {
            exits: Arc::new(Mutex::new(HashMap::new())),
            tick: watch::channel(0).0,
            claims: Arc::default(),
            elsewhere: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detached() -> Reaper {
        Reaper::detached()
    }

    #[test]
    fn exits_read_as_sentences() {
        let at = SystemTime::now();
        let e = |code, signal| Exit {
            pid: 1,
            code,
            signal,
            core_dumped: false,
            at,
            start_ticks: None,
            uid: None,
        };
        assert_eq!(e(Some(0), None).describe(), "exited with code 0");
        assert_eq!(e(None, Some(9)).describe(), "was killed by SIGKILL");
        assert_eq!(e(None, Some(99)).describe(), "was killed by signal 99");
        assert!(e(None, None).describe().contains("exit status unknown"));
    }

    #[tokio::test]
    async fn a_recorded_exit_is_what_wait_returns() {
        let r = detached();
        assert_eq!(r.exit_of(4242), None);
        r.record(r.exit(4242, Some(3), None, false));
        assert_eq!(r.exit_of(4242).map(|e| e.code), Some(Some(3)));
        let e = tokio::time::timeout(std::time::Duration::from_secs(1), r.wait(4242))
            .await
            .expect("wait returns a recorded exit at once");
        assert_eq!(e.code, Some(3));
    }

    #[test]
    fn the_oldest_exits_are_forgotten_beyond_the_bound() {
        let r = detached();
        for pid in 1..=(REMEMBERED as i32 + 10) {
            r.record(r.exit(pid, Some(0), None, false));
        }
        let exits = r.exits.lock().unwrap();
        assert_eq!(exits.len(), REMEMBERED);
        assert!(
            exits.contains_key(&(REMEMBERED as i32 + 10)),
            "the newest is kept"
        );
    }
}
