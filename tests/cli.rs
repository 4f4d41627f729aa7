//! obhostctl against the real daemon: output, exit codes and error text.

mod common;

use common::*;

#[tokio::test]
async fn steps_get_list_cancel_retry_in_text_and_json() {
    let d = Daemon::start();
    let mut req = test_step("cli-1", 0.0);
    req.meta.as_mut().unwrap().dag_id = "dag-7".into();
    run_test_step(&d, req).await;
    wait_terminal(&d, "cli-1").await;

    let (code, out, err) = obhostctl(Some(&d), &["steps", "get", "cli-1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("state      SUCCEEDED"), "{out}");
    assert!(out.contains("dag        dag-7"), "{out}");

    let (code, out, _) = obhostctl(Some(&d), &["-o", "json", "steps", "get", "cli-1"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["id"], "cli-1");
    assert_eq!(v["state"], "STEP_STATE_SUCCEEDED");
    assert_eq!(v["dagId"], "dag-7");

    let (code, out, _) = obhostctl(Some(&d), &["steps", "list", "--dag-id", "dag-7"]);
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .any(|l| l.starts_with("cli-1") && l.contains("SUCCEEDED")),
        "{out}"
    );

    run_test_step(&d, test_step("cli-2", 30.0)).await;
    let (code, out, _) = obhostctl(Some(&d), &["steps", "cancel", "cli-2"]);
    assert_eq!(code, 0);
    assert!(out.contains("CANCELLED"), "{out}");
    let (code, out, _) = obhostctl(Some(&d), &["-o", "json", "steps", "retry", "cli-2"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["attempt"], 2);

    let (code, _, err) = obhostctl(Some(&d), &["steps", "retry", "cli-1"]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("obhostctl: FAILED_PRECONDITION: step 'cli-1' is SUCCEEDED"),
        "{err}"
    );
    let (code, _, err) = obhostctl(Some(&d), &["steps", "get", "missing"]);
    assert_eq!(code, 1);
    assert!(err.contains("NOT_FOUND"), "{err}");
}

#[tokio::test]
async fn watch_until_done_exits_with_the_outcome() {
    let d = Daemon::start();
    let mut req = test_step("cli-w", 0.3);
    req.progress_updates = 2;
    run_test_step(&d, req).await;
    let (code, out, err) = obhostctl(
        Some(&d),
        &["steps", "watch", "--step", "cli-w", "--until-done"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().last().unwrap().contains("SUCCEEDED"), "{out}");

    let mut failing = test_step("cli-wf", 0.0);
    failing.fail_code = "PROCESS_EXITED".into();
    run_test_step(&d, failing).await;
    // (Its -o json form is tests/output.rs's.)
    let (code, out, err) = obhostctl(
        Some(&d),
        &["steps", "watch", "--step", "cli-wf", "--until-done"],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.lines().last().unwrap().contains("FAILED"), "{out}");
    assert!(err.contains("PROCESS_EXITED"), "out: {out}\nerr: {err}");
}

#[tokio::test]
async fn host_prints_facts() {
    let d = Daemon::start();
    let (code, out, _) = obhostctl(Some(&d), &["host"]);
    assert_eq!(code, 0);
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert!(out.contains(boot_id.trim()), "{out}");
    let (code, out, _) = obhostctl(Some(&d), &["-o", "json", "host"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["bootId"], boot_id.trim());
}

#[test]
fn an_unreachable_daemon_is_exit_3_with_a_hint() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let (code, out, err) = obhostctl(None, &["--addr", &addr, "steps", "list"]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        err.contains(&format!("cannot reach obhostd at http://{addr}")),
        "{err}"
    );
    assert!(err.contains("systemctl status obhostd"), "{err}");
}

#[test]
fn bad_usage_is_exit_2() {
    let (code, _, err) = obhostctl(None, &["steps", "frobnicate"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn demo_runs_end_to_end_and_cleans_up() {
    let started = std::time::Instant::now();
    let (code, out, err) = obhostctl(None, &["demo"]);
    // obhostd stops at once when the demo is done with it, rather than
    // waiting out its 10 s shutdown_timeout for a connection left open.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "the demo took {:?}",
        started.elapsed()
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let dir = out
        .lines()
        .find_map(|l| l.strip_prefix("obhost demo: everything lives in "))
        .and_then(|l| l.split(' ').next())
        .expect("demo names its dir")
        .to_string();
    assert!(
        out.lines()
            .any(|l| l.starts_with("demo-start") && l.contains("SUCCEEDED")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("demo-stop") && l.contains("SUCCEEDED")),
        "{out}"
    );
    assert!(out.contains("observer: running=true"), "{out}");
    // What obhostd pushed to the demo's report-sink, the stop's end included.
    assert!(
        out.lines().any(
            |l| l.starts_with("    pushed to the orchestrator: demo-host")
                && l.contains("demo-stop SUCCEEDED")
        ),
        "{out}"
    );
    assert!(
        !std::path::Path::new(&dir).exists(),
        "demo left {dir} behind"
    );
}

#[test]
fn demo_runs_the_real_seekdb_kernel_through_the_wrapper() {
    let Some(seekdb) = seekdb() else { return };
    let wrapper =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/observer-seekdb.sh");
    let env = format!("SEEKDB_BIN={}", seekdb.display());
    let (code, out, err) = obhostctl(
        None,
        &[
            "demo",
            "--observer",
            wrapper.to_str().unwrap(),
            "--observer-env",
            &env,
            "--pid-file",
            "run/seekdb.pid",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    for step in [
        "demo-prepare",
        "demo-start",
        "demo-wait",
        "demo-agent",
        "demo-stop",
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(step) && l.contains("SUCCEEDED")),
            "{step} did not succeed:\n{out}"
        );
    }
}

/// Default ids are unique: two stops on two homes in the same second are two
/// steps, not an ALREADY_EXISTS for the second.
#[test]
fn default_step_ids_never_collide() {
    let d = Daemon::start();
    let (a, b) = (Home::new(), Home::new());
    for home in [&a, &b] {
        let (code, out, err) = obhostctl(
            Some(&d),
            &[
                "stop-observer",
                "--missing-ok",
                "--home",
                home.path().to_str().unwrap(),
            ],
        );
        assert_eq!(code, 0, "{out}\n{err}");
        assert!(!err.contains("ALREADY_EXISTS"), "{err}");
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let steps = rt.block_on(async {
        d.client()
            .await
            .list_steps(obhost::proto::v1::ListStepsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .steps
    });
    let ids: Vec<&str> = steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.iter().all(|id| id.starts_with("stop-")), "{ids:?}");
}

/// Waiting for a step that does not exist ends at once with NOT_FOUND.
#[test]
fn watching_an_unknown_step_until_done_fails_at_once() {
    let d = Daemon::start();
    let started = std::time::Instant::now();
    let (code, out, err) = obhostctl(
        Some(&d),
        &["steps", "watch", "--step", "does-not-exist", "--until-done"],
    );
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("NOT_FOUND") && err.contains("does-not-exist"),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

/// `--step-ids` takes the four ids comma-separated, as its help says.
#[test]
fn step_ids_are_comma_separated_and_counted() {
    let d = Daemon::start();
    let home = Home::new();
    let (code, _out, err) = obhostctl(
        Some(&d),
        &[
            "start-observer",
            "--home",
            home.path().to_str().unwrap(),
            "--step-ids",
            "a1,a2,a3",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--step-ids needs 4 ids") && err.contains("got 3"),
        "{err}"
    );
    // Prepare finds the port taken, so the flow stops after creating b1.
    let holder = std::net::TcpListener::bind(("127.0.0.1", home.mysql_port)).unwrap();
    let port = home.mysql_port.to_string();
    let (_, _, err) = obhostctl(
        Some(&d),
        &[
            "start-observer",
            "--home",
            home.path().to_str().unwrap(),
            "--step-ids",
            "b1,b2,b3,b4",
            "--binary",
            FAKE_OBSERVER,
            "--mysql-port",
            &port,
            "--agent-program",
            "/bin/sleep",
            "--agent-arg",
            "60",
            "--agent-foreground",
            "--zone",
            "z1",
            "--cluster-name",
            "c",
            "--cluster-id",
            "1",
        ],
    );
    drop(holder);
    // Accepted as four ids: the flow ran and named them.
    assert!(
        !err.contains("unexpected") && !err.contains("--step-ids needs"),
        "{err}"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let first = rt.block_on(async {
        d.client()
            .await
            .get_step(obhost::proto::v1::GetStepRequest {
                step_id: "b1".into(),
            })
            .await
    });
    assert!(first.is_ok(), "step b1 was not created: {err}");
}

/// Every option of every subcommand says what it is, and no default shown is
/// a placeholder ("" or 0) standing in for "unset".
#[test]
fn help_documents_every_option_with_real_defaults() {
    let subcommands: &[&[&str]] = &[
        &["start-observer"],
        &["stop-observer"],
        &["observer"],
        &["observer", "logs"],
        &["host"],
        &["report-sink"],
        &["demo"],
        &["steps", "list"],
        &["steps", "get"],
        &["steps", "watch"],
        &["steps", "cancel"],
        &["steps", "retry"],
    ];
    for sub in subcommands {
        let mut args = sub.to_vec();
        args.push("--help");
        let (code, out, err) = obhostctl(None, &args);
        assert_eq!(code, 0, "{sub:?}: {err}");
        assert!(
            !out.contains("[default: \"\"]") && !out.contains("[default: 0]"),
            "{sub:?} shows a placeholder default:\n{out}"
        );
        // An option's text is on its line (after two spaces) or, in the long
        // form, on the next.
        let lines: Vec<&str> = out.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim_start();
            let is_arg = line.starts_with("  ") && (t.starts_with('-') || t.starts_with('<'));
            if !is_arg {
                continue;
            }
            let same_line = t
                .split_once("  ")
                .is_some_and(|(_, rest)| !rest.trim().is_empty());
            let next = lines.get(i + 1).map_or("", |l| l.trim());
            let next_line = !next.is_empty() && !next.starts_with('-') && !next.starts_with('<');
            assert!(same_line || next_line, "{sub:?}: '{t}' has no help:\n{out}");
        }
    }
    let (_, out, _) = obhostctl(None, &["start-observer", "--help"]);
    assert!(out.contains("[default: 2881]"), "{out}");
}

/// A port that accepts TCP and never answers: the call ends at its deadline
/// with a message, instead of hanging.
#[test]
fn a_silent_daemon_is_a_timeout_not_a_hang() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let started = std::time::Instant::now();
    let out = std::process::Command::new(OBHOSTCTL)
        .args(["--addr", &addr, "--timeout", "1s", "host"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "{err}"
    );
    assert!(err.contains("did not answer within --timeout"), "{err}");
    drop(silent);
}

/// `steps watch` outlives a restart of obhostd: it watches again from the
/// last revision it saw and still ends with the step's outcome.
#[tokio::test]
async fn watch_until_done_survives_a_restart_of_obhostd() {
    let d = Daemon::start();
    let mut req = test_step("survivor", 2.0);
    req.resumable = true;
    run_test_step(&d, req).await;
    let mut child = std::process::Command::new(OBHOSTCTL)
        .args([
            "--addr",
            &d.addr,
            "steps",
            "watch",
            "--step",
            "survivor",
            "--until-done",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Killed once the watch has printed the step: it is following by then.
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap());
    let first = tokio::task::spawn_blocking(move || {
        let mut first = String::new();
        std::io::BufRead::read_line(&mut lines, &mut first).unwrap();
        (first, lines)
    });
    let (first, mut lines) = tokio::time::timeout(std::time::Duration::from_secs(20), first)
        .await
        .expect("steps watch printed nothing in 20 s")
        .unwrap();
    assert!(first.contains("survivor"), "{first}");
    let _d = d.restart_after_kill9();
    let out = tokio::task::spawn_blocking(move || {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut lines, &mut rest).unwrap();
        (child.wait_with_output().unwrap(), rest)
    })
    .await
    .unwrap();
    let (out, rest) = out;
    let stdout = format!("{first}{rest}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stderr.contains("watching again after revision"), "{stderr}");
    assert!(stdout.contains("SUCCEEDED"), "{stdout}");
}

/// `demo -o json` prints exactly one JSON document.
#[test]
fn demo_json_is_one_document() {
    let (code, out, err) = obhostctl(None, &["-o", "json", "demo"]);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("one JSON document");
    assert_eq!(doc["dag"]["status"], "SUCCEEDED", "{doc}");
    assert_eq!(doc["observer"]["running"], true, "{doc}");
    assert_eq!(doc["steps"].as_array().unwrap().len(), 5, "{doc}");
    // The demo's document is obhostctl's summary: one spelling of states
    // throughout (the protobuf mapping is for `steps get -o json`).
    assert_eq!(doc["stop"]["status"], "SUCCEEDED", "{doc}");
    assert!(
        doc["steps"][0]["checks"]
            .as_array()
            .is_some_and(|c| !c.is_empty()),
        "{doc}"
    );
    assert!(
        !out.contains("STEP_STATE_") && !out.contains("CHECK_STATUS_"),
        "{out}"
    );
}

/// `demo --no-agent` runs the three observer steps and the stop, no agent.
#[test]
fn demo_runs_without_the_agent() {
    let (code, out, err) = obhostctl(None, &["-o", "json", "demo", "--no-agent"]);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("one JSON document");
    assert_eq!(doc["dag"]["tasks"].as_array().unwrap().len(), 3, "{doc}");
    let ids: Vec<&str> = doc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["demo-prepare", "demo-start", "demo-wait", "demo-stop"],
        "{doc}"
    );
}

/// `steps cancel` of a step that already ended says so and fails: CancelStep
/// returns it unchanged, which printed alone looked like a cancel that
/// worked. A running step is cancelled (exit 0), and cancelling it again is
/// no error.
#[tokio::test]
async fn cancelling_an_ended_step_says_nothing_was_cancelled() {
    let d = Daemon::start();
    run_steps_to_end(&d, "ended", 1).await;
    let (code, _out, err) = obhostctl(Some(&d), &["steps", "cancel", "ended-0"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("step ended-0 had already ended (SUCCEEDED); nothing was cancelled"),
        "{err}"
    );
    d.testing()
        .await
        .run_test_step(test_step("long", 30.0))
        .await
        .expect("RunTestStep");
    for _ in 0..2 {
        let (code, out, err) = obhostctl(Some(&d), &["steps", "cancel", "long"]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("CANCELLED"), "{out}");
    }
}

/// Runs obhostctl with `env` added to its environment (and no OBHOST_*
/// variable of the test's own), returning (exit code, stdout, stderr).
fn obhostctl_with_env(env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(OBHOSTCTL);
    for var in [
        "OBHOST_ADDR",
        "OBHOST_TOKEN_FILE",
        "OBHOST_CA_FILE",
        "OBHOST_CERT_FILE",
        "OBHOST_KEY_FILE",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd.envs(env.iter().copied()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The flags every command takes are under a heading of their own, after
/// the command's own flags, in the help of the top level and of a command.
#[test]
fn help_puts_the_global_options_under_their_own_heading() {
    let global = [
        "--addr <ADDR>",
        "--token-file <FILE>",
        "--ca-file <FILE>",
        "--cert-file <FILE>",
        "--key-file <FILE>",
        "-o, --output <OUTPUT>",
        "--timeout <TIMEOUT>",
    ];
    for (sub, own) in [
        (
            &["steps", "list"][..],
            &["--dag-id <DAG_ID>", "--state <STATE>"][..],
        ),
        (&["stop-observer"], &["--home <HOME>", "--grace <GRACE>"]),
        (&["start-observer"], &["--home <HOME>"]),
        (&[], &["-V, --version"]),
    ] {
        let mut args = sub.to_vec();
        args.push("--help");
        let (code, out, err) = obhostctl(None, &args);
        assert_eq!(code, 0, "{sub:?}: {err}");
        let (commands, globals) = out
            .split_once("\nGlobal options:\n")
            .unwrap_or_else(|| panic!("{sub:?}: no 'Global options:' heading:\n{out}"));
        for flag in global {
            assert!(
                globals.contains(flag),
                "{sub:?}: {flag} not under the heading:\n{out}"
            );
            assert!(
                !commands.contains(flag),
                "{sub:?}: {flag} among the command's own:\n{out}"
            );
        }
        for flag in own {
            assert!(
                commands.contains(flag),
                "{sub:?}: {flag} not in Options:\n{out}"
            );
            assert!(
                !globals.contains(flag),
                "{sub:?}: {flag} under the global heading:\n{out}"
            );
        }
    }
}

/// demo runs its own obhostd and refuses the flags that name another one (and
/// --timeout, which its calls to that obhostd do not use): its help does not
/// offer them, and given anyway they are still refused.
#[test]
fn demo_help_offers_no_flag_demo_refuses() {
    let (code, out, err) = obhostctl(None, &["demo", "--help"]);
    assert_eq!(code, 0, "{err}");
    for (flag, value) in [
        ("--addr", "/x"),
        ("--token-file", "/x"),
        ("--ca-file", "/x"),
        ("--cert-file", "/x"),
        ("--key-file", "/x"),
        ("--timeout", "5s"),
    ] {
        assert!(!out.contains(flag), "demo --help offers {flag}:\n{out}");
        let (code, _, err) = obhostctl(None, &["demo", flag, value]);
        assert_eq!(code, 2, "demo {flag}: {err}");
        assert!(
            err.contains(&format!("demo does not use {flag}")),
            "demo {flag}: {err}"
        );
    }
    assert!(out.contains("--observer <PATH>"), "{out}");
    assert!(out.contains("-o, --output"), "{out}");
}

/// OBHOST_ADDR in the environment says where obhostd is, but is not a flag
/// the operator typed: a usage error's usage line does not show `--addr
/// <ADDR>` as if the command required it (nor any other OBHOST_* flag).
#[tokio::test]
async fn obhost_addr_is_honoured_but_not_shown_as_required() {
    let d = Daemon::start();
    let env = [
        ("OBHOST_ADDR", d.addr.as_str()),
        ("OBHOST_TOKEN_FILE", "/nonexistent/token"),
    ];
    let (code, _, err) = obhostctl_with_env(&env, &["stop-observer"]);
    assert_eq!(code, 2, "{err}");
    let usage = err
        .lines()
        .find(|l| l.starts_with("Usage:"))
        .unwrap_or_else(|| panic!("no usage line:\n{err}"));
    assert_eq!(
        usage, "Usage: obhostctl stop-observer --home <HOME>",
        "{err}"
    );

    // Still read: the address from the variable, the token file too (whose
    // absence is the error), and a flag wins over its variable.
    let (code, _, err) = obhostctl_with_env(&env[..1], &["host"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = obhostctl_with_env(&env, &["host"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("cannot read OBHOST_TOKEN_FILE '/nonexistent/token'"),
        "{err}"
    );
    let (code, _, err) = obhostctl_with_env(
        &[("OBHOST_ADDR", "unix:/nonexistent/obhostd.sock")],
        &["--addr", &d.addr, "host"],
    );
    assert_eq!(code, 0, "{err}");
}

/// `steps watch --dag-id D --until-done` waits for every step of the DAG:
/// not only until the first record it is sent (the DAG's ended first step)
/// is terminal, but until the running one behind it ends; its exit status
/// is the DAG's, and a DAG with no steps is refused at once.
#[tokio::test]
async fn watch_until_done_waits_for_a_whole_dag() {
    let d = Daemon::start();
    let in_dag = |id: &str, dag: &str, run_for: f64| {
        let mut req = test_step(id, run_for);
        req.meta.as_mut().unwrap().dag_id = dag.into();
        req
    };
    run_test_step(&d, in_dag("good-1", "good", 0.0)).await;
    wait_terminal(&d, "good-1").await;
    run_test_step(&d, in_dag("good-2", "good", 1.5)).await;
    let started = std::time::Instant::now();
    let (code, out, err) = obhostctl(
        Some(&d),
        &["steps", "watch", "--dag-id", "good", "--until-done"],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(800),
        "ended before good-2 did:\n{out}"
    );
    let last = out.lines().last().unwrap_or_default();
    assert!(
        last.contains("good-2") && last.contains("SUCCEEDED"),
        "{out}"
    );

    run_test_step(&d, in_dag("bad-1", "bad", 0.0)).await;
    wait_terminal(&d, "bad-1").await;
    let mut failing = in_dag("bad-2", "bad", 1.0);
    failing.fail_code = "PROCESS_EXITED".into();
    run_test_step(&d, failing).await;
    let (code, out, err) = obhostctl(
        Some(&d),
        &["steps", "watch", "--dag-id", "bad", "--until-done"],
    );
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("step 'bad-2' ended FAILED: PROCESS_EXITED"),
        "out: {out}\nerr: {err}"
    );

    let (code, out, err) = obhostctl(
        Some(&d),
        &["steps", "watch", "--dag-id", "no-such-dag", "--until-done"],
    );
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("NOT_FOUND: DAG 'no-such-dag' has no steps"),
        "{err}"
    );
    // Without --dag-id or --step there is nothing to be done with.
    let (code, _, err) = obhostctl(Some(&d), &["steps", "watch", "--until-done"]);
    assert_eq!(code, 2, "{err}");
}

/// `steps list` shows the newest steps first, whatever their ids (ListSteps
/// pages by id), keeps the newest --limit of them, and says how many older
/// ones it left out and which flag lists them; -o json says it too.
#[tokio::test]
async fn steps_list_shows_the_newest_first_and_how_to_see_more() {
    let d = Daemon::start();
    // Made in this order; by id the newest sorts first and the oldest in
    // the middle.
    for id in ["m-oldest", "z-older", "b-middle", "y-newer", "a-newest"] {
        run_test_step(&d, test_step(id, 0.0)).await;
        wait_terminal(&d, id).await;
    }
    let ids = |out: &str| -> Vec<String> {
        out.lines()
            .skip(1)
            .filter(|l| !l.starts_with('('))
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    };
    let (code, out, err) = obhostctl(Some(&d), &["steps", "list"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        ids(&out),
        ["a-newest", "y-newer", "b-middle", "z-older", "m-oldest"],
        "{out}"
    );
    assert!(!out.contains("not shown"), "{out}");

    let (code, out, err) = obhostctl(Some(&d), &["steps", "list", "--limit", "2"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(ids(&out), ["a-newest", "y-newer"], "{out}");
    assert_eq!(
        out.lines().last(),
        Some("(3 older steps not shown: --limit 5 or --all lists them)"),
        "{out}"
    );
    // The flag it names does list them.
    let (_, out, _) = obhostctl(Some(&d), &["steps", "list", "--limit", "5"]);
    assert_eq!(ids(&out).len(), 5, "{out}");
    let (_, out, _) = obhostctl(Some(&d), &["steps", "list", "--all"]);
    assert_eq!(ids(&out).len(), 5, "{out}");

    let (code, out, err) = obhostctl(Some(&d), &["-o", "json", "steps", "list", "--limit", "2"]);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let json_ids: Vec<&str> = doc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(json_ids, ["a-newest", "y-newer"], "{out}");
    assert_eq!(doc["olderNotShown"], 3, "{out}");

    let (code, _, err) = obhostctl(Some(&d), &["steps", "list", "--limit", "0"]);
    assert_eq!(code, 2, "{err}");
}

/// `stop-observer` of a home where no observer runs (an empty home, a
/// mistyped one) says that nothing was stopped and exits 1, as `steps cancel`
/// of an ended step does; --missing-ok makes it exit 0, still saying so.
/// `-o json` is the error beside the step, as for a failed stop.
#[test]
fn stopping_where_no_observer_runs_says_nothing_was_stopped() {
    let d = Daemon::start();
    let home = Home::new();
    let empty = home.path().to_str().unwrap();
    for h in [empty, "/nonexistent/obhost-home"] {
        let (code, out, err) = obhostctl(Some(&d), &["stop-observer", "--home", h]);
        assert_eq!(code, 1, "{h}: {out}\n{err}");
        assert!(
            err.contains(&format!(
                "obhostctl: no observer was running at home '{h}', so nothing was stopped"
            )) && err.contains("pass --missing-ok"),
            "{h}: {err}"
        );
    }
    let (code, out, err) = obhostctl(
        Some(&d),
        &["stop-observer", "--missing-ok", "--home", empty],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("no observer was running at home"), "{err}");
    assert!(!err.contains("pass --missing-ok"), "{err}");

    let (code, out, err) = obhostctl(Some(&d), &["-o", "json", "stop-observer", "--home", empty]);
    assert_eq!(code, 1, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("one JSON document");
    assert_eq!(doc["error"]["code"], "NOT_RUNNING", "{doc}");
    assert_eq!(doc["error"]["exit_status"], 1, "{doc}");
    assert_eq!(doc["step"]["outputs"]["already_stopped"], "true", "{doc}");
    let (code, out, _) = obhostctl(
        Some(&d),
        &[
            "-o",
            "json",
            "stop-observer",
            "--missing-ok",
            "--home",
            empty,
        ],
    );
    assert_eq!(code, 0);
    let doc: serde_json::Value = serde_json::from_str(&out).expect("one JSON document");
    assert_eq!(doc["state"], "STEP_STATE_SUCCEEDED", "{doc}");
}

/// A value that came from an OBHOST_* variable is named by that variable in
/// the error about it, and a flag by the flag: an operator who exported
/// OBHOST_CA_FILE long ago does not look for a --ca-file they never typed.
#[test]
fn an_error_names_the_variable_or_flag_that_gave_the_value() {
    let plain = "127.0.0.1:1";
    let (code, _, err) = obhostctl_with_env(
        &[
            ("OBHOST_ADDR", plain),
            ("OBHOST_CA_FILE", "/nonexistent/ca.pem"),
        ],
        &["host"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!(
            "OBHOST_CA_FILE is for https:// addresses, and OBHOST_ADDR '{plain}' is not one"
        )),
        "{err}"
    );
    let (code, _, err) = obhostctl_with_env(
        &[],
        &["--addr", plain, "--ca-file", "/nonexistent/ca.pem", "host"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!(
            "--ca-file is for https:// addresses, and --addr '{plain}' is not one"
        )),
        "{err}"
    );
    let (code, _, err) = obhostctl_with_env(
        &[("OBHOST_CA_FILE", "/nonexistent/ca.pem")],
        &["--addr", "https://127.0.0.1:1", "host"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("cannot read OBHOST_CA_FILE '/nonexistent/ca.pem'"),
        "{err}"
    );
    let (code, _, err) = obhostctl_with_env(&[("OBHOST_ADDR", "relative.sock")], &["host"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("cannot reach obhostd at http://relative.sock"),
        "{err}"
    );
    let (code, _, err) = obhostctl_with_env(&[("OBHOST_ADDR", "unix:run/x.sock")], &["host"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("OBHOST_ADDR 'unix:run/x.sock' names a relative socket path"),
        "{err}"
    );
}
