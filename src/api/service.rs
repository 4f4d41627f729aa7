//! `obhost.v1.HostAgent`: each RPC validates, converts, calls the engine and
//! converts back. No policy or OS access lives here.

use std::pin::Pin;

use prost::Message;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::debug;

use super::step_requests::StepCalls;
use super::{audit, convert, status, tail, validate};
use crate::proto::v1 as pb;
use crate::proto::v1::host_agent_server::HostAgent;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::bounds::quote;
use crate::observer::Registry;
use crate::observer::log::Tail;
use crate::policy::{Policy, checked_path};
use crate::steps::model::validate_id;
use crate::steps::{Engine, Filter, WatchError};

/// Default and largest ListSteps page.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;
/// Encoded bytes of a ListSteps page, well under the 4 MiB clients accept by default.
const MAX_PAGE_BYTES: usize = 2 * 1024 * 1024;
/// Responses a WatchSteps stream buffers before the subscriber counts as slow.
const WATCH_STREAM_BUFFER: usize = 64;
/// step_ids one WatchSteps may name: each record is compared against all of them.
const MAX_WATCH_IDS: usize = 256;

pub struct HostAgentService {
    pub(super) engine: Engine,
    /// Every RPC that makes a step goes through here.
    pub(super) steps: StepCalls,
    pub(super) registry: Arc<Registry>,
    pub(super) policy: Policy,
    /// Open TailObserverLog streams, against their limit.
    pub(super) tails: tail::Slots,
    /// Fires at shutdown: TailObserverLog streams end with UNAVAILABLE (the
    /// engine's watches see the same token).
    pub(super) shutdown: CancellationToken,
}

fn step_response<T>(
    r: Result<crate::steps::StepRecord, crate::steps::EngineError>,
    wrap: impl FnOnce(Option<pb::Step>) -> T,
) -> Result<Response<T>, Status> {
    let record = r.map_err(status::from_engine)?;
    Ok(Response::new(wrap(Some(convert::step(record)))))
}

/// Page tokens are opaque to callers; inside, the last id of the previous page.
fn encode_token(id: &str) -> String {
    id.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Decodes a page token; anything this daemon did not issue is INVALID_ARGUMENT.
/// Works on bytes, never on `str` slices, so no token (e.g. non-ASCII) can make
/// it index inside a character and panic.
fn decode_token(token: &str) -> Result<String, Status> {
    let bad = || {
        validate::invalid(format!(
            "page_token '{}' was not issued by this daemon; pass next_page_token from the previous ListSteps response, or none for the first page",
            quote(token)
        ))
    };
    let hex = token.as_bytes();
    if !hex.len().is_multiple_of(2) {
        return Err(bad());
    }
    let digit = |b: u8| (b as char).to_digit(16);
    let bytes = hex
        .chunks_exact(2)
        .map(|pair| Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8))
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(bad)?;
    let id = String::from_utf8(bytes).map_err(|_| bad())?;
    validate_id("page_token", &id).map_err(|_| bad())?;
    Ok(id)
}

/// A dag_id filter must be an id; the message quotes a capped value.
fn dag_filter(dag_id: &str) -> Result<(), Status> {
    if dag_id.is_empty() {
        return Ok(());
    }
    validate_id("dag_id", dag_id).map_err(|_| {
        validate::invalid(format!(
            "dag_id '{}' is not a valid id; give 1-128 of letters, digits and . _ : -",
            quote(dag_id)
        ))
    })
}

#[tonic::async_trait]
impl HostAgent for HostAgentService {
    async fn prepare(
        &self,
        request: Request<pb::PrepareRequest>,
    ) -> Result<Response<pb::PrepareResponse>, Status> {
        self.steps.call(request).await
    }

    async fn start_observer(
        &self,
        request: Request<pb::StartObserverRequest>,
    ) -> Result<Response<pb::StartObserverResponse>, Status> {
        self.steps.call(request).await
    }

    async fn wait_observer_active(
        &self,
        request: Request<pb::WaitObserverActiveRequest>,
    ) -> Result<Response<pb::WaitObserverActiveResponse>, Status> {
        self.steps.call(request).await
    }

    async fn start_agent_service(
        &self,
        request: Request<pb::StartAgentServiceRequest>,
    ) -> Result<Response<pb::StartAgentServiceResponse>, Status> {
        self.steps.call(request).await
    }

