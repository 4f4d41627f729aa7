//! The launcher/server orders of `failed_start.rs`, with the real OceanBase
//! kernel (seekdb) as the server that dies.
//!
//! seekdb whose MySQL port is taken fails about a second after it starts, with
//! exit code 1 and its own ERROR lines. Each launcher below forces one order
//! around that death (the server waits for the launcher's exit, or the
//! launcher outlives the server without collecting it), never leaving it to
//! the machine's speed. The moment of death is seen from outside obhostd: a
//! thread of the test watches the pid seekdb writes (`run/seekdb.pid`, in
//! both its modes) until it is a zombie or gone, and the step must be FAILED
//! within 2 s of it.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use obhost::proto::v1 as pb;

/// The seekdb wrapper as `bin/observer-seekdb`, seekdb beside it, `launcher`
/// as `bin/observer`, and `log/observer.log` linked to seekdb's log (a
/// root-owned link, which obhostd reads). The wrapper makes no links of its
/// own, so the pid file at the default `run/observer.pid` is the launcher's.
fn seekdb_launcher(home: &Home, seekdb: &Path, launcher: &str) -> pb::ObserverSpec {
    let bin = home.path().join("bin");
    for dir in ["bin", "run", "log"] {
        std::fs::create_dir_all(home.path().join(dir)).unwrap();
    }
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/observer-seekdb.sh"),
        bin.join("observer-seekdb"),
    )
    .unwrap();
    std::os::unix::fs::symlink(seekdb, bin.join("seekdb")).unwrap();
    std::os::unix::fs::symlink("seekdb.log", home.path().join("log/observer.log")).unwrap();
    let path = bin.join("observer");
    std::fs::write(
        &path,
        format!("#!/bin/sh\ncd \"$(dirname \"$0\")/..\"\nOBSERVER_WRAPPER_COMPAT_LINKS=0\nexport OBSERVER_WRAPPER_COMPAT_LINKS\n{launcher}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut spec = seekdb_spec(home);
    spec.binary = path.display().to_string();
    spec.pid_file = String::new();
    spec
}

/// The moment the process named in `pid_file` (once it appears) becomes a
/// zombie or disappears, seen by polling /proc every 5 ms.
fn watch_death(pid_file: PathBuf) -> std::thread::JoinHandle<Option<(i32, SystemTime)>> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let pid = loop {
            if let Some(pid) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok())
            {
                break pid;
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        loop {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let (_, after) = s.rsplit_once(')')?;
                    after.split_whitespace().next().map(str::to_string)
                });
            if state.is_none_or(|s| s == "Z") {
                return Some((pid, SystemTime::now()));
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    })
}

/// Runs the start with seekdb's port taken (and, when seekdb outlives the
/// start, the wait after it); returns the failed step and seekdb's pid,
/// checking the step failed within 2 s of seekdb's death.
async fn seekdb_fails_at_once(
    d: &Daemon,
    home: &Home,
    id: &str,
    spec: pb::ObserverSpec,
) -> (pb::Step, i32) {
    let taken = std::net::TcpListener::bind(("127.0.0.1", home.mysql_port)).unwrap();
    let watcher = watch_death(home.path().join("run/seekdb.pid"));
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
    let mut s = wait_for(d, id, Duration::from_secs(70), is_terminal).await;
    if s.state() == pb::StepState::Succeeded {
        // seekdb outlived the start's settle time: the wait that follows is
        // the step that must report its death.
        let wait = format!("{id}-wait");
        d.client()
            .await
            .wait_observer_active(pb::WaitObserverActiveRequest {
                meta: Some(meta(&wait)),
                home_path: home.path().display().to_string(),
                mysql_port: home.mysql_port as u32,
                ..Default::default()
            })
            .await
            .unwrap();
        s = wait_for(d, &wait, Duration::from_secs(70), is_terminal).await;
    }
    drop(taken);
    assert_eq!(s.state(), pb::StepState::Failed, "{s:#?}");
    let (pid, died) = watcher
        .join()
        .unwrap()
        .unwrap_or_else(|| panic!("seekdb never wrote its pid file, or never died: {s:#?}"));
    let t = s.finished_at.unwrap();
    let finished = SystemTime::UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos as u32);
    let after = finished.duration_since(died).unwrap_or_default();
    assert!(
        after < Duration::from_secs(2),
        "FAILED {after:?} after seekdb died, not within 2 s: {s:#?}"
    );
    (s, pid)
}

fn error(s: &pb::Step) -> &pb::StepError {
    s.error.as_ref().expect("a failed step has an error")
}

fn detail<'a>(e: &'a pb::StepError, key: &str) -> &'a str {
    e.details.get(key).map(String::as_str).unwrap_or("<none>")
}

/// How seekdb ends on a taken port: exit code 1, its own ERROR (or EDIAG)
/// lines first in log_tail, and an OceanBase error code.
fn assert_seekdb_words(e: &pb::StepError, pid: i32) {
    assert_eq!(e.code, "PROCESS_EXITED", "{e:#?}");
    assert_eq!(detail(e, "pid"), pid.to_string(), "{e:#?}");
    assert_eq!(detail(e, "exit_code"), "1", "{e:#?}");
    assert!(e.details.contains_key("lived"), "{e:#?}");
    assert!(
        e.log_tail
            .first()
            .is_some_and(|l| l.contains("observer.log")),
        "the observer's own log comes first: {e:#?}"
    );
    assert!(
        e.log_tail
            .iter()
            .any(|l| l.contains("] ERROR ") || l.contains("] EDIAG ")),
        "seekdb's own error lines: {e:#?}"
    );
    assert!(e.details.contains_key("ob_errcode"), "{e:#?}");
}

