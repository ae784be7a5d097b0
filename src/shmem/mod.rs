//! Shared memory: what lives there, how it is sized, created and attached.
//!
//! One named segment, "pg_mqtt_pub", sized once at postmaster start from `queue_size`:
//! ```text
//!   Shared   worker latch/pid/sleeping flag, broker generation
//!   max_brokers × BrokerShared: per-broker mode, counters, status text (status.rs)
//!   Ring     control block + queue_size × 512-byte slots (ring.rs)
//! ```
//! Locks (one named LWLock tranche, "pg_mqtt_pub"):
//! * `RING_LOCK` serialises producers' reservations (a few loads and stores; never held across
//!   anything that allocates, logs or can fail).
//! * `STATUS_LOCK` protects the text fields of the broker status (host, last error); counters are
//!   atomics and need no lock.
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
use std::sync::atomic::{fence, AtomicBool, AtomicI32, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, Ordering};

mod slot;
pub use slot::{broker, BrokerShared, Mode};

/// Shared state, or the "not preloaded" ERROR with the hint that fixes it.
pub fn require_shared() -> &'static Shared {
    shared().unwrap_or_else(|| {
        PgError::new(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "pg_mqtt_pub must be loaded via shared_preload_libraries",
        )
        .hint("Add pg_mqtt_pub to shared_preload_libraries in postgresql.conf and restart PostgreSQL.")
        .raise()
    })
}

/// The most brokers `pg_mqtt_pub.max_brokers` may ask for (per-transaction bookkeeping in
/// txn.rs uses fixed arrays and u32 bit sets of this size). Slot 0 is `default`.
pub const MAX_BROKERS: usize = crate::pure::pending::MAX_BROKERS;

pub const RING_LOCK: usize = 0;
pub const STATUS_LOCK: usize = 1;
const NUM_LOCKS: i32 = 2;
const NAME: &std::ffi::CStr = c"pg_mqtt_pub";

#[repr(C)]
pub struct Shared {
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
    /// Message ids handed out since the server started (props.rs: the id is this run's instance
    /// part and a sequence number; 0 means "no id").
    pub message_ids: AtomicU64,
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
}

// Process-local pointers into the segment, set by the startup hook (inherited across fork).
static SHARED: AtomicPtr<Shared> = AtomicPtr::new(std::ptr::null_mut());
static RING_MEM: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static LOCKS: AtomicPtr<pg::LWLockPadded> = AtomicPtr::new(std::ptr::null_mut());

static mut PREV_REQUEST_HOOK: pg::shmem_request_hook_type = None;
static mut PREV_STARTUP_HOOK: pg::shmem_startup_hook_type = None;

fn shared_size() -> usize {
    const _: () = assert!(std::mem::size_of::<Shared>().is_multiple_of(std::mem::align_of::<BrokerShared>()));
    (std::mem::size_of::<Shared>() + gucs::MAX_BROKERS.get() as usize * std::mem::size_of::<BrokerShared>())
        .next_multiple_of(ring::SLOT)
}

/// Total bytes requested from the postmaster.
pub fn segment_size() -> usize {
    shared_size() + ring::shmem_size(gucs::QUEUE_SIZE.get() as u64)
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
            pg::RequestNamedLWLockTranche(NAME.as_ptr(), NUM_LOCKS);
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
            let ring_mem = base.add(shared_size());
            if !found {
                std::ptr::write_bytes(base, 0, shared_size());
                Ring::init(ring_mem, gucs::QUEUE_SIZE.get() as u64);
                // Every broker starts cold: after a restart the outbox may hold messages that
                // must go out before anything new; the worker turns a broker hot once it has
                // drained them.
                let shared = &mut *(base as *mut Shared);
                shared.nbrokers = gucs::MAX_BROKERS.get() as u32;
                for b in shared.brokers() {
                    b.set_mode(Mode::Cold);
                    b.reset_stats();
                }
            }
            SHARED.store(base as *mut Shared, Ordering::Release);
            RING_MEM.store(ring_mem, Ordering::Release);
            LOCKS.store(pg::GetNamedLWLockTranche(NAME.as_ptr()), Ordering::Release);
            pg::LWLockRelease(init_lock);
        }
    })
}

/// The shared state, or `None` when the library was not preloaded.
pub fn shared() -> Option<&'static Shared> {
    let p = SHARED.load(Ordering::Acquire);
    // SAFETY: once set, the pointer stays valid for the life of the process.
    (!p.is_null()).then(|| unsafe { &*p })
}

/// The ring. Only call after `shared()` returned `Some`.
pub fn ring() -> Ring {
    let p = RING_MEM.load(Ordering::Acquire);
    assert!(!p.is_null(), "pg_mqtt_pub shared memory is not attached");
    // SAFETY: `p` was set up by Ring::init in the startup hook.
    unsafe { Ring::attach(p) }
}

/// Run `f` holding LWLock `which` in `mode`. Keep `f` short. Should it raise an ERROR, the lock
/// is released by the transaction abort (LWLockReleaseAll), not here.
pub fn with_lock<R>(which: usize, mode: pg::LWLockMode::Type, f: impl FnOnce() -> R) -> R {
    let locks = LOCKS.load(Ordering::Acquire);
    assert!(!locks.is_null(), "pg_mqtt_pub locks are not attached");
    // SAFETY: `which` < NUM_LOCKS; the tranche lives in shared memory. If `f` panicked the lock
    // would be released by LWLockReleaseAll during abort, but `f` is kept trivial by contract.
    unsafe {
        let lock = &mut (*locks.add(which)).lock as *mut pg::LWLock;
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
    let Some(s) = shared() else { return };
    let latch = s.worker_latch.load(Ordering::Acquire);
    if !latch.is_null() {
        // SAFETY: as in wake_worker.
        unsafe { pg::SetLatch(latch) };
    }
}
