//! A start that fails is reported the moment nothing of the launch is alive,
//! whatever the order in which launcher, server and pid file came and went,
//! with how the process ended and the observer's own ERROR lines.
//!
//! Each launcher below is a shell script installed as the observer binary; the
//! order of its events is forced (the server waits for the launcher's exit, the
//! launcher waits for the server's death), never left to the machine's speed.
//! Each script notes the moment its last process dies in `log/died_at`, and
//! the step must be FAILED within 2 s of it.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use common::*;
use obhost::proto::v1 as pb;

/// The ERROR line the servers below write, as OceanBase's observer would.
const ERROR_LINE: &str = "[2026-01-01 00:00:00.000000] ERROR [SERVER] start (ob_server.cpp:1) [errcode=-4016] observer start fail";

/// Installs `body` as `<home>/bin/observer` and returns a spec that runs it.
fn script(home: &Home, body: &str) -> pb::ObserverSpec {
    let bin = home.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(home.path().join("log")).unwrap();
    let path = bin.join("observer");
    std::fs::write(
        &path,
        format!("#!/bin/sh\ncd \"$(dirname \"$0\")/..\"\n{body}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    pb::ObserverSpec {
        binary: path.display().to_string(),
        ..home.spec()
    }
}

/// Shell: record the moment of death (as seconds since the epoch).
const DIED: &str = "date +%s.%N > log/died_at";

/// Starts the spec and returns the failed step, checking it failed within 2 s
/// of the moment the script recorded in `log/died_at`.
async fn fails_at_once(d: &Daemon, home: &Home, id: &str, spec: pb::ObserverSpec) -> pb::Step {
    start(d, id, spec).await;
    failed_soon_after_death(d, home, id).await
}

/// As [`fails_at_once`], for a script that waits for `go` ([`AWAIT_GO`]):
/// the test creates it once the step's stage is `stage` and `ready` holds
/// for the home.
async fn fails_at_once_after(
    d: &Daemon,
    home: &Home,
    id: &str,
    spec: pb::ObserverSpec,
    stage: &str,
    ready: impl Fn(&Path) -> bool,
) -> pb::Step {
    start(d, id, spec).await;
    let at = wait_for(d, id, Duration::from_secs(30), |s| {
        is_terminal(s) || s.outputs.get("stage").is_some_and(|at| at == stage)
    })
    .await;
    assert!(
        !is_terminal(&at),
        "ended before the stage '{stage}': {at:#?}"
    );
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while !ready(home.path()) {
        assert!(
            std::time::Instant::now() < end,
            "the script did not get ready within 10 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::write(home.path().join("go"), "").unwrap();
    failed_soon_after_death(d, home, id).await
}

async fn start(d: &Daemon, id: &str, spec: pb::ObserverSpec) {
    d.client()
        .await
        .start_observer(pb::StartObserverRequest {
            meta: Some(pb::StepMeta {
                timeout: Some(secs(60.0)),
                ..meta(id)
            }),
            observer: Some(spec),
        })
        .await
        .expect("StartObserver accepted");
}

async fn failed_soon_after_death(d: &Daemon, home: &Home, id: &str) -> pb::Step {
    let s = wait_for(d, id, Duration::from_secs(70), is_terminal).await;
    assert_eq!(s.state(), pb::StepState::Failed, "{s:#?}");
    let Some(died) = died_at(home.path()) else {
        panic!("FAILED before the script recorded its last death: {s:#?}");
    };
    let t = s.finished_at.unwrap();
    let finished = SystemTime::UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos as u32);
    let after = finished.duration_since(died).unwrap_or_default();
    assert!(
        after < Duration::from_secs(2),
        "FAILED {after:?} after the death, not within 2 s: {s:#?}"
    );
    s
}

fn died_at(home: &Path) -> Option<SystemTime> {
    let text = std::fs::read_to_string(home.join("log/died_at")).ok()?;
    let secs: f64 = text.trim().parse().ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs))
}

/// A detail of a step error, "<none>" when it is missing (an assertion then
/// shows the whole error).
fn detail<'a>(e: &'a pb::StepError, key: &str) -> &'a str {
    e.details.get(key).map(String::as_str).unwrap_or("<none>")
}

fn error(s: &pb::Step) -> &pb::StepError {
    s.error.as_ref().expect("a failed step has an error")
}

fn pid_in(home: &Home, name: &str) -> String {
    std::fs::read_to_string(home.path().join(name))
        .unwrap()
        .trim()
        .to_string()
}

