//! What `mqtt_status()` and the worker's log lines tell about a broker's backlog: its outbox rows
//! and dead letters, counted (a monitoring role needs no privilege on the tables: the backend
//! counts as their owner).

use super::outbox::{exec_with_broker, worker_spi};
use crate::pg::spi::{first_value, pinned, with_spi, Rights};
use pgrx_pg_sys as pg;

/// What `mqtt_status()` shows of a broker's tables.
pub struct Backlog {
    /// Outbox rows, and how long the oldest has waited (an interval datum in the caller's memory
    /// context; `None` when there are none) and when it was published (µs).
    pub pending: i64,
    pub oldest_age: Option<pg::Datum>,
    pub oldest_at: Option<i64>,
    /// Rows in `mqtt_pub.dead_letters` now.
    pub dead_letters: i64,
}

/// `mqtt_status()`: the outbox and dead letters of `broker`. Runs as the tables' owner: a
/// monitoring role needs no privilege on them.
pub fn backlog(broker: &str) -> Backlog {
    with_spi(|| {
        pinned(Rights::Owner, || {
            // SAFETY: inside SPI and the pinned scope. The interval is copied out of SPI's memory
            // into the caller's context (SPI_datumTransfer) before SPI_finish frees it.
            unsafe {
                exec_with_broker(
                    "SELECT pg_catalog.count(*), pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.min(o.created_at), \
                     pg_catalog.min(o.created_at), (SELECT pg_catalog.count(*) FROM mqtt_pub.dead_letters d \
                     WHERE d.broker OPERATOR(pg_catalog.=) $1) FROM mqtt_pub.outbox o WHERE o.broker OPERATOR(pg_catalog.=) $1",
                    broker,
                    true,
                    1,
                );
                Backlog {
                    pending: first_value(1).map(|d| d.value() as i64).unwrap_or(0),
                    oldest_age: first_value(2).map(|d| pg::SPI_datumTransfer(d, false, 16)),
                    oldest_at: first_value(3).map(|d| d.value() as i64),
                    dead_letters: first_value(4).map(|d| d.value() as i64).unwrap_or(0),
                }
            }
        })
    })
}

/// Worker: how many messages wait in the outbox for `broker` (logged when it is back).
pub fn waiting(broker: &str) -> i64 {
    worker_spi(|| {
        // SAFETY: inside SPI.
        unsafe {
            exec_with_broker(
                "SELECT pg_catalog.count(*) FROM mqtt_pub.outbox WHERE broker OPERATOR(pg_catalog.=) $1",
                broker,
                true,
                1,
            );
            first_value(1).map(|d| d.value() as i64).unwrap_or(0)
        }
    })
}
