//! Shared memory: what lives there, how it is sized, created and attached.
//!
//! One named segment, "pg_mqtt_pub", sized once at postmaster start (ADR-012):
//! ```text
//!   Directory       the launcher's latch, message ids, how many database shares there are
//!   max_databases × a database's share:
//!       Shared      the database it belongs to (0: free), its worker's latch/pid/sleeping flag,
//!                   broker generation, outbox size
//!       max_brokers × BrokerShared: per-broker mode, counters, status text (slot.rs)
//!       Ring        control block + share × 512-byte slots (ring.rs)
//! ```
//! Every database that publishes claims a share the first time one of its backends needs it
//! (`require_shared`), and keeps it until its extension is gone or the database is dropped
//! (the launcher gives it back, directory.rs). A database's backends and its worker only ever
//! touch their own share: its ring, its broker slots, its ring lock. So a database that fills
//! its ring, or whose broker is down, changes nothing for another one.
//!
//! Locks (one named LWLock tranche, "pg_mqtt_pub"):
//! * `DIRECTORY_LOCK` serialises claiming and giving back shares (rare).
//! * `STATUS_LOCK` protects the text fields of every broker status (host, last error); counters
//!   are atomics and need no lock. One for all databases: the cluster-wide status reads them all.
//! * `RING_LOCK` — one per share — serialises its producers' reservations (a few loads and
//!   stores; never held across anything that allocates, logs or can fail). `with_lock(RING_LOCK)`
//!   takes the lock of this process's own database.
//!
//! Wake-ups follow the "sleeping flag" protocol so a busy worker costs producers nothing:
//! the worker sets `worker_sleeping`, re-checks the ring, then waits on its latch; a producer
//! publishes its records, then sets the worker's latch only if `worker_sleeping` is set. Both sides
//! put a SeqCst fence between their write and their read, so one of them always sees the other.
//! After it found work the worker naps briefly *without* setting the flag for a couple of
//! milliseconds (worker/mod.rs, `LINGER`), so a steady stream of commits is picked up by polling
//! instead of one signal per commit. A nap is a futex wait on `worker_napping`: a producer that
//! publishes during one ends it with one `futex_wake` (the first producer to see the flag clears
//! it; nobody else makes a call) — no signal, no latch, and no waiting out the rest of the nap.

use crate::pg::guard::{Code, PgError};
use crate::pg::gucs;
use crate::pure::ring::{self, Ring};
use pgrx_pg_sys as pg;
use std::sync::atomic::{
    fence, AtomicBool, AtomicI32, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};

mod directory;
mod slot;
pub use directory::{claim_for_launcher, of_database, release, request_leave, ReleaseOutcome};
pub use slot::{broker, BrokerShared, Mode};

/// Shared state of this database, or the ERROR that says why there is none (not preloaded,
/// restricted to another database, every share taken). Claims a share the first time.
pub fn require_shared() -> &'static Shared {
    if directory().is_none() {
        PgError::new(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "pg_mqtt_pub must be loaded via shared_preload_libraries",
        )
        .hint("Add pg_mqtt_pub to shared_preload_libraries in postgresql.conf and restart PostgreSQL.")
        .raise()
    }
    shared().unwrap_or_else(directory::claim_for_backend)
}

/// The most brokers `pg_mqtt_pub.max_brokers` may ask for (per-transaction bookkeeping in
/// txn.rs uses fixed arrays and u32 bit sets of this size). Slot 0 is `default`.
pub const MAX_BROKERS: usize = crate::pure::pending::MAX_BROKERS;

pub const DIRECTORY_LOCK: usize = 0;
pub const STATUS_LOCK: usize = 1;
/// The ring lock of this process's database (each share has its own, after the two above).
pub const RING_LOCK: usize = 2;
const NAME: &std::ffi::CStr = c"pg_mqtt_pub";

/// The head of the segment: what all databases share.
#[repr(C)]
pub struct Directory {
    /// The launcher's latch: set when a database claims a share (its worker should start).
    pub launcher_latch: AtomicPtr<pg::Latch>,
    /// Message ids handed out since the server started, in every database (props.rs: the id is
    /// this run's instance part and a sequence number; 0 means "no id").
    pub message_ids: AtomicU64,
    /// Bumped by every claim and release: the launcher looks at the shares again.
    pub changes: AtomicU64,
    ndb: u32,
    share_slots: u64,
    /// Bytes from one share to the next, and from a share to its ring: computed once at start
    /// (from settings that cannot change), so that finding a share costs no setting lookup.
    stride: usize,
    ring_offset: usize,
}

