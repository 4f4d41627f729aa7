//! Who a process is: (pid, start time, boot id).
//!
//! A pid alone names nothing durable: it is reused as soon as its process is
//! reaped, and after a reboot every pid in a pid file is stale. The start time
//! (field 22 of /proc/<pid>/stat, in clock ticks since boot) plus the boot id make
//! an identity no other process can have, so a signal or an "already running"
//! answer is never given on the word of a recycled pid.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Identity {
    pub pid: i32,
    /// Clock ticks after boot at which the process started.
    pub start_ticks: u64,
    /// The boot the ticks count from: /proc/sys/kernel/random/boot_id, a UUID,
    /// as its 128 bits. Stored as it is: a hash of it would have to be the same
    /// in every future build of obhostd to recognise what this one recorded.
    #[serde(deserialize_with = "boot_compat")]
    pub boot: u128,
}

/// What /proc/<pid>/stat says about a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub state: char,
    pub ppid: i32,
    pub session: i32,
    pub start_ticks: u64,
    pub comm: String,
    /// Field 52: a zombie's wait status (Linux 3.5+), the only word of how a
    /// process ended when its parent, not obhostd, collects it.
    pub exit_code: Option<i32>,
}

/// Parses /proc/<pid>/stat. The command name is in parentheses and may itself
/// contain spaces and parentheses, so fields are counted from the last ')'.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); field N is rest[N - 3].
    Some(Stat {
        state: rest.first()?.chars().next()?,
        ppid: rest.get(1)?.parse().ok()?,
        session: rest.get(3)?.parse().ok()?,
        start_ticks: rest.get(19)?.parse().ok()?,
        comm,
        exit_code: rest.get(49).and_then(|c| c.parse().ok()),
    })
}

pub fn stat(pid: i32) -> Option<Stat> {
    if pid <= 0 {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// The kernel's id of the current boot. Part of a process's identity: a pid and
/// start time from before a reboot name nothing now.
pub fn boot_id() -> std::io::Result<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string())
}

/// This boot's id, as 128 bits (0 if the kernel does not say).
pub(super) fn current_boot() -> u128 {
    static BOOT: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    *BOOT.get_or_init(|| {
        boot_id()
            .ok()
            .and_then(|id| parse_boot_id(&id))
            .unwrap_or(0)
    })
}

/// `2b1a3c4d-...`: 32 hex digits, dashes anywhere.
fn parse_boot_id(id: &str) -> Option<u128> {
    let hex: String = id.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    u128::from_str_radix(&hex, 16).ok()
}

/// Reads a stored boot. obhostd 0.1.0 stored a `DefaultHasher` hash of
/// the boot id (64 bits), which std does not promise to keep stable; a stored
/// value that equals this build's hash of the current boot id is that boot.
/// Anything else from then is an earlier boot, which is what it was anyway.
fn boot_compat<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
    let stored = u128::deserialize(d)?;
    Ok(match u64::try_from(stored) {
        Ok(old) if old == legacy_boot_hash() => current_boot(),
        _ => stored,
    })
}

fn legacy_boot_hash() -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let id = boot_id().unwrap_or_default();
    let mut h = DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

impl Identity {
    /// The identity of the live process `pid`, or None when there is none (a
    /// zombie counts as gone: it runs nothing and holds no port).
    pub fn of(pid: i32) -> Option<Identity> {
        let s = stat(pid)?;
        if matches!(s.state, 'Z' | 'X' | 'x') {
            return None;
        }
        Some(Identity {
            pid,
            start_ticks: s.start_ticks,
            boot: current_boot(),
        })
    }

    /// The identity of `pid`, a child that may have exited already but not
    /// been reaped (a zombie keeps its start time).
    pub fn of_child(pid: i32) -> Option<Identity> {
        Some(Identity {
            pid,
            start_ticks: stat(pid)?.start_ticks,
            boot: current_boot(),
        })
    }

    /// The boot this daemon runs in, as identities record it.
    pub fn this_boot() -> u128 {
        current_boot()
    }

    /// True while this very process is alive.
    pub fn is_alive(&self) -> bool {
        Identity::of(self.pid).is_some_and(|now| now == *self)
    }

