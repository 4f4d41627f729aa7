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

#[cfg(test)]
mod tests {
    //! A stand-in MySQL server on 127.0.0.1 in this process, which is then
    //! "the observer" (its pid owns the port), speaking just enough of the
    //! protocol for each case, and recording what the probe sent it.
    use super::*;
    use tokio::net::TcpListener;

    const PASSWORD: &str = "s3cret-probe-password";

    fn me() -> i32 {
        std::process::id() as i32
    }

    fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut p = len.to_le_bytes()[..3].to_vec();
        p.push(seq);
        p.extend_from_slice(payload);
        p
    }

    /// A protocol-10 greeting offering `plugin`.
    fn greeting(plugin: &str) -> Vec<u8> {
        const CAPS: u32 = 0x1 // LONG_PASSWORD
            | 0x4 // LONG_FLAG
            | 0x8 // CONNECT_WITH_DB
            | 0x200 // PROTOCOL_41
            | 0x2000 // TRANSACTIONS
            | 0x8000 // SECURE_CONNECTION
            | 0x1_0000 // MULTI_STATEMENTS
            | 0x2_0000 // MULTI_RESULTS
            | 0x8_0000 // PLUGIN_AUTH
            | 0x20_0000 // PLUGIN_AUTH_LENENC_CLIENT_DATA
            | 0x100_0000; // DEPRECATE_EOF
        let caps = CAPS.to_le_bytes();
        let mut p = vec![10];
        p.extend_from_slice(b"8.0.30-stand-in\0");
        p.extend_from_slice(&7u32.to_le_bytes());
        p.extend_from_slice(b"abcdefgh\0");
        p.extend_from_slice(&caps[..2]);
        p.push(0xff);
        p.extend_from_slice(&2u16.to_le_bytes());
        p.extend_from_slice(&caps[2..]);
        p.push(21);
        p.extend_from_slice(&[0; 10]);
        p.extend_from_slice(b"ijklmnopqrst\0");
        p.extend_from_slice(plugin.as_bytes());
        p.push(0);
        packet(0, &p)
    }

    /// Serves one connection on a fresh port with `serve`; its result is
    /// everything the server read after what `serve` itself consumed.
    async fn stand_in<F, Fut>(serve: F) -> (u16, tokio::task::JoinHandle<Vec<u8>>)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = TcpStream> + Send,
    {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let served = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut s = serve(s).await;
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
            rest
        });
        (port, served)
    }

    async fn read_one(s: &mut TcpStream) -> Vec<u8> {
        read_packet(s, 0).await.expect("a packet from the probe")
    }

    fn credentials() -> Credentials<'static> {
        Credentials {
            user: "probe",
            password: PASSWORD,
            sql: "select 1",
        }
    }

    #[tokio::test]
    async fn the_observers_greeting_is_enough_without_credentials() {
        let (port, _served) = stand_in(|mut s| async move {
            s.write_all(&greeting("mysql_native_password"))
                .await
                .unwrap();
            s
        })
        .await;
        assert_eq!(probe(port, me(), None).await, Ok(()));
    }

    #[tokio::test]
    async fn a_closed_port_is_not_listening() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        assert_eq!(
            probe(port, me(), None).await,
            Err(ProbeError::NotListening(port))
        );
    }

    /// Someone else holds the port: no connection is even made, so no
    /// credentials can go there.
    #[tokio::test]
    async fn a_port_another_process_holds_gets_nothing() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let observer = other.id() as i32;
        let got = probe(port, observer, Some(&credentials())).await;
        let _ = other.kill();
        let _ = other.wait();
        match got {
            Err(ProbeError::NotTheObserver { holder, .. }) => {
                assert!(holder.contains(&format!("pid {}", me())), "{holder}")
            }
            other => panic!("probed a port the observer does not hold: {other:?}"),
        }
        let accepted = tokio::time::timeout(Duration::from_millis(100), l.accept()).await;
        assert!(accepted.is_err(), "the probe connected to the impostor");
    }

    #[tokio::test]
    async fn an_error_packet_or_a_huge_one_is_no_handshake() {
        let (port, _served) = stand_in(|mut s| async move {
            let refusal = [0xff, 0x10, 0x04, b'#', b'H', b'Y', b'0', b'0', b'0'];
            s.write_all(&packet(0, &refusal)).await.unwrap();
            s
        })
        .await;
        match probe(port, me(), None).await {
            Err(ProbeError::NoHandshake { why, .. }) => {
                assert!(why.contains("error packet"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        let (port, _served) = stand_in(|mut s| async move {
            s.write_all(&[0xff, 0xff, 0xff, 0]).await.unwrap();
            s
        })
        .await;
        match probe(port, me(), None).await {
            Err(ProbeError::NoHandshake { why, .. }) => {
                assert!(why.contains("a packet of 16777215 bytes"), "{why}")
            }
            other => panic!("{other:?}"),
        }
    }

    /// caching_sha2_password's full authentication would have the client
    /// send the password (in clear over what it takes for a local socket, or
    /// encrypted to a key the server sends): the guard ends the connection
    /// first, and the server gets nothing more.
    #[tokio::test]
    async fn the_password_never_goes_to_a_server_asking_for_full_authentication() {
        let (port, served) = stand_in(|mut s| async move {
            s.write_all(&greeting("caching_sha2_password"))
                .await
                .unwrap();
            let response = read_one(&mut s).await;
            assert!(
                !response
                    .windows(PASSWORD.len())
                    .any(|w| w == PASSWORD.as_bytes()),
                "the password in the handshake response"
            );
            s.write_all(&packet(2, &[0x01, 0x04])).await.unwrap();
            s
        })
        .await;
        let got = probe(port, me(), Some(&credentials())).await;
        let after = served.await.unwrap();
        assert!(
            after.is_empty(),
            "the server got {} more bytes: {:?}",
            after.len(),
            String::from_utf8_lossy(&after)
        );
        match got {
            Err(ProbeError::LoginRefused { user, why }) => {
                assert_eq!(user, "probe");
                assert!(why.contains("full authentication"), "{why}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_refused_login_says_what_the_server_said() {
        let (port, _served) = stand_in(|mut s| async move {
            s.write_all(&greeting("mysql_native_password"))
                .await
                .unwrap();
            read_one(&mut s).await;
            let mut err = vec![0xff];
            err.extend_from_slice(&1045u16.to_le_bytes());
            err.extend_from_slice(b"#28000Access denied for user 'probe'");
            s.write_all(&packet(2, &err)).await.unwrap();
            s
        })
        .await;
        match probe(port, me(), Some(&credentials())).await {
            Err(ProbeError::LoginRefused { user, why }) => {
                assert_eq!(user, "probe");
                assert!(why.contains("Access denied for user 'probe'"), "{why}");
                assert!(why.contains("1045"), "{why}");
            }
            other => panic!("{other:?}"),
        }
    }
}
