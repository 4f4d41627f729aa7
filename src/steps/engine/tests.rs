//! Unit tests of the engine on a real redb file in a temp dir: commit, watch
//! order, the terminal guard, recovery of each state and retention.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::watch::{WATCH_PAGE, Watch};
use super::*;
use crate::steps::model::StepKind;
use crate::steps::task::{BoxFuture, OnRestart, StepContext, StepResult, StepSuccess, StepTask};

/// What a test task does, chosen by its params: `{"sleep_ms": n, "resume": b,
/// "ignore_cancel": b, "key": s}`.
struct Scripted {
    sleep: Duration,
    resume: bool,
    ignore_cancel: bool,
    key: Option<String>,
}

impl StepTask for Scripted {
    fn run(self: Box<Self>, ctx: StepContext) -> BoxFuture<StepResult> {
        Box::pin(async move {
            if self.ignore_cancel {
                // Keeps running past CancelStep like a task stuck in a syscall
                // would, then reports success late.
                std::thread::sleep(self.sleep);
            } else {
                tokio::time::sleep(self.sleep).await;
            }
            let mut outputs = BTreeMap::new();
            outputs.insert("resumed".into(), ctx.resumed().to_string());
            Ok(StepSuccess {
                message: "done".into(),
                outputs,
                checks: Vec::new(),
            })
        })
    }

    fn lock_key(&self) -> Option<String> {
        self.key.clone()
    }

    fn on_restart(&self) -> OnRestart {
        if self.resume {
            OnRestart::Resume
        } else {
            OnRestart::Interrupt
        }
    }
}

struct Factory;
impl TaskFactory for Factory {
    fn build(
        &self,
        _: StepKind,
        params: &serde_json::Value,
        _: &Secrets,
    ) -> Result<Box<dyn StepTask>, String> {
        if params.get("unknown").is_some() {
            return Err("unknown kind".into());
        }
        Ok(Box::new(Scripted {
            sleep: Duration::from_millis(
                params.get("sleep_ms").and_then(|v| v.as_u64()).unwrap_or(0),
            ),
            resume: params
                .get("resume")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            ignore_cancel: params
                .get("ignore_cancel")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            key: params.get("key").and_then(|v| v.as_str()).map(String::from),
        }))
    }
}

/// What the API layer does: builds the new step's task from its parameters,
/// then submits both.
trait SubmitNew {
    async fn submit_new(&self, spec: StepSpec, secrets: Secrets)
    -> Result<StepRecord, EngineError>;
}

impl SubmitNew for Engine {
    async fn submit_new(
        &self,
        spec: StepSpec,
        secrets: Secrets,
    ) -> Result<StepRecord, EngineError> {
        let task = Factory
            .build(spec.kind, &spec.params, &secrets)
            .map_err(EngineError::InvalidParams)?;
        self.submit(spec, task, secrets).await
    }
}

fn spec(id: &str) -> StepSpec {
    spec_with(id, serde_json::Value::Null)
}

fn spec_with(id: &str, params: serde_json::Value) -> StepSpec {
    StepSpec {
        id: id.into(),
        dag_id: String::new(),
        kind: StepKind::Test,
        name: "t".into(),
        timeout: Duration::from_secs(30),
        params,
    }
}

fn record(id: &str, state: StepState, revision: u64, params: serde_json::Value) -> StepRecord {
    let now = SystemTime::now();
    let mut r = StepRecord::for_test(id, state, 1, revision);
    r.spec = spec_with(id, params);
    r.finished_at = state.is_terminal().then_some(now);
    r.deadline = now + Duration::from_secs(30);
    r.message = "seeded".into();
    r
}

/// `n` FAILED records with revisions 1..=n, written in one transaction.
fn seed(dir: &Path, n: u64) {
    let records: Vec<StepRecord> = (1..=n)
        .map(|i| {
            record(
                &format!("seed-{i:05}"),
                StepState::Failed,
                i,
                serde_json::Value::Null,
            )
        })
        .collect();
    let (store, _) = Store::open(dir).unwrap();
    store.put_all(&records).unwrap();
}

async fn open_with(dir: &Path, config: EngineConfig) -> Engine {
    Engine::open(dir, Arc::new(Factory), config, CancellationToken::new())
        .await
        .unwrap()
}

