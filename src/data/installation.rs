//! Whose outbox is this? `mqtt_pub.installed_in` (SQL 1.6) holds the database the extension was
//! created in. `CREATE DATABASE ... TEMPLATE` copies a database file by file, outbox included:
//! the copy's worker finds the template's oid there, and must not send the template's messages
//! a second time (ADR-012). It moves them to its dead letters, where they can be looked at and
//! replayed from the copy on purpose, and takes the outbox over.
//!
//! Which rows are the template's: those written by transactions older than the copy. The copy's
//! own backends may have written rows before its worker came (a new share starts cold, so the
//! copy's first messages go to its outbox); those are newer, and stay. The boundary is the
//! `CREATE DATABASE` transaction's id when the hook that saw it told us
//! (backend/database_hooks.rs), else the xmin of the copy's `pg_database` row (the same
//! transaction, unless an `ALTER DATABASE` changed the row since).

use super::outbox::{move_to_dead_letters, worker_spi};
use crate::pg::spi;
use pgrx_pg_sys as pg;

/// An outbox found copied from database `from`: `moved` messages went to the dead letters.
pub struct Adopted {
    pub from: u32,
    pub moved: u64,
}

/// The worker, once it finds the extension in its database `me`; `copied_by`: the id of the
/// transaction that made this database by copying another (0: not known). `None`: the outbox is
/// this database's own (or the extension predates 1.6 and has no `installed_in` yet).
pub fn adopt(me: u32, copied_by: u32) -> Option<Adopted> {
    worker_spi(|| {
        // SAFETY: catalog lookups and statements inside SPI and a pinned scope; every column
        // read is of the type selected.
        unsafe {
            let ns = pg::get_namespace_oid(c"mqtt_pub".as_ptr(), true);
            if ns == pg::InvalidOid || pg::get_relname_relid(c"installed_in".as_ptr(), ns) == pg::InvalidOid {
                return None;
            }
            spi::execute("SELECT database FROM mqtt_pub.installed_in", &[], true, 0);
            let from = if spi::processed() > 0 { spi::first_value(1).map_or(0, |d| d.value() as u32) } else { 0 };
            if from == me {
                return None;
            }
            let claim = |me: u32| {
                spi::execute("DELETE FROM mqtt_pub.installed_in", &[], false, 0);
                spi::execute(
                    "INSERT INTO mqtt_pub.installed_in (database) VALUES ($1)",
                    &[(pg::OIDOID, pg::Datum::from(pg::Oid::from(me)))],
                    false,
                    0,
                );
            };
            if from == 0 {
                claim(me); // the row was lost: nothing says the outbox is a copy
                return None;
            }
            let boundary = if copied_by != 0 {
                copied_by
            } else {
                spi::execute(
                    "SELECT d.xmin FROM pg_catalog.pg_database d WHERE d.oid OPERATOR(pg_catalog.=) $1",
                    &[(pg::OIDOID, pg::Datum::from(pg::Oid::from(me)))],
                    true,
                    0,
                );
                spi::first_value(1).map_or(0, |d| d.value() as u32)
            };
            // older than the boundary: age() counts back from now, so it compares across wraparound
            spi::execute(
                "SELECT o.broker, o.id FROM mqtt_pub.outbox o \
                 WHERE pg_catalog.age(o.xmin) OPERATOR(pg_catalog.>) pg_catalog.age($1) ORDER BY o.id",
                &[(pg::XIDOID, pg::Datum::from(boundary))],
                true,
                0,
            );
            let copied: Vec<(String, i64)> = (0..spi::processed() as usize)
                .filter_map(|r| Some((spi::text_at(r, 1)?, spi::value(r, 2)?.value() as i64)))
                .collect();
            let reason = format!(
                "copied from database {from} by CREATE DATABASE ... TEMPLATE: not sent a second time \
                 (mqtt_pub.replay_dead_letters() sends it from this database)"
            );
            let moved = copied.iter().map(|(b, id)| move_to_dead_letters(b, Some(*id), Some(reason.as_bytes()))).sum();
            claim(me);
            Some(Adopted { from, moved })
        }
    })
}
