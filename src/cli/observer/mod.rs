//! `obhostctl observer --home H` (GetObserver) and `obhostctl observer logs`
//! (TailObserverLog). `observer` with `--home` and no subcommand stays the
//! status it always was, so scripts written against it keep working.

mod logs;

use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::cli::connect::Client;
use crate::cli::error::CliError;
use crate::cli::output::{self, Format};
use crate::proto::v1 as pb;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ObserverArgs {
    /// The observer's home, e.g. /home/admin/oceanbase.
    #[arg(long, required = true)]
    home: Option<String>,
    #[command(subcommand)]
    command: Option<ObserverCommand>,
}

#[derive(Subcommand)]
pub enum ObserverCommand {
    /// Print the last lines of the observer's own log (<home>/log/observer.log),
    /// and with --follow every new line, across rotation, until Ctrl-C
    /// (TailObserverLog).
    Logs(logs::LogsArgs),
}

pub async fn run(
    args: ObserverArgs,
    client: &mut Client,
    format: Format,
) -> Result<ExitCode, CliError> {
    match (args.command, args.home) {
        (Some(ObserverCommand::Logs(logs_args)), _) => logs::run(logs_args, client, format).await,
        (None, Some(home)) => {
            let o = client
                .get_observer(pb::GetObserverRequest { home_path: home })
                .await?
                .into_inner()
                .observer
                .unwrap_or_default();
            output::observer::observer(&o, format)?;
            Ok(ExitCode::SUCCESS)
        }
        (None, None) => Err(CliError::Usage(
            "observer needs --home HOME (its status) or a subcommand, e.g. `observer logs --home HOME`"
                .into(),
        )),
    }
}
