//! `obhostctl start-observer`: the four host steps of OCP's "Start OB server", in
//! the seed's order, each as a real step of obhostd:
//!
//! Prepare -> StartObserver -> WaitObserverActive -> StartAgentService
//!
//! (`--no-agent`: the first three only.)
//!
//! Step ids derive from the DAG id (`<dag>-prepare`, ...), and a step request
//! is idempotent by its id, so running the same command again resumes the
//! DAG: a step that succeeded is taken as done, a running one is followed, a
//! missing one is created. That is what Ctrl-C tells the operator to do, with
//! the command to run. A step that ended badly is shown, not run again: it
//! stops the flow until the operator retries it (`steps retry`), so a re-run
//! never undoes someone's cancel or repeats a failure unasked. The flow stops
//! at the first step that does not succeed and says why; `-o json` prints the
//! DAG in the shape of OCP's task info.

mod follow;
mod requests;
mod summary;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Instant, SystemTime};

use clap::Args;

pub(crate) use follow::{RECONNECTS, follow, resumable};
use requests::FlowRequest;
pub(crate) use summary::step_json;

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
    /// Explicit step ids: four (three with --no-agent), comma-separated, in
    /// step order (prepare,start,wait,agent), e.g. 133851,133852,133853,133854.
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
    /// Run only the three observer steps, without "Start ocp agent service"
    /// (an agent managed otherwise, or none on this host).
    #[arg(
        long,
        conflicts_with_all = [
            "agent_unit", "agent_program", "agent_args", "agent_cwd",
            "agent_pid_file", "agent_foreground", "agent_tcp_port", "agent_http_url",
        ]
    )]
    pub no_agent: bool,
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

/// The flow as the command line asks for it: its DAG id, and one step id
/// and one request per step, all made before anything is sent.
struct Plan {
    dag: String,
    ids: Vec<String>,
    requests: Vec<FlowRequest>,
}

impl Plan {
    fn new(args: &StartArgs) -> Result<Plan, CliError> {
        let dag = args
            .dag_id
            .clone()
            .unwrap_or_else(|| super::new_id("start"));
        let ids = step_ids(args, &dag)?;
        let password = wait_password(args)?;
        let spec = args.spec()?;
        let requests = requests::flow_requests(args, &ids, &dag, &spec, &password);
        Ok(Plan { dag, ids, requests })
    }
}

/// `<dag>-prepare`, ... or the ids given, one per step run.
fn step_ids(args: &StartArgs, dag: &str) -> Result<Vec<String>, CliError> {
    let steps = if args.no_agent {
        &STEPS[..STEPS.len() - 1]
    } else {
        &STEPS[..]
    };
    if args.step_ids.is_empty() {
        return Ok(steps
            .iter()
            .map(|(suffix, _, _)| format!("{dag}-{suffix}"))
            .collect());
    }
    if args.step_ids.len() == steps.len() {
        return Ok(args.step_ids.clone());
    }
    let order: Vec<&str> = steps.iter().map(|(suffix, _, _)| *suffix).collect();
    Err(CliError::Usage(format!(
        "--step-ids needs {} ids, comma-separated, in step order ({}); got {}",
        steps.len(),
        order.join(","),
        args.step_ids.len()
    )))
}

/// The first line of --wait-password-file, or none.
fn wait_password(args: &StartArgs) -> Result<String, CliError> {
    let Some(p) = &args.wait_password_file else {
        return Ok(String::new());
    };
    let text = std::fs::read_to_string(p).map_err(|e| {
        CliError::Usage(format!(
            "cannot read --wait-password-file '{}': {e}",
            p.display()
        ))
    })?;
    Ok(text.lines().next().unwrap_or_default().to_string())
}

/// What a run of the flow came to.
pub struct Ran {
    dag: String,
    ids: Vec<String>,
    /// Each step as it ended; `None`: not reached, or being followed when
    /// Ctrl-C came.
    steps: Vec<Option<pb::Step>>,
    /// Where Ctrl-C came.
    interrupted: Option<At>,
    began: Instant,
}

