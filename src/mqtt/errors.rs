//! libmosquitto's error codes and MQTT's reason codes in words, for the worker's log and
//! `mqtt_status().last_error`.
//!
//! Invariants: every function here takes any integer (libmosquitto returns a static string for
//! every input); none allocates inside libmosquitto or keeps a pointer it got from it.
//!
//! Anything in `mqtt/` may use these; the worker reaches them through `mqtt::client`.

use libmosquitto_sys as m;
use std::ffi::{c_int, CStr};

/// How libmosquitto ends a connection that got no answer (no CONNACK, no PINGRESP) within one
/// keepalive interval (MOSQ_ERR_KEEPALIVE).
pub const ERR_KEEPALIVE: i32 = m::mosq_err_t::MOSQ_ERR_KEEPALIVE as i32;

/// `Ok` for MOSQ_ERR_SUCCESS, otherwise "`what`: libmosquitto's text".
pub(super) fn check(rc: c_int, what: &str) -> Result<(), String> {
    if rc == m::mosq_err_t::MOSQ_ERR_SUCCESS as c_int {
        Ok(())
    } else {
        Err(format!("{what}: {}", strerror(rc)))
    }
}

/// libmosquitto's text for an error code (2.0.11 has none for some codes it returns itself).
pub fn strerror(rc: c_int) -> String {
    if rc == ERR_KEEPALIVE {
        return "no answer from the broker within the keepalive interval".into();
    }
    // SAFETY: mosquitto_strerror returns a static string for any input.
    let s = unsafe { CStr::from_ptr(m::mosquitto_strerror(rc)) }.to_string_lossy().into_owned();
    if s.starts_with("Unknown error") {
        format!("libmosquitto error {rc}")
    } else {
        s
    }
}

/// Human text for an MQTT 5 reason code (CONNACK, PUBACK, DISCONNECT).
pub fn reason_string(code: c_int) -> String {
    // SAFETY: returns a static string for any input.
    unsafe { CStr::from_ptr(m::mosquitto_reason_string(code)) }.to_string_lossy().into_owned()
}

/// Human text for an MQTT 3.1/3.1.1 CONNACK code.
pub fn connack_string(code: c_int) -> String {
    // SAFETY: returns a static string for any input.
    unsafe { CStr::from_ptr(m::mosquitto_connack_string(code)) }.to_string_lossy().into_owned()
}
