//! A broker's slot in shared memory: its delivery mode and the counters `mqtt_status()` shows.
//!
//! The worker is the only writer of a [`BrokerShared`]'s counters; backends only read them. Counters
//! and flags are atomics (readers may see a counter a moment stale, never torn). Text fields (host,
//! last error) are written and read under `STATUS_LOCK`, copied out before any PostgreSQL call.
//! The mode is changed under `RING_LOCK` (ADR-003). All-zero memory is a valid slot (empty
//! strings, counters 0, not connected, mode 0 = hot); shared-memory initialisation then sets every
//! broker cold (shmem/mod.rs: the outbox goes first after a restart).

use super::{with_lock, RING_LOCK, STATUS_LOCK};
use crate::pure::limits::Limits;
use pgrx_pg_sys as pg;
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering};

/// A broker's delivery mode (ADR-001, ADR-003).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Mode {
    /// Committed messages go through the shared-memory ring.
    Hot = 0,
    /// Committed messages go through `mqtt_pub.outbox` (outage, spill, `durable`, start-up).
    Cold = 1,
}

#[repr(C)]
struct BrokerText {
    name: [u8; 64],
    /// The broker's `host` as configured (a node list, pure/nodes.rs: up to 1,000 bytes).
    host: [u8; 1024],
    last_error: [u8; 512],
    /// The node (and address) of the current or last connection.
    node: [u8; 320],
}

#[repr(C)]
pub struct BrokerShared {
    pub in_use: AtomicBool,
    pub connected: AtomicBool,
    /// Delivery mode (a `Mode`; read with `mode()`). Changed only under RING_LOCK
    /// (`set_mode`), so a publisher's choice between ring and outbox is atomic with its ring
    /// reservation (backend/txn.rs, worker/).
    mode: AtomicU32,
    /// Transactions in progress that wrote (or will write at pre-commit) outbox rows for this
    /// broker. The worker returns the broker to hot only when this is 0 and the outbox is empty.
    pub cold_writers: AtomicU32,
    /// Bumped (under RING_LOCK) by every new cold-writer registration: the worker checks the
    /// outbox outside the lock and goes hot only if nobody registered in the meantime.
    pub cold_epoch: AtomicU64,
    /// Ring head when the broker last went cold: ring records for it can exist only before this.
    pub flip_head: AtomicU64,
    pub inflight: AtomicU32,
    pub port: AtomicI32,
    pub messages_sent: AtomicU64,
    pub messages_failed: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// Messages not sent because their message expiry ran out first.
    pub messages_expired: AtomicU64,
    /// TimestampTz, 0 = never.
    pub last_connected_at: AtomicI64,
    pub last_error_at: AtomicI64,
    /// When the current problem began (the connection was lost, or the first attempt failed);
    /// 0 while connected. `mqtt_status().problem` is `last_error` while this is set.
    pub problem_since: AtomicI64,
    /// When the worker will try to connect next (TimestampTz; 0: not waiting to retry).
    pub next_attempt_at: AtomicI64,
    /// Ring messages the worker has taken for this broker and not yet had acknowledged.
    pub ring_waiting: AtomicU64,
    /// COMMIT time of the oldest message in flight (ring or outbox), 0 = none.
    pub oldest_inflight_at: AtomicI64,
    /// Recent commit-to-acknowledge latency (µs, pure/latency.rs), -1 = no message recently.
    pub latency_p50_us: AtomicI64,
    pub latency_p99_us: AtomicI64,
    /// When the counters were last reset (server start, broker added, `mqtt_stats_reset()`).
    pub stats_reset: AtomicI64,
    /// Set by `mqtt_reconnect()`: the worker connects now and forgets its backoff.
    pub reconnect_requested: AtomicBool,
    /// Set by `mqtt_stats_reset()`: the worker forgets its latency histogram too.
    pub latency_reset_requested: AtomicBool,
    /// What the broker's last CONNACK allowed (`known` false: nothing learnt yet, or the broker
    /// changed since): publishers refuse a message beyond them in their own statement.
    limits_known: AtomicBool,
    max_qos: AtomicU32,
    retain_available: AtomicBool,
    max_packet_size: AtomicU32,
    /// Connections made to another node than the one connected before (ADR-013).
    pub failovers: AtomicU64,
    /// The connection speaks MQTT 5 (a PUBLISH carries a properties length).
    v5: AtomicBool,
    text: UnsafeCell<BrokerText>,
}