/// seekdb writes the pid file and dies while its launcher still runs (as
/// `sleep`, which never collects it): its exit code comes from its zombie.
#[tokio::test]
async fn seekdb_dies_before_its_launcher_exits() {
    let Some(seekdb) = seekdb() else { return };
    let d = Daemon::start();
    let home = Home::new();
    let spec = seekdb_launcher(
        &home,
        &seekdb,
        "bin/observer-seekdb -N \"$@\" & echo $! > run/observer.pid\nexec sleep 60",
    );
    let (s, pid) = seekdb_fails_at_once(&d, &home, "sdb-before", spec).await;
    assert_seekdb_words(error(&s), pid);
}

/// The launcher exits 0 first; only then does seekdb start (and die), as a
/// daemonized server obhostd reaps.
#[tokio::test]
async fn seekdb_dies_after_its_launcher_exits() {
    let Some(seekdb) = seekdb() else { return };
    let d = Daemon::start();
    let home = Home::new();
    let spec = seekdb_launcher(
        &home,
        &seekdb,
        "launcher=$$\n\
         ( sh -c 'while kill -0 '$launcher' 2>/dev/null; do sleep 0.01; done; echo $$ > run/observer.pid; exec bin/observer-seekdb -N \"$@\"' sh \"$@\" & )\n\
         exit 0",
    );
    let (s, pid) = seekdb_fails_at_once(&d, &home, "sdb-after", spec).await;
    assert_seekdb_words(error(&s), pid);
}

/// seekdb is the launcher (in the foreground) and exits 1: its exit code and
/// its own lines are the report.
#[tokio::test]
async fn seekdb_as_the_launcher_exits_non_zero() {
    let Some(seekdb) = seekdb() else { return };
    let d = Daemon::start();
    let home = Home::new();
    let spec = seekdb_launcher(&home, &seekdb, "exec bin/observer-seekdb -N \"$@\"");
    let (s, pid) = seekdb_fails_at_once(&d, &home, "sdb-launcher", spec).await;
    let e = error(&s);
    assert_seekdb_words(e, pid);
    assert_eq!(s.kind(), pb::StepKind::StartObserverProcess, "{s:#?}");
    assert_eq!(detail(e, "pid"), s.outputs["launcher_pid"], "{e:#?}");
}

/// seekdb daemonizes (its launcher exits 0) and never writes the pid file
/// obhostd was told of (`run/observer.pid`; it writes `run/seekdb.pid`): the
/// census, not the pid file, ends the wait when the daemon dies.
#[tokio::test]
async fn seekdb_never_writes_the_pid_file() {
    let Some(seekdb) = seekdb() else { return };
    let d = Daemon::start();
    let home = Home::new();
    let spec = seekdb_launcher(&home, &seekdb, "exec bin/observer-seekdb \"$@\"");
    let (s, pid) = seekdb_fails_at_once(&d, &home, "sdb-no-pid-file", spec).await;
    assert_seekdb_words(error(&s), pid);
    assert!(!home.path().join("run/observer.pid").exists());
}

/// The pid file is a link to seekdb's own (what the wrapper makes by
/// default), which obhostd never follows: the daemon's death still ends the
/// wait.
#[tokio::test]
async fn seekdb_behind_a_linked_pid_file() {
    let Some(seekdb) = seekdb() else { return };
    let d = Daemon::start();
    let home = Home::new();
    let spec = seekdb_launcher(
        &home,
        &seekdb,
        "ln -s seekdb.pid run/observer.pid\nexec bin/observer-seekdb \"$@\"",
    );
    let (s, pid) = seekdb_fails_at_once(&d, &home, "sdb-linked", spec).await;
    assert_seekdb_words(error(&s), pid);
    assert!(home.path().join("run/observer.pid").is_symlink());
}

/// The pid file names a dead process while seekdb (the launcher, port free)
/// runs and would become ready: that is the end of this start, within 2 s,
/// and the seekdb it leaves behind is stopped.
#[tokio::test]
async fn the_pid_file_names_a_dead_pid_while_seekdb_runs() {
    let Some(seekdb) = seekdb() else { return };
    let d = Daemon::start();
    let home = Home::new();
    let spec = seekdb_launcher(
        &home,
        &seekdb,
        "sh -c 'exit 0' & p=$!\nwait $p\ndate +%s.%N > log/died_at\necho $p > run/observer.pid\nexec bin/observer-seekdb -N \"$@\"",
    );
    start_observer(&d, "sdb-dead-pid", spec).await.unwrap();
    let s = wait_for(&d, "sdb-dead-pid", Duration::from_secs(70), is_terminal).await;
    assert_eq!(s.state(), pb::StepState::Failed, "{s:#?}");
    let e = error(&s);
    assert_eq!(e.code, "PROCESS_EXITED", "{e:#?}");
    let dead = std::fs::read_to_string(home.path().join("run/observer.pid")).unwrap();
    assert_eq!(detail(e, "pid"), dead.trim(), "{e:#?}");
    let died: f64 = std::fs::read_to_string(home.path().join("log/died_at"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let t = s.finished_at.unwrap();
    let after = (t.seconds as f64 + t.nanos as f64 / 1e9) - died;
    assert!(after < 2.0, "FAILED {after} s after the death: {s:#?}");
    let launcher: i32 = s.outputs["launcher_pid"].parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(launcher) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!alive(launcher), "the seekdb left behind was stopped");
}
