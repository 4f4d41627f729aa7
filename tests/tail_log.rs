//! TailObserverLog and `obhostctl observer logs` against the real obhostd: the
//! last lines, errors only, a follow across rotation, streams freed when their
//! client goes or the daemon stops, and the file rules (allowed_roots, links
//! and strangers' files planted by the observer's unprivileged user).

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use obhost::proto::v1 as pb;
use tonic::Code;

fn log_line(level: &str, i: usize) -> String {
    format!(
        "[2026-12-06 03:50:01.{i:06}] {level} [SERVER] line {i} (ob_server.cpp:123) [12345][T1][Y0-0000000000000000-0-0] [lt=5]"
    )
}

/// A home (owned by root, as the tests run) with `log/observer.log` holding
/// `lines`.
fn home_with(lines: &[String]) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::Builder::new()
        .prefix("obhost-tail-")
        .tempdir()
        .unwrap();
    let home = std::fs::canonicalize(t.path()).unwrap();
    std::fs::create_dir(home.join("log")).unwrap();
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(home.join("log/observer.log"), text).unwrap();
    (t, home)
}

fn request(home: &Path, lines: u32, errors_only: bool, follow: bool) -> pb::TailObserverLogRequest {
    pb::TailObserverLogRequest {
        home_path: home.display().to_string(),
        lines,
        errors_only,
        follow,
    }
}

/// Every line of a tail without follow.
async fn tail(d: &Daemon, req: pb::TailObserverLogRequest) -> Result<Vec<String>, tonic::Status> {
    let mut stream = d.client().await.tail_observer_log(req).await?.into_inner();
    let mut lines = Vec::new();
    while let Some(m) = stream.message().await? {
        lines.extend(m.lines);
    }
    Ok(lines)
}

/// Reads a follow until it has `n` lines (or fails the test after 20 s).
async fn take(stream: &mut tonic::Streaming<pb::TailObserverLogResponse>, n: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let end = Instant::now() + Duration::from_secs(20);
    while lines.len() < n {
        let left = end.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, stream.message())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} lines within 20s: {lines:?}", lines.len()))
            .expect("the follow failed")
            .expect("the follow ended");
        lines.extend(m.lines);
    }
    lines
}

