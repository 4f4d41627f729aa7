//! `[report]`: obhostd pushes every step change to the orchestrator's
//! StepReporter, at least once, in revision order, across crashes of either
//! side. The receivers are real processes: `obhostctl report-sink` and an
//! independent one in Python's grpcio.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::tls::Ca;
use common::*;
use obhost::proto::v1 as pb;
use serde_json::Value;

/// A receiver at a fixed address, a Unix socket unless it serves TLS (which
/// needs a host name, so a loopback port); what it printed, kept across its
/// restarts.
struct Sink {
    port: u16,
    socket: Option<PathBuf>,
    _dir: tempfile::TempDir,
    args: Vec<String>,
    python: bool,
    child: Option<Child>,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Sink {
    /// `obhostctl -o json report-sink` on a Unix socket, with `extra` flags;
    /// not started yet.
    fn ours(extra: &[&str]) -> Sink {
        Sink::ours_at(extra, true)
    }

    /// The same on a loopback port (for TLS).
    fn ours_tcp(extra: &[&str]) -> Sink {
        Sink::ours_at(extra, false)
    }

    fn ours_at(extra: &[&str], unix: bool) -> Sink {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let socket = unix.then(|| dir.path().join("reporter.sock"));
        let mut args: Vec<String> = ["-o", "json", "report-sink", "--listen"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(match &socket {
            Some(s) => format!("unix:{}", s.display()),
            None => format!("127.0.0.1:{port}"),
        });
        args.extend(extra.iter().map(|s| s.to_string()));
        Sink {
            port,
            socket,
            _dir: dir,
            args,
            python: false,
            child: None,
            lines: Arc::default(),
        }
    }

    /// The Python grpcio receiver on a Unix socket, or None where grpcio is
    /// not installed.
    fn python(fail: Option<&str>) -> Option<Sink> {
        let ok = Command::new("python3")
            .args(["-c", "import grpc, grpc_tools"])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must have grpcio (pip install grpcio grpcio-tools)"
            );
            eprintln!("SKIPPED: python3 grpcio/grpcio-tools not installed");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("reporter.sock");
        let root = env!("CARGO_MANIFEST_DIR");
        let mut args = vec![
            format!("{root}/tests/clients/python_sink.py"),
            format!("{root}/proto"),
            format!("unix:{}", socket.display()),
        ];
        if let Some(flag) = fail {
            // "unavailable" (a status to fail with), or "delay=SECONDS".
            match flag.strip_prefix("delay=") {
                Some(secs) => args.extend(["--delay".to_string(), secs.to_string()]),
                None => args.extend(["--fail".to_string(), flag.to_string()]),
            }
        }
        Some(Sink {
            port: 0,
            socket: Some(socket),
            _dir: dir,
            args,
            python: true,
            child: None,
            lines: Arc::default(),
        })
    }

    /// What obhostd's `[report] endpoint` names: the socket, or for TLS the
    /// port.
    fn endpoint(&self) -> String {
        match &self.socket {
            Some(s) => format!("unix:{}", s.display()),
            None => format!("https://localhost:{}", self.port),
        }
    }

    fn start(&mut self) {
        let program = if self.python { "python3" } else { OBHOSTCTL };
        // A restarted sink binds the same path again.
        if let Some(s) = &self.socket {
            let _ = std::fs::remove_file(s);
        }
        let mut child = Command::new(program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the sink");
        let out = child.stdout.take().unwrap();
        let lines = self.lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    lines.lock().unwrap().push(v);
                }
            }
        });
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(30);
        let listening = |s: &Sink| match &s.socket {
            Some(path) => std::os::unix::net::UnixStream::connect(path).is_ok(),
            None => std::net::TcpStream::connect(("127.0.0.1", s.port)).is_ok(),
        };
        while !listening(self) {
            assert!(Instant::now() < end, "the sink did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn lines(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    /// Each step as last received: id → (revision, state).
    fn steps(&self) -> BTreeMap<String, (u64, String)> {
        let mut out = BTreeMap::new();
        for l in self.lines() {
            if let Some(s) = l.get("step") {
                let id = s["id"].as_str().unwrap().to_string();
                let rev = revision(&s["revision"]);
                let state = s["state"].as_str().unwrap().to_string();
                let e = out.entry(id).or_insert((0, String::new()));
                if rev >= e.0 {
                    *e = (rev, state);
                }
            }
        }
        out
    }

    /// Waits until the sink has each of `steps` at its final revision.
    fn wait_for(&self, expected: &BTreeMap<String, u64>, within: Duration) {
        let end = Instant::now() + within;
        loop {
            let got = self.steps();
            let missing: Vec<_> = expected
                .iter()
                .filter(|(id, rev)| got.get(*id).is_none_or(|(r, _)| r < rev))
                .collect();
            if missing.is_empty() {
                return;
            }
            assert!(
                Instant::now() < end,
                "the sink never received {} final records, e.g. {:?}",
                missing.len(),
                &missing[..missing.len().min(5)]
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.kill();
    }
}

/// pbjson prints uint64 as a string.
fn revision(v: &Value) -> u64 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v.as_u64())
        .unwrap_or_else(|| panic!("not a revision: {v}"))
}

/// A `[report]` section with quick test timings, unless `extra` sets them.
fn report_config(endpoint: &str, extra: &str) -> String {
    let mut c = format!("[report]\nendpoint = \"{endpoint}\"\nagent_id = \"agent-1\"\n{extra}");
    for (key, value) in [("batch_delay", "\"20ms\""), ("max_backoff", "\"300ms\"")] {
        if !extra.contains(key) {
            c.push_str(&format!("{key} = {value}\n"));
        }
    }
    c
}

/// Every batch continues from where the agent's acknowledged changes ended:
/// across restarts of the sink (each restart may repeat) and of obhostd.
fn assert_no_gap(lines: &[Value]) {
    let mut through = 0;
    for l in lines {
        if let Some(b) = l.get("batch") {
            let after = b["after_revision"].as_u64().unwrap();
            assert!(
                after <= through || through == 0,
                "gap: a batch continues after {after} but only {through} was received"
            );
            through = through.max(b["through"].as_u64().unwrap());
        }
        assert!(l.get("gap").is_none(), "the sink saw a gap: {l}");
    }
}

async fn final_revisions(d: &Daemon, ids: &[String]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for id in ids {
        let s = wait_terminal(d, id).await;
        out.insert(id.clone(), s.revision);
    }
    out
}

#[tokio::test]
async fn a_late_sink_gets_every_change_in_order() {
    let mut sink = Sink::ours(&[]);
    let d = Daemon::start_with(Options {
        config: report_config(&sink.endpoint(), ""),
        ..Options::default()
    });
    // The sink is down: steps run as ever.
    let ids: Vec<String> = (0..5).map(|i| format!("late-{i}")).collect();
    for id in &ids {
        run_test_step(&d, test_step(id, 0.0)).await;
    }
    let expected = final_revisions(&d, &ids).await;
    for id in &ids {
        assert_eq!(get_step(&d, id).await.state(), pb::StepState::Succeeded);
    }
    sink.start();
    sink.wait_for(&expected, Duration::from_secs(15));
    let lines = sink.lines();
    assert_no_gap(&lines);
    // Per step, in revision order; the batch names who sent it.
    let mut last: HashMap<String, u64> = HashMap::new();
    for l in &lines {
        if let Some(s) = l.get("step") {
            let rev = revision(&s["revision"]);
            let prev = last.insert(s["id"].as_str().unwrap().into(), rev);
            assert!(prev.is_none_or(|p| p < rev), "out of order: {l}");
        }
        if let Some(b) = l.get("batch") {
            assert_eq!(l["agent_id"], "agent-1");
            assert_eq!(b["version"], env!("CARGO_PKG_VERSION"));
        }
    }
    assert!(d.log_text().contains("cannot report step changes"));
    let end = Instant::now() + Duration::from_secs(5);
    while !d.log_text().contains("reporting step changes again") {
        assert!(Instant::now() < end, "no word that reporting works again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn crashes_of_either_side_lose_nothing() {
    let mut sink = Sink::ours(&[]);
    sink.start();
    let mut d = Daemon::start_with(Options {
        config: report_config(&sink.endpoint(), "batch_max = 8\n"),
        ..Options::default()
    });
    let mut ids = Vec::new();
    let mut kills = 0;
    for round in 0..6 {
        for i in 0..12 {
            let id = format!("crash-{round}-{i}");
            run_test_step(&d, test_step(&id, fastrand::f64() * 0.05)).await;
            ids.push(id);
        }
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..60))).await;
        if round % 2 == 0 {
            sink.kill();
            tokio::time::sleep(Duration::from_millis(fastrand::u64(0..200))).await;
            sink.start();
        } else {
            d = d.restart_after_kill9();
        }
        kills += 1;
    }
    let expected = final_revisions(&d, &ids).await;
    sink.wait_for(&expected, Duration::from_secs(30));
    let lines = sink.lines();
    assert_no_gap(&lines);
    for (id, (_, state)) in sink.steps() {
        assert!(
            ["STEP_STATE_SUCCEEDED", "STEP_STATE_FAILED"].contains(&state.as_str()),
            "{id} ended {state}"
        );
    }
    // At least once: a batch sent but not acknowledged before a crash comes
    // again, so repeats are bounded by one batch per crash.
    let duplicates = lines.iter().filter(|l| l["duplicate"] == true).count();
    assert!(
        duplicates <= kills * 8,
        "{duplicates} duplicates for {kills} crashes"
    );
}

