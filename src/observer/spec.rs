//! What an observer is, as the daemon stores it: the request's ObserverSpec with
//! every default filled in and every field checked against the host's policy.
//!
//! Resolution happens before a step is accepted, so a bad request is rejected with
//! the field named and nothing is spawned. The resolved spec is the step's stored
//! parameters: what a retry or a restart runs again.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::process::{Limits, RunAs};
use crate::{bounds, confined};

pub const DEFAULT_MYSQL_PORT: u16 = 2881;
pub const DEFAULT_RPC_PORT: u16 = 2882;

/// What the host allows, from the config.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub allowed_roots: Vec<PathBuf>,
    pub allowed_users: Vec<String>,
    pub default_user: Option<String>,
    /// `run_as_root` in the config: off, nothing runs as root.
    pub run_as_root: bool,
    pub limits: Limits,
    pub start_settle: std::time::Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObserverSpec {
    pub home_path: PathBuf,
    pub binary: PathBuf,
    pub user: String,
    pub mysql_port: u16,
    pub rpc_port: u16,
    pub pid_file: PathBuf,
    pub foreground: bool,
    pub zone: String,
    pub cluster_name: String,
    pub cluster_id: u32,
    pub rootservice_list: String,
    pub data_dir: PathBuf,
    pub redo_dir: Option<PathBuf>,
    pub devname: String,
    pub ip: String,
    pub parameters: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
    pub extra_args: Vec<String>,
}

/// The request's fields before defaults (a copy of the wire message, so this
/// module does not depend on the proto types).
#[derive(Debug, Clone, Default)]
pub struct RawSpec {
    pub home_path: String,
    pub binary: String,
    pub user: String,
    pub mysql_port: u32,
    pub rpc_port: u32,
    pub pid_file: String,
    pub foreground: bool,
    pub zone: String,
    pub cluster_name: String,
    pub cluster_id: u32,
    pub rootservice_list: String,
    pub data_dir: String,
    pub redo_dir: String,
    pub devname: String,
    pub ip: String,
    pub parameters: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
    pub extra_args: Vec<String>,
}

/// A rejected field: INVALID_ARGUMENT, or PERMISSION_DENIED when the value is
/// fine but the host's policy forbids it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Denied(String),
}

fn invalid(m: String) -> SpecError {
    SpecError::Invalid(m)
}

/// An absolute path with no `..`, with every symlink resolved, inside an
/// allowed root. Resolving first is what makes the roots mean something: a home
/// that is a link to /root, or an argv[0] that is a link to /bin/sh, is judged by
/// where it leads. What is returned is the resolved path, which the steps then
/// only ever open without following links (see [`crate::confined`]), so the
/// check holds where the path is used.
pub fn checked_path(field: &str, value: &str, policy: &Policy) -> Result<PathBuf, SpecError> {
    let clean = checked_path_text(field, value)?;
    let real = confined::canonical(&clean).map_err(|e| {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            SpecError::Denied(format!("{field} '{}': {e}", bounds::quote(value)))
        } else {
            invalid(format!(
                "{field} '{}' cannot be resolved: {e}; give a path whose dirs can be read",
                bounds::quote(value)
            ))
        }
    })?;
    check_roots(field, value, &clean, real, policy)
}

/// What a root observer would run or run from: its binary, its home (the
/// working dir) and `<home>/lib` (first on its LD_LIBRARY_PATH) when present.
fn root_paths(home: &Path, binary: &Path) -> Vec<(&'static str, PathBuf)> {
    let mut paths = vec![
        ("observer.binary", binary.to_path_buf()),
        ("observer.home_path", home.to_path_buf()),
    ];
    let lib = home.join("lib");
    if confined::exists(&lib) {
        paths.push(("observer.home_path's lib dir", lib));
    }
    paths
}

