//! obhost's benchmark: every figure of issue 8, each beside a baseline measured
//! in the same run on the same machine, as a ratio, with its target.
//!
//!     cargo bench --bench host            # the full run (a few minutes)
//!     cargo bench --bench host -- --quick # smaller sizes, for a smoke run
//!     cargo bench --bench host -- --only history,creation  # some groups:
//!         getstep, watch, readiness, flow, history, creation, report
//!
//! It drives the real release `obhostd` (built with the test-only step kind,
//! as the integration tests are: benches share their dev-dependencies) over the
//! transport a remote orchestrator uses (TCP on loopback with a bearer token),
//! and the stand-in observer for the host flow. Machines here are noisy and have
//! two cores: compare ratios, not absolute numbers, and rerun before believing a
//! change of less than ~20 %.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::pin::Pin;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use obhost::proto::testing::v1 as tpb;
use obhost::proto::v1 as pb;
use obhost::proto::v1::host_agent_client::HostAgentClient;
use obhost::proto::v1::host_agent_server::{HostAgent, HostAgentServer};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// Sizes of one run: `--quick` shrinks them so that the run takes seconds.
struct Sizes {
    calls: Duration,
    watch_steps: usize,
    readiness_delays: Vec<u64>,
    flows: usize,
    /// Report latency: obhostd instances, and steps each.
    report_agents: usize,
    report_steps: usize,
    stored: usize,
    record_bytes: usize,
    create_for: Duration,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                calls: Duration::from_millis(300),
                watch_steps: 20,
                readiness_delays: vec![1300, 1400],
                flows: 1,
                report_agents: 5,
                report_steps: 5,
                stored: 2_000,
                record_bytes: 6_000,
                create_for: Duration::from_millis(500),
            }
        } else {
            Sizes {
                calls: Duration::from_secs(2),
                watch_steps: 200,
                readiness_delays: (0..10).map(|i| 1300 + i * 50).collect(),
                flows: 5,
                report_agents: 100,
                report_steps: 40,
                stored: 100_000,
                record_bytes: 6_000,
                create_for: Duration::from_secs(3),
            }
        }
    }
}

/// One line of the report.
struct Row {
    figure: String,
    value: String,
    baseline: String,
    ratio: Option<f64>,
    target: String,
    pass: bool,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // `--only list,creation`: run just the groups whose name contains a word.
    let only: Vec<String> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let wanted = |group: &str| only.is_empty() || only.iter().any(|w| group.contains(w.as_str()));
    let sizes = Sizes::new(quick);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut rows = Vec::new();
    rt.block_on(async {
        if wanted("getstep") {
            rows.extend(rpc_latency(&sizes).await);
        }
        if wanted("watch") {
            rows.extend(watch_latency(&sizes).await);
        }
        if wanted("readiness") {
            rows.extend(readiness(&sizes).await);
        }
        if wanted("flow") {
            rows.extend(host_flow(&sizes).await);
        }
        if wanted("history") {
            rows.extend(stored_history(&sizes).await);
        }
        if wanted("creation") {
            rows.extend(step_creation(&sizes).await);
        }
        if wanted("report") {
            rows.extend(report_latency(1, sizes.report_steps * 5).await);
            rows.extend(report_latency(sizes.report_agents, sizes.report_steps).await);
            rows.extend(report_burst().await);
        }
    });
    print(&rows, quick);
}

fn print(rows: &[Row], quick: bool) {
    println!(
        "\nobhost benchmark{} ({} cores)\n",
        if quick { " --quick" } else { "" },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "| {:<52} | {:>16} | {:>22} | {:>8} | {:<18} | {:<4} |",
        "figure", "value", "baseline", "ratio", "target", ""
    );
    println!(
        "|{:-<54}|{:-<18}|{:-<24}|{:-<10}|{:-<20}|{:-<6}|",
        "", "", "", "", "", ""
    );
    for r in rows {
        println!(
            "| {:<52} | {:>16} | {:>22} | {:>8} | {:<18} | {:<4} |",
            r.figure,
            r.value,
            r.baseline,
            r.ratio
                .map(|x| format!("{x:.3}"))
                .unwrap_or_else(|| "-".into()),
            r.target,
            if r.pass { "PASS" } else { "FAIL" }
        );
    }
    let failed = rows.iter().filter(|r| !r.pass).count();
    println!("\n{} figures, {} below target", rows.len(), failed);
}

// ---- fixtures -------------------------------------------------------------

const TOKEN: &str = "bench-token-0123456789abcdef";

