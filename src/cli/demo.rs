//! `obhostctl demo`: the whole job end to end on a machine with nothing
//! installed. It starts its own obhostd (temp state dir, a Unix socket in it), runs
//! the four host steps of "Start OB server" through it against the project's
//! stand-in observer (which also plays the OCP agent), shows the steps live, the
//! DAG and the observer's status, stops it, and removes everything it made.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use super::flow::{self, Ran, StartArgs};
use super::output::{self, Format, json};
use super::steps::order::dag_order;
use crate::cli::connect::Client;
use crate::cli::error::CliError;
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
    /// Run the three observer steps only, without "Start ocp agent service",
    /// as `start-observer --no-agent` does.
    #[arg(long)]
    no_agent: bool,
}

/// The programs the demo runs, found next to obhostctl.
struct Tools {
    obhostd: PathBuf,
    /// The stand-in observer, built only with the `fake-observer` feature
    /// (never packaged); the demo needs it even with --observer: it plays
    /// the OCP agent.
    stand_in: PathBuf,
}

impl Tools {
    fn find() -> Result<Tools, CliError> {
        let obhostd = sibling("obhostd")?;
        let stand_in = sibling("obhost-fake-observer").map_err(|_| {
            CliError::Usage(format!(
                "the stand-in observer '{}' is not next to obhostctl: it is built only with the \
                 `fake-observer` feature, and the demo runs it (as the OCP agent even with \
                 --observer); build with `cargo build --release --features fake-observer`, then \
                 run ./target/release/obhostctl demo",
                obhostd.with_file_name("obhost-fake-observer").display()
            ))
        })?;
        Ok(Tools { obhostd, stand_in })
    }
}

/// The observer binary the demo starts: the stand-in, or `--observer` linked
/// into the demo's home as bin/observer.
fn observer_binary(args: &DemoArgs, tools: &Tools, home: &Path) -> Result<PathBuf, CliError> {
    let Some(real) = &args.observer else {
        return Ok(tools.stand_in.clone());
    };
    let real = std::fs::canonicalize(real)
        .map_err(|e| CliError::Usage(format!("--observer '{}': {e}", real.display())))?;
    let bin = home.join("bin");
    std::fs::create_dir_all(&bin).map_err(|e| CliError::Other(e.into()))?;
    std::os::unix::fs::symlink(&real, bin.join("observer"))
        .map_err(|e| CliError::Other(e.into()))?;
    Ok(bin.join("observer"))
}

/// The orchestrator's side: a StepReporter on a Unix socket in the demo's own
/// dir (plain text only where no other user can listen, see [report]
/// endpoint) that prints what obhostd pushes. Serves only for text output.
async fn start_sink(
    scratch: &Scratch,
    format: Format,
) -> Result<(String, tokio_util::sync::CancellationToken), CliError> {
    let addr = format!("unix:{}", scratch.dir.join("reporter.sock").display());
    let (listener, _) = super::report_sink::Listener::bind(&addr)
        .await
        .map_err(CliError::Other)?;
    let stop = tokio_util::sync::CancellationToken::new();
    if format == Format::Text {
        let stopped = stop.clone();
        tokio::spawn(super::report_sink::serve(
            tonic::transport::Server::builder(),
            listener,
            super::report_sink::Sink::new(format, "    pushed to the orchestrator: "),
            async move { stopped.cancelled().await },
        ));
    }
    Ok((addr, stop))
}

/// start-observer's arguments for the demo's home, on free ports, with the
/// stand-in as the OCP agent (a foreground process with a port to
/// health-check) unless --no-agent.
fn start_args(
    args: &DemoArgs,
    scratch: &Scratch,
    observer: &Path,
    stand_in: &Path,
) -> Result<StartArgs, CliError> {
    let home = scratch.dir.join("observer");
    let port = u32::from(free_port()?);
    let mut start = StartArgs {
        home: home.display().to_string(),
        binary: Some(observer.display().to_string()),
        mysql_port: Some(port),
        rpc_port: Some(port + 1),
        zone: Some("zone1".into()),
        cluster_name: Some("demo".into()),
        cluster_id: Some(1),
        params: vec!["memory_limit=1G".into()],
        env: args.observer_env.clone(),
        pid_file: Some(home.join(&args.pid_file).display().to_string()),
        wait_timeout: Some(Duration::from_secs(120)),
        create_dirs: true,
        dag_id: Some(DAG.into()),
        wait_user: Some("root".into()),
        no_agent: args.no_agent,
        ..StartArgs::default()
    };
    if !args.no_agent {
        let agent_port = free_port()?;
        let agent_dir = scratch.dir.join("ocp_agent");
        std::fs::create_dir_all(&agent_dir).map_err(|e| CliError::Other(e.into()))?;
        start.agent_program = Some(stand_in.display().to_string());
        start.agent_args = vec!["-N".into(), "-p".into(), agent_port.to_string()];
        start.agent_cwd = Some(agent_dir.display().to_string());
        start.agent_foreground = true;
        start.agent_tcp_port = Some(u32::from(agent_port));
    }
    Ok(start)
}

