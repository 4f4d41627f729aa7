//! What obhostctl prints, through the real binaries: live spinners and colours
//! on a terminal (a pseudo-terminal here), plain lines with no escape byte when
//! redirected, exactly one JSON document per command with `-o json` (errors
//! included), steps in the order their DAG ran, and `demo` refusing the flags
//! it would ignore.

mod common;

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, Stdio};

use common::flow::*;
use common::*;

/// An SGR sequence (colour, bold, dim...): ESC [ digits/semicolons m.
fn has_sgr(text: &str) -> bool {
    let b = text.as_bytes();
    (0..b.len()).any(|i| {
        b[i] == 0x1b && b.get(i + 1) == Some(&b'[') && {
            let rest = &b[i + 2..];
            let n = rest
                .iter()
                .take_while(|c| c.is_ascii_digit() || **c == b';')
                .count();
            rest.get(n) == Some(&b'm')
        }
    })
}

/// Runs obhostctl with stdout and stderr on a pseudo-terminal (120x40) and
/// returns (exit code, everything the terminal got).
fn on_a_terminal(d: &Daemon, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    on_a_terminal_of(120, d, args, env)
}

/// [`on_a_terminal`] with a terminal `cols` wide (0: one that does not say).
fn on_a_terminal_of(cols: u16, d: &Daemon, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let size = nix::pty::Winsize {
        ws_row: 40,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).expect("openpty");
    let (master, slave): (OwnedFd, OwnedFd) = (pty.master, pty.slave);
    let mut cmd = Command::new(OBHOSTCTL);
    cmd.args(["--addr", &d.addr])
        .args(args)
        .env_remove("OBHOST_ADDR")
        .env_remove("NO_COLOR")
        .env("TERM", "xterm-256color")
        .stdin(Stdio::null())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave.try_clone().unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run obhostctl");
    drop(slave);
    drop(cmd);
    // Read until the child's side closes (EIO on Linux).
    let reader = std::thread::spawn(move || {
        let mut file = std::fs::File::from(master);
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match file.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
        let _ = file.as_raw_fd();
        all
    });
    let status = child.wait().unwrap();
    let out = reader.join().unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out).into_owned(),
    )
}

/// On a terminal: a spinner while each step runs, the states in colour, the
/// step list as a drawn table, and still the flow's real exit status; with
/// NO_COLOR the spinner stays and the colours go.
#[test]
fn a_terminal_gets_spinners_colours_and_tables() {
    let d = Daemon::start();
    let home = Home::new();
    let agent_dir = tempfile::tempdir().unwrap();
    let args = flow_args(&home, "tty", agent_dir.path(), free_port());
    let (code, out) = on_a_terminal(&d, &strs(&args), &[]);
    kill_agent(&d, "tty-agent");
    assert_eq!(code, 0, "{out}");
    // indicatif's default spinner frames, and the finished line's mark.
    assert!(
        "⠁⠂⠄⡀⢀⠠⠐⠈".chars().any(|c| out.contains(c)),
        "no spinner: {out:?}"
    );
    assert!(out.contains("✔"), "{out:?}");
    // Each step's result is a line of its own that nothing draws over: the
    // text after its mark runs to a newline, with no carriage return (a
    // redraw) before it.
    for name in [
        "Prepare start observer",
        "Start observer process",
        "Wait observer active",
        "Start ocp agent service",
    ] {
        let at = out
            .find(&format!("✔\x1b[0m {name}"))
            .unwrap_or_else(|| panic!("no result line for {name}: {out:?}"));
        let rest = &out[at..];
        let end = rest.find('\n').expect("the line ends");
        assert!(
            !rest[..end].trim_end_matches('\r').contains('\r'),
            "{name}'s line is drawn over: {:?}",
            &rest[..end]
        );
    }
    // SUCCEEDED in green (SGR 32).
    assert!(out.contains("\x1b[32mSUCCEEDED"), "{out:?}");

    let (code, out) = on_a_terminal(&d, &["steps", "list", "--dag-id", "tty"], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains('╭') && out.contains('│'), "{out}");
    assert!(
        out.contains("\x1b[38;5;10m") || out.contains("\x1b[32m"),
        "{out:?}"
    );

    // NO_COLOR: the same live view, not a colour in it.
    let (code, out) = on_a_terminal(
        &d,
        &["stop-observer", "--home", home.path().to_str().unwrap()],
        &[("NO_COLOR", "1")],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("✔"), "{out:?}");
    assert!(!has_sgr(&out), "a colour with NO_COLOR set: {out:?}");
}

