//! Prepare's checks passing and failing for real: an occupied port, a missing
//! binary, an unwritable dir, a low limit in what the child would get, a stale
//! pid file, skip_checks and strict.

mod common;

use std::time::Duration;

use common::*;
use obhost::proto::v1 as pb;
use tonic::Code;

fn prep(id: &str, spec: pb::ObserverSpec) -> pb::PrepareRequest {
    let mut spec = spec;
    spec.parameters.insert("memory_limit".into(), "2G".into());
    pb::PrepareRequest {
        meta: Some(meta(id)),
        observer: Some(spec),
        create_dirs: true,
        ..Default::default()
    }
}

async fn prepare(d: &Daemon, r: pb::PrepareRequest) -> pb::Step {
    let id = r.meta.as_ref().unwrap().step_id.clone();
    d.client().await.prepare(r).await.expect("accepted");
    wait_for(d, &id, Duration::from_secs(30), is_terminal).await
}

fn check<'a>(s: &'a pb::Step, name: &str) -> &'a pb::CheckResult {
    s.checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name}: {:?}", s.checks))
}

#[tokio::test]
async fn a_good_host_passes_and_missing_dirs_are_created() {
    let d = Daemon::start();
    let home = Home::new();
    let mut spec = home.spec();
    spec.home_path = home.path().join("ob").display().to_string();
    let s = prepare(&d, prep("prep-ok", spec)).await;
    assert_eq!(s.state(), pb::StepState::Succeeded, "{:#?}", s.checks);
    // Every check of the one catalog, once, in its order.
    let names: Vec<&str> = s.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, obhost::tasks::prepare::check_names());
    for name in [
        "observer.running",
        "port.mysql",
        "port.rpc",
        "binary",
        "dir.home",
        "dir.data",
        "memory.available",
        "memory.limit",
        "aio",
        "ulimit.nofile",
        "sysctl.vm.max_map_count",
        "clock",
    ] {
        check(&s, name);
    }
    assert!(
        check(&s, "dir.home").observed.starts_with("created"),
        "{:?}",
        check(&s, "dir.home")
    );
    for sub in ["ob", "ob/run", "ob/log", "ob/etc", "ob/store"] {
        assert!(home.path().join(sub).is_dir(), "{sub} not created");
    }
    // Every WARN and FAIL says how to fix it.
    for c in &s.checks {
        if matches!(c.status(), pb::CheckStatus::Warn | pb::CheckStatus::Fail) {
            assert!(!c.hint.is_empty(), "{} has no hint", c.name);
        }
    }
}

#[tokio::test]
async fn an_occupied_port_fails_naming_its_holder_and_can_be_skipped() {
    let d = Daemon::start();
    let home = Home::new();
    let holder = std::net::TcpListener::bind(("127.0.0.1", home.mysql_port)).unwrap();
    let s = prepare(&d, prep("prep-port", home.spec())).await;
    assert_eq!(s.state(), pb::StepState::Failed);
    assert_eq!(s.error.as_ref().unwrap().code, "PORT_IN_USE");
    let c = check(&s, "port.mysql");
    assert_eq!(c.status(), pb::CheckStatus::Fail);
    assert!(
        c.observed.contains(&format!("pid {}", std::process::id())),
        "{c:?}"
    );
    assert!(c.hint.contains(&std::process::id().to_string()), "{c:?}");

    let mut r = prep("prep-port-skip", home.spec());
    r.skip_checks = vec!["port.mysql".into()];
    let s = prepare(&d, r).await;
    assert_eq!(s.state(), pb::StepState::Succeeded, "{:#?}", s.checks);
    assert_eq!(check(&s, "port.mysql").status(), pb::CheckStatus::Skipped);
    drop(holder);

    let mut r = prep("prep-bad-skip", home.spec());
    r.skip_checks = vec!["port.nope".into()];
    let err = d.client().await.prepare(r).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("port.nope"));
}

