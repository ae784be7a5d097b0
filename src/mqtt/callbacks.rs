//! libmosquitto's callbacks, and the state they write: what happened on the connection
//! ([`Event`]s), the last error libmosquitto logged, what the broker's CONNACK allowed.
//!
//! Invariants:
//! * Callbacks only *record*: they call no PostgreSQL function (a PostgreSQL ERROR there would
//!   longjmp through libmosquitto's frames) and cannot panic across the C frames (each body is
//!   wrapped in `no_unwind`, aborting the process on a bug rather than unwinding into C).
//! * Their userdata is the address of a boxed [`CallbackState`] that outlives the libmosquitto
//!   object they are registered on (session.rs registers them; client.rs owns the box and
//!   destroys the session first).
//! * They run on the thread that called into libmosquitto (never `mosquitto_loop_start`), so
//!   the state needs no lock: the client reads it between calls.

use crate::pure::limits::Limits;
use libmosquitto_sys as m;
use std::ffi::{c_char, c_int, c_void, CStr};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// CONNACK arrived: 0 = accepted, otherwise the refusal code.
    Connected(i32),
    /// The connection ended (0 = we asked for it).
    Disconnected(i32),
    /// A publish finished: QoS 0 written to the socket, QoS 1 PUBACK, QoS 2 PUBCOMP.
    /// `reason` is the MQTT 5 reason code (>= 0x80 = refused by the broker).
    Published { mid: i32, reason: i32 },
}

#[derive(Default)]
pub(super) struct CallbackState {
    pub(super) events: Vec<Event>,
    pub(super) last_log_error: Option<String>,
    /// What the last accepting CONNACK allowed.
    pub(super) limits: Limits,
    /// A message's properties were left out because the connection is MQTT 3.1.1 (warned once
    /// per client: `take_dropped_props`).
    pub(super) props_warned: bool,
    pub(super) dropped_props: bool,
    /// Message ids of QoS 2 messages libmosquitto has not finished (their PUBREC makes it write).
    pub(super) qos2: Vec<i32>,
    /// The Server Reference of a refusing CONNACK or a DISCONNECT (MQTT 5 "use another server",
    /// "server moved"): where the broker says to go.
    pub(super) server_reference: Option<String>,
}

/// Set our callbacks on `mosq`; its userdata is their state.
///
/// # Safety
/// `mosq` is a valid client whose userdata is a `CallbackState` that outlives it.
pub(super) unsafe fn register(mosq: *mut m::mosquitto) {
    // SAFETY: the caller's promise; the callbacks below expect exactly that userdata.
    unsafe {
        m::mosquitto_connect_v5_callback_set(mosq, Some(on_connect));
        m::mosquitto_disconnect_v5_callback_set(mosq, Some(on_disconnect));
        m::mosquitto_publish_v5_callback_set(mosq, Some(on_publish));
        m::mosquitto_log_callback_set(mosq, Some(on_log));
    }
}

unsafe fn state<'a>(obj: *mut c_void) -> &'a mut CallbackState {
    // SAFETY: obj is the Box<CallbackState> address we registered; the client (and so every
    // callback) is destroyed before the box.
    unsafe { &mut *(obj as *mut CallbackState) }
}

/// Run a callback body; a bug must not unwind into libmosquitto's C frames.
fn no_unwind(f: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
        std::process::abort();
    }
}

/// The limits a CONNACK's properties announce (absent ones keep the MQTT defaults).
///
/// # Safety
/// `p` is a property list libmosquitto passed to a callback (or NULL).
unsafe fn read_limits(p: *const m::mosquitto_property) -> Limits {
    let mut l = Limits::default();
    let id = |p: m::mqtt5_property| p as c_int;
    let (mut b, mut s, mut i) = (0u8, 0u16, 0u32);
    // SAFETY: the caller's promise; each read only looks at the list.
    unsafe {
        if !m::mosquitto_property_read_byte(p, id(m::mqtt5_property::MQTT_PROP_MAXIMUM_QOS), &mut b, false).is_null() {
            l.max_qos = b;
        }
        if !m::mosquitto_property_read_byte(p, id(m::mqtt5_property::MQTT_PROP_RETAIN_AVAILABLE), &mut b, false)
            .is_null()
        {
            l.retain_available = b != 0;
        }
        if !m::mosquitto_property_read_int32(p, id(m::mqtt5_property::MQTT_PROP_MAXIMUM_PACKET_SIZE), &mut i, false)
            .is_null()
        {
            l.max_packet_size = i;
        }
        if !m::mosquitto_property_read_int16(p, id(m::mqtt5_property::MQTT_PROP_RECEIVE_MAXIMUM), &mut s, false)
            .is_null()
        {
            l.receive_maximum = s;
        }
        if !m::mosquitto_property_read_int16(p, id(m::mqtt5_property::MQTT_PROP_TOPIC_ALIAS_MAXIMUM), &mut s, false)
            .is_null()
        {
            l.topic_alias_maximum = s;
        }
    }
    l
}

