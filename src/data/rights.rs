//! Per-role topic rights (issue #29, ADR-014): `mqtt_pub.topic_rights` and
//! `mqtt_pub.trigger_setters`, and the check every publish makes.
//!
//! A broker with at least one right is *restricted*: there a role publishes only to topics that
//! match a filter (pure/topic_filter.rs) granted to a role whose privileges it has
//! (`has_privs_of_role`: PostgreSQL's membership rule, with INHERIT). Superusers and the owner of
//! the extension (and its members) are exempt. A broker without rights is not restricted.
//!
//! **No SQL per call.** Each backend keeps the rights in a cache, reloaded (as the owner, pinned
//! path) when `Shared::rights_generation` moves: a statement trigger on the two tables marks the
//! transaction, and its COMMIT bumps the generation; the changing backend forgets its own cache
//! at once (its own later calls see its uncommitted change, as SQL would). For the role last
//! asked about it keeps the filters that apply to it, per broker, until the rights change or a
//! role's memberships or superuser flag change (syscache callbacks on `pg_auth_members` and
//! `pg_authid`). An unrestricted broker costs one atomic load and a name comparison.
//!
//! **Whose rights.** The current user (`GetUserId()`, so `SET ROLE` counts) — except while a
//! publishing trigger fires (`as_trigger`): then the role that set the trigger up
//! (`mqtt_pub.trigger_setters`, recorded by `mqtt_trigger_*_setup` with the trigger's OID), or, for
//! a trigger created otherwise (by hand, before 1.8, or restored from a dump), the table's owner.
//! The table's writers need no right of their own.

use crate::pg::guard::{guard, Code, PgError};
use crate::pg::spi::{self, pinned, text_at, with_spi, Rights};
use crate::pure::backend_local::BackendLocal;
use crate::pure::topic_filter;
use crate::shmem::require_shared;
use pgrx_pg_sys as pg;
use std::cell::{Cell, RefCell};
use std::ffi::{c_int, CStr};
use std::sync::atomic::Ordering;

extern "C-unwind" {
    // utils/inval.h (not in pgrx-pg-sys's bindings); the same signature from 15 to 18.
    fn CacheRegisterSyscacheCallback(
        cacheid: c_int,
        func: Option<unsafe extern "C-unwind" fn(pg::Datum, c_int, u32)>,
        arg: pg::Datum,
    );
}

struct Right {
    role: pg::Oid,
    broker: String,
    filter: String,
}

/// A firing trigger's OID (a partition's clone too) and who set it up, with the definition it
/// was set up with: `CREATE OR REPLACE TRIGGER` keeps the OID, so a trigger whose function, type
/// or arguments changed since is no longer the one that role set up.
struct Setter {
    trigger: pg::Oid,
    /// InvalidOid: not set up by our functions (the table's owner then).
    role: pg::Oid,
    function: pg::Oid,
    kind: i16,
    /// The arguments as pg_trigger.tgargs holds them: each followed by a NUL.
    args: Vec<u8>,
}

/// Roles whose rights are kept computed (a trigger's setter and the writer alternate, a SECURITY
/// DEFINER helper and its caller too).
const ROLES_KEPT: usize = 8;

/// The filters that apply to one role.
struct Mine {
    role: pg::Oid,
    exempt: bool,
    /// Per broker, its filters as one set (matched in time of the topic's levels).
    filters: Vec<(String, topic_filter::FilterSet)>,
}

struct Cache {
    /// u64::MAX: not loaded (or forgotten).
    generation: u64,
    owner: pg::Oid,
    rights: Vec<Right>,
    /// Brokers with at least one right.
    restricted: Vec<String>,
    /// Triggers looked up so far (`setter_of`).
    setters: Vec<Setter>,
    /// The rights of the roles asked about lately, the latest first.
    mine: Vec<Mine>,
}

/// A publishing trigger that is firing: whose rights its messages are published with.
#[derive(Clone, Copy)]
pub struct Firing {
    /// The trigger being fired (valid while it fires; `as_trigger` is used only then).
    pub trigger: *const pg::Trigger,
    pub table_owner: pg::Oid,
}