/// One database's share (see the module doc).
#[repr(C)]
pub struct Shared {
    /// The database this share belongs to; 0 while free. Changed only under `DIRECTORY_LOCK`
    /// and this share's ring lock (directory.rs).
    pub dboid: AtomicU32,
    index: u32,
    /// Set by a backend about to drop, rename or copy this database (directory.rs): the worker
    /// saves its ring to the outbox and exits, so the command does not find it connected.
    pub leave_requested: AtomicBool,
    /// Set by the worker when it exits because the extension is gone and nothing is left to
    /// deliver: the launcher gives the share back.
    pub idle_exit: AtomicBool,
    /// When the share was claimed (µs, PostgreSQL time). The claim may come from a transaction
    /// that has not committed its database yet (CREATE DATABASE ... TEMPLATE, database_hooks.rs):
    /// the launcher gives a young share of a database it cannot see a few seconds.
    pub claimed_at: AtomicI64,
    /// Claimed on a guess (`claim_for_launcher`): the worker leaves at once without the extension.
    pub guess: AtomicBool,
    /// When `mqtt_announce()` last ran here (µs): a worker that found no extension moments
    /// before (the announcing CREATE EXTENSION had not committed) is started again, not given
    /// up (launcher.rs).
    pub announced_at: AtomicI64,
    /// Outbox rows of transactions older than this one are not this database's own but a
    /// template's (data/installation.rs): the `CREATE DATABASE ... TEMPLATE` transaction, handed
    /// over by database_hooks.rs, or the database's `pg_database` xmin when its first backend
    /// claimed the share; 0: not known (the worker then reads that xmin itself).
    pub copied_by: AtomicU32,
    pub worker_latch: AtomicPtr<pg::Latch>,
    pub worker_pid: AtomicI32,
    pub worker_sleeping: AtomicBool,
    /// 1 while the worker naps (a futex word: see the module doc).
    pub worker_napping: AtomicU32,
    /// Set by a transaction that wrote outbox rows, when it ends: tells the worker that a latch
    /// wake-up means "look at the outbox" (most wake-ups are hot commits, which need no query).
    pub outbox_dirty: AtomicBool,
    /// Bumped when a transaction that changed `mqtt_pub.brokers` commits: backends refresh their
    /// name → slot cache (catalog.rs), the worker reloads the catalog.
    pub broker_generation: AtomicU64,
    /// Bumped when a transaction that changed `mqtt_pub.topic_rights` or
    /// `mqtt_pub.trigger_setters` commits: backends reload their topic rights (data/rights.rs).
    pub rights_generation: AtomicU64,
    /// Bytes (topic + payload + properties) in `mqtt_pub.outbox`, for `max_outbox_size`: added
    /// by a publisher's COMMIT and the worker's inserts, taken off by the worker's deletes, and
    /// set from a scan by the worker now and then (data/outbox_size.rs). Approximate.
    pub outbox_bytes: AtomicI64,
    /// Bytes written to the outbox by transactions still open (counted against the limit too).
    pub outbox_reserved: AtomicI64,
    /// When a publisher last measured the outbox after finding it full (µs, PostgreSQL time).
    pub outbox_measured_at: AtomicI64,
    /// `max_brokers` status slots follow this struct in the segment (see `brokers`).
    nbrokers: u32,
}

impl Shared {
    /// Every broker status slot (`pg_mqtt_pub.max_brokers` of them; 0 is `default`).
    pub fn brokers(&self) -> &[BrokerShared] {
        // SAFETY: the startup hook laid out `nbrokers` zero-initialised slots right after the
        // struct (all-zero is a valid BrokerShared); they live as long as the segment.
        unsafe {
            let first = (self as *const Shared).add(1) as *const BrokerShared;
            std::slice::from_raw_parts(first, self.nbrokers as usize)
        }
    }

    pub fn index(&self) -> usize {
        self.index as usize
    }

    pub fn ring(&self) -> Ring {
        ring_of(self.index())
    }

