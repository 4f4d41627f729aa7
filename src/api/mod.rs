//! The gRPC layer: `obhost.v1.HostAgent`, health, reflection, and (test builds)
//! `obhost.testing.v1.StepTesting`. Thin by design: validate, convert, call the
//! engine. See `convert` for the one mapping between wire and domain types and
//! `status` for the one mapping from errors to gRPC codes.

mod audit;
mod auth;
mod authority;
pub mod convert;
pub mod listen;
mod peer;
mod peer_calls;
mod peers;
mod service;
mod status;
mod step_requests;
mod tail;
#[cfg(feature = "test-kinds")]
mod testing;
mod tls;
pub mod validate;

use std::time::Duration;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tracing::{info, warn};

pub use auth::{Access, Token};
pub use listen::Listeners;

use crate::proto;
use crate::proto::v1::host_agent_server::HostAgentServer;
use crate::steps::Engine;

/// What the RPCs call into.
pub struct Services {
    pub engine: Engine,
    /// Builds the task of each new step (the engine builds those of stored
    /// steps through the same value).
    pub tasks: std::sync::Arc<crate::tasks::Tasks>,
    pub registry: std::sync::Arc<crate::observer::Registry>,
    pub policy: crate::policy::Policy,
    /// `[agent_service]`: defaults for StartAgentService.
    pub agent: crate::config::AgentServiceConfig,
    /// Counts every gRPC call (see [`crate::metrics::grpc`]).
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// The health service name orchestrators probe.
pub const SERVICE_NAME: &str = "obhost.v1.HostAgent";

/// The largest request any service decodes: far above any legitimate request,
/// far below what would let one caller balloon the daemon's memory or store.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

/// The largest health or reflection request decoded. They answer peers
/// without the token, and a call's request is buffered until it is whole, so
/// a 1 MiB limit there would let each open call hold 1 MiB. Real ones (a
/// service name, a symbol, a file name) are tens of bytes.
pub const MAX_OPEN_REQUEST_BYTES: usize = 4 << 10;

/// Streams a client may open on one HTTP/2 connection, beyond those it may
/// keep open for as long as it likes (every watch and every tail obhostd
/// allows): room for the unary calls beside them. Without a limit in its
/// SETTINGS, HTTP/2 lets a client open streams until memory runs out.
const CALLS_BESIDE_STREAMS: usize = 128;

/// After how long without a frame obhostd pings an HTTP/2 connection, and
/// how long it waits for the answer before closing it: a peer that vanished
/// (a host powered off, a dropped route) would otherwise hold its connection
/// and streams forever.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Health is NOT_SERVING while the state store refuses writes (a full disk,
/// an I/O error) and SERVING again once the engine has reopened it, so an
/// orchestrator's probe sees what a step RPC would.
fn follow_store_health(
    mut healthy: tokio::sync::watch::Receiver<bool>,
    reporter: tonic_health::server::HealthReporter,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = healthy.changed() => if changed.is_err() { return },
            }
            let ok = *healthy.borrow_and_update();
            if shutdown.is_cancelled() {
                return;
            }
            if ok {
                info!("state store healthy again: health SERVING");
                reporter
                    .set_serving::<HostAgentServer<service::HostAgentService>>()
                    .await;
            } else {
                warn!("state store refuses writes: health NOT_SERVING");
                reporter
                    .set_not_serving::<HostAgentServer<service::HostAgentService>>()
                    .await;
            }
        }
    });
}

/// The services' descriptors, for reflection and for the call metrics' method
/// names: the test service's too in builds that serve it.
#[cfg(feature = "test-kinds")]
const DESCRIPTOR: &[u8] = proto::ALL_DESCRIPTOR;
#[cfg(not(feature = "test-kinds"))]
const DESCRIPTOR: &[u8] = proto::V1_DESCRIPTOR;

/// Both reflection versions: grpcurl and Python's grpcio-reflection still ask
/// v1alpha, newer tools v1. Peers without the token may call them, so what
/// they decode is kept small.
#[allow(clippy::type_complexity)]
fn reflection() -> anyhow::Result<(
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
)> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(DESCRIPTOR)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    Ok((
        builder()
            .build_v1()?
            .max_decoding_message_size(MAX_OPEN_REQUEST_BYTES),
        builder()
            .build_v1alpha()?
            .max_decoding_message_size(MAX_OPEN_REQUEST_BYTES),
    ))
}

