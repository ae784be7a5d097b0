//! The SQL-callable publish functions and their argument validation.
//!
//! Every check happens here, in the caller's statement, so a bad call fails with a clear ERROR
//! (SQLSTATE + hint) and never reaches the worker. The functions are declared non-STRICT in the
//! SQL script so that a NULL argument is an error rather than a silent "nothing published".
//!
//! Cost on the hot path (a row trigger calling `mqtt_publish`): argument decoding, topic check
//! (one pass over the topic), and one copy into the transaction's pending arena (`txn.rs`).

use crate::backend::properties;
use crate::pg::fmgr::{to_utf8, varlena_bytes, Args};
use crate::pg::guard::{guard, Code, PgError};
use crate::pg::gucs;
use crate::pure::backend_local::BackendLocal;
use crate::pure::envelope;
use crate::pure::limits;
use crate::pure::props;
use crate::pure::ring::MessageRef;
use crate::pure::topic;
use crate::shmem;
use pgrx_pg_sys as pg;
use std::cell::Cell;

/// Publishing is possible here: preloaded, in the worker's database, not a standby.
pub fn require_publishable() {
    // Claims this database's share the first time, or says why it cannot (not preloaded,
    // pg_mqtt_pub.database names another database, max_databases reached).
    shmem::require_shared();
    // Once a backend has seen recovery end it can never see it again (PostgreSQL caches the
    // same fact), so the call is skipped after that.
    static PRIMARY: BackendLocal<Cell<bool>> = BackendLocal::new(Cell::new(false));
    // SAFETY: plain call.
    if !PRIMARY.get() && unsafe { pg::RecoveryInProgress() } {
        PgError::new(Code::ERRCODE_READ_ONLY_SQL_TRANSACTION, "cannot publish MQTT messages during recovery")
            .hint("Publish from the primary server.")
            .raise();
    }
    PRIMARY.set(true);
}

/// Slot of a broker by name, or ERROR.
pub fn broker_index(name: &[u8]) -> u16 {
    crate::data::catalog::slot_of(name)
}

/// A UTF-8 topic that may be published to, or ERROR 22023 saying what is wrong with it.
fn require_valid_topic(topic: &[u8]) {
    if let Err(e) = topic::validate_topic(topic) {
        PgError::new(Code::ERRCODE_INVALID_PARAMETER_VALUE, e.message(&String::from_utf8_lossy(topic)))
            .detail(e.detail())
            .hint(e.hint())
            .raise();
    }
}

/// A checked destination: topic in UTF-8, QoS, broker index.
pub struct Target<'a> {
    pub topic: std::borrow::Cow<'a, [u8]>,
    pub qos: u8,
    pub broker: u16,
}

/// Check topic, QoS and broker the way every publishing function does (same errors).
pub fn check_target<'a>(topic_bytes: &'a [u8], qos: i32, broker: &[u8]) -> Target<'a> {
    let topic = to_utf8(topic_bytes);
    require_valid_topic(&topic);
    let qos = topic::validate_qos(qos).unwrap_or_else(|m| {
        PgError::new(Code::ERRCODE_INVALID_PARAMETER_VALUE, m)
            .detail("MQTT defines QoS 0 (at most once), 1 (at least once) and 2 (exactly once).")
            .hint("Pass qos := 0, 1 or 2.")
            .raise()
    });
    Target { topic, qos, broker: broker_index(broker) }
}

/// Publish to a checked target. `payload` is already in its final (UTF-8 or binary) form;
/// `props` are encoded MQTT 5 properties (props.rs), `explicit` if the caller gave any.
pub fn publish_to(t: &Target<'_>, props: &[u8], explicit: bool, payload: &[u8], retain: bool) {
    // Per-role topic rights (ADR-014): every publishing path comes through here, with the
    // final topic (a batch's each row, a trigger's operation suffix).
    crate::data::rights::require(t.broker, &t.topic);
    let size = t.topic.len() + props.len() + payload.len();
    let max = gucs::MAX_MESSAGE_SIZE.get() as usize;
    if size > max {
        PgError::new(Code::ERRCODE_PROGRAM_LIMIT_EXCEEDED, "MQTT message is too large")
            .detail(format!(
                "Topic, properties and payload take {size} bytes; pg_mqtt_pub.max_message_size is {max} bytes."
            ))
            .hint("Publish a smaller payload, or raise pg_mqtt_pub.max_message_size.")
            .raise();
    }
    require_within_broker_limits(t, props, explicit, payload, retain);
    crate::backend::txn::publish(MessageRef::new(t.broker, t.qos, retain, &t.topic, props, payload));
}

