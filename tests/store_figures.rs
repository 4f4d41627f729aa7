//! Figures for the engine's targets (issue 8), each beside its baseline measured
//! in the same run. Not a regression test: `#[ignore]`d, run by hand:
//!
//!     cargo build --release --features test-kinds --bin obhostd
//!     OBHOSTD=target/release/obhostd cargo test --test store_figures -- --ignored --nocapture
//!
//! (without OBHOSTD the debug build is measured). The project's bench binary
//! supersedes this once it exists.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::connect_addr;
use obhost::proto::testing::v1 as tpb;
use obhost::proto::v1 as pb;
use obhost::steps::store::Store;
use obhost::steps::{StepKind, StepRecord, StepSpec, StepState};
use tonic::transport::{Channel, Endpoint};

fn binary() -> PathBuf {
    std::env::var_os("OBHOSTD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_obhostd")))
}

struct Running {
    child: Child,
    addr: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts obhostd and returns it once GetStep answers, with the time that took.
async fn start(dir: &Path, config: &str) -> (Running, Channel, Duration) {
    let sock = dir.join("figures.sock");
    let _ = std::fs::remove_file(&sock);
    let cfg = dir.join("figures.toml");
    std::fs::write(&cfg, config).unwrap();
    let started = Instant::now();
    let child = Command::new(binary())
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = format!("unix:{}", sock.display());
    let running = Running { child, addr };
    loop {
        if let Ok(ch) = connect_addr(&running.addr, Endpoint::from_static("http://localhost")).await
        {
            let mut c = pb::host_agent_client::HostAgentClient::new(ch.clone());
            if c.list_steps(pb::ListStepsRequest {
                page_size: 1,
                ..Default::default()
            })
            .await
            .is_ok()
            {
                return (running, ch, started.elapsed());
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "obhostd did not answer"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kib / 1024.0
}

/// `n` finished records of about 6 KB each, in transactions of 5,000.
fn seed(dir: &Path, n: usize) {
    let now = SystemTime::now();
    let value = "v".repeat(1000);
    let (store, _) = Store::open(&dir.join("state")).unwrap();
    for chunk in (1..=n).collect::<Vec<_>>().chunks(5000) {
        let records: Vec<StepRecord> = chunk
            .iter()
            .map(|&i| StepRecord {
                spec: StepSpec {
                    id: format!("seed-{i:06}"),
                    dag_id: "seeded".into(),
                    kind: StepKind::Test,
                    name: "Test step".into(),
                    timeout: Duration::from_secs(60),
                    params: serde_json::json!({
                        "run_for": "0s", "fail_code": "", "resumable": false, "progress_updates": 0
                    }),
                },
                state: StepState::Succeeded,
                attempt: 1,
                revision: i as u64,
                created_at: now,
                started_at: Some(now),
                finished_at: Some(now),
                deadline: now + Duration::from_secs(60),
                message: "seeded".into(),
                error: None,
                outputs: (0..6).map(|k| (format!("pad{k}"), value.clone())).collect(),
                checks: Vec::new(),
            })
            .collect();
        store.put_all(&records).unwrap();
    }
}

/// write + fdatasync of a small record, as often as the disk allows in `for`.
fn bare_fsync_rate(dir: &Path, window: Duration) -> f64 {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(dir.join("fsync.bin")).unwrap();
    let buf = [7u8; 512];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < window {
        f.write_all_at(&buf, (n % 64) * 512).unwrap();
        f.sync_data().unwrap();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn step(id: String) -> tpb::RunTestStepRequest {
    tpb::RunTestStepRequest {
        meta: Some(pb::StepMeta {
            step_id: id,
            ..Default::default()
        }),
        run_for: Some(pbjson_types::Duration {
            seconds: 0,
            nanos: 0,
        }),
        ..Default::default()
    }
}

/// Steps accepted per second by `clients` clients each creating steps one
/// after another for `window`.
async fn creation_rate(ch: &Channel, clients: usize, window: Duration, tag: &str) -> f64 {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let ch = ch.clone();
        let tag = tag.to_string();
        tasks.push(tokio::spawn(async move {
            let mut client = tpb::step_testing_client::StepTestingClient::new(ch);
            let mut n = 0u64;
            while start.elapsed() < window {
                client
                    .run_test_step(step(format!("{tag}-{c}-{n}")))
                    .await
                    .unwrap();
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

fn line(what: &str, value: String, baseline: String, target: &str) {
    println!("{what:<44} {value:>14} {baseline:>22}   target {target}");
    let _ = std::io::stdout().flush();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn figures() {
    let n: usize = std::env::var("RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let config = "[limits]\nmax_active_steps = 100000\n[retention]\nmax_steps = 1000000\n";
    println!("binary {}", binary().display());

    // Baselines: an empty state, a bare fsync loop on the same disk.
    let empty = tempfile::tempdir().unwrap();
    let (d, ch, empty_start) = start(empty.path(), config).await;
    let empty_rss = rss_mib(d.child.id());
    let fsync = bare_fsync_rate(empty.path(), Duration::from_secs(2));
    let one = creation_rate(&ch, 1, Duration::from_secs(3), "one").await;
    let many = creation_rate(&ch, 64, Duration::from_secs(3), "many").await;
    drop(d);

    let big = tempfile::tempdir().unwrap();
    let seeding = Instant::now();
    seed(big.path(), n);
    println!("seeded {n} records of ~6 KB in {:?}", seeding.elapsed());
    let (d, ch, big_start) = start(big.path(), config).await;
    let start_rss = rss_mib(d.child.id());
    let mut client = pb::host_agent_client::HostAgentClient::new(ch.clone());
    let listing = Instant::now();
    let mut token = String::new();
    let mut listed = 0;
    loop {
        let page = client
            .list_steps(pb::ListStepsRequest {
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        listed += page.steps.len();
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let list_time = listing.elapsed();
    assert_eq!(listed, n);
    let after_rss = rss_mib(d.child.id());

    println!();
    line("figure", "value".into(), "baseline".into(), "");
    line(
        &format!("RSS with {n} records (after ListSteps all)"),
        format!("{after_rss:.1} MiB"),
        format!("empty {empty_rss:.1} MiB"),
        "<= 32 MiB",
    );
    line(
        &format!("RSS with {n} records (at start)"),
        format!("{start_rss:.1} MiB"),
        format!("empty {empty_rss:.1} MiB"),
        "<= 32 MiB",
    );
    line(
        &format!("restart to answering, {n} records"),
        format!("{:.0} ms", big_start.as_secs_f64() * 1e3),
        format!("empty {:.0} ms", empty_start.as_secs_f64() * 1e3),
        "<= 200 ms",
    );
    line(
        &format!("ListSteps of {n} (default page)"),
        format!("{:.2} s", list_time.as_secs_f64()),
        String::new(),
        "<= 2 s",
    );
    line(
        "step creation, 1 client",
        format!("{one:.0}/s"),
        format!("fsync loop {fsync:.0}/s = {:.2}x", one / fsync),
        ">= 0.5x",
    );
    line(
        "step creation, 64 clients",
        format!("{many:.0}/s"),
        format!("{:.2}x fsync loop", many / fsync),
        ">= 5000/s",
    );
}
