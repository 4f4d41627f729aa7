//! StartAgentService with a supervised command and HTTP/TCP health, already
//! running, never healthy, a dying service, config defaults, and a host without
//! systemd.

mod common;

use std::time::{Duration, Instant};

use common::*;
use obhost::proto::v1 as pb;
use pb::health_check::Check;
use pb::start_agent_service_request::Service;
use tonic::Code;

fn req(
    id: &str,
    service: Option<Service>,
    check: Option<Check>,
    timeout: f64,
) -> pb::StartAgentServiceRequest {
    pb::StartAgentServiceRequest {
        meta: Some(pb::StepMeta {
            step_id: id.into(),
            timeout: Some(secs(timeout)),
            ..Default::default()
        }),
        service,
        health: check.map(|c| pb::HealthCheck { check: Some(c) }),
    }
}

/// Sends the request; the step's id.
async fn submit(d: &Daemon, r: pb::StartAgentServiceRequest) -> String {
    let id = r.meta.as_ref().unwrap().step_id.clone();
    d.client()
        .await
        .start_agent_service(r)
        .await
        .expect("accepted");
    id
}

async fn run(d: &Daemon, r: pb::StartAgentServiceRequest) -> pb::Step {
    let id = submit(d, r).await;
    wait_for(d, &id, Duration::from_secs(60), is_terminal).await
}

/// As [`run`], for a command that waits for `go` in `dir` ([`AWAIT_GO`]):
/// created once the step is at `reached`.
async fn run_until(
    d: &Daemon,
    r: pb::StartAgentServiceRequest,
    reached: impl Fn(&pb::Step) -> bool,
    dir: &std::path::Path,
) -> pb::Step {
    let id = submit(d, r).await;
    let at = wait_for(d, &id, Duration::from_secs(30), |s| {
        is_terminal(s) || reached(s)
    })
    .await;
    assert!(
        !is_terminal(&at),
        "ended before the command was let go: {at:#?}"
    );
    std::fs::write(dir.join("go"), "").unwrap();
    wait_for(d, &id, Duration::from_secs(60), is_terminal).await
}

#[tokio::test]
async fn a_command_with_http_health_then_already_running() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/");
    let s = run(
        &d,
        req(
            "agent-1",
            Some(Service::Command(http_server(dir.path(), port))),
            Some(Check::HttpUrl(url.clone())),
            30.0,
        ),
    )
    .await;
    assert_eq!(s.state(), pb::StepState::Succeeded, "{s:#?}");
    assert_eq!(s.outputs["already_running"], "false");
    let pid: i32 = s.outputs["pid"].parse().unwrap();
    assert!(alive(pid));
    assert_eq!(
        nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(pid)))
            .unwrap()
            .as_raw(),
        pid
    );

    let again = run(
        &d,
        req(
            "agent-2",
            Some(Service::Command(http_server(dir.path(), port))),
            Some(Check::HttpUrl(url)),
            30.0,
        ),
    )
    .await;
    assert_eq!(again.state(), pb::StepState::Succeeded);
    assert_eq!(again.outputs["already_running"], "true");
    assert_eq!(
        again.outputs["pid"],
        pid.to_string(),
        "a second process was spawned"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

#[tokio::test]
async fn never_healthy_times_out_and_a_dying_service_is_process_exited() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let sleeper = pb::ServiceCommand {
        argv: vec!["/bin/sleep".into(), "30".into()],
        cwd: dir.path().display().to_string(),
        foreground: true,
        ..Default::default()
    };
    let s = run(
        &d,
        req(
            "agent-slow",
            Some(Service::Command(sleeper)),
            Some(Check::TcpPort(port as u32)),
            1.0,
        ),
    )
    .await;
    assert_eq!(s.state(), pb::StepState::TimedOut, "{s:#?}");
    // What the failed start spawned does not outlive it.
    let pid: i32 = s.outputs["pid"].parse().unwrap();
    let end = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !alive(pid),
        "the never-healthy service {pid} was left running"
    );
    assert!(
        s.error
            .unwrap()
            .message
            .contains(&format!("port {port} not accepting"))
    );

    let dying = pb::ServiceCommand {
        argv: vec![
            "/bin/sh".into(),
            "-c".into(),
            format!("echo agent cannot start >&2; {AWAIT_GO}; exit 4"),
        ],
        cwd: dir.path().display().to_string(),
        foreground: true,
        ..Default::default()
    };
    let started = Instant::now();
    let s = run_until(
        &d,
        req(
            "agent-dies",
            Some(Service::Command(dying)),
            Some(Check::TcpPort(port as u32)),
            30.0,
        ),
        // Dies once the health check is under way.
        |s| s.message.contains("not accepting"),
        dir.path(),
    )
    .await;
    assert_eq!(s.state(), pb::StepState::Failed, "{s:#?}");
    let e = s.error.unwrap();
    assert_eq!(e.code, "PROCESS_EXITED");
    assert!(e.message.contains("exited with code 4"), "{}", e.message);
    // The same exit details as the observer's.
    assert_eq!(
        e.details.get("exit_code").map(String::as_str),
        Some("4"),
        "{e:#?}"
    );
    assert!(e.details.contains_key("pid"), "{e:#?}");
    assert!(
        e.log_tail.iter().any(|l| l.contains("agent cannot start")),
        "{:?}",
        e.log_tail
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn config_defaults_fill_an_empty_request() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let d = Daemon::start_with(Options {
        config: format!(
            "[agent_service]\nargv = [\"/usr/bin/python3\", \"-m\", \"http.server\", \"{port}\", \"--bind\", \"127.0.0.1\"]\ncwd = \"{}\"\nforeground = true\npid_file = \"{}\"\ntcp_port = {port}\n",
            dir.path().display(),
            dir.path().join("agent.pid").display()
        ),
        ..Options::default()
    });
    let s = run(&d, req("agent-defaults", None, None, 30.0)).await;
    assert_eq!(s.state(), pb::StepState::Succeeded, "{s:#?}");
    let pid: i32 = s.outputs["pid"].parse().unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("agent.pid"))
            .unwrap()
            .trim(),
        pid.to_string()
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

