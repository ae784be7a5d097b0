//! A message's MQTT 5 properties as libmosquitto's linked list, for the messages libmosquitto
//! writes (QoS 1/2, outbox rows, TLS connections). Our own QoS 0 writer copies the stored
//! encoding straight into its packets instead (pure/packet.rs, ADR-010).
//!
//! Invariants: the list is freed when its [`PropList`] drops; libmosquitto copies what it needs
//! during `mosquitto_publish_v5`, so a list lives only as long as that call. Text values are cut
//! at a NUL byte (PostgreSQL text has none).

use super::handoff::Extra;
use crate::pure::props::{self, Prop};
use libmosquitto_sys as m;
use std::ffi::{c_int, c_void, CStr, CString};

/// The id's user property name (props::ID_PROPERTY), NUL-terminated once and for all.
const ID_NAME: &CStr = c"pg-mqtt-pub-id";

/// A mosquitto property list, freed on drop.
pub(super) struct PropList(*mut m::mosquitto_property);

impl PropList {
    /// The list for `mosquitto_publish_v5` (which only reads it).
    pub(super) fn as_ptr(&self) -> *const m::mosquitto_property {
        self.0
    }
}

impl Drop for PropList {
    fn drop(&mut self) {
        // SAFETY: a list built by mosquitto_property_add_*, or NULL.
        unsafe { m::mosquitto_property_free_all(&mut self.0) };
    }
}

fn cstr(b: &[u8]) -> CString {
    // PostgreSQL text has no NUL byte; anything else is cut at the first one.
    CString::new(b.split(|c| *c == 0).next().unwrap_or_default()).unwrap_or_default()
}

/// Build the PUBLISH properties: the stored ones (expiry replaced by what is left) and the id.
pub(super) fn property_list(x: &Extra<'_>) -> Result<PropList, c_int> {
    let mut list = PropList(std::ptr::null_mut());
    let id = |p: u8| p as c_int;
    let rc = |r: c_int| if r == 0 { Ok(()) } else { Err(r) };
    for p in props::decode(x.props) {
        let Ok(p) = p else { return Err(m::mosq_err_t::MOSQ_ERR_INVAL as c_int) };
        // SAFETY: each call appends a copy of its arguments to our list.
        unsafe {
            match p {
                Prop::PayloadFormat(b) => {
                    rc(m::mosquitto_property_add_byte(&mut list.0, id(props::PAYLOAD_FORMAT), b))?
                }
                Prop::MessageExpiry(s) => rc(m::mosquitto_property_add_int32(
                    &mut list.0,
                    id(props::MESSAGE_EXPIRY),
                    x.expiry_left.unwrap_or(s),
                ))?,
                Prop::ContentType(v) => {
                    rc(m::mosquitto_property_add_string(&mut list.0, id(props::CONTENT_TYPE), cstr(v).as_ptr()))?
                }
                Prop::ResponseTopic(v) => {
                    rc(m::mosquitto_property_add_string(&mut list.0, id(props::RESPONSE_TOPIC), cstr(v).as_ptr()))?
                }
                Prop::CorrelationData(v) => rc(m::mosquitto_property_add_binary(
                    &mut list.0,
                    id(props::CORRELATION_DATA),
                    v.as_ptr() as *const c_void,
                    v.len() as u16,
                ))?,
                Prop::User(k, v) => rc(m::mosquitto_property_add_string_pair(
                    &mut list.0,
                    id(props::USER_PROPERTY),
                    cstr(k).as_ptr(),
                    cstr(v).as_ptr(),
                ))?,
            }
        }
    }
    if let Some(mid) = x.id {
        // SAFETY: as above.
        rc(unsafe {
            m::mosquitto_property_add_string_pair(&mut list.0, id(props::USER_PROPERTY), ID_NAME.as_ptr(), mid.as_ptr())
        })?;
    }
    Ok(list)
}
