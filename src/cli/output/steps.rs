//! What steps look like as text: one step in full (its error in
//! obhostctl's words, outputs, Prepare's checks), a list as a table, and a
//! change seen by `steps watch` as a line. Each also has its JSON, the
//! canonical mapping; which steps and in what order is the caller's choice
//! (`cli/steps/order.rs`), shown here as given.

use std::io::Write;
use std::time::SystemTime;

use comfy_table::{Cell, Color, Table};

use super::json::{print_json, proto_json, step_list_json};
use super::table::{print_table, state_cell, table};
use super::{Format, clean, line, looks, short, state_text, when};
use crate::api::convert;
use crate::cli::phrasing::in_cli_terms;
use crate::proto::v1 as pb;

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
