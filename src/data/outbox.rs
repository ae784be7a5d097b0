//! SPI access to `mqtt_pub.outbox`: writes by publishers, drain/delete/rescue by the worker.
//!
//! Publishers insert inside their own transaction (a rollback removes the row). They do so as the
//! owner of the outbox table in a security-restricted operation with the pinned search_path
//! (`spi.rs`, as PostgreSQL's RI triggers switch to a table's owner), so an application role
//! needs EXECUTE on the publish functions and no privilege on the table — and no SECURITY
//! DEFINER round trip on every call in a row trigger. Every name in the SQL below is
//! schema-qualified (`OPERATOR(pg_catalog.=)` included): see docs/SECURITY.md. Mind that all
//! `OPERATOR(...)` forms share one precedence level, left-associative: parenthesize chains.
//!
//! Topics are stored as text in the database encoding; payloads as the exact bytes to send.
//! Everything here raises ERRORs through the guard; the worker's calls run inside its own
//! transactions (`src/worker/`).

use super::outbox_size;
use crate::pg::fmgr::{from_utf8, to_utf8, varlena_bytes};
use crate::pg::spi::{self, bytes_datum, execute, first_value, pinned, with_spi, Rights};
use crate::pure::backend_local::BackendLocal;
use crate::pure::props;
use pgrx_pg_sys as pg;
use std::cell::Cell;

/// Lanes: the worker drains lane 0 (hot messages recovered from the ring) before lane 1.
pub const LANE_RECOVERED: i16 = 0;
pub const LANE_PUBLISHED: i16 = 1;

/// A row fetched for delivery. `topic_nul` is UTF-8 with a trailing NUL (what libmosquitto wants).
pub struct Row {
    pub id: i64,
    /// Where the row is: deleting acknowledged rows by TID needs no index and no plan choice.
    pub tid: Tid,
    pub lane: i16,
    pub topic_nul: Vec<u8>,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    /// When it was published (its transaction's start; µs): the latency counts from it.
    pub created_at: i64,
    /// MQTT 5 properties (props.rs), the message id, and when the message expires (timestamp,
    /// µs): empty/`None` for rows without them, and in a database still on SQL 1.2.
    pub props: Vec<u8>,
    pub message_id: Option<std::ffi::CString>,
    pub expires_at: Option<i64>,
}

/// A row's physical address (`ctid`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tid(pub u32, pub u16);

impl Tid {
    /// From `ctid::text`, "(block,offset)".
    fn parse(s: &str) -> Option<Tid> {
        let (b, o) = s.trim_matches(|c| c == '(' || c == ')').split_once(',')?;
        Some(Tid(b.parse().ok()?, o.parse().ok()?))
    }
}

/// A delivered row to delete: where it is, and its id (a TID can be reused after a delete).
#[derive(Clone, Copy, Debug)]
pub struct Delivered {
    pub tid: Tid,
    pub id: i64,
}

/// Where a pass over the outbox stands: the last row fetched (lanes in order, then ids).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PassPos {
    pub lane: i16,
    pub id: i64,
}

/// One message to insert.
pub struct NewRow<'a> {
    pub broker: &'a str,
    pub topic_utf8: &'a [u8],
    pub payload: &'a [u8],
    pub qos: u8,
    pub retain: bool,
    pub lane: i16,
    pub props: &'a [u8],
    /// Message id sequence (0: none) and commit time (µs).
    pub id: u64,
    pub at: i64,
}

impl<'a> NewRow<'a> {
    /// A row for message `m` (its topic is UTF-8) to broker `broker`, in `lane`.
    pub fn of(broker: &'a str, m: &crate::pure::ring::MessageRef<'a>, lane: i16) -> Self {
        NewRow {
            broker,
            topic_utf8: m.topic,
            payload: m.payload,
            qos: m.qos,
            retain: m.retain,
            lane,
            props: m.props,
            id: m.id,
            at: m.at,
        }
    }

    /// When the message expires (µs), if it has a message expiry: counted from its commit.
    pub fn expires_at(&self) -> Option<i64> {
        props::expiry(self.props).map(|s| self.at.saturating_add(s as i64 * 1_000_000))
    }
}

