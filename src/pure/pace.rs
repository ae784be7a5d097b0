//! How busy the ring is, for the worker's choice of nap (worker/waiter.rs): at a low commit rate
//! a committer ends the worker's nap at once (a futex wake: lowest latency, one system call per
//! commit); at a high rate the worker naps blindly and picks several commits up at a time (no
//! call at all for committers; the wait is short anyway because records keep arriving).
//!
//! Counted in fixed windows: the rate of the last complete window decides.

use std::time::{Duration, Instant};

/// The length of a counting window.
pub const WINDOW: Duration = Duration::from_millis(10);
/// More records than this in a window (2,000 a second) is busy.
pub const BUSY_PER_WINDOW: u64 = 20;

#[derive(Debug)]
pub struct Pace {
    start: Instant,
    count: u64,
    busy: bool,
}

impl Pace {
    pub fn new(now: Instant) -> Pace {
        Pace { start: now, count: 0, busy: false }
    }

    /// `n` records were handed over at `now`.
    pub fn record(&mut self, n: u64, now: Instant) {
        self.roll(now);
        self.count += n;
    }

    /// Was the last complete window busy? (A window with nothing at all in between is not.)
    pub fn busy(&mut self, now: Instant) -> bool {
        self.roll(now);
        self.busy
    }

    fn roll(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.start);
        if elapsed < WINDOW {
            return;
        }
        // the window that just ended decides, unless more than one window has passed (idle since)
        self.busy = elapsed < 2 * WINDOW && self.count > BUSY_PER_WINDOW;
        self.start = now;
        self.count = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_stream_above_the_threshold_is_busy_and_a_trickle_is_not() {
        let t0 = Instant::now();
        let mut p = Pace::new(t0);
        assert!(!p.busy(t0), "nothing counted yet");
        for i in 0..30 {
            p.record(1, t0 + Duration::from_micros(300 * i)); // 30 records in 9 ms
        }
        assert!(!p.busy(t0 + Duration::from_millis(9)), "the window has not ended");
        assert!(p.busy(t0 + Duration::from_millis(11)), "30 > 20 in the last window");
        p.record(5, t0 + Duration::from_millis(15));
        assert!(!p.busy(t0 + Duration::from_millis(22)), "5 in the next window: not busy");
    }

    #[test]
    fn a_pause_longer_than_a_window_ends_busy() {
        let t0 = Instant::now();
        let mut p = Pace::new(t0);
        p.record(100, t0);
        assert!(p.busy(t0 + Duration::from_millis(10)));
        // idle for a while, then the next look: the stale window does not count
        p.record(100, t0 + Duration::from_millis(12));
        assert!(!p.busy(t0 + Duration::from_millis(50)), "more than one window since it started");
    }
}
