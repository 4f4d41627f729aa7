//! `obhostctl start-observer`: the four host steps end to end against the
//! stand-in observer (always) and the real seekdb kernel, and a failing
//! observer stopping the flow with its error shown.

mod common;

use common::*;

/// The stand-in observer plays the OCP agent: a foreground process with a port.
/// Its arguments come first: flags after them are still obhostctl's.
fn agent_args(dir: &std::path::Path, port: u16) -> Vec<String> {
    vec![
        "--agent-program".into(),
        FAKE_OBSERVER.into(),
        "--agent-arg=-N".into(),
        "--agent-arg".into(),
        "-p".into(),
        "--agent-arg".into(),
        port.to_string(),
        "--agent-cwd".into(),
        dir.display().to_string(),
        "--agent-foreground".into(),
        "--agent-tcp-port".into(),
        port.to_string(),
    ]
}

fn kill_agent(d: &Daemon, id: &str) {
    let (_, out, _) = obhostctl(Some(d), &["-o", "json", "steps", "get", id]);
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&out)
        && let Some(pid) = v["outputs"]["pid"]
            .as_str()
            .and_then(|p| p.parse::<i32>().ok())
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

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
    let port = home.mysql_port.to_string();
    let rpc = (home.mysql_port + 1).to_string();
    let mut args: Vec<String> = [
        "-o",
        "json",
        "start-observer",
        "--home",
        &home_s,
        "--binary",
        FAKE_OBSERVER,
        "--mysql-port",
        &port,
        "--rpc-port",
        &rpc,
        "--zone",
        "zone1",
        "--cluster-name",
        "obhost",
        "--cluster-id",
        "1",
        "--param",
        "memory_limit=1G",
        "--create-dirs",
        "--dag-id",
        "222236",
        "--wait-user",
        "root",
        "--wait-timeout",
        "1m",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(agent_args(agent_dir.path(), agent_port));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = obhostctl(Some(&d), &argv);
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
    let port = home.mysql_port.to_string();
    let rpc = (home.mysql_port + 1).to_string();
    let pid_file = home.path().join("run/seekdb.pid").display().to_string();
    let home_s = home.path().display().to_string();
    let mut args: Vec<String> = [
        "-o",
        "json",
        "start-observer",
        "--home",
        &home_s,
        "--mysql-port",
        &port,
        "--rpc-port",
        &rpc,
        "--pid-file",
        &pid_file,
        "--zone",
        "zone1",
        "--cluster-name",
        "obhost",
        "--cluster-id",
        "1",
        "--param",
        "memory_limit=2G",
        "--create-dirs",
        "--dag-id",
        "111125",
        "--wait-user",
        "root",
        "--wait-timeout",
        "2m",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(agent_args(agent_dir.path(), agent_port));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = obhostctl(Some(&d), &argv);
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
    let home_s = home.path().display().to_string();
    let port = home.mysql_port.to_string();
    let rpc = (home.mysql_port + 1).to_string();
    let mut args: Vec<String> = [
        "start-observer",
        "--home",
        &home_s,
        "--binary",
        FAKE_OBSERVER,
        "--mysql-port",
        &port,
        "--rpc-port",
        &rpc,
        "--zone",
        "z1",
        "--cluster-name",
        "c",
        "--cluster-id",
        "1",
        "--param",
        "memory_limit=1G",
        "--create-dirs",
        "--dag-id",
        "bad",
        "--env",
        "FAKE_OBSERVER_EXIT_AT_START=5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(agent_args(agent_dir.path(), free_port()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = obhostctl(Some(&d), &argv);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("Prepare start observer   SUCCEEDED"), "{out}");
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