/// The outbox has SQL 1.3's columns (`properties`, `message_id`, `expires_at`). A database whose
/// extension is still older (ADR-007 §4: until `ALTER EXTENSION ... UPDATE`) has not; its rows
/// then carry none of them. A syscache lookup: cheap enough for every outbox statement.
pub fn has_properties() -> bool {
    // SAFETY: catalog lookups inside a transaction (every caller is in one).
    unsafe {
        let ns = pg::get_namespace_oid(c"mqtt_pub".as_ptr(), true);
        if ns == pg::InvalidOid {
            return false;
        }
        let rel = pg::get_relname_relid(c"outbox".as_ptr(), ns);
        rel != pg::InvalidOid && pg::get_attnum(rel, c"message_id".as_ptr()) != pg::InvalidAttrNumber as i16
    }
}

static INSERT: BackendLocal<Cell<pg::SPIPlanPtr>> = BackendLocal::new(Cell::new(std::ptr::null_mut()));
static INSERT_13: BackendLocal<Cell<pg::SPIPlanPtr>> = BackendLocal::new(Cell::new(std::ptr::null_mut()));

/// Prepare (once per backend, inside the pinned scope) the insert. One statement inserts a whole
/// batch from arrays: one executor run per transaction, not one per message. (`ROWS FROM` is
/// what an unqualified multi-argument `unnest` in FROM stands for; qualified, it must be spelled.)
unsafe fn insert_plan(v13: bool) -> pg::SPIPlanPtr {
    let cache = if v13 { &INSERT_13 } else { &INSERT };
    if !cache.get().is_null() {
        return cache.get();
    }
    // SAFETY: inside SPI and the pinned scope; the plan is kept across transactions.
    unsafe {
        let mut types = [
            pg::TEXTARRAYOID,
            pg::TEXTARRAYOID,
            pg::BYTEAARRAYOID,
            pg::INT2ARRAYOID,
            pg::BOOLARRAYOID,
            pg::INT2ARRAYOID,
            pg::BYTEAARRAYOID,
            pg::TEXTARRAYOID,
            pg::TIMESTAMPTZARRAYOID,
        ];
        // Arrays cannot hold NULLs here (construct_array): "none" travels as '', '' and -infinity.
        let sql = if v13 {
            c"INSERT INTO mqtt_pub.outbox (broker, topic, payload, qos, retain, lane, properties, message_id, expires_at) \
              SELECT b, t, p, q, r, l, \
              CASE WHEN pg_catalog.length(x) OPERATOR(pg_catalog.>) 0 THEN x END, \
              CASE WHEN pg_catalog.length(m) OPERATOR(pg_catalog.>) 0 THEN m END, \
              CASE WHEN pg_catalog.isfinite(e) THEN e END \
              FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), \
              pg_catalog.unnest($3), pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6), \
              pg_catalog.unnest($7), pg_catalog.unnest($8), pg_catalog.unnest($9)) \
              WITH ORDINALITY AS u(b, t, p, q, r, l, x, m, e, n) ORDER BY n"
        } else {
            c"INSERT INTO mqtt_pub.outbox (broker, topic, payload, qos, retain, lane) \
              SELECT b, t, p, q, r, l FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), \
              pg_catalog.unnest($3), pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6)) \
              WITH ORDINALITY AS u(b, t, p, q, r, l, n) ORDER BY n"
        };
        let plan = pg::SPI_prepare(sql.as_ptr(), if v13 { 9 } else { 6 }, types.as_mut_ptr());
        pg::SPI_keepplan(plan);
        cache.set(plan);
        plan
    }
}

/// Rows and payload bytes per INSERT statement. A transaction's outbox write (up to
/// `max_pending_memory`) or a worker's rescue is split into statements of at most this size, and
/// each statement's arrays are freed before the next are built: the write never needs more than
/// one chunk's copy on top of the messages themselves, and no array comes near the 1 GB limit.
const CHUNK_ROWS: usize = 10_000;
const CHUNK_BYTES: usize = 8 << 20;

