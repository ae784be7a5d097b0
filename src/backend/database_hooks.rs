//! DROP DATABASE, ALTER DATABASE ... RENAME and CREATE DATABASE ... TEMPLATE refuse to run while
//! anyone else is connected to the database (they wait up to 5 s for others to leave). A
//! publishing database always has one more connection: its worker. So before PostgreSQL runs
//! one of them, this hook asks that worker to save its ring to the outbox and leave
//! (shmem/directory.rs); the launcher starts it again a little later, if the database is still
//! there (ADR-012).
//!
//! Only for a caller who may run the command at all (superuser or the database's owner): nobody
//! else can make a worker leave by issuing commands that then fail.

use crate::pg::guard::guard;
use pgrx_pg_sys as pg;
use std::ffi::{c_char, CStr};

static mut PREV_HOOK: pg::ProcessUtility_hook_type = None;

/// Install the hook (from `_PG_init`, preloading).
pub fn install() {
    // SAFETY: _PG_init runs once per process, before any query.
    unsafe {
        PREV_HOOK = pg::ProcessUtility_hook;
        pg::ProcessUtility_hook = Some(process_utility);
    }
}

#[allow(non_snake_case, clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg::PlannedStmt,
    queryString: *const c_char,
    readOnlyTree: bool,
    context: pg::ProcessUtilityContext::Type,
    params: pg::ParamListInfo,
    queryEnv: *mut pg::QueryEnvironment,
    dest: *mut pg::DestReceiver,
    qc: *mut pg::QueryCompletion,
) {
    guard(|| {
        // SAFETY: `pstmt` is the statement PostgreSQL is about to run; we only read it.
        let vacate = unsafe { database_to_vacate(pstmt) };
        let mut copy_publishes = false;
        if let Some(name) = &vacate {
            copy_publishes = ask_worker_to_leave(name);
        }
        // SAFETY: the next hook (or the standard one) with the arguments we were given; an ERROR
        // it raises travels through the guard and is re-thrown.
        unsafe {
            match PREV_HOOK {
                Some(prev) => prev(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc),
                None => {
                    pg::standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc)
                }
            }
        }
        // A copy of a publishing database publishes too: its worker starts now (and moves the
        // copied outbox to its dead letters, data/installation.rs), not at its first publish.
        // SAFETY: as above.
        if copy_publishes {
            if let Some(new) = unsafe { created_database(pstmt) } {
                crate::shmem::claim_for_launcher(new, false);
            }
        }
    })
}

/// The oid of the database a CREATE DATABASE just made.
///
/// # Safety
/// `pstmt` must be a valid utility statement.
unsafe fn created_database(pstmt: *mut pg::PlannedStmt) -> Option<u32> {
    // SAFETY: the node tag is checked before the cast; a syscache lookup.
    unsafe {
        let node = (*pstmt).utilityStmt;
        if node.is_null() || (*node).type_ != pg::NodeTag::T_CreatedbStmt {
            return None;
        }
        let oid = pg::get_database_oid((*(node as *mut pg::CreatedbStmt)).dbname, true);
        (oid != pg::InvalidOid).then(|| oid.to_u32())
    }
}

/// The database a statement needs to itself: dropped, renamed, or copied from.
///
/// # Safety
/// `pstmt` must be a valid utility statement.
unsafe fn database_to_vacate(pstmt: *mut pg::PlannedStmt) -> Option<String> {
    // SAFETY: node tags are checked before each cast.
    unsafe {
        let node = (*pstmt).utilityStmt;
        if node.is_null() {
            return None;
        }
        let name = match (*node).type_ {
            pg::NodeTag::T_DropdbStmt => (*(node as *mut pg::DropdbStmt)).dbname,
            pg::NodeTag::T_RenameStmt => {
                let r = node as *mut pg::RenameStmt;
                if (*r).renameType != pg::ObjectType::OBJECT_DATABASE {
                    return None;
                }
                (*r).subname
            }
            pg::NodeTag::T_CreatedbStmt => template_of((*(node as *mut pg::CreatedbStmt)).options),
            _ => return None,
        };
        (!name.is_null()).then(|| CStr::from_ptr(name).to_string_lossy().into_owned())
    }
}

/// CREATE DATABASE's template (template1 unless `TEMPLATE` says otherwise).
///
/// # Safety
/// `options` must be CREATE DATABASE's option list.
unsafe fn template_of(options: *mut pg::List) -> *mut c_char {
    // SAFETY: a List of DefElem nodes; defGetString reads a DefElem's value as written.
    unsafe {
        if !options.is_null() {
            for i in 0..(*options).length as usize {
                let d = (*(*options).elements.add(i)).ptr_value as *mut pg::DefElem;
                if CStr::from_ptr((*d).defname).to_bytes() == b"template" && !(*d).arg.is_null() {
                    return pg::defGetString(d);
                }
            }
        }
        c"template1".as_ptr() as *mut c_char
    }
}

/// Ask the worker of database `name` to leave, if it publishes and the caller may run the
/// command. Returns whether the database publishes (has a share).
fn ask_worker_to_leave(name: &str) -> bool {
    let Ok(cname) = std::ffi::CString::new(name) else { return false };
    // SAFETY: a syscache lookup of a shared catalog, inside the statement's transaction.
    unsafe {
        let oid = pg::get_database_oid(cname.as_ptr(), true);
        if oid == pg::InvalidOid || crate::shmem::of_database(oid.to_u32()).is_none() {
            return false;
        }
        if !pg::superuser() && !owns_database(oid) {
            return true;
        }
        if crate::shmem::request_leave(oid.to_u32()) {
            crate::pg::guard::log(
                crate::pg::guard::Level::LOG,
                format!("pg_mqtt_pub: asked the worker of database \"{name}\" to leave, so that this command can run"),
            );
        }
        true
    }
}

/// Is the current user (a member of) the owner of database `oid`?
fn owns_database(oid: pg::Oid) -> bool {
    // SAFETY: syscache lookup; the tuple is released before returning.
    unsafe {
        let tup = pg::SearchSysCache1(pg::SysCacheIdentifier::DATABASEOID as i32, pg::Datum::from(oid));
        if tup.is_null() {
            return false;
        }
        let hdr = (*tup).t_data;
        let form = (hdr as *const u8).add((*hdr).t_hoff as usize) as *const pg::FormData_pg_database;
        let owner = (*form).datdba;
        pg::ReleaseSysCache(tup);
        pg::has_privs_of_role(pg::GetUserId(), owner)
    }
}
