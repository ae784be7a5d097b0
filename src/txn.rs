//! What happens to published messages at COMMIT, ABORT, PREPARE and savepoint rollback.
//!
//! Contract: messages published inside a transaction reach the worker only if it commits; ROLLBACK
//! discards them, and ROLLBACK TO SAVEPOINT discards those published after the savepoint.
//!
//! Until then they wait in this backend's memory ([`Pending`]: one byte arena plus an index, so a
//! publish costs one copy and no per-message allocation). The hand-off to the ring is split so the
//! step that runs after the commit record is written cannot fail:
//! * `PRE_COMMIT` (still allowed to raise ERROR, which aborts the transaction): reserve ring space
//!   for all pending messages in one contiguous run, waiting up to `publish_timeout_ms` if the
//!   ring is full, and mark every record header in it RESERVED.
//! * `COMMIT` (must not fail): copy the messages into the reservation, mark them READY in order,
//!   wake the worker if it sleeps. Only memcpy and atomic stores.
//! * `ABORT` (including an error between PRE_COMMIT and COMMIT): mark the reservation CANCELLED so
//!   the worker skips it; drop the pending messages.
//! * `PRE_PREPARE` with pending messages: ERROR (two-phase commit is not supported by the hot path).
//!
//! Savepoints use sub-transaction ids, which grow monotonically inside a top-level transaction:
//! everything published since sub-transaction S began has an id >= S and forms a suffix of the
//! pending list. A small stack of marks (subid, position) finds that suffix on ABORT_SUB; on
//! COMMIT_SUB the child's marks collapse into one, so the stack stays as deep as the nesting.
//!
//! With `pg_mqtt_pub.transactional = off` a message skips all this and is made visible at once.

use crate::guard::{self, guard, Code, PgError};
use crate::gucs;
use crate::ring::{MessageRef, Ring};
use crate::shmem::{self, RING_LOCK};
use pgrx_pg_sys as pg;
use std::cell::UnsafeCell;
use std::time::{Duration, Instant};

struct PendingMsg {
    off: usize,
    topic_len: u32,
    payload_len: u32,
    broker: u16,
    qos: u8,
    retain: bool,
    nslots: u64,
}

struct Mark {
    subid: pg::SubTransactionId,
    msgs: usize,
    arena: usize,
    slots: u64,
}

#[derive(Default)]
struct Pending {
    arena: Vec<u8>,
    msgs: Vec<PendingMsg>,
    slots: u64,
    marks: Vec<Mark>,
    /// Start of the PRE_COMMIT reservation (covers `slots` slots).
    reserved: Option<u64>,
}

impl Pending {
    fn msg(&self, i: usize) -> MessageRef<'_> {
        let m = &self.msgs[i];
        let t = m.off + m.topic_len as usize;
        MessageRef {
            broker: m.broker,
            qos: m.qos,
            retain: m.retain,
            topic: &self.arena[m.off..t],
            payload: &self.arena[t..t + m.payload_len as usize],
        }
    }

    fn truncate(&mut self, msgs: usize, arena: usize, slots: u64) {
        self.msgs.truncate(msgs);
        self.arena.truncate(arena);
        self.slots = slots;
    }

    fn clear(&mut self) {
        // Give memory back after a big transaction; keep a small arena for the next one.
        if self.arena.capacity() > 1 << 20 {
            *self = Pending::default();
        } else {
            self.arena.clear();
            self.msgs.clear();
            self.marks.clear();
            self.slots = 0;
            self.reserved = None;
        }
    }
}

struct Cell(UnsafeCell<Option<Pending>>);
// SAFETY: a backend is single-threaded; only its main thread runs SQL functions and callbacks.
unsafe impl Sync for Cell {}
static PENDING: Cell = Cell(UnsafeCell::new(None));

fn pending() -> &'static mut Pending {
    // SAFETY: single-threaded (see Cell); no reference outlives one callback or function call.
    unsafe { (*PENDING.0.get()).get_or_insert_with(Pending::default) }
}

/// Register the transaction callbacks (from `_PG_init`; inherited by every backend).
pub fn register_callbacks() {
    // SAFETY: plain registration of static functions.
    unsafe {
        pg::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut());
        pg::RegisterSubXactCallback(Some(subxact_callback), std::ptr::null_mut());
    }
}

/// Publish one validated message: queue it for COMMIT, or send it now when not transactional.
pub fn publish(msg: MessageRef<'_>) {
    if !gucs::TRANSACTIONAL.get() {
        let n = msg.nslots();
        let pos = reserve_waiting(n);
        // SAFETY: [pos, pos+n) was just reserved by us.
        unsafe { shmem::ring().publish(pos, &msg) };
        shmem::wake_worker();
        return;
    }
    let p = pending();
    // SAFETY: plain read of transaction state.
    let subid = unsafe { pg::GetCurrentSubTransactionId() };
    if subid > 1 && p.marks.last().is_none_or(|m| subid > m.subid) {
        p.marks.push(Mark { subid, msgs: p.msgs.len(), arena: p.arena.len(), slots: p.slots });
    }
    let off = p.arena.len();
    p.arena.extend_from_slice(msg.topic);
    p.arena.extend_from_slice(msg.payload);
    let nslots = msg.nslots();
    p.slots += nslots;
    p.msgs.push(PendingMsg {
        off,
        topic_len: msg.topic.len() as u32,
        payload_len: msg.payload.len() as u32,
        broker: msg.broker,
        qos: msg.qos,
        retain: msg.retain,
        nslots,
    });
}

