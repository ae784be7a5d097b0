//! Every `pg_mqtt_pub.*` setting: name, default, context, and where it is read.
//!
//! Contexts follow one rule: what sizes shared memory or picks the worker's database is
//! `PGC_POSTMASTER`; what the worker uses to talk to a broker reloads on SIGHUP (the worker
//! reconnects when it changes); what describes one caller's transaction is `PGC_USERSET`;
//! a limit that protects the server from one session is `PGC_SUSET`.
//! docs/settings.md documents every one of them (tests/test_docs.py checks it against pg_settings).
//!
//! Values live in statics that PostgreSQL writes (the GUC machinery holds pointers to them);
//! they are read only from the main thread of a backend or worker.

use crate::pg::guard::{guard, Code, PgError};
use crate::pure::backend_local::BackendLocal;
use pgrx_pg_sys as pg;
use std::cell::UnsafeCell;
use std::ffi::{c_char, c_int, c_void, CStr};

/// A cell whose address is handed to PostgreSQL's GUC machinery.
pub struct Guc<T>(UnsafeCell<T>);
// SAFETY: PostgreSQL backends are single-threaded; the GUC machinery and our readers run on the
// main thread only.
unsafe impl<T> Sync for Guc<T> {}

impl<T: Copy> Guc<T> {
    const fn new(v: T) -> Self {
        Guc(UnsafeCell::new(v))
    }
    pub fn get(&self) -> T {
        // SAFETY: see the Sync impl.
        unsafe { *self.0.get() }
    }
    fn ptr(&self) -> *mut T {
        self.0.get()
    }
}

