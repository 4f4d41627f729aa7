//! WaitObserverActive against the stand-in observer in every fault mode and
//! against the real seekdb kernel; the password never reaches disk or logs.

mod common;

use std::time::{Duration, Instant};

use common::*;
use obhost::proto::v1 as pb;
use tonic::Code;

async fn started(d: &Daemon, id: &str, spec: pb::ObserverSpec) -> i32 {
    start_ok(d, id, spec).await.1
}

fn wait_req(id: &str, home: &Home, timeout: f64) -> pb::WaitObserverActiveRequest {
    pb::WaitObserverActiveRequest {
        meta: Some(pb::StepMeta {
            step_id: id.into(),
            timeout: Some(secs(timeout)),
            ..Default::default()
        }),
        home_path: home.path().display().to_string(),
        mysql_port: home.mysql_port as u32,
        ..Default::default()
    }
}

/// The stand-in expects user "ocp" with this password, read from a file so the
/// password is in nothing obhostd is given except the wait request.
fn with_password_file(home: &Home, password: &str) -> pb::ObserverSpec {
    let file = home.path().join("expected-password");
    std::fs::write(&file, password).unwrap();
    let mut spec = home.spec_with_env("FAKE_OBSERVER_USER", "ocp");
    spec.env.insert(
        "FAKE_OBSERVER_PASSWORD_FILE".into(),
        file.display().to_string(),
    );
    spec
}

async fn wait_active(d: &Daemon, req: pb::WaitObserverActiveRequest) -> pb::Step {
    let id = req.meta.as_ref().unwrap().step_id.clone();
    d.client()
        .await
        .wait_observer_active(req)
        .await
        .expect("accepted");
    wait_for(d, &id, Duration::from_secs(90), is_terminal).await
}

