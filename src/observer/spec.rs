//! What an observer is, as the daemon stores it: the request's ObserverSpec with
//! every default filled in and every field checked against the host's policy.
//!
//! Resolution happens before a step is accepted, so a bad request is rejected with
//! the field named and nothing is spawned. The resolved spec is the step's stored
//! parameters: what a retry or a restart runs again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bounds;
use crate::confined;
use crate::policy::{
    Policy, PortUse, SpecError, check_env, check_executable, check_root_paths, checked_file,
    checked_path, checked_program, invalid, name, port, resolve_user, same_path,
};
use crate::process::RunAs;

pub const DEFAULT_MYSQL_PORT: u16 = 2881;
pub const DEFAULT_RPC_PORT: u16 = 2882;

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

impl ObserverSpec {
    pub fn resolve(raw: RawSpec, policy: &Policy) -> Result<ObserverSpec, SpecError> {
        Self::resolve_as(raw, policy).map(|(spec, _)| spec)
    }

    /// [`resolve`](Self::resolve), with the user it resolved: the checks that
    /// follow (the binary executable by that user) use it rather than look
    /// the user up again.
    pub fn resolve_as(raw: RawSpec, policy: &Policy) -> Result<(ObserverSpec, RunAs), SpecError> {
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
        let spec = ObserverSpec {
            home_path: home,
            binary,
            user: user.name.clone(),
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
        };
        Ok((spec, user))
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
    pub fn check_binary(&self, user: &RunAs) -> Result<(), String> {
        check_executable(&self.binary, user)
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

/// A spec as resolution would make it for `home` and `user`, with every
/// default and no cluster identity (a restart's), for the step kinds' tests.
#[cfg(test)]
impl ObserverSpec {
    pub(crate) fn for_test(home: &Path, user: &str) -> ObserverSpec {
        ObserverSpec {
            home_path: home.to_path_buf(),
            binary: home.join("bin/observer"),
            user: user.into(),
            mysql_port: DEFAULT_MYSQL_PORT,
            rpc_port: DEFAULT_RPC_PORT,
            pid_file: home.join("run/observer.pid"),
            foreground: false,
            zone: String::new(),
            cluster_name: String::new(),
            cluster_id: 0,
            rootservice_list: String::new(),
            data_dir: home.join("store"),
            redo_dir: None,
            devname: String::new(),
            ip: String::new(),
            parameters: Default::default(),
            env: Default::default(),
            extra_args: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
