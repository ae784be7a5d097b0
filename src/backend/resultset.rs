//! `mqtt_pub.resultset_trigger()`: the compiled statement trigger behind
//! `mqtt_trigger_resultset_setup` — one message per statement (split when large).
//!
//! **Rights.** It runs as the role that ran the DML, like the row trigger (`trigger.rs`): user
//! rows are serialized (`row_to_json`, which calls the columns' output functions and casts) with
//! that role's rights only. It is not SECURITY DEFINER; publishing needs no privilege of the
//! DML's role because the message goes straight to the transaction's pending messages, as for
//! the row trigger (the table owner granted that by setting the trigger up).
//!
//! **No lookup by name.** The transition tables are the ones the trigger manager passes in the
//! trigger data (`tg_oldtable` / `tg_newtable`), registered with SPI under the names the trigger
//! itself declares (`REFERENCING ... AS`): an ephemeral named relation wins over any table, view
//! or temp object of that name. A trigger created without them is refused. The statements run
//! with the pinned search_path and every function and operator qualified (`spi.rs`).
//!
//! **Shape** (ADR-004): `{<meta>,"part":i,"parts":n,"count":c,"data":[{"old":..,"new":..},..]}`.
//! UPDATE pairs old and new rows by primary key with the key's own index equality operators;
//! without a key, old rows then new rows, unpaired. Messages are split at `rows_per_message`
//! rows and at `max_message_size` bytes, measured exactly in UTF-8 (what is sent).

use crate::backend::publish;
use crate::backend::trigger::{qualified_name, with_timestamp, TriggerCall};
use crate::pg::fmgr::{to_utf8, varlena_bytes};
use crate::pg::guard::{guard, Code, PgError};
use crate::pg::spi::{self, pinned, quote_ident, with_spi, Rights};
use crate::pure::envelope::{self, Meta};
use crate::pure::props;
use pgrx_pg_sys as pg;
use std::ffi::CStr;

/// Room kept in each message for `"part":i,"parts":n,"count":c,"data":[` and `]}` (36 bytes of
/// keys and punctuation plus three numbers of up to 20 digits).
const TAIL_RESERVE: usize = 100;

fn protocol_error(msg: &str) -> ! {
    PgError::new(Code::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED, msg)
        .hint("Create it with mqtt_trigger_resultset_setup(), which declares the transition tables.")
        .raise()
}

/// The primary key's columns and their index equality operators:
/// `o.k1 OPERATOR(ns.=) n.k1 AND ...` and the order `n.k1, o.k1, ...`. `None` without a key.
fn key_join(relid: pg::Oid) -> Option<(String, String)> {
    // SAFETY: inside SPI and the pinned scope; catalogs only, parameters as declared.
    let keys: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> = unsafe {
        spi::execute(
            "SELECT a.attname::pg_catalog.text, opn.nspname::pg_catalog.text, op.oprname::pg_catalog.text \
             FROM pg_catalog.pg_index x \
             CROSS JOIN LATERAL ROWS FROM (pg_catalog.unnest(x.indkey::pg_catalog.int2[]), \
                                          pg_catalog.unnest(x.indclass::pg_catalog.oid[])) \
                  WITH ORDINALITY AS k(attnum, opclass, ord) \
             JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) x.indrelid \
                                           AND a.attnum OPERATOR(pg_catalog.=) k.attnum \
             JOIN pg_catalog.pg_opclass oc ON oc.oid OPERATOR(pg_catalog.=) k.opclass \
             JOIN pg_catalog.pg_amop ao ON ao.amopfamily OPERATOR(pg_catalog.=) oc.opcfamily \
                  AND ao.amoplefttype OPERATOR(pg_catalog.=) oc.opcintype \
                  AND ao.amoprighttype OPERATOR(pg_catalog.=) oc.opcintype \
                  AND ao.amopstrategy OPERATOR(pg_catalog.=) 3 \
             JOIN pg_catalog.pg_operator op ON op.oid OPERATOR(pg_catalog.=) ao.amopopr \
             JOIN pg_catalog.pg_namespace opn ON opn.oid OPERATOR(pg_catalog.=) op.oprnamespace \
             WHERE x.indrelid OPERATOR(pg_catalog.=) $1 AND x.indisprimary \
               AND k.ord OPERATOR(pg_catalog.<=) x.indnkeyatts \
             ORDER BY k.ord",
            &[(pg::OIDOID, pg::Datum::from(relid))],
            true,
            0,
        );
        (0..spi::processed() as usize)
            .map(|r| {
                let t = |c| spi::value(r, c).map(|d| varlena_bytes(d).to_vec()).unwrap_or_default();
                (t(1), t(2), t(3))
            })
            .collect()
    };
    if keys.is_empty() {
        return None;
    }
    let mut on = Vec::new();
    let mut order = Vec::new();
    for (att, nsp, opr) in &keys {
        let a = String::from_utf8_lossy(&quote_ident(att)).into_owned();
        let n = String::from_utf8_lossy(&quote_ident(nsp)).into_owned();
        on.push(format!("o.{a} OPERATOR({n}.{}) n.{a}", String::from_utf8_lossy(opr)));
        order.push(format!("n.{a}, o.{a}"));
    }
    Some((on.join(" AND "), order.join(", ")))
}

