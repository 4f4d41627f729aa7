//! obhostd's life: load state, bind, tell systemd READY, serve, stop within a
//! bound. `bin/obhostd.rs` only parses flags and calls [`run`].
//!
//! The order matters to systemd and to the orchestrator: READY is sent only after
//! the state is loaded, every unfinished step is resolved and the listener is
//! bound, so "active" in `systemctl` means "answers with correct state".

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::{self, Access};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::observer::Registry;
use crate::policy::Policy;
use crate::process::Reaper;
use crate::steps::{EngineConfig, Opened, Retention};
use crate::tasks::{Deps, Tasks};

/// `obhostd --check-config`: everything a start checks before it touches the
/// state dir or binds a port: the config's rules, the token and TLS files, the
/// users it names, the report endpoint's certificates. Returns a one-line
/// summary of what would run.
pub fn check_config(config: &Config) -> anyhow::Result<String> {
    config.validate()?;
    let listen = config.listeners()?;
    let access = Access::load(config)?;
    config.local_access()?;
    let state_dir = config.state_dir()?;
    if state_dir.exists() {
        check_state_owner(&state_dir)?;
        // A dir open to others is narrowed to 0700 at start (see
        // prepare_state_dir); only what leads to it must already be safe.
        let mode = std::fs::metadata(&state_dir)
            .map(|m| std::os::unix::fs::MetadataExt::mode(&m))
            .unwrap_or(0);
        if mode & 0o022 == 0 {
            check_state_path(&state_dir)?;
        }
    }
    if let Some(report) = &config.report {
        crate::report::check(report)?;
    }
    Ok(format!(
        "config OK: listen {}; state_dir {}; tls {}; report {}; metrics {}",
        listen
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        state_dir.display(),
        if access.tls().is_some() { "on" } else { "off" },
        config
            .report
            .as_ref()
            .map_or("off", |r| r.endpoint.as_str()),
        config
            .metrics
            .as_ref()
            .map_or("off".to_string(), |m| m.listen.to_string()),
    ))
}

/// Runs the daemon until `shutdown` fires. Errors are for the operator: they
/// name the file or address at fault and what to do.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    config.validate()?;
    // Files the daemon creates (store, registry, temp files) are its own: 0600
    // and dirs 0700, whatever umask it was started with.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let listen = config.listeners()?;
    let access = Arc::new(Access::load(&config)?);
    let local = config.local_access()?;
    let state_dir = config.state_dir()?;
    prepare_state_dir(&state_dir)?;
    // The store first (the registry keeps its table there), then reaping and
    // re-adoption: steps resumed when the engine starts below may look for the
    // processes they started.
    crate::steps::engine::on_commit(crate::metrics::observe_commit);
    let opened = Opened::open(&state_dir, engine_config(&config)).await?;
    // Subscribed before the engine starts: resolving unfinished steps makes
    // changes the step metrics must see.
    let (store, committer) = opened.store();
    let feed = committer.subscribe();
    let reaper = Reaper::start();
    let registry = Registry::open(
        &state_dir,
        (store.clone(), committer),
        reaper,
        shutdown.clone(),
    )?;
    let policy = policy(&config);
    let deps = Arc::new(Deps {
        registry: registry.clone(),
        policy: policy.clone(),
        agent: config.agent_service.clone(),
        systemd: systemd(&registry).await,
    });
    let tasks = Tasks::new(deps);
    let engine = opened.start(tasks.clone(), shutdown.clone()).await?;
    let metrics = Metrics::new();
    if let Some(report) = &config.report {
        crate::report::Reporter::new(report, engine.outgoing(), metrics.clone())?
            .spawn(shutdown.clone());
    }
    restrict_state_files(&state_dir);
    if let Some(m) = &config.metrics {
        let sources = crate::metrics::Sources {
            engine: engine.clone(),
            observers: registry.clone(),
            store,
        };
        serve_metrics(m, &metrics, sources, feed, &shutdown).await?;
    } else {
        // Nothing reads it: it would only hold the latest records alive.
        drop(feed);
    }
    let listeners = api::listen::bind(&listen, &local, access.tls().is_some()).await?;
    notify(&[sd_notify::NotifyState::Ready]);
    spawn_stopping(shutdown.clone());
    spawn_watchdog(shutdown.clone());
    spawn_status(engine.clone(), registry.clone(), shutdown.clone());
    spawn_reload_on_hup(access.clone(), shutdown.clone())?;

    let services = api::Services {
        engine,
        tasks,
        registry,
        policy,
        agent: config.agent_service.clone(),
        metrics,
    };
    api::serve(
        listeners,
        services,
        access,
        shutdown.clone(),
        config.shutdown_timeout,
        config.limits.max_watchers,
    )
    .await
}

