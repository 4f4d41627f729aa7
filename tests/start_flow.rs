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
    // One spelling of states in the CLI's summary, checks included.
    assert!(
        !out.contains("STEP_STATE_") && !out.contains("CHECK_STATUS_"),
        "{out}"
    );
    let dag: serde_json::Value = serde_json::from_str(&out).unwrap();
    let checks = dag["tasks"][0]["checks"].as_array().unwrap();
    assert!(checks.iter().any(|c| c["status"] == "PASS"), "{dag}");
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
    // The failure is explained once (stderr), not repeated on the live line.
    let said = format!("{out}{err}").matches("while daemonizing").count();
    assert_eq!(said, 1, "{out}\n{err}");
    assert!(
        out.contains("Start observer process   FAILED     PROCESS_EXITED"),
        "{out}"
    );
    // "(N warnings)" comes with the N checks that warned, by name.
    if let Some(n) = out
        .split_once("all checks passed (")
        .and_then(|(_, rest)| rest.split(' ').next())
        .and_then(|n| n.parse::<usize>().ok())
    {
        assert_eq!(out.matches("      warning ").count(), n, "{out}");
    }

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

/// Ctrl-C stops following; only the followed step goes on in obhostd, and
/// the later ones were never created. The message says so and quotes the
/// command that resumes, with the --dag-id made up for this run (none was
/// given): run as quoted, it finishes the DAG, keeping the steps that
/// succeeded and following the running one, with no step made twice.
#[tokio::test]
async fn ctrl_c_quotes_the_command_that_resumes_and_it_finishes_the_dag() {
    let d = Daemon::start();
    let home = Home::new();
    let home_s = home.path().display().to_string();
    let agent_dir = tempfile::tempdir().unwrap();
    let mut args = start_args(
        &home,
        Some(FAKE_OBSERVER),
        "unused",
        &["--env", "FAKE_OBSERVER_LISTEN_DELAY_MS=3000"],
    );
    // No --dag-id: the one obhostctl makes up must be in the message.
    let at = args.iter().position(|a| a == "--dag-id").unwrap();
    args.drain(at..at + 2);
    args.extend(agent_args(agent_dir.path(), free_port()));
    let child = spawn_obhostctl(&d, &args);
    // Interrupt while the observer is on its way up: the wait step runs.
    let wait = loop {
        let steps = list_steps(&d).await;
        if let Some(w) = steps.iter().find(|s| s.id.ends_with("-wait")) {
            break w.clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let dag = wait.dag_id.clone();
    assert!(dag.starts_with("start-"), "{wait:?}");
    // Give obhostctl the answer to its request, so that it follows the step
    // (the observer listens only 3 s after its start).
    tokio::time::sleep(Duration::from_millis(300)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(
        err.contains(&format!(
            "'Wait observer active' ({dag}-wait) goes on in obhostd; Start ocp agent service not started"
        )) && err.contains(&format!("run the same command again with --dag-id {dag}")),
        "{err}"
    );
    assert!(
        !err.contains("steps watch"),
        "a watch of the DAG would never end: {err}"
    );
    let rerun = err.lines().last().unwrap().trim().to_string();
    assert!(rerun.ends_with(&format!("--dag-id {dag}")), "{rerun}");
    // Nothing went on but the followed step.
    let made: Vec<String> = list_steps(&d).await.into_iter().map(|s| s.id).collect();
    assert!(!made.contains(&format!("{dag}-agent")), "{made:?}");

    let rerun_out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("sh")
            .args(["-c", &rerun])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&rerun_out.stdout),
        String::from_utf8_lossy(&rerun_out.stderr),
    );
    kill_agent(&d, &format!("{dag}-agent"));
    assert_eq!(rerun_out.status.code(), Some(0), "{out}\n{err}");
    assert!(
        out.contains("[earlier] Prepare start observer   SUCCEEDED"),
        "{out}"
    );
    assert!(
        out.contains("[earlier] Start observer process   SUCCEEDED"),
        "{out}"
    );
    let steps = list_steps(&d).await;
    let mut ids: Vec<&str> = steps.iter().map(|s| s.id.as_str()).collect();
    ids.sort();
    let want: Vec<String> = ["agent", "prepare", "start", "wait"]
        .iter()
        .map(|s| format!("{dag}-{s}"))
        .collect();
    assert_eq!(ids, want, "one step each, no other");
    for s in &steps {
        assert_eq!(s.state(), pb::StepState::Succeeded, "{s:?}");
        assert_eq!(s.attempt, 1, "{s:?}");
    }
    let followed = get_step(&d, &format!("{dag}-wait")).await;
    assert_eq!(
        followed.created_at, wait.created_at,
        "the wait was made again"
    );
    let (code, _, err) = obhostctl(Some(&d), &["stop-observer", "--home", &home_s]);
    assert_eq!(code, 0, "{err}");
}

/// A re-run that finds a step FAILED shows it as it ended and does not run
/// it (nor anything after it) again; once the cause is fixed and the step
/// retried, the same command goes on from it to the end.
#[tokio::test]
async fn a_rerun_stops_at_a_failed_step_until_it_is_retried() {
    let d = Daemon::start();
    let home = Home::new();
    let home_s = home.path().display().to_string();
    let agent_dir = tempfile::tempdir().unwrap();
    let args = flow_args(&home, "refail", agent_dir.path(), free_port());
    let holder = std::net::TcpListener::bind(("127.0.0.1", home.mysql_port)).unwrap();
    let (code, _, err) = obhostctl(Some(&d), &strs(&args));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("PORT_IN_USE"), "{err}");
    drop(holder);

    let (code, out, err) = obhostctl(Some(&d), &strs(&args));
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        out.contains("[earlier] Prepare start observer   FAILED"),
        "{out}"
    );
    assert!(
        err.contains("it was FAILED before this run (attempt 1)")
            && err.contains(
                "run `obhostctl steps retry refail-prepare`, then this command again with \
                 --dag-id refail"
            ),
        "{err}"
    );
    assert_eq!(
        list_steps(&d).await.len(),
        1,
        "a step after the failed one was made"
    );

    let (code, _, err) = obhostctl(Some(&d), &["steps", "retry", "refail-prepare"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = obhostctl(Some(&d), &strs(&args));
    kill_agent(&d, "refail-agent");
    assert_eq!(code, 0, "{out}\n{err}");
    let prepare = get_step(&d, "refail-prepare").await;
    assert_eq!(prepare.attempt, 2);
    assert_eq!(list_steps(&d).await.len(), 4);
    let (code, _, err) = obhostctl(Some(&d), &["stop-observer", "--home", &home_s]);
    assert_eq!(code, 0, "{err}");
}

/// --no-agent runs the three observer steps and no agent step, on an
/// obhostd with no [agent_service] (which refuses an agent step without
/// one), and its DAG has three tasks.
#[tokio::test]
async fn no_agent_runs_the_three_observer_steps() {
    let d = Daemon::start();
    let home = Home::new();
    let home_s = home.path().display().to_string();
    let mut args = vec!["-o".to_string(), "json".into()];
    args.extend(start_args(
        &home,
        Some(FAKE_OBSERVER),
        "noagent",
        &["--param", "memory_limit=1G", "--no-agent"],
    ));
    let (code, out, err) = obhostctl(Some(&d), &strs(&args));
    assert_eq!(code, 0, "{out}\n{err}");
    let dag: serde_json::Value = serde_json::from_str(&out).expect("a JSON DAG");
    assert_eq!(dag["status"], "SUCCEEDED", "{dag}");
    let tasks = dag["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 3, "{dag}");
    assert_eq!(tasks[2]["downstreams"], serde_json::json!([]), "{dag}");
    let ids: Vec<String> = list_steps(&d).await.into_iter().map(|s| s.id).collect();
    assert!(!ids.contains(&"noagent-agent".to_string()), "{ids:?}");
    assert_eq!(ids.len(), 3, "{ids:?}");

    // With an agent flag it is a contradiction, refused before anything runs.
    let mut both = start_args(&home, Some(FAKE_OBSERVER), "both", &["--no-agent"]);
    both.extend(["--agent-unit".into(), "ocp_agentd.service".into()]);
    let (code, _, err) = obhostctl(Some(&d), &strs(&both));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--no-agent") && err.contains("--agent-unit"),
        "{err}"
    );
    let (code, _, err) = obhostctl(Some(&d), &["stop-observer", "--home", &home_s]);
    assert_eq!(code, 0, "{err}");
}

/// obhostd's words are the API's ("set systemd_unit or command in the
/// request", "(or set create_dirs)"); obhostctl shows them as its own flags,
/// in a refusal and in a failed check's fix.
#[tokio::test]
async fn refusals_and_fixes_name_obhostctls_flags() {
    let d = Daemon::start();
    let home = Home::new();
    // No agent flag, and no [agent_service] in obhostd's config.
    let args = start_args(&home, Some(FAKE_OBSERVER), "words", &[]);
    let (code, _, err) = obhostctl(Some(&d), &strs(&args));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("give --agent-unit or --agent-program (or --no-agent to start no agent)"),
        "{err}"
    );
    assert!(
        !err.contains("systemd_unit or command in the request"),
        "{err}"
    );

    // Prepare without --create-dirs: the missing dirs' fix names the flag.
    let bare: Vec<String> = start_args(&home, Some(FAKE_OBSERVER), "words2", &["--no-agent"])
        .into_iter()
        .filter(|a| a != "--create-dirs")
        .collect();
    let (code, _, err) = obhostctl(Some(&d), &strs(&bare));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("(or run with --create-dirs)"), "{err}");
    assert!(!err.contains("create_dirs"), "{err}");
    // `steps get` shows the step in the same words; its JSON is the record
    // as obhostd keeps it, for scripts.
    let (code, out, _) = obhostctl(Some(&d), &["steps", "get", "words2-prepare"]);
    assert_eq!(code, 0);
    assert!(out.contains("(or run with --create-dirs)"), "{out}");
    let (_, out, _) = obhostctl(Some(&d), &["-o", "json", "steps", "get", "words2-prepare"]);
    assert!(out.contains("(or set create_dirs)"), "{out}");
}