/// Which keys an entry has: `{"old":..}`, `{"new":..}` or `{"old":..,"new":..}` (a missing
/// side of a pair is `null`).
#[derive(Clone, Copy)]
enum Sides {
    Old,
    New,
    Both,
}

/// Run `sql` (two json columns: old row, new row) and append one entry per result row.
///
/// # Safety
/// Inside SPI with the trigger data registered, in the pinned scope.
unsafe fn collect(sql: &str, sides: Sides, entries: &mut Vec<Vec<u8>>) {
    // SAFETY: the caller's promise; results are copied out before SPI_finish.
    unsafe {
        spi::execute(sql, &[], true, 0);
        for r in 0..spi::processed() as usize {
            let old = spi::value(r, 1).map(|d| varlena_bytes(d));
            let new = spi::value(r, 2).map(|d| varlena_bytes(d));
            let (old, new) = match sides {
                Sides::Old => (Some(old.unwrap_or(b"null")), None),
                Sides::New => (None, Some(new.unwrap_or(b"null"))),
                Sides::Both => (Some(old.unwrap_or(b"null")), Some(new.unwrap_or(b"null"))),
            };
            let mut e = Vec::new();
            envelope::event_payload(&mut e, None, old, new);
            entries.push(to_utf8(&e).into_owned());
        }
    }
}

/// The changed rows of this statement as `{"old":..,"new":..}` entries, in UTF-8.
///
/// # Safety
/// `td` is the trigger data of the current call, with the transition tables `op` needs.
unsafe fn entries(td: *mut pg::TriggerData, op: &str) -> Vec<Vec<u8>> {
    // SAFETY: the caller's promise; the transition table names are the trigger's own.
    unsafe {
        let trig = &*(*td).tg_trigger;
        let name =
            |p: *mut std::ffi::c_char| String::from_utf8_lossy(&quote_ident(CStr::from_ptr(p).to_bytes())).into_owned();
        let relid = (*(*td).tg_relation).rd_id;
        with_spi(|| {
            pg::SPI_register_trigger_data(td);
            pinned(Rights::Caller, || {
                let mut out = Vec::new();
                let json = "pg_catalog.row_to_json";
                match op {
                    "INSERT" => {
                        let new = name(trig.tgnewtable);
                        collect(
                            &format!("SELECT NULL::pg_catalog.json, {json}(n) FROM {new} AS n"),
                            Sides::New,
                            &mut out,
                        )
                    }
                    "DELETE" => {
                        let old = name(trig.tgoldtable);
                        collect(
                            &format!("SELECT {json}(o), NULL::pg_catalog.json FROM {old} AS o"),
                            Sides::Old,
                            &mut out,
                        )
                    }
                    _ => {
                        let (old, new) = (name(trig.tgoldtable), name(trig.tgnewtable));
                        match key_join(relid) {
                            Some((on, order)) => collect(
                                &format!(
                                    "SELECT {json}(o), {json}(n) FROM {old} AS o FULL JOIN {new} AS n ON {on} \
                                     ORDER BY {order}"
                                ),
                                Sides::Both,
                                &mut out,
                            ),
                            None => {
                                // No primary key: nothing identifies a row across the update, so
                                // old and new rows are listed unpaired, old ones first.
                                let (o, n) = (
                                    format!("{json}(o), NULL::pg_catalog.json"),
                                    format!("NULL::pg_catalog.json, {json}(n)"),
                                );
                                collect(&format!("SELECT {o} FROM {old} AS o"), Sides::Both, &mut out);
                                collect(&format!("SELECT {n} FROM {new} AS n"), Sides::Both, &mut out);
                            }
                        }
                    }
                }
                out
            })
        })
    }
}