fn put(dst: &mut [u8], s: &str) {
    // keep one byte for the terminating NUL and cut on a char boundary
    let mut n = s.len().min(dst.len() - 1);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
    dst[n] = 0;
}

fn get(src: &[u8]) -> String {
    let n = src.iter().position(|&b| b == 0).unwrap_or(src.len());
    String::from_utf8_lossy(&src[..n]).into_owned()
}

fn now() -> i64 {
    // SAFETY: plain call.
    unsafe { pg::GetCurrentTimestamp() }
}

impl BrokerShared {
    /// Worker: (re)describe this broker slot.
    pub fn set_identity(&self, name: &str, host: &str, port: u16) {
        with_lock(STATUS_LOCK, pg::LWLockMode::LW_EXCLUSIVE, || {
            // SAFETY: text fields are only touched under STATUS_LOCK.
            let t = unsafe { &mut *self.text.get() };
            put(&mut t.name, name);
            put(&mut t.host, host);
        });
        self.port.store(port as i32, Ordering::Relaxed);
        if !self.in_use.load(Ordering::Acquire) {
            self.reset_stats(); // a broker new to this slot counts from now
        }
        self.in_use.store(true, Ordering::Release);
    }

    /// A fresh slot: cold, unused, nothing counted, no text. Without locks: only for a share
    /// nobody uses (shared-memory start, or a share changing hands under its locks).
    pub(super) fn clear(&self) {
        self.set_mode(Mode::Cold);
        // SAFETY: nobody reads or writes this slot meanwhile (see above).
        let t = unsafe { &mut *self.text.get() };
        put(&mut t.name, "");
        put(&mut t.host, "");
        put(&mut t.last_error, "");
        put(&mut t.node, "");
        for t in [&self.last_connected_at, &self.last_error_at, &self.problem_since, &self.next_attempt_at] {
            t.store(0, Ordering::Relaxed);
        }
        for c in [&self.inflight, &self.cold_writers] {
            c.store(0, Ordering::Relaxed);
        }
        for c in [&self.cold_epoch, &self.flip_head, &self.ring_waiting] {
            c.store(0, Ordering::Relaxed);
        }
        self.oldest_inflight_at.store(0, Ordering::Relaxed);
        self.port.store(0, Ordering::Relaxed);
        self.set_limits(None);
        self.reconnect_requested.store(false, Ordering::Relaxed);
        self.connected.store(false, Ordering::Relaxed);
        self.in_use.store(false, Ordering::Relaxed);
        self.reset_stats();
    }

    /// Worker: record an error a human should see in `mqtt_status().last_error`.
    /// Worker: the node (and address) just connected to.
    pub fn set_node(&self, node: &str) {
        with_lock(STATUS_LOCK, pg::LWLockMode::LW_EXCLUSIVE, || {
            // SAFETY: under STATUS_LOCK.
            put(unsafe { &mut (*self.text.get()).node }, node);
        });
    }

    /// The node of the current or last connection ('' before the first).
    pub fn node(&self) -> String {
        with_lock(STATUS_LOCK, pg::LWLockMode::LW_SHARED, || {
            // SAFETY: under STATUS_LOCK.
            get(unsafe { &(*self.text.get()).node })
        })
    }

    pub fn set_error(&self, msg: &str) {
        with_lock(STATUS_LOCK, pg::LWLockMode::LW_EXCLUSIVE, || {
            // SAFETY: under STATUS_LOCK.
            put(unsafe { &mut (*self.text.get()).last_error }, msg);
        });
        self.last_error_at.store(now(), Ordering::Relaxed);
    }

    pub fn mode(&self) -> Mode {
        if self.mode.load(Ordering::Acquire) == Mode::Cold as u32 {
            Mode::Cold
        } else {
            Mode::Hot
        }
    }

    pub fn is_cold(&self) -> bool {
        self.mode() == Mode::Cold
    }

