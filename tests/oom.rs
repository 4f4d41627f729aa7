//! The OOM killer, for real: the stand-in observer allocates past the limit of
//! a memory cgroup made for the test, the kernel kills it, and
//! `process::oom::oom_killed` says so; a process killed by a plain SIGKILL is
//! not called OOM-killed.
//!
//! Needs root and a memory cgroup controller (v2 at /sys/fs/cgroup or
//! /sys/fs/cgroup/unified, else v1 at /sys/fs/cgroup/memory). Without them the
//! test is skipped with the reason; under `CI` it fails instead. The last test
//! does the same to the real kernel (seekdb) while it serves.

mod common;

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;
use obhost::process::Identity;
use obhost::process::identity::stat;
use obhost::process::oom::{cgroup_oom_kills, oom_killed};
use obhost::proto::v1 as pb;

const FAKE_OBSERVER: &str = env!("CARGO_BIN_EXE_obhost-fake-observer");
/// The cgroup's limit, and what the stand-in is asked to hold (4 times it).
const LIMIT_MIB: u64 = 64;
const ALLOC_MIB: u64 = 256;
/// The cgroup seekdb runs in: it needs about 130 MiB once ready, and a client
/// then fills its memtables past this.
const SEEKDB_LIMIT_MIB: u64 = 320;

/// A memory cgroup made for one test, removed when dropped (its processes are
/// reaped by then).
struct Cgroup {
    dir: PathBuf,
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            eprintln!("cannot remove {}: {e}", self.dir.display());
        }
    }
}

fn unavailable(why: &str) -> Option<Cgroup> {
    if std::env::var_os("CI").is_some() {
        panic!("{why}");
    }
    eprintln!("SKIPPED: {why}");
    None
}

/// A memory cgroup limited to `limit_mib` with no swap, v2 where the host has
/// the memory controller there, else v1.
fn memory_cgroup(name: &str, limit_mib: u64) -> Option<Cgroup> {
    if !nix::unistd::Uid::effective().is_root() {
        return unavailable("making a memory cgroup needs root");
    }
    let limit = (limit_mib << 20).to_string();
    for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        let root = Path::new(root);
        let controllers = std::fs::read_to_string(root.join("cgroup.controllers"));
        if !controllers.is_ok_and(|c| c.split_whitespace().any(|c| c == "memory")) {
            continue;
        }
        let _ = std::fs::write(root.join("cgroup.subtree_control"), "+memory");
        let cg = Cgroup {
            dir: root.join(name),
        };
        std::fs::create_dir(&cg.dir).expect("mkdir cgroup v2");
        std::fs::write(cg.dir.join("memory.max"), &limit).expect("memory.max");
        // No swap to escape to (absent when the kernel has no swap accounting).
        let _ = std::fs::write(cg.dir.join("memory.swap.max"), "0");
        eprintln!("memory cgroup v2: {}", cg.dir.display());
        return Some(cg);
    }
    let v1 = Path::new("/sys/fs/cgroup/memory");
    if !v1.join("memory.limit_in_bytes").exists() {
        return unavailable(
            "no memory cgroup: neither cgroup2 with the memory controller nor v1 at /sys/fs/cgroup/memory",
        );
    }
    let cg = Cgroup { dir: v1.join(name) };
    std::fs::create_dir(&cg.dir).expect("mkdir cgroup v1");
    std::fs::write(cg.dir.join("memory.limit_in_bytes"), &limit).expect("limit_in_bytes");
    // memory+swap no larger than memory: it cannot swap (after limit_in_bytes,
    // which the kernel requires to be <= memsw).
    let memsw = cg.dir.join("memory.memsw.limit_in_bytes");
    if memsw.exists() {
        std::fs::write(memsw, &limit).expect("memsw.limit_in_bytes");
    }
    eprintln!("memory cgroup v1: {}", cg.dir.display());
    Some(cg)
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is `procs`.
/// Runs between fork and exec, so it only uses async-signal-safe calls and the
/// stack (no allocation).
fn join(procs: &CStr) -> io::Result<()> {
    // SAFETY: plain syscalls on a NUL-terminated path and a stack buffer.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = [0u8; 20];
        let mut n = libc::getpid() as u32;
        let mut i = buf.len();
        loop {
            i -= 1;
            buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let written = libc::write(fd, buf[i..].as_ptr().cast(), buf.len() - i);
        let err = io::Error::last_os_error();
        libc::close(fd);
        if written < 0 { Err(err) } else { Ok(()) }
    }
}

