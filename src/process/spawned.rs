//! What a step spawned, until the step hands it over.
//!
//! A start that fails after spawning (the health check never passes, the pid
//! file never appears, the deadline or a CancelStep cuts it short) must not
//! leave its process behind: the next attempt would find it "already running",
//! or collide with it on its ports. [`Spawned`] stops (SIGKILL) what it holds
//! when it is dropped without [`Spawned::keep`], except while obhostd shuts
//! down: a restart of the daemon never kills what it started (the step is
//! resumed and finds the process again).

use std::sync::{Arc, Mutex};

use super::control;
use super::identity::Identity;
use super::tree::Launch;

pub struct Spawned {
    launcher: Identity,
    server: Option<Identity>,
    uid: u32,
    /// Every process the launch certainly made, as its census found them.
    tree: Option<Arc<Mutex<Launch>>>,
    shutting_down: Box<dyn Fn() -> bool + Send + Sync>,
}

impl Spawned {
    pub fn new(
        launcher: Identity,
        uid: u32,
        shutting_down: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Spawned {
        Spawned {
            launcher,
            server: None,
            uid,
            tree: None,
            shutting_down: Box::new(shutting_down),
        }
    }

    /// The user what was spawned runs as.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// The server process the launcher left running (daemonizing mode).
    pub fn server(&mut self, id: Identity) {
        self.server = Some(id);
    }

    /// The census of the launch: what it finds is stopped with the rest.
    pub fn track(&mut self, tree: Arc<Mutex<Launch>>) {
        self.tree = Some(tree);
    }

    /// The start succeeded: what was spawned now lives on its own.
    pub fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if (self.shutting_down)() {
            return;
        }
        let mut doomed: Vec<Identity> = self.server.into_iter().collect();
        doomed.push(self.launcher);
        // What the launch forked and has not been named the server: every
        // process its census saw in its tree, by identity. A process that
        // merely got one of their pids since is another process and is left
        // alone (kill_now checks the identity through a pidfd).
        if let Some(tree) = &self.tree {
            let tree = tree.lock().unwrap_or_else(|p| p.into_inner());
            doomed.extend(tree.members().filter(|m| m.runs_as(self.uid)));
        }
        doomed.sort_by_key(|i| i.pid);
        doomed.dedup();
        for id in doomed {
            match control::kill_now(&id) {
                Ok(()) => tracing::info!(pid = id.pid, "stopped what a failed start spawned"),
                Err(control::ControlError::NotThatProcess { .. }) => {}
                Err(e) => {
                    tracing::warn!(pid = id.pid, error = %e, "cannot stop what a failed start spawned")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Real `sleep` children, and how each ended: SIGKILL means Spawned
    //! stopped it; the SIGTERM the test sends last means nothing did before.
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Child, Command};

    fn sleeper() -> (Child, Identity) {
        let child = Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let id = Identity::of(child.id() as i32).expect("sleep runs");
        (child, id)
    }

    /// The signal `child` ended by, after a SIGTERM from the test (which
    /// only counts if nothing killed it first).
    fn ended_by(mut child: Child) -> Option<i32> {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        child.wait().expect("wait").signal()
    }

    fn me() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    #[test]
    fn a_failed_start_stops_its_launcher_and_server() {
        let (launcher, launcher_id) = sleeper();
        let (server, server_id) = sleeper();
        let mut spawned = Spawned::new(launcher_id, me(), || false);
        spawned.server(server_id);
        drop(spawned);
        assert_eq!(ended_by(launcher), Some(libc::SIGKILL), "the launcher");
        assert_eq!(ended_by(server), Some(libc::SIGKILL), "the server");
    }

    #[test]
    fn a_kept_start_is_left_running() {
        let (launcher, id) = sleeper();
        Spawned::new(id, me(), || false).keep();
        assert_eq!(ended_by(launcher), Some(libc::SIGTERM));
    }

    #[test]
    fn nothing_is_stopped_while_obhostd_shuts_down() {
        let (launcher, id) = sleeper();
        drop(Spawned::new(id, me(), || true));
        assert_eq!(ended_by(launcher), Some(libc::SIGTERM));
    }

    /// The pid now belongs to another process than the one spawned (same
    /// pid, another start time): it is left alone.
    #[test]
    fn a_process_that_only_shares_the_pid_is_left_alone() {
        let (other, id) = sleeper();
        let earlier = Identity {
            start_ticks: id.start_ticks - 1,
            ..id
        };
        drop(Spawned::new(earlier, me(), || false));
        assert_eq!(ended_by(other), Some(libc::SIGTERM));
    }
}
