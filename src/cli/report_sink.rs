//! `obhostctl report-sink`: a reference `StepReporter`, the receiving end of
//! obhostd's `[report]` push. It prints what agents send, a line per change,
//! and says when a batch does not continue where the previous one ended (a
//! gap) or repeats a change (a duplicate, normal after a crash: delivery is at
//! least once). Operators use it to see what an agent pushes; the tests use it
//! as the orchestrator.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::Context;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

use super::output::json;
use crate::cli::output::Format;
use crate::proto::v1 as pb;
use crate::proto::v1::step_reporter_server::{StepReporter, StepReporterServer};

#[derive(clap::Args)]
pub struct SinkArgs {
    /// Where to serve StepReporter: a Unix socket (unix:/run/ocp/reporter.sock,
    /// what a local orchestrator should use: only its dir's owner can listen
    /// there), or ip:port, e.g. 127.0.0.1:62950 (port 0: any; the address is
    /// printed to stderr).
    #[arg(long, value_name = "ADDR")]
    listen: String,
    /// Serve TLS with this certificate (PEM); agents set [report] ca_file to its CA.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require agents to present a certificate signed by this CA (PEM): mTLS.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    client_ca: Option<PathBuf>,
}

/// What the sink listens on.
pub enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

impl Listener {
    /// Binds `addr`: `unix:/path` (a socket that must not exist yet) or ip:port.
    pub async fn bind(addr: &str) -> anyhow::Result<(Listener, String)> {
        if let Some(path) = addr.strip_prefix("unix:") {
            let l = tokio::net::UnixListener::bind(path).with_context(|| {
                format!(
                    "cannot listen on {addr}; remove a stale socket there, or pick another path"
                )
            })?;
            return Ok((Listener::Unix(l), addr.to_string()));
        }
        let sa: SocketAddr = addr
            .parse()
            .with_context(|| format!("--listen '{addr}' is neither unix:/path nor ip:port"))?;
        let l = tokio::net::TcpListener::bind(sa)
            .await
            .with_context(|| format!("cannot listen on {addr}; is the port free?"))?;
        let local = l.local_addr()?.to_string();
        Ok((Listener::Tcp(l), local))
    }
}

pub async fn run(args: SinkArgs, format: Format) -> anyhow::Result<()> {
    let (listener, local) = Listener::bind(&args.listen).await?;
    let mut server = Server::builder();
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let read = |p: &PathBuf| {
            std::fs::read(p).with_context(|| format!("cannot read '{}'", p.display()))
        };
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
        if let Some(ca) = &args.client_ca {
            tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
        }
        server = server
            .tls_config(tls)
            .context("cannot use --tls-cert/--tls-key")?;
    }
    eprintln!("report-sink listening on {local}");
    serve(server, listener, Sink::new(format, ""), async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}

/// Serves `sink` on `listener` until `stop` completes (the demo runs one too).
pub async fn serve(
    mut server: Server,
    listener: Listener,
    sink: Sink,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let router =
        server.add_service(StepReporterServer::new(sink).max_decoding_message_size(64 << 20));
    match listener {
        Listener::Tcp(l) => {
            router
                .serve_with_incoming_shutdown(TcpListenerStream::new(l), stop)
                .await
        }
        Listener::Unix(l) => {
            router
                .serve_with_incoming_shutdown(UnixListenerStream::new(l), stop)
                .await
        }
    }
    .context("report-sink stopped")?;
    Ok(())
}

pub struct Sink {
    format: Format,
    /// Put before every text line (the demo indents what the sink got).
    prefix: &'static str,
    agents: Mutex<HashMap<String, Agent>>,
}

impl Sink {
    pub fn new(format: Format, prefix: &'static str) -> Sink {
        Sink {
            format,
            prefix,
            agents: Mutex::new(HashMap::new()),
        }
    }
}

/// What this sink has seen of one agent since it started.
#[derive(Default)]
struct Agent {
    /// The highest revision of any batch taken.
    through: u64,
    /// Each step's highest revision taken: what makes a repeat a duplicate.
    steps: HashMap<String, u64>,
    duplicates: u64,
}

#[tonic::async_trait]
impl StepReporter for Sink {
    async fn report_steps(
        &self,
        request: Request<pb::ReportStepsRequest>,
    ) -> Result<Response<pb::ReportStepsResponse>, Status> {
        let req = request.into_inner();
        let lines = self.take(&req)?;
        self.print(lines)?;
        Ok(Response::new(pb::ReportStepsResponse {}))
    }
}

