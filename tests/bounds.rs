//! The engine's bounds and guarantees through the real daemon: a task that
//! panics, never completes or blocks its thread cannot keep its step past the
//! deadline or take the daemon down; unfinished steps, watches, a watch's
//! memory and what a record holds are all bounded; junk page tokens are caller
//! errors, not panics.

mod common;

use std::collections::HashMap;

use std::time::{Duration, Instant};

use common::*;
use obhost::proto::v1 as pb;
use prost::Message;
use tonic::Code;

fn with_config(toml: &str) -> Daemon {
    Daemon::start_with(Options {
        config: toml.to_string(),
        ..Options::default()
    })
}

async fn step_error(
    d: &Daemon,
    req: obhost::proto::testing::v1::RunTestStepRequest,
) -> tonic::Status {
    d.testing()
        .await
        .run_test_step(req)
        .await
        .expect_err("the step was accepted")
}

/// The daemon still runs steps to the end.
async fn still_serving(d: &Daemon, id: &str) {
    run_test_step(d, test_step(id, 0.0)).await;
    let s = wait_terminal(d, id).await;
    assert_eq!(s.state(), pb::StepState::Succeeded, "{s:?}");
}

fn elapsed(s: &pb::Step) -> Duration {
    let t = |ts: &pbjson_types::Timestamp| {
        Duration::from_secs(ts.seconds as u64) + Duration::from_nanos(ts.nanos as u64)
    };
    t(s.finished_at.as_ref().expect("finished_at")) - t(s.created_at.as_ref().expect("created_at"))
}

#[tokio::test]
async fn a_panicking_task_fails_internal_and_the_daemon_lives_on() {
    let d = Daemon::start();
    let secret_panic = format!("boom-{}", "p".repeat(100_000));
    let mut req = test_step("panics", 0.1);
    req.panic_message = secret_panic.clone();
    run_test_step(&d, req).await;
    let s = wait_for(&d, "panics", Duration::from_secs(5), is_terminal).await;
    assert_eq!(s.state(), pb::StepState::Failed, "{s:?}");
    let e = s.error.expect("error");
    assert_eq!(e.code, "INTERNAL");
    assert!(
        e.message.contains("bug") && e.message.contains("log") && e.message.contains("RetryStep"),
        "{}",
        e.message
    );
    assert!(
        !e.message.contains("boom"),
        "panic text is for the log only"
    );
    // The panic is in the log, capped.
    let line = d.wait_for_log_line("step task panicked", Duration::from_secs(10));
    assert!(line.contains("boom-ppp"), "{line}");
    assert!(line.len() < 4096, "log line of {} bytes", line.len());
    still_serving(&d, "after-panic").await;
}

#[tokio::test]
async fn a_task_that_never_completes_and_ignores_cancel_times_out_at_its_deadline() {
    let d = Daemon::start();
    let mut req = test_step("hangs", 0.0);
    req.ignore_cancel = true;
    req.meta.as_mut().unwrap().timeout = Some(secs(0.5));
    run_test_step(&d, req).await;
    let s = wait_for(&d, "hangs", Duration::from_secs(5), is_terminal).await;
    assert_eq!(s.state(), pb::StepState::TimedOut, "{s:?}");
    assert_eq!(s.error.as_ref().unwrap().code, "DEADLINE_EXCEEDED");
    assert!(elapsed(&s) < Duration::from_secs(2), "{:?}", elapsed(&s));
    // Cancelling such a step ends it at once too.
    let mut req = test_step("hangs-2", 0.0);
    req.ignore_cancel = true;
    run_test_step(&d, req).await;
    wait_for(&d, "hangs-2", Duration::from_secs(5), |s| {
        s.state() == pb::StepState::Running
    })
    .await;
    d.client()
        .await
        .cancel_step(pb::CancelStepRequest {
            step_id: "hangs-2".into(),
        })
        .await
        .expect("CancelStep");
    assert_eq!(
        get_step(&d, "hangs-2").await.state(),
        pb::StepState::Cancelled
    );
    still_serving(&d, "after-hang").await;
}

/// A task that blocks its thread (blocking code called on the runtime) cannot
/// delay its deadline: the deadline is kept by the driver, outside the task.
#[tokio::test]
async fn a_task_that_blocks_its_thread_still_times_out_at_its_deadline() {
    let d = Daemon::start();
    let mut req = test_step("blocks", 0.0);
    req.block_thread = Some(secs(4.0));
    req.meta.as_mut().unwrap().timeout = Some(secs(0.5));
    let t0 = Instant::now();
    run_test_step(&d, req).await;
    let s = wait_for(&d, "blocks", Duration::from_secs(10), is_terminal).await;
    assert_eq!(s.state(), pb::StepState::TimedOut, "{s:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "ended after {:?}, past its 0.5s deadline",
        t0.elapsed()
    );
    assert!(elapsed(&s) < Duration::from_secs(2), "{:?}", elapsed(&s));
    still_serving(&d, "after-block").await;
}

