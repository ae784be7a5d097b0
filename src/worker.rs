//! The background workers: a launcher, and the worker that publishes.
//!
//! **Launcher** (static, registered in `_PG_init`). Connects to no database (shared catalogs
//! only), waits until `pg_mqtt_pub.database` exists, then starts the worker as a dynamic
//! background worker and supervises it: restarts it after it exits (1 s, doubling up to 30 s if
//! it keeps dying young). This is why a missing database never makes anything crash-loop.
//!
//! **Worker** (dynamic). Connects to `pg_mqtt_pub.database`. While the extension is not installed
//! there it idles (checking once a second); once it is, it connects to the broker and runs the
//! loop below. After `DROP EXTENSION` it delivers what is left in the ring and goes idle again.
//!
//! The loop, one iteration:
//! 1. signals: SIGTERM → disconnect cleanly and exit; SIGHUP → reload, reconnect if the broker
//!    settings changed (after the in-flight window drains, at most 5 s);
//! 2. connection: (re)connect asynchronously when due, with backoff (`backoff.rs`);
//! 3. socket: `mosquitto_loop_read` / `loop_write` / `loop_misc` as the WaitEventSet reported;
//! 4. events recorded by the libmosquitto callbacks: CONNACK, disconnect, acknowledgements;
//! 5. ring: hand READY records to libmosquitto while connected and the in-flight window
//!    (`max_inflight`, QoS 1/2 messages not yet acknowledged) has room;
//! 6. wait on latch + postmaster death + socket. Before sleeping the worker raises
//!    `worker_sleeping` and re-checks the ring, so producers only `SetLatch` when it sleeps.
//!
//! While the broker is down, messages stay in the ring (nothing is taken out that cannot be
//! sent); producers wait up to `publish_timeout_ms` when it is full and then get an ERROR.
//! QoS 1/2 messages already handed to libmosquitto when the connection drops are kept and resent
//! by libmosquitto after the reconnect.

use crate::backoff::reconnect_delay_ms;
use crate::broker::{Client, ClientOptions, Event, Handoff};
use crate::guard::{self, guard, Level};
use crate::gucs::{self, BrokerConfig};
use crate::outbox;
use crate::ring::{Peek, Ring};
use crate::shmem;
use crate::status::{BrokerShared, MODE_COLD};
use pgrx_pg_sys as pg;
use std::collections::{HashMap, VecDeque};
use std::ffi::{c_int, CString};
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

// The raw C signal handlers (the pgrx wrappers are Rust functions and cannot be installed).
extern "C-unwind" {
    #[link_name = "SignalHandlerForConfigReload"]
    fn sighup_handler(arg: c_int);
    #[link_name = "SignalHandlerForShutdownRequest"]
    fn sigterm_handler(arg: c_int);
}

const LIB: &str = "pg_mqtt_pub";
/// Records handed to libmosquitto per loop iteration before the socket is serviced again.
const BATCH: usize = 1024;
/// How long a SIGHUP broker switch or a shutdown waits for in-flight acknowledgements.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// Acknowledged outbox rows deleted per transaction while the drain is under way.
const DELETE_BATCH: usize = 256;

fn fill(dst: &mut [std::ffi::c_char], s: &str) {
    let n = s.len().min(dst.len() - 1);
    for (d, b) in dst.iter_mut().zip(s.as_bytes()[..n].iter()) {
        *d = *b as std::ffi::c_char;
    }
    dst[n] = 0;
}

fn worker_struct(name: &str, function: &str, flags: u32, restart: i32) -> pg::BackgroundWorker {
    // SAFETY: BackgroundWorker is plain C data; all-zero is a valid starting point.
    let mut w: pg::BackgroundWorker = unsafe { std::mem::zeroed() };
    fill(&mut w.bgw_name, name);
    fill(&mut w.bgw_type, name);
    fill(&mut w.bgw_library_name, LIB);
    fill(&mut w.bgw_function_name, function);
    w.bgw_flags = flags as c_int;
    w.bgw_start_time = pg::BgWorkerStartTime::BgWorkerStart_RecoveryFinished;
    w.bgw_restart_time = restart;
    w
}

/// Register the launcher (from `_PG_init`, while preloading).
pub fn register_launcher() {
    let mut w = worker_struct(
        "pg_mqtt_pub launcher",
        "pg_mqtt_pub_launcher_main",
        pg::BGWORKER_SHMEM_ACCESS | pg::BGWORKER_BACKEND_DATABASE_CONNECTION,
        5,
    );
    // SAFETY: called from _PG_init in the postmaster.
    unsafe { pg::RegisterBackgroundWorker(&mut w) };
}

fn install_signals() {
    // SAFETY: standard background-worker setup, before signals are unblocked.
    unsafe {
        pg::pqsignal(libc::SIGHUP, Some(sighup_handler));
        pg::pqsignal(libc::SIGTERM, Some(sigterm_handler));
        // A broker closing the socket must not kill the worker.
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        pg::BackgroundWorkerUnblockSignals();
    }
}

fn shutdown_requested() -> bool {
    // SAFETY: sig_atomic_t flag set by the signal handler.
    unsafe { pg::ShutdownRequestPending != 0 }
}

fn take_reload() -> bool {
    // SAFETY: as above; ProcessConfigFile runs on the main thread outside any transaction.
    unsafe {
        if pg::ConfigReloadPending == 0 {
            return false;
        }
        pg::ConfigReloadPending = 0;
        pg::ProcessConfigFile(pg::GucContext::PGC_SIGHUP);
        true
    }
}

