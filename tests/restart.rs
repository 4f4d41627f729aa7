//! Durability: after `kill -9` every record comes back, and steps that were
//! running are resolved (resumed, or failed as INTERRUPTED), before the daemon
//! answers. A damaged state file stops the daemon with a clear error, never a reset.

mod common;

use std::time::Duration;

use common::*;
use obhost::proto::v1 as pb;

#[tokio::test]
async fn kill9_keeps_every_record_and_resolves_running_steps() {
    let d = Daemon::start();
    // Finished before the crash: must come back byte-for-byte.
    run_test_step(&d, test_step("done-ok", 0.0)).await;
    let mut failing = test_step("done-failed", 0.0);
    failing.fail_code = "PORT_IN_USE".into();
    run_test_step(&d, failing).await;
    let ok = wait_terminal(&d, "done-ok").await;
    let failed = wait_terminal(&d, "done-failed").await;
    // Running at the crash: one that can resume, one that cannot, one whose
    // deadline passes while the daemon is down.
    let mut resumable = test_step("run-resumable", 2.0);
    resumable.resumable = true;
    run_test_step(&d, resumable).await;
    run_test_step(&d, test_step("run-plain", 30.0)).await;
    let mut short = test_step("run-short-deadline", 30.0);
    short.meta.as_mut().unwrap().timeout = Some(secs(1.0));
    short.resumable = true;
    run_test_step(&d, short).await;
    for id in ["run-resumable", "run-plain", "run-short-deadline"] {
        wait_for(&d, id, Duration::from_secs(5), |s| {
            s.state() == pb::StepState::Running
        })
        .await;
    }
    let resumable_before = get_step(&d, "run-resumable").await;
    let revision_before = get_step(&d, "run-plain").await.revision;
    let short_deadline = get_step(&d, "run-short-deadline")
        .await
        .deadline
        .expect("a running step has a deadline");

    let state_dir = d.state_dir.clone();
    // The short deadline passes while no daemon runs.
    let stopped = d.kill9();
    wait_until_past(&short_deadline, Duration::from_secs(5));
    let d = stopped.start();
    assert_eq!(d.state_dir, state_dir);

    // Resolved before the daemon answered: no RUNNING "run-plain" is ever seen.
    let plain = get_step(&d, "run-plain").await;
    assert_eq!(plain.state(), pb::StepState::Failed, "{plain:?}");
    let err = plain.error.as_ref().unwrap();
    assert_eq!(err.code, "INTERRUPTED");
    assert!(
        err.message.contains("RetryStep 'run-plain'"),
        "{}",
        err.message
    );
    assert!(
        plain.revision > revision_before,
        "the global revision goes on growing"
    );

    let short = get_step(&d, "run-short-deadline").await;
    assert_eq!(short.state(), pb::StepState::TimedOut, "{short:?}");

    let resumed = wait_terminal(&d, "run-resumable").await;
    assert_eq!(resumed.state(), pb::StepState::Succeeded, "{resumed:?}");
    assert_eq!(
        resumed.outputs.get("resumed").map(String::as_str),
        Some("true")
    );
    assert_eq!(resumed.attempt, 1);
    assert_eq!(
        resumed.deadline, resumable_before.deadline,
        "the original deadline is kept"
    );
    assert_eq!(resumed.started_at, resumable_before.started_at);

    assert_eq!(get_step(&d, "done-ok").await, ok);
    assert_eq!(get_step(&d, "done-failed").await, failed);
    let all = list_steps(&d).await;
    assert_eq!(all.len(), 5);

    // The interrupted step can be retried on the new daemon.
    d.client()
        .await
        .retry_step(pb::RetryStepRequest {
            step_id: "run-plain".into(),
        })
        .await
        .unwrap();
    let retried = wait_for(&d, "run-plain", Duration::from_secs(5), |s| {
        s.state() == pb::StepState::Running
    })
    .await;
    assert_eq!(retried.attempt, 2);
    assert!(retried.error.is_none(), "{retried:?}");
}

