//! The step record and its vocabulary, as the engine and the store see them.
//!
//! These are domain types, not wire types: `api::convert` maps them to and from
//! `obhost.v1`. They are serialized (JSON) into the store, so renaming a field or a
//! variant is a storage migration.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StepKind {
    PrepareStartObserver,
    StartObserverProcess,
    WaitObserverActive,
    StartAgentService,
    StopObserverProcess,
    /// Only ever created through the test-only gRPC service (feature `test-kinds`).
    /// It stays in the enum in every build so that a store written by a test build
    /// still loads; a release build fails such a step as INTERRUPTED on restart.
    Test,
}

impl StepKind {
    /// The display name OCP uses for the task node, when the caller gives none.
    pub fn default_name(self) -> &'static str {
        match self {
            StepKind::PrepareStartObserver => "Prepare start observer",
            StepKind::StartObserverProcess => "Start observer process",
            StepKind::WaitObserverActive => "Wait observer active",
            StepKind::StartAgentService => "Start ocp agent service",
            StepKind::StopObserverProcess => "Stop observer process",
            StepKind::Test => "Test step",
        }
    }

    /// Every step has a deadline; these apply when the request gives none.
    pub fn default_timeout(self) -> Duration {
        match self {
            StepKind::PrepareStartObserver => Duration::from_secs(60),
            StepKind::StartObserverProcess => Duration::from_secs(120),
            StepKind::WaitObserverActive => Duration::from_secs(600),
            StepKind::StartAgentService => Duration::from_secs(120),
            StepKind::StopObserverProcess => Duration::from_secs(120),
            StepKind::Test => Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StepState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
}

impl StepState {
    pub fn is_terminal(self) -> bool {
        match self {
            StepState::Pending | StepState::Running => false,
            StepState::Succeeded
            | StepState::Failed
            | StepState::Cancelled
            | StepState::TimedOut => true,
        }
    }

    /// RetryStep runs a step again only after it ended without success.
    pub fn is_retryable(self) -> bool {
        match self {
            StepState::Failed | StepState::Cancelled | StepState::TimedOut => true,
            StepState::Pending | StepState::Running | StepState::Succeeded => false,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Pending => "PENDING",
            StepState::Running => "RUNNING",
            StepState::Succeeded => "SUCCEEDED",
            StepState::Failed => "FAILED",
            StepState::Cancelled => "CANCELLED",
            StepState::TimedOut => "TIMED_OUT",
        }
    }
}

impl fmt::Display for StepState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Stable error codes the engine itself produces; step kinds add their own
/// (PORT_IN_USE, PROCESS_EXITED, ...) as plain strings.
pub mod codes {
    pub const DEADLINE_EXCEEDED: &str = "DEADLINE_EXCEEDED";
    pub const CANCELLED: &str = "CANCELLED";
    pub const INTERRUPTED: &str = "INTERRUPTED";
    pub const INTERNAL: &str = "INTERNAL";
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StepError {
    pub code: String,
    pub message: String,
    #[serde(default)]
    pub details: BTreeMap<String, String>,
    #[serde(default)]
    pub log_tail: Vec<String>,
}

impl StepError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        StepError {
            code: code.into(),
            message: message.into(),
            ..StepError::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CheckStatus {
    Pass,
    Warn,
    Fail,
    Skipped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    pub name: String,
    pub status: CheckStatus,
    pub observed: String,
    pub expected: String,
    pub hint: String,
}

/// What a caller asks for. Two requests with the same `id` are "the same request"
/// when everything else here is equal; that is what idempotency compares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepSpec {
    pub id: String,
    pub dag_id: String,
    pub kind: StepKind,
    pub name: String,
    pub timeout: Duration,
    /// The kind's parameters, without secrets. Stored so that a retry or a restart
    /// can rebuild the task.
    pub params: serde_json::Value,
}

/// The durable record of one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub spec: StepSpec,
    pub state: StepState,
    pub attempt: u32,
    pub revision: u64,
    pub created_at: SystemTime,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
    /// Wall-clock, so that it survives a restart of the daemon unchanged.
    pub deadline: SystemTime,
    pub message: String,
    pub error: Option<StepError>,
    #[serde(default)]
    pub outputs: BTreeMap<String, String>,
    #[serde(default)]
    pub checks: Vec<CheckResult>,
}

impl StepRecord {
    pub fn id(&self) -> &str {
        &self.spec.id
    }
}

/// Values a step needs but that must never reach the store, a log or a record (a
/// MySQL password). Held in the daemon's memory only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets(BTreeMap<String, String>);

impl Secrets {
    pub fn insert(&mut self, key: &str, value: String) {
        if !value.is_empty() {
            self.0.insert(key.to_string(), value);
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.0.keys().map(|k| format!("{k}=<redacted>")))
            .finish()
    }
}

/// Validates a step or DAG id: 1-128 of `[A-Za-z0-9._:-]` (the contract), and not
/// "." or "..", so that an id can never be read as a path.
pub fn validate_id(field: &str, id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err(format!(
            "{field} is empty; give the orchestrator's task id, e.g. \"133851\""
        ));
    }
    if id.len() > 128 {
        return Err(format!(
            "{field} is {} characters long; at most 128 are allowed",
            id.chars().count()
        ));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(format!(
            "{field} '{}' contains {bad:?}; only letters, digits and . _ : - are allowed",
            id.escape_debug()
        ));
    }
    if id == "." || id == ".." {
        return Err(format!(
            "{field} '{id}' could be read as a path; use the orchestrator's task id"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_contract() {
        assert!(validate_id("step_id", "133851").is_ok());
        assert!(validate_id("step_id", "dag-1:prepare.v2_x").is_ok());
        assert!(validate_id("step_id", &"a".repeat(128)).is_ok());
        for bad in ["", "../x", "a b", "x/y", "..", "é", "a\nb"] {
            assert!(validate_id("step_id", bad).is_err(), "{bad:?} accepted");
        }
        let long = validate_id("step_id", &"a".repeat(129)).unwrap_err();
        assert!(long.contains("129"), "{long}");
    }

    #[test]
    fn secrets_never_print() {
        let mut s = Secrets::default();
        s.insert("password", "hunter2".into());
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn terminal_and_retryable_states() {
        assert!(!StepState::Running.is_terminal());
        assert!(StepState::TimedOut.is_retryable());
        assert!(!StepState::Succeeded.is_retryable());
    }
}
