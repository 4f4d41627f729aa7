//! `obhostctl steps list`: ListSteps, every page with --all.

use std::process::ExitCode;

use clap::Args;

use crate::cli::output::{self, Format};
use crate::cli::{CliError, Client};
use crate::proto::v1 as pb;

use super::StateArg;

#[derive(Args)]
pub struct ListArgs {
    /// Only steps of this DAG.
    #[arg(long)]
    dag_id: Option<String>,
    /// Only steps in this state.
    #[arg(long, value_enum)]
    state: Option<StateArg>,
    /// Steps per page (the daemon caps it at 1000).
    #[arg(long, default_value_t = 100)]
    page_size: u32,
    /// Continue from a previous page's next_page_token.
    #[arg(long)]
    page_token: Option<String>,
    /// Fetch every page.
    #[arg(long)]
    all: bool,
}

pub async fn run(
    args: ListArgs,
    client: &mut Client,
    format: Format,
) -> Result<ExitCode, CliError> {
    let mut token = args.page_token.unwrap_or_default();
    let mut all = Vec::new();
    loop {
        let page = client
            .list_steps(pb::ListStepsRequest {
                dag_id: args.dag_id.clone().unwrap_or_default(),
                state: args
                    .state
                    .map(pb::StepState::from)
                    .unwrap_or_default()
                    .into(),
                page_size: args.page_size,
                page_token: token.clone(),
            })
            .await?
            .into_inner();
        all.extend(page.steps);
        token = page.next_page_token;
        if !args.all || token.is_empty() {
            break;
        }
    }
    output::step_list(&all, &token, format)?;
    Ok(ExitCode::SUCCESS)
}