/// obhostd on loopback TCP with a token, as an orchestrator reaches it.
fn tcp_daemon(extra: &str, state_dir: Option<std::path::PathBuf>) -> (Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).expect("token");
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let d = Daemon::start_with(Options {
        config: format!(
            "listen = [\"127.0.0.1:0\"]\n{extra}\n[auth]\ntoken_file = \"{}\"\n",
            token.display()
        ),
        listen: Some(vec![]),
        state_dir,
        ..Options::default()
    });
    (d, dir)
}

type Authed = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

#[derive(Clone)]
struct Bearer;

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: Request<()>) -> Result<Request<()>, Status> {
        let v: MetadataValue<_> = format!("Bearer {TOKEN}").parse().expect("header");
        r.metadata_mut().insert("authorization", v);
        Ok(r)
    }
}

async fn tcp_channel(addr: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

async fn client(addr: &str) -> HostAgentClient<Authed> {
    HostAgentClient::with_interceptor(tcp_channel(addr).await, Bearer)
}

async fn testing(
    addr: &str,
) -> obhost::proto::testing::v1::step_testing_client::StepTestingClient<Authed> {
    obhost::proto::testing::v1::step_testing_client::StepTestingClient::with_interceptor(
        tcp_channel(addr).await,
        Bearer,
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

async fn terminal(c: &mut HostAgentClient<Authed>, id: &str) -> pb::Step {
    loop {
        let s = c
            .get_step(pb::GetStepRequest { step_id: id.into() })
            .await
            .expect("GetStep")
            .into_inner()
            .step
            .expect("step");
        if is_terminal(&s) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn since(t: Option<&pbjson_types::Timestamp>, later: SystemTime) -> Duration {
    let Some(t) = t else {
        return Duration::ZERO;
    };
    let at = SystemTime::UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos as u32);
    later.duration_since(at).unwrap_or_default()
}

// ---- a. unary RPCs: GetStep of a real record vs bare tonic ----------------

/// The baseline: tonic serving the same Step from memory, nothing else.
struct Echo(pb::Step);

type Stream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::WatchStepsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl HostAgent for Echo {
    async fn get_step(
        &self,
        _r: Request<pb::GetStepRequest>,
    ) -> Result<Response<pb::GetStepResponse>, Status> {
        Ok(Response::new(pb::GetStepResponse {
            step: Some(self.0.clone()),
        }))
    }
    async fn prepare(
        &self,
        _r: Request<pb::PrepareRequest>,
    ) -> Result<Response<pb::PrepareResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }
    async fn start_observer(
        &self,
        _r: Request<pb::StartObserverRequest>,
    ) -> Result<Response<pb::StartObserverResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }
    async fn wait_observer_active(
        &self,
        _r: Request<pb::WaitObserverActiveRequest>,
    ) -> Result<Response<pb::WaitObserverActiveResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }
    async fn start_agent_service(
        &self,
        _r: Request<pb::StartAgentServiceRequest>,
    ) -> Result<Response<pb::StartAgentServiceResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }
    async fn stop_observer(
        &self,
        _r: Request<pb::StopObserverRequest>,
    ) -> Result<Response<pb::StopObserverResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }
    async fn list_steps(
        &self,
        _r: Request<pb::ListStepsRequest>,
    ) -> Result<Response<pb::ListStepsResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }
    type WatchStepsStream = Stream;
    async fn watch_steps(
        &self,
        _r: Request<pb::WatchStepsRequest>,
    ) -> Result<Response<Stream>, Status> {
        Err(Status::unimplemented("echo"))
    }
    async fn cancel_step(
        &self,
        _r: Request<pb::CancelStepRequest>,
    ) -> Result<Response<pb::CancelStepResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }
    async fn retry_step(
        &self,
        _r: Request<pb::RetryStepRequest>,
    ) -> Result<Response<pb::RetryStepResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }
    async fn get_observer(
        &self,
        _r: Request<pb::GetObserverRequest>,
    ) -> Result<Response<pb::GetObserverResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }
    async fn get_host_info(
        &self,
        _r: Request<pb::GetHostInfoRequest>,
    ) -> Result<Response<pb::GetHostInfoResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }
    type TailObserverLogStream = std::pin::Pin<
        Box<
            dyn tokio_stream::Stream<Item = Result<pb::TailObserverLogResponse, Status>>
                + Send
                + 'static,
        >,
    >;
    async fn tail_observer_log(
        &self,
        _r: Request<pb::TailObserverLogRequest>,
    ) -> Result<Response<Self::TailObserverLogStream>, Status> {
        Err(Status::unimplemented("echo"))
    }
}

