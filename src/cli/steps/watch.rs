//! `obhostctl steps watch`: WatchSteps, watched again from the last revision
//! seen when the daemon restarts or the connection drops.

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::Args;

use crate::cli::connect::Client;
use crate::cli::error::CliError;
use crate::cli::error::code_name;
use crate::cli::flow;
use crate::cli::output::{self, Format, json, live};
use crate::proto::v1 as pb;

use super::order::dag_order;

#[derive(Args)]
#[command(group(clap::ArgGroup::new("scope").args(["dag_id", "step_ids"]).multiple(true)))]
pub struct WatchArgs {
    /// Only steps of this DAG.
    #[arg(long)]
    dag_id: Option<String>,
    /// Only this step (repeatable).
    #[arg(long = "step", value_name = "STEP_ID")]
    step_ids: Vec<String>,
    /// Only changes after this revision, to resume a previous watch
    /// [default: every matching step's current record first].
    #[arg(long, value_name = "REVISION")]
    after_revision: Option<u64>,
    /// Exit once what is watched has ended: every step named with --step, or
    /// with --dag-id alone every step of the DAG. The exit status is 0 only if
    /// all of them SUCCEEDED.
    ///
    /// A DAG's steps are created one at a time by whoever runs it
    /// (start-observer creates each step once the one before it succeeded), so
    /// for a DAG "done" means: every step of it that exists when the watch
    /// starts, and every step created while it runs, has ended. A step created
    /// after that moment is not waited for; to wait for steps that do not exist
    /// yet, name each with --step once it does. An id with no step (or a DAG
    /// with none) is refused at once rather than waited for forever.
    #[arg(long, requires = "scope")]
    until_done: bool,
}

/// What the watch has seen so far: where to resume after a lost connection,
/// and each step's latest record (what --until-done judges).
#[derive(Default)]
struct Seen {
    after: u64,
    last: BTreeMap<String, pb::Step>,
}

