//! obhostctl: the operator's client. Every subcommand is one or a few RPCs; output
//! is for people by default and `-o json` (canonical protobuf JSON) for scripts.
//!
//! Exit status: 0 success, 1 the daemon answered with an error (or a step ended
//! badly, for commands that wait), 2 bad usage, 3 the daemon could not be reached.

mod demo;
pub mod flow;
mod output;
mod steps;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::proto::v1 as pb;
use crate::proto::v1::host_agent_client::HostAgentClient;

pub use output::Format;

#[derive(Parser)]
#[command(
    name = "obhostctl",
    version,
    about = "Client for obhostd, the OceanBase on-host agent"
)]
pub struct Cli {
    /// obhostd's address.
    #[arg(
        long,
        global = true,
        env = "OBHOST_ADDR",
        default_value = "http://127.0.0.1:62900"
    )]
    addr: String,
    /// File with the bearer token, when obhostd has [auth] token_file.
    #[arg(long, global = true, env = "OBHOST_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Text)]
    output: Format,
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
    /// Stop the observer of a home (StopObserver) and follow it.
    StopObserver {
        #[arg(long)]
        home: String,
        /// Time between SIGTERM and SIGKILL.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
        grace: std::time::Duration,
        /// SIGKILL at once.
        #[arg(long)]
        force: bool,
        /// Default: stop-<unix seconds>.
        #[arg(long)]
        step_id: Option<String>,
    },
    /// Show the observer of a home (GetObserver).
    Observer {
        #[arg(long)]
        home: String,
    },
    /// Run the job end to end on this machine, needing nothing installed: start a
    /// private obhostd, start and stop an observer through it, clean up.
    Demo(demo::DemoArgs),
}

/// What went wrong, sorted by what the exit status should say.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(
        "cannot reach obhostd at {addr}: {cause}. Is it running (systemctl status obhostd)? Use --addr for another address"
    )]
    Unreachable { addr: String, cause: String },
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Rpc(#[from] tonic::Status),
    #[error("{0}")]
    Usage(String),
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

impl CliError {
    fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Unreachable { .. } => ExitCode::from(3),
            CliError::Rpc(s) if s.code() == tonic::Code::Unavailable => ExitCode::from(3),
            CliError::Usage(_) => ExitCode::from(2),
            CliError::Rpc(_) | CliError::Other(_) => ExitCode::from(1),
        }
    }
}

/// gRPC codes as the API docs spell them (NOT_FOUND, ALREADY_EXISTS, ...).
fn code_name(code: tonic::Code) -> String {
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

#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

pub type Client = HostAgentClient<InterceptedService<Channel, Bearer>>;

/// Connects to obhostd, turning every way that can fail into a message that says
/// where we tried and what to check.
pub async fn connect(addr: &str, token_file: Option<&std::path::Path>) -> Result<Client, CliError> {
    let url = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let unreachable = |cause: String| CliError::Unreachable {
        addr: url.clone(),
        cause,
    };
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| {
            CliError::Usage(format!(
                "--addr '{addr}' is not an address: {e}; e.g. 127.0.0.1:62900"
            ))
        })?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| unreachable(error_chain(&e)))?;
    let bearer = match token_file {
        None => Bearer(None),
        Some(path) => {
            let token = std::fs::read_to_string(path).map_err(|e| {
                CliError::Usage(format!(
                    "cannot read --token-file '{}': {e}",
                    path.display()
                ))
            })?;
            let value = format!("Bearer {}", token.trim()).parse().map_err(|_| {
                CliError::Usage(format!(
                    "--token-file '{}' holds characters a header cannot carry",
                    path.display()
                ))
            })?;
            Bearer(Some(value))
        }
    };
    Ok(HostAgentClient::with_interceptor(channel, bearer))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// obhostctl's whole life; `bin/obhostctl.rs` only calls this.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
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
        Err(e) => {
            eprintln!("obhostctl: {e}");
            e.exit_code()
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    if let Command::Demo(args) = cli.command {
        return demo::run(args, cli.output).await;
    }
    let mut client = connect(&cli.addr, cli.token_file.as_deref()).await?;
    match cli.command {
        Command::Steps(cmd) => steps::run(cmd, &mut client, cli.output).await,
        Command::Demo(_) => unreachable!("handled above"),
        Command::StartObserver(args) => flow::start_observer(&mut client, &args, cli.output).await,
        Command::StopObserver {
            home,
            grace,
            force,
            step_id,
        } => {
            let id = step_id.unwrap_or_else(|| {
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or_default();
                format!("stop-{secs}")
            });
            client
                .stop_observer(pb::StopObserverRequest {
                    meta: Some(pb::StepMeta {
                        step_id: id.clone(),
                        ..Default::default()
                    }),
                    home_path: home,
                    grace: Some(grace.into()),
                    force,
                })
                .await?;
            let step =
                flow::follow(&mut client, &id, std::time::Instant::now(), cli.output).await?;
            if cli.output == Format::Json {
                output::step(&step, cli.output)?;
            }
            Ok(if step.state() == pb::StepState::Succeeded {
                ExitCode::SUCCESS
            } else {
                if let Some(e) = &step.error {
                    eprintln!("obhostctl: {}: {}", e.code, e.message);
                }
                ExitCode::from(1)
            })
        }
        Command::Observer { home } => {
            let o = client
                .get_observer(pb::GetObserverRequest { home_path: home })
                .await?
                .into_inner()
                .observer
                .unwrap_or_default();
            output::observer(&o, cli.output)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Host => {
            let host = client
                .get_host_info(pb::GetHostInfoRequest {})
                .await?
                .into_inner()
                .host
                .unwrap_or_default();
            output::host(&host, cli.output)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
