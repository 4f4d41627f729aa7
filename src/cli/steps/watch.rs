//! `obhostctl steps watch`: WatchSteps, watched again from the last revision
//! seen when the daemon restarts or the connection drops.

use std::process::ExitCode;

use clap::Args;

use crate::cli::output::{self, Format};
use crate::cli::{CliError, Client};
use crate::proto::v1 as pb;

#[derive(Args)]
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
    /// Exit once every step named with --step is terminal; the exit status is 0
    /// only if all of them SUCCEEDED.
    #[arg(long, requires = "step_ids")]
    until_done: bool,
}

pub async fn run(
    args: WatchArgs,
    client: &mut Client,
    format: Format,
) -> Result<ExitCode, CliError> {
    // Waiting for a step that does not exist would never end: say so at once.
    if args.until_done {
        for id in &args.step_ids {
            let found = client
                .get_step(pb::GetStepRequest {
                    step_id: id.clone(),
                })
                .await;
            if let Err(s) = found
                && s.code() == tonic::Code::NotFound
            {
                return Err(CliError::Rpc(tonic::Status::not_found(format!(
                    "step '{id}' not found, so --until-done would wait forever; check the id \
                     (obhostctl steps list), or watch without --until-done to see it appear"
                ))));
            }
        }
    }
    let dag_id = args.dag_id.clone().unwrap_or_default();
    let what = match (args.step_ids.len(), dag_id.is_empty()) {
        (0, true) => "every step".to_string(),
        (0, false) => format!("DAG {dag_id}"),
        (1, _) => format!("step {}", args.step_ids[0]),
        (n, _) => format!("{n} steps"),
    };
    let spinner = output::Watching::new(&what);
    let mut after = args.after_revision.unwrap_or_default();
    let mut last: std::collections::BTreeMap<String, pb::Step> = Default::default();
    let mut lost = 0;
    loop {
        // One watch from `after`; a daemon restart or a dropped connection
        // ends it, and the next picks up from the last revision seen.
        let ended: Result<(), tonic::Status> = async {
            let mut stream = client
                .watch_steps(pb::WatchStepsRequest {
                    dag_id: dag_id.clone(),
                    step_ids: args.step_ids.clone(),
                    after_revision: after,
                })
                .await?
                .into_inner();
            while let Some(item) = stream.message().await? {
                let Some(step) = item.step else { continue };
                after = after.max(step.revision);
                output::step_change(&step, format)
                    .map_err(|e| tonic::Status::internal(e.to_string()))?;
                last.insert(step.id.clone(), step);
                let running = last.values().filter(|s| !output::is_terminal(s)).count();
                spinner.set(format!(
                    "watching {what}: {} seen, {running} not done, revision {after}",
                    last.len()
                ));
                if args.until_done
                    && args
                        .step_ids
                        .iter()
                        .all(|id| last.get(id).is_some_and(output::is_terminal))
                {
                    return Ok(());
                }
            }
            Err(tonic::Status::unavailable("the daemon ended the watch"))
        }
        .await;
        match ended {
            Ok(()) => {
                drop(spinner);
                let bad = args.step_ids.iter().find_map(|id| {
                    last.get(id)
                        .filter(|s| s.state() != pb::StepState::Succeeded)
                });
                let ok = bad.is_none();
                if let Some(bad) = bad {
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
                        output::clean(message)
                    );
                    // The last JSON line says the watch failed, and why, as
                    // every failing command's JSON does.
                    if format == Format::Json {
                        output::print_json(&output::step_error_json(bad), false)?;
                    }
                }
                return Ok(if ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                });
            }
            Err(s) if crate::cli::flow::resumable(&s) && lost < crate::cli::flow::RECONNECTS => {
                lost += 1;
                output::note(&format!(
                    "lost obhostd ({}: {}); watching again after revision {after} ({lost} of {})",
                    crate::cli::code_name(s.code()),
                    s.message(),
                    crate::cli::flow::RECONNECTS
                ));
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(s) => return Err(s.into()),
        }
    }
}
