//! Starting a program the way a production host needs it started.
//!
//! - No shell: argv is passed as is, so no value can be read as shell syntax.
//! - Its own session (setsid): not in obhostd's process group, so a signal to the
//!   daemon's group, a terminal hangup or a restart of obhostd never reaches it.
//! - As the requested user, with that user's supplementary groups.
//! - A clean environment: PATH, HOME, USER, LOGNAME, then what was asked for.
//!   Nothing of the daemon's own environment leaks through: not NOTIFY_SOCKET
//!   (the child would speak for obhostd to systemd), not WATCHDOG_*, not a token.
//! - stdout and stderr appended to a file, never a pipe: a pipe would break (and
//!   SIGPIPE the observer) the moment obhostd restarts.
//! - Resource limits set for the child, within what this daemon may grant.
//! - Under systemd, born in a transient scope of its own ([`Scope`]): the
//!   child waits on a pipe, before exec, until systemd has moved it there (as
//!   `systemd-run --scope` does), so nothing it forks is ever in
//!   `obhostd.service`'s cgroup, where `systemctl kill obhostd`, a watchdog
//!   restart or an OOM kill of the unit would reach it.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::unistd::{Gid, Uid, User};
use serde::{Deserialize, Serialize};

use super::identity::Identity;
use super::systemd::Systemd;

/// Variables a child must never get from a request either.
const FORBIDDEN_ENV: &[&str] = &[
    "NOTIFY_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
];

pub fn is_forbidden_env(key: &str) -> bool {
    FORBIDDEN_ENV.contains(&key) || key.starts_with("WATCHDOG_")
}

/// Variables that change what the dynamic loader and libc load or where they
/// read from (glibc's "unsecure" list, which it ignores for setuid programs for
/// the same reason). obhostd sets `LD_LIBRARY_PATH` itself for the observer; a
/// request may not.
const LOADER_ENV: &[&str] = &[
    "GCONV_PATH",
    "GETCONF_DIR",
    "GLIBC_TUNABLES",
    "HOSTALIASES",
    "LOCALDOMAIN",
    "LOCPATH",
    "MALLOC_TRACE",
    "NIS_PATH",
    "NLSPATH",
    "RESOLV_HOST_CONF",
    "RES_OPTIONS",
];

pub fn is_loader_env(key: &str) -> bool {
    key.starts_with("LD_") || LOADER_ENV.contains(&key)
}

/// An OS user resolved to ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("user '{0}' does not exist on this host; create it (useradd {0}) or name another user")]
    NoSuchUser(String),
    #[error(
        "obhostd runs as uid {daemon_uid} and cannot start processes as '{user}'; run obhostd as root (the systemd unit does) or run the process as uid {daemon_uid}"
    )]
    NotPermitted { user: String, daemon_uid: u32 },
    #[error("cannot open output file '{path}': {cause}")]
    Output {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "working dir '{}' is missing or reached through a symbolic link; create it as a real dir",
        .0.display()
    )]
    Cwd(PathBuf),
    #[error(
        "cannot start '{program}' in its own scope {unit}: {cause}. Nothing was started: in obhostd's own cgroup it would die with obhostd.service (systemctl kill, a watchdog restart). See journalctl -u {unit} and systemctl status obhost.slice"
    )]
    Scope {
        program: PathBuf,
        unit: String,
        cause: String,
    },
    #[error("cannot start '{program}': {cause}")]
    Exec {
        program: PathBuf,
        cause: std::io::Error,
    },
}

impl RunAs {
    pub fn lookup(name: &str) -> Result<RunAs, SpawnError> {
        let user = User::from_name(name)
            .ok()
            .flatten()
            .ok_or_else(|| SpawnError::NoSuchUser(name.to_string()))?;
        let cname = CString::new(name).map_err(|_| SpawnError::NoSuchUser(name.to_string()))?;
        let groups = nix::unistd::getgrouplist(&cname, user.gid)
            .map(|g| g.into_iter().map(Gid::as_raw).collect())
            .unwrap_or_else(|_| vec![user.gid.as_raw()]);
        Ok(RunAs {
            name: name.to_string(),
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            groups,
            home: user.dir,
        })
    }

