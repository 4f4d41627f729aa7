//! Exits obhostd did not reap, as the kernel announces them.
//!
//! A launcher that is a shell collects the server it forks (`wait`), so that
//! server's status never reaches the [`Reaper`](super::Reaper), and once it is
//! collected /proc has nothing of it either: a start that failed that way could
//! only say "exit status unknown". The same holds for an observer obhostd
//! adopted after a restart (its parent is init now). The kernel announces
//! every process's exit, with its wait status, to root's listeners on the
//! process-events connector (netlink); obhostd listens for exits only and
//! keeps the most recent ones, each with the start time read while the
//! process was still in /proc, so that it is never taken for the exit of a
//! later process of the same pid.
//!
//! Exact, not eventual: the kernel queues the event before the process turns
//! zombie, so a caller that has seen a process dead and then asks
//! [`ExitEvents::exit_of_process`] gets its event. Every lookup first drains
//! what is queued, under the same lock the listener drains under, so no event
//! is ever in flight between the socket and the table.
//!
//! Without the connector (no root, a kernel without it, a user namespace)
//! nothing else changes: those exits stay unknown, as before.

use std::collections::{HashMap, VecDeque};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use proc_connector::{Error as CnError, ProcConnector, ProcEvent};
use tracing::{debug, warn};

use super::exit::Exit;
use super::identity;
use super::identity::Identity;

/// How many exits are remembered; the oldest are forgotten first. A failed
/// start looks within seconds of the death, and hosts that run a database
/// end far fewer processes than this in that time.
const REMEMBERED: usize = 8192;

/// Room for bursts the listener has not drained yet (the kernel drops events
/// past it, and says so).
const RECEIVE_BUFFER: usize = 4 << 20;

/// How long obhostd's start waits for the kernel to take the subscription.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(1);

/// The exits of every process on the host, as the kernel reports them.
#[derive(Clone)]
pub struct ExitEvents {
    inner: Arc<Inner>,
}

struct Inner {
    /// Set once the kernel has taken the subscription.
    conn: OnceLock<ProcConnector>,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    by_pid: HashMap<i32, (u64, Exit)>,
    /// Insertion order, for forgetting the oldest: (pid, insertion number).
    order: VecDeque<(i32, u64)>,
    inserted: u64,
    /// Whether the kernel has dropped events since the last warning.
    overrun: bool,
}

impl ExitEvents {
    /// Subscribes to the kernel's exit events and starts the thread that
    /// drains them. Fails without root or without the connector. The
    /// subscription waits for the kernel's answer, so it is made on that
    /// thread: should the answer not come within a second, obhostd starts
    /// anyway and exits are recorded once it does.
    pub fn listen() -> std::io::Result<ExitEvents> {
        let events = ExitEvents {
            inner: Arc::new(Inner {
                conn: OnceLock::new(),
                table: Mutex::default(),
            }),
        };
        let e = events.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("obhost-exits".into())
            .spawn(move || match subscribe() {
                Ok(conn) => {
                    let _ = e.inner.conn.set(conn);
                    let _ = tx.send(Ok(()));
                    e.run();
                }
                Err(err) => {
                    let _ = tx.send(Err(err));
                }
            })?;
        match rx.recv_timeout(SUBSCRIBE_WAIT) {
            Ok(Ok(())) => Ok(events),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                warn!(
                    "the kernel has not answered the subscription to process exit events yet; going on without waiting"
                );
                Ok(events)
            }
        }
    }

    /// The exit of the process `id`: that very process, never an earlier or
    /// later one of the same pid.
    pub fn exit_of_process(&self, id: &Identity) -> Option<Exit> {
        self.drain();
        let table = self.inner.table.lock().unwrap_or_else(|p| p.into_inner());
        let (_, exit) = table.by_pid.get(&id.pid)?;
        matches(exit, id).then_some(*exit)
    }

    /// The latest exit of any process of `pid` at or after `since`.
    pub fn exit_of(&self, pid: i32, since: SystemTime) -> Option<Exit> {
        self.drain();
        let table = self.inner.table.lock().unwrap_or_else(|p| p.into_inner());
        let (_, exit) = table.by_pid.get(&pid)?;
        (exit.at >= since).then_some(*exit)
    }

    fn run(&self) {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let Some(conn) = self.inner.conn.get() else {
            return;
        };
        loop {
            let mut fds = [PollFd::new(conn.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    warn!(error = %e, "cannot wait for process exits; exits obhostd does not reap will be unknown");
                    return;
                }
            }
            if !self.drain() {
                return;
            }
        }
    }

    /// Moves every queued event into the table, under its lock. False when
    /// the socket failed for good.
    fn drain(&self) -> bool {
        let Some(conn) = self.inner.conn.get() else {
            return true;
        };
        let mut table = self.inner.table.lock().unwrap_or_else(|p| p.into_inner());
        let mut buf = [0u8; 1024];
        loop {
            match conn.recv(&mut buf) {
                Ok(ProcEvent::Exit {
                    pid,
                    tgid,
                    exit_code,
                    timestamp_ns,
                    ..
                }) if pid == tgid => table.record(exited(pid as i32, exit_code, timestamp_ns)),
                Ok(_) | Err(CnError::Interrupted) => {}
                Err(CnError::Overrun) => {
                    if !table.overrun {
                        warn!(
                            "the kernel dropped process exit events (too many at once); some exit statuses will be unknown"
                        );
                    }
                    table.overrun = true;
                }
                Err(CnError::Os(e)) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(e) => {
                    warn!(error = %e, "process exit events failed; exits obhostd does not reap will be unknown");
                    return false;
                }
            }
        }
    }
}