    async fn stop_observer(
        &self,
        request: Request<pb::StopObserverRequest>,
    ) -> Result<Response<pb::StopObserverResponse>, Status> {
        self.steps.call(request).await
    }

    async fn get_step(
        &self,
        request: Request<pb::GetStepRequest>,
    ) -> Result<Response<pb::GetStepResponse>, Status> {
        let id = &request.get_ref().step_id;
        validate::step_id(id)?;
        step_response(self.engine.get(id).await, |step| pb::GetStepResponse {
            step,
        })
    }

    async fn list_steps(
        &self,
        request: Request<pb::ListStepsRequest>,
    ) -> Result<Response<pb::ListStepsResponse>, Status> {
        let req = request.into_inner();
        dag_filter(&req.dag_id)?;
        let state = pb::StepState::try_from(req.state)
            .map_err(|_| validate::invalid(format!("state {} is not a StepState", req.state)))?;
        let page_size = match req.page_size as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let after = match req.page_token.as_str() {
            "" => None,
            token => Some(decode_token(token)?),
        };
        let filter = Filter {
            dag_id: req.dag_id,
            step_ids: Vec::new(),
            state: convert::state_filter(state),
        };
        let (records, mut next) = self
            .engine
            .list(&filter, page_size, MAX_PAGE_BYTES, after.as_deref())
            .await
            .map_err(status::from_engine)?;
        // The engine budgets a page by stored bytes; the encoded size is what a
        // client's default 4 MiB message limit sees, so it has the last word.
        let mut steps = Vec::with_capacity(records.len());
        let mut bytes = 0;
        let mut last = None;
        for r in records {
            let id = r.id().to_string();
            let step = convert::step(r);
            bytes += step.encoded_len();
            if !steps.is_empty() && bytes > MAX_PAGE_BYTES {
                next = last;
                break;
            }
            last = Some(id);
            steps.push(step);
        }
        Ok(Response::new(pb::ListStepsResponse {
            steps,
            next_page_token: next.as_deref().map(encode_token).unwrap_or_default(),
        }))
    }

    type WatchStepsStream =
        Pin<Box<dyn Stream<Item = Result<pb::WatchStepsResponse, Status>> + Send + 'static>>;