    /// [`RunAs::lookup`] on the blocking pool: the passwd and group lookups go
    /// through NSS, which may ask a directory server.
    pub async fn lookup_async(name: &str) -> Result<RunAs, SpawnError> {
        let owned = name.to_string();
        tokio::task::spawn_blocking(move || RunAs::lookup(&owned))
            .await
            .unwrap_or_else(|_| Err(SpawnError::NoSuchUser(name.to_string())))
    }

    /// The user of `uid` (the owner of a home).
    pub fn of_uid(uid: u32) -> Result<RunAs, SpawnError> {
        let user = User::from_uid(Uid::from_raw(uid))
            .ok()
            .flatten()
            .ok_or_else(|| SpawnError::NoSuchUser(format!("uid {uid}")))?;
        RunAs::lookup(&user.name)
    }

    /// The user obhostd itself runs as.
    pub fn current() -> Result<RunAs, SpawnError> {
        let uid = Uid::effective();
        let user = User::from_uid(uid)
            .ok()
            .flatten()
            .ok_or_else(|| SpawnError::NoSuchUser(uid.to_string()))?;
        RunAs::lookup(&user.name)
    }

    /// Whether this daemon can start processes as this user.
    pub fn check_permitted(&self) -> Result<(), SpawnError> {
        let me = Uid::effective();
        if me.is_root() || me.as_raw() == self.uid {
            Ok(())
        } else {
            Err(SpawnError::NotPermitted {
                user: self.name.clone(),
                daemon_uid: me.as_raw(),
            })
        }
    }
}

/// Resource limits for a child; `None` leaves the inherited limit. `u64::MAX`
/// means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub nofile: Option<u64>,
    pub nproc: Option<u64>,
    pub core: Option<u64>,
    pub stack: Option<u64>,
}

impl Limits {
    fn each(&self) -> [(Resource, Option<u64>); 4] {
        [
            (Resource::RLIMIT_NOFILE, self.nofile),
            (Resource::RLIMIT_NPROC, self.nproc),
            (Resource::RLIMIT_CORE, self.core),
            (Resource::RLIMIT_STACK, self.stack),
        ]
    }

    /// What the child will really get: with CAP_SYS_RESOURCE (root, normally)
    /// limits may be raised; without it (an unprivileged daemon, or root in a
    /// container that dropped the capability) only up to the daemon's own hard
    /// limit. Prepare checks these numbers, not the requested ones.
    pub fn effective(&self) -> Limits {
        let can_raise = has_cap_sys_resource();
        let clamp = |res: Resource, want: Option<u64>| -> Option<u64> {
            let want = want?;
            if can_raise {
                return Some(want);
            }
            let hard = getrlimit(res).map(|(_, h)| h).unwrap_or(want);
            Some(want.min(hard))
        };
        Limits {
            nofile: clamp(Resource::RLIMIT_NOFILE, self.nofile),
            nproc: clamp(Resource::RLIMIT_NPROC, self.nproc),
            core: clamp(Resource::RLIMIT_CORE, self.core),
            stack: clamp(Resource::RLIMIT_STACK, self.stack),
        }
    }
}

/// Whether this process may raise hard resource limits (CAP_SYS_RESOURCE, bit 24
/// of CapEff in /proc/self/status).
fn has_cap_sys_resource() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))?
                .trim()
                .to_string();
            u64::from_str_radix(&hex, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

/// Where a started program's stdout and stderr go.
#[derive(Debug)]
pub enum Output {
    /// Appended to this file, created (with its dir) owned by the program's
    /// user, never through a link (see [`crate::confined`]).
    Append(PathBuf),
    /// An already open file (e.g. an anonymous temp file the caller reads back).
    File(std::fs::File),
}

/// The transient scope a program is born in, when systemd is PID 1.
#[derive(Debug, Clone)]
pub struct Scope {
    pub systemd: Systemd,
    /// e.g. `obhost-observer-home-admin-oceanbase.scope`
    /// ([`super::systemd::scope_name`]).
    pub unit: String,
    /// What `systemctl status` says it is: the home and the step.
    pub description: String,
}

/// Everything needed to start one program.
#[derive(Debug)]
pub struct SpawnSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    pub user: RunAs,
    pub env: BTreeMap<String, String>,
    pub output: Output,
    pub limits: Limits,
    /// Its own scope (systemd PID 1), or None: obhostd's cgroup.
    pub scope: Option<Scope>,
}

