//! obhostd under a real systemd: PID 1 in private namespaces, booted by
//! `scripts/systemd-sandbox.sh` (systemd is not PID 1 on the machines the
//! tests run on). obhostd runs from the unit the package installs, with a
//! drop-in for the test's paths only.
//!
//! Without root, cgroup2 or systemd these tests say SKIPPED with the reason;
//! under `CI` they fail instead.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use obhost::proto::v1 as pb;
use obhost::proto::v1::host_agent_client::HostAgentClient;
use tonic::transport::Channel;

const SANDBOX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/systemd-sandbox.sh");
const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/obhostd.service");

/// A booted systemd, powered off (and whatever is left killed) when dropped.
struct Sandbox {
    pid: i32,
    cgroup: String,
    /// Shared with the sandbox at the same path: obhostd's config, state and
    /// socket.
    shared: tempfile::TempDir,
}

impl Sandbox {
    /// Boots one sharing the build, `extra` dirs (homes) and a dir of its own.
    fn boot(name: &str, extra: &[&Path]) -> Option<Sandbox> {
        let skip = |why: String| {
            assert!(std::env::var_os("CI").is_none(), "{why}");
            eprintln!("SKIPPED: {why}");
        };
        if !nix::unistd::geteuid().is_root() {
            skip("booting systemd needs root".into());
            return None;
        }
        if !Path::new("/lib/systemd/systemd").exists() {
            skip("no /lib/systemd/systemd (apt install systemd)".into());
            return None;
        }
        let shared = tempfile::Builder::new()
            .prefix("obhost-sd-shared-")
            .tempdir()
            .unwrap();
        let out = Command::new(SANDBOX)
            .arg("start")
            .arg(name)
            .arg(env!("CARGO_MANIFEST_DIR"))
            .arg(shared.path())
            .args(extra)
            .output()
            .expect("run systemd-sandbox.sh");
        if !out.status.success() {
            skip(format!(
                "cannot boot systemd here: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut words = text.split_whitespace();
        let pid = words.next().and_then(|p| p.parse().ok()).expect("its pid");
        let cgroup = words.next().expect("its cgroup").to_string();
        Some(Sandbox {
            pid,
            cgroup,
            shared,
        })
    }

    /// Runs `script` inside (every namespace of the sandbox).
    fn sh(&self, script: &str) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.pid.to_string(), "-a", "sh", "-c", script])
            .output()
            .expect("nsenter")
    }

    /// As [`Sandbox::sh`], and it must succeed; its stdout.
    fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "{script}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn socket(&self) -> PathBuf {
        self.shared.path().join("obhostd.sock")
    }

    /// Installs the packaged unit with a drop-in that runs the built obhostd
    /// on the shared dir's config, and starts it: `systemctl start` returns
    /// once obhostd has sent READY.
    fn start_obhostd(&self) {
        self.start_obhostd_with("");
    }

    /// [`Sandbox::start_obhostd`] with `extra` TOML after the test's own keys.
    fn start_obhostd_with(&self, extra: &str) {
        self.start_obhostd_full(extra, "");
    }

    /// ... and `service` lines added to the drop-in's [Service].
    fn start_obhostd_full(&self, extra: &str, service: &str) {
        let config = self.shared.path().join("obhostd.toml");
        std::fs::write(
            &config,
            format!(
                "{}state_dir = \"{}\"\nrun_as_root = true\n{extra}",
                // `extra` may name its own listeners (the socket among them).
                if extra.contains("listen =") {
                    String::new()
                } else {
                    format!("listen = [\"unix:{}\"]\n", self.socket().display())
                },
                self.shared.path().join("state").display()
            ),
        )
        .unwrap();
        let unit = std::fs::read_to_string(UNIT).unwrap();
        let dropin = format!(
            "[Service]\nExecStart=\nExecStart={} --config {}\n{service}",
            OBHOSTD,
            config.display()
        );
        self.ok(&format!(
            "mkdir -p /etc/systemd/system/obhostd.service.d && \
             cat > /etc/systemd/system/obhostd.service <<'EOF'\n{unit}EOF\n\
             cat > /etc/systemd/system/obhostd.service.d/test.conf <<'EOF'\n{dropin}EOF\n\
             systemctl daemon-reload && systemctl start obhostd"
        ));
    }

    /// The host pid of obhostd's main process (the sandbox shows its own).
    fn obhostd_pid(&self) -> i32 {
        let inner: i32 = self
            .ok("systemctl show -p MainPID --value obhostd")
            .parse()
            .unwrap();
        assert!(inner > 0, "obhostd is not running");
        host_pid(self.pid, inner).expect("obhostd's pid on the host")
    }

    async fn client(&self) -> HostAgentClient<Channel> {
        let endpoint = tonic::transport::Endpoint::from_static("http://localhost");
        let channel = connect_addr(&format!("unix:{}", self.socket().display()), endpoint)
            .await
            .expect("connect to obhostd's socket");
        HostAgentClient::new(channel)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = Command::new(SANDBOX)
            .args(["stop", &self.pid.to_string(), &self.cgroup])
            .status();
    }
}

