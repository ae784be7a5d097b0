//! `mqtt_broker_add` (both names): the right to name server files is the *caller's*.
//!
//! A broker definition may name files the worker reads and uses towards the broker:
//! `password_file` (its first line is sent), `ca_cert`, `client_cert` and `client_key` (the
//! certificate is presented, the key signs the handshake). Naming one needs what reading it
//! would: membership in `pg_read_server_files`. That must be the right of the role actually
//! calling — the current user, which `SET ROLE` and a SECURITY DEFINER caller set — but a
//! SECURITY DEFINER function cannot see who called it (until 1.4 the check looked at
//! `session_user`: a role without the right could name `/etc/...` through `SET ROLE` by a
//! privileged session, or through a definer function of its own that a privileged role ran).
//!
//! So the entry point is SECURITY INVOKER, here: it checks the current user, then runs the
//! validation and the INSERT — `mqtt_pub.broker_add_as_owner`, PL/pgSQL, SECURITY DEFINER, not
//! executable by PUBLIC — as the extension owner (pinned path, security-restricted, spi.rs).

use crate::pg::fmgr::Args;
use crate::pg::guard::{guard, Code, PgError};
use crate::pg::spi::{self, pinned, with_spi, Rights};
use crate::pure::settings_rules::{self, Problem};
use pgrx_pg_sys as pg;

/// The arguments, in order, with their types (the SQL signature of both names).
const ARGS: [pg::Oid; 13] = [
    pg::TEXTOID, // name
    pg::TEXTOID, // host
    pg::INT4OID, // port
    pg::TEXTOID, // username
    pg::TEXTOID, // password
    pg::BOOLOID, // use_tls
    pg::TEXTOID, // ca_cert
    pg::TEXTOID, // client_cert
    pg::TEXTOID, // client_key
    pg::TEXTOID, // tls_version
    pg::TEXTOID, // client_id
    pg::INT4OID, // keepalive
    pg::TEXTOID, // password_file
];
/// ca_cert, client_cert, client_key, password_file.
const FILES: [usize; 4] = [6, 7, 8, 12];
const CLIENT_ID: usize = 10;
const HOST: usize = 1;
const PORT: usize = 2;

fn add(fcinfo: pg::FunctionCallInfo) -> pg::Datum {
    // SAFETY: fcinfo comes from PostgreSQL for this call.
    let a = unsafe { Args::new(fcinfo) };
    // An error raised from here on must not write the statement (and an inline password) to the
    // log, nor a caller's error context: called from PL/pgSQL, the caller's statement (and the
    // password in it) would be logged as CONTEXT. So the callers' context callbacks are left out
    // while the function runs (PostgreSQL restores the stack wherever an error is caught) ...
    // SAFETY: a process-global list head, restored below.
    let context =
        unsafe { std::mem::replace(&mut *std::ptr::addr_of_mut!(pg::error_context_stack), std::ptr::null_mut()) };
    // ... and log_min_error_statement is `panic`: a SET clause on the function would need
    // superuser to take effect for everyone, so it is set at a GUC nest level like one.
    // SAFETY: plain GUC assignment; the level is closed below (or by the transaction's abort).
    let level = unsafe {
        let level = pg::NewGUCNestLevel();
        pg::set_config_option(
            c"log_min_error_statement".as_ptr(),
            c"panic".as_ptr(),
            pg::GucContext::PGC_SUSET,
            pg::GucSource::PGC_S_SESSION,
            pg::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
        level
    };
    // SAFETY: plain catalog check of the current user's memberships.
    let may_read = unsafe { pg::has_privs_of_role(pg::GetUserId(), pg::Oid::from(pg::ROLE_PG_READ_SERVER_FILES)) };
    if FILES.iter().any(|&i| a.get(i).is_some()) && !may_read {
        PgError::new(Code::ERRCODE_INSUFFICIENT_PRIVILEGE, "permission denied to name server files for a broker")
            .detail(
                "The worker reads password_file, ca_cert, client_cert and client_key and uses them towards the \
                 broker (a password file's first line is sent to it).",
            )
            .hint("Only superusers and members of pg_read_server_files may name them; ask one to add the broker.")
            .raise();
    }
    // A host, or a list of nodes host[:port] (the rule of pg_mqtt_pub.broker_host, nodes.rs);
    // NULLs are the SQL function's to refuse.
    if let (Some(host), Some(port)) = (a.opt_bytes(HOST), a.get(PORT)) {
        let port = u16::try_from(port.value() as i32).unwrap_or(1883);
        if let Err(e) = crate::pure::nodes::parse(&String::from_utf8_lossy(host), port) {
            PgError::new(Code::ERRCODE_INVALID_PARAMETER_VALUE, e.message).hint(e.hint).raise();
        }
    }
    if let Some(id) = a.opt_bytes(CLIENT_ID) {
        if let Err(e) = settings_rules::client_id(&String::from_utf8_lossy(id)) {
            PgError::new(Code::ERRCODE_INVALID_PARAMETER_VALUE, e.message).hint(e.hint).raise();
        }
    }
    let params: Vec<(pg::Oid, Option<pg::Datum>)> = ARGS.iter().enumerate().map(|(i, &t)| (t, a.get(i))).collect();
    with_spi(|| {
        pinned(Rights::Owner, || {
            // SAFETY: inside SPI and the pinned scope; each parameter of its declared type.
            unsafe {
                spi::execute_nulls(
                    "SELECT mqtt_pub.broker_add_as_owner($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                    &params,
                    false,
                    0,
                )
            }
        })
    });
    // The files must be there, readable by the server, now (after the arguments' own rules, so a
    // file named without use_tls hears about that first): a missing CA file would otherwise
    // surface only later, in mqtt_status(), as libmosquitto's "Invalid function arguments".
    for (&i, what) in FILES.iter().zip(["ca_cert", "client_cert", "client_key", "password_file"]) {
        let Some(path) = a.opt_bytes(i) else { continue };
        if let Err(e) = settings_rules::readable_file(what, &String::from_utf8_lossy(path)) {
            let code = match e.kind {
                Problem::BadValue => Code::ERRCODE_INVALID_PARAMETER_VALUE,
                Problem::NoSuchFile => Code::ERRCODE_UNDEFINED_FILE,
                Problem::NotAllowed => Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
                Problem::Io => Code::ERRCODE_IO_ERROR,
            };
            PgError::new(code, e.message).hint(e.hint).raise();
        }
    }
    // SAFETY: closes the nest level opened above; puts the callers' error context back.
    unsafe {
        pg::AtEOXact_GUC(true, level);
        pg::error_context_stack = context;
    }
    pg::Datum::from(0usize)
}

crate::pg_finfo!(pg_finfo_mqtt_broker_add);

/// `mqtt_broker_add(name, host, port, username, password, use_tls, ca_cert, client_cert,
/// client_key, tls_version, client_id, keepalive, password_file) RETURNS void`
#[no_mangle]
pub unsafe extern "C-unwind" fn mqtt_broker_add(fcinfo: pg::FunctionCallInfo) -> pg::Datum {
    guard(|| add(fcinfo))
}