async fn open(dir: &Path) -> Engine {
    open_with(dir, EngineConfig::default()).await
}

async fn next(w: &mut Watch) -> StepRecord {
    tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("watch went quiet")
        .expect("watch failed")
}

async fn until_state(engine: &Engine, id: &str, state: StepState) -> StepRecord {
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        // Not found yet: a step whose commit is still on its way.
        let r = match engine.get(id).await {
            Err(EngineError::NotFound(_)) => None,
            other => Some(other.unwrap()),
        };
        if let Some(r) = &r
            && r.state == state
        {
            return r.clone();
        }
        assert!(
            tokio::time::Instant::now() < until,
            "{id} stuck at {:?}",
            r.map(|r| r.state)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A commit is durable before anyone sees it: a record a caller got back is in
/// the file (read by a second open after the engine is gone), and revisions
/// grow by one per change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_are_durable_and_numbered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let engine = Engine::open(
        dir.path(),
        Arc::new(Factory),
        EngineConfig::default(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let mut handles = Vec::new();
    for i in 0..50 {
        let e = engine.clone();
        handles.push(tokio::spawn(async move {
            e.submit_new(spec(&format!("c-{i:02}")), Secrets::default())
                .await
                .unwrap()
        }));
    }
    let mut revisions = Vec::new();
    for h in handles {
        revisions.push(h.await.unwrap().revision);
    }
    revisions.sort();
    revisions.dedup();
    assert_eq!(
        revisions.len(),
        50,
        "each accepted step has its own revision"
    );
    for i in 0..50 {
        until_state(&engine, &format!("c-{i:02}"), StepState::Succeeded).await;
    }
    // 50 steps × (RUNNING at once, their keys being free; SUCCEEDED).
    assert_eq!(engine.revision().await, 100);
    shutdown.cancel();
    assert!(engine.drain(Duration::from_secs(5)).await);
    drop(engine);
    // The committer thread lets go of the file once the last handle is gone.
    let until = std::time::Instant::now() + Duration::from_secs(5);
    let (store, loaded) = loop {
        match Store::open(dir.path()) {
            Ok(x) => break x,
            Err(StoreError::InUse { .. }) if std::time::Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(loaded.revision, 100);
    assert_eq!(loaded.count, 50);
    assert!(loaded.active.is_empty());
    assert_eq!(
        store.get("c-07").unwrap().unwrap().state,
        StepState::Succeeded
    );
}

/// A task that finishes after CancelStep must not overwrite CANCELLED (the
/// "already terminal" guard).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_result_never_overwrites_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let s = spec_with(
        "late",
        serde_json::json!({"sleep_ms": 300, "ignore_cancel": true}),
    );
    engine.submit_new(s, Secrets::default()).await.unwrap();
    until_state(&engine, "late", StepState::Running).await;
    let cancelled = engine.cancel("late").await.unwrap();
    assert_eq!(cancelled.state, StepState::Cancelled);
    // The task blocks its thread for 300 ms and then returns success.
    tokio::time::sleep(Duration::from_millis(600)).await;
    // A driver whose outcome raced the cancel commits it like this:
    for outcome in [
        drivers::Outcome::Done(Ok(StepSuccess::default())),
        drivers::Outcome::TimedOut,
    ] {
        engine.finish("late", 1, outcome).await;
    }
    let r = engine.get("late").await.unwrap();
    assert_eq!(r.state, StepState::Cancelled, "{r:?}");
    assert_eq!(
        r.revision, cancelled.revision,
        "nothing committed after the cancel"
    );
}

/// Changes committed while the backlog is paged come exactly once, in
/// revision order: a record changed after it was paged comes again at its
/// new revision, one changed before it was reached comes only at its new
/// one, and the switch to the live feed loses and repeats nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_pages_meet_the_live_feed_without_gap_or_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path(), 300);
    let engine = open(dir.path()).await;
    let mut w = engine.watch(Filter::default(), 0).unwrap();
    let mut seen: Vec<(String, u64)> = Vec::new();
    for _ in 0..100 {
        let r = next(&mut w).await;
        seen.push((r.id().to_string(), r.revision));
    }
    assert_eq!(
        w.held() + seen.len(),
        2 * WATCH_PAGE,
        "holds one page at a time, not the store"
    );
    // One already delivered, one not reached yet, and a new step.
    engine.retry("seed-00010").await.unwrap();
    engine.retry("seed-00250").await.unwrap();
    engine
        .submit_new(spec("new-1"), Secrets::default())
        .await
        .unwrap();
    for id in ["seed-00010", "seed-00250", "new-1"] {
        until_state(&engine, id, StepState::Succeeded).await;
    }
    let last = engine.revision().await;
    while seen.last().is_none_or(|(_, rev)| *rev < last) {
        let r = next(&mut w).await;
        seen.push((r.id().to_string(), r.revision));
    }
    assert!(
        seen.windows(2).all(|p| p[0].1 < p[1].1),
        "revisions must strictly grow"
    );
    let count = |id: &str| seen.iter().filter(|(i, _)| i == id).count();
    assert_eq!(count("seed-00001"), 1);
    assert_eq!(count("seed-00300"), 1);
    assert_eq!(count("seed-00010"), 2, "{seen:?}");
    assert!(!seen.contains(&("seed-00250".to_string(), 250)), "{seen:?}");
    assert!(count("seed-00250") >= 1);
    assert!(count("new-1") >= 1);
    let (all, _) = engine
        .list(&Filter::default(), 1000, usize::MAX, None)
        .await
        .unwrap();
    for r in &all {
        assert!(
            seen.contains(&(r.id().to_string(), r.revision)),
            "{} at {} missing",
            r.id(),
            r.revision
        );
    }
    assert!(w.is_live(), "the backlog is exhausted");
    engine
        .submit_new(spec("new-2"), Secrets::default())
        .await
        .unwrap();
    let mut states = Vec::new();
    while states.last() != Some(&StepState::Succeeded) {
        let r = next(&mut w).await;
        assert_eq!(r.id(), "new-2");
        assert!(r.revision > seen.last().unwrap().1);
        seen.push((r.id().to_string(), r.revision));
        states.push(r.state);
    }
    assert_eq!(states, [StepState::Running, StepState::Succeeded]);
}

#[tokio::test]
async fn watches_are_capped_and_give_back_their_slot_when_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_with(
        dir.path(),
        EngineConfig {
            max_watchers: 2,
            ..EngineConfig::default()
        },
    )
    .await;
    let a = engine.watch(Filter::default(), 0).unwrap();
    let _b = engine.watch(Filter::default(), 0).unwrap();
    let e = engine
        .watch(Filter::default(), 0)
        .err()
        .expect("third watch refused");
    assert!(e.to_string().contains("max_watchers = 2"), "{e}");
    drop(a);
    engine.watch(Filter::default(), 0).expect("slot given back");
}

