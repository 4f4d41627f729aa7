//! Fixtures for the integration tests: the real `obhostd` binary on a free
//! loopback port with a temporary state dir, clients for it, and waits that poll
//! the real API. Every test module includes this file; not all use all of it.
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

pub const OBHOSTD: &str = env!("CARGO_BIN_EXE_obhostd");
pub const OBHOSTCTL: &str = env!("CARGO_BIN_EXE_obhostctl");

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
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--state-dir",
        ])
        .arg(&state_dir)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let mut config = None;
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

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn channel(&self) -> Channel {
        tonic::transport::Endpoint::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .expect("connect")
    }

    pub async fn client(&self) -> HostAgentClient<Channel> {
        HostAgentClient::connect(self.url()).await.expect("connect")
    }

    pub async fn testing(&self) -> StepTestingClient<Channel> {
        StepTestingClient::connect(self.url())
            .await
            .expect("connect")
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
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
        let s = get_step(d, id).await;
        if pred(&s) {
            return s;
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
