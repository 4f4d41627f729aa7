//! WatchSteps: snapshot then changes in revision order, resume without gaps, and a
//! slow subscriber that neither blocks the engine nor other watchers.

mod common;

use std::time::{Duration, Instant};

use common::*;
use obhost::proto::v1 as pb;
use tonic::Code;

async fn watch(d: &Daemon, req: pb::WatchStepsRequest) -> tonic::Streaming<pb::WatchStepsResponse> {
    d.client()
        .await
        .watch_steps(req)
        .await
        .expect("WatchSteps")
        .into_inner()
}

async fn next(s: &mut tonic::Streaming<pb::WatchStepsResponse>) -> pb::Step {
    tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .expect("watch went quiet")
        .expect("watch failed")
        .expect("watch ended")
        .step
        .expect("step")
}

#[tokio::test]
async fn current_records_first_then_changes_in_revision_order() {
    let d = Daemon::start();
    run_test_step(&d, test_step("w-a", 0.0)).await;
    wait_terminal(&d, "w-a").await;
    let mut s = watch(&d, pb::WatchStepsRequest::default()).await;
    let first = next(&mut s).await;
    assert_eq!(first.id, "w-a");
    assert_eq!(
        first.state(),
        pb::StepState::Succeeded,
        "snapshot is the current record"
    );

    let mut req = test_step("w-b", 0.2);
    req.progress_updates = 2;
    run_test_step(&d, req).await;
    let mut last_rev = first.revision;
    let mut states = Vec::new();
    loop {
        let step = next(&mut s).await;
        assert!(
            step.revision > last_rev,
            "revisions must grow: {} after {last_rev}",
            step.revision
        );
        last_rev = step.revision;
        assert_eq!(step.id, "w-b");
        states.push((step.state(), step.message.clone()));
        if is_terminal(&step) {
            break;
        }
    }
    // Nothing else runs on its key: it is created RUNNING.
    assert_eq!(
        states.first().unwrap(),
        &(pb::StepState::Running, "running".to_string())
    );
    assert!(
        states
            .iter()
            .any(|(st, m)| *st == pb::StepState::Running && m == "working 2/2"),
        "{states:?}"
    );
    assert_eq!(states.last().unwrap().0, pb::StepState::Succeeded);
}

#[tokio::test]
async fn filters_by_dag_and_step_ids() {
    let d = Daemon::start();
    let mut s = watch(
        &d,
        pb::WatchStepsRequest {
            dag_id: "dag-x".into(),
            ..Default::default()
        },
    )
    .await;
    run_test_step(&d, test_step("other", 0.0)).await;
    let mut req = test_step("mine", 0.0);
    req.meta.as_mut().unwrap().dag_id = "dag-x".into();
    run_test_step(&d, req).await;
    let step = next(&mut s).await;
    assert_eq!(step.id, "mine");

    let mut only = watch(
        &d,
        pb::WatchStepsRequest {
            step_ids: vec!["solo".into()],
            ..Default::default()
        },
    )
    .await;
    run_test_step(&d, test_step("not-solo", 0.0)).await;
    run_test_step(&d, test_step("solo", 0.0)).await;
    assert_eq!(next(&mut only).await.id, "solo");
}

#[tokio::test]
async fn after_revision_resumes_without_a_gap() {
    let d = Daemon::start();
    run_test_step(&d, test_step("r-1", 0.0)).await;
    let r1 = wait_terminal(&d, "r-1").await;
    run_test_step(&d, test_step("r-2", 0.0)).await;
    let r2 = wait_terminal(&d, "r-2").await;
    assert!(r2.revision > r1.revision);

    // Resuming after r-1's last change: r-1 is not repeated, r-2 arrives.
    let mut s = watch(
        &d,
        pb::WatchStepsRequest {
            after_revision: r1.revision,
            ..Default::default()
        },
    )
    .await;
    let got = next(&mut s).await;
    assert_eq!(got.id, "r-2");
    assert_eq!(got.revision, r2.revision);
    // And new changes keep coming.
    run_test_step(&d, test_step("r-3", 0.0)).await;
    let got = next(&mut s).await;
    assert_eq!(got.id, "r-3");
    assert!(got.revision > r2.revision);
}

#[tokio::test]
async fn a_slow_subscriber_is_cut_off_and_blocks_nobody() {
    // A tiny buffer makes "slow" reachable quickly.
    let d = Daemon::start_with(Options {
        config: "watch_buffer = 4\n".into(),
        ..Options::default()
    });
    // Subscribed, but never reads until the end; a small HTTP/2 window keeps the
    // client from quietly buffering everything on its side.
    let endpoint = tonic::transport::Endpoint::from_shared(d.url())
        .unwrap()
        .initial_stream_window_size(Some(1024))
        .initial_connection_window_size(Some(1024));
    let channel = d.connect_with(endpoint).await.unwrap();
    let mut slow = obhost::proto::v1::host_agent_client::HostAgentClient::new(channel)
        .watch_steps(pb::WatchStepsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut fast = watch(&d, pb::WatchStepsRequest::default()).await;

    let fast_reader = tokio::spawn(async move {
        let mut done = 0;
        let mut last = 0;
        while done < 200 {
            let step = next(&mut fast).await;
            assert!(step.revision > last);
            last = step.revision;
            if is_terminal(&step) {
                done += 1;
            }
        }
        done
    });
    let started = Instant::now();
    for i in 0..200 {
        let mut req = test_step(&format!("flood-{i:03}"), 0.0);
        req.progress_updates = 3;
        run_test_step(&d, req).await;
    }
    for i in 0..200 {
        wait_terminal(&d, &format!("flood-{i:03}")).await;
    }
    let engine_time = started.elapsed();
    assert_eq!(
        fast_reader.await.unwrap(),
        200,
        "the fast watcher saw every step end"
    );
    assert!(
        engine_time < Duration::from_secs(60),
        "engine was held up: {engine_time:?}"
    );

    // The slow one gets what was buffered, then is told it fell behind.
    let end = Instant::now() + Duration::from_secs(20);
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(5), slow.message()).await {
            Ok(Ok(Some(_))) => {}
            Ok(Err(status)) => break status,
            Ok(Ok(None)) => panic!("slow watch ended without saying it fell behind"),
            Err(_) => panic!("slow watch went quiet without an error"),
        }
        assert!(Instant::now() < end);
    };
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(
        status.message().contains("fell behind"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("after_revision="),
        "{}",
        status.message()
    );
}
