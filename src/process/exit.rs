//! How a process ended: what the reaper learns from `waitpid`, what the
//! kernel's exit events say of a process obhostd never reaps, and what every
//! step failure reports (code, signal, core dump). A value of its own, so the
//! two sources share it without depending on each other.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::identity::Identity;

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    pub pid: i32,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    #[serde(default)]
    pub core_dumped: bool,
    pub at: SystemTime,
    /// The start time (clock ticks since boot) of the process that ended, read
    /// while it was a zombie: which process of that pid this was.
    #[serde(default)]
    pub start_ticks: Option<u64>,
    /// Whom it ran as (the owner of /proc/<pid> while it was a zombie): which
    /// launch a child that died unseen may have belonged to.
    #[serde(default)]
    pub uid: Option<u32>,
}

impl Exit {
    /// The end of `id` when nothing says how it ended (it was not obhostd's
    /// child, or its status was collected by its parent).
    pub fn unknown(id: &Identity) -> Exit {
        Exit {
            pid: id.pid,
            code: None,
            signal: None,
            core_dumped: false,
            at: SystemTime::now(),
            start_ticks: Some(id.start_ticks),
            uid: None,
        }
    }

    /// An exit known from a raw wait status (a zombie's, read from /proc).
    pub fn from_status(pid: i32, status: i32) -> Exit {
        let signal = status & 0x7f;
        Exit {
            pid,
            code: (signal == 0).then_some((status >> 8) & 0xff),
            signal: (signal != 0).then_some(signal),
            core_dumped: signal != 0 && status & 0x80 != 0,
            at: SystemTime::now(),
            start_ticks: None,
            uid: None,
        }
    }

    pub fn describe(&self) -> String {
        match (self.code, self.signal) {
            (Some(c), _) => format!("exited with code {c}"),
            (_, Some(s)) => {
                let name = nix::sys::signal::Signal::try_from(s)
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|_| format!("signal {s}"));
                let core = if self.core_dumped {
                    " (core dumped)"
                } else {
                    ""
                };
                format!("was killed by {name}{core}")
            }
            _ => "ended (exit status unknown: neither obhostd nor the kernel's exit events saw it)"
                .into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    /// The raw wait status of `sh -c script`, as the kernel reports it.
    fn status_of(script: &str) -> i32 {
        std::process::Command::new("/bin/sh")
            .args(["-c", script])
            .status()
            .expect("run /bin/sh")
            .into_raw()
    }

    #[test]
    fn an_exit_code_is_read_from_a_real_status() {
        let e = Exit::from_status(7, status_of("exit 3"));
        assert_eq!(
            (e.pid, e.code, e.signal, e.core_dumped),
            (7, Some(3), None, false)
        );
        assert_eq!(e.describe(), "exited with code 3");
    }

    #[test]
    fn a_signal_is_read_from_a_real_status() {
        let e = Exit::from_status(7, status_of("kill -KILL $$"));
        assert_eq!((e.code, e.signal, e.core_dumped), (None, Some(9), false));
        assert_eq!(e.describe(), "was killed by SIGKILL");
    }

    /// The core bit (0x80) beside the signal, as wait(2) encodes a dump (not
    /// made for real here: it would leave a core wherever the host sends them).
    #[test]
    fn a_core_dump_is_said() {
        let e = Exit::from_status(7, libc::SIGSEGV | 0x80);
        assert_eq!((e.code, e.signal, e.core_dumped), (None, Some(11), true));
        assert_eq!(e.describe(), "was killed by SIGSEGV (core dumped)");
    }

    /// The registry stores exits; one written before `core_dumped`,
    /// `start_ticks` and `uid` existed must still be read.
    #[test]
    fn an_exit_stored_by_an_older_obhostd_is_read() {
        let old = r#"{"pid":42,"code":null,"signal":9,"at":{"secs_since_epoch":1700000000,"nanos_since_epoch":0}}"#;
        let e: Exit = serde_json::from_str(old).expect("an older record");
        assert_eq!((e.pid, e.signal, e.core_dumped), (42, Some(9), false));
        assert_eq!((e.start_ticks, e.uid), (None, None));
    }
}
