//! The observer: its spec, command line, registry of what obhostd started, and
//! how to find one running. Shared by the observer step kinds and GetObserver;
//! the OS work itself goes through `process`.

pub mod command;
pub mod locate;
pub mod registry;
pub mod spec;
pub mod status;

pub use locate::{Found, Target};
pub use registry::{ObserverRecord, Registry};
pub use spec::{ObserverSpec, Policy, RawSpec, SpecError};

/// The last lines of what an observer wrote: the output obhostd captured, then
/// its own log. Used in every failure that involves the process.
pub fn log_tail(home: &std::path::Path) -> Vec<String> {
    let mut lines = Vec::new();
    for (name, count) in [("log/obhost_observer.out", 10), ("log/observer.log", 20)] {
        let tail = crate::process::inspect::tail(&home.join(name), count);
        if !tail.is_empty() {
            lines.push(format!("==> {} <==", home.join(name).display()));
            lines.extend(tail);
        }
    }
    lines
}
