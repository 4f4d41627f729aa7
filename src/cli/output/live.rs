//! A flow as it happens. On a terminal each step is a spinner with its
//! elapsed time that gives way to a coloured result line, and `steps watch`
//! keeps a spinner under its change lines; off a terminal every change is a
//! plain line with the time since the flow began, for logs. A step's live
//! line shows only its error code when it ends badly, because the command
//! explains the failure right after and the same sentence twice is noise.

use std::time::Instant;

use indicatif::ProgressBar;

use super::{clean, is_terminal, line, looks, spinner, state_colour, state_name, state_text};
use crate::proto::v1 as pb;

/// `steps watch` on a terminal: a spinner under the change lines, with how
/// long it has watched and how many steps it has seen.
pub struct Watching(Option<ProgressBar>);

impl Watching {
    pub fn new(what: &str) -> Watching {
        Watching(looks().live.then(|| {
            let bar = spinner("{spinner:.cyan} {msg} {elapsed:.dim}");
            bar.set_message(format!("watching {what}"));
            bar
        }))
    }

    pub fn set(&self, msg: String) {
        if let Some(bar) = &self.0 {
            bar.set_message(msg);
        }
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

/// A step followed live: on a terminal a spinner with the step's elapsed time
/// that gives way to a coloured result line; off a terminal a plain line for
/// each change of state or message, with the time since the flow began.
pub struct Live {
    bar: Option<ProgressBar>,
    began: Instant,
    shown: Instant,
    last: Option<(i32, String)>,
    /// The spinner's line as it stands, left behind if the follow ends first.
    standing: String,
}

impl Live {
    /// `began`: when the flow (the command) began, for the plain lines.
    pub fn new(label: &str, began: Instant) -> Live {
        let bar = looks().live.then(|| {
            let bar = spinner("  {spinner:.cyan} {prefix:<24} {msg} {elapsed:.dim}");
            bar.set_prefix(label.to_string());
            bar.set_message("PENDING");
            bar
        });
        Live {
            bar,
            began,
            shown: Instant::now(),
            last: None,
            standing: format!("{label:<24} PENDING"),
        }
    }

    /// Shows a change of the step (a repeat of the same state and message
    /// shows nothing).
    pub fn update(&mut self, step: &pb::Step) {
        let now = (step.state, step.message.clone());
        if self.last.as_ref() == Some(&now) {
            return;
        }
        self.last = Some(now);
        let Some(bar) = &self.bar else {
            line(&format!(
                "  [{:>5.1}s] {:<24} {:<10} {}",
                self.began.elapsed().as_secs_f64(),
                clean(&step.name),
                state_name(step.state()),
                shown_message(step)
            ));
            return;
        };
        let state = state_text(step.state(), 10);
        let (name, message) = (clean(&step.name), shown_message(step));
        self.standing = format!("{name:<24} {state} {message}");
        if !is_terminal(step) {
            bar.set_prefix(name.into_owned());
            bar.set_message(format!("{state} {message}"));
            return;
        }
        // The result is a line of its own, ended by a newline: a finished
        // spinner would leave the cursor on its line, for the next print to
        // overwrite.
        bar.finish_and_clear();
        let mark = if step.state() == pb::StepState::Succeeded {
            "✔"
        } else {
            "✘"
        };
        let mark = match state_colour(step.state()) {
            Some(c) if looks().colour => console::style(mark).fg(c).force_styling(true).to_string(),
            _ => mark.to_string(),
        };
        line(&format!(
            "  {mark} {name:<24} {state} {:>5.1}s  {message}",
            self.shown.elapsed().as_secs_f64(),
        ));
    }
}

/// A step's message on its live line. A step that ended badly shows only its
/// error code there: the command explains it right after (code, message,
/// checks, log tail), and the same sentence twice in a row is noise.
fn shown_message(step: &pb::Step) -> std::borrow::Cow<'_, str> {
    match &step.error {
        Some(e) if is_terminal(step) && step.state() != pb::StepState::Succeeded => clean(&e.code),
        _ => clean(&step.message),
    }
}

/// The result line of a step that had ended before this command ran (a
/// re-run of a flow finds it so): no spinner, and no time of ours.
pub fn ended_earlier(step: &pb::Step) {
    let (name, message) = (clean(&step.name), shown_message(step));
    line(&format!(
        "  [earlier] {name:<24} {} {message}",
        state_text(step.state(), 10)
    ));
}

impl Drop for Live {
    /// A follow that ends before the step does (an error, Ctrl-C) leaves the
    /// step's line as it stood, without a spinner.
    fn drop(&mut self) {
        if let Some(bar) = &self.bar
            && !bar.is_finished()
        {
            bar.finish_and_clear();
            line(&format!("  … {}", self.standing));
        }
    }
}
