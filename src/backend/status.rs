//! `mqtt_status()`: one row per broker, from its shared slot (shmem/slot.rs) and the outbox.

use crate::pg::fmgr::{text_datum, Args};
use crate::pg::guard::guard;
use crate::shmem;
use pgrx_pg_sys as pg;
use std::sync::atomic::Ordering;

crate::pg_finfo!(pg_finfo_mqtt_status);

/// `mqtt_status()`: one row per broker.
#[no_mangle]
pub unsafe extern "C-unwind" fn mqtt_status(fcinfo: pg::FunctionCallInfo) -> pg::Datum {
    guard(|| {
        let s = crate::shmem::require_shared();
        // SAFETY: fcinfo is valid for this call.
        let args = unsafe { Args::new(fcinfo) };
        let ring = shmem::ring();
        let ring_bytes = (ring.used_slots() * crate::pure::ring::SLOT as u64) as i64;
        // SAFETY: the documented materialize-mode SRF recipe.
        unsafe {
            pg::InitMaterializedSRF(args.fcinfo(), 0);
            let rsinfo = (*args.fcinfo()).resultinfo as *mut pg::ReturnSetInfo;
            for (i, b) in s.brokers().iter().enumerate() {
                let in_use = b.in_use.load(Ordering::Acquire);
                if !in_use && i != 0 {
                    continue;
                }
                let (mut name, mut host, last_error) = b.text();
                let mut port = b.port.load(Ordering::Relaxed);
                if !in_use {
                    // the worker has not started yet: show what it will use
                    let cfg = crate::pg::gucs::BrokerConfig::default_broker();
                    name = cfg.name;
                    host = cfg.host;
                    port = cfg.port as i32;
                }
                let ts = |v: i64| (pg::Datum::from(v), v == 0);
                let mode = if b.is_cold() { "cold" } else { "hot" };
                let (pending, oldest) = crate::data::outbox::pending_and_age(&name);
                let cols: [(pg::Datum, bool); 15] = [
                    (text_datum(&name), false),
                    (text_datum(&host), false),
                    (pg::Datum::from(port), false),
                    (pg::Datum::from(b.connected.load(Ordering::Acquire)), false),
                    (text_datum(mode), false),
                    (pg::Datum::from(b.messages_sent.load(Ordering::Relaxed) as i64), false),
                    (pg::Datum::from(b.messages_failed.load(Ordering::Relaxed) as i64), false),
                    (pg::Datum::from(b.dead_lettered.load(Ordering::Relaxed) as i64), false),
                    (pg::Datum::from(pending), false),
                    (text_datum(&last_error), last_error.is_empty()),
                    ts(b.last_connected_at.load(Ordering::Relaxed)),
                    ts(b.last_error_at.load(Ordering::Relaxed)),
                    (pg::Datum::from(b.inflight.load(Ordering::Relaxed) as i32), false),
                    (pg::Datum::from(ring_bytes), false),
                    (oldest.unwrap_or(pg::Datum::from(0usize)), oldest.is_none()),
                ];
                let mut values: Vec<pg::Datum> = cols.iter().map(|c| c.0).collect();
                let mut nulls: Vec<bool> = cols.iter().map(|c| c.1).collect();
                // SQL 1.3 added messages_expired; a database still on 1.2 asks for 15 columns.
                if (*(*rsinfo).setDesc).natts > 15 {
                    values.push(pg::Datum::from(b.messages_expired.load(Ordering::Relaxed) as i64));
                    nulls.push(false);
                }
                pg::tuplestore_putvalues(
                    (*rsinfo).setResult,
                    (*rsinfo).setDesc,
                    values.as_mut_ptr(),
                    nulls.as_mut_ptr(),
                );
            }
        }
        pg::Datum::from(0usize)
    })
}
