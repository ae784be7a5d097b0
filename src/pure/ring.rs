//! The shared-memory ring that carries committed messages from backends to the worker.
//!
//! Pure memory protocol, no PostgreSQL symbols (the lock is taken by the caller, see `shmem.rs`),
//! so `cargo test` exercises it with many threads standing in for many backends.
//!
//! ## Layout
//! The ring is `nslots` slots of [`SLOT`] = 512 bytes (`nslots` = `pg_mqtt_pub.queue_size`, a power
//! of two, so a slot position maps to memory with a mask). A message is one *record*: a
//! [`RecordHeader`] followed by the topic, a NUL, the MQTT 5 properties (props.rs) and the
//! payload, occupying as many consecutive
//! slots as it needs (`slots_for`). A small message (the common trigger case) takes one slot, so
//! `queue_size` is also "how many small messages fit"; a 256 kB payload takes 513 slots. Records
//! start on a slot boundary, so a header never straddles the end of the ring; a record's body may
//! wrap around the end and is then copied in two pieces.
//!
//! ## Who touches what
//! * `head` (next slot to hand out) is advanced only by producers, **under the ring LWLock**
//!   (`try_reserve`, `take_promise`). The first header of a fresh reservation is set to
//!   `RESERVED` before `head` moves, so the consumer can never mistake stale bytes for a record.
//! * `promised` counts slots that committing transactions were promised at PRE_COMMIT and have
//!   not taken yet (`try_promise`, then `take_promise` at COMMIT or `drop_promise` at ABORT; all
//!   under the lock). Free space is `nslots - (head - tail) - promised`, so a promise can always be
//!   taken. A transaction that waits between PRE_COMMIT and COMMIT (for a lock, a synchronous
//!   standby) holds only this count, never a place in the ring: the consumer and `tail` pass on,
//!   and the space behind it stays usable.
//! * A reservation belongs to its producer until it publishes each record with a release store of
//!   `READY`. No lock is needed for that: nobody else writes those slots. (A reservation is taken
//!   at COMMIT, after which nothing aborts: an aborting transaction gives back a promise instead,
//!   so no record is ever cancelled.)
//! * `tail` is advanced only by the single consumer (the worker), once the records before it are
//!   delivered (acknowledged, for QoS 1/2): the worker scans ahead with its own cursor
//!   (`peek_at`). Producers read `tail` to compute free space; a stale value only under-estimates
//!   it.
//! * Records become visible in the order they were reserved, which for one session is its commit
//!   order. The consumer waits at a `RESERVED` record, but a *whole* reservation whose transaction
//!   stays between PRE_COMMIT and COMMIT (a commit waiting for a synchronous standby) must not hold
//!   up everybody else: a reservation's first header carries `run`, the slots of the whole
//!   reservation, so the consumer can step over it and come back later ([`Ring::run_state`]).
//!   Records inside a reservation have `run = 0`; the consumer never steps over one of those (its
//!   transaction is in COMMIT, copying: a matter of microseconds, and stepping over it would
//!   reorder one transaction's messages).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Bytes per slot.
pub const SLOT: usize = 512;

/// Record states (first word of the header).
pub const STATE_RESERVED: u32 = 0x5245_5356; // "RESV"
pub const STATE_READY: u32 = 0x5245_4459; // "REDY"

/// Control block, lives in shared memory next to the slots.
#[repr(C)]
pub struct RingControl {
    /// Next slot position to reserve (monotonic, never wraps in practice: 2^64 slots).
    pub head: AtomicU64,
    /// First slot position not yet released by the consumer (monotonic).
    pub tail: AtomicU64,
    /// Capacity in slots (power of two).
    pub nslots: u64,
    /// Slots promised to committing transactions, not taken yet (see the module comment).
    pub promised: AtomicU64,
}

