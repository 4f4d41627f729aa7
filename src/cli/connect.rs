//! Reaching obhostd: the address forms `--addr` takes (a Unix socket, plain
//! HTTP/2, TLS and mTLS), the bearer token, and the bounds every call gets, so
//! that each way a connection can fail ends in a message that says where
//! obhostctl tried and what to check, and no command can hang forever.

use std::path::PathBuf;
use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::cli::error::CliError;
use crate::proto::v1::host_agent_client::HostAgentClient;

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

/// The flags that say which obhostd to talk to: the id clap knows each by,
/// the flag, and the environment variable that stands in for it.
pub(crate) const TARGET_FLAGS: [(&str, &str, &str); 5] = [
    ("addr", "--addr", "OBHOST_ADDR"),
    ("token_file", "--token-file", "OBHOST_TOKEN_FILE"),
    ("ca_file", "--ca-file", "OBHOST_CA_FILE"),
    ("cert_file", "--cert-file", "OBHOST_CERT_FILE"),
    ("key_file", "--key-file", "OBHOST_KEY_FILE"),
];

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
    /// How each value was given, for the messages about it.
    pub given_as: GivenAs,
}

/// What gave each of a [`Target`]'s values: its flag, or the OBHOST_*
/// variable that stood for it. A message names the one the operator set: an
/// OBHOST_CA_FILE exported long ago is not found by looking for --ca-file.
#[derive(Clone, Copy, Debug)]
pub struct GivenAs {
    pub addr: &'static str,
    pub token_file: &'static str,
    pub ca_file: &'static str,
    pub cert_file: &'static str,
    pub key_file: &'static str,
}

impl Default for GivenAs {
    fn default() -> GivenAs {
        GivenAs {
            addr: "--addr",
            token_file: "--token-file",
            ca_file: "--ca-file",
            cert_file: "--cert-file",
            key_file: "--key-file",
        }
    }
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
    let channel = match addr.strip_prefix("unix:") {
        Some(path) => unix_channel(&addr, path, target).await?,
        None => tcp_channel(&addr, target).await?,
    };
    Ok(HostAgentClient::with_interceptor(
        channel,
        bearer(target.token_file.as_deref(), target.given_as.token_file)?,
    ))
}

/// The socket at `path` (of `--addr unix:<path>`).
async fn unix_channel(addr: &str, path: &str, target: &Target) -> Result<Channel, CliError> {
    let path = PathBuf::from(path);
    if !path.is_absolute() {
        return Err(CliError::Usage(format!(
            "{} '{addr}' names a relative socket path; give the full path, e.g. unix:/run/obhost/obhostd.sock",
            target.given_as.addr
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
            CliError::Unreachable {
                addr: addr.to_string(),
                cause,
                hint,
            }
        })
}

/// host:port or http(s)://host:port; TLS for https only, and the TLS flags
/// refused for anything else rather than silently unused.
async fn tcp_channel(addr: &str, target: &Target) -> Result<Channel, CliError> {
    let url = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let mut endpoint = bounded(
        Endpoint::from_shared(url.clone()).map_err(|e| {
            CliError::Usage(format!(
                "{} '{addr}' is not an address: {e}; e.g. unix:/run/obhost/obhostd.sock or https://host:62900",
                target.given_as.addr
            ))
        })?,
        target.timeout,
    );
    if url.starts_with("https://") {
        endpoint = endpoint.tls_config(tls(addr, target)?).map_err(|e| {
            CliError::Usage(format!(
                "cannot use the TLS files for '{addr}': {}",
                error_chain(&e)
            ))
        })?;
    } else if target.ca_file.is_some() || target.cert_file.is_some() {
        let given = &target.given_as;
        let tls = match (&target.ca_file, &target.cert_file) {
            (Some(_), Some(_)) => format!("{} and {} are", given.ca_file, given.cert_file),
            (Some(_), None) => format!("{} is", given.ca_file),
            _ => format!("{} is", given.cert_file),
        };
        return Err(CliError::Usage(format!(
            "{tls} for https:// addresses, and {} '{addr}' is not one; use --addr https://host:port, \
             or unset what gave the TLS files",
            given.addr
        )));
    }
    endpoint.connect().await.map_err(|e| CliError::Unreachable {
        addr: url,
        cause: error_chain(&e),
        hint: "",
    })
}

/// The TLS of an https:// address: the CA is required (obhostd's certificate
/// is checked, never trusted blindly), the client's certificate and key go
/// together.
fn tls(addr: &str, target: &Target) -> Result<tonic::transport::ClientTlsConfig, CliError> {
    let given = &target.given_as;
    let Some(ca) = &target.ca_file else {
        return Err(CliError::Usage(format!(
            "{} '{addr}' is https: pass --ca-file with the CA that signed obhostd's certificate",
            given.addr
        )));
    };
    let tls = tonic::transport::ClientTlsConfig::new().ca_certificate(
        tonic::transport::Certificate::from_pem(read_file(ca, given.ca_file)?),
    );
    match (&target.cert_file, &target.key_file) {
        (Some(cert), Some(key)) => Ok(tls.identity(tonic::transport::Identity::from_pem(
            read_file(cert, given.cert_file)?,
            read_file(key, given.key_file)?,
        ))),
        (None, None) => Ok(tls),
        (Some(_), None) => Err(CliError::Usage(format!(
            "{} has no key: give --key-file too (or neither)",
            given.cert_file
        ))),
        (None, Some(_)) => Err(CliError::Usage(format!(
            "{} has no certificate: give --cert-file too (or neither)",
            given.key_file
        ))),
    }
}

/// The `authorization` header every call carries, from `--token-file`.
fn bearer(token_file: Option<&std::path::Path>, given_as: &str) -> Result<Bearer, CliError> {
    let Some(path) = token_file else {
        return Ok(Bearer(None));
    };
    let token = std::fs::read_to_string(path).map_err(|e| {
        CliError::Usage(format!("cannot read {given_as} '{}': {e}", path.display()))
    })?;
    let value = format!("Bearer {}", token.trim()).parse().map_err(|_| {
        CliError::Usage(format!(
            "{given_as} '{}' holds characters a header cannot carry; it should hold only the token",
            path.display()
        ))
    })?;
    Ok(Bearer(Some(value)))
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
