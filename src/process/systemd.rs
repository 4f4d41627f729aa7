//! obhostd's line to systemd, when systemd is PID 1: its D-Bus API on the
//! system bus (`/run/dbus/system_bus_socket`).
//!
//! Why D-Bus and not `systemctl`: a transient scope must exist, holding the
//! child's pid, *before* the child execs (see [`super::spawn`]), and a unit
//! start must be judged by its job's result and the unit's state, not by a
//! tool's exit code and text. Why the system bus and not systemd's private
//! socket (`/run/systemd/private`, which needs no bus daemon): systemd marks
//! every message on it as sent by `org.freedesktop.systemd1`, a well-known
//! name where D-Bus expects a unique one, and zbus refuses such messages.
//!
//! Every call is bounded ([`CALL_TIMEOUT`]); a connection that broke (the bus
//! restarted, say) is made again once per call.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_stream::StreamExt;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};
use zbus::{Connection, MessageStream};

/// Where the system bus listens (what `busctl --system` uses).
pub const SYSTEM_BUS: &str = "/run/dbus/system_bus_socket";
/// Where every scope obhostd makes lives: `systemctl status obhost.slice`
/// shows all of them at once.
pub const SLICE: &str = "obhost.slice";
/// The longest one D-Bus call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a job whose `JobRemoved` was not seen is looked up instead (the
/// signal queue is bounded; a busy host's signals can push one out).
const JOB_POLL: Duration = Duration::from_millis(250);
/// Longest unit name systemd accepts (UNIT_NAME_MAX less its NUL).
const UNIT_NAME_MAX: usize = 255;

const SYSTEMD: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const UNIT: &str = "org.freedesktop.systemd1.Unit";
const PROPERTIES: &str = "org.freedesktop.DBus.Properties";

#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error(
        "cannot reach systemd over the system bus ({SYSTEM_BUS}): {0}; is D-Bus running? (systemctl start dbus.socket; busctl --system status tells)"
    )]
    Connect(String),
    #[error("systemd refused {method} for '{unit}': {cause}")]
    Call {
        method: &'static str,
        unit: String,
        cause: String,
    },
    #[error(
        "scope {unit} already holds processes {pids:?}, which obhostd did not start (or no longer knows of); see systemctl status {unit}, stop them (systemctl stop {unit}) and start again"
    )]
    Occupied { unit: String, pids: Vec<i32> },
    #[error("systemd did not answer {method} for '{unit}' within {}s", .after.as_secs())]
    TimedOut {
        method: &'static str,
        unit: String,
        after: Duration,
    },
}

/// A handle on the manager; cheap to clone, one connection shared.
#[derive(Clone)]
pub struct Systemd {
    conn: Arc<Mutex<Option<Connection>>>,
}

impl std::fmt::Debug for Systemd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Systemd")
    }
}

/// What `systemctl show` would say of a unit, the parts a step needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitState {
    /// `active`, `activating`, `failed`, `inactive`, ...
    pub active_state: String,
    /// `running`, `exited`, `dead`, ...
    pub sub_state: String,
    /// Why it last stopped or failed: `success`, `exit-code`, `signal`,
    /// `timeout`, `oom-kill`, ... (services only; empty otherwise).
    pub result: String,
    /// Its cgroup (`/system.slice/x.service`), empty when it has none.
    pub control_group: String,
}

impl Systemd {
    /// The manager, when this host runs systemd as PID 1 and it answers;
    /// otherwise why not, in words for the startup log.
    pub async fn detect() -> Result<Systemd, String> {
        if !Path::new("/run/systemd/system").is_dir() {
            let pid1 = tokio::fs::read_to_string("/proc/1/comm")
                .await
                .unwrap_or_default();
            return Err(format!(
                "systemd is not PID 1 here (PID 1 is '{}')",
                pid1.trim()
            ));
        }
        let systemd = Systemd {
            conn: Arc::new(Mutex::new(None)),
        };
        let _first = systemd.connection().await.map_err(|e| e.to_string())?;
        Ok(systemd)
    }

