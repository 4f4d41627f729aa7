//! Probes: is a service there and answering? Each attempt is bounded and says,
//! in one line, what it found, because that line becomes the step's `message`
//! while the step waits.

pub mod health;
pub mod mysql;

use std::time::Duration;

/// The longest pause between two looks at a port that is not accepting yet: a
/// service that starts listening is seen at most this late. A refused connect
/// to loopback costs microseconds, so looking this often is cheap; it is what
/// keeps readiness in milliseconds instead of a backoff's hundreds.
pub const MAX_PAUSE: Duration = Duration::from_millis(10);

/// How long after the first look the pause stays at [`EAGER_PAUSE`]: a
/// service started a moment ago usually comes up within it.
const EAGER_FOR: Duration = Duration::from_millis(100);
const EAGER_PAUSE: Duration = Duration::from_millis(1);

/// The pauses between looks at something expected any moment (a port, a pid
/// file): every millisecond for the first [`EAGER_FOR`], since each look costs
/// microseconds and every ms of pause is a ms added to the host flow; then
/// doubling up to [`MAX_PAUSE`], so a slow start costs little CPU.
pub struct Pacer {
    started: std::time::Instant,
    pause: Duration,
}

impl Default for Pacer {
    fn default() -> Self {
        Pacer {
            started: std::time::Instant::now(),
            pause: EAGER_PAUSE,
        }
    }
}

impl Pacer {
    pub fn next_pause(&mut self) -> Duration {
        if self.started.elapsed() < EAGER_FOR {
            return EAGER_PAUSE;
        }
        self.pause = (self.pause * 2).min(MAX_PAUSE);
        self.pause
    }

    pub async fn pause(&mut self) {
        tokio::time::sleep(self.next_pause()).await;
    }
}

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

    #[test]
    fn the_pacer_is_eager_at_first_then_backs_off_to_its_bound() {
        let mut p = Pacer::default();
        assert_eq!(p.next_pause(), EAGER_PAUSE);
        p.started -= EAGER_FOR;
        let later: Vec<_> = (0..6).map(|_| p.next_pause()).collect();
        assert!(later[0] > EAGER_PAUSE);
        assert!(later.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*later.last().unwrap(), MAX_PAUSE);
    }

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
