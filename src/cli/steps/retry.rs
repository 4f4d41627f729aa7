//! `obhostctl steps retry ID`: RetryStep.

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
        .retry_step(pb::RetryStepRequest { step_id })
        .await?
        .into_inner()
        .step;
    output::steps::step(&step.unwrap_or_default(), format)?;
    Ok(ExitCode::SUCCESS)
}
