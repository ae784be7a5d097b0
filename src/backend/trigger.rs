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
//! The statement-level helper is `resultset.rs`; both share [`TriggerCall`]'s checks of how
//! they were called.

use crate::backend::publish;
use crate::pg::fmgr::{to_utf8, varlena_bytes};
use crate::pg::guard::{guard, Code, PgError};
use crate::pure::backend_local::BackendLocal;
use crate::pure::envelope::{self, Meta};
use crate::pure::props;
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
static TIMESTAMP: BackendLocal<RefCell<(pg::TimestampTz, Vec<u8>)>> =
    BackendLocal::new(RefCell::new((i64::MIN, Vec::new())));

pub fn with_timestamp<R>(f: impl FnOnce(&[u8]) -> R) -> R {
    // SAFETY: plain calls; JsonEncodeDateTime pallocs its result when buf is NULL.
    let now = unsafe { pg::GetCurrentTransactionStartTimestamp() };
    let mut c = TIMESTAMP.borrow_mut();
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
pub unsafe fn qualified_name(rel: pg::Relation) -> Vec<u8> {
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

/// The last table [`qualified_name`] was asked for, and the command it was asked in.
struct CachedName {
    relid: pg::Oid,
    xact_start: pg::TimestampTz,
    cid: pg::CommandId,
    name: Vec<u8>,
}

static TABLE_NAME: BackendLocal<RefCell<CachedName>> =
    BackendLocal::new(RefCell::new(CachedName { relid: pg::InvalidOid, xact_start: 0, cid: 0, name: Vec::new() }));

/// [`qualified_name`], looked up once per table and command: a row trigger fires for every row
/// of a statement, and the lookup (a syscache search for the schema, two quotings) was a visible
/// part of its cost. A rename is DDL, which starts a new command (or transaction) before the
/// next row can fire, so the cached name cannot be stale.
///
/// # Safety
/// `rel` is an open relation.
unsafe fn qualified_name_cached<R>(rel: pg::Relation, f: impl FnOnce(&[u8]) -> R) -> R {
    // SAFETY: the caller's promise; plain reads of transaction state.
    unsafe {
        let (relid, xact_start, cid) =
            ((*rel).rd_id, pg::GetCurrentTransactionStartTimestamp(), pg::GetCurrentCommandId(false));
        let mut c = TABLE_NAME.borrow_mut();
        if c.relid != relid || c.xact_start != xact_start || c.cid != cid {
            *c = CachedName { relid, xact_start, cid, name: qualified_name(rel) };
        }
        f(&c.name)
    }
}

/// How PostgreSQL called a trigger function: checked access to its trigger data.
pub struct TriggerCall {
    td: *mut pg::TriggerData,
}

impl TriggerCall {
    /// The trigger data of this call, or `err` when the trigger manager did not call us.
    ///
    /// # Safety
    /// `fcinfo` is the current call's.
    pub unsafe fn new(fcinfo: pg::FunctionCallInfo, fname: &str, err: fn(&str) -> !) -> TriggerCall {
        // SAFETY: the caller's promise; the node tag is checked before the cast.
        unsafe {
            let ctx = (*fcinfo).context;
            if ctx.is_null() || (*ctx).type_ != pg::NodeTag::T_TriggerData {
                err(&format!("{fname} was not called by the trigger manager"));
            }
            TriggerCall { td: ctx as *mut pg::TriggerData }
        }
    }

    pub fn data(&self) -> *mut pg::TriggerData {
        self.td
    }

    fn event(&self) -> u32 {
        // SAFETY: checked in new(); valid for the call.
        unsafe { (*self.td).tg_event }
    }

    pub fn row_level(&self) -> bool {
        self.event() & TRIGGER_EVENT_ROW != 0
    }

    pub fn after(&self) -> bool {
        self.event() & TRIGGER_EVENT_TIMINGMASK == 0
    }

    /// `INSERT`, `UPDATE` or `DELETE` (TRUNCATE is `err`).
    pub fn operation(&self, err: fn(&str) -> !) -> &'static str {
        match self.event() & TRIGGER_EVENT_OPMASK {
            TRIGGER_EVENT_INSERT => "INSERT",
            TRIGGER_EVENT_UPDATE => "UPDATE",
            TRIGGER_EVENT_DELETE => "DELETE",
            _ => err("pg_mqtt_pub triggers do not publish TRUNCATE"),
        }
    }

    /// The trigger's `n` arguments, or ERROR naming the setup function that writes them.
    pub fn args(&self, n: usize, setup: &str) -> Vec<Vec<u8>> {
        // SAFETY: tg_trigger and its argument strings are valid for the call.
        unsafe {
            let trig = &*(*self.td).tg_trigger;
            if trig.tgnargs as usize != n {
                PgError::new(
                    Code::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
                    format!("trigger function needs {n} arguments"),
                )
                .detail(format!(
                    "Trigger \"{}\" passes {}.",
                    CStr::from_ptr(trig.tgname).to_string_lossy(),
                    trig.tgnargs
                ))
                .hint(format!("Create it with {setup}."))
                .raise();
            }
            std::slice::from_raw_parts(trig.tgargs, n).iter().map(|a| CStr::from_ptr(*a).to_bytes().to_vec()).collect()
        }
    }
}

/// The firing trigger, for its topic rights (data/rights.rs): its OID and its table's owner.
///
/// # Safety
/// `td` is the TriggerData of the current call.
pub unsafe fn firing(td: &pg::TriggerData) -> crate::data::rights::Firing {
    // SAFETY: the caller's promise; trigger and relation are valid for the call.
    unsafe { crate::data::rights::Firing { trigger: td.tg_trigger, table_owner: (*(*td.tg_relation).rd_rel).relowner } }
}

fn event_trigger(fcinfo: pg::FunctionCallInfo) -> pg::Datum {
    // SAFETY: TriggerCall checks the call context; tuples and relation are valid for the call.
    unsafe {
        publish::require_publishable();
        let call = TriggerCall::new(fcinfo, "mqtt_pub.event_trigger()", protocol_error);
        if !call.row_level() || !call.after() {
            protocol_error("mqtt_pub.event_trigger() must be fired AFTER ... FOR EACH ROW");
        }
        let args = call.args(4, "mqtt_trigger_event_setup()");
        let arg = |i: usize| &args[i][..];
        let qos: i32 = std::str::from_utf8(arg(1)).ok().and_then(|s| s.parse().ok()).unwrap_or(-1);
        let include_meta = matches!(arg(3), b"true" | b"t" | b"on" | b"1");
        let td = &*call.data();
        let op = call.operation(protocol_error);
        let (old, new) = match op {
            "INSERT" => (None, Some(td.tg_trigtuple)),
            "UPDATE" => (Some(td.tg_trigtuple), Some(td.tg_newtuple)),
            _ => (Some(td.tg_trigtuple), None),
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
        let mut props = Vec::with_capacity(96);
        // SAFETY: DML has assigned the transaction id already.
        let txid = pg::GetTopFullTransactionId().value;
        qualified_name_cached(td.tg_relation, |table| {
            props::change_event(&mut props, &to_utf8(table), op, txid);
            if include_meta {
                with_timestamp(|ts| {
                    let meta = Meta { operation: op, table, timestamp: ts, txid };
                    envelope::event_payload(&mut payload, Some(&meta), old, new)
                })
            } else {
                envelope::event_payload(&mut payload, None, old, new);
            }
        });
        let payload = to_utf8(&payload);
        crate::data::rights::as_trigger(firing(td), || publish::publish_to(&target, &props, false, &payload, false));
    }
    pg::Datum::from(0usize)
}

crate::pg_finfo!(pg_finfo_mqtt_pub_event_trigger);

/// `mqtt_pub.event_trigger() RETURNS trigger`
#[no_mangle]
pub unsafe extern "C-unwind" fn mqtt_pub_event_trigger(fcinfo: pg::FunctionCallInfo) -> pg::Datum {
    guard(|| event_trigger(fcinfo))
}
