//! `obhostctl demo`: the whole job end to end on a machine with nothing
//! installed. It starts its own obhostd (temp state dir, a Unix socket in it), runs
//! the four host steps of "Start OB server" through it against the project's
//! stand-in observer (which also plays the OCP agent), shows the steps live, the
//! DAG and the observer's status, stops it, and removes everything it made.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use super::CliError;
use super::flow::{self, StartArgs};
use super::output::{self, Format};
use crate::proto::v1 as pb;

/// Everything the demo created; dropped last, it kills and removes all of it.
struct Scratch {
    dir: PathBuf,
    daemon: Option<Child>,
}

impl Scratch {
    /// Stops obhostd on the blocking pool, so the runtime keeps running
    /// meanwhile (a blocked runtime could not close our side of a connection,
    /// and obhostd would wait out its shutdown_timeout for it).
    async fn stop_daemon(&mut self) {
        if let Some(d) = self.daemon.take() {
            let _ = tokio::task::spawn_blocking(move || stop(d)).await;
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            stop(d);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// SIGTERM, up to 15 s for obhostd to exit, then SIGKILL.
fn stop(mut d: Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end {
        if let Ok(Some(_)) = d.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = d.kill();
    let _ = d.wait();
}

fn sibling(name: &str) -> Result<PathBuf, CliError> {
    let me = std::env::current_exe().map_err(|e| CliError::Other(e.into()))?;
    let path = me.with_file_name(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(CliError::Usage(format!(
            "'{}' not found next to obhostctl; build it first: cargo build --release",
            path.display()
        )))
    }
}

fn free_port() -> Result<u16, CliError> {
    for _ in 0..50 {
        let l =
            std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| CliError::Other(e.into()))?;
        let port = l
            .local_addr()
            .map_err(|e| CliError::Other(e.into()))?
            .port();
        drop(l);
        if port < 65000 && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return Ok(port);
        }
    }
    Err(CliError::Usage("no free loopback port pair found".into()))
}

/// Starts obhostd (pushing its changes to `report_endpoint`) and returns its
/// address, from its "listening" log line.
fn start_daemon(
    obhostd: &Path,
    scratch: &mut Scratch,
    report_endpoint: &str,
) -> Result<String, CliError> {
    let config = scratch.dir.join("obhostd.toml");
    std::fs::write(
        &config,
        format!(
            "{root}[report]\nendpoint = \"{report_endpoint}\"\nagent_id = \"demo-host\"\nbatch_delay = \"20ms\"\n",
            // The demo's homes are its caller's: run as root, it runs its
            // stand-ins as root, which obhostd does only when told to.
            root = if nix::unistd::geteuid().is_root() {
                "run_as_root = true\n"
            } else {
                ""
            }
        ),
    )
    .map_err(|e| CliError::Other(e.into()))?;
    let mut child = Command::new(obhostd)
        .arg("--config")
        .arg(&config)
        // A socket in the scratch dir: only this user may call the demo's daemon
        // (TCP would need a token).
        .arg("--listen")
        .arg(format!(
            "unix:{}",
            scratch.dir.join("obhostd.sock").display()
        ))
        .args(["--log-format", "json", "--state-dir"])
        .arg(scratch.dir.join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CliError::Other(anyhow::anyhow!("cannot start {}: {e}", obhostd.display())))?;
    let stderr = child.stderr.take();
    scratch.daemon = Some(child);
    let log_path = scratch.dir.join("obhostd.log");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Some(stderr) = stderr else { return };
        let mut log = std::fs::File::create(&log_path).ok();
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(log) = log.as_mut() {
                use std::io::Write;
                let _ = writeln!(log, "{line}");
            }
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["message"] == "listening"
                && let (Some(addr), Some(tx)) = (v["addr"].as_str(), tx.take())
            {
                let _ = tx.send(addr.to_string());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .map_err(|_| CliError::Other(anyhow::anyhow!("obhostd did not start within 30s")))
}

#[derive(clap::Args, Clone, Default)]
pub struct DemoArgs {
    /// A real observer binary (or a wrapper taking observer flags, like
    /// tests/fixtures/observer-seekdb.sh) to run instead of the stand-in. It is
    /// linked into the demo's home as bin/observer.
    #[arg(long, value_name = "PATH")]
    observer: Option<PathBuf>,
    /// An environment variable for that observer, KEY=VALUE (repeatable), e.g.
    /// SEEKDB_BIN=/path/to/seekdb.
    #[arg(long = "observer-env", value_name = "KEY=VALUE")]
    observer_env: Vec<String>,
    /// Its pid file, relative to its home (seekdb: run/seekdb.pid).
    #[arg(long, default_value = "run/observer.pid")]
    pid_file: String,
}

pub async fn run(args: DemoArgs, format: Format) -> Result<ExitCode, CliError> {
    let obhostd = sibling("obhostd")?;
    // The stand-in is built only with the `fake-observer` feature (never
    // packaged), and the demo needs it even with --observer: it plays the agent.
    let stand_in = sibling("obhost-fake-observer").map_err(|_| {
        CliError::Usage(format!(
            "the stand-in observer '{}' is not next to obhostctl: it is built only with the \
             `fake-observer` feature, and the demo runs it (as the OCP agent even with \
             --observer); build with `cargo build --release --features fake-observer`, then \
             run ./target/release/obhostctl demo",
            obhostd.with_file_name("obhost-fake-observer").display()
        ))
    })?;
    let dir = std::env::temp_dir().join(format!("obhost-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| CliError::Other(e.into()))?;
    let mut scratch = Scratch { dir, daemon: None };
    let home = scratch.dir.join("observer");
    let port = free_port()?;
    let observer = match &args.observer {
        None => stand_in.clone(),
        Some(real) => {
            let real = std::fs::canonicalize(real)
                .map_err(|e| CliError::Usage(format!("--observer '{}': {e}", real.display())))?;
            let bin = home.join("bin");
            std::fs::create_dir_all(&bin).map_err(|e| CliError::Other(e.into()))?;
            std::os::unix::fs::symlink(&real, bin.join("observer"))
                .map_err(|e| CliError::Other(e.into()))?;
            bin.join("observer")
        }
    };

    let say = |s: String| {
        if format == Format::Text {
            output::line(&s);
        }
    };
    say(format!(
        "obhost demo: everything lives in {} and is removed at the end",
        scratch.dir.display()
    ));
    // The orchestrator's side: a StepReporter that prints what obhostd pushes.
    // The orchestrator's end on a Unix socket in the demo's own dir: plain
    // text only where no other user can listen (see [report] endpoint).
    let sink_addr = format!("unix:{}", scratch.dir.join("reporter.sock").display());
    let (sink_listener, _) = super::report_sink::Listener::bind(&sink_addr)
        .await
        .map_err(CliError::Other)?;
    let stop_sink = tokio_util::sync::CancellationToken::new();
    if format == Format::Text {
        let stop = stop_sink.clone();
        tokio::spawn(super::report_sink::serve(
            tonic::transport::Server::builder(),
            sink_listener,
            super::report_sink::Sink::new(format, "    pushed to the orchestrator: "),
            async move { stop.cancelled().await },
        ));
    }
    let addr = start_daemon(&obhostd, &mut scratch, &sink_addr)?;
    say(format!(
        "started obhostd on {addr} (state in {}/state), pushing every step change to a \
         report-sink on {sink_addr} (lines marked 'pushed')",
        scratch.dir.display()
    ));
    let mut client = super::connect(&addr, None).await?;

    let agent_port = free_port()?;
    let agent_dir = scratch.dir.join("ocp_agent");
    std::fs::create_dir_all(&agent_dir).map_err(|e| CliError::Other(e.into()))?;
    let args = StartArgs {
        home: home.display().to_string(),
        binary: Some(observer.display().to_string()),
        mysql_port: Some(u32::from(port)),
        rpc_port: Some(u32::from(port) + 1),
        zone: Some("zone1".into()),
        cluster_name: Some("demo".into()),
        cluster_id: Some(1),
        params: vec!["memory_limit=1G".into()],
        env: args.observer_env.clone(),
        pid_file: Some(home.join(&args.pid_file).display().to_string()),
        wait_timeout: Some(Duration::from_secs(120)),
        create_dirs: true,
        dag_id: Some("demo".into()),
        wait_user: Some("root".into()),
        // The stand-in observer plays the OCP agent too: a foreground process
        // with a port to health-check.
        agent_program: Some(stand_in.display().to_string()),
        agent_args: vec!["-N".into(), "-p".into(), agent_port.to_string()],
        agent_cwd: Some(agent_dir.display().to_string()),
        agent_foreground: true,
        agent_tcp_port: Some(u32::from(agent_port)),
        ..StartArgs::default()
    };
    say(format!(
        "\nobhostctl start-observer --home {} --mysql-port {port} ... (the four host steps of 'Start OB server'):",
        home.display()
    ));
    let mut dag = None;
    let started = flow::run(&mut client, &args, format, &mut dag).await?;

    let observer_status = client
        .get_observer(pb::GetObserverRequest {
            home_path: home.display().to_string(),
        })
        .await?
        .into_inner()
        .observer
        .unwrap_or_default();
    say(format!(
        "\nobserver: running={} pid={} rss={} threads={} listening on {:?}",
        observer_status.running,
        observer_status.pid,
        output::size(observer_status.rss_bytes),
        observer_status.threads,
        observer_status.listening_ports
    ));

    say("\nStop observer process:".into());
    client
        .stop_observer(pb::StopObserverRequest {
            meta: Some(pb::StepMeta {
                step_id: "demo-stop".into(),
                dag_id: "demo".into(),
                ..Default::default()
            }),
            home_path: home.display().to_string(),
            grace: Some(Duration::from_secs(5).into()),
            force: false,
        })
        .await?;
    let stop = flow::follow(&mut client, "demo-stop", Instant::now(), format).await?;
    // The stand-in agent is ours to clean up: obhostd leaves services running.
    if let Ok(agent) = client
        .get_step(pb::GetStepRequest {
            step_id: "demo-agent".into(),
        })
        .await
        && let Some(pid) = agent
            .into_inner()
            .step
            .and_then(|s| s.outputs.get("pid").and_then(|p| p.parse::<i32>().ok()))
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }

    let mut steps = client
        .list_steps(pb::ListStepsRequest {
            dag_id: "demo".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .steps;
    output::dag_order(&mut steps);
    let ok = started == ExitCode::SUCCESS && stop.state() == pb::StepState::Succeeded;
    if format == Format::Json {
        // One document: the start's DAG, the observer as it ran, the stop and
        // every step of the DAG (in the order they ran); on a failure its
        // `error`, as every failing command's JSON has.
        let mut doc = serde_json::json!({
            "dag": dag,
            "observer": output::proto_json(&observer_status)?,
            "stop": output::proto_json(&stop)?,
            "steps": output::step_list_json(&steps, "")?["steps"].take(),
        });
        let failed = steps
            .iter()
            .chain(std::iter::once(&stop))
            .find(|s| s.state() != pb::StepState::Succeeded);
        if let Some(bad) = failed {
            doc["error"] = output::step_error_json(bad)["error"].take();
        }
        output::print_json(&doc, true)?;
    } else {
        output::say("")?;
        output::step_list(&steps, "", format)?;
    }
    // The last pushes are a batch_delay away.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop_sink.cancel();
    // Close our connection before stopping obhostd, and let the runtime run
    // while it stops: a client left open (or a runtime blocked in a sleep)
    // would keep obhostd waiting out its shutdown_timeout.
    drop(client);
    scratch.stop_daemon().await;
    drop(scratch);
    say(if ok {
        "\ndemo done: obhostd stopped, temp dir removed".into()
    } else {
        "\ndemo failed: see the errors above".into()
    });
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
