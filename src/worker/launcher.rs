//! The launcher: a static background worker connected to no database (shared catalogs only).
//! It starts one publishing worker per database that has a share of shared memory (ADR-012),
//! as dynamic background workers, and supervises them: restarts one after it exits (1 s,
//! doubling up to 30 s if it keeps dying young), gives a share back when its database was
//! dropped or its extension is gone, and keeps the list of publishing databases in a file so
//! that after a restart their workers start before anyone publishes.
//!
//! Discovery: a backend that needs its database's share claims it and sets our latch
//! (shmem/directory.rs); `CREATE EXTENSION` does so in its script. Nothing probes databases:
//! with 1,000 databases that never publish, the launcher reads `pg_database` only when one of
//! its own databases needs a worker started or has lost one.
//! Like PostgreSQL's logical replication launcher, it lives apart from the workers it starts.

use super::*;
use crate::shmem::{ReleaseOutcome, Shared};

/// The publishing databases (their oids, one a line), in the data directory: written at every
/// change, read at start. It travels with a base backup, so a promoted clone starts its workers.
const DATABASES_FILE: &str = "pg_mqtt_pub.databases";

/// How long a worker that was asked to leave (DROP / RENAME / CREATE DATABASE ... TEMPLATE) stays
/// away: the command runs meanwhile; a worker starting while it holds its lock waits for it.
const LEAVE_HOLD: Duration = Duration::from_secs(2);

/// How often a database that refuses connections (or is a template) is looked at again.
const REFUSED_RECHECK: Duration = Duration::from_secs(10);

pub(super) fn fill(dst: &mut [std::ffi::c_char], s: &str) {
    let mut n = s.len().min(dst.len() - 1);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    for (d, b) in dst.iter_mut().zip(s.as_bytes()[..n].iter()) {
        *d = *b as std::ffi::c_char;
    }
    dst[n] = 0;
}

pub(super) fn worker_struct(name: &str, kind: &str, function: &str, flags: u32, restart: i32) -> pg::BackgroundWorker {
    // SAFETY: BackgroundWorker is plain C data; all-zero is a valid starting point.
    let mut w: pg::BackgroundWorker = unsafe { std::mem::zeroed() };
    fill(&mut w.bgw_name, name);
    fill(&mut w.bgw_type, kind);
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
        "pg_mqtt_pub launcher",
        "pg_mqtt_pub_launcher_main",
        pg::BGWORKER_SHMEM_ACCESS | pg::BGWORKER_BACKEND_DATABASE_CONNECTION,
        5,
    );
    // SAFETY: called from _PG_init in the postmaster.
    unsafe { pg::RegisterBackgroundWorker(&mut w) };
}

/// A database as `pg_database` describes it.
struct DbRow {
    oid: u32,
    name: String,
    /// Connections allowed and not a template (a template's worker would block every CREATE
    /// DATABASE copying it; `datallowconn = false` keeps everyone out, us too).
    accepts: bool,
}

/// The launcher's view of one share's worker.
struct Supervised {
    dboid: u32,
    handle: Option<*mut pg::BackgroundWorkerHandle>,
    started: Instant,
    next_start: Instant,
    delay: Duration,
    refused_logged: bool,
}

impl Supervised {
    fn new(dboid: u32) -> Supervised {
        Supervised {
            dboid,
            handle: None,
            started: Instant::now(),
            next_start: Instant::now(),
            delay: Duration::from_secs(1),
            refused_logged: false,
        }
    }
}

