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

/// Every `StepError.code` obhostd writes, in one enum, so a code is never a
/// typo'd string literal and the list a client may see is in one place. The
/// wire strings are part of the API (DESIGN.md): `as_str` must never change
/// for an existing variant.
pub mod codes {
    macro_rules! codes {
        ($($(#[$doc:meta])* $variant:ident = $wire:literal,)*) => {
            #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
            pub enum Code {
                $($(#[$doc])* $variant,)*
            }

            impl Code {
                /// Every code, for tests and docs.
                pub const ALL: &[Code] = &[$(Code::$variant,)*];

                /// The code as it goes on the wire and into the store.
                pub const fn as_str(self) -> &'static str {
                    match self {
                        $(Code::$variant => $wire,)*
                    }
                }
            }
        };
    }

    codes! {
        /// The step's deadline passed (the engine).
        DeadlineExceeded = "DEADLINE_EXCEEDED",
        /// CancelStep (the engine).
        Cancelled = "CANCELLED",
        /// RUNNING when obhostd stopped, and not safe to resume (the engine).
        Interrupted = "INTERRUPTED",
        /// A bug in obhostd (a panic), or a failure of the daemon itself.
        Internal = "INTERNAL",
        /// The host's policy, as it is now, refuses the step (a resumed step
        /// after the config was tightened).
        PermissionDenied = "PERMISSION_DENIED",
        /// Stored parameters that no longer make a step (a path that no
        /// longer resolves), found when a retry or resume judges them again.
        InvalidArgument = "INVALID_ARGUMENT",
        PortInUse = "PORT_IN_USE",
        BinaryNotFound = "BINARY_NOT_FOUND",
        DirNotWritable = "DIR_NOT_WRITABLE",
        DirWrongOwner = "DIR_WRONG_OWNER",
        InsufficientMemory = "INSUFFICIENT_MEMORY",
        InsufficientDisk = "INSUFFICIENT_DISK",
        AioInsufficient = "AIO_INSUFFICIENT",
        UlimitTooLow = "ULIMIT_TOO_LOW",
        SysctlOutOfRange = "SYSCTL_OUT_OF_RANGE",
        NetworkDeviceNotFound = "NETWORK_DEVICE_NOT_FOUND",
        CpuUnsupported = "CPU_UNSUPPORTED",
        ClockNotSynchronised = "CLOCK_NOT_SYNCHRONISED",
        CheckFailed = "CHECK_FAILED",
        UserNotFound = "USER_NOT_FOUND",
        SpawnFailed = "SPAWN_FAILED",
        ProcessExited = "PROCESS_EXITED",
        ProcessNotRunning = "PROCESS_NOT_RUNNING",
        PidfileNotRemovable = "PIDFILE_NOT_REMOVABLE",
        SignalFailed = "SIGNAL_FAILED",
        SystemdUnavailable = "SYSTEMD_UNAVAILABLE",
        ServiceStartFailed = "SERVICE_START_FAILED",
    }

    impl std::fmt::Display for Code {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.as_str())
        }
    }

    impl From<Code> for String {
        fn from(c: Code) -> String {
            c.as_str().to_string()
        }
    }

    impl PartialEq<Code> for String {
        fn eq(&self, c: &Code) -> bool {
            self == c.as_str()
        }
    }

    // The engine's names, kept so its code reads as before.
    pub const DEADLINE_EXCEEDED: &str = Code::DeadlineExceeded.as_str();
    pub const CANCELLED: &str = Code::Cancelled.as_str();
    pub const INTERRUPTED: &str = Code::Interrupted.as_str();
    pub const INTERNAL: &str = Code::Internal.as_str();
    pub const PERMISSION_DENIED: &str = Code::PermissionDenied.as_str();

    #[cfg(test)]
    mod tests {
        use super::Code;

        #[test]
        fn wire_strings_are_unique_and_screaming_snake_case() {
            let mut seen = std::collections::BTreeSet::new();
            for c in Code::ALL {
                let s = c.as_str();
                assert!(seen.insert(s), "{s} twice");
                assert!(
                    s.chars().all(|ch| ch.is_ascii_uppercase() || ch == '_'),
                    "{s}"
                );
            }
            assert_eq!(Code::PortInUse.as_str(), "PORT_IN_USE");
            assert_eq!(String::from(Code::Internal), "INTERNAL");
        }
    }
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

/// Bounds on what a record may hold. A task's output and a request's values are
/// outside input (an observer's log, a path a caller chose); without a cap one
/// record could grow the state file, every ListSteps page and every watcher's
/// buffer without limit. The engine applies [`cap_record`] in its one commit
/// path, so nothing uncapped is ever stored or sent.
pub mod caps {
    /// `message`, `error.message`: one line.
    pub const MESSAGE: usize = 1024;
    /// Each `error.details` value, and how many details are kept.
    pub const DETAIL_VALUE: usize = 1024;
    pub const DETAILS: usize = 32;
    /// `error.log_tail`: the last lines, each capped, and their total.
    pub const LOG_LINES: usize = 40;
    pub const LOG_LINE: usize = 512;
    pub const LOG_TOTAL: usize = 8 * 1024;
    /// Each CheckResult's observed, expected and hint, and how many checks are kept.
    pub const CHECK_TEXT: usize = 1024;
    pub const CHECKS: usize = 64;
    /// Each `outputs` value, and how many outputs are kept.
    pub const OUTPUT_VALUE: usize = 1024;
    pub const OUTPUTS: usize = 64;
    /// Keys of details and outputs, error codes and check names.
    pub const KEY: usize = 128;
}

/// `s` cut to at most `max` bytes on a char boundary, marked when cut so a reader
/// knows there was more ("…[truncated 12345 bytes]"). The mark counts towards
/// `max` where `max` leaves room for it.
pub fn truncated(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return s.into();
    }
    let mark_len = "…[truncated  bytes]".len() + s.len().to_string().len();
    let keep = floor_char_boundary(s, max.saturating_sub(mark_len));
    format!("{}…[truncated {} bytes]", &s[..keep], s.len() - keep).into()
}

fn floor_char_boundary(s: &str, max: usize) -> usize {
    if max >= s.len() {
        return s.len();
    }
    (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

/// One line of at most `max` bytes: line breaks become spaces.
fn one_line(s: &mut String, max: usize) {
    if s.contains(['\n', '\r']) {
        *s = s.replace(['\n', '\r'], " ");
    }
    cap_in_place(s, max);
}

fn cap_in_place(s: &mut String, max: usize) {
    if s.len() > max {
        *s = truncated(s, max).into_owned();
    }
}

/// Caps a map's size and each key and value; the entries dropped are named in a
/// marker entry so the cut is visible.
fn cap_map(m: &mut BTreeMap<String, String>, entries: usize, value: usize) {
    if m.len() > entries {
        let dropped = m.len() - (entries - 1);
        let keep: BTreeMap<String, String> =
            std::mem::take(m).into_iter().take(entries - 1).collect();
        *m = keep;
        m.insert("…truncated".into(), format!("{dropped} more entries"));
    }
    if m.iter()
        .any(|(k, v)| k.len() > caps::KEY || v.len() > value)
    {
        *m = std::mem::take(m)
            .into_iter()
            .map(|(mut k, mut v)| {
                cap_in_place(&mut k, caps::KEY);
                cap_in_place(&mut v, value);
                (k, v)
            })
            .collect();
    }
}

/// The last lines of a log, within the line, count and total caps.
fn cap_log_tail(lines: &mut Vec<String>) {
    if lines.len() > caps::LOG_LINES {
        lines.drain(..lines.len() - caps::LOG_LINES);
    }
    for line in lines.iter_mut() {
        one_line(line, caps::LOG_LINE);
    }
    let mut total: usize = lines.iter().map(String::len).sum();
    while total > caps::LOG_TOTAL && !lines.is_empty() {
        total -= lines.remove(0).len();
    }
}

/// Applies every cap in [`caps`] to what a task or a request put into a record.
/// The spec (id, name, parameters) is bounded by request validation instead.
pub fn cap_record(r: &mut StepRecord) {
    one_line(&mut r.message, caps::MESSAGE);
    cap_map(&mut r.outputs, caps::OUTPUTS, caps::OUTPUT_VALUE);
    if r.checks.len() > caps::CHECKS {
        r.checks.truncate(caps::CHECKS);
    }
    for c in &mut r.checks {
        one_line(&mut c.name, caps::KEY);
        cap_in_place(&mut c.observed, caps::CHECK_TEXT);
        cap_in_place(&mut c.expected, caps::CHECK_TEXT);
        cap_in_place(&mut c.hint, caps::CHECK_TEXT);
    }
    if let Some(e) = &mut r.error {
        one_line(&mut e.code, caps::KEY);
        one_line(&mut e.message, caps::MESSAGE);
        cap_map(&mut e.details, caps::DETAILS, caps::DETAIL_VALUE);
        cap_log_tail(&mut e.log_tail);
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

/// A bare record of a test step, for the unit tests that need one (engine,
/// reporter, metrics): no times beyond "now", no error, no outputs.
#[cfg(test)]
impl StepRecord {
    pub(crate) fn for_test(id: &str, state: StepState, attempt: u32, revision: u64) -> StepRecord {
        let now = SystemTime::now();
        StepRecord {
            spec: StepSpec {
                id: id.into(),
                dag_id: String::new(),
                kind: StepKind::Test,
                name: "t".into(),
                timeout: Duration::from_secs(1),
                params: serde_json::Value::Null,
            },
            state,
            attempt,
            revision,
            created_at: now,
            started_at: None,
            finished_at: None,
            deadline: now,
            message: String::new(),
            error: None,
            outputs: BTreeMap::new(),
            checks: Vec::new(),
        }
    }
}

/// Which steps a list or watch wants. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub dag_id: String,
    pub step_ids: Vec<String>,
    pub state: Option<StepState>,
}

impl Filter {
    pub(crate) fn matches(&self, r: &StepRecord) -> bool {
        (self.dag_id.is_empty() || r.spec.dag_id == self.dag_id)
            && (self.step_ids.is_empty() || self.step_ids.iter().any(|id| id == r.id()))
            && self.state.is_none_or(|s| s == r.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> StepRecord {
        StepRecord::for_test("s", StepState::Failed, 1, 1)
    }

    #[test]
    fn truncation_keeps_char_boundaries_and_says_how_much_was_cut() {
        assert_eq!(truncated("short", 10), "short");
        let s = "é".repeat(1000); // 2000 bytes
        let t = truncated(&s, 101);
        assert!(t.len() <= 101, "{}", t.len());
        assert!(t.starts_with("éé"));
        let cut = s.len() - t.split('…').next().unwrap().len();
        assert!(t.ends_with(&format!("…[truncated {cut} bytes]")), "{t}");
        // A cap smaller than the mark still yields something valid.
        assert!(truncated(&s, 3).is_char_boundary(0));
    }

    #[test]
    fn records_are_capped_before_they_are_stored() {
        let mut r = record();
        r.message = format!("line one\nline two {}", "m".repeat(100_000));
        r.outputs = (0..100)
            .map(|i| (format!("k{i:03}"), "v".repeat(10_000)))
            .collect();
        r.outputs.insert("k".repeat(1000), "x".into());
        r.checks = (0..200)
            .map(|i| CheckResult {
                name: format!("c{i}"),
                status: CheckStatus::Fail,
                observed: "o".repeat(5000),
                expected: "e".repeat(5000),
                hint: "h".repeat(5000),
            })
            .collect();
        let mut e = StepError::new("CODE", "x\n".repeat(50_000));
        e.details = (0..100)
            .map(|i| (format!("d{i:03}"), "d".repeat(9999)))
            .collect();
        e.log_tail = (0..1000)
            .map(|i| format!("{i:04} {}", "l".repeat(2000)))
            .collect();
        r.error = Some(e);
        cap_record(&mut r);

        assert!(r.message.len() <= caps::MESSAGE && !r.message.contains('\n'));
        assert!(r.message.starts_with("line one line two"), "{}", r.message);
        assert!(r.message.contains("[truncated"));
        assert_eq!(r.outputs.len(), caps::OUTPUTS);
        assert!(
            r.outputs
                .iter()
                .all(|(k, v)| k.len() <= caps::KEY && v.len() <= caps::OUTPUT_VALUE)
        );
        assert_eq!(r.outputs["…truncated"], "38 more entries");
        assert_eq!(r.checks.len(), caps::CHECKS);
        assert!(r.checks.iter().all(|c| c.observed.len() <= caps::CHECK_TEXT
            && c.expected.len() <= caps::CHECK_TEXT
            && c.hint.len() <= caps::CHECK_TEXT));
        let e = r.error.unwrap();
        assert!(e.message.len() <= caps::MESSAGE && !e.message.contains('\n'));
        assert_eq!(e.details.len(), caps::DETAILS);
        assert!(e.details.values().all(|v| v.len() <= caps::DETAIL_VALUE));
        assert!(e.log_tail.len() <= caps::LOG_LINES);
        assert!(e.log_tail.iter().all(|l| l.len() <= caps::LOG_LINE));
        assert!(e.log_tail.iter().map(String::len).sum::<usize>() <= caps::LOG_TOTAL);
        // It is the tail: the newest line is kept.
        assert!(
            e.log_tail.last().unwrap().starts_with("0999 "),
            "{:?}",
            e.log_tail.last()
        );
        let stored = serde_json::to_vec(&r.outputs).unwrap().len();
        assert!(stored < 80 * 1024, "{stored}");
    }

    #[test]
    fn small_records_are_left_alone() {
        let mut r = record();
        r.message = "running".into();
        r.outputs.insert("pid".into(), "42".into());
        let mut e = StepError::new("PORT_IN_USE", "port 2881 is in use");
        e.log_tail = vec!["a".into(), "b".into()];
        r.error = Some(e);
        let before = r.clone();
        cap_record(&mut r);
        assert_eq!(r, before);
    }

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
