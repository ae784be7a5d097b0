//! The QoS 0 PUBLISH packet, byte for byte (pure: tested by `cargo test`).
//!
//! The worker writes QoS 0 packets of ring records itself, many per `send()`, on the socket of
//! the libmosquitto connection (mqtt/qos0_writer.rs, ADR-010): libmosquitto writes every packet with
//! its own `send()`, wakes a thread we do not run through a socketpair per packet, and rebuilds
//! the properties as a malloc'd list per message. QoS 1 and 2 stay with libmosquitto, which has
//! to know their packet ids to match the acknowledgements.
//!
//! The packet is what MQTT 3.1.1 §3.3 / MQTT 5 §3.3 define and libmosquitto sends: fixed header
//! (type 3, DUP 0, QoS 0, RETAIN), remaining length, topic, [MQTT 5: property length and
//! properties], payload. Its size is exactly `limits::publish_packet_size`, which the broker's
//! Maximum Packet Size was checked against.

use super::limits::varint_len;
use super::props::{self, Prop};

/// Append an MQTT variable byte integer.
fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let b = (n % 128) as u8;
        n /= 128;
        if n == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// What goes into one QoS 0 PUBLISH besides topic and payload.
#[derive(Clone, Copy, Default)]
pub struct Publish<'a> {
    pub retain: bool,
    /// MQTT 5 (properties are written) or 3.1.1 (they are left out).
    pub v5: bool,
    /// The stored properties (props.rs encoding).
    pub props: &'a [u8],
    /// Replaces the message expiry in `props`: what is left of it.
    pub expiry_left: Option<u32>,
    /// The message id, sent as the user property `pg-mqtt-pub-id`.
    pub id: Option<&'a [u8]>,
}

/// Bytes the message id's user property takes.
pub fn id_property_len(id: Option<&[u8]>) -> usize {
    id.map_or(0, |i| 1 + 2 + props::ID_PROPERTY.len() + 2 + i.len())
}

/// The packet cannot be written: `props` are not bytes props.rs wrote, or a length is beyond
/// what MQTT can say.
#[derive(Debug, PartialEq, Eq)]
pub struct Unencodable;

/// Append a QoS 0 PUBLISH packet to `out` (nothing on `Err`).
pub fn encode_qos0(out: &mut Vec<u8>, topic: &[u8], payload: &[u8], p: &Publish<'_>) -> Result<(), Unencodable> {
    let start = out.len();
    let props_len = if p.v5 { p.props.len() + id_property_len(p.id) } else { 0 };
    let topic_len = u16::try_from(topic.len()).map_err(|_| Unencodable)?;
    let props_field = if p.v5 { varint_len(props_len) + props_len } else { 0 };
    let remaining = 2 + topic.len() + props_field + payload.len();
    if remaining > 268_435_455 {
        return Err(Unencodable); // beyond MQTT's largest packet
    }
    out.reserve(1 + 4 + remaining);
    out.push(0x30 | p.retain as u8);
    put_varint(out, remaining);
    out.extend_from_slice(&topic_len.to_be_bytes());
    out.extend_from_slice(topic);
    if p.v5 {
        put_varint(out, props_len);
        let written = write_properties(out, p);
        let header = 1 + varint_len(remaining) + 2 + topic.len() + varint_len(props_len) + props_len;
        if written.is_err() || out.len() - start != header {
            out.truncate(start);
            return Err(Unencodable);
        }
    }
    out.extend_from_slice(payload);
    Ok(())
}

/// The stored properties, the expiry replaced by what is left of it, then the message id.
fn write_properties(out: &mut Vec<u8>, p: &Publish<'_>) -> Result<(), Unencodable> {
    for prop in props::decode(p.props) {
        let prop = match prop.map_err(|()| Unencodable)? {
            Prop::MessageExpiry(s) => Prop::MessageExpiry(p.expiry_left.unwrap_or(s)),
            other => other,
        };
        props::encode(out, &prop).map_err(|_| Unencodable)?;
    }
    if let Some(id) = p.id {
        props::encode(out, &Prop::User(props::ID_PROPERTY.as_bytes(), id)).map_err(|_| Unencodable)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pure::limits::publish_packet_size;

    fn props_of(ps: &[Prop<'_>]) -> Vec<u8> {
        let mut v = Vec::new();
        for p in ps {
            props::encode(&mut v, p).unwrap();
        }
        v
    }

    #[test]
    fn mqtt311_packet_is_header_topic_payload() {
        let mut out = Vec::new();
        encode_qos0(&mut out, b"a/b", b"hi", &Publish { retain: true, ..Default::default() }).unwrap();
        assert_eq!(out, [0x31, 7, 0, 3, b'a', b'/', b'b', b'h', b'i']);
    }

    #[test]
    fn mqtt5_without_properties_has_an_empty_property_length() {
        let mut out = Vec::new();
        encode_qos0(&mut out, b"t", b"x", &Publish { v5: true, ..Default::default() }).unwrap();
        assert_eq!(out, [0x30, 5, 0, 1, b't', 0, b'x']);
    }

    #[test]
    fn properties_expiry_replaced_and_id_appended() {
        let stored = props_of(&[Prop::PayloadFormat(1), Prop::MessageExpiry(60), Prop::ContentType(b"a/j")]);
        let p = Publish { v5: true, props: &stored, expiry_left: Some(7), id: Some(b"x-1"), ..Default::default() };
        let mut out = vec![0xEE]; // appended after what is there
        encode_qos0(&mut out, b"t", b"pay", &p).unwrap();
        let body = &out[1..];
        assert_eq!(body.len() as u64, publish_packet_size(1, 3, 0, true, stored.len() + id_property_len(p.id)));
        // fixed header, remaining length, topic
        assert_eq!(&body[..5], &[0x30, body.len() as u8 - 2, 0, 1, b't']);
        let plen = body[5] as usize;
        let got: Vec<_> = props::decode(&body[6..6 + plen]).map(|p| p.unwrap()).collect();
        assert_eq!(
            got,
            [
                Prop::PayloadFormat(1),
                Prop::MessageExpiry(7),
                Prop::ContentType(b"a/j"),
                Prop::User(b"pg-mqtt-pub-id", b"x-1")
            ]
        );
        assert_eq!(&body[6 + plen..], b"pay");
    }

    #[test]
    fn size_matches_the_limit_check_across_varint_boundaries() {
        for payload in [0usize, 100, 127, 128, 16_380, 16_383, 16_384, 2_100_000] {
            for v5 in [false, true] {
                let stored = props_of(&[Prop::User(b"k", &[b'v'; 120])]);
                let p = Publish { v5, props: &stored, id: Some(b"abc"), ..Default::default() };
                let mut out = Vec::new();
                encode_qos0(&mut out, b"topic/x", &vec![7u8; payload], &p).unwrap();
                let props_len = if v5 { stored.len() + id_property_len(p.id) } else { 0 };
                assert_eq!(out.len() as u64, publish_packet_size(7, payload, 0, v5, props_len), "{payload} {v5}");
            }
        }
    }

    #[test]
    fn malformed_stored_properties_append_nothing() {
        let mut out = vec![1, 2];
        let p = Publish { v5: true, props: &[0x7f, 0], ..Default::default() };
        assert!(encode_qos0(&mut out, b"t", b"x", &p).is_err());
        assert_eq!(out, [1, 2]);
    }
}
