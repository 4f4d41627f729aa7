//! What obhostctl's exit status and last words say when a command fails. Every
//! failure is a [`CliError`]; [`fail`] is the one place that turns it into
//! stderr text, `-o json`'s error document and the exit status, so a script
//! reads the same code whichever command failed.

use std::process::ExitCode;

use super::output::{self, Format, json};

/// What went wrong, sorted by what the exit status should say.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(
        "cannot reach obhostd at {addr}: {cause}. Is it running (systemctl status obhostd)? Use --addr for another address{hint}"
    )]
    Unreachable {
        addr: String,
        cause: String,
        hint: &'static str,
    },
    #[error("{}", rpc_text(.0))]
    Rpc(#[from] tonic::Status),
    #[error("{0}")]
    Usage(String),
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

impl CliError {
    /// Whether this is stdout's reader having gone away (EPIPE).
    fn is_broken_pipe(&self) -> bool {
        match self {
            CliError::Other(e) => e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }),
            _ => false,
        }
    }

    fn exit_status(&self) -> u8 {
        match self {
            CliError::Unreachable { .. } => 3,
            CliError::Rpc(s) if s.code() == tonic::Code::Unavailable => 3,
            CliError::Usage(_) => 2,
            CliError::Rpc(_) | CliError::Other(_) => 1,
        }
    }

    /// The `code` of `-o json`'s error document: the RPC's status code as
    /// the API docs spell it, UNAVAILABLE for a daemon not reached, USAGE for
    /// bad usage, UNKNOWN for the rest.
    fn code(&self) -> String {
        match self {
            CliError::Unreachable { .. } => "UNAVAILABLE".into(),
            CliError::Rpc(s) if is_our_timeout(s) => "DEADLINE_EXCEEDED".into(),
            CliError::Rpc(s) => code_name(s.code()),
            CliError::Usage(_) => "USAGE".into(),
            CliError::Other(_) => "UNKNOWN".into(),
        }
    }
}

/// Tells the operator (and, with `-o json`, the script) what failed and
/// returns the exit status that says which kind of failure it was.
pub fn fail(e: CliError, format: Format) -> ExitCode {
    // The reader went away (`| head`): nothing left to tell it, and
    // nobody to tell. Exit as a tool killed by SIGPIPE would, which shells
    // know; the steps, if any, go on in obhostd.
    if e.is_broken_pipe() {
        return ExitCode::from(128 + libc::SIGPIPE as u8);
    }
    // An RPC's message is obhostd's text, quoting what a caller sent.
    eprintln!("obhostctl: {}", output::clean(&e.to_string()));
    let status = e.exit_status();
    if format == Format::Json {
        // Scripts read stdout: the error is its one document there too.
        // The code has a field of its own: an RPC's message is its text.
        let message = match &e {
            CliError::Rpc(s) if !is_our_timeout(s) => s.message().to_string(),
            _ => e.to_string(),
        };
        let doc = json::error_json(&e.code(), &message, status);
        if let Err(e) = json::print_json(&doc, true) {
            eprintln!("obhostctl: cannot print the error as JSON: {e}");
        }
    }
    ExitCode::from(status)
}

/// A command line clap could not make sense of: its message and usage on
/// stderr, exit 2, and, when the arguments ask for `-o json`, the error as
/// JSON on stdout as for every other failure (help and --version are not
/// failures: they print as usual).
pub fn usage_exit(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    let failure = !matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if failure && wants_json(std::env::args_os().skip(1)) {
        let text = e.render().to_string();
        let first = text
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ");
        let _ = json::print_json(&json::error_json("USAGE", first, 2), true);
    }
    e.exit()
}

/// Whether raw arguments ask for JSON output (`-o json`, `-ojson`,
/// `--output json`, `--output=json`), for errors found before they parse.
fn wants_json(args: impl Iterator<Item = std::ffi::OsString>) -> bool {
    let args: Vec<String> = args.map(|a| a.to_string_lossy().into_owned()).collect();
    args.iter().enumerate().any(|(i, a)| {
        matches!(a.as_str(), "-ojson" | "--output=json")
            || (matches!(a.as_str(), "-o" | "--output")
                && args.get(i + 1).is_some_and(|v| v == "json"))
    })
}

/// A status as the operator reads it. tonic reports a call past its deadline
/// as CANCELLED "Timeout expired", which says neither whose deadline nor what
/// to do.
fn rpc_text(s: &tonic::Status) -> String {
    if is_our_timeout(s) {
        return "DEADLINE_EXCEEDED: obhostd did not answer within --timeout; check that --addr \
                is obhostd and that it is not stuck (systemctl status obhostd), or give a \
                longer --timeout"
            .into();
    }
    format!(
        "{}: {}",
        code_name(s.code()),
        super::phrasing::in_cli_terms(s.message(), None)
    )
}

/// tonic's way of saying a call ran past its deadline (our --timeout).
fn is_our_timeout(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::Cancelled && s.message() == "Timeout expired"
}

/// gRPC codes as the API docs spell them (NOT_FOUND, ALREADY_EXISTS, ...).
pub(crate) fn code_name(code: tonic::Code) -> String {
    let camel = format!("{code:?}");
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}
