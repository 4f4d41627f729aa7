//! obhostctl: the operator's client. Every subcommand is one or a few RPCs; output
//! is for people by default and `-o json` (canonical protobuf JSON) for scripts.
//!
//! This module is the command line and the dispatcher; each command lives in a
//! file of its own (`steps/`, `observer/`, `stop_observer.rs`, ...), as
//! reaching obhostd does (`connect.rs`) and what a failure says and exits with
//! (`error.rs`).
//!
//! Exit status: 0 success, 1 the daemon answered with an error (or a step ended
//! badly, for commands that wait, or nothing was changed), 2 bad usage, 3 the
//! daemon could not be reached; the man page's EXIT STATUS has them all.

mod connect;
mod demo;
mod docs;
mod error;
pub mod flow;
mod host;
mod ids;
mod observer;
mod output;
mod phrasing;
mod report_sink;
mod steps;
mod stop_observer;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use connect::{GivenAs, Target, connect_to};
use error::CliError;
use output::Format;

/// The heading of the flags every command takes, so that a command's help
/// shows its own flags first and apart.
const GLOBAL: &str = "Global options";

#[derive(Parser)]
#[command(
    name = "obhostctl",
    version = crate::daemon_cli::VERSION,
    about = "Client for obhostd, the OceanBase on-host agent"
)]
pub struct Cli {
    /// obhostd's address: unix:/path, host:port, http://host:port or
    /// https://host:port. Default: the daemon's default socket
    /// (unix:/run/obhost/obhostd.sock as root, $XDG_RUNTIME_DIR/obhost/obhostd.sock
    /// otherwise) [env: OBHOST_ADDR].
    #[arg(long, global = true, help_heading = GLOBAL)]
    addr: Option<String>,
    /// File with the bearer token, when obhostd has [auth] token_file (TCP)
    /// [env: OBHOST_TOKEN_FILE].
    #[arg(long, global = true, value_name = "FILE", help_heading = GLOBAL)]
    token_file: Option<PathBuf>,
    /// The CA (PEM) that signed obhostd's certificate, for https:// addresses
    /// [env: OBHOST_CA_FILE].
    #[arg(long, global = true, value_name = "FILE", help_heading = GLOBAL)]
    ca_file: Option<PathBuf>,
    /// This client's certificate (PEM), when obhostd requires mTLS
    /// [env: OBHOST_CERT_FILE].
    #[arg(long, global = true, value_name = "FILE", help_heading = GLOBAL)]
    cert_file: Option<PathBuf>,
    /// The key (PEM) of --cert-file [env: OBHOST_KEY_FILE].
    #[arg(long, global = true, value_name = "FILE", help_heading = GLOBAL)]
    key_file: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Text, help_heading = GLOBAL)]
    output: Format,
    /// How long a call may wait for obhostd's answer (for a follow or watch:
    /// for the stream to start), e.g. 5s.
    #[arg(long, global = true, value_parser = humantime::parse_duration, default_value = "30s", help_heading = GLOBAL)]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List, follow, cancel and retry steps.
    #[command(subcommand)]
    Steps(steps::StepsCommand),
    /// Show this host's facts (GetHostInfo).
    Host,
    /// Run the four host steps of "Start OB server": Prepare, StartObserver,
    /// WaitObserverActive, StartAgentService, with live progress.
    StartObserver(Box<flow::StartArgs>),
    /// Stop the observer of a home (StopObserver) and follow it; exit 1 when
    /// none was running there (see --missing-ok).
    StopObserver(stop_observer::StopArgs),
    /// Show the observer of a home (GetObserver: `observer --home H`), or its
    /// log (`observer logs --home H`).
    Observer(observer::ObserverArgs),
    /// Run the job end to end on this machine, needing nothing installed: start a
    /// private obhostd, start and stop an observer through it, clean up.
    Demo(demo::DemoArgs),
    /// Receive what obhostd pushes with [report]: serve StepReporter and print
    /// each change (-o json: a JSON object per line), flagging gaps and
    /// duplicates. Stops on Ctrl-C.
    ReportSink(report_sink::SinkArgs),
    /// Print a shell completion script on stdout, e.g. `obhostctl completions
    /// bash > /etc/bash_completion.d/obhostctl` (the .deb installs them).
    Completions(docs::CompletionsArgs),
    /// Write the man pages (obhostctl.1, one per subcommand, obhostd.8) into
    /// --out DIR, for an install from source; the .deb ships them.
    Man(docs::ManArgs),
}

/// obhostctl's command line as it parses, prints its help and renders its
/// man pages: [`Cli`], with the global flags `demo` refuses (it runs its own
/// obhostd) hidden from it, so its help offers nothing it would refuse. `shape` is applied first (the man
/// pages drop the `help` pseudo-subcommand).
pub fn command(shape: impl FnOnce(clap::Command) -> clap::Command) -> clap::Command {
    let cli = shape(<Cli as clap::CommandFactory>::command());
    // Given to demo as its own hidden copies, the global flags are not
    // propagated to it again when clap builds the tree, yet still parse, so
    // that demo can say why it refuses them.
    let hidden: Vec<clap::Arg> = cli
        .get_arguments()
        .filter(|a| demo_refuses(a.get_id().as_str()).is_some())
        .map(|a| a.clone().hide(true))
        .collect();
    cli.mut_subcommand("demo", |demo| demo.args(hidden))
}