#[tokio::test]
async fn a_systemd_unit_without_systemd_fails_at_once() {
    if std::path::Path::new("/run/systemd/system").is_dir() {
        eprintln!("SKIPPED: systemd runs here; this test is for hosts without it");
        return;
    }
    let d = Daemon::start_with(Options {
        config: "[agent_service]\nallowed_units = [\"ocp_agentd.service\"]\n".into(),
        ..Options::default()
    });
    let started = Instant::now();
    let s = run(
        &d,
        req(
            "agent-unit",
            Some(Service::SystemdUnit("ocp_agentd.service".into())),
            None,
            60.0,
        ),
    )
    .await;
    assert_eq!(s.state(), pb::StepState::Failed);
    let e = s.error.unwrap();
    assert_eq!(e.code, "SYSTEMD_UNAVAILABLE");
    assert!(
        e.message.contains("give a command instead"),
        "{}",
        e.message
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn bad_agent_requests_are_invalid_argument() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let cases = vec![
        (req("a1", None, None, 5.0), "no agent service given"),
        (
            req(
                "a2",
                Some(Service::Command(pb::ServiceCommand {
                    argv: vec!["sleep".into()],
                    ..Default::default()
                })),
                None,
                5.0,
            ),
            "command.argv[0] 'sleep' is not absolute",
        ),
        (
            req(
                "a3",
                Some(Service::Command(http_server(dir.path(), 1))),
                Some(Check::HttpUrl("http://10.1.2.3:80/".into())),
                5.0,
            ),
            "loopback",
        ),
        (
            req(
                "a4",
                Some(Service::Command(pb::ServiceCommand {
                    argv: vec!["/bin/sleep".into(), "1".into()],
                    ..Default::default()
                })),
                None,
                5.0,
            ),
            "pid_file is required",
        ),
        (
            req(
                "a5",
                Some(Service::SystemdUnit("bad unit".into())),
                None,
                5.0,
            ),
            "not a unit name",
        ),
    ];
    for (r, text) in cases {
        let err = d.client().await.start_agent_service(r).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().contains(text),
            "{:?} lacks {text:?}",
            err.message()
        );
    }
}

#[tokio::test]
async fn a_daemon_stopping_mid_start_leaves_the_service_running() {
    let mut d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let sleeper = pb::ServiceCommand {
        argv: vec!["/bin/sleep".into(), "30".into()],
        cwd: dir.path().display().to_string(),
        foreground: true,
        ..Default::default()
    };
    let r = req(
        "agent-restart",
        Some(Service::Command(sleeper)),
        Some(Check::TcpPort(free_port() as u32)),
        60.0,
    );
    d.client().await.start_agent_service(r).await.unwrap();
    let s = wait_for(&d, "agent-restart", Duration::from_secs(10), |s| {
        s.outputs.contains_key("pid")
    })
    .await;
    let pid: i32 = s.outputs["pid"].parse().unwrap();
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(15)).is_some());
    // A fixed time on purpose: obhostd has exited, so anything it sent is
    // sent; this gives a signal time to land, and a kill that was never
    // sent has no event to wait for.
    std::thread::sleep(Duration::from_millis(200));
    assert!(alive(pid), "a restart of obhostd killed what it started");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

/// A daemonizing agent command whose server dies before it writes its pid
/// file: the step fails at once with the server's exit code, as a failed
/// observer start does (the same census of the launch decides).
#[tokio::test]
async fn a_daemonizing_agent_whose_server_dies_fails_at_once() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let daemonizing = pb::ServiceCommand {
        argv: vec![
            "/bin/sh".into(),
            "-c".into(),
            format!("( sh -c 'echo agent server cannot bind >&2; {AWAIT_GO}; exit 6' & ); exit 0"),
        ],
        cwd: dir.path().display().to_string(),
        pid_file: dir.path().join("agent.pid").display().to_string(),
        foreground: false,
        ..Default::default()
    };
    let started = Instant::now();
    let s = run_until(
        &d,
        req(
            "agent-daemon-dies",
            Some(Service::Command(daemonizing)),
            Some(Check::TcpPort(port as u32)),
            60.0,
        ),
        // Dies once obhostd has seen the launcher exit and follows the server.
        |s| {
            s.outputs
                .get("stage")
                .is_some_and(|at| at == "launcher_exited")
        },
        dir.path(),
    )
    .await;
    assert_eq!(s.state(), pb::StepState::Failed, "{s:#?}");
    let e = s.error.unwrap();
    assert_eq!(e.code, "PROCESS_EXITED", "{e:#?}");
    assert_eq!(
        e.details.get("exit_code").map(String::as_str),
        Some("6"),
        "{e:#?}"
    );
    assert!(
        e.log_tail
            .iter()
            .any(|l| l.contains("agent server cannot bind")),
        "{e:#?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
