//! Every database publishes (ADR-012): `mqtt_pub.mqtt_announce()`, which CREATE and ALTER
//! EXTENSION call so that the database's worker starts at once, and
//! `mqtt_pub.mqtt_status_all()`, every publishing database's brokers from shared memory.

use crate::pg::fmgr::{text_datum, Args};
use crate::pg::guard::{guard, Level};
use crate::pg::gucs;
use crate::shmem;
use pgrx_pg_sys as pg;
use std::sync::atomic::Ordering;

crate::pg_finfo!(pg_finfo_mqtt_announce);

/// `mqtt_pub.mqtt_announce()`: claim this database's share; the launcher starts its worker. In a
/// database that `pg_mqtt_pub.database` leaves out, a NOTICE instead of an error: the extension
/// may still be installed (a restore), it just does not publish there. Not preloaded: nothing.
#[no_mangle]
pub unsafe extern "C-unwind" fn mqtt_announce(_fcinfo: pg::FunctionCallInfo) -> pg::Datum {
    guard(|| {
        if shmem::directory().is_none() {
            // Not preloaded: CREATE EXTENSION still succeeds; every function says what to do.
            return pg::Datum::from(0usize);
        }
        let only = gucs::DATABASE.string();
        let here = crate::pg::compat::current_database();
        if !only.is_empty() && only != here {
            crate::pg::guard::log(
                Level::NOTICE,
                format!(
                    "database \"{here}\" does not publish: pg_mqtt_pub.database restricts publishing to \"{only}\""
                ),
            );
            return pg::Datum::from(0usize);
        }
        let s = shmem::require_shared();
        // a new or updated extension: every backend's topic rights are reloaded (data/rights.rs)
        s.rights_generation.fetch_add(1, Ordering::AcqRel);
        // A worker that found the extension gone and is about to exit should not hand the share
        // back now that it is here again (launcher.rs restarts it instead).
        s.idle_exit.store(false, Ordering::Release);
        // SAFETY: plain call.
        s.announced_at.store(unsafe { pg::GetCurrentTimestamp() }, Ordering::Release);
        pg::Datum::from(0usize)
    })
}

crate::pg_finfo!(pg_finfo_mqtt_status_all);

/// `mqtt_pub.mqtt_status_all()`: one row per broker of every publishing database, from shared
/// memory only (a backend cannot read another database's outbox; `outbox_bytes` is the size
/// the database's worker measured).
#[no_mangle]
pub unsafe extern "C-unwind" fn mqtt_status_all(fcinfo: pg::FunctionCallInfo) -> pg::Datum {
    guard(|| {
        if shmem::directory().is_none() {
            shmem::require_shared(); // raises "must be loaded via shared_preload_libraries"
        }
        // SAFETY: fcinfo is valid for this call.
        let args = unsafe { Args::new(fcinfo) };
        // SAFETY: the documented materialize-mode SRF recipe; every datum is built in the
        // function's memory context.
        unsafe {
            pg::InitMaterializedSRF(args.fcinfo(), 0);
            let rsinfo = (*args.fcinfo()).resultinfo as *mut pg::ReturnSetInfo;
            for share in shmem::shares() {
                let dboid = share.dboid.load(Ordering::Acquire);
                if dboid == 0 {
                    continue;
                }
                let dbname = database_name(dboid);
                let ring = share.ring();
                let ring_bytes = (ring.used_slots() * crate::pure::ring::SLOT as u64) as i64;
                let pid = share.worker_pid.load(Ordering::Acquire);
                for (i, b) in share.brokers().iter().enumerate() {
                    if i > 0 && !b.in_use.load(Ordering::Acquire) {
                        continue;
                    }
                    let (name, host, last_error) = b.text();
                    let name = if name.is_empty() && i == 0 { "default".to_string() } else { name };
                    let connected = b.connected.load(Ordering::Acquire);
                    let problem = b.problem(&last_error);
                    let ts = |v: i64| (pg::Datum::from(v), v == 0);
                    let n = |v: u64| (pg::Datum::from(v as i64), false);
                    let oldest = b.oldest_inflight_at.load(Ordering::Relaxed);
                    let mut cols: [(pg::Datum, bool); 17] = [
                        (text_datum(&dbname), false),
                        (text_datum(&name), false),
                        (text_datum(&host), host.is_empty()),
                        (pg::Datum::from(b.port.load(Ordering::Relaxed)), false),
                        (pg::Datum::from(connected), false),
                        (text_datum(if b.is_cold() { "cold" } else { "hot" }), false),
                        problem.as_deref().map_or((pg::Datum::from(0usize), true), |p| (text_datum(p), false)),
                        ts(if connected { 0 } else { b.problem_since.load(Ordering::Relaxed) }),
                        n(b.messages_sent.load(Ordering::Relaxed)),
                        n(b.messages_failed.load(Ordering::Relaxed)),
                        n(b.messages_expired.load(Ordering::Relaxed)),
                        n(b.dead_lettered.load(Ordering::Relaxed)),
                        n(b.ring_waiting.load(Ordering::Relaxed)),
                        (pg::Datum::from(0usize), true),
                        (pg::Datum::from(ring_bytes), false),
                        (pg::Datum::from(share.outbox_bytes.load(Ordering::Relaxed).max(0)), false),
                        (pg::Datum::from(pid), pid == 0),
                    ];
                    if oldest != 0 {
                        cols[13] = (crate::backend::status::interval_since(oldest), false);
                    }
                    let mut values: Vec<pg::Datum> = cols.iter().map(|c| c.0).collect();
                    let mut nulls: Vec<bool> = cols.iter().map(|c| c.1).collect();
                    crate::pg::fmgr::put_row(rsinfo, &mut values, &mut nulls);
                }
            }
        }
        pg::Datum::from(0usize)
    })
}

/// A database's name, or its oid as text if it was dropped a moment ago.
fn database_name(oid: u32) -> String {
    // SAFETY: a syscache lookup of a shared catalog; the name is palloc'd.
    unsafe {
        let p = pg::get_database_name(pg::Oid::from(oid));
        if p.is_null() {
            oid.to_string()
        } else {
            std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}
