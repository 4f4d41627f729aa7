//! The RPCs that make a step, as one path. Prepare, StartObserver,
//! WaitObserverActive, StartAgentService and StopObserver (and the test-only
//! RunTestStep) differ only in how their request becomes typed
//! [`StepParams`]; that is each one's [`StepRequest`] impl, and everything
//! else is [`StepCalls::call`].
//!
//! The path, in order: the audit trail names the caller and what it asked
//! for; `meta` is checked first, so a bad step_id is reported before anything
//! else; the request is converted and resolved once into typed parameters, on
//! the blocking pool (resolving judges paths by where they lead and looks
//! users up); then the task is built from those parameters and handed to the
//! engine with their stored form, or with `meta.validate_only` only checked
//! against a step already known by that id.

use std::path::Path;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{audit, convert, status, validate};
use crate::config::AgentServiceConfig;
use crate::policy::Policy;
use crate::proto::v1 as pb;
use crate::steps::{Engine, Secrets, StepKind, StepSpec};
use crate::tasks::wait_observer_active::{self, PASSWORD};
use crate::tasks::{
    StepParams, Tasks, prepare, start_agent_service, start_observer, stop_observer,
};

/// What resolving a request is judged by: the host's policy and
/// `[agent_service]`.
pub struct Rules {
    pub policy: Policy,
    pub agent: AgentServiceConfig,
}

/// A request that makes a step of one kind.
pub trait StepRequest: Send + 'static {
    /// The RPC, as the audit trail names it.
    const CALL: &'static str;
    /// The audit trail's name for what the step does.
    const ACTION: &'static str;
    const KIND: StepKind;
    type Reply;

    fn meta(&self) -> Option<&pb::StepMeta>;

    /// The home and the OS user as the caller named them, so the audit trail
    /// of a refused request says what was asked for.
    fn named(&self) -> (&str, &str);

    /// Converts the request and resolves it against `rules`, for the step
    /// `spec` (meta already checked). Blocking: paths are resolved, users
    /// looked up.
    fn resolve(self, rules: &Rules, spec: &StepSpec) -> Result<(StepParams, Secrets), Status>;

    fn reply(step: Option<pb::Step>) -> Self::Reply;
}

/// The one handler of every step-making RPC.
#[derive(Clone)]
pub struct StepCalls {
    pub engine: Engine,
    pub tasks: Arc<Tasks>,
    pub rules: Arc<Rules>,
}

impl StepCalls {
    pub async fn call<R: StepRequest>(
        &self,
        request: Request<R>,
    ) -> Result<Response<R::Reply>, Status> {
        let req = request.get_ref();
        let step_id = req.meta().map(|m| m.step_id.as_str()).unwrap_or_default();
        let mut audit = audit::Call::new(&request, R::CALL, step_id);
        let (home, user) = req.named();
        audit.about(R::ACTION, Path::new(home), user);
        let step = self.make(request.into_inner(), &mut audit).await;
        audit.record_step(&step);
        Ok(Response::new(R::reply(step?)))
    }

    /// The step the request asks for: `None` when it was only to be checked
    /// (`meta.validate_only`).
    async fn make<R: StepRequest>(
        &self,
        req: R,
        audit: &mut audit::Call,
    ) -> Result<Option<pb::Step>, Status> {
        let mut spec = validate::step_spec(req.meta(), R::KIND)?;
        let validate_only = req.meta().is_some_and(|m| m.validate_only);
        let (rules, judged) = (self.rules.clone(), spec.clone());
        let (params, secrets) = tokio::task::spawn_blocking(move || req.resolve(&rules, &judged))
            .await
            .map_err(|e| Status::internal(format!("checking the request failed: {e}")))??;
        if let (Some(home), user) = params.subject() {
            audit.about(R::ACTION, home, user);
        }
        spec.params = params
            .to_stored()
            .map_err(|e| Status::internal(format!("cannot encode the step's parameters: {e}")))?;
        if validate_only {
            self.engine.check(&spec).map_err(status::from_engine)?;
            return Ok(None);
        }
        let task = self.tasks.task(params);
        let record = self
            .engine
            .submit(spec, task, secrets)
            .await
            .map_err(status::from_engine)?;
        Ok(Some(convert::step(record)))
    }
}

/// The request's observer, resolved by the policy, with the user it runs as.
fn observer(
    observer: Option<pb::ObserverSpec>,
    rules: &Rules,
) -> Result<(crate::observer::ObserverSpec, crate::process::RunAs), Status> {
    let observer = observer.ok_or_else(|| {
        validate::invalid("observer is missing; give at least observer.home_path")
    })?;
    crate::observer::ObserverSpec::resolve_as(convert::raw_spec(observer), &rules.policy)
        .map_err(status::from_spec)
}

fn named_observer(o: &Option<pb::ObserverSpec>) -> (&str, &str) {
    o.as_ref()
        .map(|o| (o.home_path.as_str(), o.user.as_str()))
        .unwrap_or_default()
}

impl StepRequest for pb::PrepareRequest {
    const CALL: &'static str = "Prepare";
    const ACTION: &'static str = "prepare";
    const KIND: StepKind = StepKind::PrepareStartObserver;
    type Reply = pb::PrepareResponse;

