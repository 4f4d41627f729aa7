//! The `/metrics` endpoint: its own small HTTP/1 server (axum) on
//! `[metrics] listen`, never the gRPC port, so scraping needs neither the
//! token nor a client certificate and cannot reach a gRPC method. Every other
//! path is 404.
//!
//! Anyone who can reach the port (every local user, on loopback) may connect,
//! so the scraper must be served whatever others hold: eight idle connections
//! once took every place and 19 scrapes of 20 failed. A connection has
//! [`REQUEST_WAIT`] to send its request, which a scraper does at once, and
//! when every place is taken a newcomer closes the oldest connection still
//! waiting for its request (then one whose answer has sat unread for
//! [`SLOW_ANSWER`]) instead of being turned away. So idle connections can only
//! displace each other, and a scrape, once its request is in, is never
//! closed for them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use super::Metrics;

/// The OpenMetrics text format's content type.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Connections held at once, so nobody who can reach the port can take
/// obhostd's file descriptors (two each: the socket and its [`Probe`]); far
/// more than scrapers need (one each), and as many as a flood must push
/// through between a scraper's connect and its request to close it.
pub const MAX_CONNECTIONS: usize = 128;
/// How long a connection may take to send its whole request head. A scraper
/// sends it as soon as it connects.
const REQUEST_WAIT: Duration = Duration::from_secs(3);
/// An answer still unsent after this is held up by a client that does not
/// read it; its connection may be closed for a newcomer.
const SLOW_ANSWER: Duration = Duration::from_secs(2);
/// A connection serves one request (no keep-alive) within this bound, so
/// nothing holds a place longer.
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
    let places = Places::new(MAX_CONNECTIONS);
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
        let Some(place) = places.take(Instant::now(), Probe::of(&stream)) else {
            drop(stream);
            continue;
        };
        let app = app.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let closed = place.close.clone();
            let answering = place.at.clone();
            // Called once the request head is in: from then on the
            // connection is a scrape being answered.
            let service = hyper::service::service_fn(move |req| {
                answering.answering(Instant::now());
                app.clone().oneshot(req)
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(REQUEST_WAIT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = closed.cancelled() => {}
                _ = tokio::time::timeout(CONNECTION_BOUND, conn) => {}
            }
            drop(place);
        });
    }
}

/// A second handle on a connection's socket, to see whether its request
/// head has arrived without waiting for its task: a scraper sends its request
/// as soon as it connects, so under a flood of new connections its head is
/// there long before its task has parsed it, and it must not be taken for an
/// idle connection a newcomer may close. Shares the socket's non-blocking
/// mode, so a look never waits; it takes no bytes.
struct Probe(std::net::TcpStream);

impl Probe {
    fn of(stream: &tokio::net::TcpStream) -> Option<Probe> {
        use std::os::fd::AsFd;
        let fd = stream.as_fd().try_clone_to_owned().ok()?;
        Some(Probe(fd.into()))
    }

    fn head_in(&self) -> bool {
        let mut buf = [0u8; 2048];
        self.0
            .peek(&mut buf)
            .is_ok_and(|n| buf[..n].windows(4).any(|w| w == b"\r\n\r\n"))
    }
}

/// The connections held, by age, and whether each has sent its request.
struct Places {
    max: usize,
    state: Mutex<PlacesState>,
}

#[derive(Default)]
struct PlacesState {
    next: u64,
    /// By id, which grows: the first is the oldest.
    held: BTreeMap<u64, Held>,
    /// Connections closed or refused for a full port since the last WARN.
    displaced: u64,
    warned: Option<Instant>,
}

struct Held {
    /// When its request arrived; None while the connection waits for it.
    answering: Option<Instant>,
    probe: Option<Probe>,
    close: CancellationToken,
}

impl PlacesState {
    /// The oldest connection still waiting for its request. Each is looked
    /// at first: one whose head has arrived meanwhile is a scrape now.
    fn waiting_victim(&mut self, now: Instant) -> Option<u64> {
        for (id, h) in self.held.iter_mut() {
            if h.answering.is_some() {
                continue;
            }
            if h.probe.as_ref().is_some_and(Probe::head_in) {
                h.answering = Some(now);
                continue;
            }
            return Some(*id);
        }
        None
    }

    /// The connection whose answer has waited longest past [`SLOW_ANSWER`].
    fn stuck_victim(&self, now: Instant) -> Option<u64> {
        self.held
            .iter()
            .filter_map(|(id, h)| Some((*id, h.answering?)))
            .filter(|(_, since)| now.saturating_duration_since(*since) >= SLOW_ANSWER)
            .min_by_key(|(_, since)| *since)
            .map(|(id, _)| id)
    }
}