/// The server writes its pid file and dies while its launcher still runs: the
/// launcher has become `sleep`, which never collects its child, so the
/// server's exit code is read from its zombie (a shell would collect it: see
/// the next test).
#[tokio::test]
async fn server_dies_before_its_launcher_exits() {
    let d = Daemon::start();
    let home = Home::new();
    let spec = script(
        &home,
        &format!(
            "sh -c 'echo $$ > run/observer.pid; echo \"{ERROR_LINE}\" >> log/observer.log; {DIED}; exit 1' &\n\
             exec sleep 30"
        ),
    );
    let s = fails_at_once(&d, &home, "before-launcher", spec).await;
    let e = error(&s);
    assert_eq!(e.code, "PROCESS_EXITED", "{e:#?}");
    assert_eq!(
        detail(e, "pid"),
        pid_in(&home, "run/observer.pid"),
        "{e:#?}"
    );
    assert_eq!(detail(e, "exit_code"), "1", "{e:#?}");
    assert!(e.details.contains_key("lived"), "{e:#?}");
    assert!(
        e.log_tail.iter().any(|l| l.contains("errcode=-4016")),
        "the observer's ERROR line is shown: {e:#?}"
    );
}

/// The issue's own reproduction: the server is the launcher's direct child,
/// which the launcher (a shell) collects, so obhostd never reaps it: the step
/// still fails at once, names the server, and has its exit code from the
/// kernel's exit events.
#[tokio::test]
async fn server_collected_by_its_launcher_still_fails_at_once() {
    let d = Daemon::start();
    let home = Home::new();
    let spec = script(
        &home,
        &format!(
            "sh -c 'echo $$ > run/observer.pid; echo \"{ERROR_LINE}\" >> log/observer.log; {DIED}; exit 1' &\n\
             wait $!\nexit 0"
        ),
    );
    let s = fails_at_once(&d, &home, "collected", spec).await;
    let e = error(&s);
    assert_eq!(e.code, "PROCESS_EXITED", "{e:#?}");
    assert_eq!(
        detail(e, "pid"),
        pid_in(&home, "run/observer.pid"),
        "{e:#?}"
    );
    // The kernel announced its exit to obhostd (the process-events
    // connector), though obhostd never reaped it.
    assert_eq!(detail(e, "exit_code"), "1", "{e:#?}");
}

/// As above, but the server is seen alive (the step names it from the pid
/// file) before it dies and its launcher collects it.
#[tokio::test]
async fn server_seen_alive_then_collected_by_its_launcher() {
    let d = Daemon::start();
    let home = Home::new();
    let spec = script(
        &home,
        &format!(
            "sh -c 'echo $$ > run/observer.pid; {AWAIT_GO}; echo \"{ERROR_LINE}\" >> log/observer.log; {DIED}; exit 4' &\n\
             wait $!\nexit 0"
        ),
    );
    let s = fails_at_once_after(&d, &home, "seen-collected", spec, "pid_file", |_| true).await;
    let e = error(&s);
    assert_eq!(e.code, "PROCESS_EXITED", "{e:#?}");
    assert_eq!(
        detail(e, "pid"),
        pid_in(&home, "run/observer.pid"),
        "{e:#?}"
    );
    assert_eq!(detail(e, "exit_code"), "4", "{e:#?}");
}

/// The launcher exits 0 first; only then does its server write the pid file
/// and die.
#[tokio::test]
async fn server_dies_after_its_launcher_exits() {
    let d = Daemon::start();
    let home = Home::new();
    let spec = script(
        &home,
        &format!(
            "launcher=$$\n\
             ( sh -c 'while kill -0 '$launcher' 2>/dev/null; do sleep 0.01; done; echo $$ > run/observer.pid; echo \"{ERROR_LINE}\" >> log/observer.log; {DIED}; exit 3' & )\n\
             exit 0"
        ),
    );
    let s = fails_at_once(&d, &home, "after-launcher", spec).await;
    let e = error(&s);
    assert_eq!(e.code, "PROCESS_EXITED", "{e:#?}");
    assert_eq!(
        detail(e, "pid"),
        pid_in(&home, "run/observer.pid"),
        "{e:#?}"
    );
    assert_eq!(detail(e, "exit_code"), "3", "{e:#?}");
}

