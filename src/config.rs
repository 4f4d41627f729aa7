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

/// The root daemon's socket (the unit's RuntimeDirectory=obhost makes its dir).
pub const DEFAULT_SOCKET: &str = "/run/obhost/obhostd.sock";
/// Where root's obhostd keeps its store when the config names no state_dir.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/obhostd";

/// Where obhostd listens: a Unix socket (`unix:/abs/path`, peers known by their
/// uid) or TCP (`host:port`, peers known only by what they present: a token or a
/// client certificate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ListenAddr::Tcp(a) => write!(f, "{a}"),
        }
    }
}

impl std::str::FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(format!(
                    "listen address '{}' names a relative socket path; give the full path, e.g. unix:{DEFAULT_SOCKET}",
                    crate::config::quote(s)
                ));
            }
            return Ok(ListenAddr::Unix(path));
        }
        s.parse::<SocketAddr>().map(ListenAddr::Tcp).map_err(|_| {
            format!(
                "listen address '{}' is neither unix:/path nor ip:port; e.g. unix:{DEFAULT_SOCKET} or 127.0.0.1:62900",
                crate::config::quote(s)
            )
        })
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `listen` takes a list; a single string is read as a list of one, so a config
/// written for an older obhostd still means what it said.
fn listen_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ListenAddr>, D::Error> {
    // Strings first, parsed after: an untagged enum of addresses would hide the
    // parse error behind "did not match any variant".
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let list = match OneOrMany::deserialize(d)? {
        OneOrMany::One(a) => vec![a],
        OneOrMany::Many(v) => v,
    };
    list.iter()
        .map(|s| s.parse().map_err(serde::de::Error::custom))
        .collect()
}

/// The socket a daemon of this user listens on by default, and obhostctl's
/// default address: `/run/obhost/obhostd.sock` for root,
/// `$XDG_RUNTIME_DIR/obhost/obhostd.sock` otherwise (a per-user 0700 dir), none
/// when that is unset.
pub fn default_socket() -> Option<PathBuf> {
    if nix::unistd::geteuid().is_root() {
        return Some(PathBuf::from(DEFAULT_SOCKET));
    }
    std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|v| !v.is_empty())
        .map(|d| PathBuf::from(d).join("obhost/obhostd.sock"))
}

/// At most ~200 bytes of a rejected value, so an error quoting it stays readable.
pub fn quote(s: &str) -> String {
    if s.len() <= 200 {
        return s.to_string();
    }
    let mut end = 200;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Empty means the default socket (see [`Config::listeners`]).
    #[serde(default, deserialize_with = "listen_list")]
    pub listen: Vec<ListenAddr>,
    pub state_dir: Option<PathBuf>,
    #[serde(default)]
    pub allowed_roots: Vec<PathBuf>,
    #[serde(default)]
    pub allowed_users: Vec<String>,
    pub default_user: Option<String>,
    /// Whether observers and agent commands may run as root. Off unless the
    /// administrator says so: a root observer runs whatever its binary and
    /// libraries are, so they must be root's alone (checked when it is on).
    #[serde(default)]
    pub run_as_root: bool,
    #[serde(default)]
    pub log_format: LogFormat,
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    #[serde(default = "default_watch_buffer")]
    pub watch_buffer: usize,
    #[serde(default)]
    pub retention: RetentionConfig,
    #[serde(default)]
    pub store: StoreConfig,
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

/// `[store]`: the state store's share of memory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// redb's page cache in MiB. Finished records are read from disk on demand,
    /// so this bounds what history costs in memory; the OS page cache does the rest.
    #[serde(default = "default_cache_mib")]
    pub cache_mib: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            cache_mib: default_cache_mib(),
        }
    }
}

fn default_cache_mib() -> usize {
    4
}

/// Who may call. On a Unix socket the kernel tells the peer's uid (SO_PEERCRED):
/// the daemon's own uid and `local_users` are admitted. On TCP nobody is known,
/// so a TCP listener needs `token_file` (or mTLS, see [`TlsConfig`]).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// A file holding the bearer token (one line), owned by the daemon's user and
    /// not readable by group or others. Required of TCP clients.
    pub token_file: Option<PathBuf>,
    /// Users besides the daemon's own who may call over the Unix socket.
    #[serde(default)]
    pub local_users: Vec<String>,
    /// The group the socket is given (mode 0660), so `local_users` can open it.
    pub socket_group: Option<String>,
}