    async fn connection(&self) -> Result<Connection, SystemdError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let connect = async {
            let failed = |e: zbus::Error| SystemdError::Connect(e.to_string());
            let c = zbus::connection::Builder::system()
                .map_err(failed)?
                // A burst of other units' JobRemoved must not push out the
                // one a start waits for.
                .max_queued(4096)
                .build()
                .await
                .map_err(failed)?;
            // systemd sends JobRemoved on the bus only while someone is
            // subscribed; this connection is, for as long as it lives.
            c.call_method(Some(SYSTEMD), MANAGER_PATH, Some(MANAGER), "Subscribe", &())
                .await
                .map_err(failed)?;
            Ok::<_, SystemdError>(c)
        };
        let c = tokio::time::timeout(CALL_TIMEOUT, connect)
            .await
            .map_err(|_| SystemdError::Connect("no answer within 10s".into()))??;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Forgets a connection that failed, so the next call makes a new one.
    async fn drop_connection(&self, failed: &Connection) {
        let mut slot = self.conn.lock().await;
        if slot
            .as_ref()
            .is_some_and(|c| c.unique_name() == failed.unique_name())
        {
            *slot = None;
        }
    }

    /// One method call with a deadline; a broken connection is made again
    /// once.
    async fn call<B, R>(
        &self,
        path: &str,
        interface: &str,
        method: &'static str,
        unit: &str,
        body: &B,
    ) -> Result<R, SystemdError>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
        R: for<'d> zbus::zvariant::DynamicDeserialize<'d>,
    {
        let mut retried = false;
        loop {
            let conn = self.connection().await?;
            let call = conn.call_method(Some(SYSTEMD), path, Some(interface), method, body);
            let reply = tokio::time::timeout(CALL_TIMEOUT, call).await;
            let failure = |cause: String| SystemdError::Call {
                method,
                unit: unit.to_string(),
                cause,
            };
            match reply {
                Err(_) => {
                    return Err(SystemdError::TimedOut {
                        method,
                        unit: unit.to_string(),
                        after: CALL_TIMEOUT,
                    });
                }
                Ok(Ok(msg)) => return msg.body().deserialize().map_err(|e| failure(e.to_string())),
                Ok(Err(zbus::Error::MethodError(name, text, _))) => {
                    let text = text.unwrap_or_default();
                    return Err(failure(format!("{text} ({})", name.as_str())));
                }
                Ok(Err(e)) if !retried => {
                    tracing::debug!(error = %e, "systemd connection failed; connecting again");
                    self.drop_connection(&conn).await;
                    retried = true;
                }
                Ok(Err(e)) => return Err(failure(e.to_string())),
            }
        }
    }

    /// Puts `pid` in a new transient scope `unit` under [`SLICE`] and waits
    /// until systemd has moved it there. The scope goes away by itself once
    /// its last process has (CollectMode=inactive-or-failed: also after a
    /// kill, so the name is free for the next start).
    pub async fn start_scope(
        &self,
        unit: &str,
        pid: u32,
        description: &str,
    ) -> Result<(), SystemdError> {
        // The scope of the last process of this home may still be there for
        // a moment after it died (systemd learns of an empty cgroup
        // asynchronously), or stay failed: clear it and try again. One that
        // still holds processes is someone else's: never taken over.
        let mut stale = 0;
        loop {
            match self.new_scope(unit, pid, description).await {
                Err(SystemdError::Call { cause, .. })
                    if cause.contains("systemd1.UnitExists") && stale < 3 =>
                {
                    stale += 1;
                    let state = self.unit_state(unit).await?;
                    let pids = cgroup_pids(Path::new(&state.control_group));
                    if !pids.is_empty() && state.active_state != "inactive" {
                        return Err(SystemdError::Occupied {
                            unit: unit.to_string(),
                            pids,
                        });
                    }
                    tracing::debug!(unit, state = %state.active_state, "clearing a stale scope");
                    let _: Result<OwnedObjectPath, _> = self
                        .call(MANAGER_PATH, MANAGER, "StopUnit", unit, &(unit, "replace"))
                        .await;
                    let _: Result<(), _> = self
                        .call(MANAGER_PATH, MANAGER, "ResetFailedUnit", unit, &(unit,))
                        .await;
                    tokio::time::sleep(Duration::from_millis(20 << stale)).await;
                }
                other => return other,
            }
        }
    }