/// The one path of every step-making RPC, with the rules requests are
/// resolved by.
fn step_calls(services: &Services) -> step_requests::StepCalls {
    step_requests::StepCalls {
        engine: services.engine.clone(),
        tasks: services.tasks.clone(),
        rules: Arc::new(step_requests::Rules {
            policy: services.policy.clone(),
            agent: services.agent.clone(),
        }),
    }
}

/// Serves until `shutdown` fires, then drains for at most `drain`: in-flight
/// unary calls finish, WatchSteps streams end with UNAVAILABLE (the engine's
/// watches see the same token), and whatever is still open after the bound is
/// dropped so a stop never hangs. `max_watchers` sizes the streams one
/// connection may open.
pub async fn serve(
    mut listeners: Listeners,
    services: Services,
    access: Arc<Access>,
    shutdown: CancellationToken,
    drain: Duration,
    max_watchers: usize,
) -> anyhow::Result<()> {
    let (health_reporter, health_service) = health(&services.engine, &shutdown).await;
    let (reflection, reflection_v1alpha) = reflection()?;

    let interceptor = auth::Interceptor(access.clone());
    let engine = services.engine.clone();
    let steps = step_calls(&services);
    let count_calls = call_counter(&services.metrics);
    let agent = InterceptedService::new(
        HostAgentServer::new(host_agent(services, steps.clone(), &shutdown))
            .max_decoding_message_size(MAX_REQUEST_BYTES),
        interceptor.clone(),
    );
    let streams = (max_watchers + tail::MAX_TAILS + CALLS_BESIDE_STREAMS)
        .try_into()
        .unwrap_or(u32::MAX);
    // The peer check wraps every service, health and reflection included; the
    // call counter wraps it, so refusals are counted too. Inside the peer
    // check, the limits on what an unauthenticated connection may hold.
    let router = Server::builder()
        .max_concurrent_streams(streams)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .layer(count_calls)
        .layer(tonic::service::InterceptorLayer::new(auth::PeerCheck(
            access.clone(),
        )))
        .layer(peer_calls::PeerCallsLayer::new(access.clone()))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(agent);
    #[cfg(feature = "test-kinds")]
    let router = router.add_service(InterceptedService::new(
        proto::testing::v1::step_testing_server::StepTestingServer::new(
            testing::StepTestingService::new(steps),
        )
        .max_decoding_message_size(MAX_REQUEST_BYTES),
        interceptor,
    ));
    #[cfg(not(feature = "test-kinds"))]
    drop(interceptor);

    let peers = peers::Peers::new(peers::Limits::default());
    peers.spawn_idle_sweep(shutdown.clone());
    let incoming = listen::incoming(&mut listeners, access, peers, shutdown.clone());
    let signal = shutdown.clone();
    let server = router.serve_with_incoming_shutdown(incoming, async move {
        signal.cancelled().await;
        health_reporter
            .set_not_serving::<HostAgentServer<service::HostAgentService>>()
            .await;
    });
    tokio::select! {
        r = server => r?,
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(drain).await;
        } => {
            warn!(bound = ?drain, "connections still open after the shutdown bound; closing them");
        }
    }
    listeners.remove_sockets();
    stop_engine(&engine).await;
    info!("gRPC server stopped");
    Ok(())
}

/// The HostAgent service over what the RPCs call into.
fn host_agent(
    services: Services,
    steps: step_requests::StepCalls,
    shutdown: &CancellationToken,
) -> service::HostAgentService {
    service::HostAgentService {
        engine: services.engine,
        steps,
        registry: services.registry,
        policy: services.policy,
        tails: tail::Slots::new(services.metrics.log_tails()),
        shutdown: shutdown.clone(),
    }
}

/// Counts every call by service and method, refusals included.
fn call_counter(metrics: &Arc<crate::metrics::Metrics>) -> crate::metrics::grpc::GrpcMetricsLayer {
    crate::metrics::grpc::GrpcMetricsLayer::new(
        metrics.clone(),
        &[
            DESCRIPTOR,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        ],
    )
}

/// The health service, SERVING while the state store takes writes.
async fn health(
    engine: &Engine,
    shutdown: &CancellationToken,
) -> (
    tonic_health::server::HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<HostAgentServer<service::HostAgentService>>()
        .await;
    follow_store_health(engine.healthy(), reporter.clone(), shutdown.clone());
    (
        reporter,
        service.max_decoding_message_size(MAX_OPEN_REQUEST_BYTES),
    )
}

/// Once the calls are drained: the steps still running get a moment to
/// stop, then the store is closed.
async fn stop_engine(engine: &Engine) {
    if !engine.drain(Duration::from_secs(2)).await {
        warn!("some steps did not stop within 2s of shutdown");
    }
    engine.close().await;
}