/// Insert messages into the outbox, in order, in the current transaction (one statement per
/// chunk of rows). Returns the bytes written (topics, payloads, properties: outbox_size.rs).
pub fn insert(rows: &mut dyn Iterator<Item = NewRow<'_>>) -> i64 {
    let mut rows = rows.peekable();
    let mut written = 0;
    while rows.peek().is_some() {
        // SAFETY: a child of the current context, deleted below; nothing allocated in it is used
        // after the chunk's statement ran (an ERROR frees it with its parent).
        unsafe {
            let ctx = pg::AllocSetContextCreateInternal(
                pg::CurrentMemoryContext,
                c"pg_mqtt_pub outbox insert".as_ptr(),
                pg::ALLOCSET_DEFAULT_MINSIZE as usize,
                pg::ALLOCSET_DEFAULT_INITSIZE as usize,
                pg::ALLOCSET_DEFAULT_MAXSIZE as usize,
            );
            let old = pg::MemoryContextSwitchTo(ctx);
            written += insert_chunk(&mut rows);
            pg::MemoryContextSwitchTo(old);
            pg::MemoryContextDelete(ctx);
        }
    }
    written
}

fn insert_chunk(rows: &mut std::iter::Peekable<&mut dyn Iterator<Item = NewRow<'_>>>) -> i64 {
    let (mut brokers, mut topics, mut payloads, mut qos, mut retain, mut lanes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut props, mut ids, mut expiries) = (Vec::new(), Vec::new(), Vec::new());
    let v13 = has_properties();
    let mut bytes = 0;
    while brokers.len() < CHUNK_ROWS && bytes < CHUNK_BYTES {
        let Some(r) = rows.next() else { break };
        bytes += r.topic_utf8.len() + r.payload.len() + r.props.len();
        brokers.push(bytes_datum(r.broker.as_bytes()));
        topics.push(bytes_datum(&from_utf8(r.topic_utf8)));
        payloads.push(bytes_datum(r.payload));
        qos.push(pg::Datum::from(r.qos as i16));
        retain.push(pg::Datum::from(r.retain));
        lanes.push(pg::Datum::from(r.lane));
        if v13 {
            props.push(bytes_datum(r.props));
            ids.push(bytes_datum(crate::pg::instance::message_id(r.id).unwrap_or_default().as_bytes()));
            expiries.push(pg::Datum::from(r.expires_at().unwrap_or(i64::MIN)));
        }
    }
    if brokers.is_empty() {
        return 0;
    }
    let n = brokers.len() as i32;
    // SAFETY: each array is built from `n` datums of its element type, with that type's
    // storage layout (length, by-value, alignment) as pg_type has it.
    let array = |v: &mut Vec<pg::Datum>, t: pg::Oid, len: i32, byval: bool, align: u8| unsafe {
        pg::Datum::from(pg::construct_array(v.as_mut_ptr(), n, t, len, byval, align as std::ffi::c_char))
    };
    let mut values = vec![
        array(&mut brokers, pg::TEXTOID, -1, false, b'i'),
        array(&mut topics, pg::TEXTOID, -1, false, b'i'),
        array(&mut payloads, pg::BYTEAOID, -1, false, b'i'),
        array(&mut qos, pg::INT2OID, 2, true, b's'),
        array(&mut retain, pg::BOOLOID, 1, true, b'c'),
        array(&mut lanes, pg::INT2OID, 2, true, b's'),
    ];
    if v13 {
        values.push(array(&mut props, pg::BYTEAOID, -1, false, b'i'));
        values.push(array(&mut ids, pg::TEXTOID, -1, false, b'i'));
        values.push(array(&mut expiries, pg::TIMESTAMPTZOID, 8, true, b'd'));
    }
    with_spi(|| {
        pinned(Rights::Owner, || {
            // SAFETY: inside SPI and the pinned scope; the array parameters as prepared.
            unsafe { pg::SPI_execute_plan(insert_plan(v13), values.as_mut_ptr(), std::ptr::null(), false, 0) }
        })
    });
    bytes as i64
}

fn int8_array(ids: &[i64]) -> String {
    let inner: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    format!("'{{{}}}'::pg_catalog.int8[]", inner.join(","))
}

