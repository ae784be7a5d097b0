//! `mqtt_status()`: one row per broker, from its shared slot (shmem/slot.rs) and the outbox.

use crate::pg::fmgr::{text_datum, Args};
use crate::pg::guard::{guard, Code, PgError};
use crate::shmem;
use crate::shmem::BrokerShared;
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
                let backlog = crate::data::backlog::backlog(&name);
                let (pending, oldest) = (backlog.pending, backlog.oldest_age);
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
                // SQL 1.3 added messages_expired, 1.4 the outbox's size and limit, 1.5 the
                // current problem, the backlog's age and the latency: a database still on an
                // older version asks for fewer columns.
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
                if natts > 18 {
                    for (v, null) in now_columns(b, live, &host, &last_error, &backlog) {
                        values.push(v);
                        nulls.push(null);
                    }
                }
                // SQL 1.7: how often another node of the list took over (ADR-013).
                if natts > 29 {
                    values.push(n(b.failovers.load(Ordering::Relaxed)));
                    nulls.push(false);
                }
                crate::pg::fmgr::put_row(rsinfo, &mut values, &mut nulls);
            }
        }
        pg::Datum::from(0usize)
    })
}

/// The columns SQL 1.5 added: what is wrong now and since when, where the broker is connected,
/// the next attempt, what waits and how long, the latency, dead letters, `stats_reset`.
fn now_columns(
    b: &BrokerShared,
    live: bool,
    host: &str,
    last_error: &str,
    backlog: &crate::data::backlog::Backlog,
) -> [(pg::Datum, bool); 11] {
    let load = |a: &std::sync::atomic::AtomicI64| if live { a.load(Ordering::Relaxed) } else { 0 };
    let ts = |v: i64| (pg::Datum::from(v), v == 0);
    let connected = live && b.connected.load(Ordering::Acquire);
    let problem = if live { b.problem(last_error) } else { Some("not started yet".into()) };
    let node = connected.then(|| match b.node() {
        n if n.is_empty() => format!("{host}:{}", b.port.load(Ordering::Relaxed)),
        n => n,
    });
    let oldest = [backlog.oldest_at.unwrap_or(0), load(&b.oldest_inflight_at)].into_iter().filter(|&t| t != 0).min();
    let ms = |us: i64| (pg::Datum::from((us as f64 / 1000.0).to_bits() as i64), us < 0);
    [
        problem.as_deref().map_or((pg::Datum::from(0usize), true), |p| (text_datum(p), false)),
        ts(if connected { 0 } else { load(&b.problem_since) }),
        node.as_deref().map_or((pg::Datum::from(0usize), true), |n| (text_datum(n), false)),
        ts(if connected { load(&b.last_connected_at) } else { 0 }),
        ts(if connected { 0 } else { load(&b.next_attempt_at) }),
        (pg::Datum::from(load_u(&b.ring_waiting, live)), false),
        oldest.map_or((pg::Datum::from(0usize), true), |at| (interval_since(at), false)),
        ms(if live { b.latency_p50_us.load(Ordering::Relaxed) } else { -1 }),
        ms(if live { b.latency_p99_us.load(Ordering::Relaxed) } else { -1 }),
        (pg::Datum::from(backlog.dead_letters), false),
        ts(load(&b.stats_reset)),
    ]
}

fn load_u(a: &std::sync::atomic::AtomicU64, live: bool) -> i64 {
    if live {
        a.load(Ordering::Relaxed) as i64
    } else {
        0
    }
}

/// `now() - at` as an interval datum (in the current memory context).
pub(crate) fn interval_since(at: i64) -> pg::Datum {
    // SAFETY: GetCurrentTransactionStartTimestamp is what now() returns; the Interval is
    // palloc'd in the current (the function's) memory context and fully initialised.
    unsafe {
        let i = pg::palloc(std::mem::size_of::<pg::Interval>()) as *mut pg::Interval;
        (*i).time = (pg::GetCurrentTransactionStartTimestamp() - at).max(0);
        (*i).day = 0;
        (*i).month = 0;
        pg::Datum::from(i)
    }
}

/// The brokers `broker` names (NULL: all of them) whose slot the worker holds, as (name, slot).
/// A name that is not a broker is an error (42704), like everywhere else.
fn chosen(broker: Option<&[u8]>) -> Vec<(String, &'static BrokerShared)> {
    let s = crate::shmem::require_shared();
    let listed = crate::data::catalog::listed();
    let want = broker.map(|b| String::from_utf8_lossy(b).into_owned());
    if let Some(w) = &want {
        if !listed.iter().any(|l| &l.name == w) {
            PgError::new(
                Code::ERRCODE_UNDEFINED_OBJECT,
                format!("MQTT broker {} does not exist", crate::pure::topic::quoted(w)),
            )
            .hint("SELECT broker_name FROM mqtt_status() lists the brokers; pass NULL for all of them.")
            .raise();
        }
    }
    listed
        .into_iter()
        .filter(|l| want.as_ref().is_none_or(|w| &l.name == w))
        .filter_map(|l| {
            let b = s.brokers().get(l.slot)?;
            let held = b.in_use.load(Ordering::Acquire) && b.text().0 == l.name;
            (l.slot == 0 || held).then_some((l.name, b))
        })
        .collect()
}

crate::pg_finfo!(pg_finfo_mqtt_reconnect);

/// `mqtt_pub.mqtt_reconnect(broker DEFAULT NULL)`: a broker waiting to reconnect tries now, and
/// its backoff starts over. Returns how many brokers were asked (a connected broker is asked
/// too: only its backoff is reset).
#[no_mangle]
pub unsafe extern "C-unwind" fn mqtt_reconnect(fcinfo: pg::FunctionCallInfo) -> pg::Datum {
    guard(|| {
        // SAFETY: fcinfo is valid for this call.
        let args = unsafe { Args::new(fcinfo) };
        let brokers = chosen(args.opt_bytes(0));
        for (_, b) in &brokers {
            b.reconnect_requested.store(true, Ordering::Release);
        }
        crate::shmem::wake_worker_always();
        pg::Datum::from(brokers.len() as i32)
    })
}

crate::pg_finfo!(pg_finfo_mqtt_stats_reset);

/// `mqtt_pub.mqtt_stats_reset(broker DEFAULT NULL)`: the counters and the latency of a broker
/// (NULL: every broker) start from zero; `mqtt_status().stats_reset` says since when.
#[no_mangle]
pub unsafe extern "C-unwind" fn mqtt_stats_reset(fcinfo: pg::FunctionCallInfo) -> pg::Datum {
    guard(|| {
        // SAFETY: fcinfo is valid for this call.
        let args = unsafe { Args::new(fcinfo) };
        // SAFETY: plain call.
        let at = unsafe { pg::GetCurrentTimestamp() };
        for (_, b) in chosen(args.opt_bytes(0)) {
            b.reset_stats_at(at);
        }
        pg::Datum::from(at)
    })
}