pub async fn run(
    args: WatchArgs,
    client: &mut Client,
    format: Format,
) -> Result<ExitCode, CliError> {
    // --until-done judges from the current records, not only from what the
    // stream sends: the stream's first records come one by one, oldest
    // revision first, so a DAG's ended first step arrives before its running
    // second and alone would look like a DAG that has ended.
    let last = if args.until_done {
        current(&args, client).await?
    } else {
        BTreeMap::new()
    };
    let what = describe(&args);
    let spinner = live::Watching::new(&what);
    let mut seen = Seen {
        after: args.after_revision.unwrap_or_default(),
        last,
    };
    // Resuming after a revision, an ended step sends nothing more: nothing
    // left to wait for.
    if args.until_done && args.after_revision.is_some() && done(&args, &seen) {
        drop(spinner);
        return outcome(&args, &seen, format);
    }
    let mut lost = 0;
    loop {
        // One watch from `seen.after`; a daemon restart or a dropped
        // connection ends it, and the next picks up from the last revision seen.
        match watch_once(&args, client, format, &spinner, &what, &mut seen).await {
            Ok(()) => {
                drop(spinner);
                return outcome(&args, &seen, format);
            }
            Err(s) if flow::resumable(&s) && lost < flow::RECONNECTS => {
                lost += 1;
                output::note(&format!(
                    "lost obhostd ({}: {}); watching again after revision {} ({lost} of {})",
                    code_name(s.code()),
                    s.message(),
                    seen.after,
                    flow::RECONNECTS
                ));
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(s) => return Err(s.into()),
        }
    }
}

/// The current record of each step --until-done waits for: the steps named
/// with --step, or every step of --dag-id. Waiting for a step (or a DAG) that
/// does not exist would never end: say so at once.
async fn current(
    args: &WatchArgs,
    client: &mut Client,
) -> Result<BTreeMap<String, pb::Step>, CliError> {
    let mut found = BTreeMap::new();
    for id in &args.step_ids {
        match client
            .get_step(pb::GetStepRequest {
                step_id: id.clone(),
            })
            .await
        {
            Ok(r) => {
                if let Some(step) = r.into_inner().step {
                    found.insert(id.clone(), step);
                }
            }
            Err(s) if s.code() == tonic::Code::NotFound => {
                return Err(CliError::Rpc(tonic::Status::not_found(format!(
                    "step '{id}' not found, so --until-done would wait forever; check the id \
                     (obhostctl steps list), or watch without --until-done to see it appear"
                ))));
            }
            Err(s) => return Err(s.into()),
        }
    }
    let Some(dag_id) = args.dag_id.as_ref().filter(|_| args.step_ids.is_empty()) else {
        return Ok(found);
    };
    let mut page_token = String::new();
    loop {
        let page = client
            .list_steps(pb::ListStepsRequest {
                dag_id: dag_id.clone(),
                page_size: 1000,
                page_token,
                ..Default::default()
            })
            .await?
            .into_inner();
        found.extend(page.steps.into_iter().map(|s| (s.id.clone(), s)));
        page_token = page.next_page_token;
        if page_token.is_empty() {
            break;
        }
    }
    if found.is_empty() {
        return Err(CliError::Rpc(tonic::Status::not_found(format!(
            "DAG '{dag_id}' has no steps, so --until-done would wait forever; check the id \
             (obhostctl steps list), or watch without --until-done to see its steps appear"
        ))));
    }
    Ok(found)
}

/// What the spinner says is being watched.
fn describe(args: &WatchArgs) -> String {
    let dag_id = args.dag_id.as_deref().unwrap_or_default();
    match (args.step_ids.len(), dag_id.is_empty()) {
        (0, true) => "every step".to_string(),
        (0, false) => format!("DAG {dag_id}"),
        (1, _) => format!("step {}", args.step_ids[0]),
        (n, _) => format!("{n} steps"),
    }
}

/// One WatchSteps stream, printed as it comes. `Ok` once --until-done is
/// satisfied; a stream that ends otherwise is an error, for the caller to
/// watch again or give up.
async fn watch_once(
    args: &WatchArgs,
    client: &mut Client,
    format: Format,
    spinner: &live::Watching,
    what: &str,
    seen: &mut Seen,
) -> Result<(), tonic::Status> {
    let mut stream = client
        .watch_steps(pb::WatchStepsRequest {
            dag_id: args.dag_id.clone().unwrap_or_default(),
            step_ids: args.step_ids.clone(),
            after_revision: seen.after,
        })
        .await?
        .into_inner();
    while let Some(item) = stream.message().await? {
        let Some(step) = item.step else { continue };
        seen.after = seen.after.max(step.revision);
        output::steps::step_change(&step, format)
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        seen.last.insert(step.id.clone(), step);
        let running = seen
            .last
            .values()
            .filter(|s| !output::is_terminal(s))
            .count();
        spinner.set(format!(
            "watching {what}: {} seen, {running} not done, revision {}",
            seen.last.len(),
            seen.after
        ));
        if args.until_done && done(args, seen) {
            return Ok(());
        }
    }
    Err(tonic::Status::unavailable("the daemon ended the watch"))
}

/// Whether --until-done may stop: every step named with --step has ended, or,
/// watching a DAG, every step of it seen (the current records included) has.
fn done(args: &WatchArgs, seen: &Seen) -> bool {
    if args.step_ids.is_empty() {
        return !seen.last.is_empty() && seen.last.values().all(output::is_terminal);
    }
    args.step_ids
        .iter()
        .all(|id| seen.last.get(id).is_some_and(output::is_terminal))
}

/// The exit status of a finished --until-done: 0 only if every step it waited
/// for SUCCEEDED; otherwise stderr (and -o json's last line) says how the
/// first one (in the order they ran) that did not ended.
fn outcome(args: &WatchArgs, seen: &Seen, format: Format) -> Result<ExitCode, CliError> {
    let mut waited: Vec<pb::Step> = if args.step_ids.is_empty() {
        seen.last.values().cloned().collect()
    } else {
        args.step_ids
            .iter()
            .filter_map(|id| seen.last.get(id).cloned())
            .collect()
    };
    // The first that did not succeed in the order the steps ran.
    dag_order(&mut waited);
    let bad = waited
        .iter()
        .find(|s| s.state() != pb::StepState::Succeeded);
    let Some(bad) = bad else {
        return Ok(ExitCode::SUCCESS);
    };
    // Exit 1 says only that it did not succeed; stderr says
    // how it ended, as for every failing command.
    let (code, message) = bad
        .error
        .as_ref()
        .map(|e| (e.code.as_str(), e.message.as_str()))
        .unwrap_or(("", bad.message.as_str()));
    eprintln!(
        "obhostctl: step '{}' ended {}: {}: {}",
        output::clean(&bad.id),
        bad.state().as_str_name().trim_start_matches("STEP_STATE_"),
        output::clean(code),
        output::clean(&crate::cli::phrasing::in_cli_terms(message, Some(&bad.id)))
    );
    // The last JSON line says the watch failed, and why, as
    // every failing command's JSON does.
    if format == Format::Json {
        json::print_json(&json::step_error_json(bad), false)?;
    }
    Ok(ExitCode::from(1))
}
