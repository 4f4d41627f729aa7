//! Probes: is a service there and answering? Each attempt is bounded and says,
//! in one line, what it found, because that line becomes the step's `message`
//! while the step waits.

pub mod health;
pub mod mysql;
