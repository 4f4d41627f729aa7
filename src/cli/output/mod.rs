//! How obhostctl prints. Text is for a person: on a terminal it is live
//! (spinners, colours, tables fitted to the width); redirected it is plain
//! lines with no escape byte, for grep and logs. JSON is the canonical
//! protobuf JSON mapping (the field names grpcurl shows, RFC 3339 `Z`
//! timestamps), exactly one document per command, or one line per change for
//! `watch` and `report-sink`.

use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use comfy_table::{Cell, Color, ContentArrangement, Table};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub mod json;
pub mod live;

use json::{print_json, proto_json, step_list_json};

use super::phrasing::in_cli_terms;
use crate::api::convert;
use crate::proto::v1 as pb;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// What the text output may use, decided once from where stdout goes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Looks {
    /// stdout is a terminal (and not a dumb one): spinners and drawn tables.
    pub live: bool,
    /// Colours: only when live and NO_COLOR is not set (https://no-color.org).
    pub colour: bool,
}

static LOOKS: OnceLock<Looks> = OnceLock::new();

/// Decides the looks for this run; called once by `main` before any output.
/// JSON is never decorated, wherever it goes.
pub fn init(format: Format) -> Looks {
    use std::io::IsTerminal;
    let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
    let live = format == Format::Text && std::io::stdout().is_terminal() && !dumb;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let looks = Looks {
        live,
        colour: live && !no_color,
    };
    // indicatif styles its templates through console, which decides colour on
    // its own (CLICOLOR...): make it agree with us, for both streams.
    console::set_colors_enabled(looks.colour);
    console::set_colors_enabled_stderr(looks.colour);
    *LOOKS.get_or_init(|| looks)
}

/// The looks in force (plain until `init` ran: tests of this module, and
/// anything printed before `main` decided).
pub fn looks() -> Looks {
    LOOKS.get().copied().unwrap_or_default()
}

/// The spinner running now, if any: a line printed meanwhile (the demo's
/// report-sink, a reconnect notice) goes above it instead of through it. One
/// at a time: a flow follows its steps one after the other, and a finished
/// spinner's line stays behind as the step's result.
static CURRENT: Mutex<Option<ProgressBar>> = Mutex::new(None);

fn with_current<R>(f: impl FnOnce() -> R) -> R {
    let current = CURRENT.lock().unwrap_or_else(|p| p.into_inner());
    match current.as_ref().filter(|b| !b.is_finished()) {
        Some(bar) => bar.suspend(f),
        None => f(),
    }
}

/// Prints one line to stdout; while a spinner runs, above it. A stdout that
/// went away (`obhostctl ... | head`) is not worth a panic: the line is lost.
pub fn line(text: &str) {
    with_current(|| {
        let _ = writeln!(std::io::stdout().lock(), "{text}");
    });
}

/// Prints one line to stderr; while a spinner runs, above it.
pub fn note(text: &str) {
    with_current(|| {
        let _ = writeln!(std::io::stderr().lock(), "{text}");
    });
}

/// A spinner on stdout, made the current one.
fn spinner(template: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout());
    bar.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    *CURRENT.lock().unwrap_or_else(|p| p.into_inner()) = Some(bar.clone());
    bar
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

pub fn state_name(s: pb::StepState) -> &'static str {
    s.as_str_name().trim_start_matches("STEP_STATE_")
}

/// A state's colour: green done, red failed or timed out, yellow cancelled,
/// cyan running.
fn state_colour(s: pb::StepState) -> Option<console::Color> {
    match s {
        pb::StepState::Succeeded => Some(console::Color::Green),
        pb::StepState::Failed | pb::StepState::TimedOut => Some(console::Color::Red),
        pb::StepState::Cancelled => Some(console::Color::Yellow),
        pb::StepState::Running => Some(console::Color::Cyan),
        _ => None,
    }
}

/// A state's name, coloured when colours are on, padded to `width` (padding
/// outside the escape codes, so columns line up either way).
pub fn state_text(s: pb::StepState, width: usize) -> String {
    let name = format!("{:<width$}", state_name(s));
    match state_colour(s) {
        Some(c) if looks().colour => console::style(name).fg(c).force_styling(true).to_string(),
        _ => name,
    }
}

/// The same colour for a table cell (comfy-table draws it itself).
fn state_cell(s: pb::StepState) -> Cell {
    let cell = Cell::new(state_name(s));
    let colour = match s {
        pb::StepState::Succeeded => Color::Green,
        pb::StepState::Failed | pb::StepState::TimedOut => Color::Red,
        pb::StepState::Cancelled => Color::Yellow,
        pb::StepState::Running => Color::Cyan,
        _ => return cell,
    };
    if looks().colour {
        cell.fg(colour)
    } else {
        cell
    }
}

/// Every size obhostctl prints, in IEC units ("1.5 GiB", "312.0 MiB"), so
/// memory, disks and RSS read the same everywhere.
pub fn size(bytes: u64) -> String {
    bytesize::ByteSize::b(bytes).display().iec().to_string()
}

