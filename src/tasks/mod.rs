//! Step kinds: one file each, each a [`StepTask`] the engine runs.
//!
//! This is where the engine's generic "kind + stored parameters" becomes a concrete
//! piece of work. Parameters are stored as JSON (see `steps::store`), so each kind's
//! parameter struct is its storage format too.

use std::sync::Arc;

use crate::steps::{Secrets, StepKind, StepTask, TaskFactory};

#[cfg(feature = "test-kinds")]
pub mod test_step;

/// Builds every step kind this daemon knows.
#[derive(Debug, Default)]
pub struct Tasks;

impl Tasks {
    pub fn new() -> Arc<Tasks> {
        Arc::new(Tasks)
    }
}

/// Decodes a kind's stored parameters, naming the kind when they do not fit (a
/// store written by another version).
#[cfg_attr(not(feature = "test-kinds"), allow(dead_code))]
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    kind: StepKind,
    params: &serde_json::Value,
) -> Result<T, String> {
    serde_json::from_value(params.clone())
        .map_err(|e| format!("stored parameters of a {kind:?} step do not decode: {e}"))
}

impl TaskFactory for Tasks {
    fn build(
        &self,
        kind: StepKind,
        params: &serde_json::Value,
        secrets: &Secrets,
    ) -> Result<Box<dyn StepTask>, String> {
        let _ = (params, secrets);
        match kind {
            StepKind::PrepareStartObserver
            | StepKind::StartObserverProcess
            | StepKind::WaitObserverActive
            | StepKind::StartAgentService
            | StepKind::StopObserverProcess => Err(format!(
                "step kind {kind:?} is not implemented by this version of obhostd"
            )),
            #[cfg(feature = "test-kinds")]
            StepKind::Test => Ok(Box::new(decode::<test_step::TestStep>(kind, params)?)),
            #[cfg(not(feature = "test-kinds"))]
            StepKind::Test => {
                Err("test steps exist only in builds with the test-kinds feature".into())
            }
        }
    }
}
