//! Whether the kernel's OOM killer killed a process.
//!
//! An observer killed by SIGKILL during its start was, most of the time, killed
//! by the OOM killer (its memory_limit did not fit the host or its cgroup), and
//! the operator needs to know that rather than guess from "signal 9". The
//! kernel says so in its log only: `Out of memory: Killed process 4242 (observer)
//! ...` or, for a cgroup limit, `Memory cgroup out of memory: Killed process
//! 4242 ...`, and since 4.19 an `oom-kill:...,task=observer,pid=4242,uid=...` line.
//!
//! So [`oom_killed`] reads `/dev/kmsg` (each `read` is one record,
//! `prio,seq,usec_since_boot,flags;message`; non-blocking, so the end is EAGAIN)
//! and looks for such a record naming the process's pid. A pid is reused, so only
//! records stamped at or after the process's start count: `start_ticks` (clock
//! ticks since boot, from /proc/<pid>/stat) becomes microseconds through
//! CLK_TCK, and records carry microseconds since boot too. The kernel stamps
//! records with its local clock, which stops while the machine is suspended
//! while the process start time (CLOCK_BOOTTIME) does not; the time spent
//! suspended is subtracted from the start so both count on the same clock.
//!
//! The answer is `Some(false)` only when the whole stretch since the start was
//! read: the oldest record in the kernel's ring buffer is older than the start,
//! no record was lost while reading, and the end was reached within the bound.
//! Otherwise, and when `/dev/kmsg` cannot be read at all (no CAP_SYSLOG, a
//! container without it), it is `None`: nothing is claimed.
//!
//! [`cgroup_oom_kills`] reads the other witness, a memory cgroup's own OOM-kill
//! counter, for callers that know the process's cgroup.
//!
//! Everything here is blocking (a few thousand small reads at most).

use std::io;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::sys::stat::Mode;

use super::identity::Identity;

/// At most this many kernel log records are read (a default ring buffer holds a
/// few thousand; 1 MiB of them at most 20,000 or so).
const MAX_RECORDS: usize = 200_000;
/// Larger than any record (the kernel refuses a read that cannot hold one).
const RECORD_BUF: usize = 16 << 10;
/// The process's start time is known to a clock tick (10 ms at CLK_TCK 100),
/// rounded down; the kernel's clock and CLOCK_BOOTTIME may differ by a little
/// more than that. A record this close before the start still counts: the same
/// pid reused and OOM-killed within it is not a case worth a wrong "no".
const SLACK_USEC: u64 = 20_000;

/// Whether the kernel's OOM killer killed `id` (after it started). `None` when
/// the kernel log cannot tell: unreadable, or it no longer reaches back to the
/// start, or `id` is from another boot.
pub fn oom_killed(id: &Identity) -> Option<bool> {
    let me = Identity::of(std::process::id() as i32)?;
    if id.boot != me.boot {
        return None;
    }
    let start = start_usec(id.start_ticks, super::identity::clock_ticks()?)?
        .saturating_sub(suspended_usec())
        .saturating_sub(SLACK_USEC);
    let log = read_kmsg().ok()?;
    judge(&log, id.pid, start)
}

/// What was read of the kernel log: (timestamp in µs since boot, message).
#[derive(Debug, Default)]
struct KernelLog {
    records: Vec<(u64, String)>,
    /// The end was reached and no record was overwritten while reading.
    complete: bool,
}

/// The verdict on what was read: a kill of `pid` stamped at or after `start`
/// (µs since boot) is a yes; a no needs the log to reach back before `start`.
fn judge(log: &KernelLog, pid: i32, start: u64) -> Option<bool> {
    let killed = log
        .records
        .iter()
        .any(|(usec, msg)| *usec >= start && killed_pid(msg) == Some(pid));
    if killed {
        return Some(true);
    }
    let reaches_back = log.records.first().is_some_and(|(usec, _)| *usec <= start);
    (log.complete && reaches_back).then_some(false)
}