    /// Run `f` holding this share's ring lock (for whoever is not of this database: the
    /// launcher, a backend of another database asking its worker to leave).
    pub fn with_ring_lock<R>(&self, f: impl FnOnce() -> R) -> R {
        lock_index(2 + self.index(), pg::LWLockMode::LW_EXCLUSIVE, f)
    }

    /// A share taken by a database, back to the state of a fresh start: every broker cold and
    /// unused, nothing counted. Only for a share nobody uses (directory.rs, under its locks).
    fn reset(&self) {
        self.leave_requested.store(false, Ordering::Relaxed);
        self.idle_exit.store(false, Ordering::Relaxed);
        self.guess.store(false, Ordering::Relaxed);
        self.announced_at.store(0, Ordering::Relaxed);
        self.copied_by.store(0, Ordering::Relaxed);
        self.worker_latch.store(std::ptr::null_mut(), Ordering::Relaxed);
        self.worker_pid.store(0, Ordering::Relaxed);
        self.worker_sleeping.store(false, Ordering::Relaxed);
        self.worker_napping.store(0, Ordering::Relaxed);
        self.outbox_dirty.store(true, Ordering::Relaxed);
        self.broker_generation.fetch_add(1, Ordering::Relaxed);
        self.rights_generation.fetch_add(1, Ordering::Relaxed);
        for v in [&self.outbox_bytes, &self.outbox_reserved, &self.outbox_measured_at] {
            v.store(0, Ordering::Relaxed);
        }
        for b in self.brokers() {
            b.clear();
        }
    }
}

// Process-local pointers into the segment, set by the startup hook (inherited across fork).
static BASE: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static LOCKS: AtomicPtr<pg::LWLockPadded> = AtomicPtr::new(std::ptr::null_mut());
/// This process's share, as index + 1 (0: none looked up yet). A cache: `shared()` checks that
/// the share still belongs to this database before using it.
static CURRENT: AtomicUsize = AtomicUsize::new(0);

static mut PREV_REQUEST_HOOK: pg::shmem_request_hook_type = None;
static mut PREV_STARTUP_HOOK: pg::shmem_startup_hook_type = None;

fn directory_size() -> usize {
    std::mem::size_of::<Directory>().next_multiple_of(ring::SLOT)
}

fn shared_size() -> usize {
    const _: () = assert!(std::mem::size_of::<Shared>().is_multiple_of(std::mem::align_of::<BrokerShared>()));
    (std::mem::size_of::<Shared>() + gucs::MAX_BROKERS.get() as usize * std::mem::size_of::<BrokerShared>())
        .next_multiple_of(ring::SLOT)
}

/// How many databases get a share: `max_databases`, or 1 when `pg_mqtt_pub.database` restricts
/// publishing to one (a configuration from before 1.6 keeps its memory and its ring).
pub fn share_count() -> usize {
    if gucs::DATABASE.string().is_empty() {
        gucs::MAX_DATABASES.get() as usize
    } else {
        1
    }
}

/// Ring slots of each share: `queue_size` divided among the shares, rounded down to a power of
/// two (the ring maps positions with a mask).
pub fn share_slots() -> u64 {
    crate::pure::ring::floor_power_of_two(gucs::QUEUE_SIZE.get() as u64 / share_count() as u64)
}

fn stride() -> usize {
    shared_size() + ring::shmem_size(share_slots())
}

/// Total bytes requested from the postmaster.
pub fn segment_size() -> usize {
    directory_size() + share_count() * stride()
}

/// Install the shmem hooks; called from `_PG_init` while preloading.
pub fn install_hooks() {
    // SAFETY: _PG_init runs single-threaded in the postmaster; we chain the previous hooks.
    unsafe {
        PREV_REQUEST_HOOK = pg::shmem_request_hook;
        pg::shmem_request_hook = Some(shmem_request);
        PREV_STARTUP_HOOK = pg::shmem_startup_hook;
        pg::shmem_startup_hook = Some(shmem_startup);
    }
}

unsafe extern "C-unwind" fn shmem_request() {
    crate::pg::guard::guard(|| {
        // SAFETY: called by the postmaster at the one point where requests are allowed.
        unsafe {
            if let Some(prev) = PREV_REQUEST_HOOK {
                prev();
            }
            pg::RequestAddinShmemSpace(segment_size());
            pg::RequestNamedLWLockTranche(NAME.as_ptr(), 2 + share_count() as i32);
        }
    })
}

