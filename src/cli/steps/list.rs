//! `obhostctl steps list`: the newest steps first. ListSteps pages by step id,
//! which says nothing of when a step was made, so the newest steps may be on
//! any page: the command reads every page (the store keeps at most
//! `[retention] max_steps`, 10,000 by default) and then keeps the newest.

use std::process::ExitCode;

use clap::{Args, ValueEnum};

use crate::cli::connect::Client;
use crate::cli::error::CliError;
use crate::cli::output::{self, Format};
use crate::proto::v1 as pb;

use super::order::newest_first;

/// ListSteps' own cap on a page: the fewest calls for the whole list.
const PAGE_SIZE: u32 = 1000;

#[derive(Args)]
pub struct ListArgs {
    /// Only steps of this DAG.
    #[arg(long)]
    dag_id: Option<String>,
    /// Only steps in this state.
    #[arg(long, value_enum)]
    state: Option<StateArg>,
    /// How many of the newest steps to show; a line after them says how many
    /// older ones there are.
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..), conflicts_with = "all")]
    limit: u32,
    /// Show every step.
    #[arg(long)]
    all: bool,
}

pub async fn run(
    args: ListArgs,
    client: &mut Client,
    format: Format,
) -> Result<ExitCode, CliError> {
    let mut steps = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_steps(pb::ListStepsRequest {
                dag_id: args.dag_id.clone().unwrap_or_default(),
                state: args
                    .state
                    .map(pb::StepState::from)
                    .unwrap_or_default()
                    .into(),
                page_size: PAGE_SIZE,
                page_token,
            })
            .await?
            .into_inner();
        steps.extend(page.steps);
        page_token = page.next_page_token;
        if page_token.is_empty() {
            break;
        }
    }
    let limit = (!args.all).then_some(args.limit as usize);
    let older = newest_first(&mut steps, limit);
    output::steps::newest_steps(&steps, older, format)?;
    Ok(ExitCode::SUCCESS)
}

/// `--state`: the states a list may be narrowed to.
#[derive(Clone, Copy, ValueEnum)]
pub enum StateArg {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
}

impl From<StateArg> for pb::StepState {
    fn from(s: StateArg) -> Self {
        match s {
            StateArg::Pending => pb::StepState::Pending,
            StateArg::Running => pb::StepState::Running,
            StateArg::Succeeded => pb::StepState::Succeeded,
            StateArg::Failed => pb::StepState::Failed,
            StateArg::Cancelled => pb::StepState::Cancelled,
            StateArg::TimedOut => pb::StepState::TimedOut,
        }
    }
}