/// Launcher entry point.
#[no_mangle]
pub unsafe extern "C-unwind" fn pg_mqtt_pub_launcher_main(_arg: pg::Datum) {
    guard(|| {
        install_signals();
        // SAFETY: connect to no database: only shared catalogs are needed here.
        unsafe { pg::BackgroundWorkerInitializeConnection(std::ptr::null(), std::ptr::null(), 0) };
        let dir = crate::shmem::directory().expect("preloaded");
        // SAFETY: our PGPROC latch, valid until we exit; forgotten at exit.
        unsafe {
            dir.launcher_latch.store(pg::MyLatch, Ordering::Release);
            pg::on_shmem_exit(Some(forget_launcher_latch), pg::Datum::from(0usize));
        }
        let only = gucs::DATABASE.string();
        if !only.is_empty() {
            guard::log(
                Level::LOG,
                format!("pg_mqtt_pub: publishing is restricted to database \"{only}\" (pg_mqtt_pub.database); set it to '' to let every database publish"),
            );
        }
        let mut unknown = claim_known_databases(&only);
        let mut supervised: Vec<Option<Supervised>> = crate::shmem::shares().map(|_| None).collect();
        let mut written: Option<(u64, usize)> = None;
        loop {
            if shutdown_requested() {
                for s in supervised.iter().flatten() {
                    if let Some(h) = s.handle {
                        // SAFETY: a handle from RegisterDynamicBackgroundWorker.
                        unsafe { pg::TerminateBackgroundWorker(h) };
                    }
                }
                crate::pg::compat::proc_exit(shutdown_exit_code());
            }
            take_reload();
            look_into_unknown(&mut unknown);
            let changes = dir.changes.load(Ordering::Acquire);
            let mut catalog: Option<Vec<DbRow>> = None;
            let mut soonest = Duration::from_secs(1);
            for (share, sup) in crate::shmem::shares().zip(supervised.iter_mut()) {
                if let Some(wait) = supervise(share, sup, &mut catalog) {
                    soonest = soonest.min(wait);
                }
            }
            // Not while a guess is out (its database would be listed as publishing); the
            // databases not looked into yet are listed as such, so a restart goes on with them.
            let now = Some((changes, unknown.len()));
            if now != written && !guessing() {
                written = now;
                save_databases(&unknown);
            }
            nap(soonest.as_millis().max(10) as i64);
        }
    })
}

unsafe extern "C-unwind" fn forget_launcher_latch(_code: c_int, _arg: pg::Datum) {
    if let Some(d) = crate::shmem::directory() {
        d.launcher_latch.store(std::ptr::null_mut(), Ordering::Release);
    }
}

/// One share, one round: start its worker when due, notice when it stopped, give the share back
/// when its database is gone. Returns how soon it wants another look.
fn supervise(
    share: &'static Shared,
    slot: &mut Option<Supervised>,
    catalog: &mut Option<Vec<DbRow>>,
) -> Option<Duration> {
    let dboid = share.dboid.load(Ordering::Acquire);
    if dboid == 0 {
        *slot = None;
        return None;
    }
    if slot.as_ref().is_none_or(|s| s.dboid != dboid) {
        *slot = Some(Supervised::new(dboid));
    }
    let sup = slot.as_mut().expect("set above");
    if let Some(h) = sup.handle {
        let mut pid: pg::pid_t = 0;
        // SAFETY: a handle from RegisterDynamicBackgroundWorker.
        let st = unsafe { pg::GetBackgroundWorkerPid(h, &mut pid) };
        if st != pg::BgwHandleStatus::BGWH_STOPPED && st != pg::BgwHandleStatus::BGWH_POSTMASTER_DIED {
            return None;
        }
        sup.handle = None;
        return Some(worker_stopped(share, sup));
    }
    let pid = share.worker_pid.load(Ordering::Acquire);
    // SAFETY: signal 0 only asks whether the process exists.
    if pid != 0 && unsafe { libc::kill(pid, 0) } == 0 {
        // A worker started by a launcher before us (it exited with an ERROR): let it run.
        return Some(Duration::from_secs(1));
    }
    let now = Instant::now();
    if now < sup.next_start {
        return Some(sup.next_start - now);
    }
    let rows = catalog.get_or_insert_with(databases);
    match rows.iter().find(|r| r.oid == dboid) {
        None if young(share) => {
            sup.next_start = now + Duration::from_secs(1);
            Some(Duration::from_secs(1))
        }
        None => {
            if let ReleaseOutcome::Released { lost } = crate::shmem::release(share, true) {
                let why = if lost > 0 {
                    format!("; {lost} ring slots of messages committed there were discarded with it")
                } else {
                    String::new()
                };
                guard::log(Level::LOG, format!("pg_mqtt_pub: database {dboid} was dropped, its share is free{why}"));
            }
            *slot = None;
            None
        }
        Some(r) if !r.accepts => {
            if !sup.refused_logged {
                guard::log(
                    Level::LOG,
                    format!(
                        "pg_mqtt_pub: database \"{}\" does not accept connections (datallowconn = false) or is a template; its worker starts once it does",
                        r.name
                    ),
                );
                sup.refused_logged = true;
            }
            sup.next_start = now + REFUSED_RECHECK;
            Some(REFUSED_RECHECK)
        }
        Some(r) => {
            sup.refused_logged = false;
            let name = r.name.clone();
            start_worker(share, sup, &name);
            None
        }
    }
}