/// Ctrl-C with `-o json`: one document, its error INTERRUPTED (exit 130)
/// with the command that resumes as a list of arguments, for a script.
#[tokio::test]
async fn ctrl_c_with_json_gives_the_command_as_arguments() {
    let d = Daemon::start();
    let home = Home::new();
    let home_s = home.path().display().to_string();
    let agent_dir = tempfile::tempdir().unwrap();
    let mut args = vec!["-o".to_string(), "json".into()];
    args.extend(start_args(
        &home,
        Some(FAKE_OBSERVER),
        "jint",
        &["--env", "FAKE_OBSERVER_LISTEN_DELAY_MS=3000"],
    ));
    args.extend(agent_args(agent_dir.path(), free_port()));
    let child = spawn_obhostctl(&d, &args);
    wait_for(&d, "jint-wait", Duration::from_secs(20), |_| true).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one document");
    assert_eq!(doc["error"]["code"], "INTERRUPTED", "{doc}");
    assert_eq!(doc["error"]["exit_status"], 130, "{doc}");
    let rerun: Vec<&str> = doc["error"]["rerun"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(rerun[0], OBHOSTCTL, "{doc}");
    assert!(rerun.windows(2).any(|w| w == ["--dag-id", "jint"]), "{doc}");
    wait_terminal(&d, "jint-wait").await;
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
            && err.contains("--agent-program 'python3'"),
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
