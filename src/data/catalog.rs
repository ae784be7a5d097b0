//! The broker catalog `mqtt_pub.brokers`: which named brokers exist, how to reach them, and
//! which shared-memory status slot each one uses.
//!
//! Slot 0 is `default` (settings, never a row). `mqtt_broker_add` gives a named broker the lowest
//! free slot; the slot is the broker's identity in the ring and in the pending messages of a
//! transaction (txn.rs); the outbox stores names.
//!
//! **Publishers** resolve names through a per-backend cache, refreshed when
//! `Shared::broker_generation` moves. A statement trigger on the table marks the transaction,
//! and its COMMIT bumps the generation (after the change is visible to others) and wakes the
//! worker, which reloads the catalog within one loop iteration.
//!
//! **Why a slot never changes owner under a transaction that uses it:** publishing to a named
//! broker takes AccessShareLock on `mqtt_pub.brokers` until the transaction ends;
//! `mqtt_broker_remove` takes ACCESS EXCLUSIVE, so it waits for those transactions (and they for
//! it); the generation is bumped before the remover's lock is released. A removed broker's slot
//! is reused only after the worker has released it (`status.in_use` false, see worker/catalog_sync.rs).

use crate::pg::guard::{guard, Code, PgError};
use crate::pg::gucs::BrokerConfig;
use crate::pg::spi::{self, pinned, text_at, with_spi, Rights};
use crate::pure::backend_local::BackendLocal;
use crate::shmem::require_shared;
use pgrx_pg_sys as pg;
use std::cell::{Cell, RefCell};
use std::sync::atomic::Ordering;

struct Cache {
    generation: u64,
    relid: pg::Oid,
    entries: Vec<(Vec<u8>, u16)>,
}

struct Local {
    cache: RefCell<Cache>,
    /// This transaction changed `mqtt_pub.brokers` (told to everyone at COMMIT).
    changed: Cell<bool>,
}
static LOCAL: BackendLocal<Local> = BackendLocal::new(Local {
    cache: RefCell::new(Cache { generation: u64::MAX, relid: pg::InvalidOid, entries: Vec::new() }),
    changed: Cell::new(false),
});

/// OID of `mqtt_pub.brokers`, or InvalidOid when the extension is not installed.
fn brokers_relid() -> pg::Oid {
    // SAFETY: syscache lookups; missing_ok.
    unsafe {
        let ns = pg::get_namespace_oid(c"mqtt_pub".as_ptr(), true);
        if ns == pg::InvalidOid {
            return pg::InvalidOid;
        }
        pg::get_relname_relid(c"brokers".as_ptr(), ns)
    }
}

fn reload(c: &mut Cache, relid: pg::Oid) {
    let generation = require_shared().broker_generation.load(Ordering::Acquire);
    // As the owner: the table is readable by its owner only (it holds passwords).
    let entries = with_spi(|| {
        pinned(Rights::Owner, || {
            // SAFETY: inside SPI and the pinned scope.
            unsafe {
                spi::execute("SELECT name, slot FROM mqtt_pub.brokers", &[], true, 0);
                (0..spi::processed() as usize)
                    .filter_map(|r| {
                        let name = text_at(r, 1)?.into_bytes();
                        let slot = text_at(r, 2)?.parse().ok()?;
                        Some((name, slot))
                    })
                    .collect()
            }
        })
    });
    *c = Cache { generation, relid, entries };
}

/// The slot of broker `name` for publishing in this transaction, or ERROR 42704.
pub fn slot_of(name: &[u8]) -> u16 {
    if name == b"default" {
        return 0;
    }
    let relid = brokers_relid();
    if relid != pg::InvalidOid {
        // SAFETY: a heavyweight lock held to the end of the transaction (see the module doc).
        unsafe { pg::LockRelationOid(relid, pg::AccessShareLock as i32) };
        let generation = require_shared().broker_generation.load(Ordering::Acquire);
        let mut c = LOCAL.cache.borrow_mut();
        let stale = c.generation != generation || c.relid != relid;
        if stale {
            reload(&mut c, relid);
        }
        let mut found = c.entries.iter().find(|e| e.0 == name).map(|e| e.1);
        if found.is_none() && !stale {
            // added in this very transaction (not committed, so no generation bump yet)?
            reload(&mut c, relid);
            found = c.entries.iter().find(|e| e.0 == name).map(|e| e.1);
        }
        if let Some(slot) = found {
            return slot;
        }
    }
    PgError::new(
        Code::ERRCODE_UNDEFINED_OBJECT,
        format!("MQTT broker \"{}\" does not exist", String::from_utf8_lossy(name)),
    )
    .hint("Use \"default\" or a broker added with mqtt_broker_add(); SELECT broker_name FROM mqtt_status() lists them.")
    .raise()
}

/// A broker as `mqtt_status()` lists it: what the catalog says, before the worker has a link.
pub struct Listed {
    pub name: String,
    pub slot: usize,
    pub host: String,
    pub port: i32,
}