/// Each state a restart can find: PENDING runs, RUNNING resumable resumes
/// (with `resumed` set), RUNNING not resumable is INTERRUPTED, a passed
/// deadline is TIMED_OUT, a kind this build cannot build is INTERRUPTED, and a
/// finished step is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resolves_each_unfinished_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut past = record(
        "late",
        StepState::Running,
        4,
        serde_json::json!({"resume": true}),
    );
    past.deadline = SystemTime::now() - Duration::from_secs(1);
    let records = vec![
        record("pending", StepState::Pending, 1, serde_json::Value::Null),
        record(
            "resumable",
            StepState::Running,
            2,
            serde_json::json!({"resume": true}),
        ),
        record("fragile", StepState::Running, 3, serde_json::Value::Null),
        past,
        record(
            "alien",
            StepState::Running,
            5,
            serde_json::json!({"unknown": true}),
        ),
        record("done", StepState::Succeeded, 6, serde_json::Value::Null),
    ];
    {
        let (store, _) = Store::open(dir.path()).unwrap();
        store.put_all(&records).unwrap();
    }
    let engine = open(dir.path()).await;
    // Resolved before open returns: nothing is left as it was found.
    let fragile = engine.get("fragile").await.unwrap();
    assert_eq!(fragile.state, StepState::Failed);
    assert_eq!(fragile.error.unwrap().code, codes::INTERRUPTED);
    let late = engine.get("late").await.unwrap();
    assert_eq!(late.state, StepState::TimedOut);
    assert_eq!(late.error.unwrap().code, codes::DEADLINE_EXCEEDED);
    let alien = engine.get("alien").await.unwrap();
    assert_eq!(alien.state, StepState::Failed);
    assert_eq!(alien.error.unwrap().code, codes::INTERRUPTED);
    assert_eq!(engine.get("done").await.unwrap().revision, 6);

    let pending = until_state(&engine, "pending", StepState::Succeeded).await;
    assert_eq!(pending.outputs["resumed"], "false");
    let resumed = until_state(&engine, "resumable", StepState::Succeeded).await;
    assert_eq!(resumed.outputs["resumed"], "true");
    // Resumed with its original deadline, not a fresh one.
    assert_eq!(resumed.deadline, records[1].deadline);
}