/// Is the firing trigger still defined as when it was set up (function, type, arguments)?
fn same_definition(t: &pg::Trigger, s: &Setter) -> bool {
    if t.tgfoid != s.function || t.tgtype != s.kind {
        return false;
    }
    let mut args: Vec<u8> = Vec::with_capacity(s.args.len());
    for i in 0..t.tgnargs.max(0) as usize {
        // SAFETY: tgargs holds tgnargs NUL-terminated strings for the call's duration.
        args.extend_from_slice(unsafe { CStr::from_ptr(*t.tgargs.add(i)) }.to_bytes_with_nul());
    }
    args == s.args
}

struct Local {
    cache: RefCell<Cache>,
    /// This transaction changed the rights (told to everyone at COMMIT).
    changed: Cell<bool>,
    /// A role's memberships or attributes changed (set by a syscache callback).
    roles_changed: Cell<bool>,
    callbacks: Cell<bool>,
    firing: Cell<Option<Firing>>,
}

static LOCAL: BackendLocal<Local> = BackendLocal::new(Local {
    cache: RefCell::new(Cache {
        generation: u64::MAX,
        owner: pg::InvalidOid,
        rights: Vec::new(),
        restricted: Vec::new(),
        setters: Vec::new(),
        mine: Vec::new(),
    }),
    changed: Cell::new(false),
    roles_changed: Cell::new(true),
    callbacks: Cell::new(false),
    firing: Cell::new(None),
});

unsafe extern "C-unwind" fn on_role_change(_arg: pg::Datum, _cacheid: c_int, _hash: u32) {
    LOCAL.roles_changed.set(true);
}

/// OID of `mqtt_pub.topic_rights`, or InvalidOid (no extension, or SQL older than 1.8).
fn rights_relid() -> pg::Oid {
    // SAFETY: syscache lookups; missing_ok.
    unsafe {
        let ns = pg::get_namespace_oid(c"mqtt_pub".as_ptr(), true);
        if ns == pg::InvalidOid {
            return pg::InvalidOid;
        }
        pg::get_relname_relid(c"topic_rights".as_ptr(), ns)
    }
}

fn oid_at(row: usize, col: i32) -> pg::Oid {
    // SAFETY: inside SPI, a row of the last result.
    let v = unsafe { text_at(row, col) };
    pg::Oid::from(v.and_then(|s| s.parse::<u32>().ok()).unwrap_or(0))
}

fn reload(c: &mut Cache) {
    let generation = require_shared().rights_generation.load(Ordering::Acquire);
    let (owner, rights) = with_spi(|| {
        pinned(Rights::Owner, || {
            // SAFETY: inside SPI and the pinned scope; fully qualified statements. With the latest
            // snapshot, not the statement's (or a REPEATABLE READ transaction's): what is cached
            // under the new generation must include every change committed before it (the
            // snapshot is popped again on ERROR by the abort).
            unsafe {
                pg::PushActiveSnapshot(pg::GetLatestSnapshot());
                spi::execute(
                    "SELECT e.extowner FROM pg_catalog.pg_extension e \
                     WHERE e.extname OPERATOR(pg_catalog.=) 'pg_mqtt_pub'",
                    &[],
                    true,
                    1,
                );
                let owner = oid_at(0, 1);
                spi::execute(
                    "SELECT r.role::pg_catalog.oid, r.broker, r.topic_filter FROM mqtt_pub.topic_rights r",
                    &[],
                    true,
                    0,
                );
                let rights: Vec<Right> = (0..spi::processed() as usize)
                    .filter_map(|r| Some(Right { role: oid_at(r, 1), broker: text_at(r, 2)?, filter: text_at(r, 3)? }))
                    .collect();
                pg::PopActiveSnapshot();
                (owner, rights)
            }
        })
    });
    let mut restricted: Vec<String> = rights.iter().map(|r| r.broker.clone()).collect();
    restricted.sort();
    restricted.dedup();
    *c = Cache { generation, owner, rights, restricted, setters: Vec::new(), mine: Vec::new() };
}

fn role_name(role: pg::Oid) -> String {
    // SAFETY: syscache lookup; NULL for a dropped role (noerr).
    unsafe {
        let n = pg::GetUserNameFromId(role, true);
        if n.is_null() {
            format!("{}", role.to_u32())
        } else {
            CStr::from_ptr(n).to_string_lossy().into_owned()
        }
    }
}

