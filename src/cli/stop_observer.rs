//! `obhostctl stop-observer --home H`: StopObserver, then follow the step to
//! its end, so the exit status is the stop's outcome and not only that the
//! daemon took the request.

use std::process::ExitCode;

use clap::Args;

use super::output::{self, Format, json};
use crate::cli::connect::Client;
use crate::cli::error::CliError;
use crate::cli::flow;
use crate::cli::ids::new_id;
use crate::proto::v1 as pb;

#[derive(Args)]
pub struct StopArgs {
    /// The observer's home, e.g. /home/admin/oceanbase.
    #[arg(long)]
    home: String,
    /// Time between SIGTERM and SIGKILL.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    grace: std::time::Duration,
    /// SIGKILL at once.
    #[arg(long)]
    force: bool,
    /// The step's id [default: stop-<unix seconds>-<random hex>].
    #[arg(long)]
    step_id: Option<String>,
    /// Exit 0 when no observer was running at --home (it is still said on
    /// stderr). Without it that exits 1, so that a mistyped home is noticed.
    #[arg(long)]
    missing_ok: bool,
}

/// How a stop ended, which the exit status tells: 0 stopped, 1 failed, and
/// 1 too when there was nothing to stop (0 with --missing-ok).
enum Outcome {
    Stopped,
    /// The step succeeded without stopping anything; what to tell the
    /// operator.
    NothingRunning(String),
    Failed,
}

pub async fn run(
    args: StopArgs,
    client: &mut Client,
    format: Format,
) -> Result<ExitCode, CliError> {
    let id = args.step_id.clone().unwrap_or_else(|| new_id("stop"));
    client
        .stop_observer(pb::StopObserverRequest {
            meta: Some(pb::StepMeta {
                step_id: id.clone(),
                ..Default::default()
            }),
            home_path: args.home.clone(),
            grace: Some(args.grace.into()),
            force: args.force,
        })
        .await?;
    let step = flow::follow(client, &id, std::time::Instant::now(), format).await?;
    let outcome = judge(&step, &args);
    if format == Format::Json {
        // The step, and when it failed `{"error": ..., "step": ...}`:
        // one document either way.
        let error = match &outcome {
            Outcome::Stopped => None,
            Outcome::NothingRunning(_) if args.missing_ok => None,
            Outcome::NothingRunning(text) => Some(json::error_json("NOT_RUNNING", text, 1)),
            Outcome::Failed => Some(json::step_error_json(&step)),
        };
        let doc = match error {
            None => json::proto_json(&step)?,
            Some(mut doc) => {
                doc["step"] = json::proto_json(&step)?;
                doc
            }
        };
        json::print_json(&doc, true)?;
    }
    Ok(match outcome {
        Outcome::Stopped => ExitCode::SUCCESS,
        Outcome::NothingRunning(text) => {
            output::note(&format!("obhostctl: {}", output::clean(&text)));
            if args.missing_ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Outcome::Failed => {
            if let Some(e) = &step.error {
                eprintln!(
                    "obhostctl: {}: {}",
                    output::clean(&e.code),
                    output::clean(&super::phrasing::in_cli_terms(&e.message, Some(&step.id)))
                );
            }
            ExitCode::from(1)
        }
    })
}

/// Reads the ended step: StopObserver succeeds when there was nothing to stop
/// (`already_stopped` in its outputs), which alone looked like a stop that
/// worked; an `exit` beside it means the observer had died on its own.
fn judge(step: &pb::Step, args: &StopArgs) -> Outcome {
    if step.state() != pb::StepState::Succeeded {
        return Outcome::Failed;
    }
    if step.outputs.get("already_stopped").map(String::as_str) != Some("true") {
        return Outcome::Stopped;
    }
    let home = &args.home;
    let what = if step.outputs.contains_key("exit") {
        format!("nothing was stopped at home '{home}': {}", step.message)
    } else {
        format!(
            "no observer was running at home '{home}', so nothing was stopped; check --home: \
             `obhostctl observer --home {home}` shows what obhostd finds there"
        )
    };
    Outcome::NothingRunning(if args.missing_ok {
        what
    } else {
        format!("{what} (pass --missing-ok when nothing running there is expected)")
    })
}
