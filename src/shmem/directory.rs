//! Which database owns which share (ADR-012): claimed by a database's first backend that needs
//! one, given back by the launcher when the database or its extension is gone.
//!
//! A share changes hands only under `DIRECTORY_LOCK` *and* the share's own ring lock, and is
//! given back only when nothing of its database can still be in it: the database is dropped (no
//! backend can be connected to it any more), or its ring is empty, nothing is promised and no
//! transaction writes to its outbox. A backend that cached the share's index sees that the owner
//! changed at its next `shared()` (one load) and claims again.

use super::*;

fn launcher_wake() {
    if let Some(d) = directory() {
        let latch = d.launcher_latch.load(Ordering::Acquire);
        if !latch.is_null() {
            // SAFETY: the launcher's PGPROC latch; setting it after the launcher exited is harmless.
            unsafe { pg::SetLatch(latch) };
        }
    }
}

/// The share of database `dboid`, if it has one.
pub fn of_database(dboid: u32) -> Option<&'static Shared> {
    shares().find(|s| dboid != 0 && s.dboid.load(Ordering::Acquire) == dboid)
}

/// Claim a share for `dboid` (or find the one it has). `None`: every share is taken. A new share
/// remembers `copied_by` (see `Shared::copied_by`).
fn claim(dboid: u32, copied_by: u32) -> Option<&'static Shared> {
    let claimed = lock_index(DIRECTORY_LOCK, pg::LWLockMode::LW_EXCLUSIVE, || {
        if let Some(s) = of_database(dboid) {
            return Some((s, false));
        }
        let s = shares().find(|s| s.dboid.load(Ordering::Acquire) == 0)?;
        s.with_ring_lock(|| {
            s.reset();
            // SAFETY: plain call (gettimeofday).
            s.claimed_at.store(unsafe { pg::GetCurrentTimestamp() }, Ordering::Relaxed);
            s.copied_by.store(copied_by, Ordering::Relaxed);
            s.dboid.store(dboid, Ordering::Release);
        });
        if let Some(d) = directory() {
            d.changes.fetch_add(1, Ordering::AcqRel);
        }
        Some((s, true))
    });
    let (s, new) = claimed?;
    if new {
        launcher_wake();
    }
    Some(s)
}

/// A backend's first need of shared memory in its database: claim the share (the launcher
/// then starts the database's worker), or say why not.
pub(super) fn claim_for_backend() -> &'static Shared {
    let only = gucs::DATABASE.string();
    if !only.is_empty() {
        let here = crate::pg::compat::current_database();
        if here != only {
            PgError::new(Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, format!("pg_mqtt_pub publishes only from database \"{only}\""))
                .detail(format!(
                    "This session is connected to \"{here}\"; pg_mqtt_pub.database restricts publishing to one database."
                ))
                .hint(format!(
                    "Connect to \"{only}\", or set pg_mqtt_pub.database = '' in postgresql.conf and restart so that every database publishes. \
                     To stop this database's triggers from publishing, DROP EXTENSION pg_mqtt_pub CASCADE here."
                ))
                .raise();
        }
    }
    let me = my_database();
    // Before anything of this session can be in the outbox: the xmin of the database's
    // pg_database row, i.e. the CREATE DATABASE's transaction if it was a copy (or an ALTER
    // DATABASE since, which came before any publish here too). Outbox rows older than it are a
    // template's (data/installation.rs). Looked up before the locks: it may read the catalog.
    let boundary = database_xmin(me);
    match claim(me, boundary) {
        Some(s) => {
            CURRENT.store(s.index() + 1, Ordering::Relaxed);
            s
        }
        None => PgError::new(
            Code::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
            format!(
                "too many databases publish: all {} shares of pg_mqtt_pub.max_databases are taken",
                share_count()
            ),
        )
        .detail("Every database in which pg_mqtt_pub is used takes one share of its shared memory and one background worker.")
        .hint("Raise pg_mqtt_pub.max_databases (and max_worker_processes) and restart, or DROP EXTENSION pg_mqtt_pub in a database that no longer publishes.")
        .raise(),
    }
}

/// The xmin of database `dboid`'s `pg_database` row (0 if not found). Inside a transaction.
fn database_xmin(dboid: u32) -> u32 {
    // SAFETY: a syscache lookup of a shared catalog; the tuple is released before returning.
    unsafe {
        let tup =
            pg::SearchSysCache1(pg::SysCacheIdentifier::DATABASEOID as i32, pg::Datum::from(pg::Oid::from(dboid)));
        if tup.is_null() {
            return 0;
        }
        let xmin = (*(*tup).t_data).t_choice.t_heap.t_xmin;
        pg::ReleaseSysCache(tup);
        xmin.into_inner()
    }
}

/// Claim a share for `dboid` on someone else's behalf: the launcher at start (the databases that
/// published before the restart), or a `CREATE DATABASE ... TEMPLATE` of a publishing database.
/// `guess`: nobody knows the extension is there (the launcher's first start without its file);
/// the worker then leaves at once if it is not, instead of waiting for a `CREATE EXTENSION` that
/// may be committing.
/// `copied_by`: the `CREATE DATABASE ... TEMPLATE` transaction that made the database (0: none).
pub fn claim_for_launcher(dboid: u32, guess: bool, copied_by: u32) -> bool {
    match claim(dboid, copied_by) {
        Some(s) => {
            s.guess.store(guess, Ordering::Release);
            true
        }
        None => false,
    }
}

pub enum ReleaseOutcome {
    /// Given back; `lost` ring slots of a dropped database were discarded with it.
    Released { lost: u64 },
    /// Something of the database is still in it: kept.
    Busy,
}

/// The launcher: give share `s` back. `database_gone`: the database was dropped, so whatever
/// its ring still holds can never be delivered (its brokers were in its catalog) and goes too.
pub fn release(s: &'static Shared, database_gone: bool) -> ReleaseOutcome {
    lock_index(DIRECTORY_LOCK, pg::LWLockMode::LW_EXCLUSIVE, || {
        s.with_ring_lock(|| {
            let ring = s.ring();
            let used = ring.used_slots() + ring.promised_slots();
            let writers = s.brokers().iter().any(|b| b.cold_writers.load(Ordering::Acquire) > 0);
            if !database_gone && (used > 0 || writers || s.worker_pid.load(Ordering::Acquire) != 0) {
                return ReleaseOutcome::Busy;
            }
            // SAFETY: under the share's ring lock, and nobody of its database is left.
            unsafe { ring.clear() };
            s.dboid.store(0, Ordering::Release);
            if let Some(d) = directory() {
                d.changes.fetch_add(1, Ordering::AcqRel);
            }
            ReleaseOutcome::Released { lost: used }
        })
    })
}

/// A backend about to drop, rename or copy database `dboid`: ask its worker to leave (those
/// commands refuse to run while anyone is connected, and wait up to 5 s for them to go).
/// Returns whether a worker was asked.
pub fn request_leave(dboid: u32) -> bool {
    let Some(s) = of_database(dboid) else { return false };
    if s.worker_pid.load(Ordering::Acquire) == 0 {
        return false;
    }
    s.leave_requested.store(true, Ordering::Release);
    s.wake_always();
    true
}