/// Sleep on our latch (also woken by signals), exiting if the postmaster dies, then absorb
/// interrupts: without CHECK_FOR_INTERRUPTS a process never accepts a ProcSignalBarrier, and
/// DROP DATABASE (among others) waits for every process to accept one.
fn nap(ms: i64) {
    // SAFETY: standard latch wait.
    unsafe {
        pg::WaitLatch(
            pg::MyLatch,
            (pg::WL_LATCH_SET | pg::WL_TIMEOUT | pg::WL_EXIT_ON_PM_DEATH) as i32,
            ms,
            pg::PG_WAIT_EXTENSION,
        );
        pg::ResetLatch(pg::MyLatch);
    }
    guard::check_for_interrupts();
}

fn in_transaction<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: the worker is between transactions whenever it calls this.
    unsafe {
        pg::SetCurrentStatementStartTimestamp();
        pg::StartTransactionCommand();
        let r = f();
        pg::CommitTransactionCommand();
        r
    }
}

/// Does the database exist? A heap scan of pg_database, as the autovacuum launcher does: an
/// index lookup would need pg_class, which a process without a database cannot read.
fn database_exists(name: &str) -> bool {
    in_transaction(|| {
        // SAFETY: pg_database is a shared catalog; the scan runs inside a transaction with a
        // snapshot, and each tuple's fixed part is read as FormData_pg_database (GETSTRUCT).
        unsafe {
            pg::GetTransactionSnapshot();
            let rel = pg::table_open(pg::DatabaseRelationId, pg::AccessShareLock as i32);
            let scan = pg::table_beginscan_catalog(rel, 0, std::ptr::null_mut());
            let mut found = false;
            loop {
                let tup = pg::heap_getnext(scan, pg::ScanDirection::ForwardScanDirection);
                if tup.is_null() {
                    break;
                }
                let hdr = (*tup).t_data;
                let form = (hdr as *const u8).add((*hdr).t_hoff as usize) as *const pg::FormData_pg_database;
                let datname = std::ffi::CStr::from_ptr((*form).datname.data.as_ptr());
                if datname.to_bytes() == name.as_bytes() {
                    found = true;
                    break;
                }
            }
            pg::heap_endscan(scan);
            pg::table_close(rel, pg::AccessShareLock as i32);
            found
        }
    })
}

fn extension_exists_in_transaction() -> bool {
    // SAFETY: catalog lookup inside a transaction.
    (unsafe { pg::get_extension_oid(c"pg_mqtt_pub".as_ptr(), true) }) != pg::InvalidOid
}

fn extension_present() -> bool {
    in_transaction(extension_exists_in_transaction)
}

/// Launcher entry point.
#[no_mangle]
pub unsafe extern "C-unwind" fn pg_mqtt_pub_launcher_main(_arg: pg::Datum) {
    guard(|| {
        install_signals();
        // SAFETY: connect to no database: only shared catalogs are needed here.
        unsafe { pg::BackgroundWorkerInitializeConnection(std::ptr::null(), std::ptr::null(), 0) };
        let db = gucs::DATABASE.string();
        let mut waiting_logged = false;
        let mut restart_delay = Duration::from_secs(1);
        loop {
            if shutdown_requested() {
                // SAFETY: exits the process.
                unsafe { pg::proc_exit(1) };
            }
            take_reload();
            if !database_exists(&db) {
                if !waiting_logged {
                    guard::log(
                        Level::LOG,
                        format!("pg_mqtt_pub: waiting for database \"{db}\" (pg_mqtt_pub.database) to be created"),
                    );
                    waiting_logged = true;
                }
                nap(1000);
                continue;
            }
            waiting_logged = false;
            let started = Instant::now();
            supervise_worker();
            // Restart quickly after a long healthy run, back off if it keeps dying young.
            restart_delay = if started.elapsed() > Duration::from_secs(60) {
                Duration::from_secs(1)
            } else {
                (restart_delay * 2).min(Duration::from_secs(30))
            };
            let until = Instant::now() + restart_delay;
            while Instant::now() < until && !shutdown_requested() {
                nap(100);
            }
        }
    })
}

/// Start the worker and wait until it stops (or we are told to stop).
fn supervise_worker() {
    let mut w = worker_struct(
        "pg_mqtt_pub worker",
        "pg_mqtt_pub_worker_main",
        pg::BGWORKER_SHMEM_ACCESS | pg::BGWORKER_BACKEND_DATABASE_CONNECTION,
        pg::BGW_NEVER_RESTART,
    );
    // SAFETY: MyProcPid is ours; the postmaster signals us when the worker changes state.
    w.bgw_notify_pid = unsafe { pg::MyProcPid };
    let mut handle: *mut pg::BackgroundWorkerHandle = std::ptr::null_mut();
    // SAFETY: plain registration.
    if !unsafe { pg::RegisterDynamicBackgroundWorker(&mut w, &mut handle) } {
        guard::log(
            Level::WARNING,
            "pg_mqtt_pub: could not start the worker: no background worker slot free; raise max_worker_processes",
        );
        nap(5000);
        return;
    }
    loop {
        let mut pid: pg::pid_t = 0;
        // SAFETY: handle from RegisterDynamicBackgroundWorker.
        let st = unsafe { pg::GetBackgroundWorkerPid(handle, &mut pid) };
        if st == pg::BgwHandleStatus::BGWH_STOPPED || st == pg::BgwHandleStatus::BGWH_POSTMASTER_DIED {
            return;
        }
        if shutdown_requested() {
            // SAFETY: handle is valid; then exit.
            unsafe {
                pg::TerminateBackgroundWorker(handle);
                pg::proc_exit(1);
            }
        }
        take_reload();
        nap(1000);
    }
}