/// A message beyond what the broker's last CONNACK allowed (Maximum QoS, Retain Available,
/// Maximum Packet Size) could never be delivered: refuse it here, in the caller's statement,
/// rather than as a dead letter later. Before the first CONNACK nothing is known; the worker then
/// dead-letters such a message at once (pure/limits.rs).
fn require_within_broker_limits(t: &Target<'_>, props: &[u8], explicit: bool, payload: &[u8], retain: bool) {
    let slot = shmem::broker(t.broker as usize);
    let Some((limits, v5)) = slot.limits() else { return };
    if explicit && !v5 {
        PgError::new(
            Code::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("broker \"{}\" is connected with MQTT 3.1.1, which has no message properties", slot.text().0),
        )
        .hint("Publish without properties, or set protocol_version = '5' for this broker.")
        .raise();
    }
    // With MQTT 5 the worker adds the message id: counted here at its longest (the sequence is
    // taken at commit), so that a message accepted now is not refused by the worker for it.
    let id = if v5 && gucs::MESSAGE_ID.get() {
        1 + 2 + props::ID_PROPERTY.len() + 2 + crate::pg::instance::message_id_instance().len() + 1 + 20
    } else {
        0
    };
    let size =
        limits::publish_packet_size(t.topic.len(), payload.len(), t.qos, v5, if v5 { props.len() + id } else { 0 });
    if let Err(beyond) = limits.admit(t.qos, retain, size) {
        let code = match beyond {
            limits::Beyond::PacketSize { .. } => Code::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            _ => Code::ERRCODE_FEATURE_NOT_SUPPORTED,
        };
        PgError::new(code, beyond.message(&slot.text().0))
            .detail("The broker announced this limit when pg_mqtt_pub's worker last connected to it.")
            .hint(beyond.hint())
            .raise();
    }
}

/// How the second argument becomes the payload.
#[derive(Clone, Copy)]
enum PayloadArg {
    /// text, converted to UTF-8
    Text,
    /// bytea, sent unchanged
    Binary,
    /// json or jsonb, PostgreSQL's text of it
    Json,
}

fn publish_call(fcinfo: pg::FunctionCallInfo, kind: PayloadArg) -> pg::Datum {
    require_publishable();
    // SAFETY: fcinfo comes from PostgreSQL for this call.
    let a = unsafe { Args::new(fcinfo) };
    let topic = a.text(0, "topic");
    let payload = match kind {
        PayloadArg::Text => to_utf8(a.text(1, "payload")),
        PayloadArg::Binary => std::borrow::Cow::Borrowed(a.text(1, "payload")),
        PayloadArg::Json => json_text(fcinfo, &a, 1),
    };
    let qos = a.i32(2, "qos");
    let retain = a.bool(3, "retain");
    let broker = a.text(4, "broker");
    let t = check_target(topic, qos, broker);
    let mut props = Vec::new();
    let explicit = properties::property_args(&a, 5, !matches!(kind, PayloadArg::Binary), &payload, &mut props);
    publish_to(&t, &props, explicit, &payload, retain);
    pg::Datum::from(true)
}