/// Every broker that exists for the caller's snapshot: `default` (slot 0, from the settings) and
/// each row of `mqtt_pub.brokers`, by slot. `mqtt_status()` lists these, so a broker removed by a
/// committed `mqtt_broker_remove` is gone from it at once, and one just added is there at once,
/// whatever the worker (which syncs its links asynchronously) has done so far.
pub fn listed() -> Vec<Listed> {
    let d = BrokerConfig::default_broker();
    let mut out = vec![Listed { name: d.name, slot: 0, host: d.host, port: d.port as i32 }];
    if brokers_relid() == pg::InvalidOid {
        return out;
    }
    // As the owner: the table is readable by its owner only (it holds passwords).
    with_spi(|| {
        pinned(Rights::Owner, || {
            // SAFETY: inside SPI and the pinned scope.
            unsafe {
                spi::execute("SELECT name, slot, host, port FROM mqtt_pub.brokers ORDER BY slot", &[], true, 0);
                out.extend((0..spi::processed() as usize).filter_map(|r| {
                    Some(Listed {
                        name: text_at(r, 1)?,
                        slot: text_at(r, 2)?.parse().ok()?,
                        host: text_at(r, 3)?,
                        port: text_at(r, 4)?.parse().ok()?,
                    })
                }));
            }
        })
    });
    out
}

/// The name of the broker in `slot` (as the outbox stores it).
pub fn name_of(slot: u16) -> String {
    if slot == 0 {
        return "default".into();
    }
    let c = LOCAL.cache.borrow();
    match c.entries.iter().find(|e| e.1 == slot) {
        Some(e) => String::from_utf8_lossy(&e.0).into_owned(),
        // Cannot happen for a slot that slot_of returned in this transaction (the lock keeps it).
        None => format!("#{slot}"),
    }
}

/// A named broker as the worker needs it.
pub struct Named {
    pub slot: u16,
    pub cfg: BrokerConfig,
}

/// Worker: every named broker (inside a transaction).
pub fn load_all() -> Vec<Named> {
    with_spi(|| {
        pinned(Rights::Restricted, || {
            // SAFETY: inside SPI, in the worker's transaction (it runs as the bootstrap superuser).
            unsafe {
                spi::execute(
                    "SELECT slot, name, host, port, COALESCE(username, ''), COALESCE(password, ''), use_tls, \
                  COALESCE(ca_cert, ''), COALESCE(client_cert, ''), COALESCE(client_key, ''), tls_version, \
                  COALESCE(client_id, ''), keepalive, COALESCE(password_file, '') FROM mqtt_pub.brokers ORDER BY slot",
                    &[],
                    true,
                    0,
                );
                (0..spi::processed() as usize)
                    .filter_map(|r| {
                        let t = |c| text_at(r, c).unwrap_or_default();
                        let default = BrokerConfig::default_broker();
                        Some(Named {
                            slot: t(1).parse().ok()?,
                            cfg: BrokerConfig {
                                name: t(2),
                                host: t(3),
                                port: t(4).parse().ok()?,
                                username: t(5),
                                password: t(6),
                                use_tls: t(7) == "t",
                                ca_cert: t(8),
                                client_cert: t(9),
                                client_key: t(10),
                                tls_version: t(11),
                                client_id: t(12),
                                keepalive: t(13).parse().ok()?,
                                password_file: t(14),
                                protocol: default.protocol,
                                max_inflight: default.max_inflight,
                            },
                        })
                    })
                    .collect()
            }
        })
    })
}

/// Is status slot `slot` still held by the worker (a removed broker not yet released)?
pub fn slot_busy(slot: usize) -> bool {
    require_shared().brokers().get(slot).is_none_or(|b| b.in_use.load(Ordering::Acquire))
}

/// At COMMIT of a transaction that changed the catalog: tell everyone.
pub fn at_commit() {
    if LOCAL.changed.replace(false) {
        if let Some(s) = crate::shmem::shared() {
            s.broker_generation.fetch_add(1, Ordering::AcqRel);
            crate::shmem::wake_worker_always();
        }
    }
}

pub fn at_abort() {
    LOCAL.changed.set(false);
}

crate::pg_finfo!(pg_finfo_mqtt_pub_brokers_changed, pg_finfo_mqtt_pub_broker_slot_busy);

/// `mqtt_pub.brokers_changed()`: statement trigger on `mqtt_pub.brokers`.
#[no_mangle]
pub unsafe extern "C-unwind" fn mqtt_pub_brokers_changed(_fcinfo: pg::FunctionCallInfo) -> pg::Datum {
    guard(|| {
        LOCAL.changed.set(true);
        pg::Datum::from(0usize)
    })
}

/// `mqtt_pub.broker_slot_busy(slot int) RETURNS boolean`: for slot allocation in mqtt_broker_add.
#[no_mangle]
pub unsafe extern "C-unwind" fn mqtt_pub_broker_slot_busy(fcinfo: pg::FunctionCallInfo) -> pg::Datum {
    guard(|| {
        // SAFETY: fcinfo is valid for this call.
        let a = unsafe { crate::pg::fmgr::Args::new(fcinfo) };
        let slot = a.i32(0, "slot");
        pg::Datum::from(slot < 0 || slot_busy(slot as usize))
    })
}