/// Text from obhostd, made safe for a terminal: a control character (ESC,
/// BEL, CR, C1 codes...) is shown escaped (`\u{1b}`), never sent raw. Step
/// messages, checks and log tails carry what an observer, its log or its
/// unprivileged owner wrote; raw, an escape sequence there would retitle,
/// recolour or rewrite the operator's terminal (or reach a redirected file).
pub fn clean(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
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

/// A table: drawn and fitted to the terminal's width when live; off a
/// terminal, aligned columns with no border, one record per line, so a line
/// can be grepped and starts with its first column.
fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    // A terminal that does not say its width (0 columns) would squeeze every
    // column to one character: such a table keeps its natural width.
    let width = console::Term::stdout().size_checked().map_or(0, |(_, w)| w);
    if looks().live {
        t.load_style(comfy_table::presets::UTF8_FULL_CONDENSED.with_rounded_corners())
            .set_content_arrangement(if width >= 40 {
                ContentArrangement::Dynamic
            } else {
                ContentArrangement::Disabled
            });
        if looks().colour {
            t.enforce_styling();
        }
    } else {
        t.load_style(comfy_table::presets::NOTHING)
            .force_no_tty()
            .set_content_arrangement(ContentArrangement::Disabled);
    }
    t.set_header(header.iter().map(|h| Cell::new(*h)));
    if !looks().live {
        for c in t.column_iter_mut() {
            c.set_padding((0, 2));
        }
    }
    t
}

