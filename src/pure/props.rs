//! MQTT 5 message properties as they travel: ring, outbox, dead letters, replay (pure: tested by
//! `cargo test`).
//!
//! A message's properties are kept as one byte string in MQTT 5's own property encoding (without
//! the leading length): an identifier byte, then a byte, a four-byte integer, or length-prefixed
//! UTF-8 strings / binary data. That form is compact, needs no schema of its own, travels through
//! the ring and the `properties bytea` columns unchanged, and its size is exactly what the
//! properties add to the PUBLISH packet (pure/limits.rs). `mqtt_pub.mqtt_properties(bytea)` shows
//! it as jsonb.
//!
//! The message id (`pg-mqtt-pub-id`) and the remaining expiry are not in these bytes: they are
//! added when the message is sent (the id is assigned at commit, the expiry counts down).

/// MQTT 5 property identifiers used on PUBLISH.
pub const PAYLOAD_FORMAT: u8 = 0x01;
pub const MESSAGE_EXPIRY: u8 = 0x02;
pub const CONTENT_TYPE: u8 = 0x03;
pub const RESPONSE_TOPIC: u8 = 0x08;
pub const CORRELATION_DATA: u8 = 0x09;
pub const USER_PROPERTY: u8 = 0x26;

/// The user property that carries the message id.
pub const ID_PROPERTY: &str = "pg-mqtt-pub-id";

/// One property, borrowing its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prop<'a> {
    PayloadFormat(u8),
    /// Seconds, from COMMIT.
    MessageExpiry(u32),
    ContentType(&'a [u8]),
    ResponseTopic(&'a [u8]),
    CorrelationData(&'a [u8]),
    User(&'a [u8], &'a [u8]),
}

/// Why properties cannot be encoded.
#[derive(Debug, PartialEq, Eq)]
pub enum PropError {
    /// A string or binary value over 65,535 bytes (MQTT's two-byte length).
    TooLong(&'static str),
}

fn put_str(out: &mut Vec<u8>, s: &[u8], what: &'static str) -> Result<(), PropError> {
    let n = u16::try_from(s.len()).map_err(|_| PropError::TooLong(what))?;
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(s);
    Ok(())
}

/// Append one property's encoding to `out`.
pub fn encode(out: &mut Vec<u8>, p: &Prop<'_>) -> Result<(), PropError> {
    match *p {
        Prop::PayloadFormat(b) => out.extend_from_slice(&[PAYLOAD_FORMAT, b]),
        Prop::MessageExpiry(s) => {
            out.push(MESSAGE_EXPIRY);
            out.extend_from_slice(&s.to_be_bytes());
        }
        Prop::ContentType(s) => {
            out.push(CONTENT_TYPE);
            put_str(out, s, "content_type")?;
        }
        Prop::ResponseTopic(s) => {
            out.push(RESPONSE_TOPIC);
            put_str(out, s, "response_topic")?;
        }
        Prop::CorrelationData(s) => {
            out.push(CORRELATION_DATA);
            put_str(out, s, "correlation_data")?;
        }
        Prop::User(k, v) => {
            out.push(USER_PROPERTY);
            put_str(out, k, "a user property name")?;
            put_str(out, v, "a user property value")?;
        }
    }
    Ok(())
}

/// Iterate over encoded properties. Bytes this module did not write (a hand-edited outbox row)
/// end the iteration with `Err`.
pub fn decode(mut b: &[u8]) -> impl Iterator<Item = Result<Prop<'_>, ()>> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], ()> {
        if b.len() < n {
            return Err(());
        }
        let (h, t) = b.split_at(n);
        *b = t;
        Ok(h)
    }
    fn string<'a>(b: &mut &'a [u8]) -> Result<&'a [u8], ()> {
        let n = take(b, 2)?;
        take(b, u16::from_be_bytes([n[0], n[1]]) as usize)
    }
    let mut failed = false;
    std::iter::from_fn(move || {
        if b.is_empty() || failed {
            return None;
        }
        let one = (|| {
            let id = take(&mut b, 1)?[0];
            Ok(match id {
                PAYLOAD_FORMAT => Prop::PayloadFormat(take(&mut b, 1)?[0]),
                MESSAGE_EXPIRY => {
                    let s = take(&mut b, 4)?;
                    Prop::MessageExpiry(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
                }
                CONTENT_TYPE => Prop::ContentType(string(&mut b)?),
                RESPONSE_TOPIC => Prop::ResponseTopic(string(&mut b)?),
                CORRELATION_DATA => Prop::CorrelationData(string(&mut b)?),
                USER_PROPERTY => {
                    let k = string(&mut b)?;
                    Prop::User(k, string(&mut b)?)
                }
                _ => return Err(()),
            })
        })();
        failed = one.is_err();
        Some(one)
    })
}

