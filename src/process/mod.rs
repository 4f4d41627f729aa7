//! Process handling, all of it: spawn as a user, identify, signal, reap, inspect.
//! Every step kind that touches a process goes through here, so the rules below
//! hold everywhere:
//!
//! - A process is known by its [`Identity`] (pid, start time, boot id), never by
//!   a bare pid; a signal only goes to a process whose identity matches.
//! - Spawned processes lead their own session and outlive obhostd.
//! - obhostd is a subreaper and reaps every child in one place ([`Reaper`]).

pub mod control;
pub mod exit;
pub mod exits;
pub mod identity;
pub mod inspect;
pub mod launch;
pub mod oom;
pub mod pacer;
pub mod pidfile;
pub mod reaper;
pub mod sockdiag;
pub mod spawn;
pub mod spawned;
pub mod systemd;
pub mod tree;

pub use control::{ControlError, Handle};
pub use exit::Exit;
pub use identity::Identity;
pub use reaper::Reaper;
pub use spawn::{Limits, RunAs, SpawnError, SpawnSpec, spawn};
pub use spawned::Spawned;