/// The launcher refuses to start: its exit code and output are the report.
#[tokio::test]
async fn launcher_exits_non_zero() {
    let d = Daemon::start();
    let home = Home::new();
    let spec = script(
        &home,
        &format!("echo 'observer: unknown option -Q' >&2\n{DIED}\nexit 2"),
    );
    let s = fails_at_once(&d, &home, "launcher-fails", spec).await;
    let e = error(&s);
    assert_eq!(e.code, "PROCESS_EXITED", "{e:#?}");
    assert_eq!(detail(e, "exit_code"), "2", "{e:#?}");
    assert!(
        e.log_tail.iter().any(|l| l.contains("unknown option -Q")),
        "{e:#?}"
    );
}

/// The launch forks a server that never writes its pid file and dies: the
/// census, not the pid file, ends the wait, with the server's exit code.
#[tokio::test]
async fn pid_file_never_written() {
    let d = Daemon::start();
    let home = Home::new();
    let spec = script(
        &home,
        &format!("( sh -c '{AWAIT_GO}; {DIED}; exit 5' & )\nexit 0"),
    );
    let s = fails_at_once_after(&d, &home, "no-pid-file", spec, "launcher_exited", |_| true).await;
    let e = error(&s);
    assert_eq!(e.code, "PROCESS_EXITED", "{e:#?}");
    assert_eq!(detail(e, "exit_code"), "5", "{e:#?}");
}

/// A launcher that exits 0 and leaves nothing running.
#[tokio::test]
async fn launcher_exits_0_leaving_nothing() {
    let d = Daemon::start();
    let home = Home::new();
    let spec = script(&home, &format!("{DIED}\nexit 0"));
    let s = fails_at_once(&d, &home, "nothing", spec).await;
    let e = error(&s);
    assert_eq!(e.code, "PROCESS_EXITED", "{e:#?}");
    assert!(
        e.message.contains("nothing it started is running"),
        "{e:#?}"
    );
}

/// The pid file is a symbolic link, which obhostd never follows: the wait
/// still ends when the server dies.
#[tokio::test]
async fn pid_file_is_a_symlink() {
    let d = Daemon::start();
    let home = Home::new();
    let spec = script(
        &home,
        &format!(
            "( sh -c 'echo $$ > run/real.pid; ln -sf real.pid run/observer.pid; {AWAIT_GO}; {DIED}; exit 6' & )\nexit 0"
        ),
    );
    let linked = |home: &Path| home.join("run/observer.pid").is_symlink();
    let s = fails_at_once_after(&d, &home, "symlink", spec, "launcher_exited", linked).await;
    let e = error(&s);
    assert_eq!(e.code, "PROCESS_EXITED", "{e:#?}");
    assert_eq!(detail(e, "exit_code"), "6", "{e:#?}");
}

/// The pid file names a process that is already dead while the launcher
/// still runs: that is the end of this start, not something to wait out.
#[tokio::test]
async fn pid_file_names_a_dead_pid() {
    let d = Daemon::start();
    let home = Home::new();
    let spec = script(
        &home,
        &format!(
            "sh -c 'exit 0' & p=$!\nwait $p\n{DIED}\necho $p > run/observer.pid\nexec sleep 30"
        ),
    );
    let s = fails_at_once(&d, &home, "dead-pid", spec).await;
    let e = error(&s);
    assert_eq!(e.code, "PROCESS_EXITED", "{e:#?}");
    assert_eq!(
        detail(e, "pid"),
        pid_in(&home, "run/observer.pid"),
        "{e:#?}"
    );
    // The failed start's cleanup stopped the launcher it left behind.
    let launcher: i32 = s.outputs["launcher_pid"].parse().unwrap();
    for _ in 0..100 {
        if !alive(launcher) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(launcher), "the launcher was stopped");
}

/// A start held in one stage past its deadline says which stage, and how
/// long it was held there.
#[tokio::test]
async fn a_timeout_names_the_stage_it_was_held_in() {
    let d = Daemon::start_with(Options {
        env: vec![("RUST_LOG".into(), "obhost=trace".into())],
        ..Options::default()
    });
    let home = Home::new();
    // The server lives on but never writes its pid file.
    let spec = script(&home, "( exec sleep 30 & )\nexit 0");
    d.client()
        .await
        .start_observer(pb::StartObserverRequest {
            meta: Some(pb::StepMeta {
                timeout: Some(secs(1.5)),
                ..meta("held")
            }),
            observer: Some(spec),
        })
        .await
        .unwrap();
    let s = wait_for(&d, "held", Duration::from_secs(20), is_terminal).await;
    let log = d.log_text();
    let census: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("census")
                || l.contains("walked")
                || l.contains("spawned")
                || l.contains("reaped")
        })
        .collect();
    assert_eq!(
        s.state(),
        pb::StepState::TimedOut,
        "{s:#?}\n{}",
        census.join("\n")
    );
    let e = error(&s);
    assert_eq!(detail(e, "stage"), "launcher_exited", "{e:#?}");
    assert!(
        e.message.contains("held at stage launcher_exited for 1s"),
        "{e:#?}"
    );
    assert_eq!(s.outputs["stage"], "launcher_exited");
    assert!(s.outputs.contains_key("stage_since"));
}