/// The demo's DAG id: its steps are demo-prepare, ..., demo-stop.
const DAG: &str = "demo";

/// GetObserver of the demo's home, shown in one line.
async fn observer_status(
    client: &mut Client,
    home: &str,
    format: Format,
) -> Result<pb::ObserverStatus, CliError> {
    let o = client
        .get_observer(pb::GetObserverRequest {
            home_path: home.to_string(),
        })
        .await?
        .into_inner()
        .observer
        .unwrap_or_default();
    if format == Format::Text {
        output::line(&format!(
            "\nobserver: running={} pid={} rss={} threads={} listening on {:?}",
            o.running,
            o.pid,
            output::size(o.rss_bytes),
            o.threads,
            o.listening_ports
        ));
    }
    Ok(o)
}

/// Stops the observer (StopObserver, followed), and the stand-in agent,
/// which is ours to clean up: obhostd leaves services running.
async fn stop_all(client: &mut Client, home: &str, format: Format) -> Result<pb::Step, CliError> {
    if format == Format::Text {
        output::line("\nStop observer process:");
    }
    let id = format!("{DAG}-stop");
    client
        .stop_observer(pb::StopObserverRequest {
            meta: Some(pb::StepMeta {
                step_id: id.clone(),
                dag_id: DAG.into(),
                ..Default::default()
            }),
            home_path: home.to_string(),
            grace: Some(Duration::from_secs(5).into()),
            force: false,
        })
        .await?;
    let stop = flow::follow(client, &id, Instant::now(), format).await?;
    let agent = client
        .get_step(pb::GetStepRequest {
            step_id: format!("{DAG}-agent"),
        })
        .await;
    if let Ok(agent) = agent
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
    Ok(stop)
}

/// The end of the demo: JSON, one document (the start's DAG, the observer
/// as it ran, the stop and every step of the DAG in the order they ran, in
/// the summary's spelling; on a failure its `error`); text, the DAG's steps
/// as a table when all went well (a failure was explained where it happened,
/// once).
fn report(
    format: Format,
    ran: &Ran,
    observer: &pb::ObserverStatus,
    stop: &pb::Step,
    steps: &[pb::Step],
) -> Result<(), CliError> {
    let failed = steps
        .iter()
        .chain(std::iter::once(stop))
        .find(|s| s.state() != pb::StepState::Succeeded);
    if format == Format::Text {
        if failed.is_none() && !ran.interrupted() {
            output::say("")?;
            output::steps::step_list(steps, "", format)?;
        }
        return Ok(());
    }
    let mut doc = serde_json::json!({
        "dag": ran.dag_json(),
        "observer": json::proto_json(observer)?,
        "stop": flow::step_json(stop),
        "steps": steps.iter().map(flow::step_json).collect::<Vec<_>>(),
    });
    if ran.interrupted() {
        doc["error"] =
            json::error_json("INTERRUPTED", "interrupted by Ctrl-C", 130)["error"].take();
    } else if let Some(bad) = failed {
        doc["error"] = json::step_error_json(bad)["error"].take();
    }
    json::print_json(&doc, true)?;
    Ok(())
}

pub async fn run(args: DemoArgs, format: Format) -> Result<ExitCode, CliError> {
    let tools = Tools::find()?;
    let dir = std::env::temp_dir().join(format!("obhost-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| CliError::Other(e.into()))?;
    let mut scratch = Scratch { dir, daemon: None };
    let say = |s: String| {
        if format == Format::Text {
            output::line(&s);
        }
    };
    say(format!(
        "obhost demo: everything lives in {} and is removed at the end",
        scratch.dir.display()
    ));
    let observer = observer_binary(&args, &tools, &scratch.dir.join("observer"))?;
    let start = start_args(&args, &scratch, &observer, &tools.stand_in)?;
    let (sink_addr, stop_sink) = start_sink(&scratch, format).await?;
    let addr = start_daemon(&tools.obhostd, &mut scratch, &sink_addr)?;
    say(format!(
        "started obhostd on {addr} (state in {}/state), pushing every step change to a \
         report-sink on {sink_addr} (lines marked 'pushed')",
        scratch.dir.display()
    ));
    let mut client = super::connect::connect(&addr, None).await?;
    say(format!(
        "\nobhostctl start-observer --home {} --mysql-port {} ... (the host steps of 'Start OB server'):",
        start.home,
        start.mysql_port.unwrap_or_default()
    ));
    let ran = flow::run(&mut client, &start, format).await?;
    if ran.interrupted() {
        output::note("\ninterrupted: the demo stops its observer and obhostd, and removes its dir");
    }
    let observer = observer_status(&mut client, &start.home, format).await?;
    let stop = stop_all(&mut client, &start.home, format).await?;
    let mut steps = client
        .list_steps(pb::ListStepsRequest {
            dag_id: DAG.into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .steps;
    dag_order(&mut steps);
    report(format, &ran, &observer, &stop, &steps)?;
    let ok = ran.succeeded() && stop.state() == pb::StepState::Succeeded;
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
        "\ndemo failed: see the errors above; obhostd stopped, temp dir removed".into()
    });
    Ok(if ran.interrupted() {
        ExitCode::from(130)
    } else if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