impl Ran {
    pub fn succeeded(&self) -> bool {
        self.steps.iter().all(|s| {
            s.as_ref()
                .is_some_and(|s| s.state() == pb::StepState::Succeeded)
        })
    }

    /// The step that stopped the flow by not succeeding.
    fn ended_badly(&self) -> Option<&pb::Step> {
        self.steps
            .iter()
            .flatten()
            .find(|s| s.state() != pb::StepState::Succeeded)
    }

    pub fn interrupted(&self) -> bool {
        self.interrupted.is_some()
    }

    /// The DAG in OCP's shape; a step that did not succeed is the
    /// document's `error` too, as for every failing command.
    pub fn dag_json(&self) -> serde_json::Value {
        let mut doc = summary::dag_json(&self.dag, &self.ids, &self.steps);
        if let Some(bad) = self.ended_badly() {
            doc["error"] = output::step_error_json(bad)["error"].take();
        }
        doc
    }

    pub fn exit_code(&self) -> ExitCode {
        if self.interrupted() {
            ExitCode::from(130)
        } else if self.succeeded() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    }
}

/// Runs the flow: obhostd checks every request, then each step is started
/// (or found, by a re-run) and followed, up to the first that does not
/// succeed, or Ctrl-C.
pub async fn run(client: &mut Client, args: &StartArgs, format: Format) -> Result<Ran, CliError> {
    let plan = Plan::new(args)?;
    let since = SystemTime::now();
    requests::check_all(client, &plan.ids, &plan.requests).await?;
    let began = Instant::now();
    if format == Format::Text {
        output::say(format_args!(
            "Starting the observer of {} (DAG {}):",
            args.home, plan.dag
        ))
        .map_err(CliError::Other)?;
    }
    let mut steps = vec![None; plan.ids.len()];
    let current = Cell::new(At::Sending(0));
    // Ctrl-C stops following, not the step being followed: that goes on in
    // obhostd, and the caller says how to resume.
    let interrupted = tokio::select! {
        r = run_steps(client, &plan, format, (began, since), &mut steps, &current) => {
            r?;
            None
        }
        _ = tokio::signal::ctrl_c() => Some(current.get()),
    };
    Ok(Ran {
        dag: plan.dag,
        ids: plan.ids,
        steps,
        interrupted,
        began,
    })
}

/// Where the flow stands, for what Ctrl-C says.
#[derive(Clone, Copy)]
enum At {
    /// The step's request is on its way: it may or may not exist yet.
    Sending(usize),
    /// The step exists and is being followed.
    Following(usize),
}

/// The steps in order, each left in `steps` as it ended; `current` says
/// where the flow stands.
async fn run_steps(
    client: &mut Client,
    plan: &Plan,
    format: Format,
    (began, since): (Instant, SystemTime),
    steps: &mut [Option<pb::Step>],
    current: &Cell<At>,
) -> Result<(), CliError> {
    for (i, request) in plan.requests.iter().enumerate() {
        current.set(At::Sending(i));
        let answer = request.send(client, false).await?;
        current.set(At::Following(i));
        let (step, earlier) =
            to_its_end(client, &plan.ids[i], answer, (began, since), format).await?;
        let ok = step.state() == pb::StepState::Succeeded;
        if ok && format == Format::Text {
            summary::warnings(&step);
        }
        if !ok {
            summary::explain_failure(&step, earlier);
        }
        steps[i] = Some(step);
        if !ok {
            break;
        }
    }
    Ok(())
}

