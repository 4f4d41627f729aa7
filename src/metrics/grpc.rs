//! `obhost_grpc_requests_total{method,code}`: a tower layer around every gRPC
//! service (health and reflection included), so no handler counts anything.
//!
//! The code is read where gRPC puts it: in the response headers of a
//! trailers-only response (every error tonic returns from a unary call, and the
//! auth layer's refusals), otherwise in the trailers that end the body (OK
//! unary responses, and streams when they end). A body dropped before its
//! trailers (the client went away) counts as `Cancelled`.
//!
//! The method label is the request path only when it names a method of a
//! service we serve (read from the descriptor sets); anything else is
//! `other`, so callers cannot grow the registry with made-up paths.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};
use prost::Message;

use super::Metrics;

/// Adds the request counter to a tonic server (`Server::builder().layer(..)`).
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    metrics: Arc<Metrics>,
    known: Arc<HashSet<String>>,
}

impl GrpcMetricsLayer {
    /// `descriptor_sets`: the encoded `FileDescriptorSet`s of every service
    /// served; their methods are the only label values besides `other`.
    pub fn new(metrics: Arc<Metrics>, descriptor_sets: &[&[u8]]) -> GrpcMetricsLayer {
        let mut known = HashSet::new();
        for bytes in descriptor_sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(*bytes) else {
                continue;
            };
            for file in set.file {
                let package = file.package.unwrap_or_default();
                for service in file.service {
                    let service_name = service.name.unwrap_or_default();
                    for method in service.method {
                        let name = method.name.unwrap_or_default();
                        known.insert(if package.is_empty() {
                            format!("/{service_name}/{name}")
                        } else {
                            format!("/{package}.{service_name}/{name}")
                        });
                    }
                }
            }
        }
        GrpcMetricsLayer {
            metrics,
            known: Arc::new(known),
        }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    layer: GrpcMetricsLayer,
}

/// One call, counted exactly once: when its code is known, or as `Cancelled`
/// when dropped before that.
struct Call {
    metrics: Arc<Metrics>,
    method: String,
    code: Option<&'static str>,
}

impl Call {
    fn finish(mut self, code: &'static str) {
        self.code = Some(code);
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        let code = self.code.unwrap_or("Cancelled");
        self.metrics.grpc_request(&self.method, code);
    }
}

/// The status code name (`NotFound`) of a `grpc-status` header value.
fn code_name(value: &http::HeaderValue) -> &'static str {
    match tonic::Code::from_bytes(value.as_bytes()) {
        tonic::Code::Ok => "Ok",
        tonic::Code::Cancelled => "Cancelled",
        tonic::Code::Unknown => "Unknown",
        tonic::Code::InvalidArgument => "InvalidArgument",
        tonic::Code::DeadlineExceeded => "DeadlineExceeded",
        tonic::Code::NotFound => "NotFound",
        tonic::Code::AlreadyExists => "AlreadyExists",
        tonic::Code::PermissionDenied => "PermissionDenied",
        tonic::Code::ResourceExhausted => "ResourceExhausted",
        tonic::Code::FailedPrecondition => "FailedPrecondition",
        tonic::Code::Aborted => "Aborted",
        tonic::Code::OutOfRange => "OutOfRange",
        tonic::Code::Unimplemented => "Unimplemented",
        tonic::Code::Internal => "Internal",
        tonic::Code::Unavailable => "Unavailable",
        tonic::Code::DataLoss => "DataLoss",
        tonic::Code::Unauthenticated => "Unauthenticated",
    }
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<CountedBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let path = req.uri().path();
        let method = if self.layer.known.contains(path) {
            path.trim_start_matches('/').to_string()
        } else {
            "other".to_string()
        };
        ResponseFuture {
            inner: self.inner.call(req),
            call: Some(Call {
                metrics: self.layer.metrics.clone(),
                method,
                code: None,
            }),
        }
    }
}

pin_project_lite::pin_project! {
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
    }
}

impl<F, B, E> std::future::Future for ResponseFuture<F>
where
    F: std::future::Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<CountedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let call = this.call.take();
        Poll::Ready(match result {
            Ok(response) => {
                let call = match (call, response.headers().get("grpc-status")) {
                    // Trailers-only: the call ends here.
                    (Some(call), Some(status)) => {
                        call.finish(code_name(status));
                        None
                    }
                    (call, _) => call,
                };
                Ok(response.map(|inner| CountedBody { inner, call }))
            }
            Err(e) => {
                if let Some(call) = call {
                    call.finish("Unavailable");
                }
                Err(e)
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// The response body; counts the call when its trailers pass.
    pub struct CountedBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }
}

impl<B: Body> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(status) = f.trailers_ref().and_then(|t| t.get("grpc-status"))
                    && let Some(call) = this.call.take()
                {
                    call.finish(code_name(status));
                }
            }
            // A body that ends without a status: gRPC calls that Unknown.
            None => {
                if let Some(call) = this.call.take() {
                    call.finish("Unknown");
                }
            }
            Some(Err(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
