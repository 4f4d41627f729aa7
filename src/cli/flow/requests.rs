//! The flow's requests, built from the command line once: all of them are
//! checked by obhostd (`validate_only`) before the first is sent, and the
//! same ones are sent again by a re-run, which is what makes a re-run resume
//! (step requests are idempotent by step_id).

use super::args::StartArgs;
use super::ran::STEPS;
use crate::cli::connect::Client;
use crate::cli::error::CliError;
use crate::proto::v1 as pb;

/// One of the flow's requests.
#[derive(Clone)]
pub(super) enum FlowRequest {
    Prepare(pb::PrepareRequest),
    Start(pb::StartObserverRequest),
    Wait(pb::WaitObserverActiveRequest),
    Agent(pb::StartAgentServiceRequest),
}

impl FlowRequest {
    /// Sends it; with `validate_only`, obhostd checks it and starts nothing.
    /// The answer's step: `None` when only checked (an obhostd that predates
    /// validate_only ignores it and answers with a started step).
    pub(super) async fn send(
        &self,
        client: &mut Client,
        validate_only: bool,
    ) -> Result<Option<pb::Step>, tonic::Status> {
        let mut r = self.clone();
        let meta = match &mut r {
            FlowRequest::Prepare(r) => &mut r.meta,
            FlowRequest::Start(r) => &mut r.meta,
            FlowRequest::Wait(r) => &mut r.meta,
            FlowRequest::Agent(r) => &mut r.meta,
        };
        if let Some(m) = meta {
            m.validate_only = validate_only;
        }
        Ok(match r {
            FlowRequest::Prepare(r) => client.prepare(r).await?.into_inner().step,
            FlowRequest::Start(r) => client.start_observer(r).await?.into_inner().step,
            FlowRequest::Wait(r) => client.wait_observer_active(r).await?.into_inner().step,
            FlowRequest::Agent(r) => client.start_agent_service(r).await?.into_inner().step,
        })
    }
}

fn meta(id: &str, dag: &str, timeout: Option<std::time::Duration>) -> Option<pb::StepMeta> {
    Some(pb::StepMeta {
        step_id: id.to_string(),
        dag_id: dag.to_string(),
        timeout: timeout.map(Into::into),
        ..Default::default()
    })
}

/// The agent's request: `None` with `--no-agent`.
fn agent_request(args: &StartArgs, id: &str, dag: &str) -> Option<FlowRequest> {
    use pb::start_agent_service_request::Service;
    if args.no_agent {
        return None;
    }
    let service = if let Some(unit) = &args.agent_unit {
        Some(Service::SystemdUnit(unit.clone()))
    } else if let Some(program) = &args.agent_program {
        let mut argv = vec![program.clone()];
        argv.extend(args.agent_args.iter().cloned());
        Some(Service::Command(pb::ServiceCommand {
            argv,
            cwd: args.agent_cwd.clone().unwrap_or_default(),
            pid_file: args.agent_pid_file.clone().unwrap_or_default(),
            foreground: args.agent_foreground,
            ..Default::default()
        }))
    } else {
        None
    };
    let check = match (args.agent_tcp_port, &args.agent_http_url) {
        (Some(p), _) => Some(pb::health_check::Check::TcpPort(p)),
        (_, Some(u)) => Some(pb::health_check::Check::HttpUrl(u.clone())),
        _ => None,
    };
    Some(FlowRequest::Agent(pb::StartAgentServiceRequest {
        meta: meta(id, dag, None),
        service,
        health: check.map(|c| pb::HealthCheck { check: Some(c) }),
    }))
}

/// The requests of the flow, one per id of `ids` (three with `--no-agent`).
pub(super) fn flow_requests(
    args: &StartArgs,
    ids: &[String],
    dag: &str,
    spec: &pb::ObserverSpec,
    password: &str,
) -> Vec<FlowRequest> {
    let mut requests = vec![
        FlowRequest::Prepare(pb::PrepareRequest {
            meta: meta(&ids[0], dag, None),
            observer: Some(spec.clone()),
            create_dirs: args.create_dirs,
            skip_checks: args.skip_checks.clone(),
            strict: args.strict,
        }),
        FlowRequest::Start(pb::StartObserverRequest {
            meta: meta(&ids[1], dag, None),
            observer: Some(spec.clone()),
        }),
        FlowRequest::Wait(pb::WaitObserverActiveRequest {
            meta: meta(&ids[2], dag, args.wait_timeout),
            home_path: args.home.clone(),
            mysql_port: args.mysql_port.unwrap_or_default(),
            user: args.wait_user.clone().unwrap_or_default(),
            password: password.to_string(),
            sql: args.wait_sql.clone().unwrap_or_default(),
        }),
    ];
    if let Some(id) = ids.get(3) {
        requests.extend(agent_request(args, id, dag));
    }
    requests
}

/// Has obhostd check every request of the flow (`validate_only`), so that
/// nothing starts unless all would be accepted. A refusal keeps its code and
/// says which step it was. An obhostd too old to know validate_only starts
/// the first request for real; the flow then simply goes on from it (same
/// id, same request: nothing runs twice).
pub(super) async fn check_all(
    client: &mut Client,
    ids: &[String],
    requests: &[FlowRequest],
) -> Result<(), CliError> {
    for (i, request) in requests.iter().enumerate() {
        match request.send(client, true).await {
            Ok(None) => {}
            Ok(Some(_)) => return Ok(()),
            Err(s) if s.code() == tonic::Code::Unavailable => return Err(s.into()),
            Err(s) => {
                return Err(CliError::Rpc(tonic::Status::new(
                    s.code(),
                    format!(
                        "step '{}' ({}) would be refused, so no step was started: {}",
                        ids[i],
                        STEPS[i].1,
                        s.message()
                    ),
                )));
            }
        }
    }
    Ok(())
}
