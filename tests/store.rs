//! The state store under a full disk: a change it cannot write is refused
//! (RESOURCE_EXHAUSTED, saying what to do), health turns NOT_SERVING, and once
//! space is free again the daemon reopens the store by itself: health SERVING,
//! new steps accepted, nothing stored before lost. Runs on a 2 MiB tmpfs
//! (root), unmounted on the way out.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use obhost::proto::v1 as pb;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

/// A small tmpfs, unmounted (lazily, so a still-open file cannot keep it) when
/// dropped; declared before the daemon so it outlives it.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(dir: &Path, size: &str) -> SmallFs {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .expect("run mount")
            .success();
        assert!(ok, "mount tmpfs on {} (tests run as root)", dir.display());
        SmallFs(dir.to_path_buf())
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes a file until the filesystem is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5au8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

async fn health(d: &Daemon) -> ServingStatus {
    let mut client = HealthClient::new(d.channel().await);
    let resp = client
        .check(HealthCheckRequest {
            service: "obhost.v1.HostAgent".into(),
        })
        .await
        .unwrap()
        .into_inner();
    resp.status()
}

#[tokio::test]
async fn a_full_disk_is_refused_reported_and_healed_without_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("small");
    let _fs = SmallFs::mount(&mnt, "2m");
    let d = Daemon::start_with(Options {
        state_dir: Some(mnt.join("state")),
        ..Options::default()
    });
    let mut before = Vec::new();
    for i in 0..5 {
        let id = format!("before-{i}");
        run_test_step(&d, test_step(&id, 0.0)).await;
        before.push(wait_terminal(&d, &id).await);
    }
    assert_eq!(health(&d).await, ServingStatus::Serving);

    let filler = mnt.join("filler");
    fill(&filler);
    // redb may still have free pages inside its file: go on until a change
    // needs new space.
    let mut refused = None;
    for i in 0..2000 {
        let mut req = test_step(&format!("full-{i}"), 0.0);
        req.report_bytes = 1000;
        match d.testing().await.run_test_step(req).await {
            Ok(_) => continue,
            Err(status) => {
                refused = Some(status);
                break;
            }
        }
    }
    let status = refused.expect("a change was refused on a full disk");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("full"), "{}", status.message());
    assert!(
        status.message().contains("Free space"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains(&mnt.display().to_string()),
        "names the file: {}",
        status.message()
    );
    assert_eq!(health(&d).await, ServingStatus::NotServing);
    // Reads still work from what is stored.
    assert_eq!(get_step(&d, "before-0").await, before[0]);

    std::fs::remove_file(&filler).unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while health(&d).await != ServingStatus::Serving {
        assert!(
            Instant::now() < until,
            "health did not come back after space was freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    run_test_step(&d, test_step("after", 0.0)).await;
    let after = wait_terminal(&d, "after").await;
    assert_eq!(after.state(), pb::StepState::Succeeded);
    assert!(after.revision > before[4].revision);
    for r in &before {
        assert_eq!(&get_step(&d, &r.id).await, r, "a stored record changed");
    }
    // Still fine after a restart: nothing lost, the file is sound.
    let d = d.restart_after_kill9();
    for r in &before {
        assert_eq!(&get_step(&d, &r.id).await, r);
    }
    assert_eq!(get_step(&d, "after").await, after);
}