#[tokio::test]
async fn a_step_waiting_for_its_lock_key_times_out_at_its_own_deadline() {
    let d = Daemon::start();
    let mut first = test_step("key-first", 10.0);
    first.lock_key = "home-a".into();
    run_test_step(&d, first).await;
    wait_for(&d, "key-first", Duration::from_secs(5), |s| {
        s.state() == pb::StepState::Running
    })
    .await;
    let mut second = test_step("key-second", 0.0);
    second.lock_key = "home-a".into();
    second.meta.as_mut().unwrap().timeout = Some(secs(0.5));
    run_test_step(&d, second).await;
    let s = wait_for(&d, "key-second", Duration::from_secs(5), is_terminal).await;
    assert_eq!(s.state(), pb::StepState::TimedOut, "{s:?}");
    assert!(
        s.error
            .as_ref()
            .unwrap()
            .message
            .contains("waiting for another step on home-a"),
        "says what it waited for"
    );
    assert!(elapsed(&s) < Duration::from_secs(2));
    assert_eq!(
        get_step(&d, "key-first").await.state(),
        pb::StepState::Running
    );
}

#[tokio::test]
async fn unfinished_steps_are_capped_and_accepted_again_once_some_finish() {
    let d = with_config("[limits]\nmax_active_steps = 3\n");
    for id in ["act-1", "act-2", "act-3"] {
        run_test_step(&d, test_step(id, 30.0)).await;
    }
    let e = step_error(&d, test_step("act-4", 0.0)).await;
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message()
            .contains("3 steps are already PENDING or RUNNING")
            && e.message().contains("max_active_steps = 3"),
        "{}",
        e.message()
    );
    // A repeat of an accepted step still answers with its record.
    let again = run_test_step(&d, test_step("act-1", 30.0)).await;
    assert_eq!(again.attempt, 1);

    let mut c = d.client().await;
    c.cancel_step(pb::CancelStepRequest {
        step_id: "act-1".into(),
    })
    .await
    .unwrap();
    run_test_step(&d, test_step("act-4", 30.0)).await;
    // Full again: a retry is a new unfinished step too.
    c.cancel_step(pb::CancelStepRequest {
        step_id: "act-2".into(),
    })
    .await
    .unwrap();
    run_test_step(&d, test_step("act-5", 30.0)).await;
    let e = c
        .retry_step(pb::RetryStepRequest {
            step_id: "act-1".into(),
        })
        .await
        .expect_err("retry beyond the limit");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    for id in ["act-3", "act-4", "act-5"] {
        c.cancel_step(pb::CancelStepRequest { step_id: id.into() })
            .await
            .unwrap();
    }
    let r = c
        .retry_step(pb::RetryStepRequest {
            step_id: "act-1".into(),
        })
        .await
        .expect("retry once steps finished")
        .into_inner()
        .step
        .unwrap();
    assert_eq!(r.attempt, 2);
}

