//! Facts about this host, read through sysinfo and /proc: never by shelling out.

pub mod checks;
pub mod info;

pub use info::{HostFacts, host_facts};
