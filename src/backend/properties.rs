//! The MQTT 5 property arguments of the publishing functions, and `mqtt_pub.mqtt_properties()`
//! which shows stored properties as jsonb. Checked at call time like the topic: a bad property
//! is an ERROR in the caller's statement (SQLSTATE and hint), never a message that fails later.

use crate::pg::fmgr::{to_utf8, Args};
use crate::pg::guard::{guard, Code, PgError};
use crate::pure::{props, topic};
use pgrx_pg_sys as pg;

fn bad_property(msg: String, hint: &str) -> ! {
    PgError::new(Code::ERRCODE_INVALID_PARAMETER_VALUE, msg).hint(hint).raise()
}

/// A property string MQTT accepts: no control character, no Unicode non-character (what
/// libmosquitto would refuse in the worker, found here in the caller's statement instead).
fn require_mqtt_string(what: &str, s: &[u8]) {
    if let Some((ch, at)) = std::str::from_utf8(s).ok().and_then(topic::first_forbidden) {
        PgError::new(Code::ERRCODE_INVALID_PARAMETER_VALUE, format!("{what} contains a character MQTT forbids"))
            .detail(format!(
                "U+{:04X} at byte {at}; MQTT strings must not contain control characters or Unicode non-characters.",
                ch as u32
            ))
            .hint("Remove the character, or send such data in the payload or as correlation_data (bytes).")
            .raise();
    }
}

fn put(out: &mut Vec<u8>, p: props::Prop<'_>) {
    if let Err(props::PropError::TooLong(what)) = props::encode(out, &p) {
        PgError::new(Code::ERRCODE_PROGRAM_LIMIT_EXCEEDED, format!("{what} is longer than 65535 bytes"))
            .detail("MQTT 5 stores each property string and binary value with a two-byte length.")
            .hint("Pass a shorter value.")
            .raise();
    }
}

/// Seconds of a `message_expiry` interval (months count as 30 days, as `extract(epoch ...)` does).
fn expiry_seconds(d: pg::Datum) -> u32 {
    // SAFETY: the argument is declared interval.
    let iv = unsafe { &*(d.cast_mut_ptr::<pg::Interval>()) };
    let us = iv.time as i128 + (iv.day as i128 + iv.month as i128 * 30) * 86_400_000_000;
    if us <= 0 {
        bad_property(
            format!("message_expiry must be positive, not {} s", us / 1_000_000),
            "Pass an interval such as '30 seconds', or NULL for a message that does not expire.",
        );
    }
    u32::try_from((us + 999_999) / 1_000_000).unwrap_or_else(|_| {
        bad_property(
            "message_expiry is longer than MQTT allows (4294967295 seconds, about 136 years)".into(),
            "Pass a shorter interval, or NULL for a message that does not expire.",
        )
    })
}

