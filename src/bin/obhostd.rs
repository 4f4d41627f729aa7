//! obhostd: parse flags, load config, set up logging, run, map the outcome to
//! an exit code. Everything else is in the library (`obhost::daemon_cli`,
//! `obhost::daemon`).

use std::process::ExitCode;

use clap::Parser;
use obhost::config::LogFormat;
use obhost::daemon_cli::{self, DaemonArgs};

fn main() -> ExitCode {
    let args = DaemonArgs::parse();
    let config = match args.load_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("obhostd: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        return match obhost::daemon::check_config(&config) {
            Ok(summary) => {
                println!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("obhostd: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    init_logging(config.log_format);
    log_panics();
    args.log_start(&config);
    match daemon_cli::run_until_signalled(config) {
        Ok(()) => {
            tracing::info!("obhostd stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            // One plain line on stderr (the journal): the error already says
            // what to do, and a second, log-formatted copy would only add noise.
            eprintln!("obhostd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs on stderr, fit for where stderr goes: colour only on a terminal (in a
/// file or the journal escape codes are noise), and under systemd
/// (`JOURNAL_STREAM` set) no timestamp of our own, since journald stamps
/// every line.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match (format, journald) {
        (LogFormat::Text, false) => builder.init(),
        (LogFormat::Text, true) => builder
            .event_format(SyslogPrefix(
                tracing_subscriber::fmt::format()
                    .with_ansi(false)
                    .without_time(),
            ))
            .init(),
        (LogFormat::Json, false) => builder.json().flatten_event(true).init(),
        (LogFormat::Json, true) => builder
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(SyslogPrefix(
                tracing_subscriber::fmt::format()
                    .json()
                    .flatten_event(true)
                    .without_time(),
            ))
            .init(),
    }
}

/// Under journald each line opens with its syslog priority (`<4>` for WARN):
/// journald reads it (SyslogLevelPrefix=, on by default) and files the line
/// at that priority, so `journalctl -p warning -u obhostd` shows the refusals
/// and errors, not every line at "info".
struct SyslogPrefix<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for SyslogPrefix<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let priority = match *event.metadata().level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            _ => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(ctx, writer, event)
    }
}

/// Panics go to the log like every other error, capped: the default hook would
/// print the whole message to stderr, and a panic's message can quote any input.
fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let text = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(not text)".into());
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(
            %location,
            panic = %obhost::bounds::quote(&text),
            "a thread of obhostd panicked: a bug; please report it with this line"
        );
    }));
}
