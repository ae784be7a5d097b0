//! The SQL-callable publish functions and their argument validation.
//!
//! Every check happens here, in the caller's statement, so a bad call fails with a clear ERROR
//! (SQLSTATE + hint) and never reaches the worker. The functions are declared non-STRICT in the
//! SQL script so that a NULL argument is an error rather than a silent "nothing published".
//!
//! Cost on the hot path (a row trigger calling `mqtt_publish`): argument decoding, topic check
//! (one pass over the topic), and one copy into the transaction's pending arena (`txn.rs`).

use crate::fmgr::{to_utf8, Args};
use crate::guard::{guard, Code, PgError};
use crate::gucs;
use crate::ring::MessageRef;
use crate::shmem::{self, Shared};
use crate::topic;
use pgrx_pg_sys as pg;
use std::cell::Cell;

/// Shared state, or the "not preloaded" ERROR with the hint that fixes it.
pub fn require_shared() -> &'static Shared {
    shmem::shared().unwrap_or_else(|| {
        PgError::new(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "pg_mqtt_pub must be loaded via shared_preload_libraries",
        )
        .hint("Add pg_mqtt_pub to shared_preload_libraries in postgresql.conf and restart PostgreSQL.")
        .raise()
    })
}

struct DbCheck(Cell<Option<bool>>);
// SAFETY: single-threaded backend.
unsafe impl Sync for DbCheck {}
static IN_WORKER_DB: DbCheck = DbCheck(Cell::new(None));

fn current_database() -> String {
    // SAFETY: MyDatabaseId is set in any backend that runs SQL; get_database_name pallocs.
    unsafe {
        let p = pg::get_database_name(pg::MyDatabaseId);
        if p.is_null() {
            return String::new();
        }
        std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// Publishing is possible here: preloaded, in the worker's database, not a standby.
fn require_publishable() {
    require_shared();
    let ok = match IN_WORKER_DB.0.get() {
        Some(v) => v,
        None => {
            let v = current_database() == gucs::DATABASE.string();
            IN_WORKER_DB.0.set(Some(v));
            v
        }
    };
    if !ok {
        let db = gucs::DATABASE.string();
        let here = current_database();
        PgError::new(Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, format!("pg_mqtt_pub publishes only from database \"{db}\""))
            .detail(format!("This session is connected to \"{here}\"; pg_mqtt_pub.database names the one database whose background worker delivers messages."))
            .hint(format!("Connect to \"{db}\", or set pg_mqtt_pub.database = '{here}' in postgresql.conf and restart."))
            .raise();
    }
    // SAFETY: plain call.
    if unsafe { pg::RecoveryInProgress() } {
        PgError::new(Code::ERRCODE_READ_ONLY_SQL_TRANSACTION, "cannot publish MQTT messages during recovery")
            .hint("Publish from the primary server.")
            .raise();
    }
}

/// Name of a broker by index (the outbox stores names).
pub fn broker_name(idx: u16) -> &'static str {
    match idx {
        0 => "default",
        _ => unreachable!("only the default broker exists"),
    }
}

/// Index of a broker by name.
pub fn broker_index(name: &[u8]) -> u16 {
    if name == b"default" {
        return 0;
    }
    PgError::new(
        Code::ERRCODE_UNDEFINED_OBJECT,
        format!("MQTT broker \"{}\" does not exist", String::from_utf8_lossy(name)),
    )
    .hint("Use the broker \"default\", configured by pg_mqtt_pub.broker_host and pg_mqtt_pub.broker_port.")
    .raise()
}

/// Validate and publish one message. `payload` is already in its final (UTF-8 or binary) form.
pub fn publish_one(topic_bytes: &[u8], payload: &[u8], qos: i32, retain: bool, broker: &[u8]) {
    let topic = to_utf8(topic_bytes);
    if let Err(e) = topic::validate_topic(&topic) {
        let shown = String::from_utf8_lossy(&topic);
        PgError::new(Code::ERRCODE_INVALID_PARAMETER_VALUE, e.message(&shown))
            .detail(e.detail())
            .hint(e.hint())
            .raise();
    }
    let qos = topic::validate_qos(qos).unwrap_or_else(|m| {
        PgError::new(Code::ERRCODE_INVALID_PARAMETER_VALUE, m)
            .detail("MQTT defines QoS 0 (at most once), 1 (at least once) and 2 (exactly once).")
            .hint("Pass qos := 0, 1 or 2.")
            .raise()
    });
    let broker = broker_index(broker);
    let size = topic.len() + payload.len();
    let max = gucs::MAX_MESSAGE_SIZE.get() as usize;
    if size > max {
        PgError::new(Code::ERRCODE_PROGRAM_LIMIT_EXCEEDED, "MQTT message is too large")
            .detail(format!("Topic and payload take {size} bytes; pg_mqtt_pub.max_message_size is {max} bytes."))
            .hint("Publish a smaller payload, or raise pg_mqtt_pub.max_message_size.")
            .raise();
    }
    crate::txn::publish(MessageRef { broker, qos, retain, topic: &topic, payload });
}

fn publish_call(fcinfo: pg::FunctionCallInfo, binary: bool) -> pg::Datum {
    require_publishable();
    // SAFETY: fcinfo comes from PostgreSQL for this call.
    let a = unsafe { Args::new(fcinfo) };
    let topic = a.text(0, "topic");
    let raw = a.text(1, "payload");
    let qos = a.i32(2, "qos");
    let retain = a.bool(3, "retain");
    let broker = a.text(4, "broker");
    let payload = if binary { std::borrow::Cow::Borrowed(raw) } else { to_utf8(raw) };
    publish_one(topic, &payload, qos, retain, broker);
    pg::Datum::from(true)
}

crate::pg_finfo!(pg_finfo_mqtt_publish, pg_finfo_mqtt_publish_binary);

/// `mqtt_publish(topic text, payload text, qos int, retain bool, broker text) RETURNS boolean`
#[no_mangle]
pub unsafe extern "C-unwind" fn mqtt_publish(fcinfo: pg::FunctionCallInfo) -> pg::Datum {
    guard(|| publish_call(fcinfo, false))
}

/// `mqtt_publish_binary(topic text, payload bytea, ...)`: the payload bytes are sent unchanged.
#[no_mangle]
pub unsafe extern "C-unwind" fn mqtt_publish_binary(fcinfo: pg::FunctionCallInfo) -> pg::Datum {
    guard(|| publish_call(fcinfo, true))
}
