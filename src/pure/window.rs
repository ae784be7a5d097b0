//! The in-flight window of one broker connection: the QoS 1/2 messages handed to the broker and
//! not yet acknowledged.
//!
//! Pure state, no I/O (the worker's link does the network and calls these), in the spirit of
//! rumqttc's `state.rs`; `cargo test` covers the rules the delivery contract depends on:
//!
//! * At most `max_inflight` messages are unacknowledged at once.
//! * **Probe mode.** A connection that dies while messages are in flight may have been killed by
//!   one of them (a broker that drops the connection on a message it cannot take). Afterwards the
//!   next few messages (as many as were in flight, at most [`PROBE_MAX`]) go one at a time; if the
//!   connection dies again with exactly one message in flight, that message is the suspect and is
//!   charged as a failed attempt (poison handling) instead of being resent forever.
//! * **Ack timeout.** A broker that keeps the connection but stops acknowledging is noticed when
//!   nothing was acknowledged for a while although messages are in flight.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The longest probe: messages sent one at a time after a connection died with some in flight.
pub const PROBE_MAX: u32 = 10;

#[derive(Debug)]
pub struct Window<T> {
    inflight: HashMap<i32, T>,
    /// Messages still to send one at a time (probe mode), see the module comment.
    probe: u32,
    /// The last acknowledgement, or when the window last went from empty to non-empty.
    last_progress: Instant,
}

/// What a connection loss leaves of the window.
#[derive(Debug, PartialEq, Eq)]
pub enum Lost<T> {
    /// Nothing was in flight.
    Nothing,
    /// In probe mode with only this message in flight: it is the suspect.
    Suspect(T),
    /// To be sent again, in no particular order (the caller sorts).
    Resend(Vec<T>),
}

impl<T> Default for Window<T> {
    fn default() -> Self {
        Window { inflight: HashMap::new(), probe: 0, last_progress: Instant::now() }
    }
}

impl<T: Copy> Window<T> {
    /// May another message be handed over (the connection being usable)?
    pub fn has_room(&self, max_inflight: usize) -> bool {
        let size = if self.probe > 0 { 1 } else { max_inflight };
        self.inflight.len() < size
    }

    pub fn len(&self) -> usize {
        self.inflight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inflight.is_empty()
    }

    pub fn probing(&self) -> bool {
        self.probe > 0
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.inflight.values()
    }

    /// `what` was handed over as message id `mid`.
    pub fn sent(&mut self, mid: i32, what: T, now: Instant) {
        if self.inflight.is_empty() {
            self.last_progress = now;
        }
        self.inflight.insert(mid, what);
    }

    /// The broker acknowledged `mid` (successfully or not): what it was, unless unknown.
    pub fn acknowledged(&mut self, mid: i32, now: Instant) -> Option<T> {
        let what = self.inflight.remove(&mid)?;
        self.last_progress = now;
        self.probe = self.probe.saturating_sub(1);
        Some(what)
    }

    /// A (re)connection was acknowledged: the ack timeout counts from now.
    pub fn connected(&mut self, now: Instant) {
        self.last_progress = now;
    }

    /// Messages are in flight and nothing was acknowledged for longer than `limit`.
    pub fn stalled(&self, now: Instant, limit: Duration) -> bool {
        !self.inflight.is_empty() && now.duration_since(self.last_progress) > limit
    }

    /// The connection is gone. `suspicious`: it died (rather than being closed on purpose), so
    /// the next messages go one at a time.
    pub fn lost(&mut self, suspicious: bool) -> Lost<T> {
        let n = self.inflight.len();
        let was_probing = self.probe > 0;
        let what: Vec<T> = self.inflight.drain().map(|(_, w)| w).collect();
        if n == 0 {
            return Lost::Nothing; // the probe carries on with the next message
        }
        self.probe = if suspicious { (n as u32).min(PROBE_MAX) } else { 0 };
        if suspicious && was_probing && n == 1 {
            Lost::Suspect(what[0])
        } else {
            Lost::Resend(what)
        }
    }

    /// Forget everything in flight (shutdown: it is saved elsewhere).
    pub fn clear(&mut self) {
        self.inflight.clear();
    }

    /// Everything in flight, forgotten (the broker is gone for good).
    pub fn take(&mut self) -> Vec<T> {
        self.inflight.drain().map(|(_, w)| w).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn the_window_holds_at_most_max_inflight() {
        let mut w = Window::default();
        let now = t0();
        for mid in 1..=3 {
            assert!(w.has_room(3));
            w.sent(mid, mid * 10, now);
        }
        assert!(!w.has_room(3));
        assert_eq!(w.acknowledged(2, now), Some(20));
        assert_eq!(w.acknowledged(2, now), None, "a duplicate acknowledgement is ignored");
        assert!(w.has_room(3));
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn a_drop_with_messages_in_flight_probes_one_at_a_time() {
        let mut w = Window::default();
        let now = t0();
        for mid in 1..=4 {
            w.sent(mid, mid, now);
        }
        let Lost::Resend(mut again) = w.lost(true) else { panic!("resend") };
        again.sort();
        assert_eq!(again, vec![1, 2, 3, 4]);
        assert!(w.probing());
        assert!(w.has_room(100));
        w.sent(5, 1, now);
        assert!(!w.has_room(100), "one at a time while probing");
        assert_eq!(w.acknowledged(5, now), Some(1));
        // three more probes, then the full window again
        for mid in 6..=8 {
            w.sent(mid, mid, now);
            assert!(!w.has_room(100));
            w.acknowledged(mid, now);
        }
        assert!(!w.probing());
        w.sent(9, 9, now);
        assert!(w.has_room(100));
    }

    #[test]
    fn a_drop_while_probing_one_message_names_the_suspect() {
        let mut w = Window::default();
        let now = t0();
        w.sent(1, 'a', now);
        w.sent(2, 'b', now);
        assert!(matches!(w.lost(true), Lost::Resend(_)));
        w.sent(3, 'a', now);
        assert_eq!(w.lost(true), Lost::Suspect('a'));
        assert!(w.probing(), "the rest is still probed");
        // an intentional close (settings switch) is not suspicious and ends probe mode
        w.sent(4, 'b', now);
        assert_eq!(w.lost(false), Lost::Resend(vec!['b']));
        assert!(!w.probing());
        assert_eq!(w.lost(true), Lost::Nothing);
    }

    #[test]
    fn a_probe_is_at_most_probe_max_long() {
        let mut w = Window::default();
        let now = t0();
        for mid in 0..50 {
            w.sent(mid, mid, now);
        }
        w.lost(true);
        for mid in 0..PROBE_MAX as i32 {
            assert!(w.probing());
            w.sent(mid, mid, now);
            w.acknowledged(mid, now);
        }
        assert!(!w.probing());
    }

    #[test]
    fn stalled_only_with_messages_in_flight_and_no_progress() {
        let mut w = Window::default();
        let start = t0();
        let limit = Duration::from_secs(30);
        assert!(!w.stalled(start + Duration::from_secs(60), limit), "empty: never stalled");
        w.sent(1, (), start);
        assert!(!w.stalled(start + Duration::from_secs(10), limit));
        assert!(w.stalled(start + Duration::from_secs(31), limit));
        w.sent(2, (), start + Duration::from_secs(20));
        w.acknowledged(1, start + Duration::from_secs(25));
        assert!(!w.stalled(start + Duration::from_secs(50), limit), "progress at 25 s");
        assert!(w.stalled(start + Duration::from_secs(56), limit));
    }
}
