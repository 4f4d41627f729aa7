//! Binding and accepting. Every listener (Unix sockets, TCP, TLS over TCP) feeds
//! one stream of [`Conn`]s that a single tonic server serves, so the same
//! services and the same checks apply whatever way a caller came in.
//!
//! A Unix socket is created where nobody else can reach it (a fresh 0700 dir
//! beside its final path), given its mode and group there, and only then renamed
//! into place: there is no moment when it is wider than configured. A file
//! already at the path is replaced only if it is a socket nobody answers on; a
//! regular file or a symlink (perhaps planted) is never unlinked.
//!
//! Every connection takes its place in [`super::peers`] as it is accepted,
//! before any TLS handshake, so a handshake in flight counts as what it is: a
//! connection nobody has proved yet, bounded in number with the others and
//! closed when newer ones need its place.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::auth::Access;
use super::peer::{Conn, Peer};
use super::peers::{ConnSlot, PeerKey, Peers};
use crate::config::{ListenAddr, LocalAccess};

/// How long a TLS client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

enum Listener {
    Unix(UnixListener, String),
    Tcp(TcpListener, String),
}

/// The bound listeners, and the socket files to remove when the daemon stops.
pub struct Listeners {
    list: Vec<Listener>,
    sockets: Vec<(PathBuf, u64)>,
}

impl Listeners {
    /// The addresses bound, as logged ("listening" lines carry the same text).
    pub fn addrs(&self) -> Vec<String> {
        self.list
            .iter()
            .map(|l| match l {
                Listener::Unix(_, a) | Listener::Tcp(_, a) => a.clone(),
            })
            .collect()
    }

    /// Removes our socket files, each only if it is still the one we bound (a
    /// newer daemon may have replaced it).
    pub fn remove_sockets(&self) {
        for (path, ino) in &self.sockets {
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.ino() == *ino) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// Binds every address; logs one "listening" line per listener with its `addr`.
pub async fn bind(
    addrs: &[ListenAddr],
    local: &LocalAccess,
    tls: bool,
) -> anyhow::Result<Listeners> {
    let mut out = Listeners {
        list: Vec::new(),
        sockets: Vec::new(),
    };
    for addr in addrs {
        match addr {
            ListenAddr::Unix(path) => {
                let (listener, ino) = bind_unix(path, local.socket_gid)?;
                let shown = format!("unix:{}", path.display());
                let mode = if local.socket_gid.is_some() {
                    "0660"
                } else {
                    "0600"
                };
                info!(addr = %shown, mode, "listening");
                out.sockets.push((path.clone(), ino));
                out.list.push(Listener::Unix(listener, shown));
            }
            ListenAddr::Tcp(sa) => {
                let listener = TcpListener::bind(sa).await.with_context(|| {
                    format!(
                        "cannot listen on '{sa}'; is another obhostd running? Pick another address \
                         with --listen"
                    )
                })?;
                let local_addr: SocketAddr = listener.local_addr()?;
                let shown = local_addr.to_string();
                info!(addr = %shown, tls, "listening");
                out.list.push(Listener::Tcp(listener, shown));
            }
        }
    }
    Ok(out)
}

fn bind_unix(path: &Path, gid: Option<u32>) -> anyhow::Result<(UnixListener, u64)> {
    let parent = socket_dir(path)?;
    clear_stale_socket(path)?;
    let (listener, ino) = bind_privately(path, parent, gid)?;
    listener.set_nonblocking(true)?;
    Ok((UnixListener::from_std(listener)?, ino))
}

/// The socket's directory, created (0755) if missing.
fn socket_dir(path: &Path) -> anyhow::Result<&Path> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "socket path '{}' has no directory; give e.g. unix:/run/obhost/obhostd.sock",
                path.display()
            )
        })?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(parent)
        .with_context(|| {
            format!(
                "cannot create the socket's directory '{}'; create it or listen elsewhere (--listen unix:/path)",
                parent.display()
            )
        })?;
    Ok(parent)
}

