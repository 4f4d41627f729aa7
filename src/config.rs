//! obhostd's configuration: a TOML file (`--config`), with `--listen` and
//! `--state-dir` overriding it, and built-in defaults for everything so that the
//! daemon runs with no file at all.
//!
//! Unknown keys are errors: a misspelt `allowed_roots` silently ignored would
//! widen what the daemon may touch.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:62900";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    pub state_dir: Option<PathBuf>,
    #[serde(default)]
    pub allowed_roots: Vec<PathBuf>,
    #[serde(default)]
    pub allowed_users: Vec<String>,
    pub default_user: Option<String>,
    #[serde(default)]
    pub log_format: LogFormat,
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    #[serde(default = "default_watch_buffer")]
    pub watch_buffer: usize,
    #[serde(default)]
    pub retention: RetentionConfig,
    pub auth: Option<AuthConfig>,
    pub tls: Option<TlsConfig>,
    pub report: Option<ReportConfig>,
    #[serde(default)]
    pub agent_service: AgentServiceConfig,
    pub metrics: Option<MetricsConfig>,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub observer: ObserverConfig,
}

/// A resource limit: a number or "unlimited".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum LimitValue {
    Number(u64),
    Word(LimitWord),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitWord {
    Unlimited,
}

impl LimitValue {
    pub fn get(self) -> u64 {
        match self {
            LimitValue::Number(n) => n,
            LimitValue::Word(LimitWord::Unlimited) => u64::MAX,
        }
    }
}

/// Resource limits of the processes obhostd starts (observers, agent services).
/// Defaults are what OceanBase's deployer asks hosts for. As root the daemon
/// grants them; otherwise they are capped at the daemon's own hard limits, and
/// Prepare reports the numbers the observer will really get.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    #[serde(default = "default_nofile")]
    pub nofile: LimitValue,
    #[serde(default = "default_nproc")]
    pub nproc: LimitValue,
    #[serde(default = "unlimited")]
    pub core: LimitValue,
    #[serde(default = "unlimited")]
    pub stack: LimitValue,
    /// Steps PENDING or RUNNING at once; more is RESOURCE_EXHAUSTED.
    #[serde(default = "default_max_active_steps")]
    pub max_active_steps: usize,
    /// Open WatchSteps streams at once; more is RESOURCE_EXHAUSTED.
    #[serde(default = "default_max_watchers")]
    pub max_watchers: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            nofile: default_nofile(),
            nproc: default_nproc(),
            core: unlimited(),
            stack: unlimited(),
            max_active_steps: default_max_active_steps(),
            max_watchers: default_max_watchers(),
        }
    }
}

impl LimitsConfig {
    pub fn to_limits(&self) -> crate::process::Limits {
        crate::process::Limits {
            nofile: Some(self.nofile.get()),
            nproc: Some(self.nproc.get()),
            core: Some(self.core.get()),
            stack: Some(self.stack.get()),
        }
    }
}

fn default_max_active_steps() -> usize {
    64
}
fn default_max_watchers() -> usize {
    256
}
fn default_nofile() -> LimitValue {
    LimitValue::Number(655_350)
}
fn default_nproc() -> LimitValue {
    LimitValue::Number(655_360)
}
fn unlimited() -> LimitValue {
    LimitValue::Word(LimitWord::Unlimited)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObserverConfig {
    /// How long a freshly started observer must stay alive before StartObserver
    /// succeeds: a binary that dies of a bad flag or a missing library does so
    /// within this window, and then the step fails with its log instead of
    /// reporting a process that is already gone.
    #[serde(default = "default_settle", with = "humantime_serde")]
    pub start_settle: Duration,
}

impl Default for ObserverConfig {
    fn default() -> Self {
        ObserverConfig {
            start_settle: default_settle(),
        }
    }
}

fn default_settle() -> Duration {
    Duration::from_secs(1)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    #[serde(default = "default_max_steps")]
    pub max_steps: usize,
    #[serde(default = "default_max_age", with = "humantime_serde")]
    pub max_age: Duration,
    #[serde(default = "default_prune_interval", with = "humantime_serde")]
    pub prune_interval: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            max_steps: default_max_steps(),
            max_age: default_max_age(),
            prune_interval: default_prune_interval(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// A file holding the bearer token (one line); readable by root only.
    pub token_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    pub endpoint: String,
    pub agent_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
}

/// Defaults for StartAgentService requests that leave fields empty.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentServiceConfig {
    pub systemd_unit: Option<String>,
    /// The only units StartAgentService may start (as root, through systemctl).
    /// Empty: only `systemd_unit`, so a request can never name `poweroff.target`.
    #[serde(default)]
    pub allowed_units: Vec<String>,
    #[serde(default)]
    pub argv: Vec<String>,
    pub user: Option<String>,
    pub cwd: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    #[serde(default)]
    pub foreground: bool,
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    pub tcp_port: Option<u16>,
    pub http_url: Option<String>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 62900))
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_watch_buffer() -> usize {
    1024
}
fn default_max_steps() -> usize {
    10_000
}
fn default_max_age() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_prune_interval() -> Duration {
    Duration::from_secs(60)
}

