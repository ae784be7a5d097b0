//! The libmosquitto client object itself: created with the broker's options (protocol,
//! credentials, TLS) and our callbacks, called through the few methods here, destroyed on drop.
//!
//! Invariants:
//! * A [`Session`] owns exactly one valid `mosquitto` object from `new` until it drops; every
//!   method may assume it. It is used by one thread at a time (the worker's main thread, or the
//!   helper thread that connects, worker/link.rs); never `mosquitto_loop_start`.
//! * Its userdata is the caller's boxed `CallbackState` (callbacks.rs), which must outlive it:
//!   client.rs declares its session before that box, so the object is destroyed first.
//! * This file decides nothing about which of the connection's two writers (libmosquitto's
//!   queue, our own QoS 0 writer) may write when: client.rs and qos0_writer.rs do (ADR-010).
//!
//! Nothing here touches PostgreSQL symbols.

use super::callbacks::{self, CallbackState};
use super::errors::check;
use libmosquitto_sys as m;
use std::ffi::{c_char, c_int, c_void, CStr, CString};

/// `ClientOptions::protocol` for MQTT 5 (libmosquitto's MQTT_PROTOCOL_V5).
pub const MQTT_V5: i32 = 5;

/// The largest packet the worker accepts from a broker (announced in CONNECT, MQTT 5).
pub const MAX_INCOMING_PACKET: u32 = 256 * 1024;

/// Everything needed to create a client.
pub struct ClientOptions<'a> {
    /// The broker's name in pg_mqtt_pub (for messages).
    pub broker: &'a str,
    pub client_id: &'a str,
    pub protocol: i32,
    pub max_inflight: u32,
    pub username: &'a str,
    pub password: &'a str,
    pub use_tls: bool,
    pub ca_cert: &'a str,
    pub client_cert: &'a str,
    pub client_key: &'a str,
    /// Lowest TLS version: "tlsv1.2" or "tlsv1.3" (libmosquitto disables older ones).
    pub tls_version: &'a str,
    /// The node's host name, when the client connects to one of its addresses: TLS verifies the
    /// certificate against it (tls_name.rs). `None`: against the host connected to.
    pub tls_name: Option<&'a str>,
}

fn opt(s: &CString) -> *const c_char {
    if s.as_bytes().is_empty() {
        std::ptr::null()
    } else {
        s.as_ptr()
    }
}

pub(super) fn cstring(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("value contains a NUL byte: {s:?}"))
}

/// One libmosquitto client object (see the file's invariants).
pub(super) struct Session(*mut m::mosquitto);

impl Session {
    /// Create the client with `o`'s options and our callbacks, recording into `state`.
    ///
    /// # Safety
    /// `state` stays valid, at this address, until the returned session has dropped.
    pub(super) unsafe fn new(o: &ClientOptions<'_>, state: *mut CallbackState) -> Result<Session, String> {
        // Checked here too (a row written before 1.6, or by hand): libmosquitto must never refuse
        // it (see settings_rules::client_id).
        crate::pure::settings_rules::sent_client_id(o.client_id, 65_535).map_err(|e| e.message)?;
        let id = cstring(o.client_id)?;
        // SAFETY: mosquitto_lib_init was called once by the worker; the userdata pointer stays
        // valid (the caller's promise). On an error below, `s` drops and destroys the object.
        unsafe {
            let mosq = m::mosquitto_new(id.as_ptr(), true, state as *mut c_void);
            if mosq.is_null() {
                return Err("could not create an MQTT client (out of memory or invalid client id)".into());
            }
            let s = Session(mosq);
            check(
                m::mosquitto_int_option(mosq, m::mosq_opt_t::MOSQ_OPT_PROTOCOL_VERSION, o.protocol),
                "protocol version",
            )?;
            check(m::mosquitto_int_option(mosq, m::mosq_opt_t::MOSQ_OPT_TCP_NODELAY, 1), "TCP_NODELAY")?;
            check(m::mosquitto_max_inflight_messages_set(mosq, o.max_inflight), "max inflight")?;
            if !o.username.is_empty() {
                let u = cstring(o.username)?;
                let p = cstring(o.password)?;
                let pp = if o.password.is_empty() { std::ptr::null() } else { p.as_ptr() };
                check(m::mosquitto_username_pw_set(mosq, u.as_ptr(), pp), "username/password")?;
            }
            if let (true, Some(name)) = (o.use_tls, o.tls_name) {
                // An address of a named node: our own context checks the name (tls_name.rs).
                let t = super::tls_name::Tls {
                    name,
                    ca_cert: o.ca_cert,
                    client_cert: o.client_cert,
                    client_key: o.client_key,
                    tls_version: if o.tls_version.is_empty() { "tlsv1.2" } else { o.tls_version },
                };
                super::tls_name::use_context(mosq, &t)?;
            } else if o.use_tls {
                let (ca, cert, key) = (cstring(o.ca_cert)?, cstring(o.client_cert)?, cstring(o.client_key)?);
                if o.ca_cert.is_empty() {
                    // no CA file: trust the operating system's store
                    check(
                        m::mosquitto_int_option(mosq, m::mosq_opt_t::MOSQ_OPT_TLS_USE_OS_CERTS, 1),
                        "TLS OS certificates",
                    )?;
                }
                if !o.ca_cert.is_empty() || !o.client_cert.is_empty() {
                    // libmosquitto checks the files exist here; the server certificate and host
                    // name (an address) are verified during the handshake (tls_insecure stays
                    // false).
                    check(
                        m::mosquitto_tls_set(mosq, opt(&ca), std::ptr::null(), opt(&cert), opt(&key), None),
                        "TLS files",
                    )?;
                }
                let v = cstring(if o.tls_version.is_empty() { "tlsv1.2" } else { o.tls_version })?;
                check(m::mosquitto_tls_opts_set(mosq, 1, v.as_ptr(), std::ptr::null()), "TLS version")?;
            }
            callbacks::register(mosq);
            Ok(s)
        }
    }