    async fn watch_steps(
        &self,
        request: Request<pb::WatchStepsRequest>,
    ) -> Result<Response<Self::WatchStepsStream>, Status> {
        let req = request.into_inner();
        dag_filter(&req.dag_id)?;
        if req.step_ids.len() > MAX_WATCH_IDS {
            return Err(validate::invalid(format!(
                "step_ids names {} steps; at most {MAX_WATCH_IDS} are allowed: watch by dag_id, or open fewer, narrower watches",
                req.step_ids.len()
            )));
        }
        for id in &req.step_ids {
            validate::step_id(id)?;
        }
        let filter = Filter {
            dag_id: req.dag_id,
            step_ids: req.step_ids,
            state: None,
        };
        let mut watch = self
            .engine
            .watch(filter, req.after_revision)
            .map_err(status::from_engine)?;
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_STREAM_BUFFER);
        tokio::spawn(async move {
            loop {
                // A client that went away ends the watch at once, even when no
                // step changes, so its max_watchers slot is given back.
                let next = tokio::select! {
                    () = tx.closed() => {
                        debug!("watcher went away");
                        return;
                    }
                    next = watch.next() => next,
                };
                let item = match next {
                    Ok(record) => Ok(pb::WatchStepsResponse {
                        step: Some(convert::step(record)),
                    }),
                    Err(e @ WatchError::FellBehind { .. }) => Err(Status::aborted(e.to_string())),
                    Err(e @ (WatchError::ShuttingDown { .. } | WatchError::Store { .. })) => {
                        Err(Status::unavailable(e.to_string()))
                    }
                };
                let last = item.is_err();
                if tx.send(item).await.is_err() {
                    debug!("watcher went away");
                    return;
                }
                if last {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn cancel_step(
        &self,
        request: Request<pb::CancelStepRequest>,
    ) -> Result<Response<pb::CancelStepResponse>, Status> {
        let id = &request.get_ref().step_id;
        let audit = audit::Call::new(&request, "CancelStep", id);
        let result = match validate::step_id(id) {
            Ok(()) => step_response(self.engine.cancel(id).await, |step| {
                pb::CancelStepResponse { step }
            }),
            Err(e) => Err(e),
        };
        audit.record(&result);
        result
    }

    async fn retry_step(
        &self,
        request: Request<pb::RetryStepRequest>,
    ) -> Result<Response<pb::RetryStepResponse>, Status> {
        let id = &request.get_ref().step_id;
        let audit = audit::Call::new(&request, "RetryStep", id);
        let result = match validate::step_id(id) {
            Ok(()) => step_response(self.engine.retry(id).await, |step| pb::RetryStepResponse {
                step,
            }),
            Err(e) => Err(e),
        };
        audit.record(&result);
        result
    }

    async fn get_observer(
        &self,
        request: Request<pb::GetObserverRequest>,
    ) -> Result<Response<pb::GetObserverResponse>, Status> {
        let (registry, policy) = (self.registry.clone(), self.policy.clone());
        let home = request.into_inner().home_path;
        // Resolving the home reads the disk, the status reads /proc: both on
        // the blocking pool.
        let status = tokio::task::spawn_blocking(move || {
            let home = checked_path("home_path", &home, &policy).map_err(status::from_spec)?;
            Ok::<_, Status>(crate::observer::status::status(&home, &registry))
        })
        .await
        .map_err(|e| Status::internal(format!("inspecting the observer failed: {e}")))??;
        Ok(Response::new(pb::GetObserverResponse {
            observer: Some(convert::observer_status(status)),
        }))
    }

    async fn get_host_info(
        &self,
        _request: Request<pb::GetHostInfoRequest>,
    ) -> Result<Response<pb::GetHostInfoResponse>, Status> {
        let facts = tokio::task::spawn_blocking(crate::host::host_facts)
            .await
            .map_err(|e| Status::internal(format!("reading host facts failed: {e}")))?
            .map_err(|e| Status::internal(format!("reading host facts from /proc failed: {e}")))?;
        Ok(Response::new(pb::GetHostInfoResponse {
            host: Some(convert::host_info(facts)),
        }))
    }

    type TailObserverLogStream = Pin<Box<dyn Stream<Item = tail::Item> + Send + 'static>>;

    /// Audited like the calls that change things: it has root read a file in a
    /// dir another user controls, on the caller's behalf.
    async fn tail_observer_log(
        &self,
        request: Request<pb::TailObserverLogRequest>,
    ) -> Result<Response<Self::TailObserverLogStream>, Status> {
        let mut audit = audit::Call::new(&request, "TailObserverLog", "");
        let req = request.into_inner();
        audit.about(
            "tail_observer_log",
            std::path::Path::new(&req.home_path),
            "",
        );
        let opened = async {
            let slot = self.tails.acquire()?;
            let policy = self.policy.clone();
            let lines = validate::tail_lines(req.lines);
            let (errors_only, follow) = (req.errors_only, req.follow);
            // Resolving the home and finding the tail's start read the disk:
            // both on the blocking pool, once per request.
            let tail = tokio::task::spawn_blocking(move || {
                let home = checked_path("home_path", &req.home_path, &policy)
                    .map_err(status::from_spec)?;
                Tail::open(&home, lines, errors_only, follow).map_err(status::from_log)
            })
            .await
            .map_err(|e| Status::internal(format!("opening the observer's log failed: {e}")))??;
            Ok::<_, Status>(tail::spawn(tail, follow, self.shutdown.clone(), slot))
        }
        .await;
        audit.record(&opened);
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(opened?),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_junk() {
        let id = "dag-1:step.2";
        assert_eq!(decode_token(&encode_token(id)).unwrap(), id);
        assert!(decode_token("zz").is_err());
        assert!(decode_token("abc").is_err());
        // Non-ASCII used to slice inside a character and panic the handler.
        for junk in ["aéb", "éé", "ab\u{1F600}", "+1", "0g", "2f2e2e"] {
            let e = decode_token(junk).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{junk}");
        }
        let e = decode_token(&"é".repeat(10_000)).unwrap_err();
        assert!(e.message().len() < 600, "{}", e.message().len());
    }
}