/// Every change of a step, as a WatchSteps client sees it: the stages of
/// StartObserver and WaitObserverActive arrive in their order.
#[tokio::test]
async fn stages_are_seen_in_order_by_a_watcher() {
    use tokio_stream::StreamExt;
    const ORDER: [&str; 9] = [
        "launched",
        "launcher_exited",
        "pid_file",
        "server_alive",
        "rpc_listening",
        "mysql_listening",
        "handshake",
        "login",
        "query",
    ];
    let d = Daemon::start();
    let home = Home::new();
    let mut stream = d
        .client()
        .await
        .watch_steps(pb::WatchStepsRequest::default())
        .await
        .unwrap()
        .into_inner();
    start_ok(&d, "st-start", home.spec()).await;
    d.client()
        .await
        .wait_observer_active(pb::WaitObserverActiveRequest {
            meta: Some(meta("st-wait")),
            home_path: home.path().display().to_string(),
            mysql_port: home.mysql_port as u32,
            user: "root".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let s = wait_terminal(&d, "st-wait").await;
    assert_eq!(s.state(), pb::StepState::Succeeded, "{s:#?}");
    let mut seen: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    while let Ok(Some(Ok(msg))) =
        tokio::time::timeout(Duration::from_millis(500), stream.next()).await
    {
        let step = msg.step.unwrap();
        if let Some(stage) = step.outputs.get("stage") {
            let stages = seen.entry(step.id.clone()).or_default();
            if stages.last() != Some(stage) {
                stages.push(stage.clone());
            }
            if step.state() == pb::StepState::Running {
                assert!(
                    step.message.contains(&format!("(stage {stage} since ")),
                    "the message names the stage: {step:#?}"
                );
            }
        }
    }
    for (id, must) in [
        ("st-start", &["launched", "server_alive"][..]),
        (
            "st-wait",
            &["server_alive", "handshake", "login", "query"][..],
        ),
    ] {
        let stages = &seen[id];
        let at: Vec<usize> = stages
            .iter()
            .map(|s| ORDER.iter().position(|o| o == s).expect("a known stage"))
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{id}: {stages:?}");
        for m in must {
            assert!(
                stages.iter().any(|s| s == m),
                "{id} reached {m}: {stages:?}"
            );
        }
    }
}

/// The real kernel whose MySQL port is taken: it daemonizes, writes its pid
/// file and fails about a second later. Start then Wait: the failing step is
/// FAILED within 5 s of seekdb's exit, with its exit code and its own ERROR
/// lines and error code.
#[tokio::test]
async fn seekdb_whose_port_is_taken_fails_with_its_own_words() {
    let Some(seekdb) = seekdb() else { return };
    let d = Daemon::start();
    let home = Home::new();
    install_seekdb(&home, &seekdb);
    let taken = std::net::TcpListener::bind(("127.0.0.1", home.mysql_port)).unwrap();
    start_observer(&d, "sdb-taken", seekdb_spec(&home))
        .await
        .unwrap();
    let start = wait_for(&d, "sdb-taken", Duration::from_secs(60), is_terminal).await;
    let failed = if start.state() == pb::StepState::Failed {
        start
    } else {
        assert_eq!(start.state(), pb::StepState::Succeeded, "{start:#?}");
        d.client()
            .await
            .wait_observer_active(pb::WaitObserverActiveRequest {
                meta: Some(meta("sdb-taken-wait")),
                home_path: home.path().display().to_string(),
                mysql_port: home.mysql_port as u32,
                ..Default::default()
            })
            .await
            .unwrap();
        wait_for(&d, "sdb-taken-wait", Duration::from_secs(60), is_terminal).await
    };
    drop(taken);
    assert_eq!(failed.state(), pb::StepState::Failed, "{failed:#?}");
    let e = error(&failed);
    assert_eq!(e.code, "PROCESS_EXITED", "{e:#?}");
    // Exit code 1, as seekdb ends: from the reaper, or from the kernel's
    // exit events when the registry's watch began after seekdb was reaped.
    assert_eq!(detail(e, "exit_code"), "1", "{e:#?}");
    // seekdb's own error lines, read through the wrapper's observer.log link:
    // ERROR when it wrote its "observer start fail" (most runs), else its
    // EDIAG diagnostics (it sometimes exits 1 before that line).
    let header = format!("==> {} <==", home.path().join("log/observer.log").display());
    assert_eq!(e.log_tail.first(), Some(&header), "{e:#?}");
    assert!(
        e.log_tail
            .iter()
            .any(|l| l.contains("] ERROR ") || l.contains("] EDIAG ")),
        "seekdb's own error lines: {e:#?}"
    );
    assert!(e.details.contains_key("ob_errcode"), "{e:#?}");
    let o = get_observer(&d, home.path()).await;
    let exit = o.last_exit.expect("GetObserver shows how it ended");
    let t = exit.at.unwrap();
    let died = SystemTime::UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos as u32);
    let t = failed.finished_at.unwrap();
    let finished = SystemTime::UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos as u32);
    let after = finished.duration_since(died).unwrap_or_default();
    assert!(
        after < Duration::from_secs(5),
        "FAILED {after:?} after seekdb died"
    );
}

