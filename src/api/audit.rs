//! The audit trail: who asked obhostd to do what. obhostd acts as root, so
//! every accepted call that starts, cancels or retries a step is logged at
//! INFO with the caller's identity and what it touches, and every refusal at
//! WARN with the reason. The events carry `audit = true` (filter on it in
//! journald or a log shipper). Secrets are never part of them: only ids, the
//! home and the user are.

use std::path::Path;

use tonic::{Request, Status};
use tracing::Level;

use super::peer::Peer;
use crate::bounds::quote;

/// One audit event: every one carries the same fields, only the level (a
/// constant, as tracing requires) and the outcome differ.
macro_rules! audit_event {
    ($level:expr, $call:expr, $($outcome:tt)+) => {{
        let Call {
            caller,
            call,
            step_id,
            kind,
            home,
            user,
        } = $call;
        tracing::event!(
            $level,
            audit = true,
            caller,
            call,
            step = step_id,
            kind,
            home,
            user,
            $($outcome)+
        )
    }};
}

/// One mutating call, as the audit trail will tell it.
pub struct Call {
    caller: String,
    call: &'static str,
    step_id: String,
    kind: &'static str,
    home: String,
    user: String,
}

impl Call {
    pub fn new<T>(request: &Request<T>, call: &'static str, step_id: &str) -> Call {
        Call {
            caller: caller(super::peer::peer_of(request)),
            call,
            step_id: quote(step_id),
            kind: "",
            home: String::new(),
            user: String::new(),
        }
    }

    /// What the call touches, once the request is understood.
    pub fn about(&mut self, kind: &'static str, home: &Path, user: &str) {
        self.kind = kind;
        self.home = quote(&home.display().to_string());
        self.user = quote(user);
    }

    /// [`Call::record`] for a step-starting call, whose `Ok(None)` is a
    /// `validate_only` request: checked, nothing started, and told so.
    pub fn record_step(&self, result: &Result<Option<crate::proto::v1::Step>, Status>) {
        match result {
            Ok(None) => audit_event!(
                Level::INFO,
                self,
                "validated; nothing started (validate_only)"
            ),
            other => self.record(other),
        }
    }

    pub fn record<T>(&self, result: &Result<T, Status>) {
        match result {
            Ok(_) => audit_event!(Level::INFO, self, "accepted"),
            Err(s) => audit_event!(
                Level::WARN,
                self,
                code = ?s.code(),
                reason = s.message(),
                "refused"
            ),
        }
    }
}

/// The caller as the listener knows it: the kernel's uid on the Unix socket,
/// the certificate's name with mTLS, else only the address (a token holder).
pub fn caller(peer: Option<&Peer>) -> String {
    match peer {
        Some(Peer::Unix { uid, pid }) => match pid {
            Some(pid) => format!("uid {uid} (pid {pid})"),
            None => format!("uid {uid}"),
        },
        Some(Peer::Tls {
            addr,
            client_names: Some(names),
        }) => format!(
            "certificate '{}' from {addr}",
            names.first().map(|n| quote(n)).unwrap_or_default()
        ),
        Some(Peer::Tls {
            addr,
            client_names: None,
        }) => format!("token holder at {addr} (tls)"),
        Some(Peer::Tcp { addr }) => format!("token holder at {addr}"),
        None => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn each_kind_of_caller_is_named_by_what_proves_it() {
        let addr = "10.0.0.5:4431".parse().unwrap();
        assert_eq!(
            caller(Some(&Peer::Unix {
                uid: 1001,
                pid: Some(42)
            })),
            "uid 1001 (pid 42)"
        );
        assert_eq!(
            caller(Some(&Peer::Tls {
                addr,
                client_names: Some(Arc::from(vec!["ocp-1".to_string()]))
            })),
            "certificate 'ocp-1' from 10.0.0.5:4431"
        );
        assert_eq!(
            caller(Some(&Peer::Tcp { addr })),
            "token holder at 10.0.0.5:4431"
        );
    }
}