/// Makes room at `path`: removes a socket nobody answers on (a daemon that
/// died left it); refuses a live socket, and anything that is not a socket.
fn clear_stale_socket(path: &Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                anyhow::bail!(
                    "cannot listen on 'unix:{}': something answers there; is another obhostd running? \
                     Stop it or pick another path with --listen",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove the stale socket '{}'", path.display()))
        }
        Ok(m) => anyhow::bail!(
            "refusing to listen on 'unix:{}': a {} is there, not a socket, and obhostd never \
             replaces one; remove it if it is yours, or pick another path with --listen",
            path.display(),
            if m.file_type().is_symlink() {
                "symlink"
            } else {
                "file or directory"
            }
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot inspect '{}'", path.display())),
    }
}

/// Binds inside a private dir beside `path`, sets mode and group there, then
/// renames the socket into place, so it is never reachable with a wider mode
/// than configured. Returns the listener and the socket's inode.
fn bind_privately(
    path: &Path,
    parent: &Path,
    gid: Option<u32>,
) -> anyhow::Result<(std::os::unix::net::UnixListener, u64)> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let private = parent.join(format!(".{name}.{}.new", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .with_context(|| format!("cannot create '{}'", private.display()))?;
    let result = (|| -> anyhow::Result<(std::os::unix::net::UnixListener, u64)> {
        let staged = private.join("s");
        let listener = std::os::unix::net::UnixListener::bind(&staged).with_context(|| {
            format!(
                "cannot listen on 'unix:{}' (bound first as '{}'); socket paths are limited to 107 bytes",
                path.display(),
                staged.display()
            )
        })?;
        if let Some(gid) = gid {
            nix::unistd::chown(&staged, None, Some(nix::unistd::Gid::from_raw(gid))).with_context(
                || format!("cannot give the socket '{}' group {gid}", path.display()),
            )?;
        }
        let mode = if gid.is_some() { 0o660 } else { 0o600 };
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&staged, path).with_context(|| {
            format!("cannot move the socket into place at '{}'", path.display())
        })?;
        let ino = std::fs::symlink_metadata(path)?.ino();
        Ok((listener, ino))
    })();
    let _ = std::fs::remove_dir_all(&private);
    result
}

/// One task per listener accepts until `shutdown`; TLS handshakes each run in a
/// task of their own, bounded in time, and in number by the limits on
/// connections nobody has proved yet, so a client that never finishes one
/// holds up nobody else.
pub fn incoming(
    listeners: &mut Listeners,
    access: Arc<Access>,
    peers: Arc<Peers>,
    shutdown: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(64);
    for listener in listeners.list.drain(..) {
        let accepting = Accepting {
            tx: tx.clone(),
            access: access.clone(),
            peers: peers.clone(),
            shutdown: shutdown.clone(),
        };
        match listener {
            Listener::Unix(l, _) => {
                tokio::spawn(accept_unix(l, accepting));
            }
            Listener::Tcp(l, _) => {
                tokio::spawn(accept_tcp(l, accepting));
            }
        }
    }
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// What every accept loop shares: where connections go, who is trusted,
/// the places connections take, and when to stop.
#[derive(Clone)]
struct Accepting {
    tx: mpsc::Sender<io::Result<Conn>>,
    access: Arc<Access>,
    peers: Arc<Peers>,
    shutdown: CancellationToken,
}

/// Accepts on a Unix socket: each caller is known by the kernel's word on
/// its uid and pid (SO_PEERCRED), taken at accept.
async fn accept_unix(l: UnixListener, a: Accepting) {
    loop {
        let accepted = tokio::select! {
            () = a.shutdown.cancelled() => return,
            r = l.accept() => r,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                accept_failed(e).await;
                continue;
            }
        };
        let Ok(cred) = stream.peer_cred() else {
            warn!("dropped a Unix-socket connection: no peer credentials");
            continue;
        };
        let peer = Peer::Unix {
            uid: cred.uid(),
            pid: cred.pid(),
        };
        // Unix peers never count against the TCP cap, so this admits always.
        let trusted = a.access.trusts(&peer, None);
        let Ok(slot) = a.peers.admit(PeerKey::Uid(cred.uid()), trusted) else {
            continue;
        };
        // Any :authority a client sends over the socket is fine (see
        // authority.rs).
        let stream = super::authority::AnyAuthority::new(stream);
        if a.tx.send(Ok(Conn::new(stream, peer, slot))).await.is_err() {
            return;
        }
    }
}

