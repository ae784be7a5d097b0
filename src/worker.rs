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
use crate::guard::{self, guard, Level, PgError};
use crate::gucs::{self, BrokerConfig};
use crate::outbox;
use crate::ring::{Peek, Ring, RunState};
use crate::scanlog::{Hole, ScanLog};
use crate::shmem;
use crate::status::{BrokerShared, Mode};
use crate::window::{Lost, Window};
use pgrx_pg_sys as pg;
use std::collections::VecDeque;
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
/// for at most LINGER_NAP of added latency.
const LINGER: Duration = Duration::from_millis(2);
const LINGER_NAP: Duration = Duration::from_micros(200);

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
        crate::compat::pqsignal(libc::SIGHUP, Some(sighup_handler));
        crate::compat::pqsignal(libc::SIGTERM, Some(sigterm_handler));
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
    let r = unsafe {
        pg::SetCurrentStatementStartTimestamp();
        pg::StartTransactionCommand();
        let r = f();
        pg::CommitTransactionCommand();
        r
    };
    STATS_PENDING.store(true, Ordering::Relaxed);
    report_stats();
    r
}

/// Start `client`'s connect on a helper thread. libmosquitto resolves the host name with a
/// blocking getaddrinfo() inside its "asynchronous" connect; a name that resolves slowly (or a
/// DNS server that does not answer) would stop delivery to every broker for seconds per try. The
/// thread runs only libmosquitto and libc code (no PostgreSQL function), owns the client until
/// it returns it, and blocks every signal, so PostgreSQL's handlers run in the main thread only.
/// The name (not an address) is what libmosquitto connects to, so TLS still verifies the
/// certificate against it.
type Connecting = std::thread::JoinHandle<(Client, Result<(), String>)>;

fn connect_on_helper_thread(client: Client, host: &str, port: u16, keepalive: i32) -> Result<Connecting, String> {
    let host = host.to_string();
    let mut client = Some(client);
    // SAFETY: plain signal-mask calls on this thread; the new thread inherits the full mask and
    // this thread's own mask is restored right after.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let handle = std::thread::Builder::new().name("pg_mqtt_pub connect".into()).spawn({
            let mut client = client.take().expect("moved once");
            move || {
                let r =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| client.connect(&host, port, keepalive)))
                        .unwrap_or_else(|_| Err("the connect thread panicked".into()));
                (client, r)
            }
        });
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        handle.map_err(|e| format!("cannot start a connect thread: {e}"))
    }
}

/// The worker's transactions have table statistics not yet reported.
static STATS_PENDING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Report the table statistics of our transactions (as a backend does when it goes idle): the
/// outbox's deleted rows must count as dead tuples, or autovacuum never cleans it during a long
/// drain and every fetch wades through them. PostgreSQL flushes at most about once a second;
/// returns the milliseconds until the next try (0: nothing pending).
fn report_stats() -> i64 {
    if !STATS_PENDING.load(Ordering::Relaxed) {
        return 0;
    }
    // SAFETY: outside any transaction (after CommitTransactionCommand, or in the main loop).
    let wait = unsafe { pg::pgstat_report_stat(false) } as i64;
    if wait == 0 {
        STATS_PENDING.store(false, Ordering::Relaxed);
    }
    wait
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

/// The password to log in with: the first line of `password_file` when one is set (read at
/// each connect, so rotating it needs no SQL and the secret never passes through SQL text or
/// the server log), else the inline one.
fn read_password(cfg: &BrokerConfig) -> Result<String, String> {
    if cfg.password_file.is_empty() {
        return Ok(cfg.password.clone());
    }
    std::fs::read_to_string(&cfg.password_file)
        .map(|s| s.lines().next().unwrap_or("").to_string())
        .map_err(|e| format!("cannot read password_file \"{}\": {e}", cfg.password_file))
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
                crate::compat::proc_exit(1);
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
                crate::compat::proc_exit(1);
            }
        }
        take_reload();
        nap(1000);
    }
}

