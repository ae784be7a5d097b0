//! The background workers: a launcher (`launcher.rs`), and the worker that publishes.
//!
//! **Worker** (dynamic, started by the launcher): one per publishing database (ADR-012),
//! connected to it, using only that database's share of shared memory. Once the extension is
//! there it connects to every broker and runs the loop in [`Worker::run`]. After `DROP
//! EXTENSION` it delivers what is left in the ring and exits; the launcher gives the share back.
//!
//! One file per concern, all of them parts of one `Worker` (the loop owns all state):
//! | file | concern |
//! |---|---|
//! | `process.rs` | signals, naps, transactions, statistics, pinned settings |
//! | `waiter.rs` | the WaitEventSet; sleep, linger or go on |
//! | `link.rs` | one broker connection: fail and back off, events, ack timeout, settings switch |
//! | `connect.rs` | connecting a link (host names on a helper thread, ADR-008) |
//! | `ring_scan.rs` | hand ring records to brokers in order; step over a stuck commit; release |
//! | `outbox_drain.rs` | deliver outbox rows, delete acknowledged ones, go hot again, prune |
//! | `failures.rs` | poison handling: retry with backoff, dead letters |
//! | `catalog_sync.rs` | follow `mqtt_pub.brokers`: add, switch, remove links |
//! | `shutdown.rs` | save the ring to the outbox and disconnect |
//!
//! While a broker is unreachable it is *cold*: its ring records are moved to the outbox and
//! publishers write there directly, so nothing waits in the ring for it (ADR-003). QoS 1/2
//! messages in flight when a connection drops are not left to libmosquitto to resend: ring
//! records are saved to the outbox ahead of everything else, outbox rows are fetched again
//! (`drop_client`), so a message that keeps killing the connection can be identified.

use crate::data::outbox;
use crate::mqtt::client::{Client, ClientOptions, Event, Extra, Handoff};
use crate::pg::guard::{self, guard, Level, PgError};
use crate::pg::gucs::{self, BrokerConfig};
use crate::pure::backoff::reconnect_delay_ms;
use crate::pure::limits::{Limits, Verdict};
use crate::pure::props;
use crate::pure::ring::{Peek, Ring, RunState, Span};
use crate::pure::scanlog::{Hole, ScanLog};
use crate::pure::window::{Lost, Window};
use crate::shmem;
use crate::shmem::{BrokerShared, Mode};
use pgrx_pg_sys as pg;
use std::collections::VecDeque;
use std::ffi::{c_int, CString};
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

mod catalog_sync;
mod connect;
mod failures;
mod launcher;
mod link;
mod outbox_drain;
mod process;
mod report;
mod ring_scan;
mod shutdown;
mod waiter;

pub use launcher::register_launcher;
use link::{ConnState, Inflight, Link};
use process::*;
use report::Report;
use waiter::Waiter;

const LIB: &str = "pg_mqtt_pub";

/// A connection that stayed up this long resets the reconnect backoff when it drops.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);

/// MQTT 5 DISCONNECT reason: another connection with this client id took the session over.
const REASON_SESSION_TAKEN_OVER: i32 = 0x8E;

/// Records handed to libmosquitto per loop iteration before the socket is serviced again.
const BATCH: usize = 1024;

/// How long a SIGHUP broker switch or a shutdown waits for in-flight acknowledgements.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// How long the ring scan waits at a transaction's reservation before stepping over it (see
/// ring.rs). A commit normally spends far less between PRE_COMMIT and COMMIT (its WAL flush); one
/// waiting for a synchronous standby may stay there indefinitely, and the messages of the
/// transactions behind it must not wait with it.
const STEP_OVER_AFTER: Duration = Duration::from_millis(100);

/// How often the loop looks whether a connect thread has finished.
const RESOLVE_POLL_MS: i64 = 20;

/// At shutdown, how long to wait for transactions still committing (backends get the same
/// SIGTERM and finish their COMMIT first), so their messages are saved with the rest.
const SHUTDOWN_COMMIT_WAIT: Duration = Duration::from_secs(5);

/// Acknowledged outbox rows deleted per transaction while the drain is under way.
const DELETE_BATCH: usize = 256;