/// A stored path, resolved again, must lead where it led when the step was
/// made: a link changed since would point the step somewhere never judged.
pub fn same_path(field: &str, stored: &Path, now: PathBuf) -> Result<(), SpecError> {
    if now == stored {
        return Ok(());
    }
    Err(SpecError::Denied(format!(
        "{field} '{}' now leads to '{}', not where it led when the step was made; make the request again",
        bounds::quote(&stored.to_string_lossy()),
        bounds::quote(&now.to_string_lossy())
    )))
}

/// The checks on the text alone: absolute, bounded, no NUL, no `..`.
fn checked_path_text(field: &str, value: &str) -> Result<PathBuf, SpecError> {
    if value.is_empty() {
        return Err(invalid(format!("{field} is empty; give an absolute path")));
    }
    bounds::check_len(field, value, bounds::MAX_PATH).map_err(invalid)?;
    if value.contains('\0') {
        return Err(invalid(format!("{field} contains a NUL byte")));
    }
    let p = Path::new(value);
    if !p.is_absolute() {
        return Err(invalid(format!(
            "{field} '{}' is not absolute; give the full path, starting with '/'",
            bounds::quote(value)
        )));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(invalid(format!(
            "{field} '{}' contains '..'; give the path without it",
            bounds::quote(value)
        )));
    }
    Ok(p.components().collect())
}

fn check_roots(
    field: &str,
    value: &str,
    clean: &Path,
    real: PathBuf,
    policy: &Policy,
) -> Result<PathBuf, SpecError> {
    if !policy.allowed_roots.is_empty()
        && !policy
            .allowed_roots
            .iter()
            .any(|r| real.starts_with(confined::canonical(r).unwrap_or_else(|_| r.clone())))
    {
        let roots: Vec<String> = policy
            .allowed_roots
            .iter()
            .map(|r| r.display().to_string())
            .collect();
        let leads = if real == clean {
            String::new()
        } else {
            format!(
                " (it leads through a symbolic link to '{}')",
                bounds::quote(&real.to_string_lossy())
            )
        };
        return Err(SpecError::Denied(format!(
            "{field} '{}'{leads} is outside allowed_roots [{}]; use a path under one of them or add its root to allowed_roots in obhostd's config",
            bounds::quote(value),
            roots.join(", ")
        )));
    }
    Ok(real)
}

/// The observer's two ports: each valid, and not the same.
fn observer_ports(raw: &RawSpec) -> Result<(u16, u16), SpecError> {
    let mysql_port = port(
        "observer.mysql_port",
        raw.mysql_port,
        PortUse::Listen {
            default: DEFAULT_MYSQL_PORT,
        },
    )?;
    let rpc_port = port(
        "observer.rpc_port",
        raw.rpc_port,
        PortUse::Listen {
            default: DEFAULT_RPC_PORT,
        },
    )?;
    if mysql_port == rpc_port {
        return Err(invalid(format!(
            "observer.mysql_port and observer.rpc_port are both {mysql_port}; give them different ports"
        )));
    }
    Ok((mysql_port, rpc_port))
}

/// Names and lists that end up on the command line: bounded, one token each,
/// `ip` an address, `rootservice_list` in its `;`-separated form.
fn check_names(raw: &RawSpec) -> Result<(), SpecError> {
    for (field, value) in [
        ("observer.zone", &raw.zone),
        ("observer.cluster_name", &raw.cluster_name),
        ("observer.devname", &raw.devname),
        ("observer.ip", &raw.ip),
    ] {
        name(field, value)?;
        token(field, value)?;
    }
    bounds::check_len(
        "observer.rootservice_list",
        &raw.rootservice_list,
        bounds::MAX_VALUE,
    )
    .map_err(invalid)?;
    let params = &raw.parameters;
    bounds::check_entries("observer.parameters", params.keys().map(String::as_str))
        .map_err(invalid)?;
    bounds::check_entries("observer.parameters", params.values().map(String::as_str))
        .map_err(invalid)?;
    bounds::check_entries(
        "observer.extra_args",
        raw.extra_args.iter().map(String::as_str),
    )
    .map_err(invalid)?;
    if !raw.ip.is_empty() && raw.ip.parse::<std::net::IpAddr>().is_err() {
        return Err(invalid(format!(
            "observer.ip '{}' is not an IP address, e.g. 10.0.0.1",
            raw.ip
        )));
    }
    if raw
        .rootservice_list
        .chars()
        .any(|c| c.is_whitespace() || c == ',')
    {
        return Err(invalid(
            "observer.rootservice_list contains spaces or commas; the form is ip:rpc_port:mysql_port;ip:rpc_port:mysql_port".into(),
        ));
    }
    Ok(())
}