fn resultset_trigger(fcinfo: pg::FunctionCallInfo) -> pg::Datum {
    // SAFETY: TriggerCall checks the call context; the trigger data is valid for the call.
    unsafe {
        publish::require_publishable();
        let call = TriggerCall::new(fcinfo, "mqtt_pub.resultset_trigger()", protocol_error);
        if call.row_level() || !call.after() {
            protocol_error("mqtt_pub.resultset_trigger() must be fired AFTER ... FOR EACH STATEMENT");
        }
        let args = call.args(5, "mqtt_trigger_resultset_setup()");
        let op = call.operation(protocol_error);
        let td = call.data();
        let trig = &*(*td).tg_trigger;
        let need_old = op != "INSERT";
        let need_new = op != "DELETE";
        if (need_old && ((*td).tg_oldtable.is_null() || trig.tgoldtable.is_null()))
            || (need_new && ((*td).tg_newtable.is_null() || trig.tgnewtable.is_null()))
        {
            protocol_error("mqtt_pub.resultset_trigger() needs the statement's transition tables");
        }
        let qos: i32 = std::str::from_utf8(&args[1]).ok().and_then(|s| s.parse().ok()).unwrap_or(-1);
        let include_meta = matches!(&args[3][..], b"true" | b"t" | b"on" | b"1");
        let max_rows: usize =
            std::str::from_utf8(&args[4]).ok().and_then(|s| s.parse().ok()).filter(|&n| n >= 1).unwrap_or_else(|| {
                PgError::new(Code::ERRCODE_INVALID_PARAMETER_VALUE, "rows_per_message must be at least 1")
                    .hint("Set the trigger up again with mqtt_trigger_resultset_setup(..., rows_per_message := 1000).")
                    .raise()
            });
        let mut topic = args[0].clone();
        topic.push(b'/');
        topic.extend_from_slice(op.to_ascii_lowercase().as_bytes());
        let target = publish::check_target(&topic, qos, &args[2]);

        let mut head = Vec::with_capacity(160);
        let table = qualified_name((*td).tg_relation);
        let txid = pg::GetTopFullTransactionId().value;
        if include_meta {
            with_timestamp(|ts| {
                envelope::meta_fields(&mut head, &Meta { operation: op, table: &table, timestamp: ts, txid })
            });
        }
        let mut props = Vec::with_capacity(96);
        props::change_event(&mut props, &to_utf8(&table), op, txid);
        let head = to_utf8(&head).into_owned();
        let rows = entries(td, op);
        let max = crate::pg::gucs::MAX_MESSAGE_SIZE.get() as usize;
        let budget = max.saturating_sub(target.topic.len() + props.len() + head.len() + TAIL_RESERVE);
        let parts = envelope::split_rows(&rows, max_rows, budget);
        let mut payload = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            envelope::resultset_payload(&mut payload, &head, i + 1, parts.len(), &rows[part.clone()]);
            let firing = crate::backend::trigger::firing(&*td);
            crate::data::rights::as_trigger(firing, || publish::publish_to(&target, &props, false, &payload, false));
        }
    }
    pg::Datum::from(0usize)
}

crate::pg_finfo!(pg_finfo_mqtt_pub_resultset_trigger);

/// `mqtt_pub.resultset_trigger() RETURNS trigger`
#[no_mangle]
pub unsafe extern "C-unwind" fn mqtt_pub_resultset_trigger(fcinfo: pg::FunctionCallInfo) -> pg::Datum {
    guard(|| resultset_trigger(fcinfo))
}
