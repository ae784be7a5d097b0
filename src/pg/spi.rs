//! The one place that runs SQL (SPI), and the rules every statement follows (docs/SECURITY.md).
//!
//! * **Pinned path.** Each statement runs with `search_path = pg_catalog, pg_temp`, set at a new
//!   GUC nest level (as `SET` on a function does) and undone right after — or by the (sub)
//!   transaction abort on ERROR. A name that a statement does not qualify therefore resolves in
//!   `pg_catalog` only, whatever the caller's, role's or database's `search_path` says. On top of
//!   that every table, function and operator in our SQL text is schema-qualified, so a statement
//!   means the same thing even if someone changes this module.
//! * **Rights.** [`Rights::Caller`] runs as the current user; [`Rights::Restricted`] too, as a
//!   security-restricted operation (the worker). [`Rights::Owner`] switches to the
//!   owner of `mqtt_pub.outbox` (as PostgreSQL's RI triggers switch to a table's owner) *and*
//!   marks a security-restricted operation, so nothing reached from the statement can change the
//!   session (SET ROLE, temp objects, ...). Owner statements touch only our own tables and
//!   evaluate no user-defined object: no user rows, types, casts or names.
//! * **Plans** are prepared inside the pinned scope, so their cached search path is the pinned
//!   one and a re-plan never sees the caller's path.
//!
//! Everything here may raise an ERROR; callers run inside the FFI guard (`guard.rs`).

use pgrx_pg_sys as pg;
use std::ffi::{c_char, CStr, CString};

/// Whose privileges a statement runs with.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Rights {
    /// The current user, unrestricted: a caller's own statements (the statement trigger's
    /// query over its transition tables, the setup functions' DDL).
    Caller,
    /// The current user as a security-restricted operation: the worker (bootstrap superuser).
    Restricted,
    /// The owner of `mqtt_pub.outbox`, as a security-restricted operation.
    Owner,
    /// The owner of this relation, as a security-restricted operation (the DROP guard: the
    /// relation may be renamed, or `mqtt_pub.outbox` gone already).
    OwnerOf(pg::Oid),
}

/// Run `f` connected to SPI, with an active snapshot.
pub fn with_spi<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: SPI_connect/SPI_finish bracket `f`; on ERROR the transaction abort cleans up SPI
    // and the snapshot stack, so no Rust destructor is needed.
    unsafe {
        pg::SPI_connect();
        let pushed = !pg::ActiveSnapshotSet();
        if pushed {
            pg::PushActiveSnapshot(pg::GetTransactionSnapshot());
        }
        let r = f();
        if pushed {
            pg::PopActiveSnapshot();
        }
        pg::SPI_finish();
        r
    }
}

/// The path every statement of ours runs under.
pub const PINNED_PATH: &CStr = c"pg_catalog, pg_temp";