/// The text of a json or jsonb argument, by PostgreSQL's own output function. The bytes live in
/// the call's memory context, as long as the arguments do (hence the borrow of `a`).
fn json_text<'a>(fcinfo: pg::FunctionCallInfo, a: &'a Args, i: usize) -> std::borrow::Cow<'a, [u8]> {
    let d = a.required(i, "data");
    // SAFETY: flinfo is set for SQL calls; the declared argument types are json and jsonb only.
    unsafe {
        let typ = pg::get_fn_expr_argtype((*fcinfo).flinfo, i as i32);
        if typ == pg::JSONOID {
            // json is stored as its text: no conversion needed.
            let b: &'a [u8] = varlena_bytes(d);
            return to_utf8(b);
        }
        let (mut out, mut varlena) = (pg::InvalidOid, false);
        pg::getTypeOutputInfo(typ, &mut out, &mut varlena);
        let c = pg::OidOutputFunctionCall(out, d);
        let b: &'a [u8] = std::ffi::CStr::from_ptr(c).to_bytes();
        to_utf8(b)
    }
}

fn publish_batch_call(fcinfo: pg::FunctionCallInfo) -> pg::Datum {
    require_publishable();
    // SAFETY: fcinfo comes from PostgreSQL for this call.
    let a = unsafe { Args::new(fcinfo) };
    let prefix = a.text(0, "topic_prefix");
    let arr = a.required(1, "payloads");
    let qos = a.i32(2, "qos");
    let retain = a.bool(3, "retain");
    let broker = a.text(4, "broker");
    // The prefix is checked once (same errors as a topic); each "<prefix>/<i>" again below,
    // which only adds the length limit.
    let t = check_target(prefix, qos, broker);
    let mut props = Vec::new();
    let explicit = properties::property_args(&a, 5, true, b"", &mut props);
    // SAFETY: the argument is declared text[].
    let (ndim, elems) = unsafe { crate::pg::fmgr::text_elements(arr) };
    if ndim > 1 {
        PgError::new(Code::ERRCODE_INVALID_PARAMETER_VALUE, "payloads must be a one-dimensional array")
            .detail(format!("The array has {ndim} dimensions."))
            .hint("Pass ARRAY[...] or ARRAY(SELECT ...) of text.")
            .raise();
    }
    let mut topic = Vec::with_capacity(t.topic.len() + 8);
    let mut published = 0i32;
    for (i, e) in elems.iter().enumerate() {
        let Some(e) = e else { continue };
        envelope::batch_topic(&mut topic, &t.topic, i);
        require_valid_topic(&topic);
        let payload = to_utf8(e);
        let target = Target { topic: std::borrow::Cow::Borrowed(&topic), qos: t.qos, broker: t.broker };
        publish_to(&target, &props, explicit, &payload, retain);
        published += 1;
    }
    pg::Datum::from(published)
}

crate::pg_finfo!(
    pg_finfo_mqtt_publish,
    pg_finfo_mqtt_publish_binary,
    pg_finfo_mqtt_publish_json,
    pg_finfo_mqtt_publish_batch,
);

/// `mqtt_publish_json(topic text, data json|jsonb, ...)`: the payload is PostgreSQL's own text
/// form of the value.
#[no_mangle]
pub unsafe extern "C-unwind" fn mqtt_publish_json(fcinfo: pg::FunctionCallInfo) -> pg::Datum {
    guard(|| publish_call(fcinfo, PayloadArg::Json))
}

/// `mqtt_publish_batch(topic_prefix text, payloads text[], ...) RETURNS integer`: one message per
/// non-NULL element to `<topic_prefix>/<0-based position>`; returns how many.
#[no_mangle]
pub unsafe extern "C-unwind" fn mqtt_publish_batch(fcinfo: pg::FunctionCallInfo) -> pg::Datum {
    guard(|| publish_batch_call(fcinfo))
}

/// `mqtt_publish(topic text, payload text, qos int, retain bool, broker text) RETURNS boolean`
#[no_mangle]
pub unsafe extern "C-unwind" fn mqtt_publish(fcinfo: pg::FunctionCallInfo) -> pg::Datum {
    guard(|| publish_call(fcinfo, PayloadArg::Text))
}

/// `mqtt_publish_binary(topic text, payload bytea, ...)`: the payload bytes are sent unchanged.
#[no_mangle]
pub unsafe extern "C-unwind" fn mqtt_publish_binary(fcinfo: pg::FunctionCallInfo) -> pg::Datum {
    guard(|| publish_call(fcinfo, PayloadArg::Binary))
}
