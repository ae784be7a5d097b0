//! What happens to published messages at COMMIT, ABORT, PREPARE and savepoint rollback, and
//! which path (ring or outbox) each one takes.
//!
//! Contract: messages published inside a transaction reach a broker only if it commits; ROLLBACK
//! discards them, ROLLBACK TO SAVEPOINT discards those published after the savepoint. For one
//! session and one broker, messages are delivered in commit order (call order within a
//! transaction), whichever path they take.
//!
//! ## Where a message waits
//! In this backend's memory ([`Pending`]: one byte arena plus an index; one copy, no per-message
//! allocation) until `PRE_COMMIT`, whatever the broker's mode. There each broker's messages go
//! either to the ring (broker hot) or to the outbox (broker cold, `durable = on`, or no ring space
//! after `publish_timeout_ms`: a *spill*) — for the outbox in one SPI session, in order. Writing
//! cold messages one INSERT per call would cost an SPI connection per message; the rollback
//! semantics are the same either way (the rows are written in the transaction, before its commit
//! record). Past [`PENDING_LIMIT`] they are written early (below).
//!
//! ## The ring hand-off cannot fail after the commit record
//! `PRE_COMMIT` (may still ERROR, aborting the transaction): decide per broker and have ring
//! space *promised* (a count, ring.rs), **under the ring lock, together with reading the
//! brokers' modes**; write outbox rows. `COMMIT`: take the promised slots as one contiguous
//! reservation (under the lock: it cannot fail, the room was set aside), copy the messages in and
//! mark them READY. `ABORT`: give the promise back.
//!
//! Between PRE_COMMIT and COMMIT a transaction may wait as long as anyone likes (a lock taken by
//! PostgreSQL's own pre-commit steps, ON COMMIT actions, NOTIFY's queue lock, a synchronous
//! standby): it then holds only its promise, never a place in the ring, so the worker and
//! everybody else's messages pass it, and the rest of the ring stays usable. Its messages enter
//! the ring when it commits, in commit order (the order in which transactions become visible).
//!
//! ## Cold writers
//! A transaction that writes outbox rows for a broker registers itself in that broker's
//! `cold_writers` (under the ring lock, bumping `cold_epoch`) until it ends. A spill or a durable
//! write also turns a hot broker cold. The worker turns a broker hot again only under the ring
//! lock, with no cold writer, no registration since it found the outbox empty (the epoch; the
//! outbox is read *outside* the lock) — so no later hot message can overtake a cold one (ADR-001).
//!
//! ## Savepoints
//! Savepoint marks find what ABORT_SUB drops (pending.rs, unit-tested).
//!
//! ## Bounded memory
//! Past [`PENDING_LIMIT`] bytes the pending messages are written to the outbox (brokers turned
//! cold), provided all of them belong to the current sub-transaction or its committed children
//! (an outbox row written now would otherwise be removed by a rollback to a savepoint taken
//! after it was published).
//!
//! `PREPARE TRANSACTION`: pending messages are written to the outbox as part of the prepared
//! transaction and delivered only if it is COMMIT PREPARED.
//! `transactional = off`: the message is made visible at once (ring), or written to the outbox in
//! the current transaction when the broker is cold.

use crate::data::catalog::name_of as broker_name;
use crate::data::outbox::{self, NewRow, LANE_PUBLISHED};
use crate::data::outbox_size;
use crate::pg::guard::{self, guard, Code, PgError};
use crate::pg::gucs;
use crate::pure::backend_local::BackendLocal;
use crate::pure::ledger::Ledger;
use crate::pure::pending::Messages;
use crate::pure::ring::MessageRef;
use crate::shmem::{self, MAX_BROKERS, RING_LOCK};
use crate::shmem::{BrokerShared, Mode};
use pgrx_pg_sys as pg;
use std::cell::UnsafeCell;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Pending bytes a transaction keeps in memory before writing them to the outbox.
pub const PENDING_LIMIT: usize = 8 << 20;

/// A transaction may be promised at most this share of the ring (1/8: 4 MB of the default 32 MB);
/// more goes to the outbox at PRE_COMMIT. A promise is held for as long as its COMMIT waits, and
/// one that covered the whole ring would make every other commit wait `publish_timeout_ms` and
/// then spill, for as long as that transaction chose to wait.
const MAX_PROMISE_SHARE: u64 = 8;