/// `-o k=v,k=v`: a key is a parameter name, and a value cannot break out of
/// its pair (an unquoted ',') or its line.
fn check_parameters(params: &BTreeMap<String, String>) -> Result<(), SpecError> {
    for (k, v) in params {
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(invalid(format!(
                "observer.parameters key '{}' is not a parameter name ([A-Za-z0-9_]+)",
                k.escape_debug()
            )));
        }
        let quoted = v.len() >= 2
            && ((v.starts_with('"') && v.ends_with('"'))
                || (v.starts_with('\'') && v.ends_with('\'')));
        if (v.contains(',') && !quoted) || v.contains(['\n', '\r', '\0']) {
            return Err(invalid(format!(
                "observer.parameters value of '{k}' contains an unquoted ',' or a line break; quote it (\"a,b\") or split it"
            )));
        }
    }
    Ok(())
}

/// What a port in a request is for, which decides what it may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortUse {
    /// The observer binds it, as its (unprivileged) user: 1025..=65535,
    /// `default` when 0.
    Listen { default: u16 },
    /// obhostd only connects to it (a health check): 1..=65535, required.
    Connect,
}

/// The one check of every port a request names.
pub fn port(field: &str, value: u32, usage: PortUse) -> Result<u16, SpecError> {
    let (low, default) = match usage {
        PortUse::Listen { default } => (1025, Some(default)),
        PortUse::Connect => (1, None),
    };
    match (value, default) {
        (0, Some(d)) => Ok(d),
        (v, _) if (low..=65535).contains(&v) => Ok(v as u16),
        (v, _) => Err(invalid(format!(
            "{field} {v} is out of range; use a port from {low} to 65535"
        ))),
    }
}

/// A program to run: judged like any path by where it leads, but kept as
/// given, because launchers find their home from their own name (`$0/..`, as
/// OceanBase's do) and a resolved name would move it. The program is executed
/// by the target user, so nothing a link there could redirect runs as root.
pub fn checked_program(field: &str, value: &str, policy: &Policy) -> Result<PathBuf, SpecError> {
    checked_path(field, value, policy)?;
    checked_path_text(field, value)
}

/// A file obhostd may replace or remove (a pid file): its dir is resolved and
/// checked like any path, but a link in its own place is not followed. It is
/// the file itself that gets replaced or removed, never what a link points to
/// (see [`crate::confined`]), so a planted link there makes a stale pid file,
/// not a refused request.
pub fn checked_file(field: &str, value: &str, policy: &Policy) -> Result<PathBuf, SpecError> {
    let clean = checked_path_text(field, value)?;
    let (Some(dir), Some(name)) = (clean.parent(), clean.file_name()) else {
        return Err(invalid(format!(
            "{field} '{}' names no file; give the full path of a file",
            bounds::quote(value)
        )));
    };
    let dir = checked_path(field, &dir.to_string_lossy(), policy)?;
    Ok(dir.join(name))
}

/// Longest names and lists, named by field (see [`bounds`]).
fn name(field: &str, value: &str) -> Result<(), SpecError> {
    bounds::check_len(field, value, bounds::MAX_NAME).map_err(invalid)
}

