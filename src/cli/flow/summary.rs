//! What the flow shows of its steps beyond the live lines: a failure,
//! explained once; Prepare's warnings, named; and the DAG as one JSON
//! document.
//!
//! The JSON here is obhostctl's own summary, not a proto message, so it
//! spells states as people and scripts read them everywhere in it:
//! `SUCCEEDED`, `FAILED`, `WARN`, never `STEP_STATE_SUCCEEDED` beside
//! `SUCCEEDED`. The protobuf JSON mapping stays where a proto message is
//! printed as such (`steps get -o json`, `steps list`, `steps watch`).

use serde_json::json;

use super::super::output;
use super::super::phrasing::in_cli_terms;
use super::ran::{Ran, STEPS};
use crate::api::convert;
use crate::proto::v1 as pb;

fn ms(t: &Option<pbjson_types::Timestamp>) -> serde_json::Value {
    t.as_ref()
        .and_then(convert::system_time)
        .map(|t| json!(humantime::format_rfc3339_millis(t).to_string()))
        .unwrap_or(serde_json::Value::Null)
}

/// A check's status without its enum prefix: PASS, WARN, FAIL, SKIPPED.
fn check_status(c: &pb::CheckResult) -> &'static str {
    c.status().as_str_name().trim_start_matches("CHECK_STATUS_")
}

/// One step in the summary's spelling: what an operator or a script reads
/// of it (its state as `SUCCEEDED`..., its times, its message, the checks
/// and the error), not every field of the proto.
pub(crate) fn step_json(s: &pb::Step) -> serde_json::Value {
    let checks: Vec<serde_json::Value> = s
        .checks
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "status": check_status(c),
                "observed": c.observed,
                "expected": c.expected,
                "hint": c.hint,
            })
        })
        .collect();
    json!({
        "id": s.id,
        "dagId": s.dag_id,
        "name": s.name,
        "status": output::state_name(s.state()),
        "attempt": s.attempt,
        "startTime": ms(&s.started_at),
        "endTime": ms(&s.finished_at),
        "message": s.message,
        "outputs": s.outputs,
        "checks": checks,
        "error": s.error.as_ref().map(|e| json!({
            "code": e.code,
            "message": e.message,
            "details": e.details,
            "logTail": e.log_tail,
        })),
    })
}

/// The DAG as OCP's task info shows it; a step not reached is PENDING.
pub(super) fn dag_json(dag: &str, ids: &[String], steps: &[Option<pb::Step>]) -> serde_json::Value {
    let last = ids.len() - 1;
    let tasks: Vec<serde_json::Value> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let (_, name, description) = STEPS[i];
            let mut task = match &steps[i] {
                Some(s) => step_json(s),
                None => json!({"id": id, "dagId": dag, "name": name, "status": "PENDING",
                               "startTime": null, "endTime": null, "message": ""}),
            };
            task["description"] = json!(description);
            task["operation"] = json!("EXECUTE");
            task["upstreams"] = json!(if i == 0 { vec![] } else { vec![&ids[i - 1]] });
            task["downstreams"] = json!(if i == last { vec![] } else { vec![&ids[i + 1]] });
            task
        })
        .collect();
    let ended_badly =
        |s: &pb::Step| output::is_terminal(s) && s.state() != pb::StepState::Succeeded;
    let overall = if steps.iter().all(|s| {
        s.as_ref()
            .is_some_and(|s| s.state() == pb::StepState::Succeeded)
    }) {
        "SUCCEEDED"
    } else if steps.iter().flatten().any(ended_badly) {
        "FAILED"
    } else {
        "RUNNING"
    };
    json!({
        "id": dag,
        "name": "Start OB server (host steps)",
        "status": overall,
        "operation": "EXECUTE",
        "startTime": ms(&steps.iter().flatten().next().and_then(|s| s.started_at)),
        "endTime": ms(&steps.iter().flatten().last().and_then(|s| s.finished_at)),
        "tasks": tasks,
    })
}

/// A step that did not succeed, on stderr, once: its code and message (the
/// live line showed only its state and code), the checks that failed with
/// their fixes and the log tail. `earlier`: it ended
/// before this run, which found it so and did not run it again.
pub(super) fn explain_failure(s: &pb::Step, earlier: bool) {
    let c = output::clean;
    let id = Some(s.id.as_str());
    let (code, message) = match &s.error {
        Some(e) => (e.code.as_str(), e.message.as_str()),
        None => (output::state_name(s.state()), s.message.as_str()),
    };
    eprintln!(
        "obhostctl: step '{}' ({}) {}: {}",
        c(&s.id),
        c(&s.name),
        c(code),
        c(&in_cli_terms(message, id))
    );
    for check in s
        .checks
        .iter()
        .filter(|k| k.status() == pb::CheckStatus::Fail)
    {
        eprintln!(
            "  failed check {}: {} (expected {})",
            c(&check.name),
            c(&check.observed),
            c(&check.expected)
        );
        if !check.hint.is_empty() {
            eprintln!("    fix: {}", c(&in_cli_terms(&check.hint, id)));
        }
    }
    if let Some(e) = s.error.as_ref().filter(|e| !e.log_tail.is_empty()) {
        eprintln!("  log tail:");
        for line in &e.log_tail {
            eprintln!("  | {}", c(line));
        }
    }
    if earlier {
        eprintln!(
            "  it was {} before this run (attempt {}): a re-run shows a step that ended badly, \
             and does not run it again",
            output::state_name(s.state()),
            s.attempt
        );
    }
}

/// Prepare's warnings, one line each under its result: "(5 warnings)" alone
/// does not say what to look at.
pub(super) fn warnings(s: &pb::Step) {
    let c = output::clean;
    for check in s
        .checks
        .iter()
        .filter(|k| k.status() == pb::CheckStatus::Warn)
    {
        let expected = if check.expected.is_empty() {
            String::new()
        } else {
            format!("; expected {}", c(&check.expected))
        };
        output::line(&format!(
            "      warning {}: {}{expected}",
            c(&check.name),
            c(&check.observed)
        ));
    }
}

impl Ran {
    /// The DAG in OCP's shape; a step that did not succeed is the
    /// document's `error` too, as for every failing command.
    pub fn dag_json(&self) -> serde_json::Value {
        let mut doc = dag_json(&self.dag, &self.ids, &self.steps);
        if let Some(bad) = self.ended_badly() {
            doc["error"] = crate::cli::output::json::step_error_json(bad)["error"].take();
        }
        doc
    }
}