/// The host pid of the sandbox's `inner` pid: a process under the sandbox's
/// PID 1 whose `NSpid` ends in it.
fn host_pid(sandbox: i32, inner: i32) -> Option<i32> {
    let ns = std::fs::read_link(format!("/proc/{sandbox}/ns/pid")).ok()?;
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/pid"))
                .ok()
                .as_ref()
                == Some(&ns)
                && std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .ok()
                    .and_then(|s| {
                        s.lines()
                            .find_map(|l| l.strip_prefix("NSpid:"))
                            .and_then(|v| v.split_whitespace().last()?.parse::<i32>().ok())
                    })
                    == Some(inner)
        })
}

/// The (restarted) obhostd knows `observer` (a host pid) as the running
/// observer of `home`.
async fn assert_readopted(
    c: &mut HostAgentClient<Channel>,
    sd: &Sandbox,
    home: &Home,
    observer: i32,
) {
    let o = c
        .get_observer(pb::GetObserverRequest {
            home_path: home.path().display().to_string(),
        })
        .await
        .expect("GetObserver")
        .into_inner()
        .observer
        .expect("observer");
    assert!(o.running, "re-adopted: {o:#?}");
    // obhostd sees the sandbox's pids.
    assert_eq!(
        host_pid(sd.pid, o.pid as i32),
        Some(observer),
        "re-adopted: {o:#?}"
    );
}

/// StartObserver, followed to its end.
async fn start(c: &mut HostAgentClient<Channel>, id: &str, spec: pb::ObserverSpec) -> pb::Step {
    c.start_observer(pb::StartObserverRequest {
        meta: Some(meta(id)),
        observer: Some(spec),
    })
    .await
    .expect("StartObserver accepted");
    step_until_terminal(c, id).await
}

