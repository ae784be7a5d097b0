//! Per-role topic rights, the SQL side (ADR-014): `mqtt_pub.mqtt_grant()`, `mqtt_pub.mqtt_revoke()`,
//! and `mqtt_pub.replay_dead_letters()` (its move runs as the owner, checking the caller's rights
//! per row through `mqtt_pub.require_publish_right_of()`). The check itself, and the
//! cache behind it, are data/rights.rs.
//!
//! `mqtt_grant` and `mqtt_revoke` are not executable by PUBLIC: the extension's owner (or a
//! superuser) runs them, or grants EXECUTE on them to a role it delegates to. They check their
//! arguments as the caller, then write `mqtt_pub.topic_rights` as the owner with the pinned
//! path (the table is the owner's alone); `granted_by` records the real caller.

use crate::pg::fmgr::Args;
use crate::pg::guard::{guard, Code, PgError};
use crate::pg::spi::{self, pinned, with_spi, Rights};
use pgrx_pg_sys as pg;

/// The role argument: a role that exists (a regrole given as a number is not checked by its
/// input function).
fn role_arg(a: &Args) -> pg::Oid {
    let role = pg::Oid::from(a.required(0, "role").value() as u32);
    // SAFETY: syscache lookup; NULL when there is no such role (noerr).
    if unsafe { pg::GetUserNameFromId(role, true) }.is_null() {
        PgError::new(Code::ERRCODE_UNDEFINED_OBJECT, format!("role with OID {} does not exist", role.to_u32()))
            .hint("Pass a role name, e.g. 'app_tenant_a'.")
            .raise();
    }
    role
}

fn grant(fcinfo: pg::FunctionCallInfo) -> pg::Datum {
    // SAFETY: fcinfo comes from PostgreSQL for this call.
    let a = unsafe { Args::new(fcinfo) };
    let role = role_arg(&a);
    let broker = a.text(1, "broker").to_vec();
    let filter = String::from_utf8_lossy(a.text(2, "topic_filter")).into_owned();
    crate::data::rights::require_valid_filter(&filter);
    crate::data::catalog::slot_of(&broker); // 42704 for a broker that does not exist
                                            // SAFETY: plain read of the current user (the function is not SECURITY DEFINER).
    let by = unsafe { pg::GetUserId() };
    let added = with_spi(|| {
        pinned(Rights::Owner, || {
            // SAFETY: inside SPI and the pinned scope; typed parameters; qualified names.
            unsafe {
                spi::execute(
                    "INSERT INTO mqtt_pub.topic_rights (role, broker, topic_filter, granted_by) \
                     VALUES ($1::pg_catalog.oid::pg_catalog.regrole, $2, $3, $4::pg_catalog.oid::pg_catalog.regrole) \
                     ON CONFLICT DO NOTHING",
                    &[
                        (pg::OIDOID, pg::Datum::from(role)),
                        (pg::TEXTOID, spi::bytes_datum(&broker)),
                        (pg::TEXTOID, spi::bytes_datum(filter.as_bytes())),
                        (pg::OIDOID, pg::Datum::from(by)),
                    ],
                    false,
                    0,
                );
                spi::processed() == 1
            }
        })
    });
    pg::Datum::from(added)
}

fn revoke(fcinfo: pg::FunctionCallInfo) -> pg::Datum {
    // SAFETY: fcinfo comes from PostgreSQL for this call.
    let a = unsafe { Args::new(fcinfo) };
    let role = pg::Oid::from(a.required(0, "role").value() as u32);
    let broker = a.text(1, "broker").to_vec();
    let filter = a.opt_bytes(2).map(|f| f.to_vec());
    let removed = with_spi(|| {
        pinned(Rights::Owner, || {
            // SAFETY: as in `grant`.
            unsafe {
                spi::execute_nulls(
                    "DELETE FROM mqtt_pub.topic_rights r \
                      WHERE r.role::pg_catalog.oid OPERATOR(pg_catalog.=) $1 \
                        AND r.broker OPERATOR(pg_catalog.=) $2 \
                        AND ($3::pg_catalog.text IS NULL OR r.topic_filter OPERATOR(pg_catalog.=) $3)",
                    &[
                        (pg::OIDOID, Some(pg::Datum::from(role))),
                        (pg::TEXTOID, Some(spi::bytes_datum(&broker))),
                        (pg::TEXTOID, filter.as_deref().map(spi::bytes_datum)),
                    ],
                    false,
                    0,
                );
                spi::processed() as i64
            }
        })
    });
    pg::Datum::from(removed)
}

