//! Issue 7's attacks, each mounted as an unprivileged local user would: the
//! observer's user (created here) owns its home and plants links, pid files and
//! listeners in it; the orchestrator then makes its ordinary call. Each test
//! asserts that root's files keep their owner, mode and content, nothing outside
//! the allowed places is created, no password reaches anyone but the observer,
//! no foreign process is signalled, and the daemon stays up.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use obhost::proto::v1 as pb;
use tonic::Code;

const ATTACKER: &str = "obhost-attacker";

/// The unprivileged user of these tests, made once per machine.
fn attacker() -> (u32, u32) {
    system_user(ATTACKER)
}

/// Runs a shell script as that user; it must succeed.
fn as_attacker(script: &str) {
    run_as(ATTACKER, script)
}

/// The system's python (root's own pyenv is not the attacker's to run)
/// running `script` as the attacker, with no groups.
fn attacker_python(script: &str) -> Command {
    let (uid, gid) = attacker();
    let mut c = Command::new("setpriv");
    c.args([
        &format!("--reuid={uid}"),
        &format!("--regid={gid}"),
        "--clear-groups",
        "/usr/bin/python3",
        "-c",
        script,
    ]);
    c
}

/// A home owned by the attacker, which runs the stand-in observer as itself.
fn attacker_home() -> Home {
    let (uid, gid) = attacker();
    let home = Home::new();
    std::os::unix::fs::chown(home.path(), Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    home
}

fn attacker_spec(home: &Home) -> pb::ObserverSpec {
    pb::ObserverSpec {
        user: ATTACKER.into(),
        ..home.spec()
    }
}

/// A root-only file in a root-only dir, and what it must stay.
struct RootFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
    content: &'static str,
}

impl RootFile {
    fn new(content: &'static str) -> RootFile {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        RootFile {
            _dir: dir,
            path,
            content,
        }
    }

    fn dir(&self) -> &Path {
        self.path.parent().unwrap()
    }

    fn assert_untouched(&self) {
        let m = std::fs::symlink_metadata(&self.path).expect("the root file still exists");
        assert_eq!((m.uid(), m.gid()), (0, 0), "owner of {:?}", self.path);
        assert_eq!(m.mode() & 0o7777, 0o600, "mode of {:?}", self.path);
        assert_eq!(std::fs::read_to_string(&self.path).unwrap(), self.content);
        let names: Vec<_> = std::fs::read_dir(self.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["secret"], "nothing new in the root-only dir");
    }
}

async fn start_terminal(d: &Daemon, id: &str, spec: pb::ObserverSpec) -> pb::Step {
    start_observer(d, id, spec).await.expect("accepted");
    wait_for(d, id, Duration::from_secs(60), is_terminal).await
}

fn assert_daemon_alive(d: &Daemon) {
    assert!(alive(d.pid()), "obhostd died");
}

#[tokio::test]
async fn a_linked_output_file_gets_no_root_write_or_chown() {
    let d = Daemon::start();
    let home = attacker_home();
    let secret = RootFile::new("root's secret\n");
    as_attacker(&format!(
        "mkdir -p {h}/log && ln -s {s} {h}/log/obhost_observer.out",
        h = home.path().display(),
        s = secret.path.display()
    ));
    let s = start_terminal(&d, "link-out", attacker_spec(&home)).await;
    assert_eq!(s.state(), pb::StepState::Failed, "{s:#?}");
    let e = s.error.unwrap();
    assert_eq!(e.code, "SPAWN_FAILED");
    assert!(e.message.contains("symbolic link"), "{}", e.message);
    secret.assert_untouched();
    assert!(home.processes().is_empty(), "nothing may have been started");
    assert_daemon_alive(&d);
}

#[tokio::test]
async fn a_linked_observer_log_is_not_read_into_log_tail() {
    let d = Daemon::start();
    let home = attacker_home();
    let secret = RootFile::new("ROOT-ONLY-LOG-LINE\n");
    as_attacker(&format!(
        "mkdir -p {h}/log && ln -s {s} {h}/log/observer.log",
        h = home.path().display(),
        s = secret.path.display()
    ));
    let mut spec = attacker_spec(&home);
    spec.env
        .insert("FAKE_OBSERVER_EXIT_AT_START".into(), "3".into());
    let s = start_terminal(&d, "link-log", spec).await;
    assert_eq!(s.state(), pb::StepState::Failed, "{s:#?}");
    let e = s.error.unwrap();
    assert_eq!(e.code, "PROCESS_EXITED", "{e:#?}");
    assert!(
        !e.log_tail.join("\n").contains("ROOT-ONLY"),
        "{:?}",
        e.log_tail
    );
    assert!(
        files_containing(&d.state_dir, "ROOT-ONLY").is_empty(),
        "the root file reached the state"
    );
    secret.assert_untouched();
    assert_daemon_alive(&d);
}

#[tokio::test]
async fn planted_pid_file_links_are_replaced_not_followed() {
    let d = Daemon::start();
    let home = attacker_home();
    let pid_target = RootFile::new("pid file target\n");
    let tmp_target = RootFile::new("temp file target\n");
    // The pid file itself, and the temp name the daemon used to write it under.
    as_attacker(&format!(
        "mkdir -p {h}/run && ln -s {a} {h}/run/observer.pid && ln -s {b} {h}/run/.observer.pid.{pid}.tmp",
        h = home.path().display(),
        a = pid_target.path.display(),
        b = tmp_target.path.display(),
        pid = d.pid(),
    ));
    let mut spec = attacker_spec(&home);
    spec.foreground = true;
    let s = start_terminal(&d, "link-pid", spec).await;
    assert_eq!(s.state(), pb::StepState::Succeeded, "{s:#?}");
    let pid: i32 = s.outputs["pid"].parse().unwrap();
    let m = std::fs::symlink_metadata(home.pid_file()).unwrap();
    assert!(m.file_type().is_file(), "the link was replaced by a file");
    assert_eq!(
        std::fs::read_to_string(home.pid_file()).unwrap().trim(),
        pid.to_string()
    );
    pid_target.assert_untouched();
    tmp_target.assert_untouched();
    let stop = stop_observer(&d, "link-pid-stop", home.path(), 5.0, false).await;
    let stop = wait_terminal(&d, &stop.id).await;
    assert_eq!(stop.state(), pb::StepState::Succeeded, "{stop:#?}");
    assert!(!alive(pid));
}

