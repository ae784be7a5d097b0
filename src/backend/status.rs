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
        let outbox_used = crate::data::outbox_size::used();
        // SAFETY: the documented materialize-mode SRF recipe.
        unsafe {
            pg::InitMaterializedSRF(args.fcinfo(), 0);
            let rsinfo = (*args.fcinfo()).resultinfo as *mut pg::ReturnSetInfo;
            let slots = s.brokers();
            for listed in crate::data::catalog::listed() {
                let Some(b) = slots.get(listed.slot) else { continue };
                // The slot shows this broker only once the worker holds it for this name: until
                // then (just added, or the slot still being released by a removed broker) the
                // broker is shown as not started: what the catalog says, cold, no counters.
                let (slot_name, slot_host, slot_error) = b.text();
                let held = b.in_use.load(Ordering::Acquire) && slot_name == listed.name;
                let live = listed.slot == 0 || held;
                let name = listed.name;
                let (host, port, last_error) = if held {
                    (slot_host, b.port.load(Ordering::Relaxed), slot_error)
                } else {
                    (listed.host, listed.port, String::new())
                };
                let n = |v: u64| pg::Datum::from(if live { v as i64 } else { 0 });
                let ts = |v: i64| (pg::Datum::from(v), !live || v == 0);
                let mode = if !live || b.is_cold() { "cold" } else { "hot" };
                let (pending, oldest) = crate::data::outbox::pending_and_age(&name);
                let cols: [(pg::Datum, bool); 15] = [
                    (text_datum(&name), false),
                    (text_datum(&host), false),
                    (pg::Datum::from(port), false),
                    (pg::Datum::from(live && b.connected.load(Ordering::Acquire)), false),
                    (text_datum(mode), false),
                    (n(b.messages_sent.load(Ordering::Relaxed)), false),
                    (n(b.messages_failed.load(Ordering::Relaxed)), false),
                    (n(b.dead_lettered.load(Ordering::Relaxed)), false),
                    (pg::Datum::from(pending), false),
                    (text_datum(&last_error), last_error.is_empty()),
                    ts(b.last_connected_at.load(Ordering::Relaxed)),
                    ts(b.last_error_at.load(Ordering::Relaxed)),
                    (pg::Datum::from(if live { b.inflight.load(Ordering::Relaxed) as i32 } else { 0 }), false),
                    (pg::Datum::from(ring_bytes), false),
                    (oldest.unwrap_or(pg::Datum::from(0usize)), oldest.is_none()),
                ];
                let mut values: Vec<pg::Datum> = cols.iter().map(|c| c.0).collect();
                let mut nulls: Vec<bool> = cols.iter().map(|c| c.1).collect();
                // SQL 1.3 added messages_expired, 1.4 the outbox's size and limit: a database
                // still on an older version asks for fewer columns.
                let natts = (*(*rsinfo).setDesc).natts;
                if natts > 15 {
                    values.push(n(b.messages_expired.load(Ordering::Relaxed)));
                    nulls.push(false);
                }
                if natts > 16 {
                    let limit = crate::data::outbox_size::limit();
                    values.extend([pg::Datum::from(outbox_used), pg::Datum::from(limit.unwrap_or(0))]);
                    nulls.extend([false, limit.is_none()]);
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