async fn echo_server(step: pb::Step) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    // TCP_NODELAY, as a well-configured server has it: the baseline must not
    // carry the very 44 ms stall the daemon is measured for.
    let incoming =
        tokio_stream::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(l), |s| {
            if let Ok(s) = &s {
                let _ = s.set_nodelay(true);
            }
            s
        });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(HostAgentServer::new(Echo(step)))
            .serve_with_incoming(incoming),
    );
    addr
}

/// GetStep on `conns` connections for `dur`: (calls/s, p50 latency).
async fn get_steps(addr: &str, id: &str, conns: usize, dur: Duration) -> (f64, Duration) {
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let mut c = client(addr).await;
        let id = id.to_string();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let end = Instant::now() + dur;
            while Instant::now() < end {
                let t = Instant::now();
                c.get_step(pb::GetStepRequest {
                    step_id: id.clone(),
                })
                .await
                .expect("GetStep");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    all.sort();
    (all.len() as f64 / dur.as_secs_f64(), percentile(&all, 0.5))
}

async fn rpc_latency(sizes: &Sizes) -> Vec<Row> {
    let (d, _dir) = tcp_daemon("", None);
    let mut c = client(&d.addr).await;
    let home = Home::new();
    c.prepare(pb::PrepareRequest {
        meta: Some(meta("rpc-prepare")),
        observer: Some(home.spec()),
        create_dirs: true,
        ..Default::default()
    })
    .await
    .expect("Prepare");
    let step = terminal(&mut c, "rpc-prepare").await;
    let size = prost::Message::encoded_len(&step);
    let echo = echo_server(step).await;
    let mut rows = Vec::new();
    for conns in [1, 16] {
        let (echo_rate, echo_p50) = get_steps(&echo, "rpc-prepare", conns, sizes.calls).await;
        let (rate, p50) = get_steps(&d.addr, "rpc-prepare", conns, sizes.calls).await;
        let ratio = rate / echo_rate;
        rows.push(Row {
            figure: format!("GetStep {size} B record, {conns} conn: calls/s (p50)"),
            value: format!("{rate:.0} ({})", ms(p50)),
            baseline: format!("tonic {echo_rate:.0} ({})", ms(echo_p50)),
            ratio: Some(ratio),
            target: ">= 0.5".into(),
            pass: ratio >= 0.5,
        });
    }
    rows
}

// ---- b. WatchSteps delivery to a lone watcher ----------------------------

async fn watch_latency(sizes: &Sizes) -> Vec<Row> {
    let (d, _dir) = tcp_daemon("[limits]\nmax_active_steps = 100000\n", None);
    let mut watch = client(&d.addr)
        .await
        .watch_steps(pb::WatchStepsRequest {
            dag_id: "watched".into(),
            ..Default::default()
        })
        .await
        .expect("WatchSteps")
        .into_inner();
    let mut t = testing(&d.addr).await;
    let mut lat = Vec::new();
    for i in 0..sizes.watch_steps {
        let mut req = tpb::RunTestStepRequest {
            meta: Some(pb::StepMeta {
                step_id: format!("w-{i}"),
                dag_id: "watched".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        req.run_for = Some(secs(0.0));
        t.run_test_step(req).await.expect("RunTestStep");
        loop {
            let s = watch
                .message()
                .await
                .expect("watch")
                .expect("open")
                .step
                .expect("step");
            if s.id == format!("w-{i}") && is_terminal(&s) {
                lat.push(since(s.finished_at.as_ref(), SystemTime::now()));
                break;
            }
        }
    }
    lat.sort();
    // Baseline: a bare tonic unary round trip with the same client stack.
    let echo = echo_server(pb::Step::default()).await;
    let (_, echo_p50) = get_steps(&echo, "x", 1, Duration::from_millis(300)).await;
    let p50 = percentile(&lat, 0.5);
    vec![Row {
        figure: "WatchSteps: finished -> watcher has it, p50 (p99)".into(),
        value: format!("{} ({})", ms(p50), ms(percentile(&lat, 0.99))),
        baseline: format!("tonic rtt {}", ms(echo_p50)),
        ratio: Some(p50.as_secs_f64() / echo_p50.as_secs_f64().max(1e-9)),
        target: "<= 5 ms".into(),
        pass: p50 <= Duration::from_millis(5),
    }]
}

// ---- c. readiness: port answers -> WaitObserverActive SUCCEEDED -----------

/// When the port first accepts, polled every 200 µs from the bench itself.
async fn port_up(port: u16, within: Duration) -> Option<SystemTime> {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Some(SystemTime::now());
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    None
}

async fn readiness(sizes: &Sizes) -> Vec<Row> {
    let (d, _dir) = tcp_daemon("", None);
    let mut c = client(&d.addr).await;
    let mut lags = Vec::new();
    for (i, delay) in sizes.readiness_delays.iter().enumerate() {
        let home = Home::new();
        let mut spec = home.spec_with_env("FAKE_OBSERVER_LISTEN_DELAY_MS", &delay.to_string());
        spec.foreground = true;
        let start = format!("ready-start-{i}");
        c.start_observer(pb::StartObserverRequest {
            meta: Some(meta(&start)),
            observer: Some(spec),
        })
        .await
        .expect("StartObserver");
        let up = tokio::spawn(port_up(home.mysql_port, Duration::from_secs(30)));
        // As the orchestrator does: the wait follows the start's success. The
        // listen delays are longer than the default start_settle (1 s), so the
        // wait begins while the port is still down.
        let wait = format!("ready-wait-{i}");
        let started = terminal(&mut c, &start).await;
        assert_eq!(started.state(), pb::StepState::Succeeded, "{started:?}");
        c.wait_observer_active(pb::WaitObserverActiveRequest {
            meta: Some(meta(&wait)),
            home_path: home.path().display().to_string(),
            mysql_port: home.mysql_port as u32,
            ..Default::default()
        })
        .await
        .expect("WaitObserverActive");
        let s = terminal(&mut c, &wait).await;
        let Some(up_at) = up.await.expect("task") else {
            continue;
        };
        if s.state() != pb::StepState::Succeeded {
            eprintln!("readiness: {wait} ended {:?}: {}", s.state(), s.message);
        }
        if s.state() == pb::StepState::Succeeded {
            let done = s
                .finished_at
                .as_ref()
                .map(|t| SystemTime::UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos as u32));
            if let Some(done) = done {
                lags.push(done.duration_since(up_at).unwrap_or_default());
            }
        }
    }
    lags.sort();
    let p50 = percentile(&lags, 0.5);
    vec![Row {
        figure: format!(
            "readiness: port answers -> SUCCEEDED, p50 of {}",
            lags.len()
        ),
        value: ms(p50),
        baseline: "-".into(),
        ratio: None,
        target: "<= 10 ms".into(),
        pass: !lags.is_empty() && p50 <= Duration::from_millis(10),
    }]
}

// ---- d. the host flow: Prepare -> StartAgentService SUCCEEDED -------------

/// The stand-in's own time from exec to answering on its port.
async fn standin_ready() -> Duration {
    let home = Home::new();
    let t = Instant::now();
    let mut child = std::process::Command::new(FAKE_OBSERVER)
        .current_dir(home.path())
        .args(["-N", "-p", &home.mysql_port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("stand-in");
    port_up(home.mysql_port, Duration::from_secs(10)).await;
    let took = t.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    took
}

async fn host_flow(sizes: &Sizes) -> Vec<Row> {
    let (d, _dir) = tcp_daemon("", None);
    let mut c = client(&d.addr).await;
    let mut overheads = Vec::new();
    let mut baselines = Vec::new();
    for i in 0..sizes.flows {
        baselines.push(standin_ready().await);
        let home = Home::new();
        let agent_port = free_port();
        let t = Instant::now();
        let id = |s: &str| format!("flow{i}-{s}");
        c.prepare(pb::PrepareRequest {
            meta: Some(meta(&id("prepare"))),
            observer: Some(home.spec()),
            create_dirs: true,
            ..Default::default()
        })
        .await
        .expect("Prepare");
        let p = terminal(&mut c, &id("prepare")).await;
        assert_eq!(p.state(), pb::StepState::Succeeded, "{p:?}");
        c.start_observer(pb::StartObserverRequest {
            meta: Some(meta(&id("start"))),
            observer: Some(home.spec()),
        })
        .await
        .expect("StartObserver");
        let s = terminal(&mut c, &id("start")).await;
        assert_eq!(s.state(), pb::StepState::Succeeded, "{s:?}");
        c.wait_observer_active(pb::WaitObserverActiveRequest {
            meta: Some(meta(&id("wait"))),
            home_path: home.path().display().to_string(),
            mysql_port: home.mysql_port as u32,
            ..Default::default()
        })
        .await
        .expect("Wait");
        let w = terminal(&mut c, &id("wait")).await;
        assert_eq!(w.state(), pb::StepState::Succeeded, "{w:?}");
        let agent_dir = home.path().join("agent");
        std::fs::create_dir_all(&agent_dir).expect("agent dir");
        c.start_agent_service(pb::StartAgentServiceRequest {
            meta: Some(meta(&id("agent"))),
            service: Some(pb::start_agent_service_request::Service::Command(
                pb::ServiceCommand {
                    argv: vec![
                        FAKE_OBSERVER.into(),
                        "-N".into(),
                        "-p".into(),
                        agent_port.to_string(),
                    ],
                    cwd: agent_dir.display().to_string(),
                    pid_file: agent_dir.join("agent.pid").display().to_string(),
                    foreground: true,
                    ..Default::default()
                },
            )),
            health: Some(pb::HealthCheck {
                check: Some(pb::health_check::Check::TcpPort(agent_port as u32)),
            }),
        })
        .await
        .expect("StartAgentService");
        let a = terminal(&mut c, &id("agent")).await;
        assert_eq!(a.state(), pb::StepState::Succeeded, "{a:?}");
        let total = t.elapsed();
        // The agent runs in home/agent, where the home's own cleanup (of
        // processes in the home) does not look: end it here.
        if let Some(pid) = a.outputs.get("pid").and_then(|p| p.parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // The stand-in is started twice (observer and agent), its time counted once
        // each: what is left is obhostd's.
        let own = baselines[i] * 2;
        overheads.push(total.saturating_sub(own));
    }
    overheads.sort();
    baselines.sort();
    let p50 = percentile(&overheads, 0.5);
    let base = percentile(&baselines, 0.5);
    vec![Row {
        figure: format!("host flow overhead (4 steps), p50 of {}", overheads.len()),
        value: ms(p50),
        baseline: format!("stand-in ready {}", ms(base)),
        ratio: Some(p50.as_secs_f64() / base.as_secs_f64().max(1e-9)),
        target: "<= 20 ms".into(),
        pass: p50 <= Duration::from_millis(20),
    }]
}

// ---- e. a long history: memory, restart, listing ---------------------------

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Spawn to first answered GetStep.
async fn to_serving(
    state: std::path::PathBuf,
    extra: &str,
) -> (Duration, Daemon, tempfile::TempDir) {
    let t = Instant::now();
    let (d, dir) = tcp_daemon(extra, Some(state));
    let mut c = client(&d.addr).await;
    loop {
        match c
            .get_step(pb::GetStepRequest {
                step_id: "seed-00001".into(),
            })
            .await
        {
            Ok(_) => break,
            Err(e) if e.code() == tonic::Code::NotFound => break,
            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
    (t.elapsed(), d, dir)
}

async fn stored_history(sizes: &Sizes) -> Vec<Row> {
    let retention = format!("[retention]\nmax_steps = {}\n", sizes.stored * 2);
    let empty = tempfile::tempdir().expect("tempdir");
    let (empty_start, empty_d, _e) = to_serving(empty.path().join("state"), &retention).await;
    let empty_rss = rss_kib(empty_d.pid());
    drop(empty_d);

    let full = tempfile::tempdir().expect("tempdir");
    let state = full.path().join("state");
    seed_store(&state, sizes.stored, sizes.record_bytes);
    let (full_start, d, _f) = to_serving(state, &retention).await;

    // The median of three walks: one walk is a couple of seconds on a shared
    // machine, and a neighbour's burst can double it.
    let mut c = client(&d.addr).await;
    let mut walks = Vec::new();
    let mut listed = 0;
    for _ in 0..3 {
        let t = Instant::now();
        listed = list_all(&mut c).await;
        walks.push(t.elapsed());
    }
    walks.sort();
    let list = walks[1];
    // After every record went through it once and the daemon is idle again
    // (it hands a walk's freed memory back a second after the walk): what a
    // history costs in use.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = rss_kib(d.pid());
    let n = sizes.stored;
    vec![
        Row {
            figure: format!(
                "RSS, {n} records of {} B, idle after listing",
                sizes.record_bytes
            ),
            value: format!("{:.1} MiB", rss as f64 / 1024.0),
            baseline: format!("empty {:.1} MiB", empty_rss as f64 / 1024.0),
            ratio: Some(rss as f64 / empty_rss.max(1) as f64),
            target: "<= 32 MiB".into(),
            pass: rss <= 32 * 1024,
        },
        Row {
            figure: format!("restart to SERVING with {n} records"),
            value: ms(full_start),
            baseline: format!("empty {}", ms(empty_start)),
            ratio: Some(full_start.as_secs_f64() / empty_start.as_secs_f64().max(1e-9)),
            target: "<= 200 ms".into(),
            pass: full_start <= Duration::from_millis(200),
        },
        Row {
            figure: format!("ListSteps of all {listed} records, median of 3"),
            value: ms(list),
            baseline: "-".into(),
            ratio: None,
            target: "<= 2 s".into(),
            pass: listed >= n && list <= Duration::from_secs(2),
        },
    ]
}

/// Every record, a page of up to 1000 at a time; how many there were.
async fn list_all(c: &mut HostAgentClient<Authed>) -> usize {
    let mut token = String::new();
    let mut listed = 0;
    loop {
        let r = c
            .list_steps(pb::ListStepsRequest {
                page_size: 1000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("ListSteps")
            .into_inner();
        listed += r.steps.len();
        if r.next_page_token.is_empty() {
            return listed;
        }
        token = r.next_page_token;
    }
}

// ---- step creation vs the disk's own fsync rate ----------------------------

/// The disk's bare rate: write a small record and fdatasync it, in a loop.
fn fsync_rate(dir: &Path, dur: Duration) -> f64 {
    use std::io::Write;
    use std::os::unix::io::AsRawFd;
    let mut f = std::fs::File::create(dir.join("fsync-probe")).expect("probe file");
    let mut n = 0u64;
    let end = Instant::now() + dur;
    while Instant::now() < end {
        f.write_all(&[0u8; 512]).expect("write");
        // SAFETY: a valid open fd.
        unsafe { libc::fdatasync(f.as_raw_fd()) };
        n += 1;
    }
    n as f64 / dur.as_secs_f64()
}

async fn create_steps(addr: &str, clients: usize, dur: Duration, tag: &str) -> f64 {
    let mut tasks = Vec::new();
    for k in 0..clients {
        let mut t = testing(addr).await;
        let tag = tag.to_string();
        tasks.push(tokio::spawn(async move {
            let end = Instant::now() + dur;
            let mut n = 0u64;
            while Instant::now() < end {
                let mut req = tpb::RunTestStepRequest {
                    meta: Some(meta(&format!("{tag}-{k}-{n}"))),
                    ..Default::default()
                };
                req.run_for = Some(secs(0.0));
                t.run_test_step(req).await.expect("RunTestStep");
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("task");
    }
    total as f64 / dur.as_secs_f64()
}

/// One client repeating one RunTestStep: idempotent, so obhostd answers with
/// the stored record and writes nothing. The ceiling of creation by one client
/// on this transport, whatever a creation's disk work costs.
async fn repeat_step(addr: &str, dur: Duration) -> f64 {
    let mut t = testing(addr).await;
    let req = || {
        let mut r = tpb::RunTestStepRequest {
            meta: Some(meta("repeated")),
            ..Default::default()
        };
        r.run_for = Some(secs(0.0));
        r
    };
    t.run_test_step(req()).await.expect("RunTestStep");
    let end = Instant::now() + dur;
    let mut n = 0u64;
    while Instant::now() < end {
        t.run_test_step(req()).await.expect("RunTestStep");
        n += 1;
    }
    n as f64 / dur.as_secs_f64()
}

/// Rate of doing two things in series, from each one's rate.
fn bound(a: f64, b: f64) -> f64 {
    1.0 / (1.0 / a + 1.0 / b)
}

async fn step_creation(sizes: &Sizes) -> Vec<Row> {
    let (d, _dir) = tcp_daemon(
        "[limits]\nmax_active_steps = 1000000\n[retention]\nmax_steps = 1000000\n",
        None,
    );
    let disk = fsync_rate(&d.state_dir, sizes.create_for);
    let one = create_steps(&d.addr, 1, sizes.create_for, "c1").await;
    let many = create_steps(&d.addr, 64, sizes.create_for, "c64").await;
    let repeat = repeat_step(&d.addr, sizes.create_for).await;
    vec![
        Row {
            figure: "1 client: the same RPC repeated (no disk)".into(),
            value: format!("{repeat:.0}"),
            baseline: format!("write+fdatasync {disk:.0}/s"),
            ratio: Some(repeat / disk),
            target: "(information)".into(),
            pass: true,
        },
        // A durable creation is at least that round trip plus one fsync, in
        // series for one client: the most any design can reach here.
        Row {
            figure: "1 client: bound = RPC + one fsync, steps/s".into(),
            value: format!("{:.0}", bound(repeat, disk)),
            baseline: format!("write+fdatasync {disk:.0}/s"),
            ratio: Some(bound(repeat, disk) / disk),
            target: "(information)".into(),
            pass: true,
        },
        // One client cannot pass the bound above (a round trip and an
        // fsync in series): information, set beside its bound.
        Row {
            figure: "step creation, 1 client: steps/s".into(),
            value: format!("{one:.0}"),
            baseline: format!("write+fdatasync {disk:.0}/s"),
            ratio: Some(one / disk),
            target: format!("(information; bound {:.2})", bound(repeat, disk) / disk),
            pass: true,
        },
        Row {
            figure: "step creation, 64 clients: steps/s".into(),
            value: format!("{many:.0}"),
            baseline: format!("write+fdatasync {disk:.0}/s"),
            ratio: Some(many / disk),
            target: ">= 5000/s".into(),
            pass: many >= 5000.0,
        },
    ]
}

// ---- g. reporting: finished -> the orchestrator's sink has it --------------

/// (agent, step id, revision, when it arrived).
type Arrival = (String, String, u64, SystemTime);

/// A StepReporter that notes when each change arrived.
#[derive(Default, Clone)]
struct Sink {
    got: std::sync::Arc<std::sync::Mutex<Vec<Arrival>>>,
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Sink {
    /// Serves StepReporter on a Unix socket (plain text only where no other
    /// user can listen) for the rest of the run.
    fn serve(socket: &std::path::Path) -> Sink {
        let listener = tokio::net::UnixListener::bind(socket).expect("bind");
        let sink = Sink::default();
        let server = sink.clone();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(
                    obhost::proto::v1::step_reporter_server::StepReporterServer::new(server),
                )
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
                .await
        });
        sink
    }
}

#[tonic::async_trait]
impl obhost::proto::v1::step_reporter_server::StepReporter for Sink {
    async fn report_steps(
        &self,
        request: Request<pb::ReportStepsRequest>,
    ) -> Result<Response<pb::ReportStepsResponse>, Status> {
        let now = SystemTime::now();
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let req = request.into_inner();
        let mut got = self.got.lock().expect("sink");
        for s in req.steps {
            got.push((req.agent_id.clone(), s.id, s.revision, now));
        }
        Ok(Response::new(pb::ReportStepsResponse {}))
    }
}

/// `agents` obhostd instances report to one sink while a watcher on each
/// follows the same steps: for every step's end, finished_at -> the sink has
/// it, against finished_at -> the watcher has it, in the same run.
async fn report_latency(agents: usize, steps: usize) -> Vec<Row> {
    // The orchestrator's end on a Unix socket (plain text only where no other
    // user can listen).
    let sock_dir = tempfile::tempdir().expect("temp dir");
    let socket = sock_dir.path().join("reporter.sock");
    let sink = Sink::serve(&socket);
    let mut daemons = Vec::new();
    for i in 0..agents {
        daemons.push(tcp_daemon(
            &format!(
                "[report]\nendpoint = \"unix:{}\"\nagent_id = \"a{i}\"\n",
                socket.display()
            ),
            None,
        ));
    }
    // One watcher per instance; each step's end as the watcher got it.
    let watched = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    for (i, (d, _)) in daemons.iter().enumerate() {
        let mut w = client(&d.addr)
            .await
            .watch_steps(pb::WatchStepsRequest::default())
            .await
            .expect("WatchSteps")
            .into_inner();
        let out = watched.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = w.message().await {
                let now = SystemTime::now();
                if let Some(s) = m.step.filter(is_terminal) {
                    out.lock()
                        .expect("watched")
                        .push((format!("a{i}"), s.id, s.finished_at, now));
                }
            }
        });
    }
    // Every instance runs its steps at once, spaced a little.
    let mut runs = Vec::new();
    for (d, _) in &daemons {
        let addr = d.addr.clone();
        runs.push(tokio::spawn(async move {
            let mut t = testing(&addr).await;
            for k in 0..steps {
                let mut req = tpb::RunTestStepRequest {
                    meta: Some(meta(&format!("r-{k}"))),
                    ..Default::default()
                };
                req.run_for = Some(secs(0.0));
                t.run_test_step(req).await.expect("RunTestStep");
                tokio::time::sleep(Duration::from_millis(fastrand::u64(5..40))).await;
            }
        }));
    }
    for r in runs {
        r.await.expect("runs");
    }
    let want = agents * steps;
    let end = Instant::now() + Duration::from_secs(60);
    let (mut report, mut watch) = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let watched = watched.lock().expect("watched").clone();
        let got = sink.got.lock().expect("sink").clone();
        let mut report = Vec::new();
        let mut watch = Vec::new();
        for (agent, id, finished, seen) in &watched {
            watch.push(since(finished.as_ref(), *seen));
            // The end is the step's last change: the sink's first copy of it
            // (a resent batch may bring it again).
            let mine = got.iter().filter(|(a, i, _, _)| a == agent && i == id);
            let last = mine.clone().map(|(_, _, rev, _)| *rev).max();
            let first = mine
                .filter(|(_, _, rev, _)| Some(*rev) == last)
                .map(|(_, _, _, at)| *at)
                .min();
            if let Some(at) = first {
                report.push(since(finished.as_ref(), at));
            }
        }
        if report.len() >= want || Instant::now() > end {
            break (report, watch);
        }
    };
    report.sort();
    watch.sort();
    let (r50, w50) = (percentile(&report, 0.5), percentile(&watch, 0.5));
    let (r99, w99) = (percentile(&report, 0.99), percentile(&watch, 0.99));
    let all = report.len() >= want;
    if agents == 1 {
        // Idle but for this: each change goes at once, a round trip after
        // its commit.
        vec![Row {
            figure: "report: finished -> sink, 1 agent, p50 (p99)".into(),
            value: format!("{} ({})", ms(r50), ms(r99)),
            baseline: format!("WatchSteps {} ({})", ms(w50), ms(w99)),
            ratio: Some(r50.as_secs_f64() / w50.as_secs_f64().max(1e-9)),
            target: "p50 <= 2 ms, p99 <= 10 ms".into(),
            pass: all && r50 <= Duration::from_millis(2) && r99 <= Duration::from_millis(10),
        }]
    } else {
        // Under load the push keeps up with the daemon's own stream.
        vec![Row {
            figure: format!("report: finished -> sink, {agents} agents, p99 (p50)"),
            value: format!("{} ({})", ms(r99), ms(r50)),
            baseline: format!("WatchSteps {} ({})", ms(w99), ms(w50)),
            ratio: Some(r99.as_secs_f64() / w99.as_secs_f64().max(1e-9)),
            target: "p99 <= 2x".into(),
            pass: all && r99.as_secs_f64() <= 2.0 * w99.as_secs_f64(),
        }]
    }
}

/// A burst: 500 steps started at once on one agent, each RUNNING and then
/// (together, 0.3 s later) SUCCEEDED: 1,000 changes. Sent at once only while
/// no batch is in flight, they gather into batches: how many calls carried
/// them all.
async fn report_burst() -> Vec<Row> {
    let sock_dir = tempfile::tempdir().expect("temp dir");
    let socket = sock_dir.path().join("reporter.sock");
    let sink = Sink::serve(&socket);
    let (d, _dir) = tcp_daemon(
        &format!(
            "[limits]\nmax_active_steps = 600\n[report]\nendpoint = \"unix:{}\"\nagent_id = \"burst\"\n",
            socket.display()
        ),
        None,
    );
    let t = testing(&d.addr).await;
    let mut burst = tokio::task::JoinSet::new();
    for k in 0..500 {
        let mut t = t.clone();
        burst.spawn(async move {
            let mut req = tpb::RunTestStepRequest {
                meta: Some(meta(&format!("b-{k}"))),
                ..Default::default()
            };
            req.run_for = Some(secs(0.3));
            t.run_test_step(req).await.expect("RunTestStep");
        });
    }
    while let Some(r) = burst.join_next().await {
        r.expect("burst");
    }
    let end = Instant::now() + Duration::from_secs(30);
    let (calls, changes) = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let got = sink.got.lock().expect("sink").clone();
        let ends = got
            .iter()
            .filter(|(_, _, rev, _)| *rev > 0)
            .map(|(_, id, _, _)| id.clone())
            .collect::<std::collections::HashSet<_>>();
        let calls = sink.calls.load(std::sync::atomic::Ordering::Relaxed);
        if (ends.len() >= 500 && got.len() >= 1000) || Instant::now() > end {
            break (calls, got.len());
        }
    };
    vec![Row {
        figure: "report: a burst of 1,000 changes, calls".into(),
        value: format!("{calls}"),
        baseline: format!("{changes} changes"),
        ratio: Some(calls as f64 / changes.max(1) as f64),
        target: "<= 100 calls".into(),
        pass: changes >= 1000 && calls <= 100,
    }]
}