unsafe extern "C-unwind" fn shmem_startup() {
    crate::pg::guard::guard(|| {
        // SAFETY: the documented recipe (pg_stat_statements): create or attach under
        // AddinShmemInitLock; initialise only if we created it.
        unsafe {
            if let Some(prev) = PREV_STARTUP_HOOK {
                prev();
            }
            let init_lock = &mut (*pg::MainLWLockArray.add(21)).lock as *mut pg::LWLock; // AddinShmemInitLock
            pg::LWLockAcquire(init_lock, pg::LWLockMode::LW_EXCLUSIVE);
            let mut found = false;
            let base = pg::ShmemInitStruct(NAME.as_ptr(), segment_size(), &mut found) as *mut u8;
            if !found {
                std::ptr::write_bytes(base, 0, directory_size());
                let dir = &mut *(base as *mut Directory);
                dir.ndb = share_count() as u32;
                dir.share_slots = share_slots();
                dir.stride = stride();
                dir.ring_offset = shared_size();
                for i in 0..share_count() {
                    let at = base.add(directory_size() + i * stride());
                    std::ptr::write_bytes(at, 0, shared_size());
                    Ring::init(at.add(shared_size()), share_slots());
                    let s = &mut *(at as *mut Shared);
                    s.index = i as u32;
                    s.nbrokers = gucs::MAX_BROKERS.get() as u32;
                    s.reset();
                }
            }
            BASE.store(base, Ordering::Release);
            LOCKS.store(pg::GetNamedLWLockTranche(NAME.as_ptr()), Ordering::Release);
            pg::LWLockRelease(init_lock);
        }
    })
}

/// The directory, or `None` when the library was not preloaded.
pub fn directory() -> Option<&'static Directory> {
    let p = BASE.load(Ordering::Acquire);
    // SAFETY: once set, the segment stays mapped for the life of the process.
    (!p.is_null()).then(|| unsafe { &*(p as *const Directory) })
}

/// Where share `i` (< `shares().len()`) starts.
fn share_at(i: usize) -> (*mut u8, &'static Directory) {
    let base = BASE.load(Ordering::Acquire);
    assert!(!base.is_null(), "pg_mqtt_pub shared memory is not attached");
    // SAFETY: the startup hook laid out the directory, then `ndb` shares at `stride`.
    unsafe {
        let dir = &*(base as *const Directory);
        (base.add(directory_size() + i * dir.stride), dir)
    }
}

/// Share `i` (< `shares().len()`).
fn share(i: usize) -> &'static Shared {
    // SAFETY: a share's first bytes are its `Shared`, set up by the startup hook.
    unsafe { &*(share_at(i).0 as *const Shared) }
}

/// Every share, free or taken.
pub fn shares() -> impl Iterator<Item = &'static Shared> {
    let n = directory().map_or(0, |d| d.ndb as usize);
    (0..n).map(share)
}

fn ring_of(i: usize) -> Ring {
    let (at, dir) = share_at(i);
    // SAFETY: Ring::init set this share's ring up in the startup hook.
    unsafe { Ring::attach(at.add(dir.ring_offset)) }
}

fn my_database() -> u32 {
    // SAFETY: plain read of a PostgreSQL global (InvalidOid before a database is chosen).
    unsafe { pg::MyDatabaseId }.to_u32()
}

/// This database's share, or `None` when the library was not preloaded or the database has
/// none (yet). A cached index, checked against the share's owner on every call (one load).
pub fn shared() -> Option<&'static Shared> {
    directory()?;
    let me = my_database();
    if me == 0 {
        return None;
    }
    let cached = CURRENT.load(Ordering::Relaxed);
    if cached > 0 && share(cached - 1).dboid.load(Ordering::Acquire) == me {
        return Some(share(cached - 1));
    }
    let s = shares().find(|s| s.dboid.load(Ordering::Acquire) == me)?;
    CURRENT.store(s.index() + 1, Ordering::Relaxed);
    Some(s)
}

/// Does the share this process uses still belong to its database? (Under the ring lock: a
/// promise or cold registration made after this returned true keeps the share from being given
/// back, directory.rs.)
pub fn current_is_mine() -> bool {
    let cur = CURRENT.load(Ordering::Relaxed);
    cur > 0 && share(cur - 1).dboid.load(Ordering::Acquire) == my_database()
}