/// Run `f` (which runs SQL through SPI) with the pinned search_path and `rights`.
pub fn pinned<R>(rights: Rights, f: impl FnOnce() -> R) -> R {
    // SAFETY: the GUC nest level and the user id are restored right after `f`; if `f` raises an
    // ERROR, the (sub)transaction abort restores both (AtEOXact_GUC / AtEOSubXact_GUC and the
    // saved user id of the transaction state), as for a function with a SET clause.
    unsafe {
        let level = pg::NewGUCNestLevel();
        pg::set_config_option(
            c"search_path".as_ptr(),
            PINNED_PATH.as_ptr(),
            pg::GucContext::PGC_USERSET,
            pg::GucSource::PGC_S_SESSION,
            pg::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
        let (mut saved_user, mut saved_ctx) = (pg::InvalidOid, 0);
        pg::GetUserIdAndSecContext(&mut saved_user, &mut saved_ctx);
        let restricted = saved_ctx | pg::SECURITY_RESTRICTED_OPERATION as i32;
        match rights {
            Rights::Caller => {}
            Rights::Restricted => pg::SetUserIdAndSecContext(saved_user, restricted),
            Rights::Owner => {
                pg::SetUserIdAndSecContext(outbox_owner(), restricted | pg::SECURITY_LOCAL_USERID_CHANGE as i32)
            }
            Rights::OwnerOf(relid) => {
                pg::SetUserIdAndSecContext(owner_of(relid), restricted | pg::SECURITY_LOCAL_USERID_CHANGE as i32)
            }
        }
        let r = f();
        if rights != Rights::Caller {
            pg::SetUserIdAndSecContext(saved_user, saved_ctx);
        }
        pg::AtEOXact_GUC(true, level);
        r
    }
}

/// The owner of `mqtt_pub.outbox`, from the relation cache (no SQL, no name lookup in any path).
/// Looked up each time (a relcache hit): a cached owner would outlive `DROP EXTENSION` and a
/// `CREATE EXTENSION` by another role in the same session.
fn outbox_owner() -> pg::Oid {
    // SAFETY: catalog lookups inside a transaction.
    let relid = unsafe {
        let ns = pg::get_namespace_oid(c"mqtt_pub".as_ptr(), false);
        pg::get_relname_relid(c"outbox".as_ptr(), ns)
    };
    if relid == pg::InvalidOid {
        crate::pg::guard::PgError::new(
            crate::pg::guard::Code::ERRCODE_UNDEFINED_TABLE,
            "mqtt_pub.outbox does not exist",
        )
        .hint("Run CREATE EXTENSION pg_mqtt_pub in this database.")
        .raise();
    }
    owner_of(relid)
}

/// A relation's owner, from the relation cache.
fn owner_of(relid: pg::Oid) -> pg::Oid {
    // SAFETY: the relation is opened (it exists: callers found it) and closed here.
    unsafe {
        let rel = pg::RelationIdGetRelation(relid);
        if rel.is_null() {
            crate::pg::guard::PgError::new(
                crate::pg::guard::Code::ERRCODE_UNDEFINED_TABLE,
                format!("relation {relid} does not exist"),
            )
            .raise();
        }
        let owner = (*(*rel).rd_rel).relowner;
        pg::RelationClose(rel);
        owner
    }
}

/// Run `sql` with parameters `$1..` (type, value) inside SPI and the pinned scope. Returns the
/// SPI result code (an ERROR has been raised already for a failing statement).
///
/// # Safety
/// Inside [`with_spi`] and [`pinned`]; each datum is of its declared type.
pub unsafe fn execute(sql: &str, args: &[(pg::Oid, pg::Datum)], read_only: bool, limit: i64) -> i32 {
    let args: Vec<(pg::Oid, Option<pg::Datum>)> = args.iter().map(|&(t, d)| (t, Some(d))).collect();
    // SAFETY: the caller's promise.
    unsafe { execute_nulls(sql, &args, read_only, limit) }
}

/// [`execute`] with parameters that may be NULL (`None`).
///
/// # Safety
/// As [`execute`].
pub unsafe fn execute_nulls(sql: &str, args: &[(pg::Oid, Option<pg::Datum>)], read_only: bool, limit: i64) -> i32 {
    let sql = CString::new(sql).expect("no NUL in generated SQL");
    let mut types: Vec<pg::Oid> = args.iter().map(|a| a.0).collect();
    let mut values: Vec<pg::Datum> = args.iter().map(|a| a.1.unwrap_or(pg::Datum::from(0usize))).collect();
    // SPI's convention: ' ' for a value, 'n' for NULL.
    let nulls: Vec<std::ffi::c_char> = args.iter().map(|a| if a.1.is_some() { b' ' } else { b'n' } as _).collect();
    // SAFETY: the caller's promise; the arrays have one entry per parameter.
    unsafe {
        pg::SPI_execute_with_args(
            sql.as_ptr(),
            args.len() as i32,
            types.as_mut_ptr(),
            values.as_mut_ptr(),
            nulls.as_ptr(),
            read_only,
            limit,
        )
    }
}

/// Rows the last statement returned or changed.
pub fn processed() -> u64 {
    // SAFETY: plain read of an SPI global.
    unsafe { pg::SPI_processed }
}

/// Column `col` (1-based) of result row `row` of the last statement, if not NULL.
///
/// # Safety
/// Right after a successful statement that returned rows; `row < processed()`.
pub unsafe fn value(row: usize, col: i32) -> Option<pg::Datum> {
    // SAFETY: the caller's promise.
    unsafe {
        if pg::SPI_tuptable.is_null() {
            return None;
        }
        let t = &*pg::SPI_tuptable;
        let mut isnull = false;
        let d = pg::SPI_getbinval(*t.vals.add(row), t.tupdesc, col, &mut isnull);
        (!isnull).then_some(d)
    }
}

/// Column `col` of the first result row, if any and not NULL.
///
/// # Safety
/// Right after a successful statement.
pub unsafe fn first_value(col: i32) -> Option<pg::Datum> {
    // SAFETY: forwarded; row 0 exists when processed() > 0.
    unsafe {
        if processed() == 0 {
            return None;
        }
        value(0, col)
    }
}

/// Column `col` of result row `row` in its text form (our own tables' columns only: their
/// output functions are built in).
///
/// # Safety
/// As [`value`].
pub unsafe fn text_at(row: usize, col: i32) -> Option<String> {
    // SAFETY: the caller's promise.
    unsafe {
        let t = &*pg::SPI_tuptable;
        let p = pg::SPI_getvalue(*t.vals.add(row), t.tupdesc, col);
        (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
    }
}

/// A text (or bytea: same layout) datum holding a copy of `b`, in the current memory context.
pub fn bytes_datum(b: &[u8]) -> pg::Datum {
    // SAFETY: builds a varlena holding a copy of `b`.
    unsafe { pg::Datum::from(pg::cstring_to_text_with_len(b.as_ptr() as *const c_char, b.len() as i32)) }
}

/// `ident` quoted as an SQL identifier where needed.
pub fn quote_ident(ident: &[u8]) -> Vec<u8> {
    let c = CString::new(ident).expect("identifiers have no NUL");
    // SAFETY: quote_identifier returns its input or a palloc'd copy, NUL-terminated.
    unsafe { CStr::from_ptr(pg::quote_identifier(c.as_ptr())).to_bytes().to_vec() }
}

/// `s` as an SQL string literal.
pub fn quote_literal(s: &[u8]) -> Vec<u8> {
    let c = CString::new(s).expect("literals have no NUL");
    // SAFETY: quote_literal_cstr returns a palloc'd, NUL-terminated string.
    unsafe { CStr::from_ptr(pg::quote_literal_cstr(c.as_ptr())).to_bytes().to_vec() }
}
