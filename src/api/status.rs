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
