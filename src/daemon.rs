//! obhostd's life: load state, bind, tell systemd READY, serve, stop within a
//! bound. `bin/obhostd.rs` only parses flags and calls [`run`].
//!
//! The order matters to systemd and to the orchestrator: READY is sent only after
//! the state is loaded, every unfinished step is resolved and the listener is
//! bound, so "active" in `systemctl` means "answers with correct state".

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::{self, Token};
use crate::config::Config;
use crate::observer::{Policy, Registry};
use crate::process::Reaper;
use crate::steps::{Engine, EngineConfig, Retention};
use crate::tasks::{Deps, Tasks};

/// Runs the daemon until `shutdown` fires. Errors are for the operator: they
/// name the file or address at fault and what to do.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    config.validate()?;
    let token = config
        .auth
        .as_ref()
        .map(|a| Token::load(&a.token_file))
        .transpose()?;
    let state_dir = config.state_dir();
    let engine_config = EngineConfig {
        watch_buffer: config.watch_buffer,
        retention: Retention {
            max_steps: config.retention.max_steps,
            max_age: config.retention.max_age,
            interval: config.retention.prune_interval,
        },
        max_active_steps: config.limits.max_active_steps,
        max_watchers: config.limits.max_watchers,
    };
    std::fs::create_dir_all(&state_dir).with_context(|| {
        format!(
            "cannot create state dir '{}'; create it or point state_dir elsewhere",
            state_dir.display()
        )
    })?;
    // Reaping and re-adoption come first: steps resumed by the engine below may
    // look for the processes they started.
    let reaper = Reaper::start();
    let registry = Registry::open(&state_dir, reaper, shutdown.clone())?;
    let policy = Policy {
        allowed_roots: config.allowed_roots.clone(),
        allowed_users: config.allowed_users.clone(),
        default_user: config.default_user.clone(),
        limits: config.limits.to_limits(),
        start_settle: config.observer.start_settle,
    };
    let deps = Arc::new(Deps {
        registry: registry.clone(),
        policy: policy.clone(),
    });
    let engine = Engine::open(
        &state_dir,
        Tasks::new(deps),
        engine_config,
        shutdown.clone(),
    )
    .await?;
    let listener = TcpListener::bind(config.listen).await.with_context(|| {
        format!(
            "cannot listen on '{}'; is another obhostd running? Pick another address with --listen",
            config.listen
        )
    })?;
    let addr = listener.local_addr()?;
    info!(%addr, "listening");
    notify(&[sd_notify::NotifyState::Ready]);
    spawn_watchdog(shutdown.clone());

    let services = api::Services {
        engine,
        registry,
        policy,
        agent: config.agent_service.clone(),
    };
    let served = api::serve(
        listener,
        services,
        token,
        shutdown.clone(),
        config.shutdown_timeout,
    )
    .await;
    notify(&[sd_notify::NotifyState::Stopping]);
    served
}

/// Errors from the notify socket are logged, never fatal: outside systemd
/// (NOTIFY_SOCKET unset) this is a no-op.
fn notify(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!(error = %e, "cannot notify systemd");
    }
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
