//! The files an operator installs: the systemd unit passes `systemd-analyze
//! verify` and keeps the settings the design depends on; the example config is
//! accepted by the real daemon.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const UNIT: &str = include_str!("../systemd/obhostd.service");

/// Outside CI a missing tool skips with a visible message; in CI it fails.
fn require_tool(name: &str) -> bool {
    if Command::new(name).arg("--version").output().is_ok() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{name} is missing in CI: .ci/run must install it");
    }
    eprintln!("SKIPPED: {name} not installed");
    false
}

#[test]
fn the_unit_verifies_and_keeps_what_the_design_needs() {
    for line in [
        "Type=notify",
        "KillMode=process",
        "Restart=on-failure",
        "WatchdogSec=",
        "StateDirectory=obhostd",
    ] {
        assert!(
            UNIT.lines().any(|l| l.starts_with(line)),
            "unit lacks {line}"
        );
    }
    // A private /tmp would vanish under observers that outlive the daemon.
    assert!(!UNIT.lines().any(|l| l.starts_with("PrivateTmp=yes")));
    if !require_tool("systemd-analyze") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let unit = tmp.path().join("obhostd.service");
    std::fs::write(&unit, UNIT.replace("/usr/local/bin/obhostd", OBHOSTD)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("obhostd.service"))
        .collect();
    assert!(
        ours.is_empty(),
        "warnings about the unit:\n{}",
        ours.join("\n")
    );
}

#[tokio::test]
async fn the_example_config_runs() {
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/obhostd.toml"))
            .unwrap();
    // The test harness overrides listen and state_dir with flags, as an operator may.
    let d = Daemon::start_with(Options {
        config: example,
        ..Options::default()
    });
    d.client()
        .await
        .list_steps(obhost::proto::v1::ListStepsRequest::default())
        .await
        .unwrap();
}