impl Default for Config {
    fn default() -> Self {
        // An empty document takes every serde default, so the two can't drift.
        toml::from_str("").unwrap_or_else(|e| unreachable!("empty config must parse: {e}"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config '{path}': {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config '{path}' is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })
    }

    /// The state dir in force: configured, or /var/lib/obhostd for root (what the
    /// systemd unit's StateDirectory= gives), or a per-user dir otherwise so that
    /// a developer can run the daemon without privileges.
    pub fn state_dir(&self) -> PathBuf {
        if let Some(dir) = &self.state_dir {
            return dir.clone();
        }
        if nix::unistd::geteuid().is_root() {
            return PathBuf::from("/var/lib/obhostd");
        }
        let base = std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
            .unwrap_or_else(std::env::temp_dir);
        base.join("obhostd")
    }

    /// Checks what serde cannot: combinations, absolute paths, features this
    /// build does not have yet.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if !self.listen.ip().is_loopback() && self.auth.is_none() && self.tls.is_none() {
            return invalid(format!(
                "refusing to listen on '{}': with neither [auth] nor [tls] configured, anyone who can reach \
                 that address could start and stop processes on this host. Listen on loopback \
                 (e.g. --listen {DEFAULT_LISTEN}), or configure [auth] token_file",
                self.listen
            ));
        }
        if self.tls.is_some() {
            return invalid(
                "[tls] is not supported by this version of obhostd yet; remove the section and use \
                 [auth] token_file, or reach the daemon over loopback / an SSH tunnel"
                    .into(),
            );
        }
        if self.report.is_some() {
            return invalid(
                "[report] is not supported by this version of obhostd yet; remove the section and \
                 follow steps with WatchSteps"
                    .into(),
            );
        }
        if self.metrics.is_some() {
            return invalid(
                "[metrics] is not supported by this version of obhostd yet; remove the section"
                    .into(),
            );
        }
        for root in &self.allowed_roots {
            if !root.is_absolute() {
                return invalid(format!(
                    "allowed_roots entry '{}' is not absolute; give the full path, e.g. /home/admin",
                    root.display()
                ));
            }
        }
        if let Some(dir) = &self.state_dir
            && !dir.is_absolute()
        {
            return invalid(format!(
                "state_dir '{}' is not absolute; give the full path, e.g. /var/lib/obhostd",
                dir.display()
            ));
        }
        if self.watch_buffer == 0 {
            return invalid("watch_buffer must be at least 1".into());
        }
        if self.retention.max_steps == 0 {
            return invalid("retention.max_steps must be at least 1".into());
        }
        if self.limits.max_active_steps == 0 {
            return invalid("limits.max_active_steps must be at least 1".into());
        }
        if self.limits.max_watchers == 0 {
            return invalid("limits.max_watchers must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_config_means_loopback_defaults() {
        let c = Config::default();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert!(c.validate().is_ok());
        assert_eq!(c.retention.max_steps, 10_000);
    }

    #[test]
    fn non_loopback_needs_auth() {
        let c: Config = toml::from_str("listen = \"0.0.0.0:62900\"").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("refusing to listen on '0.0.0.0:62900'"),
            "{err}"
        );
        let c: Config =
            toml::from_str("listen = \"0.0.0.0:62900\"\n[auth]\ntoken_file = \"/etc/t\"").unwrap();
        assert!(c.validate().is_ok());
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = toml::from_str::<Config>("allowed_root = []")
            .unwrap_err()
            .to_string();
        assert!(err.contains("allowed_root"), "{err}");
    }

    #[test]
    fn limits_take_numbers_and_unlimited() {
        let c: Config = toml::from_str("[limits]\nnofile = 1024\ncore = \"unlimited\"").unwrap();
        assert_eq!(c.limits.nofile.get(), 1024);
        assert_eq!(c.limits.core.get(), u64::MAX);
        assert_eq!(c.limits.nproc.get(), 655_360);
        assert!(toml::from_str::<Config>("[limits]\ncore = \"lots\"").is_err());
    }

    #[test]
    fn durations_are_human() {
        let c: Config = toml::from_str("[retention]\nmax_age = \"2days\"").unwrap();
        assert_eq!(c.retention.max_age, Duration::from_secs(2 * 86400));
    }
}