/// The optional MQTT 5 property arguments from argument `first` on, in declaration order:
/// `content_type text, message_expiry interval, response_topic text, correlation_data bytea,
/// user_properties text[], payload_format int` (NULL: not set). A database still on SQL 1.2
/// passes none. `utf8`: the payload is text or JSON, so the payload format indicator is set
/// unless `payload_format` says otherwise. Returns whether the caller gave any property.
pub fn property_args(a: &Args, first: usize, utf8: bool, payload: &[u8], out: &mut Vec<u8>) -> bool {
    let format = match a.get(first + 5).map(|d| d.value() as i32) {
        None => utf8 as u8,
        Some(f @ (0 | 1)) => f as u8,
        Some(f) => bad_property(
            format!("payload_format must be 0 or 1, not {f}"),
            "MQTT 5 defines 0 (unspecified bytes) and 1 (UTF-8 text); NULL chooses by the payload's type.",
        ),
    };
    if format == 1 && !utf8 && std::str::from_utf8(payload).is_err() {
        PgError::new(Code::ERRCODE_CHARACTER_NOT_IN_REPERTOIRE, "payload_format 1 needs a UTF-8 payload")
            .detail("The bytea payload is not valid UTF-8.")
            .hint("Pass payload_format := 0 (or NULL) for binary payloads.")
            .raise();
    }
    if format == 1 {
        put(out, props::Prop::PayloadFormat(1));
    }
    let mut explicit = a.get(first + 5).is_some();
    if let Some(ct) = a.opt_bytes(first) {
        let ct = to_utf8(ct);
        require_mqtt_string("content_type", &ct);
        put(out, props::Prop::ContentType(&ct));
        explicit = true;
    }
    if let Some(d) = a.get(first + 1) {
        put(out, props::Prop::MessageExpiry(expiry_seconds(d)));
        explicit = true;
    }
    if let Some(rt) = a.opt_bytes(first + 2) {
        let rt = to_utf8(rt);
        if let Err(e) = topic::validate_topic(&rt) {
            PgError::new(
                Code::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("invalid response_topic: {}", e.message(&String::from_utf8_lossy(&rt))),
            )
            .detail(e.detail())
            .hint("A response topic is a topic name: no wildcards, like the topic itself.")
            .raise();
        }
        put(out, props::Prop::ResponseTopic(&rt));
        explicit = true;
    }
    if let Some(cd) = a.opt_bytes(first + 3) {
        put(out, props::Prop::CorrelationData(cd));
        explicit = true;
    }
    if let Some(d) = a.get(first + 4) {
        // SAFETY: the argument is declared text[].
        let (dims, elems) = unsafe { crate::pg::fmgr::text_array(d) };
        if !(dims.is_empty() || (dims.len() == 2 && dims[1] == 2)) {
            bad_property(
                format!("user_properties must be an array of [name, value] pairs, not of dimensions {dims:?}"),
                "Pass ARRAY[['name', 'value'], ['name', 'other value']]; a name may repeat.",
            );
        }
        for pair in elems.chunks(2) {
            let (Some(k), Some(v)) = (pair[0], pair[1]) else {
                PgError::new(Code::ERRCODE_NULL_VALUE_NOT_ALLOWED, "a user property name or value is NULL")
                    .hint("Leave the pair out, or pass an empty string.")
                    .raise()
            };
            let (k, v) = (to_utf8(k), to_utf8(v));
            require_mqtt_string("a user property name", &k);
            require_mqtt_string("a user property value", &v);
            put(out, props::Prop::User(&k, &v));
        }
        explicit = true;
    }
    explicit
}

crate::pg_finfo!(pg_finfo_mqtt_pub_mqtt_properties);

/// `mqtt_pub.mqtt_properties(properties bytea) RETURNS jsonb` (STRICT): stored properties as
/// jsonb (props.rs `to_json`). Bytes it cannot read are an ERROR, not a guess.
#[no_mangle]
pub unsafe extern "C-unwind" fn mqtt_pub_mqtt_properties(fcinfo: pg::FunctionCallInfo) -> pg::Datum {
    guard(|| {
        // SAFETY: fcinfo is valid for this call.
        let a = unsafe { Args::new(fcinfo) };
        let b = a.text(0, "properties");
        let Some(json) = props::to_json(b) else {
            PgError::new(
                Code::ERRCODE_DATA_CORRUPTED,
                "these bytes are not MQTT 5 properties as pg_mqtt_pub stores them",
            )
            .hint("Pass the properties column of mqtt_pub.outbox or mqtt_pub.dead_letters.")
            .raise()
        };
        let c = std::ffi::CString::new(json).expect("JSON text has no NUL");
        // SAFETY: jsonb's input function parses a NUL-terminated string.
        unsafe {
            let (mut input, mut ioparam) = (pg::InvalidOid, pg::InvalidOid);
            pg::getTypeInputInfo(pg::JSONBOID, &mut input, &mut ioparam);
            pg::OidInputFunctionCall(input, c.as_ptr() as *mut _, ioparam, -1)
        }
    })
}