#[tokio::test]
async fn idempotency_holds_across_a_restart() {
    let d = Daemon::start();
    run_test_step(&d, test_step("idem-restart", 0.0)).await;
    let before = wait_terminal(&d, "idem-restart").await;
    let d = d.restart_after_kill9();
    let again = run_test_step(&d, test_step("idem-restart", 0.0)).await;
    assert_eq!(again, before);
    let err = d
        .testing()
        .await
        .run_test_step(test_step("idem-restart", 1.0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
}

#[tokio::test]
async fn a_corrupt_state_file_is_a_clear_error_not_a_reset() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("obhostd.redb");
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&file, &garbage).unwrap();

    let err = match Daemon::spawn(Options::default(), dir.clone(), None) {
        Ok(_) => panic!("obhostd started over a corrupt state file"),
        Err(e) => e,
    };
    assert!(err.contains("exited with exit status: 1"), "{err}");
    assert!(
        err.contains(&file.display().to_string()),
        "names the file: {err}"
    );
    assert!(err.contains("mv "), "says what to do: {err}");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        garbage,
        "the file was changed"
    );
}

#[tokio::test]
async fn two_daemons_cannot_share_a_state_dir() {
    let d = Daemon::start();
    let err = match Daemon::spawn(Options::default(), d.state_dir.clone(), None) {
        Ok(_) => panic!("a second obhostd opened the same state"),
        Err(e) => e,
    };
    assert!(err.contains("in use by another process"), "{err}");
}

/// A step resumed after `kill -9` ends at its original deadline in fact (not
/// only in the displayed `deadline`): TIMED_OUT within moments of it, not a
/// whole fresh timeout later.
#[tokio::test]
async fn a_resumed_step_times_out_at_its_original_deadline() {
    let d = Daemon::start();
    let mut req = test_step("resume-deadline", 60.0);
    req.resumable = true;
    req.meta.as_mut().unwrap().timeout = Some(secs(4.0));
    let accepted = run_test_step(&d, req).await;
    let deadline = accepted.deadline.unwrap();
    wait_for(&d, "resume-deadline", Duration::from_secs(5), |s| {
        s.state() == pb::StepState::Running
    })
    .await;
    // Down for 2 s: a fresh timeout would end 2 s after the original deadline.
    // A fixed time on purpose: the downtime is what a resumed deadline must
    // not grow by, and no event marks "long enough".
    let stopped = d.kill9();
    std::thread::sleep(Duration::from_secs(2));
    let d = stopped.start();
    let ended = wait_for(&d, "resume-deadline", Duration::from_secs(15), is_terminal).await;
    assert_eq!(ended.state(), pb::StepState::TimedOut, "{ended:?}");
    assert_eq!(ended.deadline.as_ref(), Some(&deadline));
    let finished = ended.finished_at.unwrap();
    let at = |t: &pbjson_types::Timestamp| t.seconds as f64 + t.nanos as f64 / 1e9;
    let late = at(&finished) - at(&deadline);
    assert!(
        (-0.05..0.8).contains(&late),
        "ended {late:.3}s after its original deadline"
    );
}

/// Returns once the wall clock is past `deadline` (a step's, as stored),
/// which must be at most `within` away.
fn wait_until_past(deadline: &pbjson_types::Timestamp, within: Duration) {
    let at = std::time::UNIX_EPOCH
        + Duration::new(
            u64::try_from(deadline.seconds).expect("a deadline after 1970"),
            u32::try_from(deadline.nanos).expect("nanos in range"),
        );
    let left = at
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    assert!(
        left <= within,
        "the deadline {deadline:?} is {left:?} away, more than {within:?}"
    );
    // The remaining time, then a little more: "past" is strict.
    std::thread::sleep(left + Duration::from_millis(10));
    assert!(
        std::time::SystemTime::now() > at,
        "still before {deadline:?}"
    );
}
