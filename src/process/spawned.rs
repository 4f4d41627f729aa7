//! What a step spawned, until the step hands it over.
//!
//! A start that fails after spawning (the health check never passes, the pid
//! file never appears, the deadline or a CancelStep cuts it short) must not
//! leave its process behind: the next attempt would find it "already running",
//! or collide with it on its ports. [`Spawned`] stops (SIGKILL) what it holds
//! when it is dropped without [`Spawned::keep`], except while obhostd shuts
//! down: a restart of the daemon never kills what it started (the step is
//! resumed and finds the process again).

use super::control;
use super::identity::{self, Identity};

pub struct Spawned {
    launcher: Identity,
    server: Option<Identity>,
    uid: u32,
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
        // A daemonizing launcher leads its own session (setsid); what it forked
        // and has not been identified yet is still in it.
        doomed.extend(session_members(self.launcher.pid, self.uid));
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

/// Live processes of session `sid` that run as `uid`.
fn session_members(sid: i32, uid: u32) -> Vec<Identity> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| identity::stat(*pid).is_some_and(|s| s.session == sid))
        .filter_map(Identity::of)
        .filter(|id| id.runs_as(uid))
        .collect()
}
