//! How obhostctl prints. Text is for a person: on a terminal it is live
//! (spinners, colours, tables fitted to the width); redirected it is plain
//! lines with no escape byte, for grep and logs. JSON is the canonical
//! protobuf JSON mapping (the field names grpcurl shows, RFC 3339 `Z`
//! timestamps), exactly one document per command, or one line per change for
//! `watch` and `report-sink`.
//!
//! This file decides the looks once (`init`) and holds what every view
//! shares: lines that go above a running spinner, text from obhostd made
//! safe for a terminal (`clean`), and the words for sizes, durations, times
//! and step states. Each view is a file of its own: `json` (every
//! document), `steps`, `host` and `observer` (records and tables), `live`
//! (a flow as it happens), over `table`. They import from here and from
//! each other downwards, never back up: this file imports none of them.

use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub mod host;
pub mod json;
pub mod live;
pub mod observer;
pub mod steps;
mod table;

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

/// Prints one line on stdout. An error, not a panic, when stdout's reader
/// went away (`| head`): the caller's `?` turns that into a quiet exit 141.
pub fn say(text: impl std::fmt::Display) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
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
