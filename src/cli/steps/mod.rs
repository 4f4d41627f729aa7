//! `obhostctl steps ...`: one file per subcommand.

mod cancel;
mod get;
mod list;
pub(super) mod order;
mod retry;
mod watch;

use std::process::ExitCode;

use clap::Subcommand;

use super::output::Format;
use crate::cli::connect::Client;
use crate::cli::error::CliError;

#[derive(Subcommand)]
pub enum StepsCommand {
    /// List steps, newest first: the DAGs by creation, newest first, each
    /// DAG's steps in the order they ran.
    List(list::ListArgs),
    /// Show one step.
    Get {
        /// The step's id, e.g. 133851 or demo-start.
        step_id: String,
    },
    /// Follow steps as they change (current records first).
    Watch(watch::WatchArgs),
    /// Cancel a PENDING or RUNNING step.
    Cancel {
        /// The step's id.
        step_id: String,
    },
    /// Run a FAILED, TIMED_OUT or CANCELLED step again.
    Retry {
        /// The step's id.
        step_id: String,
    },
}

pub async fn run(
    cmd: StepsCommand,
    client: &mut Client,
    format: Format,
) -> Result<ExitCode, CliError> {
    match cmd {
        StepsCommand::List(args) => list::run(args, client, format).await,
        StepsCommand::Get { step_id } => get::run(step_id, client, format).await,
        StepsCommand::Cancel { step_id } => cancel::run(step_id, client, format).await,
        StepsCommand::Retry { step_id } => retry::run(step_id, client, format).await,
        StepsCommand::Watch(args) => watch::run(args, client, format).await,
    }
}