#[tokio::test]
async fn the_last_lines_and_errors_only() {
    let d = Daemon::start();
    let levels = ["INFO", "WDIAG", "WARN", "TRACE", "ERROR", "EDIAG", "DEBUG"];
    let all: Vec<String> = (0..300)
        .map(|i| log_line(levels[i % levels.len()], i))
        .collect();
    let (_t, home) = home_with(&all);

    assert_eq!(
        tail(&d, request(&home, 5, false, false)).await.unwrap(),
        all[295..]
    );
    // Unset: 100. More than the limit: capped, here all of them.
    assert_eq!(
        tail(&d, request(&home, 0, false, false)).await.unwrap(),
        all[200..]
    );
    assert_eq!(
        tail(&d, request(&home, 50_000, false, false))
            .await
            .unwrap(),
        all
    );

    let errors: Vec<String> = all
        .iter()
        .filter(|l| {
            [" WARN ", " ERROR ", " EDIAG "]
                .iter()
                .any(|w| l.contains(w))
        })
        .cloned()
        .collect();
    assert_eq!(
        tail(&d, request(&home, 4, true, false)).await.unwrap(),
        errors[errors.len() - 4..]
    );

    // obhostctl: the same lines, -n and --errors, and one JSON document.
    let h = home.display().to_string();
    let (code, out, err) = obhostctl(Some(&d), &["observer", "logs", "--home", &h, "-n", "3"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), all[297..]);
    let (code, out, err) = obhostctl(
        Some(&d),
        &[
            "-o", "json", "observer", "logs", "--home", &h, "-n", "2", "--errors",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect(&out);
    assert_eq!(doc["lines"], serde_json::json!(errors[errors.len() - 2..]));
    // `observer --home` is still GetObserver.
    let (code, out, err) = obhostctl(Some(&d), &["observer", "--home", &h]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("running    false"), "{out}");
}

#[tokio::test]
async fn control_characters_from_the_log_reach_no_terminal() {
    let d = Daemon::start();
    let (_t, home) =
        home_with(&["[2026-12-06 03:50:01.1] ERROR [S] \x1b]0;owned\x07 \x1b[2J".into()]);
    let (code, out, err) = obhostctl(
        Some(&d),
        &["observer", "logs", "--home", &home.display().to_string()],
    );
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains('\x1b') && !out.contains('\x07'), "{out:?}");
    assert!(out.contains("\\u{1b}]0;owned\\u{7}"), "{out}");
}

#[tokio::test]
async fn a_follow_across_rotation_sends_every_line_once_in_order() {
    let d = Daemon::start();
    let first: Vec<String> = (0..5).map(|i| format!("init {i}")).collect();
    let (_t, home) = home_with(&first);
    let log = home.join("log/observer.log");
    let mut stream = d
        .client()
        .await
        .tail_observer_log(request(&home, 100, false, true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(take(&mut stream, 5).await, first);

    // As OceanBase's logger: one fd, appended to; rotation renames the file,
    // a few lines still land in the renamed one after the follow read it to
    // its end (the last without its newline yet), then a new file is created.
    // Each round waits until the follow has the round's lines: two rotations
    // within one poll would rename a file away before it was ever opened
    // (see observer/log.rs), which OceanBase's 256 MiB files never do.
    let mut want = Vec::new();
    let mut got = Vec::new();
    let mut writer = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    for rotation in 1..=3 {
        for i in 0..200 {
            let l = format!("r{rotation} line {i}");
            writeln!(writer, "{l}").unwrap();
            want.push(l);
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
        got.extend(take(&mut stream, want.len() - got.len()).await);
        std::fs::rename(&log, home.join(format!("log/observer.log.{rotation}"))).unwrap();
        writeln!(writer, "r{rotation} after the rename").unwrap();
        write!(writer, "r{rotation} unterminated").unwrap();
        want.push(format!("r{rotation} after the rename"));
        want.push(format!("r{rotation} unterminated"));
        writer = std::fs::OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&log)
            .unwrap();
    }
    writeln!(writer, "last").unwrap();
    want.push("last".into());
    got.extend(take(&mut stream, want.len() - got.len()).await);
    assert_eq!(got, want);
    // Nothing doubled after the end either.
    let more = tokio::time::timeout(Duration::from_millis(700), stream.message()).await;
    assert!(more.is_err(), "more than was written: {more:?}");
}

/// The `obhost_log_tails` gauge from the daemon's metrics port.
fn open_tails(metrics: &str) -> f64 {
    let mut s = std::net::TcpStream::connect(metrics).expect("metrics port");
    write!(s, "GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("obhost_log_tails "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no obhost_log_tails in:\n{text}"))
}

fn metrics_addr(d: &Daemon) -> String {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        for line in d.log_text().lines() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
                && v["message"] == "metrics listening"
            {
                return v["addr"].as_str().unwrap().to_string();
            }
        }
        assert!(
            Instant::now() < end,
            "no metrics address:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn until_open_tails(metrics: &str, want: f64) {
    let end = Instant::now() + Duration::from_secs(3);
    loop {
        let n = open_tails(metrics);
        if n == want {
            return;
        }
        assert!(Instant::now() < end, "{n} tails open, not {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn clients_that_go_away_free_their_streams_at_once() {
    let d = Daemon::start_with(Options {
        config: "[metrics]\nlisten = \"127.0.0.1:0\"\n".into(),
        ..Options::default()
    });
    let metrics = metrics_addr(&d);
    let (_t, home) = home_with(&["only line".into()]);
    let client = d.client().await;
    // Up to the limit (64) on one connection; the log stays idle, so only
    // noticing the closed stream can free them.
    let mut follows = Vec::new();
    for _ in 0..64 {
        let mut s = client
            .clone()
            .tail_observer_log(request(&home, 1, false, true))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(take(&mut s, 1).await, ["only line"]);
        follows.push(s);
    }
    until_open_tails(&metrics, 64.0).await;
    let e = client
        .clone()
        .tail_observer_log(request(&home, 1, false, true))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("64 TailObserverLog streams"), "{e:?}");

    drop(follows);
    until_open_tails(&metrics, 0.0).await;
    // And whole clients gone (obhostctl killed mid-follow).
    let mut ctl = Command::new(OBHOSTCTL)
        .args(["--addr", &d.addr, "observer", "logs", "-f", "--home"])
        .arg(&home)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    until_open_tails(&metrics, 1.0).await;
    ctl.kill().unwrap();
    ctl.wait().unwrap();
    until_open_tails(&metrics, 0.0).await;
    let mut s = client
        .clone()
        .tail_observer_log(request(&home, 1, false, true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(take(&mut s, 1).await, ["only line"]);
}

#[tokio::test]
async fn a_follow_ends_with_unavailable_when_obhostd_stops() {
    // The bound covers the test's own connection, which it keeps open.
    let mut d = Daemon::start_with(Options {
        config: "shutdown_timeout = \"2s\"\n".into(),
        ..Options::default()
    });
    let (_t, home) = home_with(&["x".into()]);
    let mut s = d
        .client()
        .await
        .tail_observer_log(request(&home, 1, false, true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(take(&mut s, 1).await, ["x"]);
    let began = Instant::now();
    d.signal(nix::sys::signal::Signal::SIGTERM);
    let end = tokio::time::timeout(Duration::from_secs(5), s.message())
        .await
        .expect("the follow did not end at shutdown");
    let e = end.expect_err("a follow ends with an error at shutdown");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("shutting down"), "{e:?}");
    // At once, not at the end of the drain bound.
    assert!(
        began.elapsed() < Duration::from_secs(1),
        "{:?}",
        began.elapsed()
    );
    let status = d
        .wait_exit(Duration::from_secs(6))
        .expect("obhostd did not exit");
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn homes_missing_relative_or_outside_allowed_roots_are_refused() {
    let roots = tempfile::tempdir().unwrap();
    let d = Daemon::start_with(Options {
        config: format!("allowed_roots = [\"{}\"]\n", roots.path().display()),
        ..Options::default()
    });
    let (_t, outside) = home_with(&["secret-ish".into()]);
    let e = tail(&d, request(&outside, 1, false, false))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("allowed_roots"), "{e:?}");

    let inside = roots.path().join("missing");
    let e = tail(&d, request(&inside, 1, false, true))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("does not exist"), "{e:?}");

    // A home without a log: NOT_FOUND, unless following (waits for it).
    let empty = roots.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = tail(&d, request(&empty, 1, false, false))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("log/observer.log"), "{e:?}");
    let mut s = d
        .client()
        .await
        .tail_observer_log(request(&empty, 1, false, true))
        .await
        .unwrap()
        .into_inner();
    std::fs::create_dir(empty.join("log")).unwrap();
    std::fs::write(empty.join("log/observer.log"), "born\n").unwrap();
    assert_eq!(take(&mut s, 1).await, ["born"]);

    let e = tail(
        &d,
        pb::TailObserverLogRequest {
            home_path: "home/admin/oceanbase".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("not absolute"), "{e:?}");
}

const OWNER: &str = "obhost-tailer";

/// The unprivileged user of these tests, made once per machine.
fn owner() -> (u32, u32) {
    system_user(OWNER)
}

/// Runs a shell script as that user; it must succeed.
fn as_owner(script: &str) {
    run_as(OWNER, script)
}

const SECRET: &str = "root-only-secret-4b1d";

/// A home the observer's user owns (log/ too), and a root-only file beside it.
fn users_home() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let t = tempfile::Builder::new()
        .prefix("obhost-tail-")
        .tempdir()
        .unwrap();
    let base = std::fs::canonicalize(t.path()).unwrap();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret = base.join("shadow");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let home = base.join("home");
    std::fs::create_dir_all(home.join("log")).unwrap();
    let (uid, gid) = owner();
    for p in [&home, &home.join("log")] {
        nix::unistd::chown(p, Some(uid.into()), Some(gid.into())).unwrap();
    }
    (t, home, secret)
}

fn assert_no_secret(lines: &[String], e: &tonic::Status) {
    assert!(!lines.iter().any(|l| l.contains(SECRET)), "{lines:?}");
    assert!(!e.message().contains(SECRET), "{e:?}");
}

#[tokio::test]
async fn a_link_or_a_strangers_file_planted_by_the_observers_user_is_refused() {
    let d = Daemon::start();
    let (_t, home, secret) = users_home();
    let log = home.join("log/observer.log");

    // A symlink to a root-only file, made by the user (so owned by it).
    as_owner(&format!("ln -s {} {}", secret.display(), log.display()));
    for follow in [false, true] {
        let e = tail(&d, request(&home, 10, false, follow))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "follow {follow}: {e:?}");
        assert!(e.message().contains("symbolic link"), "{e:?}");
        assert_no_secret(&[], &e);
    }
    // log/ itself a link to the secret's dir.
    as_owner(&format!(
        "rm {log} && rmdir {dir} && ln -s {target} {dir}",
        log = log.display(),
        dir = home.join("log").display(),
        target = secret.parent().unwrap().display()
    ));
    std::fs::rename(&secret, secret.with_file_name("observer.log")).unwrap();
    let e = tail(&d, request(&home, 10, false, false))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert_no_secret(&[], &e);
    std::fs::rename(secret.with_file_name("observer.log"), &secret).unwrap();
    as_owner(&format!(
        "rm {dir} && mkdir {dir}",
        dir = home.join("log").display()
    ));

    // A hard link to it (where protected_hardlinks is off; root makes it here).
    std::fs::hard_link(&secret, &log).unwrap();
    let e = tail(&d, request(&home, 10, false, false))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("hard links"), "{e:?}");
    std::fs::remove_file(&log).unwrap();

    // A follow of the user's own log, then a "rotation" to a link: the
    // stream ends refused after the user's own lines, never reads through.
    as_owner(&format!("echo mine > {}", log.display()));
    let mut s = d
        .client()
        .await
        .tail_observer_log(request(&home, 10, false, true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(take(&mut s, 1).await, ["mine"]);
    as_owner(&format!(
        "mv {log} {log}.1 && ln -s {} {log}",
        secret.display(),
        log = log.display()
    ));
    let mut seen = Vec::new();
    let e = loop {
        match tokio::time::timeout(Duration::from_secs(5), s.message())
            .await
            .expect("the follow neither refused nor went on")
        {
            Ok(Some(m)) => seen.extend(m.lines),
            Ok(None) => panic!("the follow ended without saying why"),
            Err(e) => break e,
        }
    };
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert_no_secret(&seen, &e);
    // The secret is untouched.
    assert_eq!(
        std::fs::read_to_string(&secret).unwrap(),
        format!("{SECRET}\n")
    );
}
