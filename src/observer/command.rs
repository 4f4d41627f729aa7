//! The observer's command line, built as OceanBase's deployer (OBD) builds it:
//!
//! `[-r rs_list] -p mysql_port -P rpc_port -z zone [-N] -n cluster_name
//!  -c cluster_id -d data_dir [-i devname] -I ip -o k=v,...`
//!
//! each flag only when set. A restart (etc/observer.config.bin exists) needs only
//! `-p`: the observer reads everything else from its saved configuration.
//! `extra_args` always come last.

use super::spec::ObserverSpec;

pub fn args(spec: &ObserverSpec) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let flag = |a: &mut Vec<String>, f: &str, v: String| {
        a.push(f.to_string());
        a.push(v);
    };
    if spec.is_restart() {
        flag(&mut a, "-p", spec.mysql_port.to_string());
        if spec.foreground {
            a.push("-N".into());
        }
    } else {
        if !spec.rootservice_list.is_empty() {
            flag(&mut a, "-r", spec.rootservice_list.clone());
        }
        flag(&mut a, "-p", spec.mysql_port.to_string());
        flag(&mut a, "-P", spec.rpc_port.to_string());
        if !spec.zone.is_empty() {
            flag(&mut a, "-z", spec.zone.clone());
        }
        if spec.foreground {
            a.push("-N".into());
        }
        if !spec.cluster_name.is_empty() {
            flag(&mut a, "-n", spec.cluster_name.clone());
        }
        if spec.cluster_id != 0 {
            flag(&mut a, "-c", spec.cluster_id.to_string());
        }
        flag(&mut a, "-d", spec.data_dir.display().to_string());
        if !spec.devname.is_empty() {
            flag(&mut a, "-i", spec.devname.clone());
        }
        if !spec.ip.is_empty() {
            flag(&mut a, "-I", spec.ip.clone());
        }
        if !spec.parameters.is_empty() {
            let opts: Vec<String> = spec
                .parameters
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            flag(&mut a, "-o", opts.join(","));
        }
    }
    a.extend(spec.extra_args.iter().cloned());
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observer::spec::RawSpec;
    use crate::policy::{Policy, SpecError};

    /// The tests' homes are root's temp dirs: their observers run as root.
    fn resolve(raw: RawSpec) -> Result<ObserverSpec, SpecError> {
        let policy = Policy {
            run_as_root: true,
            ..Policy::default()
        };
        ObserverSpec::resolve(raw, &policy)
    }

    #[test]
    fn first_start_follows_obds_order_and_skips_unset_flags() {
        let dir = tempfile::tempdir().unwrap();
        let mut params = std::collections::BTreeMap::new();
        params.insert("memory_limit".into(), "8G".into());
        params.insert("cpu_count".into(), "16".into());
        let raw = RawSpec {
            home_path: dir.path().display().to_string(),
            zone: "zone1".into(),
            cluster_name: "obcluster".into(),
            cluster_id: 7,
            rootservice_list: "10.0.0.1:2882:2881".into(),
            ip: "10.0.0.1".into(),
            parameters: params,
            foreground: true,
            extra_args: vec!["--x".into()],
            ..RawSpec::default()
        };
        let spec = resolve(raw).unwrap();
        let data = format!("{}/store", dir.path().display());
        assert_eq!(
            args(&spec),
            [
                "-r",
                "10.0.0.1:2882:2881",
                "-p",
                "2881",
                "-P",
                "2882",
                "-z",
                "zone1",
                "-N",
                "-n",
                "obcluster",
                "-c",
                "7",
                "-d",
                &data,
                "-I",
                "10.0.0.1",
                "-o",
                "cpu_count=16,memory_limit=8G",
                "--x"
            ]
        );
    }

    #[test]
    fn restart_needs_only_the_mysql_port() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/observer.config.bin"), b"x").unwrap();
        let raw = RawSpec {
            home_path: dir.path().display().to_string(),
            mysql_port: 3881,
            zone: "zone1".into(),
            ..RawSpec::default()
        };
        let spec = resolve(raw).unwrap();
        assert!(spec.check_first_start().is_ok());
        assert_eq!(args(&spec), ["-p", "3881"]);
    }

    #[test]
    fn first_start_without_cluster_identity_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let raw = RawSpec {
            home_path: dir.path().display().to_string(),
            ..RawSpec::default()
        };
        let spec = resolve(raw).unwrap();
        let e = spec.check_first_start().unwrap_err().to_string();
        assert!(
            e.contains("observer.zone, observer.cluster_name, observer.cluster_id"),
            "{e}"
        );
    }
}