#[derive(Default)]
struct Pending {
    /// The messages and their savepoint marks (pending.rs).
    msgs: Messages,
    /// Brokers whose `cold_writers` this transaction is counted in (bit per broker).
    cold_registered: u32,
    /// Ring slots promised at PRE_COMMIT, taken at COMMIT (0: none).
    promised: u64,
    /// Bytes this transaction wrote to the outbox, by subtransaction: reserved against
    /// `max_outbox_size` until it ends (outbox_size.rs), given back by a savepoint rollback.
    outbox: Ledger,
    /// Brokers whose messages go to the ring at COMMIT (bit per broker).
    hot_at_commit: u32,
    /// Next arena size at which a spill is considered.
    spill_check_at: usize,
    /// Message `i` of this transaction gets id sequence `first_id + i` (0: no ids) and commit
    /// time `at`: set where the messages leave for the ring or the outbox ([`Stamp`]).
    stamp: Stamp,
}

/// Ids and commit time for a batch of messages.
#[derive(Default, Clone, Copy)]
struct Stamp {
    first_id: u64,
    at: i64,
}

impl Stamp {
    /// Take `n` message ids (none with `pg_mqtt_pub.message_id = off`) and the time: one atomic
    /// add per transaction.
    fn take(n: usize) -> Stamp {
        let first_id = if gucs::MESSAGE_ID.get() {
            shmem::require_shared();
            shmem::directory().expect("preloaded").message_ids.fetch_add(n as u64, Ordering::Relaxed) + 1
        } else {
            0
        };
        // SAFETY: plain call.
        Stamp { first_id, at: unsafe { pg::GetCurrentTimestamp() } }
    }

    fn apply<'a>(&self, i: usize, m: MessageRef<'a>) -> MessageRef<'a> {
        m.stamped(if self.first_id == 0 { 0 } else { self.first_id + i as u64 }, self.at)
    }
}

impl Pending {
    fn clear_messages(&mut self) {
        self.msgs.clear();
    }

    fn reset(&mut self) {
        if self.msgs.capacity() > 1 << 20 {
            // give memory back after a big transaction
            *self = Pending::default();
        } else {
            self.clear_messages();
            self.cold_registered = 0;
            self.promised = 0;
            self.outbox = Ledger::default();
            self.hot_at_commit = 0;
            self.spill_check_at = 0;
            self.stamp = Stamp::default();
        }
    }

    /// Write messages (all, or those of one broker) to the outbox, in order; ERROR 53400 first if
    /// that would pass `max_outbox_size`.
    fn write_to_outbox(&mut self, only: Option<u16>) {
        let adding: usize = self
            .msgs
            .iter()
            .filter(|m| only.is_none_or(|b| m.broker == b))
            .map(|m| m.topic.len() + m.payload.len() + m.props.len())
            .sum();
        outbox_size::reserve(adding as i64, self.outbox.total());
        self.outbox.add(current_subid(), adding as i64);
        let names: Vec<Option<String>> = (0..MAX_BROKERS)
            .map(|b| {
                (self.msgs.count_for(b as u16) > 0 && only.is_none_or(|o| o as usize == b))
                    .then(|| broker_name(b as u16))
            })
            .collect();
        let mut rows = self
            .msgs
            .iter()
            .enumerate()
            .filter(|(_, m)| only.is_none_or(|b| m.broker == b))
            .map(|(i, m)| self.stamp.apply(i, m))
            .map(|m| NewRow::of(names[m.broker as usize].as_deref().unwrap_or("default"), &m, LANE_PUBLISHED));
        outbox::insert(&mut rows);
    }
}

static PENDING: BackendLocal<UnsafeCell<Option<Pending>>> = BackendLocal::new(UnsafeCell::new(None));

fn pending() -> &'static mut Pending {
    // SAFETY: main thread only (BackendLocal); no reference outlives one callback or function
    // call, and none of them re-enters another.
    unsafe { (*PENDING.get()).get_or_insert_with(Pending::default) }
}

fn broker_shared(b: u16) -> &'static BrokerShared {
    crate::shmem::broker(b as usize)
}

fn is_cold(b: u16) -> bool {
    broker_shared(b).is_cold()
}