/// TLS for every TCP listener (rustls). With `client_ca_file` each client must
/// present a certificate signed by that CA (mTLS), and `allowed_clients` narrows
/// it to certificates whose DNS SANs or CN are listed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
    #[serde(default)]
    pub allowed_clients: Vec<String>,
}

impl TlsConfig {
    /// The combinations serde cannot refuse: names to allow without a CA to
    /// verify them, and relative paths.
    pub fn check(&self) -> Result<(), String> {
        if !self.allowed_clients.is_empty() && self.client_ca_file.is_none() {
            return Err(
                "[tls] allowed_clients needs [tls] client_ca_file: without a CA to verify them, \
                 certificate names prove nothing; set client_ca_file"
                    .into(),
            );
        }
        for (key, path) in [
            ("cert_file", Some(&self.cert_file)),
            ("key_file", Some(&self.key_file)),
            ("client_ca_file", self.client_ca_file.as_ref()),
        ] {
            if let Some(path) = path
                && !path.is_absolute()
            {
                return Err(format!(
                    "[tls] {key} '{}' is not absolute; give the full path, e.g. /etc/obhost/{key}.pem",
                    path.display()
                ));
            }
        }
        Ok(())
    }
}

/// What `[auth]` names, resolved to ids once at start.
#[derive(Debug, Clone, Default)]
pub struct LocalAccess {
    /// uids admitted on the Unix socket besides the daemon's own.
    pub uids: Vec<u32>,
    /// The socket's group (mode 0660) or none (mode 0600).
    pub socket_gid: Option<u32>,
}

/// Where and how obhostd pushes step changes (see `crate::report`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    /// `https://host:port`, or `http://` to loopback only.
    pub endpoint: String,
    /// Default: the host name.
    pub agent_id: Option<String>,
    /// Changes per ReportSteps call at most.
    #[serde(default = "default_batch_max")]
    pub batch_max: usize,
    /// The longest a change waits while a batch is in flight (with none in
    /// flight it goes at once).
    #[serde(default = "default_batch_delay", with = "humantime_serde")]
    pub batch_delay: Duration,
    /// The longest pause between two attempts after failures.
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Changes kept until acknowledged; past it the oldest are dropped (and
    /// the next batch says how many).
    #[serde(default = "default_max_unacked")]
    pub max_unacked: usize,
    /// CA certificates that sign the orchestrator's (PEM); needed for https.
    pub ca_file: Option<PathBuf>,
    /// obhostd's client certificate and key (PEM), for mTLS to the orchestrator.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

fn default_batch_max() -> usize {
    256
}
fn default_batch_delay() -> Duration {
    Duration::from_millis(100)
}
/// The lowest port any user may bind (`net.ipv4.ip_unprivileged_port_start`,
/// 1024 unless lowered).
fn unprivileged_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(1024)
}

fn default_max_backoff() -> Duration {
    Duration::from_secs(30)
}
fn default_max_unacked() -> usize {
    100_000
}