#[tokio::test]
async fn a_late_listener_is_seen_quickly() {
    let d = Daemon::start();
    let home = Home::new();
    started(
        &d,
        "late-start",
        home.spec_with_env("FAKE_OBSERVER_LISTEN_DELAY_MS", "1500"),
    )
    .await;
    let req = wait_req("late-wait", &home, 20.0);
    d.client().await.wait_observer_active(req).await.unwrap();
    // While waiting, the message says what for.
    let waiting = wait_for(&d, "late-wait", Duration::from_secs(5), |s| {
        s.message.contains("not accepting")
    })
    .await;
    assert!(
        waiting.message.contains(&home.mysql_port.to_string()),
        "{}",
        waiting.message
    );
    // The moment the port answers, as a client sees it...
    let port = home.mysql_port;
    let opened = tokio::task::spawn_blocking(move || {
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::time::Instant::now()
    })
    .await
    .unwrap();
    // ...and the step turns SUCCEEDED within milliseconds of it, not after a
    // backoff of hundreds.
    let mut client = d.client().await;
    let s = loop {
        let s = client
            .get_step(pb::GetStepRequest {
                step_id: "late-wait".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .step
            .unwrap();
        if is_terminal(&s) || opened.elapsed() > Duration::from_secs(5) {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let late = opened.elapsed();
    assert_eq!(s.state(), pb::StepState::Succeeded, "{s:#?}");
    assert!(
        late < Duration::from_millis(60),
        "SUCCEEDED {late:?} after the port answered"
    );
}

#[tokio::test]
async fn never_listening_times_out_with_what_it_waited_for() {
    let d = Daemon::start();
    let home = Home::new();
    started(
        &d,
        "never-start",
        home.spec_with_env("FAKE_OBSERVER_NEVER_LISTEN", "1"),
    )
    .await;
    let s = wait_active(&d, wait_req("never-wait", &home, 1.5)).await;
    assert_eq!(s.state(), pb::StepState::TimedOut);
    let e = s.error.unwrap();
    assert_eq!(e.code, "DEADLINE_EXCEEDED");
    assert!(
        e.message.contains("not accepting connections"),
        "{}",
        e.message
    );
}

#[tokio::test]
async fn death_during_the_wait_fails_at_once() {
    let d = Daemon::start();
    let home = Home::new();
    let mut spec = home.spec_with_env("FAKE_OBSERVER_NEVER_LISTEN", "1");
    spec.env
        .insert("FAKE_OBSERVER_CRASH_AFTER_MS".into(), "2500".into());
    let pid = started(&d, "die-start", spec).await;
    d.client()
        .await
        .wait_observer_active(wait_req("die-wait", &home, 60.0))
        .await
        .unwrap();
    // Watch for the death ourselves, then time how long the step takes to say so.
    wait_gone(pid, Duration::from_secs(30)).await;
    let died = Instant::now();
    let s = wait_terminal(&d, "die-wait").await;
    let noticed = died.elapsed();
    assert_eq!(s.state(), pb::StepState::Failed, "{s:#?}");
    let e = s.error.unwrap();
    assert_eq!(e.code, "PROCESS_EXITED");
    assert_eq!(
        e.details.get("exit_code").map(String::as_str),
        Some("134"),
        "{e:?}"
    );
    assert!(
        e.log_tail.iter().any(|l| l.contains("crashing")),
        "{:?}",
        e.log_tail
    );
    assert!(
        noticed < Duration::from_secs(1),
        "took {noticed:?} to notice the death"
    );
}

#[tokio::test]
async fn no_observer_is_process_not_running() {
    let d = Daemon::start();
    let home = Home::new();
    let s = wait_active(&d, wait_req("none-wait", &home, 5.0)).await;
    assert_eq!(s.state(), pb::StepState::Failed);
    assert_eq!(s.error.unwrap().code, "PROCESS_NOT_RUNNING");
}

#[tokio::test]
async fn login_and_query_with_a_password_that_never_leaks() {
    let password = "pw-Zq81-never-stored";
    // At trace, so that no library's most verbose logging leaks it either.
    let d = Daemon::start_with(Options {
        env: vec![("RUST_LOG".into(), "trace".into())],
        ..Options::default()
    });
    let home = Home::new();
    started(&d, "pw-start", with_password_file(&home, password)).await;

    let mut wrong = wait_req("pw-wrong", &home, 1.5);
    wrong.user = "ocp".into();
    wrong.password = "not-it".into();
    let s = wait_active(&d, wrong).await;
    assert_eq!(s.state(), pb::StepState::TimedOut);
    assert!(s.error.unwrap().message.contains("login as 'ocp' refused"));

    let mut right = wait_req("pw-right", &home, 20.0);
    right.user = "ocp".into();
    right.password = password.into();
    right.sql = "SELECT 1 FROM dual".into();
    let s = wait_active(&d, right).await;
    assert_eq!(s.state(), pb::StepState::Succeeded, "{s:#?}");
    assert!(!format!("{s:?}").contains(password));

    // Not in any response, the state dir, or the daemon's log.
    assert!(!read_dir_bytes(&d.state_dir).is_empty());
    let found = files_containing(&d.state_dir, password);
    assert!(found.is_empty(), "password found in {found:?}");
    let log = d.log_text();
    assert!(
        log.contains("\"level\":\"TRACE\""),
        "the log is not at trace level"
    );
    assert!(!log.contains(password), "password found in the log");
    let (_, out, _) = obhostctl(Some(&d), &["-o", "json", "steps", "get", "pw-right"]);
    assert!(!out.contains(password));

    let err = d
        .client()
        .await
        .wait_observer_active(pb::WaitObserverActiveRequest {
            password: "x".into(),
            ..wait_req("pw-no-user", &home, 5.0)
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_wait_resumes_after_kill9_with_its_original_deadline() {
    let d = Daemon::start();
    let home = Home::new();
    started(
        &d,
        "resume-start",
        home.spec_with_env("FAKE_OBSERVER_LISTEN_DELAY_MS", "4000"),
    )
    .await;
    d.client()
        .await
        .wait_observer_active(wait_req("resume-wait", &home, 60.0))
        .await
        .unwrap();
    let before = wait_for(&d, "resume-wait", Duration::from_secs(5), |s| {
        s.message.contains("not accepting")
    })
    .await;
    let d = d.restart_after_kill9();
    let s = wait_terminal(&d, "resume-wait").await;
    assert_eq!(s.state(), pb::StepState::Succeeded, "{s:#?}");
    assert_eq!(s.deadline, before.deadline);
    assert_eq!(s.attempt, 1);
}

#[tokio::test]
async fn a_resumed_wait_times_out_at_its_original_deadline() {
    let d = Daemon::start();
    let home = Home::new();
    started(
        &d,
        "deadline-start",
        home.spec_with_env("FAKE_OBSERVER_NEVER_LISTEN", "1"),
    )
    .await;
    let began = std::time::Instant::now();
    d.client()
        .await
        .wait_observer_active(wait_req("deadline-wait", &home, 4.0))
        .await
        .unwrap();
    wait_for(&d, "deadline-wait", Duration::from_secs(3), |s| {
        s.message.contains("not accepting")
    })
    .await;
    // Down for 2 of its 4 seconds: a fresh deadline would end it 4 s after
    // the restart, i.e. 6 s or more after it began. A fixed time on purpose:
    // the downtime is what the deadline must not grow by.
    let stopped = d.kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let d = stopped.start();
    let s = wait_terminal(&d, "deadline-wait").await;
    let took = began.elapsed();
    assert_eq!(s.state(), pb::StepState::TimedOut, "{s:#?}");
    assert!(
        took < Duration::from_millis(5500),
        "timed out {took:?} after it began, not at its 4 s deadline"
    );
    let e = s.error.unwrap();
    assert!(e.message.contains("not accepting"), "{}", e.message);
}

#[tokio::test]
async fn a_resumed_wait_asks_for_the_password_again() {
    let password = "pw-resume-0xdead";
    let d = Daemon::start();
    let home = Home::new();
    let mut spec = with_password_file(&home, password);
    spec.env
        .insert("FAKE_OBSERVER_LISTEN_DELAY_MS".into(), "3000".into());
    started(&d, "ask-start", spec).await;
    let mut req = wait_req("ask-wait", &home, 60.0);
    req.user = "ocp".into();
    req.password = password.into();
    d.client()
        .await
        .wait_observer_active(req.clone())
        .await
        .unwrap();
    wait_for(&d, "ask-wait", Duration::from_secs(5), |s| {
        s.state() == pb::StepState::Running
    })
    .await;
    let d = d.restart_after_kill9();
    let s = wait_for(&d, "ask-wait", Duration::from_secs(10), |s| {
        s.message.contains("repeat this WaitObserverActive")
    })
    .await;
    assert_eq!(s.state(), pb::StepState::Running);
    // Repeating the request supplies the password; the same record comes back.
    let again = d
        .client()
        .await
        .wait_observer_active(req)
        .await
        .unwrap()
        .into_inner()
        .step
        .unwrap();
    assert_eq!(again.id, "ask-wait");
    let s = wait_terminal(&d, "ask-wait").await;
    assert_eq!(s.state(), pb::StepState::Succeeded, "{s:#?}");
    let found = files_containing(&d.state_dir, password);
    assert!(found.is_empty(), "password found in {found:?}");
}

#[tokio::test]
async fn real_seekdb_becomes_active_with_login_and_select_1() {
    let Some(seekdb) = seekdb() else { return };
    let d = Daemon::start();
    let home = Home::new();
    install_seekdb(&home, &seekdb);
    start_observer(&d, "sdb-w-start", seekdb_spec(&home))
        .await
        .unwrap();
    let s = wait_for(&d, "sdb-w-start", Duration::from_secs(60), is_terminal).await;
    assert_eq!(s.state(), pb::StepState::Succeeded, "{s:#?}");
    let started_at = Instant::now();
    let mut req = wait_req("sdb-w-wait", &home, 120.0);
    req.user = "root".into();
    req.sql = "SELECT 1".into();
    let w = wait_active(&d, req).await;
    assert_eq!(w.state(), pb::StepState::Succeeded, "{w:#?}");
    eprintln!(
        "seekdb active {:?} after StartObserver succeeded",
        started_at.elapsed()
    );
    let stop = stop_observer(&d, "sdb-w-stop", home.path(), 10.0, false).await;
    let stop = wait_for(&d, &stop.id, Duration::from_secs(60), is_terminal).await;
    assert_eq!(stop.state(), pb::StepState::Succeeded);
}