/// Retention forgets the oldest finished records beyond max_steps, in batches
/// off the commit path, and never an unfinished one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_oldest_finished_and_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path(), 2500);
    {
        let (store, _) = Store::open(dir.path()).unwrap();
        store
            .put_all(&[record(
                "a-running",
                StepState::Running,
                2501,
                serde_json::json!({"resume": true, "sleep_ms": 2000}),
            )])
            .unwrap();
    }
    let engine = open_with(
        dir.path(),
        EngineConfig {
            retention: Retention {
                max_steps: 100,
                max_age: Duration::from_secs(3600),
                interval: Duration::from_secs(3600),
            },
            ..EngineConfig::default()
        },
    )
    .await;
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while engine.shared.store.count().unwrap() > 100 {
        assert!(tokio::time::Instant::now() < until, "not pruned");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(engine.shared.store.count().unwrap(), 100);
    assert!(engine.get("a-running").await.is_ok(), "running step kept");
    assert!(engine.get("seed-00001").await.is_err(), "oldest gone");
    assert!(engine.get("seed-02500").await.is_ok(), "newest kept");
}

/// Finished records are not held in memory: only unfinished steps are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_holds_only_unfinished_steps() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path(), 500);
    let engine = open(dir.path()).await;
    engine
        .submit_new(
            spec_with("slow", serde_json::json!({"sleep_ms": 5000})),
            Secrets::default(),
        )
        .await
        .unwrap();
    until_state(&engine, "slow", StepState::Running).await;
    let held = engine.lock().active.len();
    assert_eq!(held, 1);
    // And the finished ones read from the store page by page.
    let (page, next) = engine
        .list(&Filter::default(), 100, usize::MAX, None)
        .await
        .unwrap();
    assert_eq!(page.len(), 100);
    assert!(next.is_some());
}

/// A resumed step keeps its original deadline in fact, not only in the field:
/// it times out at that deadline, not a fresh timeout later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_step_times_out_at_its_original_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = record(
        "resumed-late",
        StepState::Running,
        1,
        serde_json::json!({"resume": true, "sleep_ms": 20_000}),
    );
    let original = SystemTime::now() + Duration::from_millis(700);
    r.deadline = original;
    {
        let (store, _) = Store::open(dir.path()).unwrap();
        store.put_all(&[r]).unwrap();
    }
    let engine = open(dir.path()).await;
    let done = until_state(&engine, "resumed-late", StepState::TimedOut).await;
    let finished = done.finished_at.unwrap();
    let late = finished.duration_since(original).unwrap_or_default();
    assert!(
        late < Duration::from_millis(500),
        "timed out {late:?} after the original deadline"
    );
    assert!(
        finished + Duration::from_millis(50) >= original,
        "timed out early"
    );
}

/// A page ends once its records' stored bytes reach the budget, before the
/// record count does: a caller never decodes records it would drop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_ends_at_its_byte_budget() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path(), 50);
    let engine = open(dir.path()).await;
    let (page, next) = engine.list(&Filter::default(), 100, 1, None).await.unwrap();
    assert_eq!(page.len(), 1, "one record always fits");
    assert_eq!(next.as_deref(), Some("seed-00001"));
    let (all, next) = engine
        .list(&Filter::default(), 100, usize::MAX, None)
        .await
        .unwrap();
    assert_eq!((all.len(), next), (50, None));
}

