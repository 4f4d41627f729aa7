//! StartObserver, StopObserver and GetObserver against the real daemon and the
//! stand-in observer (a real process that forks, writes its pid file and speaks
//! MySQL on its port), including every failure the design names.

mod common;

use std::time::Duration;

use common::*;
use obhost::proto::v1 as pb;
use tonic::Code;

async fn started(d: &Daemon, id: &str, spec: pb::ObserverSpec) -> pb::Step {
    start_ok(d, id, spec).await.0
}

fn pid_of(s: &pb::Step) -> i32 {
    s.outputs["pid"].parse().unwrap()
}

#[tokio::test]
async fn daemonizing_start_get_and_stop() {
    let d = Daemon::start();
    let home = Home::new();
    let s = started(&d, "start-1", home.spec()).await;
    let pid = pid_of(&s);
    assert_eq!(s.outputs["already_running"], "false");
    assert!(
        s.outputs["command"].contains(&format!("-p {}", home.mysql_port)),
        "{:?}",
        s.outputs
    );
    assert!(!s.outputs["process_start_time"].is_empty());
    assert!(alive(pid));
    // The server leads its own session: not in the daemon's group.
    assert_eq!(
        nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(pid)))
            .unwrap()
            .as_raw(),
        pid
    );
    assert_eq!(
        std::fs::read_to_string(home.pid_file()).unwrap().trim(),
        pid.to_string()
    );
    // Its environment is clean: nothing of ours, LD_LIBRARY_PATH set.
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        environ.contains(&format!("LD_LIBRARY_PATH={}/lib:", home.path().display())),
        "{environ}"
    );
    assert!(
        !environ.contains("RUST_LOG"),
        "daemon env leaked: {environ}"
    );
    // The usual umask, not obhostd's private 077.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("Umask:\t0022"), "{status}");

    let o = get_observer(&d, home.path()).await;
    assert!(o.running);
    assert_eq!(o.pid as i32, pid);
    assert!(
        o.listening_ports.contains(&(home.mysql_port as u32)),
        "{o:?}"
    );
    assert!(o.rss_bytes > 0 && o.threads >= 1);
    assert!(o.command.iter().any(|a| a == "-p"));
    assert!(o.uptime.is_some());

    let stop = stop_observer(&d, "stop-1", home.path(), 5.0, false).await;
    let stop = wait_terminal(&d, &stop.id).await;
    assert_eq!(stop.state(), pb::StepState::Succeeded, "{stop:#?}");
    assert_eq!(stop.outputs["killed"], "false");
    assert!(!alive(pid));
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", home.mysql_port)).is_ok(),
        "port still held"
    );
    assert!(!home.pid_file().exists());
    let o = get_observer(&d, home.path()).await;
    assert!(!o.running);
    let exit = o.last_exit.expect("last exit recorded");
    assert_eq!(exit.pid as i32, pid);
    assert_eq!(exit.code, Some(0), "{exit:?}");
    assert!(
        zombies_of(d.pid()).is_empty(),
        "zombies left: {:?}",
        zombies_of(d.pid())
    );

    let err = d
        .client()
        .await
        .get_observer(pb::GetObserverRequest {
            home_path: "relative".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("home_path 'relative' is not absolute"),
        "{}",
        err.message()
    );

    let again = stop_observer(&d, "stop-2", home.path(), 5.0, false).await;
    let again = wait_terminal(&d, &again.id).await;
    assert_eq!(again.outputs["already_stopped"], "true");
}

#[tokio::test]
async fn foreground_start_writes_the_pid_file_itself() {
    let d = Daemon::start();
    let home = Home::new();
    let mut spec = home.spec();
    spec.foreground = true;
    let s = started(&d, "fg-1", spec).await;
    let pid = pid_of(&s);
    assert_eq!(
        std::fs::read_to_string(home.pid_file()).unwrap().trim(),
        pid.to_string()
    );
    assert!(
        s.outputs["command"].contains(" -N "),
        "{}",
        s.outputs["command"]
    );
    // Killed behind our back: the daemon sees it, records the signal, removes
    // the pid file it owns and leaves no zombie.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mut status = get_observer(&d, home.path()).await;
    for _ in 0..100 {
        if status.last_exit.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        status = get_observer(&d, home.path()).await;
    }
    assert_eq!(status.last_exit.expect("exit seen").signal, Some(9));
    assert!(!home.pid_file().exists());
    assert!(zombies_of(d.pid()).is_empty());
}

