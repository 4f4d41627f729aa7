//! `obhostctl start-observer`: the four host steps end to end against the
//! stand-in observer (always) and the real seekdb kernel, and a failing
//! observer stopping the flow with its error shown.

mod common;

use std::time::Duration;

use common::flow::*;
use common::*;
use obhost::proto::v1 as pb;

/// What a successful flow must show: the DAG in OCP's shape, each of the four
/// steps SUCCEEDED with its times, and the observer really running.
fn assert_flow_succeeded(d: &Daemon, out: &str, dag_id: &str, home: &str) {
    let dag: serde_json::Value = serde_json::from_str(out).expect("a JSON DAG");
    assert_eq!(dag["id"], dag_id);
    assert_eq!(dag["status"], "SUCCEEDED");
    let tasks = dag["tasks"].as_array().unwrap();
    let names: Vec<&str> = tasks.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "Prepare start observer",
            "Start observer process",
            "Wait observer active",
            "Start ocp agent service"
        ]
    );
    for t in tasks {
        assert_eq!(t["status"], "SUCCEEDED", "{t}");
        assert!(
            t["startTime"].is_string() && t["endTime"].is_string(),
            "{t}"
        );
    }
    let up = format!("{dag_id}-prepare");
    let down = format!("{dag_id}-wait");
    assert_eq!(tasks[1]["upstreams"], serde_json::json!([up]));
    assert_eq!(tasks[1]["downstreams"], serde_json::json!([down]));
    let (code, out, _) = obhostctl(Some(d), &["-o", "json", "observer", "--home", home]);
    assert_eq!(code, 0);
    let o: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(o["running"], true);
}

#[tokio::test]
async fn start_observer_runs_the_four_steps_against_the_stand_in() {
    let d = Daemon::start();
    let home = Home::new();
    let agent_dir = tempfile::tempdir().unwrap();
    let agent_port = free_port();
    let home_s = home.path().display().to_string();
    let mut args = vec!["-o".to_string(), "json".into()];
    args.extend(start_args(
        &home,
        Some(FAKE_OBSERVER),
        "222236",
        &[
            "--param",
            "memory_limit=1G",
            "--wait-user",
            "root",
            "--wait-timeout",
            "1m",
        ],
    ));
    args.extend(agent_args(agent_dir.path(), agent_port));
    let (code, out, err) = obhostctl(Some(&d), &strs(&args));
    kill_agent(&d, "222236-agent");
    assert_eq!(code, 0, "{out}\n{err}");
    assert_flow_succeeded(&d, &out, "222236", &home_s);
    let wait = get_step(&d, "222236-wait").await;
    assert!(wait.message.contains("'root' logged in"), "{wait:#?}");
    let (code, _, err) = obhostctl(Some(&d), &["stop-observer", "--home", &home_s]);
    assert_eq!(code, 0, "{err}");
    assert!(home.processes().is_empty());
}

#[tokio::test]
async fn start_observer_runs_the_four_steps_against_real_seekdb() {
    let Some(seekdb) = seekdb() else { return };
    let d = Daemon::start();
    let home = Home::new();
    install_seekdb(&home, &seekdb);
    let agent_dir = tempfile::tempdir().unwrap();
    let agent_port = free_port();
    let pid_file = home.path().join("run/seekdb.pid").display().to_string();
    let home_s = home.path().display().to_string();
    let mut args = vec!["-o".to_string(), "json".into()];
    args.extend(start_args(
        &home,
        None,
        "111125",
        &[
            "--pid-file",
            &pid_file,
            "--param",
            "memory_limit=2G",
            "--wait-user",
            "root",
            "--wait-timeout",
            "2m",
        ],
    ));
    args.extend(agent_args(agent_dir.path(), agent_port));
    let (code, out, err) = obhostctl(Some(&d), &strs(&args));
    kill_agent(&d, "111125-agent");
    assert_eq!(code, 0, "{out}\n{err}");
    assert_flow_succeeded(&d, &out, "111125", &home_s);
    let (code, _, err) = obhostctl(Some(&d), &["stop-observer", "--home", &home_s]);
    assert_eq!(code, 0, "{err}");
    assert!(home.processes().is_empty());
}

