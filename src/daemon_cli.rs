//! obhostd's command line. It lives in the library, not in `bin/obhostd.rs`, so
//! that `obhostctl man` can render obhostd's man page (section 8) from the same
//! clap definition the daemon parses: the page cannot drift from the flags.

use std::path::PathBuf;

use crate::config::{ListenAddr, LogFormat};

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