/// `steps watch --until-done` on a terminal: the changes above a spinner,
/// and the outcome as the exit status.
#[tokio::test]
async fn a_watch_on_a_terminal_spins_until_done() {
    let d = Daemon::start();
    let mut req = test_step("tty-w", 1.0);
    req.progress_updates = 2;
    run_test_step(&d, req).await;
    let (code, out) = tokio::task::spawn_blocking(move || {
        let r = on_a_terminal(
            &d,
            &["steps", "watch", "--step", "tty-w", "--until-done"],
            &[],
        );
        drop(d);
        r
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("watching step tty-w"), "{out:?}");
    assert!(out.contains("\x1b[32mSUCCEEDED"), "{out:?}");
}

/// A terminal that does not say its width still gets a readable table (not
/// one squeezed to a character per column).
#[tokio::test]
async fn a_terminal_of_unknown_width_keeps_tables_whole() {
    let d = Daemon::start();
    let mut req = test_step("a-rather-long-step-id", 0.0);
    req.meta.as_mut().unwrap().dag_id = "w".into();
    run_test_step(&d, req).await;
    wait_terminal(&d, "a-rather-long-step-id").await;
    let (code, out) = on_a_terminal_of(0, &d, &["steps", "list"], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("a-rather-long-step-id"), "{out}");
    assert!(out.contains("STEP"), "{out}");
}

/// A step that fails shows red on a terminal and the command exits 1.
#[test]
fn a_failure_on_a_terminal_is_red_and_exit_1() {
    let d = Daemon::start();
    let home = Home::new();
    let agent_dir = tempfile::tempdir().unwrap();
    let mut args = flow_args(&home, "ttybad", agent_dir.path(), free_port());
    args.extend(["--env".into(), "FAKE_OBSERVER_EXIT_AT_START=5".into()]);
    let (code, out) = on_a_terminal(&d, &strs(&args), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("\x1b[31mFAILED"), "{out:?}");
    assert!(out.contains("✘"), "{out:?}");
}

/// Redirected, nothing obhostctl prints has an escape byte: not on stdout, not
/// on stderr, text or JSON, success or failure.
#[tokio::test]
async fn redirected_output_has_no_escape_byte() {
    let d = Daemon::start();
    let mut req = test_step("plain-1", 0.0);
    req.meta.as_mut().unwrap().dag_id = "plain".into();
    run_test_step(&d, req).await;
    let mut failing = test_step("plain-2", 0.0);
    failing.fail_code = "PROCESS_EXITED".into();
    run_test_step(&d, failing).await;
    wait_terminal(&d, "plain-1").await;
    wait_terminal(&d, "plain-2").await;
    let home = Home::new();
    let home_s = home.path().to_str().unwrap().to_string();
    let agent_dir = tempfile::tempdir().unwrap();
    let mut flow = flow_args(&home, "plainflow", agent_dir.path(), free_port());
    flow.extend(["--env".into(), "FAKE_OBSERVER_EXIT_AT_START=5".into()]);
    let commands: Vec<Vec<String>> = vec![
        vec!["steps".into(), "list".into()],
        vec![
            "steps".into(),
            "list".into(),
            "--dag-id".into(),
            "none".into(),
        ],
        vec!["steps".into(), "get".into(), "plain-1".into()],
        vec!["steps".into(), "get".into(), "missing".into()],
        vec![
            "steps".into(),
            "watch".into(),
            "--step".into(),
            "plain-2".into(),
            "--until-done".into(),
        ],
        vec!["steps".into(), "cancel".into(), "plain-1".into()],
        vec!["steps".into(), "retry".into(), "plain-2".into()],
        vec!["host".into()],
        vec!["observer".into(), "--home".into(), home_s.clone()],
        vec!["stop-observer".into(), "--home".into(), home_s.clone()],
        flow,
    ];
    for cmd in &commands {
        for json in [false, true] {
            let mut argv: Vec<&str> = if json { vec!["-o", "json"] } else { vec![] };
            argv.extend(strs(cmd));
            // Even a terminal-ish TERM and a forced colour preference do not
            // put escapes in a pipe.
            let out = Command::new(OBHOSTCTL)
                .args(["--addr", &d.addr])
                .args(&argv)
                .env("TERM", "xterm-256color")
                .env("CLICOLOR_FORCE", "1")
                .output()
                .unwrap();
            let (stdout, stderr) = (
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
            );
            assert!(
                !out.stdout.contains(&0x1b) && !out.stderr.contains(&0x1b),
                "{argv:?} printed an escape byte:\n{stdout:?}\n{stderr:?}"
            );
            assert!(!stdout.is_empty() || !stderr.is_empty(), "{argv:?}");
            // With -o json stdout is exactly one document (a watch: one per
            // line), success or failure.
            if json {
                if cmd[0] == "steps" && cmd[1] == "watch" {
                    for l in stdout.lines() {
                        serde_json::from_str::<serde_json::Value>(l)
                            .unwrap_or_else(|e| panic!("{argv:?}: {e}: {l}"));
                    }
                } else {
                    serde_json::from_str::<serde_json::Value>(&stdout)
                        .unwrap_or_else(|e| panic!("{argv:?}: not one document ({e}):\n{stdout}"));
                }
            }
        }
    }
}

/// The demo too (it starts its own obhostd, so it takes no --addr).
#[test]
fn a_redirected_demo_has_no_escape_byte() {
    for json in [false, true] {
        let argv: &[&str] = if json {
            &["-o", "json", "demo"]
        } else {
            &["demo"]
        };
        let out = Command::new(OBHOSTCTL)
            .args(argv)
            .env_remove("OBHOST_ADDR")
            .env("TERM", "xterm-256color")
            .env("CLICOLOR_FORCE", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.stdout.contains(&0x1b) && !out.stderr.contains(&0x1b),
            "{argv:?}"
        );
        if json {
            let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert!(doc["stop"]["startTime"].as_str().unwrap().ends_with('Z'));
        }
    }
}

/// Each command's stdout with `-o json` is exactly one JSON document (the
/// watch: one per line); a failing command's document is `{"error": ...}`
/// with its code and exit status, whatever failed; lists are there when
/// empty; timestamps end in Z.
#[tokio::test]
async fn json_is_one_document_and_errors_are_json_too() {
    let d = Daemon::start();
    let json = |args: &[&str]| -> (i32, serde_json::Value, String) {
        let mut argv = vec!["-o", "json"];
        argv.extend(args);
        let (code, out, err) = obhostctl(Some(&d), &argv);
        let doc = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("{args:?}: not one JSON document ({e}):\n{out}"));
        (code, doc, err)
    };

    // An empty list is an empty array, so `jq '.steps[]'` works.
    let (code, doc, _) = json(&["steps", "list"]);
    assert_eq!(code, 0);
    assert_eq!(doc, serde_json::json!({"steps": []}));

    let mut req = test_step("j-1", 0.0);
    req.meta.as_mut().unwrap().dag_id = "j".into();
    run_test_step(&d, req).await;
    wait_terminal(&d, "j-1").await;
    let (code, doc, _) = json(&["steps", "get", "j-1"]);
    assert_eq!(code, 0);
    for field in ["createdAt", "startedAt", "finishedAt", "deadline"] {
        let t = doc[field].as_str().unwrap_or_default();
        assert!(t.ends_with('Z') && !t.contains("+00:00"), "{field}: {doc}");
    }
    assert_eq!(doc["checks"], serde_json::json!([]), "{doc}");
    let (_, doc, _) = json(&["steps", "list", "--dag-id", "j"]);
    assert_eq!(doc["steps"][0]["id"], "j-1");
    assert!(
        doc["steps"][0]["createdAt"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    let (_, doc, _) = json(&["host"]);
    assert!(doc["disks"].is_array(), "{doc}");

    // RPC status.
    let (code, doc, err) = json(&["steps", "get", "missing"]);
    assert_eq!(code, 1);
    assert_eq!(doc["error"]["code"], "NOT_FOUND", "{doc}");
    assert_eq!(doc["error"]["exit_status"], 1);
    let message = doc["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("'missing'") && !message.starts_with("NOT_FOUND"),
        "the code is in its own field: {doc}"
    );
    assert!(
        err.contains("NOT_FOUND"),
        "the human line stays on stderr: {err}"
    );

    // Usage found after parsing.
    let (code, doc, _) = json(&[
        "start-observer",
        "--home",
        "/nonexistent/h",
        "--step-ids",
        "a,b",
    ]);
    assert_eq!(code, 2);
    assert_eq!(doc["error"]["code"], "USAGE", "{doc}");
    assert_eq!(doc["error"]["exit_status"], 2);

    // Usage that does not even parse: clap's words, as JSON on stdout too.
    let (code, out, err) = obhostctl(Some(&d), &["-o", "json", "steps", "frobnicate"]);
    assert_eq!(code, 2, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("one document");
    assert_eq!(doc["error"]["code"], "USAGE", "{doc}");
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap()
            .contains("frobnicate"),
        "{doc}"
    );
    assert!(err.contains("frobnicate"), "{err}");
    // Help is not an error.
    let (code, out, _) = obhostctl(None, &["-o", "json", "steps", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("Usage:"), "{out}");

    // Unreachable.
    let port = free_port();
    let (code, out, _) = obhostctl(
        None,
        &["--addr", &format!("127.0.0.1:{port}"), "-o", "json", "host"],
    );
    assert_eq!(code, 3);
    let doc: serde_json::Value = serde_json::from_str(&out).expect("one document");
    assert_eq!(doc["error"]["code"], "UNAVAILABLE", "{doc}");
    assert_eq!(doc["error"]["exit_status"], 3);

    // A failed step, followed by a watch: JSON lines, the last the error.
    let mut failing = test_step("j-bad", 0.0);
    failing.fail_code = "PROCESS_EXITED".into();
    run_test_step(&d, failing).await;
    let (code, out, _) = obhostctl(
        Some(&d),
        &[
            "-o",
            "json",
            "steps",
            "watch",
            "--step",
            "j-bad",
            "--until-done",
        ],
    );
    assert_eq!(code, 1);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let last = lines.last().unwrap();
    assert_eq!(last["error"]["code"], "PROCESS_EXITED", "{out}");
    assert_eq!(last["error"]["exit_status"], 1, "{out}");
    assert!(lines[..lines.len() - 1].iter().all(|l| l["id"] == "j-bad"));

    // A failed step in a flow: the DAG, with the error.
    let home = Home::new();
    let agent_dir = tempfile::tempdir().unwrap();
    let mut args = flow_args(&home, "jbad", agent_dir.path(), free_port());
    args.extend(["--env".into(), "FAKE_OBSERVER_EXIT_AT_START=5".into()]);
    let (code, doc, _) = json(&strs(&args));
    assert_eq!(code, 1);
    assert_eq!(doc["status"], "FAILED", "{doc}");
    assert_eq!(doc["error"]["code"], "PROCESS_EXITED", "{doc}");
    assert_eq!(doc["error"]["exit_status"], 1, "{doc}");
}

/// The real four-step flow's ids sort agent, prepare, start, wait by name; the
/// list shows them as the DAG ran, and a DAG made later comes before (newest
/// first).
#[test]
fn steps_are_listed_in_dag_order() {
    let d = Daemon::start();
    let home = Home::new();
    let agent_dir = tempfile::tempdir().unwrap();
    let args = flow_args(&home, "order", agent_dir.path(), free_port());
    let (code, out, err) = obhostctl(Some(&d), &strs(&args));
    kill_agent(&d, "order-agent");
    assert_eq!(code, 0, "{out}\n{err}");
    // A DAG whose id sorts first, made after: listed first.
    let (code, _, err) = obhostctl(
        Some(&d),
        &[
            "stop-observer",
            "--home",
            home.path().to_str().unwrap(),
            "--step-id",
            "aaa-stop",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let want = [
        "aaa-stop",
        "order-prepare",
        "order-start",
        "order-wait",
        "order-agent",
    ];

    let (code, out, err) = obhostctl(Some(&d), &["steps", "list"]);
    assert_eq!(code, 0, "{err}");
    let ids: Vec<&str> = out
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(ids, want, "{out}");

    let (_, out, _) = obhostctl(Some(&d), &["-o", "json", "steps", "list"]);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<&str> = doc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, want, "{out}");
}

/// A size as the one formatter prints it: "512 B", "3.0 MiB", "15.6 GiB".
fn is_iec(text: &str) -> bool {
    let Some((n, unit)) = text.split_once(' ') else {
        return false;
    };
    match unit {
        "B" => n.parse::<u64>().is_ok(),
        "KiB" | "MiB" | "GiB" | "TiB" | "PiB" => {
            n.split_once('.').is_some_and(|(_, f)| f.len() == 1) && n.parse::<f64>().is_ok()
        }
        _ => false,
    }
}

/// Host memory and disks, and the observer's RSS, all from the one formatter
/// (the RSS was whole MiB in one place and KiB in another).
#[test]
fn sizes_are_iec_everywhere() {
    let d = Daemon::start();
    let (code, out, _) = obhostctl(Some(&d), &["host"]);
    assert_eq!(code, 0);
    let memory = out.lines().find(|l| l.starts_with("memory")).unwrap();
    let total = memory
        .trim_start_matches("memory")
        .trim()
        .split(" total")
        .next()
        .unwrap();
    assert!(is_iec(total), "{memory}");
    assert!(out.contains("MOUNT") && out.contains("FREE"), "{out}");

    let home = Home::new();
    let agent_dir = tempfile::tempdir().unwrap();
    let args = flow_args(&home, "sizes", agent_dir.path(), free_port());
    let (code, out, err) = obhostctl(Some(&d), &strs(&args));
    kill_agent(&d, "sizes-agent");
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, _) = obhostctl(
        Some(&d),
        &["observer", "--home", home.path().to_str().unwrap()],
    );
    assert_eq!(code, 0);
    let rss = out
        .lines()
        .find_map(|l| l.strip_prefix("rss"))
        .unwrap()
        .trim();
    assert!(is_iec(rss), "{out}");
}

/// `demo` starts its own obhostd: the flags that name another are refused
/// with a usage error saying so, on either side of the subcommand; from the
/// environment they are left alone.
#[test]
fn demo_refuses_the_flags_it_would_ignore() {
    for args in [
        &["--addr", "unix:/run/obhost/obhostd.sock", "demo"][..],
        &["demo", "--addr", "127.0.0.1:1"][..],
        &["demo", "--token-file", "/etc/obhost/token"][..],
        &["--ca-file", "/x/ca.pem", "demo"][..],
        &["-o", "json", "demo", "--key-file", "/x/k.pem"][..],
    ] {
        let (code, out, err) = obhostctl(None, args);
        assert_eq!(code, 2, "{args:?}: {out}\n{err}");
        let flag = args.iter().find(|a| a.starts_with("--")).unwrap();
        assert!(
            err.contains(&format!("demo does not use {flag}")) && err.contains("its own obhostd"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("obhost demo: everything lives"), "{err}");
        if args[0] == "-o" {
            let doc: serde_json::Value = serde_json::from_str(&out).expect("one document");
            assert_eq!(doc["error"]["code"], "USAGE");
        }
    }
    // An address exported for every command is not the demo's business.
    let out = Command::new(OBHOSTCTL)
        .args(["-o", "json", "demo"])
        .env("OBHOST_ADDR", "unix:/nonexistent/obhostd.sock")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A stop that does not succeed (cancelled here, its observer ignoring
/// SIGTERM): one document with the error beside the step, exit 1.
#[tokio::test]
async fn a_failed_stop_is_an_error_beside_its_step() {
    let d = Daemon::start();
    let home = Home::new();
    let agent_dir = tempfile::tempdir().unwrap();
    let mut args = flow_args(&home, "stubborn", agent_dir.path(), free_port());
    args.extend(["--env".into(), "FAKE_OBSERVER_IGNORE_SIGTERM=1".into()]);
    let (code, out, err) = obhostctl(Some(&d), &strs(&args));
    kill_agent(&d, "stubborn-agent");
    assert_eq!(code, 0, "{out}\n{err}");
    let stop = Command::new(OBHOSTCTL)
        .args(["--addr", &d.addr, "-o", "json", "stop-observer", "--home"])
        .arg(home.path())
        .args(["--grace", "60s", "--step-id", "stubborn-stop"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The stop is made by the child: wait for it to exist, then to have
    // sent SIGTERM.
    let mut client = d.client().await;
    for _ in 0..100 {
        let req = obhost::proto::v1::GetStepRequest {
            step_id: "stubborn-stop".into(),
        };
        if client.get_step(req).await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    wait_for(
        &d,
        "stubborn-stop",
        std::time::Duration::from_secs(10),
        |s| s.message.contains("SIGTERM"),
    )
    .await;
    let (code, _, err) = obhostctl(Some(&d), &["steps", "cancel", "stubborn-stop"]);
    assert_eq!(code, 0, "{err}");
    let out = tokio::task::spawn_blocking(move || stop.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect("one document");
    assert_eq!(doc["error"]["code"], "CANCELLED", "{doc}");
    assert_eq!(doc["error"]["exit_status"], 1, "{doc}");
    assert_eq!(doc["step"]["id"], "stubborn-stop", "{doc}");
    assert_eq!(doc["step"]["state"], "STEP_STATE_CANCELLED", "{doc}");
}

/// Attack: the observer's owner (an unprivileged user) writes terminal escape
/// sequences into the observer's log, which obhostd quotes in a failed step's
/// log tail. obhostctl shows them escaped, never raw: redirected output has no
/// escape byte, and a terminal gets no sequence but obhostctl's own colours.
#[tokio::test]
async fn escape_sequences_in_an_observer_log_never_reach_the_terminal() {
    let d = Daemon::start();
    let home = Home::new();
    let log_dir = home.path().join("log");
    std::fs::create_dir(&log_dir).unwrap();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    for p in [home.path(), log_dir.as_path()] {
        nix::unistd::chown(p, Some(nobody.uid), Some(nobody.gid)).unwrap();
    }
    let log = log_dir.join("observer.log");
    // The hostile ERROR lines keep coming, as fast as a shell writes them,
    // while the start runs (a failure shows only what was logged since its
    // start); the writer is killed once obhostctl is done, and stops by
    // itself after 30 s.
    let mut writer = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "sh",
            "-c",
            r#"end=$(( $(date +%s) + 30 )); while [ $(date +%s) -lt $end ]; do for i in 1 2 3 4 5 6 7 8 9 10; do printf '[2026-01-01 00:00:00.000000] ERROR \033]0;pwned\007\033[2J\033[31mEVIL\rFAKE\n' >> "$0"; done; done"#,
        ])
        .arg(&log)
        .spawn()
        .unwrap();
    while !log.exists() {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let agent_dir = tempfile::tempdir().unwrap();
    let mut args = flow_args(&home, "esc", agent_dir.path(), free_port());
    args.extend(["--env".into(), "FAKE_OBSERVER_EXIT_AT_START=5".into()]);
    let (code, out, err) = obhostctl(Some(&d), &strs(&args));
    let _ = writer.kill();
    let _ = writer.wait();
    assert_eq!(code, 1, "{out}\n{err}");
    // The hostile line made it into the step, as data.
    let step = get_step(&d, "esc-start").await;
    let tail = step.error.unwrap().log_tail.join("\n");
    assert!(tail.contains("\x1b]0;pwned"), "{tail}");

    for (what, text) in [("stdout", &out), ("stderr", &err)] {
        assert!(!text.contains('\x1b'), "raw escape on {what}: {text:?}");
    }
    assert!(err.contains(r"\u{1b}]0;pwned"), "{err}");
    let (code, out, err) = obhostctl(Some(&d), &["steps", "get", "esc-start"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains('\x1b'), "{out:?}");
    assert!(out.contains(r"\u{1b}[2J\u{1b}[31mEVIL"), "{out}");

    let (code, out) = on_a_terminal(&d, &["steps", "get", "esc-start"], &[]);
    assert_eq!(code, 0, "{out}");
    for raw in ["\x1b]0;pwned", "\x1b[2J", "\x07"] {
        assert!(!out.contains(raw), "{raw:?} reached the terminal: {out:?}");
    }
}

/// `obhostctl ... | head`: when stdout's reader has gone, obhostctl exits as
/// a tool killed by SIGPIPE would (141), saying nothing: no "Broken pipe"
/// error and no panic, in text and JSON.
#[tokio::test]
async fn a_reader_that_went_away_ends_it_quietly() {
    let d = Daemon::start();
    run_steps_to_end(&d, "pipe", 3).await;
    for args in [
        &["steps", "list"][..],
        &["host"],
        &["-o", "json", "steps", "list"],
        &["steps", "get", "pipe-0"],
    ] {
        let (read, write) = nix::unistd::pipe().unwrap();
        drop(read);
        let out = Command::new(OBHOSTCTL)
            .args(["--addr", &d.addr])
            .args(args)
            .stdout(Stdio::from(write))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?}: {err}");
    }
    // The flow and the demo print their first line before any step: a
    // panic there ("failed printing to stdout", 101) is what this catches.
    let home = Home::new();
    let agent_dir = tempfile::tempdir().unwrap();
    let mut flow = vec!["--addr".to_string(), d.addr.clone()];
    flow.extend(flow_args(&home, "pipe-flow", agent_dir.path(), free_port()));
    for args in [strs(&flow), vec!["demo"]] {
        let (read, write) = nix::unistd::pipe().unwrap();
        drop(read);
        let out = Command::new(OBHOSTCTL)
            .args(&args)
            .stdout(Stdio::from(write))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