    /// Caller holds RING_LOCK (or is initialising shared memory).
    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u32, Ordering::Release);
    }

    /// Worker: a removed broker's slot becomes free for the next `mqtt_broker_add`: counters
    /// reset, cold (a new broker starts on the outbox until it is connected and drained).
    pub fn release(&self) {
        with_lock(RING_LOCK, pg::LWLockMode::LW_EXCLUSIVE, || {
            self.set_mode(Mode::Cold);
        });
        with_lock(STATUS_LOCK, pg::LWLockMode::LW_EXCLUSIVE, || {
            // SAFETY: under STATUS_LOCK.
            let t = unsafe { &mut *self.text.get() };
            put(&mut t.name, "");
            put(&mut t.host, "");
            put(&mut t.last_error, "");
            put(&mut t.node, "");
        });
        self.reset_stats();
        for t in [&self.last_connected_at, &self.last_error_at, &self.problem_since, &self.next_attempt_at] {
            t.store(0, Ordering::Relaxed);
        }
        self.inflight.store(0, Ordering::Relaxed);
        self.ring_waiting.store(0, Ordering::Relaxed);
        self.oldest_inflight_at.store(0, Ordering::Relaxed);
        self.set_limits(None);
        self.connected.store(false, Ordering::Release);
        self.in_use.store(false, Ordering::Release);
    }

    /// Worker: the limits of the broker's CONNACK (`None`: forget them, the broker changed).
    pub fn set_limits(&self, l: Option<(Limits, bool)>) {
        self.limits_known.store(false, Ordering::Release);
        if let Some((l, v5)) = l {
            self.max_qos.store(l.max_qos as u32, Ordering::Relaxed);
            self.retain_available.store(l.retain_available, Ordering::Relaxed);
            self.max_packet_size.store(l.max_packet_size, Ordering::Relaxed);
            self.v5.store(v5, Ordering::Relaxed);
            self.limits_known.store(true, Ordering::Release);
        }
    }

    /// Backend: the broker's limits as last learnt, and whether it speaks MQTT 5; `None` before
    /// the first CONNACK. (Read without a lock: a reader racing a reconnect sees old or new values
    /// of single fields, and the worker checks every message again anyway.)
    pub fn limits(&self) -> Option<(Limits, bool)> {
        if !self.limits_known.load(Ordering::Acquire) {
            return None;
        }
        let l = Limits {
            max_qos: self.max_qos.load(Ordering::Relaxed) as u8,
            retain_available: self.retain_available.load(Ordering::Relaxed),
            max_packet_size: self.max_packet_size.load(Ordering::Relaxed),
            ..Limits::default()
        };
        Some((l, self.v5.load(Ordering::Relaxed)))
    }

    pub fn set_connected(&self, up: bool) {
        if up {
            self.last_connected_at.store(now(), Ordering::Relaxed);
            self.problem_since.store(0, Ordering::Relaxed);
            self.next_attempt_at.store(0, Ordering::Relaxed);
        } else if self.problem_since.load(Ordering::Relaxed) == 0 {
            self.problem_since.store(now(), Ordering::Relaxed);
        }
        self.connected.store(up, Ordering::Release);
    }

    /// Counters back to 0 and `stats_reset` to now (shared-memory start, a new broker in the
    /// slot, `mqtt_stats_reset()` from a backend). The worker only ever adds to the counters
    /// (`fetch_add`), so a reset racing an increment loses at most that one increment, as
    /// `pg_stat_statements_reset()` may.
    pub fn reset_stats(&self) {
        self.reset_stats_at(now());
    }

    /// `reset_stats` with the reset time given (one time for all brokers of one call).
    pub fn reset_stats_at(&self, at: i64) {
        for c in
            [&self.messages_sent, &self.messages_failed, &self.dead_lettered, &self.messages_expired, &self.failovers]
        {
            c.store(0, Ordering::Relaxed);
        }
        for p in [&self.latency_p50_us, &self.latency_p99_us] {
            p.store(-1, Ordering::Relaxed);
        }
        self.latency_reset_requested.store(true, Ordering::Release);
        self.stats_reset.store(at, Ordering::Relaxed);
    }

    /// The current problem: what stops delivery now (`None` while connected).
    pub fn problem(&self, last_error: &str) -> Option<String> {
        if self.connected.load(Ordering::Acquire) {
            return None;
        }
        Some(if last_error.is_empty() { "not connected yet".into() } else { last_error.into() })
    }

    pub fn text(&self) -> (String, String, String) {
        with_lock(STATUS_LOCK, pg::LWLockMode::LW_SHARED, || {
            // SAFETY: under STATUS_LOCK.
            let t = unsafe { &*self.text.get() };
            (get(&t.name), get(&t.host), get(&t.last_error))
        })
    }
}

/// Status slot of a broker by index.
pub fn broker(idx: usize) -> &'static BrokerShared {
    &super::require_shared().brokers()[idx]
}