/// The step whose request was just answered, at its end. The same request
/// under the same id returns the step an earlier run made: one that had
/// already ended is taken as it is (`true`: ended before this run), one
/// still running is followed, as is a step just created.
async fn to_its_end(
    client: &mut Client,
    id: &str,
    answer: Option<pb::Step>,
    (began, since): (Instant, SystemTime),
    format: Format,
) -> Result<(pb::Step, bool), CliError> {
    let created_before = |s: &pb::Step| {
        s.created_at
            .as_ref()
            .and_then(convert::system_time)
            .is_some_and(|t| t < since)
    };
    if let Some(step) = answer.filter(|s| output::is_terminal(s) && created_before(s)) {
        if format == Format::Text {
            output::ended_earlier(&step);
        }
        return Ok((step, true));
    }
    Ok((follow(client, id, began, format).await?, false))
}

/// `obhostctl start-observer`: the flow, then its outcome: with `-o json` the
/// DAG as one document; after Ctrl-C, how to resume.
pub async fn start_observer(
    client: &mut Client,
    args: &StartArgs,
    format: Format,
) -> Result<ExitCode, CliError> {
    let ran = run(client, args, format).await?;
    if let Some(at) = ran.interrupted {
        let rerun = rerun_command(args, &ran.dag);
        let text = interrupted_text(&ran, at, &rerun);
        output::note(&format!("\n{text}"));
        if format == Format::Json {
            let mut doc = output::error_json("INTERRUPTED", &text, 130);
            doc["error"]["rerun"] = rerun.into();
            output::print_json(&doc, true).map_err(CliError::Other)?;
        }
        return Ok(ran.exit_code());
    }
    if let Some(bad) = ran.ended_badly() {
        // The later steps were never created: the same command makes them,
        // once this one is fixed and retried.
        output::note(&format!(
            "  to go on: fix the cause, run `obhostctl steps retry {}`, then this command again \
             with --dag-id {}",
            output::clean(&bad.id),
            ran.dag
        ));
    }
    if format == Format::Json {
        output::print_json(&ran.dag_json(), true).map_err(CliError::Other)?;
    } else if ran.succeeded() {
        output::say(format_args!(
            "observer started and active in {:.1}s",
            ran.began.elapsed().as_secs_f64()
        ))
        .map_err(CliError::Other)?;
    }
    Ok(ran.exit_code())
}

/// What Ctrl-C leaves behind, and the command that goes on from there.
fn interrupted_text(ran: &Ran, at: At, rerun: &[String]) -> String {
    let (at, state) = match at {
        At::Following(i) => (i, "goes on in obhostd"),
        At::Sending(i) => (i, "was being started (it may be running in obhostd)"),
    };
    let later: Vec<&str> = STEPS[at + 1..ran.ids.len()]
        .iter()
        .map(|(_, name, _)| *name)
        .collect();
    let later = if later.is_empty() {
        String::new()
    } else {
        format!("; {} not started", later.join(", "))
    };
    let command: Vec<_> = rerun.iter().map(|a| shell_quote(a)).collect();
    format!(
        "interrupted: obhostctl stopped following; '{}' ({}) {state}{later}. To \
         resume, run the same command again with --dag-id {}: steps that succeeded are kept, a \
         running one is followed, the missing ones are started (one that failed or was \
         cancelled is shown, not run again):\n  {}",
        STEPS[at].1,
        ran.ids[at],
        ran.dag,
        command.join(" ")
    )
}

/// The operator's command line, with the --dag-id this run made up when none
/// was given: without it a re-run would make up another and start over.
fn rerun_command(args: &StartArgs, dag: &str) -> Vec<String> {
    let mut argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if args.dag_id.is_none() {
        argv.extend(["--dag-id".to_string(), dag.to_string()]);
    }
    argv
}

/// `arg` as a POSIX shell reads it back: as it is when it holds only
/// characters no shell treats specially, else in single quotes.
fn shell_quote(arg: &str) -> std::borrow::Cow<'_, str> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        arg.into()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''")).into()
    }
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn quoted_arguments_read_back_the_same() {
        assert_eq!(shell_quote("--dag-id"), "--dag-id");
        assert_eq!(shell_quote("/home/admin/ob"), "/home/admin/ob");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$HOME;rm"), "'$HOME;rm'");
    }
}
