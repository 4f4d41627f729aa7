//! obhostctl: the operator's client. Every subcommand is one or a few RPCs; output
//! is for people by default and `-o json` (canonical protobuf JSON) for scripts.
//!
//! Exit status: 0 success, 1 the daemon answered with an error (or a step ended
//! badly, for commands that wait), 2 bad usage, 3 the daemon could not be reached.

mod demo;
mod docs;
pub mod flow;
mod observer;
mod output;
mod phrasing;
mod report_sink;
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
    version = crate::daemon_cli::VERSION,
    about = "Client for obhostd, the OceanBase on-host agent"
)]
pub struct Cli {
    /// obhostd's address: unix:/path, host:port, http://host:port or
    /// https://host:port. Default: the daemon's default socket
    /// (unix:/run/obhost/obhostd.sock as root, $XDG_RUNTIME_DIR/obhost/obhostd.sock
    /// otherwise).
    #[arg(long, global = true, env = "OBHOST_ADDR")]
    addr: Option<String>,
    /// File with the bearer token, when obhostd has [auth] token_file (TCP).
    #[arg(long, global = true, env = "OBHOST_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// The CA (PEM) that signed obhostd's certificate, for https:// addresses.
    #[arg(long, global = true, env = "OBHOST_CA_FILE", value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// This client's certificate (PEM), when obhostd requires mTLS.
    #[arg(long, global = true, env = "OBHOST_CERT_FILE", value_name = "FILE")]
    cert_file: Option<PathBuf>,
    /// The key (PEM) of --cert-file.
    #[arg(long, global = true, env = "OBHOST_KEY_FILE", value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Text)]
    output: Format,
    /// How long a call may wait for obhostd's answer (for a follow or watch:
    /// for the stream to start), e.g. 5s.
    #[arg(long, global = true, value_parser = humantime::parse_duration, default_value = "30s")]
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
    /// Stop the observer of a home (StopObserver) and follow it.
    StopObserver {
        /// The observer's home, e.g. /home/admin/oceanbase.
        #[arg(long)]
        home: String,
        /// Time between SIGTERM and SIGKILL.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
        grace: std::time::Duration,
        /// SIGKILL at once.
        #[arg(long)]
        force: bool,
        /// The step's id [default: stop-<unix seconds>-<random hex>].
        #[arg(long)]
        step_id: Option<String>,
    },
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
        phrasing::in_cli_terms(s.message(), None)
    )
}

/// A default step or DAG id: `<what>-<unix seconds>-<6 random hex digits>`.
/// The seconds keep ids sortable by when they were made; the suffix keeps two
/// made in the same second (two stops on two homes) from colliding, which the
/// daemon would refuse as ALREADY_EXISTS.
pub(crate) fn new_id(what: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    format!("{what}-{secs}-{:06x}", fastrand::u32(..0x100_0000))
}

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

/// Where and how to reach obhostd: the global flags.
#[derive(Clone, Debug, Default)]
pub struct Target {
    /// As given; `None` means the default socket.
    pub addr: Option<String>,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// How long a call may wait for its answer (a stream: for its start).
    pub timeout: Option<Duration>,
}

/// A call's answer (a stream's start) is waited for this long by default.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Every call is bounded, and a connection whose daemon went silent is noticed
/// by HTTP/2 pings, so no command (a follow included) can hang forever.
fn bounded(endpoint: Endpoint, timeout: Option<Duration>) -> Endpoint {
    endpoint
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout.unwrap_or(CALL_TIMEOUT))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
}

/// obhostctl's default address: the socket a daemon of this user listens on.
fn default_addr() -> Result<String, CliError> {
    crate::config::default_socket()
        .map(|p| format!("unix:{}", p.display()))
        .ok_or_else(|| {
            CliError::Usage(
                "no default address: not root and XDG_RUNTIME_DIR is not set; pass --addr \
                 unix:/path/to/obhostd.sock or --addr https://host:port"
                    .into(),
            )
        })
}

fn read_file(path: &std::path::Path, flag: &str) -> Result<Vec<u8>, CliError> {
    std::fs::read(path)
        .map_err(|e| CliError::Usage(format!("cannot read {flag} '{}': {e}", path.display())))
}

/// Connects to obhostd, turning every way that can fail into a message that says
/// where we tried and what to check.
pub async fn connect(addr: &str, token_file: Option<&std::path::Path>) -> Result<Client, CliError> {
    connect_to(&Target {
        addr: Some(addr.to_string()),
        token_file: token_file.map(PathBuf::from),
        ..Target::default()
    })
    .await
}

