//! SPI access to `mqtt_pub.outbox`: writes by publishers, drain/delete/rescue by the worker.
//!
//! Publishers insert inside their own transaction (a rollback removes the row). They do so as the
//! owner of the outbox table, switching user id only around the insert (as PostgreSQL's RI
//! triggers do), so an application role needs EXECUTE on the publish functions and no privilege
//! on the table — and no SECURITY DEFINER round trip on every call in a row trigger.
//!
//! Topics are stored as text in the database encoding; payloads as the exact bytes to send.
//! Everything here raises ERRORs through the guard; the worker's calls run inside its own
//! transactions (`worker.rs`).

use crate::fmgr::{from_utf8, to_utf8, varlena_bytes};
use pgrx_pg_sys as pg;
use std::cell::Cell;
use std::ffi::{c_char, CString};

/// Lanes: the worker drains lane 0 (hot messages recovered from the ring) before lane 1.
pub const LANE_RECOVERED: i16 = 0;
pub const LANE_PUBLISHED: i16 = 1;

/// A row fetched for delivery. `topic_nul` is UTF-8 with a trailing NUL (what libmosquitto wants).
pub struct Row {
    pub id: i64,
    pub topic_nul: Vec<u8>,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
}

/// One message to insert.
pub struct NewRow<'a> {
    pub broker: &'a str,
    pub topic_utf8: &'a [u8],
    pub payload: &'a [u8],
    pub qos: u8,
    pub retain: bool,
    pub lane: i16,
}

struct Cached(Cell<pg::SPIPlanPtr>, Cell<pg::Oid>);
// SAFETY: backends are single-threaded.
unsafe impl Sync for Cached {}
static INSERT: Cached = Cached(Cell::new(std::ptr::null_mut()), Cell::new(pg::InvalidOid));

fn bytes_datum(b: &[u8]) -> pg::Datum {
    // SAFETY: builds a varlena holding a copy of `b`; text and bytea share the layout.
    unsafe { pg::Datum::from(pg::cstring_to_text_with_len(b.as_ptr() as *const c_char, b.len() as i32)) }
}

/// Run `f` connected to SPI, with an active snapshot.
fn with_spi<R>(f: impl FnOnce() -> R) -> R {
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

/// Run `f` as the owner of the outbox (inside SPI): publishers and `mqtt_status()` need no
/// privilege on the table itself.
unsafe fn as_owner<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: inside SPI; the user id is restored right after, and by abort on ERROR.
    unsafe {
        let owner = insert_plan().1;
        let (mut saved_user, mut saved_ctx) = (pg::InvalidOid, 0);
        pg::GetUserIdAndSecContext(&mut saved_user, &mut saved_ctx);
        pg::SetUserIdAndSecContext(owner, saved_ctx | pg::SECURITY_LOCAL_USERID_CHANGE as i32);
        let r = f();
        pg::SetUserIdAndSecContext(saved_user, saved_ctx);
        r
    }
}

/// Prepare (once per backend) the insert; also looks up the outbox owner.
unsafe fn insert_plan() -> (pg::SPIPlanPtr, pg::Oid) {
    if !INSERT.0.get().is_null() {
        return (INSERT.0.get(), INSERT.1.get());
    }
    // SAFETY: inside SPI (with_spi); the plan is kept across transactions with SPI_keepplan.
    unsafe {
        let mut types = [pg::TEXTOID, pg::TEXTOID, pg::BYTEAOID, pg::INT2OID, pg::BOOLOID, pg::INT2OID];
        let plan = pg::SPI_prepare(
            c"INSERT INTO mqtt_pub.outbox (broker, topic, payload, qos, retain, lane) VALUES ($1, $2, $3, $4, $5, $6)"
                .as_ptr(),
            6,
            types.as_mut_ptr(),
        );
        pg::SPI_keepplan(plan);
        pg::SPI_execute(c"SELECT relowner FROM pg_class WHERE oid = 'mqtt_pub.outbox'::regclass".as_ptr(), true, 1);
        let owner = first_value(1).map(|d| pg::Oid::from(d.value() as u32)).unwrap_or(pg::InvalidOid);
        INSERT.0.set(plan);
        INSERT.1.set(owner);
        (plan, owner)
    }
}

/// Value of column `col` (1-based) of the first result row, if any and not NULL.
unsafe fn first_value(col: i32) -> Option<pg::Datum> {
    // SAFETY: called right after a successful SPI_execute*.
    unsafe {
        if pg::SPI_processed == 0 || pg::SPI_tuptable.is_null() {
            return None;
        }
        let t = &*pg::SPI_tuptable;
        let mut isnull = false;
        let d = pg::SPI_getbinval(*t.vals, t.tupdesc, col, &mut isnull);
        (!isnull).then_some(d)
    }
}