#[tokio::test]
async fn already_running_spawns_nothing() {
    let d = Daemon::start();
    let home = Home::new();
    let first = started(&d, "ar-1", home.spec()).await;
    let second = started(&d, "ar-2", home.spec()).await;
    assert_eq!(second.outputs["already_running"], "true");
    assert_eq!(pid_of(&second), pid_of(&first));
    assert_eq!(home.processes(), vec![pid_of(&first)]);
}

#[tokio::test]
async fn racing_starts_make_one_process() {
    let d = Daemon::start();
    let home = Home::new();
    let (a, b) = tokio::join!(
        start_observer(&d, "race-a", home.spec()),
        start_observer(&d, "race-b", home.spec())
    );
    a.unwrap();
    b.unwrap();
    let a = wait_terminal(&d, "race-a").await;
    let b = wait_terminal(&d, "race-b").await;
    assert_eq!(a.state(), pb::StepState::Succeeded);
    assert_eq!(b.state(), pb::StepState::Succeeded);
    assert_eq!(pid_of(&a), pid_of(&b));
    let mut flags = [
        a.outputs["already_running"].clone(),
        b.outputs["already_running"].clone(),
    ];
    flags.sort();
    assert_eq!(flags, ["false".to_string(), "true".to_string()]);
    assert_eq!(home.processes().len(), 1, "{:?}", home.processes());
}

#[tokio::test]
async fn a_stale_pid_file_never_blocks_a_start() {
    let d = Daemon::start();
    let home = Home::new();
    std::fs::create_dir_all(home.path().join("run")).unwrap();
    // A pid that is dead, then one that is alive but is not an observer.
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    std::fs::write(home.pid_file(), format!("{dead_pid}\n")).unwrap();
    let s = started(&d, "stale-1", home.spec()).await;
    assert_ne!(pid_of(&s), dead_pid as i32);
    stop_observer(&d, "stale-stop", home.path(), 5.0, false).await;
    wait_terminal(&d, "stale-stop").await;

    let mut other = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    std::fs::write(home.pid_file(), format!("{}\n", other.id())).unwrap();
    let s = started(&d, "stale-2", home.spec()).await;
    assert_ne!(pid_of(&s), other.id() as i32);
    assert_eq!(s.outputs["already_running"], "false");
    assert!(
        other.try_wait().unwrap().is_none(),
        "the unrelated process was touched"
    );
    other.kill().unwrap();
    other.wait().unwrap();
}

#[tokio::test]
async fn a_pid_that_belongs_to_another_process_is_never_signalled() {
    let d = Daemon::start();
    let home = Home::new();
    std::fs::create_dir_all(home.path().join("run")).unwrap();
    let other = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    std::fs::write(home.pid_file(), format!("{}\n", other.id())).unwrap();
    let s = stop_observer(&d, "reuse-stop", home.path(), 1.0, true).await;
    let s = wait_terminal(&d, &s.id).await;
    assert_eq!(s.state(), pb::StepState::Succeeded);
    assert_eq!(s.outputs["already_stopped"], "true");
    assert!(
        home.pid_file().exists(),
        "a live foreign pid file was removed"
    );
    if let Some(status) = ended_before_our_signal(other) {
        panic!("a foreign process was signalled: it {status}");
    }
}

#[tokio::test]
async fn a_crash_at_start_is_process_exited_with_the_log() {
    let d = Daemon::start();
    let home = Home::new();
    start_observer(
        &d,
        "crash-1",
        home.spec_with_env("FAKE_OBSERVER_EXIT_AT_START", "3"),
    )
    .await
    .unwrap();
    let s = wait_terminal(&d, "crash-1").await;
    assert_eq!(s.state(), pb::StepState::Failed);
    let e = s.error.unwrap();
    assert_eq!(e.code, "PROCESS_EXITED");
    assert_eq!(
        e.details.get("exit_code").map(String::as_str),
        Some("3"),
        "{e:?}"
    );
    assert!(e.message.contains("exited with code 3"), "{}", e.message);
    assert!(
        e.log_tail.iter().any(|l| l.contains("exiting at start")),
        "{:?}",
        e.log_tail
    );
    assert!(home.processes().is_empty());
    // It died before anything was accepted as the server: GetObserver still
    // says how.
    let o = get_observer(&d, home.path()).await;
    assert!(!o.running);
    assert_eq!(o.last_exit.map(|l| l.code), Some(Some(3)), "{o:?}");

    // Dies shortly after it daemonized, before it listens: caught by the
    // settle window. (One that listens first is past its riskiest phase and
    // started at once; its later death is WaitObserverActive's to see.)
    let mut spec = home.spec_with_env("FAKE_OBSERVER_CRASH_AFTER_MS", "200");
    spec.env
        .insert("FAKE_OBSERVER_NEVER_LISTEN".into(), "1".into());
    start_observer(&d, "crash-2", spec).await.unwrap();
    let s = wait_terminal(&d, "crash-2").await;
    assert_eq!(s.state(), pb::StepState::Failed, "{s:#?}");
    let e = s.error.unwrap();
    assert_eq!(e.code, "PROCESS_EXITED");
    assert_eq!(
        e.details.get("exit_code").map(String::as_str),
        Some("134"),
        "{e:?}"
    );
    assert!(zombies_of(d.pid()).is_empty());
    // GetObserver keeps how the observer that died during its start ended.
    let o = get_observer(&d, home.path()).await;
    assert!(!o.running);
    let last = o
        .last_exit
        .expect("the last exit of an observer that died during start");
    assert_eq!(last.code, Some(134), "{last:?}");
}

