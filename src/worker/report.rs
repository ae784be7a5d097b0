//! What the worker tells a DBA about each broker beyond its counters: commit-to-acknowledge
//! latency, the oldest message in flight, the next connection attempt (all in the broker's shared
//! slot for `mqtt_status()`), and the log lines an operator reads afterwards: a broker that came
//! back (down how long, how many messages waited), and expired messages once a minute instead of
//! one line each.
//!
//! The link records facts as they happen ([`Report`] methods, no I/O); [`Worker::report`] turns
//! them into shared-memory values at most once a second and into log lines. Backends act on a
//! broker through two flags in its slot: `reconnect_requested` (`mqtt_reconnect()`) and
//! `latency_reset_requested` (`mqtt_stats_reset()`), taken here.

use super::*;
use crate::pure::latency::{human, Latency};
use std::collections::HashMap;

/// How often the shared values are refreshed (a status query reads them as they were then).
const PUBLISH_EVERY: Duration = Duration::from_secs(1);
/// Expired messages are summed up in one line per broker at most this often.
const EXPIRED_LINE_EVERY: Duration = Duration::from_secs(60);

pub(super) struct Report {
    latency: Latency,
    /// COMMIT time (µs) of each message in flight by MQTT message id, and whether it came from
    /// the ring: the latency once it is acknowledged, the oldest age while it is not.
    sent_at: HashMap<i32, (i64, bool)>,
    published_at: Instant,
    /// Since when (and since what wall-clock time) the broker has been unreachable, for the
    /// line logged when it is back. `None` while connected, and before the first connection.
    down_since: Option<(Instant, i64)>,
    /// The broker is back: log it (with how many messages waited) at the next report.
    back_after: Option<Duration>,
    expired: u64,
    expired_line_at: Instant,
}

impl Report {
    pub(super) fn new() -> Self {
        let now = Instant::now();
        Report {
            latency: Latency::new(now),
            sent_at: HashMap::new(),
            published_at: now - PUBLISH_EVERY,
            down_since: None,
            back_after: None,
            expired: 0,
            expired_line_at: now - EXPIRED_LINE_EVERY, // the first line comes at once
        }
    }

    /// A QoS 1/2 message handed to the broker (`at`: its COMMIT time, µs).
    pub(super) fn sent(&mut self, mid: i32, at: i64, ring: bool) {
        self.sent_at.insert(mid, (at, ring));
    }

    /// Message `mid` was acknowledged (`ok`: accepted, so its latency counts).
    pub(super) fn acknowledged(&mut self, mid: i32, ok: bool) {
        if let Some((at, _)) = self.sent_at.remove(&mid) {
            if ok {
                self.latency.record(now_us() - at, Instant::now());
            }
        }
    }

    /// A QoS 0 message written (or queued to be written) to the broker's socket.
    pub(super) fn written(&mut self, at: i64) {
        self.latency.record(now_us() - at, Instant::now());
    }

    /// Everything in flight is taken back (sent again later, from the outbox).
    pub(super) fn forget_inflight(&mut self) {
        self.sent_at.clear();
    }

    /// The broker could not be reached (a connection lost, or an attempt failed).
    pub(super) fn connection_lost(&mut self) {
        if self.down_since.is_none() {
            self.down_since = Some((Instant::now(), now_us()));
        }
    }

    /// The broker accepted a connection.
    pub(super) fn connected(&mut self) {
        if let Some((since, _)) = self.down_since.take() {
            self.back_after = Some(since.elapsed());
        }
    }

    pub(super) fn expired(&mut self) {
        self.expired += 1;
    }
}

