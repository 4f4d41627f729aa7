//! The wire contract from a Java orchestrator: OCP, the orchestrator obhostd
//! serves, is written in Java. `tests/clients/java/` is a client built from
//! Debian's packages only (grpc-java 1.41 with grpc-netty, protobuf-java,
//! protoc with grpc-java's plugin, the machine's JDK; no Maven Central): stubs
//! generated from proto/ (java_package dev.obhost.api.v1), run against the
//! real obhostd and the stand-in observer.
//!
//! Without a JDK or those packages these tests say SKIPPED with what to
//! install; under `CI` they fail instead (.ci/run installs them).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::tls::Ca;
use common::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The client's classpath, built once per test run; None (after saying why)
/// where it cannot be built.
fn java() -> Option<&'static str> {
    static BUILT: OnceLock<Result<String, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        for (tool, package) in [
            ("javac", "default-jdk-headless"),
            ("protoc", "protobuf-compiler"),
            (
                "/usr/bin/grpc_java_plugin",
                "protobuf-compiler-grpc-java-plugin",
            ),
            ("/usr/share/java/grpc-netty.jar", "libgrpc-java"),
            ("/usr/share/java/netty-codec-http2.jar", "libnetty-java"),
            (
                "/usr/share/java/netty-tcnative.jar",
                "libnetty-tcnative-java",
            ),
        ] {
            let found = if tool.starts_with('/') {
                Path::new(tool).exists()
            } else {
                Command::new("sh")
                    .args(["-c", &format!("command -v {tool}")])
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            };
            if !found {
                return Err(format!("no {tool} (apt install {package})"));
            }
        }
        let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("java-client");
        let _ = std::fs::remove_dir_all(&out_dir);
        let out = Command::new("sh")
            .arg(format!("{ROOT}/tests/clients/java/build.sh"))
            .arg(format!("{ROOT}/proto"))
            .arg(&out_dir)
            .output()
            .map_err(|e| format!("cannot run build.sh: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "building the Java client failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    match built {
        Ok(cp) => Some(cp),
        Err(why) => {
            assert!(std::env::var_os("CI").is_none(), "{why}");
            eprintln!("SKIPPED: {why}");
            None
        }
    }
}

fn native_dir() -> String {
    format!(
        "-Djava.library.path={}/java-client/native",
        env!("CARGO_TARGET_TMPDIR")
    )
}

fn run_java(cp: &str, args: &[&str]) -> Output {
    Command::new("java")
        .arg(native_dir())
        .arg("-cp")
        .arg(cp)
        .arg("ObhostJavaClient")
        .args(args)
        .env("OBHOST_FAKE_OBSERVER", FAKE_OBSERVER)
        .output()
        .expect("run java")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn secret(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// OCP's part of "Start OB server" from Java, over TCP with mTLS and a bearer
/// token: Prepare, StartObserver, WaitObserverActive and StartAgentService,
/// followed to the end with WatchSteps; a replayed step id gives the same
/// step; a bad request is refused with its message.
#[test]
fn java_runs_the_four_host_steps_over_mtls_with_a_token() {
    let Some(cp) = java() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let ca = Ca::new("obhost java test ca");
    let (server_cert, server_key) = ca.leaf("obhostd", &["localhost"], false);
    let (client_cert, client_key) = ca.leaf("ocp.example", &["ocp.example"], false);
    std::fs::write(p("ca.pem"), ca.pem()).unwrap();
    std::fs::write(p("server.pem"), server_cert).unwrap();
    secret(&p("server.key"), &server_key);
    std::fs::write(p("client.pem"), client_cert).unwrap();
    secret(&p("client.key"), &client_key);
    let token = "java-orchestrator-token-0123456789";
    secret(&p("token"), token);
    let d = Daemon::start_with(Options {
        config: format!(
            "[auth]\ntoken_file = \"{}\"\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\nallowed_clients = [\"ocp.example\"]\n",
            p("token").display(),
            p("server.pem").display(),
            p("server.key").display(),
            p("ca.pem").display(),
        ),
        listen: Some(vec!["127.0.0.1:0".into()]),
        ..Options::default()
    });
    let home = Home::new();
    let agent_port = free_port();
    let out = run_java(
        cp,
        &[
            "tcp",
            &d.addr,
            &p("ca.pem").display().to_string(),
            &p("client.pem").display().to_string(),
            &p("client.key").display().to_string(),
            token,
            &home.path().display().to_string(),
            &home.mysql_port.to_string(),
            &agent_port.to_string(),
        ],
    );
    let said = text(&out);
    // The agent it started is this test's to end.
    if let Some(pid) = said
        .lines()
        .find_map(|l| l.strip_prefix("agent pid "))
        .and_then(|p| p.trim().parse::<i32>().ok())
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(out.status.success(), "{said}");
    assert!(said.contains("java tcp: all checks passed"), "{said}");
    assert!(
        said.contains("refused: ") && said.contains("home_path"),
        "{said}"
    );
    assert!(!d.log_text().contains(token), "the token reached the log");
}

/// A StepReporter written in Java receives obhostd's pushes: every step's
/// end, each batch continuing from the last acknowledged revision.
#[test]
fn a_java_step_reporter_receives_the_pushes() {
    let Some(cp) = java() else {
        return;
    };
    // Plain text is allowed only to a loopback port only root can bind.
    let port = (700..1000)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free privileged port");
    let mut sink = Command::new("java")
        .arg(native_dir())
        .arg("-cp")
        .arg(cp)
        .args(["ObhostJavaClient", "sink", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("java sink");
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<serde_json::Value>::new()));
    {
        let lines = lines.clone();
        let stdout = sink.stdout.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(v) = serde_json::from_str(&l) {
                    lines.lock().unwrap().push(v);
                }
            }
        });
    }
    let end = Instant::now() + Duration::from_secs(30);
    while !lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.get("listening").is_some())
    {
        assert!(Instant::now() < end, "the Java sink never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    let d = Daemon::start_with(Options {
        config: format!(
            "[report]\nendpoint = \"http://127.0.0.1:{port}\"\nagent_id = \"java-agent\"\n"
        ),
        ..Options::default()
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ids: Vec<String> = (0..5).map(|i| format!("pushed-{i}")).collect();
    rt.block_on(async {
        for id in &ids {
            run_test_step(&d, test_step(id, 0.0)).await;
        }
    });
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let got = lines.lock().unwrap().clone();
        let ended: Vec<&str> = got
            .iter()
            .filter(|l| l["state"] == "STEP_STATE_SUCCEEDED" && l["agent_id"] == "java-agent")
            .filter_map(|l| l["id"].as_str())
            .collect();
        if ids.iter().all(|id| ended.contains(&id.as_str())) {
            break;
        }
        assert!(Instant::now() < end, "the Java sink missed pushes: {got:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(d);
    let _ = sink.kill();
    let _ = sink.wait();
}

/// Over the Unix socket, grpc-java needs netty's native epoll transport;
/// Debian's netty 4.1.48 ships its classes without the native library, so
/// the test says so (the client prints why) instead of passing silently.
#[test]
fn java_over_the_unix_socket() {
    let Some(cp) = java() else {
        return;
    };
    let d = Daemon::start();
    let socket = d.addr.strip_prefix("unix:").unwrap_or(&d.addr).to_string();
    let out = run_java(cp, &["unix", &socket]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    if let Some(why) = said.lines().find(|l| l.starts_with("SKIPPED:")) {
        eprintln!("{why}");
        assert!(said.contains("netty_transport_native_epoll"), "{said}");
        return;
    }
    assert!(said.contains("java unix: all checks passed"), "{said}");
}
