//! start-observer's command line, and the ObserverSpec it makes: unset
//! flags are the wire's zero values, for obhostd to fill in its defaults.

use std::collections::BTreeMap;

use clap::Args;

use crate::cli::error::CliError;
use crate::proto::v1 as pb;

#[derive(Args, Clone, Default)]
pub struct StartArgs {
    /// The observer's home, e.g. /home/admin/oceanbase.
    #[arg(long)]
    pub home: String,
    /// The observer binary [default: <home>/bin/observer].
    #[arg(long, value_name = "PATH")]
    pub binary: Option<String>,
    /// The OS user the observer runs as [default: obhostd's default_user, else
    /// obhostd's own user].
    #[arg(long)]
    pub user: Option<String>,
    /// The observer's MySQL port (-p) [default: 2881].
    #[arg(long, value_name = "PORT")]
    pub mysql_port: Option<u32>,
    /// The observer's RPC port (-P) [default: 2882].
    #[arg(long, value_name = "PORT")]
    pub rpc_port: Option<u32>,
    /// Where the observer writes its pid [default: <home>/run/observer.pid].
    #[arg(long, value_name = "PATH")]
    pub pid_file: Option<String>,
    /// The binary stays in the foreground (-N).
    #[arg(long)]
    pub foreground: bool,
    /// Zone (-z); required for a first start (no data yet).
    #[arg(long)]
    pub zone: Option<String>,
    /// Cluster name (-n); required for a first start.
    #[arg(long)]
    pub cluster_name: Option<String>,
    /// Cluster id (-c); required for a first start.
    #[arg(long)]
    pub cluster_id: Option<u32>,
    /// Root service list (-r), e.g. 10.0.0.1:2882:2881;10.0.0.2:2882:2881
    /// [default: none, a single-node cluster].
    #[arg(long)]
    pub rootservice_list: Option<String>,
    /// The data dir (-d) [default: <home>/store].
    #[arg(long, value_name = "PATH")]
    pub data_dir: Option<String>,
    /// The redo log dir, checked by Prepare [default: inside the data dir].
    #[arg(long, value_name = "PATH")]
    pub redo_dir: Option<String>,
    /// Network device (-i), checked by Prepare [default: the observer chooses].
    #[arg(long)]
    pub devname: Option<String>,
    /// The address the observer serves on (-I) [default: the observer chooses].
    #[arg(long)]
    pub ip: Option<String>,
    /// An observer parameter, KEY=VALUE (repeatable): -o on its command line.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// An environment variable for the observer, KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Prepare creates missing dirs, owned by the user.
    #[arg(long)]
    pub create_dirs: bool,
    /// A Prepare check to skip (repeatable).
    #[arg(long = "skip-check", value_name = "NAME")]
    pub skip_checks: Vec<String>,
    /// Prepare's warnings fail the start.
    #[arg(long)]
    pub strict: bool,
    /// The orchestrator's DAG id; step ids are <dag-id>-prepare, -start, -wait,
    /// -agent [default: start-<unix seconds>-<random hex>].
    #[arg(long)]
    pub dag_id: Option<String>,
    /// Explicit step ids: four (three with --no-agent), comma-separated, in
    /// step order (prepare,start,wait,agent), e.g. 133851,133852,133853,133854.
    #[arg(long, value_delimiter = ',', value_name = "ID,ID,ID,ID")]
    pub step_ids: Vec<String>,
    /// Log in as this MySQL user to decide "active" [default: the protocol
    /// handshake only].
    #[arg(long)]
    pub wait_user: Option<String>,
    /// File whose first line is the password for --wait-user.
    #[arg(long)]
    pub wait_password_file: Option<std::path::PathBuf>,
    /// The query that must return a row [default: SELECT 1].
    #[arg(long)]
    pub wait_sql: Option<String>,
    /// How long to wait for the observer to become active, e.g. 10m
    /// [default: the step's own].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub wait_timeout: Option<std::time::Duration>,
    /// Run only the three observer steps, without "Start ocp agent service"
    /// (an agent managed otherwise, or none on this host).
    #[arg(
        long,
        conflicts_with_all = [
            "agent_unit", "agent_program", "agent_args", "agent_cwd",
            "agent_pid_file", "agent_foreground", "agent_tcp_port", "agent_http_url",
        ]
    )]
    pub no_agent: bool,
    /// Start the agent as this systemd unit [default: obhostd's [agent_service]].
    #[arg(long)]
    pub agent_unit: Option<String>,
    /// Start the agent with this program (an absolute path); its arguments
    /// follow as --agent-arg.
    #[arg(long, value_name = "PATH")]
    pub agent_program: Option<String>,
    /// One argument of --agent-program (repeatable, in order; a value starting
    /// with '-' is written --agent-arg=-x).
    #[arg(long = "agent-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub agent_args: Vec<String>,
    /// The agent command's working dir [default: its program's dir].
    #[arg(long, value_name = "PATH")]
    pub agent_cwd: Option<String>,
    /// Where the agent writes its pid (a daemonizing agent must have one).
    #[arg(long, value_name = "PATH")]
    pub agent_pid_file: Option<String>,
    /// The agent stays in the foreground (obhostd writes its pid file).
    #[arg(long)]
    pub agent_foreground: bool,
    /// Healthy once this loopback TCP port accepts.
    #[arg(long, value_name = "PORT")]
    pub agent_tcp_port: Option<u32>,
    /// Healthy once this loopback URL answers 2xx, e.g. http://127.0.0.1:62888/api/v1/time.
    #[arg(long, value_name = "URL")]
    pub agent_http_url: Option<String>,
}

fn pairs(flag: &str, items: &[String]) -> Result<BTreeMap<String, String>, CliError> {
    items
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| CliError::Usage(format!("{flag} '{kv}' is not KEY=VALUE")))
        })
        .collect()
}

impl StartArgs {
    pub(super) fn spec(&self) -> Result<pb::ObserverSpec, CliError> {
        // Unset is the wire's zero value: obhostd fills in the default.
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        Ok(pb::ObserverSpec {
            home_path: self.home.clone(),
            binary: text(&self.binary),
            user: text(&self.user),
            mysql_port: self.mysql_port.unwrap_or_default(),
            rpc_port: self.rpc_port.unwrap_or_default(),
            pid_file: text(&self.pid_file),
            foreground: self.foreground,
            zone: text(&self.zone),
            cluster_name: text(&self.cluster_name),
            cluster_id: self.cluster_id.unwrap_or_default(),
            rootservice_list: text(&self.rootservice_list),
            data_dir: text(&self.data_dir),
            redo_dir: text(&self.redo_dir),
            devname: text(&self.devname),
            ip: text(&self.ip),
            parameters: pairs("--param", &self.params)?.into_iter().collect(),
            env: pairs("--env", &self.env)?.into_iter().collect(),
            extra_args: Vec::new(),
        })
    }
}
