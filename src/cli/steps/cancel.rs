//! `obhostctl steps cancel ID`: CancelStep, and a failure when there was
//! nothing left to cancel.

use std::process::ExitCode;

use crate::cli::connect::Client;
use crate::cli::error::CliError;
use crate::cli::output::{self, Format};
use crate::proto::v1 as pb;

pub async fn run(
    step_id: String,
    client: &mut Client,
    format: Format,
) -> Result<ExitCode, CliError> {
    let step = client
        .cancel_step(pb::CancelStepRequest {
            step_id: step_id.clone(),
        })
        .await?
        .into_inner()
        .step
        .unwrap_or_default();
    output::steps::step(&step, format)?;
    // CancelStep of an ended step returns it unchanged: say so, and
    // fail, unless it is cancelled (a second cancel changes nothing).
    match step.state() {
        pb::StepState::Succeeded | pb::StepState::Failed | pb::StepState::TimedOut => {
            output::note(&format!(
                "step {step_id} had already ended ({}); nothing was cancelled",
                output::state_name(step.state())
            ));
            Ok(ExitCode::from(1))
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}