impl SpawnSpec {
    /// The command line as a person would type it (for records and logs).
    pub fn display(&self) -> String {
        std::iter::once(self.program.display().to_string())
            .chain(self.args.iter().cloned())
            .map(|a| {
                if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"\\$`".contains(c))
                {
                    format!("'{}'", a.replace('\'', "'\\''"))
                } else {
                    a
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn open_output(output: &Output, user: &RunAs) -> Result<std::fs::File, SpawnError> {
    let path = match output {
        Output::File(f) => {
            return f.try_clone().map_err(|cause| SpawnError::Output {
                path: PathBuf::from("(temp file)"),
                cause,
            });
        }
        Output::Append(path) => path,
    };
    let err = |cause| SpawnError::Output {
        path: path.to_path_buf(),
        cause,
    };
    let owner = Some((user.uid, user.gid));
    if let Some(dir) = path.parent() {
        crate::confined::create_dirs(dir, owner, 0o750).map_err(err)?;
    }
    crate::confined::open_append(path, owner, 0o640).map_err(err)
}

/// Marks every descriptor above stderr close-on-exec, so that exec drops them.
/// (Not closed here: std's own exec-error pipe must survive until exec.)
/// close_range(2) with CLOSE_RANGE_CLOEXEC where the kernel has it (5.11+);
/// otherwise fcntl on each fd up to the soft limit. Async-signal-safe: raw
/// syscalls only.
fn close_inherited_fds() {
    const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;
    // SAFETY: close_range takes two fd numbers and flags, and touches no memory.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    if r == 0 {
        return;
    }
    // SAFETY: getrlimit writes into the struct we own; close ignores bad fds.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur.min(1 << 20) as i32
        } else {
            1024
        };
        for fd in 3..max {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
}

/// The child's ends of the scope handshake: it writes its pid to `pid`, then
/// execs only after reading `b'y'` from `go`.
struct Gate {
    pid: OwnedFd,
    go: OwnedFd,
}

/// What the child reads from the gate when it must not exec.
const GATE_REFUSED: i32 = libc::ECANCELED;

/// In the child, between fork and exec: says its pid, then waits for leave to
/// exec (systemd has moved it into its scope). Raw syscalls only.
fn wait_at_gate(pid_w: i32, go_r: i32) -> std::io::Result<()> {
    // SAFETY: getpid, write and read on fds we own, into a stack buffer.
    unsafe {
        let pid = (libc::getpid() as u32).to_ne_bytes();
        if libc::write(pid_w, pid.as_ptr().cast(), pid.len()) != pid.len() as isize {
            return Err(std::io::Error::from_raw_os_error(GATE_REFUSED));
        }
        let mut answer = 0u8;
        loop {
            let n = libc::read(go_r, (&mut answer as *mut u8).cast(), 1);
            if n == 1 && answer == b'y' {
                return Ok(());
            }
            if n == -1 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            return Err(std::io::Error::from_raw_os_error(GATE_REFUSED));
        }
    }
}

/// Starts the program (off the runtime's threads) and returns its identity;
/// with a [`Scope`], only once systemd has put it in the scope. The caller
/// must not wait for it: the [`super::Reaper`] does.
pub async fn start(spec: SpawnSpec) -> Result<Identity, SpawnError> {
    let panicked = |e: tokio::task::JoinError| SpawnError::Exec {
        program: PathBuf::from("(spawn)"),
        cause: std::io::Error::other(e.to_string()),
    };
    let Some(scope) = spec.scope.clone() else {
        return tokio::task::spawn_blocking(move || spawn(&spec))
            .await
            .map_err(panicked)?;
    };
    let pipe = || {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| SpawnError::Exec {
            program: spec.program.clone(),
            cause: e.into(),
        })
    };
    let (pid_r, pid_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    let program = spec.program.clone();
    let spawning = tokio::task::spawn_blocking(move || {
        let gate = Gate {
            pid: pid_w,
            go: go_r,
        };
        spawn_gated(&spec, Some(gate))
    });
    // The pid comes from the child itself, before std hands it to us (spawn
    // returns only after exec). Nothing: it failed before the fork.
    let pid = tokio::task::spawn_blocking(move || {
        let mut b = [0u8; 4];
        let mut f = std::fs::File::from(pid_r);
        std::io::Read::read_exact(&mut f, &mut b)
            .ok()
            .map(|_| u32::from_ne_bytes(b))
    })
    .await
    .map_err(panicked)?;
    let placed = match pid {
        Some(pid) => {
            let placed = scope
                .systemd
                .start_scope(&scope.unit, pid, &scope.description)
                .await;
            let answer: &[u8] = if placed.is_ok() { b"y" } else { b"n" };
            // A failed write leaves the child reading EOF: it does not exec.
            let _ = nix::unistd::write(&go_w, answer);
            placed
        }
        None => Ok(()),
    };
    drop(go_w);
    let spawned = spawning.await;
    // A refused scope is the answer whatever the spawn says: the child never
    // exec'd (it read 'n', or EOF), and how std reports that is beside it.
    if let Err(e) = placed {
        return Err(SpawnError::Scope {
            program,
            unit: scope.unit,
            cause: e.to_string(),
        });
    }
    let id = spawned.map_err(panicked)??;
    tracing::debug!(pid = id.pid, unit = %scope.unit, "in its own scope");
    Ok(id)
}

/// Starts the program in obhostd's own cgroup (tools obhostd waits for).
pub fn spawn(spec: &SpawnSpec) -> Result<Identity, SpawnError> {
    spawn_gated(spec, None)
}

fn spawn_gated(spec: &SpawnSpec, gate: Option<Gate>) -> Result<Identity, SpawnError> {
    spec.user.check_permitted()?;
    if !crate::confined::is_dir(&spec.cwd) {
        return Err(SpawnError::Cwd(spec.cwd.clone()));
    }
    let mut cmd = command(spec)?;
    let gate_fds = gate.as_ref().map(|g| (g.pid.as_raw_fd(), g.go.as_raw_fd()));
    enter_as_user(&mut cmd, spec, gate_fds)?;
    // When the child fails before exec, std waits for it and asserts the wait
    // worked; obhostd's reaper (waitpid(-1)) may have taken it first. That is
    // a failed start, not a bug: say so instead of unwinding.
    let spawned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cmd.spawn()));
    let child = match spawned {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::other(
            "the child failed before it could run the program (its setup as the user: limits, user switch or working dir), and was reaped before its error could be read; obhostd's log has the spawn",
        )),
    }
    .map_err(|cause| SpawnError::Exec {
        program: spec.program.clone(),
        cause,
    })?;
    drop(gate);
    let pid = child.id() as i32;
    // Dropping `child` does not wait or kill; the reaper owns the wait.
    drop(child);
    // Names only for the environment: its values are the request's, and may
    // be secrets.
    tracing::debug!(
        pid,
        user = %spec.user.name,
        uid = spec.user.uid,
        cwd = %spec.cwd.display(),
        env = ?spec.env.keys().filter(|k| !is_forbidden_env(k)).collect::<Vec<_>>(),
        command = %spec.display(),
        "spawned"
    );
    // Read even from a zombie: a launcher that exited at once is still this
    // pid's process until it is reaped. Once reaped, an identity no live
    // process can match still says which pid it was (the launch then takes
    // its start time from the reaper's record of the exit).
    Ok(Identity::of_child(pid).unwrap_or(Identity {
        pid,
        start_ticks: 0,
        boot: 0,
    }))
}

