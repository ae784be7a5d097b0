//! How much the outbox holds, for `pg_mqtt_pub.max_outbox_size`: the bound that keeps a
//! publisher (or an outage) from filling the disk PostgreSQL's WAL lives on.
//!
//! The size is the bytes of topics, payloads and properties in `mqtt_pub.outbox`, kept in shared
//! memory (`Shared::outbox_bytes`) without SQL on the publishing path:
//! * a publisher *reserves* what it is about to write (`Shared::outbox_reserved`, checked against
//!   the limit together with what is committed, so concurrent transactions share one allowance);
//!   its COMMIT moves the reservation to the committed figure, a rollback — of the transaction or
//!   of the savepoint it wrote in (pure/ledger.rs) — gives it back; PREPARE counts as committed;
//! * the worker adds what it writes (messages taken back from the ring) and takes off what it
//!   deletes after delivery, as its statements report them;
//! * the worker measures the table every minute ([`measure`]), which corrects what nobody counts
//!   (dead-lettering, replays, a DBA's DELETE, ROLLBACK PREPARED); a publisher that finds the
//!   outbox full measures it first (at most once a second cluster-wide), so a stale figure cannot
//!   refuse anybody for long.
//!
//! So the figure is approximate: a commit that lands during a measurement may be missed or
//! counted twice until the next one, and rows of prepared transactions not yet committed are not
//! measured (at most `max_prepared_transactions` times the limit). The limit is a safety bound,
//! not a quota.
//!
//! Only what a *publisher* adds is refused ([`reserve`]): the caller's transaction takes the
//! error. Messages already committed (the worker's writes) always go in, so the outbox can pass
//! the limit by what the ring held.

use crate::pg::guard::{Code, PgError};
use crate::pg::gucs;
use crate::pg::spi::{self, pinned, with_spi, Rights};
use crate::shmem::require_shared;
use pgrx_pg_sys as pg;
use std::sync::atomic::Ordering;

/// Bytes the outbox holds (approximately; never negative).
pub fn used() -> i64 {
    require_shared().outbox_bytes.load(Ordering::Relaxed).max(0)
}

/// The limit in bytes, or `None` for no limit (-1).
pub fn limit() -> Option<i64> {
    let kb = gucs::MAX_OUTBOX_SIZE.get();
    (kb >= 0).then_some(kb as i64 * 1024)
}

