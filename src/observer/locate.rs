//! Finding the observer of a home_path, if one runs.
//!
//! obhostd signals what it finds here and reports it as "already running", so
//! a process counts as this home's observer only on evidence an unprivileged
//! user cannot forge: obhostd itself started and recorded it (pid, start time,
//! boot id), or its executable is the home's resolved binary. In both cases it
//! must run as the observer's user, and it is never obhostd itself or init. A
//! command line or a working dir proves nothing: anyone can put a home path in
//! their argv, and obhostd's own cwd may lie under a home.

use std::path::{Path, PathBuf};

use crate::confined;
use crate::process::pidfile::{self, PidFile};
use crate::process::{Identity, inspect};

use super::registry::Registry;

/// Where to look for one observer, and whose it must be.
#[derive(Debug, Clone)]
pub struct Target {
    pub home_path: PathBuf,
    pub pid_file: PathBuf,
    pub binary: PathBuf,
    /// The uid the observer runs as; None matches nothing (an unknown user's
    /// process is never ours).
    pub uid: Option<u32>,
}

impl Target {
    /// For requests that name only a home_path: what obhostd recorded, else the
    /// defaults, run by the owner of the home.
    pub fn for_home(home: &Path, registry: &Registry) -> Target {
        let owner = || confined::metadata(home).ok().map(|m| m.st_uid);
        match registry.get(home) {
            Some(r) => Target {
                uid: r.uid.or_else(owner),
                home_path: r.home_path,
                pid_file: r.pid_file,
                binary: r.binary,
            },
            None => Target {
                home_path: home.to_path_buf(),
                pid_file: home.join("run/observer.pid"),
                binary: home.join("bin/observer"),
                uid: owner(),
            },
        }
    }

    /// Whether `id` runs as this target's user (and is not obhostd or init).
    fn runs_as_user(&self, id: &Identity) -> bool {
        self.uid.is_some_and(|uid| id.runs_as(uid))
    }

    /// Whether `id` runs this target's binary.
    fn runs_binary(&self, id: &Identity) -> bool {
        let binary = confined::canonical(&self.binary).unwrap_or_else(|_| self.binary.clone());
        id.exe().is_some_and(|exe| exe == binary)
    }
}

/// What the pid file of a target says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Running(Identity),
    /// A pid file that names no live observer (its pid, if it had one).
    Stale(Option<i32>),
    NotRunning,
}

/// What obhostd recorded as the observer of `t`'s home, if it runs.
fn recorded(t: &Target, registry: &Registry) -> Option<Identity> {
    registry.get(&t.home_path).and_then(|r| r.identity)
}

/// Whether a live process is the observer of `t`: recorded by obhostd, or
/// running its binary; and running as its user.
pub fn belongs_to(id: &Identity, t: &Target, registry: &Registry) -> bool {
    is_observer(id, t, recorded(t, registry))
}

/// [`belongs_to`], given what obhostd recorded for the home.
fn is_observer(id: &Identity, t: &Target, recorded: Option<Identity>) -> bool {
    t.runs_as_user(id) && (recorded == Some(*id) || t.runs_binary(id))
}

/// The observer of `t`, if one runs. Reads /proc (a scan of every process when
/// the pid file names none): blocking, so async callers use [`find_async`].
pub fn find(t: &Target, registry: &Registry) -> Found {
    let recorded = recorded(t, registry);
    let found = find_with(t, recorded);
    tracing::debug!(
        home = %t.home_path.display(),
        pid_file = %t.pid_file.display(),
        recorded_pid = recorded.map(|id| id.pid),
        ?found,
        "looked for the observer"
    );
    found
}