fn require_right_of(fcinfo: pg::FunctionCallInfo) -> pg::Datum {
    // SAFETY: fcinfo comes from PostgreSQL for this call.
    let a = unsafe { Args::new(fcinfo) };
    let role = pg::Oid::from(a.required(0, "role").value() as u32);
    let slot = crate::data::catalog::slot_of(a.text(1, "broker")); // 42704; locks the catalog
    if let Some(topic) = a.opt_bytes(2) {
        crate::data::rights::require_of(role, slot, topic);
    }
    pg::Datum::from(true)
}

/// `replay_dead_letters` as the caller sees it: the move runs as the owner (the roles that replay
/// need no privilege on the outbox, which would let them write any topic into it), checking each
/// row against the topic rights of the role that called.
fn replay(fcinfo: pg::FunctionCallInfo) -> pg::Datum {
    // SAFETY: fcinfo comes from PostgreSQL for this call.
    let a = unsafe { Args::new(fcinfo) };
    // SAFETY: plain read of the current user (this function is SECURITY INVOKER).
    let caller = unsafe { pg::GetUserId() };
    let broker = a.opt_bytes(0).map(|b| b.to_vec());
    let max = a.get(1);
    let moved = with_spi(|| {
        pinned(Rights::Owner, || {
            // SAFETY: inside SPI and the pinned scope; typed parameters; a qualified name.
            unsafe {
                spi::execute_nulls(
                    "SELECT mqtt_pub.replay_dead_letters_as_owner($1, $2, $3)",
                    &[
                        (pg::TEXTOID, broker.as_deref().map(spi::bytes_datum)),
                        (pg::INT4OID, max),
                        (pg::OIDOID, Some(pg::Datum::from(caller))),
                    ],
                    false,
                    0,
                );
                spi::first_value(1).map(|d| d.value() as i32).unwrap_or(0)
            }
        })
    });
    pg::Datum::from(moved)
}

crate::pg_finfo!(
    pg_finfo_mqtt_grant,
    pg_finfo_mqtt_revoke,
    pg_finfo_mqtt_require_publish_right_of,
    pg_finfo_mqtt_replay_dead_letters
);

/// `mqtt_pub.mqtt_grant(role regrole, broker text, topic_filter text) RETURNS boolean`
#[no_mangle]
pub unsafe extern "C-unwind" fn mqtt_grant(fcinfo: pg::FunctionCallInfo) -> pg::Datum {
    guard(|| grant(fcinfo))
}

/// `mqtt_pub.mqtt_revoke(role regrole, broker text, topic_filter text DEFAULT NULL) RETURNS bigint`
#[no_mangle]
pub unsafe extern "C-unwind" fn mqtt_revoke(fcinfo: pg::FunctionCallInfo) -> pg::Datum {
    guard(|| revoke(fcinfo))
}

/// `mqtt_pub.require_publish_right_of(role oid, broker text, topic text) RETURNS boolean` (owner only)
#[no_mangle]
pub unsafe extern "C-unwind" fn mqtt_require_publish_right_of(fcinfo: pg::FunctionCallInfo) -> pg::Datum {
    guard(|| require_right_of(fcinfo))
}

/// `mqtt_pub.replay_dead_letters(broker_name text DEFAULT NULL, max_count integer DEFAULT 100) RETURNS integer`
#[no_mangle]
pub unsafe extern "C-unwind" fn mqtt_replay_dead_letters(fcinfo: pg::FunctionCallInfo) -> pg::Datum {
    guard(|| replay(fcinfo))
}
