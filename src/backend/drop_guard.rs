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
//! The tables are recognised by what they are, not by name (a renamed schema or table must not
//! slip through): a table belonging to the extension (pg_depend, deptype `e`) with a `payload`
//! column. Rows are counted with the latest snapshot: the DROP holds the table's
//! AccessExclusiveLock by now, so that snapshot sees every committed row, while the statement's
//! own snapshot (REPEATABLE READ, or one taken before waiting for a prepared transaction's lock)
//! could predate a commit.
//!
//! The hook runs in every backend for every DROP of anything: for an unrelated relation it costs
//! an extension lookup and a syscache probe.

use crate::pg::guard::{guard, Code, PgError};
use crate::pg::spi::{self, pinned, with_spi, Rights};
use pgrx_pg_sys as pg;

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
    guard(|| {
        // SAFETY: the previous hook, with the arguments we were given (inside the guard: an
        // ERROR it raises is re-thrown, never unwound through this frame).
        if let Some(prev) = unsafe { PREV_HOOK } {
            unsafe { prev(access, classId, objectId, subId, arg) };
        }
        if access == pg::ObjectAccessType::OAT_DROP && classId == pg::RelationRelationId && subId == 0 {
            check(objectId);
        }
    });
}

/// Is `relid` one of the extension's message tables (a member table with a `payload` column)?
fn is_message_table(relid: pg::Oid) -> bool {
    // SAFETY: catalog lookups inside the DROP's transaction.
    unsafe {
        let ext = pg::get_extension_oid(c"pg_mqtt_pub".as_ptr(), true);
        ext != pg::InvalidOid
            && pg::getExtensionOfObject(pg::RelationRelationId, relid) == ext
            && pg::get_attnum(relid, c"payload".as_ptr()) != pg::InvalidAttrNumber as i16
    }
}

fn check(relid: pg::Oid) {
    // SAFETY: plain read of a PostgreSQL global.
    if unsafe { pg::IsBinaryUpgrade } || relid == pg::InvalidOid || !is_message_table(relid) {
        return;
    }
    let (pending, dead_letters, by_broker) = count(relid);
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

/// Undelivered outbox rows, dead letters, and the outbox rows per broker ("broker "a": 2, ..."),
/// of the extension's message tables that still exist (the one being dropped among them), found
/// by membership and told apart by their columns. As the owner of the table being dropped
/// (whoever drops it by cascade may not be able to read it), path pinned, latest snapshot.
fn count(relid: pg::Oid) -> (i64, i64, String) {
    with_spi(|| {
        pinned(Rights::OwnerOf(relid), || {
            // SAFETY: inside SPI and the pinned scope; the snapshot is popped below, or by the
            // abort on ERROR; texts are copied out before SPI_finish.
            unsafe {
                pg::PushActiveSnapshot(pg::GetLatestSnapshot());
                spi::execute(
                    "SELECT c.oid::pg_catalog.regclass::pg_catalog.text, \
                     EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid OPERATOR(pg_catalog.=) c.oid \
                             AND a.attname OPERATOR(pg_catalog.=) 'dead_lettered_at'::pg_catalog.name AND NOT a.attisdropped) \
                     FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) d.objid \
                     WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass \
                       AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass \
                       AND d.refobjid OPERATOR(pg_catalog.=) (SELECT e.oid FROM pg_catalog.pg_extension e \
                                                             WHERE e.extname OPERATOR(pg_catalog.=) 'pg_mqtt_pub'::pg_catalog.name) \
                       AND d.deptype OPERATOR(pg_catalog.=) 'e'::pg_catalog.\"char\" \
                       AND c.relkind OPERATOR(pg_catalog.=) 'r'::pg_catalog.\"char\" \
                       AND EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid OPERATOR(pg_catalog.=) c.oid \
                                   AND a.attname OPERATOR(pg_catalog.=) 'payload'::pg_catalog.name AND NOT a.attisdropped)",
                    &[],
                    true,
                    0,
                );
                let tables: Vec<(String, bool)> = (0..spi::processed() as usize)
                    .filter_map(|r| Some((spi::text_at(r, 1)?, spi::value(r, 2)?.value() != 0)))
                    .collect();
                let (mut pending, mut dead_letters, mut by_broker) = (0, 0, Vec::new());
                for (table, dead) in tables {
                    spi::execute(&format!("SELECT pg_catalog.count(*) FROM {table}"), &[], true, 1);
                    let n = spi::first_value(1).map(|d| d.value() as i64).unwrap_or(0);
                    if dead {
                        dead_letters += n;
                        continue;
                    }
                    pending += n;
                    if n > 0 {
                        spi::execute(
                            &format!(
                                "SELECT pg_catalog.format('broker \"%s\": %s', o.broker, pg_catalog.count(*)) \
                                 FROM {table} o GROUP BY o.broker ORDER BY o.broker"
                            ),
                            &[],
                            true,
                            10,
                        );
                        by_broker.extend((0..spi::processed() as usize).filter_map(|r| spi::text_at(r, 1)));
                    }
                }
                pg::PopActiveSnapshot();
                (pending, dead_letters, by_broker.join(", "))
            }
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
