//! The files an operator installs: the systemd unit passes `systemd-analyze
//! verify` and keeps the settings the design depends on; the example config is
//! accepted by the real daemon; `-V` names the build; completions and man pages
//! come out of the real obhostctl and render; the stand-in observer stays out
//! of the product; and the .deb (scripts/build-deb.sh) installs, verifies and
//! purges cleanly.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use clap::CommandFactory;

use common::*;

const UNIT: &str = include_str!("../systemd/obhostd.service");
const README: &str = include_str!("../README.md");

/// Where the .deb puts the unit: cargo-deb's `systemd-units` installs it
/// under usr/lib/systemd/system/ (its dh_installsystemd), which is also
/// /lib/systemd/system/ only on a merged-/usr system.
const UNIT_PATH: &str = "/usr/lib/systemd/system/obhostd.service";

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
    assert!(UNIT.contains("ExecStart=/usr/bin/obhostd "));
    std::fs::write(&unit, UNIT.replace("/usr/bin/obhostd", OBHOSTD)).unwrap();
    // --man=no: man:obhostd(8) exists only once the .deb is installed; the
    // .deb test verifies the installed unit with its man page.
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
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

/// The unit's own comment and the README say where the package puts the unit,
/// and name no other system unit dir (the .deb test checks the package itself).
#[test]
fn the_unit_and_the_readme_agree_on_where_the_unit_goes() {
    assert!(
        UNIT.contains(&format!("installs this\n# as {UNIT_PATH},")),
        "the unit's comment does not name {UNIT_PATH}:\n{UNIT}"
    );
    assert!(
        README.contains(&format!("| `systemd/obhostd.service` | `{UNIT_PATH}` ")),
        "README's packaging table does not name {UNIT_PATH}"
    );
    for (name, text) in [("the unit", UNIT), ("README.md", README)] {
        for (at, _) in text.match_indices("/lib/systemd/system/") {
            assert!(
                text[..at].ends_with("/usr"),
                "{name} line {} names /lib/systemd/system/, where the package puts nothing",
                text[..at].lines().count()
            );
        }
    }
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
    assert!(
        obhostd.contains("FILES/etc/obhost/obhostd.toml"),
        "{obhostd}"
    );
    assert!(obhostd.contains("SEEALSOobhostctl(1)"), "{obhostd}");
}

/// The roff of `page`'s section `heading` (`.SH heading` to the next `.SH`).
fn section<'a>(page: &'a str, heading: &str) -> &'a str {
    let start = page
        .find(&format!(".SH {heading}\n"))
        .unwrap_or_else(|| panic!("no {heading} section:\n{page}"));
    let body = &page[start + 4 + heading.len()..];
    &body[..body.find("\n.SH ").unwrap_or(body.len())]
}

