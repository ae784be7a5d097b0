//! DROP DATABASE, ALTER DATABASE ... RENAME / SET TABLESPACE and CREATE DATABASE ... TEMPLATE
//! refuse to run while anyone else is connected to the database (they wait up to 5 s for others
//! to leave). A publishing database always has one more connection: its worker. So before
//! PostgreSQL runs one of them, this hook asks that worker to save its ring to the outbox and
//! leave (shmem/directory.rs); the launcher starts it again a little later, if the database is
//! still there (ADR-012).
//!
//! Only for a caller whom the command's own checks would let through: a superuser, or the
//! database's owner with CREATEDB where the command needs it, at top level and outside a
//! transaction block where the command needs that. Nobody can make a worker leave with a
//! command that then fails on those grounds.

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
        let vacate = unsafe { database_to_vacate(pstmt, context) };
        let mut copy_publishes = false;
        if let Some(v) = &vacate {
            copy_publishes = ask_worker_to_leave(v) && v.command == Command::Copy;
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
        // Superusers only: a role that may copy its own database should not take a share (of
        // max_databases) it cannot give back; its copy claims one at its first publish.
        // SAFETY: as above; plain calls.
        if copy_publishes && unsafe { pg::superuser() } {
            if let Some(new) = unsafe { created_database(pstmt) } {
                // SAFETY: plain call; CREATE DATABASE wrote pg_database, so it has an id.
                let xid = unsafe { pg::GetCurrentTransactionIdIfAny() };
                if !crate::shmem::claim_for_launcher(new, false, xid.into_inner()) {
                    crate::pg::guard::log(
                        crate::pg::guard::Level::WARNING,
                        "pg_mqtt_pub: no share left for the new database (pg_mqtt_pub.max_databases): it publishes once a share is free",
                    );
                }
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

#[derive(PartialEq, Eq, Clone, Copy)]
enum Command {
    Drop,
    Rename,
    Copy,
    SetTablespace,
}

/// A database a statement needs to itself, and what it does to it.
struct Vacate {
    name: String,
    command: Command,
}

/// The database a statement needs to itself: dropped, renamed, copied from, or moved.
///
/// # Safety
/// `pstmt` must be a valid utility statement.
unsafe fn database_to_vacate(pstmt: *mut pg::PlannedStmt, context: pg::ProcessUtilityContext::Type) -> Option<Vacate> {
    // SAFETY: node tags are checked before each cast.
    unsafe {
        let node = (*pstmt).utilityStmt;
        if node.is_null() {
            return None;
        }
        // (top_level_only: the command refuses to run inside a transaction block or a function)
        let (name, command, top_level_only) = match (*node).type_ {
            pg::NodeTag::T_DropdbStmt => ((*(node as *mut pg::DropdbStmt)).dbname, Command::Drop, true),
            pg::NodeTag::T_RenameStmt => {
                let r = node as *mut pg::RenameStmt;
                if (*r).renameType != pg::ObjectType::OBJECT_DATABASE
                    || ((*r).newname.is_null() || pg::get_database_oid((*r).newname, true) != pg::InvalidOid)
                {
                    return None; // the new name is taken: it fails
                }
                ((*r).subname, Command::Rename, false)
            }
            pg::NodeTag::T_CreatedbStmt => {
                (template_of((*(node as *mut pg::CreatedbStmt)).options), Command::Copy, true)
            }
            pg::NodeTag::T_AlterDatabaseStmt => {
                let a = node as *mut pg::AlterDatabaseStmt;
                let d = option((*a).options, b"tablespace")?;
                if (*d).arg.is_null() || pg::get_tablespace_oid(pg::defGetString(d), true) == pg::InvalidOid {
                    return None; // no such tablespace: it fails
                }
                ((*a).dbname, Command::SetTablespace, true)
            }
            _ => return None,
        };
        if name.is_null() {
            return None;
        }
        if top_level_only
            && (context != pg::ProcessUtilityContext::PROCESS_UTILITY_TOPLEVEL || pg::IsTransactionBlock())
        {
            return None; // PostgreSQL refuses it anyway
        }
        Some(Vacate { name: CStr::from_ptr(name).to_string_lossy().into_owned(), command })
    }
}

/// The option `name` of a CREATE / ALTER DATABASE option list.
///
/// # Safety
/// `options` must be such a list of DefElem nodes (or NULL).
unsafe fn option(options: *mut pg::List, name: &[u8]) -> Option<*mut pg::DefElem> {
    // SAFETY: a List of DefElem nodes.
    unsafe {
        if options.is_null() {
            return None;
        }
        (0..(*options).length as usize)
            .map(|i| (*(*options).elements.add(i)).ptr_value as *mut pg::DefElem)
            .find(|&d| CStr::from_ptr((*d).defname).to_bytes() == name)
    }
}

/// CREATE DATABASE's template (template1 unless `TEMPLATE` says otherwise).
///
/// # Safety
/// `options` must be CREATE DATABASE's option list.
unsafe fn template_of(options: *mut pg::List) -> *mut c_char {
    // SAFETY: defGetString reads a DefElem's value as written.
    unsafe {
        match option(options, b"template") {
            Some(d) if !(*d).arg.is_null() => pg::defGetString(d),
            _ => c"template1".as_ptr() as *mut c_char,
        }
    }
}

/// Ask the worker of the database to leave, if it publishes and the caller may run the command.
/// Returns whether the database publishes (has a share).
fn ask_worker_to_leave(v: &Vacate) -> bool {
    let name = v.name.as_str();
    let Ok(cname) = std::ffi::CString::new(name) else { return false };
    // SAFETY: a syscache lookup of a shared catalog, inside the statement's transaction.
    unsafe {
        let oid = pg::get_database_oid(cname.as_ptr(), true);
        if oid == pg::InvalidOid || crate::shmem::of_database(oid.to_u32()).is_none() {
            return false;
        }
        // RENAME and a copy also need CREATEDB (superusers have it); a template copy needs no
        // ownership when the template is marked datistemplate, but templates have no worker.
        let needs_createdb = matches!(v.command, Command::Rename | Command::Copy);
        if !pg::superuser() && (!owns_database(oid) || (needs_createdb && !pg::have_createdb_privilege())) {
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