    async fn new_scope(&self, unit: &str, pid: u32, description: &str) -> Result<(), SystemdError> {
        let props: Vec<(&str, Value<'_>)> = vec![
            ("PIDs", Value::from(vec![pid])),
            ("Slice", Value::from(SLICE)),
            ("Description", Value::from(description)),
            ("CollectMode", Value::from("inactive-or-failed")),
        ];
        let aux: Vec<(&str, Vec<(&str, Value<'_>)>)> = Vec::new();
        let body = (unit, "fail", props, aux);
        let result = self
            .job(unit, "StartTransientUnit", CALL_TIMEOUT, &body)
            .await?;
        if result == "done" {
            Ok(())
        } else {
            Err(SystemdError::Call {
                method: "StartTransientUnit",
                unit: unit.to_string(),
                cause: format!("its start job ended '{result}'"),
            })
        }
    }

    /// Starts `unit` (mode `replace`, as `systemctl start` does) and waits up
    /// to `limit` for its job's result: `done`, `failed`, `timeout`,
    /// `dependency`, `canceled`, ...
    pub async fn start_unit(&self, unit: &str, limit: Duration) -> Result<String, SystemdError> {
        self.job(unit, "StartUnit", limit, &(unit, "replace")).await
    }

    /// Calls a manager method that queues a job, and waits for the job to
    /// end. The signal stream is opened before the call: the job may end
    /// before its path is returned.
    async fn job<B>(
        &self,
        unit: &str,
        method: &'static str,
        limit: Duration,
        body: &B,
    ) -> Result<String, SystemdError>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        let conn = self.connection().await?;
        let rule = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .interface(MANAGER)
            .and_then(|r| r.member("JobRemoved"))
            .and_then(|r| r.path(MANAGER_PATH))
            .map(|r| r.build())
            .map_err(|e| SystemdError::Connect(e.to_string()))?;
        let mut signals = MessageStream::for_match_rule(rule, &conn, Some(1024))
            .await
            .map_err(|e| SystemdError::Connect(e.to_string()))?;
        let job: OwnedObjectPath = self.call(MANAGER_PATH, MANAGER, method, unit, body).await?;
        let wait = async {
            let mut poll = tokio::time::interval(JOB_POLL);
            poll.tick().await;
            loop {
                tokio::select! {
                    msg = signals.next() => match msg {
                        Some(Ok(msg)) => {
                            if let Some(result) = job_removed(&msg, &job) {
                                return Ok(result);
                            }
                        }
                        Some(Err(_)) => {}
                        None => poll.reset_immediately(),
                    },
                    _ = poll.tick() => {
                        if let Some(result) = self.ended_job(unit).await? {
                            return Ok(result);
                        }
                    }
                }
            }
        };
        tokio::time::timeout(limit, wait)
            .await
            .map_err(|_| SystemdError::TimedOut {
                method,
                unit: unit.to_string(),
                after: limit,
            })?
    }

    /// When the unit has no job any more: what its state says the job's result
    /// was (the signal itself was missed).
    async fn ended_job(&self, unit: &str) -> Result<Option<String>, SystemdError> {
        let path = self.unit_path(unit).await?;
        let job: (u32, OwnedObjectPath) = self.property(&path, UNIT, "Job", unit).await?;
        if job.0 != 0 {
            return Ok(None);
        }
        let state: String = self.property(&path, UNIT, "ActiveState", unit).await?;
        Ok(Some(
            if state == "active" { "done" } else { "failed" }.to_string(),
        ))
    }

    async fn unit_path(&self, unit: &str) -> Result<OwnedObjectPath, SystemdError> {
        self.call(MANAGER_PATH, MANAGER, "LoadUnit", unit, &(unit,))
            .await
    }

    async fn property<T>(
        &self,
        path: &OwnedObjectPath,
        interface: &str,
        name: &str,
        unit: &str,
    ) -> Result<T, SystemdError>
    where
        T: TryFrom<OwnedValue>,
        T::Error: std::fmt::Display,
    {
        let value: OwnedValue = self
            .call(path.as_str(), PROPERTIES, "Get", unit, &(interface, name))
            .await?;
        T::try_from(value).map_err(|e| SystemdError::Call {
            method: "Get",
            unit: unit.to_string(),
            cause: format!("property {name}: {e}"),
        })
    }

    /// The unit's state now.
    pub async fn unit_state(&self, unit: &str) -> Result<UnitState, SystemdError> {
        let path = self.unit_path(unit).await?;
        let active_state = self.property(&path, UNIT, "ActiveState", unit).await?;
        let sub_state = self.property(&path, UNIT, "SubState", unit).await?;
        let kind = unit_interface(unit);
        let result = match kind {
            Some(iface) if iface.ends_with("Service") || iface.ends_with("Scope") => self
                .property(&path, iface, "Result", unit)
                .await
                .unwrap_or_default(),
            _ => String::new(),
        };
        let control_group = match kind {
            Some(iface) => self
                .property(&path, iface, "ControlGroup", unit)
                .await
                .unwrap_or_default(),
            None => String::new(),
        };
        Ok(UnitState {
            active_state,
            sub_state,
            result,
            control_group,
        })
    }
}

/// The result of the job at `job` when `msg` is its `JobRemoved` signal.
fn job_removed(msg: &zbus::Message, job: &OwnedObjectPath) -> Option<String> {
    let header = msg.header();
    if msg.message_type() != zbus::message::Type::Signal
        || header.member().map(|m| m.as_str()) != Some("JobRemoved")
    {
        return None;
    }
    let (_id, path, _unit, result): (u32, OwnedObjectPath, String, String) =
        msg.body().deserialize().ok()?;
    (path == *job).then_some(result)
}

/// The D-Bus interface that carries a unit type's own properties.
fn unit_interface(unit: &str) -> Option<&'static str> {
    match unit.rsplit_once('.')?.1 {
        "service" => Some("org.freedesktop.systemd1.Service"),
        "scope" => Some("org.freedesktop.systemd1.Scope"),
        "slice" => Some("org.freedesktop.systemd1.Slice"),
        "socket" => Some("org.freedesktop.systemd1.Socket"),
        "mount" => Some("org.freedesktop.systemd1.Mount"),
        "swap" => Some("org.freedesktop.systemd1.Swap"),
        _ => None,
    }
}

