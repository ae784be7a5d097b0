//! Differences between the PostgreSQL major versions we build for (15, 16, 17, 18), in one
//! place. Everything else calls these instead of the version-specific bindings. The Cargo
//! feature `pgNN` (set by the Makefile from `pg_config --version`) selects the bindings.

use pgrx_pg_sys as pg;
use std::ffi::{c_char, c_int};

/// Install a signal handler the way the backend does (`pqsignal`; a macro over `pqsignal_be`
/// since PostgreSQL 18).
///
/// # Safety
/// As `pqsignal`: called in the process that owns the handler, before it can fire.
pub unsafe fn pqsignal(signo: c_int, handler: pg::pqsigfunc) {
    // SAFETY: the caller's promise.
    unsafe {
        #[cfg(feature = "pg18")]
        pg::pqsignal_be(signo, handler);
        #[cfg(not(feature = "pg18"))]
        pg::pqsignal(signo, handler);
    }
}

/// `proc_exit`: never returns (the PostgreSQL 18 bindings lose the `noreturn`).
#[allow(unreachable_code, clippy::diverging_sub_expression)]
pub fn proc_exit(code: c_int) -> ! {
    // SAFETY: ends the process through PostgreSQL's exit callbacks.
    unsafe { pg::proc_exit(code) };
    unreachable!("proc_exit returned")
}

/// A wait set that lives as long as the process (not owned by any resource owner; freed by its
/// owner with `FreeWaitEventSet`). PostgreSQL 17 replaced the memory-context argument by a
/// resource owner; NULL means none.
///
/// # Safety
/// Called in a backend or background worker after shared memory is attached.
pub unsafe fn create_wait_event_set(nevents: c_int) -> *mut pg::WaitEventSet {
    // SAFETY: the caller's promise.
    unsafe {
        #[cfg(any(feature = "pg17", feature = "pg18"))]
        return pg::CreateWaitEventSet(std::ptr::null_mut(), nevents);
        #[cfg(not(any(feature = "pg17", feature = "pg18")))]
        return pg::CreateWaitEventSet(pg::TopMemoryContext, nevents);
    }
}

/// A qualified name as SQL parses it (`stringToQualifiedNameList`; PostgreSQL 16 added a soft
/// error context, NULL = raise).
///
/// # Safety
/// `s` is a NUL-terminated string.
pub unsafe fn qualified_name_list(s: *const c_char) -> *mut pg::List {
    // SAFETY: the caller's promise.
    unsafe {
        #[cfg(feature = "pg15")]
        return pg::stringToQualifiedNameList(s);
        #[cfg(not(feature = "pg15"))]
        return pg::stringToQualifiedNameList(s, std::ptr::null_mut());
    }
}

/// The name of the database this process is connected to ('' if none).
pub fn current_database() -> String {
    // SAFETY: MyDatabaseId is set once connected; get_database_name pallocs (or returns NULL).
    unsafe {
        if pg::MyDatabaseId == pg::InvalidOid {
            return String::new();
        }
        let p = pg::get_database_name(pg::MyDatabaseId);
        if p.is_null() {
            return String::new();
        }
        std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}