/// The rights of `role` from the cache `c` (loaded), computed once per role.
fn mine(c: &mut Cache, role: pg::Oid) -> &Mine {
    if LOCAL.roles_changed.replace(false) {
        c.mine.clear();
    }
    if let Some(i) = c.mine.iter().position(|m| m.role == role) {
        if i > 0 {
            let m = c.mine.remove(i);
            c.mine.insert(0, m);
        }
        return &c.mine[0];
    }
    // SAFETY: catalog lookups (cached by PostgreSQL per role).
    let exempt =
        unsafe { pg::superuser_arg(role) || (c.owner != pg::InvalidOid && pg::has_privs_of_role(role, c.owner)) };
    let mut filters: Vec<(String, topic_filter::FilterSet)> = Vec::new();
    if !exempt {
        // SAFETY: as above.
        for r in c.rights.iter().filter(|r| unsafe { pg::has_privs_of_role(role, r.role) }) {
            match filters.iter_mut().find(|(b, _)| *b == r.broker) {
                Some((_, set)) => set.insert(&r.filter),
                None => {
                    let mut set = topic_filter::FilterSet::new();
                    set.insert(&r.filter);
                    filters.push((r.broker.clone(), set));
                }
            }
        }
    }
    c.mine.truncate(ROLES_KEPT - 1);
    c.mine.insert(0, Mine { role, exempt, filters });
    &c.mine[0]
}

/// The role that set up the trigger `trigger` (or the trigger it was cloned from, on a
/// partition) with our setup functions, or InvalidOid. One query per trigger, then cached.
fn setter_of(c: &mut Cache, t: &pg::Trigger) -> pg::Oid {
    let i = match c.setters.iter().position(|s| s.trigger == t.tgoid) {
        Some(i) => i,
        None => {
            let found = with_spi(|| {
                pinned(Rights::Owner, || {
                    // SAFETY: inside SPI and the pinned scope; one oid parameter; qualified names;
                    // the latest snapshot, as in `reload`.
                    unsafe {
                        pg::PushActiveSnapshot(pg::GetLatestSnapshot());
                        spi::execute(
                            "WITH RECURSIVE up(oid, parent) AS ( \
                                 SELECT t.oid, t.tgparentid FROM pg_catalog.pg_trigger t \
                                  WHERE t.oid OPERATOR(pg_catalog.=) $1 \
                                 UNION ALL \
                                 SELECT p.oid, p.tgparentid FROM pg_catalog.pg_trigger p, up \
                                  WHERE p.oid OPERATOR(pg_catalog.=) up.parent) \
                             SELECT s.role::pg_catalog.oid, s.trigger_function, s.trigger_type, \
                                    pg_catalog.encode(s.trigger_args, 'hex') \
                               FROM up, mqtt_pub.trigger_setters s \
                              WHERE s.trigger_oid OPERATOR(pg_catalog.=) up.oid LIMIT 1",
                            &[(pg::OIDOID, pg::Datum::from(t.tgoid))],
                            true,
                            1,
                        );
                        let row = (spi::processed() > 0).then(|| {
                            let hex = text_at(0, 4).unwrap_or_default();
                            let args = (0..hex.len() / 2)
                                .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
                                .collect::<Vec<u8>>();
                            let kind = text_at(0, 3).and_then(|k| k.parse().ok()).unwrap_or(-1);
                            (oid_at(0, 1), oid_at(0, 2), kind, args)
                        });
                        pg::PopActiveSnapshot();
                        row
                    }
                })
            });
            let (role, function, kind, args) = found.unwrap_or((pg::InvalidOid, pg::InvalidOid, -1, Vec::new()));
            c.setters.push(Setter { trigger: t.tgoid, role, function, kind, args });
            c.setters.len() - 1
        }
    };
    let s = &c.setters[i];
    if s.role != pg::InvalidOid && same_definition(t, s) {
        s.role
    } else {
        pg::InvalidOid
    }
}