async fn open_watch(d: &Daemon) -> Result<tonic::Streaming<pb::WatchStepsResponse>, tonic::Status> {
    d.client()
        .await
        .watch_steps(pb::WatchStepsRequest::default())
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn watches_are_capped_and_gone_clients_give_back_their_slots() {
    let d = with_config("[limits]\nmax_watchers = 4\n");
    for round in 0..3 {
        let mut open = Vec::new();
        // Slots of the previous round come back as soon as its clients are
        // gone, although no step changes to wake their watches.
        let until = Instant::now() + Duration::from_secs(5);
        while open.len() < 4 {
            match open_watch(&d).await {
                Ok(w) => open.push(w),
                Err(e) if Instant::now() < until => {
                    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("round {round}: slots were not given back: {e:?}"),
            }
        }
        let e = open_watch(&d).await.expect_err("a fifth watch");
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert!(e.message().contains("max_watchers = 4"), "{}", e.message());
        drop(open);
    }
}

fn vm_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// `pid`'s RSS once it has stopped growing: no growth over 500 ms, sampled
/// every 50 ms. Panics if it still grows after 30 s.
async fn settled_rss_kib(pid: i32) -> u64 {
    const QUIET: Duration = Duration::from_millis(500);
    let end = std::time::Instant::now() + Duration::from_secs(30);
    let mut high = vm_rss_kib(pid);
    let mut grew = std::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = vm_rss_kib(pid);
        if now > high {
            high = now;
            grew = std::time::Instant::now();
        } else if grew.elapsed() >= QUIET {
            return now;
        }
        assert!(
            std::time::Instant::now() < end,
            "the RSS of {pid} still grows after 30 s: {now} kB"
        );
    }
}

/// Eight watches from revision 0 on a ~21 MB store: each used to copy the whole
/// store (+170 MB); paged, they hold a page and a stream buffer each.
#[tokio::test]
async fn watch_backlogs_are_paged_not_copied() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    seed_store(&state, 3000, 7000);
    let d = Daemon::start_with(Options {
        state_dir: Some(state),
        ..Options::default()
    });
    // Warm up the paths a watch uses before the baseline.
    let mut w = open_watch(&d).await.unwrap();
    w.message().await.unwrap().unwrap();
    drop(w);
    let before = settled_rss_kib(d.pid()).await;
    let mut watches = Vec::new();
    for _ in 0..8 {
        let mut w = open_watch(&d).await.unwrap();
        let first = w.message().await.unwrap().unwrap().step.unwrap();
        assert_eq!(first.id, "seed-00001");
        watches.push(w);
    }
    // Once every watch has filled its buffers as far as flow control allows.
    let after = settled_rss_kib(d.pid()).await;
    let growth_mib = after.saturating_sub(before) / 1024;
    assert!(
        growth_mib < 64,
        "8 watches grew obhostd by {growth_mib} MiB ({before} kB -> {after} kB)"
    );
    // And each still gets the whole backlog, in order.
    let mut w = watches.pop().unwrap();
    let mut last = 1;
    while last < 3000 {
        let s = tokio::time::timeout(Duration::from_secs(10), w.message())
            .await
            .expect("watch went quiet")
            .unwrap()
            .unwrap()
            .step
            .unwrap();
        assert_eq!(s.revision, last + 1, "{}", s.id);
        last = s.revision;
    }
}

