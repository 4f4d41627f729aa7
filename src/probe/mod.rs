//! Probes: is a service there and answering? Each attempt is bounded and says,
//! in one line, what it found, because that line becomes the step's `message`
//! while the step waits.

pub mod health;
pub mod mysql;

pub use crate::process::pacer::{MAX_PAUSE, Pacer};

/// Connects to 127.0.0.1:`port` with Nagle off: every probe writes small
/// requests and waits for the answer, which Nagle plus delayed ACK would hold
/// for ~40 ms.
pub async fn connect_loopback(port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Returns once something accepts a connection on 127.0.0.1:`port`, looking
/// at once and then as [`Pacer`] says (never more than [`MAX_PAUSE`] apart). Sends nothing: it
/// only learns that the port is open, so asking anyone is harmless; who holds
/// the port is checked by the probe that follows.
pub async fn until_accepting(port: u16) {
    let mut pacer = Pacer::default();
    while connect_loopback(port).await.is_err() {
        pacer.pause().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_port_that_opens_late_is_seen_within_milliseconds() {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let waiter = tokio::spawn(until_accepting(port));
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!waiter.is_finished(), "nothing listens yet");
        let opened = std::time::Instant::now();
        let _l = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .expect("never saw the port open")
            .unwrap();
        let late = opened.elapsed();
        // An absolute bound, not one derived from MAX_PAUSE: a longer pause is
        // the regression this catches.
        assert!(
            late < Duration::from_millis(50),
            "seen {late:?} after it opened"
        );
    }
}
