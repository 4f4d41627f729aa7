//! The audit trail: every accepted mutating call at INFO with who made it and
//! what it touches, every refusal at WARN with the reason, never a secret.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::*;
use obhost::proto::v1 as pb;
use serde_json::Value;

/// The audit events obhostd logged so far (JSON log lines with audit = true;
/// obhostd's JSON logs put an event's fields at the top level).
fn audit_events(d: &Daemon) -> Vec<Value> {
    d.log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["audit"] == true)
        .collect()
}

/// Waits for the audit event of `call` on `step` that says `message`.
async fn event(d: &Daemon, call: &str, step: &str, message: &str) -> Value {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(e) = audit_events(d)
            .into_iter()
            .find(|e| e["call"] == call && e["step"] == step && e["message"] == message)
        {
            return e;
        }
        assert!(
            Instant::now() < end,
            "no audit event '{message}' for {call} {step}:\n{}",
            d.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn calls_over_the_socket_are_logged_with_the_callers_uid() {
    let d = Daemon::start();
    let me = format!("uid 0 (pid {})", std::process::id());
    let home = Home::new();
    let mut client = d.client().await;

    let prepare = |id: &str, create_dirs: bool| pb::PrepareRequest {
        meta: Some(meta(id)),
        observer: Some(home.spec()),
        create_dirs,
        ..Default::default()
    };
    client.prepare(prepare("audit-prep", true)).await.unwrap();
    let e = event(&d, "Prepare", "audit-prep", "accepted").await;
    assert_eq!(e["level"], "INFO");
    assert_eq!(e["caller"], me);
    assert_eq!(e["kind"], "prepare");
    assert_eq!(e["home"], home.path().display().to_string());
    // The resolved user: the request left it to the default.
    assert_eq!(e["user"], "root");

    // The same id with other parameters: refused, and said why.
    let err = client
        .prepare(prepare("audit-prep", false))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    let e = event(&d, "Prepare", "audit-prep", "refused").await;
    assert_eq!(e["level"], "WARN");
    assert_eq!(e["code"], "AlreadyExists");
    assert!(
        e["reason"].as_str().unwrap().contains("already exists"),
        "{e}"
    );

    // Only checked (validate_only): said so, never "accepted".
    let mut dry = prepare("audit-dry", true);
    dry.meta.as_mut().unwrap().validate_only = true;
    client.prepare(dry).await.unwrap();
    let e = event(
        &d,
        "Prepare",
        "audit-dry",
        "validated; nothing started (validate_only)",
    )
    .await;
    assert_eq!(e["level"], "INFO");
    assert_eq!(e["caller"], me);
    assert!(
        !audit_events(&d)
            .iter()
            .any(|e| e["step"] == "audit-dry" && e["message"] == "accepted")
    );

    // Refused before it was understood: the trail still says what was asked.
    let asked = "/nonexistent/obhost-audit-home";
    let err = client
        .start_observer(pb::StartObserverRequest {
            meta: Some(meta("audit-refused")),
            observer: Some(pb::ObserverSpec {
                home_path: asked.into(),
                user: "nobody".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let e = event(&d, "StartObserver", "audit-refused", "refused").await;
    assert_eq!(e["kind"], "start_observer", "{e}");
    assert_eq!(e["home"], asked, "{e}");
    assert_eq!(e["user"], "nobody", "{e}");

    run_test_step(&d, test_step("audit-long", 30.0)).await;
    client
        .cancel_step(pb::CancelStepRequest {
            step_id: "audit-long".into(),
        })
        .await
        .unwrap();
    event(&d, "CancelStep", "audit-long", "accepted").await;
    client
        .retry_step(pb::RetryStepRequest {
            step_id: "audit-long".into(),
        })
        .await
        .unwrap();
    event(&d, "RetryStep", "audit-long", "accepted").await;
    let err = client
        .retry_step(pb::RetryStepRequest {
            step_id: "no-such-step".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    event(&d, "RetryStep", "no-such-step", "refused").await;

    // A password travels with WaitObserverActive; the trail has the call, not it.
    let password = "audit-secret-pw-8d1f";
    client
        .wait_observer_active(pb::WaitObserverActiveRequest {
            meta: Some(meta("audit-wait")),
            home_path: home.path().display().to_string(),
            mysql_port: free_port() as u32,
            user: "root".into(),
            password: password.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    event(&d, "WaitObserverActive", "audit-wait", "accepted").await;
    assert!(!d.log_text().contains(password));
}

#[tokio::test]
async fn a_token_holder_is_named_by_its_address() {
    let tmp = tempfile::tempdir().unwrap();
    let token = tmp.path().join("token");
    std::fs::write(&token, "audit-token-0123456789").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let d = Daemon::start_with(Options {
        config: format!("[auth]\ntoken_file = \"{}\"\n", token.display()),
        listen: Some(vec!["127.0.0.1:0".into()]),
        ..Options::default()
    });
    let mut client = d.client().await;
    let mut req = tonic::Request::new(pb::CancelStepRequest {
        step_id: "not-there".into(),
    });
    req.metadata_mut().insert(
        "authorization",
        "Bearer audit-token-0123456789".parse().unwrap(),
    );
    let err = client.cancel_step(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let e = event(&d, "CancelStep", "not-there", "refused").await;
    let caller = e["caller"].as_str().unwrap();
    assert!(caller.starts_with("token holder at 127.0.0.1:"), "{caller}");

    // A wrong token is turned away before the call, and that is audited too.
    let mut req = tonic::Request::new(pb::CancelStepRequest {
        step_id: "not-there".into(),
    });
    req.metadata_mut()
        .insert("authorization", "Bearer wrong-token-guess".parse().unwrap());
    let err = client.cancel_step(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let refused = audit_events(&d)
            .into_iter()
            .find(|e| e["code"] == "Unauthenticated" && e["level"] == "WARN");
        if let Some(e) = refused {
            assert!(
                e["reason"].as_str().unwrap().contains("does not match"),
                "{e}"
            );
            break;
        }
        assert!(Instant::now() < end, "{}", d.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!d.log_text().contains("audit-token-0123456789"));
    assert!(!d.log_text().contains("wrong-token-guess"));
}