async fn step_until_terminal(c: &mut HostAgentClient<Channel>, id: &str) -> pb::Step {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let s = c
            .get_step(pb::GetStepRequest { step_id: id.into() })
            .await
            .expect("GetStep")
            .into_inner()
            .step
            .expect("a step");
        if is_terminal(&s) {
            return s;
        }
        assert!(Instant::now() < end, "step {id} never ended: {s:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The packaged unit under a real systemd: `systemctl start` returns once
/// obhostd is READY (Type=notify) and serving; an observer it starts outlives
/// `systemctl stop obhostd` (KillMode=process), and the next start re-adopts
/// it without a second process.
// Multi-threaded: the client's connection must answer obhostd's GOAWAY while
// this thread waits for systemctl, or the stop waits out shutdown_timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unit_starts_obhostd_and_a_stop_leaves_the_observer_running() {
    let home = Home::new();
    let Some(sd) = Sandbox::boot("unit", &[home.path()]) else {
        return;
    };
    sd.start_obhostd();
    assert_eq!(sd.ok("systemctl is-active obhostd"), "active");
    let first = sd.obhostd_pid();
    let mut c = sd.client().await;
    let s = start(&mut c, "sd-start", home.spec()).await;
    assert_eq!(s.state(), pb::StepState::Succeeded, "{s:#?}");
    let procs = home.processes();
    assert_eq!(procs.len(), 1, "{procs:?}");
    let observer = procs[0];

    drop(c);
    sd.ok("systemctl stop obhostd");
    assert!(!alive(first), "obhostd still runs after systemctl stop");
    assert!(
        alive(observer),
        "systemctl stop obhostd took the observer down"
    );

    sd.ok("systemctl start obhostd");
    let mut c = sd.client().await;
    assert_readopted(&mut c, &sd, &home, observer).await;
    let s = start(&mut c, "sd-start-again", home.spec()).await;
    assert_eq!(s.outputs["already_running"], "true", "{s:#?}");
    assert_eq!(home.processes(), vec![observer]);
}

/// StartAgentService's systemd mode: the unit's own processes must hold the
/// health port. A unit that runs and listens is healthy; when a local user
/// bound the port first (the unit's server then dies of "address in use"),
/// the impostor's answer never makes the step succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_units_health_port_must_be_held_by_the_unit() {
    use pb::start_agent_service_request::Service;
    let Some(sd) = Sandbox::boot("agent-unit", &[]) else {
        return;
    };
    let port = free_port();
    sd.ok(&format!(
        "cat > /etc/systemd/system/fake-agent.service <<'EOF'\n[Service]\nExecStart=/usr/bin/python3 -m http.server {port} --bind 127.0.0.1\nEOF\nsystemctl daemon-reload"
    ));
    sd.start_obhostd_with("[agent_service]\nallowed_units = [\"fake-agent.service\"]\n");
    let mut c = sd.client().await;
    let request = |id: &str| pb::StartAgentServiceRequest {
        meta: Some(pb::StepMeta {
            step_id: id.into(),
            timeout: Some(secs(5.0)),
            ..Default::default()
        }),
        service: Some(Service::SystemdUnit("fake-agent.service".into())),
        health: Some(pb::HealthCheck {
            check: Some(pb::health_check::Check::TcpPort(port as u32)),
        }),
    };
    c.start_agent_service(request("unit-ok")).await.unwrap();
    let s = step_until_terminal(&mut c, "unit-ok").await;
    assert_eq!(s.state(), pb::StepState::Succeeded, "{s:#?}");
    sd.ok("systemctl stop fake-agent");

    // A listener that is not the unit's (this test's, on the host: the same
    // network) takes the port first.
    let impostor = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    c.start_agent_service(request("unit-impostor"))
        .await
        .unwrap();
    let s = step_until_terminal(&mut c, "unit-impostor").await;
    drop(impostor);
    assert_eq!(s.state(), pb::StepState::TimedOut, "{s:#?}");
    let e = s.error.as_ref().unwrap();
    assert!(e.message.contains("not the agent"), "{e:#?}");
}