/// Worker entry point.
#[no_mangle]
pub unsafe extern "C-unwind" fn pg_mqtt_pub_worker_main(_arg: pg::Datum) {
    guard(|| {
        install_signals();
        let db = CString::new(gucs::DATABASE.string()).unwrap_or_default();
        // SAFETY: standard connection; FATAL if the database vanished meanwhile (the launcher
        // then waits for it again).
        unsafe { pg::BackgroundWorkerInitializeConnection(db.as_ptr(), std::ptr::null(), 0) };
        let s = crate::publish::require_shared();
        // SAFETY: MyLatch is our PGPROC latch, in shared memory, valid until we exit.
        unsafe {
            s.worker_latch.store(pg::MyLatch, Ordering::Release);
            s.worker_pid.store(pg::MyProcPid, Ordering::Release);
            pg::on_shmem_exit(Some(forget_latch), pg::Datum::from(0usize));
        }
        crate::broker::lib_init();
        Worker::new().run()
    })
}

unsafe extern "C-unwind" fn forget_latch(_code: c_int, _arg: pg::Datum) {
    if let Some(s) = shmem::shared() {
        s.worker_latch.store(std::ptr::null_mut(), Ordering::Release);
        s.worker_pid.store(0, Ordering::Release);
        s.worker_sleeping.store(false, Ordering::Release);
        s.brokers[0].connected.store(false, Ordering::Release);
        s.brokers[0].inflight.store(0, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ConnState {
    /// No client (extension absent, or before the first connect).
    Idle,
    Connecting {
        since: Instant,
    },
    Connected,
    Retry {
        at: Instant,
    },
}

/// The WaitEventSet for latch + postmaster death + (optionally) the broker socket.
struct Waiter {
    set: *mut pg::WaitEventSet,
    fd: c_int,
    sock_pos: c_int,
    write_interest: bool,
}

impl Waiter {
    fn new(fd: c_int) -> Waiter {
        // SAFETY: standard WaitEventSet construction in a long-lived context.
        unsafe {
            let set = pg::CreateWaitEventSet(pg::TopMemoryContext, 3);
            pg::AddWaitEventToSet(set, pg::WL_LATCH_SET, -1, pg::MyLatch, std::ptr::null_mut());
            pg::AddWaitEventToSet(set, pg::WL_EXIT_ON_PM_DEATH, -1, std::ptr::null_mut(), std::ptr::null_mut());
            let sock_pos = if fd >= 0 {
                pg::AddWaitEventToSet(set, pg::WL_SOCKET_READABLE, fd, std::ptr::null_mut(), std::ptr::null_mut())
            } else {
                -1
            };
            Waiter { set, fd, sock_pos, write_interest: false }
        }
    }

    fn want_write(&mut self, w: bool) {
        if self.sock_pos >= 0 && w != self.write_interest {
            let ev = pg::WL_SOCKET_READABLE | if w { pg::WL_SOCKET_WRITEABLE } else { 0 };
            // SAFETY: sock_pos is a socket event of this set.
            unsafe { pg::ModifyWaitEvent(self.set, self.sock_pos, ev, std::ptr::null_mut()) };
            self.write_interest = w;
        }
    }

    /// Wait; returns (latch set, socket readable, socket writable).
    fn wait(&mut self, timeout_ms: i64) -> (bool, bool, bool) {
        // SAFETY: WaitEvent is plain data.
        let mut evs: [pg::WaitEvent; 3] = unsafe { std::mem::zeroed() };
        // SAFETY: valid set; the array has room for 3 events.
        let n = unsafe { pg::WaitEventSetWait(self.set, timeout_ms, evs.as_mut_ptr(), 3, pg::PG_WAIT_EXTENSION) };
        let (mut l, mut r, mut w) = (false, false, false);
        for e in &evs[..n.max(0) as usize] {
            l |= e.events & pg::WL_LATCH_SET != 0;
            r |= e.events & pg::WL_SOCKET_READABLE != 0;
            w |= e.events & pg::WL_SOCKET_WRITEABLE != 0;
        }
        (l, r, w)
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        // SAFETY: we own the set.
        unsafe { pg::FreeWaitEventSet(self.set) };
    }
}

/// What a libmosquitto message id stands for until its acknowledgement.
#[derive(Clone, Copy)]
enum Inflight {
    /// A ring record at this position (released once acknowledged).
    Ring(u64),
    /// An outbox row (deleted once acknowledged).
    Outbox { id: i64 },
}

/// A ring record between the tail and the scan cursor.
struct Scanned {
    pos: u64,
    nslots: u64,
    done: bool,
}

struct Worker {
    ring: Ring,
    scratch: Vec<u8>,
    events: Vec<Event>,
    status: &'static BrokerShared,
    cfg: BrokerConfig,
    client: Option<Client>,
    state: ConnState,
    failures: u32,
    inflight: HashMap<i32, Inflight>,
    /// Last acknowledgement, or when the in-flight window became non-empty (ack timeout).
    last_progress: Instant,
    /// After a connection drop with messages in flight: send this many one at a time, so a
    /// message that makes the broker close the connection is identified (and charged a failed
    /// attempt) instead of killing every reconnect.
    probe: u32,
    /// Next ring position to look at; records between the tail and here are in `scanned`.
    cursor: u64,
    scanned: VecDeque<Scanned>,
    /// Outbox rows fetched and not yet handed to libmosquitto.
    fetched: VecDeque<outbox::Row>,
    /// Acknowledged outbox rows to delete.
    to_delete: Vec<i64>,
    /// The outbox may have rows for us (set by wake-ups and timers, cleared by an empty fetch).
    outbox_check: bool,
    /// Where the current pass over the outbox is: the last (lane, id) fetched. `None` starts
    /// from the head (after a reconnect, going cold, or reaching the end of a pass).
    drain_after: Option<(i16, i64)>,
    next_outbox_poll: Instant,
    /// A broker settings change waiting for the in-flight window to drain.
    switch_to: Option<(BrokerConfig, Instant)>,
    refusal: Option<String>,
    waiter: Option<Waiter>,
    rebuild_waiter: bool,
    ext_present: bool,
    next_ext_check: Instant,
    next_prune: Instant,
}

impl Worker {
    fn new() -> Worker {
        let status = &crate::publish::require_shared().brokers[0];
        let cfg = BrokerConfig::default_broker();
        status.set_identity(&cfg.name, &cfg.host, cfg.port);
        let ring = shmem::ring();
        // A restarted worker cannot know where the old one's scan was: look again from the tail.
        // (QoS 1/2 records the old worker had in flight are sent again: at least once.)
        status.flip_head.fetch_max(ring.head(), Ordering::AcqRel);
        Worker {
            ring,
            scratch: Vec::new(),
            events: Vec::new(),
            status,
            cfg,
            client: None,
            state: ConnState::Idle,
            failures: 0,
            inflight: HashMap::new(),
            last_progress: Instant::now(),
            probe: 0,
            cursor: ring.tail(),
            scanned: VecDeque::new(),
            fetched: VecDeque::new(),
            to_delete: Vec::new(),
            outbox_check: true,
            drain_after: None,
            next_outbox_poll: Instant::now(),
            switch_to: None,
            refusal: None,
            waiter: None,
            rebuild_waiter: true,
            ext_present: false,
            next_ext_check: Instant::now(),
            next_prune: Instant::now(),
        }
    }

    fn run(mut self) -> ! {
        loop {
            if shutdown_requested() {
                self.shutdown();
            }
            if take_reload() {
                self.reloaded();
            }
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
                }
                let every = if self.ext_present { 10 } else { 1 };
                self.next_ext_check = Instant::now() + Duration::from_secs(every);
            }
            if Instant::now() >= self.next_outbox_poll {
                // Rows can appear without a wake-up (COMMIT PREPARED): look now and then.
                self.outbox_check = true;
                let every = if self.cold() { gucs::WORKER_POLL_INTERVAL_MS.get() as u64 } else { 1000 };
                self.next_outbox_poll = Instant::now() + Duration::from_millis(every);
            }
            self.maybe_prune();
            self.manage_connection();
            self.service_socket(false, false);
            self.handle_events();
            let mut more = self.process_ring();
            self.release_ring();
            more |= self.process_outbox();
            self.flush_deletes();
            self.handle_events();
            self.release_ring();
            self.flush_deletes();
            self.maybe_go_hot();
            self.check_ack_timeout();
            self.maybe_switch();
            self.wait(more);
        }
    }

    fn cold(&self) -> bool {
        self.status.mode.load(Ordering::Acquire) == MODE_COLD
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

    /// Is there anything for a broker connection to do?
    fn active(&self) -> bool {
        self.ext_present || self.ring.used_slots() > 0 || !self.inflight.is_empty()
    }

    fn manage_connection(&mut self) {
        let now = Instant::now();
        if !self.active() && self.state != ConnState::Idle {
            // Extension dropped and nothing left to deliver: let go of the broker.
            if let Some(mut c) = self.client.take() {
                c.disconnect();
                c.loop_write();
            }
            self.state = ConnState::Idle;
            self.status.set_connected(false);
            self.go_cold();
            self.rebuild_waiter = true;
            guard::log(Level::LOG, format!("pg_mqtt_pub: idle, disconnected from broker \"{}\"", self.cfg.name));
            return;
        }
        match self.state {
            ConnState::Idle if self.active() => self.connect(),
            ConnState::Idle => {}
            ConnState::Retry { at } if now >= at => self.connect(),
            ConnState::Connecting { since } => {
                let limit = Duration::from_secs(self.cfg.keepalive.max(10) as u64);
                if now.duration_since(since) > limit {
                    self.fail(format!(
                        "connecting to {}:{} timed out after {} s",
                        self.cfg.host,
                        self.cfg.port,
                        limit.as_secs()
                    ));
                }
            }
            _ => {}
        }
    }

    fn client_id(&self) -> String {
        if !self.cfg.client_id.is_empty() {
            return self.cfg.client_id.clone();
        }
        // SAFETY: plain call; unique per cluster, stable across restarts.
        format!("pg_mqtt_pub-{}", unsafe { pg::GetSystemIdentifier() })
    }

    fn connect(&mut self) {
        self.rebuild_waiter = true;
        self.status.set_identity(&self.cfg.name, &self.cfg.host, self.cfg.port);
        let result = match self.client.as_mut() {
            Some(_) => Ok(()), // still connecting
            None => {
                let id = self.client_id();
                let opts = ClientOptions {
                    client_id: &id,
                    protocol: self.cfg.protocol,
                    max_inflight: self.cfg.max_inflight,
                    username: &self.cfg.username,
                    password: &self.cfg.password,
                    use_tls: self.cfg.use_tls,
                    ca_cert: &self.cfg.ca_cert,
                };
                Client::new(&opts).and_then(|mut c| {
                    let r = c.connect(&self.cfg.host, self.cfg.port, self.cfg.keepalive);
                    self.client = Some(c);
                    r
                })
            }
        };
        match result {
            Ok(()) => self.state = ConnState::Connecting { since: Instant::now() },
            Err(e) => self.fail(format!("cannot connect to {}:{}: {e}", self.cfg.host, self.cfg.port)),
        }
    }

    /// The broker can no longer be written to: publishers use the outbox from now on.
    fn go_cold(&mut self) {
        let ring = self.ring;
        let s = self.status;
        shmem::with_lock(shmem::RING_LOCK, pg::LWLockMode::LW_EXCLUSIVE, || {
            if s.mode.load(Ordering::Acquire) != MODE_COLD {
                s.flip_head.store(ring.head(), Ordering::Release);
                s.mode.store(MODE_COLD, Ordering::Release);
            }
        });
        self.fetched.clear();
        self.drain_after = None;
        self.outbox_check = true;
    }

    /// A connection attempt failed or the connection dropped: record why, schedule a retry.
    fn fail(&mut self, why: String) {
        let was_connected = self.state == ConnState::Connected;
        self.go_cold();
        self.status.set_connected(false);
        self.status.set_error(&why);
        if was_connected {
            guard::log(Level::WARNING, format!("pg_mqtt_pub: lost connection to broker \"{}\": {why}", self.cfg.name));
            self.failures = 0;
        } else if self.failures == 0 {
            guard::log(Level::WARNING, format!("pg_mqtt_pub: broker \"{}\": {why}", self.cfg.name));
        }
        self.drop_client(true);
        let delay = reconnect_delay_ms(gucs::RECONNECT_INTERVAL_MS.get() as u64, self.failures);
        self.failures = self.failures.saturating_add(1);
        self.state = ConnState::Retry { at: Instant::now() + Duration::from_millis(delay) };
        self.rebuild_waiter = true;
    }

    /// Forget the client and everything it had in flight: we resend ourselves, in order —
    /// unacknowledged ring records go to the outbox (lane 0, ahead of everything), unacknowledged
    /// outbox rows are simply fetched again. (libmosquitto would resend them from its memory,
    /// without letting us notice a message that keeps killing the connection.)
    fn drop_client(&mut self, count_suspect: bool) {
        if let Some(mut c) = self.client.take() {
            c.disconnect();
            c.loop_write();
        }
        self.rebuild_waiter = true;
        if self.inflight.is_empty() {
            return;
        }
        let inflight: Vec<Inflight> = self.inflight.drain().map(|(_, f)| f).collect();
        if count_suspect && self.probe > 0 && inflight.len() == 1 {
            // The connection died while only this message was in flight.
            self.message_failed(inflight[0], "the broker closed the connection when this message was sent".into());
        } else {
            let mut ring: Vec<(u64, u64)> =
                inflight.iter().filter_map(|f| if let Inflight::Ring(p) = f { Some((*p, 0)) } else { None }).collect();
            ring.sort_unstable();
            if !ring.is_empty() {
                self.rescue(&ring);
            }
        }
        self.probe = if count_suspect { (inflight.len() as u32).min(10) } else { 0 };
        self.fetched.clear();
        self.drain_after = None;
        self.status.inflight.store(0, Ordering::Relaxed);
    }

    fn service_socket(&mut self, readable: bool, writable: bool) {
        let Some(c) = self.client.as_mut() else { return };
        if c.socket() < 0 {
            return;
        }
        if readable {
            c.loop_read();
        }
        if c.socket() >= 0 && (writable || c.want_write()) {
            c.loop_write();
        }
        if c.socket() >= 0 {
            c.loop_misc();
        }
    }

    fn mark_ring_done(&mut self, pos: u64) {
        if let Ok(i) = self.scanned.binary_search_by_key(&pos, |s| s.pos) {
            self.scanned[i].done = true;
        }
    }

    fn handle_events(&mut self) {
        let Some(c) = self.client.as_mut() else { return };
        let mut events = std::mem::take(&mut self.events);
        c.take_events(&mut events);
        for ev in events.iter().copied() {
            match ev {
                Event::Connected(0) => {
                    self.state = ConnState::Connected;
                    self.failures = 0;
                    self.refusal = None;
                    self.outbox_check = true;
                    self.last_progress = Instant::now();
                    self.status.set_connected(true);
                    guard::log(
                        Level::LOG,
                        format!(
                            "pg_mqtt_pub: connected to broker \"{}\" at {}:{}",
                            self.cfg.name, self.cfg.host, self.cfg.port
                        ),
                    );
                }
                Event::Connected(code) => {
                    let why = self.client.as_ref().map(|c| c.describe_connack(code)).unwrap_or_default();
                    self.refusal = Some(why);
                }
                Event::Disconnected(rc) => {
                    if matches!(self.state, ConnState::Connected | ConnState::Connecting { .. }) {
                        let why = self.refusal.take().unwrap_or_else(|| {
                            let base = if rc == 0 {
                                "disconnected".to_string()
                            } else if rc >= 0x80 {
                                format!(
                                    "broker closed the connection: {} (0x{rc:02x})",
                                    crate::broker::reason_string(rc)
                                )
                            } else {
                                format!("connection lost: {}", crate::broker::strerror(rc))
                            };
                            self.client.as_ref().map(|c| c.with_log(base.clone())).unwrap_or(base)
                        });
                        self.fail(why);
                    }
                }
                Event::Published { mid, reason } => {
                    let Some(what) = self.inflight.remove(&mid) else { continue };
                    self.last_progress = Instant::now();
                    self.probe = self.probe.saturating_sub(1);
                    if reason >= 0x80 {
                        let text = crate::broker::reason_string(reason).to_lowercase();
                        self.message_failed(what, format!("broker refused: {text} (0x{reason:02x})"));
                        continue;
                    }
                    self.status.messages_sent.fetch_add(1, Ordering::Relaxed);
                    match what {
                        Inflight::Ring(pos) => self.mark_ring_done(pos),
                        Inflight::Outbox { id, .. } => self.to_delete.push(id),
                    }
                }
            }
        }
        self.status.inflight.store(self.inflight.len() as u32, Ordering::Relaxed);
        self.events = events;
    }

    fn window_open(&self) -> bool {
        let window = if self.probe > 0 { 1 } else { self.cfg.max_inflight as usize };
        self.state == ConnState::Connected && self.switch_to.is_none() && self.inflight.len() < window
    }

    fn note_sent(&mut self, mid: i32, what: Inflight) {
        if self.inflight.is_empty() {
            self.last_progress = Instant::now();
        }
        self.inflight.insert(mid, what);
    }

    /// One message failed (the broker refused it, or the client library did): count the attempt
    /// in the outbox with exponential backoff, or dead-letter it after `poison_max_attempts`.
    /// Other messages keep flowing: a failed row simply is not due until its `next_retry_at`.
    fn message_failed(&mut self, what: Inflight, why: String) {
        self.status.messages_failed.fetch_add(1, Ordering::Relaxed);
        self.status.set_error(&why);
        let base = gucs::RETRY_BASE_MS.get() as i64;
        let max = gucs::POISON_MAX_ATTEMPTS.get();
        let result = match what {
            Inflight::Outbox { id, .. } => self.with_outbox(|| outbox::record_failure(id, &why, base, max)).flatten(),
            Inflight::Ring(pos) => {
                let ring = self.ring;
                let name = self.cfg.name.clone();
                let mut scratch = Vec::new();
                let r = self
                    .with_outbox(|| {
                        // SAFETY: the record is scanned but not released: still intact.
                        match unsafe { ring.peek_at(pos, &mut scratch) } {
                            Peek::Ready(r) => outbox::insert_failed(
                                outbox::NewRow::of(&name, &r.message(), outbox::LANE_PUBLISHED),
                                &why,
                                base,
                                max,
                            ),
                            _ => None,
                        }
                    })
                    .flatten();
                self.mark_ring_done(pos);
                r
            }
        };
        match result {
            Some(f) if f.dead_lettered => {
                self.status.dead_lettered.fetch_add(1, Ordering::Relaxed);
                guard::log(
                    Level::WARNING,
                    format!(
                        "pg_mqtt_pub: message to \"{}\" on broker \"{}\" moved to mqtt_pub.dead_letters after {} attempts: {why}",
                        f.topic, self.cfg.name, f.attempts
                    ),
                );
            }
            Some(f) => {
                // wake up when it is due again
                let delay = Duration::from_millis((base as u64).saturating_mul(1 << (f.attempts - 1).clamp(0, 20)));
                self.next_outbox_poll = self.next_outbox_poll.min(Instant::now() + delay);
            }
            None => {}
        }
    }

    /// Scan the ring from the cursor: publish records of a hot broker, take records of a cold
    /// broker back into the outbox (lane 0), skip cancelled reservations. Returns true if more
    /// could be done right away.
    fn process_ring(&mut self) -> bool {
        let mut rescue: Vec<(u64, u64)> = Vec::new();
        let mut failed: Vec<(u64, String)> = Vec::new();
        let mut more = true;
        let ring = self.ring;
        let mut scratch = std::mem::take(&mut self.scratch);
        for _ in 0..BATCH {
            let pos = self.cursor;
            let open = self.window_open();
            let mut refused = None;
            // SAFETY: this process is the ring's only consumer; pos is a record boundary.
            let (n, outcome) = match unsafe { ring.peek_at(pos, &mut scratch) } {
                Peek::Empty | Peek::NotReady => {
                    more = false;
                    break;
                }
                Peek::Cancelled(n) => (n, None),
                Peek::Ready(r) => {
                    if self.status.mode.load(Ordering::Acquire) == MODE_COLD {
                        if !self.ext_present {
                            more = false;
                            break; // nowhere to put it yet
                        }
                        rescue.push((pos, r.nslots));
                        (r.nslots, Some(None))
                    } else {
                        if !open {
                            more = false;
                            break;
                        }
                        let Some(c) = self.client.as_mut() else { break };
                        let h = c.publish(r.topic_nul, r.payload, r.qos, r.retain);
                        if h == Handoff::NotConnected {
                            more = false;
                            break;
                        }
                        if let Handoff::Refused { rc } = h {
                            refused =
                                Some(format!("refused by the MQTT client library: {}", crate::broker::strerror(rc)));
                        }
                        (r.nslots, Some(Some((h, r.qos))))
                    }
                }
            };
            let done = match outcome {
                None => true,        // cancelled
                Some(None) => false, // to rescue
                Some(Some((Handoff::Accepted { mid }, q))) if q > 0 => {
                    self.note_sent(mid, Inflight::Ring(pos));
                    false
                }
                Some(Some((Handoff::Accepted { .. }, _))) => {
                    self.status.messages_sent.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Some(Some(_)) => false, // refused: handled below
            };
            if let Some(why) = refused {
                failed.push((pos, why));
            }
            self.scanned.push_back(Scanned { pos, nslots: n, done });
            self.cursor = pos + n;
        }
        self.scratch = scratch;
        if !rescue.is_empty() {
            self.rescue(&rescue);
        }
        for (pos, why) in failed {
            self.message_failed(Inflight::Ring(pos), why);
        }
        self.status.inflight.store(self.inflight.len() as u32, Ordering::Relaxed);
        more
    }

    /// Move ring records of a cold broker into the outbox (lane 0, ahead of everything written
    /// by publishers since), then let the ring forget them.
    fn rescue(&mut self, records: &[(u64, u64)]) {
        let ring = self.ring;
        let mut scratch = Vec::new();
        let name = self.cfg.name.clone();
        let done = self.with_outbox(|| {
            for &(pos, _) in records {
                // SAFETY: these records are scanned but not released: still intact in the ring.
                if let Peek::Ready(r) = unsafe { ring.peek_at(pos, &mut scratch) } {
                    let mut row = std::iter::once(outbox::NewRow::of(&name, &r.message(), outbox::LANE_RECOVERED));
                    outbox::insert(&mut row);
                }
            }
        });
        if done.is_none() {
            return; // no outbox to put them in: they stay in the ring
        }
        for &(pos, _) in records {
            self.mark_ring_done(pos);
        }
        self.outbox_check = true;
    }

    /// Free the ring up to the first record not yet delivered.
    fn release_ring(&mut self) {
        let mut to = None;
        while self.scanned.front().is_some_and(|s| s.done) {
            let s = self.scanned.pop_front().expect("checked");
            to = Some(s.pos + s.nslots);
        }
        if let Some(pos) = to {
            // SAFETY: every record before `pos` is delivered, rescued or cancelled.
            unsafe { self.ring.release_to(pos) };
        }
    }

    /// Deliver outbox rows, oldest first. Returns true if more could be done right away.
    fn process_outbox(&mut self) -> bool {
        if self.state != ConnState::Connected || !self.ext_present {
            return false;
        }
        loop {
            if !self.window_open() {
                return false;
            }
            if self.fetched.is_empty() {
                if !self.outbox_check {
                    return false;
                }
                // While a cold broker may still have records in the ring from before it went cold
                // (the scan has not passed flip_head), only recovered rows (lane 0) may go: a
                // publisher's row is newer than any of those records.
                let recovered_only = self.cold() && self.cursor < self.status.flip_head.load(Ordering::Acquire);
                let mut exclude: Vec<i64> = self.to_delete.clone();
                exclude.extend(self.inflight.values().filter_map(|f| match f {
                    Inflight::Outbox { id, .. } => Some(*id),
                    Inflight::Ring(_) => None,
                }));
                let limit = gucs::OUTBOX_BATCH_SIZE.get() as usize;
                let name = self.cfg.name.clone();
                let after = self.drain_after;
                let Some(rows) = self.with_outbox(|| outbox::fetch(&name, limit, &exclude, recovered_only, after))
                else {
                    return false;
                };
                if rows.len() < limit {
                    // end of this pass; the next one starts from the head (retries that came due)
                    self.outbox_check = after.is_some();
                    self.drain_after = None;
                } else {
                    self.drain_after = rows.last().map(|r| (r.lane, r.id));
                }
                if rows.is_empty() {
                    return false;
                }
                self.fetched.extend(rows);
            }
            let row = self.fetched.pop_front().expect("fetched above");
            let Some(c) = self.client.as_mut() else { return false };
            match c.publish(&row.topic_nul, &row.payload, row.qos, row.retain) {
                Handoff::Accepted { mid } => self.note_sent(mid, Inflight::Outbox { id: row.id }),
                Handoff::Refused { rc } => self.message_failed(
                    Inflight::Outbox { id: row.id },
                    format!("refused by the MQTT client library: {}", crate::broker::strerror(rc)),
                ),
                Handoff::NotConnected => {
                    self.fetched.push_front(row);
                    return false;
                }
            }
        }
    }

    /// Delete acknowledged rows, in batches: one transaction per few acknowledgements would cap
    /// the drain rate at the transaction rate. Everything goes once the window empties.
    fn flush_deletes(&mut self) {
        let outbox_in_flight = self.inflight.values().any(|f| matches!(f, Inflight::Outbox { .. }));
        if self.to_delete.is_empty() || (self.to_delete.len() < DELETE_BATCH && outbox_in_flight) {
            return;
        }
        let ids = std::mem::take(&mut self.to_delete);
        self.with_outbox(|| outbox::delete(&ids)); // without the extension the rows are gone anyway
    }

    /// A cold broker whose outbox is empty, with nobody about to write to it, goes hot again.
    fn maybe_go_hot(&mut self) {
        if !self.cold()
            || self.state != ConnState::Connected
            || !self.ext_present
            || self.outbox_check
            || !self.fetched.is_empty()
            || !self.to_delete.is_empty()
            || self.inflight.values().any(|f| matches!(f, Inflight::Outbox { .. }))
            || self.cursor < self.status.flip_head.load(Ordering::Acquire)
            || self.status.cold_writers.load(Ordering::Acquire) != 0
        {
            return;
        }
        let s = self.status;
        let name = self.cfg.name.clone();
        // The check runs under the ring lock, with a snapshot taken inside it: no publisher can
        // register as a cold writer (or see the mode) between "outbox empty" and "hot".
        let hot = self.with_outbox(|| {
            shmem::with_lock(shmem::RING_LOCK, pg::LWLockMode::LW_EXCLUSIVE, || {
                if s.cold_writers.load(Ordering::Acquire) == 0 && !outbox::exists(&name) {
                    s.mode.store(0, Ordering::Release);
                    true
                } else {
                    false
                }
            })
        });
        if hot == Some(true) {
            guard::log(
                Level::LOG,
                format!("pg_mqtt_pub: broker \"{}\" outbox drained, back to the hot path", self.cfg.name),
            );
        } else {
            self.outbox_check = true;
        }
    }

    /// Delete dead letters older than `dead_letter_retain_days` (0 = keep): at start, then about
    /// hourly, in batches of 1000 rows (at most 20 per round) so no transaction runs long.
    fn maybe_prune(&mut self) {
        if !self.ext_present || Instant::now() < self.next_prune {
            return;
        }
        self.next_prune = Instant::now() + Duration::from_secs(3600);
        let days = gucs::DEAD_LETTER_RETAIN_DAYS.get();
        if days == 0 {
            return;
        }
        let mut total = 0;
        for _ in 0..20 {
            let Some(n) = self.with_outbox(|| outbox::prune_dead_letters(days, 1000)) else { return };
            total += n;
            if n < 1000 {
                break;
            }
        }
        if total > 0 {
            guard::log(Level::LOG, format!("pg_mqtt_pub: pruned {total} dead letters older than {days} days"));
        }
    }

    /// A broker that keeps the connection but stops acknowledging must not stall delivery.
    fn check_ack_timeout(&mut self) {
        let limit = Duration::from_millis(gucs::ACK_TIMEOUT_MS.get() as u64);
        if self.state == ConnState::Connected && !self.inflight.is_empty() && self.last_progress.elapsed() > limit {
            let why = format!(
                "no acknowledgement for {} ms with {} messages in flight; reconnecting",
                limit.as_millis(),
                self.inflight.len()
            );
            self.fail(why);
            self.failures = 0; // reconnect at once
            self.state = ConnState::Retry { at: Instant::now() };
        }
    }

    fn reloaded(&mut self) {
        let new = BrokerConfig::default_broker();
        if new == self.cfg {
            return;
        }
        guard::log(
            Level::LOG,
            format!("pg_mqtt_pub: broker \"{}\" settings changed, reconnecting to {}:{}", new.name, new.host, new.port),
        );
        self.switch_to = Some((new, Instant::now() + DRAIN_GRACE));
    }

    /// Complete a pending settings switch once in-flight messages are acknowledged (or the grace
    /// period ends: then they are taken back into the outbox and sent again).
    fn maybe_switch(&mut self) {
        let Some((_, deadline)) = &self.switch_to else { return };
        let connected = self.state == ConnState::Connected;
        if connected && !self.inflight.is_empty() && Instant::now() < *deadline {
            return;
        }
        let (new, _) = self.switch_to.take().expect("checked above");
        self.go_cold();
        self.drop_client(false);
        self.cfg = new;
        self.status.set_connected(false);
        self.state = ConnState::Idle;
        self.failures = 0;
        self.rebuild_waiter = true;
    }

    fn ring_ready(&mut self) -> bool {
        // SAFETY: only consumer; the view is dropped immediately.
        matches!(unsafe { self.ring.peek_at(self.cursor, &mut self.scratch) }, Peek::Ready(_) | Peek::Cancelled(_))
    }

    fn wait(&mut self, more: bool) {
        let fd = self.client.as_ref().map(|c| c.socket()).unwrap_or(-1);
        if self.rebuild_waiter || self.waiter.as_ref().is_none_or(|w| w.fd != fd) {
            self.waiter = Some(Waiter::new(fd));
            self.rebuild_waiter = false;
        }
        let want_write = self.client.as_ref().is_some_and(|c| c.socket() >= 0 && c.want_write());
        let now = Instant::now();
        let until = |t: Instant| t.saturating_duration_since(now).as_millis() as i64;
        let mut timeout: i64 = 1000; // keepalive handling granularity
        if let ConnState::Retry { at } = self.state {
            timeout = timeout.min(until(at));
        }
        if !self.ext_present {
            timeout = timeout.min(until(self.next_ext_check));
        }
        if self.state == ConnState::Connected {
            timeout = timeout.min(until(self.next_outbox_poll));
        }
        let shared = crate::publish::require_shared();
        let mut sleeping = false;
        if more || (self.outbox_check && self.window_open() && self.ext_present) {
            timeout = 0;
        } else {
            // The wake-up protocol (shmem.rs): announce, then re-check, then sleep.
            shared.worker_sleeping.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            sleeping = true;
            if (self.window_open() || self.cold()) && self.ring_ready() {
                timeout = 0;
            }
        }
        let w = self.waiter.as_mut().expect("waiter built above");
        w.want_write(want_write);
        let (latch, readable, writable) = w.wait(timeout.max(0));
        if sleeping {
            shared.worker_sleeping.store(false, Ordering::SeqCst);
        }
        if latch {
            // SAFETY: our own latch.
            unsafe { pg::ResetLatch(pg::MyLatch) };
        }
        // Most wake-ups are hot commits: query the outbox only if someone wrote to it (the flag
        // is raised whether or not we slept). Profiled: treating every wake-up as "look at the
        // outbox" ran one outbox query per commit.
        if shared.outbox_dirty.swap(false, Ordering::AcqRel) {
            self.outbox_check = true;
        }
        guard::check_for_interrupts();
        if readable || writable {
            self.service_socket(readable, writable);
        }
    }

    /// Shutting down: the ring is shared memory and will not survive the restart, so everything
    /// still in it — sent but unacknowledged, or not sent yet — goes to the outbox (lane 0,
    /// ahead of everything else). Brokers start cold, so it is delivered first after the restart.
    fn save_ring_to_outbox(&mut self) {
        let mut scratch = std::mem::take(&mut self.scratch);
        loop {
            // SAFETY: only consumer; pos is the scan cursor, a record boundary.
            let n = match unsafe { self.ring.peek_at(self.cursor, &mut scratch) } {
                Peek::Ready(r) => r.nslots,
                Peek::Cancelled(n) => {
                    self.scanned.push_back(Scanned { pos: self.cursor, nslots: n, done: true });
                    self.cursor += n;
                    continue;
                }
                Peek::Empty | Peek::NotReady => break,
            };
            self.scanned.push_back(Scanned { pos: self.cursor, nslots: n, done: false });
            self.cursor += n;
        }
        self.scratch = scratch;
        let left: Vec<(u64, u64)> = self.scanned.iter().filter(|s| !s.done).map(|s| (s.pos, s.nslots)).collect();
        if left.is_empty() || !self.ext_present {
            return;
        }
        self.inflight.clear();
        self.rescue(&left);
        self.release_ring();
        guard::log(
            Level::LOG,
            format!("pg_mqtt_pub: worker stopping; {} undelivered messages saved to the outbox", left.len()),
        );
    }

    fn shutdown(&mut self) -> ! {
        if self.state == ConnState::Connected {
            let until = Instant::now() + SHUTDOWN_GRACE;
            while !self.inflight.is_empty() && Instant::now() < until && self.state == ConnState::Connected {
                self.service_socket(true, true);
                self.handle_events();
                nap(10);
            }
            self.release_ring();
            let ids = std::mem::take(&mut self.to_delete);
            self.with_outbox(|| outbox::delete(&ids));
            if let Some(c) = self.client.as_mut() {
                c.disconnect();
                c.loop_write();
            }
        }
        self.client = None;
        self.save_ring_to_outbox();
        // SAFETY: exits the process.
        unsafe { pg::proc_exit(0) }
    }
}