impl Sink {
    /// Records a batch in what this sink knows of its agent and returns the
    /// lines that tell it: the batch, a gap or drop if any, each change.
    fn take(&self, req: &pb::ReportStepsRequest) -> Result<Vec<String>, Status> {
        let mut agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        let first = !agents.contains_key(&req.agent_id);
        let agent = agents.entry(req.agent_id.clone()).or_default();
        let through = req
            .steps
            .iter()
            .map(|s| s.revision)
            .max()
            .unwrap_or(req.after_revision);
        let mut lines = vec![self.batch_line(req, through, first)];
        // A batch continues from what this agent last had acknowledged; an
        // agent first seen may rightly continue from what an earlier sink took.
        if !first && req.after_revision > agent.through {
            lines.push(self.notice(
                &req.agent_id,
                "gap",
                serde_json::json!({"after_revision": req.after_revision, "received_through": agent.through}),
                format!(
                    "GAP: {} continues after revision {} but this sink has only up to {}; resync with ListSteps",
                    req.agent_id, req.after_revision, agent.through
                ),
            ));
        }
        if req.dropped > 0 {
            lines.push(self.notice(
                &req.agent_id,
                "dropped",
                serde_json::json!(req.dropped),
                format!(
                    "DROPPED: {} discarded {} changes unsent (its outbox was full); resync with ListSteps",
                    req.agent_id, req.dropped
                ),
            ));
        }
        for step in &req.steps {
            let seen = agent.steps.entry(step.id.clone()).or_default();
            let duplicate = step.revision <= *seen;
            *seen = (*seen).max(step.revision);
            agent.duplicates += u64::from(duplicate);
            lines.push(self.step_line(&req.agent_id, step, duplicate)?);
        }
        agent.through = agent.through.max(through);
        Ok(lines)
    }

    /// The line that opens a batch: who sent it and what it covers.
    fn batch_line(&self, req: &pb::ReportStepsRequest, through: u64, first: bool) -> String {
        let host = req.host.clone().unwrap_or_default();
        match self.format {
            Format::Json => serde_json::json!({
                "agent_id": req.agent_id,
                "batch": {
                    "after_revision": req.after_revision,
                    "through": through,
                    "steps": req.steps.len(),
                    "dropped": req.dropped,
                    "first": first,
                    "hostname": host.hostname,
                    "version": host.version,
                },
            })
            .to_string(),
            Format::Text => format!(
                "batch from {} ({} obhostd {}): {} changes after revision {}{}",
                req.agent_id,
                host.hostname,
                host.version,
                req.steps.len(),
                req.after_revision,
                if first {
                    " (first seen by this sink)"
                } else {
                    ""
                }
            ),
        }
    }

    /// One change of a batch.
    fn step_line(
        &self,
        agent_id: &str,
        step: &pb::Step,
        duplicate: bool,
    ) -> Result<String, Status> {
        Ok(match self.format {
            Format::Json => serde_json::json!({
                "agent_id": agent_id,
                "duplicate": duplicate,
                "step": json::proto_json(step)
                    .map_err(|e| Status::internal(format!("cannot print: {e:#}")))?,
            })
            .to_string(),
            Format::Text => format!(
                "{} r{} {} {} {}{}{}",
                agent_id,
                step.revision,
                step.id,
                step.state().as_str_name().trim_start_matches("STEP_STATE_"),
                step.message,
                step.error
                    .as_ref()
                    .map(|e| format!(" [{}]", e.code))
                    .unwrap_or_default(),
                if duplicate { " (duplicate)" } else { "" }
            ),
        })
    }

    /// Prints a batch's lines, after the lock on the agents is released.
    fn print(&self, lines: Vec<String>) -> Result<(), Status> {
        if self.format == Format::Text {
            // Through output::line: in the demo a spinner may be running.
            for line in lines {
                // What an agent pushed is its text: no raw control bytes.
                super::output::line(&format!("{}{}", self.prefix, super::output::clean(&line)));
            }
        } else {
            let mut out = std::io::stdout().lock();
            for line in lines {
                writeln!(out, "{line}")
                    .map_err(|e| Status::internal(format!("cannot print: {e}")))?;
            }
        }
        Ok(())
    }
}

impl Sink {
    fn notice(&self, agent: &str, key: &str, value: serde_json::Value, text: String) -> String {
        match self.format {
            Format::Json => {
                let mut m = serde_json::Map::new();
                m.insert("agent_id".into(), agent.into());
                m.insert(key.into(), value);
                serde_json::Value::Object(m).to_string()
            }
            Format::Text => text,
        }
    }
}