/// Worker: run `sql` (pinned path, the worker's own rights) with the broker name as `$1`.
pub(super) unsafe fn exec_with_broker(sql: &str, broker: &str, read_only: bool, limit: i64) {
    // SAFETY: inside SPI; one text parameter.
    unsafe { execute(sql, &[(pg::TEXTOID, bytes_datum(broker.as_bytes()))], read_only, limit) };
}

/// Worker: inside SPI and the pinned scope, with the worker's rights.
pub(super) fn worker_spi<R>(f: impl FnOnce() -> R) -> R {
    with_spi(|| pinned(Rights::Restricted, f))
}

/// A row that just failed: its new attempt count, and whether it was dead-lettered.
pub struct Failure {
    pub attempts: i32,
    pub dead_lettered: bool,
    pub topic: String,
}

/// Both lanes: the primary key's middle column, so that `broker, id` lookups use the key.
const BOTH_LANES: &str = "lane OPERATOR(pg_catalog.=) ANY ('{0,1}'::pg_catalog.int2[])";

/// Worker: delivery of row `id` failed. Count the attempt and schedule the next one at
/// `base_ms · 2^(attempts-1)` from now; after `max_attempts`, move the row (same transaction) to
/// `mqtt_pub.dead_letters`. `max_attempts` 0: not counted as an attempt (the broker was busy),
/// only rescheduled. `None` if the row no longer exists.
pub fn record_failure(broker: &str, id: i64, why: &str, base_ms: i64, max_attempts: i32) -> Option<Failure> {
    let charge = (max_attempts > 0) as i32;
    worker_spi(|| {
        // SAFETY: inside SPI; parameters match the placeholders.
        unsafe {
            execute(
                &format!(
                    "UPDATE mqtt_pub.outbox SET attempts = attempts OPERATOR(pg_catalog.+) $5, last_error = $2, \
                     first_failed_at = COALESCE(first_failed_at, pg_catalog.now()), last_attempt_at = pg_catalog.now(), \
                     next_retry_at = pg_catalog.now() OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => \
                       $3::pg_catalog.float8 OPERATOR(pg_catalog.*) (2::pg_catalog.float8 OPERATOR(pg_catalog.^) \
                       attempts::pg_catalog.float8) OPERATOR(pg_catalog./) 1000::pg_catalog.float8) \
                     WHERE broker OPERATOR(pg_catalog.=) $4 AND {BOTH_LANES} AND id OPERATOR(pg_catalog.=) $1 \
                     RETURNING attempts, topic"
                ),
                &[
                    (pg::INT8OID, pg::Datum::from(id)),
                    (pg::TEXTOID, bytes_datum(why.as_bytes())),
                    (pg::INT8OID, pg::Datum::from(base_ms)),
                    (pg::TEXTOID, bytes_datum(broker.as_bytes())),
                    (pg::INT4OID, pg::Datum::from(charge)),
                ],
                false,
                0,
            );
            let attempts = first_value(1)?.value() as i32;
            let topic = String::from_utf8_lossy(&to_utf8(varlena_bytes(first_value(2)?))).into_owned();
            let dead_lettered = charge > 0 && attempts >= max_attempts;
            if dead_lettered {
                move_to_dead_letters(broker, Some(id), None);
            }
            Some(Failure { attempts, dead_lettered, topic })
        }
    })
}