/// Settings the worker's SQL depends on, fixed at connect with the highest source priority, so
/// that `ALTER DATABASE` / `ALTER ROLE ... SET` can neither hijack (search_path) nor break
/// (timeouts, read-only default) the bootstrap superuser's queries. Each query also pins its
/// path itself (`spi.rs`).
fn pin_session_settings() {
    const PINNED: [(&std::ffi::CStr, &std::ffi::CStr); 9] = [
        (c"search_path", crate::spi::PINNED_PATH),
        (c"statement_timeout", c"0"),
        (c"lock_timeout", c"0"),
        (c"idle_in_transaction_session_timeout", c"0"),
        (c"idle_session_timeout", c"0"),
        (c"default_transaction_read_only", c"off"),
        (c"default_transaction_isolation", c"read committed"),
        (c"session_replication_role", c"origin"),
        // The worker's own writes (rescued ring records, deleted outbox rows) must not wait for a
        // synchronous standby: that would stop delivery for everybody while none is attached.
        // Losing them in a failover loses nothing committed by a user (ring records live only in
        // this server's memory anyway; a lost delete means a duplicate, which at-least-once allows).
        (c"synchronous_commit", c"local"),
    ];
    for (name, value) in PINNED {
        // SAFETY: plain GUC assignment in our own process; PGC_S_OVERRIDE outranks every file,
        // database and role setting.
        unsafe {
            pg::SetConfigOption(name.as_ptr(), value.as_ptr(), pg::GucContext::PGC_SUSET, pg::GucSource::PGC_S_OVERRIDE)
        };
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
        pin_session_settings();
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
        for b in s.brokers() {
            b.connected.store(false, Ordering::Release);
            b.inflight.store(0, Ordering::Relaxed);
        }
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

/// The WaitEventSet: latch + postmaster death + one socket per connected broker.
struct Waiter {
    set: *mut pg::WaitEventSet,
    /// (link index, fd, position in the set, write interest)
    socks: Vec<(usize, c_int, c_int, bool)>,
    /// Room for every event of the set (kept, so a wait allocates nothing).
    events: Vec<pg::WaitEvent>,
}

impl Waiter {
    fn new(fds: &[(usize, c_int)]) -> Waiter {
        // SAFETY: standard WaitEventSet construction in a long-lived context.
        unsafe {
            let set = crate::compat::create_wait_event_set(2 + fds.len() as c_int);
            pg::AddWaitEventToSet(set, pg::WL_LATCH_SET, -1, pg::MyLatch, std::ptr::null_mut());
            pg::AddWaitEventToSet(set, pg::WL_EXIT_ON_PM_DEATH, -1, std::ptr::null_mut(), std::ptr::null_mut());
            let socks = fds
                .iter()
                .map(|&(l, fd)| {
                    let pos = pg::AddWaitEventToSet(
                        set,
                        pg::WL_SOCKET_READABLE,
                        fd,
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                    );
                    (l, fd, pos, false)
                })
                .collect();
            // SAFETY: WaitEvent is plain data.
            let events = vec![std::mem::zeroed(); 2 + fds.len()];
            Waiter { set, socks, events }
        }
    }

    fn same_sockets(&self, fds: &[(usize, c_int)]) -> bool {
        self.socks.len() == fds.len() && self.socks.iter().zip(fds).all(|(a, b)| a.0 == b.0 && a.1 == b.1)
    }

    fn want_write(&mut self, link: usize, w: bool) {
        for s in self.socks.iter_mut().filter(|s| s.0 == link) {
            if s.3 != w {
                let ev = pg::WL_SOCKET_READABLE | if w { pg::WL_SOCKET_WRITEABLE } else { 0 };
                // SAFETY: s.2 is a socket event of this set.
                unsafe { pg::ModifyWaitEvent(self.set, s.2, ev, std::ptr::null_mut()) };
                s.3 = w;
            }
        }
    }

    /// Wait; returns whether the latch was set, and (link, readable, writable) per ready socket.
    fn wait(&mut self, timeout_ms: i64, ready: &mut Vec<(usize, bool, bool)>) -> bool {
        ready.clear();
        let cap = self.events.len() as c_int;
        // SAFETY: valid set; `events` has room for every event of the set.
        let n =
            unsafe { pg::WaitEventSetWait(self.set, timeout_ms, self.events.as_mut_ptr(), cap, pg::PG_WAIT_EXTENSION) };
        let mut latch = false;
        for e in &self.events[..n.max(0) as usize] {
            latch |= e.events & pg::WL_LATCH_SET != 0;
            if let Some(s) = self.socks.iter().find(|s| s.2 == e.pos) {
                let (r, w) = (e.events & pg::WL_SOCKET_READABLE != 0, e.events & pg::WL_SOCKET_WRITEABLE != 0);
                if r || w {
                    ready.push((s.0, r, w));
                }
            }
        }
        latch
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
    Outbox { id: i64, tid: outbox::Tid },
}

/// One broker connection and its delivery state. Brokers are independent: each has its own
/// socket in the wait set, its own hot/cold mode, backoff, in-flight window, backlog and outbox
/// pass, so a dead or slow broker never holds up another.
struct Link {
    slot: u16,
    status: &'static BrokerShared,
    cfg: BrokerConfig,
    client: Option<Client>,
    /// A connect running on a helper thread (host name resolution), holding the client.
    resolving: Option<Connecting>,
    state: ConnState,
    failures: u32,
    /// Messages handed over and not yet acknowledged; probe mode and ack timeout (window.rs).
    window: Window<Inflight>,
    /// When a "session taken over" warning was last logged (at most once a minute).
    takeover_logged_at: Option<Instant>,
    /// When the current connection was accepted (CONNACK).
    up_since: Option<Instant>,
    /// The broker refused a message (reason code >= 0x80) on the current connection.
    refused_here: bool,
    /// Ring records of this (hot) broker the scan went past while its window was full: sent
    /// before anything newer for it. Bounded: past a quarter of the ring the broker goes cold.
    backlog: VecDeque<(u64, u64)>,
    backlog_slots: u64,
    /// Outbox rows fetched and not yet handed to libmosquitto.
    fetched: VecDeque<outbox::Row>,
    /// Acknowledged outbox rows to delete.
    to_delete: Vec<(outbox::Tid, i64)>,
    /// The outbox may have rows for us (set by wake-ups and timers, cleared by an empty fetch).
    outbox_check: bool,
    /// Where the current pass over the outbox is: the last (lane, id) fetched. `None` starts
    /// from the head (after a reconnect, going cold, or reaching the end of a pass).
    drain_after: Option<(i16, i64)>,
    next_outbox_poll: Instant,
    /// A settings change waiting for the in-flight window to drain.
    switch_to: Option<(BrokerConfig, Instant)>,
    refusal: Option<String>,
    /// Removed from the catalog: the slot is released once the scan has passed this ring head
    /// (every record published to it has been seen and dead-lettered).
    removed_at: Option<u64>,
}

impl Link {
    fn new(slot: u16, cfg: BrokerConfig) -> Link {
        let status = &crate::publish::require_shared().brokers()[slot as usize];
        status.set_identity(&cfg.name, &cfg.host, cfg.port);
        Link {
            slot,
            status,
            cfg,
            client: None,
            resolving: None,
            state: ConnState::Idle,
            failures: 0,
            window: Window::default(),
            takeover_logged_at: None,
            up_since: None,
            refused_here: false,
            backlog: VecDeque::new(),
            backlog_slots: 0,
            fetched: VecDeque::new(),
            to_delete: Vec::new(),
            outbox_check: true,
            drain_after: None,
            next_outbox_poll: Instant::now(),
            switch_to: None,
            refusal: None,
            removed_at: None,
        }
    }

    fn cold(&self) -> bool {
        self.status.is_cold()
    }

    fn window_open(&self) -> bool {
        self.state == ConnState::Connected
            && self.switch_to.is_none()
            && self.removed_at.is_none()
            && self.window.has_room(self.cfg.max_inflight as usize)
    }

    /// Can a new ring record for this broker be handed over right now?
    fn takes_ring_record(&self) -> bool {
        self.cold() || (self.backlog.is_empty() && self.window_open())
    }

    fn note_sent(&mut self, mid: i32, what: Inflight) {
        self.window.sent(mid, what, Instant::now());
    }

    fn client_id(&self) -> String {
        if !self.cfg.client_id.is_empty() {
            return self.cfg.client_id.clone();
        }
        let mut host = [0u8; 256];
        // SAFETY: gethostname writes at most host.len() bytes; DataDir is set (and NUL-terminated)
        // before any worker starts; the others are plain reads.
        let (sys, host, dir, port) = unsafe {
            libc::gethostname(host.as_mut_ptr() as *mut std::ffi::c_char, host.len() - 1);
            let n = host.iter().position(|&b| b == 0).unwrap_or(host.len());
            (
                pg::GetSystemIdentifier(),
                host[..n].to_vec(),
                std::ffi::CStr::from_ptr(pg::DataDir).to_bytes().to_vec(),
                pg::PostPortNumber,
            )
        };
        let name = (self.slot != 0).then_some(self.cfg.name.as_str());
        crate::identity::default_client_id(sys, &host, &dir, port, name)
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
}

/// How often the worker re-reads the broker catalog without being told (COMMIT PREPARED of a
/// catalog change, or a change made with triggers disabled).
const CATALOG_RECHECK: Duration = Duration::from_secs(10);

struct Worker {
    ring: Ring,
    scratch: Vec<u8>,
    events: Vec<Event>,
    links: Vec<Link>,
    /// slot → index in `links`
    by_slot: Vec<Option<usize>>,
    /// The ring records scanned and not yet released (scanlog.rs).
    scan: ScanLog,
    /// Where the scan is waiting at a reservation, and since when.
    blocked_at: Option<(u64, Instant)>,
    waiter: Option<Waiter>,
    rebuild_waiter: bool,
    ready: Vec<(usize, bool, bool)>,
    ext_present: bool,
    next_ext_check: Instant,
    next_prune: Instant,
    generation: u64,
    next_catalog_check: Instant,
    /// When the ring scan last handed something over (see LINGER).
    last_work: Instant,
}

impl Worker {
    fn new() -> Worker {
        let shared = crate::publish::require_shared();
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
            generation: u64::MAX,
            next_catalog_check: Instant::now(),
            last_work: Instant::now(),
        };
        w.index_links();
        w
    }

    fn index_links(&mut self) {
        self.by_slot = vec![None; crate::publish::require_shared().brokers().len()];
        for (i, l) in self.links.iter().enumerate() {
            self.by_slot[l.slot as usize] = Some(i);
        }
        self.rebuild_waiter = true;
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
                    self.next_catalog_check = Instant::now();
                }
                let every = if self.ext_present { 10 } else { 1 };
                self.next_ext_check = Instant::now() + Duration::from_secs(every);
            }
            self.maybe_sync_catalog();
            for l in &mut self.links {
                if Instant::now() >= l.next_outbox_poll {
                    // Rows can appear without a wake-up (COMMIT PREPARED): look now and then.
                    l.outbox_check = true;
                    let every = if l.cold() { gucs::WORKER_POLL_INTERVAL_MS.get() as u64 } else { 1000 };
                    l.next_outbox_poll = Instant::now() + Duration::from_millis(every);
                }
            }
            self.maybe_prune();
            for l in 0..self.links.len() {
                self.manage_connection(l);
                self.links[l].service_socket(false, false);
                self.handle_events(l);
            }
            let mut more = self.process_ring();
            self.release_ring();
            for l in 0..self.links.len() {
                more |= self.process_outbox(l);
                self.flush_deletes(l);
                self.handle_events(l);
            }
            self.release_ring();
            for l in 0..self.links.len() {
                self.flush_deletes(l);
                self.maybe_go_hot(l);
                self.check_ack_timeout(l);
                self.maybe_switch(l);
            }
            self.retire_removed();
            self.wait(more);
        }
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

    /// Re-read `mqtt_pub.brokers` when a transaction changed it (or now and then), and make the
    /// set of links match: new brokers get a link (cold until connected and drained), changed
    /// ones reconnect, removed ones are retired.
    fn maybe_sync_catalog(&mut self) {
        let generation = crate::publish::require_shared().broker_generation.load(Ordering::Acquire);
        if generation == self.generation && Instant::now() < self.next_catalog_check {
            return;
        }
        self.generation = generation;
        self.next_catalog_check = Instant::now() + CATALOG_RECHECK;
        let named = if self.ext_present {
            match self.with_outbox(crate::catalog::load_all) {
                Some(n) => n,
                None => return,
            }
        } else {
            Vec::new()
        };
        let nslots = self.by_slot.len();
        let present: Vec<String> = named.iter().map(|n| n.cfg.name.clone()).collect();
        for n in named {
            let slot = n.slot as usize;
            if slot == 0 || slot >= nslots {
                guard::log(
                    Level::WARNING,
                    format!(
                        "pg_mqtt_pub: broker \"{}\" uses slot {slot}, beyond pg_mqtt_pub.max_brokers ({nslots}); not served",
                        n.cfg.name
                    ),
                );
                continue;
            }
            match self.by_slot[slot] {
                Some(i) if self.links[i].removed_at.is_none() && self.links[i].cfg.name == n.cfg.name => {
                    if self.links[i].cfg != n.cfg && self.links[i].switch_to.as_ref().is_none_or(|s| s.0 != n.cfg) {
                        guard::log(Level::LOG, format!("pg_mqtt_pub: broker \"{}\" changed, reconnecting", n.cfg.name));
                        self.links[i].switch_to = Some((n.cfg, Instant::now() + DRAIN_GRACE));
                    }
                }
                Some(_) => {} // the slot is still being released; picked up on a later pass
                None => {
                    guard::log(
                        Level::LOG,
                        format!("pg_mqtt_pub: broker \"{}\" added ({}:{})", n.cfg.name, n.cfg.host, n.cfg.port),
                    );
                    self.links.push(Link::new(n.slot, n.cfg));
                    self.index_links();
                }
            }
        }
        // Brokers no longer in the catalog.
        for l in 1..self.links.len() {
            if self.links[l].removed_at.is_none() && !present.contains(&self.links[l].cfg.name) {
                self.remove_link(l);
            }
        }
    }

    /// A broker was removed: stop talking to it; whatever of its messages is still in the ring
    /// (in flight, backlog, or not scanned yet) goes to the dead letters.
    fn remove_link(&mut self, l: usize) {
        guard::log(Level::LOG, format!("pg_mqtt_pub: broker \"{}\" removed", self.links[l].cfg.name));
        let k = &mut self.links[l];
        k.removed_at = Some(self.ring.head());
        if let Some(c) = k.client.take() {
            c.close();
        }
        k.state = ConnState::Idle;
        k.status.set_connected(false);
        let mut recs: Vec<u64> = k.backlog.drain(..).map(|b| b.0).collect();
        k.backlog_slots = 0;
        recs.extend(k.window.take().into_iter().filter_map(|f| if let Inflight::Ring(p) = f { Some(p) } else { None }));
        k.fetched.clear();
        recs.sort_unstable();
        for pos in recs {
            self.dead_letter_ring(l, pos, "the broker was removed before this message was acknowledged");
        }
        self.rebuild_waiter = true;
    }

    /// Release the slots of removed brokers once the scan has seen every record sent to them.
    fn retire_removed(&mut self) {
        let before = self.links.len();
        let cursor = self.scan_low();
        self.links.retain(|k| match k.removed_at {
            Some(head) if cursor >= head => {
                k.status.release();
                false
            }
            _ => true,
        });
        if self.links.len() != before {
            self.index_links();
        }
    }

    /// Is there anything for broker connections to do?
    fn active(&self) -> bool {
        self.ext_present || self.ring.used_slots() > 0 || self.links.iter().any(|k| !k.window.is_empty())
    }

    fn manage_connection(&mut self, l: usize) {
        self.finish_resolving(l);
        let now = Instant::now();
        if self.links[l].removed_at.is_some() {
            return;
        }
        if !self.active() && self.links[l].state != ConnState::Idle {
            // Extension dropped and nothing left to deliver: let go of the broker.
            let k = &mut self.links[l];
            if let Some(c) = k.client.take() {
                c.close();
            }
            k.state = ConnState::Idle;
            k.status.set_connected(false);
            self.go_cold(l);
            self.rebuild_waiter = true;
            guard::log(
                Level::LOG,
                format!("pg_mqtt_pub: idle, disconnected from broker \"{}\"", self.links[l].cfg.name),
            );
            return;
        }
        match self.links[l].state {
            ConnState::Idle if self.active() => self.connect(l),
            ConnState::Idle => {}
            ConnState::Retry { at } if now >= at => self.connect(l),
            ConnState::Connecting { since } => {
                let k = &self.links[l];
                let limit = Duration::from_secs(k.cfg.keepalive.max(10) as u64);
                if now.duration_since(since) > limit {
                    let why =
                        format!("connecting to {}:{} timed out after {} s", k.cfg.host, k.cfg.port, limit.as_secs());
                    self.fail(l, why);
                }
            }
            _ => {}
        }
    }

    fn connect(&mut self, l: usize) {
        if self.links[l].resolving.is_some() {
            return; // the previous attempt's resolution must end first (it cannot be cancelled)
        }
        self.rebuild_waiter = true;
        let k = &mut self.links[l];
        k.status.set_identity(&k.cfg.name, &k.cfg.host, k.cfg.port);
        let result = match k.client.as_mut() {
            Some(_) => Ok(()), // still connecting
            None => {
                let id = k.client_id();
                let password = match read_password(&k.cfg) {
                    Ok(p) => p,
                    Err(e) => return self.fail(l, e),
                };
                let opts = ClientOptions {
                    client_id: &id,
                    protocol: k.cfg.protocol,
                    max_inflight: k.cfg.max_inflight,
                    username: &k.cfg.username,
                    password: &password,
                    use_tls: k.cfg.use_tls,
                    ca_cert: &k.cfg.ca_cert,
                    client_cert: &k.cfg.client_cert,
                    client_key: &k.cfg.client_key,
                    tls_version: &k.cfg.tls_version,
                };
                match Client::new(&opts) {
                    Err(e) => Err(e),
                    Ok(mut c) if k.cfg.host.parse::<std::net::IpAddr>().is_ok() => {
                        let r = c.connect(&k.cfg.host, k.cfg.port, k.cfg.keepalive);
                        k.client = Some(c);
                        r
                    }
                    Ok(c) => connect_on_helper_thread(c, &k.cfg.host, k.cfg.port, k.cfg.keepalive)
                        .map(|h| k.resolving = Some(h)),
                }
            }
        };
        match result {
            Ok(()) => self.links[l].state = ConnState::Connecting { since: Instant::now() },
            Err(e) => {
                let k = &self.links[l];
                let why = format!("cannot connect to {}:{}: {e}", k.cfg.host, k.cfg.port);
                self.fail(l, why)
            }
        }
    }

    /// A connect on a helper thread has returned: the client comes back to this loop if the
    /// attempt is still wanted (nothing failed, switched or removed the link meanwhile), else it
    /// is dropped.
    fn finish_resolving(&mut self, l: usize) {
        let k = &mut self.links[l];
        if !k.resolving.as_ref().is_some_and(|h| h.is_finished()) {
            return;
        }
        let Ok((client, result)) = k.resolving.take().expect("checked").join() else {
            return self.fail(l, "the connect thread failed".into());
        };
        if !matches!(k.state, ConnState::Connecting { .. }) || k.removed_at.is_some() || k.client.is_some() {
            return; // not wanted any more; dropping it destroys the client
        }
        k.client = Some(client);
        self.rebuild_waiter = true;
        if let Err(e) = result {
            let k = &self.links[l];
            let why = format!("cannot connect to {}:{}: {e}", k.cfg.host, k.cfg.port);
            self.fail(l, why);
        }
    }

    /// The broker can no longer be written to: publishers use the outbox from now on, and its
    /// backlog in the ring is taken back into the outbox.
    fn go_cold(&mut self, l: usize) {
        let ring = self.ring;
        let k = &mut self.links[l];
        let s = k.status;
        shmem::with_lock(shmem::RING_LOCK, pg::LWLockMode::LW_EXCLUSIVE, || {
            if !s.is_cold() {
                s.flip_head.store(ring.head(), Ordering::Release);
                s.set_mode(Mode::Cold);
            }
        });
        k.fetched.clear();
        k.drain_after = None;
        k.outbox_check = true;
        if !k.backlog.is_empty() {
            let recs: Vec<(u64, u64)> = k.backlog.drain(..).collect();
            k.backlog_slots = 0;
            if !self.rescue(&recs) {
                // no outbox to put them in (extension dropped): keep them for later
                let k = &mut self.links[l];
                k.backlog_slots = recs.iter().map(|r| r.1).sum();
                k.backlog.extend(recs);
            }
        }
    }

    /// A connection attempt failed or the connection dropped: record why, schedule a retry.
    /// Another client with our client id took the session over (MQTT 5 reason 0x8E): a
    /// configuration problem (two clusters sharing an explicit `client_id`), not the fault of any
    /// message. Nothing is charged, the reconnect backoff keeps growing (two clients fighting
    /// over one id must not hammer the broker), and the warning is logged at most once a minute.
    fn taken_over(&mut self, l: usize, why: String) {
        let k = &mut self.links[l];
        let quiet = k.takeover_logged_at.is_some_and(|t| t.elapsed() < Duration::from_secs(60));
        if !quiet {
            k.takeover_logged_at = Some(Instant::now());
            PgError::new(
                guard::Code::ERRCODE_SUCCESSFUL_COMPLETION,
                format!("pg_mqtt_pub: broker \"{}\": another client took over the session: {why}", k.cfg.name),
            )
            .hint("Two clients use one MQTT client id. Give each cluster its own client_id, or leave it empty for the default, which differs between clusters.")
            .emit(Level::WARNING);
        }
        self.go_cold(l);
        let k = &mut self.links[l];
        k.status.set_connected(false);
        k.status.set_error(&why);
        self.drop_client(l, false);
        self.schedule_retry(l);
    }

    fn fail(&mut self, l: usize, why: String) {
        let was_connected = self.links[l].state == ConnState::Connected;
        // The in-flight records are older than the broker's backlog: save them to the outbox
        // first (drop_client), then the backlog (go_cold), so the outbox ids keep their order.
        self.drop_client(l, true);
        self.go_cold(l);
        let k = &mut self.links[l];
        k.status.set_connected(false);
        k.status.set_error(&why);
        if was_connected {
            guard::log(Level::WARNING, format!("pg_mqtt_pub: lost connection to broker \"{}\": {why}", k.cfg.name));
            // Reconnect at once only after a connection that stayed up, or that ended after the
            // broker refused a message (mosquitto closes the connection after a refusal: that
            // message has its own retry backoff). A broker that accepts and drops at once, or
            // two clients taking one client id from each other, get the growing backoff, not a
            // reconnect per millisecond.
            if k.refused_here || k.up_since.is_some_and(|t| t.elapsed() >= STABLE_CONNECTION) {
                k.failures = 0;
            }
        } else if k.failures == 0 {
            guard::log(Level::WARNING, format!("pg_mqtt_pub: broker \"{}\": {why}", k.cfg.name));
        }
        self.schedule_retry(l);
    }

    fn schedule_retry(&mut self, l: usize) {
        let k = &mut self.links[l];
        let delay = reconnect_delay_ms(gucs::RECONNECT_INTERVAL_MS.get() as u64, k.failures);
        k.failures = k.failures.saturating_add(1);
        k.state = ConnState::Retry { at: Instant::now() + Duration::from_millis(delay) };
        self.rebuild_waiter = true;
    }

    /// Forget the client and everything it had in flight: we resend ourselves, in order —
    /// unacknowledged ring records go to the outbox (lane 0, ahead of everything), unacknowledged
    /// outbox rows are simply fetched again. (libmosquitto would resend them from its memory,
    /// without letting us notice a message that keeps killing the connection.)
    fn drop_client(&mut self, l: usize, count_suspect: bool) {
        let k = &mut self.links[l];
        if let Some(c) = k.client.take() {
            c.close();
        }
        self.rebuild_waiter = true;
        match k.window.lost(count_suspect) {
            Lost::Nothing => return,
            Lost::Suspect(what) => {
                self.message_failed(l, what, "the broker closed the connection when this message was sent".into())
            }
            Lost::Resend(inflight) => {
                let mut ring: Vec<(u64, u64)> = inflight
                    .iter()
                    .filter_map(|f| if let Inflight::Ring(p) = f { Some((*p, 0)) } else { None })
                    .collect();
                ring.sort_unstable();
                if !ring.is_empty() {
                    self.rescue(&ring);
                }
            }
        }
        let k = &mut self.links[l];
        k.fetched.clear();
        k.drain_after = None;
        k.status.inflight.store(0, Ordering::Relaxed);
    }

    fn mark_ring_done(&mut self, pos: u64) {
        self.scan.mark_done(pos);
    }

    fn handle_events(&mut self, l: usize) {
        let Some(c) = self.links[l].client.as_mut() else { return };
        let mut events = std::mem::take(&mut self.events);
        c.take_events(&mut events);
        for ev in events.iter().copied() {
            let k = &mut self.links[l];
            match ev {
                Event::Connected(0) => {
                    k.state = ConnState::Connected;
                    // the backoff is reset only once the connection has proved stable (fail())
                    k.up_since = Some(Instant::now());
                    k.refused_here = false;
                    k.refusal = None;
                    k.outbox_check = true;
                    k.window.connected(Instant::now());
                    k.status.set_connected(true);
                    guard::log(
                        Level::LOG,
                        format!("pg_mqtt_pub: connected to broker \"{}\" at {}:{}", k.cfg.name, k.cfg.host, k.cfg.port),
                    );
                }
                Event::Connected(code) => {
                    let why = k.client.as_ref().map(|c| c.describe_connack(code)).unwrap_or_default();
                    k.refusal = Some(why);
                }
                Event::Disconnected(rc) => {
                    if matches!(k.state, ConnState::Connected | ConnState::Connecting { .. }) {
                        let why = k.refusal.take().unwrap_or_else(|| {
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
                            k.client.as_ref().map(|c| c.with_log(base.clone())).unwrap_or(base)
                        });
                        if rc == REASON_SESSION_TAKEN_OVER {
                            self.taken_over(l, why);
                        } else {
                            self.fail(l, why);
                        }
                    }
                }
                Event::Published { mid, reason } => {
                    let Some(what) = k.window.acknowledged(mid, Instant::now()) else { continue };
                    if reason >= 0x80 {
                        k.refused_here = true;
                        let text = crate::broker::reason_string(reason).to_lowercase();
                        self.message_failed(l, what, format!("broker refused: {text} (0x{reason:02x})"));
                        continue;
                    }
                    k.status.messages_sent.fetch_add(1, Ordering::Relaxed);
                    match what {
                        Inflight::Ring(pos) => self.mark_ring_done(pos),
                        Inflight::Outbox { id, tid } => k.to_delete.push((tid, id)),
                    }
                }
            }
        }
        self.events = events;
        // libmosquitto closes the socket of a failed TLS handshake without a disconnect callback
        // (loop_read returns MOSQ_ERR_TLS): notice it here instead of waiting for the timeout.
        let k = &self.links[l];
        if matches!(k.state, ConnState::Connecting { .. } | ConnState::Connected)
            && k.client.as_ref().is_some_and(|c| c.socket() < 0)
        {
            let why = k.client.as_ref().map(|c| c.with_log("TLS handshake failed".into())).unwrap_or_default();
            self.fail(l, why);
        }
        let k = &self.links[l];
        k.status.inflight.store(k.window.len() as u32, Ordering::Relaxed);
    }

    /// One message failed (the broker refused it, or the client library did): count the attempt
    /// in the outbox with exponential backoff, or dead-letter it after `poison_max_attempts`.
    /// Other messages keep flowing: a failed row simply is not due until its `next_retry_at`.
    fn message_failed(&mut self, l: usize, what: Inflight, why: String) {
        let base = gucs::RETRY_BASE_MS.get() as i64;
        let max = gucs::POISON_MAX_ATTEMPTS.get();
        self.record_failure(l, what, why, base, max);
    }

    /// A ring record that can never be delivered (its broker was removed): dead-letter it.
    fn dead_letter_ring(&mut self, l: usize, pos: u64, why: &str) {
        self.record_failure(l, Inflight::Ring(pos), why.to_string(), 0, 1);
    }

    fn record_failure(&mut self, l: usize, what: Inflight, why: String, base: i64, max: i32) {
        let status = self.links[l].status;
        status.messages_failed.fetch_add(1, Ordering::Relaxed);
        status.set_error(&why);
        let name = self.links[l].cfg.name.clone();
        let result = match what {
            Inflight::Outbox { id, .. } => {
                self.with_outbox(|| outbox::record_failure(&name, id, &why, base, max)).flatten()
            }
            Inflight::Ring(pos) => {
                let ring = self.ring;
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
                status.dead_lettered.fetch_add(1, Ordering::Relaxed);
                guard::log(
                    Level::WARNING,
                    format!(
                        "pg_mqtt_pub: message to \"{}\" on broker \"{name}\" moved to mqtt_pub.dead_letters after {} attempts: {why}",
                        f.topic, f.attempts
                    ),
                );
            }
            Some(f) => {
                // wake up when it is due again
                let delay = Duration::from_millis((base as u64).saturating_mul(1 << (f.attempts - 1).clamp(0, 20)));
                let k = &mut self.links[l];
                k.next_outbox_poll = k.next_outbox_poll.min(Instant::now() + delay);
            }
            None => {}
        }
    }

    /// Hand one ring record to broker `l`. `None`: not connected, the caller keeps it;
    /// `Some(done)`: handed over, and already finished (QoS 0) or not (acknowledgement pending,
    /// or refused: then it is in `failed`).
    fn send_ring_record(
        &mut self,
        l: usize,
        pos: u64,
        scratch: &mut Vec<u8>,
        failed: &mut Vec<(usize, u64, String)>,
    ) -> Option<bool> {
        let ring = self.ring;
        // SAFETY: only consumer; pos is a scanned, unreleased record.
        let Peek::Ready(r) = (unsafe { ring.peek_at(pos, scratch) }) else { return Some(true) };
        let k = &mut self.links[l];
        let c = k.client.as_mut()?;
        let (qos, h) = (r.qos, c.publish(r.topic_nul, r.payload, r.qos, r.retain));
        match h {
            Handoff::NotConnected => return None,
            Handoff::Accepted { mid } if qos > 0 => k.note_sent(mid, Inflight::Ring(pos)),
            Handoff::Accepted { .. } => {
                k.status.messages_sent.fetch_add(1, Ordering::Relaxed);
                return Some(true);
            }
            Handoff::Refused { rc } => {
                failed.push((l, pos, format!("refused by the MQTT client library: {}", crate::broker::strerror(rc))))
            }
        }
        Some(false)
    }

    /// Scan the ring from the cursor: publish records of a hot broker (or queue them in its
    /// backlog while its window is full), take records of a cold broker back into the outbox
    /// (lane 0), dead-letter records of a removed broker, skip cancelled reservations. Returns
    /// true if more could be done right away.
    fn process_ring(&mut self) -> bool {
        let mut rescue: Vec<(u64, u64)> = Vec::new();
        let mut failed: Vec<(usize, u64, String)> = Vec::new();
        let mut removed: Vec<(usize, u64)> = Vec::new();
        let mut orphans: Vec<(u64, u16)> = Vec::new();
        let mut more = true;
        let ring = self.ring;
        let mut scratch = std::mem::take(&mut self.scratch);
        self.fill_holes(&mut rescue, &mut removed, &mut orphans);
        // Backlogs first: they are older than anything the scan finds.
        for l in 0..self.links.len() {
            while !self.links[l].backlog.is_empty() && self.links[l].window_open() && !self.links[l].cold() {
                let (pos, n) = self.links[l].backlog[0];
                match self.send_ring_record(l, pos, &mut scratch, &mut failed) {
                    None => break,
                    Some(true) => self.mark_ring_done(pos),
                    Some(false) => {}
                }
                let k = &mut self.links[l];
                k.backlog.pop_front();
                k.backlog_slots -= n;
            }
        }
        let shared = crate::publish::require_shared();
        let backlog_limit = ring.capacity() / 4;
        let scan_start = self.scan.cursor();
        for _ in 0..BATCH {
            let pos = self.scan.cursor();
            // SAFETY: this process is the ring's only consumer; pos is a record boundary.
            let (n, done) = match unsafe { ring.peek_at(pos, &mut scratch) } {
                Peek::Empty => {
                    more = false;
                    break;
                }
                Peek::Reserved { run } => {
                    if run == 0 || !self.waited_long_enough(pos) {
                        more = false;
                        break;
                    }
                    self.scan.push_hole(run);
                    continue;
                }
                Peek::Cancelled(n) => (n, true),
                Peek::Ready(r) => {
                    let n = r.nslots;
                    if self.scan.has_holes() {
                        // A stepped-over transaction that has committed since is older than this
                        // record, which may be its session's next one: its records go first.
                        self.fill_holes(&mut rescue, &mut removed, &mut orphans);
                    }
                    let Some(l) = self.by_slot.get(r.broker as usize).copied().flatten() else {
                        if shared.broker_generation.load(Ordering::Acquire) != self.generation {
                            break; // a broker was added or removed: sync the links first
                        }
                        // No broker owns the slot: nothing can deliver it.
                        orphans.push((pos, r.broker));
                        self.scan.push(n, false);
                        continue;
                    };
                    let k = &self.links[l];
                    if k.removed_at.is_some() {
                        removed.push((l, pos));
                        (n, false)
                    } else if k.cold() {
                        if !self.ext_present {
                            more = false;
                            break; // nowhere to put it yet
                        }
                        rescue.push((pos, n));
                        (n, false)
                    } else if k.takes_ring_record() {
                        match self.send_ring_record(l, pos, &mut scratch, &mut failed) {
                            None => {
                                more = false;
                                break;
                            }
                            Some(done) => (n, done),
                        }
                    } else if self.links.len() == 1 {
                        // the only broker is busy: leave the record where it is
                        more = false;
                        break;
                    } else {
                        // Busy broker: queue the record for it and keep scanning for the others.
                        let k = &mut self.links[l];
                        k.backlog.push_back((pos, n));
                        k.backlog_slots += n;
                        if k.backlog_slots > backlog_limit {
                            self.scan.push(n, false);
                            let why = format!(
                                "broker \"{}\" is too slow: its unsent messages fill a quarter of the ring; using the outbox",
                                self.links[l].cfg.name
                            );
                            guard::log(Level::WARNING, format!("pg_mqtt_pub: {why}"));
                            self.go_cold(l);
                            continue;
                        }
                        (n, false)
                    }
                }
            };
            self.scan.push(n, done);
        }
        self.scratch = scratch;
        if self.scan.cursor() != scan_start {
            self.last_work = Instant::now();
        }
        if !rescue.is_empty() {
            self.rescue(&rescue);
        }
        for (l, pos) in removed {
            self.dead_letter_ring(l, pos, "the broker was removed");
        }
        for (pos, slot) in orphans {
            let mut scratch = Vec::new();
            self.with_outbox(|| {
                // SAFETY: scanned, not released.
                if let Peek::Ready(r) = unsafe { ring.peek_at(pos, &mut scratch) } {
                    let name = format!("#{slot}");
                    let row = outbox::NewRow::of(&name, &r.message(), outbox::LANE_PUBLISHED);
                    outbox::insert_failed(row, "no broker uses this status slot any more", 0, 1);
                }
            });
            self.mark_ring_done(pos);
        }
        for (l, pos, why) in failed {
            self.message_failed(l, Inflight::Ring(pos), why);
        }
        for k in &self.links {
            k.status.inflight.store(k.window.len() as u32, Ordering::Relaxed);
        }
        more
    }

    /// Has the scan waited at the reservation at `pos` for `STEP_OVER_AFTER`? Starts the clock
    /// the first time it finds it there.
    fn waited_long_enough(&mut self, pos: u64) -> bool {
        match self.blocked_at {
            Some((p, since)) if p == pos => since.elapsed() >= STEP_OVER_AFTER,
            _ => {
                self.blocked_at = Some((pos, Instant::now()));
                false
            }
        }
    }

    /// The oldest ring position the scan is not finished with (scanlog.rs): rules about
    /// "records before X" (outbox order, going hot) use this.
    fn scan_low(&self) -> u64 {
        self.scan.low()
    }

    /// Stepped-over reservations that were published or cancelled since: the placeholder makes
    /// way for the records (not done yet), in order. Returns the records.
    fn take_filled_holes(&mut self) -> Vec<(u64, u64)> {
        let mut found = Vec::new();
        let holes: Vec<Hole> = self.scan.holes().collect();
        for Hole { start, run } in holes {
            // SAFETY: a reservation the scan stepped over and has not released.
            let records = match unsafe { self.ring.run_state(start, run) } {
                RunState::Waiting => continue,
                RunState::Cancelled => Vec::new(),
                RunState::Ready(r) => r,
            };
            self.scan.fill_hole(start, &records);
            found.extend(records);
        }
        found
    }

    /// Hand the records of stepped-over transactions that committed since to their brokers,
    /// as the scan would have: queued behind the broker's backlog, rescued if it is cold.
    fn fill_holes(
        &mut self,
        rescue: &mut Vec<(u64, u64)>,
        removed: &mut Vec<(usize, u64)>,
        orphans: &mut Vec<(u64, u16)>,
    ) {
        let shared = crate::publish::require_shared();
        if !self.scan.has_holes()
            || !self.ext_present
            || shared.broker_generation.load(Ordering::Acquire) != self.generation
        {
            return; // later: nowhere to rescue to, or the links are about to change
        }
        let mut scratch = Vec::new();
        for (pos, n) in self.take_filled_holes() {
            // SAFETY: published, scanned and not released.
            let Peek::Ready(r) = (unsafe { self.ring.peek_at(pos, &mut scratch) }) else { continue };
            let broker = r.broker;
            match self.by_slot.get(broker as usize).copied().flatten() {
                None => orphans.push((pos, broker)),
                Some(l) if self.links[l].removed_at.is_some() => removed.push((l, pos)),
                Some(l) if self.links[l].cold() => rescue.push((pos, n)),
                Some(l) => {
                    let k = &mut self.links[l];
                    k.backlog.push_back((pos, n));
                    k.backlog_slots += n;
                }
            }
        }
    }

    /// Move ring records of a cold broker into the outbox (lane 0, ahead of everything written
    /// by publishers since), then let the ring forget them. False if there is no outbox.
    fn rescue(&mut self, records: &[(u64, u64)]) -> bool {
        let ring = self.ring;
        let mut scratch = Vec::new();
        let names: Vec<Option<String>> =
            self.by_slot.iter().map(|i| i.map(|i| self.links[i].cfg.name.clone())).collect();
        let done = self.with_outbox(|| {
            for &(pos, _) in records {
                // SAFETY: these records are scanned but not released: still intact in the ring.
                if let Peek::Ready(r) = unsafe { ring.peek_at(pos, &mut scratch) } {
                    let Some(Some(name)) = names.get(r.broker as usize) else { continue };
                    let mut row = std::iter::once(outbox::NewRow::of(name, &r.message(), outbox::LANE_RECOVERED));
                    outbox::insert(&mut row);
                }
            }
        });
        if done.is_none() {
            return false; // no outbox to put them in: they stay in the ring
        }
        for &(pos, _) in records {
            self.mark_ring_done(pos);
        }
        for k in &mut self.links {
            k.outbox_check = true;
        }
        true
    }

    /// Free the ring up to the first record not yet delivered.
    fn release_ring(&mut self) {
        if let Some(pos) = self.scan.release() {
            // SAFETY: every record before `pos` is delivered, rescued or cancelled.
            unsafe { self.ring.release_to(pos) };
        }
    }

    /// Deliver broker `l`'s outbox rows, oldest first. Returns true if more could be done now.
    fn process_outbox(&mut self, l: usize) -> bool {
        if self.links[l].state != ConnState::Connected || !self.ext_present {
            return false;
        }
        loop {
            let k = &mut self.links[l];
            if !k.window_open() {
                return false;
            }
            if k.fetched.is_empty() {
                if !k.outbox_check {
                    return false;
                }
                // While a cold broker may still have records in the ring from before it went cold
                // (the scan has not passed flip_head), only recovered rows (lane 0) may go: a
                // publisher's row is newer than any of those records.
                let low = self.scan_low();
                let k = &mut self.links[l];
                let recovered_only = k.cold() && low < k.status.flip_head.load(Ordering::Acquire);
                let mut exclude: Vec<i64> = k.to_delete.iter().map(|d| d.1).collect();
                exclude.extend(k.window.values().filter_map(|f| match f {
                    Inflight::Outbox { id, .. } => Some(*id),
                    Inflight::Ring(_) => None,
                }));
                let limit = gucs::OUTBOX_BATCH_SIZE.get() as usize;
                let name = k.cfg.name.clone();
                let after = k.drain_after;
                let Some((rows, more)) =
                    self.with_outbox(|| outbox::fetch(&name, limit, &exclude, recovered_only, after))
                else {
                    return false;
                };
                let k = &mut self.links[l];
                if !more {
                    // end of this pass; the next one starts from the head (retries that came due)
                    k.outbox_check = after.is_some();
                    k.drain_after = None;
                } else {
                    k.drain_after = rows.last().map(|r| (r.lane, r.id));
                }
                if rows.is_empty() {
                    return false;
                }
                k.fetched.extend(rows);
            }
            let k = &mut self.links[l];
            let row = k.fetched.pop_front().expect("fetched above");
            let Some(c) = k.client.as_mut() else { return false };
            match c.publish(&row.topic_nul, &row.payload, row.qos, row.retain) {
                Handoff::Accepted { mid } => k.note_sent(mid, Inflight::Outbox { id: row.id, tid: row.tid }),
                Handoff::Refused { rc } => self.message_failed(
                    l,
                    Inflight::Outbox { id: row.id, tid: row.tid },
                    format!("refused by the MQTT client library: {}", crate::broker::strerror(rc)),
                ),
                Handoff::NotConnected => {
                    k.fetched.push_front(row);
                    return false;
                }
            }
        }
    }

    /// Delete acknowledged rows, in batches: one transaction per few acknowledgements would cap
    /// the drain rate at the transaction rate. Everything goes once the window empties.
    fn flush_deletes(&mut self, l: usize) {
        let k = &mut self.links[l];
        let outbox_in_flight = k.window.values().any(|f| matches!(f, Inflight::Outbox { .. }));
        if k.to_delete.is_empty() || (k.to_delete.len() < DELETE_BATCH && outbox_in_flight) {
            return;
        }
        let rows = std::mem::take(&mut k.to_delete);
        self.with_outbox(|| outbox::delete(&rows)); // without the extension the rows are gone anyway
    }

    /// A cold broker whose outbox is empty, with nobody about to write to it, goes hot again.
    fn maybe_go_hot(&mut self, l: usize) {
        let k = &self.links[l];
        if !k.cold()
            || k.state != ConnState::Connected
            || k.removed_at.is_some()
            || !self.ext_present
            || k.outbox_check
            || !k.fetched.is_empty()
            || !k.to_delete.is_empty()
            || !k.backlog.is_empty()
            || k.window.values().any(|f| matches!(f, Inflight::Outbox { .. }))
            || self.scan_low() < k.status.flip_head.load(Ordering::Acquire)
            || k.status.cold_writers.load(Ordering::Acquire) != 0
        {
            return;
        }
        let s = k.status;
        let name = k.cfg.name.clone();
        // No SQL under the ring lock (every committing publisher needs it, and the outbox query
        // can wait for a table lock). Instead: note the registration epoch while no transaction
        // is registered as a cold writer; every earlier one has ended, so a snapshot taken after
        // this sees its rows. Look at the outbox; go hot only if still nobody has registered.
        let lock = shmem::RING_LOCK;
        let epoch = shmem::with_lock(lock, pg::LWLockMode::LW_SHARED, || {
            (s.cold_writers.load(Ordering::Acquire) == 0).then(|| s.cold_epoch.load(Ordering::Acquire))
        });
        let Some(epoch) = epoch else { return };
        let hot = match self.with_outbox(|| outbox::exists(&name)) {
            Some(false) => Some(shmem::with_lock(lock, pg::LWLockMode::LW_EXCLUSIVE, || {
                let unchanged =
                    s.cold_writers.load(Ordering::Acquire) == 0 && s.cold_epoch.load(Ordering::Acquire) == epoch;
                if unchanged {
                    s.set_mode(Mode::Hot);
                }
                unchanged
            })),
            _ => None,
        };
        if hot == Some(true) {
            guard::log(Level::LOG, format!("pg_mqtt_pub: broker \"{name}\" outbox drained, back to the hot path"));
        } else {
            self.links[l].outbox_check = true;
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
    fn check_ack_timeout(&mut self, l: usize) {
        let limit = Duration::from_millis(gucs::ACK_TIMEOUT_MS.get() as u64);
        let k = &self.links[l];
        if k.state == ConnState::Connected && k.window.stalled(Instant::now(), limit) {
            let why = format!(
                "no acknowledgement for {} ms with {} messages in flight; reconnecting",
                limit.as_millis(),
                k.window.len()
            );
            self.fail(l, why);
            let k = &mut self.links[l];
            k.failures = 0; // reconnect at once
            k.state = ConnState::Retry { at: Instant::now() };
        }
    }

    /// SIGHUP: the default broker's settings may have changed (and the protocol and window of
    /// every broker); the catalog is read again too.
    fn reloaded(&mut self) {
        self.next_catalog_check = Instant::now();
        let new = BrokerConfig::default_broker();
        let proto = (new.protocol, new.max_inflight);
        for l in 0..self.links.len() {
            let k = &mut self.links[l];
            let mut target = if l == 0 { new.clone() } else { k.cfg.clone() };
            (target.protocol, target.max_inflight) = proto;
            if target == k.cfg {
                continue;
            }
            guard::log(
                Level::LOG,
                format!(
                    "pg_mqtt_pub: broker \"{}\" settings changed, reconnecting to {}:{}",
                    target.name, target.host, target.port
                ),
            );
            k.switch_to = Some((target, Instant::now() + DRAIN_GRACE));
        }
    }

    /// Complete a pending settings switch once in-flight messages are acknowledged (or the grace
    /// period ends: then they are taken back into the outbox and sent again).
    fn maybe_switch(&mut self, l: usize) {
        let k = &self.links[l];
        let Some((_, deadline)) = &k.switch_to else { return };
        if k.state == ConnState::Connected && !k.window.is_empty() && Instant::now() < *deadline {
            return;
        }
        let (new, _) = self.links[l].switch_to.take().expect("checked above");
        self.go_cold(l);
        self.drop_client(l, false);
        let k = &mut self.links[l];
        k.cfg = new;
        k.status.set_connected(false);
        k.status.set_identity(&k.cfg.name, &k.cfg.host, k.cfg.port);
        k.state = ConnState::Idle;
        k.failures = 0;
        self.rebuild_waiter = true;
    }

    /// Could the scan make progress right now (so the worker must not sleep)?
    fn ring_ready(&mut self) -> bool {
        if self.links.iter().any(|k| !k.backlog.is_empty() && k.window_open()) {
            return true;
        }
        // SAFETY: only consumer; the view is dropped immediately.
        match unsafe { self.ring.peek_at(self.scan.cursor(), &mut self.scratch) } {
            Peek::Cancelled(_) => true,
            Peek::Ready(r) => match self.by_slot.get(r.broker as usize).copied().flatten() {
                Some(l) => {
                    let k = &self.links[l];
                    k.removed_at.is_some() || k.takes_ring_record() || (self.links.len() > 1 && !k.cold())
                }
                None => true,
            },
            Peek::Empty | Peek::Reserved { .. } => false,
        }
    }

    fn wait(&mut self, more: bool) {
        let fds: Vec<(usize, c_int)> = self
            .links
            .iter()
            .enumerate()
            .filter_map(|(i, k)| k.client.as_ref().map(|c| (i, c.socket())))
            .filter(|&(_, fd)| fd >= 0)
            .collect();
        if self.rebuild_waiter || self.waiter.as_ref().is_none_or(|w| !w.same_sockets(&fds)) {
            self.waiter = Some(Waiter::new(&fds));
            self.rebuild_waiter = false;
        }
        let now = Instant::now();
        let until = |t: Instant| t.saturating_duration_since(now).as_millis() as i64;
        let mut timeout: i64 = 1000; // keepalive handling granularity
        let mut busy = more;
        for k in &self.links {
            if let ConnState::Retry { at } = k.state {
                timeout = timeout.min(until(at));
            }
            if k.state == ConnState::Connected {
                timeout = timeout.min(until(k.next_outbox_poll));
            }
            if k.resolving.is_some() {
                timeout = timeout.min(RESOLVE_POLL_MS); // the thread does not set our latch
            }
            busy |= k.outbox_check && k.window_open() && self.ext_present;
        }
        if !self.ext_present {
            timeout = timeout.min(until(self.next_ext_check));
        }
        if let Some((pos, since)) = self.blocked_at {
            if pos == self.scan.cursor() {
                timeout = timeout.min(until(since + STEP_OVER_AFTER) + 1); // time to step over
            }
        }
        timeout = timeout.min(until(self.next_catalog_check));
        let stats = report_stats();
        if stats > 0 {
            timeout = timeout.min(stats);
        }
        let shared = crate::publish::require_shared();
        let mut sleeping = false;
        let linger = !busy && self.last_work.elapsed() < LINGER;
        if busy || linger {
            timeout = 0;
        } else {
            // The wake-up protocol (shmem.rs): announce, then re-check, then sleep.
            shared.worker_sleeping.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            sleeping = true;
            if self.ring_ready() || shared.broker_generation.load(Ordering::Acquire) != self.generation {
                timeout = 0;
            }
        }
        let w = self.waiter.as_mut().expect("waiter built above");
        for (i, k) in self.links.iter().enumerate() {
            w.want_write(i, k.client.as_ref().is_some_and(|c| c.socket() >= 0 && c.want_write()));
        }
        let mut ready = std::mem::take(&mut self.ready);
        let mut latch = w.wait(timeout.max(0), &mut ready);
        if linger && !latch && ready.is_empty() && !self.ring_ready() {
            // Unannounced nap: producers see worker_sleeping = false and do not signal.
            std::thread::sleep(LINGER_NAP);
            let w = self.waiter.as_mut().expect("waiter built above");
            latch = w.wait(0, &mut ready);
        }
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
            for k in &mut self.links {
                k.outbox_check = true;
            }
        }
        guard::check_for_interrupts();
        for &(l, r, w) in &ready {
            if let Some(k) = self.links.get_mut(l) {
                k.service_socket(r, w);
            }
        }
        self.ready = ready;
    }

    /// Shutting down: the ring is shared memory and will not survive the restart, so everything
    /// still in it — sent but unacknowledged, or not sent yet — goes to the outbox (lane 0,
    /// ahead of everything else). Brokers start cold, so it is delivered first after the restart.
    fn save_ring_to_outbox(&mut self) {
        // Every committed record counts, including those behind a transaction still committing:
        // step over reservations at once, and give their transactions (which got the same
        // SIGTERM) a moment to finish COMMIT.
        let give_up = Instant::now() + SHUTDOWN_COMMIT_WAIT;
        let mut scratch = std::mem::take(&mut self.scratch);
        loop {
            let caught_up = loop {
                // SAFETY: only consumer; the scan cursor is a record boundary.
                match unsafe { self.ring.peek_at(self.scan.cursor(), &mut scratch) } {
                    Peek::Ready(r) => self.scan.push(r.nslots, false),
                    Peek::Cancelled(n) => self.scan.push(n, true),
                    Peek::Reserved { run } if run > 0 => self.scan.push_hole(run),
                    Peek::Reserved { .. } => break false,
                    Peek::Empty => break true,
                }
            };
            self.take_filled_holes();
            if (caught_up && !self.scan.has_holes()) || Instant::now() >= give_up {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.scratch = scratch;
        let abandoned = self.scan.abandon_holes();
        if abandoned > 0 {
            guard::log(
                Level::WARNING,
                format!(
                    "pg_mqtt_pub: worker stopping; {abandoned} transactions were still committing after {} s, their messages are not saved",
                    SHUTDOWN_COMMIT_WAIT.as_secs()
                ),
            );
        }
        let left = self.scan.unfinished();
        if left.is_empty() || !self.ext_present {
            return;
        }
        for k in &mut self.links {
            k.window.clear();
            k.backlog.clear();
        }
        self.rescue(&left);
        self.release_ring();
        guard::log(
            Level::LOG,
            format!("pg_mqtt_pub: worker stopping; {} undelivered messages saved to the outbox", left.len()),
        );
    }

    fn shutdown(&mut self) -> ! {
        let until = Instant::now() + SHUTDOWN_GRACE;
        while Instant::now() < until
            && self.links.iter().any(|k| !k.window.is_empty() && k.state == ConnState::Connected)
        {
            for l in 0..self.links.len() {
                self.links[l].service_socket(true, true);
                self.handle_events(l);
            }
            nap(10);
        }
        self.release_ring();
        for l in 0..self.links.len() {
            let rows = std::mem::take(&mut self.links[l].to_delete);
            self.with_outbox(|| outbox::delete(&rows));
            if let Some(c) = self.links[l].client.as_mut() {
                c.disconnect();
                c.loop_write();
            }
            self.links[l].client = None;
        }
        self.save_ring_to_outbox();
        // SAFETY: exits the process.
        crate::compat::proc_exit(0)
    }
}
