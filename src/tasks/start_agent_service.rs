//! "Start ocp agent service" (START_AGENT_SERVICE).
//!
//! Either a systemd unit, started over D-Bus and judged by its start job's
//! result and then its ActiveState (a unit whose job is done but which died at
//! once is a failure, with the unit's Result and its journal lines), or a
//! command supervised like the observer (the same process module: own
//! session, own scope under systemd, user, clean environment, output to a
//! file). Then the health check must pass within the deadline. Already running
//! (unit active, or the command's pid file names a live process): SUCCEEDED
//! once healthy, nothing spawned. A host without systemd fails at once with
//! SYSTEMD_UNAVAILABLE instead of hanging on a bus that is not there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::deps::Deps;
use crate::probe::{
    self,
    health::{self, Health},
};
use crate::process::launch::{self, Accept, Died, LaunchError};
use crate::process::pidfile::{self, PidFile};
use crate::process::spawn::Output;
use crate::process::systemd::{SystemdError, UnitState};
use crate::process::{Handle, Identity, RunAs, SpawnSpec, Spawned, inspect, spawn};
use crate::steps::model::codes::Code;
use crate::steps::task::BoxFuture;
use crate::steps::{OnRestart, StepContext, StepFailure, StepResult, StepSuccess, StepTask};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandSpec {
    pub argv: Vec<String>,
    pub user: String,
    pub cwd: PathBuf,
    pub env: BTreeMap<String, String>,
    pub pid_file: Option<PathBuf>,
    pub foreground: bool,
}