/// Move outbox rows of `broker` to `mqtt_pub.dead_letters` — row `id`, or all of them — keeping
/// their attempts and first failure; `reason` replaces their last error when given. The one
/// statement that writes dead letters: the worker's poison handling and `mqtt_broker_remove`
/// (through [`mqtt_pub_dead_letter_outbox`]) both come here. Runs in the caller's SPI and pinned
/// scope. Returns how many rows moved.
///
/// # Safety
/// Inside SPI and a pinned scope (`spi.rs`).
pub unsafe fn move_to_dead_letters(broker: &str, id: Option<i64>, reason: Option<&[u8]>) -> u64 {
    // SAFETY: inside SPI (the caller's promise); parameters match the placeholders. The id and
    // reason are constants to the planner (SPI passes them as such), so a NULL id plans as a
    // scan of the broker's rows and a given one as a primary-key lookup.
    // SQL 1.3's columns travel along where they exist (both tables gain them together).
    let (o, c, g) = if has_properties() {
        (
            ", o.properties, o.message_id, o.expires_at",
            ", properties, message_id, expires_at",
            ", g.properties, g.message_id, g.expires_at",
        )
    } else {
        ("", "", "")
    };
    unsafe {
        spi::execute_nulls(
            &format!(
                "WITH gone AS (DELETE FROM mqtt_pub.outbox o WHERE o.broker OPERATOR(pg_catalog.=) $1 \
                   AND o.{BOTH_LANES} AND ($2 IS NULL OR o.id OPERATOR(pg_catalog.=) $2) \
                   RETURNING o.id, o.broker, o.topic, o.payload, o.qos, o.retain, o.attempts, o.first_failed_at, \
                             o.last_error{o}) \
                 INSERT INTO mqtt_pub.dead_letters \
                   (original_id, broker, topic, payload, qos, retain, attempts, first_failed_at, last_error{c}) \
                 SELECT g.id, g.broker, g.topic, g.payload, g.qos, g.retain, g.attempts, g.first_failed_at, \
                        COALESCE($3, g.last_error){g} \
                 FROM gone g ORDER BY g.id"
            ),
            &[
                (pg::TEXTOID, Some(bytes_datum(broker.as_bytes()))),
                (pg::INT8OID, id.map(pg::Datum::from)),
                (pg::TEXTOID, reason.map(bytes_datum)),
            ],
            false,
            0,
        );
    }
    spi::processed()
}

crate::pg_finfo!(pg_finfo_mqtt_pub_dead_letter_outbox);

/// `mqtt_pub.dead_letter_outbox(broker_name text, reason text) RETURNS bigint`: every outbox row
/// of a broker to the dead letters, for `mqtt_broker_remove(force := true)` (which runs as the
/// extension owner and has locked the broker catalog). Not executable by PUBLIC.
#[no_mangle]
pub unsafe extern "C-unwind" fn mqtt_pub_dead_letter_outbox(fcinfo: pg::FunctionCallInfo) -> pg::Datum {
    crate::pg::guard::guard(|| {
        // SAFETY: fcinfo is valid for this call.
        let a = unsafe { crate::pg::fmgr::Args::new(fcinfo) };
        let broker = String::from_utf8_lossy(&to_utf8(a.text(0, "broker_name"))).into_owned();
        let reason = a.text(1, "reason").to_vec();
        // SAFETY: inside SPI and the pinned scope, as the current user (the owner).
        let n = with_spi(|| pinned(Rights::Caller, || unsafe { move_to_dead_letters(&broker, None, Some(&reason)) }));
        pg::Datum::from(n as i64)
    })
}

/// Worker: a hot message failed. It joins the outbox already failed once (or goes straight to the
/// dead letters when `max_attempts` is 1).
pub fn insert_failed(row: NewRow<'_>, why: &str, base_ms: i64, max_attempts: i32) -> Option<Failure> {
    let id = worker_spi(|| {
        // SAFETY: inside SPI.
        unsafe {
            let topic = from_utf8(row.topic_utf8);
            let id = crate::pg::instance::message_id(row.id);
            let d = |b: &[u8]| Some(bytes_datum(b));
            spi::execute_nulls(
                if has_properties() {
                    "INSERT INTO mqtt_pub.outbox (broker, topic, payload, qos, retain, lane, properties, message_id, \
                     expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id"
                } else {
                    "INSERT INTO mqtt_pub.outbox (broker, topic, payload, qos, retain, lane) \
                     VALUES ($1, $2, $3, $4, $5, $6) RETURNING id"
                },
                &[
                    (pg::TEXTOID, d(row.broker.as_bytes())),
                    (pg::TEXTOID, d(&topic)),
                    (pg::BYTEAOID, d(row.payload)),
                    (pg::INT2OID, Some(pg::Datum::from(row.qos as i16))),
                    (pg::BOOLOID, Some(pg::Datum::from(row.retain))),
                    (pg::INT2OID, Some(pg::Datum::from(row.lane))),
                    (pg::BYTEAOID, (!row.props.is_empty()).then(|| bytes_datum(row.props))),
                    (pg::TEXTOID, id.as_deref().and_then(|s| d(s.as_bytes()))),
                    (pg::TIMESTAMPTZOID, row.expires_at().map(pg::Datum::from)),
                ],
                false,
                0,
            );
            first_value(1).map(|d| d.value() as i64)
        }
    })?;
    outbox_size::add((row.topic_utf8.len() + row.payload.len() + row.props.len()) as i64);
    record_failure(row.broker, id, why, base_ms, max_attempts)
}

