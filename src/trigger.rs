//! `mqtt_pub.event_trigger()`: the compiled row trigger behind `mqtt_trigger_event_setup`.
//!
//! One message per changed row, to `<prefix>/<insert|update|delete>`, payload shaped by
//! `envelope.rs` around `row_to_json` of the old and new row. Compiled rather than PL/pgSQL
//! because it sits in every row's path: it costs one `row_to_json` per row version plus a copy
//! into the transaction's pending messages, which is less than a hand-written PL/pgSQL trigger
//! calling `mqtt_publish(..., row_to_json(NEW)::text)` (benchmark row g vs e).
//!
//! Trigger arguments (written by the setup function, shown by `mqtt_pub.triggers`):
//! `topic_prefix, qos, broker, include_meta`. They are checked again here, with the same errors
//! as `mqtt_publish`, because anyone who owns a table can create the trigger by hand.
//!
//! The statement-level helper is PL/pgSQL (`mqtt_pub.resultset_trigger` in the SQL script): it
//! needs a join between the transition tables, which is SQL's job, and runs once per statement.

use crate::envelope::{self, Meta};
use crate::fmgr::{to_utf8, varlena_bytes};
use crate::guard::{guard, Code, PgError};
use crate::publish;
use pgrx_pg_sys as pg;
use std::cell::RefCell;
use std::ffi::CStr;

// `row_to_json` is called through the function manager; the binding pgrx-pg-sys generates is a
// guarded Rust wrapper, not the C symbol DirectFunctionCall needs.
extern "C-unwind" {
    #[link_name = "row_to_json"]
    fn row_to_json_c(fcinfo: pg::FunctionCallInfo) -> pg::Datum;
}

const TRIGGER_EVENT_OPMASK: u32 = 0x3;
const TRIGGER_EVENT_INSERT: u32 = 0x0;
const TRIGGER_EVENT_DELETE: u32 = 0x1;
const TRIGGER_EVENT_UPDATE: u32 = 0x2;
const TRIGGER_EVENT_ROW: u32 = 0x4;
const TRIGGER_EVENT_TIMINGMASK: u32 = 0x18; // BEFORE 0x8, INSTEAD 0x10, AFTER 0

fn protocol_error(msg: &str) -> ! {
    PgError::new(Code::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED, msg)
        .hint("Create it with mqtt_trigger_event_setup(), which declares an AFTER ... FOR EACH ROW trigger.")
        .raise()
}

/// The transaction's start time as `to_json(now())` writes it, computed once per transaction.
struct TimestampCache(RefCell<(pg::TimestampTz, Vec<u8>)>);
// SAFETY: a backend is single-threaded.
unsafe impl Sync for TimestampCache {}
static TIMESTAMP: TimestampCache = TimestampCache(RefCell::new((i64::MIN, Vec::new())));

fn with_timestamp<R>(f: impl FnOnce(&[u8]) -> R) -> R {
    // SAFETY: plain calls; JsonEncodeDateTime pallocs its result when buf is NULL.
    let now = unsafe { pg::GetCurrentTransactionStartTimestamp() };
    let mut c = TIMESTAMP.0.borrow_mut();
    if c.0 != now {
        // SAFETY: encodes a timestamptz datum into a palloc'd C string, copied out at once.
        let s = unsafe {
            let p = pg::JsonEncodeDateTime(
                std::ptr::null_mut(),
                pg::Datum::from(now),
                pg::TIMESTAMPTZOID,
                std::ptr::null(),
            );
            CStr::from_ptr(p).to_bytes().to_vec()
        };
        *c = (now, s);
    }
    f(&c.1)
}

/// `row_to_json` of one row version (a palloc'd json varlena's bytes).
///
/// # Safety
/// `tuple` is a valid heap tuple of a relation whose descriptor is `desc`.
unsafe fn row_json<'a>(tuple: pg::HeapTuple, desc: pg::TupleDesc) -> &'a [u8] {
    // SAFETY: the caller's promise; heap_copy_tuple_as_datum also inlines toasted values.
    unsafe {
        let d = pg::heap_copy_tuple_as_datum(tuple, desc);
        let j = pg::DirectFunctionCall1Coll(Some(row_to_json_c), pg::InvalidOid, d);
        varlena_bytes(j)
    }
}

