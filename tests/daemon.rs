//! The daemon as systemd and operators meet it: listen policy, health,
//! reflection, sd_notify, graceful shutdown, auth, host facts.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use obhost::proto::v1 as pb;
use tonic::Code;

#[test]
fn tcp_listen_is_refused_without_auth() {
    let out = std::process::Command::new(OBHOSTD)
        .args(["--listen", "0.0.0.0:0", "--state-dir"])
        .arg(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to listen on '0.0.0.0:0'"), "{err}");
    assert!(
        err.contains("set [auth] token_file or [tls] client_ca_file"),
        "says what to do: {err}"
    );
}

#[test]
fn a_bad_config_names_the_file_and_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("obhostd.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:0\"\nallowed_root = [\"/home\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(OBHOSTD)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("allowed_root"), "{err}");
}

/// Off systemd (these machines: PID 1 is not systemd), the startup log says
/// once where observers will run instead of scopes.
#[tokio::test]
async fn without_systemd_the_startup_log_says_there_are_no_scopes() {
    let d = Daemon::start();
    let _ = d.channel().await;
    let said = "observers and agent commands run in obhostd's own cgroup";
    let log = d.log_text();
    if std::path::Path::new("/run/systemd/system").is_dir() {
        eprintln!("SKIPPED: this host runs systemd as PID 1 (tests/systemd.rs covers scopes)");
        return;
    }
    assert_eq!(log.matches(said).count(), 1, "{log}");
    assert!(log.contains("systemd is not PID 1 here"), "{log}");
}

#[tokio::test]
async fn health_reports_serving_for_the_host_agent() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let d = Daemon::start();
    let mut health = HealthClient::new(d.channel().await);
    for service in ["obhost.v1.HostAgent", ""] {
        let resp = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.status(), ServingStatus::Serving, "service {service:?}");
    }
}

/// The service names reflection lists, asked in reflection version `$v`
/// (`v1`, or `v1alpha` as older tools ask); the two differ only in types.
macro_rules! listed_services {
    ($v:ident, $channel:expr) => {{
        use tonic_reflection::pb::$v::ServerReflectionRequest;
        use tonic_reflection::pb::$v::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$v::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$v::server_reflection_response::MessageResponse;
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = ServerReflectionClient::new($channel)
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .unwrap()
            .into_inner();
        let resp = stream.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
            panic!("unexpected reflection answer: {resp:?}");
        };
        let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        names.sort();
        names
    }};
}

/// Reflection v1 and v1alpha (grpcurl, Python's grpcio-reflection) list the
/// same services: the HostAgent and health, never StepReporter, which is
/// what obhostd calls, not what it serves.
#[tokio::test]
async fn reflection_lists_the_host_agent_in_v1_and_v1alpha() {
    let d = Daemon::start();
    let names = listed_services!(v1, d.channel().await);
    assert!(
        names.contains(&"obhost.v1.HostAgent".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.contains("StepReporter")),
        "{names:?}"
    );
    // Each version lists its own reflection service; the rest must agree.
    let ours = |names: Vec<String>| -> Vec<String> {
        names
            .into_iter()
            .filter(|n| !n.starts_with("grpc.reflection."))
            .collect()
    };
    let alpha = listed_services!(v1alpha, d.channel().await);
    assert_eq!(ours(alpha), ours(names));
}