#[tokio::test]
async fn sigterm_ignored_means_sigkill_after_grace() {
    let d = Daemon::start();
    let home = Home::new();
    let s = started(
        &d,
        "stubborn",
        home.spec_with_env("FAKE_OBSERVER_IGNORE_SIGTERM", "1"),
    )
    .await;
    let pid = pid_of(&s);
    let started_at = std::time::Instant::now();
    let stop = stop_observer(&d, "stubborn-stop", home.path(), 0.5, false).await;
    let stop = wait_terminal(&d, &stop.id).await;
    assert_eq!(stop.state(), pb::StepState::Succeeded, "{stop:#?}");
    assert_eq!(stop.outputs["killed"], "true");
    assert!(started_at.elapsed() >= Duration::from_millis(500));
    assert!(!alive(pid));
    let exit = get_observer(&d, home.path()).await.last_exit.unwrap();
    assert_eq!(exit.signal, Some(9));
}

#[tokio::test]
async fn force_stop_kills_at_once() {
    let d = Daemon::start();
    let home = Home::new();
    let s = started(&d, "force", home.spec()).await;
    let stop = stop_observer(&d, "force-stop", home.path(), 30.0, true).await;
    let stop = wait_terminal(&d, &stop.id).await;
    assert_eq!(stop.outputs["killed"], "true");
    assert!(!alive(pid_of(&s)));
    assert!(std::net::TcpListener::bind(("127.0.0.1", home.mysql_port)).is_ok());
}

#[tokio::test]
async fn the_observer_survives_kill9_of_obhostd_and_is_readopted() {
    let d = Daemon::start();
    let home = Home::new();
    let s = started(&d, "survive-1", home.spec()).await;
    let pid = pid_of(&s);
    let d = d.restart_after_kill9();
    assert!(alive(pid), "the observer died with obhostd");
    let o = get_observer(&d, home.path()).await;
    assert!(o.running);
    assert_eq!(o.pid as i32, pid);
    let again = started(&d, "survive-2", home.spec()).await;
    assert_eq!(again.outputs["already_running"], "true");
    assert_eq!(pid_of(&again), pid);
    assert!(zombies_of(d.pid()).is_empty());
    let stop = stop_observer(&d, "survive-stop", home.path(), 5.0, false).await;
    let stop = wait_terminal(&d, &stop.id).await;
    assert_eq!(stop.state(), pb::StepState::Succeeded);
    assert!(!alive(pid));
    assert!(home.processes().is_empty());
}