/// Claimed moments ago: its database may not be committed yet (see `Shared::claimed_at`).
fn young(share: &Shared) -> bool {
    // SAFETY: plain call.
    let now = unsafe { pg::GetCurrentTimestamp() };
    now - share.claimed_at.load(Ordering::Relaxed) < 10_000_000
}

/// The worker of `share` has stopped: why, and when to start it again.
fn worker_stopped(share: &'static Shared, sup: &mut Supervised) -> Duration {
    // SAFETY: plain call.
    let now = unsafe { pg::GetCurrentTimestamp() };
    let announced = now - share.announced_at.load(Ordering::Acquire) < 10_000_000;
    if share.idle_exit.swap(false, Ordering::AcqRel) {
        // (announced moments ago: the worker looked before the CREATE EXTENSION committed)
        if !announced {
            if let ReleaseOutcome::Released { .. } = crate::shmem::release(share, false) {
                return Duration::ZERO;
            }
        }
        // A publisher came in between: start again at once.
        sup.next_start = Instant::now();
        return Duration::ZERO;
    }
    if share.leave_requested.swap(false, Ordering::AcqRel) {
        sup.next_start = Instant::now() + LEAVE_HOLD;
        sup.delay = Duration::from_secs(1);
        return LEAVE_HOLD;
    }
    // Restart quickly after a long healthy run, back off if it keeps dying young.
    sup.delay = if sup.started.elapsed() > Duration::from_secs(60) {
        Duration::from_secs(1)
    } else {
        (sup.delay * 2).min(Duration::from_secs(30))
    };
    sup.next_start = Instant::now() + sup.delay;
    sup.delay
}

fn start_worker(share: &'static Shared, sup: &mut Supervised, dbname: &str) {
    let mut w = worker_struct(
        &format!("pg_mqtt_pub worker {dbname}"),
        "pg_mqtt_pub worker",
        "pg_mqtt_pub_worker_main",
        pg::BGWORKER_SHMEM_ACCESS | pg::BGWORKER_BACKEND_DATABASE_CONNECTION,
        pg::BGW_NEVER_RESTART,
    );
    w.bgw_main_arg = pg::Datum::from(share.index());
    // SAFETY: MyProcPid is ours; the postmaster signals us when the worker changes state.
    w.bgw_notify_pid = unsafe { pg::MyProcPid };
    let mut handle: *mut pg::BackgroundWorkerHandle = std::ptr::null_mut();
    // SAFETY: plain registration.
    if !unsafe { pg::RegisterDynamicBackgroundWorker(&mut w, &mut handle) } {
        guard::log(
            Level::WARNING,
            format!("pg_mqtt_pub: could not start the worker of database \"{dbname}\": no background worker slot free; raise max_worker_processes"),
        );
        sup.next_start = Instant::now() + Duration::from_secs(5);
        return;
    }
    sup.handle = Some(handle);
    sup.started = Instant::now();
}

/// Every database, from a heap scan of pg_database, as the autovacuum launcher does: an index
/// lookup would need pg_class, which a process without a database cannot read.
fn databases() -> Vec<DbRow> {
    in_transaction(|| {
        let mut rows = Vec::new();
        // SAFETY: pg_database is a shared catalog; the scan runs inside a transaction with a
        // snapshot, and each tuple's fixed part is read as FormData_pg_database (GETSTRUCT).
        unsafe {
            pg::GetTransactionSnapshot();
            let rel = pg::table_open(pg::DatabaseRelationId, pg::AccessShareLock as i32);
            let scan = pg::table_beginscan_catalog(rel, 0, std::ptr::null_mut());
            loop {
                let tup = pg::heap_getnext(scan, pg::ScanDirection::ForwardScanDirection);
                if tup.is_null() {
                    break;
                }
                let hdr = (*tup).t_data;
                let form = (hdr as *const u8).add((*hdr).t_hoff as usize) as *const pg::FormData_pg_database;
                let name = std::ffi::CStr::from_ptr((*form).datname.data.as_ptr()).to_string_lossy().into_owned();
                // datconnlimit -2: a database whose DROP was interrupted (invalid).
                let accepts = (*form).datallowconn && !(*form).datistemplate && (*form).datconnlimit != -2;
                rows.push(DbRow { oid: (*form).oid.to_u32(), name, accepts });
            }
            pg::heap_endscan(scan);
            pg::table_close(rel, pg::AccessShareLock as i32);
        }
        rows
    })
}