/// The Server Reference property of a CONNACK or DISCONNECT, if any.
///
/// # Safety
/// `p` is a property list libmosquitto passed to a callback (or NULL).
unsafe fn read_server_reference(p: *const m::mosquitto_property) -> Option<String> {
    let mut v: *mut c_char = std::ptr::null_mut();
    let id = m::mqtt5_property::MQTT_PROP_SERVER_REFERENCE as c_int;
    // SAFETY: the caller's promise; libmosquitto mallocs the copy it returns, freed here.
    unsafe {
        if m::mosquitto_property_read_string(p, id, &mut v, false).is_null() || v.is_null() {
            return None;
        }
        let s = CStr::from_ptr(v).to_string_lossy().into_owned();
        libc::free(v as *mut c_void);
        Some(s)
    }
}

unsafe extern "C" fn on_connect(
    mosq: *mut m::mosquitto,
    obj: *mut c_void,
    rc: c_int,
    _flags: c_int,
    p: *const m::mosquitto_property,
) {
    if rc == 0 {
        // SAFETY: p is the CONNACK's property list, valid during the callback.
        let limits = unsafe { read_limits(p) };
        // SAFETY: see `state`.
        no_unwind(|| unsafe { state(obj) }.limits = limits);
        // Connected: stop listening to libmosquitto's log. With a log callback set it formats a
        // debug line (malloc + vsnprintf) for every packet it sends or receives, which `on_log`
        // then throws away — about a quarter of the worker's CPU at QoS 0 (bench/README.md,
        // "CPU per delivered message"). The errors it is kept for (TLS details) come while
        // connecting; a client lives for one connection, so the next one logs again.
        // SAFETY: a valid client; the log mutex is not held during this callback.
        unsafe { m::mosquitto_log_callback_set(mosq, None) };
    } else {
        // SAFETY: as above.
        let reference = unsafe { read_server_reference(p) };
        // SAFETY: see `state`.
        no_unwind(|| unsafe { state(obj) }.server_reference = reference);
    }
    // SAFETY: see `state`.
    no_unwind(|| unsafe { state(obj) }.events.push(Event::Connected(rc)));
}

unsafe extern "C" fn on_disconnect(_: *mut m::mosquitto, obj: *mut c_void, rc: c_int, p: *const m::mosquitto_property) {
    // SAFETY: p is the DISCONNECT's property list (or NULL), valid during the callback.
    let reference = unsafe { read_server_reference(p) };
    no_unwind(|| {
        // SAFETY: see `state`.
        let st = unsafe { state(obj) };
        if reference.is_some() {
            st.server_reference = reference;
        }
        st.events.push(Event::Disconnected(rc));
    });
}

unsafe extern "C" fn on_publish(
    _: *mut m::mosquitto,
    obj: *mut c_void,
    mid: c_int,
    reason: c_int,
    _p: *const m::mosquitto_property,
) {
    no_unwind(|| {
        // SAFETY: see `state`.
        let st = unsafe { state(obj) };
        st.qos2.retain(|m| *m != mid);
        st.events.push(Event::Published { mid, reason });
    });
}

unsafe extern "C" fn on_log(_: *mut m::mosquitto, obj: *mut c_void, level: c_int, msg: *const c_char) {
    if level as u32 & (m::MOSQ_LOG_ERR | m::MOSQ_LOG_WARNING) == 0 || msg.is_null() {
        return;
    }
    // SAFETY: see `state`; msg is a NUL-terminated string valid during the callback.
    no_unwind(|| unsafe { state(obj).last_log_error = Some(CStr::from_ptr(msg).to_string_lossy().into_owned()) });
}