/// Insert messages into the outbox, in order, in the current transaction.
pub fn insert(rows: &mut dyn Iterator<Item = NewRow<'_>>) {
    with_spi(|| {
        // SAFETY: inside SPI, as the outbox owner.
        unsafe {
            let plan = insert_plan().0;
            as_owner(|| {
                for r in rows {
                    let topic = from_utf8(r.topic_utf8);
                    let mut values = [
                        bytes_datum(r.broker.as_bytes()),
                        bytes_datum(&topic),
                        bytes_datum(r.payload),
                        pg::Datum::from(r.qos as i16),
                        pg::Datum::from(r.retain),
                        pg::Datum::from(r.lane),
                    ];
                    pg::SPI_execute_plan(plan, values.as_mut_ptr(), std::ptr::null(), false, 0);
                }
            })
        }
    })
}

fn int8_array(ids: &[i64]) -> String {
    let inner: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    format!("'{{{}}}'::bigint[]", inner.join(","))
}

/// Run `sql` with the broker name as `$1`.
unsafe fn exec_with_broker(sql: &str, broker: &str, read_only: bool, limit: i64) {
    let sql = CString::new(sql).expect("no NUL in generated SQL");
    let mut types = [pg::TEXTOID];
    let mut values = [bytes_datum(broker.as_bytes())];
    // SAFETY: inside SPI, one text parameter.
    unsafe {
        pg::SPI_execute_with_args(
            sql.as_ptr(),
            1,
            types.as_mut_ptr(),
            values.as_mut_ptr(),
            std::ptr::null(),
            read_only,
            limit,
        );
    }
}

/// Worker: the next rows due for `broker`, oldest first (lane 0, then lane 1), skipping `exclude`
/// (in flight or acknowledged but not yet deleted).
pub fn fetch(broker: &str, limit: usize, exclude: &[i64], recovered_only: bool) -> Vec<Row> {
    let mut sql = String::from(
        "SELECT id, topic, payload, qos, retain FROM mqtt_pub.outbox WHERE broker = $1 AND next_retry_at <= now()",
    );
    if recovered_only {
        sql.push_str(" AND lane = 0");
    }
    if !exclude.is_empty() {
        sql.push_str(&format!(" AND NOT (id = ANY({}))", int8_array(exclude)));
    }
    sql.push_str(" ORDER BY lane, id");
    with_spi(|| {
        // SAFETY: inside SPI; results copied out before SPI_finish frees them.
        unsafe {
            exec_with_broker(&sql, broker, true, limit as i64);
            let mut rows = Vec::with_capacity(pg::SPI_processed as usize);
            let t = &*pg::SPI_tuptable;
            for i in 0..pg::SPI_processed as usize {
                let tup = *t.vals.add(i);
                let get = |c: i32| {
                    let mut isnull = false;
                    pg::SPI_getbinval(tup, t.tupdesc, c, &mut isnull)
                };
                let mut topic_nul = to_utf8(varlena_bytes(get(2))).into_owned();
                topic_nul.push(0);
                rows.push(Row {
                    id: get(1).value() as i64,
                    topic_nul,
                    payload: varlena_bytes(get(3)).to_vec(),
                    qos: get(4).value() as u8,
                    retain: get(5).value() != 0,
                });
            }
            rows
        }
    })
}

/// Worker: delete delivered rows.
pub fn delete(ids: &[i64]) {
    if ids.is_empty() {
        return;
    }
    let sql = CString::new(format!("DELETE FROM mqtt_pub.outbox WHERE id = ANY({})", int8_array(ids))).expect("no NUL");
    // SAFETY: inside SPI.
    with_spi(|| unsafe { pg::SPI_execute(sql.as_ptr(), false, 0) });
}

/// Does `broker` have any row in the outbox (due or not)?
pub fn exists(broker: &str) -> bool {
    with_spi(|| {
        // SAFETY: inside SPI.
        unsafe {
            exec_with_broker("SELECT 1 FROM mqtt_pub.outbox WHERE broker = $1 LIMIT 1", broker, true, 1);
            pg::SPI_processed > 0
        }
    })
}

/// Rows waiting for `broker` (for `mqtt_status()`, run by any role allowed to call it).
pub fn pending(broker: &str) -> i64 {
    with_spi(|| {
        // SAFETY: inside SPI, as the outbox owner.
        unsafe {
            as_owner(|| {
                exec_with_broker("SELECT count(*) FROM mqtt_pub.outbox WHERE broker = $1", broker, true, 1);
                first_value(1).map(|d| d.value() as i64).unwrap_or(0)
            })
        }
    })
}
