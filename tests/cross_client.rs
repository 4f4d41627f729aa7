//! The wire contract from independent gRPC implementations against the real
//! obhostd: Python's grpcio (stubs compiled from proto/ by grpcio-tools) and
//! Node's @grpc/grpc-js (proto/ loaded by @grpc/proto-loader). The Java
//! orchestrator's client is tests/java_client.rs.

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

/// A Java (or Go) orchestrator generates from the protos as shipped: every
/// file names its Go and Java packages, and the descriptors obhostd serves by
/// reflection carry them too.
#[tokio::test]
async fn the_protos_name_their_go_and_java_packages() {
    use prost::Message;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let d = Daemon::start();
    let mut client = ServerReflectionClient::new(d.channel().await);
    let reqs: Vec<ServerReflectionRequest> = [
        "obhost.v1.HostAgent",
        "obhost.v1.Step",
        "obhost.v1.ObserverSpec",
    ]
    .iter()
    .map(|symbol| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(symbol.to_string())),
    })
    .collect();
    let n = reqs.len();
    let mut stream = client
        .server_reflection_info(tokio_stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    let mut all = Vec::new();
    for _ in 0..n {
        let resp = stream.message().await.unwrap().unwrap();
        let Some(MessageResponse::FileDescriptorResponse(files)) = resp.message_response else {
            panic!("unexpected reflection answer: {resp:?}");
        };
        all.extend(files.file_descriptor_proto);
    }
    let mut ours = 0;
    for bytes in all {
        let file = prost_types::FileDescriptorProto::decode(bytes.as_slice()).unwrap();
        if file.package() != "obhost.v1" {
            continue;
        }
        ours += 1;
        let options = file.options.clone().unwrap_or_default();
        assert_eq!(
            options.go_package(),
            "obhost.dev/api/obhost/v1;obhostv1",
            "{}",
            file.name()
        );
        assert_eq!(
            options.java_package(),
            "dev.obhost.api.v1",
            "{}",
            file.name()
        );
        assert!(options.java_multiple_files(), "{}", file.name());
    }
    assert!(ours >= 3, "host_agent.proto, steps.proto, observer.proto");
}

/// The protos as shipped pass `buf lint` (STANDARD rules, minus the one
/// exception buf.yaml explains), so an orchestrator team that lints its
/// imports does not trip over ours. buf comes from npm (`.ci/run` installs it
/// under target/tools); outside CI a missing buf skips, saying so.
#[test]
fn the_protos_pass_buf_lint() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let local = root.join("target/tools/node_modules/.bin/buf");
    let buf = if local.exists() {
        local.into_os_string()
    } else {
        "buf".into()
    };
    let out = match Command::new(&buf).arg("lint").current_dir(root).output() {
        Ok(out) => out,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!(
                "SKIPPED: buf not runnable ({e}); `npm install --prefix target/tools @bufbuild/buf`"
            );
            return;
        }
        Err(e) => panic!("buf is missing in CI ({e}): .ci/run must install it"),
    };
    assert!(
        out.status.success(),
        "buf lint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Python's grpcio-reflection, which asks reflection v1alpha as grpcurl's
/// older releases do, lists the services and resolves the HostAgent's methods
/// and the Step message from what obhostd serves, with no proto file.
#[test]
fn python_grpcio_reflection_lists_and_resolves_the_services() {
    let has = Command::new("python3")
        .args(["-c", "import grpc_reflection"])
        .status()
        .is_ok_and(|s| s.success());
    if !has {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install grpcio-reflection"
        );
        eprintln!("SKIPPED: pip install grpcio-reflection");
        return;
    }
    let d = Daemon::start();
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("python3")
        .arg(format!("{root}/tests/clients/python_reflection.py"))
        .arg(&d.addr)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let services: Vec<&str> = doc["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    assert!(services.contains(&"obhost.v1.HostAgent"), "{doc}");
    assert!(services.contains(&"grpc.health.v1.Health"), "{doc}");
    assert!(
        !services.iter().any(|s| s.contains("StepReporter")),
        "{doc}"
    );
    let methods = doc["methods"].as_array().unwrap();
    for m in [
        "Prepare",
        "StartObserver",
        "WaitObserverActive",
        "StartAgentService",
        "WatchSteps",
    ] {
        assert!(methods.iter().any(|x| x == m), "{m} missing: {doc}");
    }
    assert!(
        doc["step_fields"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "revision"),
        "{doc}"
    );
}

/// Node's @grpc/grpc-js on both transports: the Unix socket with its default
/// options, and TCP with a bearer token. `.ci/run` installs it from the npm
/// registry under target/tools; elsewhere a missing one skips, saying so.
#[test]
fn node_grpc_js_client_speaks_the_contract_on_both_transports() {
    let root = env!("CARGO_MANIFEST_DIR");
    let modules = format!("{root}/target/tools/node_modules");
    let has_node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_node || !std::path::Path::new(&format!("{modules}/@grpc/grpc-js")).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install node and @grpc/grpc-js (see .ci/run)"
        );
        eprintln!(
            "SKIPPED: no node or @grpc/grpc-js (npm install --prefix target/tools @grpc/grpc-js @grpc/proto-loader)"
        );
        return;
    }
    let node = |addr: &str, home: &Home, token: Option<&str>| {
        let out = Command::new("node")
            .arg(format!("{root}/tests/clients/node_client.js"))
            .arg(format!("{root}/proto"))
            .arg(addr)
            .arg(home.path())
            .arg(home.mysql_port.to_string())
            .args(token)
            .env("NODE_PATH", &modules)
            .env("OBHOST_FAKE_OBSERVER", FAKE_OBSERVER)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{addr}: {text}");
        text
    };
    let d = Daemon::start();
    let home = Home::new();
    assert!(node(&d.addr, &home, None).contains("node unix: all checks passed"));

    let dir = tempfile::tempdir().unwrap();
    let token = "node-client-token-0123456789";
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token).unwrap();
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let tcp = Daemon::start_with(Options {
        config: format!("[auth]\ntoken_file = \"{}\"\n", token_file.display()),
        listen: Some(vec!["127.0.0.1:0".into()]),
        ..Options::default()
    });
    let home = Home::new();
    assert!(node(&tcp.addr, &home, Some(token)).contains("node tcp: all checks passed"));
}
