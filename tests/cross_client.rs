//! The wire contract from an independent gRPC implementation: Python's grpcio
//! (with stubs compiled from proto/ by grpcio-tools) against the real obhostd.

mod common;

use std::process::Command;

use common::*;

#[test]
fn python_grpcio_client_speaks_the_contract() {
    let has_grpcio = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_grpcio {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install grpcio and grpcio-tools"
        );
        eprintln!(
            "SKIPPED: python3 grpcio/grpcio-tools not installed (pip install grpcio grpcio-tools)"
        );
        return;
    }
    let d = Daemon::start();
    let home = Home::new();
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("python3")
        .arg(format!("{root}/tests/clients/python_client.py"))
        .arg(&d.addr)
        .arg(format!("{root}/proto"))
        .arg(home.path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("all checks passed"), "{text}");
}
