//! Who may call obhostd, tried as an attacker would: other local users on the
//! socket, TCP without a token, TLS clients without the right certificate; and
//! what an operator does: SIGHUP to rotate tokens and certificates. Everything
//! goes through the real binaries, real sockets and, for a non-loopback address,
//! a network namespace the test makes.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::tls::Ca;
use common::*;
use nix::sys::signal::Signal;
use obhost::proto::v1 as pb;
use obhost::proto::v1::host_agent_client::HostAgentClient;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A user made for one test (and its group of the same name), removed after.
struct TestUser {
    name: String,
}

impl TestUser {
    fn new(tag: &str) -> TestUser {
        let name = format!("obt{tag}{}", std::process::id() % 100_000);
        // Other tests may be adding users: /etc/passwd's lock is retried.
        for _ in 0..50 {
            let out = user_db_locked(|| {
                Command::new("useradd")
                    .args(["-M", "-U", "-s", "/usr/sbin/nologin", &name])
                    .output()
                    .expect("useradd (tests run as root)")
            });
            if out.status.success() {
                return TestUser { name };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("useradd {name} kept failing");
    }

    /// obhostctl run as this user, uid and gid only (no supplementary groups).
    fn obhostctl(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new("setpriv")
            .args([
                "--reuid",
                &self.name,
                "--regid",
                &self.name,
                "--clear-groups",
            ])
            .arg(OBHOSTCTL)
            .args(args)
            .env_remove("OBHOST_ADDR")
            .output()
            .expect("setpriv");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn uid(&self) -> u32 {
        nix::unistd::User::from_name(&self.name)
            .unwrap()
            .unwrap()
            .uid
            .as_raw()
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        for _ in 0..50 {
            if user_db_locked(|| Command::new("userdel").arg(&self.name).output())
                .is_ok_and(|o| o.status.success())
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn socket_path(d: &Daemon) -> PathBuf {
    PathBuf::from(d.addr.strip_prefix("unix:").expect("a unix: address"))
}

/// Lets other users reach the socket's directory (the socket's own mode decides).
fn open_dir_of(path: &Path) {
    std::fs::set_permissions(
        path.parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
}

fn write_secret(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Inodes of the TCP sockets `pid` listens on (from /proc, nothing assumed).
fn tcp_listen_inodes(pid: i32) -> Vec<u64> {
    let mut listening = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table).unwrap().lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.get(3) == Some(&"0A") {
                listening.push(f[9].parse::<u64>().unwrap());
            }
        }
    }
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let link = std::fs::read_link(e.path()).ok()?;
            let s = link.to_str()?;
            s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .filter(|ino| listening.contains(ino))
        .collect()
}

fn wait_log(d: &Daemon, needle: &str) {
    let end = Instant::now() + Duration::from_secs(10);
    while !d.log_text().contains(needle) {
        assert!(
            Instant::now() < end,
            "no '{needle}' in the log:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---- the Unix socket -------------------------------------------------------

#[test]
fn the_default_is_a_root_only_socket_and_nothing_on_tcp() {
    let default = Path::new("/run/obhost/obhostd.sock");
    if std::os::unix::net::UnixStream::connect(default).is_ok() {
        eprintln!(
            "SKIPPED: an obhostd already answers on {}",
            default.display()
        );
        return;
    }
    // No --listen and no config: the built-in default.
    let d = Daemon::start_with(Options {
        listen: Some(vec![]),
        ..Options::default()
    });
    assert_eq!(d.addr, "unix:/run/obhost/obhostd.sock");
    let meta = std::fs::symlink_metadata(default).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600, "socket mode");
    assert_eq!(meta.uid(), 0);
    assert!(
        tcp_listen_inodes(d.pid()).is_empty(),
        "obhostd listens on TCP by default"
    );
    // obhostctl's default address is the same socket.
    let (code, out, err) = obhostctl(None, &["host"]);
    assert_eq!(code, 0, "{out}{err}");
    // Another user cannot even open it.
    let user = TestUser::new("d");
    let (code, out, err) = user.obhostctl(&["--addr", "unix:/run/obhost/obhostd.sock", "host"]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("ermission denied"), "{err}");
    // A clean stop removes the socket it made.
    let mut d = d;
    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(15)).is_some());
    assert!(
        std::fs::symlink_metadata(default).is_err(),
        "socket left behind"
    );
}

#[test]
fn other_users_are_refused_by_uid_until_listed_in_local_users() {
    let user = TestUser::new("p");
    // 0600: the user cannot open the socket at all.
    let d = Daemon::start();
    let sock = socket_path(&d);
    open_dir_of(&sock);
    assert_eq!(std::fs::metadata(&sock).unwrap().mode() & 0o777, 0o600);
    let addr = d.addr.clone();
    let (code, out, err) = user.obhostctl(&["--addr", &addr, "host"]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("[auth] local_users"), "says what to do: {err}");
    drop(d);

    // socket_group lets the user open it; SO_PEERCRED still refuses its uid.
    let d = Daemon::start_with(Options {
        config: format!("[auth]\nsocket_group = \"{}\"\n", user.name),
        ..Options::default()
    });
    let sock = socket_path(&d);
    open_dir_of(&sock);
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660);
    let gid = nix::unistd::Group::from_name(&user.name)
        .unwrap()
        .unwrap()
        .gid
        .as_raw();
    assert_eq!(meta.gid(), gid);
    let (code, out, err) = user.obhostctl(&["--addr", &d.addr, "steps", "list"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("PERMISSION_DENIED"), "{err}");
    assert!(err.contains(&format!("uid {}", user.uid())), "{err}");
    assert!(err.contains("[auth] local_users"), "{err}");
    // Health is behind the same check.
    let (code, _, err) = user.obhostctl(&["--addr", &d.addr, "host"]);
    assert_eq!(code, 1, "{err}");
    drop(d);

    // Listed: admitted.
    let d = Daemon::start_with(Options {
        config: format!(
            "[auth]\nsocket_group = \"{0}\"\nlocal_users = [\"{0}\"]\n",
            user.name
        ),
        ..Options::default()
    });
    open_dir_of(&socket_path(&d));
    let (code, out, err) = user.obhostctl(&["--addr", &d.addr, "steps", "list"]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn an_unknown_local_user_is_a_config_error() {
    let tmp = tempfile::tempdir().unwrap();
    let err = Daemon::spawn(
        Options {
            config: "[auth]\nlocal_users = [\"no-such-user-obt\"]\n".into(),
            ..Options::default()
        },
        tmp.path().join("state"),
        None,
    )
    .err()
    .expect("refused");
    assert!(
        err.contains("'no-such-user-obt', which is not a user"),
        "{err}"
    );
}

#[test]
fn a_planted_file_or_symlink_at_the_socket_path_is_never_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let victim = tmp.path().join("victim");
    std::fs::write(&victim, "keep me").unwrap();
    for (name, plant) in [("file.sock", None), ("link.sock", Some(victim.clone()))] {
        let path = tmp.path().join(name);
        match &plant {
            None => std::fs::write(&path, "not a socket").unwrap(),
            Some(target) => std::os::unix::fs::symlink(target, &path).unwrap(),
        }
        let err = Daemon::spawn(
            Options {
                listen: Some(vec![format!("unix:{}", path.display())]),
                ..Options::default()
            },
            tmp.path().join("state"),
            None,
        )
        .err()
        .expect("refused");
        assert!(err.contains("not a socket"), "{err}");
        assert!(
            std::fs::symlink_metadata(&path).is_ok(),
            "{name} was removed"
        );
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
}

#[tokio::test]
async fn a_stale_socket_is_replaced_and_a_live_one_is_not() {
    let d = Daemon::start();
    let sock = socket_path(&d);
    // Live: a second daemon on the same path is refused and the first still answers.
    let err = Daemon::spawn(
        Options {
            listen: Some(vec![d.addr.clone()]),
            ..Options::default()
        },
        sock.parent().unwrap().join("state2"),
        None,
    )
    .err()
    .expect("refused");
    assert!(err.contains("another obhostd running"), "{err}");
    d.client()
        .await
        .get_host_info(pb::GetHostInfoRequest {})
        .await
        .unwrap();
    // Stale (kill -9 leaves the file): the next daemon takes the path over.
    let d = d.restart_after_kill9();
    d.client()
        .await
        .get_host_info(pb::GetHostInfoRequest {})
        .await
        .unwrap();
}

// ---- files ----------------------------------------------------------------

#[test]
fn a_token_file_others_can_read_or_that_another_user_owns_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let token = tmp.path().join("token");
    std::fs::write(&token, "0123456789abcdef0123\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = format!("[auth]\ntoken_file = \"{}\"\n", token.display());
    let start = || {
        Daemon::spawn(
            Options {
                config: config.clone(),
                ..Options::default()
            },
            tmp.path().join("state"),
            None,
        )
        .err()
        .expect("refused")
    };
    let err = start();
    assert!(
        err.contains(&format!(
            "is readable by group/others (mode 0644); run `chmod 600 {}`",
            token.display()
        )),
        "{err}"
    );
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let user = TestUser::new("t");
    nix::unistd::chown(&token, Some(user.uid().into()), None).unwrap();
    let err = start();
    assert!(
        err.contains(&format!("is owned by uid {}", user.uid())),
        "{err}"
    );
    assert!(err.contains("run `chown 0"), "{err}");
}

#[tokio::test]
async fn the_state_dir_is_0700_and_its_files_0600() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = Daemon::start_with(Options {
        state_dir: Some(state.clone()),
        ..Options::default()
    });
    run_test_step(&d, test_step("perm", 0.0)).await;
    wait_terminal(&d, "perm").await;
    assert_eq!(std::fs::metadata(&state).unwrap().mode() & 0o777, 0o700);
    for entry in std::fs::read_dir(&state).unwrap().flatten() {
        let mode = entry.metadata().unwrap().mode() & 0o777;
        assert_eq!(
            mode & 0o077,
            0,
            "{} is mode {mode:o}",
            entry.path().display()
        );
    }
    assert!(state.join("obhostd.redb").exists());
}

#[test]
fn without_home_a_non_root_daemon_asks_for_a_state_dir() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(OBHOSTD)
        .arg("--listen")
        .arg(format!("unix:{}", tmp.path().join("s.sock").display()))
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pass --state-dir DIR"), "{err}");
}

// ---- size -----------------------------------------------------------------

#[tokio::test]
async fn a_request_over_1_mib_is_refused_and_the_daemon_lives() {
    let d = Daemon::start();
    let err = d
        .client()
        .await
        .get_observer(pb::GetObserverRequest {
            home_path: format!("/{}", "a".repeat(1 << 20)),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(err.message().contains("too large"), "{err:?}");
    d.client()
        .await
        .get_host_info(pb::GetHostInfoRequest {})
        .await
        .unwrap();
}

// ---- TCP and the token ----------------------------------------------------

#[test]
fn tcp_without_authentication_is_refused_even_on_loopback() {
    let tmp = tempfile::tempdir().unwrap();
    let err = Daemon::spawn(
        Options {
            listen: Some(vec!["127.0.0.1:0".into()]),
            ..Options::default()
        },
        tmp.path().join("state"),
        None,
    )
    .err()
    .expect("refused");
    assert!(
        err.contains("refusing to listen on '127.0.0.1:0' over TCP without authentication"),
        "{err}"
    );
    assert!(
        err.contains("set [auth] token_file or [tls] client_ca_file"),
        "{err}"
    );
}

#[test]
fn non_loopback_tcp_without_tls_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let token = tmp.path().join("token");
    write_secret(&token, "0123456789abcdef0123\n");
    let err = Daemon::spawn(
        Options {
            config: format!("[auth]\ntoken_file = \"{}\"\n", token.display()),
            listen: Some(vec!["0.0.0.0:0".into()]),
            ..Options::default()
        },
        tmp.path().join("state"),
        None,
    )
    .err()
    .expect("refused");
    assert!(
        err.contains("refusing to listen on '0.0.0.0:0' without TLS"),
        "{err}"
    );
    assert!(err.contains("set [tls] cert_file and key_file"), "{err}");
}

async fn list_with_token(d: &Daemon, token: Option<&str>) -> Result<(), tonic::Status> {
    let mut client = d.client().await;
    let mut req = tonic::Request::new(pb::ListStepsRequest::default());
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    client.list_steps(req).await.map(|_| ())
}

#[tokio::test]
async fn sighup_rotates_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let token = tmp.path().join("token");
    let old = "old-token-0123456789";
    let new = "new-token-9876543210";
    write_secret(&token, old);
    let d = Daemon::start_with(Options {
        config: format!("[auth]\ntoken_file = \"{}\"\n", token.display()),
        listen: Some(vec!["127.0.0.1:0".into()]),
        ..Options::default()
    });
    assert_eq!(
        list_with_token(&d, None).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert_eq!(
        list_with_token(&d, Some("wrong-token-000000000"))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    list_with_token(&d, Some(old)).await.unwrap();

    write_secret(&token, new);
    d.signal(Signal::SIGHUP);
    wait_log(&d, "reloaded [auth] token_file");
    assert_eq!(
        list_with_token(&d, Some(old)).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    list_with_token(&d, Some(new)).await.unwrap();

    // A broken file keeps the current token (and says so).
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    d.signal(Signal::SIGHUP);
    wait_log(&d, "keeping the previous token");
    list_with_token(&d, Some(new)).await.unwrap();
    assert!(!d.log_text().contains(old) && !d.log_text().contains(new));
}

// ---- TLS --------------------------------------------------------------------

/// A TLS daemon's files in a temp dir: server cert for `server_names`, client CA.
struct TlsFiles {
    dir: tempfile::TempDir,
}

impl TlsFiles {
    fn new(server_ca: &Ca, server_names: &[&str], client_ca: &Ca) -> TlsFiles {
        let t = TlsFiles {
            dir: tempfile::tempdir().unwrap(),
        };
        t.set_server(server_ca, server_names);
        std::fs::write(t.path("client-ca.pem"), client_ca.pem()).unwrap();
        t
    }

    fn set_server(&self, ca: &Ca, names: &[&str]) {
        let (cert, key) = ca.leaf("obhostd", names, false);
        std::fs::write(self.path("server.pem"), cert).unwrap();
        write_secret(&self.path("server.key"), &key);
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn config(&self, allowed: &[&str]) -> String {
        format!(
            "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\nallowed_clients = {:?}\n",
            self.path("server.pem").display(),
            self.path("server.key").display(),
            self.path("client-ca.pem").display(),
            allowed
        )
    }

    /// Writes a client identity to files (for obhostctl and Python).
    fn client_files(&self, name: &str, id: &(String, String)) -> (PathBuf, PathBuf) {
        let cert = self.path(&format!("{name}.pem"));
        let key = self.path(&format!("{name}.key"));
        std::fs::write(&cert, &id.0).unwrap();
        write_secret(&key, &id.1);
        (cert, key)
    }
}

async fn tls_channel(
    addr: &str,
    ca_pem: &str,
    id: Option<&(String, String)>,
) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = id {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

/// GetHostInfo over a fresh TLS connection: Ok, or what refused it.
async fn tls_call(addr: &str, ca_pem: &str, id: Option<&(String, String)>) -> Result<(), String> {
    let channel = tls_channel(addr, ca_pem, id).await?;
    HostAgentClient::new(channel)
        .get_host_info(pb::GetHostInfoRequest {})
        .await
        .map(|_| ())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

fn tls_daemon(files: &TlsFiles, allowed: &[&str]) -> Daemon {
    Daemon::start_with(Options {
        config: files.config(allowed),
        listen: Some(vec!["127.0.0.1:0".into()]),
        ..Options::default()
    })
}

#[tokio::test]
async fn mtls_admits_only_current_certificates_from_the_client_ca() {
    let ca = Ca::new("obhost test ca");
    let other = Ca::new("someone else's ca");
    let files = TlsFiles::new(&ca, &["localhost", "127.0.0.1"], &ca);
    let d = tls_daemon(&files, &[]);
    let good = ca.leaf("orchestrator", &["orchestrator.test"], false);
    let foreign = other.leaf("orchestrator", &["orchestrator.test"], false);
    let expired = ca.leaf("orchestrator", &["orchestrator.test"], true);

    tls_call(&d.addr, &ca.pem(), Some(&good)).await.unwrap();
    for (what, id) in [
        ("no certificate", None),
        ("a certificate from another CA", Some(&foreign)),
        ("an expired certificate", Some(&expired)),
    ] {
        let r = tls_call(&d.addr, &ca.pem(), id).await;
        assert!(r.is_err(), "a client with {what} was admitted");
    }
    // Plain HTTP/2 on the TLS port gets nowhere either.
    let plain = Endpoint::from_shared(format!("http://{}", d.addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await;
    if let Ok(ch) = plain {
        assert!(
            HostAgentClient::new(ch)
                .get_host_info(pb::GetHostInfoRequest {})
                .await
                .is_err()
        );
    }

    // obhostctl, with and without its certificate.
    let (cert, key) = files.client_files("good", &good);
    let ca_file = files.path("ca-for-client.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let https = format!("https://localhost:{}", d.addr.rsplit(':').next().unwrap());
    let (code, out, err) = obhostctl(
        None,
        &[
            "--addr",
            &https,
            "--ca-file",
            ca_file.to_str().unwrap(),
            "--cert-file",
            cert.to_str().unwrap(),
            "--key-file",
            key.to_str().unwrap(),
            "steps",
            "list",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = obhostctl(
        None,
        &[
            "--addr",
            &https,
            "--ca-file",
            ca_file.to_str().unwrap(),
            "host",
        ],
    );
    assert_ne!(
        code, 0,
        "obhostctl without a certificate was admitted: {out}"
    );
    assert!(!err.is_empty());

    // Python's grpcio, with and without its certificate.
    python_tls(&https, &ca_file, Some((&cert, &key)), true);
    python_tls(&https, &ca_file, None, false);
}

/// GetHostInfo from Python's grpcio over TLS (raw bytes, no stubs needed).
fn python_tls(https: &str, ca: &Path, id: Option<(&Path, &Path)>, expect_ok: bool) {
    let has_grpcio = Command::new("python3")
        .args(["-c", "import grpc"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_grpcio {
        assert!(std::env::var_os("CI").is_none(), "CI must install grpcio");
        eprintln!("SKIPPED: python3 grpcio not installed (pip install grpcio)");
        return;
    }
    let script = r#"
import sys, grpc
target, ca, cert, key = sys.argv[1:5]
read = lambda p: open(p, "rb").read() if p else None
creds = grpc.ssl_channel_credentials(root_certificates=read(ca), private_key=read(key), certificate_chain=read(cert))
channel = grpc.secure_channel(target, creds)
try:
    reply = channel.unary_unary("/obhost.v1.HostAgent/GetHostInfo")(b"", timeout=10)
    assert len(reply) > 0
    print("grpcio: ok")
except grpc.RpcError as e:
    print("grpcio: refused", e.code())
    sys.exit(1)
"#;
    let target = https.trim_start_matches("https://");
    let (cert, key) = id
        .map(|(c, k)| (c.display().to_string(), k.display().to_string()))
        .unwrap_or_default();
    let out = Command::new("python3")
        .args(["-c", script, target, ca.to_str().unwrap(), &cert, &key])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.success(), expect_ok, "{text}");
}

#[tokio::test]
async fn allowed_clients_narrows_by_certificate_name() {
    let ca = Ca::new("obhost test ca");
    let files = TlsFiles::new(&ca, &["localhost"], &ca);
    let d = tls_daemon(&files, &["ocp.example"]);
    let allowed = ca.leaf("ocp", &["ocp.example"], false);
    let other = ca.leaf("intruder", &["intruder.example"], false);
    tls_call(&d.addr, &ca.pem(), Some(&allowed)).await.unwrap();
    let err = tls_call(&d.addr, &ca.pem(), Some(&other))
        .await
        .unwrap_err();
    assert!(err.starts_with("PermissionDenied"), "{err}");
    assert!(
        err.contains("intruder.example"),
        "names the names seen: {err}"
    );
    assert!(err.contains("[tls] allowed_clients"), "{err}");
    // The CN counts too.
    let by_cn = ca.leaf("ocp.example", &[], false);
    tls_call(&d.addr, &ca.pem(), Some(&by_cn)).await.unwrap();
}

#[tokio::test]
async fn sighup_rotates_the_server_certificate_and_steps_survive() {
    let ca1 = Ca::new("server ca 1");
    let ca2 = Ca::new("server ca 2");
    let client_ca = Ca::new("client ca");
    let files = TlsFiles::new(&ca1, &["localhost"], &client_ca);
    let d = tls_daemon(&files, &[]);
    let id = client_ca.leaf("orchestrator", &["orchestrator.test"], false);
    tls_call(&d.addr, &ca1.pem(), Some(&id)).await.unwrap();

    // A step that runs across the reload, started over TLS.
    let channel = tls_channel(&d.addr, &ca1.pem(), Some(&id)).await.unwrap();
    let mut testing =
        obhost::proto::testing::v1::step_testing_client::StepTestingClient::new(channel.clone());
    testing
        .run_test_step(test_step("long", 60.0))
        .await
        .unwrap();

    files.set_server(&ca2, &["localhost"]);
    d.signal(Signal::SIGHUP);
    wait_log(&d, "reloaded [tls] certificate");
    tls_call(&d.addr, &ca2.pem(), Some(&id)).await.unwrap();
    assert!(
        tls_call(&d.addr, &ca1.pem(), Some(&id)).await.is_err(),
        "a new connection still got the old certificate"
    );
    // The daemon and its step carried on; the old connection too.
    let mut client = HostAgentClient::new(channel);
    let s = client
        .get_step(pb::GetStepRequest {
            step_id: "long".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .step
        .unwrap();
    assert_eq!(s.state(), pb::StepState::Running, "{s:?}");

    // A broken key keeps the current certificate.
    std::fs::write(files.path("server.key"), "garbage").unwrap();
    d.signal(Signal::SIGHUP);
    wait_log(&d, "keeping the previous TLS certificate");
    tls_call(&d.addr, &ca2.pem(), Some(&id)).await.unwrap();
}

/// A network namespace with a veth pair: the daemon gets a non-loopback address
/// (10.200.N.1) in the test's own namespace, the client runs in the new one.
struct Netns {
    name: String,
    host_ip: String,
}

impl Netns {
    fn new() -> Option<Netns> {
        let n = std::process::id() % 200 + 20;
        let name = format!("obt-ns-{n}");
        let (a, b) = (format!("obtv{n}a"), format!("obtv{n}b"));
        let host_ip = format!("10.200.{n}.1");
        let ip = |args: &str| {
            Command::new("ip")
                .args(args.split_whitespace())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let _ = ip(&format!("netns del {name}"));
        if !ip(&format!("netns add {name}")) {
            return None;
        }
        let ns = Netns {
            name: name.clone(),
            host_ip: host_ip.clone(),
        };
        let ok = ip(&format!("link add {a} type veth peer name {b}"))
            && ip(&format!("link set {b} netns {name}"))
            && ip(&format!("addr add {host_ip}/30 dev {a}"))
            && ip(&format!("link set {a} up"))
            && ip(&format!("-n {name} addr add 10.200.{n}.2/30 dev {b}"))
            && ip(&format!("-n {name} link set {b} up"))
            && ip(&format!("-n {name} link set lo up"));
        ok.then_some(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair with it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[test]
fn mtls_on_a_non_loopback_address_from_another_network_namespace() {
    let Some(ns) = Netns::new() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root: netns must work"
        );
        eprintln!("SKIPPED: cannot create a network namespace here");
        return;
    };
    let ca = Ca::new("obhost test ca");
    let files = TlsFiles::new(&ca, &[&ns.host_ip], &ca);
    let d = Daemon::start_with(Options {
        config: files.config(&[]),
        listen: Some(vec![format!("{}:0", ns.host_ip)]),
        ..Options::default()
    });
    assert!(d.addr.starts_with(&ns.host_ip), "{}", d.addr);
    let good = ca.leaf("orchestrator", &["orchestrator.test"], false);
    let (cert, key) = files.client_files("ns-client", &good);
    let ca_file = files.path("ca-for-client.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let https = format!("https://{}", d.addr);
    let run = |with_cert: bool| {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.name, OBHOSTCTL, "--addr", &https])
            .arg("--ca-file")
            .arg(&ca_file);
        if with_cert {
            cmd.arg("--cert-file")
                .arg(&cert)
                .arg("--key-file")
                .arg(&key);
        }
        let out = cmd.arg("host").env_remove("OBHOST_ADDR").output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (code, text) = run(true);
    assert_eq!(code, 0, "{text}");
    let (code, text) = run(false);
    assert_ne!(code, 0, "admitted without a certificate: {text}");
}