fn print_table(out: &mut impl Write, t: &Table) -> std::io::Result<()> {
    for l in t.lines() {
        // Off a terminal the blank border rows are whitespace: skip them, and
        // the padding after the last column.
        let l = l.trim_end();
        if !l.is_empty() {
            writeln!(out, "{l}")?;
        }
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

/// Prints one line on stdout. An error, not a panic, when stdout's reader
/// went away (`| head`): the caller's `?` turns that into a quiet exit 141.
pub fn say(text: impl std::fmt::Display) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    Ok(())
}

pub fn step(s: &pb::Step, format: Format) -> anyhow::Result<()> {
    if format == Format::Json {
        return print_json(&proto_json(s)?, true);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "step       {}", clean(&s.id))?;
    if !s.dag_id.is_empty() {
        writeln!(out, "dag        {}", clean(&s.dag_id))?;
    }
    writeln!(out, "name       {}", clean(&s.name))?;
    writeln!(out, "state      {}", state_text(s.state(), 0))?;
    writeln!(out, "attempt    {}", s.attempt)?;
    writeln!(out, "revision   {}", s.revision)?;
    writeln!(out, "created    {}", when(&s.created_at))?;
    writeln!(out, "started    {}", when(&s.started_at))?;
    writeln!(out, "finished   {}", when(&s.finished_at))?;
    writeln!(out, "deadline   {}", when(&s.deadline))?;
    writeln!(out, "message    {}", clean(&s.message))?;
    if let Some(e) = &s.error {
        let message = in_cli_terms(&e.message, Some(&s.id));
        writeln!(out, "error      {}: {}", clean(&e.code), clean(&message))?;
        for (k, v) in &e.details {
            writeln!(out, "  {} = {}", clean(k), clean(v))?;
        }
        if !e.log_tail.is_empty() {
            writeln!(out, "log tail:")?;
            for line in &e.log_tail {
                writeln!(out, "  | {}", clean(line))?;
            }
        }
    }
    if !s.outputs.is_empty() {
        writeln!(out, "outputs:")?;
        for (k, v) in &s.outputs {
            writeln!(out, "  {} = {}", clean(k), clean(v))?;
        }
    }
    if !s.checks.is_empty() {
        writeln!(out, "checks:")?;
        checks(&mut out, &s.checks)?;
    }
    Ok(())
}

/// Prepare's check results as a table: status, check, what the host has, and
/// for a failure or warning what was expected and the fix.
pub fn checks(out: &mut impl Write, checks: &[pb::CheckResult]) -> std::io::Result<()> {
    let mut t = table(&["STATUS", "CHECK", "OBSERVED", "EXPECTED", "FIX"]);
    for c in checks {
        let status = c.status().as_str_name().trim_start_matches("CHECK_STATUS_");
        let bad = matches!(c.status(), pb::CheckStatus::Fail | pb::CheckStatus::Warn);
        let mut cell = Cell::new(status);
        if looks().colour {
            cell = match c.status() {
                pb::CheckStatus::Fail => cell.fg(Color::Red),
                pb::CheckStatus::Warn => cell.fg(Color::Yellow),
                pb::CheckStatus::Pass => cell.fg(Color::Green),
                _ => cell,
            };
        }
        let or_dash = |s: &str| {
            if bad && !s.is_empty() {
                clean(s).into_owned()
            } else {
                "-".into()
            }
        };
        t.add_row(vec![
            cell,
            Cell::new(clean(&c.name)),
            Cell::new(clean(&c.observed)),
            Cell::new(or_dash(&c.expected)),
            Cell::new(or_dash(&in_cli_terms(&c.hint, None))),
        ]);
    }
    print_table(out, &t)
}

/// A list of steps, in the order given (the caller's to choose: see
/// `steps::order`). JSON: `{"steps": [...]}`, the list always there (empty
/// too), and `nextPageToken` when there is a next page.
pub fn step_list(steps: &[pb::Step], next_page_token: &str, format: Format) -> anyhow::Result<()> {
    if format == Format::Json {
        return print_json(&step_list_json(steps, next_page_token)?, true);
    }
    let mut out = std::io::stdout().lock();
    print_table(&mut out, &step_table(steps))?;
    if !next_page_token.is_empty() {
        // `steps list` no longer takes a page token (it reads every page).
        writeln!(out, "(more: obhostctl steps list --all)")?;
    }
    Ok(())
}

/// `steps list`'s answer, in the order given (`steps::order::newest_first`). When
/// `older` steps were left out, the text says so and which flag lists them;
/// JSON has `olderNotShown`.
pub fn newest_steps(steps: &[pb::Step], older: usize, format: Format) -> anyhow::Result<()> {
    if format == Format::Json {
        let mut doc = step_list_json(steps, "")?;
        if older > 0 {
            doc["olderNotShown"] = older.into();
        }
        return print_json(&doc, true);
    }
    let mut out = std::io::stdout().lock();
    print_table(&mut out, &step_table(steps))?;
    if older > 0 {
        writeln!(
            out,
            "({older} older steps not shown: --limit {} or --all lists them)",
            steps.len() + older
        )?;
    }
    Ok(())
}

/// The table of a list of steps, one row each, in the order given.
fn step_table(steps: &[pb::Step]) -> Table {
    let mut t = table(&["STEP", "STATE", "NAME", "AGE", "MESSAGE"]);
    let now = SystemTime::now();
    for s in steps {
        let age = s
            .created_at
            .as_ref()
            .and_then(convert::system_time)
            .and_then(|t| now.duration_since(t).ok())
            .map(short)
            .unwrap_or_else(|| "-".into());
        t.add_row(vec![
            Cell::new(clean(&s.id)),
            state_cell(s.state()),
            Cell::new(clean(&s.name)),
            Cell::new(age),
            Cell::new(clean(&s.message)),
        ]);
    }
    if let Some(c) = t.column_mut(3) {
        c.set_cell_alignment(comfy_table::CellAlignment::Right);
    }
    t
}

/// One change seen by `steps watch`: a JSON line, or a text line.
pub fn step_change(s: &pb::Step, format: Format) -> anyhow::Result<()> {
    if format == Format::Json {
        return print_json(&proto_json(s)?, false);
    }
    line(&format!(
        "rev {:<6} {:<24} {} {}",
        s.revision,
        clean(&s.id),
        state_text(s.state(), 10),
        clean(&s.message)
    ));
    Ok(())
}

pub fn host(h: &pb::HostInfo, format: Format) -> anyhow::Result<()> {
    if format == Format::Json {
        return print_json(&proto_json(h)?, true);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "hostname   {}", clean(&h.hostname))?;
    writeln!(out, "os         {} ({})", clean(&h.os), clean(&h.arch))?;
    writeln!(out, "kernel     {}", clean(&h.kernel))?;
    writeln!(out, "cpus       {}", h.cpus)?;
    writeln!(
        out,
        "memory     {} total, {} available",
        size(h.memory_total_bytes),
        size(h.memory_available_bytes)
    )?;
    writeln!(out, "boot id    {}", clean(&h.boot_id))?;
    writeln!(out, "agent      obhostd {}", clean(&h.agent_version))?;
    writeln!(out, "disks:")?;
    let mut t = table(&["MOUNT", "FS", "FREE", "TOTAL", "DEVICE"]);
    for d in &h.disks {
        t.add_row(vec![
            Cell::new(clean(&d.mount_point)),
            Cell::new(clean(&d.file_system)),
            Cell::new(size(d.available_bytes)),
            Cell::new(size(d.total_bytes)),
            Cell::new(clean(&d.device)),
        ]);
    }
    for i in [2, 3] {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(comfy_table::CellAlignment::Right);
        }
    }
    print_table(&mut out, &t)?;
    Ok(())
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_escaped() {
        assert!(matches!(
            clean("plain ünïcode"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(clean("a\x1b]0;t\x07b"), "a\\u{1b}]0;t\\u{7}b");
        // C1 controls too (a terminal may take U+009B as ESC [).
        assert_eq!(clean("x\u{9b}2J"), "x\\u{9b}2J");
        assert_eq!(clean("cr\rlf\n"), "cr\\rlf\\n");
    }

    #[test]
    fn sizes_are_iec() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(3 << 20), "3.0 MiB");
        assert_eq!(size(16 << 30), "16.0 GiB");
    }
}
