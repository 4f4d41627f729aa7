//! The `/metrics` endpoint: its own small HTTP/1 server (axum) on
//! `[metrics] listen`, never the gRPC port, so scraping needs neither the
//! token nor a client certificate and cannot reach a gRPC method. Every other
//! path is 404.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Metrics;

/// The OpenMetrics text format's content type.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Connections served at once; more are closed as they are accepted, so
/// anyone who can reach the port (any local user on loopback) cannot take
/// obhostd's file descriptors with idle connections.
pub const MAX_CONNECTIONS: usize = 8;
/// A connection serves one request (no keep-alive) within this bound, so a
/// client that sends nothing frees its slot.
const CONNECTION_BOUND: Duration = Duration::from_secs(10);

/// Binds `addr` and serves until `shutdown`. Returns once bound, so a bind
/// error stops the daemon's start with a message naming the address. Logs
/// "metrics listening" with the bound address (tests bind port 0).
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen for metrics on '{addr}'; free the port or change [metrics] listen")
    })?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .with_state(Scrape {
            metrics,
            one_at_a_time: Arc::new(tokio::sync::Semaphore::new(1)),
        });
    info!(addr = %bound, "metrics listening");
    tokio::spawn(accept_loop(listener, app, shutdown));
    Ok(bound)
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of fds or the like: pause rather than spin.
                warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                () = shutdown.cancelled() => {}
                _ = tokio::time::timeout(CONNECTION_BOUND, conn) => {}
            }
            drop(slot);
        });
    }
}

#[derive(Clone)]
struct Scrape {
    metrics: Arc<Metrics>,
    /// One scrape on the blocking pool at a time; others wait here, on the
    /// runtime, so a flood of scrapes cannot take the threads GetStep and
    /// ListSteps read the store on.
    one_at_a_time: Arc<tokio::sync::Semaphore>,
}

/// Encodes on a blocking thread: the scrape reads /proc and the store.
async fn scrape(axum::extract::State(s): axum::extract::State<Scrape>) -> Response {
    let Ok(_turn) = s.one_at_a_time.acquire().await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    };
    let metrics = s.metrics.clone();
    match tokio::task::spawn_blocking(move || metrics.encode()).await {
        Ok(Ok(text)) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Ok(Err(e)) => {
            warn!(error = %e, "cannot encode metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response()
        }
        Err(e) => {
            warn!(error = %e, "metrics scrape failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "metrics scrape failed\n").into_response()
        }
    }
}
