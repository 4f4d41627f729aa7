//! `obhostctl stop-observer --home H`: StopObserver, then follow the step to
//! its end, so the exit status is the stop's outcome and not only that the
//! daemon took the request.

use std::process::ExitCode;

use clap::Args;

use super::output::{self, Format};
use super::{CliError, Client, flow, new_id};
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
}

pub async fn run(
    args: StopArgs,
    client: &mut Client,
    format: Format,
) -> Result<ExitCode, CliError> {
    let StopArgs {
        home,
        grace,
        force,
        step_id,
    } = args;
    let id = step_id.unwrap_or_else(|| new_id("stop"));
    client
        .stop_observer(pb::StopObserverRequest {
            meta: Some(pb::StepMeta {
                step_id: id.clone(),
                ..Default::default()
            }),
            home_path: home,
            grace: Some(grace.into()),
            force,
        })
        .await?;
    let step = flow::follow(client, &id, std::time::Instant::now(), format).await?;
    let ok = step.state() == pb::StepState::Succeeded;
    if format == Format::Json {
        // The step, and when it failed `{"error": ..., "step": ...}`:
        // one document either way.
        let doc = if ok {
            output::proto_json(&step)?
        } else {
            let mut doc = output::step_error_json(&step);
            doc["step"] = output::proto_json(&step)?;
            doc
        };
        output::print_json(&doc, true)?;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        if let Some(e) = &step.error {
            eprintln!(
                "obhostctl: {}: {}",
                output::clean(&e.code),
                output::clean(&e.message)
            );
        }
        ExitCode::from(1)
    })
}