/// After finding work in the ring, the worker keeps looking every LINGER_NAP for LINGER before it
/// announces that it sleeps. While it lingers, committing backends do not signal it: under a
/// steady stream of small commits this turns one kill() + wake-up per commit into one nap per
/// several commits (measured: the signal was the largest single cost of publishing in pgbench),
/// for at most LINGER_NAP of added latency. The worker's timer slack is 1 µs (`process.rs`), so
/// a nap lasts what it says rather than up to the default 50 µs more.
const LINGER: Duration = Duration::from_millis(2);

const LINGER_NAP: Duration = Duration::from_micros(200);

/// How long a worker stays once the extension is gone from its database (a DROP and CREATE
/// EXTENSION in quick succession should not stop and start it).
const IDLE_EXIT_AFTER: Duration = Duration::from_secs(5);

/// How often the worker re-reads the broker catalog without being told (COMMIT PREPARED of a
/// catalog change, or a change made with triggers disabled).
const CATALOG_RECHECK: Duration = Duration::from_secs(10);

/// Worker entry point; `arg` is the index of its database's share (launcher.rs).
#[no_mangle]
pub unsafe extern "C-unwind" fn pg_mqtt_pub_worker_main(arg: pg::Datum) {
    guard(|| {
        install_signals();
        precise_naps();
        let index = arg.value();
        let Some(dboid) = crate::shmem::shares().nth(index).map(|s| s.dboid.load(Ordering::Acquire)) else {
            crate::pg::compat::proc_exit(0)
        };
        if dboid == 0 {
            crate::pg::compat::proc_exit(0); // given back before we started
        }
        // SAFETY: standard connection; FATAL if the database vanished meanwhile (the launcher
        // then finds it gone and gives the share back).
        unsafe { pg::BackgroundWorkerInitializeConnectionByOid(pg::Oid::from(dboid), pg::InvalidOid, 0) };
        pin_session_settings();
        log_with_database();
        let Some(s) = shmem::shared().filter(|s| s.index() == index) else {
            crate::pg::compat::proc_exit(0) // the share changed hands while we connected
        };
        // One worker per database: a launcher restarted after an ERROR does not know the
        // workers its predecessor started (it waits for them, launcher.rs); this is the backstop.
        // SAFETY: plain read of a PostgreSQL global.
        let me = unsafe { pg::MyProcPid };
        if s.worker_pid.compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire).is_err() {
            crate::pg::compat::proc_exit(0);
        }
        // SAFETY: MyLatch is our PGPROC latch, in shared memory, valid until we exit.
        unsafe {
            s.worker_latch.store(pg::MyLatch, Ordering::Release);
            pg::on_shmem_exit(Some(forget_latch), pg::Datum::from(0usize));
        }
        crate::mqtt::client::lib_init();
        Worker::new().run()
    })
}

unsafe extern "C-unwind" fn forget_latch(_code: c_int, _arg: pg::Datum) {
    if let Some(s) = shmem::shared() {
        s.worker_latch.store(std::ptr::null_mut(), Ordering::Release);
        s.worker_pid.store(0, Ordering::Release);
        s.worker_sleeping.store(false, Ordering::Release);
        for b in s.brokers() {
            b.connected.store(false, Ordering::Release);
            b.inflight.store(0, Ordering::Relaxed);
        }
    }
}

struct Worker {
    ring: Ring,
    scratch: Vec<u8>,
    events: Vec<Event>,
    /// The message id being sent (reused: no allocation per message).
    id_buf: Vec<u8>,
    links: Vec<Link>,
    /// slot → index in `links`
    by_slot: Vec<Option<usize>>,
    /// The ring records scanned and not yet released (scanlog.rs).
    scan: ScanLog,
    /// Where the scan is waiting at a reservation, and since when.
    blocked_at: Option<(u64, Instant)>,
    waiter: Option<Waiter>,
    rebuild_waiter: bool,
    ready: Vec<waiter::ReadySock>,
    ext_present: bool,
    next_ext_check: Instant,
    next_prune: Instant,
    /// When the outbox's size is measured next (data/outbox_size.rs).
    next_measure: Instant,
    generation: u64,
    next_catalog_check: Instant,
    /// When the ring scan last handed something over (see LINGER).
    last_work: Instant,
    /// How many records the scan hands over per unit of time (which nap to take).
    pace: crate::pure::pace::Pace,
    /// Since when the extension has been found missing (see `maybe_exit_idle`).
    absent_since: Option<Instant>,
}

