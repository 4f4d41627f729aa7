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

mod args;
mod follow;
mod ran;
mod requests;
mod resume;
mod summary;

use std::cell::Cell;
use std::process::ExitCode;
use std::time::{Instant, SystemTime};

pub use args::StartArgs;
pub(crate) use follow::{RECONNECTS, follow, resumable};
use ran::At;
pub use ran::{Ran, STEPS};
use requests::FlowRequest;
pub(crate) use summary::step_json;

use super::output::{self, Format, json, live};
use crate::api::convert;
use crate::cli::connect::Client;
use crate::cli::error::CliError;
use crate::proto::v1 as pb;

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
            .unwrap_or_else(|| super::ids::new_id("start"));
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
            live::ended_earlier(&step);
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
        let rerun = resume::rerun_command(args, &ran.dag);
        let text = resume::interrupted_text(&ran, at, &rerun);
        output::note(&format!("\n{text}"));
        if format == Format::Json {
            let mut doc = json::error_json("INTERRUPTED", &text, 130);
            doc["error"]["rerun"] = rerun.into();
            json::print_json(&doc, true).map_err(CliError::Other)?;
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
        json::print_json(&ran.dag_json(), true).map_err(CliError::Other)?;
    } else if ran.succeeded() {
        output::say(format_args!(
            "observer started and active in {:.1}s",
            ran.began.elapsed().as_secs_f64()
        ))
        .map_err(CliError::Other)?;
    }
    Ok(ran.exit_code())
}
