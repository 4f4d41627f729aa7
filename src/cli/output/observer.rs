//! What `obhostctl observer` shows: an observer's status (the process, its
//! resources, how it last exited), and its log's lines as they are but for
//! control characters, since the log is the observer's user's to write.

use std::io::Write;
use std::time::Duration;

use super::json::{print_json, proto_json};
use super::{Format, clean, short, size, when};
use crate::proto::v1 as pb;

pub fn observer(o: &pb::ObserverStatus, format: Format) -> anyhow::Result<()> {
    if format == Format::Json {
        return print_json(&proto_json(o)?, true);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "home       {}", clean(&o.home_path))?;
    writeln!(out, "running    {}", o.running)?;
    if o.running {
        writeln!(out, "pid        {}", o.pid)?;
        writeln!(out, "started    {}", when(&o.process_start_time))?;
        if let Some(u) = o.uptime.and_then(|u| Duration::try_from(u).ok()) {
            writeln!(out, "uptime     {}", short(u))?;
        }
        writeln!(out, "rss        {}", size(o.rss_bytes))?;
        writeln!(out, "cpu        {:.1}%", o.cpu_percent)?;
        writeln!(out, "threads    {}", o.threads)?;
        writeln!(out, "ports      {:?}", o.listening_ports)?;
        writeln!(out, "command    {}", clean(&o.command.join(" ")))?;
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

/// Lines of the observer's log, as they are but for control characters
/// (escaped, as all text from obhostd: the log is the observer's user's to
/// write). A write that fails (the reader went away) is an error, so a follow
/// into `| head` ends instead of reading on for nobody.
pub fn log_lines(lines: &[String]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for l in lines {
        writeln!(out, "{}", clean(l))?;
    }
    out.flush()?;
    Ok(())
}