/// The page read ahead is served only while nothing was committed since it
/// was read: a change in between is seen, as a read at the request would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_read_ahead_never_hides_a_later_change() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path(), 10);
    let engine = open(dir.path()).await;
    let (first, next) = engine
        .list(&Filter::default(), 5, usize::MAX, None)
        .await
        .unwrap();
    assert_eq!(first.len(), 5);
    // Let the read ahead of seed-00006..10 finish, then change one of them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    engine.retry("seed-00008").await.unwrap();
    let (second, _) = engine
        .list(&Filter::default(), 5, usize::MAX, next.as_deref())
        .await
        .unwrap();
    let retried = second.iter().find(|r| r.id() == "seed-00008").unwrap();
    assert_eq!(retried.attempt, 2, "the page read ahead hid the retry");
}

/// A step whose key is free starts RUNNING in the request's own commit; one
/// whose key is busy is PENDING until the step before it has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_waits_pending_only_while_its_key_is_busy() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let params = serde_json::json!({"sleep_ms": 300, "key": "/home/a"});
    let first = engine
        .submit_new(spec_with("first", params.clone()), Secrets::default())
        .await
        .unwrap();
    assert_eq!(first.state, StepState::Running);
    assert!(first.started_at.is_some());
    let second = engine
        .submit_new(spec_with("second", params), Secrets::default())
        .await
        .unwrap();
    assert_eq!(second.state, StepState::Pending);
    let other = engine
        .submit_new(
            spec_with("other", serde_json::json!({"key": "/home/b"})),
            Secrets::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        other.state,
        StepState::Running,
        "another key is not held up"
    );
    let first = until_state(&engine, "first", StepState::Succeeded).await;
    let second = until_state(&engine, "second", StepState::Succeeded).await;
    assert!(second.started_at.unwrap() >= first.finished_at.unwrap());
}

/// ALREADY_EXISTS names the parameters that differ, not just "parameters".
#[test]
fn a_conflict_names_the_parameters_that_differ() {
    let a = serde_json::json!({"observer": {"home_path": "/a", "mysql_port": 2881}, "create_dirs": true});
    let b = serde_json::json!({"observer": {"home_path": "/a", "mysql_port": 2891}, "create_dirs": false});
    let mut keys = Vec::new();
    differing_keys(&a, &b, "", &mut keys);
    assert_eq!(keys, ["create_dirs", "observer.mysql_port"]);
    let mut stored = spec_with("x", a);
    stored.kind = StepKind::Test;
    let new = StepSpec {
        params: b,
        ..stored.clone()
    };
    assert_eq!(
        differences(&stored, &new),
        ["parameters (create_dirs, observer.mysql_port)"]
    );
}

/// A caller that goes away once its step is staged (an RPC whose client hung
/// up: tonic drops the handler's future) must not leave a committed step that
/// nothing runs until the next restart. The submit is polled once, then
/// dropped mid-commit.
#[tokio::test]
async fn a_step_whose_caller_went_away_mid_commit_still_runs() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    for i in 0..5 {
        let id = format!("orphan-{i}");
        let submit = engine.submit_new(
            spec_with(&id, serde_json::json!({"sleep_ms": 0})),
            Secrets::default(),
        );
        // Polled once (staged, waiting for its commit), then dropped.
        let dropped = tokio::time::timeout(Duration::ZERO, submit).await;
        assert!(dropped.is_err(), "the submit finished on its first poll");
        until_state(&engine, &id, StepState::Succeeded).await;
    }
}

/// The same for CancelStep: a caller gone once CANCELLED is staged must not
/// leave the step's task running behind its CANCELLED record.
#[tokio::test]
async fn a_cancel_whose_caller_went_away_mid_commit_still_stops_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let spec = spec_with("long", serde_json::json!({"sleep_ms": 30_000}));
    engine.submit_new(spec, Secrets::default()).await.unwrap();
    let cancel = engine.cancel("long");
    let dropped = tokio::time::timeout(Duration::ZERO, cancel).await;
    assert!(dropped.is_err(), "the cancel finished on its first poll");
    until_state(&engine, "long", StepState::Cancelled).await;
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    while engine.lock().runs.contains_key("long") {
        assert!(
            tokio::time::Instant::now() < until,
            "the cancelled step's task still runs"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