/// Register this transaction as a cold writer of `b`, turning `b` cold first if `force`.
/// Returns whether `b` is cold (if not and not forced, the caller uses the ring instead).
/// Caller holds RING_LOCK.
fn register_cold_locked(p: &mut Pending, b: u16, force: bool) -> bool {
    let s = broker_shared(b);
    if !s.is_cold() {
        if !force {
            return false;
        }
        s.flip_head.store(shmem::ring().head(), Ordering::Release);
        s.set_mode(Mode::Cold);
    }
    if p.cold_registered & (1 << b) == 0 {
        s.cold_writers.fetch_add(1, Ordering::AcqRel);
        s.cold_epoch.fetch_add(1, Ordering::AcqRel);
        p.cold_registered |= 1 << b;
    }
    true
}

/// Every section under the ring lock checks first that the share is still this database's
/// (`current_is_mine`): then nothing inside can claim one (`shmem::broker` finds the cached share
/// valid), so the directory lock is never taken under a ring lock.
fn register_cold(p: &mut Pending, b: u16, force: bool) -> bool {
    loop {
        shmem::require_shared();
        let r = shmem::with_lock(RING_LOCK, pg::LWLockMode::LW_EXCLUSIVE, || {
            shmem::current_is_mine().then(|| register_cold_locked(p, b, force))
        });
        if let Some(cold) = r {
            return cold;
        }
    }
}

/// Drop this transaction's cold-writer registrations (transaction end).
fn unregister_cold(p: &mut Pending) {
    if p.cold_registered == 0 {
        return;
    }
    for b in 0..MAX_BROKERS as u16 {
        if p.cold_registered & (1 << b) != 0 {
            broker_shared(b).cold_writers.fetch_sub(1, Ordering::AcqRel);
        }
    }
    p.cold_registered = 0;
    if let Some(s) = shmem::shared() {
        s.outbox_dirty.store(true, Ordering::Release);
    }
    shmem::wake_worker(); // our rows are visible now, and the broker may go hot again
}

/// Register the transaction callbacks (from `_PG_init`; inherited by every backend).
pub fn register_callbacks() {
    // SAFETY: plain registration of static functions.
    unsafe {
        pg::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut());
        pg::RegisterSubXactCallback(Some(subxact_callback), std::ptr::null_mut());
    }
}

fn write_one(p: &mut Pending, m: &MessageRef<'_>) {
    outbox_size::reserve(message_bytes(m), p.outbox.total());
    p.outbox.add(current_subid(), message_bytes(m));
    let name = broker_name(m.broker);
    let mut row = std::iter::once(NewRow::of(&name, m, LANE_PUBLISHED));
    outbox::insert(&mut row);
}

fn current_subid() -> pg::SubTransactionId {
    // SAFETY: plain read of transaction state.
    unsafe { pg::GetCurrentSubTransactionId() }
}

/// What a message adds to the outbox's size (outbox_size.rs).
fn message_bytes(m: &MessageRef<'_>) -> i64 {
    (m.topic.len() + m.payload.len() + m.props.len()) as i64
}

/// Publish one validated message.
pub fn publish(msg: MessageRef<'_>) {
    let p = pending();
    let b = msg.broker;
    if !gucs::TRANSACTIONAL.get() {
        let msg = Stamp::take(1).apply(0, msg);
        if !gucs::DURABLE.get() && try_publish_now(&msg) {
            return;
        }
        register_cold(p, b, true);
        write_one(p, &msg);
        return;
    }
    require_room(p, &msg);
    if gucs::DURABLE.get() || is_cold(b) {
        // bound to the outbox (unless the broker is hot again by COMMIT): refused at once when
        // it is full, not only at COMMIT
        outbox_size::require_room(message_bytes(&msg), p.outbox.total());
    }
    let subid = current_subid();
    p.msgs.push(&msg, subid);
    if p.msgs.arena_len() > PENDING_LIMIT.max(p.spill_check_at) {
        spill_if_safe(p, subid);
    }
}

