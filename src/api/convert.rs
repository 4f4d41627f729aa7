//! The one place that knows both the wire types (`proto::v1`) and the domain
//! types (`steps`). Conversions here are total; validation of what callers send
//! lives in `validate`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::proto::v1 as pb;
use crate::steps::{CheckResult, CheckStatus, StepError, StepKind, StepRecord, StepState};

pub fn timestamp(t: SystemTime) -> pbjson_types::Timestamp {
    let (seconds, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos() as i32),
        Err(before) => {
            let d = before.duration();
            // Protobuf keeps nanos non-negative: -1.5s is seconds -2, nanos 0.5e9.
            if d.subsec_nanos() == 0 {
                (-(d.as_secs() as i64), 0)
            } else {
                (
                    -(d.as_secs() as i64) - 1,
                    1_000_000_000 - d.subsec_nanos() as i32,
                )
            }
        }
    };
    pbjson_types::Timestamp { seconds, nanos }
}

pub fn system_time(t: &pbjson_types::Timestamp) -> Option<SystemTime> {
    let nanos = u32::try_from(t.nanos).ok()?;
    let secs = u64::try_from(t.seconds).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

pub fn duration(d: Duration) -> pbjson_types::Duration {
    d.into()
}

pub fn step_kind(k: StepKind) -> pb::StepKind {
    match k {
        StepKind::PrepareStartObserver => pb::StepKind::PrepareStartObserver,
        StepKind::StartObserverProcess => pb::StepKind::StartObserverProcess,
        StepKind::WaitObserverActive => pb::StepKind::WaitObserverActive,
        StepKind::StartAgentService => pb::StepKind::StartAgentService,
        StepKind::StopObserverProcess => pb::StepKind::StopObserverProcess,
        // Not part of the release API: test builds only.
        StepKind::Test => pb::StepKind::Unspecified,
    }
}

pub fn step_state(s: StepState) -> pb::StepState {
    match s {
        StepState::Pending => pb::StepState::Pending,
        StepState::Running => pb::StepState::Running,
        StepState::Succeeded => pb::StepState::Succeeded,
        StepState::Failed => pb::StepState::Failed,
        StepState::Cancelled => pb::StepState::Cancelled,
        StepState::TimedOut => pb::StepState::TimedOut,
    }
}

/// `None` for UNSPECIFIED, which filters mean as "any".
pub fn state_filter(s: pb::StepState) -> Option<StepState> {
    match s {
        pb::StepState::Unspecified => None,
        pb::StepState::Pending => Some(StepState::Pending),
        pb::StepState::Running => Some(StepState::Running),
        pb::StepState::Succeeded => Some(StepState::Succeeded),
        pb::StepState::Failed => Some(StepState::Failed),
        pb::StepState::Cancelled => Some(StepState::Cancelled),
        pb::StepState::TimedOut => Some(StepState::TimedOut),
    }
}

fn check_status(s: CheckStatus) -> pb::CheckStatus {
    match s {
        CheckStatus::Pass => pb::CheckStatus::Pass,
        CheckStatus::Warn => pb::CheckStatus::Warn,
        CheckStatus::Fail => pb::CheckStatus::Fail,
        CheckStatus::Skipped => pb::CheckStatus::Skipped,
    }
}

fn check(c: &CheckResult) -> pb::CheckResult {
    pb::CheckResult {
        name: c.name.clone(),
        status: check_status(c.status).into(),
        observed: c.observed.clone(),
        expected: c.expected.clone(),
        hint: c.hint.clone(),
    }
}

fn step_error(e: &StepError) -> pb::StepError {
    pb::StepError {
        code: e.code.clone(),
        message: e.message.clone(),
        details: e.details.clone().into_iter().collect(),
        log_tail: e.log_tail.clone(),
    }
}

/// By value: a ListSteps page moves megabytes of outputs, which a copy would double.
pub fn step(r: StepRecord) -> pb::Step {
    pb::Step {
        id: r.spec.id,
        dag_id: r.spec.dag_id,
        kind: step_kind(r.spec.kind).into(),
        name: r.spec.name,
        state: step_state(r.state).into(),
        attempt: r.attempt,
        revision: r.revision,
        created_at: Some(timestamp(r.created_at)),
        started_at: r.started_at.map(timestamp),
        finished_at: r.finished_at.map(timestamp),
        message: r.message,
        error: r.error.as_ref().map(step_error),
        outputs: r.outputs,
        checks: r.checks.iter().map(check).collect(),
        deadline: Some(timestamp(r.deadline)),
        timeout: Some(duration(r.spec.timeout)),
    }
}

pub fn host_info(h: crate::host::HostFacts) -> pb::HostInfo {
    pb::HostInfo {
        hostname: h.hostname,
        kernel: h.kernel,
        cpus: h.cpus,
        memory_total_bytes: h.memory_total_bytes,
        memory_available_bytes: h.memory_available_bytes,
        disks: h
            .disks
            .into_iter()
            .map(|d| pb::Disk {
                mount_point: d.mount_point,
                device: d.device,
                file_system: d.file_system,
                total_bytes: d.total_bytes,
                available_bytes: d.available_bytes,
            })
            .collect(),
        boot_id: h.boot_id,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        os: h.os,
        arch: h.arch,
    }
}

pub fn raw_spec(o: pb::ObserverSpec) -> crate::observer::RawSpec {
    crate::observer::RawSpec {
        home_path: o.home_path,
        binary: o.binary,
        user: o.user,
        mysql_port: o.mysql_port,
        rpc_port: o.rpc_port,
        pid_file: o.pid_file,
        foreground: o.foreground,
        zone: o.zone,
        cluster_name: o.cluster_name,
        cluster_id: o.cluster_id,
        rootservice_list: o.rootservice_list,
        data_dir: o.data_dir,
        redo_dir: o.redo_dir,
        devname: o.devname,
        ip: o.ip,
        parameters: o.parameters.into_iter().collect(),
        env: o.env.into_iter().collect(),
        extra_args: o.extra_args,
    }
}

pub fn raw_wait(r: &pb::WaitObserverActiveRequest) -> crate::tasks::wait_observer_active::RawWait {
    crate::tasks::wait_observer_active::RawWait {
        home_path: r.home_path.clone(),
        mysql_port: r.mysql_port,
        user: r.user.clone(),
        password_len: r.password.len(),
        sql: r.sql.clone(),
    }
}

pub fn raw_agent(r: &pb::StartAgentServiceRequest) -> crate::tasks::start_agent_service::RawAgent {
    use crate::tasks::start_agent_service::{RawAgent, RawCommand};
    use pb::health_check::Check;
    use pb::start_agent_service_request::Service;
    let mut raw = RawAgent::default();
    match &r.service {
        Some(Service::SystemdUnit(u)) => raw.systemd_unit = Some(u.clone()),
        Some(Service::Command(c)) => {
            raw.command = Some(RawCommand {
                argv: c.argv.clone(),
                user: c.user.clone(),
                cwd: c.cwd.clone(),
                env: c.env.clone().into_iter().collect(),
                pid_file: c.pid_file.clone(),
                foreground: c.foreground,
            })
        }
        None => {}
    }
    match r.health.as_ref().and_then(|h| h.check.as_ref()) {
        Some(Check::TcpPort(p)) => raw.tcp_port = Some(*p),
        Some(Check::HttpUrl(u)) => raw.http_url = Some(u.clone()),
        None => {}
    }
    raw
}

pub fn exit_status(e: crate::process::Exit) -> pb::ExitStatus {
    pb::ExitStatus {
        pid: u32::try_from(e.pid).unwrap_or_default(),
        code: e.code,
        signal: e.signal,
        at: Some(timestamp(e.at)),
    }
}

pub fn observer_status(s: crate::observer::status::ObserverStatus) -> pb::ObserverStatus {
    pb::ObserverStatus {
        home_path: s.home_path.display().to_string(),
        running: s.running,
        pid: s.pid,
        process_start_time: s.process_start_time.map(timestamp),
        uptime: s.uptime.map(duration),
        rss_bytes: s.rss_bytes,
        cpu_percent: s.cpu_percent,
        threads: s.threads,
        listening_ports: s.listening_ports.into_iter().map(u32::from).collect(),
        command: s.command,
        last_exit: s.last_exit.map(exit_status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        assert_eq!(system_time(&timestamp(t)), Some(t));
        let before = UNIX_EPOCH - Duration::from_millis(1500);
        let ts = timestamp(before);
        assert_eq!((ts.seconds, ts.nanos), (-2, 500_000_000));
    }
}