    fn meta(&self) -> Option<&pb::StepMeta> {
        self.meta.as_ref()
    }

    fn named(&self) -> (&str, &str) {
        named_observer(&self.observer)
    }

    fn resolve(self, rules: &Rules, _: &StepSpec) -> Result<(StepParams, Secrets), Status> {
        let (spec, _) = observer(self.observer, rules)?;
        let params = prepare::resolve(spec, self.create_dirs, self.skip_checks, self.strict)
            .map_err(status::from_spec)?;
        Ok((StepParams::PrepareStartObserver(params), Secrets::default()))
    }

    fn reply(step: Option<pb::Step>) -> Self::Reply {
        pb::PrepareResponse { step }
    }
}

impl StepRequest for pb::StartObserverRequest {
    const CALL: &'static str = "StartObserver";
    const ACTION: &'static str = "start_observer";
    const KIND: StepKind = StepKind::StartObserverProcess;
    type Reply = pb::StartObserverResponse;

    fn meta(&self) -> Option<&pb::StepMeta> {
        self.meta.as_ref()
    }

    fn named(&self) -> (&str, &str) {
        named_observer(&self.observer)
    }

    fn resolve(self, rules: &Rules, _: &StepSpec) -> Result<(StepParams, Secrets), Status> {
        let (spec, user) = observer(self.observer, rules)?;
        let spec = start_observer::resolve(spec, &user).map_err(status::from_spec)?;
        Ok((StepParams::StartObserverProcess(spec), Secrets::default()))
    }

    fn reply(step: Option<pb::Step>) -> Self::Reply {
        pb::StartObserverResponse { step }
    }
}

impl StepRequest for pb::WaitObserverActiveRequest {
    const CALL: &'static str = "WaitObserverActive";
    const ACTION: &'static str = "wait_observer_active";
    const KIND: StepKind = StepKind::WaitObserverActive;
    type Reply = pb::WaitObserverActiveResponse;

    fn meta(&self) -> Option<&pb::StepMeta> {
        self.meta.as_ref()
    }

    /// `user` here is the MySQL account the probe logs in as, not an OS user.
    fn named(&self) -> (&str, &str) {
        (&self.home_path, "")
    }

    fn resolve(self, rules: &Rules, _: &StepSpec) -> Result<(StepParams, Secrets), Status> {
        let params = wait_observer_active::resolve(convert::raw_wait(&self), &rules.policy)
            .map_err(status::from_spec)?;
        let mut secrets = Secrets::default();
        secrets.insert(PASSWORD, self.password);
        Ok((StepParams::WaitObserverActive(params), secrets))
    }

    fn reply(step: Option<pb::Step>) -> Self::Reply {
        pb::WaitObserverActiveResponse { step }
    }
}

impl StepRequest for pb::StartAgentServiceRequest {
    const CALL: &'static str = "StartAgentService";
    const ACTION: &'static str = "start_agent_service";
    const KIND: StepKind = StepKind::StartAgentService;
    type Reply = pb::StartAgentServiceResponse;

    fn meta(&self) -> Option<&pb::StepMeta> {
        self.meta.as_ref()
    }

    fn named(&self) -> (&str, &str) {
        use pb::start_agent_service_request::Service;
        match &self.service {
            Some(Service::Command(c)) => (&c.cwd, &c.user),
            Some(Service::SystemdUnit(_)) | None => ("", ""),
        }
    }

    fn resolve(self, rules: &Rules, _: &StepSpec) -> Result<(StepParams, Secrets), Status> {
        let raw = convert::raw_agent(&self);
        let params = start_agent_service::resolve(raw, &rules.agent, &rules.policy)
            .map_err(status::from_spec)?;
        Ok((StepParams::StartAgentService(params), Secrets::default()))
    }

    fn reply(step: Option<pb::Step>) -> Self::Reply {
        pb::StartAgentServiceResponse { step }
    }
}

impl StepRequest for pb::StopObserverRequest {
    const CALL: &'static str = "StopObserver";
    const ACTION: &'static str = "stop_observer";
    const KIND: StepKind = StepKind::StopObserverProcess;
    type Reply = pb::StopObserverResponse;

    fn meta(&self) -> Option<&pb::StepMeta> {
        self.meta.as_ref()
    }

    fn named(&self) -> (&str, &str) {
        (&self.home_path, "")
    }

    /// The grace is judged against the step's timeout: a grace as long
    /// would leave no time to SIGKILL and wait.
    fn resolve(self, rules: &Rules, spec: &StepSpec) -> Result<(StepParams, Secrets), Status> {
        let grace = self
            .grace
            .map(std::time::Duration::try_from)
            .transpose()
            .map_err(|_| validate::invalid("grace must not be negative; e.g. 10s"))?;
        let params = stop_observer::resolve(
            &self.home_path,
            grace,
            self.force,
            spec.timeout,
            &rules.policy,
        )
        .map_err(status::from_spec)?;
        Ok((StepParams::StopObserverProcess(params), Secrets::default()))
    }

    fn reply(step: Option<pb::Step>) -> Self::Reply {
        pb::StopObserverResponse { step }
    }
}
