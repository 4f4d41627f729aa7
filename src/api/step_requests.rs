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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rules() -> Rules {
        Rules {
            policy: Policy {
                run_as_root: true,
                ..Policy::default()
            },
            agent: AgentServiceConfig {
                systemd_unit: Some("ocp_agent.service".into()),
                ..AgentServiceConfig::default()
            },
        }
    }

    fn meta(id: &str) -> Option<pb::StepMeta> {
        Some(pb::StepMeta {
            step_id: id.into(),
            ..Default::default()
        })
    }

    /// What the generic path does before resolving: meta into a spec.
    fn spec_of<R: StepRequest>(req: &R) -> StepSpec {
        validate::step_spec(req.meta(), R::KIND).unwrap()
    }

    fn resolve<R: StepRequest>(req: R) -> Result<(StepParams, Secrets), Status> {
        let spec = spec_of(&req);
        req.resolve(&rules(), &spec)
    }

    /// A home that has run before (etc/observer.config.bin), with a binary.
    fn home() -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        for d in ["bin", "etc"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("etc/observer.config.bin"), "x").unwrap();
        let binary = dir.path().join("bin/observer");
        std::fs::write(&binary, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    fn observer(home: &Path) -> Option<pb::ObserverSpec> {
        Some(pb::ObserverSpec {
            home_path: home.display().to_string(),
            user: "root".into(),
            ..Default::default()
        })
    }

    /// Each request's constants and its resolution agree on the kind: a
    /// request whose KIND differed from its params would store a step the
    /// factory rebuilds as another kind.
    #[test]
    fn every_request_resolves_to_its_own_kind() {
        let home = home();
        let h = home.path().display().to_string();
        let kinds = [
            resolve(pb::PrepareRequest {
                meta: meta("p"),
                observer: observer(home.path()),
                ..Default::default()
            })
            .map(|(p, _)| (p.kind(), pb::PrepareRequest::KIND)),
            resolve(pb::StartObserverRequest {
                meta: meta("s"),
                observer: observer(home.path()),
            })
            .map(|(p, _)| (p.kind(), pb::StartObserverRequest::KIND)),
            resolve(pb::WaitObserverActiveRequest {
                meta: meta("w"),
                home_path: h.clone(),
                ..Default::default()
            })
            .map(|(p, _)| (p.kind(), pb::WaitObserverActiveRequest::KIND)),
            resolve(pb::StartAgentServiceRequest {
                meta: meta("a"),
                ..Default::default()
            })
            .map(|(p, _)| (p.kind(), pb::StartAgentServiceRequest::KIND)),
            resolve(pb::StopObserverRequest {
                meta: meta("x"),
                home_path: h,
                ..Default::default()
            })
            .map(|(p, _)| (p.kind(), pb::StopObserverRequest::KIND)),
        ];
        for k in kinds {
            let (got, want) = k.unwrap();
            assert_eq!(got, want);
        }
    }

    /// The password is a secret: it travels beside the parameters, never in
    /// what the store keeps.
    #[test]
    fn a_wait_request_s_password_stays_out_of_the_stored_parameters() {
        let home = home();
        let (params, secrets) = resolve(pb::WaitObserverActiveRequest {
            meta: meta("w"),
            home_path: home.path().display().to_string(),
            user: "root".into(),
            password: "pw-7c1e-secret".into(),
            ..Default::default()
        })
        .unwrap();
        let stored = params.to_stored().unwrap().to_string();
        assert!(!stored.contains("pw-7c1e-secret"), "{stored}");
        assert!(stored.contains("\"with_password\":true"), "{stored}");
        assert_eq!(secrets.get(PASSWORD), Some("pw-7c1e-secret"));
    }

    /// A grace as long as the step's timeout leaves no time to SIGKILL and
    /// wait: refused, as is a negative one, with the field named.
    #[test]
    fn a_stop_s_grace_is_judged_against_the_step_s_timeout() {
        let home = home();
        let stop = |grace: pbjson_types::Duration, timeout: Duration| pb::StopObserverRequest {
            meta: Some(pb::StepMeta {
                step_id: "x".into(),
                timeout: Some(timeout.into()),
                ..Default::default()
            }),
            home_path: home.path().display().to_string(),
            grace: Some(grace),
            force: false,
        };
        let e = resolve(stop(
            Duration::from_secs(30).into(),
            Duration::from_secs(30),
        ))
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().contains("grace 30s is not shorter"),
            "{}",
            e.message()
        );
        let negative = pbjson_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        let e = resolve(stop(negative, Duration::from_secs(30))).unwrap_err();
        assert!(
            e.message().contains("grace must not be negative"),
            "{}",
            e.message()
        );
        let (params, _) =
            resolve(stop(Duration::from_secs(5).into(), Duration::from_secs(30))).unwrap();
        let StepParams::StopObserverProcess(p) = params else {
            panic!("{params:?}")
        };
        assert_eq!(p.grace, Duration::from_secs(5));
    }

    /// The audit trail of a refused request names what was asked for.
    #[test]
    fn what_the_caller_named_is_there_before_anything_resolves() {
        let req = pb::StartObserverRequest {
            meta: meta("s"),
            observer: Some(pb::ObserverSpec {
                home_path: "/no/such/home".into(),
                user: "nobody".into(),
                ..Default::default()
            }),
        };
        assert_eq!(req.named(), ("/no/such/home", "nobody"));
        let missing = pb::StartObserverRequest {
            meta: meta("s"),
            observer: None,
        };
        assert_eq!(missing.named(), ("", ""));
        let e = resolve(missing).unwrap_err();
        assert!(
            e.message().contains("observer is missing"),
            "{}",
            e.message()
        );
    }
}