impl Cli {
    /// Where to reach obhostd: each flag, or when not given its OBHOST_*
    /// variable. The variables are read here rather than by clap's `env`:
    /// clap counts a value from the environment as given on the command
    /// line, and every usage error then showed `--addr <ADDR>` in its usage
    /// line as if the command required it.
    fn target(&self) -> Result<Target, CliError> {
        let mut given_as = GivenAs::default();
        let path = |flag: &Option<PathBuf>, var: &'static str, name: &mut &'static str| {
            flag.clone().or_else(|| {
                let value = from_env(var).map(PathBuf::from);
                if value.is_some() {
                    *name = var;
                }
                value
            })
        };
        let token_file = path(
            &self.token_file,
            "OBHOST_TOKEN_FILE",
            &mut given_as.token_file,
        );
        let ca_file = path(&self.ca_file, "OBHOST_CA_FILE", &mut given_as.ca_file);
        let cert_file = path(&self.cert_file, "OBHOST_CERT_FILE", &mut given_as.cert_file);
        let key_file = path(&self.key_file, "OBHOST_KEY_FILE", &mut given_as.key_file);
        let addr = match (&self.addr, from_env("OBHOST_ADDR")) {
            (Some(a), _) => Some(a.clone()),
            (None, None) => None,
            (None, Some(v)) => {
                given_as.addr = "OBHOST_ADDR";
                Some(v.into_string().map_err(|v| {
                    CliError::Usage(format!(
                        "OBHOST_ADDR '{}' is not UTF-8; set it to an address such as \
                         unix:/run/obhost/obhostd.sock, or unset it and pass --addr",
                        v.to_string_lossy()
                    ))
                })?)
            }
        };
        Ok(Target {
            addr,
            token_file,
            ca_file,
            cert_file,
            key_file,
            timeout: Some(self.timeout),
            given_as,
        })
    }
}

/// A variable of the environment; set but empty is unset, as a shell's
/// `OBHOST_ADDR= obhostctl ...` means.
fn from_env(var: &str) -> Option<std::ffi::OsString> {
    std::env::var_os(var).filter(|v| !v.is_empty())
}

/// obhostctl's whole life; `bin/obhostctl.rs` only calls this.
pub fn main() -> ExitCode {
    let matches = match command(|c| c).try_get_matches() {
        Ok(m) => m,
        Err(e) => error::usage_exit(e),
    };
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => error::usage_exit(e),
    };
    let format = cli.output;
    output::init(format);
    let fail = |e: CliError| error::fail(e, format);
    if let Command::Demo(_) = cli.command
        && let Some(flag) = demo_refused_flag(&matches)
    {
        return fail(CliError::Usage(format!(
            "demo does not use {flag}: it starts its own obhostd on a private socket and talks \
             only to it; run `obhostctl demo` without {flag} (to drive an obhostd of yours, \
             use `obhostctl {flag} ... start-observer`)"
        )));
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("obhostctl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => fail(e),
    }
}

/// The flag of a global option `demo` refuses, by clap id: the ones that say
/// which obhostd to talk to, and --timeout, since its calls all go to the
/// obhostd it starts itself.
fn demo_refuses(id: &str) -> Option<&'static str> {
    connect::TARGET_FLAGS
        .iter()
        .find(|(target, _, _)| *target == id)
        .map(|(_, flag, _)| *flag)
        .or((id == "timeout").then_some("--timeout"))
}

/// The first global flag `demo` refuses that was given on the command line
/// (an OBHOST_* variable of the environment, which an operator may export for
/// every command, does not count): demo would silently ignore it.
fn demo_refused_flag(matches: &clap::ArgMatches) -> Option<&'static str> {
    let given = |m: &clap::ArgMatches, id: &str| {
        m.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
    };
    let demo = matches.subcommand_matches("demo")?;
    matches
        .ids()
        .chain(demo.ids())
        .map(|id| id.as_str())
        .find(|id| demo_refuses(id).is_some() && (given(matches, id) || given(demo, id)))
        .and_then(demo_refuses)
}

/// Runs the command. Only the commands that talk to an obhostd of the
/// operator's connect, so a bad OBHOST_ADDR does not stop `obhostctl man`.
async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let format = cli.output;
    let target = cli.target();
    let connect = || async { connect_to(&target?).await };
    match cli.command {
        Command::Demo(args) => demo::run(args, format).await,
        Command::ReportSink(args) => {
            report_sink::run(args, format).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions(args) => docs::completions(&args, command(|c| c)),
        Command::Man(args) => docs::man(&args, command(|c| c.disable_help_subcommand(true))),
        Command::Steps(cmd) => steps::run(cmd, &mut connect().await?, format).await,
        Command::StartObserver(args) => {
            flow::start_observer(&mut connect().await?, &args, format).await
        }
        Command::StopObserver(args) => {
            stop_observer::run(args, &mut connect().await?, format).await
        }
        Command::Observer(args) => observer::run(args, &mut connect().await?, format).await,
        Command::Host => host::run(&mut connect().await?, format).await,
    }
}
