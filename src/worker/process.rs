//! Process plumbing shared by the launcher and the worker: signals, naps, transactions,
//! statistics, the settings the worker pins.

use super::*;

// The raw C signal handlers (the pgrx wrappers are Rust functions and cannot be installed).
extern "C-unwind" {
    #[link_name = "SignalHandlerForConfigReload"]
    fn sighup_handler(arg: c_int);
    #[link_name = "SignalHandlerForShutdownRequest"]
    fn sigterm_handler(arg: c_int);
}

/// Timer slack 1 µs instead of Linux's default 50 µs: the linger naps (`LINGER_NAP`) are short,
/// and every microsecond a nap oversleeps is a microsecond of COMMIT-to-broker latency.
pub(super) fn precise_naps() {
    // SAFETY: plain prctl on this thread; failure only leaves the default slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
}

/// Who sent the SIGTERM (0: nobody yet).
static TERM_SENDER: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// SIGTERM: note the sender, then PostgreSQL's own handler (flag, latch).
extern "C" fn on_sigterm(sig: c_int, info: *mut libc::siginfo_t, _ctx: *mut std::ffi::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler; an atomic store and
    // PostgreSQL's async-signal-safe handler are all that runs here.
    unsafe {
        if !info.is_null() {
            TERM_SENDER.store((*info).si_pid(), std::sync::atomic::Ordering::Relaxed);
        }
        sigterm_handler(sig);
    }
}

/// The exit code for a requested shutdown: 0 when the postmaster asked (the server is stopping
/// or restarting: nothing to report, and "exited with exit code 1" in the log would look like a
/// failure), 1 otherwise (pg_terminate_backend: a static worker exiting with 1 is restarted).
pub(super) fn shutdown_exit_code() -> c_int {
    // SAFETY: plain read of a PostgreSQL global.
    let postmaster = unsafe { pg::PostmasterPid };
    (TERM_SENDER.load(std::sync::atomic::Ordering::Relaxed) != postmaster) as c_int
}

pub(super) fn install_signals() {
    // SAFETY: standard background-worker setup, before signals are unblocked; the SIGTERM
    // handler is installed as pqsignal would (SA_RESTART, empty mask) plus SA_SIGINFO.
    unsafe {
        crate::pg::compat::pqsignal(libc::SIGHUP, Some(sighup_handler));
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = on_sigterm as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut act.sa_mask);
        libc::sigaction(libc::SIGTERM, &act, std::ptr::null_mut());
        // A broker closing the socket must not kill the worker.
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        pg::BackgroundWorkerUnblockSignals();
    }
}

pub(super) fn shutdown_requested() -> bool {
    // SAFETY: sig_atomic_t flag set by the signal handler.
    unsafe { pg::ShutdownRequestPending != 0 }
}