#[tokio::test]
async fn host_info_comes_from_the_real_host() {
    let d = Daemon::start();
    let host = d
        .client()
        .await
        .get_host_info(pb::GetHostInfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .host
        .unwrap();
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_eq!(host.boot_id, boot_id.trim());
    assert_eq!(
        host.cpus as usize,
        std::thread::available_parallelism()
            .unwrap()
            .get()
            .max(host.cpus as usize)
    );
    assert!(host.memory_total_bytes > host.memory_available_bytes);
    assert!(host.memory_available_bytes > 0);
    assert!(
        host.disks
            .iter()
            .any(|d| d.mount_point == "/" && d.total_bytes > 0)
    );
    assert_eq!(host.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(
        host.hostname,
        nix::unistd::gethostname().unwrap().to_string_lossy()
    );
    assert!(!host.kernel.is_empty());
}

// Multi-threaded: this thread blocks on the notify socket, and the client's
// connection must still answer obhostd's GOAWAY, or the drain waits out
// shutdown_timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd_notify_ready_after_listening_watchdog_and_stopping() {
    let tmp = tempfile::tempdir().unwrap();
    let sock_path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut d = Daemon::start_with(Options {
        env: vec![
            ("NOTIFY_SOCKET".into(), sock_path.display().to_string()),
            ("WATCHDOG_USEC".into(), "200000".into()),
        ],
        ..Options::default()
    });
    let mut buf = [0u8; 256];
    let recv = |buf: &mut [u8]| -> String {
        let n = sock.recv(buf).expect("a notify message");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = recv(&mut buf);
    assert_eq!(first.trim(), "READY=1");
    // READY means it answers: the port is bound and state loaded.
    d.client()
        .await
        .list_steps(pb::ListStepsRequest::default())
        .await
        .unwrap();
    // Watchdog at half of 200ms: several pets in a second.
    let start = Instant::now();
    let mut pets = 0;
    let mut status = None;
    while start.elapsed() < Duration::from_millis(600) {
        let m = recv(&mut buf);
        if m.trim() == "WATCHDOG=1" {
            pets += 1;
        } else if let Some(s) = m.trim().strip_prefix("STATUS=") {
            status = Some(s.to_string());
        }
    }
    assert!(pets >= 3, "only {pets} watchdog messages in 600ms");
    // `systemctl status` shows what the daemon is doing.
    assert_eq!(
        status.as_deref(),
        Some("0 steps running; 0 of 0 observers obhostd started are up")
    );
    d.signal(Signal::SIGTERM);
    let mut saw_stopping = false;
    for _ in 0..50 {
        match sock.recv(&mut buf) {
            Ok(n) if String::from_utf8_lossy(&buf[..n]).trim() == "STOPPING=1" => {
                saw_stopping = true;
                break;
            }
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    assert!(saw_stopping, "no STOPPING=1");
    let status = d
        .wait_exit(Duration::from_secs(10))
        .expect("exit after SIGTERM");
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn sigterm_ends_open_watches_and_exits_within_the_bound() {
    let mut d = Daemon::start_with(Options {
        config: "shutdown_timeout = \"2s\"\n".into(),
        ..Options::default()
    });
    run_test_step(&d, test_step("busy", 60.0)).await;
    let mut watches = Vec::new();
    for _ in 0..3 {
        let mut s = d
            .client()
            .await
            .watch_steps(pb::WatchStepsRequest::default())
            .await
            .unwrap()
            .into_inner();
        s.message().await.unwrap().unwrap();
        watches.push(s);
    }
    let start = Instant::now();
    d.signal(Signal::SIGTERM);
    for mut s in watches {
        let end = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match s.message().await {
                    Ok(Some(_)) => continue,
                    other => return other,
                }
            }
        })
        .await
        .expect("watch stayed open after SIGTERM");
        let status = end.expect_err("watch should end with a status");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains("after_revision="),
            "{}",
            status.message()
        );
    }
    let status = d
        .wait_exit(Duration::from_secs(6))
        .expect("obhostd did not exit");
    assert!(status.success(), "{status}");
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "{:?}",
        start.elapsed()
    );

    // The running step stays RUNNING in the store and is resolved on restart.
    let stopped = Stopped::from_dir(d.state_dir.clone());
    let d = stopped.start();
    let s = get_step(&d, "busy").await;
    assert_eq!(s.state(), pb::StepState::Failed);
    assert_eq!(s.error.unwrap().code, "INTERRUPTED");
}

