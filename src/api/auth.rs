//! Bearer-token authentication (`[auth] token_file`). Required for HostAgent when
//! configured; health and reflection stay open so load balancers and grpcurl can
//! look without the secret.

use std::path::Path;
use std::sync::Arc;

use tonic::{Request, Status};

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
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!(
                "cannot read [auth] token_file '{}': {e}; create it with a random token, e.g. \
                 `head -c 32 /dev/urandom | base64 > {}` and `chmod 600` it",
                path.display(),
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

#[derive(Clone)]
pub struct Interceptor {
    token: Option<Token>,
}

impl Interceptor {
    pub fn new(token: Option<Token>) -> Self {
        Interceptor { token }
    }
}

impl tonic::service::Interceptor for Interceptor {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.token else {
            return Ok(request);
        };
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(g) if constant_time_eq(g.as_bytes(), token.0.as_bytes()) => Ok(request),
            Some(_) => Err(Status::unauthenticated(
                "the bearer token does not match this daemon's [auth] token_file",
            )),
            None => Err(Status::unauthenticated(
                "this daemon requires 'authorization: Bearer <token>' (see [auth] token_file)",
            )),
        }
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
