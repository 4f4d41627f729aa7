//! `obhostctl observer logs --home H`: TailObserverLog.

use std::process::ExitCode;

use clap::Args;

use crate::cli::connect::Client;
use crate::cli::error::CliError;
use crate::cli::output::{self, Format, json};
use crate::proto::v1 as pb;

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

/// Prints the lines as they come. A follow ends quietly on Ctrl-C (130, as
/// every interrupted obhostctl command); a reader that went away (`| head`)
/// ends it with 141 through the write error, as everywhere in obhostctl.
pub async fn run(
    args: LogsArgs,
    client: &mut Client,
    format: Format,
) -> Result<ExitCode, CliError> {
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
        let mut document = (format == Format::Json && !follow).then(json::LinesDocument::new);
        while let Some(message) = stream.message().await? {
            match (&mut document, format) {
                (Some(doc), _) => doc.add(&message.lines)?,
                (None, Format::Json) => json::print_json(&json::proto_json(&message)?, false)?,
                (None, Format::Text) => output::observer::log_lines(&message.lines)?,
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
