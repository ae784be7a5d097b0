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
//! ## Module map
//! | file | concern |
//! |---|---|
//! | `backend_local.rs` | `BackendLocal<T>`: per-process statics, used by the main thread only (pure) |
//! | `guard.rs` | the FFI error boundary (panic ⇄ ereport) |
//! | `compat.rs` | the differences between PostgreSQL 15, 16, 17 and 18, in one place |
//! | `fmgr.rs` | SQL-callable function plumbing: arguments, varlena, encoding |
//! | `gucs.rs` | every `pg_mqtt_pub.*` setting |
//! | `shmem.rs` | the shared segment, LWLocks, the worker wake-up protocol |
//! | `ring.rs` | the ring's memory protocol (pure, tested by `cargo test`) |
//! | `scanlog.rs` | the worker's log of scanned ring records: release point, stepped-over reservations (pure) |
//! | `topic.rs` | topic and QoS validation (pure) |
//! | `window.rs` | a connection's in-flight window: probe mode, ack timeout (pure) |
//! | `backoff.rs` | reconnect backoff (pure) |
//! | `identity.rs` | the default MQTT client id, different for every clone of a cluster (pure) |
//! | `publish.rs` | `mqtt_publish`, `_binary`, `_json`, `_batch` |
//! | `envelope.rs` | the JSON envelope of change events (pure) |
//! | `spi.rs` | the one place that runs SQL: pinned search_path, owner rights as a restricted operation |
//! | `trigger.rs` | the compiled row trigger behind `mqtt_trigger_event_setup`; trigger-call checks |
//! | `resultset.rs` | the compiled statement trigger behind `mqtt_trigger_resultset_setup` |
//! | `setup.rs` | `mqtt_trigger_*_setup` and `mqtt_trigger_remove` (caller's rights) |
//! | `pending.rs` | a transaction's pending messages and savepoint marks (pure) |
//! | `txn.rs` | COMMIT / ABORT / PREPARE / savepoints; ring or outbox per broker |
//! | `outbox.rs` | the SQL on `mqtt_pub.outbox` and `mqtt_pub.dead_letters` (through `spi.rs`) |
//! | `catalog.rs` | `mqtt_pub.brokers`: named brokers, name → slot for publishers, reload for the worker |
//! | `broker.rs` | one libmosquitto client, callbacks that only record |
//! | `worker.rs` | the launcher and the publishing worker's loop |
//! | `status.rs` | `mqtt_status()` and the shared counters |
//!
//! Modules that call PostgreSQL are compiled only into the extension (`not(test)`): a test
//! binary cannot link PostgreSQL's symbols.

pub mod backend_local;
pub mod backoff;
pub mod envelope;
pub mod identity;
pub mod pending;
pub mod ring;
pub mod scanlog;
pub mod topic;
pub mod window;

#[cfg(not(test))]
pub mod broker;
#[cfg(not(test))]
mod catalog;
#[cfg(not(test))]
mod compat;
#[cfg(not(test))]
mod fmgr;
#[cfg(not(test))]
mod guard;
#[cfg(not(test))]
mod gucs;
#[cfg(not(test))]
mod outbox;
#[cfg(not(test))]
mod publish;
#[cfg(not(test))]
mod resultset;
#[cfg(not(test))]
mod setup;
#[cfg(not(test))]
mod shmem;
#[cfg(not(test))]
mod spi;
#[cfg(not(test))]
mod status;
#[cfg(not(test))]
mod trigger;
#[cfg(not(test))]
mod txn;
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
    guard::guard(|| {
        // SAFETY: plain read of a PostgreSQL global.
        if !unsafe { pgrx_pg_sys::process_shared_preload_libraries_in_progress } {
            // Loaded by CREATE EXTENSION or a function call without preloading: the SQL
            // functions will say what to do (publish::require_shared).
            return;
        }
        gucs::define();
        gucs::validate_startup();
        shmem::install_hooks();
        txn::register_callbacks();
        // pg_upgrade runs both servers in binary-upgrade mode: no worker may deliver (and delete
        // outbox rows) while the catalog is being restored.
        // SAFETY: plain read of a PostgreSQL global.
        if !unsafe { pgrx_pg_sys::IsBinaryUpgrade } {
            worker::register_launcher();
        }
    })
}