#[test]
fn man_pages_have_exit_status_environment_and_files() {
    if !require_tool("man") && !require_tool("groff") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("man");
    stdout(Command::new(OBHOSTCTL).args(["man", "--out"]).arg(&dir));
    let socket = obhost::config::DEFAULT_SOCKET;
    let page = |name: &str| {
        let path = dir.join(name);
        // It renders without a warning (and the sections are read from
        // its source, where a heading cannot run into the text after it).
        rendered_text(&path);
        std::fs::read_to_string(&path).unwrap()
    };

    let ctl = page("obhostctl.1");
    let status = section(&ctl, "\"EXIT STATUS\"");
    let env = section(&ctl, "ENVIRONMENT");
    let files = section(&ctl, "FILES");
    for code in [
        "0\nSuccess",
        "1\nobhostd answered",
        "2\nBad usage",
        "3\nobhostd could not be reached",
        "130\nInterrupted",
        "141\n",
    ] {
        assert!(
            status.contains(&format!(".TP\n{code}")),
            "EXIT STATUS lacks {code:?}: {status}"
        );
    }
    let (code, _, _) = obhostctl(None, &["steps", "frobnicate"]);
    assert_eq!(code, 2);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (code, _, _) = obhostctl(None, &["--addr", &closed.to_string(), "host"]);
    assert_eq!(code, 3);
    // Every variable --help names, and no other OBHOST_ one.
    let (_, help, _) = obhostctl(None, &["--help"]);
    let in_help: Vec<&str> = help
        .split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split(']').next())
        .collect();
    assert_eq!(in_help.len(), 5, "{help}");
    for var in &in_help {
        assert!(env.contains(var), "ENVIRONMENT lacks {var}: {env}");
    }
    let in_page = env.matches("OBHOST_").count();
    assert_eq!(
        in_page,
        in_help.len(),
        "ENVIRONMENT names other variables: {env}"
    );
    for var in ["XDG_RUNTIME_DIR", "NO_COLOR", "TERM"] {
        assert!(env.contains(var), "ENVIRONMENT lacks {var}: {env}");
    }
    assert!(files.contains(socket), "FILES lacks {socket}: {files}");

    let d = page("obhostd.8");
    let status = section(&d, "\"EXIT STATUS\"");
    let env = section(&d, "ENVIRONMENT");
    let files = section(&d, "FILES");
    for code in ["0\nStopped", "1\nCould not start", "2\nBad usage"] {
        assert!(
            status.contains(&format!(".TP\n{code}")),
            "EXIT STATUS lacks {code:?}: {status}"
        );
    }
    let bad = Command::new(OBHOSTD)
        .args(["--config", "/nonexistent/obhostd.toml", "--check-config"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    for var in [
        "RUST_LOG",
        "JOURNAL_STREAM",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "XDG_RUNTIME_DIR",
        "XDG_STATE_HOME",
    ] {
        assert!(env.contains(var), "ENVIRONMENT lacks {var}: {env}");
    }
    for file in [
        "/etc/obhost/obhostd.toml".to_string(),
        format!("/var/lib/obhostd/{}", obhost::steps::store::STATE_FILE),
        socket.to_string(),
        UNIT_PATH.to_string(),
    ] {
        assert!(files.contains(&file), "FILES lacks {file}: {files}");
    }
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

/// A release build has no stand-in observer next to obhostctl: the demo says
/// how to build one instead of failing somewhere in its first step.
#[test]
fn the_demo_without_the_stand_in_says_how_to_build_it() {
    let dir = tempfile::tempdir().unwrap();
    for (bin, name) in [(OBHOSTCTL, "obhostctl"), (OBHOSTD, "obhostd")] {
        let to = dir.path().join(name);
        if std::fs::hard_link(bin, &to).is_err() {
            std::fs::copy(bin, &to).unwrap();
        }
    }
    let out = Command::new(dir.path().join("obhostctl"))
        .arg("demo")
        .env("TMPDIR", dir.path())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    let stand_in = dir.path().join("obhost-fake-observer");
    assert!(
        said.contains(&format!("'{}'", stand_in.display()))
            && said.contains("`cargo build --release --features fake-observer`"),
        "{said}"
    );
    // Nothing was started or created on the way to that message.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
}

/// Purges the package when the .deb test ends, passed or not, so a failed
/// assertion leaves no obhost installed on the machine.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "obhost"]).output();
    }
}

/// The last word of dpkg's status: "installed", "config-files", "not-installed"
/// ("" when dpkg never heard of the package).
fn dpkg_state(package: &str) -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .last()
                .unwrap_or_default()
                .to_string()
        })
        .unwrap_or_default()
}

/// The symbol table and debug-info sections a binary still carries (`readelf
/// -S`). `.debug_gdb_scripts` is no debug info (rustc's loaded, 34-byte
/// pointer to its gdb pretty-printers) and `strip` rightly keeps it.
fn unstripped_sections(binary: &str) -> Vec<String> {
    stdout(Command::new("readelf").args(["-S", "--wide", binary]))
        .split_whitespace()
        .filter(|w| *w == ".symtab" || (w.starts_with(".debug_") && *w != ".debug_gdb_scripts"))
        .map(String::from)
        .collect()
}