    /// The object, for the calls client.rs makes itself (connect, publish).
    pub(super) fn ptr(&self) -> *mut m::mosquitto {
        self.0
    }

    /// The MQTT 5 CONNECT properties: a Maximum Packet Size, so that a broker does not send us
    /// a packet larger than [`MAX_INCOMING_PACKET`] (libmosquitto would allocate whatever size a
    /// packet announces, up to 256 MB; the worker never subscribes and expects only
    /// acknowledgements).
    ///
    /// libmosquitto 2.0 has no asynchronous connect that takes CONNECT properties, but
    /// `mosquitto_connect_bind_v5` stores them on the client *before* it validates its other
    /// arguments, and the asynchronous connect sends what is stored. Called with an invalid
    /// keepalive (1 s; 0 or 5..65535 are valid) it stores them and returns MOSQ_ERR_INVAL
    /// without touching the network. (lib/connect.c, identical from 2.0.0 to 2.0.21.)
    pub(super) fn set_connect_properties(&self, host: &CStr, port: u16) -> Result<(), String> {
        let mut props: *mut m::mosquitto_property = std::ptr::null_mut();
        // SAFETY: a fresh property list, freed below (libmosquitto keeps its own copy).
        unsafe {
            let id = m::mqtt5_property::MQTT_PROP_MAXIMUM_PACKET_SIZE as c_int;
            check(m::mosquitto_property_add_int32(&mut props, id, MAX_INCOMING_PACKET), "CONNECT properties")?;
            let rc = m::mosquitto_connect_bind_v5(self.0, host.as_ptr(), port as c_int, 1, std::ptr::null(), props);
            m::mosquitto_property_free_all(&mut props);
            if rc != m::mosq_err_t::MOSQ_ERR_INVAL as c_int {
                return Err(format!("could not set the CONNECT properties (libmosquitto returned {rc})"));
            }
        }
        Ok(())
    }

    pub(super) fn socket(&self) -> c_int {
        // SAFETY: valid client.
        unsafe { m::mosquitto_socket(self.0) }
    }

    /// libmosquitto's own queue has bytes to write.
    pub(super) fn wants_write(&self) -> bool {
        // SAFETY: valid client.
        unsafe { m::mosquitto_want_write(self.0) }
    }

    /// Read what the socket has; a MOSQ_ERR code (non-zero = connection dropped).
    pub(super) fn loop_read(&self) -> c_int {
        // SAFETY: valid client, one thread at a time.
        unsafe { m::mosquitto_loop_read(self.0, 1) }
    }

    /// Write what libmosquitto's queue holds, as much as the socket takes.
    pub(super) fn loop_write(&self) {
        // SAFETY: valid client, one thread at a time.
        unsafe { m::mosquitto_loop_write(self.0, 1) };
    }

    /// libmosquitto's keepalive (PINGREQ) and ping-timeout handling.
    pub(super) fn loop_misc(&self) -> c_int {
        // SAFETY: valid client, one thread at a time.
        unsafe { m::mosquitto_loop_misc(self.0) }
    }

    /// Queue a DISCONNECT (completion arrives as `Event::Disconnected(0)`).
    pub(super) fn disconnect(&self) {
        // SAFETY: valid client; harmless when not connected.
        unsafe { m::mosquitto_disconnect(self.0) };
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // SAFETY: we own the client; after this no callback can reference its state.
        unsafe { m::mosquitto_destroy(self.0) };
    }
}

/// Call once per process before creating clients.
pub fn lib_init() {
    // SAFETY: plain library initialisation.
    unsafe { m::mosquitto_lib_init() };
}