/// Accepts on TCP: each connection takes its place among the peers first,
/// then goes to the server as it is, or through a TLS handshake of its own.
async fn accept_tcp(l: TcpListener, a: Accepting) {
    loop {
        let accepted = tokio::select! {
            () = a.shutdown.cancelled() => return,
            r = l.accept() => r,
        };
        let (stream, addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                accept_failed(e).await;
                continue;
            }
        };
        let Ok(slot) = a.peers.admit(PeerKey::ip(addr.ip()), false) else {
            debug!(%addr, "refused a TCP connection: every place is taken by authenticated ones");
            continue;
        };
        // gRPC's small frames must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let Some(tls) = a.access.tls() else {
            let peer = Peer::Tcp { addr };
            if a.tx.send(Ok(Conn::new(stream, peer, slot))).await.is_err() {
                return;
            }
            continue;
        };
        tokio::spawn(handshake(tls, stream, addr, slot, a.clone()));
    }
}

/// One TLS handshake, given up when it takes longer than
/// [`HANDSHAKE_TIMEOUT`] or when newer connections need its place.
async fn handshake(
    tls: Arc<tokio_rustls::rustls::ServerConfig>,
    stream: tokio::net::TcpStream,
    addr: SocketAddr,
    slot: ConnSlot,
    a: Accepting,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
    let stream = tokio::select! {
        () = slot.closed() => {
            debug!(%addr, "TLS handshake closed for newer connections");
            return;
        }
        h = handshake => match h {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                debug!(%addr, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                debug!(%addr, "TLS handshake timed out");
                return;
            }
        },
    };
    let client_names = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| super::tls::client_names(c).into());
    let peer = Peer::Tls { addr, client_names };
    if a.access.trusts(&peer, None) {
        slot.conn().trust();
    }
    let _ = a.tx.send(Ok(Conn::new(stream, peer, slot))).await;
}

