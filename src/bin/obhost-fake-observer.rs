//! `obhost-fake-observer`: a stand-in for OceanBase's `observer` binary.
//!
//! Built only with the `fake-observer` feature (the tests turn it on through the
//! crate's dev-dependency on itself; `cargo build --release --features
//! fake-observer` for `obhostctl demo`): it accepts root with no password, so it
//! must never ship as a product binary.
//!
//! Integration tests and the demo need something obhost can start, wait for, probe over
//! the MySQL protocol and stop, without a real (multi-GB, root-hungry) observer. This
//! binary takes the real command line, behaves like the real process where obhost can
//! see it (pid file, `log/observer.log`, listening ports, daemonizing, signals), and can
//! misbehave on request so failure paths can be tested.
//!
//! Command line (like `observer`): `-p mysql_port` (required), `-P rpc_port`, `-z zone`,
//! `-n cluster_name`, `-c cluster_id`, `-d data_dir`, `-r rs_list`, `-i devname`,
//! `-I ip`, `-o k=v,k=v`, `-l level`, `-N` (stay in the foreground; otherwise the
//! launcher forks a server, waits for its pid file and exits 0). Unknown flags: exit 2.
//! The working directory is the observer home: `run/`, `log/` and `etc/` are created in
//! it, the log is `log/observer.log`, the pid file `run/observer.pid` (not written with
//! `-N`, where the supervisor writes it, unless `FAKE_OBSERVER_PID_FILE` is set).
//!
//! The server listens on 127.0.0.1 only: the MySQL port answers every query with one
//! row `1` (`SET`/`USE`/`BEGIN`/`COMMIT`/`ROLLBACK` get a plain OK), the RPC port accepts
//! and closes connections. Login is `root` with an empty password, or exactly
//! `FAKE_OBSERVER_USER`/`FAKE_OBSERVER_PASSWORD` (mysql_native_password) when both are set;
//! `FAKE_OBSERVER_PASSWORD_FILE` may name a file holding the password instead.
//!
//! Environment:
//! - `FAKE_OBSERVER_PID_FILE=<path>`: pid file location (also enables it with `-N`).
//! - `FAKE_OBSERVER_EXIT_AT_START=<code>`: exit with `code` at once, before forking.
//! - `FAKE_OBSERVER_CRASH_AFTER_MS=<n>`: exit 134 n ms after listening (or after start
//!   if it never listens), leaving the pid file behind.
//! - `FAKE_OBSERVER_NEVER_LISTEN=1`: never open the ports.
//! - `FAKE_OBSERVER_LISTEN_DELAY_MS=<n>`: wait n ms before listening.
//! - `FAKE_OBSERVER_IGNORE_SIGTERM=1`: log SIGTERM and carry on.
//! - `FAKE_OBSERVER_DIE_OF_SIGKILL_ON_TERM=1`: on SIGTERM, SIGKILL itself (as the real
//!   observer does).
//! - `FAKE_OBSERVER_ALLOC_MIB=<n>`: once the server runs (after daemonizing and writing
//!   its pid file; at once with `-N`), allocate n MiB, write to every page so it is
//!   really resident, and keep it while running. In a memory cgroup with a smaller limit
//!   the kernel's OOM killer kills it, as it kills an observer whose memory_limit does
//!   not fit.
//!
//! SIGTERM/SIGINT otherwise: log, remove the pid file (if it still holds our pid), exit 0.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::exit;
use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, dup2_stderr, dup2_stdin, dup2_stdout, fork, getpid, setsid};
use opensrv_mysql::ErrorKind::ER_NOT_SUPPORTED_YET;
use opensrv_mysql::{
    AsyncMysqlIntermediary, AsyncMysqlShim, Column, ColumnFlags, ColumnType, InitWriter,
    OkResponse, ParamParser, QueryResultWriter, StatementMetaWriter,
};
use sha1::{Digest, Sha1};
use tokio::io::AsyncWrite;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