/// Header at the start of every record.
#[repr(C)]
pub struct RecordHeader {
    pub state: AtomicU32,
    /// Slots this record occupies.
    pub nslots: u32,
    pub topic_len: u32,
    pub payload_len: u32,
    pub props_len: u32,
    pub broker: u16,
    pub qos: u8,
    pub retain: u8,
    /// Slots of the whole reservation on its first record while RESERVED; 0 on the others.
    /// Atomic because the producer rewrites it (same value) while the consumer may read it.
    pub run: AtomicU32,
    /// The message id's sequence number (0: none), assigned at commit.
    pub id: u64,
    /// When its transaction committed (PostgreSQL timestamp, µs): message expiry counts from it.
    pub at: i64,
}

pub const HEADER: usize = std::mem::size_of::<RecordHeader>();

/// Slots a message with this topic, properties and payload needs.
pub fn slots_for(topic_len: usize, props_len: usize, payload_len: usize) -> u64 {
    let bytes = HEADER + topic_len + 1 + props_len + payload_len;
    bytes.div_ceil(SLOT) as u64
}

/// Shared-memory bytes needed for a ring of `nslots` slots (control block + slots).
pub fn shmem_size(nslots: u64) -> usize {
    std::mem::size_of::<RingControl>().next_multiple_of(SLOT) + nslots as usize * SLOT
}

pub fn is_power_of_two(n: i64) -> bool {
    n > 0 && (n & (n - 1)) == 0
}

/// The largest power of two not above `n` (0 for 0): a database's share of `queue_size`.
pub fn floor_power_of_two(n: u64) -> u64 {
    if n == 0 {
        0
    } else {
        1 << (63 - n.leading_zeros())
    }
}

/// A message as a producer hands it to the ring.
#[derive(Clone, Copy, Debug)]
pub struct MessageRef<'a> {
    pub broker: u16,
    pub qos: u8,
    pub retain: bool,
    pub topic: &'a [u8],
    /// MQTT 5 properties, encoded (props.rs); empty for none.
    pub props: &'a [u8],
    pub payload: &'a [u8],
    /// Message id sequence (0: none) and commit time, set at commit ([`MessageRef::stamped`]).
    pub id: u64,
    pub at: i64,
}

impl<'a> MessageRef<'a> {
    /// A message not committed yet (no id, no commit time).
    pub fn new(broker: u16, qos: u8, retain: bool, topic: &'a [u8], props: &'a [u8], payload: &'a [u8]) -> Self {
        MessageRef { broker, qos, retain, topic, props, payload, id: 0, at: 0 }
    }

    /// The same message with its id and commit time.
    pub fn stamped(self, id: u64, at: i64) -> Self {
        MessageRef { id, at, ..self }
    }

    pub fn nslots(&self) -> u64 {
        slots_for(self.topic.len(), self.props.len(), self.payload.len())
    }
}

/// Where a record lies in the ring: its first slot's position and how many slots it takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span {
    pub pos: u64,
    pub nslots: u64,
}

/// What the consumer finds at the tail.
pub enum Peek<'a> {
    Empty,
    /// A producer holds a reservation here that is not yet published. `run` > 0: the first
    /// record of a reservation of that many slots, none of it published yet; 0: a later record of
    /// a reservation whose transaction is publishing it right now.
    Reserved {
        run: u64,
    },
    Ready(RecordView<'a>),
}

/// A reservation the consumer stepped over, seen again.
#[derive(Debug, PartialEq)]
pub enum RunState {
    /// Not published yet (or being published right now).
    Waiting,
    /// Every record is published: where each lies, in order.
    Ready(Vec<Span>),
}

/// A ready record. `topic_nul` is the topic followed by its NUL (what libmosquitto wants).
pub struct RecordView<'a> {
    pub nslots: u64,
    pub broker: u16,
    pub qos: u8,
    pub retain: bool,
    pub topic_nul: &'a [u8],
    pub props: &'a [u8],
    pub payload: &'a [u8],
    pub id: u64,
    pub at: i64,
}