    /// The user the process runs as, when its real and effective uids agree (a
    /// setuid program started by one user runs as another: it is neither's).
    pub fn uid(&self) -> Option<u32> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let ids: Vec<u32> = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))?
            .split_whitespace()
            .take(2)
            .filter_map(|n| n.parse().ok())
            .collect();
        match ids[..] {
            [real, effective] if real == effective => Some(real),
            _ => None,
        }
    }

    /// The executable the process runs (resolved by the kernel).
    pub fn exe(&self) -> Option<std::path::PathBuf> {
        std::fs::read_link(format!("/proc/{}/exe", self.pid)).ok()
    }

    /// A process obhostd must never signal or vouch for, whatever a pid file
    /// says: itself and init.
    pub fn is_protected(&self) -> bool {
        self.pid <= 1 || self.pid == std::process::id() as i32
    }

    /// Whether this process runs as `uid` and is one obhostd may act on (not
    /// itself, not init): the first condition of every trust rule.
    pub fn runs_as(&self, uid: u32) -> bool {
        !self.is_protected() && self.uid() == Some(uid)
    }

    /// Whether this process is what `launcher`, which obhostd spawned, left
    /// running when it daemonized: it runs as `uid`, started no earlier than the
    /// launcher, and was handed to obhostd (the subreaper) when its parent
    /// exited. A process someone else started has another parent.
    pub fn daemonized_from(&self, launcher: &Identity, uid: u32) -> bool {
        self.boot == launcher.boot
            && self.start_ticks >= launcher.start_ticks
            && self.runs_as(uid)
            && stat(self.pid).is_some_and(|s| s.ppid == std::process::id() as i32)
    }

    /// Wall-clock start time, from the boot time in /proc/stat.
    pub fn start_time(&self) -> Option<SystemTime> {
        let ticks_per_sec = clock_ticks()?;
        let btime = boot_time()?;
        let after_boot = Duration::from_secs_f64(self.start_ticks as f64 / ticks_per_sec as f64);
        Some(btime + after_boot)
    }
}

/// Clock ticks per second (CLK_TCK), the unit of /proc's start times.
pub(crate) fn clock_ticks() -> Option<u64> {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)
}

fn boot_time() -> Option<SystemTime> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let secs: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The boot is stored as the kernel's id itself, the same from any build.
    #[test]
    fn a_stored_identity_names_the_boot_by_its_id() {
        let id = boot_id().unwrap();
        let me = Identity::of(std::process::id() as i32).unwrap();
        assert_eq!(me.boot, parse_boot_id(&id).unwrap());
        assert_eq!(
            me.boot,
            u128::from_str_radix(&id.replace('-', ""), 16).unwrap()
        );
        let stored = serde_json::to_string(&me).unwrap();
        assert_eq!(serde_json::from_str::<Identity>(&stored).unwrap(), me);
    }

    /// What 0.1.0 stored (a hash of this boot's id) still reads as this boot.
    #[test]
    fn an_identity_stored_by_an_older_version_is_still_recognised() {
        let me = Identity::of(std::process::id() as i32).unwrap();
        let old = format!(
            r#"{{"pid":{},"start_ticks":{},"boot":{}}}"#,
            me.pid,
            me.start_ticks,
            legacy_boot_hash()
        );
        assert_eq!(serde_json::from_str::<Identity>(&old).unwrap(), me);
        let earlier_boot = format!(r#"{{"pid":1,"start_ticks":1,"boot":{}}}"#, 12345);
        assert_eq!(
            serde_json::from_str::<Identity>(&earlier_boot)
                .unwrap()
                .boot,
            12345
        );
        assert_eq!(parse_boot_id("not-a-uuid"), None);
    }

    #[test]
    fn stat_with_awkward_command_names() {
        let line = "4242 (ob (srv) x) S 1 4242 4242 0 -1 4194560 1 0 0 0 3 4 0 0 20 0 12 0 987654 1000 10 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.comm, "ob (srv) x");
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.session, 4242);
        assert_eq!(s.start_ticks, 987654);
    }

    #[test]
    fn our_own_identity_is_alive_and_a_changed_one_is_not() {
        let me = Identity::of(std::process::id() as i32).unwrap();
        assert!(me.is_alive());
        let reused = Identity {
            start_ticks: me.start_ticks + 1,
            ..me
        };
        assert!(
            !reused.is_alive(),
            "same pid, other start time: another process"
        );
        let started = me.start_time().unwrap();
        assert!(started <= SystemTime::now());
    }
}
