//! Fixtures for the integration tests: the real `obhostd` binary on a Unix
//! socket in a temporary dir (its default kind of listener) with a temporary
//! state dir, clients for it, and waits that poll the real API. Every test module includes this file; not all use all of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use obhost::proto::testing::v1 as tpb;
use obhost::proto::testing::v1::step_testing_client::StepTestingClient;
use obhost::proto::v1 as pb;
use obhost::proto::v1::host_agent_client::HostAgentClient;
use tonic::transport::Channel;

pub mod flow;
pub mod tls;

pub const OBHOSTD: &str = env!("CARGO_BIN_EXE_obhostd");
pub const OBHOSTCTL: &str = env!("CARGO_BIN_EXE_obhostctl");

/// Shell: waits (at most 30 s) for a file `go` in the working dir, which the
/// test creates once obhostd has reached the point the process must outlive:
/// the order of events is then the test's, not the machine's speed.
pub const AWAIT_GO: &str =
    "n=0; while [ ! -e go ] && [ $n -lt 3000 ]; do sleep 0.01; n=$((n+1)); done";

/// A running obhostd. Killed (SIGKILL) when dropped so a failing test leaves
/// nothing behind.
pub struct Daemon {
    pub child: Child,
    pub addr: String,
    pub state_dir: PathBuf,
    pub config: Option<PathBuf>,
    pub logs: Arc<Mutex<Vec<String>>>,
    _tmp: Option<Arc<tempfile::TempDir>>,
}

#[derive(Default, Clone)]
pub struct Options {
    /// TOML appended to the generated config.
    pub config: String,
    /// Extra environment for the daemon.
    pub env: Vec<(String, String)>,
    /// Reuse this state dir (restart tests).
    pub state_dir: Option<PathBuf>,
    /// `--listen` arguments instead of the default (a socket in the temp dir);
    /// `Some(vec![])` passes none, so the config's `listen` decides.
    pub listen: Option<Vec<String>>,
}

impl Daemon {
    pub fn start() -> Daemon {
        Daemon::start_with(Options::default())
    }

    pub fn start_with(opts: Options) -> Daemon {
        let tmp = Arc::new(tempfile::tempdir().expect("tempdir"));
        let state_dir = opts
            .state_dir
            .clone()
            .unwrap_or_else(|| tmp.path().join("state"));
        Daemon::spawn(opts, state_dir, Some(tmp)).expect("obhostd did not start")
    }

