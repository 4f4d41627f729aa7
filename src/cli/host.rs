//! `obhostctl host`: this host's facts (GetHostInfo).

use std::process::ExitCode;

use super::output::{self, Format};
use crate::cli::connect::Client;
use crate::cli::error::CliError;
use crate::proto::v1 as pb;

pub async fn run(client: &mut Client, format: Format) -> Result<ExitCode, CliError> {
    let host = client
        .get_host_info(pb::GetHostInfoRequest {})
        .await?
        .into_inner()
        .host
        .unwrap_or_default();
    output::host::host(&host, format)?;
    Ok(ExitCode::SUCCESS)
}