#[tokio::test]
async fn prepare_does_not_create_dirs_through_the_users_links() {
    let d = Daemon::start();
    let home = attacker_home();
    let target = RootFile::new("x\n");
    // data_dir defaults to <home>/store: the user points it at a root-only dir.
    as_attacker(&format!(
        "ln -s {t} {h}/store",
        h = home.path().display(),
        t = target.dir().display()
    ));
    let err = d
        .client()
        .await
        .prepare(pb::PrepareRequest {
            meta: Some(meta("prep-link")),
            observer: Some(attacker_spec(&home)),
            create_dirs: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("owned by uid"), "{}", err.message());
    // And a home that is itself the user's link.
    let base = attacker_home();
    as_attacker(&format!(
        "ln -s {t} {b}/home",
        b = base.path().display(),
        t = target.dir().display()
    ));
    let mut spec = attacker_spec(&home);
    spec.home_path = base.path().join("home").display().to_string();
    let err = d
        .client()
        .await
        .prepare(pb::PrepareRequest {
            meta: Some(meta("prep-link-home")),
            observer: Some(spec),
            create_dirs: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    target.assert_untouched();
    assert_daemon_alive(&d);
}

#[tokio::test]
async fn a_stale_pid_file_link_is_removed_not_its_target() {
    let d = Daemon::start();
    let home = attacker_home();
    let target = RootFile::new("outside the roots\n");
    as_attacker(&format!(
        "mkdir -p {h}/run && ln -s {t} {h}/run/observer.pid",
        h = home.path().display(),
        t = target.path.display()
    ));
    let step = d
        .client()
        .await
        .prepare(pb::PrepareRequest {
            meta: Some(meta("prep-stale")),
            observer: Some(attacker_spec(&home)),
            create_dirs: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .step
        .unwrap();
    let s = wait_terminal(&d, &step.id).await;
    let stale = s.checks.iter().find(|c| c.name == "pidfile.stale").unwrap();
    assert!(stale.observed.contains("removed stale"), "{stale:?}");
    assert!(std::fs::symlink_metadata(home.pid_file()).is_err());
    target.assert_untouched();

    // run/ itself a link to a root dir holding an observer.pid: a stop that
    // cleans up the pid file must not reach through it.
    let root_dir = tempfile::tempdir().unwrap();
    let root_pid_file = root_dir.path().join("observer.pid");
    std::fs::write(&root_pid_file, "1\n").unwrap();
    as_attacker(&format!(
        "rm -rf {h}/run && ln -s {r} {h}/run",
        h = home.path().display(),
        r = root_dir.path().display()
    ));
    let stop = stop_observer(&d, "stale-stop", home.path(), 1.0, true).await;
    let stop = wait_terminal(&d, &stop.id).await;
    assert_eq!(stop.outputs["already_stopped"], "true", "{stop:#?}");
    assert!(
        root_pid_file.exists(),
        "root's file was removed through the link"
    );
}

#[tokio::test]
async fn links_do_not_get_paths_past_allowed_roots() {
    let roots = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(roots.path()).unwrap();
    let d = Daemon::start_with(Options {
        config: format!("allowed_roots = [\"{}\"]\n", root.display()),
        ..Options::default()
    });
    // Root's own link out of the root: judged by where it leads.
    std::os::unix::fs::symlink("/bin/sh", root.join("agent")).unwrap();
    let err = d
        .client()
        .await
        .start_agent_service(pb::StartAgentServiceRequest {
            meta: Some(meta("agent-sh")),
            service: Some(pb::start_agent_service_request::Service::Command(
                pb::ServiceCommand {
                    argv: vec![root.join("agent").display().to_string()],
                    cwd: root.display().to_string(),
                    foreground: true,
                    ..Default::default()
                },
            )),
            health: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("outside allowed_roots") && err.message().contains("/bin"),
        "{}",
        err.message()
    );
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), root.join("home")).unwrap();
    let home = Home::new();
    let mut spec = home.spec();
    spec.home_path = root.join("home").display().to_string();
    spec.binary = String::new();
    let err = start_observer(&d, "home-link", spec).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        std::fs::read_dir(outside.path()).unwrap().next().is_none(),
        "nothing created outside the roots"
    );
}

#[tokio::test]
async fn loader_variables_and_foreign_units_are_refused() {
    let d = Daemon::start_with(Options {
        config: "[agent_service]\nsystemd_unit = \"ocp_agentd.service\"\n".into(),
        ..Options::default()
    });
    let home = Home::new();
    for var in ["LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "GCONV_PATH"] {
        let err = start_observer(&d, "ld", home.spec_with_env(var, "/tmp/evil.so"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{var}: {err:?}");
        assert!(err.message().contains(var), "{}", err.message());
    }
    for unit in ["poweroff.target", "--help", "-Hroot@host", "sshd.service"] {
        let err = d
            .client()
            .await
            .start_agent_service(pb::StartAgentServiceRequest {
                meta: Some(meta("unit")),
                service: Some(pb::start_agent_service_request::Service::SystemdUnit(
                    unit.into(),
                )),
                health: None,
            })
            .await
            .unwrap_err();
        assert!(
            matches!(err.code(), Code::PermissionDenied | Code::InvalidArgument),
            "{unit}: {err:?}"
        );
    }
    // No step was created by any of them.
    let err = d
        .client()
        .await
        .get_step(pb::GetStepRequest {
            step_id: "unit".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

/// A MySQL server that logs every byte it gets, as its own user: it greets
/// with caching_sha2_password and asks for full authentication, then for the
/// password in whatever form the client sends it.
const ROGUE: &str = r#"
import socket, struct, sys
port, log = int(sys.argv[1]), sys.argv[2]
def pkt(seq, payload): return struct.pack('<I', len(payload))[:3] + bytes([seq]) + payload
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', port)); s.listen(8)
open(log, 'a').write('listening\n')
while True:
    c, _ = s.accept()
    with open(log, 'ab') as f:
        f.write(b'connection\n')
        caps = 0x000AA20F
        greet = bytes([10]) + b'8.0.35\0' + b'\1\0\0\0' + b'abcdefgh' + b'\0' + struct.pack('<H', caps & 0xffff) + b'\x21' + b'\2\0' + struct.pack('<H', caps >> 16) + bytes([21]) + b'\0' * 10 + b'ijklmnopqrst\0' + b'caching_sha2_password\0'
        c.sendall(pkt(0, greet))
        c.settimeout(2)
        try:
            f.write(b'got: ' + c.recv(4096) + b'\n')
            c.sendall(pkt(2, b'\x01\x04'))
            while True:
                data = c.recv(4096)
                if not data: break
                f.write(b'got: ' + data + b'\n')
                if data[4:5] == b'\x02': c.sendall(pkt(data[3] + 1, b'\x01-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n'))
        except Exception as e:
            f.write(b'end: ' + str(e).encode() + b'\n')
        c.close()
"#;

async fn wait_with_password(d: &Daemon, id: &str, home: &Home, password: &str) -> pb::Step {
    d.client()
        .await
        .wait_observer_active(pb::WaitObserverActiveRequest {
            meta: Some(pb::StepMeta {
                step_id: id.into(),
                timeout: Some(secs(3.0)),
                ..Default::default()
            }),
            home_path: home.path().display().to_string(),
            mysql_port: home.mysql_port as u32,
            user: "root".into(),
            password: password.into(),
            sql: String::new(),
        })
        .await
        .expect("accepted");
    wait_for(d, id, Duration::from_secs(30), is_terminal).await
}

fn wait_for_line(log: &Path, line: &str) {
    for _ in 0..200 {
        if std::fs::read_to_string(log).is_ok_and(|t| t.contains(line)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{log:?} never said {line:?}");
}

#[tokio::test]
async fn a_rogue_listener_on_the_mysql_port_gets_no_password() {
    let d = Daemon::start();
    let home = attacker_home();
    // The observer runs but has not bound its port yet; the attacker takes it.
    let mut spec = attacker_spec(&home);
    spec.env
        .insert("FAKE_OBSERVER_NEVER_LISTEN".into(), "1".into());
    let (_, pid) = start_ok(&d, "rogue-start", spec).await;
    let log = home.path().join("rogue.log");
    let script = home.path().join("rogue.py");
    std::fs::write(&script, ROGUE).unwrap();
    let (uid, gid) = attacker();
    let mut rogue = Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
            "/usr/bin/python3",
        ])
        .arg(&script)
        .arg(home.mysql_port.to_string())
        .arg(&log)
        .spawn()
        .unwrap();
    wait_for_line(&log, "listening");
    let password = "pw-never-to-the-rogue-7f3a";
    let s = wait_with_password(&d, "rogue-wait", &home, password).await;
    let _ = rogue.kill();
    let _ = rogue.wait();
    assert_eq!(s.state(), pb::StepState::TimedOut, "{s:#?}");
    assert!(
        s.message.contains("not by the observer") && s.message.contains(&format!("pid {pid}")),
        "{}",
        s.message
    );
    let seen = std::fs::read_to_string(&log).unwrap();
    assert!(!seen.contains(password), "{seen}");
    assert!(
        !seen.contains("connection"),
        "not even a connection: {seen}"
    );
    assert!(alive(pid), "the observer is left alone");
}

#[tokio::test]
async fn an_observer_asking_for_full_authentication_gets_no_password_or_key_request() {
    let d = Daemon::start();
    let home = Home::new();
    // The "observer" itself speaks caching_sha2 and asks for full auth: obhostd
    // must neither fetch its key nor send the password in any form.
    let bin = home.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = home.path().join("rogue.log");
    std::fs::write(bin.join("rogue.py"), ROGUE).unwrap();
    std::fs::write(
        bin.join("observer"),
        format!(
            "#!/bin/sh\nexec /usr/bin/python3 {} {} {}\n",
            bin.join("rogue.py").display(),
            home.mysql_port,
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(bin.join("observer"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let spec = pb::ObserverSpec {
        binary: String::new(),
        foreground: true,
        ..home.spec()
    };
    let (_, pid) = start_ok(&d, "full-start", spec).await;
    let _ = pid;
    wait_for_line(&log, "listening");
    let password = "pw-not-for-a-forged-key-91c2";
    let s = wait_with_password(&d, "full-wait", &home, password).await;
    assert_eq!(s.state(), pb::StepState::TimedOut, "{s:#?}");
    assert!(s.message.contains("full authentication"), "{}", s.message);
    let seen = std::fs::read(&log).unwrap();
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.contains("connection"), "{seen}");
    assert!(!seen.contains(password), "{seen}");
    // No public-key request (a packet whose payload is 0x02) after full auth.
    assert!(
        !seen
            .lines()
            .any(|l| l.as_bytes().get(9) == Some(&2) && l.len() <= 10),
        "{seen}"
    );
}

async fn prepare_step(d: &Daemon, id: &str, home: &Home) -> pb::Step {
    d.client()
        .await
        .prepare(pb::PrepareRequest {
            meta: Some(meta(id)),
            observer: Some(attacker_spec(home)),
            create_dirs: true,
            ..Default::default()
        })
        .await
        .expect("Prepare accepted");
    wait_terminal(d, id).await
}

#[tokio::test]
async fn pid_files_naming_other_processes_are_never_trusted_or_signalled() {
    let d = Daemon::start();
    let home = attacker_home();
    // A root process whose command line contains the home path. In a group
    // of its own, so that its `sleep` child goes with it at the end.
    let mut bystander = Command::new("sh")
        .arg("-c")
        .arg(format!("sleep 300; : {}", home.path().display()))
        .process_group(0)
        .spawn()
        .unwrap();
    let bystander_pid = bystander.id() as i32;
    as_attacker(&format!(
        "mkdir -p {h}/run && echo {p} > {h}/run/observer.pid",
        h = home.path().display(),
        p = bystander_pid
    ));
    // And one of the attacker's own processes that is not the observer.
    let (uid, gid) = attacker();
    let mut own = Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
            "sleep",
            "300",
        ])
        .spawn()
        .unwrap();
    let own_pid = own.id() as i32;
    for named in [bystander_pid, own_pid] {
        as_attacker(&format!("echo {named} > {}", home.pid_file().display()));
        let s = prepare_step(&d, &format!("foreign-prep-{named}"), &home).await;
        let running = s
            .checks
            .iter()
            .find(|c| c.name == "observer.running")
            .unwrap();
        assert_eq!(running.observed, "not running", "pid {named}: {running:?}");
    }
    let _ = own.kill();
    let _ = own.wait();
    as_attacker(&format!(
        "echo {bystander_pid} > {}",
        home.pid_file().display()
    ));
    let (s, pid) = start_ok(&d, "foreign-start", attacker_spec(&home)).await;
    assert_eq!(s.outputs["already_running"], "false", "{s:#?}");
    assert_ne!(pid, bystander_pid);
    let stop = stop_observer(&d, "foreign-stop", home.path(), 5.0, false).await;
    let stop = wait_terminal(&d, &stop.id).await;
    assert_eq!(stop.outputs["pid"], pid.to_string());
    assert!(alive(bystander_pid), "the bystander was signalled");

    // Another home's observer runs the same binary, as root: the attacker's pid
    // file names it. Same executable, other user: never this home's.
    let root_home = Home::new();
    let (_, root_pid) = start_ok(&d, "root-start", root_home.spec()).await;
    as_attacker(&format!("echo {root_pid} > {}", home.pid_file().display()));
    let stop = stop_observer(&d, "stop-roots", home.path(), 1.0, true).await;
    let stop = wait_terminal(&d, &stop.id).await;
    assert_eq!(stop.outputs["already_stopped"], "true", "{stop:#?}");
    assert!(
        alive(root_pid),
        "root's observer of another home was killed"
    );
    drop(root_home);

    // obhostd never signals itself, even when everything else points at it: a
    // root home whose binary is (a root link to) obhostd's own executable.
    let root_home = Home::new();
    std::fs::create_dir_all(root_home.path().join("bin")).unwrap();
    std::fs::create_dir_all(root_home.path().join("run")).unwrap();
    std::os::unix::fs::symlink(OBHOSTD, root_home.path().join("bin/observer")).unwrap();
    std::fs::write(root_home.pid_file(), format!("{}\n", d.pid())).unwrap();
    let stop = stop_observer(&d, "stop-self", root_home.path(), 1.0, true).await;
    let stop = wait_terminal(&d, &stop.id).await;
    assert_eq!(stop.outputs["already_stopped"], "true", "{stop:#?}");
    assert_daemon_alive(&d);

    // The pid file names obhostd itself, then init: a stop finds nothing.
    for victim in [d.pid(), 1] {
        as_attacker(&format!("echo {victim} > {}", home.pid_file().display()));
        let stop = stop_observer(&d, &format!("stop-{victim}"), home.path(), 1.0, true).await;
        let stop = wait_terminal(&d, &stop.id).await;
        assert_eq!(stop.state(), pb::StepState::Succeeded, "{stop:#?}");
        assert_eq!(stop.outputs["already_stopped"], "true", "{stop:#?}");
    }
    assert_daemon_alive(&d);
    assert!(alive(bystander_pid));
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(bystander_pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = bystander.wait();
}

#[tokio::test]
async fn oversized_fields_are_refused_with_short_messages() {
    let d = Daemon::start();
    let home = Home::new();
    let huge = format!("/{}", "a".repeat(1_000_000));
    let mut cases: Vec<(&str, pb::ObserverSpec)> = Vec::new();
    cases.push((
        "home_path",
        pb::ObserverSpec {
            home_path: huge.clone(),
            ..home.spec()
        },
    ));
    let mut many_env = home.spec();
    for i in 0..300 {
        many_env.env.insert(format!("V{i}"), "x".into());
    }
    cases.push(("300 entries", many_env));
    cases.push((
        "zone",
        pb::ObserverSpec {
            zone: "z".repeat(300),
            ..home.spec()
        },
    ));
    cases.push((
        "extra_args",
        pb::ObserverSpec {
            extra_args: vec!["x".repeat(5000)],
            ..home.spec()
        },
    ));
    for (what, spec) in cases {
        let err = start_observer(&d, "big", spec).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(
            err.message().contains("over the limit"),
            "{what}: {}",
            err.message()
        );
        assert!(
            err.message().len() < 1024,
            "{what}: a message of {} bytes",
            err.message().len()
        );
    }
    assert_daemon_alive(&d);
    assert!(
        !d.state_dir.join("obhostd.redb").exists() || {
            let size = std::fs::metadata(d.state_dir.join("obhostd.redb"))
                .unwrap()
                .len();
            size < 10 << 20
        }
    );
}

/// Swaps `rootdir` and `run` in the dir given as its argument, as fast as it
/// can, for at most 20 s.
const RENAME_RACER: &str = r#"
import os, sys, time
os.chdir(sys.argv[1])
end = time.time() + 20
while time.time() < end:
    for _ in range(1000):
        try:
            os.rename("rootdir", "run")
            os.rename("run", "rootdir")
        except OSError:
            pass
"#;

/// Attack (issue 17, 1): while root creates `run/` in the attacker's home for
/// it (Prepare with create_dirs), the attacker keeps swapping a root-owned dir
/// of the home in and out of the name `run`. Before, the dir that obhostd then
/// opened got chowned when it was root's, whoever made it: after ~70 tries
/// the root-owned dir was the attacker's. Now a new dir is born the
/// attacker's and nothing is chowned by name: the root dir stays root's.
#[tokio::test]
async fn a_root_dir_renamed_into_place_is_never_chowned() {
    let d = Daemon::start();
    let home = attacker_home();
    let rootdir = home.path().join("rootdir");
    std::fs::create_dir(&rootdir).unwrap();
    std::fs::set_permissions(&rootdir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ino = std::fs::metadata(&rootdir).unwrap().ino();
    // Bounded: the racer stops by itself after 20 s, and is killed at the end.
    let mut racer = attacker_python(RENAME_RACER)
        .arg(home.path())
        // Not the test's cwd, which the attacker may not enter.
        .current_dir("/")
        .spawn()
        .unwrap();
    let mut spec = home.spec();
    spec.user = ATTACKER.into();
    spec.parameters.insert("memory_limit".into(), "2G".into());
    for i in 0..150 {
        let id = format!("race-{i}");
        d.client()
            .await
            .prepare(pb::PrepareRequest {
                meta: Some(meta(&id)),
                observer: Some(spec.clone()),
                create_dirs: true,
                ..Default::default()
            })
            .await
            .expect("accepted");
        wait_for(&d, &id, Duration::from_secs(30), is_terminal).await;
        assert!(
            racer.try_wait().unwrap().is_none(),
            "the racer runs all along"
        );
        // Take away what obhostd made (never the root dir), so the next
        // Prepare makes `run` again.
        let run = home.path().join("run");
        if std::fs::metadata(&run).is_ok_and(|m| m.ino() != ino) {
            let _ = std::fs::remove_dir_all(&run);
        }
    }
    let _ = racer.kill();
    let _ = racer.wait();
    // Wherever the root dir is now (rootdir or run), it is still root's.
    let found: Vec<(PathBuf, u32)> = ["rootdir", "run"]
        .iter()
        .map(|n| home.path().join(n))
        .filter_map(|p| {
            let m = std::fs::symlink_metadata(&p).ok()?;
            (m.ino() == ino).then_some((p, m.uid()))
        })
        .collect();
    assert_eq!(found.len(), 1, "the root dir is somewhere: {found:?}");
    assert_eq!(found[0].1, 0, "the root dir was chowned: {found:?}");
}

/// Runs obhostd on `state_dir` (a socket of its own elsewhere) and returns its
/// exit code and stderr; one that listens (or still runs after 10 s) accepted
/// the state dir, and is killed: None.
fn obhostd_on_state_dir(state_dir: &Path) -> (Option<i32>, String) {
    let sock = tempfile::tempdir().unwrap();
    let listening = sock.path().join("s.sock");
    let mut child = std::process::Command::new(OBHOSTD)
        .arg("--state-dir")
        .arg(state_dir)
        .arg("--listen")
        .arg(format!("unix:{}", sock.path().join("s.sock").display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if listening.exists() || std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            return (None, String::from_utf8_lossy(&out.stderr).into_owned());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A base dir only root can write, for state dirs the attacks below set up.
fn root_base() -> tempfile::TempDir {
    let base = tempfile::tempdir().unwrap();
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    base
}

/// The attacker's own dir, with a store of their making in it, named as
/// obhostd's state dir: refused before anything in it is read or changed.
#[test]
fn a_state_dir_another_user_owns_is_refused() {
    let (uid, gid) = attacker();
    let base = root_base();
    let state = base.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::os::unix::fs::chown(&state, Some(uid), Some(gid)).unwrap();
    as_attacker(&format!(
        "chmod 755 {s} && printf 'a store with a step of mine' > {s}/obhostd.redb",
        s = state.display()
    ));
    let (code, err) = obhostd_on_state_dir(&state);
    assert_eq!(code, Some(1), "obhostd accepted it: {err}");
    assert!(
        err.contains(&format!("belongs to uid {uid}, not to obhostd's user")),
        "{err}"
    );
    assert!(err.contains("chown -R"), "says what to do: {err}");
    let meta = std::fs::metadata(&state).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (uid, 0o755), "touched");
    assert_eq!(
        std::fs::read_to_string(state.join("obhostd.redb")).unwrap(),
        "a store with a step of mine"
    );
}

/// root's own state dir, but in a dir the attacker can write (not sticky):
/// they could rename it away and put theirs in its place.
#[test]
fn a_state_dir_in_a_dir_others_can_write_is_refused() {
    let (uid, gid) = attacker();
    let base = root_base();
    let open = base.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::os::unix::fs::chown(&open, Some(uid), Some(gid)).unwrap();
    let state = open.join("state");
    std::fs::create_dir(&state).unwrap();
    let (code, err) = obhostd_on_state_dir(&state);
    assert_eq!(code, Some(1), "obhostd accepted it: {err}");
    assert!(
        err.contains(&format!(
            "belongs to uid {uid}, who could replace what it holds"
        )),
        "{err}"
    );
    assert!(!state.join("obhostd.redb").exists(), "a store was made");
    // World-writable and not sticky, owned by root: the same.
    std::os::unix::fs::chown(&open, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (code, err) = obhostd_on_state_dir(&state);
    assert_eq!(code, Some(1), "obhostd accepted it: {err}");
    assert!(err.contains("can be written by every user"), "{err}");
    assert!(!state.join("obhostd.redb").exists(), "a store was made");
}

/// A store swapped into root's state dir: a file of the attacker's, or a
/// link to one, is refused, not loaded.
#[test]
fn a_store_file_of_another_user_is_refused() {
    let (uid, gid) = attacker();
    let base = root_base();
    let state = base.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let store = state.join("obhostd.redb");
    std::fs::write(&store, "the attacker's store").unwrap();
    std::os::unix::fs::chown(&store, Some(uid), Some(gid)).unwrap();
    let (code, err) = obhostd_on_state_dir(&state);
    assert_eq!(code, Some(1), "obhostd accepted it: {err}");
    assert!(err.contains(&format!("owned by uid {uid}")), "{err}");
    assert_eq!(
        std::fs::read_to_string(&store).unwrap(),
        "the attacker's store"
    );
    std::fs::remove_file(&store).unwrap();
    let theirs = base.path().join("theirs.redb");
    std::fs::write(&theirs, "the attacker's store").unwrap();
    std::os::unix::fs::symlink(&theirs, &store).unwrap();
    let (code, err) = obhostd_on_state_dir(&state);
    assert_eq!(code, Some(1), "obhostd accepted it: {err}");
    assert!(err.contains("a symbolic link"), "{err}");
    // Its own state dir, as it would make it: served.
    std::fs::remove_file(&store).unwrap();
    let (code, err) = obhostd_on_state_dir(&state);
    assert_eq!(code, None, "obhostd refused its own state dir: {err}");
}

/// RetryStep of a step made under a looser policy, after the administrator
/// took the attacker's user out of allowed_users: the same request made anew
/// is PERMISSION_DENIED, and so is the retried run, before anything runs.
#[tokio::test]
async fn a_retry_is_judged_by_todays_policy() {
    let d = Daemon::start_with(Options {
        config: format!("allowed_users = [\"root\", \"{ATTACKER}\"]\n"),
        ..Options::default()
    });
    let home = attacker_home();
    let mut spec = attacker_spec(&home);
    spec.env
        .insert("FAKE_OBSERVER_EXIT_AT_START".into(), "3".into());
    let s = start_terminal(&d, "loose", spec.clone()).await;
    assert_eq!(error_code(&s), "PROCESS_EXITED", "{s:#?}");
    let out = home.path().join("log/obhost_observer.out");
    let before = std::fs::read(&out).unwrap();

    let mut stopped = d.kill9();
    stopped.config = "allowed_users = [\"root\"]\n".into();
    let d = stopped.start();
    let e = start_observer(&d, "loose-again", spec).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    d.client()
        .await
        .retry_step(pb::RetryStepRequest {
            step_id: "loose".into(),
        })
        .await
        .expect("the retry is accepted, and judged when it runs");
    let s = wait_for(&d, "loose", Duration::from_secs(30), |s| {
        s.attempt == 2 && is_terminal(s)
    })
    .await;
    assert_eq!(error_code(&s), "PERMISSION_DENIED", "{s:#?}");
    let message = &s.error.as_ref().unwrap().message;
    assert!(message.contains("not in allowed_users"), "{message}");
    assert!(home.processes().is_empty(), "the retry ran something");
    assert_eq!(
        std::fs::read(&out).unwrap(),
        before,
        "the retry ran the launcher"
    );
}

/// A start that was running when obhostd died, resumed by a daemon whose
/// allowed_roots no longer hold its home: FAILED PERMISSION_DENIED, and the
/// observer it had spawned is left running (a restart never kills one).
#[tokio::test]
async fn a_resumed_start_is_judged_by_todays_policy() {
    let home = Home::new();
    let root = home.path().parent().unwrap().to_path_buf();
    let d = Daemon::start_with(Options {
        config: format!(
            "allowed_roots = [\"{}\", \"{BUILD}\"]\n[observer]\nstart_settle = \"30s\"\n",
            root.display()
        ),
        ..Options::default()
    });
    let spec = home.spec_with_env("FAKE_OBSERVER_LISTEN_DELAY_MS", "60000");
    start_observer(&d, "resumed", spec).await.unwrap();
    wait_for(&d, "resumed", Duration::from_secs(10), |s| {
        s.outputs
            .get("stage")
            .is_some_and(|st| st == "server_alive")
    })
    .await;
    let procs = home.processes();
    assert_eq!(procs.len(), 1, "{procs:?}");
    let pid = procs[0];
    let mut stopped = d.kill9();
    // The stand-in's binary is still allowed; the home no longer is.
    stopped.config = format!("allowed_roots = [\"{BUILD}\"]\n[observer]\nstart_settle = \"30s\"\n");
    let d = stopped.start();
    let s = wait_for(&d, "resumed", Duration::from_secs(30), is_terminal).await;
    assert_eq!(error_code(&s), "PERMISSION_DENIED", "{s:#?}");
    let message = &s.error.as_ref().unwrap().message;
    assert!(message.contains("outside allowed_roots"), "{message}");
    assert!(alive(pid), "the restart killed the observer");
}

/// Where the stand-in observer is built.
const BUILD: &str = env!("CARGO_MANIFEST_DIR");

fn error_code(s: &pb::Step) -> &str {
    s.error
        .as_ref()
        .map(|e| e.code.as_str())
        .unwrap_or("<none>")
}

/// The observer's user takes the pid number of a launcher that has exited
/// (cycling pids until one of their processes gets it) and calls setsid(), so
/// its session id is that number; then the start fails. The cleanup stops what
/// the launch made, by identity, never a process found by that number.
#[tokio::test]
async fn a_failed_start_never_kills_a_process_that_took_its_launchers_pid() {
    let d = Daemon::start();
    let home = attacker_home();
    let h = home.path().display().to_string();
    // The launcher notes its pid and exits 0; its server (no pid file) leads
    // a session of its own, as daemons do (so the launcher's pid number is
    // free once it is reaped), waits for `go`, then fails.
    let launcher = format!(
        "#!/bin/sh\necho $$ > {h}/launcher.pid\nsetsid sh -c \"while [ ! -e {h}/go ]; do sleep 0.05; done; exit 3\" &\nexit 0\n"
    );
    as_attacker(&format!(
        "mkdir -p {h}/bin {h}/log && printf '%s' '{launcher}' > {h}/bin/observer && chmod 755 {h}/bin/observer"
    ));
    let mut spec = attacker_spec(&home);
    spec.binary = format!("{h}/bin/observer");
    start_observer(&d, "pid-taker", spec)
        .await
        .expect("accepted");
    wait_for(&d, "pid-taker", Duration::from_secs(10), |s| {
        s.outputs
            .get("stage")
            .is_some_and(|st| st == "launcher_exited")
    })
    .await;
    let target: i32 = std::fs::read_to_string(home.path().join("launcher.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // A process of the attacker gets the launcher's pid number and leads a
    // new session (sid == that number). Chance would do it on a busy host;
    // the test asks the kernel for the number (root sets ns_last_pid just
    // before the spawn), and tries again when another process took it first.
    let impostor_script = format!(
        "import os, sys, time\nif os.getpid() != {target}: sys.exit(1)\nos.setsid()\nopen('{h}/impostor', 'w').write(str(os.getpid()))\ntime.sleep(120)\n"
    );
    let mut child = None;
    for _ in 0..200 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (target - 1).to_string())
            .expect("set ns_last_pid (the tests run as root)");
        let mut c = attacker_python(&impostor_script).spawn().unwrap();
        if c.id() as i32 == target {
            child = Some(c);
            break;
        }
        let _ = c.kill();
        let _ = c.wait();
        std::thread::sleep(Duration::from_millis(10));
    }
    let Some(mut child) = child else {
        let _ = std::fs::write(home.path().join("go"), "");
        panic!("no process of the attacker got pid {target} in 200 tries");
    };
    let impostor = loop {
        if let Ok(t) = std::fs::read_to_string(home.path().join("impostor"))
            && let Ok(pid) = t.trim().parse::<i32>()
        {
            break pid;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the impostor exited before it took the session"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(impostor, target);
    let before = obhost::process::Identity::of(impostor).expect("the impostor runs");
    std::fs::write(home.path().join("go"), "").unwrap();
    let s = wait_for(&d, "pid-taker", Duration::from_secs(30), is_terminal).await;
    assert_eq!(error_code(&s), "PROCESS_EXITED", "{s:#?}");
    // The cleanup is done when the step is terminal.
    assert_eq!(
        obhost::process::Identity::of(impostor),
        Some(before),
        "the failed start killed a process it never started"
    );
    if let Some(status) = ended_before_our_signal(child) {
        panic!("the failed start signalled a process it never started: it {status}");
    }
}

/// The real uid of a running process.
fn uid_of(pid: i32) -> u32 {
    std::fs::metadata(format!("/proc/{pid}")).unwrap().uid()
}

/// A request that names no user, for a home the attacker owns, under the
/// default config: the observer runs as the home's owner, never as root.
#[tokio::test]
async fn a_request_without_a_user_runs_as_the_homes_owner() {
    let d = Daemon::start_with(Options {
        config: "run_as_root = false\n".into(),
        ..Options::default()
    });
    let (uid, _) = attacker();
    let home = attacker_home();
    let spec = home.spec(); // no user
    let (s, pid) = start_ok(&d, "owner-default", spec).await;
    assert_eq!(uid_of(pid), uid, "{s:#?}");
    stop_observer(&d, "owner-default-stop", home.path(), 5.0, true).await;
}

/// Root, by default, is refused: named in the request, or as the owner of a
/// root-owned home. Nothing runs.
#[tokio::test]
async fn nothing_runs_as_root_unless_the_config_says_so() {
    let d = Daemon::start_with(Options {
        config: "run_as_root = false\n".into(),
        ..Options::default()
    });
    let home = Home::new(); // root's
    let e = start_observer(&d, "root-default", home.spec())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("the owner of the home"), "{e:?}");
    assert!(e.message().contains("run_as_root = true"), "{e:?}");
    let mut spec = home.spec();
    spec.user = "root".into();
    let e = start_observer(&d, "root-named", spec).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("named in the request"), "{e:?}");
    assert!(home.processes().is_empty());
}

/// DESIGN's way to allow root: naming it in allowed_users (no run_as_root).
#[tokio::test]
async fn root_named_in_allowed_users_may_run_the_observer() {
    let d = Daemon::start_with(Options {
        config: "run_as_root = false\nallowed_users = [\"root\"]\n".into(),
        ..Options::default()
    });
    let home = Home::new(); // root's
    let (_, pid) = start_ok(&d, "root-allowed", home.spec()).await;
    assert_eq!(uid_of(pid), 0);
    stop_observer(&d, "root-allowed-stop", home.path(), 5.0, true).await;
}

/// With run_as_root on, a root observer whose binary, or whose library dir,
/// the attacker can write is refused: their code would run as root. The
/// planted binary never runs.
#[tokio::test]
async fn a_root_observer_never_runs_what_another_user_can_write() {
    let d = Daemon::start_with(Options {
        config: "run_as_root = true\n".into(),
        ..Options::default()
    });
    let (uid, gid) = attacker();
    let home = Home::new(); // root's, 0700
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let h = home.path().display().to_string();
    let ran = home.path().join("ran-as-root");
    // bin/ belongs to the attacker, who puts their own observer there.
    std::fs::create_dir(home.path().join("bin")).unwrap();
    std::os::unix::fs::chown(home.path().join("bin"), Some(uid), Some(gid)).unwrap();
    as_attacker(&format!(
        "printf '#!/bin/sh\\ntouch {r}\\n' > {h}/bin/observer && chmod 755 {h}/bin/observer",
        r = ran.display()
    ));
    let mut spec = home.spec();
    spec.binary = format!("{h}/bin/observer");
    spec.user = "root".into();
    let e = start_observer(&d, "root-their-bin", spec.clone())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("observer.binary is not root's alone"),
        "{e:?}"
    );
    assert!(
        e.message().contains(&format!("belongs to uid {uid}")),
        "{e:?}"
    );

    // A root binary, but lib/ (first on LD_LIBRARY_PATH) is the attacker's.
    std::fs::remove_dir_all(home.path().join("bin")).unwrap();
    std::fs::create_dir(home.path().join("lib")).unwrap();
    std::os::unix::fs::chown(home.path().join("lib"), Some(uid), Some(gid)).unwrap();
    let mut spec = home.spec();
    spec.user = "root".into();
    let e = start_observer(&d, "root-their-lib", spec)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("lib dir is not root's alone"), "{e:?}");

    // The home itself open to every user (the working dir).
    std::fs::remove_dir_all(home.path().join("lib")).unwrap();
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut spec = home.spec();
    spec.user = "root".into();
    let e = start_observer(&d, "root-open-home", spec)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message()
            .contains("observer.home_path is not root's alone"),
        "{e:?}"
    );
    assert!(!ran.exists(), "the attacker's binary ran");
    assert!(home.processes().is_empty());

    // All root's: it runs, as root.
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut spec = home.spec();
    spec.user = "root".into();
    let (_, pid) = start_ok(&d, "root-ok", spec).await;
    assert_eq!(uid_of(pid), 0);
    stop_observer(&d, "root-ok-stop", home.path(), 5.0, true).await;
}

/// The attacker binds the agent's health port first. The agent dies of
/// "address in use"; the impostor answers the health check. The step must
/// fail with the agent's death, never succeed on the impostor's answer; and
/// an agent that lives without the port is not called healthy either.
#[tokio::test]
async fn an_impostor_on_the_agents_health_port_is_not_the_agent() {
    use pb::start_agent_service_request::Service;
    let d = Daemon::start();
    let port = free_port();
    let mut impostor = attacker_python(&format!(
        "import socket, time\ns = socket.socket()\ns.bind(('127.0.0.1', {port}))\ns.listen(64)\nprint('up', flush=True)\ntime.sleep(120)\n"
    ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(impostor.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "up");
    }
    let dir = tempfile::tempdir().unwrap();
    let run = |id: &str, argv: Vec<String>| pb::StartAgentServiceRequest {
        meta: Some(pb::StepMeta {
            step_id: id.into(),
            timeout: Some(secs(5.0)),
            ..Default::default()
        }),
        service: Some(Service::Command(pb::ServiceCommand {
            argv,
            cwd: dir.path().display().to_string(),
            foreground: true,
            ..Default::default()
        })),
        health: Some(pb::HealthCheck {
            check: Some(pb::health_check::Check::TcpPort(port as u32)),
        }),
    };
    // The real agent cannot bind, and dies.
    let argv: Vec<String> = [
        "/usr/bin/python3",
        "-m",
        "http.server",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
    ]
    .map(String::from)
    .to_vec();
    d.client()
        .await
        .start_agent_service(run("agent-impostor", argv))
        .await
        .unwrap();
    let s = wait_for(&d, "agent-impostor", Duration::from_secs(30), is_terminal).await;
    assert_eq!(error_code(&s), "PROCESS_EXITED", "{s:#?}");
    assert!(
        s.error
            .as_ref()
            .unwrap()
            .log_tail
            .join("\n")
            .contains("Address already in use"),
        "{s:#?}"
    );
    // An agent that lives but never listens: not healthy, and the step says
    // who holds the port.
    let argv = vec!["/bin/sleep".to_string(), "30".to_string()];
    d.client()
        .await
        .start_agent_service(run("agent-sleeper", argv))
        .await
        .unwrap();
    let s = wait_for(&d, "agent-sleeper", Duration::from_secs(30), is_terminal).await;
    assert_eq!(error_code(&s), "DEADLINE_EXCEEDED", "{s:#?}");
    assert!(
        s.error.as_ref().unwrap().message.contains("not the agent"),
        "{s:#?}"
    );
    let _ = impostor.kill();
    let _ = impostor.wait();
}
