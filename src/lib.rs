//! # pg_mqtt_pub — publish MQTT messages from PostgreSQL
//!
//! ## The delivery contract
//! * Messages published inside a transaction reach the broker only if it commits; ROLLBACK and
//!   ROLLBACK TO SAVEPOINT discard them; PREPARE / COMMIT PREPARED work (`txn.rs`).
//! * Each broker is hot (shared-memory ring) or cold (WAL-logged `mqtt_pub.outbox`). Outages,
//!   a full ring, big transactions and `durable = on` use the outbox; the caller's DML never
//!   fails because of a broker.
//! * For one broker, one session's messages arrive in commit order across every hot/cold switch
//!   (ADR-003).
//! * QoS 1/2 are at least once: ring slots are released and outbox rows deleted only after the
//!   broker's acknowledgement. Only a PostgreSQL crash loses unacknowledged hot messages.
//!
//! ## Data flow
//! ```text
//! mqtt_publish() ──validate──▶ pending arena (backend) ──PRE_COMMIT, hot: reserve──▶ ring (shmem)
//!        │                                         │   ──COMMIT: copy + READY──────▶   │
//!        └── cold broker / durable ──▶ outbox ◀────┘ cold, spill, PREPARE             │
//!                                        │          worker ◀──latch (only if sleeping)─┘
//!                                        └──────▶   └─▶ libmosquitto (WaitEventSet-driven) ─▶ broker
//! ```
//!
//! ## Layers
//! One folder per layer; a module imports only from layers above it in this list (lower layers
//! know nothing of higher ones), and there are no import cycles.
//!
//! | folder | layer | modules |
//! |---|---|---|
//! | `pure/` | logic without PostgreSQL, unit-tested by `cargo test` | `ring` (the ring's memory protocol), `scanlog` (the worker's scanned records, release point, stepped-over reservations), `window` (a connection's in-flight window: probe mode, ack timeout), `pending` (a transaction's messages and savepoint marks), `topic` (topic and QoS rules), `envelope` (the change-event JSON), `backoff`, `identity` (the default client id), `limits` (a broker's CONNACK limits, how a refusal is treated), `props` (MQTT 5 properties as stored and sent, message ids, expiry), `backend_local` (`BackendLocal<T>`) |
//! | `mqtt/` | the MQTT client | `client` (one connection as the worker sees it), `session` (the libmosquitto object, its options and TLS), `callbacks` (they only record), `qos0_writer` (our own QoS 0 writer, ADR-010), `proplist`, `handoff`, `errors` (see `mqtt/mod.rs`) |
//! | `pg/` | PostgreSQL glue | `guard` (the FFI error boundary), `compat` (15–18 differences), `fmgr` (SQL-callable plumbing, encodings), `spi` (the one place that runs SQL: pinned path, owner rights restricted), `gucs` (every setting), `instance` (who this cluster is: client and message ids) |
//! | `shmem/` | shared memory | `mod` (segment, a share per database, LWLocks, wake-up protocol), `directory` (which database owns which share, ADR-012), `slot` (a broker's mode and counters) |
//! | `data/` | data access | `catalog` (`mqtt_pub.brokers`, name → slot), `outbox` (the SQL on the outbox and dead letters), `backlog`, `outbox_size`, `installation` (whose outbox this is: template copies) |
//! | `backend/` | what a backend runs | `txn` (COMMIT / ABORT / PREPARE / savepoints: ring or outbox), `publish` (`mqtt_publish` & co.), `properties` (their MQTT 5 property arguments, `mqtt_pub.mqtt_properties()`), `trigger` and `resultset` (the compiled triggers), `setup` (the trigger helpers), `status` (`mqtt_status()`), `databases` (`mqtt_announce()`, `mqtt_status_all()`), `database_hooks` (DROP / RENAME / copy of a publishing database), `drop_guard` |
//! | `worker/` | the background workers | the launcher (a worker per publishing database) and the worker's loop, one file per concern (see `worker/mod.rs`) |
//!
//! Modules that call PostgreSQL are compiled only into the extension (`not(test)`): a test
//! binary cannot link PostgreSQL's symbols.

pub mod pure;

#[cfg(not(test))]
mod backend;
#[cfg(not(test))]
mod data;
#[cfg(not(test))]
pub mod mqtt;
#[cfg(not(test))]
mod pg;
#[cfg(not(test))]
mod shmem;
#[cfg(not(test))]
mod worker;

/// Library entry point, called when the library is loaded.
///
/// # Safety
/// Called by PostgreSQL only, once per process, on the main thread.
#[cfg(not(test))]
#[no_mangle]
pub unsafe extern "C-unwind" fn _PG_init() {
    pgrx_pg_sys::panic::register_pg_guard_panic_hook();
    pg::guard::guard(|| {
        // SAFETY: plain read of a PostgreSQL global.
        if !unsafe { pgrx_pg_sys::process_shared_preload_libraries_in_progress } {
            // Loaded by CREATE EXTENSION or a function call without preloading: the SQL
            // functions will say what to do (publish::require_shared).
            return;
        }
        pg::gucs::define();
        pg::gucs::validate_startup();
        shmem::install_hooks();
        backend::txn::register_callbacks();
        backend::drop_guard::install();
        backend::database_hooks::install();
        // pg_upgrade runs both servers in binary-upgrade mode: no worker may deliver (and delete
        // outbox rows) while the catalog is being restored.
        // SAFETY: plain read of a PostgreSQL global.
        if !unsafe { pgrx_pg_sys::IsBinaryUpgrade } {
            worker::register_launcher();
        }
    })
}