/// The stand-in observer in the foreground (`-N`), never listening, in `home`.
fn stand_in(home: &Path, env: &[(&str, String)], cgroup: Option<&Cgroup>) -> Child {
    let mut cmd = Command::new(FAKE_OBSERVER);
    cmd.args(["-p", "40917", "-N"])
        .current_dir(home)
        .env("FAKE_OBSERVER_NEVER_LISTEN", "1")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(cg) = cgroup {
        let procs = CString::new(cg.dir.join("cgroup.procs").as_os_str().as_bytes())
            .expect("cgroup path without NUL");
        // SAFETY: `join` is async-signal-safe (see there).
        unsafe { cmd.pre_exec(move || join(&procs)) };
    }
    cmd.spawn().expect("spawn the stand-in observer")
}

/// Waits for `child` to end without reaping it, so its /proc/<pid>/stat (and
/// its start time) can still be read; then returns its identity and status.
fn identity_at_exit(child: &mut Child) -> (Identity, std::process::ExitStatus) {
    let pid = child.id() as i32;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::WNOHANG;
        match waitid(Id::Pid(Pid::from_raw(pid)), flags) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(_) => break,
            Err(e) => panic!("waitid {pid}: {e}"),
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the stand-in {pid} was still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let start_ticks = stat(pid).expect("the zombie's stat").start_ticks;
    let boot = Identity::of(std::process::id() as i32)
        .expect("our own identity")
        .boot;
    let status = child.wait().expect("reap the stand-in");
    (
        Identity {
            pid,
            start_ticks,
            boot,
        },
        status,
    )
}

