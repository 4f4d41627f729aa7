//! The real OceanBase kernel (seekdb 1.4, through the observer-flag wrapper)
//! started, inspected and stopped by obhostd in daemonizing mode: the launcher
//! exits 0 before the server writes its pid file, and on SIGTERM the server dies
//! of SIGKILL, exactly like the real observer.

mod common;

use std::time::{Duration, Instant};

use common::*;
use obhost::proto::v1 as pb;

async fn wait_greeting(home: &Home, within: Duration) -> String {
    let port = home.mysql_port;
    let end = Instant::now() + within;
    loop {
        if let Some(v) = mysql_greeting(port) {
            return v;
        }
        if Instant::now() > end {
            let text = std::fs::read(home.path().join("log/seekdb.log")).unwrap_or_default();
            let text = String::from_utf8_lossy(&text);
            let log: Vec<String> = text
                .lines()
                .filter(|l| l.contains(" ERROR ") || l.contains("server_start"))
                .map(|l| l.chars().take(400).collect())
                .collect();
            let log = &log[log.len().saturating_sub(12)..];
            let out =
                obhost::confined::tail(&home.path().join("log/obhost_observer.out"), None, 30);
            panic!(
                "seekdb did not answer on {port} within {within:?}; processes {:?}\n{}\n{}",
                home.processes(),
                out.join("\n"),
                log.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn real_seekdb_start_get_stop_and_restart() {
    let Some(seekdb) = seekdb() else { return };
    let d = Daemon::start();
    let home = Home::new();
    install_seekdb(&home, &seekdb);

    start_observer(&d, "sdb-start", seekdb_spec(&home))
        .await
        .unwrap();
    let s = wait_for(&d, "sdb-start", Duration::from_secs(60), is_terminal).await;
    assert_eq!(s.state(), pb::StepState::Succeeded, "{s:#?}");
    let pid: i32 = s.outputs["pid"].parse().unwrap();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "seekdb");
    let version = wait_greeting(&home, Duration::from_secs(60)).await;
    assert!(!version.is_empty());

    let o = get_observer(&d, home.path()).await;
    assert!(o.running);
    assert_eq!(o.pid as i32, pid);
    assert!(
        o.listening_ports.contains(&(home.mysql_port as u32)),
        "{o:?}"
    );
    assert!(o.rss_bytes > 50 << 20, "rss {}", o.rss_bytes);

    let stop = stop_observer(&d, "sdb-stop", home.path(), 10.0, false).await;
    let stop = wait_for(&d, &stop.id, Duration::from_secs(60), is_terminal).await;
    assert_eq!(stop.state(), pb::StepState::Succeeded, "{stop:#?}");
    assert!(!alive(pid));
    assert!(
        std::net::TcpListener::bind(("0.0.0.0", home.mysql_port)).is_ok(),
        "port still held"
    );
    // seekdb's SIGTERM handler ends in SIGKILL; we are its subreaper and saw it.
    let exit = get_observer(&d, home.path())
        .await
        .last_exit
        .expect("exit recorded");
    assert_eq!(exit.signal, Some(9), "{exit:?}");
    assert!(zombies_of(d.pid()).is_empty());

    // A restart from the same home (saved state) works, and a forced stop too.
    start_observer(&d, "sdb-restart", seekdb_spec(&home))
        .await
        .unwrap();
    let s = wait_for(&d, "sdb-restart", Duration::from_secs(60), is_terminal).await;
    assert_eq!(s.state(), pb::StepState::Succeeded, "{s:#?}");
    assert_eq!(s.outputs["already_running"], "false");
    wait_greeting(&home, Duration::from_secs(60)).await;
    let stop = stop_observer(&d, "sdb-stop-2", home.path(), 10.0, true).await;
    let stop = wait_for(&d, &stop.id, Duration::from_secs(60), is_terminal).await;
    assert_eq!(stop.state(), pb::StepState::Succeeded);
    assert!(home.processes().is_empty());
}

#[tokio::test]
async fn real_seekdb_survives_kill9_of_obhostd() {
    let Some(seekdb) = seekdb() else { return };
    let d = Daemon::start();
    let home = Home::new();
    install_seekdb(&home, &seekdb);
    start_observer(&d, "sdb-k9", seekdb_spec(&home))
        .await
        .unwrap();
    let s = wait_for(&d, "sdb-k9", Duration::from_secs(60), is_terminal).await;
    assert_eq!(s.state(), pb::StepState::Succeeded, "{s:#?}");
    let pid: i32 = s.outputs["pid"].parse().unwrap();
    let d = d.restart_after_kill9();
    assert!(alive(pid));
    wait_greeting(&home, Duration::from_secs(60)).await;
    let again = start_observer(&d, "sdb-k9-again", seekdb_spec(&home))
        .await
        .unwrap();
    let again = wait_terminal(&d, &again.id).await;
    assert_eq!(again.outputs["already_running"], "true");
    assert_eq!(again.outputs["pid"], pid.to_string());
    let stop = stop_observer(&d, "sdb-k9-stop", home.path(), 10.0, false).await;
    let stop = wait_for(&d, &stop.id, Duration::from_secs(60), is_terminal).await;
    assert_eq!(stop.state(), pb::StepState::Succeeded);
    assert!(!alive(pid));
}