/// The hard memory bound of a transaction's pending messages. A big transaction spills to the
/// outbox long before it (`PENDING_LIMIT`), but messages published before a savepoint that is
/// still open, or inside an EXCEPTION block, cannot be spilled (a rollback to it must be able to
/// drop them): without a cap a loop could grow this memory until the allocator aborts the
/// backend, and with it the whole cluster. Past the cap the publishing call fails, before
/// anything is lost.
fn require_room(p: &Pending, msg: &MessageRef<'_>) {
    let held = p.msgs.held();
    let more = msg.topic.len() + msg.props.len() + msg.payload.len() + Messages::OVERHEAD;
    let cap = gucs::MAX_PENDING_MEMORY.get() as usize;
    if held + more > cap {
        PgError::new(
            Code::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            "pending MQTT messages of this transaction would exceed pg_mqtt_pub.max_pending_memory",
        )
        .detail(format!(
            "{} messages hold {held} bytes, this one needs {more} more; the limit is {cap} bytes.",
            p.msgs.len()
        ))
        .hint(
            "Messages published before an open savepoint or inside an EXCEPTION block stay in memory until the \
             transaction ends: publish fewer or smaller messages in such a transaction, or raise \
             pg_mqtt_pub.max_pending_memory.",
        )
        .raise()
    }
}

/// Memory bound: write everything pending to the outbox if no savepoint rollback could later
/// remove rows for messages published before that savepoint.
fn spill_if_safe(p: &mut Pending, current: pg::SubTransactionId) {
    if p.msgs.any_before(current) {
        p.spill_check_at = p.msgs.arena_len() * 2; // keep growing; look again later
        return;
    }
    for b in p.msgs.brokers() {
        register_cold(p, b, true);
    }
    // written before COMMIT, so their ids and time are taken now
    p.stamp = Stamp::take(p.msgs.len());
    p.write_to_outbox(None);
    p.clear_messages();
    p.spill_check_at = 0;
}

/// Non-transactional publish: straight into the ring if the broker is hot and there is room
/// within `publish_timeout_ms`. False means "use the outbox".
fn try_publish_now(msg: &MessageRef<'_>) -> bool {
    let n = msg.nslots();
    let ring = shmem::ring();
    if n > ring.capacity() {
        return false;
    }
    let start = Instant::now();
    let timeout = Duration::from_millis(gucs::PUBLISH_TIMEOUT_MS.get() as u64);
    loop {
        let got = shmem::with_lock(RING_LOCK, pg::LWLockMode::LW_EXCLUSIVE, || {
            // (a share given back meanwhile: the outbox path claims again, outside the lock)
            if !shmem::current_is_mine() || is_cold(msg.broker) {
                return Err(());
            }
            // SAFETY: under the ring lock.
            Ok(unsafe { ring.try_reserve(n) })
        });
        match got {
            Err(()) => return false,
            Ok(Some(pos)) => {
                // SAFETY: [pos, pos+n) is our fresh reservation.
                unsafe { ring.publish(pos, msg) };
                shmem::wake_worker();
                return true;
            }
            Ok(None) if start.elapsed() >= timeout => return false,
            Ok(None) => wait_for_space(),
        }
    }
}