impl RecordView<'_> {
    pub fn topic(&self) -> &[u8] {
        &self.topic_nul[..self.topic_nul.len() - 1]
    }

    /// The record as a message (borrowing the ring's bytes).
    pub fn message(&self) -> MessageRef<'_> {
        MessageRef {
            broker: self.broker,
            qos: self.qos,
            retain: self.retain,
            topic: self.topic(),
            props: self.props,
            payload: self.payload,
            id: self.id,
            at: self.at,
        }
    }
}

/// A handle on a ring: a control block and its slots. Copyable; all methods are `unsafe`
/// because their correctness depends on the caller's role (see the module comment).
#[derive(Clone, Copy)]
pub struct Ring {
    ctl: *const RingControl,
    data: *mut u8,
}

// SAFETY: the ring is designed for concurrent use from many processes/threads; every shared word
// is atomic and the remaining accesses are partitioned by ownership as the module comment says.
unsafe impl Send for Ring {}
unsafe impl Sync for Ring {}

impl Ring {
    /// Initialise a ring in `mem` (at least `shmem_size(nslots)` bytes, 8-byte aligned).
    ///
    /// # Safety
    /// `mem` must be valid for writes of `shmem_size(nslots)` bytes and not in use.
    pub unsafe fn init(mem: *mut u8, nslots: u64) -> Ring {
        assert!(is_power_of_two(nslots as i64));
        let ctl = mem as *mut RingControl;
        // SAFETY: caller guarantees `mem` is ours and big enough.
        unsafe {
            ctl.write(RingControl {
                head: AtomicU64::new(0),
                tail: AtomicU64::new(0),
                nslots,
                promised: AtomicU64::new(0),
            });
            Ring::attach(mem)
        }
    }

    /// Attach to a ring initialised by `init` (in this or another process).
    ///
    /// # Safety
    /// `mem` must point at a ring set up by `init`.
    pub unsafe fn attach(mem: *mut u8) -> Ring {
        let off = std::mem::size_of::<RingControl>().next_multiple_of(SLOT);
        // SAFETY: the slots start right after the (slot-aligned) control block.
        Ring { ctl: mem as *const RingControl, data: unsafe { mem.add(off) } }
    }

    fn ctl(&self) -> &RingControl {
        // SAFETY: `ctl` points at a live control block for the lifetime of the mapping.
        unsafe { &*self.ctl }
    }

    pub fn capacity(&self) -> u64 {
        self.ctl().nslots
    }

    /// Slots currently reserved or unconsumed.
    pub fn used_slots(&self) -> u64 {
        let c = self.ctl();
        c.head.load(Ordering::Acquire).saturating_sub(c.tail.load(Ordering::Acquire))
    }

    fn header(&self, pos: u64) -> *mut RecordHeader {
        let idx = (pos & (self.capacity() - 1)) as usize;
        // SAFETY: idx < nslots, so the header lies inside the slot area.
        unsafe { self.data.add(idx * SLOT) as *mut RecordHeader }
    }

    /// Is there room for `n` more slots, counting what is promised?
    fn has_room(&self, n: u64) -> bool {
        let c = self.ctl();
        let used = c.head.load(Ordering::Relaxed) - c.tail.load(Ordering::Acquire);
        n > 0 && used + c.promised.load(Ordering::Relaxed) + n <= c.nslots
    }

    /// Promise `n` slots to a committing transaction (PRE_COMMIT), or false if they are not free.
    /// Nothing in the ring changes: the slots are taken at COMMIT ([`Ring::take_promise`]).
    ///
    /// # Safety
    /// The caller holds the ring lock.
    pub unsafe fn try_promise(&self, n: u64) -> bool {
        if !self.has_room(n) {
            return false;
        }
        self.ctl().promised.fetch_add(n, Ordering::Relaxed);
        true
    }

