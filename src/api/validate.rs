//! Checks on what callers send, before anything reaches the engine. Every error
//! names the field, quotes the value and says what would be accepted: a caller
//! fault is INVALID_ARGUMENT with a message a person can act on.

use std::time::Duration;

use tonic::Status;

use crate::proto::v1 as pb;
use crate::steps::model::validate_id;
use crate::steps::{StepKind, StepSpec};

/// No step may be given more than a day: a deadline is a promise the orchestrator
/// can plan around, and a typo of "600h" should not park a step for weeks.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// TailObserverLog's `lines`: 0 (unset) is the default; more than the
/// limit is taken as the limit, as ListSteps takes its page_size.
pub fn tail_lines(lines: u32) -> usize {
    use crate::observer::log::{DEFAULT_LINES, MAX_LINES};
    match usize::try_from(lines).unwrap_or(MAX_LINES) {
        0 => DEFAULT_LINES,
        n => n.min(MAX_LINES),
    }
}

pub fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message.into())
}

/// Turns a request's StepMeta into the engine's spec, its parameters still
/// empty: meta is checked first (a bad step_id is reported before anything
/// else), then the kind's parameters are resolved into it (see
/// [`super::step_requests`]).
pub fn step_spec(meta: Option<&pb::StepMeta>, kind: StepKind) -> Result<StepSpec, Status> {
    let meta = meta.ok_or_else(|| {
        invalid(
            "meta is missing; every step request needs meta.step_id (the orchestrator's task id)",
        )
    })?;
    validate_id("meta.step_id", &meta.step_id).map_err(invalid)?;
    if !meta.dag_id.is_empty() {
        validate_id("meta.dag_id", &meta.dag_id).map_err(invalid)?;
    }
    if meta.name.chars().count() > 256 || meta.name.contains(['\n', '\r']) {
        return Err(invalid(
            "meta.name must be one line of at most 256 characters",
        ));
    }
    let timeout = match &meta.timeout {
        None => kind.default_timeout(),
        Some(d) => {
            let t = Duration::try_from(*d).map_err(|_| {
                invalid(format!(
                    "meta.timeout {}s{}ns is negative or malformed; give a positive duration, e.g. 120s",
                    d.seconds, d.nanos
                ))
            })?;
            if t.is_zero() {
                kind.default_timeout()
            } else if t > MAX_TIMEOUT {
                return Err(invalid(format!(
                    "meta.timeout {} is longer than the limit of 24h; give a shorter timeout",
                    humantime::format_duration(t)
                )));
            } else {
                t
            }
        }
    };
    let name = if meta.name.is_empty() {
        kind.default_name().to_string()
    } else {
        meta.name.clone()
    };
    Ok(StepSpec {
        id: meta.step_id.clone(),
        dag_id: meta.dag_id.clone(),
        kind,
        name,
        timeout,
        params: serde_json::Value::Null,
    })
}

/// GetStep, CancelStep and RetryStep take a bare id.
pub fn step_id(id: &str) -> Result<(), Status> {
    validate_id("step_id", id).map_err(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: &str) -> pb::StepMeta {
        pb::StepMeta {
            step_id: id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_fill_name_and_timeout() {
        let s = step_spec(Some(&meta("1")), StepKind::WaitObserverActive).unwrap();
        assert_eq!(s.name, "Wait observer active");
        assert_eq!(s.timeout, Duration::from_secs(600));
    }

    #[test]
    fn bad_meta_is_rejected_with_the_field_named() {
        let e = step_spec(None, StepKind::Test).unwrap_err();
        assert!(e.message().contains("meta"), "{}", e.message());
        let mut m = meta("1");
        m.timeout = Some(Duration::from_secs(25 * 3600).into());
        let e = step_spec(Some(&m), StepKind::Test).unwrap_err();
        assert!(e.message().contains("meta.timeout"), "{}", e.message());
        m.timeout = Some(pbjson_types::Duration {
            seconds: -1,
            nanos: 0,
        });
        assert!(step_spec(Some(&m), StepKind::Test).is_err());
    }
}