/// Steps committed while a watch pages through its backlog, and while it
/// switches to the live feed: every change comes at most once, in revision
/// order, and the latest version of every record is among them.
#[tokio::test]
async fn a_watch_meets_the_live_feed_without_gap_or_duplicate() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    // Big enough records that flow control keeps the daemon from paging far
    // ahead of what the client has read (the records are ~7 KB).
    seed_store(&state, 2000, 7000);
    let d = Daemon::start_with(Options {
        state_dir: Some(state),
        ..Options::default()
    });
    let channel = d.channel().await;
    let writer = |ids: Vec<String>, retry: Vec<&'static str>| {
        let channel = channel.clone();
        tokio::spawn(async move {
            let mut t = obhost::proto::testing::v1::step_testing_client::StepTestingClient::new(
                channel.clone(),
            );
            let mut c = pb::host_agent_client::HostAgentClient::new(channel);
            for id in retry {
                c.retry_step(pb::RetryStepRequest { step_id: id.into() })
                    .await
                    .unwrap();
            }
            for id in ids {
                t.run_test_step(test_step(&id, 0.0)).await.unwrap();
            }
        })
    };
    let mut w = open_watch(&d).await.unwrap();
    let mut seen: Vec<(String, u64)> = Vec::new();
    let mut receive = async |seen: &mut Vec<(String, u64)>| {
        let s = tokio::time::timeout(Duration::from_secs(10), w.message())
            .await
            .expect("watch went quiet")
            .unwrap()
            .unwrap()
            .step
            .unwrap();
        if let Some((_, prev)) = seen.last() {
            assert!(
                s.revision > *prev,
                "{} at {} after {prev}",
                s.id,
                s.revision
            );
        }
        seen.push((s.id, s.revision));
    };
    while seen.len() < 600 {
        receive(&mut seen).await;
    }
    // Mid-backlog: a record already delivered and one not reached yet change,
    // and new steps run to the end.
    let first: Vec<String> = (0..20).map(|i| format!("mid-{i:02}")).collect();
    writer(first.clone(), vec!["seed-00500", "seed-02000"])
        .await
        .unwrap();
    for id in first
        .iter()
        .map(String::as_str)
        .chain(["seed-00500", "seed-02000"])
    {
        wait_terminal(&d, id).await;
    }
    // Around the switch to the live feed: more steps while the tail is read.
    let mut second = None;
    let late: Vec<String> = (0..20).map(|i| format!("late-{i:02}")).collect();
    let last_id = late.last().unwrap().clone();
    let mut last_done = false;
    while !last_done {
        if seen.len() == 1950 {
            second = Some(writer(late.clone(), Vec::new()));
        }
        receive(&mut seen).await;
        if seen.last().unwrap().0 == last_id {
            last_done = get_step(&d, &last_id).await.revision == seen.last().unwrap().1
                && is_terminal(&get_step(&d, &last_id).await);
        }
    }
    second.expect("second writer").await.unwrap();
    let mut current: HashMap<String, u64> = HashMap::new();
    let mut c = d.client().await;
    let mut token = String::new();
    loop {
        let page = c
            .list_steps(pb::ListStepsRequest {
                page_size: 1000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        current.extend(page.steps.into_iter().map(|s| (s.id, s.revision)));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(current.len(), 2040);
    // Anything still committing after the last one was read may be missing.
    let last_rev = seen.last().unwrap().1;
    for (id, rev) in &current {
        assert!(
            *rev > last_rev || seen.contains(&(id.clone(), *rev)),
            "{id} at revision {rev} was never delivered"
        );
    }
    let count = |id: &str| seen.iter().filter(|(i, _)| i == id).count();
    assert_eq!(
        count("seed-00500"),
        2,
        "delivered, then at its new revision"
    );
    assert_eq!(count("seed-02000"), 1, "only its latest version");
    assert!(!seen.contains(&("seed-02000".into(), 2000)));
    assert_eq!(count("seed-01999"), 1);
}

#[tokio::test]
async fn junk_page_tokens_are_invalid_argument_and_the_daemon_keeps_answering() {
    let d = Daemon::start();
    run_test_step(&d, test_step("listed", 0.0)).await;
    let mut c = d.client().await;
    for token in [
        "aéb".to_string(),
        "é".repeat(100_000),
        "zz".into(),
        "abc".into(),
    ] {
        let e = c
            .list_steps(pb::ListStepsRequest {
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect_err("junk token accepted");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(
            e.message().contains("page_token") && e.message().contains("next_page_token"),
            "{}",
            e.message()
        );
        assert!(
            e.message().len() < 600,
            "quotes {} bytes",
            e.message().len()
        );
    }
    let e = c
        .list_steps(pb::ListStepsRequest {
            dag_id: "x".repeat(100_000),
            ..Default::default()
        })
        .await
        .expect_err("junk dag_id");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().len() < 600,
        "quotes {} bytes",
        e.message().len()
    );
    let e = open_watch_with(
        &d,
        pb::WatchStepsRequest {
            dag_id: "a/b".into(),
            ..Default::default()
        },
    )
    .await
    .expect_err("junk dag_id in a watch");
    assert_eq!(e.code(), Code::InvalidArgument);
    let page = c
        .list_steps(pb::ListStepsRequest::default())
        .await
        .expect("the daemon keeps answering")
        .into_inner();
    assert_eq!(page.steps.len(), 1);
}

async fn open_watch_with(
    d: &Daemon,
    req: pb::WatchStepsRequest,
) -> Result<tonic::Streaming<pb::WatchStepsResponse>, tonic::Status> {
    d.client()
        .await
        .watch_steps(req)
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn what_a_task_reports_is_capped_before_it_is_stored_or_sent() {
    let d = Daemon::start();
    let mut w = open_watch(&d).await.unwrap();
    let mut req = test_step("loud", 0.2);
    req.report_bytes = 200_000;
    req.fail_code = "LOUD".into();
    run_test_step(&d, req).await;
    let s = wait_terminal(&d, "loud").await;
    assert_eq!(s.state(), pb::StepState::Failed);
    assert!(
        s.message.len() <= 1024 && !s.message.contains('\n'),
        "{}",
        s.message.len()
    );
    assert!(s.message.contains("[truncated"), "the cut is marked");
    assert!(s.outputs["report"].len() <= 1024);
    let e = s.error.as_ref().unwrap();
    assert_eq!(e.code, "LOUD");
    assert!(e.message.len() <= 1024);
    assert!(e.details.len() <= 32 && e.details.values().all(|v| v.len() <= 1024));
    assert!(e.log_tail.len() <= 40 && e.log_tail.iter().all(|l| l.len() <= 512));
    assert!(e.log_tail.iter().map(String::len).sum::<usize>() <= 8192);
    assert!(
        s.encoded_len() < 64 * 1024,
        "record of {} bytes",
        s.encoded_len()
    );
    // Every version a watcher saw was capped too (the progress message).
    loop {
        let s = w.message().await.unwrap().unwrap().step.unwrap();
        assert!(
            s.encoded_len() < 64 * 1024,
            "version of {} bytes",
            s.encoded_len()
        );
        assert!(s.message.len() <= 1024);
        if is_terminal(&s) {
            break;
        }
    }
    // And the state file never took the 200 KB texts: 20 KB of them, as JSON
    // stores them, appear nowhere in it.
    let needle = format!("{}\\n", "x".repeat(99)).repeat(200);
    let leaks = files_containing(&d.state_dir, &needle);
    assert!(
        leaks.is_empty(),
        "an uncapped text reached the state dir: {:?}",
        leaks.iter().map(|l| &l.0).collect::<Vec<_>>()
    );
}