/// `<prefix>-<path escaped as systemd-escape --path does>.scope`, e.g.
/// `obhost-observer-home-admin-oceanbase.scope`: `systemctl status` finds it
/// by the home an operator knows. A path too long for a unit name keeps its
/// first part and gets a hash of the whole, so two long homes never share a
/// scope.
pub fn scope_name(prefix: &str, path: &Path) -> String {
    let escaped = escape_path(path);
    let fixed = prefix.len() + 1 + ".scope".len();
    if fixed + escaped.len() <= UNIT_NAME_MAX {
        return format!("{prefix}-{escaped}.scope");
    }
    let hash = format!("{:016x}", fnv1a(path.as_os_str().as_bytes()));
    let room = UNIT_NAME_MAX - fixed - 1 - hash.len();
    // Cut before an escape sequence, never inside one.
    let mut cut = room.min(escaped.len());
    while cut > 0 && escaped[..cut].rfind('\\').is_some_and(|b| b + 4 > cut) {
        cut = escaped[..cut].rfind('\\').unwrap_or(0);
    }
    format!("{prefix}-{}_{hash}.scope", &escaped[..cut])
}

/// systemd's path escaping: slashes trimmed and collapsed, `/` becomes `-`,
/// every byte outside `[A-Za-z0-9:_.]` (and a leading `.`) becomes `\xNN`;
/// `/` itself is `-`.
pub fn escape_path(path: &Path) -> String {
    let bytes = path.as_os_str().as_bytes();
    let parts: Vec<&[u8]> = bytes
        .split(|b| *b == b'/')
        .filter(|p| !p.is_empty() && *p != b".")
        .collect();
    if parts.is_empty() {
        return "-".into();
    }
    let mut out = String::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push('-');
        }
        for (j, &b) in part.iter().enumerate() {
            let plain = b.is_ascii_alphanumeric() || b == b':' || b == b'_' || b == b'.';
            if plain && !(b == b'.' && i == 0 && j == 0) {
                out.push(b as char);
            } else {
                out.push_str(&format!("\\x{b:02x}"));
            }
        }
    }
    out
}

/// FNV-1a, 64 bits: a stable hash for names (not for security).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The processes of a unit's cgroup (`ControlGroup`, e.g.
/// `/system.slice/x.service`): under the unified hierarchy wherever it is
/// mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified beside v1), else
/// systemd's own v1 hierarchy. Empty when it has none.
pub fn cgroup_pids(cg: &Path) -> Vec<i32> {
    if !cg.starts_with("/") || cg == Path::new("/") {
        return Vec::new();
    }
    let rel = cg.strip_prefix("/").unwrap_or(cg);
    [
        "/sys/fs/cgroup",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup/systemd",
    ]
    .iter()
    .map(|root| Path::new(root).join(rel).join("cgroup.procs"))
    .find_map(|procs| std::fs::read_to_string(procs).ok())
    .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    .unwrap_or_default()
}

