//! What the step kinds need from the daemon, handed to each when it is
//! built: the observer registry, the host's policy, `[agent_service]`, and
//! systemd when it is PID 1 (each launch's scope).

use std::path::Path;
use std::sync::Arc;

use crate::observer::Registry;
use crate::policy::Policy;

/// What the step kinds need from the daemon.
pub struct Deps {
    pub registry: Arc<Registry>,
    pub policy: Policy,
    /// `[agent_service]`: which units StartAgentService may start.
    pub agent: crate::config::AgentServiceConfig,
    /// systemd, when it is PID 1: each launched observer and agent command
    /// gets a scope of its own, and agent units are started over D-Bus.
    pub systemd: Option<crate::process::systemd::Systemd>,
}

impl Deps {
    /// The scope a launch from `home` is born in (`kind`: `observer`,
    /// `agent`), when systemd is PID 1.
    pub(crate) fn scope(
        &self,
        kind: &str,
        home: &Path,
        what: &str,
        step_id: &str,
    ) -> Option<crate::process::spawn::Scope> {
        let systemd = self.systemd.clone()?;
        Some(crate::process::spawn::Scope {
            systemd,
            unit: crate::process::systemd::scope_name(&format!("obhost-{kind}"), home),
            description: format!("{what} of {} (obhost step {step_id})", home.display()),
        })
    }
}