/// The worker wrote (`bytes` > 0) or deleted (< 0) committed rows.
pub fn add(bytes: i64) {
    if bytes != 0 {
        require_shared().outbox_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// A publisher is about to write `adding` bytes to the outbox: reserve them, or ERROR 53400 if
/// that passes the limit (after one fresh measurement, in case the figure is stale). `own`: what
/// its transaction has written so far (a measurement in it sees those rows, already reserved).
pub fn reserve(adding: i64, own: i64) {
    let s = require_shared();
    let Some(max) = limit() else {
        s.outbox_reserved.fetch_add(adding, Ordering::Relaxed);
        return;
    };
    for attempt in 0..2 {
        // Add first, then look: two publishers racing for the last room may both be refused,
        // never both let in.
        let reserved = s.outbox_reserved.fetch_add(adding, Ordering::Relaxed) + adding;
        if used() + reserved <= max {
            return;
        }
        s.outbox_reserved.fetch_sub(adding, Ordering::Relaxed);
        if attempt == 0 && !measure_if_due(own) {
            break;
        }
    }
    let (used, reserved) = (used(), s.outbox_reserved.load(Ordering::Relaxed).max(0));
    PgError::new(Code::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED, "the pg_mqtt_pub outbox is full")
        .detail(format!(
            "It holds about {} and open transactions are writing {} more, of pg_mqtt_pub.max_outbox_size ({}); \
             this transaction would add {}.",
            pretty(used),
            pretty(reserved),
            pretty(max),
            pretty(adding)
        ))
        .hint(
            "Messages wait in the outbox while a broker is unreachable or behind: see mqtt_status() and \
             mqtt_pub.outbox_summary, let delivery catch up, or raise pg_mqtt_pub.max_outbox_size.",
        )
        .raise()
}

/// A publisher's message is bound for the outbox at COMMIT (its broker is cold): refuse it at the
/// call already if it would not fit now.
pub fn require_room(adding: i64, own: i64) {
    reserve(adding, own);
    require_shared().outbox_reserved.fetch_sub(adding, Ordering::Relaxed);
}

/// A transaction that reserved `bytes` ended: committed (or prepared) rows count as the outbox's
/// from now on; rolled-back ones are gone.
pub fn settle(bytes: i64, committed: bool) {
    if bytes == 0 {
        return;
    }
    let s = require_shared();
    s.outbox_reserved.fetch_sub(bytes, Ordering::Relaxed);
    if committed {
        s.outbox_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// A publisher found the outbox full: measure it (as the outbox's owner), unless someone did
/// in the last second. True if it measured.
fn measure_if_due(own: i64) -> bool {
    let s = require_shared();
    // SAFETY: plain call.
    let now = unsafe { pg::GetCurrentTimestamp() };
    let last = s.outbox_measured_at.load(Ordering::Relaxed);
    if now - last < 1_000_000
        || s.outbox_measured_at.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err()
    {
        return false;
    }
    measure(Rights::Owner, own);
    true
}

fn pretty(bytes: i64) -> String {
    match bytes {
        b if b >= 10 << 30 => format!("{} GB", b >> 30),
        b if b >= 10 << 20 => format!("{} MB", b >> 20),
        b if b >= 10 << 10 => format!("{} kB", b >> 10),
        b => format!("{b} bytes"),
    }
}

/// Inside a transaction: measure the outbox and set the figure from it. The worker measures
/// with its own rights, a publisher as the outbox's owner; `own` is what the measuring
/// transaction wrote itself (visible to it, but reserved, not committed).
pub fn measure(rights: Rights, own: i64) {
    // What commits add (or the worker's deletes take off) while the table is read may or may not
    // be in what the scan sees: the figure becomes the scan plus every change since just before
    // it — a change inside the scan is counted twice at worst, until the worker's next
    // measurement — never the scan alone, which lost a commit that landed after the scan's
    // snapshot and before the store (a full outbox went unnoticed: the worker measures as it
    // starts, which since 1.6 is while the first messages are being committed).
    let before = require_shared().outbox_bytes.load(Ordering::Acquire);
    let props = if crate::data::outbox::has_properties() {
        " OPERATOR(pg_catalog.+) COALESCE(pg_catalog.octet_length(o.properties), 0)"
    } else {
        ""
    };
    // octet_length of a TOASTed value reads its pointer, not the value: one pass over the heap.
    let sql = format!(
        "SELECT COALESCE(pg_catalog.sum(pg_catalog.octet_length(o.topic) OPERATOR(pg_catalog.+) \
         pg_catalog.octet_length(o.payload){props}), 0)::pg_catalog.int8 FROM mqtt_pub.outbox o"
    );
    let bytes = with_spi(|| {
        pinned(rights, || {
            // SAFETY: inside SPI and the pinned scope; one int8 column, one row. The scan reads
            // with the latest snapshot, not the caller's: a REPEATABLE READ transaction (or a
            // long statement) would otherwise count the table as it was long ago and set the
            // shared figure from that, letting the outbox grow past the limit or refusing
            // everybody while it is empty. The snapshot is popped again on ERROR by the abort.
            unsafe {
                pg::PushActiveSnapshot(pg::GetLatestSnapshot());
                spi::execute(&sql, &[], true, 0);
                let n = spi::first_value(1).map(|d| d.value() as i64).unwrap_or(0);
                pg::PopActiveSnapshot();
                n
            }
        })
    });
    require_shared().outbox_bytes.fetch_add(bytes - own - before, Ordering::AcqRel);
}