impl CommandSpec {
    pub fn output_file(&self) -> PathBuf {
        self.cwd.join("log/obhost_agent.out")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Service {
    SystemdUnit(String),
    Command(CommandSpec),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentParams {
    pub service: Service,
    pub health: Option<Health>,
}

/// The output naming the agent process's start (clock ticks after boot).
pub const AGENT_START_TICKS: &str = "process_start_ticks";

pub struct StartAgentService {
    pub params: AgentParams,
    pub deps: Arc<Deps>,
}

/// What a tool (journalctl) wrote, at most 16 KiB of it.
fn read_back(mut f: std::fs::File) -> String {
    use std::io::{Read, Seek};
    let mut buf = Vec::new();
    let _ = f.rewind();
    let _ = f.take(16 * 1024).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// The longest a unit's start job may take, inside the step's own deadline
/// (which ends the wait first when it is shorter).
const UNIT_JOB_LIMIT: Duration = Duration::from_secs(3600);

impl StartAgentService {
    async fn start(self: Box<Self>, ctx: StepContext) -> StepResult {
        let mut outputs = BTreeMap::new();
        let mut unit_cgroup = None;
        let watched = match &self.params.service {
            Service::SystemdUnit(unit) => {
                let (already, cgroup) = self.systemd(&ctx, unit).await?;
                outputs.insert("already_running".to_string(), already.to_string());
                unit_cgroup = cgroup;
                None
            }
            Service::Command(cmd) => {
                let (id, spawned) = self.command(&ctx, cmd).await?;
                outputs.insert("pid".to_string(), id.pid.to_string());
                // With the pid, who the process is: a later look (metrics)
                // must not take a reused pid for the agent.
                outputs.insert(AGENT_START_TICKS.to_string(), id.start_ticks.to_string());
                outputs.insert("already_running".to_string(), spawned.is_none().to_string());
                Some((Handle::open(id).ok(), cmd, spawned))
            }
        };
        if let Some(h) = &self.params.health {
            let watch = watched.as_ref().map(|(h, c, _)| (h.as_ref(), *c));
            self.healthy(&ctx, h, watch, unit_cgroup).await?;
        }
        // Healthy: what this step spawned now runs on its own.
        if let Some((_, _, Some(spawned))) = watched {
            spawned.keep();
        }
        Ok(StepSuccess {
            message: match &self.params.health {
                Some(h) => format!("agent service healthy ({h})"),
                None => "agent service started (no health check configured)".into(),
            },
            outputs,
            checks: Vec::new(),
        })
    }

    /// The unit's last journal lines (`--unit=` keeps the name a value, never
    /// an option): why a unit failed is there, not in its state.
    async fn journal_tail(&self, unit: &str) -> Vec<String> {
        let args = [
            "--no-pager",
            "-o",
            "cat",
            "-n",
            "20",
            &format!("--unit={unit}"),
        ]
        .map(str::to_string)
        .to_vec();
        match self.run_tool("/usr/bin/journalctl", args).await {
            Ok((_, out)) => out.lines().map(str::to_string).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Runs one of systemd's tools as obhostd's user and waits for it. Its
    /// output goes to an anonymous temp file: nothing at a guessable name in
    /// /tmp that another user could plant a link at.
    async fn run_tool(
        &self,
        program: &str,
        args: Vec<String>,
    ) -> Result<(i32, String), StepFailure> {
        let spawn_failed = |e: String| StepFailure::new(Code::SpawnFailed, e);
        let me = RunAs::current().map_err(|e| spawn_failed(e.to_string()))?;
        let out = tempfile::tempfile()
            .map_err(|e| spawn_failed(format!("cannot make a temp file for {program}: {e}")))?;
        let spec = SpawnSpec {
            program: PathBuf::from(program),
            args,
            cwd: PathBuf::from("/"),
            user: me,
            env: BTreeMap::new(),
            output: Output::File(out.try_clone().map_err(|e| spawn_failed(e.to_string()))?),
            limits: Default::default(),
            scope: None,
        };
        // fork/exec off the runtime's threads.
        let id = tokio::task::spawn_blocking(move || spawn(&spec))
            .await
            .map_err(|e| spawn_failed(e.to_string()))?
            .map_err(|e| spawn_failed(e.to_string()))?;
        let exit = self.deps.registry.reaper().wait(id.pid).await;
        let text = read_back(out);
        Ok((exit.code.unwrap_or(-1), text))
    }

    /// Starts the unit unless it is active. Returns whether it already was,
    /// and its cgroup (`/system.slice/x.service`): the processes that may hold
    /// the health port.
    async fn systemd(
        &self,
        ctx: &StepContext,
        unit: &str,
    ) -> Result<(bool, Option<PathBuf>), StepFailure> {
        let Some(systemd) = &self.deps.systemd else {
            let pid1 = tokio::fs::read_to_string("/proc/1/comm")
                .await
                .unwrap_or_default();
            return Err(StepFailure::new(
                Code::SystemdUnavailable,
                format!(
                    "systemd is not running on this host (PID 1 is '{}'), so unit '{unit}' cannot be started; give a command instead (StartAgentService.command or [agent_service] argv)",
                    pid1.trim()
                ),
            ));
        };
        let bus_failed =
            |e: SystemdError| StepFailure::new(Code::ServiceStartFailed, e.to_string());
        let cgroup = |s: &UnitState| {
            s.control_group
                .starts_with('/')
                .then(|| PathBuf::from(&s.control_group))
        };
        let before = systemd.unit_state(unit).await.map_err(bus_failed)?;
        if before.active_state == "active" {
            return Ok((true, cgroup(&before)));
        }
        ctx.progress(format!("starting unit {unit}")).await;
        let job = systemd
            .start_unit(unit, UNIT_JOB_LIMIT)
            .await
            .map_err(bus_failed)?;
        let after = systemd.unit_state(unit).await.map_err(bus_failed)?;
        if job == "done" && after.active_state == "active" {
            return Ok((false, cgroup(&after)));
        }
        let mut f = StepFailure::new(
            Code::ServiceStartFailed,
            format!(
                "unit {unit} did not start: its start job ended '{job}', the unit is {} ({}) with result '{}'; its journal is in log_tail (journalctl -u {unit})",
                after.active_state, after.sub_state, after.result
            ),
        );
        for (k, v) in [
            ("job_result", job),
            ("active_state", after.active_state),
            ("unit_result", after.result),
        ] {
            f.error.details.insert(k.to_string(), v);
        }
        f.error.log_tail = self.journal_tail(unit).await;
        Err(f)
    }

    /// The service, if it runs: a process of the service's user running its
    /// program, named by the pid file or found in its cwd. A pid file alone
    /// proves nothing (its dir belongs to the user, who can write any pid in it).
    fn running(cmd: &CommandSpec, uid: u32) -> Option<Identity> {
        let program = PathBuf::from(cmd.argv.first()?);
        let program = crate::confined::canonical(&program).unwrap_or(program);
        let ours = |id: &Identity| id.runs_as(uid) && id.exe().is_some_and(|e| e == program);
        if let Some(pf) = &cmd.pid_file
            && let PidFile::Live(id) = pidfile::inspect(pf)
            && ours(&id)
        {
            return Some(id);
        }
        inspect::find_by_exe_and_cwd(&program, &cmd.cwd)
            .into_iter()
            .find(|id| ours(id))
    }

    /// The service's process, and what this step spawned for it (None when it
    /// was already running).
    async fn command(
        &self,
        ctx: &StepContext,
        cmd: &CommandSpec,
    ) -> Result<(Identity, Option<Spawned>), StepFailure> {
        let user = RunAs::lookup_async(&cmd.user)
            .await
            .map_err(|e| StepFailure::new(Code::UserNotFound, e.to_string()))?;
        let uid = user.uid;
        let found = {
            let cmd = cmd.clone();
            super::process_steps::blocking(move || Self::running(&cmd, uid)).await
        };
        if let Some(id) = found {
            return Ok((id, None));
        }
        let mode = match (&cmd.pid_file, cmd.foreground) {
            (pid_file, true) => launch::Mode::Foreground {
                pid_file: pid_file.clone(),
            },
            (Some(pid_file), false) => launch::Mode::Daemonizing {
                pid_file: pid_file.clone(),
            },
            (None, false) => {
                return Err(StepFailure::new(
                    Code::ProcessNotRunning,
                    "a daemonizing service needs a pid_file to be found by; set command.pid_file (or foreground=true)",
                ));
            }
        };
        let spec = SpawnSpec {
            program: PathBuf::from(&cmd.argv[0]),
            args: cmd.argv[1..].to_vec(),
            cwd: cmd.cwd.clone(),
            user,
            env: cmd.env.clone(),
            output: Output::Append(cmd.output_file()),
            limits: self.deps.policy.limits,
            scope: self
                .deps
                .scope("agent", &cmd.cwd, "OCP agent service", ctx.step_id()),
        };
        ctx.progress(format!("starting: {}", spec.display())).await;
        let registry = self.deps.registry.clone();
        let reaper = registry.reaper().clone();
        let started = launch::start(spec, &mode, &reaper, move || registry.shutting_down()).await;
        let mut launched = match started {
            Ok(launched) => launched,
            Err(e) => return Err(self.failed(e, cmd).await),
        };
        ctx.output("pid", launched.launcher.pid.to_string()).await;
        let ours = cmd.clone();
        let accept: Accept = Arc::new(move |id| Self::running(&ours, uid) == Some(*id));
        let pid_file = (!cmd.foreground)
            .then_some(cmd.pid_file.as_deref())
            .flatten();
        let server = match super::process_steps::follow_launch(
            ctx,
            &mut launched,
            &accept,
            pid_file,
        )
        .await
        {
            Ok(server) => server,
            Err(e) => return Err(self.failed(e, cmd).await),
        };
        Ok((server, Some(launched.spawned)))
    }

    /// A launch that failed, with the service's output in log_tail.
    async fn failed(&self, e: LaunchError, cmd: &CommandSpec) -> StepFailure {
        let (user, out) = (cmd.user.clone(), cmd.output_file());
        let tail = tokio::task::spawn_blocking(move || {
            let uid = RunAs::lookup(&user).ok().map(|u| u.uid);
            crate::confined::tail(&out, uid, 20)
        })
        .await
        .unwrap_or_default();
        super::process_steps::launch_failed(e, "the agent service", tail).await
    }

    async fn healthy(
        &self,
        ctx: &StepContext,
        h: &Health,
        watched: Option<(Option<&Handle>, &CommandSpec)>,
        unit_cgroup: Option<PathBuf>,
    ) -> Result<(), StepFailure> {
        let death = async {
            match watched {
                Some((Some(handle), _)) => handle.exited().await,
                _ => std::future::pending().await,
            }
        };
        let holder = match (watched.and_then(|(h, _)| h), unit_cgroup) {
            (Some(h), _) => Holder::Process(h.identity().pid),
            (None, Some(cg)) => Holder::Unit(cg),
            (None, None) => Holder::Anyone,
        };
        tokio::select! {
            () = until_healthy(ctx, h, holder) => Ok(()),
            () = death => {
                let (handle, cmd) = watched.and_then(|(h, c)| Some((h?, c))).ok_or_else(|| {
                    StepFailure::new(Code::Internal, "the agent's death was seen without a handle on it")
                })?;
                let id = handle.identity();
                let reaper = self.deps.registry.reaper();
                let exit = launch::exit_of_process(reaper, &id).await;
                let during = "before it became healthy";
                let died = Died { pid: id.pid, exit, during, id: Some(id) };
                Err(self.failed(LaunchError::Died(died), cmd).await)
            }
        }
    }
}

/// Returns once the health check passes, and, when the agent's process is
/// known (`holder`), every socket listening on the port is that process's: any
/// local user can bind a loopback port first, and an answer from their
/// listener says nothing of the agent (which may have died of "address in
/// use"). A port that refuses is looked at every ms or few (cheap) and checked
/// the moment it accepts; a service that accepts but is not healthy yet is
/// asked again after a pause that grows to 100 ms. Looking at the port first
/// matters: a check that failed because the port was still closed must not be
/// followed by the unhealthy pause when the port opens an instant later (that
/// cost the host flow 10 ms).
async fn until_healthy(ctx: &StepContext, h: &Health, holder: Holder) {
    let mut retry = Duration::from_millis(10);
    loop {
        if probe::connect_loopback(h.port()).await.is_err() {
            ctx.progress(format!("port {} not accepting connections yet", h.port()))
                .await;
            probe::until_accepting(h.port()).await;
            retry = Duration::from_millis(10);
        }
        match health::check(h).await {
            Ok(()) if matches!(holder, Holder::Anyone) => return,
            Ok(()) => {
                let port = h.port();
                let (whose, owner) = {
                    let holder = holder.clone();
                    tokio::task::spawn_blocking(move || {
                        let pids = holder.pids();
                        (
                            holder.describe(),
                            inspect::loopback_port_owner_among(port, &pids),
                        )
                    })
                    .await
                    .unwrap_or_else(|_| (String::new(), inspect::PortOwner::Other(None)))
                };
                match owner {
                    inspect::PortOwner::Only => return,
                    inspect::PortOwner::Nobody => {}
                    inspect::PortOwner::Other(other) => {
                        let who = other
                            .map(|(p, comm)| format!("pid {p} ('{comm}')"))
                            .unwrap_or_else(|| "another process".into());
                        ctx.progress(format!(
                            "port {port} answers, but {who} holds it, not the agent ({whose}); waiting for the agent's own listener"
                        ))
                        .await;
                    }
                }
            }
            Err(e) => ctx.progress(e).await,
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(Duration::from_millis(100));
    }
}

/// Whose sockets may be listening on the health port for the agent to count
/// as healthy.
#[derive(Debug, Clone)]
enum Holder {
    /// The agent process this step started or found.
    Process(i32),
    /// Every process of the unit's cgroup (systemd mode).
    Unit(PathBuf),
    /// Unknown (systemd could not say where the unit lives): any listener.
    Anyone,
}

impl Holder {
    /// The pids now (a unit's may change as it forks). Blocking: reads /proc
    /// or the cgroup.
    fn pids(&self) -> Vec<i32> {
        match self {
            Holder::Process(pid) => vec![*pid],
            Holder::Unit(cg) => crate::process::systemd::cgroup_pids(cg),
            Holder::Anyone => Vec::new(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Holder::Process(pid) => format!("pid {pid}"),
            Holder::Unit(cg) => format!("the processes of cgroup {}", cg.display()),
            Holder::Anyone => "anyone".into(),
        }
    }
}

impl StepTask for StartAgentService {
    fn run(self: Box<Self>, ctx: StepContext) -> BoxFuture<StepResult> {
        Box::pin(self.start(ctx))
    }

    /// Starting is idempotent (already running is success): run it again.
    fn on_restart(&self) -> OnRestart {
        OnRestart::Resume
    }
}

/// A StartAgentService request before defaults (a copy of the wire message).
#[derive(Debug, Clone, Default)]
pub struct RawAgent {
    pub systemd_unit: Option<String>,
    pub command: Option<RawCommand>,
    pub tcp_port: Option<u32>,
    pub http_url: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct RawCommand {
    pub argv: Vec<String>,
    pub user: String,
    pub cwd: String,
    pub env: BTreeMap<String, String>,
    pub pid_file: String,
    pub foreground: bool,
}

use crate::config::AgentServiceConfig;
use crate::policy::{
    Policy, SpecError, check_env, check_executable, check_root_paths, checked_file, checked_path,
    checked_program, resolve_user,
};

fn or_default(given: &str, default: Option<&Path>) -> String {
    if given.is_empty() {
        default.map(|p| p.display().to_string()).unwrap_or_default()
    } else {
        given.to_string()
    }
}

/// Fills empty request fields from `[agent_service]` and checks everything
/// against the host's policy, before any step exists.
pub fn resolve(
    raw: RawAgent,
    defaults: &AgentServiceConfig,
    policy: &Policy,
) -> Result<AgentParams, SpecError> {
    let invalid = |m: String| SpecError::Invalid(m);
    let service = match (raw.systemd_unit, raw.command) {
        (Some(unit), _) if !unit.is_empty() => Service::SystemdUnit(unit),
        (_, Some(cmd)) => Service::Command(resolve_command(cmd, defaults, policy)?),
        _ => match (&defaults.systemd_unit, defaults.argv.is_empty()) {
            (Some(unit), _) => Service::SystemdUnit(unit.clone()),
            (None, false) => {
                Service::Command(resolve_command(RawCommand::default(), defaults, policy)?)
            }
            (None, true) => {
                return Err(invalid(
                    "no agent service given: set systemd_unit or command in the request, or [agent_service] systemd_unit / argv in obhostd's config".into(),
                ));
            }
        },
    };
    if let Service::SystemdUnit(unit) = &service {
        check_unit(unit, defaults)?;
    }
    let health = match (raw.tcp_port, raw.http_url) {
        (Some(p), _) => Some(Health::TcpPort(port(p)?)),
        (_, Some(url)) => Some(health::parse_http_url(&url).map_err(invalid)?),
        _ => match (defaults.tcp_port, &defaults.http_url) {
            (Some(p), _) => Some(Health::TcpPort(port(u32::from(p))?)),
            (_, Some(url)) => Some(health::parse_http_url(url).map_err(invalid)?),
            _ => None,
        },
    };
    Ok(AgentParams { service, health })
}

impl AgentParams {
    /// Judges the stored parameters by the policy and `[agent_service]` as
    /// they are now (see
    /// [`ObserverSpec::recheck`](crate::observer::ObserverSpec::recheck)): the
    /// unit must still be allowed; the command's program, working dir and pid
    /// file still allowed (and leading where they led), its user still allowed.
    pub fn recheck(&self, defaults: &AgentServiceConfig, policy: &Policy) -> Result<(), SpecError> {
        match &self.service {
            Service::SystemdUnit(unit) => check_unit(unit, defaults),
            Service::Command(c) => {
                let Some(program) = c.argv.first() else {
                    return Err(SpecError::Invalid("command.argv is empty".into()));
                };
                checked_program("command.argv[0]", program, policy)?;
                let cwd = c.cwd.to_string_lossy();
                crate::policy::same_path(
                    "command.cwd",
                    &c.cwd,
                    checked_path("command.cwd", &cwd, policy)?,
                )?;
                if let Some(p) = &c.pid_file {
                    checked_file("command.pid_file", &p.to_string_lossy(), policy)?;
                }
                let user = resolve_user("command.user", &c.user, policy, Some(&c.cwd))?;
                check_root_paths(
                    &user,
                    &[
                        ("command.argv[0]", PathBuf::from(program)),
                        ("command.cwd", c.cwd.clone()),
                    ],
                )
            }
        }
    }
}

/// A unit may be started only if the config allows it by name: systemd starts
/// it for root, and `poweroff.target` is a unit name too. A name starting with
/// `-` would be an option to journalctl (`--unit=` keeps it a value anyway).
fn check_unit(unit: &str, defaults: &AgentServiceConfig) -> Result<(), SpecError> {
    crate::bounds::check_len("systemd_unit", unit, crate::bounds::MAX_NAME)
        .map_err(SpecError::Invalid)?;
    if unit.is_empty()
        || unit.starts_with('-')
        || !unit
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "@._:-".contains(c))
    {
        return Err(SpecError::Invalid(format!(
            "systemd_unit '{}' is not a unit name, e.g. ocp_agentd.service",
            crate::bounds::quote(unit)
        )));
    }
    let allowed: Vec<&str> = if defaults.allowed_units.is_empty() {
        defaults.systemd_unit.iter().map(String::as_str).collect()
    } else {
        defaults.allowed_units.iter().map(String::as_str).collect()
    };
    if !allowed.contains(&unit) {
        return Err(SpecError::Denied(format!(
            "systemd_unit '{unit}' is not allowed on this host (allowed: [{}]); add it to [agent_service] allowed_units in obhostd's config",
            allowed.join(", ")
        )));
    }
    Ok(())
}

fn port(p: u32) -> Result<u16, SpecError> {
    crate::policy::port("health.tcp_port", p, crate::policy::PortUse::Connect)
}

fn resolve_command(
    raw: RawCommand,
    d: &AgentServiceConfig,
    policy: &Policy,
) -> Result<CommandSpec, SpecError> {
    let argv = if raw.argv.is_empty() {
        d.argv.clone()
    } else {
        raw.argv
    };
    crate::bounds::check_entries("command.argv", argv.iter().map(String::as_str))
        .map_err(SpecError::Invalid)?;
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(SpecError::Invalid(
            "command.argv contains a NUL byte".into(),
        ));
    }
    let Some(program) = argv.first() else {
        return Err(SpecError::Invalid(
            "command.argv is empty; give the program's absolute path and its arguments".into(),
        ));
    };
    let program = checked_program("command.argv[0]", program, policy)?;
    let user_name = if raw.user.is_empty() {
        d.user.clone().unwrap_or_default()
    } else {
        raw.user
    };
    let cwd_default = program.parent().map(Path::to_path_buf);
    let cwd = or_default(&raw.cwd, d.cwd.as_deref().or(cwd_default.as_deref()));
    let cwd = checked_path("command.cwd", &cwd, policy)?;
    let user = resolve_user("command.user", &user_name, policy, Some(&cwd))?;
    check_executable(&program, &user)
        .map_err(|m| SpecError::Invalid(format!("command.argv[0] {m}")))?;
    check_root_paths(
        &user,
        &[
            ("command.argv[0]", program.clone()),
            ("command.cwd", cwd.clone()),
        ],
    )?;
    let pid_file = match or_default(&raw.pid_file, d.pid_file.as_deref()).as_str() {
        "" => None,
        p => Some(checked_file("command.pid_file", p, policy)?),
    };
    let mut env = d.env.clone();
    env.extend(raw.env);
    check_env("command.env", &env)?;
    let foreground = raw.foreground || d.foreground;
    if !foreground && pid_file.is_none() {
        return Err(SpecError::Invalid(
            "command.pid_file is required for a daemonizing service (foreground=false): it is how the service is found".into(),
        ));
    }
    let mut argv = argv;
    argv[0] = program.display().to_string();
    Ok(CommandSpec {
        argv,
        user: user.name,
        cwd,
        env,
        pid_file,
        foreground,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::task::{StepSink, Update};
    use std::sync::Mutex;

    /// Opens the port while the step reports its first progress: the moment
    /// a commit takes, which is when a service usually comes up.
    struct OpensOnProgress {
        port: u16,
        listener: Mutex<Option<std::net::TcpListener>>,
        opened: Mutex<Option<std::time::Instant>>,
    }

    impl StepSink for OpensOnProgress {
        fn update(&self, _: &str, _: u32, _: Update) -> BoxFuture<()> {
            let mut l = self.listener.lock().unwrap();
            if l.is_none() {
                *l = Some(std::net::TcpListener::bind(("127.0.0.1", self.port)).unwrap());
                *self.opened.lock().unwrap() = Some(std::time::Instant::now());
            }
            Box::pin(async {})
        }

        fn secret(&self, _: &str, _: &str) -> Option<String> {
            None
        }
    }

    /// A port that opens just after a look found it closed is checked at once,
    /// not after the pause meant for a service that answers but is unhealthy.
    #[tokio::test]
    async fn a_port_opening_mid_check_is_healthy_without_the_unhealthy_pause() {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let sink = Arc::new(OpensOnProgress {
            port,
            listener: Mutex::new(None),
            opened: Mutex::new(None),
        });
        let ctx = StepContext::for_test(
            "h",
            sink.clone(),
            Duration::from_secs(5),
            false,
            BTreeMap::new(),
        );
        until_healthy(&ctx, &Health::TcpPort(port), Holder::Anyone).await;
        let opened = sink.opened.lock().unwrap().expect("the port was opened");
        // The unhealthy pause is 10 ms at least, by construction.
        assert!(
            opened.elapsed() < Duration::from_millis(9),
            "took {:?}",
            opened.elapsed()
        );
    }
}
