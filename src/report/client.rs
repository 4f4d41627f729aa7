//! The gRPC client to the orchestrator: rustls (as the server side), the CA and
//! client certificate read once at start so a bad path fails the start, and
//! every call bounded.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::ReportConfig;
use crate::proto::v1 as pb;
use crate::proto::v1::step_reporter_client::StepReporterClient;

/// A whole call, connecting included.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A batch of `batch_max` records with long outputs can be large.
const MAX_MESSAGE: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot read [report] {what} '{path}': {cause}; fix the path or the file's permissions"
    )]
    Read {
        what: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("[report] endpoint '{endpoint}' cannot be used: {cause}")]
    Endpoint { endpoint: String, cause: String },
}

pub struct Client {
    endpoint: String,
    client: StepReporterClient<Channel>,
}

impl Client {
    pub fn new(config: &ReportConfig) -> Result<Client, ClientError> {
        let bad = |cause: String| ClientError::Endpoint {
            endpoint: crate::bounds::quote(&config.endpoint),
            cause,
        };
        // A Unix socket: HTTP/2 over it, with a fixed authority (the path
        // means nothing to the orchestrator's server).
        let uri = match config.unix_socket() {
            Some(_) => "http://localhost".to_string(),
            None => config.endpoint.clone(),
        };
        let mut endpoint = Endpoint::from_shared(uri)
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        if let Some(ca) = &config.ca_file {
            let mut tls =
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("ca_file", ca)?));
            if let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) {
                tls = tls.identity(Identity::from_pem(
                    read("cert_file", cert)?,
                    read("key_file", key)?,
                ));
            }
            endpoint = endpoint.tls_config(tls).map_err(|e| bad(e.to_string()))?;
        }
        let channel = match config.unix_socket() {
            Some(path) => {
                let path = path.to_path_buf();
                endpoint.connect_with_connector_lazy(tower::service_fn(
                    move |_: tonic::transport::Uri| {
                        let path = path.clone();
                        async move {
                            let s = tokio::net::UnixStream::connect(path).await?;
                            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                        }
                    },
                ))
            }
            None => endpoint.connect_lazy(),
        };
        let client = StepReporterClient::new(channel).max_encoding_message_size(MAX_MESSAGE);
        Ok(Client {
            endpoint: config.endpoint.clone(),
            client,
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub async fn report(&self, request: pb::ReportStepsRequest) -> Result<(), tonic::Status> {
        self.client.clone().report_steps(request).await.map(|_| ())
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|cause| ClientError::Read {
        what,
        path: path.to_path_buf(),
        cause,
    })
}
