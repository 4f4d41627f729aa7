//! `obhostctl observer --home H` (GetObserver) and `obhostctl observer logs`
//! (TailObserverLog). `observer` with `--home` and no subcommand stays the
//! status it always was, so scripts written against it keep working.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::output::{self, Format};
use super::{CliError, Client};
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
    Logs(LogsArgs),
}

#[derive(Args)]
pub struct LogsArgs {
    /// The observer's home, e.g. /home/admin/oceanbase.
    #[arg(long)]
    home: String,
    /// How many of the last lines to print first (obhostd caps it at 10000).
    #[arg(short = 'n', long, default_value_t = 100)]
    lines: u32,
    /// Only WARN, ERROR, FATAL and EDIAG lines (not WDIAG, INFO, TRACE, DEBUG).
    #[arg(long)]
    errors: bool,
    /// Keep printing new lines as the observer writes them, across rotation,
    /// until Ctrl-C.
    #[arg(short = 'f', long)]
    follow: bool,
}

pub async fn run(
    args: ObserverArgs,
    client: &mut Client,
    format: Format,
) -> Result<ExitCode, CliError> {
    match (args.command, args.home) {
        (Some(ObserverCommand::Logs(logs_args)), _) => logs(logs_args, client, format).await,
        (None, Some(home)) => {
            let o = client
                .get_observer(pb::GetObserverRequest { home_path: home })
                .await?
                .into_inner()
                .observer
                .unwrap_or_default();
            output::observer(&o, format)?;
            Ok(ExitCode::SUCCESS)
        }
        (None, None) => Err(CliError::Usage(
            "observer needs --home HOME (its status) or a subcommand, e.g. `observer logs --home HOME`"
                .into(),
        )),
    }
}

/// Prints the lines as they come. A follow ends quietly on Ctrl-C (130, as
/// every interrupted obhostctl command); a reader that went away (`| head`)
/// ends it with 141 through the write error, as everywhere in obhostctl.
async fn logs(args: LogsArgs, client: &mut Client, format: Format) -> Result<ExitCode, CliError> {
    let follow = args.follow;
    let request = pb::TailObserverLogRequest {
        home_path: args.home,
        lines: args.lines,
        errors_only: args.errors,
        follow,
    };
    let printing = async {
        let mut stream = client.tail_observer_log(request).await?.into_inner();
        // Without --follow, -o json is one document for the whole command,
        // written as the lines come (never all of them in memory).
        let mut document = (format == Format::Json && !follow).then(output::LinesDocument::new);
        while let Some(message) = stream.message().await? {
            match (&mut document, format) {
                (Some(doc), _) => doc.add(&message.lines)?,
                (None, Format::Json) => output::print_json(&output::proto_json(&message)?, false)?,
                (None, Format::Text) => output::log_lines(&message.lines)?,
            }
        }
        if let Some(doc) = document {
            doc.end()?;
        }
        Ok::<(), CliError>(())
    };
    if !follow {
        printing.await?;
        return Ok(ExitCode::SUCCESS);
    }
    tokio::select! {
        r = printing => r.map(|()| ExitCode::SUCCESS),
        _ = tokio::signal::ctrl_c() => Ok(ExitCode::from(130)),
    }
}