/// `mqtt_trigger_*_setup` created trigger `name` on `table`: the current user set it up.
pub fn record_setter(table: pg::Oid, name: &str) {
    if rights_relid() == pg::InvalidOid {
        return; // SQL older than 1.8
    }
    // SAFETY: plain read of the current user.
    let role = unsafe { pg::GetUserId() };
    with_spi(|| {
        pinned(Rights::Owner, || {
            // SAFETY: inside SPI and the pinned scope; typed parameters; qualified names.
            unsafe {
                spi::execute(
                    "INSERT INTO mqtt_pub.trigger_setters \
                            (table_name, trigger_name, trigger_oid, role, trigger_function, trigger_type, trigger_args) \
                     SELECT t.tgrelid::pg_catalog.regclass, t.tgname, t.oid, $3::pg_catalog.oid::pg_catalog.regrole, \
                            t.tgfoid, t.tgtype, t.tgargs \
                       FROM pg_catalog.pg_trigger t \
                      WHERE t.tgrelid OPERATOR(pg_catalog.=) $1 AND t.tgname OPERATOR(pg_catalog.=) $2::pg_catalog.name \
                     ON CONFLICT (table_name, trigger_name) DO UPDATE \
                        SET trigger_oid = EXCLUDED.trigger_oid, role = EXCLUDED.role, \
                            trigger_function = EXCLUDED.trigger_function, trigger_type = EXCLUDED.trigger_type, \
                            trigger_args = EXCLUDED.trigger_args",
                    &[
                        (pg::OIDOID, pg::Datum::from(table)),
                        (pg::TEXTOID, spi::bytes_datum(name.as_bytes())),
                        (pg::OIDOID, pg::Datum::from(role)),
                    ],
                    false,
                    0,
                );
            }
        })
    });
}

/// Our trigger `name` on `table` was dropped by `mqtt_trigger_*`: forget who set it up.
pub fn forget_setter(table: pg::Oid, name: &[u8]) {
    if rights_relid() == pg::InvalidOid {
        return;
    }
    with_spi(|| {
        pinned(Rights::Owner, || {
            // SAFETY: as in `record_setter`.
            unsafe {
                spi::execute(
                    "DELETE FROM mqtt_pub.trigger_setters s \
                      WHERE s.table_name::pg_catalog.oid OPERATOR(pg_catalog.=) $1 \
                        AND s.trigger_name OPERATOR(pg_catalog.=) $2::pg_catalog.name",
                    &[(pg::OIDOID, pg::Datum::from(table)), (pg::TEXTOID, spi::bytes_datum(name))],
                    false,
                    0,
                );
            }
        })
    });
}

/// The cache, loaded and current (None: no rights table in this database).
fn with_cache<R>(f: impl FnOnce(&mut Cache) -> R) -> Option<R> {
    if !LOCAL.callbacks.replace(true) {
        // SAFETY: registered once per process; the callbacks only set a flag.
        unsafe {
            CacheRegisterSyscacheCallback(
                pg::SysCacheIdentifier::AUTHMEMMEMROLE as c_int,
                Some(on_role_change),
                pg::Datum::from(0usize),
            );
            CacheRegisterSyscacheCallback(
                pg::SysCacheIdentifier::AUTHOID as c_int,
                Some(on_role_change),
                pg::Datum::from(0usize),
            );
        }
    }
    let generation = require_shared().rights_generation.load(Ordering::Acquire);
    let mut c = LOCAL.cache.borrow_mut();
    if c.generation != generation {
        // (CREATE EXTENSION and ALTER EXTENSION UPDATE move the generation too: mqtt_announce)
        if rights_relid() == pg::InvalidOid {
            return None;
        }
        reload(&mut c);
    }
    Some(f(&mut c))
}

/// Publishing to `topic` on the broker in `slot` is allowed for whoever publishes now (the
/// current user, or the firing trigger's setter), or ERROR 42501.
pub fn require(slot: u16, topic: &[u8]) {
    check(slot, topic, None)
}

/// The same for `role` (replay_dead_letters: the role that called it, checked where the move
/// runs as the owner).
pub fn require_of(role: pg::Oid, slot: u16, topic: &[u8]) {
    check(slot, topic, Some(role))
}

