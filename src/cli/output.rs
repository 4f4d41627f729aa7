//! How obhostctl prints. Text is for a person at a terminal; JSON is the canonical
//! protobuf JSON mapping (the same field names grpcurl shows), one document per
//! result, or one line per change for `watch`.

use std::io::Write;
use std::time::{Duration, SystemTime};

use crate::api::convert;
use crate::proto::v1 as pb;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

pub fn is_terminal(s: &pb::Step) -> bool {
    matches!(
        s.state(),
        pb::StepState::Succeeded
            | pb::StepState::Failed
            | pb::StepState::Cancelled
            | pb::StepState::TimedOut
    )
}

fn state_name(s: pb::StepState) -> &'static str {
    s.as_str_name().trim_start_matches("STEP_STATE_")
}

fn when(t: &Option<pbjson_types::Timestamp>) -> String {
    t.as_ref()
        .and_then(convert::system_time)
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_else(|| "-".into())
}

/// Seconds are enough for a person; "3m 12s" reads better than "3m 12s 40ms".
pub fn short(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

fn print_json<T: serde::Serialize>(value: &T, pretty: bool) -> anyhow::Result<()> {
    let text = if pretty {
        serde_json::to_string_pretty(value)?
    } else {
        serde_json::to_string(value)?
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    Ok(())
}

pub fn step(s: &pb::Step, format: Format) -> anyhow::Result<()> {
    if format == Format::Json {
        return print_json(s, true);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "step       {}", s.id)?;
    if !s.dag_id.is_empty() {
        writeln!(out, "dag        {}", s.dag_id)?;
    }
    writeln!(out, "name       {}", s.name)?;
    writeln!(out, "state      {}", state_name(s.state()))?;
    writeln!(out, "attempt    {}", s.attempt)?;
    writeln!(out, "revision   {}", s.revision)?;
    writeln!(out, "created    {}", when(&s.created_at))?;
    writeln!(out, "started    {}", when(&s.started_at))?;
    writeln!(out, "finished   {}", when(&s.finished_at))?;
    writeln!(out, "deadline   {}", when(&s.deadline))?;
    writeln!(out, "message    {}", s.message)?;
    if let Some(e) = &s.error {
        writeln!(out, "error      {}: {}", e.code, e.message)?;
        for (k, v) in &e.details {
            writeln!(out, "  {k} = {v}")?;
        }
        if !e.log_tail.is_empty() {
            writeln!(out, "log tail:")?;
            for line in &e.log_tail {
                writeln!(out, "  | {line}")?;
            }
        }
    }
    if !s.outputs.is_empty() {
        writeln!(out, "outputs:")?;
        for (k, v) in &s.outputs {
            writeln!(out, "  {k} = {v}")?;
        }
    }
    if !s.checks.is_empty() {
        writeln!(out, "checks:")?;
        for c in &s.checks {
            check(&mut out, c)?;
        }
    }
    Ok(())
}

pub fn check(out: &mut impl Write, c: &pb::CheckResult) -> std::io::Result<()> {
    let status = c.status().as_str_name().trim_start_matches("CHECK_STATUS_");
    writeln!(out, "  {status:<7} {:<28} {}", c.name, c.observed)?;
    if matches!(c.status(), pb::CheckStatus::Fail | pb::CheckStatus::Warn) {
        if !c.expected.is_empty() {
            writeln!(out, "          expected: {}", c.expected)?;
        }
        if !c.hint.is_empty() {
            writeln!(out, "          fix: {}", c.hint)?;
        }
    }
    Ok(())
}

pub fn step_list(steps: &[pb::Step], next_page_token: &str, format: Format) -> anyhow::Result<()> {
    if format == Format::Json {
        return print_json(
            &pb::ListStepsResponse {
                steps: steps.to_vec(),
                next_page_token: next_page_token.to_string(),
            },
            true,
        );
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<24} {:<10} {:<26} {:>8}  MESSAGE",
        "STEP", "STATE", "NAME", "AGE"
    )?;
    let now = SystemTime::now();
    for s in steps {
        let age = s
            .created_at
            .as_ref()
            .and_then(convert::system_time)
            .and_then(|t| now.duration_since(t).ok())
            .map(short)
            .unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "{:<24} {:<10} {:<26} {:>8}  {}",
            s.id,
            state_name(s.state()),
            s.name,
            age,
            s.message
        )?;
    }
    if !next_page_token.is_empty() {
        writeln!(out, "(more: --page-token {next_page_token}, or --all)")?;
    }
    Ok(())
}

pub fn step_change(s: &pb::Step, format: Format) -> anyhow::Result<()> {
    if format == Format::Json {
        return print_json(s, false);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "rev {:<6} {:<24} {:<10} {}",
        s.revision,
        s.id,
        state_name(s.state()),
        s.message
    )?;
    Ok(())
}

pub fn host(h: &pb::HostInfo, format: Format) -> anyhow::Result<()> {
    if format == Format::Json {
        return print_json(h, true);
    }
    let gib = |b: u64| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64);
    let mut out = std::io::stdout().lock();
    writeln!(out, "hostname   {}", h.hostname)?;
    writeln!(out, "os         {} ({})", h.os, h.arch)?;
    writeln!(out, "kernel     {}", h.kernel)?;
    writeln!(out, "cpus       {}", h.cpus)?;
    writeln!(
        out,
        "memory     {} total, {} available",
        gib(h.memory_total_bytes),
        gib(h.memory_available_bytes)
    )?;
    writeln!(out, "boot id    {}", h.boot_id)?;
    writeln!(out, "agent      obhostd {}", h.agent_version)?;
    writeln!(out, "disks:")?;
    for d in &h.disks {
        writeln!(
            out,
            "  {:<24} {:<10} {:>10} free of {:>10}  {}",
            d.mount_point,
            d.file_system,
            gib(d.available_bytes),
            gib(d.total_bytes),
            d.device
        )?;
    }
    Ok(())
}

pub fn observer(o: &pb::ObserverStatus, format: Format) -> anyhow::Result<()> {
    if format == Format::Json {
        return print_json(o, true);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "home       {}", o.home_path)?;
    writeln!(out, "running    {}", o.running)?;
    if o.running {
        writeln!(out, "pid        {}", o.pid)?;
        writeln!(out, "started    {}", when(&o.process_start_time))?;
        if let Some(u) = o.uptime.and_then(|u| Duration::try_from(u).ok()) {
            writeln!(out, "uptime     {}", short(u))?;
        }
        writeln!(out, "rss        {} MiB", o.rss_bytes >> 20)?;
        writeln!(out, "cpu        {:.1}%", o.cpu_percent)?;
        writeln!(out, "threads    {}", o.threads)?;
        writeln!(out, "ports      {:?}", o.listening_ports)?;
        writeln!(out, "command    {}", o.command.join(" "))?;
    }
    if let Some(e) = &o.last_exit {
        let how = match (e.code, e.signal) {
            (Some(c), _) => format!("exited with code {c}"),
            (_, Some(s)) => format!("killed by signal {s}"),
            _ => "ended (status unknown)".into(),
        };
        writeln!(out, "last exit  pid {} {how} at {}", e.pid, when(&e.at))?;
    }
    Ok(())
}
