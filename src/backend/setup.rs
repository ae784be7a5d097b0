//! `mqtt_trigger_event_setup`, `mqtt_trigger_resultset_setup` and `mqtt_trigger_remove`.
//!
//! They run with the caller's rights (CREATE TRIGGER and DROP TRIGGER check that the caller may
//! change the table and execute our trigger functions). The caller's search_path is used for one
//! thing only: resolving the table name, exactly as SQL resolves a table name (quotes, schema,
//! case rules) — like `to_regclass`, and never spliced into SQL text. Everything else runs with
//! the pinned path and qualified names (`spi.rs`). Being C functions, they need no internal SQL
//! helpers that PUBLIC would have to be allowed to execute.
//!
//! The triggers themselves are the catalog (pg_trigger); `mqtt_pub.triggers` shows them. Names:
//! `mqtt_pub_event` (row level) and `mqtt_pub_resultset_<operation>` (statement level, one per
//! operation because PostgreSQL allows transition tables only on single-event triggers).

use crate::backend::publish;
use crate::pg::fmgr::Args;
use crate::pg::guard::{guard, Code, PgError};
use crate::pg::spi::{self, pinned, quote_ident, quote_literal, with_spi, Rights};
use pgrx_pg_sys as pg;
use std::ffi::{CStr, CString};

/// A table named by a setup argument.
struct Table {
    relid: pg::Oid,
    /// `schema.table`, quoted where needed: safe to splice into SQL.
    qualified: String,
    /// The argument as given, for messages.
    given: String,
    nsp: Vec<u8>,
    name: Vec<u8>,
}

fn resolve_table(a: &Args) -> Table {
    let Some(d) = a.get(0) else {
        PgError::new(Code::ERRCODE_NULL_VALUE_NOT_ALLOWED, "table_name must not be NULL")
            .hint("Pass the table, e.g. 'orders' or 'sales.\"Order Lines\"'.")
            .raise()
    };
    // SAFETY: a text argument.
    let given = unsafe { crate::pg::fmgr::varlena_bytes(d) };
    let c = CString::new(given).expect("text has no NUL");
    // SAFETY: parses the name as SQL does (ERROR on bad syntax), then looks it up in the
    // caller's search_path without locking, returning InvalidOid when missing.
    let relid = unsafe {
        let names = crate::pg::compat::qualified_name_list(c.as_ptr());
        let rv = pg::makeRangeVarFromNameList(names);
        pg::RangeVarGetRelidExtended(rv, pg::NoLock as _, pg::RVROption::RVR_MISSING_OK, None, std::ptr::null_mut())
    };
    let given = String::from_utf8_lossy(given).into_owned();
    if relid == pg::InvalidOid {
        PgError::new(Code::ERRCODE_UNDEFINED_TABLE, format!("table \"{given}\" does not exist"))
            .hint("Check the name and the search_path; quote mixed-case names: '\"MyTable\"'.")
            .raise();
    }
    // SAFETY: syscache lookups of a relation that exists; the names are palloc'd copies.
    let (nsp, name) = unsafe {
        let nsp = pg::get_namespace_name(pg::get_rel_namespace(relid));
        let name = pg::get_rel_name(relid);
        if nsp.is_null() || name.is_null() {
            PgError::new(Code::ERRCODE_UNDEFINED_TABLE, format!("table \"{given}\" does not exist")).raise();
        }
        (CStr::from_ptr(nsp).to_bytes().to_vec(), CStr::from_ptr(name).to_bytes().to_vec())
    };
    let mut q = quote_ident(&nsp);
    q.push(b'.');
    q.extend_from_slice(&quote_ident(&name));
    Table { relid, qualified: String::from_utf8_lossy(&q).into_owned(), given, nsp, name }
}

/// The checks both setup functions share; returns the table and the topic prefix to use.
fn setup_target(a: &Args, row_level: bool) -> (Table, Vec<u8>) {
    let t = resolve_table(a);
    if a.get(5).is_none() {
        PgError::new(Code::ERRCODE_NULL_VALUE_NOT_ALLOWED, "include_meta must not be NULL")
            .hint("Pass include_meta := true or false.")
            .raise();
    }
    // SAFETY: syscache lookup.
    let kind = unsafe { pg::get_rel_relkind(t.relid) } as u8;
    if !(kind == pg::RELKIND_RELATION
        || kind == pg::RELKIND_PARTITIONED_TABLE
        || row_level && kind == pg::RELKIND_FOREIGN_TABLE)
    {
        let also = if row_level { " (and foreign tables)" } else { "" };
        PgError::new(Code::ERRCODE_WRONG_OBJECT_TYPE, format!("\"{}\" is not a table", t.given))
            .hint(format!("Triggers that publish changes can be set up on tables and partitioned tables{also}."))
            .raise();
    }
    let prefix = match a.get(1) {
        // SAFETY: a text argument.
        Some(d) => unsafe { crate::pg::fmgr::varlena_bytes(d) }.to_vec(),
        None => {
            let mut p = b"db/changes/".to_vec();
            if t.nsp != b"public" {
                p.extend_from_slice(&t.nsp);
                p.push(b'.');
            }
            p.extend_from_slice(&t.name);
            p
        }
    };
    // A trigger set up where publishing is impossible would make every later DML fail; the
    // topics it will use must be valid (same checks and errors as mqtt_publish).
    publish::require_publishable();
    let mut topic = prefix.clone();
    topic.extend_from_slice(b"/insert");
    publish::check_target(&topic, a.i32(3, "qos"), a.text(4, "broker"));
    (t, prefix)
}