#[test]
fn an_oom_kill_is_told_apart_from_a_plain_sigkill() {
    let Some(cg) = memory_cgroup(
        &format!("obhost-oom-test-{}", std::process::id()),
        LIMIT_MIB,
    ) else {
        return;
    };
    let home = tempfile::tempdir().unwrap();

    // Over the limit: the kernel's OOM killer kills it.
    let mut greedy = stand_in(
        home.path(),
        &[("FAKE_OBSERVER_ALLOC_MIB", ALLOC_MIB.to_string())],
        Some(&cg),
    );
    let (id, status) = identity_at_exit(&mut greedy);
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert_eq!(oom_killed(&id), Some(true), "{id:?}");
    if let Some(kills) = cgroup_oom_kills(&cg.dir) {
        assert!(kills >= 1, "the cgroup counted {kills} OOM kills");
    }

    // Killed by us, with the same signal: not the OOM killer.
    let mut plain = stand_in(home.path(), &[], None);
    let pid = plain.id() as i32;
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = home.path().join("log/observer.log");
    while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains("not listening")) {
        assert!(Instant::now() < deadline, "the stand-in did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let alive = Identity::of(pid).expect("the stand-in runs");
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let (id, status) = identity_at_exit(&mut plain);
    assert_eq!(id, alive);
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert_eq!(oom_killed(&id), Some(false), "{id:?}");
}

/// Through obhostd: an observer the OOM killer ends while it starts is
/// reported as such, beside its SIGKILL. Its launcher joins the cgroup before
/// it execs the stand-in, so the server it forks is born there.
#[tokio::test]
async fn an_observer_the_oom_killer_ends_is_reported_oom_killed() {
    let Some(cg) = memory_cgroup(
        &format!("obhost-oom-step-{}", std::process::id()),
        LIMIT_MIB,
    ) else {
        return;
    };
    let d = common::Daemon::start();
    let home = common::Home::new();
    let bin = home.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join("observer");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho $$ > '{}' || exit 99\nexec '{FAKE_OBSERVER}' \"$@\"\n",
            cg.dir.join("cgroup.procs").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut spec = home.spec();
    spec.binary = script.display().to_string();
    spec.env
        .insert("FAKE_OBSERVER_ALLOC_MIB".into(), ALLOC_MIB.to_string());
    spec.env
        .insert("FAKE_OBSERVER_NEVER_LISTEN".into(), "1".into());
    common::start_observer(&d, "oom-start", spec).await.unwrap();
    let s = common::wait_terminal(&d, "oom-start").await;
    let e = s.error.clone().expect("the start failed");
    assert_eq!(e.code, "PROCESS_EXITED", "{s:#?}");
    assert_eq!(
        e.details.get("signal").map(String::as_str),
        Some("9"),
        "{e:#?}"
    );
    assert_eq!(
        e.details.get("oom_killed").map(String::as_str),
        Some("true"),
        "{e:#?}"
    );
    assert!(e.message.contains("OOM killer"), "{e:#?}");
    assert!(cgroup_oom_kills(&cg.dir).is_some_and(|n| n >= 1));
}

/// The real kernel, OOM-killed while it serves: seekdb (about 130 MiB once
/// ready) runs in a cgroup of SEEKDB_LIMIT_MIB, a client inserts rows until
/// the kernel kills it, and the WaitObserverActive that follows reports that
/// death as the OOM killer's.
#[tokio::test]
async fn seekdb_the_oom_killer_ends_is_reported_oom_killed() {
    use mysql_async::prelude::Queryable;
    let Some(seekdb) = common::seekdb() else {
        return;
    };
    let Some(cg) = memory_cgroup(
        &format!("obhost-oom-seekdb-{}", std::process::id()),
        SEEKDB_LIMIT_MIB,
    ) else {
        return;
    };
    let d = common::Daemon::start();
    let home = common::Home::new();
    common::install_seekdb(&home, &seekdb);
    let bin = home.path().join("bin");
    std::fs::rename(bin.join("observer"), bin.join("observer-seekdb")).unwrap();
    std::fs::write(
        bin.join("observer"),
        format!(
            "#!/bin/sh\necho $$ > '{}' || exit 99\nexec \"$(dirname \"$0\")/observer-seekdb\" \"$@\"\n",
            cg.dir.join("cgroup.procs").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        bin.join("observer"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut spec = common::seekdb_spec(&home);
    spec.binary = bin.join("observer").display().to_string();
    common::start_observer(&d, "sdb-oom-start", spec)
        .await
        .unwrap();
    let s = common::wait_terminal(&d, "sdb-oom-start").await;
    assert_eq!(s.state(), pb::StepState::Succeeded, "{s:#?}");
    let pid: i32 = s.outputs["pid"].parse().unwrap();
    let wait = |id: &'static str| pb::WaitObserverActiveRequest {
        meta: Some(common::meta(id)),
        home_path: home.path().display().to_string(),
        mysql_port: home.mysql_port as u32,
        ..Default::default()
    };
    d.client()
        .await
        .wait_observer_active(wait("sdb-oom-ready"))
        .await
        .unwrap();
    let s = common::wait_terminal(&d, "sdb-oom-ready").await;
    assert_eq!(s.state(), pb::StepState::Succeeded, "{s:#?}");

    // 80 MiB of rows a statement, into memtables that stay in memory.
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(home.mysql_port)
        .user(Some("root"));
    let mut conn = mysql_async::Conn::new(opts)
        .await
        .expect("connect to seekdb");
    conn.query_drop("CREATE DATABASE oom").await.unwrap();
    conn.query_drop("CREATE TABLE oom.big (a BIGINT PRIMARY KEY, s VARCHAR(4000))")
        .await
        .unwrap();
    let mut lost = false;
    for i in 0..40 {
        let insert = format!(
            "INSERT INTO oom.big SELECT {i} * 100000 + ROW_NUMBER() OVER (), REPEAT('x', 4000) FROM TABLE(GENERATOR(20000))"
        );
        if let Err(e) = conn.query_drop(insert).await {
            eprintln!("insert {i}: {e}");
            lost = true;
            break;
        }
    }
    assert!(
        lost,
        "seekdb held 3 GiB of rows in a {SEEKDB_LIMIT_MIB} MiB cgroup"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while common::alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !common::alive(pid),
        "seekdb {pid} still runs after the insert failed"
    );

    d.client()
        .await
        .wait_observer_active(wait("sdb-oom-wait"))
        .await
        .unwrap();
    let s = common::wait_terminal(&d, "sdb-oom-wait").await;
    let e = s.error.clone().expect("the wait failed");
    assert_eq!(e.code, "PROCESS_EXITED", "{s:#?}");
    assert_eq!(e.details.get("pid"), Some(&pid.to_string()), "{e:#?}");
    assert_eq!(
        e.details.get("signal").map(String::as_str),
        Some("9"),
        "{e:#?}"
    );
    assert_eq!(
        e.details.get("oom_killed").map(String::as_str),
        Some("true"),
        "{e:#?}"
    );
    assert!(e.message.contains("OOM killer"), "{e:#?}");
    assert!(cgroup_oom_kills(&cg.dir).is_some_and(|n| n >= 1));
}
