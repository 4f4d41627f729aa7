//! Tables, the one shape every list takes: drawn with rounded borders and
//! fitted to the width on a terminal; redirected, bare aligned columns with
//! one record per line, so a line can be grepped and starts with its first
//! column. A step's state is coloured in a cell as it is in a line.

use std::io::Write;

use comfy_table::{Cell, Color, ContentArrangement, Table};

use super::{looks, state_name};
use crate::proto::v1 as pb;

/// A table: drawn and fitted to the terminal's width when live; off a
/// terminal, aligned columns with no border, one record per line, so a line
/// can be grepped and starts with its first column.
pub(super) fn table(header: &[&str]) -> Table {
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

pub(super) fn print_table(out: &mut impl Write, t: &Table) -> std::io::Result<()> {
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

/// A state's colour as `state_text` gives it, for a table cell (comfy-table
/// draws it itself).
pub(super) fn state_cell(s: pb::StepState) -> Cell {
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
