//! Nothing committed is discarded silently by a DROP: while `mqtt_pub.outbox` holds undelivered
//! messages or `mqtt_pub.dead_letters` holds dead letters, dropping either table — by `DROP
//! EXTENSION`, with or without CASCADE, or by a `DROP SCHEMA ... CASCADE` that takes the extension
//! with it — is refused with the counts and a hint. `mqtt_pub.mqtt_discard()` is the explicit,
//! logged way to throw them away first. Messages still in shared memory (committed, handed to the
//! worker, not yet acknowledged) get a moment to be delivered, else the DROP is refused too.
//!
//! An object-access hook, because it sees every path that deletes the tables, and sees it before
//! the first object of the cascade is deleted... almost: PostgreSQL calls it for each object just
//! before deleting that object, dependents first. The tables' indexes and views may be gone; the
//! table the hook is called for is still there, and the other one is either still there too or
//! was empty (else its own call would have refused). So each call counts the tables that exist.
//!
//! The hook runs in every backend for every DROP of anything: it returns at once unless a
//! relation of schema `mqtt_pub` named `outbox` or `dead_letters` is being dropped.

use crate::pg::guard::{guard, Code, PgError};
use crate::pg::spi::{self, pinned, with_spi, Rights};
use pgrx_pg_sys as pg;
use std::ffi::CStr;

static mut PREV_HOOK: pg::object_access_hook_type = None;

/// Install the hook (from `_PG_init`, preloading).
pub fn install() {
    // SAFETY: _PG_init runs once per process, before any query.
    unsafe {
        PREV_HOOK = pg::object_access_hook;
        pg::object_access_hook = Some(on_object_access);
    }
}

#[allow(non_snake_case)]
unsafe extern "C-unwind" fn on_object_access(
    access: pg::ObjectAccessType::Type,
    classId: pg::Oid,
    objectId: pg::Oid,
    subId: std::ffi::c_int,
    arg: *mut std::ffi::c_void,
) {
    // SAFETY: the previous hook, with the arguments we were given.
    if let Some(prev) = unsafe { PREV_HOOK } {
        unsafe { prev(access, classId, objectId, subId, arg) };
    }
    if access != pg::ObjectAccessType::OAT_DROP || classId != pg::RelationRelationId || subId != 0 {
        return;
    }
    guard(|| check(objectId));
}

/// `(outbox, dead_letters)` relation ids, `InvalidOid` for one that does not exist (any more).
fn our_tables() -> (pg::Oid, pg::Oid) {
    // SAFETY: syscache lookups; the caller is inside a transaction (a DROP).
    unsafe {
        let ns = pg::get_namespace_oid(c"mqtt_pub".as_ptr(), true);
        if ns == pg::InvalidOid {
            return (pg::InvalidOid, pg::InvalidOid);
        }
        let rel = |name: &CStr| pg::get_relname_relid(name.as_ptr(), ns);
        (rel(c"outbox"), rel(c"dead_letters"))
    }
}

fn check(relid: pg::Oid) {
    // SAFETY: plain read of a PostgreSQL global.
    if unsafe { pg::IsBinaryUpgrade } {
        return;
    }
    let (outbox, dead) = our_tables();
    if relid == pg::InvalidOid || (relid != outbox && relid != dead) {
        return;
    }
    let (pending, dead_letters, by_broker) = count(outbox != pg::InvalidOid, dead != pg::InvalidOid);
    let in_memory = if pending == 0 && dead_letters == 0 { wait_for_ring() } else { 0 };
    if pending == 0 && dead_letters == 0 && in_memory == 0 {
        return;
    }
    let mut what = Vec::new();
    if pending > 0 {
        what.push(format!("mqtt_pub.outbox holds {pending} undelivered message{} ({by_broker})", plural(pending)));
    }
    if dead_letters > 0 {
        what.push(format!("mqtt_pub.dead_letters holds {dead_letters} dead letter{}", plural(dead_letters)));
    }
    if in_memory > 0 {
        what.push(format!("{in_memory} bytes of committed messages wait in shared memory for their broker"));
    }
    PgError::new(
        Code::ERRCODE_OBJECT_IN_USE,
        "cannot drop pg_mqtt_pub while it holds undelivered messages or dead letters",
    )
    .detail(format!("{}.", what.join("; ")))
    .hint(
        "Let the messages be delivered (mqtt_status(), mqtt_pub.outbox_summary) and replay or delete the \
             dead letters; or, to throw them away on purpose, run SELECT mqtt_pub.mqtt_discard(); first.",
    )
    .raise();
}

fn plural(n: i64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Undelivered outbox rows, dead letters, and the outbox rows per broker ("broker "a": 2, ...").
/// As the tables' owner (whoever drops them by cascade may not be able to read them), path pinned.
fn count(outbox: bool, dead: bool) -> (i64, i64, String) {
    if !outbox && !dead {
        return (0, 0, String::new());
    }
    with_spi(|| {
        pinned(Rights::Owner, || {
            let scalar = |sql: &str| {
                // SAFETY: inside SPI and the pinned scope.
                unsafe {
                    spi::execute(sql, &[], true, 1);
                    spi::first_value(1).map(|d| d.value() as i64).unwrap_or(0)
                }
            };
            let pending = if outbox { scalar("SELECT pg_catalog.count(*) FROM mqtt_pub.outbox") } else { 0 };
            let dead_letters = if dead { scalar("SELECT pg_catalog.count(*) FROM mqtt_pub.dead_letters") } else { 0 };
            let mut by_broker = Vec::new();
            if pending > 0 {
                // SAFETY: as above; texts copied out before SPI_finish.
                unsafe {
                    spi::execute(
                        "SELECT pg_catalog.format('broker \"%s\": %s', o.broker, pg_catalog.count(*)) \
                         FROM mqtt_pub.outbox o GROUP BY o.broker ORDER BY o.broker",
                        &[],
                        true,
                        10,
                    );
                    for r in 0..spi::processed() as usize {
                        by_broker.extend(spi::text_at(r, 1));
                    }
                }
            }
            (pending, dead_letters, by_broker.join(", "))
        })
    })
}

/// Committed messages still in the shared ring (being delivered): wait up to two seconds for the
/// worker to deliver them. Returns the bytes still there then (0: nothing is left behind).
fn wait_for_ring() -> u64 {
    let Some(_) = crate::shmem::shared() else { return 0 };
    let ring = crate::shmem::ring();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let used = ring.used_slots();
        if used == 0 || std::time::Instant::now() >= until {
            return used * crate::pure::ring::SLOT as u64;
        }
        crate::pg::guard::check_for_interrupts();
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