/// [`connect`] with TLS files: `unix:/path` opens the socket, `https://` speaks
/// TLS (with `--ca-file`, and `--cert-file`/`--key-file` for mTLS), anything
/// else is plain HTTP/2 over TCP.
pub async fn connect_to(target: &Target) -> Result<Client, CliError> {
    let addr = match &target.addr {
        Some(a) => a.clone(),
        None => default_addr()?,
    };
    let unreachable = |shown: &str, cause: String, hint: &'static str| CliError::Unreachable {
        addr: shown.to_string(),
        cause,
        hint,
    };
    let channel = if let Some(path) = addr.strip_prefix("unix:") {
        let path = PathBuf::from(path);
        if !path.is_absolute() {
            return Err(CliError::Usage(format!(
                "--addr '{addr}' names a relative socket path; give the full path, e.g. unix:/run/obhost/obhostd.sock"
            )));
        }
        // The URI is only a placeholder: the connector below ignores it.
        let endpoint = bounded(Endpoint::from_static("http://obhostd.sock"), target.timeout);
        endpoint
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .map_err(|e| {
                let cause = error_chain(&e);
                let hint = if cause.contains("ermission denied") {
                    "; only root and the users in obhostd's [auth] local_users (with [auth] socket_group) may open its socket"
                } else {
                    ""
                };
                unreachable(&addr, cause, hint)
            })?
    } else {
        let url = if addr.contains("://") {
            addr.clone()
        } else {
            format!("http://{addr}")
        };
        let mut endpoint = bounded(
            Endpoint::from_shared(url.clone()).map_err(|e| {
                CliError::Usage(format!(
                    "--addr '{addr}' is not an address: {e}; e.g. unix:/run/obhost/obhostd.sock or https://host:62900"
                ))
            })?,
            target.timeout,
        );
        if url.starts_with("https://") {
            let Some(ca) = &target.ca_file else {
                return Err(CliError::Usage(format!(
                    "--addr '{addr}' is https: pass --ca-file with the CA that signed obhostd's certificate"
                )));
            };
            let mut tls = tonic::transport::ClientTlsConfig::new().ca_certificate(
                tonic::transport::Certificate::from_pem(read_file(ca, "--ca-file")?),
            );
            match (&target.cert_file, &target.key_file) {
                (Some(cert), Some(key)) => {
                    tls = tls.identity(tonic::transport::Identity::from_pem(
                        read_file(cert, "--cert-file")?,
                        read_file(key, "--key-file")?,
                    ));
                }
                (None, None) => {}
                _ => {
                    return Err(CliError::Usage(
                        "--cert-file and --key-file go together; give both or neither".into(),
                    ));
                }
            }
            endpoint = endpoint.tls_config(tls).map_err(|e| {
                CliError::Usage(format!(
                    "cannot use the TLS files for '{addr}': {}",
                    error_chain(&e)
                ))
            })?;
        } else if target.ca_file.is_some() || target.cert_file.is_some() {
            return Err(CliError::Usage(format!(
                "--ca-file/--cert-file are for https:// addresses, and --addr '{addr}' is not one; use --addr https://host:port"
            )));
        }
        endpoint
            .connect()
            .await
            .map_err(|e| unreachable(&url, error_chain(&e), ""))?
    };
    let bearer = match &target.token_file {
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
    let matches = match <Cli as clap::CommandFactory>::command().try_get_matches() {
        Ok(m) => m,
        Err(e) => usage_exit(e),
    };
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => usage_exit(e),
    };
    let format = cli.output;
    output::init(format);
    let fail = |e: CliError| {
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
            let doc = output::error_json(&e.code(), &message, status);
            if let Err(e) = output::print_json(&doc, true) {
                eprintln!("obhostctl: cannot print the error as JSON: {e}");
            }
        }
        ExitCode::from(status)
    };
    if let Command::Demo(_) = cli.command
        && let Some(flag) = target_flags_given(&matches)
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

/// A command line clap could not make sense of: its message and usage on
/// stderr, exit 2, and, when the arguments ask for `-o json`, the error as
/// JSON on stdout as for every other failure (help and --version are not
/// failures: they print as usual).
fn usage_exit(e: clap::Error) -> ! {
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
        let _ = output::print_json(&output::error_json("USAGE", first, 2), true);
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

/// The first of the flags that say which obhostd to talk to that was given on
/// the command line (not by an OBHOST_* variable of the environment, which
/// an operator may export for every command): the demo has its own daemon and
/// would silently ignore it.
fn target_flags_given(matches: &clap::ArgMatches) -> Option<&'static str> {
    let given = |m: &clap::ArgMatches, id: &str| {
        m.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
    };
    [
        ("addr", "--addr"),
        ("token_file", "--token-file"),
        ("ca_file", "--ca-file"),
        ("cert_file", "--cert-file"),
        ("key_file", "--key-file"),
    ]
    .into_iter()
    .find(|(id, _)| {
        given(matches, id)
            || matches
                .subcommand_matches("demo")
                .is_some_and(|m| given(m, id))
    })
    .map(|(_, flag)| flag)
}

async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let command = match cli.command {
        Command::Demo(args) => return demo::run(args, cli.output).await,
        Command::ReportSink(args) => {
            report_sink::run(args, cli.output).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Completions(args) => return docs::completions(&args),
        Command::Man(args) => return docs::man(&args),
        other => other,
    };
    let mut client = connect_to(&Target {
        addr: cli.addr.clone(),
        token_file: cli.token_file.clone(),
        ca_file: cli.ca_file.clone(),
        cert_file: cli.cert_file.clone(),
        key_file: cli.key_file.clone(),
        timeout: Some(cli.timeout),
    })
    .await?;
    match command {
        Command::Steps(cmd) => steps::run(cmd, &mut client, cli.output).await,
        Command::Demo(_) | Command::ReportSink(_) | Command::Completions(_) | Command::Man(_) => {
            unreachable!("handled above")
        }
        Command::StartObserver(args) => flow::start_observer(&mut client, &args, cli.output).await,
        Command::StopObserver {
            home,
            grace,
            force,
            step_id,
        } => {
            let id = step_id.unwrap_or_else(|| new_id("stop"));
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
            let ok = step.state() == pb::StepState::Succeeded;
            if cli.output == Format::Json {
                // The step, and when it failed `{"error": ..., "step": ...}`:
                // one document either way.
                let doc = if ok {
                    output::proto_json(&step)?
                } else {
                    let mut doc = output::step_error_json(&step);
                    doc["step"] = output::proto_json(&step)?;
                    doc
                };
                output::print_json(&doc, true)?;
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                if let Some(e) = &step.error {
                    eprintln!(
                        "obhostctl: {}: {}",
                        output::clean(&e.code),
                        output::clean(&e.message)
                    );
                }
                ExitCode::from(1)
            })
        }
        Command::Observer(args) => observer::run(args, &mut client, cli.output).await,
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
