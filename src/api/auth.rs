//! Who may call. Three kinds of proof, by listener:
//!
//! - Unix socket: the kernel's word (SO_PEERCRED). The daemon's own uid and
//!   `[auth] local_users` are admitted; everyone else gets PERMISSION_DENIED on
//!   every service (health included) before anything runs.
//! - TLS: with `[tls] client_ca_file` the handshake itself refuses a client
//!   without a certificate from that CA; `allowed_clients` then narrows by name.
//! - TCP (plain or TLS): `[auth] token_file`, when set, is required on HostAgent
//!   (health and reflection stay open so load balancers and grpcurl can look).
//!
//! The token and the TLS config live in [`Access`], swappable: SIGHUP reloads
//! them ([`Access::reload`]) while connections and steps run on.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio_rustls::rustls;
use tonic::{Request, Status};
use tracing::{info, warn};

use super::peer::Peer;
use crate::config::{Config, quote};

/// The token, kept out of Debug output so it cannot reach a log.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    pub fn load(path: &Path) -> anyhow::Result<Token> {
        let mut file = crate::trusted::secret_file(path, "[auth] token_file").map_err(|e| {
            anyhow::anyhow!(
                "{e}; a new token can be made with `head -c 32 /dev/urandom | base64 > {}`",
                path.display()
            )
        })?;
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(|e| {
            anyhow::anyhow!(
                "cannot read [auth] token_file '{}': {e}; it must hold one line of text",
                path.display()
            )
        })?;
        let token = text.trim();
        if token.len() < 16 {
            anyhow::bail!(
                "[auth] token_file '{}' holds a token of {} characters; use at least 16 random characters",
                path.display(),
                token.len()
            );
        }
        Ok(Token(token.into()))
    }
}

/// Everything the listeners and interceptors consult, built from the config at
/// start and partly replaced on SIGHUP.
pub struct Access {
    /// uids admitted on Unix sockets: the daemon's and `local_users`.
    local_uids: Vec<u32>,
    token_file: Option<PathBuf>,
    token: ArcSwapOption<Token>,
    tls_config: Option<crate::config::TlsConfig>,
    tls: Option<ArcSwap<rustls::ServerConfig>>,
    allowed_clients: Vec<String>,
}

impl Access {
    /// Reads the token and TLS files; any problem is an error naming the key.
    pub fn load(config: &Config) -> anyhow::Result<Access> {
        let local = config.local_access()?;
        let mut local_uids = vec![nix::unistd::geteuid().as_raw()];
        local_uids.extend(local.uids);
        let token_file = config.auth.as_ref().and_then(|a| a.token_file.clone());
        let token = token_file.as_deref().map(Token::load).transpose()?;
        let tls = config
            .tls
            .as_ref()
            .map(super::tls::server_config)
            .transpose()?;
        Ok(Access {
            local_uids,
            token_file,
            token: ArcSwapOption::from(token.map(Arc::new)),
            allowed_clients: config
                .tls
                .as_ref()
                .map(|t| t.allowed_clients.clone())
                .unwrap_or_default(),
            tls_config: config.tls.clone(),
            tls: tls.map(ArcSwap::new),
        })
    }

    /// The TLS config new connections get; `None` when TCP is plain.
    pub fn tls(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.tls.as_ref().map(|t| t.load_full())
    }

