//! The step engine through the real daemon: idempotency, deadlines, cancel,
//! retry, validation of ids, paging and retention.

mod common;

use std::time::Duration;

use common::*;
use obhost::proto::v1 as pb;
use tonic::Code;

#[tokio::test]
async fn same_id_same_params_returns_the_existing_step_and_runs_nothing_new() {
    let d = Daemon::start();
    let first = run_test_step(&d, test_step("idem-1", 0.3)).await;
    let again = run_test_step(&d, test_step("idem-1", 0.3)).await;
    assert_eq!(first.created_at, again.created_at);
    assert_eq!(again.attempt, 1);
    let done = wait_terminal(&d, "idem-1").await;
    assert_eq!(done.state(), pb::StepState::Succeeded);
    // After it finished, the same request still answers with the same record.
    let after = run_test_step(&d, test_step("idem-1", 0.3)).await;
    assert_eq!(
        after.revision, done.revision,
        "a repeat must not change the record"
    );
    assert_eq!(after.state(), pb::StepState::Succeeded);
    let count = d
        .log_text()
        .lines()
        .filter(|l| l.contains("step finished") && l.contains("idem-1"))
        .count();
    assert_eq!(count, 1, "the step ran more than once:\n{}", d.log_text());
}

#[tokio::test]
async fn same_id_different_params_is_already_exists() {
    let d = Daemon::start();
    run_test_step(&d, test_step("idem-2", 5.0)).await;
    let err = d
        .testing()
        .await
        .run_test_step(test_step("idem-2", 6.0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert!(
        err.message().contains("idem-2") && err.message().contains("parameters"),
        "{}",
        err.message()
    );

    let mut other_timeout = test_step("idem-2", 5.0);
    other_timeout.meta.as_mut().unwrap().timeout = Some(secs(300.0));
    let err = d
        .testing()
        .await
        .run_test_step(other_timeout)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains("timeout"), "{}", err.message());
}

#[tokio::test]
async fn a_step_past_its_deadline_is_timed_out() {
    let d = Daemon::start();
    let mut req = test_step("slow-1", 30.0);
    req.meta.as_mut().unwrap().timeout = Some(secs(0.5));
    req.progress_updates = 3;
    let started = std::time::Instant::now();
    run_test_step(&d, req).await;
    let s = wait_terminal(&d, "slow-1").await;
    assert_eq!(s.state(), pb::StepState::TimedOut);
    let err = s.error.expect("error");
    assert_eq!(err.code, "DEADLINE_EXCEEDED");
    assert!(err.message.contains("500ms"), "{}", err.message);
    assert!(
        err.message.contains("working 1/3"),
        "says what it was doing: {}",
        err.message
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(s.finished_at.is_some());
}

#[tokio::test]
async fn every_step_has_a_deadline_even_when_none_is_given() {
    let d = Daemon::start();
    let s = run_test_step(&d, test_step("dl-default", 0.0)).await;
    let created = s.created_at.unwrap();
    let deadline = s.deadline.unwrap();
    assert_eq!(
        deadline.seconds - created.seconds,
        60,
        "test kind default is 60s"
    );
    assert_eq!(s.timeout.unwrap().seconds, 60);
}

#[tokio::test]
async fn cancel_stops_a_running_step_and_leaves_terminal_ones_alone() {
    let d = Daemon::start();
    run_test_step(&d, test_step("cancel-1", 30.0)).await;
    wait_for(&d, "cancel-1", Duration::from_secs(5), |s| {
        s.state() == pb::StepState::Running
    })
    .await;
    let mut c = d.client().await;
    let s = c
        .cancel_step(pb::CancelStepRequest {
            step_id: "cancel-1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .step
        .unwrap();
    assert_eq!(s.state(), pb::StepState::Cancelled);
    assert_eq!(s.error.as_ref().unwrap().code, "CANCELLED");
    // The driver must not overwrite CANCELLED later. A fixed time on purpose:
    // the driver's end leaves no trace to wait for when it is right, and a
    // wrong write would follow the cancel within moments.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later = get_step(&d, "cancel-1").await;
    assert_eq!(later.state(), pb::StepState::Cancelled);
    assert_eq!(later.revision, s.revision);

    run_test_step(&d, test_step("cancel-2", 0.0)).await;
    let done = wait_terminal(&d, "cancel-2").await;
    let again = c
        .cancel_step(pb::CancelStepRequest {
            step_id: "cancel-2".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .step
        .unwrap();
    assert_eq!(again.state(), pb::StepState::Succeeded);
    assert_eq!(again.revision, done.revision);

    let err = c
        .cancel_step(pb::CancelStepRequest {
            step_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn retry_runs_a_failed_step_again_with_the_next_attempt() {
    let d = Daemon::start();
    let mut req = test_step("retry-1", 0.1);
    req.fail_code = "PROBE_FAILED".into();
    run_test_step(&d, req).await;
    let failed = wait_terminal(&d, "retry-1").await;
    assert_eq!(failed.state(), pb::StepState::Failed);
    assert_eq!(failed.error.as_ref().unwrap().code, "PROBE_FAILED");
    assert_eq!(failed.attempt, 1);

    let mut c = d.client().await;
    let retried = c
        .retry_step(pb::RetryStepRequest {
            step_id: "retry-1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .step
        .unwrap();
    assert_eq!(retried.attempt, 2);
    assert!(!is_terminal(&retried));
    assert!(retried.error.is_none());
    let done = wait_terminal(&d, "retry-1").await;
    assert_eq!(done.attempt, 2);
    // Same parameters: it fails the same way again.
    assert_eq!(done.error.as_ref().unwrap().code, "PROBE_FAILED");

    // A succeeded step cannot be retried.
    run_test_step(&d, test_step("retry-2", 0.0)).await;
    wait_terminal(&d, "retry-2").await;
    let err = c
        .retry_step(pb::RetryStepRequest {
            step_id: "retry-2".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("SUCCEEDED"), "{}", err.message());
}

#[tokio::test]
async fn retry_after_cancel_runs_to_success() {
    let d = Daemon::start();
    run_test_step(&d, test_step("retry-3", 0.5)).await;
    d.client()
        .await
        .cancel_step(pb::CancelStepRequest {
            step_id: "retry-3".into(),
        })
        .await
        .unwrap();
    d.client()
        .await
        .retry_step(pb::RetryStepRequest {
            step_id: "retry-3".into(),
        })
        .await
        .unwrap();
    let s = wait_terminal(&d, "retry-3").await;
    assert_eq!(s.state(), pb::StepState::Succeeded);
    assert_eq!(s.attempt, 2);
}

#[tokio::test]
async fn bad_step_ids_are_invalid_argument() {
    let d = Daemon::start();
    let long = "x".repeat(129);
    for bad in ["", long.as_str(), "../x", "has space", "a/b"] {
        let err = d
            .testing()
            .await
            .run_test_step(test_step(bad, 0.0))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}: {err:?}");
        assert!(
            err.message().contains("step_id"),
            "{bad:?}: {}",
            err.message()
        );
        let err = d
            .client()
            .await
            .get_step(pb::GetStepRequest {
                step_id: bad.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "GetStep {bad:?}");
    }
    // Also on the RPCs whose kinds come later: meta is validated all the same.
    let err = d
        .client()
        .await
        .stop_observer(pb::StopObserverRequest {
            meta: Some(meta("../x")),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = d
        .client()
        .await
        .prepare(pb::PrepareRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("meta"), "{}", err.message());
    // The longest valid id is fine.
    let ok = "y".repeat(128);
    run_test_step(&d, test_step(&ok, 0.0)).await;
}

#[tokio::test]
async fn list_pages_through_every_step_in_id_order() {
    let d = Daemon::start();
    for i in 0..25 {
        let mut req = test_step(&format!("list-{i:02}"), 0.0);
        req.meta.as_mut().unwrap().dag_id = if i % 2 == 0 {
            "even".into()
        } else {
            "odd".into()
        };
        run_test_step(&d, req).await;
    }
    let mut c = d.client().await;
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_steps(pb::ListStepsRequest {
                page_size: 10,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.steps.len() <= 10);
        seen.extend(page.steps.into_iter().map(|s| s.id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    let expected: Vec<String> = (0..25).map(|i| format!("list-{i:02}")).collect();
    assert_eq!(seen, expected);

    let even = c
        .list_steps(pb::ListStepsRequest {
            dag_id: "even".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(even.steps.len(), 13);
    assert!(even.steps.iter().all(|s| s.dag_id == "even"));

    let err = c
        .list_steps(pb::ListStepsRequest {
            page_token: "not-a-token".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn retention_bounds_the_store_and_keeps_running_steps() {
    let d = Daemon::start_with(Options {
        config: "[retention]\nmax_steps = 5\nprune_interval = \"200ms\"\n".into(),
        ..Options::default()
    });
    run_test_step(&d, test_step("keep-running", 30.0)).await;
    for i in 0..12 {
        run_test_step(&d, test_step(&format!("old-{i:02}"), 0.0)).await;
        wait_terminal(&d, &format!("old-{i:02}")).await;
    }
    // Pruned every 200 ms: wait for the store to be within the bound.
    let end = std::time::Instant::now() + Duration::from_secs(10);
    let list = loop {
        let list = list_steps(&d).await;
        if list.len() <= 5 {
            break list;
        }
        assert!(
            std::time::Instant::now() < end,
            "still {} steps after 10 s of pruning: {:?}",
            list.len(),
            list.iter().map(|s| s.id.as_str()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let ids: Vec<&str> = list.iter().map(|s| s.id.as_str()).collect();
    assert!(list.len() <= 5, "kept {ids:?}");
    assert!(
        ids.contains(&"keep-running"),
        "a running step was pruned: {ids:?}"
    );
    assert!(
        ids.contains(&"old-11"),
        "the newest finished step was pruned: {ids:?}"
    );
    assert!(!ids.contains(&"old-00"), "the oldest survived: {ids:?}");
}

/// A step that did not succeed is logged at WARN with its code; one that did
/// at INFO.
#[tokio::test]
async fn failures_are_logged_as_warnings_with_their_code() {
    let d = Daemon::start();
    let mut req = test_step("log-fail", 0.0);
    req.fail_code = "PROBE_FAILED".into();
    run_test_step(&d, req).await;
    run_test_step(&d, test_step("log-ok", 0.0)).await;
    wait_terminal(&d, "log-fail").await;
    wait_terminal(&d, "log-ok").await;
    let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let finished = |id: &str| -> Option<serde_json::Value> {
        d.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message"] == "step finished" && v["step"] == id)
    };
    while (finished("log-fail").is_none() || finished("log-ok").is_none())
        && std::time::Instant::now() < end
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let failed = finished("log-fail").expect("logged");
    assert_eq!(failed["level"], "WARN", "{failed}");
    assert_eq!(failed["code"], "PROBE_FAILED", "{failed}");
    assert_eq!(finished("log-ok").expect("logged")["level"], "INFO");
}

/// `meta.validate_only` runs every check a start makes and starts nothing: no
/// record, no directory, no process; a bad request gets the same error it
/// would get for real. (obhostctl start-observer checks its four steps this
/// way before the first one starts.)
#[tokio::test]
async fn validate_only_checks_every_kind_and_starts_nothing() {
    let d = Daemon::start();
    let home = Home::new();
    let dry = |id: &str| {
        Some(pb::StepMeta {
            step_id: id.into(),
            validate_only: true,
            ..Default::default()
        })
    };
    let mut c = d.client().await;
    let mut spec = home.spec();
    spec.parameters.insert("memory_limit".into(), "1G".into());

    let r = c
        .prepare(pb::PrepareRequest {
            meta: dry("v-prepare"),
            observer: Some(spec.clone()),
            create_dirs: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.into_inner().step, None);
    let r = c
        .start_observer(pb::StartObserverRequest {
            meta: dry("v-start"),
            observer: Some(spec.clone()),
        })
        .await
        .unwrap();
    assert_eq!(r.into_inner().step, None);
    let r = c
        .wait_observer_active(pb::WaitObserverActiveRequest {
            meta: dry("v-wait"),
            home_path: spec.home_path.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.into_inner().step, None);
    let agent = |argv0: &str| pb::StartAgentServiceRequest {
        meta: dry("v-agent"),
        service: Some(pb::start_agent_service_request::Service::Command(
            pb::ServiceCommand {
                argv: vec![argv0.into(), "-m".into(), "http.server".into()],
                cwd: home.path().display().to_string(),
                foreground: true,
                ..Default::default()
            },
        )),
        health: None,
    };
    let r = c
        .start_agent_service(agent("/usr/bin/python3"))
        .await
        .unwrap();
    assert_eq!(r.into_inner().step, None);
    let r = c
        .stop_observer(pb::StopObserverRequest {
            meta: dry("v-stop"),
            home_path: spec.home_path.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.into_inner().step, None);

    // Refused as for real: a relative program, a first start with no zone.
    let e = c.start_agent_service(agent("python3")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("command.argv[0]"), "{e:?}");
    let mut no_zone = spec.clone();
    no_zone.zone.clear();
    let e = c
        .prepare(pb::PrepareRequest {
            meta: dry("v-prepare-2"),
            observer: Some(no_zone),
            create_dirs: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // Nothing happened.
    assert!(list_steps(&d).await.is_empty());
    let e = c
        .get_step(pb::GetStepRequest {
            step_id: "v-prepare".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let made: Vec<_> = std::fs::read_dir(home.path()).unwrap().flatten().collect();
    assert!(made.is_empty(), "created {made:?}");
    assert!(home.processes().is_empty());

    // A different request under a known id is refused as for real.
    let done = run_steps_to_end(&d, "known", 1).await;
    let e = c
        .stop_observer(pb::StopObserverRequest {
            meta: dry(&done[0].id),
            home_path: spec.home_path.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
}