pub(super) fn take_reload() -> bool {
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
pub(super) fn nap(ms: i64) {
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

pub(super) fn in_transaction<R>(f: impl FnOnce() -> R) -> R {
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

/// The worker's transactions have table statistics not yet reported.
pub(super) static STATS_PENDING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Report the table statistics of our transactions (as a backend does when it goes idle): the
/// outbox's deleted rows must count as dead tuples, or autovacuum never cleans it during a long
/// drain and every fetch wades through them. PostgreSQL flushes at most about once a second;
/// returns the milliseconds until the next try (0: nothing pending).
pub(super) fn report_stats() -> i64 {
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

/// Is the extension installed, and will it stay so until this transaction ends? DROP EXTENSION
/// locks the extension exclusively before it drops anything, so a share lock held for the rest of
/// the transaction keeps it (and its tables) in place under the worker's queries; without it, a
/// DROP committing while a query of ours waited for a table lock made that query fail and the
/// worker exit. Looked up again after the lock: it may have been dropped just before.
pub(super) fn extension_exists_in_transaction() -> bool {
    // SAFETY: catalog lookups and a heavyweight lock inside a transaction (released at its end);
    // LockDatabaseObject takes in the invalidations of whatever committed while it waited.
    unsafe {
        let oid = pg::get_extension_oid(c"pg_mqtt_pub".as_ptr(), true);
        if oid == pg::InvalidOid {
            return false;
        }
        pg::LockDatabaseObject(pg::ExtensionRelationId, oid, 0, pg::AccessShareLock as i32);
        pg::get_extension_oid(c"pg_mqtt_pub".as_ptr(), true) == oid
    }
}

pub(super) fn extension_present() -> bool {
    in_transaction(extension_exists_in_transaction)
}

/// Settings the worker's SQL depends on, fixed at connect with the highest source priority, so
/// that `ALTER DATABASE` / `ALTER ROLE ... SET` (which a database owner may use on the publishing
/// database) can neither redirect (role, search_path) nor break (timeouts, read-only and
/// isolation defaults, replica mode, text formats) the bootstrap superuser's queries. Each query
/// also pins its path itself (`spi.rs`). tests/test_security.py sets every one of them.
pub(super) fn pin_session_settings() {
    // First who the worker is: `ALTER DATABASE ... SET session_authorization = owner` (which the
    // database's owner may do) made it that owner, like `role` below. Back to the bootstrap
    // superuser it connected as.
    // SAFETY: catalog lookup and GUC assignment right after connecting, inside a transaction
    // (the role name is looked up in pg_authid).
    in_transaction(|| unsafe {
        let me = pg::GetUserNameFromId(pg::GetAuthenticatedUserId(), false);
        pg::SetConfigOption(
            c"session_authorization".as_ptr(),
            me,
            pg::GucContext::PGC_SUSET,
            pg::GucSource::PGC_S_OVERRIDE,
        );
    });
    const PINNED: [(&std::ffi::CStr, &std::ffi::CStr); 16] = [
        // `ALTER DATABASE ... SET role = owner` made the worker its owner: no right to the
        // brokers table, and every start failed
        (c"role", c"none"),
        (c"search_path", crate::pg::spi::PINNED_PATH),
        (c"statement_timeout", c"0"),
        (c"lock_timeout", c"0"),
        (c"idle_in_transaction_session_timeout", c"0"),
        (c"idle_session_timeout", c"0"),
        (c"transaction_timeout", c"0"), // PostgreSQL 17+
        (c"default_transaction_read_only", c"off"),
        (c"default_transaction_isolation", c"read committed"),
        (c"default_transaction_deferrable", c"off"),
        (c"session_replication_role", c"origin"),
        (c"DateStyle", c"ISO, MDY"),
        (c"IntervalStyle", c"postgres"),
        (c"bytea_output", c"hex"),
        (c"extra_float_digits", c"1"),
        // The worker's own writes (rescued ring records, deleted outbox rows) must not wait for a
        // synchronous standby: that would stop delivery for everybody while none is attached.
        // Losing them in a failover loses nothing committed by a user (ring records live only in
        // this server's memory anyway; a lost delete means a duplicate, which at-least-once allows).
        (c"synchronous_commit", c"local"),
    ];
    for (name, value) in PINNED {
        // SAFETY: plain GUC look-up and assignment in our own process; PGC_S_OVERRIDE outranks
        // every file, database and role setting. A setting this server version lacks is skipped.
        unsafe {
            if pg::GetConfigOption(name.as_ptr(), true, false).is_null() {
                continue;
            }
            pg::SetConfigOption(name.as_ptr(), value.as_ptr(), pg::GucContext::PGC_SUSET, pg::GucSource::PGC_S_OVERRIDE)
        };
    }
    // SAFETY: the session's identity; superuser() reads pg_authid, so inside a transaction.
    let (user, authenticated, su) =
        in_transaction(|| unsafe { (pg::GetUserId(), pg::GetAuthenticatedUserId(), pg::superuser()) });
    if user != authenticated || !su {
        PgError::new(
            crate::pg::guard::Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "pg_mqtt_pub worker: not running as the bootstrap superuser",
        )
            .hint("A database or role setting changed the worker's identity in a way it cannot undo; remove it (ALTER DATABASE ... RESET).")
            .raise();
    }
}

extern "C" {
    // Variadic, so not in the generated bindings; `errcontext()` is this macro's expansion.
    fn errcontext_msg(fmt: *const std::ffi::c_char, ...) -> c_int;
}

/// Every line the worker logs says which database it publishes for (`CONTEXT: pg_mqtt_pub
/// worker for database "x"`): with a worker per database, "lost connection to broker "b""
/// alone does not say whose broker it is.
pub(super) fn log_with_database() {
    let name = in_transaction(crate::pg::compat::current_database);
    let text = CString::new(format!("pg_mqtt_pub worker for database \"{name}\"")).unwrap_or_default();
    let text = Box::leak(text.into_boxed_c_str());
    let cb = Box::leak(Box::new(pg::ErrorContextCallback {
        previous: std::ptr::null_mut(),
        callback: Some(database_context),
        arg: text.as_ptr() as *mut std::ffi::c_void,
    }));
    // SAFETY: the callback and its text live until the process exits; the worker's outermost
    // frame installs it, so every report the process makes runs it.
    unsafe {
        cb.previous = pg::error_context_stack;
        pg::error_context_stack = cb;
    }
}

unsafe extern "C-unwind" fn database_context(arg: *mut std::ffi::c_void) {
    // SAFETY: called by errfinish while a report is being made; `arg` is our NUL-terminated text.
    unsafe {
        pg::set_errcontext_domain(std::ptr::null());
        errcontext_msg(c"%s".as_ptr(), arg as *const std::ffi::c_char);
    }
}
