//! Commit-to-acknowledge latency of one broker, for `mqtt_status()` and Prometheus.
//!
//! Pure state (no PostgreSQL calls), tested by `cargo test`. The worker records each message's
//! latency when the broker acknowledges it (QoS 1/2) or when it is written (QoS 0); backends
//! read only the two percentiles the worker publishes to the broker's shared slot.
//!
//! A log-linear histogram: 8 buckets per power of two of microseconds, so a percentile is off by
//! at most 1/8 (12.5%) of its value, in a fixed 4 KiB per broker whatever the message rate (no
//! sample list to grow). "Recent" means the last one to two minutes: two histograms, the current
//! minute and the one before; at each rotation the older one is cleared. A broker that sends
//! nothing for two minutes has no recent latency (`None`), not a stale one.

use std::time::{Duration, Instant};

/// Sub-buckets per power of two.
const SUB: u32 = 8;
/// Powers of two covered: 1 µs to 2^40 µs (about 12 days); anything slower is in the last bucket.
const POWERS: u32 = 40;
const BUCKETS: usize = (SUB * POWERS) as usize;
/// How long one histogram collects before it becomes the "previous" one.
pub const PERIOD: Duration = Duration::from_secs(60);

/// Bucket of a latency in µs: values below `SUB` map one to one; above, the power of two gives
/// the group and the next three bits the sub-bucket.
fn bucket(us: u64) -> usize {
    if us < SUB as u64 {
        return us as usize;
    }
    let power = 63 - us.leading_zeros(); // >= 3
    let sub = (us >> (power - 3)) & (SUB as u64 - 1);
    (((power - 2) * SUB) as usize + sub as usize).min(BUCKETS - 1)
}

/// The largest latency (µs) that falls in bucket `b`: a percentile is reported as this upper
/// bound, so it never understates.
fn upper(b: usize) -> u64 {
    if b < SUB as usize {
        return b as u64;
    }
    let power = (b as u32 / SUB) + 2;
    let sub = b as u64 % SUB as u64;
    ((SUB as u64 + sub + 1) << (power - 3)) - 1
}

#[derive(Clone)]
struct Histogram {
    counts: Vec<u32>,
    total: u64,
}

impl Histogram {
    fn new() -> Self {
        Histogram { counts: vec![0; BUCKETS], total: 0 }
    }

    fn clear(&mut self) {
        self.counts.iter_mut().for_each(|c| *c = 0);
        self.total = 0;
    }
}

/// Recent latencies of one broker.
pub struct Latency {
    current: Histogram,
    previous: Histogram,
    rotated_at: Instant,
}

impl Latency {
    pub fn new(now: Instant) -> Self {
        Latency { current: Histogram::new(), previous: Histogram::new(), rotated_at: now }
    }

    /// One message: `us` from COMMIT to acknowledgement (negative, from a clock step: 0).
    pub fn record(&mut self, us: i64, now: Instant) {
        self.rotate(now);
        let b = bucket(us.max(0) as u64);
        self.current.counts[b] = self.current.counts[b].saturating_add(1);
        self.current.total += 1;
    }

    fn rotate(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.rotated_at);
        if age < PERIOD {
            return;
        }
        if age >= 2 * PERIOD {
            self.previous.clear(); // nothing recorded in the minute before either
        } else {
            std::mem::swap(&mut self.previous, &mut self.current);
        }
        self.current.clear();
        self.rotated_at = now;
    }

    /// The `q`-quantile (0 < q <= 1) of the recent latencies in µs, `None` without any.
    pub fn quantile(&mut self, q: f64, now: Instant) -> Option<u64> {
        self.rotate(now);
        let total = self.current.total + self.previous.total;
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0u64;
        for b in 0..BUCKETS {
            seen += self.current.counts[b] as u64 + self.previous.counts[b] as u64;
            if seen >= rank {
                return Some(upper(b));
            }
        }
        Some(upper(BUCKETS - 1))
    }

    /// Forget everything (`mqtt_stats_reset()`).
    pub fn reset(&mut self, now: Instant) {
        self.current.clear();
        self.previous.clear();
        self.rotated_at = now;
    }
}

/// "1 h 2 min", "3 min 4 s", "5.2 s": how long something lasted, as a DBA reads it in a log.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{:.1} s", d.as_secs_f64()),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_a_dba_says_them() {
        assert_eq!(human(Duration::from_millis(5200)), "5.2 s");
        assert_eq!(human(Duration::from_secs(184)), "3 min 4 s");
        assert_eq!(human(Duration::from_secs(3720)), "1 h 2 min");
    }

    #[test]
    fn buckets_are_ordered_and_bound_their_values() {
        let mut last = 0;
        for us in [0u64, 1, 7, 8, 9, 15, 16, 17, 100, 1000, 12_345, 1 << 20, (1 << 30) + 5] {
            let b = bucket(us);
            assert!(b >= last, "{us}");
            last = b;
            assert!(upper(b) >= us, "{us} -> bucket {b} bound {}", upper(b));
            // at most 1/8 above
            assert!(upper(b) as f64 <= us.max(1) as f64 * 1.125 + 1.0, "{us}: {}", upper(b));
            if b > 0 {
                assert!(upper(b - 1) < us, "{us} belongs above bucket {}", b - 1);
            }
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn percentiles_of_a_known_set() {
        let t = Instant::now();
        let mut l = Latency::new(t);
        assert_eq!(l.quantile(0.5, t), None);
        for i in 1..=100 {
            l.record(i * 1000, t); // 1 ms .. 100 ms
        }
        let p50 = l.quantile(0.5, t).unwrap();
        let p99 = l.quantile(0.99, t).unwrap();
        assert!((50_000..=57_000).contains(&p50), "{p50}");
        assert!((99_000..=112_000).contains(&p99), "{p99}");
        l.record(-5, t); // a clock step: counted as 0
        assert_eq!(l.quantile(0.001, t), Some(0));
    }

    #[test]
    fn recent_means_the_last_one_to_two_minutes() {
        let t = Instant::now();
        let mut l = Latency::new(t);
        l.record(1000, t);
        let later = t + PERIOD + Duration::from_secs(1);
        l.record(3000, later);
        // both minutes count
        assert!(l.quantile(0.01, later).unwrap() < 1200);
        // a minute later the first one is gone
        let more = later + PERIOD;
        assert!(l.quantile(0.01, more).unwrap() >= 3000);
        // and after two idle minutes, nothing
        assert_eq!(l.quantile(0.5, more + 2 * PERIOD), None);
        l.record(10, more);
        l.reset(more);
        assert_eq!(l.quantile(0.5, more), None);
    }
}
