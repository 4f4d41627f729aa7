//! The observer's MySQL port: accepts a connection and sends a protocol-10
//! handshake (always), then, with credentials, logs in and runs a query that
//! must return at least one row.
//!
//! Only ever 127.0.0.1: obhostd probes the observer on its own host.
//!
//! The password goes to the observer and to nothing else. Any local user can
//! listen on a port the observer has not bound yet (or has lost), so before a
//! byte of credentials is sent:
//!
//! - every socket listening where a connection to 127.0.0.1:port lands must
//!   belong to the observer's process (by identity), and
//! - the server end of the very connection that carries the login must be held
//!   by that process (checked after its greeting, when it has accepted).
//!
//! mysql_async does the protocol, through a small guard: it connects to a
//! private Unix socket, and the guard relays to the observer, watching the
//! authentication phase. If the server asks for caching_sha2_password's full
//! authentication, mysql_async would fetch the server's RSA key over the plain
//! connection and encrypt the password with whatever key it got (a forged one
//! included); the guard ends the connection instead, so no password ever
//! leaves obhostd unencrypted or encrypted to a key nobody vouched for.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mysql_async::prelude::Queryable;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener};

use crate::process::inspect::{self, PortOwner};

/// One attempt's bound: a hung observer must not stall the wait loop.
const ATTEMPT: Duration = Duration::from_secs(3);
/// Greeting and authentication packets are small; a larger one is not MySQL.
const MAX_AUTH_PACKET: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("port {0} not accepting connections yet")]
    NotListening(u16),
    #[error(
        "port {port} is held by {holder}, not by the observer (pid {observer}); obhostd sends nothing there. Stop that process"
    )]
    NotTheObserver {
        port: u16,
        observer: i32,
        holder: String,
    },
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

/// The port's listeners must all be the observer's.
fn check_listener(port: u16, observer: i32) -> Result<(), ProbeError> {
    match inspect::loopback_port_owner(port, observer) {
        PortOwner::Only => Ok(()),
        PortOwner::Nobody => Err(ProbeError::NotListening(port)),
        PortOwner::Other(holder) => Err(ProbeError::NotTheObserver {
            port,
            observer,
            holder: match holder {
                Some((pid, comm)) => format!("pid {pid} ({comm})"),
                None => "a process obhostd cannot see".into(),
            },
        }),
    }
}

async fn connect(port: u16) -> Result<TcpStream, ProbeError> {
    super::connect_loopback(port)
        .await
        .map_err(|_| ProbeError::NotListening(port))
}

/// Reads one MySQL packet: 3-byte length, sequence id, payload.
async fn read_packet(
    s: &mut (impl AsyncReadExt + Unpin),
    port: u16,
) -> Result<Vec<u8>, ProbeError> {
    let no = |why: String| ProbeError::NoHandshake { port, why };
    let mut header = [0u8; 4];
    s.read_exact(&mut header)
        .await
        .map_err(|e| no(e.to_string()))?;
    let len = usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
    if len > MAX_AUTH_PACKET {
        return Err(no(format!("a packet of {len} bytes during login")));
    }
    let mut packet = vec![0u8; 4 + len];
    packet[..4].copy_from_slice(&header);
    s.read_exact(&mut packet[4..])
        .await
        .map_err(|e| no(e.to_string()))?;
    Ok(packet)
}

/// Checks a greeting: protocol version 10 (an 0xff error packet means the
/// server refuses connections).
fn check_greeting(packet: &[u8], port: u16) -> Result<(), ProbeError> {
    match packet.get(4) {
        Some(10) => Ok(()),
        Some(0xff) => Err(ProbeError::NoHandshake {
            port,
            why: "the server sent an error packet".into(),
        }),
        v => Err(ProbeError::NoHandshake {
            port,
            why: format!("unexpected protocol version {v:?}"),
        }),
    }
}

/// Runs a /proc read on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ProbeError> + Send + 'static,
    port: u16,
) -> Result<T, ProbeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ProbeError::NoHandshake {
            port,
            why: format!("the socket check failed: {e}"),
        })?
}

