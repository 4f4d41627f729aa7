//! `obhostctl start-observer` command lines for the tests that run the flow
//! through the real CLI (start_flow.rs, output.rs, cli.rs).

use super::{Daemon, FAKE_OBSERVER, Home, obhostctl};

/// `start-observer` for `home` with the first-start fields every test gives,
/// then `extra`. `binary: None` leaves the default (bin/observer in the home,
/// where `install_seekdb` puts the kernel).
pub fn start_args(home: &Home, binary: Option<&str>, dag: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "start-observer".into(),
        "--home".into(),
        home.path().display().to_string(),
        "--mysql-port".into(),
        home.mysql_port.to_string(),
        "--rpc-port".into(),
        (home.mysql_port + 1).to_string(),
        "--zone".into(),
        "zone1".into(),
        "--cluster-name".into(),
        "obhost".into(),
        "--cluster-id".into(),
        "1".into(),
        "--create-dirs".into(),
        "--dag-id".into(),
        dag.into(),
    ];
    if let Some(binary) = binary {
        args.extend(["--binary".into(), binary.into()]);
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// The stand-in observer plays the OCP agent: a foreground process with a port.
/// Its arguments come first: flags after them are still obhostctl's.
pub fn agent_args(dir: &std::path::Path, port: u16) -> Vec<String> {
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

/// The whole flow against the stand-in: observer and agent.
pub fn flow_args(
    home: &Home,
    dag: &str,
    agent_dir: &std::path::Path,
    agent_port: u16,
) -> Vec<String> {
    let mut args = start_args(
        home,
        Some(FAKE_OBSERVER),
        dag,
        &["--param", "memory_limit=1G"],
    );
    args.extend(agent_args(agent_dir, agent_port));
    args
}

pub fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Kills the stand-in agent a flow started (obhostd leaves services running).
pub fn kill_agent(d: &Daemon, id: &str) {
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

/// obhostctl with `args` against `d`, its output piped, left running.
pub fn spawn_obhostctl(d: &Daemon, args: &[String]) -> std::process::Child {
    std::process::Command::new(super::OBHOSTCTL)
        .args(["--addr", &d.addr])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}