/// [`find`] on the blocking pool, so the runtime's threads never wait on a
/// /proc scan.
pub async fn find_async(t: Target, registry: std::sync::Arc<Registry>) -> Found {
    tokio::task::spawn_blocking(move || find(&t, &registry))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// [`find`], given what obhostd recorded for the home (the registry's part),
/// so that the rules can be tested without a registry.
fn find_with(t: &Target, recorded: Option<Identity>) -> Found {
    if let Some(id) = recorded
        && id.is_alive()
        && t.runs_as_user(&id)
    {
        return Found::Running(id);
    }
    let from_file = match pidfile::inspect(&t.pid_file) {
        PidFile::Live(id) if is_observer(&id, t, recorded) => return Found::Running(id),
        PidFile::Live(id) => Found::Stale(Some(id.pid)),
        PidFile::Stale(pid) => Found::Stale(pid),
        PidFile::Missing => Found::NotRunning,
    };
    let home = confined::canonical(&t.home_path).unwrap_or_else(|_| t.home_path.clone());
    match inspect::find_by_exe_and_cwd(&t.binary, &home)
        .into_iter()
        .find(|id| t.runs_as_user(id))
    {
        Some(id) => Found::Running(id),
        None => from_file,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child process that runs `sleep` in `cwd`, killed and reaped on drop.
    struct Child(std::process::Child);

    impl Child {
        fn sleep_in(cwd: &Path) -> Child {
            Child(
                std::process::Command::new("sleep")
                    .arg("30")
                    .current_dir(cwd)
                    .spawn()
                    .unwrap(),
            )
        }

        fn identity(&self) -> Identity {
            let pid = self.0.id() as i32;
            // exec has happened once /proc/<pid>/exe is sleep.
            for _ in 0..200 {
                if std::fs::read_link(format!("/proc/{pid}/exe"))
                    .is_ok_and(|e| e.to_string_lossy().contains("sleep"))
                {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Identity::of(pid).unwrap()
        }
    }

    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn sleep_binary() -> PathBuf {
        ["/usr/bin/sleep", "/bin/sleep"]
            .iter()
            .find_map(|p| std::fs::canonicalize(p).ok())
            .expect("sleep(1)")
    }

    fn target(home: &Path, binary: PathBuf, uid: Option<u32>) -> Target {
        Target {
            home_path: home.to_path_buf(),
            pid_file: home.join("run/observer.pid"),
            binary,
            uid,
        }
    }

    fn me() -> u32 {
        nix::unistd::Uid::effective().as_raw()
    }

    #[test]
    fn table_of_who_counts_as_the_observer() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join("run")).unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let child = Child::sleep_in(elsewhere.path());
        let id = child.identity();
        let pid_file = home.path().join("run/observer.pid");
        pidfile::write(&pid_file, id.pid).unwrap();
        let other_binary = PathBuf::from("/nonexistent/observer");
        // (binary, uid, recorded) -> found
        let cases: Vec<(PathBuf, Option<u32>, Option<Identity>, Found)> = vec![
            // Runs the home's binary as the user: the observer.
            (sleep_binary(), Some(me()), None, Found::Running(id)),
            // Another user's process, even running the binary: stale.
            (
                sleep_binary(),
                Some(me() + 1),
                None,
                Found::Stale(Some(id.pid)),
            ),
            // Unknown user: nothing is ours.
            (sleep_binary(), None, None, Found::Stale(Some(id.pid))),
            // Another binary, not recorded: a pid file proves nothing.
            (
                other_binary.clone(),
                Some(me()),
                None,
                Found::Stale(Some(id.pid)),
            ),
            // Another binary, but obhostd recorded it: the observer.
            (
                other_binary.clone(),
                Some(me()),
                Some(id),
                Found::Running(id),
            ),
            // Recorded, but as another user now: not trusted.
            (
                other_binary,
                Some(me() + 1),
                Some(id),
                Found::Stale(Some(id.pid)),
            ),
        ];
        for (binary, uid, rec, want) in cases {
            let t = target(home.path(), binary.clone(), uid);
            assert_eq!(find_with(&t, rec), want, "{binary:?} {uid:?} {rec:?}");
        }
    }

    #[test]
    fn a_pid_file_naming_obhostd_itself_is_stale() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join("run")).unwrap();
        let me_pid = std::process::id() as i32;
        pidfile::write(&home.path().join("run/observer.pid"), me_pid).unwrap();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let myself = Identity::of(me_pid);
        let t = target(home.path(), exe, Some(me()));
        assert_eq!(find_with(&t, myself), Found::Stale(Some(me_pid)));
    }

    #[test]
    fn without_a_pid_file_the_binary_running_in_the_home_is_found() {
        let home = tempfile::tempdir().unwrap();
        let child = Child::sleep_in(home.path());
        let id = child.identity();
        let t = target(home.path(), sleep_binary(), Some(me()));
        assert_eq!(find_with(&t, None), Found::Running(id));
        let t = target(home.path(), sleep_binary(), Some(me() + 1));
        assert_eq!(find_with(&t, None), Found::NotRunning);
        drop(child);
        let t = target(home.path(), sleep_binary(), Some(me()));
        assert_eq!(find_with(&t, None), Found::NotRunning);
    }
}