/// Operations as the setup functions accept them: INSERT, UPDATE, DELETE, any case, no repeats,
/// in that fixed order (so the trigger definition does not depend on how they were listed).
fn operations(a: &Args) -> Vec<&'static str> {
    let none = || -> ! {
        PgError::new(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "operations must name at least one of INSERT, UPDATE, DELETE",
        )
        .hint("Pass e.g. operations := '{INSERT,UPDATE}'.")
        .raise()
    };
    let Some(d) = a.get(2) else { none() };
    // SAFETY: a text[] argument.
    let (_, elems) = unsafe { crate::pg::fmgr::text_elements(d) };
    if elems.is_empty() {
        none();
    }
    let mut seen = [false; 3];
    for e in elems {
        let op = e.map(|b| String::from_utf8_lossy(b).trim_matches(' ').to_ascii_uppercase());
        match op.as_deref() {
            Some("INSERT") => seen[0] = true,
            Some("UPDATE") => seen[1] = true,
            Some("DELETE") => seen[2] = true,
            Some("TRUNCATE") => PgError::new(Code::ERRCODE_FEATURE_NOT_SUPPORTED, "TRUNCATE is not published")
                .detail("A TRUNCATE has no rows to send; pg_mqtt_pub publishes row changes only.")
                .hint("Leave TRUNCATE out of operations; publish a message of your own before truncating if subscribers must know.")
                .raise(),
            other => PgError::new(Code::ERRCODE_INVALID_PARAMETER_VALUE, format!("unknown operation \"{}\"", other.unwrap_or("NULL")))
                .hint("operations may contain INSERT, UPDATE and DELETE.")
                .raise(),
        }
    }
    ["INSERT", "UPDATE", "DELETE"].into_iter().zip(seen).filter(|(_, s)| *s).map(|(o, _)| o).collect()
}

/// Which of our triggers: the row trigger, the statement triggers, or both.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Event,
    Resultset,
    Both,
}

/// Run DDL with the caller's rights and the pinned path.
fn ddl(sql: &str) {
    // SAFETY: inside SPI and the pinned scope.
    with_spi(|| pinned(Rights::Caller, || unsafe { spi::execute(sql, &[], false, 0) }));
}

/// Drop this extension's triggers of `kind` on the table; returns how many.
fn drop_triggers(t: &Table, kind: Kind) -> i32 {
    let mut funcs = Vec::new();
    if kind != Kind::Resultset {
        funcs.push("'mqtt_pub.event_trigger()'::pg_catalog.regprocedure");
    }
    if kind != Kind::Event {
        funcs.push("'mqtt_pub.resultset_trigger()'::pg_catalog.regprocedure");
    }
    let sql = format!(
        "SELECT tgname::pg_catalog.text FROM pg_catalog.pg_trigger \
         WHERE tgrelid OPERATOR(pg_catalog.=) $1 AND tgparentid OPERATOR(pg_catalog.=) 0::pg_catalog.oid \
           AND tgfoid OPERATOR(pg_catalog.=) ANY (ARRAY[{}]::pg_catalog.oid[]) ORDER BY tgname",
        funcs.join(", ")
    );
    let names: Vec<Vec<u8>> = with_spi(|| {
        pinned(Rights::Caller, || {
            // SAFETY: inside SPI and the pinned scope; one oid parameter.
            unsafe {
                spi::execute(&sql, &[(pg::OIDOID, pg::Datum::from(t.relid))], true, 0);
                (0..spi::processed() as usize)
                    .filter_map(|r| spi::value(r, 1).map(|d| crate::pg::fmgr::varlena_bytes(d).to_vec()))
                    .collect()
            }
        })
    });
    for n in &names {
        ddl(&format!("DROP TRIGGER {} ON {}", String::from_utf8_lossy(&quote_ident(n)), t.qualified));
        crate::data::rights::forget_setter(t.relid, n);
    }
    names.len() as i32
}