/// A failure carries the last stage the start reached.
#[tokio::test]
async fn a_failure_names_the_last_stage_reached() {
    let d = Daemon::start();
    let home = Home::new();
    let spec = script(&home, &format!("{DIED}\nexit 7"));
    let s = fails_at_once(&d, &home, "staged-fail", spec).await;
    assert_eq!(detail(error(&s), "stage"), "launched", "{s:#?}");
}

/// The observer obhostd started died before WaitObserverActive began: the wait
/// reports that death (how, which step started it, its ERROR lines), not
/// "start it first".
#[tokio::test]
async fn a_wait_after_the_observer_died_reports_its_death() {
    let d = Daemon::start();
    let home = Home::new();
    // Listens at once (so the start succeeds), then crashes.
    let spec = home.spec_with_env("FAKE_OBSERVER_CRASH_AFTER_MS", "300");
    let (_, pid) = start_ok(&d, "died-start", spec).await;
    wait_gone(pid, Duration::from_secs(30)).await;
    d.client()
        .await
        .wait_observer_active(pb::WaitObserverActiveRequest {
            meta: Some(meta("died-wait")),
            home_path: home.path().display().to_string(),
            mysql_port: home.mysql_port as u32,
            ..Default::default()
        })
        .await
        .unwrap();
    let s = wait_terminal(&d, "died-wait").await;
    assert_eq!(s.state(), pb::StepState::Failed, "{s:#?}");
    let e = error(&s);
    assert_eq!(e.code, "PROCESS_EXITED", "{e:#?}");
    assert_eq!(detail(e, "pid"), pid.to_string(), "{e:#?}");
    assert_eq!(detail(e, "exit_code"), "134", "{e:#?}");
    assert!(e.message.contains("by step 'died-start'"), "{e:#?}");
    assert!(!e.message.contains("before waiting for it"), "{e:#?}");
    assert!(
        e.log_tail
            .iter()
            .any(|l| l.contains("ERROR") && l.contains("crashing")),
        "{e:#?}"
    );
}

/// The stand-in whose MySQL port is taken (the second measurement:
/// FAILED in 0.1 s one run, TIMED_OUT after 2 min the next): FAILED at once,
/// every run, in OceanBase's terms (OB_SERVER_LISTEN_ERROR).
#[tokio::test]
async fn the_stand_in_on_a_taken_port_fails_at_once_in_oceanbases_terms() {
    let d = Daemon::start();
    let home = Home::new();
    let taken = std::net::TcpListener::bind(("127.0.0.1", home.mysql_port)).unwrap();
    let started = std::time::Instant::now();
    start_observer(&d, "taken", home.spec()).await.unwrap();
    let s = wait_for(&d, "taken", Duration::from_secs(60), is_terminal).await;
    drop(taken);
    assert_eq!(s.state(), pb::StepState::Failed, "{s:#?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let e = error(&s);
    assert_eq!(e.code, "PROCESS_EXITED", "{e:#?}");
    assert_eq!(detail(e, "exit_code"), "1", "{e:#?}");
    assert_eq!(detail(e, "ob_errcode"), "-4004", "{e:#?}");
    assert!(e.message.contains("OB_SERVER_LISTEN_ERROR"), "{e:#?}");
    assert!(
        e.log_tail
            .iter()
            .any(|l| l.contains("cannot listen on 127.0.0.1")),
        "{e:#?}"
    );
}
