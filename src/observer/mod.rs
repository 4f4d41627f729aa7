//! The observer: its spec, command line, registry of what obhostd started, and
//! how to find one running. Shared by the observer step kinds and GetObserver;
//! the OS work itself goes through `process`. `log` reads the observer's own log
//! for TailObserverLog.

pub mod command;
pub mod diagnosis;
pub mod locate;
pub mod log;
pub mod registry;
pub mod spec;
pub mod status;

pub use locate::{Found, Target};
pub use registry::{ObserverRecord, Registry};
pub use spec::{ObserverSpec, RawSpec};

/// The last lines of what an observer wrote: the output obhostd captured, then
/// its own log. Used in every failure that involves the process. Only files
/// that belong to the home's owner are read, never through a link: the user who
/// owns the home could otherwise point `log/observer.log` at a root-only file
/// and read it back in `log_tail`.
pub fn log_tail(home: &std::path::Path) -> Vec<String> {
    let Ok(owner) = crate::confined::metadata(home).map(|m| m.st_uid) else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    for (name, count) in [("log/obhost_observer.out", 10), ("log/observer.log", 20)] {
        let tail = crate::confined::tail(&home.join(name), Some(owner), count);
        if !tail.is_empty() {
            lines.push(format!("==> {} <==", home.join(name).display()));
            lines.extend(tail);
        }
    }
    lines
}