fn check(slot: u16, topic: &[u8], of: Option<pg::Oid>) {
    let firing = if of.is_some() { None } else { LOCAL.firing.get() };
    let mut broker = String::new();
    let topic = String::from_utf8_lossy(topic);
    let refused = with_cache(|c| {
        if c.restricted.is_empty() {
            return None; // no broker is restricted: the common case, no name lookup
        }
        broker = super::catalog::name_of(slot);
        if !c.restricted.contains(&broker) {
            return None;
        }
        let (role, setter) = match firing {
            // SAFETY: the trigger being fired (see `Firing`).
            Some(f) => match setter_of(c, unsafe { &*f.trigger }) {
                r if r != pg::InvalidOid => (r, true),
                _ => (f.table_owner, false),
            },
            // SAFETY: plain read of the current user.
            None => (of.unwrap_or_else(|| unsafe { pg::GetUserId() }), false),
        };
        let m = mine(c, role);
        if m.exempt || m.filters.iter().any(|(b, set)| *b == broker && set.matches(&topic)) {
            return None;
        }
        Some((role, firing.map(|_| setter)))
    })
    .flatten();
    let Some((role, trigger)) = refused else { return };
    let name = role_name(role);
    let e = PgError::new(
        Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
        format!(
            "permission denied for role \"{name}\" to publish to topic {} on broker \"{broker}\"",
            crate::pure::topic::quoted(&topic)
        ),
    )
    .hint(format!(
        "Broker \"{broker}\" is restricted to the topics granted with mqtt_pub.mqtt_grant(): the extension's owner can run SELECT mqtt_pub.mqtt_grant('{name}', '{broker}', 'topic/filter/#');"
    ));
    match trigger {
        Some(true) => e.detail(format!("The trigger publishes with the rights of role \"{name}\", who set it up.")),
        Some(false) => e.detail(format!(
            "The trigger was not set up with mqtt_trigger_event_setup() or mqtt_trigger_resultset_setup(): it publishes with the rights of the table's owner, \"{name}\"."
        )),
        None => e,
    }
    .raise()
}

/// Run `f` (a trigger publishing) with the rights of the trigger's setter. `f` must run only
/// our own code (no user function): an ERROR inside leaves the marker set until the
/// (sub)transaction's abort clears it (`at_sub_abort`, `at_abort`).
pub fn as_trigger<R>(firing: Firing, f: impl FnOnce() -> R) -> R {
    let before = LOCAL.firing.replace(Some(firing));
    let r = f();
    LOCAL.firing.set(before);
    r
}

/// Validate a topic filter as `mqtt_grant` takes it (22023 with a hint).
pub fn require_valid_filter(filter: &str) {
    if let Err(e) = topic_filter::validate(filter) {
        PgError::new(Code::ERRCODE_INVALID_PARAMETER_VALUE, e.message(filter)).hint(e.hint()).raise();
    }
}

/// Forget the cache now (this transaction changed the rights; others learn it at COMMIT).
fn changed_here() {
    LOCAL.changed.set(true);
    LOCAL.cache.borrow_mut().generation = u64::MAX;
}

/// At COMMIT of a transaction that changed the rights: tell every backend of this database.
pub fn at_commit() {
    LOCAL.firing.set(None);
    if LOCAL.changed.replace(false) {
        if let Some(s) = crate::shmem::shared() {
            s.rights_generation.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// A subtransaction aborted (an ERROR caught by a savepoint or an exception block): no trigger is
/// publishing any more (only our own code runs inside `as_trigger`, so nothing legitimate is
/// left to restore).
pub fn at_sub_abort() {
    LOCAL.firing.set(None);
    if LOCAL.changed.get() {
        LOCAL.cache.borrow_mut().generation = u64::MAX; // a change of ours may be rolled back
    }
}

/// PREPARE TRANSACTION: a rights change would be committed by COMMIT PREPARED, which runs
/// none of our callbacks, so no backend would learn of it: refused (as PostgreSQL refuses to
/// prepare a transaction that used temporary tables).
pub fn before_prepare() {
    if LOCAL.changed.get() {
        PgError::new(
            Code::ERRCODE_FEATURE_NOT_SUPPORTED,
            "cannot PREPARE a transaction that changed pg_mqtt_pub topic rights or publishing triggers",
        )
        .hint("Grant, revoke or set up triggers in a transaction of its own, without two-phase commit.")
        .raise();
    }
}

pub fn at_abort() {
    LOCAL.firing.set(None);
    if LOCAL.changed.replace(false) {
        LOCAL.cache.borrow_mut().generation = u64::MAX; // what it loaded is rolled back
    }
}

crate::pg_finfo!(pg_finfo_mqtt_pub_topic_rights_changed);

/// `mqtt_pub.topic_rights_changed()`: statement trigger on `mqtt_pub.topic_rights` and
/// `mqtt_pub.trigger_setters`.
#[no_mangle]
pub unsafe extern "C-unwind" fn mqtt_pub_topic_rights_changed(_fcinfo: pg::FunctionCallInfo) -> pg::Datum {
    guard(|| {
        changed_here();
        pg::Datum::from(0usize)
    })
}
