//! Health of a service on this host: a loopback TCP port that accepts, or an
//! HTTP URL on loopback that answers 2xx.
//!
//! The HTTP check is a single `GET` over HTTP/1.0 on a fresh connection, written
//! here rather than pulling in an HTTP client: the target is always our own host,
//! the request is fixed, and only the status line is read.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ATTEMPT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    TcpPort(u16),
    /// Parsed from an `http://127.0.0.1:port/path` (or localhost) URL.
    Http {
        port: u16,
        path: String,
    },
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Health::TcpPort(p) => write!(f, "tcp 127.0.0.1:{p}"),
            Health::Http { port, path } => write!(f, "http://127.0.0.1:{port}{path}"),
        }
    }
}

/// Accepts only loopback http URLs: the agent checks its own host, never another.
pub fn parse_http_url(url: &str) -> Result<Health, String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!("health.http_url '{url}' must start with http:// (loopback only)")
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = authority.rsplit_once(':').ok_or_else(|| {
        format!("health.http_url '{url}' needs a port, e.g. http://127.0.0.1:62888/")
    })?;
    if !matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
        return Err(format!(
            "health.http_url '{url}' is not on loopback; use 127.0.0.1 or localhost"
        ));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("health.http_url '{url}' has an invalid port"))?;
    if path.contains(['\r', '\n', ' ']) {
        return Err(format!(
            "health.http_url '{url}' contains spaces or line breaks"
        ));
    }
    Ok(Health::Http {
        port,
        path: path.to_string(),
    })
}

/// The port a check connects to.
impl Health {
    pub fn port(&self) -> u16 {
        match self {
            Health::TcpPort(p) | Health::Http { port: p, .. } => *p,
        }
    }
}

/// One check, bounded. Err says what was seen, for the step's message.
pub async fn check(h: &Health) -> Result<(), String> {
    let attempt = async {
        match h {
            Health::TcpPort(port) => super::connect_loopback(*port)
                .await
                .map(|_| ())
                .map_err(|_| format!("port {port} not accepting connections yet")),
            Health::Http { port, path } => http_get(*port, path).await,
        }
    };
    tokio::time::timeout(ATTEMPT, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("{h} did not answer within {}s", ATTEMPT.as_secs())))
}

async fn http_get(port: u16, path: &str) -> Result<(), String> {
    let mut s = super::connect_loopback(port)
        .await
        .map_err(|_| format!("port {port} not accepting connections yet"))?;
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("http://127.0.0.1:{port}{path}: {e}"))?;
    let mut head = vec![0u8; 256];
    let mut n = 0;
    while n < head.len() {
        match s.read(&mut head[n..]).await {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(format!("http://127.0.0.1:{port}{path}: {e}")),
        }
        if head[..n].contains(&b'\n') {
            break;
        }
    }
    let line = String::from_utf8_lossy(&head[..n]);
    let line = line.lines().next().unwrap_or("");
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("http://127.0.0.1:{port}{path} answered '{line}', not HTTP"))?;
    if (200..300).contains(&code) {
        Ok(())
    } else {
        Err(format!("http://127.0.0.1:{port}{path} answered {code}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_urls() {
        assert_eq!(
            parse_http_url("http://127.0.0.1:62888/api/v1/time"),
            Ok(Health::Http {
                port: 62888,
                path: "/api/v1/time".into()
            })
        );
        assert!(parse_http_url("http://localhost:80").is_ok());
        assert!(
            parse_http_url("http://10.0.0.1:80/")
                .unwrap_err()
                .contains("loopback")
        );
        assert!(parse_http_url("https://127.0.0.1:80/").is_err());
        assert!(parse_http_url("http://127.0.0.1/").is_err());
    }
}