    /// Take `n` promised slots as a reservation (COMMIT); never fails (the room was set aside).
    ///
    /// # Safety
    /// The caller holds the ring lock and was promised `n` slots it has not taken or dropped.
    pub unsafe fn take_promise(&self, n: u64) -> u64 {
        let c = self.ctl();
        c.promised.fetch_sub(n, Ordering::Relaxed);
        let head = c.head.load(Ordering::Relaxed);
        debug_assert!(head - c.tail.load(Ordering::Acquire) + n <= c.nslots);
        // SAFETY: slots [head, head+n) are free: they were counted as promised until now.
        unsafe { self.mark_reserved(head, n, n) };
        c.head.store(head + n, Ordering::Release);
        head
    }

    /// Give a promise back (the transaction aborted after PRE_COMMIT).
    ///
    /// # Safety
    /// The caller holds the ring lock and was promised `n` slots it has not taken or dropped.
    pub unsafe fn drop_promise(&self, n: u64) {
        self.ctl().promised.fetch_sub(n, Ordering::Relaxed);
    }

    /// Slots promised and not taken yet.
    pub fn promised_slots(&self) -> u64 {
        self.ctl().promised.load(Ordering::Relaxed)
    }

    /// Reserve `n` consecutive slots, or `None` if they are not free.
    ///
    /// # Safety
    /// The caller holds the ring lock (producers are serialised here).
    pub unsafe fn try_reserve(&self, n: u64) -> Option<u64> {
        let c = self.ctl();
        let head = c.head.load(Ordering::Relaxed);
        if !self.has_room(n) {
            return None;
        }
        // SAFETY: slots [head, head+n) are free (checked above) and now ours.
        unsafe { self.mark_reserved(head, n, n) };
        c.head.store(head + n, Ordering::Release);
        Some(head)
    }

    /// Set the header at `pos` to RESERVED. Used for every record of a multi-record reservation
    /// before any of them is published, so the consumer never reads a stale header. `run` is the
    /// whole reservation's size for its first record (see the module comment), 0 for the others.
    ///
    /// # Safety
    /// `pos` is the start of a record inside a reservation owned by the caller.
    pub unsafe fn mark_reserved(&self, pos: u64, nslots: u64, run: u64) {
        let h = self.header(pos);
        // SAFETY: we own this slot (reservation); the state word is atomic for the consumer.
        unsafe {
            (*h).nslots = nslots as u32;
            (*h).run.store(run as u32, Ordering::Relaxed);
            (*h).state.store(STATE_RESERVED, Ordering::Release);
        }
    }

    /// Copy a message into its reserved slots starting at `pos` and publish it (READY).
    ///
    /// # Safety
    /// `[pos, pos + msg.nslots())` is part of a reservation owned by the caller, and its header
    /// is already RESERVED.
    pub unsafe fn publish(&self, pos: u64, msg: &MessageRef<'_>) {
        let h = self.header(pos);
        let body = pos * SLOT as u64 + HEADER as u64;
        // SAFETY: the slots are ours until the READY store below hands them to the consumer.
        unsafe {
            (*h).nslots = msg.nslots() as u32;
            (*h).topic_len = msg.topic.len() as u32;
            (*h).payload_len = msg.payload.len() as u32;
            (*h).props_len = msg.props.len() as u32;
            (*h).broker = msg.broker;
            (*h).qos = msg.qos;
            (*h).retain = msg.retain as u8;
            (*h).id = msg.id;
            (*h).at = msg.at;
            let mut at = body;
            for piece in [msg.topic, &[0], msg.props, msg.payload] {
                self.copy_in(at, piece);
                at += piece.len() as u64;
            }
            (*h).state.store(STATE_READY, Ordering::Release);
        }
    }