/// The unit's own instructions work as written: the check-config command its
/// comment gives is one obhostd accepts (an earlier form was refused).
#[test]
fn the_units_check_config_command_is_accepted() {
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let comment: String = unit
        .lines()
        .take_while(|l| l.starts_with('#'))
        .map(|l| l.trim_start_matches('#').trim())
        .collect::<Vec<_>>()
        .join(" ");
    let start = comment
        .find("`obhostd ")
        .expect("the comment gives a command");
    let command = &comment[start + 1..];
    let command = &command[..command.find('`').unwrap()];
    let args: Vec<&str> = command.split_whitespace().skip(1).collect();
    assert!(args.contains(&"--check-config"), "{command}");
    // The packaged config in place of /etc/obhost/obhostd.toml.
    let packaged = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/obhostd.toml");
    let args: Vec<&str> = args
        .iter()
        .map(|a| {
            if *a == "/etc/obhost/obhostd.toml" {
                packaged
            } else {
                a
            }
        })
        .collect();
    let out = Command::new(OBHOSTD).args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "`{command}`: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The unit's watchdog: obhostd frozen (SIGSTOP) misses its pets, systemd
/// kills and restarts it (Restart=on-failure), the observer lives on in its
/// scope, and the new obhostd resumes the step the old one was running. Its log lines reach the journal as the unit's,
/// at their priority, with no timestamp of obhostd's own in front.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_obhostd_is_restarted_by_the_watchdog_and_logs_reach_the_journal() {
    let home = Home::new();
    let Some(sd) = Sandbox::boot("watchdog", &[home.path()]) else {
        return;
    };
    sd.start_obhostd_full("", "WatchdogSec=1s\nRestartSec=100ms\n");
    let first = sd.obhostd_pid();
    {
        let mut c = sd.client().await;
        // It listens only after 4 s: the wait below is still RUNNING when
        // obhostd wedges, and must be resumed by the restarted one.
        let s = start(
            &mut c,
            "wd-start",
            home.spec_with_env("FAKE_OBSERVER_LISTEN_DELAY_MS", "4000"),
        )
        .await;
        assert_eq!(s.state(), pb::StepState::Succeeded, "{s:#?}");
        c.wait_observer_active(pb::WaitObserverActiveRequest {
            meta: Some(pb::StepMeta {
                step_id: "wd-wait".into(),
                timeout: Some(secs(30.0)),
                ..Default::default()
            }),
            home_path: home.path().display().to_string(),
            mysql_port: home.mysql_port as u32,
            ..Default::default()
        })
        .await
        .expect("WaitObserverActive accepted");
        // A refused request: a warning in the journal.
        let mut bad = home.spec();
        bad.home_path = "relative/home".into();
        let e = c
            .start_observer(pb::StartObserverRequest {
                meta: Some(meta("wd-bad")),
                observer: Some(bad),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }
    let observer = home.processes();
    assert_eq!(observer.len(), 1);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    let second = loop {
        let out = sd.sh("systemctl show -p MainPID --value obhostd");
        let inner: i32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        if inner > 0
            && let Some(pid) = host_pid(sd.pid, inner)
            && pid != first
            && sd.sh("systemctl is-active obhostd").status.success()
        {
            break pid;
        }
        assert!(Instant::now() < end, "the watchdog never restarted obhostd");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!alive(first), "the wedged obhostd was left running");
    assert_ne!(second, first);
    assert_eq!(
        home.processes(),
        observer,
        "the observer outlives the restart"
    );
    assert!(
        cgroup_of(observer[0]).ends_with(&format!("/obhost.slice/{}", observer_scope(home.path()))),
        "{}",
        cgroup_of(observer[0])
    );
    let journal = sd.ok("journalctl -u obhostd -o json --no-pager");
    assert!(journal.contains("Watchdog timeout"), "{journal}");
    let mut c = sd.client().await;
    let s = step_until_terminal(&mut c, "wd-start").await;
    assert_eq!(s.state(), pb::StepState::Succeeded, "{s:#?}");
    // The step the wedged obhostd was running is resumed, not lost.
    let s = step_until_terminal(&mut c, "wd-wait").await;
    assert_eq!(s.state(), pb::StepState::Succeeded, "{s:#?}");
    assert!(
        s.finished_at.as_ref().map(|t| t.seconds) >= s.started_at.as_ref().map(|t| t.seconds + 1),
        "it waited for the late listener: {s:#?}"
    );
    // obhostd's own lines: its message, at its level, no timestamp of its own.
    let lines: Vec<serde_json::Value> = journal
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["_COMM"] == "obhostd")
        .collect();
    let starting = lines
        .iter()
        .find(|v| {
            v["MESSAGE"]
                .as_str()
                .is_some_and(|m| m.contains("obhostd starting"))
        })
        .expect("obhostd's start in the journal");
    assert_eq!(starting["PRIORITY"], "6", "INFO: {starting}");
    let message = starting["MESSAGE"].as_str().unwrap();
    assert!(
        !message.trim_start().starts_with("20"),
        "a timestamp in front: {message}"
    );
    let refused = lines
        .iter()
        .find(|v| v["MESSAGE"].as_str().is_some_and(|m| m.contains("wd-bad")))
        .expect("the refusal in the journal");
    assert_eq!(refused["PRIORITY"], "4", "WARN: {refused}");
}

/// `systemctl reload obhostd` (ExecReload: SIGHUP) rotates the token: new
/// calls need the new one, and a WatchSteps stream opened with the old one
/// stays open and keeps receiving changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_rotates_the_token_while_a_stream_stays_open() {
    use std::os::unix::fs::PermissionsExt;
    let home = Home::new();
    let Some(sd) = Sandbox::boot("reload", &[home.path()]) else {
        return;
    };
    let token = sd.shared.path().join("token");
    let write_token = |text: &str| {
        std::fs::write(&token, text).unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    };
    let (old, new) = ("old-token-0123456789", "new-token-9876543210");
    write_token(old);
    let port = free_port();
    sd.start_obhostd_with(&format!(
        "listen = [\"unix:{}\", \"127.0.0.1:{port}\"]\n[auth]\ntoken_file = \"{}\"\n",
        sd.socket().display(),
        token.display()
    ));
    let tcp = |t: &'static str| async move {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
            .expect("connect over TCP");
        HostAgentClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
            Ok(r)
        })
    };
    let mut watch = tcp(old)
        .await
        .watch_steps(pb::WatchStepsRequest::default())
        .await
        .expect("WatchSteps with the old token")
        .into_inner();

    write_token(new);
    sd.ok("systemctl reload obhostd");
    let end = Instant::now() + Duration::from_secs(10);
    while tcp(new)
        .await
        .list_steps(pb::ListStepsRequest::default())
        .await
        .is_err()
    {
        assert!(Instant::now() < end, "the new token never worked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let e = tcp(old)
        .await
        .list_steps(pb::ListStepsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);

    // A change after the reload still reaches the stream opened before it.
    let mut c = sd.client().await;
    c.stop_observer(pb::StopObserverRequest {
        meta: Some(meta("after-reload")),
        home_path: home.path().display().to_string(),
        grace: Some(secs(1.0)),
        force: false,
    })
    .await
    .expect("StopObserver");
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(m) = watch.message().await.expect("the stream stays open") {
            if m.step.is_some_and(|s| s.id == "after-reload") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(seen, Ok(true), "the open stream missed the change");
    assert_eq!(sd.ok("systemctl is-active obhostd"), "active");
}

/// A unit that fails to start: SERVICE_START_FAILED, with its start job's
/// result, the unit's result and its own journal lines (why it failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_unit_shows_its_journal() {
    use pb::start_agent_service_request::Service;
    let Some(sd) = Sandbox::boot("agent-fails", &[]) else {
        return;
    };
    sd.ok(
        "cat > /etc/systemd/system/broken-agent.service <<'EOF'\n[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo agent-config-missing >&2; exit 3'\nEOF\nsystemctl daemon-reload",
    );
    sd.start_obhostd_with("[agent_service]\nallowed_units = [\"broken-agent.service\"]\n");
    let mut c = sd.client().await;
    c.start_agent_service(pb::StartAgentServiceRequest {
        meta: Some(pb::StepMeta {
            step_id: "broken".into(),
            timeout: Some(secs(20.0)),
            ..Default::default()
        }),
        service: Some(Service::SystemdUnit("broken-agent.service".into())),
        health: None,
    })
    .await
    .unwrap();
    let s = step_until_terminal(&mut c, "broken").await;
    let e = s.error.as_ref().expect("failed");
    assert_eq!(e.code, "SERVICE_START_FAILED", "{s:#?}");
    // Judged over D-Bus: the job's result and the unit's own.
    assert_eq!(e.details["job_result"], "failed", "{e:#?}");
    assert_eq!(e.details["active_state"], "failed", "{e:#?}");
    assert_eq!(e.details["unit_result"], "exit-code", "{e:#?}");
    assert!(
        e.log_tail
            .iter()
            .any(|l| l.contains("agent-config-missing")),
        "the unit's own words: {e:#?}"
    );
}

/// The unit a host pid's cgroup names last, read from the host (the full
/// path, the sandbox's own folder in front).
fn cgroup_of(pid: i32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_default()
        .to_string()
}

/// The scope obhostd names for an observer of `home`.
fn observer_scope(home: &Path) -> String {
    obhost::process::systemd::scope_name("obhost-observer", home)
}

/// Every observer is born in a transient scope of its own under
/// obhost.slice, not in obhostd.service: `systemctl status` of the scope
/// shows it, and `systemctl kill obhostd` (every process of obhostd's unit)
/// leaves it running; the restarted obhostd re-adopts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_lives_in_its_own_scope_and_outlives_systemctl_kill() {
    let home = Home::new();
    let Some(sd) = Sandbox::boot("scope", &[home.path()]) else {
        return;
    };
    sd.start_obhostd();
    let first = sd.obhostd_pid();
    let mut c = sd.client().await;
    let s = start(&mut c, "scope-start", home.spec()).await;
    assert_eq!(s.state(), pb::StepState::Succeeded, "{s:#?}");
    let procs = home.processes();
    assert_eq!(procs.len(), 1, "{procs:?}");
    let observer = procs[0];
    let scope = observer_scope(home.path());
    let cgroup = cgroup_of(observer);
    assert!(
        cgroup.ends_with(&format!("/obhost.slice/{scope}")),
        "the observer (daemonized by its launcher) is in {cgroup}, not {scope}"
    );
    assert!(cgroup_of(first).ends_with("/system.slice/obhostd.service"));
    let status = sd.ok(&format!("systemctl status --no-pager -- '{scope}'"));
    assert!(
        status.contains(&format!("OceanBase observer of {}", home.path().display()))
            && status.contains("scope-start"),
        "{status}"
    );
    assert!(status.contains(&s.outputs["pid"]), "{status}");

    drop(c);
    // SIGTERM (the stand-in observer exits on it) to every process of
    // obhostd's unit. (SIGKILL goes through cgroup.kill, which this sandbox's
    // nested cgroup2 refuses.)
    // systemd 252 may report EIO for the unit's other processes under load
    // (in this nested cgroup2); the observer must live either way, and is
    // tested to die of this kill when it is in obhostd's cgroup.
    let killed = sd.sh("systemctl kill obhostd");
    if !killed.status.success() {
        eprintln!(
            "systemctl kill obhostd: {}",
            String::from_utf8_lossy(&killed.stderr)
        );
    }
    let end = Instant::now() + Duration::from_secs(20);
    while alive(first) {
        assert!(Instant::now() < end, "obhostd outlived systemctl kill");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        alive(observer),
        "systemctl kill obhostd killed the observer"
    );
    sd.ok("systemctl start obhostd");
    assert_eq!(home.processes(), vec![observer]);
    let mut c = sd.client().await;
    assert_readopted(&mut c, &sd, &home, observer).await;

    // Stopped and at once started again: the old scope may not be gone yet
    // (systemd learns of an empty cgroup later); the new observer gets one.
    for round in 0..3 {
        let stop = format!("scope-stop-{round}");
        c.stop_observer(pb::StopObserverRequest {
            meta: Some(meta(&stop)),
            home_path: home.path().display().to_string(),
            grace: Some(secs(2.0)),
            force: true,
        })
        .await
        .expect("StopObserver");
        let s = step_until_terminal(&mut c, &stop).await;
        assert_eq!(s.state(), pb::StepState::Succeeded, "{s:#?}");
        let again = format!("scope-again-{round}");
        let s = start(&mut c, &again, home.spec()).await;
        assert_eq!(s.state(), pb::StepState::Succeeded, "{s:#?}");
        let now = home.processes();
        assert_eq!(now.len(), 1, "{now:?}");
        assert!(cgroup_of(now[0]).ends_with(&format!("/obhost.slice/{scope}")));
    }

    // Stopped through obhostd, the observer's scope goes with it.
    c.stop_observer(pb::StopObserverRequest {
        meta: Some(meta("scope-stop")),
        home_path: home.path().display().to_string(),
        grace: Some(secs(2.0)),
        force: false,
    })
    .await
    .expect("StopObserver");
    let s = step_until_terminal(&mut c, "scope-stop").await;
    assert_eq!(s.state(), pb::StepState::Succeeded, "{s:#?}");
    let end = Instant::now() + Duration::from_secs(10);
    while sd
        .sh(&format!("systemctl is-active --quiet -- '{scope}'"))
        .status
        .success()
    {
        assert!(Instant::now() < end, "the empty scope stayed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An observer that lives in obhostd.service's cgroup (started by a version
/// without scopes) is moved into its scope when obhostd starts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readopted_observer_in_obhostds_cgroup_is_moved_into_its_scope() {
    let home = Home::new();
    let Some(sd) = Sandbox::boot("move", &[home.path()]) else {
        return;
    };
    sd.start_obhostd();
    let mut c = sd.client().await;
    let s = start(&mut c, "move-start", home.spec()).await;
    assert_eq!(s.state(), pb::StepState::Succeeded, "{s:#?}");
    let observer = home.processes()[0];
    drop(c);
    // Where an older obhostd left its observers.
    let obhostd = cgroup_of(sd.obhostd_pid());
    let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .find(|r| Path::new(&format!("{r}{obhostd}/cgroup.procs")).exists())
        .expect("obhostd's cgroup on the host");
    std::fs::write(
        format!("{root}{obhostd}/cgroup.procs"),
        observer.to_string(),
    )
    .unwrap();
    assert_eq!(cgroup_of(observer), obhostd);

    sd.ok("systemctl restart obhostd");
    assert!(alive(observer), "the restart took the observer down");
    let scope = observer_scope(home.path());
    let journal = sd.ok("journalctl -u obhostd --no-pager -o cat");
    assert!(
        cgroup_of(observer).ends_with(&format!("/obhost.slice/{scope}")),
        "still in {}: {journal}",
        cgroup_of(observer)
    );
    assert!(journal.contains("moved a re-adopted observer"), "{journal}");
}

/// An agent command is born in a scope of its own too, named from its
/// working dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_command_lives_in_its_own_scope() {
    use pb::start_agent_service_request::Service;
    let dir = tempfile::tempdir().unwrap();
    let Some(sd) = Sandbox::boot("agent-scope", &[dir.path()]) else {
        return;
    };
    sd.start_obhostd();
    let port = free_port();
    let mut c = sd.client().await;
    c.start_agent_service(pb::StartAgentServiceRequest {
        meta: Some(pb::StepMeta {
            step_id: "agent-scope".into(),
            timeout: Some(secs(20.0)),
            ..Default::default()
        }),
        service: Some(Service::Command(http_server(dir.path(), port))),
        health: Some(pb::HealthCheck {
            check: Some(pb::health_check::Check::TcpPort(port as u32)),
        }),
    })
    .await
    .unwrap();
    let s = step_until_terminal(&mut c, "agent-scope").await;
    assert_eq!(s.state(), pb::StepState::Succeeded, "{s:#?}");
    let agent = host_pid(sd.pid, s.outputs["pid"].parse().unwrap()).expect("the agent");
    let scope = obhost::process::systemd::scope_name("obhost-agent", dir.path());
    assert!(
        cgroup_of(agent).ends_with(&format!("/obhost.slice/{scope}")),
        "{}",
        cgroup_of(agent)
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// A scope of the observer's name that holds processes obhostd did not start
/// is never taken over: the start fails, naming the scope and its processes,
/// and nothing is spawned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_held_by_other_processes_is_not_taken_over() {
    let home = Home::new();
    let Some(sd) = Sandbox::boot("occupied", &[home.path()]) else {
        return;
    };
    sd.start_obhostd();
    let scope = observer_scope(home.path());
    sd.ok(&format!(
        "systemd-run --scope --slice=obhost --unit='{scope}' sleep 300 </dev/null >/dev/null 2>&1 &
         until systemctl is-active --quiet -- '{scope}'; do sleep 0.02; done"
    ));
    let sleeper = sd.ok(&format!(
        "cat /sys/fs/cgroup/obhost.slice/'{scope}'/cgroup.procs"
    ));
    let mut c = sd.client().await;
    let s = start(&mut c, "occupied", home.spec()).await;
    let e = s.error.as_ref().expect("failed");
    assert_eq!(e.code, "SPAWN_FAILED", "{s:#?}");
    assert!(
        e.message.contains(&scope) && e.message.contains(sleeper.lines().next().unwrap()),
        "{e:#?}"
    );
    assert!(home.processes().is_empty(), "an observer was started");
    assert!(
        sd.sh(&format!("systemctl is-active --quiet -- '{scope}'"))
            .status
            .success(),
        "the other scope was stopped"
    );
}

/// A scope of the observer's name left behind with no process in it (failed,
/// so systemd keeps it: here one whose RuntimeMaxSec ran out) is cleared, and
/// the observer gets its scope; it is not a reason to fail the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_empty_scope_of_the_same_name_is_cleared() {
    let home = Home::new();
    let Some(sd) = Sandbox::boot("stale", &[home.path()]) else {
        return;
    };
    sd.start_obhostd();
    let scope = observer_scope(home.path());
    sd.ok(&format!(
        "systemd-run --scope --slice=obhost --unit='{scope}' -p RuntimeMaxSec=200ms sleep 300 </dev/null >/dev/null 2>&1 &
         until systemctl is-failed --quiet -- '{scope}'; do sleep 0.02; done"
    ));
    let mut c = sd.client().await;
    let s = start(&mut c, "after-stale", home.spec()).await;
    assert_eq!(s.state(), pb::StepState::Succeeded, "{s:#?}");
    let procs = home.processes();
    assert_eq!(procs.len(), 1, "{procs:?}");
    assert!(cgroup_of(procs[0]).ends_with(&format!("/obhost.slice/{scope}")));
}