#[tokio::test]
async fn a_missing_binary_fails() {
    let d = Daemon::start();
    let home = Home::new();
    let mut spec = home.spec();
    spec.binary = home.path().join("bin/observer").display().to_string();
    let s = prepare(&d, prep("prep-bin", spec)).await;
    assert_eq!(s.state(), pb::StepState::Failed);
    assert_eq!(s.error.as_ref().unwrap().code, "BINARY_NOT_FOUND");
    assert_eq!(check(&s, "binary").status(), pb::CheckStatus::Fail);
}

#[tokio::test]
async fn a_low_limit_fails_and_strict_turns_warnings_into_failures() {
    let d = Daemon::start_with(Options {
        config: "[limits]\nnofile = 1024\n".into(),
        ..Options::default()
    });
    let home = Home::new();
    let s = prepare(&d, prep("prep-nofile", home.spec())).await;
    assert_eq!(s.state(), pb::StepState::Failed);
    assert_eq!(s.error.as_ref().unwrap().code, "ULIMIT_TOO_LOW");
    assert!(check(&s, "ulimit.nofile").observed.contains("1024"));

    let d = Daemon::start_with(Options {
        config: "[limits]\nnofile = 20000\n".into(),
        ..Options::default()
    });
    let s = prepare(&d, prep("prep-warn", home.spec())).await;
    assert_eq!(s.state(), pb::StepState::Succeeded, "{:#?}", s.checks);
    assert_eq!(check(&s, "ulimit.nofile").status(), pb::CheckStatus::Warn);
    let mut r = prep("prep-strict", home.spec());
    r.strict = true;
    let s = prepare(&d, r).await;
    assert_eq!(s.state(), pb::StepState::Failed);
}

#[tokio::test]
async fn a_stale_pid_file_is_removed() {
    let d = Daemon::start();
    let home = Home::new();
    std::fs::create_dir_all(home.path().join("run")).unwrap();
    std::fs::write(home.pid_file(), "99999999\n").unwrap();
    let s = prepare(&d, prep("prep-stale", home.spec())).await;
    let c = check(&s, "pidfile.stale");
    assert!(c.observed.starts_with("removed stale"), "{c:?}");
    assert!(!home.pid_file().exists());
}

#[tokio::test]
async fn a_dir_the_user_cannot_write_fails_with_the_chown_fix() {
    if !nix::unistd::geteuid().is_root() {
        assert!(std::env::var_os("CI").is_none(), "CI must run as root");
        eprintln!("SKIPPED: not root, cannot create a user");
        return;
    }
    let _ = user_db_locked(|| {
        std::process::Command::new("useradd")
            .args(["-m", "obhosttest"])
            .status()
    });
    let d = Daemon::start();
    let home = Home::new(); // owned by root, mode 0700
    let mut spec = home.spec();
    spec.user = "obhosttest".into();
    let mut r = prep("prep-dir", spec);
    r.create_dirs = false;
    let s = prepare(&d, r).await;
    assert_eq!(s.state(), pb::StepState::Failed);
    let c = check(&s, "dir.home");
    assert_eq!(c.status(), pb::CheckStatus::Fail);
    assert!(c.hint.contains("chown -R obhosttest:obhosttest"), "{c:?}");
}

/// A first start without the cluster's identity is refused by Prepare itself,
/// before it creates a single directory (StartObserver would refuse it later).
#[tokio::test]
async fn a_first_start_without_zone_or_cluster_is_refused_before_any_dir_exists() {
    let d = Daemon::start();
    let home = Home::new();
    let mut spec = home.spec();
    spec.home_path = home.path().join("new-ob").display().to_string();
    spec.zone.clear();
    spec.cluster_name.clear();
    spec.cluster_id = 0;
    let err = d
        .client()
        .await
        .prepare(pb::PrepareRequest {
            meta: Some(meta("first-start")),
            observer: Some(spec),
            create_dirs: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("observer.zone"), "{}", err.message());
    assert!(!home.path().join("new-ob").exists());
}