/// The message expiry in the properties, if any (seconds from COMMIT).
pub fn expiry(b: &[u8]) -> Option<u32> {
    decode(b).find_map(|p| match p {
        Ok(Prop::MessageExpiry(s)) => Some(s),
        _ => None,
    })
}

/// Any property besides the payload format indicator (which is implied by the payload type)?
pub fn any_explicit(b: &[u8]) -> bool {
    decode(b).any(|p| !matches!(p, Ok(Prop::PayloadFormat(_))))
}

fn json_str(out: &mut String, s: &[u8]) {
    out.push('"');
    for c in String::from_utf8_lossy(s).chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The properties as JSON text (`mqtt_pub.mqtt_properties()`): `payload_format`,
/// `message_expiry` (seconds), `content_type`, `response_topic`, `correlation_data` (hex, as
/// PostgreSQL writes bytea: `\x...`), `user_properties` (an array of [name, value] pairs, in
/// order). `None` for bytes this module cannot read.
pub fn to_json(b: &[u8]) -> Option<String> {
    let mut fields: Vec<String> = Vec::new();
    let mut users: Vec<String> = Vec::new();
    for p in decode(b) {
        let mut f = String::new();
        match p.ok()? {
            Prop::PayloadFormat(v) => f.push_str(&format!("\"payload_format\": {v}")),
            Prop::MessageExpiry(s) => f.push_str(&format!("\"message_expiry\": {s}")),
            Prop::ContentType(s) => {
                f.push_str("\"content_type\": ");
                json_str(&mut f, s);
            }
            Prop::ResponseTopic(s) => {
                f.push_str("\"response_topic\": ");
                json_str(&mut f, s);
            }
            Prop::CorrelationData(s) => {
                let hex: String = s.iter().map(|b| format!("{b:02x}")).collect();
                f.push_str(&format!("\"correlation_data\": \"\\\\x{hex}\""));
            }
            Prop::User(k, v) => {
                let mut u = String::from("[");
                json_str(&mut u, k);
                u.push_str(", ");
                json_str(&mut u, v);
                u.push(']');
                users.push(u);
                continue;
            }
        }
        fields.push(f);
    }
    if !users.is_empty() {
        fields.push(format!("\"user_properties\": [{}]", users.join(", ")));
    }
    Some(format!("{{{}}}", fields.join(", ")))
}

/// The properties of a trigger helper's change event: JSON (payload format 1, content type
/// `application/json`) and user properties to route on without parsing the payload: `pg-table`
/// (schema-qualified, quoted as needed), `pg-operation` (INSERT, UPDATE, DELETE) and `pg-xid`
/// (the 64-bit transaction id, as in the envelope's `txid`).
pub fn change_event(out: &mut Vec<u8>, table: &[u8], operation: &str, txid: u64) {
    let xid = txid.to_string();
    for p in [
        Prop::PayloadFormat(1),
        Prop::ContentType(b"application/json"),
        Prop::User(b"pg-table", table),
        Prop::User(b"pg-operation", operation.as_bytes()),
        Prop::User(b"pg-xid", xid.as_bytes()),
    ] {
        // a table name is at most 2 × 63 bytes plus quotes: never too long
        let _ = encode(out, &p);
    }
}

/// Whole seconds left until `expires_at` (both µs timestamps), rounded up (MQTT counts whole
/// seconds: a message with 0.2 s left goes out with 1); `Err(µs late)` once it has passed.
pub fn seconds_left(expires_at: i64, now: i64) -> Result<u32, i64> {
    let left = expires_at.saturating_sub(now);
    if left <= 0 {
        return Err(-left);
    }
    Ok(((left + 999_999) / 1_000_000).min(u32::MAX as i64) as u32)
}

/// The reason an expired message was not sent (dead letter, `last_error`).
pub fn expired_why(late_us: i64) -> String {
    format!("its message expiry ran out {:.1} s before it could be sent", late_us as f64 / 1e6)
}

/// Append the message id, `<instance>-<sequence>`, to `out`. `instance` is fixed for one run of one cluster
/// ([`id_instance`]); the sequence counts messages in shared memory from 1.
pub fn write_message_id(out: &mut Vec<u8>, instance: &str, seq: u64) {
    use std::io::Write;
    let _ = write!(out, "{instance}-{seq}");
}

/// The instance part of message ids: the system identifier, a hash of host, data directory and
/// port (identity.rs: it tells clones of one base backup apart), and the server's start time in
/// microseconds (a new run never reuses a run's ids, since the sequence starts again at 1).
pub fn id_instance(system_id: u64, instance_hash: u32, started_us: i64) -> String {
    format!("{system_id:x}-{instance_hash:08x}-{started_us:x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(ps: &[Prop<'_>]) -> Vec<u8> {
        let mut v = Vec::new();
        for p in ps {
            encode(&mut v, p).unwrap();
        }
        v
    }

    #[test]
    fn round_trip_keeps_order_and_repeats() {
        let ps = [
            Prop::PayloadFormat(1),
            Prop::MessageExpiry(30),
            Prop::ContentType(b"application/json"),
            Prop::ResponseTopic(b"reply/to"),
            Prop::CorrelationData(&[0, 1, 255]),
            Prop::User(b"k", b"v1"),
            Prop::User(b"k", b"v2"),
            Prop::User(b"", b""),
        ];
        let b = enc(&ps);
        let back: Vec<Prop<'_>> = decode(&b).map(|p| p.unwrap()).collect();
        assert_eq!(back, ps);
        assert_eq!(expiry(&b), Some(30));
        assert!(any_explicit(&b));
        assert!(!any_explicit(&enc(&[Prop::PayloadFormat(1)])));
    }

    #[test]
    fn encoding_is_mqtt_5() {
        // identifier, then a two-byte length and the bytes (MQTT 5, 2.2.2.2)
        assert_eq!(enc(&[Prop::ContentType(b"ab")]), vec![0x03, 0, 2, b'a', b'b']);
        assert_eq!(enc(&[Prop::MessageExpiry(258)]), vec![0x02, 0, 0, 1, 2]);
        assert_eq!(enc(&[Prop::User(b"a", b"b")]), vec![0x26, 0, 1, b'a', 0, 1, b'b']);
    }

    #[test]
    fn too_long_is_refused() {
        let long = vec![b'x'; 65_536];
        assert_eq!(encode(&mut Vec::new(), &Prop::ContentType(&long)), Err(PropError::TooLong("content_type")));
        assert!(encode(&mut Vec::new(), &Prop::ContentType(&long[..65_535])).is_ok());
    }

    #[test]
    fn garbage_ends_in_an_error() {
        assert_eq!(decode(&[0x03, 0, 5, b'a']).collect::<Vec<_>>(), vec![Err(())]);
        assert_eq!(decode(&[0x7f]).collect::<Vec<_>>(), vec![Err(())]);
        assert_eq!(to_json(&[0x7f]), None);
    }

    #[test]
    fn json_shows_every_property() {
        let b = enc(&[
            Prop::PayloadFormat(1),
            Prop::MessageExpiry(5),
            Prop::ContentType(b"t\"x"),
            Prop::CorrelationData(&[0xab, 1]),
            Prop::User(b"a", b"1"),
            Prop::User(b"a", b"2"),
        ]);
        assert_eq!(
            to_json(&b).unwrap(),
            r#"{"payload_format": 1, "message_expiry": 5, "content_type": "t\"x", "correlation_data": "\\xab01", "user_properties": [["a", "1"], ["a", "2"]]}"#
        );
        assert_eq!(to_json(&[]).unwrap(), "{}");
    }

    #[test]
    fn expiry_counts_down_in_whole_seconds() {
        assert_eq!(seconds_left(10_000_000, 0), Ok(10));
        assert_eq!(seconds_left(10_000_000, 9_800_000), Ok(1));
        assert_eq!(seconds_left(10_000_000, 10_000_000), Err(0));
        assert_eq!(seconds_left(10_000_000, 12_500_000), Err(2_500_000));
        assert!(expired_why(2_500_000).contains("2.5 s"));
    }

    #[test]
    fn ids() {
        let mut id = Vec::new();
        write_message_id(&mut id, &id_instance(0xab, 0x1234, 0x10), 7);
        assert_eq!(id, b"ab-00001234-10-7");
    }
}