#[tokio::test]
async fn a_thousand_changes_go_in_few_calls() {
    let Some(mut sink) = Sink::python(None) else {
        return;
    };
    sink.start();
    let d = Daemon::start_with(Options {
        config: format!(
            "{}[limits]\nmax_active_steps = 600\n",
            report_config(&sink.endpoint(), "batch_delay = \"100ms\"\n")
        ),
        ..Options::default()
    });
    // A burst: 500 steps started at once, each RUNNING then (0.3 s later,
    // all together) SUCCEEDED: 1000 changes. A change goes at once only when
    // no batch is in flight; under a burst, batches fill.
    let ids: Vec<String> = (0..500).map(|i| format!("many-{i:03}")).collect();
    let t = d.testing().await;
    let mut burst = tokio::task::JoinSet::new();
    for id in &ids {
        let (mut t, req) = (t.clone(), test_step(id, 0.3));
        burst.spawn(async move { t.run_test_step(req).await.expect("RunTestStep") });
    }
    while let Some(r) = burst.join_next().await {
        r.unwrap();
    }
    let expected = final_revisions(&d, &ids).await;
    let end = Instant::now() + Duration::from_secs(20);
    let calls = loop {
        let lines = sink.lines();
        let mut got: HashMap<String, u64> = HashMap::new();
        for l in &lines {
            for s in l["steps"].as_array().into_iter().flatten() {
                let e = got.entry(s["id"].as_str().unwrap().into()).or_default();
                *e = (*e).max(s["revision"].as_u64().unwrap());
            }
        }
        if expected
            .iter()
            .all(|(id, r)| got.get(id).is_some_and(|g| g >= r))
        {
            break lines.iter().filter(|l| l.get("steps").is_some()).count();
        }
        assert!(Instant::now() < end, "python sink missing changes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(calls <= 100, "1000 changes took {calls} calls");
    assert!(
        calls >= 4,
        "{calls} calls for 1000 changes over batches of 256"
    );
}

#[tokio::test]
async fn an_unavailable_sink_is_retried_with_backoff() {
    let Some(mut sink) = Sink::python(Some("unavailable")) else {
        return;
    };
    sink.start();
    let d = Daemon::start_with(Options {
        config: report_config(&sink.endpoint(), "max_backoff = \"2s\"\n"),
        ..Options::default()
    });
    run_test_step(&d, test_step("refused", 0.0)).await;
    wait_terminal(&d, "refused").await;
    // A fixed time on purpose: the test counts the calls made in a window.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let times: Vec<f64> = sink
        .lines()
        .iter()
        .filter_map(|l| l["at"].as_f64())
        .collect();
    // Without backoff: a call per few ms, over a thousand in 5 s. With it
    // (100 ms doubling to 2 s, jittered): about ten.
    assert!(
        (3..=20).contains(&times.len()),
        "{} calls in 5 s",
        times.len()
    );
    let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.last().unwrap() > &gaps[0],
        "pauses do not grow: {gaps:?}"
    );
    // Logged once, not at every retry.
    let warned = d.log_text().matches("cannot report step changes").count();
    assert_eq!(warned, 1, "{}", d.log_text());
}

#[tokio::test]
async fn a_full_outbox_drops_the_oldest_and_says_so() {
    let mut sink = Sink::ours(&[]);
    let d = Daemon::start_with(Options {
        config: report_config(&sink.endpoint(), "max_unacked = 10\n"),
        ..Options::default()
    });
    let ids: Vec<String> = (0..20).map(|i| format!("full-{i:02}")).collect();
    for id in &ids {
        run_test_step(&d, test_step(id, 0.0)).await;
    }
    let expected = final_revisions(&d, &ids).await;
    sink.start();
    // Every change took a revision of a fresh store: the newest ten survive,
    // and the steps whose last change is among them arrive at it.
    let last = *expected.values().max().unwrap();
    let newest: BTreeMap<String, u64> = expected
        .iter()
        .filter(|(_, rev)| **rev > last - 10)
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    assert!(!newest.is_empty());
    sink.wait_for(&newest, Duration::from_secs(15));
    let lines = sink.lines();
    let dropped: u64 = lines.iter().filter_map(|l| l["dropped"].as_u64()).sum();
    assert_eq!(dropped, last - 10, "{last} changes, 10 kept: {lines:?}");
    assert!(!sink.steps().contains_key("full-00"));
    assert!(lines.iter().all(|l| l.get("gap").is_none()));
}

#[tokio::test]
async fn mtls_to_the_sink_needs_the_right_ca_and_certificate() {
    let server_ca = Ca::new("orchestrator ca");
    let agent_ca = Ca::new("agents ca");
    let other_ca = Ca::new("someone else");
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let (cert, key) = server_ca.leaf("sink", &["localhost", "127.0.0.1"], false);
    let sink_cert = write("sink.pem", &cert);
    let sink_key = write("sink.key", &key);
    let agent_ca_file = write("agents-ca.pem", &agent_ca.pem());
    let mut sink = Sink::ours_tcp(&[
        "--tls-cert",
        &sink_cert,
        "--tls-key",
        &sink_key,
        "--client-ca",
        &agent_ca_file,
    ]);
    sink.start();
    let endpoint = sink.endpoint();
    let tls = |ca: &Ca, client: &Ca, tag: &str| {
        let (c, k) = client.leaf("agent-1", &["agent-1"], false);
        format!(
            "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            write(&format!("{tag}-ca.pem"), &ca.pem()),
            write(&format!("{tag}.pem"), &c),
            write(&format!("{tag}.key"), &k)
        )
    };

    // Trusting another CA than the sink's: nothing is sent.
    let wrong_ca = Daemon::start_with(Options {
        config: report_config(&endpoint, &tls(&other_ca, &agent_ca, "wrong-ca")),
        ..Options::default()
    });
    run_test_step(&wrong_ca, test_step("via-wrong-ca", 0.0)).await;
    // A certificate the sink does not accept: refused too.
    let wrong_cert = Daemon::start_with(Options {
        config: report_config(&endpoint, &tls(&server_ca, &other_ca, "wrong-cert")),
        ..Options::default()
    });
    run_test_step(&wrong_cert, test_step("via-wrong-cert", 0.0)).await;
    let good = Daemon::start_with(Options {
        config: report_config(&endpoint, &tls(&server_ca, &agent_ca, "good")),
        ..Options::default()
    });
    run_test_step(&good, test_step("via-mtls", 0.0)).await;
    let expected = final_revisions(&good, &["via-mtls".to_string()]).await;
    sink.wait_for(&expected, Duration::from_secs(15));
    // Each refused daemon has tried to report, and failed.
    for refused in [&wrong_ca, &wrong_cert] {
        refused.wait_for_log_line("cannot report step changes", Duration::from_secs(15));
    }
    let got = sink.steps();
    assert!(
        !got.contains_key("via-wrong-ca") && !got.contains_key("via-wrong-cert"),
        "{got:?}"
    );
}

#[test]
fn a_report_endpoint_in_clear_to_another_host_is_refused() {
    let err = match Daemon::spawn(
        Options {
            config: report_config("http://192.0.2.1:62950", ""),
            ..Options::default()
        },
        tempfile::tempdir().unwrap().keep().join("state"),
        None,
    ) {
        Ok(_) => panic!("obhostd started with a clear-text report endpoint to another host"),
        Err(e) => e,
    };
    assert!(err.contains("plain http to another host"), "{err}");
}

#[tokio::test]
async fn retention_never_takes_a_change_not_yet_reported() {
    let mut sink = Sink::ours(&[]);
    let d = Daemon::start_with(Options {
        config: format!(
            "[retention]\nmax_steps = 5\nprune_interval = \"100ms\"\n{}",
            report_config(&sink.endpoint(), "")
        ),
        ..Options::default()
    });
    let ids: Vec<String> = (0..20).map(|i| format!("kept-{i:02}")).collect();
    let mut expected = BTreeMap::new();
    for id in &ids {
        run_test_step(&d, test_step(id, 0.0)).await;
        let s = wait_terminal(&d, id).await;
        expected.insert(id.clone(), s.revision);
    }
    // The store forgets the oldest finished steps...
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = list_steps(&d).await.len();
        if listed <= 5 {
            break;
        }
        assert!(
            Instant::now() < end,
            "retention did not prune: {listed} steps"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...but not what the orchestrator has yet to hear.
    sink.start();
    sink.wait_for(&expected, Duration::from_secs(15));
}

/// Where another local user could listen in the orchestrator's place, every
/// step record would be theirs: plain http to a loopback port any user may
/// bind, or a Unix socket in a dir others can write, is refused at start.
#[test]
fn a_report_endpoint_another_user_could_take_is_refused() {
    let refused = |endpoint: &str| match Daemon::spawn(
        Options {
            config: report_config(endpoint, ""),
            ..Options::default()
        },
        tempfile::tempdir().unwrap().keep().join("state"),
        None,
    ) {
        Ok(_) => panic!("obhostd started with [report] endpoint {endpoint}"),
        Err(e) => e,
    };
    let err = refused("http://127.0.0.1:62950");
    assert!(err.contains("any local user can listen on"), "{err}");
    assert!(err.contains("unix:"), "says what to use instead: {err}");
    let open = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        open.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let err = refused(&format!("unix:{}/reporter.sock", open.path().display()));
    assert!(
        err.contains("another user could listen there in the orchestrator's place"),
        "{err}"
    );
    assert!(err.contains("can be written by every user"), "{err}");
}

/// An idle agent sends a change at once, not `batch_delay` after it: with a
/// batch_delay of 30 s, a step's end is at the sink within moments.
#[tokio::test]
async fn an_idle_agent_sends_a_change_at_once() {
    let Some(mut sink) = Sink::python(None) else {
        return;
    };
    sink.start();
    let d = Daemon::start_with(Options {
        config: report_config(&sink.endpoint(), "batch_delay = \"30s\"\n"),
        ..Options::default()
    });
    run_test_step(&d, test_step("at-once", 0.0)).await;
    let end = Instant::now() + Duration::from_secs(10);
    while !sink.lines().iter().any(|l| {
        l["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["id"] == "at-once" && s["state"] == "STEP_STATE_SUCCEEDED")
    }) {
        assert!(
            Instant::now() < end,
            "the change waited for batch_delay: {:?}",
            sink.lines()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A slow orchestrator: a change that comes while a batch is in flight waits
/// at most batch_delay, then goes in a second batch on the same connection,
/// before the first is answered; acknowledgements stay in order and nothing
/// is missing.
#[tokio::test]
async fn a_change_waits_at_most_batch_delay_behind_a_slow_answer() {
    let Some(mut sink) = Sink::python(Some("delay=3")) else {
        return;
    };
    sink.start();
    let d = Daemon::start_with(Options {
        config: report_config(&sink.endpoint(), "batch_delay = \"100ms\"\n"),
        ..Options::default()
    });
    run_test_step(&d, test_step("first", 0.0)).await;
    fn has(id: &'static str) -> impl Fn(&Value) -> bool {
        move |l: &Value| {
            l["steps"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["id"] == id)
        }
    }
    let end = Instant::now() + Duration::from_secs(10);
    while !sink.lines().iter().any(has("first")) {
        assert!(Instant::now() < end, "the first change never came");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The first batch is in flight for 3 s from now.
    run_test_step(&d, test_step("second", 0.0)).await;
    let end = Instant::now() + Duration::from_secs(20);
    while !sink.lines().iter().any(has("second")) {
        assert!(Instant::now() < end, "the second change never came");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lines = sink.lines();
    let at = |id: &'static str| {
        lines.iter().find(|l| has(id)(l)).unwrap()["at"]
            .as_f64()
            .unwrap()
    };
    // Sent before the first batch was answered, the second may not claim the
    // first's changes as acknowledged: a receiver that takes it first (as
    // this one does, holding the first) would see a gap.
    let after = |id: &'static str| {
        lines.iter().find(|l| has(id)(l)).unwrap()["after_revision"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(after("second"), after("first"), "{lines:?}");
    let waited = at("second") - at("first");
    assert!(
        waited < 2.0,
        "the second change waited {waited:.2}s, for the first batch's answer (3 s), not batch_delay"
    );
    assert_no_gap(&lines);
}
