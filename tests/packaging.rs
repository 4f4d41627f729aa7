//! The files an operator installs: the systemd unit passes `systemd-analyze
//! verify` and keeps the settings the design depends on; the example config is
//! accepted by the real daemon; `-V` names the build; completions and man pages
//! come out of the real obhostctl and render; the stand-in observer stays out
//! of the product.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use clap::CommandFactory;

use common::*;

const UNIT: &str = include_str!("../systemd/obhostd.service");

/// Outside CI a missing tool skips with a visible message; in CI it fails.
fn require_tool(name: &str) -> bool {
    if Command::new(name).arg("--version").output().is_ok() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{name} is missing in CI: .ci/run must install it");
    }
    eprintln!("SKIPPED: {name} not installed");
    false
}

#[test]
fn the_unit_verifies_and_keeps_what_the_design_needs() {
    for line in [
        "Type=notify",
        "KillMode=process",
        "Restart=on-failure",
        "WatchdogSec=",
        "StateDirectory=obhostd",
    ] {
        assert!(
            UNIT.lines().any(|l| l.starts_with(line)),
            "unit lacks {line}"
        );
    }
    // A private /tmp would vanish under observers that outlive the daemon.
    assert!(!UNIT.lines().any(|l| l.starts_with("PrivateTmp=yes")));
    if !require_tool("systemd-analyze") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let unit = tmp.path().join("obhostd.service");
    std::fs::write(&unit, UNIT.replace("/usr/local/bin/obhostd", OBHOSTD)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("obhostd.service"))
        .collect();
    assert!(
        ours.is_empty(),
        "warnings about the unit:\n{}",
        ours.join("\n")
    );
}

#[tokio::test]
async fn the_example_config_runs() {
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/obhostd.toml"))
            .unwrap();
    // The test harness overrides listen and state_dir with flags, as an operator may.
    let d = Daemon::start_with(Options {
        config: example,
        ..Options::default()
    });
    d.client()
        .await
        .list_steps(obhost::proto::v1::ListStepsRequest::default())
        .await
        .unwrap();
}

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd).stdout).unwrap()
}

/// `cargo`, as the test harness was started with.
fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(manifest_dir())
        .env("CARGO_NET_OFFLINE", "true");
    c
}

/// The stand-in observer accepts root with no password: it must not be in the
/// product's dependency graph nor a default binary. `cargo tree -e normal` of a
/// default build is the product's graph; the same query with the feature is
/// the control that the query can see the crate at all.
#[test]
fn the_stand_in_observer_is_no_product_dependency() {
    let tree = |features: &[&str]| {
        stdout(
            cargo()
                .args(["tree", "-e", "normal", "--prefix", "none", "--locked"])
                .args(features),
        )
    };
    let lists_mysql_server = |t: &str| t.lines().any(|l| l.starts_with("opensrv-mysql "));
    let default = tree(&[]);
    assert!(
        !lists_mysql_server(&default),
        "a default build depends on opensrv-mysql (the stand-in's MySQL server): keep it \
         optional, behind the fake-observer feature:\n{default}"
    );
    assert!(lists_mysql_server(&tree(&["--features", "fake-observer"])));

    let meta: serde_json::Value = serde_json::from_str(&stdout(cargo().args([
        "metadata",
        "--format-version",
        "1",
        "--no-deps",
        "--locked",
    ])))
    .unwrap();
    let target = meta["packages"][0]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "obhost-fake-observer")
        .expect("the obhost-fake-observer bin target");
    assert_eq!(
        target["required-features"],
        serde_json::json!(["fake-observer"]),
        "obhost-fake-observer must be built only with the fake-observer feature"
    );
}

/// `-V` of a binary: "<name> <version> (commit <short hash>, built <YYYY-MM-DD>)".
fn version_of(binary: &str, name: &str) -> (String, String) {
    let v = stdout(Command::new(binary).arg("-V"));
    let prefix = format!("{name} {} (commit ", env!("CARGO_PKG_VERSION"));
    let rest = v
        .trim_end()
        .strip_prefix(&prefix)
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{binary} -V printed {v:?}"));
    let (commit, date) = rest
        .split_once(", built ")
        .unwrap_or_else(|| panic!("{binary} -V has no build date: {v:?}"));
    let d = date.as_bytes();
    assert!(
        d.len() == 10
            && d[4] == b'-'
            && d[7] == b'-'
            && date.replace('-', "").bytes().all(|b| b.is_ascii_digit()),
        "{binary} -V: build date {date:?} is not YYYY-MM-DD"
    );
    (commit.to_string(), date.to_string())
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(manifest_dir())
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn today_utc() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()[..10].to_string()
}