/// The engine's settings, from the config.
fn engine_config(config: &Config) -> EngineConfig {
    EngineConfig {
        watch_buffer: config.watch_buffer,
        retention: Retention {
            max_steps: config.retention.max_steps,
            max_age: config.retention.max_age,
            interval: config.retention.prune_interval,
        },
        max_active_steps: config.limits.max_active_steps,
        max_watchers: config.limits.max_watchers,
        cache_bytes: config.store.cache_mib << 20,
        outbox: config.report.as_ref().map_or(0, |r| r.max_unacked),
    }
}

/// What requests may name on this host, from the config.
fn policy(config: &Config) -> Policy {
    Policy {
        allowed_roots: config.allowed_roots.clone(),
        allowed_users: config.allowed_users.clone(),
        default_user: config.default_user.clone(),
        // DESIGN: root "only when the config names root in allowed_users";
        // run_as_root = true says the same without narrowing the users.
        run_as_root: config.run_as_root || config.allowed_users.iter().any(|u| u == "root"),
        limits: config.limits.to_limits(),
        start_settle: config.observer.start_settle,
    }
}

/// systemd, when it is PID 1 (then every re-adopted observer is moved into
/// a scope of its own); the startup log says once which way it is.
async fn systemd(registry: &Registry) -> Option<crate::process::systemd::Systemd> {
    match crate::process::systemd::Systemd::detect().await {
        Ok(systemd) => {
            tracing::info!(
                "systemd is PID 1: each observer and agent command starts in a scope of its own under {}",
                crate::process::systemd::SLICE
            );
            in_scopes(&systemd, registry).await;
            Some(systemd)
        }
        Err(why) => {
            tracing::info!(
                "{why}: observers and agent commands run in obhostd's own cgroup, in sessions of their own"
            );
            None
        }
    }
}

/// Serves `[metrics]`. The step metrics keep a small entry per stored step
/// (bounded by [retention] max_steps): only a daemon that serves them pays
/// for that, so the change feed is attached here and dropped otherwise.
async fn serve_metrics(
    config: &crate::config::MetricsConfig,
    metrics: &Arc<Metrics>,
    sources: crate::metrics::Sources,
    feed: tokio::sync::broadcast::Receiver<Arc<crate::steps::StepRecord>>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    metrics.attach(sources, feed, shutdown.clone());
    crate::metrics::http::serve(config.listen, metrics.clone(), shutdown.clone()).await?;
    Ok(())
}

/// STOPPING=1 the moment the shutdown begins, as systemd means it: the
/// drain that follows may take up to shutdown_timeout.
fn spawn_stopping(shutdown: CancellationToken) {
    tokio::spawn(async move {
        shutdown.cancelled().await;
        notify(&[sd_notify::NotifyState::Stopping]);
    });
}

/// Creates the state dir 0700 (its files hold what every step did and the
/// observers' command lines); narrows an existing one that is wider.
fn prepare_state_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| {
            format!(
                "cannot create state dir '{}'; create it (mode 0700) or point state_dir elsewhere",
                dir.display()
            )
        })?;
    check_state_owner(dir)?;
    let meta = std::fs::metadata(dir)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        warn!(dir = %dir.display(), mode = %format!("{mode:04o}"), "state dir was open to group/others; setting it to 0700");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).with_context(
            || {
                format!(
                    "cannot chmod state dir '{}' to 0700; run `chmod 700 {}`",
                    dir.display(),
                    dir.display()
                )
            },
        )?;
    }
    check_state_path(dir)
}

/// The state dir decides what root runs: a step stored there is run again
/// after a restart. So it, its files and every dir on the way to it must be
/// changeable by obhostd's user (and root) alone; another user's dir, or a
/// store they could swap in, is refused before anything is read from it.
fn check_state_owner(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    let meta = std::fs::symlink_metadata(dir)
        .with_context(|| format!("cannot read state dir '{}'", dir.display()))?;
    if meta.uid() != me {
        anyhow::bail!(
            "state dir '{}' belongs to uid {}, not to obhostd's user (uid {me}): that user could put steps in it that obhostd would run; \
             check what it holds, then `chown -R {me} {}`, or point state_dir elsewhere",
            dir.display(),
            meta.uid(),
            dir.display()
        );
    }
    for name in [crate::steps::store::STATE_FILE, "observers.json"] {
        let path = dir.join(name);
        let Ok(m) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !m.is_file() || m.uid() != me {
            anyhow::bail!(
                "state file '{}' is {}, not a file of obhostd's user (uid {me}): another user may have put it there; \
                 move it away (obhostd starts afresh without it) or restore the original",
                path.display(),
                if m.file_type().is_symlink() {
                    "a symbolic link".to_string()
                } else if !m.is_file() {
                    "not a regular file".to_string()
                } else {
                    format!("owned by uid {}", m.uid())
                },
            );
        }
    }
    Ok(())
}