impl Guc<*mut c_char> {
    /// The string value ('' when unset).
    pub fn string(&self) -> String {
        let p = self.get();
        if p.is_null() {
            return String::new();
        }
        // SAFETY: GUC strings are NUL-terminated and owned by guc.c.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

pub static BROKER_HOST: Guc<*mut c_char> = Guc::new(std::ptr::null_mut());
pub static BROKER_PORT: Guc<c_int> = Guc::new(1883);
pub static BROKER_USERNAME: Guc<*mut c_char> = Guc::new(std::ptr::null_mut());
pub static BROKER_PASSWORD: Guc<*mut c_char> = Guc::new(std::ptr::null_mut());
pub static BROKER_PASSWORD_FILE: Guc<*mut c_char> = Guc::new(std::ptr::null_mut());
pub static BROKER_USE_TLS: Guc<bool> = Guc::new(false);
pub static BROKER_CA_CERT: Guc<*mut c_char> = Guc::new(std::ptr::null_mut());
pub static BROKER_CLIENT_CERT: Guc<*mut c_char> = Guc::new(std::ptr::null_mut());
pub static BROKER_CLIENT_KEY: Guc<*mut c_char> = Guc::new(std::ptr::null_mut());
pub static BROKER_TLS_VERSION: Guc<*mut c_char> = Guc::new(std::ptr::null_mut());
pub static MAX_BROKERS: Guc<c_int> = Guc::new(8);
pub static CLIENT_ID: Guc<*mut c_char> = Guc::new(std::ptr::null_mut());
pub static KEEPALIVE_S: Guc<c_int> = Guc::new(60);
pub static CONNECT_TIMEOUT_S: Guc<c_int> = Guc::new(10);
pub static PROTOCOL_VERSION: Guc<c_int> = Guc::new(5);
pub static MAX_INFLIGHT: Guc<c_int> = Guc::new(100);

pub static QUEUE_SIZE: Guc<c_int> = Guc::new(65536);
pub static DATABASE: Guc<*mut c_char> = Guc::new(std::ptr::null_mut());
pub static MAX_DATABASES: Guc<c_int> = Guc::new(4);
pub static RECONNECT_INTERVAL_MS: Guc<c_int> = Guc::new(5000);
pub static PUBLISH_TIMEOUT_MS: Guc<c_int> = Guc::new(100);
pub static WORKER_POLL_INTERVAL_MS: Guc<c_int> = Guc::new(10);
pub static MAX_MESSAGE_SIZE: Guc<c_int> = Guc::new(1024 * 1024);
pub static MAX_PENDING_MEMORY: Guc<c_int> = Guc::new(256 * 1024 * 1024);
/// kB; -1: no limit.
pub static MAX_OUTBOX_SIZE: Guc<c_int> = Guc::new(1024 * 1024);
pub static TRANSACTIONAL: Guc<bool> = Guc::new(true);
pub static DURABLE: Guc<bool> = Guc::new(false);
pub static MESSAGE_ID: Guc<bool> = Guc::new(true);
pub static DEAD_LETTER_EXPIRED: Guc<bool> = Guc::new(false);
pub static ACK_TIMEOUT_MS: Guc<c_int> = Guc::new(30_000);
pub static RETRY_BASE_MS: Guc<c_int> = Guc::new(1000);

pub static POISON_MAX_ATTEMPTS: Guc<c_int> = Guc::new(5);
pub static OUTBOX_BATCH_SIZE: Guc<c_int> = Guc::new(500);
pub static DEAD_LETTER_RETAIN_DAYS: Guc<c_int> = Guc::new(30);

/// MQTT protocol versions, as `mosquitto.h` numbers them (MQTT_PROTOCOL_V31/V311/V5).
static PROTOCOL_OPTIONS: BackendLocal<[pg::config_enum_entry; 4]> = BackendLocal::new([
    pg::config_enum_entry { name: c"5".as_ptr(), val: 5, hidden: false },
    pg::config_enum_entry { name: c"3.1.1".as_ptr(), val: 4, hidden: false },
    pg::config_enum_entry { name: c"3.1".as_ptr(), val: 3, hidden: false },
    pg::config_enum_entry { name: std::ptr::null(), val: 0, hidden: false },
]);

use pg::GucContext::{PGC_POSTMASTER as POSTMASTER, PGC_SIGHUP as SIGHUP, PGC_SUSET as SUSET, PGC_USERSET as USERSET};

fn int(name: &CStr, desc: &CStr, v: &Guc<c_int>, min: c_int, max: c_int, ctx: u32, flags: u32) {
    // SAFETY: called from _PG_init; `v` is a static that outlives the GUC.
    unsafe {
        pg::DefineCustomIntVariable(
            name.as_ptr(),
            desc.as_ptr(),
            std::ptr::null(),
            v.ptr(),
            v.get(),
            min,
            max,
            ctx,
            flags as c_int,
            None,
            None,
            None,
        )
    }
}

fn string(name: &CStr, desc: &CStr, v: &Guc<*mut c_char>, boot: &'static CStr, ctx: u32, flags: u32) {
    checked_string(name, desc, v, boot, ctx, flags, None)
}

/// A string setting with a check hook (pg/guc_checks.rs).
fn checked_string(
    name: &CStr,
    desc: &CStr,
    v: &Guc<*mut c_char>,
    boot: &'static CStr,
    ctx: u32,
    flags: u32,
    check: pg::GucStringCheckHook,
) {
    // SAFETY: as above; guc.c copies the boot value.
    unsafe {
        pg::DefineCustomStringVariable(
            name.as_ptr(),
            desc.as_ptr(),
            std::ptr::null(),
            v.ptr(),
            boot.as_ptr(),
            ctx,
            flags as c_int,
            check,
            None,
            None,
        )
    }
}

fn boolean(name: &CStr, desc: &CStr, v: &Guc<bool>, ctx: u32) {
    // SAFETY: as above.
    unsafe {
        pg::DefineCustomBoolVariable(
            name.as_ptr(),
            desc.as_ptr(),
            std::ptr::null(),
            v.ptr(),
            v.get(),
            ctx,
            0,
            None,
            None,
            None,
        )
    }
}

/// GUC check hook for `queue_size`. At server start a failing check hook only produces a
/// WARNING and silently keeps the default, so there we accept the value and let `_PG_init`
/// refuse to start with a clear error (`validate_startup`). Everywhere else (ALTER SYSTEM,
/// reload) the hook rejects it directly.
unsafe extern "C-unwind" fn check_queue_size(
    newval: *mut c_int,
    _extra: *mut *mut c_void,
    _source: pg::GucSource::Type,
) -> bool {
    guard(|| {
        // SAFETY: guc.c passes a valid pointer.
        let v = unsafe { *newval };
        // SAFETY: plain read of a PostgreSQL global on the main thread.
        if crate::pure::ring::is_power_of_two(v as i64) || unsafe { pg::process_shared_preload_libraries_in_progress } {
            return true;
        }
        // SAFETY: guc.c reports (and owns) these palloc'd strings.
        unsafe {
            pg::GUC_check_errdetail_string = pg::pstrdup(c"pg_mqtt_pub.queue_size must be a power of two.".as_ptr());
            pg::GUC_check_errhint_string = pg::pstrdup(c"Use a value such as 16384, 65536 or 262144.".as_ptr());
        }
        false
    })
}

pub fn define() {
    use pg::{
        GUC_SUPERUSER_ONLY as SECRET, GUC_UNIT_BYTE as BYTES, GUC_UNIT_KB as KB, GUC_UNIT_MS as MS, GUC_UNIT_S as S,
    };

    checked_string(
        c"pg_mqtt_pub.broker_host",
        c"Host name or address of the default MQTT broker.",
        &BROKER_HOST,
        c"localhost",
        SIGHUP,
        0,
        Some(super::guc_checks::check_host),
    );
    int(c"pg_mqtt_pub.broker_port", c"TCP port of the default MQTT broker.", &BROKER_PORT, 1, 65535, SIGHUP, 0);
    string(
        c"pg_mqtt_pub.broker_username",
        c"User name for the default broker ('' = anonymous).",
        &BROKER_USERNAME,
        c"",
        SIGHUP,
        0,
    );
    string(
        c"pg_mqtt_pub.broker_password",
        c"Password for the default broker. Visible to superusers only.",
        &BROKER_PASSWORD,
        c"",
        SIGHUP,
        SECRET,
    );
    checked_string(
        c"pg_mqtt_pub.broker_password_file",
        c"File holding the default broker's password (read by the worker at each connect; wins over broker_password).",
        &BROKER_PASSWORD_FILE,
        c"",
        SIGHUP,
        SECRET,
        Some(super::guc_checks::check_password_file),
    );
    boolean(c"pg_mqtt_pub.broker_use_tls", c"Connect to the default broker with TLS.", &BROKER_USE_TLS, SIGHUP);
    checked_string(
        c"pg_mqtt_pub.broker_ca_cert",
        c"CA certificate file (PEM) that verifies the default broker.",
        &BROKER_CA_CERT,
        c"",
        SIGHUP,
        0,
        Some(super::guc_checks::check_ca_cert),
    );
    checked_string(
        c"pg_mqtt_pub.broker_client_cert",
        c"Client certificate file (PEM) for mutual TLS with the default broker.",
        &BROKER_CLIENT_CERT,
        c"",
        SIGHUP,
        0,
        Some(super::guc_checks::check_client_cert),
    );
    checked_string(
        c"pg_mqtt_pub.broker_client_key",
        c"Private key file (PEM) of the client certificate.",
        &BROKER_CLIENT_KEY,
        c"",
        SIGHUP,
        0,
        Some(super::guc_checks::check_client_key),
    );
    checked_string(
        c"pg_mqtt_pub.broker_tls_version",
        c"Lowest TLS version accepted from the default broker: tlsv1.2 or tlsv1.3.",
        &BROKER_TLS_VERSION,
        c"tlsv1.2",
        SIGHUP,
        0,
        Some(super::guc_checks::check_tls_version),
    );
    int(
        c"pg_mqtt_pub.max_brokers",
        c"Brokers (default included) shared memory has room for.",
        &MAX_BROKERS,
        1,
        crate::pure::pending::MAX_BROKERS as c_int,
        POSTMASTER,
        0,
    );
    checked_string(
        c"pg_mqtt_pub.client_id",
        c"MQTT client id of the worker ('' = pg_mqtt_pub-<system identifier>-<instance>-db<oid>, different for every clone and database).",
        &CLIENT_ID,
        c"",
        SIGHUP,
        0,
        Some(super::guc_checks::check_client_id),
    );
    int(
        c"pg_mqtt_pub.keepalive",
        c"MQTT keepalive interval of the broker default (named brokers: mqtt_broker_add).",
        &KEEPALIVE_S,
        5,
        65535,
        SIGHUP,
        S,
    );
    int(
        c"pg_mqtt_pub.connect_timeout",
        c"How long a connection attempt (TCP, TLS handshake and CONNACK) may take before it counts as failed.",
        &CONNECT_TIMEOUT_S,
        1,
        3600,
        SIGHUP,
        S,
    );
    // SAFETY: DefineCustomEnumVariable keeps a pointer to the static option table.
    unsafe {
        pg::DefineCustomEnumVariable(
            c"pg_mqtt_pub.protocol_version".as_ptr(),
            c"MQTT protocol version: 5, 3.1.1 or 3.1.".as_ptr(),
            std::ptr::null(),
            PROTOCOL_VERSION.ptr(),
            5,
            PROTOCOL_OPTIONS.as_ptr(),
            SIGHUP,
            0,
            None,
            None,
            None,
        );
    }
    int(
        c"pg_mqtt_pub.max_inflight",
        c"QoS 1/2 messages the worker keeps unacknowledged per broker.",
        &MAX_INFLIGHT,
        1,
        65535,
        SIGHUP,
        0,
    );

    // SAFETY: as in `int`, plus our check hook.
    unsafe {
        pg::DefineCustomIntVariable(
            c"pg_mqtt_pub.queue_size".as_ptr(),
            c"Slots (512 bytes each) of the shared-memory rings, divided among max_databases; a power of two.".as_ptr(),
            std::ptr::null(),
            QUEUE_SIZE.ptr(),
            65536,
            16,
            1 << 24,
            POSTMASTER,
            0,
            Some(check_queue_size),
            None,
            None,
        );
    }
    string(
        c"pg_mqtt_pub.database",
        c"Restricts publishing to this one database ('' = every database in which the extension exists).",
        &DATABASE,
        c"",
        POSTMASTER,
        0,
    );
    int(
        c"pg_mqtt_pub.max_databases",
        c"Databases that can publish at once (each takes a share of queue_size and a background worker).",
        &MAX_DATABASES,
        1,
        1024,
        POSTMASTER,
        0,
    );
    int(
        c"pg_mqtt_pub.reconnect_interval_ms",
        c"Base of the worker's reconnect backoff.",
        &RECONNECT_INTERVAL_MS,
        10,
        3_600_000,
        SIGHUP,
        MS,
    );
    int(
        c"pg_mqtt_pub.publish_timeout_ms",
        c"How long a publisher waits for ring space when the ring is full.",
        &PUBLISH_TIMEOUT_MS,
        0,
        600_000,
        USERSET,
        MS,
    );
    int(
        c"pg_mqtt_pub.worker_poll_interval_ms",
        c"Longest the worker sleeps while a broker is cold and its outbox drains (the hot path is woken by latch).",
        &WORKER_POLL_INTERVAL_MS,
        1,
        60_000,
        SIGHUP,
        MS,
    );
    int(
        c"pg_mqtt_pub.max_pending_memory",
        c"Memory one transaction may hold in messages not yet committed; past it, publishing fails.",
        &MAX_PENDING_MEMORY,
        // above twice the spill threshold (txn.rs PENDING_LIMIT): a transaction that can spill
        // to the outbox never reaches the cap
        16 * 1024 * 1024,
        512 * 1024 * 1024,
        SUSET,
        BYTES,
    );
    int(
        c"pg_mqtt_pub.max_outbox_size",
        c"Largest size of the outbox (topics, payloads and properties); past it, publishing to a cold broker fails. -1: no limit.",
        &MAX_OUTBOX_SIZE,
        -1,
        c_int::MAX,
        SIGHUP,
        KB,
    );
    int(
        c"pg_mqtt_pub.max_message_size",
        c"Largest message (topic + MQTT 5 properties + payload) accepted by the publish functions.",
        &MAX_MESSAGE_SIZE,
        1024,
        256 * 1024 * 1024,
        SIGHUP,
        BYTES,
    );
    boolean(
        c"pg_mqtt_pub.transactional",
        c"Publish messages at COMMIT (on) or at call time (off).",
        &TRANSACTIONAL,
        USERSET,
    );
    boolean(
        c"pg_mqtt_pub.durable",
        c"Send messages through the WAL-logged outbox even when the broker is hot (crash-safe).",
        &DURABLE,
        USERSET,
    );
    boolean(
        c"pg_mqtt_pub.message_id",
        c"Give every message an id at commit and send it as the MQTT 5 user property pg-mqtt-pub-id.",
        &MESSAGE_ID,
        USERSET,
    );
    boolean(
        c"pg_mqtt_pub.dead_letter_expired",
        c"Move messages whose message_expiry ran out before they could be sent to mqtt_pub.dead_letters (off: drop them).",
        &DEAD_LETTER_EXPIRED,
        SIGHUP,
    );
    int(
        c"pg_mqtt_pub.retry_base_ms",
        c"Delay before the first retry of a failed message; each further attempt doubles it.",
        &RETRY_BASE_MS,
        10,
        3_600_000,
        SIGHUP,
        MS,
    );
    int(
        c"pg_mqtt_pub.ack_timeout_ms",
        c"Reconnect when nothing in flight has been acknowledged for this long.",
        &ACK_TIMEOUT_MS,
        100,
        3_600_000,
        SIGHUP,
        MS,
    );

    int(
        c"pg_mqtt_pub.poison_max_attempts",
        c"Delivery attempts before a message is dead-lettered.",
        &POISON_MAX_ATTEMPTS,
        1,
        1000,
        SIGHUP,
        0,
    );
    int(
        c"pg_mqtt_pub.outbox_batch_size",
        c"Outbox rows the worker drains per cycle.",
        &OUTBOX_BATCH_SIZE,
        1,
        100_000,
        SIGHUP,
        0,
    );
    int(
        c"pg_mqtt_pub.dead_letter_retain_days",
        c"Days dead letters are kept (0 = forever).",
        &DEAD_LETTER_RETAIN_DAYS,
        0,
        36_500,
        SIGHUP,
        0,
    );

    // SAFETY: plain call from _PG_init.
    unsafe { pg::MarkGUCPrefixReserved(c"pg_mqtt_pub".as_ptr()) };
}

/// Refuse to start with settings that cannot work (see `check_queue_size`).
pub fn validate_startup() {
    // Accepted by their check hooks while preloading (a failing hook would only warn and keep
    // the default): refused here, as ALTER SYSTEM and a reload refuse them.
    for r in [
        crate::pure::settings_rules::host(&BROKER_HOST.string()),
        crate::pure::settings_rules::tls_version(&BROKER_TLS_VERSION.string()),
        crate::pure::settings_rules::client_id(&CLIENT_ID.string()),
    ] {
        if let Err(e) = r {
            PgError::new(Code::ERRCODE_INVALID_PARAMETER_VALUE, e.message).hint(e.hint).raise();
        }
    }
    let q = QUEUE_SIZE.get();
    if !crate::pure::ring::is_power_of_two(q as i64) {
        PgError::new(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid value for parameter \"pg_mqtt_pub.queue_size\": {q}"),
        )
        .detail("pg_mqtt_pub.queue_size must be a power of two.")
        .hint("Use a value such as 16384, 65536 or 262144.")
        .raise();
    }
    let shares = if DATABASE.string().is_empty() { MAX_DATABASES.get() as i64 } else { 1 };
    if (q as i64) / shares < 16 {
        PgError::new(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("pg_mqtt_pub.queue_size = {q} leaves fewer than 16 slots for each of pg_mqtt_pub.max_databases = {shares}"),
        )
        .hint("Raise pg_mqtt_pub.queue_size or lower pg_mqtt_pub.max_databases.")
        .raise();
    }
}

/// Everything the worker needs to connect to the default broker; compared on SIGHUP to decide
/// whether to reconnect. The password is kept here but never printed (no Debug derive).
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerConfig {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: String,
    pub use_tls: bool,
    pub ca_cert: String,
    pub client_cert: String,
    pub client_key: String,
    pub tls_version: String,
    pub client_id: String,
    pub keepalive: i32,
    /// A file (read by the worker at each connect) holding the password; wins over `password`.
    pub password_file: String,
    pub protocol: i32,
    pub max_inflight: u32,
}

impl BrokerConfig {
    pub fn default_broker() -> BrokerConfig {
        BrokerConfig {
            name: "default".into(),
            host: BROKER_HOST.string(),
            port: BROKER_PORT.get() as u16,
            username: BROKER_USERNAME.string(),
            password: BROKER_PASSWORD.string(),
            use_tls: BROKER_USE_TLS.get(),
            ca_cert: BROKER_CA_CERT.string(),
            client_cert: BROKER_CLIENT_CERT.string(),
            client_key: BROKER_CLIENT_KEY.string(),
            tls_version: BROKER_TLS_VERSION.string(),
            client_id: CLIENT_ID.string(),
            keepalive: KEEPALIVE_S.get(),
            password_file: BROKER_PASSWORD_FILE.string(),
            protocol: PROTOCOL_VERSION.get(),
            max_inflight: MAX_INFLIGHT.get() as u32,
        }
    }
}
