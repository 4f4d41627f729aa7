//! Pid files: read leniently, written atomically, removed only by their owner.

use std::path::Path;

use crate::confined;

use super::identity::Identity;

/// Pid files are a few digits; anything longer is not one.
const MAX_LEN: u64 = 64;

/// The pid a pid file names, if it names one. Whitespace is tolerated; anything
/// else (empty, garbage, a negative number, a link, a directory) is "no pid",
/// which makes the file stale rather than an error.
pub fn read(path: &Path) -> Option<i32> {
    let bytes = confined::read_small(path, None, MAX_LEN).ok()?;
    let text = std::str::from_utf8(&bytes).ok()?;
    text.trim().parse::<i32>().ok().filter(|pid| *pid > 0)
}

/// Writes `pid` so that readers see the old file or the new one, never half of
/// one, without following any link planted in its dir (see [`confined`]).
pub fn write(path: &Path, pid: i32) -> std::io::Result<()> {
    confined::write_atomic(path, format!("{pid}\n").as_bytes(), None)
}

/// What a pid file says about its process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PidFile {
    Missing,
    /// Names a live process (the caller decides whether it is the right one).
    Live(Identity),
    /// Names no live process: dead pid, zombie, garbage.
    Stale(Option<i32>),
}

pub fn inspect(path: &Path) -> PidFile {
    if !confined::exists(path) {
        return PidFile::Missing;
    }
    match read(path) {
        Some(pid) => match Identity::of(pid) {
            Some(id) => PidFile::Live(id),
            None => PidFile::Stale(Some(pid)),
        },
        None => PidFile::Stale(None),
    }
}

/// Removes the pid file only while it still names `owner` (or nothing live), so
/// that a newer process's pid file is never deleted by a late cleanup.
pub fn remove_if_owned(path: &Path, owner: Option<&Identity>) -> std::io::Result<bool> {
    let ours = match read(path) {
        None => true,
        Some(pid) => match (owner, Identity::of(pid)) {
            (Some(o), _) if o.pid == pid => true,
            (_, None) => true,
            _ => false,
        },
    };
    if !ours {
        return Ok(false);
    }
    confined::remove_file(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_and_stale() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.pid");
        assert_eq!(inspect(&p), PidFile::Missing);
        let me = std::process::id() as i32;
        write(&p, me).unwrap();
        assert_eq!(read(&p), Some(me));
        assert!(matches!(inspect(&p), PidFile::Live(id) if id.pid == me));
        std::fs::write(&p, "garbage").unwrap();
        assert_eq!(inspect(&p), PidFile::Stale(None));
        // A pid far above pid_max names nothing.
        std::fs::write(&p, "99999999\n").unwrap();
        assert_eq!(inspect(&p), PidFile::Stale(Some(99_999_999)));
        assert!(remove_if_owned(&p, None).unwrap());
        assert!(!p.exists());
    }

    #[test]
    fn a_live_foreign_pid_file_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.pid");
        write(&p, 1).unwrap();
        assert!(!remove_if_owned(&p, None).unwrap());
        assert!(p.exists());
    }
}