/// No dir on the way to the state dir may be writable by other users: they
/// could rename it away and put their own in its place.
fn check_state_path(dir: &std::path::Path) -> anyhow::Result<()> {
    let me = nix::unistd::geteuid().as_raw();
    crate::trusted::check(dir, &[me]).map_err(|e| {
        anyhow::anyhow!(
            "state dir '{}' is not safe: {e}; put it under a dir only root can write (the default is {})",
            dir.display(),
            crate::config::DEFAULT_STATE_DIR
        )
    })
}

/// The store and registry files may predate the umask above: make them 0600.
fn restrict_state_files(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    for name in ["obhostd.redb", "observers.json"] {
        let path = dir.join(name);
        if let Ok(m) = std::fs::symlink_metadata(&path)
            && m.is_file()
            && m.permissions().mode() & 0o077 != 0
            && let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        {
            warn!(file = %path.display(), error = %e, "cannot chmod state file to 0600");
        }
    }
}

/// SIGHUP re-reads the token and TLS files; the daemon, its connections and its
/// steps carry on.
fn spawn_reload_on_hup(access: Arc<Access>, shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                r = hup.recv() => if r.is_none() { return },
            }
            info!("SIGHUP: reloading the token and TLS files");
            access.reload();
        }
    });
    Ok(())
}

/// Errors from the notify socket are logged, never fatal: outside systemd
/// (NOTIFY_SOCKET unset) this is a no-op.
fn notify(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!(error = %e, "cannot notify systemd");
    }
}

/// Re-adopted observers, each in its scope again. One that lives in
/// obhostd's own cgroup (started by a version without scopes, or while
/// systemd was not reachable) is moved into the scope it would have been born
/// in, so that from now on nothing done to obhostd.service reaches it.
async fn in_scopes(systemd: &crate::process::systemd::Systemd, registry: &Registry) {
    use crate::process::systemd::{scope_name, unit_of};
    let ours = unit_of(std::process::id() as i32);
    for record in registry.all() {
        let Some(id) = record.identity.filter(|id| id.is_alive()) else {
            continue;
        };
        let home = record.home_path.display().to_string();
        let unit = unit_of(id.pid);
        if unit.is_none() || unit != ours {
            tracing::info!(
                home,
                pid = id.pid,
                unit = unit.as_deref().unwrap_or("-"),
                "re-adopted observer's unit"
            );
            continue;
        }
        let scope = scope_name("obhost-observer", &record.home_path);
        let description = format!("OceanBase observer of {home} (moved from obhostd's cgroup)");
        match systemd
            .start_scope(&scope, id.pid as u32, &description)
            .await
        {
            Ok(()) => {
                tracing::info!(home, pid = id.pid, unit = %scope, "moved a re-adopted observer out of obhostd's cgroup into its scope")
            }
            Err(e) => {
                tracing::warn!(home, pid = id.pid, error = %e, "a re-adopted observer stays in obhostd's cgroup, where stopping or killing obhostd.service reaches it")
            }
        }
    }
}

/// Keeps `systemctl status obhostd` saying what the daemon is doing: one line,
/// sent when it changes (looked at every 2 s).
fn spawn_status(
    engine: crate::steps::Engine,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    tokio::spawn(async move {
        let mut last = String::new();
        loop {
            let observers = registry.all();
            let running = observers.iter().filter(|o| o.identity.is_some()).count();
            let line = format!(
                "{} steps running; {running} of {} observers obhostd started are up",
                engine.unfinished(),
                observers.len()
            );
            if line != last {
                notify(&[sd_notify::NotifyState::Status(&line)]);
                last = line;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    });
}

/// Pets the watchdog at half its interval, from the runtime itself: if the
/// runtime wedges, systemd restarts us, which is the point.
fn spawn_watchdog(shutdown: CancellationToken) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (interval / 2).max(Duration::from_millis(10));
    info!(interval = ?interval, "systemd watchdog enabled");
    tokio::spawn(async move {
        loop {
            notify(&[sd_notify::NotifyState::Watchdog]);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    });
}

/// Stops on SIGTERM (systemd) or SIGINT (a terminal).
pub async fn signals(shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    info!(signal = name, "shutting down");
    shutdown.cancel();
    Ok(())
}