fn lit(s: &[u8]) -> String {
    String::from_utf8_lossy(&quote_literal(s)).into_owned()
}

/// The trigger arguments both kinds start with: topic_prefix, qos, broker, include_meta.
fn common_args(a: &Args, prefix: &[u8]) -> String {
    let meta = if a.bool(5, "include_meta") { "true" } else { "false" };
    format!("{}, '{}', {}, '{meta}'", lit(prefix), a.i32(3, "qos"), lit(a.text(4, "broker")))
}

fn text_result(b: &[u8]) -> pg::Datum {
    // SAFETY: a text datum in the call's memory context.
    spi::bytes_datum(b)
}

fn event_setup(fcinfo: pg::FunctionCallInfo) -> pg::Datum {
    // SAFETY: fcinfo comes from PostgreSQL for this call.
    let a = unsafe { Args::new(fcinfo) };
    let (t, prefix) = setup_target(&a, true);
    let ops = operations(&a);
    drop_triggers(&t, Kind::Event);
    ddl(&format!(
        "CREATE TRIGGER mqtt_pub_event AFTER {} ON {} FOR EACH ROW EXECUTE FUNCTION mqtt_pub.event_trigger({})",
        ops.join(" OR "),
        t.qualified,
        common_args(&a, &prefix)
    ));
    // whose topic rights the trigger publishes with (data/rights.rs)
    crate::data::rights::record_setter(t.relid, "mqtt_pub_event");
    text_result(&prefix)
}

fn resultset_setup(fcinfo: pg::FunctionCallInfo) -> pg::Datum {
    // SAFETY: fcinfo comes from PostgreSQL for this call.
    let a = unsafe { Args::new(fcinfo) };
    let (t, prefix) = setup_target(&a, false);
    let rows = a.get(6).map(|d| d.value() as i32).filter(|&n| n >= 1).unwrap_or_else(|| {
        let v = a.get(6).map_or("NULL".to_string(), |d| (d.value() as i32).to_string());
        PgError::new(Code::ERRCODE_INVALID_PARAMETER_VALUE, format!("rows_per_message must be at least 1, not {v}"))
            .hint("Pass rows_per_message := 1000, or how many rows one message may carry.")
            .raise()
    });
    let ops = operations(&a);
    drop_triggers(&t, Kind::Resultset);
    for op in ops {
        let referencing = match op {
            "INSERT" => "NEW TABLE AS mqtt_pub_new",
            "DELETE" => "OLD TABLE AS mqtt_pub_old",
            _ => "OLD TABLE AS mqtt_pub_old NEW TABLE AS mqtt_pub_new",
        };
        ddl(&format!(
            "CREATE TRIGGER mqtt_pub_resultset_{} AFTER {op} ON {} REFERENCING {referencing} FOR EACH STATEMENT \
             EXECUTE FUNCTION mqtt_pub.resultset_trigger({}, '{rows}')",
            op.to_ascii_lowercase(),
            t.qualified,
            common_args(&a, &prefix)
        ));
        crate::data::rights::record_setter(t.relid, &format!("mqtt_pub_resultset_{}", op.to_ascii_lowercase()));
    }
    text_result(&prefix)
}

fn remove(fcinfo: pg::FunctionCallInfo) -> pg::Datum {
    // SAFETY: fcinfo comes from PostgreSQL for this call.
    let a = unsafe { Args::new(fcinfo) };
    let t = resolve_table(&a);
    pg::Datum::from(drop_triggers(&t, Kind::Both))
}

crate::pg_finfo!(
    pg_finfo_mqtt_trigger_event_setup,
    pg_finfo_mqtt_trigger_resultset_setup,
    pg_finfo_mqtt_trigger_remove
);

/// `mqtt_trigger_event_setup(table_name, topic_prefix, operations, qos, broker, include_meta)`
#[no_mangle]
pub unsafe extern "C-unwind" fn mqtt_trigger_event_setup(fcinfo: pg::FunctionCallInfo) -> pg::Datum {
    guard(|| event_setup(fcinfo))
}

/// `mqtt_trigger_resultset_setup(..., rows_per_message)`
#[no_mangle]
pub unsafe extern "C-unwind" fn mqtt_trigger_resultset_setup(fcinfo: pg::FunctionCallInfo) -> pg::Datum {
    guard(|| resultset_setup(fcinfo))
}

/// `mqtt_trigger_remove(table_name) RETURNS integer`
#[no_mangle]
pub unsafe extern "C-unwind" fn mqtt_trigger_remove(fcinfo: pg::FunctionCallInfo) -> pg::Datum {
    guard(|| remove(fcinfo))
}
