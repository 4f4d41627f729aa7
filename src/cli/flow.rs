//! `obhostctl start-observer`: the four host steps of OCP's "Start OB server", in
//! the seed's order, each as a real step of obhostd:
//!
//! Prepare -> StartObserver -> WaitObserverActive -> StartAgentService
//!
//! Step ids derive from the DAG id (`<dag>-prepare`, ...), so running the same
//! command again follows the same steps instead of starting new ones. It stops at
//! the first step that does not succeed and says why; `-o json` prints the DAG in
//! the shape of OCP's task info.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use super::output::{self, Format};
use super::{CliError, Client};
use crate::api::convert;
use crate::proto::v1 as pb;

/// The four steps: id suffix, OCP task name, description.
pub const STEPS: [(&str, &str, &str); 4] = [
    (
        "prepare",
        "Prepare start observer",
        "Pre-start checks on the host",
    ),
    (
        "start",
        "Start observer process",
        "Start the observer process",
    ),
    (
        "wait",
        "Wait observer active",
        "Wait until the observer answers SQL",
    ),
    (
        "agent",
        "Start ocp agent service",
        "Start the OCP agent and wait for its health check",
    ),
];

#[derive(Args, Clone, Default)]
pub struct StartArgs {
    /// The observer's home, e.g. /home/admin/oceanbase.
    #[arg(long)]
    pub home: String,
    /// The observer binary [default: <home>/bin/observer].
    #[arg(long, value_name = "PATH")]
    pub binary: Option<String>,
    /// The OS user the observer runs as [default: obhostd's default_user, else
    /// obhostd's own user].
    #[arg(long)]
    pub user: Option<String>,
    /// The observer's MySQL port (-p) [default: 2881].
    #[arg(long, value_name = "PORT")]
    pub mysql_port: Option<u32>,
    /// The observer's RPC port (-P) [default: 2882].
    #[arg(long, value_name = "PORT")]
    pub rpc_port: Option<u32>,
    /// Where the observer writes its pid [default: <home>/run/observer.pid].
    #[arg(long, value_name = "PATH")]
    pub pid_file: Option<String>,
    /// The binary stays in the foreground (-N).
    #[arg(long)]
    pub foreground: bool,
    /// Zone (-z); required for a first start (no data yet).
    #[arg(long)]
    pub zone: Option<String>,
    /// Cluster name (-n); required for a first start.
    #[arg(long)]
    pub cluster_name: Option<String>,
    /// Cluster id (-c); required for a first start.
    #[arg(long)]
    pub cluster_id: Option<u32>,
    /// Root service list (-r), e.g. 10.0.0.1:2882:2881;10.0.0.2:2882:2881
    /// [default: none, a single-node cluster].
    #[arg(long)]
    pub rootservice_list: Option<String>,
    /// The data dir (-d) [default: <home>/store].
    #[arg(long, value_name = "PATH")]
    pub data_dir: Option<String>,
    /// The redo log dir, checked by Prepare [default: inside the data dir].
    #[arg(long, value_name = "PATH")]
    pub redo_dir: Option<String>,
    /// Network device (-i), checked by Prepare [default: the observer chooses].
    #[arg(long)]
    pub devname: Option<String>,
    /// The address the observer serves on (-I) [default: the observer chooses].
    #[arg(long)]
    pub ip: Option<String>,
    /// An observer parameter, KEY=VALUE (repeatable): -o on its command line.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// An environment variable for the observer, KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Prepare creates missing dirs, owned by the user.
    #[arg(long)]
    pub create_dirs: bool,
    /// A Prepare check to skip (repeatable).
    #[arg(long = "skip-check", value_name = "NAME")]
    pub skip_checks: Vec<String>,
    /// Prepare's warnings fail the start.
    #[arg(long)]
    pub strict: bool,
    /// The orchestrator's DAG id; step ids are <dag-id>-prepare, -start, -wait,
    /// -agent [default: start-<unix seconds>-<random hex>].
    #[arg(long)]
    pub dag_id: Option<String>,
    /// Explicit step ids: four, comma-separated, in step order
    /// (prepare,start,wait,agent), e.g. 133851,133852,133853,133854.
    #[arg(long, value_delimiter = ',', value_name = "ID,ID,ID,ID")]
    pub step_ids: Vec<String>,
    /// Log in as this MySQL user to decide "active" [default: the protocol
    /// handshake only].
    #[arg(long)]
    pub wait_user: Option<String>,
    /// File whose first line is the password for --wait-user.
    #[arg(long)]
    pub wait_password_file: Option<std::path::PathBuf>,
    /// The query that must return a row [default: SELECT 1].
    #[arg(long)]
    pub wait_sql: Option<String>,
    /// How long to wait for the observer to become active, e.g. 10m
    /// [default: the step's own].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub wait_timeout: Option<std::time::Duration>,
    /// Start the agent as this systemd unit [default: obhostd's [agent_service]].
    #[arg(long)]
    pub agent_unit: Option<String>,
    /// Start the agent with this program (an absolute path); its arguments
    /// follow as --agent-arg.
    #[arg(long, value_name = "PATH")]
    pub agent_program: Option<String>,
    /// One argument of --agent-program (repeatable, in order; a value starting
    /// with '-' is written --agent-arg=-x).
    #[arg(long = "agent-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub agent_args: Vec<String>,
    /// The agent command's working dir [default: its program's dir].
    #[arg(long, value_name = "PATH")]
    pub agent_cwd: Option<String>,
    /// Where the agent writes its pid (a daemonizing agent must have one).
    #[arg(long, value_name = "PATH")]
    pub agent_pid_file: Option<String>,
    /// The agent stays in the foreground (obhostd writes its pid file).
    #[arg(long)]
    pub agent_foreground: bool,
    /// Healthy once this loopback TCP port accepts.
    #[arg(long, value_name = "PORT")]
    pub agent_tcp_port: Option<u32>,
    /// Healthy once this loopback URL answers 2xx, e.g. http://127.0.0.1:62888/api/v1/time.
    #[arg(long, value_name = "URL")]
    pub agent_http_url: Option<String>,
}