    unsafe fn copy_in(&self, logical: u64, src: &[u8]) {
        let total = (self.capacity() as usize) * SLOT;
        let off = (logical % total as u64) as usize;
        let first = src.len().min(total - off);
        // SAFETY: both pieces lie inside the slot area; the caller owns these bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.data.add(off), first);
            std::ptr::copy_nonoverlapping(src.as_ptr().add(first), self.data, src.len() - first);
        }
    }

    /// First slot not yet released.
    pub fn tail(&self) -> u64 {
        self.ctl().tail.load(Ordering::Acquire)
    }

    /// Next slot a producer will reserve. Read under the ring lock to get a stable boundary.
    pub fn head(&self) -> u64 {
        self.ctl().head.load(Ordering::Acquire)
    }

    /// Look at the record at `pos`, a record boundary between the tail and the head: the
    /// consumer scans ahead of the tail and releases records only once they are delivered.
    ///
    /// # Safety
    /// Only the single consumer may call this, with `tail <= pos` on a record boundary; the view
    /// is valid until the record is released.
    pub unsafe fn peek_at<'a>(&'a self, pos: u64, scratch: &'a mut Vec<u8>) -> Peek<'a> {
        let c = self.ctl();
        if pos == c.head.load(Ordering::Acquire) {
            return Peek::Empty;
        }
        let h = self.header(pos);
        // SAFETY: pos < head, so a header was written there before head moved (Acquire above);
        // fields other than `state` are read only after the Acquire load of READY.
        unsafe {
            match (*h).state.load(Ordering::Acquire) {
                STATE_READY => {}
                _ => return Peek::Reserved { run: (*h).run.load(Ordering::Relaxed) as u64 },
            }
            let tl = (*h).topic_len as usize;
            let pl = (*h).payload_len as usize;
            let xl = (*h).props_len as usize;
            let len = tl + 1 + xl + pl;
            let total = (self.capacity() as usize) * SLOT;
            let off = ((pos * SLOT as u64 + HEADER as u64) % total as u64) as usize;
            let bytes: &[u8] = if off + len <= total {
                std::slice::from_raw_parts(self.data.add(off), len)
            } else {
                scratch.clear();
                let first = total - off;
                scratch.extend_from_slice(std::slice::from_raw_parts(self.data.add(off), first));
                scratch.extend_from_slice(std::slice::from_raw_parts(self.data, len - first));
                &scratch[..]
            };
            Peek::Ready(RecordView {
                nslots: (*h).nslots as u64,
                broker: (*h).broker,
                qos: (*h).qos,
                retain: (*h).retain != 0,
                topic_nul: &bytes[..tl + 1],
                props: &bytes[tl + 1..tl + 1 + xl],
                payload: &bytes[tl + 1 + xl..],
                id: (*h).id,
                at: (*h).at,
            })
        }
    }

    /// Consumer: what became of the reservation of `run` slots at `start` that it stepped over.
    ///
    /// # Safety
    /// Only the single consumer may call this, for a reservation it found as
    /// `Peek::Reserved { run }` with `run > 0` and has not released.
    pub unsafe fn run_state(&self, start: u64, run: u64) -> RunState {
        let mut records = Vec::new();
        let mut pos = start;
        while pos < start + run {
            let h = self.header(pos);
            // SAFETY: every record header of the reservation was marked RESERVED before the
            // first one was published (Acquire on the state orders the rest).
            unsafe {
                match (*h).state.load(Ordering::Acquire) {
                    STATE_READY => {}
                    _ => return RunState::Waiting,
                }
                let n = (*h).nslots as u64;
                records.push(Span { pos, nslots: n });
                pos += n;
            }
        }
        RunState::Ready(records)
    }

    /// Consumer: every record before `pos` is done; free their slots.
    ///
    /// # Safety
    /// Only the single consumer may call this, with `tail <= pos <= head` on a record boundary.
    pub unsafe fn release_to(&self, pos: u64) {
        self.ctl().tail.store(pos, Ordering::Release);
    }

    /// Empty the ring, whatever it holds (a dropped database's share being given back).
    ///
    /// # Safety
    /// Nobody may produce into or consume from the ring meanwhile (the caller holds the lock
    /// producers reserve under, and the consumer is gone).
    pub unsafe fn clear(&self) {
        let c = self.ctl();
        c.head.store(0, Ordering::Release);
        c.tail.store(0, Ordering::Release);
        c.promised.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    struct TestRing {
        _mem: Vec<u64>,
        ring: Ring,
    }

    fn ring(nslots: u64) -> TestRing {
        let mut mem = vec![0u64; shmem_size(nslots) / 8 + 1];
        // SAFETY: freshly allocated, big enough, 8-byte aligned.
        let ring = unsafe { Ring::init(mem.as_mut_ptr() as *mut u8, nslots) };
        TestRing { _mem: mem, ring }
    }

    fn msg<'a>(topic: &'a [u8], payload: &'a [u8]) -> MessageRef<'a> {
        MessageRef::new(0, 1, false, topic, b"", payload)
    }

    fn take(r: &Ring) -> Option<(Vec<u8>, Vec<u8>)> {
        let mut scratch = Vec::new();
        // SAFETY: single consumer in these tests.
        match unsafe { r.peek_at(r.tail(), &mut scratch) } {
            Peek::Empty | Peek::Reserved { .. } => None,
            Peek::Ready(v) => {
                let out = (v.topic().to_vec(), v.payload.to_vec());
                let n = v.nslots;
                unsafe { r.release_to(r.tail() + n) };
                Some(out)
            }
        }
    }

    #[test]
    fn properties_id_and_commit_time_travel_across_the_wrap() {
        let t = ring(4);
        let r = &t.ring;
        let mut scratch = Vec::new();
        let props = vec![7u8; 300];
        let payload = vec![9u8; 500];
        unsafe {
            // fill 3 slots so that the next record wraps around the end
            let filler = vec![0u8; 2 * SLOT];
            let f = msg(b"f", &filler);
            let pos = r.try_reserve(f.nslots()).unwrap();
            r.publish(pos, &f);
            r.release_to(pos + f.nslots());
            let m = MessageRef::new(3, 2, true, b"a/b", &props, &payload).stamped(42, -5);
            let pos = r.try_reserve(m.nslots()).unwrap();
            r.publish(pos, &m);
            let Peek::Ready(v) = r.peek_at(pos, &mut scratch) else { panic!("not ready") };
            assert_eq!((v.broker, v.qos, v.retain, v.topic(), v.id, v.at), (3, 2, true, &b"a/b"[..], 42, -5));
            assert_eq!((v.props, v.payload), (&props[..], &payload[..]));
        }
    }

    #[test]
    fn scan_ahead_then_release() {
        let t = ring(8);
        let r = &t.ring;
        let mut scratch = Vec::new();
        unsafe {
            for p in [b"1", b"2", b"3"] {
                let m = msg(b"t", p);
                let pos = r.try_reserve(m.nslots()).unwrap();
                r.publish(pos, &m);
            }
            let mut cur = r.tail();
            let mut seen = Vec::new();
            while let Peek::Ready(v) = r.peek_at(cur, &mut scratch) {
                seen.push(v.payload.to_vec());
                cur += v.nslots;
            }
            assert_eq!(seen, vec![b"1".to_vec(), b"2".to_vec(), b"3".to_vec()]);
            assert_eq!(r.used_slots(), 3, "nothing released while unacknowledged");
            r.release_to(cur - 1);
            assert_eq!(r.used_slots(), 1);
            assert!(matches!(r.peek_at(r.tail(), &mut scratch), Peek::Ready(v) if v.payload == b"3"));
            r.release_to(cur);
            assert_eq!(r.used_slots(), 0);
        }
    }

    #[test]
    fn a_promise_holds_room_but_no_place() {
        let t = ring(8);
        let r = &t.ring;
        unsafe {
            assert!(r.try_promise(3), "a transaction at PRE_COMMIT");
            assert!(!r.try_promise(6) && r.try_reserve(6).is_none(), "its room is set aside");
            // others commit and are consumed past it, round and round: the tail moves on
            for round in 0..10u8 {
                for p in [[round; 1], [round + 100; 1]] {
                    let m = msg(b"t", &p);
                    let pos = r.try_reserve(m.nslots()).unwrap();
                    r.publish(pos, &m);
                }
                assert_eq!(take(r).unwrap().1, vec![round]);
                assert_eq!(take(r).unwrap().1, vec![round + 100]);
            }
            assert_eq!((r.used_slots(), r.promised_slots()), (0, 3));
            // filled to the brim except the promise: the promise can still be taken
            for _ in 0..5 {
                let m = msg(b"t", b"f");
                let pos = r.try_reserve(1).unwrap();
                r.publish(pos, &m);
            }
            assert!(r.try_reserve(1).is_none());
            let at = r.take_promise(3);
            assert_eq!((r.used_slots(), r.promised_slots()), (8, 0));
            let m = msg(b"late", b"x");
            r.mark_reserved(at + 1, 1, 0);
            r.mark_reserved(at + 2, 1, 0);
            for i in 0..3 {
                r.publish(at + i, &m);
            }
            for _ in 0..5 {
                assert_eq!(take(r).unwrap().1, b"f".to_vec());
            }
            for _ in 0..3 {
                assert_eq!(take(r).unwrap().0, b"late".to_vec(), "after those committed before it");
            }
            // an aborted transaction gives its promise back
            assert!(r.try_promise(8));
            assert!(r.try_reserve(1).is_none());
            r.drop_promise(8);
            assert!(r.try_reserve(8).is_some());
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(HEADER, 48);
        assert_eq!(slots_for(10, 0, 100), 1);
        assert_eq!(slots_for(0, 0, SLOT - HEADER - 1), 1);
        assert_eq!(slots_for(0, 0, SLOT - HEADER), 2);
        assert_eq!(slots_for(10, 0, 256 * 1024), 513);
        // default settings: 65536 slots = 32 MiB of slots, under the 64 MB budget
        assert!(shmem_size(65536) <= 33 * 1024 * 1024);
        assert!(is_power_of_two(65536) && !is_power_of_two(1000) && !is_power_of_two(0));
    }

    #[test]
    fn fifo_with_wraparound_and_full() {
        let t = ring(8);
        let r = &t.ring;
        let big = vec![7u8; 3 * SLOT - HEADER - 3]; // 3 slots with a 2-byte topic
        for round in 0..20u8 {
            let p = [round; 5];
            let m1 = msg(b"ab", &big);
            let m2 = msg(b"t/1", &p);
            unsafe {
                let a = r.try_reserve(m1.nslots()).unwrap();
                r.publish(a, &m1);
                let b = r.try_reserve(m2.nslots()).unwrap();
                r.publish(b, &m2);
                // 4 of 8 used: a 5-slot message does not fit
                assert!(r.try_reserve(5).is_none());
            }
            assert_eq!(take(r).unwrap(), (b"ab".to_vec(), big.clone()));
            assert_eq!(take(r).unwrap(), (b"t/1".to_vec(), p.to_vec()));
            assert!(take(r).is_none());
        }
    }

    #[test]
    fn a_reservation_blocks_until_published() {
        let t = ring(16);
        let r = &t.ring;
        let m = msg(b"x", b"1");
        unsafe {
            let a = r.try_reserve(3).unwrap(); // a three-message transaction, not yet committed
            r.mark_reserved(a + 1, 1, 0);
            r.mark_reserved(a + 2, 1, 0);
            let b = r.try_reserve(1).unwrap();
            r.publish(b, &msg(b"later", b"2"));
            assert!(take(r).is_none(), "must wait behind the reservation");
            r.publish(a, &m);
            assert_eq!(take(r).unwrap().0, b"x");
            assert!(take(r).is_none(), "second record of the reservation not ready yet");
            r.publish(a + 1, &m);
            r.publish(a + 2, &m);
            assert_eq!(take(r).unwrap().0, b"x");
            assert_eq!(take(r).unwrap().0, b"x");
            assert_eq!(take(r).unwrap().0, b"later");
            assert_eq!(r.used_slots(), 0);
        }
    }

    /// A reservation whose transaction stays between PRE_COMMIT and COMMIT can be stepped over
    /// as a whole and come back later; a record inside a reservation being published cannot.
    #[test]
    fn a_whole_reservation_can_be_stepped_over_and_seen_again() {
        let t = ring(16);
        let r = &t.ring;
        let mut scratch = Vec::new();
        unsafe {
            let a = r.try_reserve(3).unwrap(); // a stuck three-message transaction
            r.mark_reserved(a, 1, 3);
            r.mark_reserved(a + 1, 1, 0);
            r.mark_reserved(a + 2, 1, 0);
            let b = r.try_reserve(1).unwrap();
            r.publish(b, &msg(b"later", b"2"));
            assert!(matches!(r.peek_at(a, &mut scratch), Peek::Reserved { run: 3 }));
            assert_eq!(r.run_state(a, 3), RunState::Waiting);
            // the consumer steps over it and finds the later record
            let Peek::Ready(v) = r.peek_at(a + 3, &mut scratch) else { panic!("later record") };
            assert_eq!(v.topic(), b"later");
            // the stuck transaction commits, one record at a time
            r.publish(a, &msg(b"x", b"1"));
            assert!(matches!(r.peek_at(a + 1, &mut scratch), Peek::Reserved { run: 0 }));
            assert_eq!(r.run_state(a, 3), RunState::Waiting, "half published is not ready");
            r.publish(a + 1, &msg(b"y", b"1"));
            r.publish(a + 2, &msg(b"z", b"1"));
            assert_eq!(r.run_state(a, 3), RunState::Ready((a..a + 3).map(|pos| Span { pos, nslots: 1 }).collect()));
        }
    }

    /// Many producers, one consumer: every message arrives once, each producer's in order.
    #[test]
    fn concurrent_producers_keep_per_producer_order() {
        let t = Arc::new(ring(64));
        let lock = Arc::new(Mutex::new(()));
        const PRODUCERS: u32 = 4;
        const EACH: u32 = 5000;
        let mut handles = Vec::new();
        for p in 0..PRODUCERS {
            let t = Arc::clone(&t);
            let lock = Arc::clone(&lock);
            handles.push(std::thread::spawn(move || {
                for i in 0..EACH {
                    let payload = format!("{p}:{i}:{}", "z".repeat((i % 700) as usize));
                    let topic = format!("p/{p}");
                    let m = msg(topic.as_bytes(), payload.as_bytes());
                    let pos = loop {
                        let g = lock.lock().unwrap();
                        if let Some(pos) = unsafe { t.ring.try_reserve(m.nslots()) } {
                            drop(g);
                            break pos;
                        }
                        drop(g);
                        std::thread::yield_now();
                    };
                    unsafe { t.ring.publish(pos, &m) };
                }
            }));
        }
        let mut next = vec![0u32; PRODUCERS as usize];
        let mut got = 0;
        while got < PRODUCERS * EACH {
            match take(&t.ring) {
                None => std::thread::yield_now(),
                Some((topic, payload)) => {
                    let s = String::from_utf8(payload).unwrap();
                    let mut it = s.split(':');
                    let p: usize = it.next().unwrap().parse().unwrap();
                    let i: u32 = it.next().unwrap().parse().unwrap();
                    assert_eq!(topic, format!("p/{p}").into_bytes());
                    assert_eq!(i, next[p], "producer {p} out of order");
                    assert_eq!(it.next().unwrap().len(), (i % 700) as usize);
                    next[p] += 1;
                    got += 1;
                }
            }
        }
        for h in handles {
            h.join().unwrap();
        }
        assert!(take(&t.ring).is_none());
    }
}
