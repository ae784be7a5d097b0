//! Check hooks of the default broker's settings: a setting is refused exactly as the same value
//! passed to `mqtt_broker_add()` is (pure/settings_rules.rs), by `ALTER SYSTEM` at once and at a
//! reload in the server log ("invalid value for parameter ..."), the old value staying in force.
//!
//! At server start a failing check hook would only produce a WARNING and silently keep the
//! default, so there host and TLS version are accepted and `validate_startup` (gucs.rs) refuses to
//! start with the same message. Files are checked only inside a transaction — `ALTER SYSTEM` —
//! never by the postmaster or at a reload: a path on a hung network file system would stop the
//! postmaster from accepting connections. At a reload (and at start: a secret volume may be
//! mounted later) the worker names an unreadable file in `mqtt_status().problem` and its log.

use crate::pure::settings_rules::{self, Invalid};
use pgrx_pg_sys as pg;
use std::ffi::{c_char, c_void, CStr, CString};

/// Report `e` through guc.c's check-hook channel.
fn refuse(e: Invalid) -> bool {
    let detail = CString::new(e.message).unwrap_or_default();
    let hint = CString::new(e.hint).unwrap_or_default();
    // SAFETY: guc.c reports (and frees) these palloc'd strings.
    unsafe {
        pg::GUC_check_errdetail_string = pg::pstrdup(detail.as_ptr());
        pg::GUC_check_errhint_string = pg::pstrdup(hint.as_ptr());
    }
    false
}

fn value(newval: *mut *mut c_char) -> String {
    // SAFETY: guc.c passes a valid pointer to a NUL-terminated string or NULL.
    unsafe {
        let p = *newval;
        if p.is_null() {
            return String::new();
        }
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

fn starting() -> bool {
    // SAFETY: plain read of a PostgreSQL global on the main thread.
    unsafe { pg::process_shared_preload_libraries_in_progress }
}

/// Files are looked at only by a statement (`ALTER SYSTEM`), never in the postmaster or at a
/// reload (both outside any transaction).
fn in_statement() -> bool {
    // SAFETY: plain calls on the main thread.
    unsafe { pg::IsUnderPostmaster && pg::IsTransactionState() }
}

/// One check hook per rule; `$rule` gets the value.
macro_rules! string_check {
    ($name:ident, $at_start:expr, $rule:expr) => {
        pub unsafe extern "C-unwind" fn $name(
            newval: *mut *mut c_char,
            _extra: *mut *mut c_void,
            _source: pg::GucSource::Type,
        ) -> bool {
            crate::pg::guard::guard(|| {
                if starting() && !$at_start {
                    return true;
                }
                match $rule(&value(newval)) {
                    Ok(()) => true,
                    Err(e) => refuse(e),
                }
            })
        }
    };
}

string_check!(check_host, false, settings_rules::host);
string_check!(check_client_id, false, settings_rules::client_id);
string_check!(check_tls_version, false, settings_rules::tls_version);
string_check!(check_ca_cert, false, |v: &str| if in_statement() {
    settings_rules::readable_file("ca_cert", v)
} else {
    Ok(())
});
string_check!(check_client_cert, false, |v: &str| if in_statement() {
    settings_rules::readable_file("client_cert", v)
} else {
    Ok(())
});
string_check!(check_client_key, false, |v: &str| if in_statement() {
    settings_rules::readable_file("client_key", v)
} else {
    Ok(())
});
string_check!(check_password_file, false, |v: &str| if in_statement() {
    settings_rules::readable_file("password_file", v)
} else {
    Ok(())
});
