//! obhostd's command line. It lives in the library, not in `bin/obhostd.rs`, so
//! that `obhostctl man` can render obhostd's man page (section 8) from the same
//! clap definition the daemon parses: the page cannot drift from the flags.
//!
//! What the binary does with its flags lives here too (the config they
//! override, the first log line, running until a signal), so that
//! `bin/obhostd.rs` only sets up logging and maps results to exit codes.

use std::path::PathBuf;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, ListenAddr, LogFormat};
use crate::daemon;

/// `obhostd -V` and `obhostctl -V`: the crate version, the commit it was built
/// from and the build date (UTC; SOURCE_DATE_EPOCH when set, for reproducible
/// builds), so a bug report names the exact build.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("OBHOST_GIT_COMMIT"),
    ", built ",
    env!("OBHOST_BUILD_DATE"),
    ")"
);

/// The obhost daemon: runs the host-local steps of OceanBase's "Start OB server"
/// task for the orchestrator, over gRPC.
#[derive(clap::Parser, Debug)]
#[command(name = "obhostd", version = VERSION)]
pub struct DaemonArgs {
    /// TOML config file, e.g. /etc/obhost/obhostd.toml (every key with its default:
    /// /usr/share/doc/obhost/examples/obhostd.toml). Without it, built-in defaults.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to serve gRPC on (repeatable; overrides `listen`): unix:/path or
    /// ip:port. TCP needs [auth] token_file or [tls] client_ca_file.
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<ListenAddr>,
    /// Where the step store lives (overrides `state_dir`).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Log format (overrides `log_format`). Filter with RUST_LOG, default "info".
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Check the config and the files it names (token, TLS, report CA), say
    /// what would run, and exit: 0 if obhostd would start with it, 2 if not.
    #[arg(long)]
    pub check_config: bool,
}

impl DaemonArgs {
    /// The config in force: the file (or the built-in defaults), then each
    /// flag given over the key it names.
    pub fn load_config(&self) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        if !self.listen.is_empty() {
            config.listen = self.listen.clone();
        }
        if let Some(dir) = &self.state_dir {
            config.state_dir = Some(dir.clone());
        }
        if let Some(format) = self.log_format {
            config.log_format = format;
        }
        Ok(config)
    }

    /// The first line of the log: which build, which config file, where it
    /// listens and keeps its state, so whoever reads the journal knows what
    /// started. A value that cannot be worked out logs why in its place: the
    /// daemon's start then fails on it with the full error. Logged under the
    /// binary's target, `obhostd`, as the line always was (log filters name it).
    pub fn log_start(&self, config: &Config) {
        tracing::info!(
            target: "obhostd",
            version = env!("CARGO_PKG_VERSION"),
            config = %self
                .config
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "none (built-in defaults)".into()),
            listen = %config
                .listeners()
                .map(|l| l.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", "))
                .unwrap_or_else(|e| e.to_string()),
            state_dir = %config
                .state_dir()
                .map(|d| d.display().to_string())
                .unwrap_or_else(|e| e.to_string()),
            "obhostd starting"
        );
    }
}

/// Runs the daemon on a runtime of its own until SIGTERM or SIGINT, then
/// gives work left on the blocking pool a bounded time before returning.
pub fn run_until_signalled(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let signals = tokio::spawn(daemon::signals(shutdown.clone()));
        let result = daemon::run(config, shutdown).await;
        signals.abort();
        result
    });
    // Detached blocking work (a probe mid-fsync) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}