/// Resolves the OS user a process runs as: given, else the config's
/// default_user, else the owner of `owner_of` (the observer's home: OceanBase's
/// own tools run the observer as the owner of its home, and a home its user
/// can write must never be run from as root), else the daemon's own. It must
/// exist, be allowed, be one the daemon can switch to, and be root only where
/// the config says `run_as_root = true`.
pub fn resolve_user(
    field: &str,
    given: &str,
    policy: &Policy,
    owner_of: Option<&Path>,
) -> Result<RunAs, SpecError> {
    name(field, given)?;
    let owner = || {
        let path = owner_of?;
        confined::metadata(path).ok().map(|m| m.st_uid)
    };
    let (user, how) = if !given.is_empty() {
        (RunAs::lookup(given), "named in the request")
    } else if let Some(d) = &policy.default_user {
        (RunAs::lookup(d), "the config's default_user")
    } else if let Some(uid) = owner() {
        (RunAs::of_uid(uid), "the owner of the home")
    } else {
        (RunAs::current(), "obhostd's own user")
    };
    let user = user.map_err(|e| invalid(format!("{field}: {e}")))?;
    if !policy.allowed_users.is_empty() && !policy.allowed_users.contains(&user.name) {
        return Err(SpecError::Denied(format!(
            "{field} '{}' is not in allowed_users [{}]; use one of them or add it to obhostd's config",
            user.name,
            policy.allowed_users.join(", ")
        )));
    }
    user.check_permitted()
        .map_err(|e| SpecError::Denied(format!("{field}: {e}")))?;
    if user.uid == 0 && !policy.run_as_root {
        return Err(SpecError::Denied(format!(
            "{field}: this would run as root ({how}), which obhostd does only when its config says run_as_root = true; \
             name the observer's user in {field}, or chown the home to it"
        )));
    }
    Ok(user)
}

/// A process that runs as root runs whatever its binary, its libraries and
/// its working dir hold: each must be root's alone, and so must every dir on
/// the way to them, or the user who can write there runs code as root.
pub fn check_root_paths(user: &RunAs, paths: &[(&str, PathBuf)]) -> Result<(), SpecError> {
    if user.uid != 0 {
        return Ok(());
    }
    for (field, path) in paths {
        crate::trusted::check(path, &[]).map_err(|e| {
            SpecError::Denied(format!(
                "{field} is not root's alone, and the process would run as root: {e}; \
                 make it and the dirs above it root's (chown root, chmod go-w), or run it as the user who owns it"
            ))
        })?;
    }
    Ok(())
}

fn token(field: &str, value: &str) -> Result<(), SpecError> {
    if value
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == ',')
    {
        return Err(invalid(format!(
            "{field} '{}' contains spaces, commas or control characters",
            value.escape_debug()
        )));
    }
    Ok(())
}