/// A connector socket subscribed to process events, non-blocking. Every
/// event arrives (fork, exec, ...) and all but exits are skipped: a second,
/// filtered subscription on the socket got no answer from the kernel (6.18)
/// until some event arrived, which held obhostd's start for seconds on a
/// quiet host.
fn subscribe() -> std::io::Result<ProcConnector> {
    let conn = ProcConnector::new().map_err(io_error)?;
    if let Err(e) = conn.set_recv_buf_size(RECEIVE_BUFFER) {
        debug!(error = %e, "cannot enlarge the process-events buffer");
    }
    conn.set_nonblocking().map_err(io_error)?;
    Ok(conn)
}

impl Table {
    fn record(&mut self, exit: Exit) {
        self.overrun = false;
        self.inserted += 1;
        self.by_pid.insert(exit.pid, (self.inserted, exit));
        self.order.push_back((exit.pid, self.inserted));
        while self.order.len() > REMEMBERED {
            let Some((pid, n)) = self.order.pop_front() else {
                break;
            };
            if self.by_pid.get(&pid).is_some_and(|(m, _)| *m == n) {
                self.by_pid.remove(&pid);
            }
        }
    }
}

/// The exit of `pid` with raw wait status `status` at kernel time `at_ns`
/// (CLOCK_MONOTONIC), with who the process was: read at once, while it is
/// still in /proc (a zombie, or just collected, when it is not).
fn exited(pid: i32, status: u32, at_ns: u64) -> Exit {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(Duration::from)
        .unwrap_or_default();
    let ago = now.saturating_sub(Duration::from_nanos(at_ns));
    let stat = identity::stat(pid);
    let uid = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/proc/{pid}"))
            .ok()
            .map(|m| m.uid())
    };
    Exit {
        at: SystemTime::now() - ago,
        start_ticks: stat.as_ref().map(|s| s.start_ticks),
        uid: stat.and(uid),
        ..Exit::from_status(pid, status as i32)
    }
}

/// Whether `exit` is that of `id`: by start time when it was read, else by
/// time (it ended after `id` started, within the start time's grain).
fn matches(exit: &Exit, id: &Identity) -> bool {
    match exit.start_ticks {
        Some(t) => t == id.start_ticks,
        None => id
            .start_time()
            .is_some_and(|s| exit.at + Duration::from_secs(1) >= s),
    }
}

fn io_error(e: CnError) -> std::io::Error {
    match e {
        CnError::Os(e) => e,
        other => std::io::Error::other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    /// A grandchild collected by its own parent (a shell's `wait`), so
    /// obhostd never reaps it: its exit code still comes through.
    #[test]
    fn an_exit_collected_by_another_parent_is_seen_with_its_status() {
        let Ok(events) = ExitEvents::listen() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI runs as root, where the connector works"
            );
            eprintln!("SKIPPED: no process-events connector (not root?)");
            return;
        };
        let out = std::process::Command::new("sh")
            .args(["-c", "sh -c 'echo $$; exit 7' & wait $!; exit 0"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        let pid: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        let exit = events
            .exit_of(pid, SystemTime::now() - Duration::from_secs(60))
            .expect("the kernel announced it");
        assert_eq!(exit.code, Some(7), "{exit:?}");
        assert!(exit.at <= SystemTime::now(), "{exit:?}");
        assert!(
            exit.at > SystemTime::now() - Duration::from_secs(10),
            "{exit:?}"
        );

        // Killed by a signal, with the signal told apart from a code.
        let out = std::process::Command::new("sh")
            .args(["-c", "sh -c 'echo $$; kill -KILL $$' & wait $!; exit 0"])
            .output()
            .unwrap();
        assert!(out.status.signal().is_none());
        let pid: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        let exit = events
            .exit_of(pid, SystemTime::now() - Duration::from_secs(60))
            .expect("the kernel announced it");
        assert_eq!((exit.code, exit.signal), (None, Some(9)), "{exit:?}");
    }

    /// An exit is the process's own only when the start time agrees.
    #[test]
    fn an_exit_matches_only_its_own_process() {
        let me = Identity::of(std::process::id() as i32).unwrap();
        let exit = Exit {
            start_ticks: Some(me.start_ticks),
            ..Exit::from_status(me.pid, 0)
        };
        assert!(matches(&exit, &me));
        let earlier = Exit {
            start_ticks: Some(me.start_ticks - 1),
            ..exit
        };
        assert!(!matches(&earlier, &me));
        let long_ago = Exit {
            start_ticks: None,
            at: SystemTime::now() - Duration::from_secs(86_400 * 365 * 30),
            ..exit
        };
        assert!(!matches(&long_ago, &me));
    }

    #[test]
    fn the_oldest_exits_are_forgotten_first() {
        let mut t = Table::default();
        for pid in 0..(REMEMBERED as i32 + 10) {
            t.record(Exit::from_status(pid, 0));
        }
        assert_eq!(t.by_pid.len(), REMEMBERED);
        assert!(!t.by_pid.contains_key(&0));
        assert!(t.by_pid.contains_key(&(REMEMBERED as i32 + 9)));
        // A pid seen again counts from its latest exit.
        t.record(Exit::from_status(10, 1 << 8));
        for pid in 100_000..100_000 + REMEMBERED as i32 - 1 {
            t.record(Exit::from_status(pid, 0));
        }
        assert_eq!(t.by_pid.get(&10).map(|(_, e)| e.code), Some(Some(1)));
    }
}