/// The unit whose cgroup holds `pid` (`obhost-observer-x.scope`,
/// `obhostd.service`), from the unified hierarchy's line of
/// `/proc/<pid>/cgroup` (`0::/obhost.slice/obhost-observer-x.scope`).
pub fn unit_of(pid: i32) -> Option<String> {
    unit_in(&std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)
}

fn unit_in(text: &str) -> Option<String> {
    // The unified line first; a hybrid host's systemd tracks in name=systemd,
    // which a cgroup2-only systemd leaves at "/".
    let unified = text.lines().filter_map(|l| l.strip_prefix("0::"));
    let named = text
        .lines()
        .filter_map(|l| l.split_once(":name=systemd:").map(|(_, p)| p));
    unified.chain(named).find_map(|path| {
        Path::new(path)
            .components()
            .filter_map(|c| c.as_os_str().to_str())
            .rfind(|c| c.ends_with(".scope") || c.ends_with(".service"))
            .map(str::to_string)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_as_systemd_escape_does() {
        let cases = [
            "/home/admin/oceanbase",
            "/",
            "//srv//ob/",
            "/home/a-b/ob 1",
            "/data/.hidden/x.y",
            "/opt/ob\u{e9}",
        ];
        let tool = Path::new("/usr/bin/systemd-escape");
        for case in cases {
            let ours = escape_path(Path::new(case));
            if tool.exists() {
                let out = std::process::Command::new(tool)
                    .args(["--path", case])
                    .output()
                    .unwrap();
                let theirs = String::from_utf8_lossy(&out.stdout).trim().to_string();
                assert_eq!(ours, theirs, "{case}");
            }
        }
        assert_eq!(escape_path(Path::new("/home/a-b")), "home-a\\x2db");
        assert_eq!(escape_path(Path::new("/")), "-");
    }

    #[test]
    fn long_homes_get_distinct_names_that_fit() {
        let a = std::path::PathBuf::from(format!("/{}/a", "x".repeat(300)));
        let b = std::path::PathBuf::from(format!("/{}/b", "x".repeat(300)));
        let (na, nb) = (
            scope_name("obhost-observer", &a),
            scope_name("obhost-observer", &b),
        );
        assert_ne!(na, nb);
        assert!(na.len() <= UNIT_NAME_MAX && na.ends_with(".scope"), "{na}");
        // Never cut inside an escape: a name of only escaped bytes.
        let c = std::path::PathBuf::from(format!("/{}", "-".repeat(200)));
        let nc = scope_name("obhost-observer", &c);
        assert!(nc.len() <= UNIT_NAME_MAX, "{nc}");
        let body = nc.trim_start_matches("obhost-observer-");
        let escapes = body.split('_').next().unwrap();
        assert!(escapes.split("\\x2d").all(str::is_empty), "{nc}");
        assert_eq!(
            scope_name("obhost-observer", Path::new("/home/admin/ob")),
            "obhost-observer-home-admin-ob.scope"
        );
    }

    #[test]
    fn the_unit_is_the_innermost_scope_or_service() {
        let v2 = "0::/obhost.slice/obhost-observer-home-ob.scope\n";
        assert_eq!(
            unit_in(v2).as_deref(),
            Some("obhost-observer-home-ob.scope")
        );
        let hybrid = "12:memory:/system.slice/obhostd.service\n1:name=systemd:/system.slice/obhostd.service\n0::/system.slice/obhostd.service\n";
        assert_eq!(unit_in(hybrid).as_deref(), Some("obhostd.service"));
        let v1 = "1:name=systemd:/user.slice/user-0.slice/session-3.scope\n";
        assert_eq!(unit_in(v1).as_deref(), Some("session-3.scope"));
        // A cgroup2-only systemd on a kernel that also has v1 hierarchies.
        let sandboxed = "9:name=systemd:/\n3:memory:/\n0::/obhost.slice/obhost-agent-x.scope\n";
        assert_eq!(unit_in(sandboxed).as_deref(), Some("obhost-agent-x.scope"));
        assert_eq!(unit_in("0::/\n"), None);
        assert_eq!(unit_in(""), None);
    }
}