fn env_key_ok(k: &str) -> bool {
    let mut chars = k.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks request environment: valid names, bounded, and none of the
/// variables that would let the child speak for obhostd or load code from
/// anywhere (`LD_PRELOAD`, `LD_LIBRARY_PATH`, the loader's other variables):
/// the observer's libraries come from its home, which obhostd sets itself.
pub fn check_env(field: &str, env: &BTreeMap<String, String>) -> Result<(), SpecError> {
    bounds::check_entries(field, env.keys().map(String::as_str)).map_err(invalid)?;
    bounds::check_entries(field, env.values().map(String::as_str)).map_err(invalid)?;
    for (k, v) in env {
        if !env_key_ok(k) {
            return Err(invalid(format!(
                "{field} key '{}' is not a variable name ([A-Za-z_][A-Za-z0-9_]*)",
                k.escape_debug()
            )));
        }
        if crate::process::spawn::is_forbidden_env(k) {
            return Err(invalid(format!(
                "{field} key '{k}' is reserved for the service manager; remove it"
            )));
        }
        if crate::process::spawn::is_loader_env(k) {
            return Err(SpecError::Denied(format!(
                "{field} key '{k}' would change which code the dynamic loader runs, so obhostd refuses it; remove it (the observer's libraries are found in <home_path>/lib)"
            )));
        }
        if v.contains('\0') {
            return Err(invalid(format!(
                "{field} value of '{k}' contains a NUL byte"
            )));
        }
    }
    Ok(())
}

impl ObserverSpec {
    pub fn resolve(raw: RawSpec, policy: &Policy) -> Result<ObserverSpec, SpecError> {
        if raw.home_path.is_empty() {
            return Err(invalid(
                "observer.home_path is required, e.g. /home/admin/oceanbase".into(),
            ));
        }
        let home = checked_path("observer.home_path", &raw.home_path, policy)?;
        let or_default =
            |field: &str, value: &str, default: PathBuf| -> Result<PathBuf, SpecError> {
                if value.is_empty() {
                    checked_path(field, &default.to_string_lossy(), policy)
                } else {
                    checked_path(field, value, policy)
                }
            };
        let binary = match raw.binary.as_str() {
            "" => home.join("bin/observer"),
            given => checked_program("observer.binary", given, policy)?,
        };
        checked_path("observer.binary", &binary.to_string_lossy(), policy)?;
        let pid_file = match raw.pid_file.as_str() {
            "" => home.join("run/observer.pid"),
            given => checked_file("observer.pid_file", given, policy)?,
        };
        let data_dir = or_default("observer.data_dir", &raw.data_dir, home.join("store"))?;
        let redo_dir = match raw.redo_dir.as_str() {
            "" => None,
            v => Some(checked_path("observer.redo_dir", v, policy)?),
        };
        let user = resolve_user("observer.user", &raw.user, policy, Some(&home))?;
        check_root_paths(&user, &root_paths(&home, &binary))?;
        let (mysql_port, rpc_port) = observer_ports(&raw)?;
        check_names(&raw)?;
        check_parameters(&raw.parameters)?;
        check_env("observer.env", &raw.env)?;
        if raw.extra_args.iter().any(|a| a.contains('\0')) {
            return Err(invalid("observer.extra_args contains a NUL byte".into()));
        }
        Ok(ObserverSpec {
            home_path: home,
            binary,
            user: user.name,
            mysql_port,
            rpc_port,
            pid_file,
            foreground: raw.foreground,
            zone: raw.zone,
            cluster_name: raw.cluster_name,
            cluster_id: raw.cluster_id,
            rootservice_list: raw.rootservice_list,
            data_dir,
            redo_dir,
            devname: raw.devname,
            ip: raw.ip,
            parameters: raw.parameters,
            env: raw.env,
            extra_args: raw.extra_args,
        })
    }

    /// Judges a stored spec by the policy as it is now: a retry or a resume
    /// runs what was allowed when the step was made, and an administrator may
    /// have tightened `allowed_roots` or `allowed_users` since. Each path must
    /// still be allowed and still lead where it led; the user must still be
    /// allowed. Blocking (it resolves paths and looks the user up).
    pub fn recheck(&self, policy: &Policy) -> Result<(), SpecError> {
        let text = |p: &Path| p.to_string_lossy().into_owned();
        same_path(
            "observer.home_path",
            &self.home_path,
            checked_path("observer.home_path", &text(&self.home_path), policy)?,
        )?;
        checked_program("observer.binary", &text(&self.binary), policy)?;
        checked_file("observer.pid_file", &text(&self.pid_file), policy)?;
        same_path(
            "observer.data_dir",
            &self.data_dir,
            checked_path("observer.data_dir", &text(&self.data_dir), policy)?,
        )?;
        if let Some(redo) = &self.redo_dir {
            same_path(
                "observer.redo_dir",
                redo,
                checked_path("observer.redo_dir", &text(redo), policy)?,
            )?;
        }
        let user = resolve_user("observer.user", &self.user, policy, Some(&self.home_path))?;
        check_root_paths(&user, &root_paths(&self.home_path, &self.binary))?;
        Ok(())
    }

    /// The observer restarts from its saved configuration when this file exists.
    pub fn config_bin(&self) -> PathBuf {
        self.home_path.join("etc/observer.config.bin")
    }

    pub fn is_restart(&self) -> bool {
        confined::exists(&self.config_bin())
    }

    /// A first start needs the cluster's identity; a restart reads it from
    /// etc/observer.config.bin.
    pub fn check_first_start(&self) -> Result<(), SpecError> {
        if self.is_restart() {
            return Ok(());
        }
        let mut missing = Vec::new();
        if self.zone.is_empty() {
            missing.push("zone");
        }
        if self.cluster_name.is_empty() {
            missing.push("cluster_name");
        }
        if self.cluster_id == 0 {
            missing.push("cluster_id");
        }
        if missing.is_empty() {
            return Ok(());
        }
        Err(invalid(format!(
            "observer.{} required on a first start ('{}' does not exist yet); give them, or start an observer that has run before",
            missing.join(", observer."),
            self.config_bin().display()
        )))
    }

    /// The binary must be a regular file the observer's user may execute.
    pub fn check_binary(&self) -> Result<(), String> {
        check_executable(&self.binary, &self.user)
    }

    /// Output (stdout/stderr) of the process obhostd spawns.
    pub fn output_file(&self) -> PathBuf {
        self.home_path.join("log/obhost_observer.out")
    }

    pub fn log_file(&self) -> PathBuf {
        self.home_path.join("log/observer.log")
    }

    /// The environment the observer gets: LD_LIBRARY_PATH=<home>/lib unless the
    /// request sets it, then the request's variables.
    pub fn environment(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        env.insert(
            "LD_LIBRARY_PATH".to_string(),
            format!("{}:", self.home_path.join("lib").display()),
        );
        env.extend(self.env.clone());
        env
    }
}

/// Whether `user` may execute `path`: regular file with an x bit for the user's
/// uid, one of its groups, or others (root: any x bit).
pub fn check_executable(path: &Path, user: &str) -> Result<(), String> {
    let meta = confined::canonical(path)
        .and_then(|real| confined::metadata(&real))
        .map_err(|e| format!("'{}' cannot be used: {e}", path.display()))?;
    if meta.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(format!("'{}' is not a regular file", path.display()));
    }
    let mode = meta.st_mode;
    let who = RunAs::lookup(user).map_err(|e| e.to_string())?;
    let ok = if who.uid == 0 {
        mode & 0o111 != 0
    } else if meta.st_uid == who.uid {
        mode & 0o100 != 0
    } else if who.groups.contains(&meta.st_gid) || meta.st_gid == who.gid {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{}' (mode {:o}) is not executable by user '{user}'; chmod +x it or chown it to '{user}'",
            path.display(),
            mode & 0o7777
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_port_validator_for_every_use() {
        let listen = PortUse::Listen { default: 2881 };
        let cases = [
            (0, listen, Ok(2881)),
            (1025, listen, Ok(1025)),
            (65535, listen, Ok(65535)),
            (1024, listen, Err("from 1025 to 65535")),
            (65536, listen, Err("from 1025 to 65535")),
            (80, PortUse::Connect, Ok(80)),
            (1, PortUse::Connect, Ok(1)),
            (0, PortUse::Connect, Err("from 1 to 65535")),
            (70000, PortUse::Connect, Err("from 1 to 65535")),
        ];
        for (value, usage, want) in cases {
            let got = port("p", value, usage).map_err(|e| e.to_string());
            match (got, want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w, "{value}"),
                (Err(g), Err(w)) => assert!(g.contains(w) && g.contains(&value.to_string()), "{g}"),
                (g, w) => panic!("{value} {usage:?}: got {g:?}, want {w:?}"),
            }
        }
    }

    fn raw(home: &str) -> RawSpec {
        RawSpec {
            home_path: home.into(),
            ..RawSpec::default()
        }
    }

    #[test]
    fn defaults_follow_the_home_path() {
        let s = ObserverSpec::resolve(
            raw("/home/admin/oceanbase/"),
            &Policy {
                run_as_root: true,
                ..Policy::default()
            },
        )
        .unwrap();
        assert_eq!(s.home_path, PathBuf::from("/home/admin/oceanbase"));
        assert_eq!(
            s.binary,
            PathBuf::from("/home/admin/oceanbase/bin/observer")
        );
        assert_eq!(
            s.pid_file,
            PathBuf::from("/home/admin/oceanbase/run/observer.pid")
        );
        assert_eq!(s.data_dir, PathBuf::from("/home/admin/oceanbase/store"));
        assert_eq!((s.mysql_port, s.rpc_port), (2881, 2882));
        assert_eq!(
            s.environment()["LD_LIBRARY_PATH"],
            "/home/admin/oceanbase/lib:"
        );
    }

    #[test]
    fn bad_fields_are_named() {
        let p = Policy {
            run_as_root: true,
            ..Policy::default()
        };
        let cases: Vec<(RawSpec, &str)> = vec![
            (raw("ob1"), "observer.home_path 'ob1' is not absolute"),
            (raw("/a/../b"), "contains '..'"),
            (
                RawSpec {
                    mysql_port: 80,
                    ..raw("/a")
                },
                "observer.mysql_port 80",
            ),
            (
                RawSpec {
                    rpc_port: 2881,
                    ..raw("/a")
                },
                "both 2881",
            ),
            (
                RawSpec {
                    binary: "bin/observer".into(),
                    ..raw("/a")
                },
                "observer.binary",
            ),
            (
                RawSpec {
                    user: "no-such-user-x".into(),
                    ..raw("/a")
                },
                "observer.user",
            ),
            (
                RawSpec {
                    ip: "10.0.0".into(),
                    ..raw("/a")
                },
                "observer.ip",
            ),
            (
                RawSpec {
                    zone: "z 1".into(),
                    ..raw("/a")
                },
                "observer.zone",
            ),
        ];
        for (r, want) in cases {
            let e = ObserverSpec::resolve(r, &p).unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} lacks {want:?}");
        }
        let mut params = BTreeMap::new();
        params.insert("memory_limit".to_string(), "8G,9G".to_string());
        let e = ObserverSpec::resolve(
            RawSpec {
                parameters: params,
                ..raw("/a")
            },
            &p,
        )
        .unwrap_err();
        assert!(e.to_string().contains("unquoted ','"));
        let mut env = BTreeMap::new();
        env.insert("NOTIFY_SOCKET".to_string(), "/x".to_string());
        let e = ObserverSpec::resolve(RawSpec { env, ..raw("/a") }, &p).unwrap_err();
        assert!(e.to_string().contains("NOTIFY_SOCKET"));
    }

    #[test]
    fn allowed_roots_deny_with_permission_denied() {
        let p = Policy {
            allowed_roots: vec![PathBuf::from("/home/admin")],
            run_as_root: true,
            ..Policy::default()
        };
        assert!(ObserverSpec::resolve(raw("/home/admin/ob"), &p).is_ok());
        let e = ObserverSpec::resolve(raw("/home/adminx/ob"), &p).unwrap_err();
        assert!(matches!(e, SpecError::Denied(_)), "{e:?}");
        let e = ObserverSpec::resolve(
            RawSpec {
                binary: "/usr/bin/true".into(),
                ..raw("/home/admin/ob")
            },
            &p,
        )
        .unwrap_err();
        assert!(
            matches!(e, SpecError::Denied(ref m) if m.contains("observer.binary")),
            "{e:?}"
        );
    }
}
