//! How much the outbox holds, for `pg_mqtt_pub.max_outbox_size`: the bound that keeps a
//! publisher (or an outage) from filling the disk PostgreSQL's WAL lives on.
//!
//! The size is the bytes of topics, payloads and properties in `mqtt_pub.outbox`, kept in shared
//! memory (`Shared::outbox_bytes`) without SQL on the publishing path:
//! * a publisher's COMMIT adds what its transaction wrote (txn.rs; PREPARE counts at PREPARE);
//! * the worker adds what it writes (messages taken back from the ring) and takes off what it
//!   deletes after delivery, as its statements report them;
//! * the worker measures the table now and then ([`measure`]), which corrects what nobody counts
//!   (dead-lettering, replays, a DBA's DELETE, rolled-back prepared transactions).
//!
//! So the figure is approximate: a commit that lands during a measurement may be missed or
//! counted twice until the next one. The limit is a safety bound, not a quota.
//!
//! Only what a *publisher* adds is refused ([`require_room`]): the caller's transaction takes the
//! error. Messages already committed (the worker's writes) always go in, so the outbox can pass
//! the limit by what the ring held.

use crate::pg::guard::{Code, PgError};
use crate::pg::gucs;
use crate::pg::spi::{self, pinned, with_spi, Rights};
use crate::shmem::require_shared;
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

pub fn add(bytes: i64) {
    if bytes != 0 {
        require_shared().outbox_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// A publisher is about to write `adding` bytes to the outbox: ERROR 53400 if that passes the limit.
pub fn require_room(adding: i64) {
    let Some(max) = limit() else { return };
    let used = used();
    if used + adding <= max {
        return;
    }
    PgError::new(Code::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED, "the pg_mqtt_pub outbox is full")
        .detail(format!(
            "It holds about {} of pg_mqtt_pub.max_outbox_size ({}); this transaction would add {}.",
            pretty(used),
            pretty(max),
            pretty(adding)
        ))
        .hint(
            "Messages wait in the outbox while a broker is unreachable or behind: see mqtt_status() and \
             mqtt_pub.outbox_summary, let delivery catch up, or raise pg_mqtt_pub.max_outbox_size.",
        )
        .raise()
}

fn pretty(bytes: i64) -> String {
    match bytes {
        b if b >= 10 << 30 => format!("{} GB", b >> 30),
        b if b >= 10 << 20 => format!("{} MB", b >> 20),
        b if b >= 10 << 10 => format!("{} kB", b >> 10),
        b => format!("{b} bytes"),
    }
}

/// Worker, inside a transaction: measure the outbox and set the figure from it.
pub fn measure() {
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
        pinned(Rights::Restricted, || {
            // SAFETY: inside SPI and the pinned scope; one int8 column, one row.
            unsafe {
                spi::execute(&sql, &[], true, 0);
                spi::first_value(1).map(|d| d.value() as i64).unwrap_or(0)
            }
        })
    });
    require_shared().outbox_bytes.store(bytes, Ordering::Relaxed);
}