/// Connects, reads the greeting and proves the observer answered it.
async fn greet(port: u16, observer: i32) -> Result<(TcpStream, Vec<u8>), ProbeError> {
    // /proc/net/tcp can take milliseconds to read on a busy host: off the runtime.
    blocking(move || check_listener(port, observer), port).await?;
    let mut s = connect(port).await?;
    let greeting = read_packet(&mut s, port).await?;
    check_greeting(&greeting, port)?;
    let ours: SocketAddr = s.local_addr().map_err(|e| ProbeError::NoHandshake {
        port,
        why: e.to_string(),
    })?;
    if !blocking(
        move || Ok(inspect::connection_served_by(port, ours, observer)),
        port,
    )
    .await?
    {
        return Err(ProbeError::NotTheObserver {
            port,
            observer,
            holder: "another process (it answered this connection)".into(),
        });
    }
    Ok((s, greeting))
}

/// Why the guard ended a login, for the step's message.
type Verdict = Arc<Mutex<Option<ProbeError>>>;

fn set(verdict: &Verdict, e: ProbeError) {
    if let Ok(mut v) = verdict.lock() {
        *v = Some(e);
    }
}

/// Relays one client (mysql_async, on the private socket) to the observer,
/// ending the connection if the server asks for full authentication.
async fn guard(
    listener: UnixListener,
    port: u16,
    observer: i32,
    user: String,
    verdict: Verdict,
) -> Result<(), ProbeError> {
    let (client, _) = listener
        .accept()
        .await
        .map_err(|e| ProbeError::NoHandshake {
            port,
            why: e.to_string(),
        })?;
    let (server, greeting) = greet(port, observer)
        .await
        .inspect_err(|e| set(&verdict, e.clone()))?;
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let io = |e: std::io::Error| ProbeError::NoHandshake {
        port,
        why: e.to_string(),
    };
    cw.write_all(&greeting).await.map_err(io)?;
    let upstream = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut cr, &mut sw).await;
        let _ = sw.shutdown().await;
    });
    // The authentication phase ends with the server's OK or ERR packet.
    loop {
        let packet = read_packet(&mut sr, port).await?;
        match packet.get(4..6) {
            Some([0x01, 0x04]) => {
                upstream.abort();
                set(&verdict, ProbeError::LoginRefused {
                    user,
                    why: "the server asked for caching_sha2_password full authentication, which over a plain connection means fetching its RSA key and trusting it; obhostd refuses. Give the probe user mysql_native_password, or log in once over TLS so the server caches it".into(),
                });
                return Ok(());
            }
            Some([0x00, _]) | Some([0xff, _]) => {
                cw.write_all(&packet).await.map_err(io)?;
                break;
            }
            _ => cw.write_all(&packet).await.map_err(io)?,
        }
    }
    let _ = tokio::io::copy(&mut sr, &mut cw).await;
    upstream.abort();
    Ok(())
}

async fn login_and_query(port: u16, observer: i32, c: &Credentials<'_>) -> Result<(), ProbeError> {
    let fail = |e: std::io::Error| ProbeError::NoHandshake {
        port,
        why: format!("cannot set up the login guard: {e}"),
    };
    // A private dir (0700, root's): nobody else can reach the socket in it.
    let dir = tempfile::Builder::new()
        .prefix("obhost-probe-")
        .tempdir()
        .map_err(fail)?;
    let socket = dir.path().join("mysql.sock");
    let listener = UnixListener::bind(&socket).map_err(fail)?;
    let verdict = Verdict::default();
    let relay = tokio::spawn(guard(
        listener,
        port,
        observer,
        c.user.to_string(),
        verdict.clone(),
    ));
    let result = run_login(&socket, c).await;
    relay.abort();
    let refused = verdict.lock().ok().and_then(|mut v| v.take());
    match (result, refused) {
        (Ok(()), _) => Ok(()),
        (Err(_), Some(why)) => Err(why),
        (Err(e), None) => Err(e),
    }
}

async fn run_login(socket: &Path, c: &Credentials<'_>) -> Result<(), ProbeError> {
    let opts = mysql_async::OptsBuilder::default()
        .socket(Some(socket.to_string_lossy()))
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
            port: 0,
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

/// One probe attempt against the observer process `observer` (its pid, already
/// identified by the caller), bounded.
pub async fn probe(
    port: u16,
    observer: i32,
    credentials: Option<&Credentials<'_>>,
) -> Result<(), ProbeError> {
    let attempt = async {
        match credentials {
            Some(c) => login_and_query(port, observer, c).await,
            None => greet(port, observer).await.map(drop),
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
