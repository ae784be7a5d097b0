//! The FFI error boundary: the one place where Rust and PostgreSQL error handling meet.
//!
//! Rules, for every `extern "C-unwind"` function PostgreSQL calls into (SQL functions, `_PG_init`,
//! hooks, GUC check hooks, transaction callbacks, the workers' main functions):
//! * the whole body runs inside [`guard`], which is pgrx-pg-sys's `pgrx_extern_c_guard`:
//!   - a Rust panic becomes `ereport(ERROR)` (SQLSTATE XX000) after the Rust stack has unwound;
//!   - an [`PgError`] raised with [`PgError::raise`] becomes `ereport(ERROR)` with its SQLSTATE,
//!     detail and hint;
//!   - a PostgreSQL ERROR raised inside a `pg_sys` call (every binding is wrapped in a
//!     `sigsetjmp` boundary by pgrx-pg-sys) travels through Rust as a panic, so destructors run,
//!     and is re-thrown with `pg_re_throw()` once it reaches the guard.
//! * So a `longjmp` never crosses a Rust frame that owns something with a destructor.
//! * `register_pg_guard_panic_hook()` runs first thing in `_PG_init` (see `lib.rs`).
//!
//! Nothing here may be called off the main thread; libmosquitto runs without threads.

use pg::elog::PgLogLevel;
use pg::errcodes::PgSqlErrorCode;
use pg::panic::ErrorReport;
use pgrx_pg_sys as pg;

pub use pg::errcodes::PgSqlErrorCode as Code;

/// Run `f` as the body of a function PostgreSQL called.
#[inline(always)]
pub fn guard<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: only ever called at the top of an `extern "C-unwind"` function, on the main
    // thread, with no Rust frames above it that would be skipped by a re-thrown ERROR.
    unsafe { pg::panic::pgrx_extern_c_guard(f) }
}

/// An ERROR in the making: message, SQLSTATE, optional detail and hint.
pub struct PgError {
    code: PgSqlErrorCode,
    message: String,
    detail: Option<String>,
    hint: Option<String>,
}

impl PgError {
    pub fn new(code: PgSqlErrorCode, message: impl Into<String>) -> Self {
        PgError { code, message: message.into(), detail: None, hint: None }
    }
    pub fn detail(mut self, d: impl Into<String>) -> Self {
        self.detail = Some(d.into());
        self
    }
    pub fn hint(mut self, h: impl Into<String>) -> Self {
        self.hint = Some(h.into());
        self
    }
    #[track_caller]
    fn report_at(self, level: PgLogLevel) {
        let mut r = ErrorReport::new(self.code, self.message, "pg_mqtt_pub");
        if let Some(d) = self.detail {
            r = r.set_detail(d);
        }
        if let Some(h) = self.hint {
            r = r.set_hint(h);
        }
        r.report(level);
    }
    /// Raise as ERROR: unwinds to the nearest [`guard`], which reports it.
    #[track_caller]
    pub fn raise(self) -> ! {
        self.report_at(PgLogLevel::ERROR);
        unreachable!("ERROR returned")
    }
    /// Emit at a non-error level (WARNING, LOG, ...).
    #[track_caller]
    pub fn emit(self, level: PgLogLevel) {
        debug_assert!(level < PgLogLevel::ERROR);
        self.report_at(level);
    }
}

/// Log a line at `level` (below ERROR).
#[track_caller]
pub fn log(level: PgLogLevel, msg: impl Into<String>) {
    PgError::new(PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION, msg).emit(level);
}

pub use pg::elog::PgLogLevel as Level;

/// CHECK_FOR_INTERRUPTS(): may raise ERROR (query cancel) or FATAL (terminate).
pub fn check_for_interrupts() {
    pg::check_for_interrupts!();
}
