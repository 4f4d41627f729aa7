//! One table from internal errors to gRPC status codes. Caller faults and daemon
//! faults stay apart: a store failure is INTERNAL with the chain in the log and a
//! short message on the wire.

use tonic::Status;
use tracing::error;

use crate::steps::EngineError;
use crate::steps::store::StoreError;

pub fn from_engine(e: EngineError) -> Status {
    match e {
        EngineError::NotFound(_) => Status::not_found(e.to_string()),
        EngineError::Conflict { .. } => Status::already_exists(e.to_string()),
        EngineError::NotRetryable { .. } => Status::failed_precondition(e.to_string()),
        EngineError::InvalidParams(_) => Status::invalid_argument(e.to_string()),
        EngineError::TooManyActive { .. } | EngineError::TooManyWatchers { .. } => {
            Status::resource_exhausted(e.to_string())
        }
        // A full disk or a failed write is the daemon's condition, not a bug:
        // the caller may retry once it has healed (health says when).
        EngineError::Store(source @ StoreError::NoSpace { .. }) => {
            Status::resource_exhausted(source.to_string())
        }
        EngineError::Store(source) if source.is_write_failure() => {
            Status::unavailable(source.to_string())
        }
        EngineError::Store(source @ StoreError::Internal { .. }) => {
            error!(error = %source, "internal failure around the state store");
            Status::internal(source.to_string())
        }
        EngineError::Store(source) => {
            error!(error = ?anyhow::Error::from(source), "state store failure");
            Status::internal(
                "obhostd could not write its state store; the step was not changed. See the daemon's log (journalctl -u obhostd)",
            )
        }
    }
}

pub fn from_spec(e: crate::policy::SpecError) -> Status {
    match e {
        crate::policy::SpecError::Invalid(m) => Status::invalid_argument(m),
        crate::policy::SpecError::Denied(m) => Status::permission_denied(m),
    }
}

/// TailObserverLog: a missing home or log is NOT_FOUND, a link or a stranger's
/// file in the way PERMISSION_DENIED (the caller's to fix: the message says
/// which file), a failed read the daemon's fault.
pub fn from_log(e: crate::observer::log::LogError) -> Status {
    use crate::observer::log::LogError;
    match e {
        LogError::NoHome(_) | LogError::NoLog(_) => Status::not_found(e.to_string()),
        LogError::NotADir(_) => Status::invalid_argument(e.to_string()),
        LogError::Refused { .. } => Status::permission_denied(e.to_string()),
        LogError::Io { .. } => {
            error!(error = ?anyhow::Error::from(e), "reading an observer's log failed");
            Status::internal(
                "obhostd could not read the observer's log; see the daemon's log (journalctl -u obhostd)",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::SpecError;
    use std::path::PathBuf;
    use tonic::Code;

    /// Caller faults are the caller's codes; a condition the daemon recovers
    /// from by itself (a full disk, a failed write) says "retry", not "bug".
    #[test]
    fn each_engine_error_has_its_code() {
        let path = PathBuf::from("/var/lib/obhostd/state.redb");
        let cases = [
            (EngineError::NotFound("s".into()), Code::NotFound),
            (
                EngineError::Conflict {
                    id: "s".into(),
                    differs: "params.home_path".into(),
                },
                Code::AlreadyExists,
            ),
            (
                EngineError::NotRetryable {
                    id: "s".into(),
                    state: crate::steps::StepState::Running,
                },
                Code::FailedPrecondition,
            ),
            (
                EngineError::InvalidParams("bad".into()),
                Code::InvalidArgument,
            ),
            (
                EngineError::TooManyActive {
                    active: 3,
                    limit: 3,
                },
                Code::ResourceExhausted,
            ),
            (
                EngineError::TooManyWatchers { limit: 1 },
                Code::ResourceExhausted,
            ),
            (
                EngineError::Store(StoreError::NoSpace {
                    path: path.clone(),
                    cause: "ENOSPC".into(),
                }),
                Code::ResourceExhausted,
            ),
            (
                EngineError::Store(StoreError::Write {
                    path: path.clone(),
                    cause: "EIO".into(),
                }),
                Code::Unavailable,
            ),
            (
                EngineError::Store(StoreError::Internal {
                    what: "reading the step",
                    cause: "task panicked".into(),
                }),
                Code::Internal,
            ),
        ];
        for (e, code) in cases {
            let shown = e.to_string();
            let s = from_engine(e);
            assert_eq!(s.code(), code, "{shown}");
        }
    }

    /// A store failure that is no known condition goes to the log whole; the
    /// caller gets a short message that says where to look, not the chain.
    #[test]
    fn an_unknown_store_failure_is_internal_with_a_short_message() {
        let e = EngineError::Store(StoreError::CorruptRecord {
            path: PathBuf::from("/var/lib/obhostd/state.redb"),
            key: "step-1".into(),
            cause: serde_json::from_str::<u8>("x").unwrap_err(),
        });
        let s = from_engine(e);
        assert_eq!(s.code(), Code::Internal);
        assert!(
            s.message().contains("journalctl -u obhostd"),
            "{}",
            s.message()
        );
        assert!(!s.message().contains("step-1"), "{}", s.message());
    }

    #[test]
    fn a_refused_value_is_invalid_and_a_forbidden_one_denied() {
        let s = from_spec(SpecError::Invalid("home_path is empty".into()));
        assert_eq!(
            (s.code(), s.message()),
            (Code::InvalidArgument, "home_path is empty")
        );
        let s = from_spec(SpecError::Denied("outside allowed_roots".into()));
        assert_eq!(s.code(), Code::PermissionDenied);
    }
}