/// The real observer's flags; only `-p` is required (a restart passes nothing else).
#[derive(Parser, Debug)]
#[command(
    name = "obhost-fake-observer",
    about = "Stand-in for OceanBase's observer"
)]
struct Args {
    #[arg(short = 'p', value_parser = clap::value_parser!(u16).range(1025..))]
    mysql_port: u16,
    #[arg(short = 'P', value_parser = clap::value_parser!(u16).range(1025..))]
    rpc_port: Option<u16>,
    #[arg(short = 'z')]
    zone: Option<String>,
    #[arg(short = 'n')]
    cluster_name: Option<String>,
    #[arg(short = 'c', value_parser = clap::value_parser!(u32).range(1..))]
    cluster_id: Option<u32>,
    #[arg(short = 'd')]
    data_dir: Option<String>,
    #[arg(short = 'r')]
    rs_list: Option<String>,
    #[arg(short = 'i')]
    devname: Option<String>,
    #[arg(short = 'I')]
    ip: Option<String>,
    #[arg(short = 'o')]
    opts: Option<String>,
    #[arg(short = 'l')]
    level: Option<String>,
    /// Do not daemonize.
    #[arg(short = 'N')]
    no_daemonize: bool,
}

/// Fault modes and login, read once from the environment before forking.
#[derive(Clone, Debug)]
struct Faults {
    crash_after: Option<Duration>,
    never_listen: bool,
    listen_delay: Option<Duration>,
    ignore_sigterm: bool,
    sigkill_on_term: bool,
    creds: (String, String),
}

/// Logs at INFO, in OceanBase's line format (`[date time] LEVEL [MODULE] ...`),
/// so obhostd reads the stand-in's log as it reads a real observer's.
fn log(msg: &str) {
    log_at("INFO", msg);
}

/// Logs a failure at ERROR, as the real observer logs why it stops.
fn log_error(msg: &str) {
    log_at("ERROR", msg);
}

fn log_at(level: &str, msg: &str) {
    let now = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
    let stamp = now.trim_end_matches('Z').replacen('T', " ", 1);
    let line = format!("[{stamp}] {level} [SERVER] [{}] {msg}\n", getpid());
    let res = OpenOptions::new()
        .create(true)
        .append(true)
        .open("log/observer.log");
    if let Err(e) = res.and_then(|mut f| f.write_all(line.as_bytes())) {
        eprintln!("fake observer: cannot write log/observer.log: {e}");
    }
}

/// Log, tell stderr, and exit with `code`.
fn die(code: i32, msg: &str) -> ! {
    log_error(msg);
    eprintln!("fake observer: {msg}");
    exit(code)
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

fn env_num<T: std::str::FromStr>(name: &str) -> Option<T> {
    let v = std::env::var(name).ok()?;
    match v.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => die(2, &format!("{name}={v:?} is not a valid number")),
    }
}

/// The expected password: FAKE_OBSERVER_PASSWORD, or the first line of the file
/// FAKE_OBSERVER_PASSWORD_FILE names (so a test can keep the password out of
/// everything obhostd stores, the observer's environment included).
fn expected_password() -> Result<String, std::env::VarError> {
    if let Ok(path) = std::env::var("FAKE_OBSERVER_PASSWORD_FILE") {
        return match std::fs::read_to_string(&path) {
            Ok(text) => Ok(text.lines().next().unwrap_or("").to_string()),
            Err(e) => die(2, &format!("FAKE_OBSERVER_PASSWORD_FILE {path:?}: {e}")),
        };
    }
    std::env::var("FAKE_OBSERVER_PASSWORD")
}

fn read_faults() -> Faults {
    let creds = match (std::env::var("FAKE_OBSERVER_USER"), expected_password()) {
        (Ok(u), Ok(p)) => (u, p),
        (Err(_), Err(_)) => ("root".to_string(), String::new()),
        _ => die(
            2,
            "FAKE_OBSERVER_USER and FAKE_OBSERVER_PASSWORD must be set together",
        ),
    };
    Faults {
        crash_after: env_num("FAKE_OBSERVER_CRASH_AFTER_MS").map(Duration::from_millis),
        never_listen: env_flag("FAKE_OBSERVER_NEVER_LISTEN"),
        listen_delay: env_num("FAKE_OBSERVER_LISTEN_DELAY_MS").map(Duration::from_millis),
        ignore_sigterm: env_flag("FAKE_OBSERVER_IGNORE_SIGTERM"),
        sigkill_on_term: env_flag("FAKE_OBSERVER_DIE_OF_SIGKILL_ON_TERM"),
        creds,
    }
}