/// Reserve `n` slots, waiting up to `publish_timeout_ms` for the worker to make room.
fn reserve_waiting(n: u64) -> u64 {
    let ring = shmem::ring();
    if n > ring.capacity() {
        PgError::new(
            Code::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            "MQTT messages of this transaction do not fit in the shared ring",
        )
        .detail(format!("They need {} kB; the ring holds {} kB.", n * 512 / 1024, ring.capacity() * 512 / 1024))
        .hint("Raise pg_mqtt_pub.queue_size (needs a restart), or publish fewer or smaller messages per transaction.")
        .raise();
    }
    let timeout = Duration::from_millis(gucs::PUBLISH_TIMEOUT_MS.get() as u64);
    let start = Instant::now();
    loop {
        // SAFETY: try_reserve requires the ring lock, which with_lock holds.
        if let Some(pos) = shmem::with_lock(RING_LOCK, pg::LWLockMode::LW_EXCLUSIVE, || unsafe { ring.try_reserve(n) })
        {
            return pos;
        }
        if start.elapsed() >= timeout {
            let connected = crate::status::broker(0).connected.load(std::sync::atomic::Ordering::Relaxed);
            PgError::new(Code::ERRCODE_INSUFFICIENT_RESOURCES, "pg_mqtt_pub ring is full")
                .detail(format!(
                    "Waited {} ms for {} kB of ring space; the broker is {}.",
                    timeout.as_millis(),
                    n * 512 / 1024,
                    if connected { "connected but not keeping up" } else { "not connected" }
                ))
                .hint("Check SELECT * FROM mqtt_status(); raise pg_mqtt_pub.queue_size or pg_mqtt_pub.publish_timeout_ms.")
                .raise();
        }
        shmem::wake_worker();
        // SAFETY: waiting on our own latch with a short timeout; interrupts are checked after.
        unsafe {
            pg::WaitLatch(
                pg::MyLatch,
                (pg::WL_LATCH_SET | pg::WL_TIMEOUT | pg::WL_EXIT_ON_PM_DEATH) as i32,
                1,
                pg::PG_WAIT_EXTENSION,
            );
            pg::ResetLatch(pg::MyLatch);
        }
        guard::check_for_interrupts();
    }
}

fn pre_commit() {
    let p = pending();
    if p.msgs.is_empty() {
        return;
    }
    let start = reserve_waiting(p.slots);
    let ring = shmem::ring();
    let mut pos = start;
    for m in &p.msgs {
        // SAFETY: every record start inside our fresh reservation; the first one is already
        // RESERVED, the others must be before anything becomes READY (see ring.rs).
        unsafe { ring.mark_reserved(pos, m.nslots) };
        pos += m.nslots;
    }
    p.reserved = Some(start);
}

fn commit() {
    let p = pending();
    if let Some(start) = p.reserved {
        let ring: Ring = shmem::ring();
        let mut pos = start;
        for i in 0..p.msgs.len() {
            let m = p.msg(i);
            // SAFETY: the reservation made at PRE_COMMIT is ours; records are published in order.
            unsafe { ring.publish(pos, &m) };
            pos += m.nslots();
        }
        shmem::wake_worker();
    } else if !p.msgs.is_empty() {
        // Only reachable if something published after PRE_COMMIT ran; say so loudly.
        guard::log(
            guard::Level::WARNING,
            format!("pg_mqtt_pub: {} MQTT messages published after pre-commit were not sent", p.msgs.len()),
        );
    }
    p.clear();
}

fn abort() {
    let p = pending();
    if let Some(start) = p.reserved {
        // SAFETY: the whole reservation is ours and nothing in it was published.
        unsafe { shmem::ring().cancel(start, p.slots) };
        shmem::wake_worker();
    }
    p.clear();
}

unsafe extern "C-unwind" fn xact_callback(event: pg::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg::XactEvent::*;
    guard(|| match event {
        XACT_EVENT_PRE_COMMIT => pre_commit(),
        XACT_EVENT_COMMIT => commit(),
        XACT_EVENT_ABORT => abort(),
        XACT_EVENT_PRE_PREPARE if !pending().msgs.is_empty() => {
            PgError::new(
                Code::ERRCODE_FEATURE_NOT_SUPPORTED,
                "cannot PREPARE a transaction that has published MQTT messages",
            )
            .hint(
                "Publish outside the prepared transaction, or set pg_mqtt_pub.transactional = off for these messages.",
            )
            .raise();
        }
        _ => {}
    })
}

unsafe extern "C-unwind" fn subxact_callback(
    event: pg::SubXactEvent::Type,
    my_subid: pg::SubTransactionId,
    parent_subid: pg::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    use pg::SubXactEvent::*;
    guard(|| {
        let p = pending();
        match event {
            SUBXACT_EVENT_ABORT_SUB => {
                let mut cut = None;
                while p.marks.last().is_some_and(|m| m.subid >= my_subid) {
                    cut = p.marks.pop();
                }
                if let Some(m) = cut {
                    p.truncate(m.msgs, m.arena, m.slots);
                }
            }
            SUBXACT_EVENT_COMMIT_SUB => {
                // The child's messages now belong to the parent: fold all marks above the
                // parent into the earliest one, keeping its (child-range) subid.
                let mut first = None;
                while p.marks.last().is_some_and(|m| m.subid > parent_subid) {
                    first = p.marks.pop();
                }
                if let Some(m) = first {
                    if parent_subid > 1 {
                        p.marks.push(m);
                    }
                }
            }
            _ => {}
        }
    })
}