fn read_kmsg() -> io::Result<KernelLog> {
    let fd = open(
        "/dev/kmsg",
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut log = KernelLog::default();
    let mut buf = vec![0u8; RECORD_BUF];
    let mut lost = false;
    for _ in 0..MAX_RECORDS {
        match nix::unistd::read(&fd, &mut buf) {
            Ok(0) | Err(Errno::EAGAIN) => {
                log.complete = !lost;
                return Ok(log);
            }
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                if let Some(rec) = parse_record(&text) {
                    // Only what can be an OOM kill is kept; the first record
                    // always is, to know how far back the log reaches.
                    if log.records.is_empty() || killed_pid(rec.1).is_some() {
                        log.records.push((rec.0, rec.1.to_string()));
                    }
                }
            }
            // The record we were at was overwritten by newer ones: some are gone.
            Err(Errno::EPIPE) => lost = true,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(log) // the bound was reached first: incomplete
}

/// `6,1234,5678901,-;message\n KEY=value...` -> (5678901, "message").
fn parse_record(rec: &str) -> Option<(u64, &str)> {
    let (head, rest) = rec.split_once(';')?;
    let usec = head.split(',').nth(2)?.parse().ok()?;
    let message = rest.split('\n').next().unwrap_or(rest);
    Some((usec, message))
}

/// The pid an OOM-kill message names: `... Killed process <pid> (<comm>) ...`
/// or `oom-kill:...,pid=<pid>,...`.
fn killed_pid(message: &str) -> Option<i32> {
    if let Some((_, after)) = message.split_once("Killed process ") {
        return leading_number(after);
    }
    let fields = message.strip_prefix("oom-kill:")?;
    fields
        .split(',')
        .find_map(|f| f.strip_prefix("pid="))
        .and_then(leading_number)
}

fn leading_number(s: &str) -> Option<i32> {
    let digits = s.split(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok().filter(|pid| *pid > 0)
}

/// Clock ticks since boot -> µs since boot (exact integer arithmetic: no float
/// rounding, no overflow).
fn start_usec(ticks: u64, ticks_per_sec: u64) -> Option<u64> {
    if ticks_per_sec == 0 {
        return None;
    }
    u64::try_from(u128::from(ticks) * 1_000_000 / u128::from(ticks_per_sec)).ok()
}

/// How long the machine has been suspended since boot: CLOCK_BOOTTIME counts
/// it, CLOCK_MONOTONIC (like the kernel log's clock) does not.
fn suspended_usec() -> u64 {
    let (Some(boot), Some(mono)) = (
        clock_usec(libc::CLOCK_BOOTTIME),
        clock_usec(libc::CLOCK_MONOTONIC),
    ) else {
        return 0;
    };
    boot.saturating_sub(mono)
}

fn clock_usec(clock: libc::clockid_t) -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u64::try_from(ts.tv_nsec).ok()?;
    Some(secs * 1_000_000 + nanos / 1_000)
}

/// How many processes the OOM killer killed in the memory cgroup at `dir`
/// (cgroup v2 `memory.events`, or v1 `memory.oom_control` on kernels that count
/// them); `None` when it does not say.
pub fn cgroup_oom_kills(dir: &Path) -> Option<u64> {
    ["memory.events", "memory.oom_control"]
        .iter()
        .find_map(|f| {
            let text = crate::confined::read_small(&dir.join(f), None, 4096).ok()?;
            String::from_utf8_lossy(&text)
                .lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse().ok())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records as the kernel writes them (6.x; the cgroup one from a memory
    /// cgroup limit, the global one from an earlier kernel's wording).
    const CGROUP_KILL: [&str; 3] = [
        "4,2201,90500000,-;python3 invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0",
        "6,2240,90510000,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/obhost-oom,task_memcg=/obhost-oom,task=obhost-fake-obs,pid=4242,uid=0",
        "3,2241,90510100,-;Memory cgroup out of memory: Killed process 4242 (obhost-fake-obs) total-vm:300000kB, anon-rss:65000kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:200kB oom_score_adj:0\n SUBSYSTEM=memory",
    ];

    fn log(records: &[&str], complete: bool) -> KernelLog {
        KernelLog {
            records: records
                .iter()
                .filter_map(|r| parse_record(r))
                .map(|(u, m)| (u, m.to_string()))
                .collect(),
            complete,
        }
    }

    #[test]
    fn records_and_kill_messages_are_parsed() {
        assert_eq!(
            parse_record("6,1,1500,-;hello\n DEVICE=x"),
            Some((1500, "hello"))
        );
        assert_eq!(parse_record("no separator"), None);
        assert_eq!(parse_record("6,1,notanumber,-;x"), None);
        let msgs: Vec<Option<i32>> = CGROUP_KILL
            .iter()
            .map(|r| parse_record(r).and_then(|(_, m)| killed_pid(m)))
            .collect();
        assert_eq!(msgs, [None, Some(4242), Some(4242)]);
        assert_eq!(
            killed_pid("Out of memory: Killed process 77 (observer) total-vm:1kB"),
            Some(77)
        );
        // The choice is not the kill.
        assert_eq!(
            killed_pid("Out of memory: Kill process 77 (observer) score 900 or sacrifice child"),
            None
        );
        assert_eq!(
            killed_pid("oom-kill:constraint=CONSTRAINT_NONE,task=x"),
            None
        );
        assert_eq!(killed_pid("Killed process -1 (x)"), None);
    }

    #[test]
    fn a_kill_after_the_start_is_a_yes_and_before_it_is_not() {
        let mut records = vec!["6,1,1000000,-;Linux version 6.18"];
        records.extend(CGROUP_KILL);
        let l = log(&records, true);
        // Started at 90.4 s: killed after it.
        assert_eq!(judge(&l, 4242, 90_400_000), Some(true));
        // Another process with the same pid, started after that kill: no.
        assert_eq!(judge(&l, 4242, 95_000_000), Some(false));
        // Another pid: no.
        assert_eq!(judge(&l, 4243, 90_400_000), Some(false));
    }

    #[test]
    fn no_claim_when_the_log_does_not_reach_back_to_the_start() {
        // The oldest record is newer than the start: a kill may be gone.
        let l = log(&CGROUP_KILL[..1], true);
        assert_eq!(judge(&l, 4242, 80_000_000), None);
        // Records were lost while reading, or the bound came first.
        let l = log(&["6,1,1000,-;boot", CGROUP_KILL[0]], false);
        assert_eq!(judge(&l, 4242, 80_000_000), None);
        // But a kill that was read is a kill.
        let l = log(&CGROUP_KILL, false);
        assert_eq!(judge(&l, 4242, 80_000_000), Some(true));
        assert_eq!(judge(&KernelLog::default(), 1, 0), None);
    }

    #[test]
    fn ticks_become_microseconds_exactly() {
        assert_eq!(start_usec(987_654, 100), Some(9_876_540_000));
        assert_eq!(start_usec(3, 1000), Some(3_000));
        assert_eq!(start_usec(u64::MAX, 1), None);
        assert_eq!(start_usec(1, 0), None);
    }

    /// This machine's kernel log is readable (we run as root), and nobody has
    /// OOM-killed the test runner itself.
    #[test]
    fn the_running_test_was_not_oom_killed() {
        let me = Identity::of(std::process::id() as i32).unwrap();
        // None only where the ring buffer no longer reaches back to our start.
        assert_ne!(oom_killed(&me), Some(true));
        let elsewhere = Identity {
            boot: me.boot ^ 1,
            ..me
        };
        assert_eq!(oom_killed(&elsewhere), None);
    }
}