/// Writes "<pid>\n" to `path` atomically: temp file in the same directory, fsync, rename.
fn write_pid_file(path: &Path, pid: Pid) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".observer.pid.tmp.{pid}"));
    let mut f = File::create(&tmp)?;
    f.write_all(format!("{pid}\n").as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

fn pid_file_holds(path: &Path, pid: Pid) -> bool {
    fs::read_to_string(path).is_ok_and(|s| s.trim() == pid.to_string())
}

fn main() {
    let args = Args::parse(); // exits 2 with clap's message on unknown flags
    for dir in ["run", "log", "etc"] {
        if let Err(e) = fs::create_dir_all(dir) {
            eprintln!("fake observer: cannot create {dir}/ in the working directory: {e}");
            exit(1);
        }
    }
    let argv: Vec<String> = std::env::args().collect();
    log(&format!("fake observer starting: {argv:?}"));
    log(&format!("parsed arguments: {args:?}"));
    if let Some(code) = env_num::<i32>("FAKE_OBSERVER_EXIT_AT_START") {
        die(code, &format!("exiting at start with code {code} as asked"));
    }
    let faults = read_faults();
    let env_pid_file = std::env::var_os("FAKE_OBSERVER_PID_FILE").map(PathBuf::from);
    let pid_file = if args.no_daemonize {
        env_pid_file // the supervisor writes it
    } else {
        let pid_file = env_pid_file.unwrap_or_else(|| PathBuf::from("run/observer.pid"));
        // SAFETY: single-threaded here (no runtime yet), so fork is sound.
        match unsafe { fork() } {
            Err(e) => die(1, &format!("fork failed: {e}")),
            Ok(ForkResult::Parent { child }) => wait_for_server(child, &pid_file),
            Ok(ForkResult::Child) => {
                if let Err(e) = setsid() {
                    die(1, &format!("setsid failed: {e}"));
                }
                detach_stdio();
                Some(pid_file)
            }
        }
    };
    if let Some(path) = &pid_file {
        if let Err(e) = write_pid_file(path, getpid()) {
            die(1, &format!("cannot write pid file {}: {e}", path.display()));
        }
        log(&format!("wrote pid file {}", path.display()));
    }
    let _held = env_num::<usize>("FAKE_OBSERVER_ALLOC_MIB").map(hold_memory);
    println!(
        "fake observer: server pid {}, mysql port {}",
        getpid(),
        args.mysql_port
    );
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => die(1, &format!("cannot start the async runtime: {e}")),
    };
    let (code, clean) = rt.block_on(serve(args, faults));
    if let Some(path) = pid_file.filter(|p| clean && pid_file_holds(p, getpid()))
        && let Err(e) = fs::remove_file(&path)
    {
        log(&format!("cannot remove pid file {}: {e}", path.display()));
    }
    log(&format!("exiting with code {code}"));
    exit(code)
}

/// Allocates `mib` MiB and writes one byte in every page, so the memory is
/// resident (an untouched allocation is only address space, which no limit sees).
fn hold_memory(mib: usize) -> Vec<u8> {
    log(&format!(
        "allocating {mib} MiB as asked (FAKE_OBSERVER_ALLOC_MIB)"
    ));
    let Some(bytes) = mib.checked_mul(1 << 20) else {
        die(2, &format!("FAKE_OBSERVER_ALLOC_MIB={mib} is too large"));
    };
    let mut mem = vec![0u8; bytes];
    for page in mem.chunks_mut(4096) {
        page[0] = 1;
    }
    std::hint::black_box(&mem);
    log(&format!("holding {mib} MiB"));
    mem
}