/// An observer re-adopted after obhostd's restart is init's child, never
/// reaped by obhostd: how it ended still comes through (the kernel's exit
/// events), not "exit status unknown".
#[tokio::test]
async fn a_readopted_observer_that_dies_is_reported_with_its_status() {
    let d = Daemon::start();
    let home = Home::new();
    let s = started(&d, "adopted-1", home.spec()).await;
    let pid = pid_of(&s);
    let d = d.restart_after_kill9();
    assert!(get_observer(&d, home.path()).await.running);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = get_observer(&d, home.path()).await.last_exit {
            break exit;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the re-adopted observer's death was not seen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(exit.pid as i32, pid, "{exit:?}");
    assert_eq!(exit.signal, Some(9), "{exit:?}");
}

#[tokio::test]
async fn kill9_during_a_start_resolves_the_step_without_a_duplicate() {
    let d = Daemon::start_with(Options {
        config: "[observer]\nstart_settle = \"3s\"\n".into(),
        ..Options::default()
    });
    let home = Home::new();
    // Not listening yet, so the start is still settling when obhostd dies.
    let spec = home.spec_with_env("FAKE_OBSERVER_LISTEN_DELAY_MS", "30000");
    start_observer(&d, "mid-1", spec).await.unwrap();
    // Wait until it has spawned (the pid is recorded), then crash the daemon.
    wait_for(&d, "mid-1", Duration::from_secs(10), |s| {
        s.outputs.contains_key("launcher_pid")
    })
    .await;
    let d = d.restart_after_kill9();
    let s = wait_terminal(&d, "mid-1").await;
    assert_eq!(s.state(), pb::StepState::Succeeded, "{s:#?}");
    assert_eq!(s.attempt, 1);
    // The resumed run recognised the process it spawned before the restart.
    assert_eq!(s.outputs["already_running"], "false", "{s:#?}");
    let procs = home.processes();
    assert_eq!(procs.len(), 1, "duplicate observers: {procs:?}");
    assert_eq!(pid_of(&s), procs[0]);
}

#[tokio::test]
async fn an_observer_that_died_while_obhostd_was_down_fails_the_resumed_start() {
    let d = Daemon::start_with(Options {
        config: "[observer]\nstart_settle = \"30s\"\n".into(),
        ..Options::default()
    });
    let home = Home::new();
    let spec = home.spec_with_env("FAKE_OBSERVER_LISTEN_DELAY_MS", "30000");
    start_observer(&d, "died-1", spec).await.unwrap();
    wait_for(&d, "died-1", Duration::from_secs(10), |s| {
        s.message.contains("watching it")
    })
    .await;
    let stopped = d.kill9();
    let procs = home.processes();
    assert!(!procs.is_empty(), "nothing was started");
    for pid in &procs {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let gone = std::time::Instant::now() + Duration::from_secs(10);
    while !home.processes().is_empty() && std::time::Instant::now() < gone {
        std::thread::sleep(Duration::from_millis(20));
    }
    let d = stopped.start();
    let s = wait_terminal(&d, "died-1").await;
    assert_eq!(s.state(), pb::StepState::Failed, "{s:#?}");
    let e = s.error.unwrap();
    assert_eq!(e.code, "PROCESS_EXITED", "{e:#?}");
    assert!(e.message.contains("RetryStep 'died-1'"), "{}", e.message);
    // Nothing was started in its place. A fixed time on purpose: nothing has
    // no event to wait for; this gives a wrong start time to show.
    std::thread::sleep(Duration::from_millis(300));
    assert!(home.processes().is_empty(), "{:?}", home.processes());
}

#[tokio::test]
async fn a_listening_observer_is_started_without_waiting_out_the_settle_window() {
    let d = Daemon::start_with(Options {
        config: "[observer]\nstart_settle = \"20s\"\n".into(),
        ..Options::default()
    });
    let home = Home::new();
    let began = std::time::Instant::now();
    let s = started(&d, "quick-1", home.spec()).await;
    let took = began.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "took {took:?}: it waited for start_settle"
    );
    assert_eq!(s.outputs["already_running"], "false");
    assert!(alive(pid_of(&s)));
    // Not listening: the settle window decides, and it is still honoured.
    let other = Home::new();
    let spec = other.spec_with_env("FAKE_OBSERVER_LISTEN_DELAY_MS", "60000");
    start_observer(&d, "quick-2", spec).await.unwrap();
    // A fixed time on purpose: the point is that 3 s of a 20 s window pass
    // without the step ending.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = get_step(&d, "quick-2").await;
    assert_eq!(s.state(), pb::StepState::Running, "{s:#?}");
}

#[tokio::test]
async fn invalid_specs_are_rejected_and_nothing_is_spawned() {
    let d = Daemon::start_with(Options {
        config: format!(
            "allowed_roots = [\"/tmp\", \"{}\", \"{}\"]\nallowed_users = [\"root\", \"{}\"]\n",
            std::env::temp_dir().display(),
            env!("CARGO_MANIFEST_DIR"),
            nix::unistd::User::from_uid(nix::unistd::geteuid())
                .unwrap()
                .unwrap()
                .name
        ),
        ..Options::default()
    });
    let home = Home::new();
    let not_exec = home.path().join("not-exec");
    std::fs::write(&not_exec, "x").unwrap();
    let mut cases: Vec<(pb::ObserverSpec, Code, &str)> = Vec::new();
    let mut s = home.spec();
    s.home_path = "relative/home".into();
    cases.push((
        s,
        Code::InvalidArgument,
        "observer.home_path 'relative/home' is not absolute",
    ));
    let mut s = home.spec();
    s.home_path = format!("{}/../x", home.path().display());
    cases.push((s, Code::InvalidArgument, "contains '..'"));
    let mut s = home.spec();
    s.home_path = "/var/lib/somewhere".into();
    cases.push((s, Code::PermissionDenied, "outside allowed_roots"));
    let mut s = home.spec();
    s.binary = home.path().join("missing").display().to_string();
    cases.push((s, Code::InvalidArgument, "observer.binary"));
    let mut s = home.spec();
    s.binary = not_exec.display().to_string();
    cases.push((s, Code::InvalidArgument, "not executable"));
    let mut s = home.spec();
    s.user = "no-such-user-obhost".into();
    cases.push((s, Code::InvalidArgument, "observer.user"));
    let mut s = home.spec();
    s.user = "nobody".into();
    cases.push((s, Code::PermissionDenied, "allowed_users"));
    let mut s = home.spec();
    s.mysql_port = 70000;
    cases.push((s, Code::InvalidArgument, "observer.mysql_port 70000"));
    let mut s = home.spec();
    s.zone = String::new();
    cases.push((s, Code::InvalidArgument, "observer.zone"));
    let mut s = home.spec();
    s.parameters.insert("bad key".into(), "1".into());
    cases.push((s, Code::InvalidArgument, "observer.parameters"));
    let mut s = home.spec();
    s.env.insert("NOTIFY_SOCKET".into(), "/run/x".into());
    cases.push((s, Code::InvalidArgument, "NOTIFY_SOCKET"));
    let mut s = home.spec();
    s.pid_file = "run/observer.pid".into();
    cases.push((s, Code::InvalidArgument, "observer.pid_file"));
    for (i, (spec, code, text)) in cases.into_iter().enumerate() {
        let id = format!("bad-{i}");
        let err = start_observer(&d, &id, spec).await.unwrap_err();
        assert_eq!(err.code(), code, "case {i} ({text}): {err:?}");
        assert!(
            err.message().contains(text),
            "case {i}: {:?} lacks {text:?}",
            err.message()
        );
        let missing = d
            .client()
            .await
            .get_step(pb::GetStepRequest { step_id: id })
            .await
            .unwrap_err();
        assert_eq!(
            missing.code(),
            Code::NotFound,
            "a step was created for a rejected request"
        );
    }
    assert!(home.processes().is_empty());
    let err = d
        .client()
        .await
        .start_observer(pb::StartObserverRequest {
            meta: Some(meta("no-spec")),
            observer: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn limits_reach_the_child() {
    let d = Daemon::start_with(Options {
        config: "[limits]\nnofile = 4096\ncore = 0\n".into(),
        ..Options::default()
    });
    let home = Home::new();
    let s = started(&d, "limits-1", home.spec()).await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", pid_of(&s))).unwrap();
    let line = |name: &str| {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .to_string()
    };
    let nofile: Vec<String> = line("Max open files")
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(&nofile[3..5], ["4096", "4096"], "{limits}");
    assert!(line("Max core file size").contains(" 0 "), "{limits}");
}

/// Runs the observer as another user, with that user's supplementary groups.
/// Needs root to create the user; CI runs as root.
#[tokio::test]
async fn runs_as_another_user_with_its_groups() {
    if !nix::unistd::geteuid().is_root() {
        assert!(std::env::var_os("CI").is_none(), "CI must run as root");
        eprintln!("SKIPPED: not root, cannot create a user");
        return;
    }
    user_db_locked(|| {
        let _ = std::process::Command::new("groupadd")
            .arg("obhostgrp")
            .status();
        let _ = std::process::Command::new("useradd")
            .args(["-m", "-G", "obhostgrp", "obhosttest"])
            .status();
    });
    let user = nix::unistd::User::from_name("obhosttest")
        .unwrap()
        .expect("user created");
    let group = nix::unistd::Group::from_name("obhostgrp")
        .unwrap()
        .expect("group created");
    let d = Daemon::start();
    let home = Home::new();
    nix::unistd::chown(home.path(), Some(user.uid), Some(user.gid)).unwrap();
    let mut spec = home.spec();
    spec.user = "obhosttest".into();
    let s = started(&d, "as-user", spec).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid_of(&s))).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .split_whitespace()
            .skip(1)
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(field("Uid:")[0], user.uid.to_string());
    assert_eq!(field("Gid:")[0], user.gid.to_string());
    assert!(
        field("Groups:").contains(&group.gid.to_string()),
        "{status}"
    );
    use std::os::unix::fs::MetadataExt;
    let out = std::fs::metadata(home.path().join("log/obhost_observer.out")).unwrap();
    assert_eq!(out.uid(), user.uid.as_raw());
}