fn pairs(flag: &str, items: &[String]) -> Result<BTreeMap<String, String>, CliError> {
    items
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| CliError::Usage(format!("{flag} '{kv}' is not KEY=VALUE")))
        })
        .collect()
}

impl StartArgs {
    fn spec(&self) -> Result<pb::ObserverSpec, CliError> {
        // Unset is the wire's zero value: obhostd fills in the default.
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        Ok(pb::ObserverSpec {
            home_path: self.home.clone(),
            binary: text(&self.binary),
            user: text(&self.user),
            mysql_port: self.mysql_port.unwrap_or_default(),
            rpc_port: self.rpc_port.unwrap_or_default(),
            pid_file: text(&self.pid_file),
            foreground: self.foreground,
            zone: text(&self.zone),
            cluster_name: text(&self.cluster_name),
            cluster_id: self.cluster_id.unwrap_or_default(),
            rootservice_list: text(&self.rootservice_list),
            data_dir: text(&self.data_dir),
            redo_dir: text(&self.redo_dir),
            devname: text(&self.devname),
            ip: text(&self.ip),
            parameters: pairs("--param", &self.params)?.into_iter().collect(),
            env: pairs("--env", &self.env)?.into_iter().collect(),
            extra_args: Vec::new(),
        })
    }
}

fn meta(id: &str, dag: &str, timeout: Option<std::time::Duration>) -> Option<pb::StepMeta> {
    Some(pb::StepMeta {
        step_id: id.to_string(),
        dag_id: dag.to_string(),
        timeout: timeout.map(Into::into),
        ..Default::default()
    })
}