/// The launcher: exits 0 once the child's pid is in the pid file, 1 if the child died first.
fn wait_for_server(child: Pid, pid_file: &Path) -> ! {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if pid_file_holds(pid_file, child) {
            println!("fake observer: started server process {child}");
            exit(0)
        }
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(status) => die(
                1,
                &format!("server process died before writing its pid file: {status:?}"),
            ),
            Err(e) => die(1, &format!("cannot wait for server process {child}: {e}")),
        }
        if Instant::now() > deadline {
            die(
                1,
                &format!(
                    "server process {child} wrote no pid file {} in 30s",
                    pid_file.display()
                ),
            );
        }
        // Short: the launcher's exit is on every start's critical path, and a
        // coarse poll would be counted as the stand-in's time-to-ready.
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Points stdin/stdout/stderr at /dev/null so the daemon keeps no pipe of its caller open.
fn detach_stdio() {
    let res = OpenOptions::new().read(true).write(true).open("/dev/null");
    let res = res.and_then(|null| {
        dup2_stdin(&null)?;
        dup2_stdout(&null)?;
        Ok(dup2_stderr(&null)?)
    });
    if let Err(e) = res {
        log(&format!("cannot point stdio at /dev/null: {e}"));
    }
}

enum Event {
    Listening,
    BindFailed(String),
}

/// Runs the server until a signal, a crash or a bind failure; returns (exit code, clean).
async fn serve(args: Args, faults: Faults) -> (i32, bool) {
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => return fatal(format!("cannot install signal handlers: {e}")),
    };
    let (tx, mut rx) = mpsc::channel(4);
    let mut crash_at = None;
    if faults.never_listen {
        log("not listening, as asked (FAKE_OBSERVER_NEVER_LISTEN)");
        crash_at = faults.crash_after.map(|d| Instant::now() + d);
    } else {
        tokio::spawn(listen(args.mysql_port, args.rpc_port, faults.clone(), tx));
    }
    loop {
        let crash = async {
            match crash_at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term.recv() => {
                if faults.sigkill_on_term {
                    log("got SIGTERM; killing myself with SIGKILL as asked");
                    let _ = kill(getpid(), Signal::SIGKILL);
                } else if faults.ignore_sigterm {
                    log("got SIGTERM; ignoring it as asked");
                } else {
                    log("got SIGTERM; shutting down");
                    return (0, true);
                }
            }
            _ = int.recv() => {
                log("got SIGINT; shutting down");
                return (0, true);
            }
            Some(ev) = rx.recv() => match ev {
                Event::Listening => crash_at = faults.crash_after.map(|d| Instant::now() + d),
                Event::BindFailed(msg) => return fatal(msg),
            },
            () = crash => {
                log_error("crashing as asked (FAKE_OBSERVER_CRASH_AFTER_MS)");
                return (134, false);
            }
        }
    }
}

fn fatal(msg: String) -> (i32, bool) {
    log_error(&msg);
    eprintln!("fake observer: {msg}");
    (1, true)
}

async fn bind(port: u16, what: &str) -> Result<TcpListener, String> {
    TcpListener::bind(("127.0.0.1", port)).await.map_err(|e| {
        // OceanBase's OB_SERVER_LISTEN_ERROR, as the real observer reports it.
        format!("[errcode=-4004] cannot listen on 127.0.0.1:{port} ({what} port {port}): {e}")
    })
}

async fn listen(mysql_port: u16, rpc_port: Option<u16>, faults: Faults, tx: mpsc::Sender<Event>) {
    if let Some(delay) = faults.listen_delay {
        log(&format!("waiting {delay:?} before listening, as asked"));
        tokio::time::sleep(delay).await;
    }
    let mysql = match bind(mysql_port, "mysql").await {
        Ok(l) => l,
        Err(msg) => return drop(tx.send(Event::BindFailed(msg)).await),
    };
    if let Some(port) = rpc_port {
        match bind(port, "rpc").await {
            Ok(rpc) => drop(tokio::spawn(async move {
                while let Ok((conn, _)) = rpc.accept().await {
                    drop(conn);
                }
            })),
            Err(msg) => return drop(tx.send(Event::BindFailed(msg)).await),
        }
    }
    log(&format!(
        "listening on 127.0.0.1:{mysql_port} (mysql), rpc port {rpc_port:?}"
    ));
    let _ = tx.send(Event::Listening).await;
    loop {
        let Ok((conn, peer)) = mysql.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        // Nagle off, as on a real server: small replies must not wait ~40 ms
        // for a delayed ACK (that would show up as probe latency in obhostd).
        let _ = conn.set_nodelay(true);
        let backend = Backend {
            salt: new_salt(),
            creds: faults.creds.clone(),
        };
        tokio::spawn(async move {
            let (r, w) = conn.into_split();
            if let Err(e) = AsyncMysqlIntermediary::run_on(backend, r, w).await {
                log(&format!("mysql connection from {peer} ended: {e}"));
            }
        });
    }
}

