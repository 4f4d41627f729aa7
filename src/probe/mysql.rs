//! The observer's MySQL port: accepts a connection and sends a protocol-10
//! handshake (always), then, with credentials, logs in and runs a query that
//! must return at least one row.
//!
//! Only ever 127.0.0.1: obhostd probes the observer on its own host.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use tokio::io::AsyncReadExt;

/// One attempt's bound: a hung observer must not stall the wait loop.
const ATTEMPT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("port {0} not accepting connections yet")]
    NotListening(u16),
    #[error("port {port} accepted but sent no MySQL handshake: {why}")]
    NoHandshake { port: u16, why: String },
    #[error("login as '{user}' refused: {why}")]
    LoginRefused { user: String, why: String },
    #[error("query failed: {0}")]
    QueryFailed(String),
    #[error("query returned no rows yet")]
    NoRows,
}

pub struct Credentials<'a> {
    pub user: &'a str,
    pub password: &'a str,
    pub sql: &'a str,
}

/// Reads the server greeting: a packet whose payload starts with protocol
/// version 10 (an 0xff error packet means the server refuses connections).
async fn handshake(port: u16) -> Result<(), ProbeError> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|_| ProbeError::NotListening(port))?;
    let mut header = [0u8; 5];
    s.read_exact(&mut header)
        .await
        .map_err(|e| ProbeError::NoHandshake {
            port,
            why: e.to_string(),
        })?;
    match header[4] {
        10 => Ok(()),
        0xff => Err(ProbeError::NoHandshake {
            port,
            why: "the server sent an error packet".into(),
        }),
        v => Err(ProbeError::NoHandshake {
            port,
            why: format!("unexpected protocol version {v}"),
        }),
    }
}

async fn login_and_query(port: u16, c: &Credentials<'_>) -> Result<(), ProbeError> {
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some(c.user))
        .pass(Some(c.password))
        .prefer_socket(false)
        // Given, so the client does not ask the server for them: the probe's
        // query is the only statement it runs.
        .max_allowed_packet(Some(16 << 20))
        .wait_timeout(Some(60))
        .stmt_cache_size(0);
    let mut conn = mysql_async::Conn::new(opts).await.map_err(|e| match e {
        mysql_async::Error::Server(s) => ProbeError::LoginRefused {
            user: c.user.to_string(),
            why: format!("{} ({})", s.message, s.code),
        },
        other => ProbeError::NoHandshake {
            port,
            why: other.to_string(),
        },
    })?;
    let result = conn.query_iter(c.sql).await;
    let rows = match result {
        Ok(mut r) => r
            .collect::<mysql_async::Row>()
            .await
            .map(|rows| rows.len())
            .map_err(|e| ProbeError::QueryFailed(e.to_string())),
        Err(e) => Err(ProbeError::QueryFailed(e.to_string())),
    };
    let _ = conn.disconnect().await;
    match rows? {
        0 => Err(ProbeError::NoRows),
        _ => Ok(()),
    }
}

/// One probe attempt, bounded.
pub async fn probe(port: u16, credentials: Option<&Credentials<'_>>) -> Result<(), ProbeError> {
    let attempt = async {
        handshake(port).await?;
        match credentials {
            Some(c) => login_and_query(port, c).await,
            None => Ok(()),
        }
    };
    tokio::time::timeout(ATTEMPT, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(ProbeError::NoHandshake {
                port,
                why: format!("no answer within {}s", ATTEMPT.as_secs()),
            })
        })
}