/// Follows one step until it ends, printing each change (state or message) with
/// the time since the flow began.
pub async fn follow(
    client: &mut Client,
    id: &str,
    began: Instant,
    format: Format,
) -> Result<pb::Step, CliError> {
    let mut live = (format == Format::Text).then(|| output::Live::new(id, began));
    let mut after = 0;
    let mut lost = 0;
    loop {
        let ended = match watch_once(client, id, after, &mut live).await {
            Ok(Watched::Done(step)) => return Ok(*step),
            Ok(Watched::Ended(rev)) => {
                after = after.max(rev);
                "the daemon ended the watch".to_string()
            }
            Err((rev, status)) if resumable(&status) => {
                after = after.max(rev);
                format!("{}: {}", super::code_name(status.code()), status.message())
            }
            Err((_, status)) => return Err(status.into()),
        };
        // obhostd restarting, or the connection dropped: the steps go on in
        // the daemon, so pick up where we were rather than give up.
        lost += 1;
        if lost > RECONNECTS {
            return Err(CliError::Other(anyhow::anyhow!(
                "lost obhostd {RECONNECTS} times while following step {id} ({ended}); the step goes on \
                 in the daemon: follow it with `obhostctl steps watch --step {id} --until-done`"
            )));
        }
        if format == Format::Text {
            output::note(&format!(
                "  lost obhostd while following {id} ({ended}); reconnecting ({lost} of {RECONNECTS})"
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Times the follow of one step reconnects before it gives up (~0.5 s apart,
/// plus each attempt's connect timeout: long enough for a restart).
pub(crate) const RECONNECTS: u32 = 60;

enum Watched {
    Done(Box<pb::Step>),
    /// The stream ended cleanly before the step did; the last revision seen.
    Ended(u64),
}

/// A daemon going away (restart, shutdown) or a watcher cut off for lagging:
/// worth a new watch from the last revision seen.
pub(crate) fn resumable(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable
            | tonic::Code::Aborted
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
    )
}

/// One watch of `id` after revision `after`, showing changes on `live` (text
/// output); the last revision seen comes back with an error, to resume from.
async fn watch_once(
    client: &mut Client,
    id: &str,
    after: u64,
    live: &mut Option<output::Live>,
) -> Result<Watched, (u64, tonic::Status)> {
    let mut seen = after;
    let mut stream = client
        .watch_steps(pb::WatchStepsRequest {
            step_ids: vec![id.to_string()],
            after_revision: after,
            ..Default::default()
        })
        .await
        .map_err(|s| (seen, s))?
        .into_inner();
    while let Some(item) = stream.message().await.map_err(|s| (seen, s))? {
        let Some(step) = item.step else { continue };
        seen = seen.max(step.revision);
        if let Some(live) = live.as_mut() {
            live.update(&step);
        }
        if output::is_terminal(&step) {
            return Ok(Watched::Done(Box::new(step)));
        }
    }
    Ok(Watched::Ended(seen))
}

fn ms(t: &Option<pbjson_types::Timestamp>) -> serde_json::Value {
    t.as_ref()
        .and_then(convert::system_time)
        .map(|t| json!(humantime::format_rfc3339_millis(t).to_string()))
        .unwrap_or(serde_json::Value::Null)
}

/// The DAG as OCP's task info shows it.
fn dag_json(dag: &str, ids: &[String], steps: &[Option<pb::Step>]) -> serde_json::Value {
    let status = |s: &Option<pb::Step>| -> String {
        match s.as_ref().map(|s| s.state()) {
            None => "PENDING".into(),
            Some(st) => st.as_str_name().trim_start_matches("STEP_STATE_").into(),
        }
    };
    let tasks: Vec<serde_json::Value> = STEPS
        .iter()
        .enumerate()
        .map(|(i, (_, name, description))| {
            let s = &steps[i];
            json!({
                "id": ids[i],
                "name": name,
                "description": description,
                "status": status(s),
                "operation": "EXECUTE",
                "upstreams": if i == 0 { vec![] } else { vec![ids[i - 1].clone()] },
                "downstreams": if i + 1 == STEPS.len() { vec![] } else { vec![ids[i + 1].clone()] },
                "startTime": ms(&s.as_ref().and_then(|s| s.started_at)),
                "endTime": ms(&s.as_ref().and_then(|s| s.finished_at)),
                "message": s.as_ref().map(|s| s.message.clone()).unwrap_or_default(),
                "error": s.as_ref().and_then(|s| s.error.as_ref()).map(|e| json!({"code": e.code, "message": e.message})),
            })
        })
        .collect();
    let overall = if steps.iter().all(|s| {
        s.as_ref()
            .is_some_and(|s| s.state() == pb::StepState::Succeeded)
    }) {
        "SUCCEEDED"
    } else if steps
        .iter()
        .flatten()
        .any(|s| output::is_terminal(s) && s.state() != pb::StepState::Succeeded)
    {
        "FAILED"
    } else {
        "RUNNING"
    };
    json!({
        "id": dag,
        "name": "Start OB server (host steps)",
        "status": overall,
        "operation": "EXECUTE",
        "startTime": ms(&steps.iter().flatten().next().and_then(|s| s.started_at)),
        "endTime": ms(&steps.iter().flatten().last().and_then(|s| s.finished_at)),
        "tasks": tasks,
    })
}

fn explain_failure(s: &pb::Step) {
    let Some(e) = &s.error else { return };
    let c = output::clean;
    eprintln!(
        "obhostctl: step '{}' ({}) {}: {}",
        c(&s.id),
        c(&s.name),
        c(&e.code),
        c(&e.message)
    );
    for check in s
        .checks
        .iter()
        .filter(|check| check.status() == pb::CheckStatus::Fail)
    {
        eprintln!(
            "  failed check {}: {} (expected {})",
            c(&check.name),
            c(&check.observed),
            c(&check.expected)
        );
        if !check.hint.is_empty() {
            eprintln!("    fix: {}", c(&check.hint));
        }
    }
    if !e.log_tail.is_empty() {
        eprintln!("  log tail:");
        for line in &e.log_tail {
            eprintln!("  | {}", c(line));
        }
    }
}

/// `obhostctl start-observer`: the flow, and with `-o json` its DAG as one
/// JSON document.
pub async fn start_observer(
    client: &mut Client,
    args: &StartArgs,
    format: Format,
) -> Result<ExitCode, CliError> {
    let mut dag = None;
    let code = run(client, args, format, &mut dag).await?;
    if let Some(dag) = dag {
        output::print_json(&dag, true).map_err(CliError::Other)?;
    }
    Ok(code)
}

/// Runs the four steps, stopping at the first that does not succeed; with
/// `-o json` the DAG (in OCP's shape) is left in `dag_out`.
/// One of the flow's four requests. All four are built, and checked by
/// obhostd, before the first is sent: a bad agent argument is reported before
/// Prepare creates a directory or an observer starts.
#[derive(Clone)]
enum FlowRequest {
    Prepare(pb::PrepareRequest),
    Start(pb::StartObserverRequest),
    Wait(pb::WaitObserverActiveRequest),
    Agent(pb::StartAgentServiceRequest),
}

impl FlowRequest {
    /// Sends it; with `validate_only`, obhostd checks it and starts nothing.
    /// The answer's step: `None` when only checked (an obhostd that predates
    /// validate_only ignores it and answers with a started step).
    async fn send(
        &self,
        client: &mut Client,
        validate_only: bool,
    ) -> Result<Option<pb::Step>, tonic::Status> {
        let mut r = self.clone();
        let meta = match &mut r {
            FlowRequest::Prepare(r) => &mut r.meta,
            FlowRequest::Start(r) => &mut r.meta,
            FlowRequest::Wait(r) => &mut r.meta,
            FlowRequest::Agent(r) => &mut r.meta,
        };
        if let Some(m) = meta {
            m.validate_only = validate_only;
        }
        Ok(match r {
            FlowRequest::Prepare(r) => client.prepare(r).await?.into_inner().step,
            FlowRequest::Start(r) => client.start_observer(r).await?.into_inner().step,
            FlowRequest::Wait(r) => client.wait_observer_active(r).await?.into_inner().step,
            FlowRequest::Agent(r) => client.start_agent_service(r).await?.into_inner().step,
        })
    }
}

fn flow_requests(
    args: &StartArgs,
    ids: &[String],
    dag: &str,
    spec: &pb::ObserverSpec,
    password: &str,
) -> Vec<FlowRequest> {
    use pb::start_agent_service_request::Service;
    let service = if let Some(unit) = &args.agent_unit {
        Some(Service::SystemdUnit(unit.clone()))
    } else if let Some(program) = &args.agent_program {
        let mut argv = vec![program.clone()];
        argv.extend(args.agent_args.iter().cloned());
        Some(Service::Command(pb::ServiceCommand {
            argv,
            cwd: args.agent_cwd.clone().unwrap_or_default(),
            pid_file: args.agent_pid_file.clone().unwrap_or_default(),
            foreground: args.agent_foreground,
            ..Default::default()
        }))
    } else {
        None
    };
    let check = match (args.agent_tcp_port, &args.agent_http_url) {
        (Some(p), _) => Some(pb::health_check::Check::TcpPort(p)),
        (_, Some(u)) => Some(pb::health_check::Check::HttpUrl(u.clone())),
        _ => None,
    };
    vec![
        FlowRequest::Prepare(pb::PrepareRequest {
            meta: meta(&ids[0], dag, None),
            observer: Some(spec.clone()),
            create_dirs: args.create_dirs,
            skip_checks: args.skip_checks.clone(),
            strict: args.strict,
        }),
        FlowRequest::Start(pb::StartObserverRequest {
            meta: meta(&ids[1], dag, None),
            observer: Some(spec.clone()),
        }),
        FlowRequest::Wait(pb::WaitObserverActiveRequest {
            meta: meta(&ids[2], dag, args.wait_timeout),
            home_path: args.home.clone(),
            mysql_port: args.mysql_port.unwrap_or_default(),
            user: args.wait_user.clone().unwrap_or_default(),
            password: password.to_string(),
            sql: args.wait_sql.clone().unwrap_or_default(),
        }),
        FlowRequest::Agent(pb::StartAgentServiceRequest {
            meta: meta(&ids[3], dag, None),
            service,
            health: check.map(|c| pb::HealthCheck { check: Some(c) }),
        }),
    ]
}

/// Has obhostd check every request of the flow (`validate_only`), so that
/// nothing starts unless all four would be accepted. A refusal keeps its
/// code and says which step it was. An obhostd too old to know
/// validate_only starts the first request for real; the flow then simply
/// goes on from it (same id, same request: nothing runs twice).
async fn check_all(
    client: &mut Client,
    ids: &[String],
    requests: &[FlowRequest],
) -> Result<(), CliError> {
    for (i, request) in requests.iter().enumerate() {
        match request.send(client, true).await {
            Ok(None) => {}
            Ok(Some(_)) => return Ok(()),
            Err(s) if s.code() == tonic::Code::Unavailable => return Err(s.into()),
            Err(s) => {
                return Err(CliError::Rpc(tonic::Status::new(
                    s.code(),
                    format!(
                        "step '{}' ({}) would be refused, so no step was started: {}",
                        ids[i],
                        STEPS[i].1,
                        s.message()
                    ),
                )));
            }
        }
    }
    Ok(())
}

pub async fn run(
    client: &mut Client,
    args: &StartArgs,
    format: Format,
    dag_out: &mut Option<serde_json::Value>,
) -> Result<ExitCode, CliError> {
    let dag = args
        .dag_id
        .clone()
        .unwrap_or_else(|| super::new_id("start"));
    let ids: Vec<String> = if args.step_ids.is_empty() {
        STEPS
            .iter()
            .map(|(suffix, _, _)| format!("{dag}-{suffix}"))
            .collect()
    } else if args.step_ids.len() == STEPS.len() {
        args.step_ids.clone()
    } else {
        return Err(CliError::Usage(format!(
            "--step-ids needs {} ids, comma-separated, in step order (prepare,start,wait,agent); got {}",
            STEPS.len(),
            args.step_ids.len()
        )));
    };
    let password = match &args.wait_password_file {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| {
                CliError::Usage(format!(
                    "cannot read --wait-password-file '{}': {e}",
                    p.display()
                ))
            })?
            .lines()
            .next()
            .unwrap_or_default()
            .to_string(),
        None => String::new(),
    };
    let spec = args.spec()?;
    let requests = flow_requests(args, &ids, &dag, &spec, &password);
    check_all(client, &ids, &requests).await?;
    let began = Instant::now();
    if format == Format::Text {
        output::say(format_args!(
            "Starting the observer of {} (DAG {dag}):",
            args.home
        ))
        .map_err(CliError::Other)?;
    }
    let mut done: Vec<Option<pb::Step>> = vec![None, None, None, None];
    let steps = async {
        for (i, (id, request)) in ids.iter().zip(&requests).enumerate() {
            request.send(client, false).await?;
            let step = follow(client, id, began, format).await?;
            let ok = step.state() == pb::StepState::Succeeded;
            if !ok {
                explain_failure(&step);
            }
            done[i] = Some(step);
            if !ok {
                break;
            }
        }
        Ok::<(), CliError>(())
    };
    // Ctrl-C stops following, not the steps: they go on in obhostd.
    tokio::select! {
        r = steps => r?,
        _ = tokio::signal::ctrl_c() => {
            let text = format!(
                "interrupted: the steps go on in obhostd. Follow them with \
                 `obhostctl steps watch --dag-id {dag}`, or run this command again with \
                 --dag-id {dag} (steps already done are not run again)"
            );
            output::note(&format!("\n{text}"));
            if format == Format::Json {
                *dag_out = Some(output::error_json("INTERRUPTED", &text, 130));
            }
            return Ok(ExitCode::from(130));
        }
    }
    let ok = done.iter().all(|s| {
        s.as_ref()
            .is_some_and(|s| s.state() == pb::StepState::Succeeded)
    });
    if format == Format::Json {
        // The caller prints it: part of its one JSON document. A step that
        // failed is the document's `error` too, as for every failing command.
        let mut doc = dag_json(&dag, &ids, &done);
        if let Some(bad) = done
            .iter()
            .flatten()
            .find(|s| s.state() != pb::StepState::Succeeded)
        {
            doc["error"] = output::step_error_json(bad)["error"].take();
        }
        *dag_out = Some(doc);
    } else if ok {
        output::say(format_args!(
            "observer started and active in {:.1}s",
            began.elapsed().as_secs_f64()
        ))
        .map_err(CliError::Other)?;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