/// 20 random printable bytes (no NUL, no '$'), as MySQL servers send.
fn new_salt() -> [u8; 20] {
    let mut salt = [0u8; 20];
    if let Err(e) = File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut salt)) {
        log(&format!(
            "cannot read /dev/urandom ({e}); using a fixed salt"
        ));
    }
    salt.map(|b| match b % 94 + 33 {
        b'$' => b'%',
        c => c,
    })
}

struct Backend {
    salt: [u8; 20],
    creds: (String, String),
}

type Res = io::Result<()>;
type Writer<'a, W> = QueryResultWriter<'a, W>;

#[tonic::async_trait]
impl<W: AsyncWrite + Send + Unpin> AsyncMysqlShim<W> for Backend {
    type Error = io::Error;

    fn version(&self) -> String {
        "5.7.25-OceanBase_CE-v4.3.5.0-fake".to_string()
    }

    fn salt(&self) -> [u8; 20] {
        self.salt
    }

    async fn authenticate(&self, plugin: &str, user: &[u8], salt: &[u8], auth: &[u8]) -> bool {
        let (want_user, password) = &self.creds;
        let ok = plugin == "mysql_native_password"
            && user == want_user.as_bytes()
            && if password.is_empty() {
                auth.is_empty()
            } else {
                auth == native_scramble(salt, password.as_bytes())
            };
        if !ok {
            log(&format!(
                "refused login of user {:?}",
                String::from_utf8_lossy(user)
            ));
        }
        ok
    }

    async fn on_prepare<'a>(&'a mut self, _: &'a str, w: StatementMetaWriter<'a, W>) -> Res {
        w.error(ER_NOT_SUPPORTED_YET, b"prepared statements".as_slice())
            .await
    }

    async fn on_execute<'a>(&'a mut self, _: u32, _: ParamParser<'a>, w: Writer<'a, W>) -> Res {
        w.error(ER_NOT_SUPPORTED_YET, b"prepared statements".as_slice())
            .await
    }

    async fn on_close(&mut self, _: u32) {}

    async fn on_init<'a>(&'a mut self, _: &'a str, w: InitWriter<'a, W>) -> Res {
        w.ok().await // `USE db` and logins naming a database
    }

    async fn on_query<'a>(&'a mut self, sql: &'a str, results: Writer<'a, W>) -> Res {
        let verb = sql.split_whitespace().next().map(str::to_ascii_lowercase);
        if let Some("set" | "use" | "begin" | "commit" | "rollback") = verb.as_deref() {
            return results.completed(OkResponse::default()).await;
        }
        let cols = [Column {
            table: String::new(),
            column: "1".to_string(),
            coltype: ColumnType::MYSQL_TYPE_LONGLONG,
            colflags: ColumnFlags::NOT_NULL_FLAG,
        }];
        let mut rows = results.start(&cols).await?;
        rows.write_row(std::iter::once(1i64)).await?;
        rows.finish().await
    }
}

/// mysql_native_password: SHA1(pw) XOR SHA1(salt + SHA1(SHA1(pw))).
fn native_scramble(salt: &[u8], password: &[u8]) -> [u8; 20] {
    let stage1: [u8; 20] = Sha1::digest(password).into();
    let token: [u8; 20] = Sha1::new()
        .chain_update(salt)
        .chain_update(Sha1::digest(stage1))
        .finalize()
        .into();
    std::array::from_fn(|i| stage1[i] ^ token[i])
}