fn wait_for_space() {
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

fn pre_commit() {
    let p = pending();
    if p.msgs.is_empty() {
        return;
    }
    shmem::require_shared();
    let mut ring = shmem::ring();
    let durable = gucs::DURABLE.get();
    let timeout = Duration::from_millis(gucs::PUBLISH_TIMEOUT_MS.get() as u64);
    let start = Instant::now();
    let brokers = p.msgs.brokers();
    p.stamp = Stamp::take(p.msgs.len());
    let mut spill = false;
    enum Step {
        Done,
        Full,
        TooBig,
        /// The database's share was given back meanwhile (directory.rs): claim again.
        Moved,
    }
    loop {
        // Decide every broker's path and reserve, atomically with respect to mode changes.
        let done = shmem::with_lock(RING_LOCK, pg::LWLockMode::LW_EXCLUSIVE, || {
            if !shmem::current_is_mine() {
                return Step::Moved;
            }
            let mut hot = 0u32;
            for &b in &brokers {
                if !register_cold_locked(p, b, durable || spill) {
                    hot |= 1 << b;
                }
            }
            let slots: u64 = p.msgs.iter().filter(|m| hot & (1 << m.broker) != 0).map(|m| m.nslots()).sum();
            if slots == 0 {
                p.hot_at_commit = 0;
                return Step::Done;
            }
            if slots > ring.capacity() / MAX_PROMISE_SHARE {
                return Step::TooBig;
            }
            // SAFETY: under the ring lock.
            if unsafe { ring.try_promise(slots) } {
                p.promised = slots;
                p.hot_at_commit = hot;
                Step::Done
            } else {
                Step::Full
            }
        });
        match done {
            Step::Done => break,
            // larger than a transaction may promise, or no room within publish_timeout_ms: spill
            Step::TooBig => spill = true,
            Step::Full if start.elapsed() >= timeout => spill = true,
            Step::Full => wait_for_space(),
            Step::Moved => {
                shmem::require_shared();
                ring = shmem::ring();
            }
        }
    }
    for &b in &brokers {
        if p.hot_at_commit & (1 << b) == 0 {
            p.write_to_outbox(Some(b));
        }
    }
}

fn commit() {
    let p = pending();
    if p.promised > 0 {
        let ring = shmem::ring();
        // SAFETY: under the ring lock; the slots were promised to us at PRE_COMMIT.
        let start =
            shmem::with_lock(RING_LOCK, pg::LWLockMode::LW_EXCLUSIVE, || unsafe { ring.take_promise(p.promised) });
        let hot = |m: &MessageRef<'_>| p.hot_at_commit & (1 << m.broker) != 0;
        let mut pos = start;
        for m in p.msgs.iter().filter(hot) {
            if pos != start {
                // SAFETY: a record start inside our fresh reservation: every header must be
                // RESERVED before any record becomes READY (ring.rs); the first already is.
                unsafe { ring.mark_reserved(pos, m.nslots(), 0) };
            }
            pos += m.nslots();
        }
        let mut pos = start;
        for (i, m) in p.msgs.iter().enumerate() {
            if p.hot_at_commit & (1 << m.broker) == 0 {
                continue;
            }
            let m = p.stamp.apply(i, m);
            // SAFETY: the reservation taken above is ours; records are published in order.
            unsafe { ring.publish(pos, &m) };
            pos += m.nslots();
        }
        shmem::wake_worker();
    }
    outbox_size::settle(p.outbox.take(), true);
    unregister_cold(p);
    p.reset();
}

fn abort() {
    let p = pending();
    if p.promised > 0 {
        // SAFETY: under the ring lock; the promise is ours and was not taken.
        shmem::with_lock(RING_LOCK, pg::LWLockMode::LW_EXCLUSIVE, || unsafe { shmem::ring().drop_promise(p.promised) });
    }
    outbox_size::settle(p.outbox.take(), false);
    unregister_cold(p);
    p.reset();
}

unsafe extern "C-unwind" fn xact_callback(event: pg::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg::XactEvent::*;
    guard(|| match event {
        XACT_EVENT_PRE_COMMIT => pre_commit(),
        XACT_EVENT_COMMIT => {
            crate::data::catalog::at_commit();
            crate::data::rights::at_commit();
            commit()
        }
        XACT_EVENT_ABORT => {
            crate::data::catalog::at_abort();
            crate::data::rights::at_abort();
            abort()
        }
        XACT_EVENT_PRE_PREPARE => {
            crate::data::rights::before_prepare();
            // The messages become part of the prepared transaction: delivered only if it is
            // COMMIT PREPARED. No mode change: the broker's worker finds them when they appear.
            let p = pending();
            if !p.msgs.is_empty() {
                // ids and the time message expiry counts from: PREPARE (the COMMIT PREPARED that
                // releases them runs later, in any session, without this backend's help)
                p.stamp = Stamp::take(p.msgs.len());
                p.write_to_outbox(None);
                p.clear_messages();
            }
        }
        XACT_EVENT_PREPARE => {
            let p = pending();
            // counted now: COMMIT PREPARED runs later, anywhere (a ROLLBACK PREPARED is
            // corrected by the worker's next measurement)
            outbox_size::settle(p.outbox.take(), true);
            unregister_cold(p);
            p.reset();
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
                crate::data::rights::at_sub_abort();
                p.msgs.abort_sub(my_subid);
                outbox_size::settle(p.outbox.abort_sub(my_subid), false);
            }
            SUBXACT_EVENT_COMMIT_SUB => {
                p.msgs.commit_sub(parent_subid);
                p.outbox.commit_sub(my_subid, parent_subid);
            }
            _ => {}
        }
    })
}