/// The one-command package, end to end: `scripts/build-deb.sh` (a release
/// build of its own into target/release, which the test binaries in
/// target/debug do not share: SLOW, minutes on a 2-core machine, and done once
/// here), `dpkg -i`, every file where the unit and the docs say, stripped
/// binaries that name their build, the installed unit verified (its man page
/// included), the installed config accepted, no stand-in observer, then
/// `dpkg --purge` removing all of it. Needs root, dpkg and cargo-deb; refuses to
/// run where obhost is already installed (it would purge it).
#[test]
fn the_deb_installs_verifies_and_purges() {
    let ci = std::env::var_os("CI").is_some();
    let skip = |why: &str| {
        if ci {
            panic!("{why} in CI: .ci/run must provide it");
        }
        eprintln!("SKIPPED: {why}");
    };
    if !nix::unistd::geteuid().is_root() {
        return skip("the .deb test needs root (dpkg -i)");
    }
    if !require_tool("dpkg") || !require_tool("readelf") || !require_tool("systemd-analyze") {
        return;
    }
    if Command::new("cargo-deb").arg("--version").output().is_err() {
        return skip("cargo-deb is not installed (cargo install cargo-deb --locked)");
    }
    if !matches!(dpkg_state("obhost").as_str(), "" | "not-installed") {
        return skip(
            "obhost is installed on this machine (or its config is), and this test would purge it",
        );
    }

    let started = Instant::now();
    let out = run(Command::new("sh")
        .arg("scripts/build-deb.sh")
        .current_dir(manifest_dir())
        .env("CARGO_NET_OFFLINE", "true"));
    let built = started.elapsed();
    let deb = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .rfind(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .expect("build-deb.sh names the .deb it built");
    assert!(deb.is_file(), "{} is no file", deb.display());

    let contents = stdout(Command::new("dpkg-deb").arg("-c").arg(&deb));
    assert!(
        contents.contains(&format!(" .{UNIT_PATH}\n")),
        "the package does not put the unit at {UNIT_PATH}, as the unit and the README say:\n{contents}"
    );
    assert!(
        !contents.contains("fake-observer"),
        "the package ships the stand-in observer:\n{contents}"
    );

    let _purge = Installed;
    // Slim container images exclude man pages and docs from every install
    // (dpkg.cfg.d path-exclude); an operator's host does not, so neither may we.
    run(Command::new("dpkg")
        .args([
            "--path-include=/usr/share/man/*",
            "--path-include=/usr/share/doc/obhost/*",
            "-i",
        ])
        .arg(&deb));
    assert_eq!(dpkg_state("obhost"), "installed");

    let repo = |p: &str| std::fs::read(manifest_dir().join(p)).unwrap();
    // Installed as shipped, where the unit and the README say.
    for (installed, source) in [
        (UNIT_PATH, "systemd/obhostd.service"),
        ("/etc/obhost/obhostd.toml", "systemd/obhostd.toml"),
        (
            "/usr/share/doc/obhost/examples/obhostd.toml",
            "systemd/obhostd.toml",
        ),
        ("/usr/share/doc/obhost/README.md", "README.md"),
    ] {
        assert_eq!(
            std::fs::read(installed).unwrap_or_default(),
            repo(source),
            "{installed} is not {source}"
        );
    }
    let mut files = vec![
        "/usr/bin/obhostd",
        "/usr/bin/obhostctl",
        "/usr/share/man/man8/obhostd.8.gz",
        "/usr/share/man/man1/obhostctl.1.gz",
        "/usr/share/man/man1/obhostctl-steps.1.gz",
        "/usr/share/man/man1/obhostctl-steps-watch.1.gz",
        "/usr/share/man/man1/obhostctl-start-observer.1.gz",
        "/usr/share/bash-completion/completions/obhostctl",
        "/usr/share/zsh/vendor-completions/_obhostctl",
        "/usr/share/fish/vendor_completions.d/obhostctl.fish",
    ];
    for f in &files {
        assert!(Path::new(f).is_file(), "{f} not installed");
    }
    assert!(!Path::new("/usr/bin/obhost-fake-observer").exists());
    // Neither enabled nor started: the operator writes the config first.
    assert!(
        !Path::new("/etc/systemd/system/multi-user.target.wants/obhostd.service").exists(),
        "the package enabled obhostd"
    );
    let conffiles = stdout(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "obhost"]));
    assert!(
        conffiles.contains("/etc/obhost/obhostd.toml"),
        "the config is no conffile: {conffiles:?}"
    );
    // The unit names what the package installed.
    let unit = std::fs::read_to_string(UNIT_PATH).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .and_then(|l| l.split_whitespace().next())
        .unwrap();
    assert_eq!(exec, "/usr/bin/obhostd");
    let docs = unit
        .lines()
        .find_map(|l| l.strip_prefix("Documentation="))
        .unwrap();
    assert!(docs.contains("man:obhostd(8)"), "{docs}");
    for doc in docs.split_whitespace() {
        if let Some(path) = doc.strip_prefix("file://") {
            assert!(
                Path::new(path).is_file(),
                "Documentation={doc} is not installed"
            );
        }
    }

    // Stripped, and naming the commit and its date (SOURCE_DATE_EPOCH).
    for bin in ["/usr/bin/obhostd", "/usr/bin/obhostctl"] {
        let left = unstripped_sections(bin);
        assert!(left.is_empty(), "{bin} is not stripped: {left:?}");
    }
    let head = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let commit_date = git(&["log", "-1", "--format=%ct"])
        .and_then(|s| s.parse::<u64>().ok())
        .map(|secs| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
            )
            .to_string()[..10]
                .to_string()
        });
    for (bin, name) in [
        ("/usr/bin/obhostd", "obhostd"),
        ("/usr/bin/obhostctl", "obhostctl"),
    ] {
        let (commit, date) = version_of(bin, name);
        assert_eq!(commit, head, "{bin}");
        if let Some(want) = &commit_date {
            assert_eq!(&date, want, "{bin} -V: the build date is not the commit's");
        }
    }

    // The installed unit verifies, its man: documentation included.
    let verify = Command::new("systemd-analyze")
        .args(["verify", UNIT_PATH])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("obhostd")).collect();
    assert!(
        ours.is_empty(),
        "warnings about the unit:\n{}",
        ours.join("\n")
    );
    let page = stdout(Command::new("man").args(["-w", "obhostd"]));
    assert_eq!(page.trim(), "/usr/share/man/man8/obhostd.8.gz");

    run(Command::new("/usr/bin/obhostd").args([
        "--config",
        "/etc/obhost/obhostd.toml",
        "--check-config",
    ]));
    run(Command::new("bash")
        .arg("-c")
        .arg("source /usr/share/bash-completion/completions/obhostctl && complete -p obhostctl"));
    // No stand-in next to the packaged obhostctl: the demo says how to get one.
    let demo = Command::new("/usr/bin/obhostctl")
        .arg("demo")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&demo.stderr);
    assert_eq!(demo.status.code(), Some(2), "{said}");
    assert!(
        said.contains("/usr/bin/obhost-fake-observer")
            && said.contains("cargo build --release --features fake-observer"),
        "{said}"
    );

    // Purge removes every file the package installed, the conffile included.
    let listed = stdout(Command::new("dpkg-query").args(["-L", "obhost"]));
    let installed: Vec<&str> = listed.lines().filter(|p| Path::new(p).is_file()).collect();
    assert!(installed.len() >= files.len(), "{listed}");
    run(Command::new("dpkg").args(["--purge", "obhost"]));
    files.extend(installed);
    files.push("/etc/obhost/obhostd.toml");
    files.push(UNIT_PATH);
    for f in &files {
        assert!(!Path::new(f).exists(), "{f} is left after dpkg --purge");
    }
    assert!(matches!(
        dpkg_state("obhost").as_str(),
        "" | "not-installed"
    ));
    eprintln!(
        "the .deb test: build-deb.sh took {:.0?}, install/verify/purge {:.0?}",
        built,
        started.elapsed() - built
    );
}