impl ReportConfig {
    /// The endpoint, or why it cannot be used. Every step record goes there
    /// (command lines, pids, homes), and the orchestrator acknowledges them:
    /// whoever listens at the endpoint gets them, and the real orchestrator
    /// never does. So plain text only where no other user can listen: a Unix
    /// socket in a dir only its owner (and root) can write, or a loopback port
    /// below `ip_unprivileged_port_start` (only root binds those). Anything
    /// else is https with a CA: any local user can bind a free loopback port
    /// while the orchestrator is down.
    pub fn check(&self) -> Result<(), String> {
        let e = crate::bounds::quote(&self.endpoint);
        if let Some(path) = self.unix_socket() {
            self.check_unix(&e, path)?;
            return self.check_rest();
        }
        let uri: tonic::transport::Uri = self.endpoint.parse().map_err(|err| {
            format!(
                "[report] endpoint '{e}' is not a URI ({err}); write e.g. https://ocp.example:62950 or unix:/run/ocp/reporter.sock"
            )
        })?;
        let host = uri.host().unwrap_or("");
        let Some(port) = uri.port_u16() else {
            return Err(format!(
                "[report] endpoint '{e}' needs a port, e.g. https://ocp.example:62950"
            ));
        };
        let loopback = matches!(host, "127.0.0.1" | "localhost" | "[::1]" | "::1");
        match uri.scheme_str() {
            Some("https") if self.ca_file.is_none() => Err(format!(
                "[report] endpoint '{e}' is https but ca_file is not set; set ca_file to the CA that signs the orchestrator's certificate (or /etc/ssl/certs/ca-certificates.crt for a public CA)"
            )),
            Some("https") => Ok(()),
            Some("http") if !loopback => Err(format!(
                "[report] endpoint '{e}' is plain http to another host; use https:// with ca_file, or a Unix socket (unix:/path)"
            )),
            Some("http") if port >= unprivileged_port_start() => Err(format!(
                "[report] endpoint '{e}' is plain http on a loopback port any local user can listen on while the orchestrator is down, and would then receive every step record; \
                 use a Unix socket (unix:/run/ocp/reporter.sock), a port below {}, or https:// with ca_file",
                unprivileged_port_start()
            )),
            Some("http") => Ok(()),
            _ => Err(format!(
                "[report] endpoint '{e}' must be https://host:port, unix:/path, or http:// to a privileged loopback port"
            )),
        }?;
        self.check_rest()
    }

    /// The socket of a `unix:/path` endpoint.
    pub fn unix_socket(&self) -> Option<&std::path::Path> {
        self.endpoint
            .strip_prefix("unix:")
            .map(std::path::Path::new)
    }