#[tokio::test]
async fn auth_token_is_required_over_tcp() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, "s3cret-token-0123456789\n").unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let d = Daemon::start_with(Options {
        config: format!("[auth]\ntoken_file = \"{}\"\n", token_file.display()),
        listen: Some(vec!["127.0.0.1:0".into()]),
        ..Options::default()
    });
    let err = d
        .client()
        .await
        .list_steps(pb::ListStepsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    let (code, _, stderr) = obhostctl(Some(&d), &["steps", "list"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("UNAUTHENTICATED"), "{stderr}");
    let (code, stdout, stderr) = obhostctl(
        Some(&d),
        &[
            "--token-file",
            token_file.to_str().unwrap(),
            "steps",
            "list",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("STEP"), "{stdout}");
    assert!(
        !d.log_text().contains("s3cret-token"),
        "the token reached the log"
    );
}

/// READY means "answers with correct state": at the moment systemd gets it,
/// the socket answers, a step stored before answers GetStep, and a step left
/// RUNNING by the previous run is already resolved. Acting on the READY
/// datagram itself (not on the "listening" log line) is what catches a READY
/// sent too early.
#[tokio::test]
async fn ready_is_sent_only_once_state_is_loaded_and_resolved() {
    use obhost::steps::store::Store;
    use obhost::steps::{StepKind, StepRecord, StepSpec, StepState};
    let tmp = tempfile::tempdir().unwrap();
    let state_dir = tmp.path().join("state");
    let now = std::time::SystemTime::now();
    let record = |id: &str, state: StepState, revision: u64| StepRecord {
        spec: StepSpec {
            id: id.into(),
            dag_id: String::new(),
            kind: StepKind::Test,
            name: "seeded".into(),
            timeout: Duration::from_secs(600),
            params: serde_json::json!({
                "run_for": "30s", "fail_code": "", "resumable": false, "progress_updates": 0
            }),
        },
        state,
        attempt: 1,
        revision,
        created_at: now,
        started_at: Some(now),
        finished_at: state.is_terminal().then_some(now),
        deadline: now + Duration::from_secs(600),
        message: "seeded".into(),
        error: None,
        outputs: Default::default(),
        checks: Vec::new(),
    };
    {
        let (store, _) = Store::open(&state_dir).unwrap();
        store
            .put_all(&[
                record("stored-done", StepState::Succeeded, 1),
                record("stored-running", StepState::Running, 2),
            ])
            .unwrap();
    }
    let notify_path = tmp.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let api = format!("unix:{}", tmp.path().join("api.sock").display());
    let opts = Options {
        env: vec![("NOTIFY_SOCKET".into(), notify_path.display().to_string())],
        state_dir: Some(state_dir.clone()),
        listen: Some(vec![api.clone()]),
        ..Options::default()
    };
    let starter = std::thread::spawn(move || Daemon::start_with(opts));
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("READY=1 within 30s");
    assert_eq!(String::from_utf8_lossy(&buf[..n]).trim(), "READY=1");
    // Right now, no retry: the socket must answer and the state be resolved.
    let channel = connect_addr(
        &api,
        tonic::transport::Endpoint::from_static("http://localhost"),
    )
    .await
    .expect("the socket answers when READY is sent");
    let mut client = pb::host_agent_client::HostAgentClient::new(channel);
    let done = client
        .get_step(pb::GetStepRequest {
            step_id: "stored-done".into(),
        })
        .await
        .expect("a stored step answers at READY")
        .into_inner()
        .step
        .unwrap();
    assert_eq!(done.state(), pb::StepState::Succeeded);
    let running = client
        .get_step(pb::GetStepRequest {
            step_id: "stored-running".into(),
        })
        .await
        .expect("GetStep at READY")
        .into_inner()
        .step
        .unwrap();
    assert_eq!(
        running.state(),
        pb::StepState::Failed,
        "resolved before READY: {running:?}"
    );
    assert_eq!(running.error.unwrap().code, "INTERRUPTED");
    drop(starter.join().unwrap());
}

/// obhostd's first log lines up to "listening", with `format` and extra env.
fn first_log_lines(format: &str, env: &[(&str, &str)]) -> Vec<String> {
    use std::io::{BufRead, BufReader};
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(OBHOSTD);
    cmd.arg("--listen")
        .arg(format!("unix:{}", tmp.path().join("s.sock").display()))
        .arg("--state-dir")
        .arg(tmp.path().join("state"))
        .args(["--log-format", format])
        .env_remove("JOURNAL_STREAM")
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        let done = line.contains("listening");
        lines.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    lines
}

/// Off a terminal no colour codes; under journald no timestamp of our own
/// (the journal stamps each line) and a syslog priority in front.
#[test]
fn logs_fit_a_file_and_the_journal() {
    let plain = first_log_lines("text", &[]);
    assert!(plain.iter().all(|l| !l.contains('\x1b')), "{plain:?}");
    assert!(
        plain[0].starts_with("20"),
        "a file gets timestamps: {plain:?}"
    );
    let journal = first_log_lines("text", &[("JOURNAL_STREAM", "8:12345")]);
    assert!(journal.iter().all(|l| !l.contains('\x1b')), "{journal:?}");
    // Each line opens with its syslog priority, for journald to file it by.
    let body = |l: &String| -> String {
        let rest = l.strip_prefix('<').expect("a priority prefix");
        rest[rest.find('>').unwrap() + 1..].to_string()
    };
    assert!(journal[0].starts_with("<6>"), "INFO is <6>: {journal:?}");
    assert!(
        journal
            .iter()
            .map(body)
            .all(|l| !l.trim_start().starts_with("20")),
        "the journal stamps lines itself: {journal:?}"
    );
    let json = first_log_lines("json", &[("JOURNAL_STREAM", "8:12345")]);
    assert!(json[0].starts_with("<6>"), "{json:?}");
    let first: serde_json::Value = serde_json::from_str(&body(&json[0])).unwrap();
    assert!(first.get("timestamp").is_none(), "{first}");
}

/// `obhostd --check-config` says what would run, or why it would not start,
/// without touching a state dir or binding a port.
#[test]
fn check_config_validates_without_starting() {
    let tmp = tempfile::tempdir().unwrap();
    let check = |config: &str| {
        let path = tmp.path().join("obhostd.toml");
        std::fs::write(&path, config).unwrap();
        let out = std::process::Command::new(OBHOSTD)
            .arg("--config")
            .arg(&path)
            .arg("--state-dir")
            .arg(tmp.path().join("state"))
            .arg("--check-config")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = check("");
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("config OK: listen unix:"), "{out}");
    assert!(
        !tmp.path().join("state").exists(),
        "a check creates nothing"
    );
    let (code, _, err) = check("[report]\nendpoint = \"http://192.0.2.1:62950\"\n");
    assert_eq!(code, Some(2));
    assert!(
        err.contains(
            "plain http to another host; use https:// with ca_file, or a Unix socket (unix:/path)"
        ),
        "{err}"
    );
    let missing = tmp.path().join("no-such-ca.pem");
    let (code, _, err) = check(&format!(
        "[report]\nendpoint = \"https://ocp.example:62950\"\nca_file = \"{}\"\n",
        missing.display()
    ));
    assert_eq!(code, Some(2));
    assert!(err.contains("no-such-ca.pem"), "{err}");
}

/// `RUST_LOG=obhost=debug` tells each step's story: the driver starting with
/// its key and deadline, every Prepare check, where the observer was looked
/// for, what was spawned (as whom, where), each signal sent, and the step's
/// own progress, once per change.
#[tokio::test]
async fn debug_logs_follow_each_step() {
    let d = Daemon::start_with(Options {
        env: vec![("RUST_LOG".into(), "obhost=debug".into())],
        ..Options::default()
    });
    let home = Home::new();
    let mut spec = home.spec();
    spec.parameters.insert("memory_limit".into(), "2G".into());
    d.client()
        .await
        .prepare(pb::PrepareRequest {
            meta: Some(meta("dbg-prepare")),
            observer: Some(spec.clone()),
            create_dirs: true,
            ..Default::default()
        })
        .await
        .unwrap();
    wait_terminal(&d, "dbg-prepare").await;
    spec.env.insert("FAKE_OBSERVER_USER".into(), "ocp".into());
    spec.env
        .insert("FAKE_OBSERVER_PASSWORD".into(), "right".into());
    let (_, pid) = start_ok(&d, "dbg-start", spec).await;
    // A wait that is refused over and over: its progress says so once.
    d.client()
        .await
        .wait_observer_active(pb::WaitObserverActiveRequest {
            meta: Some(pb::StepMeta {
                step_id: "dbg-wait".into(),
                timeout: Some(secs(1.0)),
                ..Default::default()
            }),
            home_path: home.path().display().to_string(),
            mysql_port: home.mysql_port as u32,
            user: "ocp".into(),
            password: "wrong".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let waited = wait_terminal(&d, "dbg-wait").await;
    assert_eq!(waited.state(), pb::StepState::TimedOut, "{waited:#?}");
    let stop = stop_observer(&d, "dbg-stop", home.path(), 5.0, false).await;
    assert!(!stop.id.is_empty());
    let stopped = wait_terminal(&d, "dbg-stop").await;
    assert_eq!(stopped.state(), pb::StepState::Succeeded, "{stopped:#?}");

    let events: Vec<serde_json::Value> = d
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let debug = |message: &str| -> Vec<&serde_json::Value> {
        events
            .iter()
            .filter(|e| e["level"] == "DEBUG" && e["message"] == message)
            .collect()
    };
    let field = |e: &serde_json::Value, k: &str| match &e[k] {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };

    let drivers = debug("step driver started");
    for id in ["dbg-prepare", "dbg-start", "dbg-stop"] {
        assert!(
            drivers.iter().any(|e| field(e, "step") == id),
            "no driver event for {id}: {drivers:?}"
        );
    }
    let checks = debug("check evaluated");
    assert!(
        checks.iter().any(|e| field(e, "check") == "port.mysql"),
        "{checks:?}"
    );
    assert!(!debug("looked for the observer").is_empty());
    let spawned = debug("spawned");
    assert!(
        spawned
            .iter()
            .any(|e| field(e, "command").contains(FAKE_OBSERVER)
                && field(e, "cwd") == home.path().display().to_string()),
        "{spawned:?}"
    );
    let signals = debug("signalling");
    assert!(
        signals
            .iter()
            .any(|e| field(e, "pid") == pid.to_string() && field(e, "signal") == "SIGTERM"),
        "{signals:?}"
    );
    let progress: Vec<String> = debug("step progress")
        .iter()
        .filter(|e| field(e, "step") == "dbg-stop")
        .map(|e| field(e, "detail"))
        .collect();
    assert!(
        progress.iter().any(|m| m.starts_with("sent SIGTERM")),
        "{progress:?}"
    );
    // A message comes with a stage the first time ("step stage"), as
    // progress within it after ("step progress").
    let refused: Vec<String> = events
        .iter()
        .filter(|e| e["message"] == "step stage" || e["message"] == "step progress")
        .filter(|e| field(e, "step") == "dbg-wait")
        .map(|e| field(e, "detail"))
        .collect();
    assert!(refused.iter().any(|m| m.contains("refused")), "{refused:?}");
    let mut unique = refused.clone();
    unique.dedup();
    assert_eq!(unique, refused, "a repeated refusal is logged once");
}