#[tokio::test]
async fn a_failing_observer_stops_the_flow_with_its_error() {
    let d = Daemon::start();
    let home = Home::new();
    let agent_dir = tempfile::tempdir().unwrap();
    let mut args = start_args(
        &home,
        Some(FAKE_OBSERVER),
        "bad",
        &[
            "--param",
            "memory_limit=1G",
            "--env",
            "FAKE_OBSERVER_EXIT_AT_START=5",
        ],
    );
    args.extend(agent_args(agent_dir.path(), free_port()));
    let argv = strs(&args);
    let (code, out, err) = obhostctl(Some(&d), &argv);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("Prepare start observer   SUCCEEDED"), "{out}");
    // The start's stages are shown as they are reached.
    assert!(out.contains("(stage launched since "), "{out}");
    assert!(
        err.contains("step 'bad-start' (Start observer process) PROCESS_EXITED"),
        "{err}"
    );
    assert!(
        err.contains("exiting at start"),
        "the log tail is shown: {err}"
    );
    assert!(
        !out.contains("Wait observer active"),
        "the flow went on after a failure: {out}"
    );

    // A failed check shows its fix.
    let holder = std::net::TcpListener::bind(("127.0.0.1", home.mysql_port)).unwrap();
    let argv2: Vec<&str> = argv
        .iter()
        .map(|a| if *a == "bad" { "bad2" } else { a })
        .collect();
    let (code, _, err) = obhostctl(Some(&d), &argv2);
    drop(holder);
    assert_eq!(code, 1);
    assert!(err.contains("PORT_IN_USE"), "{err}");
    assert!(err.contains("failed check port.mysql"), "{err}");
    assert!(err.contains("fix: stop pid"), "{err}");
}

/// Ctrl-C stops following, never the steps: obhostctl says how to follow them
/// again, and the observer still comes up in obhostd.
#[tokio::test]
async fn ctrl_c_leaves_the_steps_running_and_says_how_to_reattach() {
    let d = Daemon::start();
    let home = Home::new();
    let home_s = home.path().display().to_string();
    let agent_dir = tempfile::tempdir().unwrap();
    let mut args = start_args(
        &home,
        Some(FAKE_OBSERVER),
        "interrupted",
        &["--env", "FAKE_OBSERVER_LISTEN_DELAY_MS=3000"],
    );
    args.extend(agent_args(agent_dir.path(), free_port()));
    let child = spawn_obhostctl(&d, &args);
    // Interrupt while the observer is still on its way up.
    wait_for(&d, "interrupted-start", Duration::from_secs(20), |s| {
        s.state() == pb::StepState::Succeeded
    })
    .await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(
        err.contains("the steps go on in obhostd") && err.contains("--dag-id interrupted"),
        "{err}"
    );
    let wait = wait_terminal(&d, "interrupted-wait").await;
    assert_eq!(wait.state(), pb::StepState::Succeeded, "{wait:#?}");
    let (code, _, err) = obhostctl(Some(&d), &["stop-observer", "--home", &home_s]);
    assert_eq!(code, 0, "{err}");
}

/// obhostd restarting mid-flow (kill -9 here) does not end the flow: the
/// CLI follows again from the last revision it saw and runs the next steps.
#[tokio::test]
async fn the_flow_survives_a_restart_of_obhostd() {
    let d = Daemon::start();
    let home = Home::new();
    let agent_dir = tempfile::tempdir().unwrap();
    let agent_port = free_port();
    let home_s = home.path().display().to_string();
    let mut args = start_args(
        &home,
        Some(FAKE_OBSERVER),
        "restarted",
        &["--env", "FAKE_OBSERVER_LISTEN_DELAY_MS=3000"],
    );
    args.extend(agent_args(agent_dir.path(), agent_port));
    let child = spawn_obhostctl(&d, &args);
    // While WaitObserverActive waits for the port, obhostd dies and comes back.
    wait_for(&d, "restarted-wait", Duration::from_secs(20), |_| true).await;
    let d = d.restart_after_kill9();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    kill_agent(&d, "restarted-agent");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{err}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(err.contains("reconnecting"), "{err}");
    let agent = get_step(&d, "restarted-agent").await;
    assert_eq!(agent.state(), pb::StepState::Succeeded);
    let (code, _, err) = obhostctl(Some(&d), &["stop-observer", "--home", &home_s]);
    assert_eq!(code, 0, "{err}");
}

/// The four requests are checked by obhostd before the first starts: an
/// agent argument it would refuse (a relative program) stops the flow before
/// Prepare creates a directory or an observer runs, naming the step and the
/// field.
#[tokio::test]
async fn a_bad_agent_argument_is_refused_before_any_step_starts() {
    let d = Daemon::start();
    let home = Home::new();
    let mut args = start_args(&home, Some(FAKE_OBSERVER), "early", &[]);
    args.extend(["--agent-program".into(), "python3".into()]);
    let (code, out, err) = obhostctl(Some(&d), &strs(&args));
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("step 'early-agent' (Start ocp agent service) would be refused")
            && err.contains("no step was started")
            && err.contains("command.argv[0]"),
        "{err}"
    );
    assert!(list_steps(&d).await.is_empty());
    let made: Vec<_> = std::fs::read_dir(home.path()).unwrap().flatten().collect();
    assert!(made.is_empty(), "Prepare ran: {made:?}");
    assert!(home.processes().is_empty());

    // -o json: the same refusal as one error document.
    let mut json = vec!["-o".to_string(), "json".into()];
    json.extend(args);
    let (code, out, _) = obhostctl(Some(&d), &strs(&json));
    assert_eq!(code, 1);
    let doc: serde_json::Value = serde_json::from_str(&out).expect("one JSON document");
    assert_eq!(doc["error"]["code"], "INVALID_ARGUMENT", "{doc}");
}