    /// A Unix socket endpoint: absolute, no TLS settings (they would be
    /// ignored), and in a dir no user but its owner (and root) could put
    /// another socket in.
    fn check_unix(&self, e: &str, path: &std::path::Path) -> Result<(), String> {
        if !path.is_absolute() {
            return Err(format!(
                "[report] endpoint '{e}' must name an absolute path, e.g. unix:/run/ocp/reporter.sock"
            ));
        }
        if self.ca_file.is_some() || self.cert_file.is_some() {
            return Err(format!(
                "[report] endpoint '{e}' is a Unix socket: ca_file, cert_file and key_file do not apply; remove them"
            ));
        }
        let dir = path.parent().unwrap_or(std::path::Path::new("/"));
        let owner = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(dir).map(|m| m.uid()).unwrap_or(0)
        };
        crate::trusted::check(dir, &[owner]).map_err(|why| {
            format!(
                "[report] endpoint '{e}': another user could listen there in the orchestrator's place: {why}; put the socket in a dir only the orchestrator's user can write"
            )
        })
    }

    fn check_rest(&self) -> Result<(), String> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err("[report] cert_file and key_file go together (mTLS to the orchestrator); set both or neither".into());
        }
        if self.batch_max == 0 || self.max_unacked == 0 {
            return Err("[report] batch_max and max_unacked must be at least 1".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where `/metrics` is served (HTTP, its own port, never the gRPC one).
    pub listen: SocketAddr,
    /// Metrics name observer homes and pids: serving them beyond loopback
    /// must be asked for.
    #[serde(default)]
    pub allow_remote: bool,
}

impl MetricsConfig {
    /// Beyond loopback only when asked for (see `allow_remote`).
    pub fn check(&self) -> Result<(), String> {
        if !self.listen.ip().is_loopback() && !self.allow_remote {
            return Err(format!(
                "refusing to serve metrics on '{}': it is not a loopback address, and metrics show \
                 observer homes and pids to anyone who can reach it; set [metrics] allow_remote = true \
                 to serve them there on purpose, or listen on 127.0.0.1",
                self.listen
            ));
        }
        Ok(())
    }
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
    ///
    /// There is no shared fallback (such as /tmp): another user could create it
    /// first and own the daemon's state.
    pub fn state_dir(&self) -> Result<PathBuf, ConfigError> {
        if let Some(dir) = &self.state_dir {
            return Ok(dir.clone());
        }
        if nix::unistd::geteuid().is_root() {
            return Ok(PathBuf::from(DEFAULT_STATE_DIR));
        }
        std::env::var_os("XDG_STATE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|h| PathBuf::from(h).join(".local/state"))
            })
            .map(|base| base.join("obhostd"))
            .ok_or_else(|| {
                ConfigError::Invalid(
                    "no state dir: neither HOME nor XDG_STATE_HOME is set and obhostd is not root; \
                     pass --state-dir DIR (a directory only this user can write)"
                        .into(),
                )
            })
    }

    /// The listeners in force: `listen`, or the default socket: the root daemon's
    /// `/run/obhost/obhostd.sock`, else `$XDG_RUNTIME_DIR/obhost/obhostd.sock`.
    pub fn listeners(&self) -> Result<Vec<ListenAddr>, ConfigError> {
        if !self.listen.is_empty() {
            return Ok(self.listen.clone());
        }
        default_socket()
            .map(|p| vec![ListenAddr::Unix(p)])
            .ok_or_else(|| {
                ConfigError::Invalid(
                    "no default socket: obhostd is not root and XDG_RUNTIME_DIR is not set; \
                     pass --listen unix:/path/to/obhostd.sock (in a directory only this user can write)"
                        .into(),
                )
            })
    }

    /// Resolves `[auth] local_users` and `socket_group` to ids: an unknown name
    /// is an error now rather than a refused caller later.
    pub fn local_access(&self) -> Result<LocalAccess, ConfigError> {
        let Some(auth) = &self.auth else {
            return Ok(LocalAccess::default());
        };
        let mut access = LocalAccess::default();
        for name in &auth.local_users {
            match nix::unistd::User::from_name(name) {
                Ok(Some(u)) => access.uids.push(u.uid.as_raw()),
                Ok(None) => {
                    return Err(ConfigError::Invalid(format!(
                        "[auth] local_users names '{}', which is not a user on this host; \
                         create it or remove it from the list",
                        quote(name)
                    )));
                }
                Err(e) => {
                    return Err(ConfigError::Invalid(format!(
                        "cannot look up [auth] local_users entry '{}': {e}",
                        quote(name)
                    )));
                }
            }
        }
        if let Some(group) = &auth.socket_group {
            match nix::unistd::Group::from_name(group) {
                Ok(Some(g)) => access.socket_gid = Some(g.gid.as_raw()),
                Ok(None) => {
                    return Err(ConfigError::Invalid(format!(
                        "[auth] socket_group '{}' is not a group on this host; create it \
                         (groupadd {}) or remove the key",
                        quote(group),
                        quote(group)
                    )));
                }
                Err(e) => {
                    return Err(ConfigError::Invalid(format!(
                        "cannot look up [auth] socket_group '{}': {e}",
                        quote(group)
                    )));
                }
            }
        }
        Ok(access)
    }

    /// Checks what serde cannot: combinations, absolute paths, features this
    /// build does not have yet. The first fault found is the one reported.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_listeners()?;
        if let Some(tls) = &self.tls {
            tls.check().map_err(ConfigError::Invalid)?;
        }
        if let Some(report) = &self.report {
            report.check().map_err(ConfigError::Invalid)?;
        }
        if let Some(metrics) = &self.metrics {
            metrics.check().map_err(ConfigError::Invalid)?;
        }
        self.check_paths()?;
        self.check_sizes()
    }

    /// A TCP listener lets whoever connects start processes as root: it needs
    /// a token or mTLS, and off loopback TLS too, so secrets never cross the
    /// network in clear.
    fn check_listeners(&self) -> Result<(), ConfigError> {
        let has_token = self.auth.as_ref().is_some_and(|a| a.token_file.is_some());
        let has_mtls = self
            .tls
            .as_ref()
            .is_some_and(|t| t.client_ca_file.is_some());
        for addr in &self.listen {
            let ListenAddr::Tcp(tcp) = addr else { continue };
            // Loopback included: every local user can reach 127.0.0.1.
            if !has_token && !has_mtls {
                return Err(ConfigError::Invalid(format!(
                    "refusing to listen on '{tcp}' over TCP without authentication: anyone who can \
                     connect could start processes as root on this host; set [auth] token_file or \
                     [tls] client_ca_file, or listen on a Unix socket (unix:{DEFAULT_SOCKET})"
                )));
            }
            if !tcp.ip().is_loopback() && self.tls.is_none() {
                return Err(ConfigError::Invalid(format!(
                    "refusing to listen on '{tcp}' without TLS: the token and every password would \
                     cross the network in clear; set [tls] cert_file and key_file (and client_ca_file \
                     for mTLS), or listen on loopback"
                )));
            }
        }
        Ok(())
    }

    /// Relative paths would depend on the daemon's working directory.
    fn check_paths(&self) -> Result<(), ConfigError> {
        for root in &self.allowed_roots {
            if !root.is_absolute() {
                return Err(ConfigError::Invalid(format!(
                    "allowed_roots entry '{}' is not absolute; give the full path, e.g. /home/admin",
                    root.display()
                )));
            }
        }
        if let Some(dir) = &self.state_dir
            && !dir.is_absolute()
        {
            return Err(ConfigError::Invalid(format!(
                "state_dir '{}' is not absolute; give the full path, e.g. {DEFAULT_STATE_DIR}",
                dir.display()
            )));
        }
        Ok(())
    }

    /// Sizes and limits: a zero would leave the daemon unable to do anything.
    fn check_sizes(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.watch_buffer == 0 {
            return invalid("watch_buffer must be at least 1".into());
        }
        if self.store.cache_mib == 0 || self.store.cache_mib > 4096 {
            return invalid(format!(
                "store.cache_mib = {} is out of range; give 1..=4096 (MiB), e.g. 4",
                self.store.cache_mib
            ));
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
    fn no_config_means_the_default_socket() {
        let c = Config::default();
        assert!(c.listen.is_empty());
        assert!(c.validate().is_ok());
        assert_eq!(c.retention.max_steps, 10_000);
        if nix::unistd::geteuid().is_root() {
            assert_eq!(
                c.listeners().unwrap(),
                vec![ListenAddr::Unix(DEFAULT_SOCKET.into())]
            );
        }
    }

    #[test]
    fn listen_takes_a_list_or_one_string() {
        let c: Config = toml::from_str("listen = [\"unix:/run/x.sock\", \"127.0.0.1:1\"]").unwrap();
        assert_eq!(
            c.listen,
            vec![
                ListenAddr::Unix("/run/x.sock".into()),
                ListenAddr::Tcp("127.0.0.1:1".parse().unwrap())
            ]
        );
        let c: Config = toml::from_str("listen = \"unix:/run/x.sock\"").unwrap();
        assert_eq!(c.listen.len(), 1);
        let err = toml::from_str::<Config>("listen = [\"unix:x.sock\"]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("relative socket path"), "{err}");
    }

    #[test]
    fn tcp_needs_auth_even_on_loopback() {
        let c: Config = toml::from_str("listen = \"127.0.0.1:62900\"").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("refusing to listen on '127.0.0.1:62900'"),
            "{err}"
        );
        assert!(
            err.contains("[auth] token_file or [tls] client_ca_file"),
            "{err}"
        );
        let c: Config =
            toml::from_str("listen = \"127.0.0.1:62900\"\n[auth]\ntoken_file = \"/etc/t\"")
                .unwrap();
        assert!(c.validate().is_ok());
    }

    #[test]
    fn non_loopback_needs_tls() {
        let c: Config =
            toml::from_str("listen = \"0.0.0.0:62900\"\n[auth]\ntoken_file = \"/etc/t\"").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("set [tls] cert_file and key_file"), "{err}");
        let c: Config = toml::from_str(
            "listen = \"0.0.0.0:62900\"\n[tls]\ncert_file = \"/c\"\nkey_file = \"/k\"\nclient_ca_file = \"/ca\"",
        )
        .unwrap();
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
