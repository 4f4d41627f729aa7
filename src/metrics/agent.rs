//! `obhost_agent_service_up`: whether the OCP agent that StartAgentService
//! last started is up now. It is judged the way the step judged it: by the
//! step's health check when it had one (a loopback connect or GET, bounded),
//! else by the process it started still being that process (pid and start
//! time, so a reused pid does not count). A systemd unit without a health
//! check is not judged at all: the metric is absent rather than a guess.

use std::time::Duration;

use crate::probe::health::{self, Health};
use crate::process::Identity;
use crate::steps::{StepKind, StepRecord, StepState};
use crate::tasks::StepParams;
use crate::tasks::start_agent_service::AGENT_START_TICKS;

/// A health check at scrape time waits at most this long.
const CHECK: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Started {
    pub revision: u64,
    health: Option<Health>,
    process: Option<(i32, u64)>,
}

impl Started {
    pub fn from_record(r: &StepRecord) -> Option<Started> {
        if r.spec.kind != StepKind::StartAgentService || r.state != StepState::Succeeded {
            return None;
        }
        // Decoded as a retry would decode it: one reading of stored parameters.
        let StepParams::StartAgentService(params) =
            StepParams::from_stored(r.spec.kind, &r.spec.params).ok()?
        else {
            return None;
        };
        let pid = r.outputs.get("pid").and_then(|p| p.parse().ok());
        let ticks = r
            .outputs
            .get(AGENT_START_TICKS)
            .and_then(|t| t.parse().ok());
        Some(Started {
            revision: r.revision,
            health: params.health,
            process: pid.zip(ticks),
        })
    }

    pub fn judged_by(&self) -> &'static str {
        if self.health.is_some() {
            "health_check"
        } else {
            "process"
        }
    }

    /// Up (1) or down (0), or None when nothing can tell. Blocking: call it
    /// from a blocking thread (the scrape's) with a runtime to run the check on.
    pub fn up(&self, runtime: &tokio::runtime::Handle) -> Option<bool> {
        if let Some(h) = &self.health {
            let check = tokio::time::timeout(CHECK, health::check(h));
            return Some(matches!(runtime.block_on(check), Ok(Ok(()))));
        }
        let (pid, ticks) = self.process?;
        Some(Identity::of(pid).is_some_and(|id| id.start_ticks == ticks))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A live process under the recorded pid is the agent only if it started
    /// when the agent did: a reused pid is down.
    #[test]
    fn a_reused_pid_is_not_the_agent() {
        let me = Identity::of(std::process::id() as i32).unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let started = |ticks| Started {
            revision: 1,
            health: None,
            process: Some((me.pid, ticks)),
        };
        assert_eq!(started(me.start_ticks).up(runtime.handle()), Some(true));
        assert_eq!(
            started(me.start_ticks + 1).up(runtime.handle()),
            Some(false)
        );
        let unjudged = Started {
            revision: 1,
            health: None,
            process: None,
        };
        assert_eq!(unjudged.up(runtime.handle()), None);
    }
}