/// `schema.table`, each part quoted only where SQL needs it (like `regclass` output).
///
/// # Safety
/// `rel` is an open relation.
unsafe fn qualified_name(rel: pg::Relation) -> Vec<u8> {
    // SAFETY: the caller's promise; the names come from the relcache and the syscache.
    unsafe {
        let form = &*(*rel).rd_rel;
        let nsp = pg::get_namespace_name(form.relnamespace);
        let mut out = CStr::from_ptr(pg::quote_identifier(nsp)).to_bytes().to_vec();
        out.push(b'.');
        out.extend_from_slice(CStr::from_ptr(pg::quote_identifier(form.relname.data.as_ptr())).to_bytes());
        out
    }
}

fn event_trigger(fcinfo: pg::FunctionCallInfo) -> pg::Datum {
    // SAFETY: we read the TriggerData PostgreSQL passes as the call context, after checking its
    // node tag; tuples and relation are valid for the duration of the call.
    unsafe {
        publish::require_publishable();
        let ctx = (*fcinfo).context;
        if ctx.is_null() || (*ctx).type_ != pg::NodeTag::T_TriggerData {
            protocol_error("mqtt_pub.event_trigger() was not called by the trigger manager");
        }
        let td = &*(ctx as *const pg::TriggerData);
        let ev = td.tg_event;
        if ev & TRIGGER_EVENT_ROW == 0 || ev & TRIGGER_EVENT_TIMINGMASK != 0 {
            protocol_error("mqtt_pub.event_trigger() must be fired AFTER ... FOR EACH ROW");
        }
        let trig = &*td.tg_trigger;
        if trig.tgnargs != 4 {
            PgError::new(Code::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED, "mqtt_pub.event_trigger() needs 4 arguments")
                .detail(format!(
                    "Trigger \"{}\" passes {}.",
                    CStr::from_ptr(trig.tgname).to_string_lossy(),
                    trig.tgnargs
                ))
                .hint("Create it with mqtt_trigger_event_setup().")
                .raise();
        }
        let args = std::slice::from_raw_parts(trig.tgargs, 4);
        let arg = |i: usize| CStr::from_ptr(args[i]).to_bytes();
        let qos: i32 = std::str::from_utf8(arg(1)).ok().and_then(|s| s.parse().ok()).unwrap_or(-1);
        let include_meta = matches!(arg(3), b"true" | b"t" | b"on" | b"1");

        let (op, old, new) = match ev & TRIGGER_EVENT_OPMASK {
            TRIGGER_EVENT_INSERT => ("INSERT", None, Some(td.tg_trigtuple)),
            TRIGGER_EVENT_UPDATE => ("UPDATE", Some(td.tg_trigtuple), Some(td.tg_newtuple)),
            TRIGGER_EVENT_DELETE => ("DELETE", Some(td.tg_trigtuple), None),
            _ => protocol_error("mqtt_pub.event_trigger() does not publish TRUNCATE"),
        };
        let mut topic = Vec::with_capacity(arg(0).len() + 8);
        topic.extend_from_slice(arg(0));
        topic.push(b'/');
        topic.extend_from_slice(op.to_ascii_lowercase().as_bytes());
        let target = publish::check_target(&topic, qos, arg(2));

        let desc = (*td.tg_relation).rd_att;
        let old = old.map(|t| row_json(t, desc));
        let new = new.map(|t| row_json(t, desc));
        let mut payload = Vec::new();
        if include_meta {
            let table = qualified_name(td.tg_relation);
            // SAFETY: DML has assigned the transaction id already.
            let txid = pg::GetTopFullTransactionId().value;
            with_timestamp(|ts| {
                let meta = Meta { operation: op, table: &table, timestamp: ts, txid };
                envelope::event_payload(&mut payload, Some(&meta), old, new)
            });
        } else {
            envelope::event_payload(&mut payload, None, old, new);
        }
        publish::publish_to(&target, &to_utf8(&payload), false);
    }
    pg::Datum::from(0usize)
}

crate::pg_finfo!(pg_finfo_mqtt_pub_event_trigger);

/// `mqtt_pub.event_trigger() RETURNS trigger`
#[no_mangle]
pub unsafe extern "C-unwind" fn mqtt_pub_event_trigger(fcinfo: pg::FunctionCallInfo) -> pg::Datum {
    guard(|| event_trigger(fcinfo))
}