#[test]
fn both_binaries_name_their_commit_and_build_date() {
    let head = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let mut dates = Vec::new();
    for (bin, name) in [(OBHOSTD, "obhostd"), (OBHOSTCTL, "obhostctl")] {
        let (commit, date) = version_of(bin, name);
        assert_eq!(commit, head, "{name} -V names another commit than HEAD");
        assert!(date <= today_utc(), "{name} built in the future: {date}");
        dates.push(date);
    }
    assert_eq!(dates[0], dates[1]);
}

/// Text as a man page renders it, without overstrike (bold/underline) or
/// typographic dashes, and with no whitespace, so an option wrapped at a line
/// end or hyphenated still matches.
fn rendered_text(page: &Path) -> String {
    let mut cmd = if Command::new("man").arg("--version").output().is_ok() {
        let mut c = Command::new("man");
        c.args(["--warnings", "-l", "-E", "UTF-8"])
            .arg(page)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "200");
        c
    } else {
        let mut c = Command::new("groff");
        c.args(["-man", "-Tutf8", "-ww"]).arg(page);
        c
    };
    let out = run(&mut cmd);
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(
        warnings.trim().is_empty(),
        "{} renders with warnings:\n{warnings}",
        page.display()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut plain = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if chars.peek() == Some(&'\u{8}') {
            chars.next(); // "X\bX" (bold) or "_\bX" (underline): keep the second
            continue;
        }
        match c {
            '\u{2010}' | '\u{2011}' | '\u{2212}' => plain.push('-'),
            c if c.is_whitespace() => {}
            c => plain.push(c),
        }
    }
    plain
}

/// Every visible subcommand of `cmd` (with its page name), depth first.
fn pages_of(cmd: &clap::Command, page: &str, out: &mut Vec<(String, clap::Command)>) {
    out.push((page.to_string(), cmd.clone()));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        pages_of(sub, &format!("{page}-{}", sub.get_name()), out);
    }
}

#[test]
fn man_pages_render_and_document_every_command_and_option() {
    if !require_tool("man") && !require_tool("groff") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let listed = stdout(
        Command::new(OBHOSTCTL)
            .args(["man", "--out"])
            .arg(tmp.path().join("man")),
    );
    let mut pages = Vec::new();
    pages_of(&obhost::cli::Cli::command(), "obhostctl", &mut pages);
    let mut expected: Vec<(PathBuf, clap::Command)> = pages
        .into_iter()
        .map(|(name, cmd)| (tmp.path().join("man").join(format!("{name}.1")), cmd))
        .collect();
    expected.push((
        tmp.path().join("man/obhostd.8"),
        obhost::daemon_cli::DaemonArgs::command(),
    ));
    assert!(expected.len() > 10, "too few pages: {}", expected.len());
    let mut written: Vec<&str> = listed.lines().collect();
    written.sort();
    let mut want: Vec<String> = expected
        .iter()
        .map(|(p, _)| p.display().to_string())
        .collect();
    want.sort();
    assert_eq!(
        written, want,
        "obhostctl man wrote other pages than expected"
    );
    for (page, cmd) in &expected {
        let text = rendered_text(page);
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            assert!(
                text.contains(sub.get_name()),
                "{} does not mention subcommand {}",
                page.display(),
                sub.get_name()
            );
        }
        for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            let shown = match (arg.get_long(), arg.get_short()) {
                (Some(long), _) => format!("--{long}"),
                (None, Some(short)) => format!("-{short}"),
                (None, None) => arg.get_id().to_string().to_uppercase(),
            };
            assert!(
                text.contains(&shown),
                "{} does not document {shown}",
                page.display()
            );
        }
    }
    // The daemon's page is in section 8 and names the flags an operator needs.
    let obhostd = rendered_text(&tmp.path().join("man/obhostd.8"));
    assert!(obhostd.contains("obhostd(8)") || obhostd.contains("OBHOSTD(8)"));
    assert!(obhostd.contains("--check-config"));
}

#[test]
fn completion_scripts_parse_in_their_shells() {
    let bash = stdout(Command::new(OBHOSTCTL).args(["completions", "bash"]));
    assert!(bash.contains("complete ") && bash.contains("obhostctl"));
    for sub in [
        "steps",
        "start-observer",
        "stop-observer",
        "completions",
        "man",
    ] {
        assert!(bash.contains(sub), "bash completion lacks {sub}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("obhostctl.bash");
    std::fs::write(&script, &bash).unwrap();
    run(Command::new("bash").arg("-n").arg(&script));
    // Loaded, it registers a completion for obhostctl.
    let registered = stdout(Command::new("bash").arg("-c").arg(format!(
        "source {} && complete -p obhostctl",
        script.display()
    )));
    assert!(registered.contains("obhostctl"), "{registered}");
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let text = stdout(Command::new(OBHOSTCTL).args(["completions", shell]));
        assert!(text.contains("obhostctl"), "{shell} completion: {text}");
    }
    // An unknown shell is a usage error that lists the valid ones.
    let out = Command::new(OBHOSTCTL)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bash"));
}
