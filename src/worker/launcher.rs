//! The launcher: a static background worker connected to no database (shared catalogs only).
//! It waits until `pg_mqtt_pub.database` exists, then starts the publishing worker as a dynamic
//! background worker and supervises it: restarts it after it exits (1 s, doubling up to 30 s if
//! it keeps dying young). This is why a missing database never makes anything crash-loop.
//! Like PostgreSQL's logical replication launcher, it lives apart from the worker it starts.

use super::*;

pub(super) fn fill(dst: &mut [std::ffi::c_char], s: &str) {
    let n = s.len().min(dst.len() - 1);
    for (d, b) in dst.iter_mut().zip(s.as_bytes()[..n].iter()) {
        *d = *b as std::ffi::c_char;
    }
    dst[n] = 0;
}

pub(super) fn worker_struct(name: &str, function: &str, flags: u32, restart: i32) -> pg::BackgroundWorker {
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
                crate::pg::compat::proc_exit(shutdown_exit_code());
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
pub(super) fn supervise_worker() {
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
                crate::pg::compat::proc_exit(shutdown_exit_code());
            }
        }
        take_reload();
        nap(1000);
    }
}

/// Does the database exist? A heap scan of pg_database, as the autovacuum launcher does: an
/// index lookup would need pg_class, which a process without a database cannot read.
pub(super) fn database_exists(name: &str) -> bool {
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
