//! Pacing looks at something expected any moment: a pid file, a process, a
//! port. Used by the launch (process) and by the probes above it, so it lives
//! down here with the code that waits on processes.

use std::time::Duration;

/// The longest pause between two looks at a port that is not accepting yet: a
/// service that starts listening is seen at most this late, half of it on
/// average, which is most of readiness's figure (`cargo bench --bench host --
/// --only readiness`: p50 9-12 ms at 10 ms, 7 ms at 5 ms). A refused connect
/// to loopback costs microseconds, so 200 looks a second during a start that
/// takes minutes cost well under 1% of a core.
pub const MAX_PAUSE: Duration = Duration::from_millis(5);

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
}
