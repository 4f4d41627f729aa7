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
