//! The call half of [`super::peers`]: a tower layer around every service that
//! decides, per call, whether its connection has proved itself, and otherwise
//! holds the call to the untrusted limits for as long as its response lives.
//!
//! Trust is decided here, before any service runs, from the same checks the
//! services make ([`Access::trusts`]): a call carrying the right token makes
//! its connection trusted even when the call is a health check, so an
//! orchestrator that sends its token on every call never meets these limits.
//! A refused call is answered at once with RESOURCE_EXHAUSTED and holds
//! nothing; the place of an admitted one is given back when its response body
//! ends or is dropped (the client went away, the connection closed).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};
use tonic::Status;

use super::auth::Access;
use super::peer::ConnInfo;
use super::peers::{CallSlot, Refused};

/// Adds the per-call limits to a tonic server (`Server::builder().layer(..)`),
/// inside the peer check (a peer it refuses never gets here).
#[derive(Clone)]
pub struct PeerCallsLayer {
    access: Arc<Access>,
}

impl PeerCallsLayer {
    pub fn new(access: Arc<Access>) -> PeerCallsLayer {
        PeerCallsLayer { access }
    }
}

impl<S> tower::Layer<S> for PeerCallsLayer {
    type Service = PeerCalls<S>;
    fn layer(&self, inner: S) -> PeerCalls<S> {
        PeerCalls {
            inner,
            access: self.access.clone(),
        }
    }
}

#[derive(Clone)]
pub struct PeerCalls<S> {
    inner: S,
    access: Arc<Access>,
}

/// The refusal's text: what happened and what the caller can do.
fn refusal(why: Refused) -> Status {
    match why {
        Refused::PeerCalls => Status::resource_exhausted(
            "this unauthenticated peer already has as many calls open as obhostd allows one; \
             send the bearer token (obhostctl --token-file FILE) or close calls you no longer read",
        ),
        Refused::AllCalls => Status::resource_exhausted(
            "unauthenticated connections already have as many calls open as obhostd allows; \
             send the bearer token (obhostctl --token-file FILE) or try again later",
        ),
        Refused::Closed => Status::unavailable(
            "obhostd closed this unauthenticated connection (idle, or displaced by newer ones); \
             reconnect, and send the bearer token to keep a connection",
        ),
    }
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for PeerCalls<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = http::Response<HeldBody<ResBody>>;
    type Error = S::Error;
    type Future = CallFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        // Every connection comes from our listeners with its ConnInfo; the
        // peer check has refused anything else already. Fail closed anyway.
        let Some(info) = req.extensions().get::<ConnInfo>() else {
            return CallFuture::Refused {
                status: Some(Status::permission_denied(
                    "the connection's peer is unknown; obhostd refuses it",
                )),
            };
        };
        if !info.conn.is_trusted() {
            let bearer = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if self.access.trusts(&info.peer, bearer) {
                info.conn.trust();
            }
        }
        match info.conn.begin_call() {
            Ok(slot) => CallFuture::Running {
                inner: self.inner.call(req),
                slot: Some(slot),
            },
            Err(why) => CallFuture::Refused {
                status: Some(refusal(why)),
            },
        }
    }
}

pin_project_lite::pin_project! {
    #[project = CallFutureProj]
    pub enum CallFuture<F> {
        Refused { status: Option<Status> },
        Running {
            #[pin]
            inner: F,
            slot: Option<CallSlot>,
        },
    }
}

impl<F, B, E> std::future::Future for CallFuture<F>
where
    F: std::future::Future<Output = Result<http::Response<B>, E>>,
    B: Default,
{
    type Output = Result<http::Response<HeldBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            CallFutureProj::Refused { status } => {
                let status = status
                    .take()
                    .unwrap_or_else(|| Status::internal("a refused call was polled twice"));
                Poll::Ready(Ok(status
                    .into_http::<B>()
                    .map(|inner| HeldBody { inner, _slot: None })))
            }
            CallFutureProj::Running { inner, slot } => {
                let response = ready!(inner.poll(cx))?;
                let slot = slot.take();
                Poll::Ready(Ok(response.map(|inner| HeldBody { inner, _slot: slot })))
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that holds its call's place until it is dropped.
    pub struct HeldBody<B> {
        #[pin]
        inner: B,
        _slot: Option<CallSlot>,
    }
}

impl<B: Body> Body for HeldBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