impl Places {
    fn new(max: usize) -> Arc<Places> {
        Arc::new(Places {
            max,
            state: Mutex::new(PlacesState::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, PlacesState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for a new connection: a free one, else the one of the oldest
    /// connection still waiting for its request, else of the one whose answer
    /// has waited longest past [`SLOW_ANSWER`]. None when every place is
    /// answering a scrape that is moving.
    fn take(self: &Arc<Self>, now: Instant, probe: Option<Probe>) -> Option<Place> {
        let mut s = self.lock();
        if s.held.len() >= self.max {
            let victim = s.waiting_victim(now).or_else(|| s.stuck_victim(now));
            s.displaced += 1;
            if s.warned
                .is_none_or(|w| now.saturating_duration_since(w) >= Duration::from_secs(60))
            {
                warn!(
                    closed_or_refused = s.displaced,
                    "metrics: all {} connections are taken; closing the oldest idle ones for \
                     newcomers. A local user may be holding connections open; scrapes are served \
                     anyway",
                    self.max
                );
                s.displaced = 0;
                s.warned = Some(now);
            }
            let Some(gone) = victim.and_then(|id| s.held.remove(&id)) else {
                debug!("metrics: refused a connection, every place is answering a scrape");
                return None;
            };
            gone.close.cancel();
        }
        let id = s.next;
        s.next += 1;
        let close = CancellationToken::new();
        s.held.insert(
            id,
            Held {
                answering: probe.as_ref().is_some_and(Probe::head_in).then_some(now),
                probe,
                close: close.clone(),
            },
        );
        Some(Place {
            at: PlaceRef {
                places: self.clone(),
                id,
            },
            close,
        })
    }
}

/// A connection's place; given back when dropped.
struct Place {
    at: PlaceRef,
    close: CancellationToken,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.at.places.lock().held.remove(&self.at.id);
    }
}

/// Where a connection's place is, for its request handler to mark.
#[derive(Clone)]
struct PlaceRef {
    places: Arc<Places>,
    id: u64,
}

impl PlaceRef {
    fn answering(&self, now: Instant) {
        if let Some(h) = self.places.lock().held.get_mut(&self.id) {
            h.answering.get_or_insert(now);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newcomer_displaces_the_oldest_idle_connection_never_a_scrape_being_answered() {
        let places = Places::new(3);
        let now = Instant::now();
        let scrape = places.take(now, None).unwrap();
        scrape.at.answering(now);
        let idle_old = places.take(now, None).unwrap();
        let idle_new = places.take(now, None).unwrap();
        let newcomer = places.take(now, None).unwrap();
        assert!(idle_old.close.is_cancelled());
        assert!(!scrape.close.is_cancelled() && !idle_new.close.is_cancelled());
        // Every place answering a scrape that moves: the newcomer is refused.
        idle_new.at.answering(now);
        newcomer.at.answering(now);
        assert!(places.take(now, None).is_none());
        // An answer unread for SLOW_ANSWER gives way, the oldest first.
        let later = now + SLOW_ANSWER;
        assert!(places.take(later, None).is_some());
        assert!(scrape.close.is_cancelled() && !idle_new.close.is_cancelled());
    }

    /// A loopback connection: (the client's end, the server's end).
    async fn pair(
        listener: &tokio::net::TcpListener,
    ) -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        (client, listener.accept().await.unwrap().0)
    }

    #[tokio::test]
    async fn a_connection_whose_request_has_arrived_is_never_taken_for_an_idle_one() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let places = Places::new(2);
        let now = Instant::now();
        // Accepted before its request came, then an idle one.
        let (mut scraper, server_end) = pair(&listener).await;
        let scrape = places.take(now, Probe::of(&server_end)).unwrap();
        let (_idler, idle_end) = pair(&listener).await;
        let idle = places.take(now, Probe::of(&idle_end)).unwrap();
        // The request arrives; nothing has parsed it yet.
        scraper
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let probe = Probe::of(&server_end).unwrap();
        let end = Instant::now() + Duration::from_secs(5);
        while !probe.head_in() {
            assert!(Instant::now() < end, "the request never arrived");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The oldest waiting connection is the scrape, but it is one now.
        let _newcomer = places.take(now, None).unwrap();
        assert!(!scrape.close.is_cancelled() && idle.close.is_cancelled());
        // A request already there when the connection is accepted counts
        // from the start, and a half-sent head does not.
        let (mut quick, quick_end) = pair(&listener).await;
        quick.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let (mut slow, slow_end) = pair(&listener).await;
        slow.write_all(b"GET / HTTP/1.0\r\n").await.unwrap();
        let (quick_probe, slow_probe) = (
            Probe::of(&quick_end).unwrap(),
            Probe::of(&slow_end).unwrap(),
        );
        let end = Instant::now() + Duration::from_secs(5);
        while !quick_probe.head_in() {
            assert!(Instant::now() < end, "the request never arrived");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!slow_probe.head_in());
        let fresh = Places::new(1);
        let quick_place = fresh.take(now, Some(quick_probe)).unwrap();
        assert!(fresh.take(now, Some(slow_probe)).is_none());
        assert!(!quick_place.close.is_cancelled());
    }

    #[test]
    fn a_dropped_connection_gives_its_place_back() {
        let places = Places::new(1);
        let now = Instant::now();
        let a = places.take(now, None).unwrap();
        a.at.answering(now);
        assert!(places.take(now, None).is_none());
        drop(a);
        let b = places.take(now, None);
        assert!(b.is_some());
        assert_eq!(places.lock().held.len(), 1);
    }
}