/// The program with its arguments, a clean environment and its output file
/// on stdout and stderr: what is the same whoever runs it.
fn command(spec: &SpawnSpec) -> Result<Command, SpawnError> {
    let out = open_output(&spec.output, &spec.user)?;
    let err_out = out.try_clone().map_err(|cause| SpawnError::Output {
        path: PathBuf::from("(stderr)"),
        cause,
    })?;
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOME", &spec.user.home)
        .env("USER", &spec.user.name)
        .env("LOGNAME", &spec.user.name)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err_out);
    for (k, v) in &spec.env {
        if !is_forbidden_env(k) {
            cmd.env(k, v);
        }
    }
    Ok(cmd)
}

/// What the child does between fork and exec: drops the daemon's
/// descriptors, leaves its session, waits at the gate (when there is one),
/// takes its limits, becomes the user and enters its working dir as that
/// user. Everything it needs is prepared here, before the fork.
fn enter_as_user(
    cmd: &mut Command,
    spec: &SpawnSpec,
    gate_fds: Option<(i32, i32)>,
) -> Result<(), SpawnError> {
    let cwd =
        CString::new(spec.cwd.as_os_str().as_encoded_bytes()).map_err(|_| SpawnError::Exec {
            program: spec.program.clone(),
            cause: std::io::Error::new(std::io::ErrorKind::InvalidInput, "cwd contains a NUL byte"),
        })?;
    let limits = spec.limits.effective().each();
    let switch_user = Uid::effective().as_raw() != spec.user.uid || Uid::effective().is_root();
    let (uid, gid) = (Uid::from_raw(spec.user.uid), Gid::from_raw(spec.user.gid));
    let groups: Vec<Gid> = spec.user.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    // SAFETY: between fork and exec only async-signal-safe calls are allowed.
    // umask, setsid, getpid, write, read, setrlimit, setgroups, setgid, setuid and
    // chdir are plain syscalls, and every value they use was prepared above, so
    // nothing here allocates.
    unsafe {
        cmd.pre_exec(move || {
            // Nothing of the daemon's beyond stdio: a descriptor someone opened
            // without O_CLOEXEC (ours, a library's, or one obhostd inherited)
            // would otherwise live on in the observer for its whole life.
            close_inherited_fds();
            // obhostd runs with umask 077 for its own state; the observer and
            // agent get the usual 022, as when their user starts them.
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
            nix::unistd::setsid()?;
            if let Some((pid_w, go_r)) = gate_fds {
                wait_at_gate(pid_w, go_r)?;
            }
            for (res, value) in limits {
                if let Some(v) = value {
                    setrlimit(res, v, v)?;
                }
            }
            if switch_user {
                nix::unistd::setgroups(&groups)?;
                nix::unistd::setgid(gid)?;
                nix::unistd::setuid(uid)?;
            }
            // Entered as the user, not as root: the dir belongs to the user, who
            // could have swapped it for a link to somewhere only root may go.
            nix::unistd::chdir(cwd.as_c_str())?;
            Ok(())
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Real children: each test spawns /bin/sh or /usr/bin/env and reads what
    //! it wrote about itself. Nothing in this binary reaps children for us
    //! (the daemon's Reaper is not started), so each test reaps its own.
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::Path;
    use std::time::{Duration, Instant};

    use nix::errno::Errno;
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    use nix::unistd::Pid;

    /// Switching users needs root; elsewhere these tests say so and pass.
    fn root() -> bool {
        let root = Uid::effective().is_root();
        if !root {
            eprintln!("SKIPPED: needs root to start processes as another user");
        }
        root
    }

    /// A temp dir anyone may enter, as a user's working dir is.
    fn open_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    fn spec(program: &str, args: &[&str], user: RunAs, dir: &Path) -> SpawnSpec {
        SpawnSpec {
            program: program.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            cwd: dir.to_path_buf(),
            user,
            env: BTreeMap::new(),
            output: Output::Append(dir.join("out.log")),
            limits: Limits::default(),
            scope: None,
        }
    }

    fn sh(script: &str, user: RunAs, dir: &Path) -> SpawnSpec {
        spec("/bin/sh", &["-c", script], user, dir)
    }

    /// Waits for `pid` to end (WNOHANG polls, bounded), reaps it, and returns
    /// what it wrote to `dir`/out.log.
    fn output_of(pid: i32, dir: &Path) -> String {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {}
                Ok(_) | Err(Errno::ECHILD) => break,
                Err(e) => panic!("waitpid {pid}: {e}"),
            }
            assert!(Instant::now() < end, "pid {pid} still runs after 20 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = dir.join("out.log");
        std::fs::read_to_string(&out).unwrap_or_else(|e| panic!("{}: {e}", out.display()))
    }

    fn run(spec: SpawnSpec) -> String {
        let dir = spec.cwd.clone();
        let id = spawn(&spec).expect("spawn");
        output_of(id.pid, &dir)
    }

    fn nobody() -> RunAs {
        RunAs::lookup("nobody").expect("the nobody user")
    }

    #[test]
    fn the_child_runs_as_the_user_with_the_users_groups() {
        if !root() {
            return;
        }
        let dir = open_dir();
        // A supplementary group root does not have, so that the child's
        // groups are the user's and not inherited.
        let user = RunAs {
            groups: [nobody().groups, vec![4242]].concat(),
            ..nobody()
        };
        let out = run(sh("id -u; id -g; id -G", user.clone(), dir.path()));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert_eq!(lines[0], user.uid.to_string(), "uid: {out}");
        assert_eq!(lines[1], user.gid.to_string(), "gid: {out}");
        let mut got: Vec<u32> = lines[2]
            .split_whitespace()
            .map(|g| g.parse().unwrap())
            .collect();
        let mut want = user.groups.clone();
        got.sort_unstable();
        want.sort_unstable();
        want.dedup();
        assert_eq!(got, want, "groups: {out}");
    }

    #[test]
    fn the_child_leads_a_session_and_process_group_of_its_own() {
        let dir = open_dir();
        let me = RunAs::current().unwrap();
        let id = spawn(&sh("cat /proc/$$/stat", me, dir.path())).expect("spawn");
        let out = output_of(id.pid, dir.path());
        // pid (comm) state ppid pgrp session ...
        let after: Vec<&str> = out.rsplit(')').next().unwrap().split_whitespace().collect();
        assert_eq!(after[2], id.pid.to_string(), "process group: {out}");
        assert_eq!(after[3], id.pid.to_string(), "session: {out}");
    }

    #[test]
    fn the_child_gets_a_clean_environment_without_systemds_variables() {
        let dir = open_dir();
        let me = RunAs::current().unwrap();
        let mut s = spec("/usr/bin/env", &[], me.clone(), dir.path());
        s.env = BTreeMap::from([
            ("OB_TENANT".to_string(), "sys".to_string()),
            (
                "NOTIFY_SOCKET".to_string(),
                "/run/systemd/notify".to_string(),
            ),
            ("WATCHDOG_USEC".to_string(), "1000000".to_string()),
            ("LISTEN_FDS".to_string(), "3".to_string()),
        ]);
        let out = run(s);
        let mut got: Vec<&str> = out.lines().collect();
        got.sort_unstable();
        let home = format!("HOME={}", me.home.display());
        let user = format!("USER={}", me.name);
        let logname = format!("LOGNAME={}", me.name);
        let mut want = vec![
            home.as_str(),
            logname.as_str(),
            "OB_TENANT=sys",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            user.as_str(),
        ];
        want.sort_unstable();
        assert_eq!(got, want);
    }

    #[test]
    fn no_descriptor_of_the_daemon_reaches_the_child() {
        let dir = open_dir();
        // Opened without O_CLOEXEC, as a careless library would.
        let leaked = nix::fcntl::open(
            "/dev/null",
            nix::fcntl::OFlag::O_RDONLY,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        let me = RunAs::current().unwrap();
        let out = run(sh("readlink /proc/$$/fd/0; ls /proc/$$/fd", me, dir.path()));
        let fd = leaked.as_raw_fd();
        drop(leaked);
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some("/dev/null"), "stdin: {out}");
        let fds: Vec<i32> = lines.map(|l| l.parse().unwrap()).collect();
        assert!(!fds.contains(&fd), "fd {fd} leaked into the child: {fds:?}");
    }

    #[test]
    fn limits_are_set_in_the_child() {
        let dir = open_dir();
        let me = RunAs::current().unwrap();
        let mut s = sh("ulimit -n", me, dir.path());
        s.limits.nofile = Some(777);
        assert_eq!(run(s).trim(), "777");
    }

    #[test]
    fn stdout_and_stderr_are_appended_to_a_file_the_user_owns() {
        if !root() {
            return;
        }
        let dir = open_dir();
        let user = nobody();
        let log = dir.path().join("log/out.log");
        for (i, script) in ["echo one", "echo two >&2"].into_iter().enumerate() {
            let mut s = sh(script, user.clone(), dir.path());
            s.output = Output::Append(log.clone());
            let id = spawn(&s).expect("spawn");
            output_of(id.pid, dir.path().join("log").as_path());
            assert_eq!(
                std::fs::read_to_string(&log).unwrap(),
                ["one\n", "one\ntwo\n"][i]
            );
        }
        let file = std::fs::metadata(&log).unwrap();
        assert_eq!((file.uid(), file.gid()), (user.uid, user.gid));
        assert_eq!(file.mode() & 0o777, 0o640);
        let logs = std::fs::metadata(dir.path().join("log")).unwrap();
        assert_eq!(logs.uid(), user.uid);
        assert_eq!(logs.mode() & 0o777, 0o750);
    }

    /// The dir is entered after the switch to the user: one only root may
    /// enter is refused, not entered with root's rights.
    #[test]
    fn the_working_dir_is_entered_as_the_user() {
        if !root() {
            return;
        }
        let dir = open_dir();
        let private = dir.path().join("root-only");
        std::fs::create_dir(&private).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        let mut s = sh("echo entered", nobody(), &private);
        s.output = Output::Append(dir.path().join("out.log"));
        match spawn(&s) {
            Err(SpawnError::Exec { cause, .. }) => {
                assert_eq!(
                    cause.kind(),
                    std::io::ErrorKind::PermissionDenied,
                    "{cause}"
                )
            }
            other => panic!("entered a dir only root may enter: {other:?}"),
        }
        let s = sh("pwd -P", nobody(), dir.path());
        let real = std::fs::canonicalize(dir.path()).unwrap();
        assert_eq!(run(s).trim(), real.display().to_string());
    }

    #[test]
    fn a_missing_working_dir_starts_nothing() {
        let dir = open_dir();
        let me = RunAs::current().unwrap();
        let mut s = sh("echo started", me, dir.path());
        s.cwd = dir.path().join("missing");
        assert!(matches!(spawn(&s), Err(SpawnError::Cwd(p)) if p == s.cwd));
        assert!(!dir.path().join("out.log").exists(), "output was opened");
    }

    /// The scope handshake without systemd: the child says its pid, then
    /// execs only on `y`.
    #[test]
    fn the_child_execs_only_when_the_gate_says_yes() {
        for answer in [b'y', b'n'] {
            let dir = open_dir();
            let me = RunAs::current().unwrap();
            let s = sh("echo ran", me, dir.path());
            let (pid_r, pid_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
            let (go_r, go_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
            let spawning = std::thread::spawn(move || {
                spawn_gated(
                    &s,
                    Some(Gate {
                        pid: pid_w,
                        go: go_r,
                    }),
                )
            });
            let mut b = [0u8; 4];
            std::io::Read::read_exact(&mut std::fs::File::from(pid_r), &mut b).unwrap();
            let pid = u32::from_ne_bytes(b) as i32;
            // Not yet: the child waits at the gate.
            let before = std::fs::read_to_string(dir.path().join("out.log")).unwrap();
            assert_eq!(before, "", "ran before the gate said yes");
            nix::unistd::write(&go_w, &[answer]).unwrap();
            let spawned = spawning.join().unwrap();
            let out = output_of(pid, dir.path());
            if answer == b'y' {
                assert_eq!(spawned.expect("spawned").pid, pid);
                assert_eq!(out, "ran\n");
            } else {
                match spawned {
                    Err(SpawnError::Exec { cause, .. }) => {
                        assert_eq!(cause.raw_os_error(), Some(GATE_REFUSED), "{cause}")
                    }
                    other => panic!("exec'd without leave: {other:?}"),
                }
                assert_eq!(out, "", "the program ran");
            }
        }
    }

    #[test]
    fn the_command_line_is_shown_quoted_as_a_shell_would_need() {
        let dir = open_dir();
        let me = RunAs::current().unwrap();
        let s = spec(
            "/home/admin/bin/observer",
            &["-p", "2881", "it's", "", "a b", "$HOME"],
            me,
            dir.path(),
        );
        assert_eq!(
            s.display(),
            r#"/home/admin/bin/observer -p 2881 'it'\''s' '' 'a b' '$HOME'"#
        );
    }
}