/// Out of fds and the like: say so and back off, never end the listener.
async fn accept_failed(e: io::Error) {
    warn!(error = %e, "accept failed; retrying in 100ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[cfg(test)]
mod tests {
    //! Real sockets in temp dirs: what is at the path before and after a
    //! bind, its mode and group, and who the accept loops say called.
    use super::*;
    use crate::config::Config;
    use tokio_stream::StreamExt;
    use tonic::transport::server::Connected;

    fn ino(path: &Path) -> u64 {
        std::fs::symlink_metadata(path).unwrap().ino()
    }

    /// The error binding at `path` must give.
    fn refused(path: &Path) -> String {
        match bind_unix(path, None) {
            Ok(_) => panic!("bound at '{}' over what was there", path.display()),
            Err(e) => format!("{e:#}"),
        }
    }

    #[tokio::test]
    async fn the_socket_is_owner_only_and_the_dir_it_was_bound_in_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/obhostd.sock");
        let (_listener, bound) = bind_unix(&path, None).expect("bind");
        let m = std::fs::symlink_metadata(&path).unwrap();
        assert!(m.file_type().is_socket());
        assert_eq!(m.mode() & 0o777, 0o600);
        assert_eq!(m.ino(), bound);
        let names: Vec<_> = std::fs::read_dir(dir.path().join("run"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["obhostd.sock"], "left beside the socket");
    }

    #[tokio::test]
    async fn a_socket_with_a_group_is_0660_and_that_groups() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: needs root to give a socket another group");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("obhostd.sock");
        let _bound = bind_unix(&path, Some(4242)).expect("bind");
        let m = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(m.mode() & 0o777, 0o660);
        assert_eq!(m.gid(), 4242);
    }

    #[tokio::test]
    async fn a_socket_nobody_answers_on_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("obhostd.sock");
        // What a daemon killed with SIGKILL leaves.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let stale = ino(&path);
        let (listener, bound) = bind_unix(&path, None).expect("replaces a stale socket");
        assert_ne!(bound, stale);
        let _client = tokio::net::UnixStream::connect(&path).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("the new listener accepts")
            .unwrap();
    }

    #[tokio::test]
    async fn a_socket_someone_answers_on_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("obhostd.sock");
        let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let before = ino(&path);
        let err = refused(&path);
        assert!(err.contains("something answers there"), "{err}");
        assert_eq!(ino(&path), before, "the live socket was replaced");
        // And it still takes connections.
        let _client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        live.set_nonblocking(true).unwrap();
        assert!(live.accept().is_ok());
    }

    #[tokio::test]
    async fn a_file_or_a_symlink_at_the_path_is_never_removed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file.sock");
        std::fs::write(&file, "someone's data").unwrap();
        let err = refused(&file);
        assert!(err.contains("a file or directory is there"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "someone's data");

        // A link to a dead socket: looks stale through the link, and is
        // still refused, link and target kept.
        let target = dir.path().join("target.sock");
        drop(std::os::unix::net::UnixListener::bind(&target).unwrap());
        let link = dir.path().join("link.sock");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = refused(&link);
        assert!(err.contains("a symlink is there"), "{err}");
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(
            std::fs::symlink_metadata(&target)
                .unwrap()
                .file_type()
                .is_socket()
        );
    }

    #[tokio::test]
    async fn at_stop_a_socket_is_removed_only_while_it_is_ours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("obhostd.sock");
        let addrs = [ListenAddr::Unix(path.clone())];
        let local = LocalAccess::default();
        let ours = bind(&addrs, &local, false).await.expect("bind");
        assert_eq!(ours.addrs(), [format!("unix:{}", path.display())]);
        // A newer daemon has taken the path.
        std::fs::remove_file(&path).unwrap();
        let newer = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let newers = ino(&path);
        ours.remove_sockets();
        assert!(path.exists(), "removed a newer daemon's socket");
        assert_eq!(ino(&path), newers);
        drop(newer);

        let ours = bind(&addrs, &local, false).await.expect("bind again");
        ours.remove_sockets();
        assert!(!path.exists(), "our own socket was left behind");
    }

    #[tokio::test]
    async fn callers_are_known_by_what_the_kernel_says_and_shutdown_ends_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("obhostd.sock");
        let addrs = [
            ListenAddr::Unix(path.clone()),
            ListenAddr::Tcp("127.0.0.1:0".parse().unwrap()),
        ];
        let mut listeners = bind(&addrs, &LocalAccess::default(), false)
            .await
            .expect("bind");
        let tcp: SocketAddr = listeners.addrs()[1].parse().unwrap();
        let access = Arc::new(Access::load(&Config::default()).unwrap());
        let peers = Peers::new(super::super::peers::Limits::default());
        let shutdown = CancellationToken::new();
        let mut conns = incoming(&mut listeners, access, peers, shutdown.clone());
        let mut next = async || {
            tokio::time::timeout(Duration::from_secs(5), conns.next())
                .await
                .expect("a connection within 5 s")
                .expect("the stream is open")
                .expect("accepted")
                .connect_info()
                .peer
        };

        let _unix = tokio::net::UnixStream::connect(&path).await.unwrap();
        match next().await {
            Peer::Unix { uid, pid } => {
                assert_eq!(uid, nix::unistd::geteuid().as_raw());
                assert_eq!(pid, Some(std::process::id() as i32));
            }
            other => panic!("a Unix caller seen as {other:?}"),
        }
        let client = tokio::net::TcpStream::connect(tcp).await.unwrap();
        match next().await {
            Peer::Tcp { addr } => assert_eq!(addr, client.local_addr().unwrap()),
            other => panic!("a TCP caller seen as {other:?}"),
        }

        shutdown.cancel();
        let end = tokio::time::timeout(Duration::from_secs(5), conns.next())
            .await
            .expect("the stream did not end at shutdown");
        assert!(end.is_none(), "a connection after shutdown");
    }
}
