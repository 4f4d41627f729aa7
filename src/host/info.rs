//! GetHostInfo's facts. Read on demand (a few ms), never cached: memory and disk
//! change under a running observer, and a stale number is worse than none.

use sysinfo::{CpuRefreshKind, Disks, MemoryRefreshKind, RefreshKind, System};

#[derive(Debug, Clone, Default)]
pub struct DiskFacts {
    pub mount_point: String,
    pub device: String,
    pub file_system: String,
    pub total_bytes: u64,
    pub available_bytes: u64,
}

#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    pub hostname: String,
    pub kernel: String,
    pub os: String,
    pub arch: String,
    pub cpus: u32,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub disks: Vec<DiskFacts>,
    pub boot_id: String,
}

/// Blocking (reads /proc and statfs every mount): call from a blocking thread.
pub fn host_facts() -> Result<HostFacts, sysinfo::Error> {
    let sys = System::new_with_specifics(
        RefreshKind::nothing()
            .with_memory(MemoryRefreshKind::nothing().with_ram())
            .with_cpu(CpuRefreshKind::nothing()),
    )?;
    let disks = Disks::new_with_refreshed_list()?
        .iter()
        .map(|d| DiskFacts {
            mount_point: d.mount_point().to_string_lossy().into_owned(),
            device: d.name().to_string_lossy().into_owned(),
            file_system: d.file_system().to_string_lossy().into_owned(),
            total_bytes: d.total_space(),
            available_bytes: d.available_space(),
        })
        .collect();
    Ok(HostFacts {
        hostname: System::host_name().unwrap_or_default(),
        kernel: System::kernel_version().unwrap_or_default(),
        os: System::long_os_version().unwrap_or_default(),
        arch: System::cpu_arch(),
        cpus: u32::try_from(sys.cpus().len()).unwrap_or(u32::MAX),
        memory_total_bytes: sys.total_memory(),
        memory_available_bytes: sys.available_memory(),
        disks,
        boot_id: crate::process::identity::boot_id().unwrap_or_default(),
    })
}
