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
    let s = wait_for(d, id, Duration::from_secs(70), is_terminal).await;
    assert_eq!(s.state(), pb::StepState::Failed, "{s:#?}");
    let died = died_at(home.path()).expect("the script recorded its death");
    let t = s.finished_at.clone().unwrap();
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

fn error(s: &pb::Step) -> &pb::StepError {
    s.error.as_ref().expect("a failed step has an error")
}

fn pid_in(home: &Home, name: &str) -> String {
    std::fs::read_to_string(home.path().join(name))
        .unwrap()
        .trim()
        .to_string()
}

/// The server writes its pid file and dies while its launcher still runs (it
/// was handed to obhostd at once: `( ... & )`); the launcher exits 0 after.
#[tokio::test]
async fn server_dies_before_its_launcher_exits() {
    let d = Daemon::start();
    let home = Home::new();
    let spec = script(
        &home,
        &format!(
            "( sh -c 'echo $$ > run/observer.pid; echo \"{ERROR_LINE}\" >> log/observer.log; exit 1' & )\n\
             while [ ! -s run/observer.pid ]; do sleep 0.01; done\n\
             while kill -0 $(cat run/observer.pid) 2>/dev/null; do sleep 0.01; done\n\
             {DIED}\nexit 0"
        ),
    );
    let s = fails_at_once(&d, &home, "before-launcher", spec).await;
    let e = error(&s);
    assert_eq!(e.code, "PROCESS_EXITED", "{e:#?}");
    assert_eq!(
        e.details["pid"],
        pid_in(&home, "run/observer.pid"),
        "{e:#?}"
    );
    assert_eq!(e.details["exit_code"], "1", "{e:#?}");
    assert!(e.details.contains_key("lived"), "{e:#?}");
    assert!(
        e.log_tail.iter().any(|l| l.contains("errcode=-4016")),
        "the observer's ERROR line is shown: {e:#?}"
    );
}

/// The issue's own reproduction: the server is the launcher's direct child,
/// which the launcher (a shell) collects, so obhostd may never see its status;
/// the step still fails at once and names the server.
#[tokio::test]
async fn server_collected_by_its_launcher_still_fails_at_once() {
    let d = Daemon::start();
    let home = Home::new();
    let spec = script(
        &home,
        &format!(
            "sh -c 'echo $$ > run/observer.pid; echo \"{ERROR_LINE}\" >> log/observer.log; exit 1' &\n\
             wait $!\n{DIED}\nexit 0"
        ),
    );
    let s = fails_at_once(&d, &home, "collected", spec).await;
    let e = error(&s);
    assert_eq!(e.code, "PROCESS_EXITED", "{e:#?}");
    assert_eq!(
        e.details["pid"],
        pid_in(&home, "run/observer.pid"),
        "{e:#?}"
    );
    if let Some(code) = e.details.get("exit_code") {
        assert_eq!(code, "1", "{e:#?}");
    } else {
        assert!(e.message.contains("exit status unknown"), "{e:#?}");
    }
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
        e.details["pid"],
        pid_in(&home, "run/observer.pid"),
        "{e:#?}"
    );
    assert_eq!(e.details["exit_code"], "3", "{e:#?}");
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
    assert_eq!(e.details["exit_code"], "2", "{e:#?}");
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
        &format!("( sh -c 'sleep 0.3; {DIED}; exit 5' & )\nexit 0"),
    );
    let s = fails_at_once(&d, &home, "no-pid-file", spec).await;
    let e = error(&s);
    assert_eq!(e.code, "PROCESS_EXITED", "{e:#?}");
    assert_eq!(e.details["exit_code"], "5", "{e:#?}");
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
            "( sh -c 'echo $$ > run/real.pid; ln -sf real.pid run/observer.pid; sleep 0.3; {DIED}; exit 6' & )\nexit 0"
        ),
    );
    let s = fails_at_once(&d, &home, "symlink", spec).await;
    let e = error(&s);
    assert_eq!(e.code, "PROCESS_EXITED", "{e:#?}");
    assert_eq!(e.details["exit_code"], "6", "{e:#?}");
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
        e.details["pid"],
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