impl Worker {
    /// Refresh each broker's reported values (at most once a second) and write the log lines due.
    pub(super) fn report(&mut self) {
        for l in 0..self.links.len() {
            self.take_requests(l);
            self.log_back(l);
            self.log_expired(l);
            let k = &mut self.links[l];
            if k.report.published_at.elapsed() < PUBLISH_EVERY {
                continue;
            }
            k.report.published_at = Instant::now();
            let now = Instant::now();
            let s = k.status;
            for (q, slot) in [(0.5, &s.latency_p50_us), (0.99, &s.latency_p99_us)] {
                slot.store(k.report.latency.quantile(q, now).map(|v| v as i64).unwrap_or(-1), Ordering::Relaxed);
            }
            let oldest = k.report.sent_at.values().map(|(at, _)| *at).min().unwrap_or(0);
            s.oldest_inflight_at.store(oldest, Ordering::Relaxed);
            let ring_inflight = k.report.sent_at.values().filter(|(_, ring)| *ring).count();
            s.ring_waiting.store((ring_inflight + k.backlog.len()) as u64, Ordering::Relaxed);
            let next = match k.state {
                ConnState::Retry { at } => now_us() + at.saturating_duration_since(now).as_micros() as i64,
                _ => 0,
            };
            s.next_attempt_at.store(next, Ordering::Relaxed);
        }
    }

    /// `mqtt_reconnect()` and `mqtt_stats_reset()` asked something of this broker.
    fn take_requests(&mut self, l: usize) {
        let k = &mut self.links[l];
        if k.status.latency_reset_requested.swap(false, Ordering::AcqRel) {
            k.report.latency.reset(Instant::now());
            k.report.published_at = Instant::now() - PUBLISH_EVERY;
        }
        if k.status.reconnect_requested.swap(false, Ordering::AcqRel) {
            k.failures = 0;
            if k.rotation.node() != 0 && k.switch_to.is_none() && k.resolving.is_none() {
                // On another node than the first of its list: start over from the first (after
                // the messages in flight are acknowledged, as for a settings change). This is
                // how a DBA moves the connection back (ADR-013).
                guard::log(
                    Level::LOG,
                    format!("pg_mqtt_pub: broker \"{}\": returning to its first node (mqtt_reconnect)", k.cfg.name),
                );
                let cfg = k.cfg.clone();
                k.switch_later(cfg);
                self.rebuild_waiter = true;
                return;
            }
            if matches!(k.state, ConnState::Retry { .. }) {
                guard::log(
                    Level::LOG,
                    format!("pg_mqtt_pub: broker \"{}\": connecting now (mqtt_reconnect)", k.cfg.name),
                );
                k.state = ConnState::Retry { at: Instant::now() };
                k.status.next_attempt_at.store(now_us(), Ordering::Relaxed);
                self.rebuild_waiter = true;
            }
        }
    }

    /// One line when a broker that was unreachable is connected again.
    fn log_back(&mut self, l: usize) {
        let Some(after) = self.links[l].report.back_after.take() else { return };
        let name = self.links[l].cfg.name.clone();
        let waiting = self.with_outbox(|| crate::data::backlog::waiting(&name)).unwrap_or(0);
        let k = &self.links[l];
        guard::log(
            Level::LOG,
            format!(
                "pg_mqtt_pub: broker \"{name}\" is back at {} after {} unreachable; {waiting} message{} waited in the outbox",
                k.at(),
                human(after),
                if waiting == 1 { "" } else { "s" }
            ),
        );
    }

    /// Expired messages are dropped without a line each: one line per broker and minute.
    fn log_expired(&mut self, l: usize) {
        let k = &mut self.links[l];
        if k.report.expired == 0 || k.report.expired_line_at.elapsed() < EXPIRED_LINE_EVERY {
            return;
        }
        let n = k.report.expired;
        k.report.expired = 0;
        k.report.expired_line_at = Instant::now();
        let kept = if gucs::DEAD_LETTER_EXPIRED.get() { "kept in mqtt_pub.dead_letters" } else { "dropped" };
        guard::log(
            Level::LOG,
            format!(
                "pg_mqtt_pub: broker \"{}\": {n} message{} expired before {} could be sent: {kept} (at most one such line a minute)",
                k.cfg.name,
                if n == 1 { "" } else { "s" },
                if n == 1 { "it" } else { "they" },
            ),
        );
    }
}
