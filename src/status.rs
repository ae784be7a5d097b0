//! `mqtt_status()` and the per-broker shared counters behind it.
//!
//! The worker is the only writer of a [`BrokerShared`]; backends only read it. Counters and flags
//! are atomics (readers may see a counter a moment stale, never torn). Text fields (host, last
//! error) are written and read under `STATUS_LOCK`, copied out before any PostgreSQL call.
//! All-zero memory is a valid initial state (empty strings, counters 0, not connected, hot).

use crate::fmgr::{text_datum, Args};
use crate::guard::guard;
use crate::shmem::{self, STATUS_LOCK};
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
    host: [u8; 256],
    last_error: [u8; 512],
}

#[repr(C)]
pub struct BrokerShared {
    pub in_use: AtomicBool,
    pub connected: AtomicBool,
    /// Delivery mode (a `Mode`; read with `mode()`). Changed only under RING_LOCK
    /// (`set_mode`), so a publisher's choice between ring and outbox is atomic with its ring
    /// reservation (txn.rs, worker.rs).
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
    /// TimestampTz, 0 = never.
    pub last_connected_at: AtomicI64,
    pub last_error_at: AtomicI64,
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
        shmem::with_lock(STATUS_LOCK, pg::LWLockMode::LW_EXCLUSIVE, || {
            // SAFETY: text fields are only touched under STATUS_LOCK.
            let t = unsafe { &mut *self.text.get() };
            put(&mut t.name, name);
            put(&mut t.host, host);
        });
        self.port.store(port as i32, Ordering::Relaxed);
        self.in_use.store(true, Ordering::Release);
    }

    /// Worker: record an error a human should see in `mqtt_status().last_error`.
    pub fn set_error(&self, msg: &str) {
        shmem::with_lock(STATUS_LOCK, pg::LWLockMode::LW_EXCLUSIVE, || {
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
        shmem::with_lock(shmem::RING_LOCK, pg::LWLockMode::LW_EXCLUSIVE, || {
            self.set_mode(Mode::Cold);
        });
        shmem::with_lock(STATUS_LOCK, pg::LWLockMode::LW_EXCLUSIVE, || {
            // SAFETY: under STATUS_LOCK.
            let t = unsafe { &mut *self.text.get() };
            put(&mut t.name, "");
            put(&mut t.host, "");
            put(&mut t.last_error, "");
        });
        for c in [&self.messages_sent, &self.messages_failed, &self.dead_lettered] {
            c.store(0, Ordering::Relaxed);
        }
        for t in [&self.last_connected_at, &self.last_error_at] {
            t.store(0, Ordering::Relaxed);
        }
        self.inflight.store(0, Ordering::Relaxed);
        self.connected.store(false, Ordering::Release);
        self.in_use.store(false, Ordering::Release);
    }

    pub fn set_connected(&self, up: bool) {
        if up {
            self.last_connected_at.store(now(), Ordering::Relaxed);
        }
        self.connected.store(up, Ordering::Release);
    }

    fn text(&self) -> (String, String, String) {
        shmem::with_lock(STATUS_LOCK, pg::LWLockMode::LW_SHARED, || {
            // SAFETY: under STATUS_LOCK.
            let t = unsafe { &*self.text.get() };
            (get(&t.name), get(&t.host), get(&t.last_error))
        })
    }
}

/// Status slot of a broker by index.
pub fn broker(idx: usize) -> &'static BrokerShared {
    &crate::publish::require_shared().brokers()[idx]
}

crate::pg_finfo!(pg_finfo_mqtt_status);

/// `mqtt_status()`: one row per broker.
#[no_mangle]
pub unsafe extern "C-unwind" fn mqtt_status(fcinfo: pg::FunctionCallInfo) -> pg::Datum {
    guard(|| {
        let s = crate::publish::require_shared();
        // SAFETY: fcinfo is valid for this call.
        let args = unsafe { Args::new(fcinfo) };
        let ring = shmem::ring();
        let ring_bytes = (ring.used_slots() * crate::ring::SLOT as u64) as i64;
        // SAFETY: the documented materialize-mode SRF recipe.
        unsafe {
            pg::InitMaterializedSRF(args.fcinfo(), 0);
            let rsinfo = (*args.fcinfo()).resultinfo as *mut pg::ReturnSetInfo;
            for (i, b) in s.brokers().iter().enumerate() {
                let in_use = b.in_use.load(Ordering::Acquire);
                if !in_use && i != 0 {
                    continue;
                }
                let (mut name, mut host, last_error) = b.text();
                let mut port = b.port.load(Ordering::Relaxed);
                if !in_use {
                    // the worker has not started yet: show what it will use
                    let cfg = crate::gucs::BrokerConfig::default_broker();
                    name = cfg.name;
                    host = cfg.host;
                    port = cfg.port as i32;
                }
                let ts = |v: i64| (pg::Datum::from(v), v == 0);
                let mode = if b.is_cold() { "cold" } else { "hot" };
                let (pending, oldest) = crate::outbox::pending_and_age(&name);
                let cols: [(pg::Datum, bool); 15] = [
                    (text_datum(&name), false),
                    (text_datum(&host), false),
                    (pg::Datum::from(port), false),
                    (pg::Datum::from(b.connected.load(Ordering::Acquire)), false),
                    (text_datum(mode), false),
                    (pg::Datum::from(b.messages_sent.load(Ordering::Relaxed) as i64), false),
                    (pg::Datum::from(b.messages_failed.load(Ordering::Relaxed) as i64), false),
                    (pg::Datum::from(b.dead_lettered.load(Ordering::Relaxed) as i64), false),
                    (pg::Datum::from(pending), false),
                    (text_datum(&last_error), last_error.is_empty()),
                    ts(b.last_connected_at.load(Ordering::Relaxed)),
                    ts(b.last_error_at.load(Ordering::Relaxed)),
                    (pg::Datum::from(b.inflight.load(Ordering::Relaxed) as i32), false),
                    (pg::Datum::from(ring_bytes), false),
                    (oldest.unwrap_or(pg::Datum::from(0usize)), oldest.is_none()),
                ];
                let mut values: Vec<pg::Datum> = cols.iter().map(|c| c.0).collect();
                let mut nulls: Vec<bool> = cols.iter().map(|c| c.1).collect();
                pg::tuplestore_putvalues(
                    (*rsinfo).setResult,
                    (*rsinfo).setDesc,
                    values.as_mut_ptr(),
                    nulls.as_mut_ptr(),
                );
            }
        }
        pg::Datum::from(0usize)
    })
}