    /// Starts obhostd and waits for its "listening" log line, or returns the
    /// stderr it printed before it exited.
    pub fn spawn(
        opts: Options,
        state_dir: PathBuf,
        tmp: Option<Arc<tempfile::TempDir>>,
    ) -> Result<Daemon, String> {
        let mut cmd = Command::new(OBHOSTD);
        let sock_dir = tmp
            .as_ref()
            .map(|t| t.path().to_path_buf())
            .or_else(|| state_dir.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| state_dir.clone());
        let listen = opts
            .listen
            .clone()
            .unwrap_or_else(|| vec![format!("unix:{}", sock_dir.join("obhostd.sock").display())]);
        for l in &listen {
            cmd.args(["--listen", l]);
        }
        cmd.args(["--log-format", "json", "--state-dir"])
            .arg(&state_dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut config = None;
        // Tests run as root with homes root owns, so their observers run as
        // root: the config must allow it (the default refuses). A test that
        // says run_as_root itself decides.
        let opts = if opts.config.contains("run_as_root") {
            opts
        } else {
            Options {
                config: format!("run_as_root = true\n{}", opts.config),
                ..opts
            }
        };
        if !opts.config.is_empty() {
            let dir = tmp
                .as_ref()
                .map(|t| t.path().to_path_buf())
                .unwrap_or_else(|| state_dir.clone());
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("obhostd.toml");
            std::fs::write(&path, &opts.config).unwrap();
            cmd.arg("--config").arg(&path);
            config = Some(path);
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().map_err(|e| format!("spawn obhostd: {e}"))?;
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = listening_addr(&line)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr);
                }
                sink.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(addr) = rx.recv_timeout(Duration::from_millis(50)) {
                return Ok(Daemon {
                    child,
                    addr,
                    state_dir,
                    config,
                    logs,
                    _tmp: tmp,
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                let text = logs.lock().unwrap().join("\n");
                return Err(format!(
                    "obhostd exited with {status} before listening:\n{text}"
                ));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err("obhostd did not listen within 30s".into());
            }
        }
    }

    /// An http:// URL for a TCP daemon; a placeholder for a Unix-socket one
    /// (use [`Daemon::connect_with`]).
    pub fn url(&self) -> String {
        if self.addr.starts_with("unix:") {
            "http://obhostd.sock".into()
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// Connects `endpoint`'s settings to this daemon, over its socket when it
    /// listens on one.
    pub async fn connect_with(
        &self,
        endpoint: tonic::transport::Endpoint,
    ) -> Result<Channel, tonic::transport::Error> {
        connect_addr(&self.addr, endpoint).await
    }

    pub async fn channel(&self) -> Channel {
        let endpoint = tonic::transport::Endpoint::from_shared(self.url()).unwrap();
        self.connect_with(endpoint).await.expect("connect")
    }

    pub async fn client(&self) -> HostAgentClient<Channel> {
        HostAgentClient::new(self.channel().await)
    }

    pub async fn testing(&self) -> StepTestingClient<Channel> {
        StepTestingClient::new(self.channel().await)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// The first log line containing `needle`, once obhostd has written it
    /// and the reader thread has it; panics with the log after `within`.
    pub fn wait_for_log_line(&self, needle: &str, within: Duration) -> String {
        let end = Instant::now() + within;
        loop {
            if let Some(line) = self
                .logs
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return line.clone();
            }
            if Instant::now() > end {
                let logs = self.log_text();
                panic!(
                    "no '{needle}' in the log within {within:?}:\n{}",
                    &logs[..logs.len().min(4000)]
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, like a crash or the OOM killer. The state dir (and config) stay
    /// for the next daemon.
    pub fn kill9(mut self) -> Stopped {
        let _ = self.child.kill();
        let _ = self.child.wait();
        Stopped {
            state_dir: self.state_dir.clone(),
            config: self
                .config
                .as_ref()
                .map(|p| std::fs::read_to_string(p).unwrap())
                .unwrap_or_default(),
            tmp: self._tmp.take(),
        }
    }

    /// kill -9, then a new daemon on the same state dir and config.
    pub fn restart_after_kill9(self) -> Daemon {
        self.kill9().start()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
    }

    /// Waits for the daemon to exit on its own.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What is left of a killed daemon: enough to start the next one.
pub struct Stopped {
    pub state_dir: PathBuf,
    pub config: String,
    tmp: Option<Arc<tempfile::TempDir>>,
}

impl Stopped {
    /// A daemon that exited by itself left this state dir (its tempdir is owned
    /// by the old `Daemon`, which the caller keeps alive).
    pub fn from_dir(state_dir: PathBuf) -> Stopped {
        Stopped {
            state_dir,
            config: String::new(),
            tmp: None,
        }
    }

    pub fn start(self) -> Daemon {
        let opts = Options {
            config: self.config,
            ..Options::default()
        };
        Daemon::spawn(opts, self.state_dir, self.tmp).expect("restart")
    }
}

/// Connects to `addr` as obhostd logs it: `unix:/path` through the socket,
/// anything else as the endpoint's own URL says.
pub async fn connect_addr(
    addr: &str,
    endpoint: tonic::transport::Endpoint,
) -> Result<Channel, tonic::transport::Error> {
    let Some(path) = addr.strip_prefix("unix:") else {
        return endpoint.connect().await;
    };
    let path = PathBuf::from(path);
    endpoint
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
}

fn listening_addr(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v.get("message")?.as_str()? != "listening" {
        return None;
    }
    Some(v.get("addr")?.as_str()?.to_string())
}

pub fn meta(id: &str) -> pb::StepMeta {
    pb::StepMeta {
        step_id: id.to_string(),
        ..Default::default()
    }
}

pub fn secs(s: f64) -> pbjson_types::Duration {
    Duration::from_secs_f64(s).into()
}

pub fn test_step(id: &str, run_for: f64) -> tpb::RunTestStepRequest {
    tpb::RunTestStepRequest {
        meta: Some(meta(id)),
        run_for: Some(secs(run_for)),
        ..Default::default()
    }
}

pub async fn run_test_step(d: &Daemon, req: tpb::RunTestStepRequest) -> pb::Step {
    d.testing()
        .await
        .run_test_step(req)
        .await
        .expect("RunTestStep")
        .into_inner()
        .step
        .expect("step")
}

pub async fn get_step(d: &Daemon, id: &str) -> pb::Step {
    d.client()
        .await
        .get_step(pb::GetStepRequest { step_id: id.into() })
        .await
        .expect("GetStep")
        .into_inner()
        .step
        .expect("step")
}

/// The first page of ListSteps with no filter.
pub async fn list_steps(d: &Daemon) -> Vec<pb::Step> {
    d.client()
        .await
        .list_steps(pb::ListStepsRequest::default())
        .await
        .expect("ListSteps")
        .into_inner()
        .steps
}

/// Runs `n` instant test steps `<prefix>-<i>`, each to its end, in order.
pub async fn run_steps_to_end(d: &Daemon, prefix: &str, n: usize) -> Vec<pb::Step> {
    let mut done = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("{prefix}-{i}");
        run_test_step(d, test_step(&id, 0.0)).await;
        done.push(wait_terminal(d, &id).await);
    }
    done
}

pub fn is_terminal(s: &pb::Step) -> bool {
    !matches!(s.state(), pb::StepState::Pending | pb::StepState::Running)
}

/// Polls GetStep until `pred` holds; panics with the last record after `within`.
pub async fn wait_for(
    d: &Daemon,
    id: &str,
    within: Duration,
    pred: impl Fn(&pb::Step) -> bool,
) -> pb::Step {
    let end = Instant::now() + within;
    loop {
        // A step a CLI under test has yet to create is waited for too.
        let s = match d
            .client()
            .await
            .get_step(pb::GetStepRequest { step_id: id.into() })
            .await
        {
            Ok(r) => r.into_inner().step,
            Err(e) if e.code() == tonic::Code::NotFound => None,
            Err(e) => panic!("GetStep {id}: {e}"),
        };
        if let Some(s) = &s
            && pred(s)
        {
            return s.clone();
        }
        if Instant::now() > end {
            panic!("step {id} did not reach the expected state within {within:?}; last: {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn wait_terminal(d: &Daemon, id: &str) -> pb::Step {
    wait_for(d, id, Duration::from_secs(30), is_terminal).await
}

/// Runs obhostctl and returns (exit code, stdout, stderr).
pub fn obhostctl(d: Option<&Daemon>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(OBHOSTCTL);
    if let Some(d) = d {
        cmd.args(["--addr", &d.addr]);
    }
    let out = cmd
        .args(args)
        .env_remove("OBHOST_ADDR")
        .output()
        .expect("run obhostctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Files under `dir` whose bytes contain `needle`, each with the text around
/// the first hit (to see what leaked it).
pub fn files_containing(dir: &Path, needle: &str) -> Vec<(PathBuf, String)> {
    walk(dir)
        .into_iter()
        .filter_map(|p| {
            let b = std::fs::read(&p).ok()?;
            let at = b
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())?;
            let around = &b[at.saturating_sub(300)..(at + needle.len() + 100).min(b.len())];
            Some((p, String::from_utf8_lossy(around).into_owned()))
        })
        .collect()
}

pub fn read_dir_bytes(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in walk(dir) {
        if let Ok(bytes) = std::fs::read(&entry) {
            all.extend(bytes);
        }
    }
    all
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

pub const FAKE_OBSERVER: &str = env!("CARGO_BIN_EXE_obhost-fake-observer");

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        // The stand-in uses port+1 as its rpc port; want both free.
        if port < 65000 && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// An observer home in a temp dir, running the stand-in observer.
pub struct Home {
    pub dir: tempfile::TempDir,
    pub mysql_port: u16,
}

impl Home {
    pub fn new() -> Home {
        Home {
            // Not tempfile's default ".tmpXXXX": seekdb mistakes any path with
            // ".tmp" in it for one of its temporary log blocks on restart.
            dir: tempfile::Builder::new()
                .prefix("obhost-home-")
                .tempdir()
                .unwrap(),
            mysql_port: free_port(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid_file(&self) -> PathBuf {
        self.path().join("run/observer.pid")
    }

    /// A spec for a first start of the stand-in, daemonizing like the real one.
    pub fn spec(&self) -> pb::ObserverSpec {
        pb::ObserverSpec {
            home_path: self.path().display().to_string(),
            binary: FAKE_OBSERVER.to_string(),
            mysql_port: self.mysql_port as u32,
            rpc_port: self.mysql_port as u32 + 1,
            zone: "zone1".into(),
            cluster_name: "obtest".into(),
            cluster_id: 1,
            ..Default::default()
        }
    }

    pub fn spec_with_env(&self, k: &str, v: &str) -> pb::ObserverSpec {
        let mut s = self.spec();
        s.env.insert(k.into(), v.into());
        s
    }

    /// Live processes whose working directory is this home.
    pub fn processes(&self) -> Vec<i32> {
        let home = std::fs::canonicalize(self.path()).unwrap();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|c| c == home))
            .filter(|pid| alive(*pid))
            .collect()
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        for pid in self.processes() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

pub async fn start_observer(
    d: &Daemon,
    id: &str,
    spec: pb::ObserverSpec,
) -> Result<pb::Step, tonic::Status> {
    d.client()
        .await
        .start_observer(pb::StartObserverRequest {
            meta: Some(meta(id)),
            observer: Some(spec),
        })
        .await
        .map(|r| r.into_inner().step.expect("step"))
}

/// StartObserver, then its end, which must be SUCCEEDED; returns the pid.
pub async fn start_ok(d: &Daemon, id: &str, spec: pb::ObserverSpec) -> (pb::Step, i32) {
    start_observer(d, id, spec)
        .await
        .expect("StartObserver accepted");
    let s = wait_for(d, id, Duration::from_secs(90), is_terminal).await;
    assert_eq!(s.state(), pb::StepState::Succeeded, "{s:#?}");
    let pid = s.outputs["pid"].parse().expect("pid output");
    (s, pid)
}

pub async fn stop_observer(d: &Daemon, id: &str, home: &Path, grace: f64, force: bool) -> pb::Step {
    d.client()
        .await
        .stop_observer(pb::StopObserverRequest {
            meta: Some(meta(id)),
            home_path: home.display().to_string(),
            grace: Some(secs(grace)),
            force,
        })
        .await
        .expect("StopObserver")
        .into_inner()
        .step
        .expect("step")
}

pub async fn get_observer(d: &Daemon, home: &Path) -> pb::ObserverStatus {
    d.client()
        .await
        .get_observer(pb::GetObserverRequest {
            home_path: home.display().to_string(),
        })
        .await
        .expect("GetObserver")
        .into_inner()
        .observer
        .expect("observer")
}

pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// Ends `child` with a real-time signal and returns how it ended if that
/// signal was not the first to reach it. Linux delivers pending standard
/// signals before real-time ones (signal(7)), and a SIGKILL takes effect as
/// it is sent, so any standard signal sent to `child` before this call shows
/// here: "was it signalled?" needs no time waited out.
pub fn ended_before_our_signal(mut child: Child) -> Option<ExitStatus> {
    use std::os::unix::process::ExitStatusExt;
    let ours = libc::SIGRTMIN();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    // SAFETY: kill(2) with a pid and a signal number; no memory is touched.
    // (nix's Signal has no real-time signals.)
    let sent = unsafe { libc::kill(pid.as_raw(), ours) };
    assert_eq!(sent, 0, "kill {pid} with SIGRTMIN");
    let status = child.wait().expect("wait for the child");
    (status.signal() != Some(ours)).then_some(status)
}

/// Polls until `pid` is gone (or a zombie); panics after `within`.
pub async fn wait_gone(pid: i32, within: Duration) {
    let end = Instant::now() + within;
    while alive(pid) {
        assert!(
            Instant::now() < end,
            "pid {pid} still runs after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Zombie children of `parent`.
pub fn zombies_of(parent: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                let rest: Vec<&str> = s
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .split_whitespace()
                    .collect();
                rest.first() == Some(&"Z") && rest.get(1) == Some(&parent.to_string().as_str())
            })
        })
        .collect()
}

/// The real OceanBase kernel (seekdb), fetched by scripts/fetch-seekdb.sh. In CI
/// its absence fails the test; elsewhere the test is skipped, loudly.
pub fn seekdb() -> Option<PathBuf> {
    let path = std::env::var_os("OBHOST_SEEKDB")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/seekdb/pylibseekdb/seekdb")
        });
    if path.exists() {
        return Some(path);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "seekdb is missing at {}: .ci/run must run scripts/fetch-seekdb.sh",
            path.display()
        );
    }
    eprintln!(
        "SKIPPED: seekdb not found at {}; run scripts/fetch-seekdb.sh",
        path.display()
    );
    None
}

/// Turns a Home into one whose bin/observer is the wrapper that runs seekdb.
pub fn install_seekdb(home: &Home, seekdb: &Path) {
    let bin = home.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/observer-seekdb.sh"),
        bin.join("observer"),
    )
    .unwrap();
    std::os::unix::fs::symlink(seekdb, bin.join("seekdb")).unwrap();
}

/// A spec that runs the real kernel through the wrapper (daemonizing mode).
pub fn seekdb_spec(home: &Home) -> pb::ObserverSpec {
    pb::ObserverSpec {
        home_path: home.path().display().to_string(),
        mysql_port: home.mysql_port as u32,
        rpc_port: home.mysql_port as u32 + 1,
        pid_file: home.path().join("run/seekdb.pid").display().to_string(),
        zone: "zone1".into(),
        cluster_name: "obhost".into(),
        cluster_id: 1,
        ..Default::default()
    }
}

/// Reads the MySQL server greeting on `port` (protocol version 10 + version string).
pub fn mysql_greeting(port: u16) -> Option<String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).ok()?;
    if n < 6 || buf[4] != 10 {
        return None;
    }
    let end = buf[5..n].iter().position(|b| *b == 0)? + 5;
    Some(String::from_utf8_lossy(&buf[5..end]).into_owned())
}

/// `n` finished records of about `pad` bytes each (in outputs, within the
/// caps), written straight into a fresh store at `dir`, in transactions of
/// 5,000; every 500th is FAILED, so a test can retry it. Ids are
/// `seed-00001`...: a long history without running a step.
pub fn seed_store(dir: &Path, n: usize, pad: usize) {
    use obhost::steps::{StepKind, StepRecord, StepSpec, StepState};
    let now = std::time::SystemTime::now();
    let value = "v".repeat(1000);
    let (store, _) = obhost::steps::store::Store::open(dir).expect("open store");
    for chunk in (1..=n).collect::<Vec<_>>().chunks(5000) {
        let records: Vec<StepRecord> = chunk
            .iter()
            .map(|&i| StepRecord {
                spec: StepSpec {
                    id: format!("seed-{i:05}"),
                    dag_id: "seeded".into(),
                    kind: StepKind::Test,
                    name: "Test step".into(),
                    timeout: Duration::from_secs(60),
                    params: serde_json::json!({
                        "run_for": "0s", "fail_code": "", "resumable": false, "progress_updates": 0
                    }),
                },
                state: if i % 500 == 0 {
                    StepState::Failed
                } else {
                    StepState::Succeeded
                },
                attempt: 1,
                revision: i as u64,
                created_at: now,
                started_at: Some(now),
                finished_at: Some(now),
                deadline: now + Duration::from_secs(60),
                message: "seeded".into(),
                error: None,
                outputs: (0..pad / 1000)
                    .map(|k| (format!("pad{k}"), value.clone()))
                    .collect(),
                checks: Vec::new(),
            })
            .collect();
        store.put_all(&records).expect("seed");
    }
}

/// Runs `f` (which adds or removes users) while no other test, in this process
/// or another, does: two `useradd`s at once were seen to both write
/// /etc/passwd, the second replacing the first's user with another uid, so a
/// home chowned to the first uid no longer belonged to the user by name.
pub fn user_db_locked<T>(f: impl FnOnce() -> T) -> T {
    static IN_PROCESS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = IN_PROCESS.lock().unwrap_or_else(|e| e.into_inner());
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/tmp/obhost-tests-useradd.lock")
        .expect("open the tests' useradd lock");
    lock.lock().expect("lock the tests' useradd lock");
    f()
}

/// A plain system user with no privileges (no home, no shell), made once per
/// machine with `useradd`: the unprivileged user an attack is mounted as.
pub fn system_user(name: &str) -> (u32, u32) {
    user_db_locked(|| {
        if nix::unistd::User::from_name(name).unwrap().is_none() {
            let ok = std::process::Command::new("useradd")
                .args([
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                ])
                .arg(name)
                .status()
                .expect("useradd (the tests run as root)");
            assert!(ok.success(), "useradd {name} failed");
        }
        let u = nix::unistd::User::from_name(name).unwrap().unwrap();
        (u.uid.as_raw(), u.gid.as_raw())
    })
}

/// Runs a shell script as `name` (made by [`system_user`]) with no groups; it
/// must succeed.
pub fn run_as(name: &str, script: &str) {
    let (uid, gid) = system_user(name);
    let out = std::process::Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "as {name}: {script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A stand-in OCP agent: Python's http.server on 127.0.0.1:`port`, in the
/// foreground, its pid file in `dir`.
pub fn http_server(dir: &std::path::Path, port: u16) -> pb::ServiceCommand {
    pb::ServiceCommand {
        argv: vec![
            "/usr/bin/python3".into(),
            "-m".into(),
            "http.server".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
        ],
        cwd: dir.display().to_string(),
        pid_file: dir.join("agent.pid").display().to_string(),
        foreground: true,
        ..Default::default()
    }
}