/// At start: claim a share for every database that published before (the file), so that their
/// workers deliver what waits in their outboxes before anyone publishes again. Without the file
/// (the first start of this version, a new data directory made by `pg_upgrade`) nobody knows:
/// the database the single worker used to serve (`pg_mqtt_pub.database`, or `postgres`, its old
/// default) is taken at once, and every other database that accepts connections is returned, to
/// be looked into one after the other (`look_into_unknown`).
fn claim_known_databases(only: &str) -> std::collections::VecDeque<u32> {
    let rows = databases();
    let mut unknown = std::collections::VecDeque::new();
    let (wanted, guess): (Vec<u32>, bool) = match std::fs::read_to_string(DATABASES_FILE) {
        Ok(text) => {
            // "?oid": a database a start without the file had not looked into yet
            let later = text.lines().filter_map(|l| l.trim().strip_prefix('?')?.parse::<u32>().ok());
            unknown.extend(later.filter(|o| rows.iter().any(|r| r.oid == *o && r.accepts)));
            (text.lines().filter_map(|l| l.trim().parse().ok()).collect(), false)
        }
        Err(_) => {
            let old = if only.is_empty() { "postgres" } else { only };
            if only.is_empty() {
                unknown.extend(rows.iter().filter(|r| r.accepts && r.name != old).map(|r| r.oid));
            }
            (rows.iter().filter(|r| r.name == old).map(|r| r.oid).collect(), true)
        }
    };
    for oid in wanted {
        let Some(row) = rows.iter().find(|r| r.oid == oid) else { continue };
        if !only.is_empty() && row.name != only {
            continue;
        }
        if !crate::shmem::claim_for_launcher(oid, guess, 0) {
            guard::log(
                Level::WARNING,
                format!("pg_mqtt_pub: no share left for database \"{}\"; raise pg_mqtt_pub.max_databases", row.name),
            );
        }
    }
    unknown
}

/// Databases not known to publish or not (a start without the file): claim a share for one on a
/// guess (its worker leaves at once if the extension is not there, and the share is given back),
/// two at a time, and only while another share stays free for a database that announces itself. With 1,000 databases this is 1,000 short-lived workers, once.
fn look_into_unknown(unknown: &mut std::collections::VecDeque<u32>) {
    loop {
        let (free, guessing) = crate::shmem::shares().fold((0, 0), |(f, g), s| {
            let taken = s.dboid.load(Ordering::Acquire) != 0;
            (f + usize::from(!taken), g + usize::from(taken && s.guess.load(Ordering::Acquire)))
        });
        if free < 2 || guessing >= 2 {
            return;
        }
        let Some(oid) = unknown.pop_front() else { return };
        if crate::shmem::of_database(oid).is_none() {
            crate::shmem::claim_for_launcher(oid, true, 0);
        }
    }
}

/// Is a share held on a guess (its worker has not yet said whether the extension is there)?
fn guessing() -> bool {
    crate::shmem::shares().any(|s| s.dboid.load(Ordering::Acquire) != 0 && s.guess.load(Ordering::Acquire))
}

/// Write the publishing databases' oids, and as `?oid` those not looked into yet (atomically: a
/// new file renamed over the old one).
fn save_databases(unknown: &std::collections::VecDeque<u32>) {
    let oids: Vec<String> = crate::shmem::shares()
        .map(|s| s.dboid.load(Ordering::Acquire))
        .filter(|&o| o != 0)
        .map(|o| o.to_string())
        .chain(unknown.iter().map(|o| format!("?{o}")))
        .collect();
    let tmp = format!("{DATABASES_FILE}.tmp");
    let body = oids.join("\n") + "\n";
    let r = std::fs::write(&tmp, body)
        .and_then(|_| std::fs::File::open(&tmp).and_then(|f| f.sync_all()))
        .and_then(|_| std::fs::rename(&tmp, DATABASES_FILE));
    if let Err(e) = r {
        guard::log(Level::WARNING, format!("pg_mqtt_pub: could not write \"{DATABASES_FILE}\": {e}"));
    }
}
