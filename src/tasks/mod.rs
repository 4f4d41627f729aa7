//! Step kinds: one file each, each a [`StepTask`] the engine runs.
//!
//! This is where the engine's generic "kind + stored parameters" becomes a concrete
//! piece of work: [`StepParams`] is every kind's parameters, typed, and what
//! the store holds (as JSON: see `steps::store`), so each kind's parameter
//! struct is its storage format too.

use std::sync::Arc;

use crate::steps::{Secrets, StepKind, StepTask, TaskFactory};

mod deps;
mod params;
pub mod prepare;
mod process_steps;
mod rechecked;
pub mod start_agent_service;
pub mod start_observer;
pub mod stop_observer;
#[cfg(feature = "test-kinds")]
pub mod test_step;
pub mod wait_observer_active;

pub use deps::Deps;
pub use params::{DecodeError, StepParams};
pub use process_steps::stage;

/// Builds every step kind this daemon knows.
pub struct Tasks {
    deps: Arc<Deps>,
}

impl Tasks {
    pub fn new(deps: Arc<Deps>) -> Arc<Tasks> {
        Arc::new(Tasks { deps })
    }
}

impl Tasks {
    /// The task of a new step, from the parameters its request resolved to.
    pub fn task(&self, params: StepParams) -> Box<dyn StepTask> {
        params.task(&self.deps)
    }
}

/// Retries and restarts: the stored parameters, decoded once, judged again by
/// today's policy when the task runs.
impl TaskFactory for Tasks {
    fn build(
        &self,
        kind: StepKind,
        params: &serde_json::Value,
        _secrets: &Secrets,
    ) -> Result<Box<dyn StepTask>, String> {
        let params = StepParams::from_stored(kind, params).map_err(|e| e.to_string())?;
        Ok(params.stored_task(&self.deps))
    }
}