impl Worker {
    fn new() -> Worker {
        let shared = crate::shmem::require_shared();
        let ring = shmem::ring();
        let default = Link::new(0, BrokerConfig::default_broker());
        // A restarted worker cannot know where the old one's scan was: look again from the tail.
        // (QoS 1/2 records the old worker had in flight are sent again: at least once.)
        for (i, b) in shared.brokers().iter().enumerate() {
            b.flip_head.fetch_max(ring.head(), Ordering::AcqRel);
            // Named brokers' slots are claimed again from the catalog (maybe_sync_catalog): a
            // slot whose broker was removed while no worker ran must not stay claimed forever.
            if i > 0 && b.in_use.load(Ordering::Acquire) {
                b.release();
            }
        }
        let mut w = Worker {
            ring,
            scratch: Vec::new(),
            events: Vec::new(),
            id_buf: Vec::new(),
            links: vec![default],
            by_slot: Vec::new(),
            scan: ScanLog::new(ring.tail()),
            blocked_at: None,
            waiter: None,
            rebuild_waiter: true,
            ready: Vec::new(),
            ext_present: false,
            next_ext_check: Instant::now(),
            next_prune: Instant::now(),
            next_measure: Instant::now(),
            generation: u64::MAX,
            next_catalog_check: Instant::now(),
            last_work: Instant::now(),
            pace: crate::pure::pace::Pace::new(Instant::now()),
            absent_since: None,
        };
        w.index_links();
        w
    }

    fn index_links(&mut self) {
        self.by_slot = vec![None; crate::shmem::require_shared().brokers().len()];
        for (i, l) in self.links.iter().enumerate() {
            self.by_slot[l.slot as usize] = Some(i);
        }
        self.rebuild_waiter = true;
    }

    /// The loop, in named phases. Their order matters: signals first (a SIGTERM must not wait
    /// for a round of work); connections and their events before the ring (a record goes only to
    /// a connected link, and an acknowledgement makes room in its window); the ring before the
    /// outboxes (a cold broker's ring records are saved to its outbox, lane 0, before that outbox
    /// is read); releases and deletes before a broker may go hot (hot requires nothing left
    /// behind); the wait last (it decides whether there is more to do at once).
    fn run(mut self) -> ! {
        loop {
            self.take_signals();
            self.follow_extension_and_catalog();
            self.maybe_prune();
            self.maybe_measure_outbox();
            self.service_links();
            let mut more = self.deliver_ring();
            more |= self.deliver_outboxes();
            self.settle_links();
            self.report();
            self.wait(more);
        }
    }

    fn take_signals(&mut self) {
        if shutdown_requested() {
            self.shutdown();
        }
        if crate::shmem::require_shared().leave_requested.load(Ordering::Acquire) {
            guard::log(
                Level::LOG,
                "pg_mqtt_pub worker: leaving, so that DROP, RENAME or a copy of this database can run",
            );
            self.shutdown();
        }
        if take_reload() {
            self.reloaded();
        }
    }

    /// Is the extension (still) installed; has the broker catalog changed; which outboxes are due
    /// for a look (rows can appear without a wake-up: COMMIT PREPARED).
    fn follow_extension_and_catalog(&mut self) {
        if Instant::now() >= self.next_ext_check {
            let was = self.ext_present;
            self.ext_present = extension_present();
            if self.ext_present != was {
                let msg = if self.ext_present {
                    "extension found, starting to publish"
                } else {
                    "extension not installed; idle"
                };
                guard::log(Level::LOG, format!("pg_mqtt_pub worker: {msg}"));
                self.next_catalog_check = Instant::now();
                if self.ext_present {
                    self.adopt_copied_outbox();
                }
            }
            let every = if self.ext_present { 10 } else { 1 };
            self.next_ext_check = Instant::now() + Duration::from_secs(every);
            if self.ext_present {
                self.absent_since = None;
                crate::shmem::require_shared().guess.store(false, Ordering::Release);
            } else {
                self.maybe_exit_idle();
            }
        }
        self.maybe_sync_catalog();
        for l in &mut self.links {
            if Instant::now() >= l.next_outbox_poll {
                l.outbox_check = true;
                let every = if l.cold() { gucs::WORKER_POLL_INTERVAL_MS.get() as u64 } else { 1000 };
                l.next_outbox_poll = Instant::now() + Duration::from_millis(every);
            }
        }
    }

