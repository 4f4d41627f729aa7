//! The host's policy: which paths, users and programs a request may name.
//!
//! Every step kind that runs something on the host (the observer's, the OCP
//! agent's) is judged by these same rules, from `[policy]`-like settings in
//! obhostd's config: `allowed_roots`, `allowed_users`, `default_user`,
//! `run_as_root`. A path is judged by where it leads (every link resolved),
//! then only ever used without following links (see [`crate::confined`]); a
//! user must exist, be allowed, and be root only where the config says so.
//!
//! A refusal is a [`SpecError`]: INVALID_ARGUMENT when the value itself is
//! wrong, PERMISSION_DENIED when it is fine but the policy forbids it. These
//! checks resolve paths and look users up, so they block: callers run them on
//! the blocking pool.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use crate::process::{Limits, RunAs};
use crate::{bounds, confined};

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

/// A rejected field: INVALID_ARGUMENT, or PERMISSION_DENIED when the value is
/// fine but the host's policy forbids it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Denied(String),
}

pub(crate) fn invalid(m: String) -> SpecError {
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
pub(crate) fn name(field: &str, value: &str) -> Result<(), SpecError> {
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

/// Whether `user` may execute `path`: regular file with an x bit for the user's
/// uid, one of its groups, or others (root: any x bit).
pub fn check_executable(path: &Path, who: &RunAs) -> Result<(), String> {
    let meta = confined::canonical(path)
        .and_then(|real| confined::metadata(&real))
        .map_err(|e| format!("'{}' cannot be used: {e}", path.display()))?;
    if meta.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(format!("'{}' is not a regular file", path.display()));
    }
    let mode = meta.st_mode;
    let user = &who.name;
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
}