/// This database's ring. Only call after `shared()` or `require_shared()` returned a share.
pub fn ring() -> Ring {
    let cur = CURRENT.load(Ordering::Relaxed);
    assert!(cur > 0, "pg_mqtt_pub: no shared-memory share for this database");
    ring_of(cur - 1)
}

/// Run `f` holding LWLock `which` in `mode` (`RING_LOCK`: this database's). Keep `f` short.
/// Should it raise an ERROR, the lock is released by the transaction abort (LWLockReleaseAll).
pub fn with_lock<R>(which: usize, mode: pg::LWLockMode::Type, f: impl FnOnce() -> R) -> R {
    let index = if which == RING_LOCK {
        let cur = CURRENT.load(Ordering::Relaxed);
        assert!(cur > 0, "pg_mqtt_pub: no shared-memory share for this database");
        2 + cur - 1
    } else {
        which
    };
    lock_index(index, mode, f)
}

fn lock_index<R>(index: usize, mode: pg::LWLockMode::Type, f: impl FnOnce() -> R) -> R {
    let locks = LOCKS.load(Ordering::Acquire);
    assert!(!locks.is_null(), "pg_mqtt_pub locks are not attached");
    // SAFETY: `index` < 2 + share_count(); the tranche lives in shared memory. If `f` panicked
    // the lock would be released by LWLockReleaseAll during abort, but `f` is kept trivial.
    unsafe {
        let lock = &mut (*locks.add(index)).lock as *mut pg::LWLock;
        pg::LWLockAcquire(lock, mode);
        let r = f();
        pg::LWLockRelease(lock);
        r
    }
}

/// Producer side of the wake-up protocol: call after publishing records to the ring.
pub fn wake_worker() {
    let Some(s) = shared() else { return };
    fence(Ordering::SeqCst);
    if s.worker_sleeping.load(Ordering::SeqCst) {
        let latch = s.worker_latch.load(Ordering::Acquire);
        if !latch.is_null() {
            // SAFETY: the latch is the worker's PGPROC latch in shared memory; setting a latch
            // whose owner has exited is harmless.
            unsafe { pg::SetLatch(latch) };
        }
    } else if s.worker_napping.load(Ordering::SeqCst) == 1 && s.worker_napping.swap(0, Ordering::SeqCst) == 1 {
        futex_wake(&s.worker_napping);
    }
}

/// Worker: nap up to `d`, or until a producer publishes (`wake_worker`). The caller has set
/// `worker_napping` to 1 and re-checked the ring after a SeqCst fence.
pub fn nap(d: std::time::Duration) {
    let Some(s) = shared() else { return std::thread::sleep(d) };
    #[cfg(target_os = "linux")]
    {
        let ts = libc::timespec { tv_sec: d.as_secs() as libc::time_t, tv_nsec: d.subsec_nanos() as libc::c_long };
        // SAFETY: a futex wait on a 32-bit word in shared memory (not FUTEX_PRIVATE: producers
        // are other processes); it returns at once if the word is no longer 1, on a wake, on a
        // signal or after `d`. Any outcome just ends the nap.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                s.worker_napping.as_ptr(),
                libc::FUTEX_WAIT,
                1u32,
                &ts as *const libc::timespec,
                std::ptr::null::<u32>(),
                0u32,
            )
        };
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = s;
        std::thread::sleep(d);
    }
}

fn futex_wake(word: &AtomicU32) {
    #[cfg(target_os = "linux")]
    // SAFETY: wakes at most one waiter on a word in shared memory; harmless if nobody waits.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            1u32,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    #[cfg(not(target_os = "linux"))]
    let _ = word;
}

/// Wake the worker whether or not it sleeps (rare events: catalog changes).
pub fn wake_worker_always() {
    if let Some(s) = shared() {
        s.wake_always();
    }
}

impl Shared {
    /// Set this share's worker's latch (from any process).
    pub fn wake_always(&self) {
        let latch = self.worker_latch.load(Ordering::Acquire);
        if !latch.is_null() {
            // SAFETY: as in wake_worker.
            unsafe { pg::SetLatch(latch) };
        }
    }
}
