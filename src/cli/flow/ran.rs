//! What a run of `start-observer` is made of and came to: the four steps in
//! their order, where the flow stood when Ctrl-C came, and the outcome the
//! command prints and exits by. The flow's parts (requests, summary, resume)
//! read these; only the flow itself makes them.

use std::process::ExitCode;
use std::time::Instant;

use crate::proto::v1 as pb;

/// The four steps: id suffix, OCP task name, description.
pub const STEPS: [(&str, &str, &str); 4] = [
    (
        "prepare",
        "Prepare start observer",
        "Pre-start checks on the host",
    ),
    (
        "start",
        "Start observer process",
        "Start the observer process",
    ),
    (
        "wait",
        "Wait observer active",
        "Wait until the observer answers SQL",
    ),
    (
        "agent",
        "Start ocp agent service",
        "Start the OCP agent and wait for its health check",
    ),
];

/// Where the flow stands, for what Ctrl-C says.
#[derive(Clone, Copy)]
pub(super) enum At {
    /// The step's request is on its way: it may or may not exist yet.
    Sending(usize),
    /// The step exists and is being followed.
    Following(usize),
}

/// What a run of the flow came to.
pub struct Ran {
    pub(super) dag: String,
    pub(super) ids: Vec<String>,
    /// Each step as it ended; `None`: not reached, or being followed when
    /// Ctrl-C came.
    pub(super) steps: Vec<Option<pb::Step>>,
    /// Where Ctrl-C came.
    pub(super) interrupted: Option<At>,
    pub(super) began: Instant,
}

impl Ran {
    pub fn succeeded(&self) -> bool {
        self.steps.iter().all(|s| {
            s.as_ref()
                .is_some_and(|s| s.state() == pb::StepState::Succeeded)
        })
    }

    /// The step that stopped the flow by not succeeding.
    pub(super) fn ended_badly(&self) -> Option<&pb::Step> {
        self.steps
            .iter()
            .flatten()
            .find(|s| s.state() != pb::StepState::Succeeded)
    }

    pub fn interrupted(&self) -> bool {
        self.interrupted.is_some()
    }

    pub fn exit_code(&self) -> ExitCode {
        if self.interrupted() {
            ExitCode::from(130)
        } else if self.succeeded() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    }
}
