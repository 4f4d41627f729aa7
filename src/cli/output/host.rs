//! What `obhostctl host` shows: the host's facts, then its disks as a table,
//! sizes in IEC units like everywhere else; JSON, the canonical mapping.

use std::io::Write;

use comfy_table::Cell;

use super::json::{print_json, proto_json};
use super::table::{print_table, table};
use super::{Format, clean, size};
use crate::proto::v1 as pb;

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