/// Worker: delete dead letters older than `days`, at most `batch` rows. Returns how many.
pub fn prune_dead_letters(days: i32, batch: i64) -> u64 {
    worker_spi(|| {
        // SAFETY: inside SPI.
        unsafe {
            execute(
                "DELETE FROM mqtt_pub.dead_letters WHERE id OPERATOR(pg_catalog.=) ANY (\
                   SELECT d.id FROM mqtt_pub.dead_letters d WHERE d.dead_lettered_at OPERATOR(pg_catalog.<) \
                   (pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.make_interval(days => $1)) \
                   ORDER BY d.dead_lettered_at LIMIT $2)",
                &[(pg::INT4OID, pg::Datum::from(days)), (pg::INT8OID, pg::Datum::from(batch))],
                false,
                0,
            );
            spi::processed()
        }
    })
}

/// Worker: the next rows due for `broker`, oldest first (lane 0, then lane 1), skipping `exclude`
/// (in flight or acknowledged but not yet deleted). `after` continues a pass where the previous
/// fetch ended: the index scan then starts past the rows just delivered and deleted, instead of
/// wading through their dead index entries again on every fetch.
/// Payload bytes one fetch copies out at most (at least one row, whatever its size): with
/// `outbox_batch_size` rows of up to `max_message_size` each, a fetch could otherwise hold
/// hundreds of MB in the worker. Rows stay toasted in SPI's result until copied, so the rows
/// past this bound cost nothing.
const FETCH_BYTES: usize = 16 << 20;

/// Worker: the next due rows of `broker`, oldest first, at most `limit` rows and about
/// `FETCH_BYTES` payload bytes; and whether there may be more after them (this pass goes on).
pub fn fetch(
    broker: &str,
    limit: usize,
    exclude: &[i64],
    recovered_only: bool,
    after: Option<PassPos>,
) -> (Vec<Row>, bool) {
    let v13 = worker_spi(has_properties);
    let mut sql = format!(
        "SELECT id, topic, payload, qos, retain, lane, ctid::pg_catalog.text, created_at{} FROM mqtt_pub.outbox \
         WHERE broker OPERATOR(pg_catalog.=) $1 AND next_retry_at OPERATOR(pg_catalog.<=) pg_catalog.now()",
        if v13 { ", properties, message_id, expires_at" } else { "" }
    );
    if let Some(PassPos { lane, id }) = after {
        sql.push_str(&format!(
            " AND (lane, id) OPERATOR(pg_catalog.>) ({lane}::pg_catalog.int2, {id}::pg_catalog.int8)"
        ));
    }
    if recovered_only {
        sql.push_str(" AND lane OPERATOR(pg_catalog.=) 0::pg_catalog.int2");
    }
    if !exclude.is_empty() {
        sql.push_str(&format!(" AND NOT (id OPERATOR(pg_catalog.=) ANY ({}))", int8_array(exclude)));
    }
    sql.push_str(" ORDER BY lane, id");
    worker_spi(|| {
        // SAFETY: inside SPI; results copied out before SPI_finish frees them.
        unsafe {
            // The right plan is an ordered index scan that stops after `limit` rows. Without
            // statistics (an outbox that just filled up during an outage) the planner picks a
            // bitmap scan of every row plus a sort instead: 40x slower per fetch, measured.
            // The worker's fetch transaction pins the plan (SET LOCAL ends with it).
            execute(
                "SET LOCAL enable_bitmapscan = off; SET LOCAL enable_seqscan = off; SET LOCAL enable_sort = off",
                &[],
                false,
                0,
            );
            exec_with_broker(&sql, broker, true, limit as i64);
            let n = spi::processed() as usize;
            let mut rows = Vec::with_capacity(n);
            let mut bytes = 0;
            for i in 0..n {
                let get = |c: i32| spi::value(i, c).unwrap_or(pg::Datum::from(0usize));
                // the payload's size without detoasting it
                bytes += pg::toast_raw_datum_size(get(3));
                if i > 0 && bytes > FETCH_BYTES {
                    return (rows, true);
                }
                let mut topic_nul = to_utf8(varlena_bytes(get(2))).into_owned();
                topic_nul.push(0);
                let tid = std::str::from_utf8(varlena_bytes(get(7))).ok().and_then(Tid::parse).unwrap_or(Tid(0, 0));
                let opt = |c: i32| if v13 { spi::value(i, c) } else { None };
                rows.push(Row {
                    id: get(1).value() as i64,
                    tid,
                    lane: get(6).value() as i16,
                    topic_nul,
                    payload: varlena_bytes(get(3)).to_vec(),
                    qos: get(4).value() as u8,
                    retain: get(5).value() != 0,
                    created_at: get(8).value() as i64,
                    props: opt(9).map(|d| varlena_bytes(d).to_vec()).unwrap_or_default(),
                    message_id: opt(10).and_then(|d| std::ffi::CString::new(varlena_bytes(d)).ok()),
                    expires_at: opt(11).map(|d| d.value() as i64),
                });
            }
            (rows, n == limit)
        }
    })
}