    /// SIGHUP: re-reads the token file and the TLS files. What fails to load is
    /// kept as it was (and said in a WARN), so a half-written file never locks
    /// the orchestrator out.
    pub fn reload(&self) {
        if let Some(path) = &self.token_file {
            match Token::load(path) {
                Ok(t) => {
                    self.token.store(Some(Arc::new(t)));
                    info!(file = %path.display(), "reloaded [auth] token_file");
                }
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "keeping the previous token: reload failed")
                }
            }
        }
        if let (Some(cfg), Some(slot)) = (&self.tls_config, &self.tls) {
            match super::tls::server_config(cfg) {
                Ok(c) => {
                    slot.store(c);
                    info!(
                        cert_file = %cfg.cert_file.display(),
                        client_ca_file = ?cfg.client_ca_file,
                        "reloaded [tls] certificate, key and client CA; new connections use them"
                    );
                }
                Err(e) => warn!(
                    error = %format!("{e:#}"),
                    "keeping the previous TLS certificate: reload failed"
                ),
            }
        }
    }

    /// Whether this peer may call at all (every service): the uid of a Unix peer,
    /// the certificate names of a TLS peer when `allowed_clients` is set.
    #[allow(clippy::result_large_err)]
    fn admit(&self, peer: Option<&Peer>) -> Result<(), Status> {
        match peer {
            Some(Peer::Unix { uid, pid }) => {
                if self.local_uids.contains(uid) {
                    return Ok(());
                }
                let who = nix::unistd::User::from_uid((*uid).into())
                    .ok()
                    .flatten()
                    .map(|u| format!("uid {uid} ({})", quote(&u.name)))
                    .unwrap_or_else(|| format!("uid {uid}"));
                warn!(uid, pid = ?pid, "refused a Unix-socket caller not in [auth] local_users");
                Err(Status::permission_denied(format!(
                    "{who} may not call obhostd; an administrator can add the user to [auth] \
                     local_users (and give the socket a group with [auth] socket_group)"
                )))
            }
            Some(Peer::Tls { client_names, .. }) if !self.allowed_clients.is_empty() => {
                let names = client_names.as_deref().unwrap_or_default();
                if names.iter().any(|n| self.allowed_clients.contains(n)) {
                    return Ok(());
                }
                let seen = quote(&names.join(", "));
                Err(Status::permission_denied(format!(
                    "client certificate names [{seen}] are not in [tls] allowed_clients; use a \
                     certificate for an allowed name or add one of these names to the list"
                )))
            }
            Some(Peer::Tls { .. }) | Some(Peer::Tcp { .. }) => Ok(()),
            // Every connection is a `Conn` with a peer; a request without one did
            // not come through our listeners.
            None => Err(Status::permission_denied(
                "the connection's peer is unknown; obhostd refuses it",
            )),
        }
    }

    /// The bearer token, for callers that came over TCP.
    #[allow(clippy::result_large_err)]
    fn check_token(&self, request: &Request<()>) -> Result<(), Status> {
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        self.check_bearer(super::peer::peer_of(request), given)
    }

    #[allow(clippy::result_large_err)]
    fn check_bearer(&self, peer: Option<&Peer>, given: Option<&str>) -> Result<(), Status> {
        if let Some(Peer::Unix { .. }) = peer {
            return Ok(()); // the uid was checked by `admit`
        }
        let current = self.token.load();
        let Some(token) = current.as_deref() else {
            return Ok(());
        };
        match given {
            Some(g) if constant_time_eq(g.as_bytes(), token.0.as_bytes()) => Ok(()),
            Some(_) => Err(Status::unauthenticated(
                "the bearer token does not match this daemon's [auth] token_file; pass the current \
                 one (obhostctl --token-file FILE)",
            )),
            None => Err(Status::unauthenticated(
                "this daemon requires 'authorization: Bearer <token>' over TCP (see [auth] \
                 token_file; obhostctl --token-file FILE)",
            )),
        }
    }

    /// Whether a connection has proved its peer: it would pass every check a
    /// HostAgent call makes (the uid or certificate names, and the token when
    /// one is set). `bearer` is the token a call carries; `None` at accept,
    /// where only a Unix uid or a client certificate can prove anything.
    /// Such a connection is exempt from the limits on unauthenticated ones
    /// ([`super::peers`]).
    pub fn trusts(&self, peer: &Peer, bearer: Option<&str>) -> bool {
        let proven = match peer {
            // A plain TCP peer proves nothing but the token.
            Peer::Tcp { .. } => bearer.is_some(),
            // Without client_ca_file a TLS client has no certificate to prove
            // anything with; with it, the handshake checked the certificate.
            Peer::Tls { client_names, .. } => bearer.is_some() || client_names.is_some(),
            Peer::Unix { .. } => true,
        };
        proven && self.admit(Some(peer)).is_ok() && self.check_bearer(Some(peer), bearer).is_ok()
    }
}

/// Runs before every service: may this peer call at all?
#[derive(Clone)]
pub struct PeerCheck(pub Arc<Access>);

impl tonic::service::Interceptor for PeerCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let peer = super::peer::peer_of(&request);
        self.0.admit(peer).inspect_err(|e| refused(peer, e))?;
        Ok(request)
    }
}

/// A caller turned away before any service saw the call: part of the audit
/// trail (see [`super::audit`]).
fn refused(peer: Option<&Peer>, e: &Status) {
    tracing::warn!(
        audit = true,
        caller = %super::audit::caller(peer),
        code = ?e.code(),
        reason = e.message(),
        "refused"
    );
}

/// Runs before HostAgent (and the test service): the bearer token over TCP.
#[derive(Clone)]
pub struct Interceptor(pub Arc<Access>);

impl tonic::service::Interceptor for Interceptor {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.0
            .check_token(&request)
            .inspect_err(|e| refused(super::peer::peer_of(&request), e))?;
        Ok(request)
    }
}

/// Compares without an early exit, so response time says nothing about how much
/// of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