    /// Connect what is due, read and write every socket, take the recorded events.
    fn service_links(&mut self) {
        for l in 0..self.links.len() {
            self.manage_connection(l);
            self.links[l].service_socket(false, false);
            self.handle_events(l);
        }
    }

    /// Hand ring records over, send the QoS 0 packets the clients queued meanwhile (one send()
    /// for many, ADR-010), release what is done.
    fn deliver_ring(&mut self) -> bool {
        let more = self.process_ring();
        for k in &mut self.links {
            if let Some(c) = k.client.as_mut() {
                c.flush();
            }
        }
        self.release_ring();
        more
    }

    fn deliver_outboxes(&mut self) -> bool {
        let mut more = false;
        for l in 0..self.links.len() {
            more |= self.process_outbox(l);
            self.flush_deletes(l);
            self.handle_events(l);
        }
        self.release_ring();
        more
    }

    /// Per link: delete what is acknowledged, go hot if drained, notice a silent broker, finish
    /// a settings switch; then forget removed brokers the scan is done with.
    fn settle_links(&mut self) {
        for l in 0..self.links.len() {
            self.flush_deletes(l);
            self.maybe_go_hot(l);
            self.check_ack_timeout(l);
            self.maybe_switch(l);
        }
        self.retire_removed();
    }

    /// Run `f` (outbox access) in a transaction, unless the extension has been dropped in the
    /// meantime: then note it (the worker goes idle) and return `None` instead of failing on a
    /// missing table.
    fn with_outbox<R>(&mut self, f: impl FnOnce() -> R) -> Option<R> {
        let r = in_transaction(|| extension_exists_in_transaction().then(f));
        if r.is_none() && self.ext_present {
            self.ext_present = false;
            guard::log(Level::LOG, "pg_mqtt_pub worker: extension not installed; idle");
        }
        r
    }

    /// A database copied with CREATE DATABASE ... TEMPLATE has the template's outbox: its
    /// messages go to the dead letters, not to the brokers a second time (data/installation.rs).
    fn adopt_copied_outbox(&mut self) {
        // SAFETY: plain read of a PostgreSQL global.
        let me = unsafe { pg::MyDatabaseId }.to_u32();
        let copied_by = crate::shmem::require_shared().copied_by.load(Ordering::Acquire);
        if let Some(Some(a)) = self.with_outbox(|| crate::data::installation::adopt(me, copied_by)) {
            guard::log(
                Level::LOG,
                format!(
                    "pg_mqtt_pub worker: this database was copied from database {} (CREATE DATABASE ... TEMPLATE); its {} copied outbox messages were moved to mqtt_pub.dead_letters instead of being sent again",
                    a.from, a.moved
                ),
            );
        }
    }

    /// The extension has been gone from this database for a while and nothing of it is left
    /// in the ring or in flight: exit, and let the launcher give the share back (ADR-012).
    /// (It comes back with the next `CREATE EXTENSION` or publish.)
    fn maybe_exit_idle(&mut self) {
        let since = *self.absent_since.get_or_insert_with(Instant::now);
        let guess = crate::shmem::require_shared().guess.swap(false, Ordering::AcqRel);
        if (since.elapsed() < IDLE_EXIT_AFTER && !guess) || self.active() {
            return;
        }
        // (a guess found nothing: only DEBUG1, or a start without the launcher's file would log
        // this for every database of the cluster)
        let level = if guess { Level::DEBUG1 } else { Level::LOG };
        guard::log(level, "pg_mqtt_pub worker: the extension is not installed in this database; exiting");
        crate::shmem::require_shared().idle_exit.store(true, Ordering::Release);
        crate::pg::compat::proc_exit(0)
    }

    /// Is there anything for broker connections to do?
    fn active(&self) -> bool {
        self.ext_present || self.ring.used_slots() > 0 || self.links.iter().any(|k| !k.window.is_empty())
    }
}

/// The current time as a PostgreSQL timestamp (µs).
fn now_us() -> i64 {
    // SAFETY: plain call.
    unsafe { pg::GetCurrentTimestamp() }
}