/// Worker: delete delivered rows (and take their bytes off the outbox's size).
pub fn delete(rows: &[Delivered]) {
    if rows.is_empty() {
        return;
    }
    // By TID (a TID scan: no index, no plan to go wrong — with an index condition on the key the
    // planner, lacking statistics on a freshly filled outbox, scanned every row of the broker
    // for each batch: drain 1.09x -> 0.40x raw, measured). The id check makes a TID that was
    // reused by another row after a concurrent delete harmless.
    let tids: Vec<String> = rows.iter().map(|r| format!("\"({},{})\"", r.tid.0, r.tid.1)).collect();
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let props =
        if has_properties() { " OPERATOR(pg_catalog.+) COALESCE(pg_catalog.octet_length(properties), 0)" } else { "" };
    let sql = format!(
        "WITH d AS (DELETE FROM mqtt_pub.outbox WHERE ctid OPERATOR(pg_catalog.=) ANY ('{{{}}}'::pg_catalog.tid[]) \
         AND id OPERATOR(pg_catalog.=) ANY ({}) RETURNING pg_catalog.octet_length(topic) OPERATOR(pg_catalog.+) \
         pg_catalog.octet_length(payload){props} AS n) \
         SELECT COALESCE(pg_catalog.sum(d.n), 0)::pg_catalog.int8 FROM d",
        tids.join(","),
        int8_array(&ids)
    );
    // SAFETY: inside SPI; SET LOCAL ends with the worker's transaction.
    worker_spi(|| unsafe {
        execute(
            "SET LOCAL enable_indexscan = off; SET LOCAL enable_bitmapscan = off; SET LOCAL enable_seqscan = off",
            &[],
            false,
            0,
        );
        execute(&sql, &[], false, 0);
        outbox_size::add(-first_value(1).map(|d| d.value() as i64).unwrap_or(0));
    });
}

/// Does `broker` have any row in the outbox that is not waiting for a retry? (Failed rows are
/// retried at their own time, out of order by nature; they do not keep a broker cold.)
pub fn exists(broker: &str) -> bool {
    worker_spi(|| {
        // SAFETY: inside SPI.
        unsafe {
            exec_with_broker(
                "SELECT 1 FROM mqtt_pub.outbox WHERE broker OPERATOR(pg_catalog.=) $1 \
                 AND attempts OPERATOR(pg_catalog.=) 0 LIMIT 1",
                broker,
                true,
                1,
            );
            spi::processed() > 0
        }
    })
}
