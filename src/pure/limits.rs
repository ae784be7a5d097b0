//! A broker's limits and how a refusal is treated (pure: tested by `cargo test`).
//!
//! An MQTT 5 broker announces in its CONNACK what it will take: Maximum QoS, Retain Available,
//! Maximum Packet Size, Receive Maximum, Topic Alias Maximum. A message beyond one of them can
//! never be delivered to that broker as it is, so it is refused where the user sees it: in the
//! caller's statement once the limits are known (backend/publish.rs), otherwise as a dead letter
//! at once with the reason (worker/failures.rs) — not after `poison_max_attempts` tries.
//! A QoS above the broker's maximum is refused, never downgraded: a QoS 1 caller asked for
//! at-least-once, and a silent QoS 0 would drop messages the caller believes are safe.
//!
//! The broker can also refuse a message it received (PUBACK/PUBREC reason >= 0x80). [`verdict`]
//! sorts those: busy or over quota is the broker's state, not the message's fault (retried,
//! not charged); the rest count as a failed attempt (poison handling); a few say the message
//! itself can never be accepted (dead-lettered at once).

/// What a broker's CONNACK allows. A 3.1.1 broker announces nothing: the MQTT defaults apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_qos: u8,
    pub retain_available: bool,
    /// Largest packet the broker accepts, in bytes; 0 = no limit announced.
    pub max_packet_size: u32,
    /// How many QoS 1/2 messages may be unacknowledged at once.
    pub receive_maximum: u16,
    pub topic_alias_maximum: u16,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_qos: 2,
            retain_available: true,
            max_packet_size: 0,
            receive_maximum: 65535,
            topic_alias_maximum: 0,
        }
    }
}

/// Bytes of an MQTT variable byte integer.
pub fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Size on the wire of a PUBLISH packet: fixed header, topic, packet id (QoS > 0), properties
/// (MQTT 5 only: their length prefix even when empty) and payload.
pub fn publish_packet_size(topic: usize, payload: usize, qos: u8, v5: bool, properties: usize) -> u64 {
    let props = if v5 { varint_len(properties) + properties } else { 0 };
    let remaining = 2 + topic + if qos > 0 { 2 } else { 0 } + props + payload;
    (1 + varint_len(remaining) + remaining) as u64
}

/// Why a broker cannot take a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Beyond {
    Qos { asked: u8, max: u8 },
    Retain,
    PacketSize { size: u64, max: u32 },
}

impl Limits {
    /// Can a message of this QoS, retain flag and packet size go to this broker?
    pub fn admit(&self, qos: u8, retain: bool, packet_size: u64) -> Result<(), Beyond> {
        if qos > self.max_qos {
            return Err(Beyond::Qos { asked: qos, max: self.max_qos });
        }
        if retain && !self.retain_available {
            return Err(Beyond::Retain);
        }
        if self.max_packet_size > 0 && packet_size > self.max_packet_size as u64 {
            return Err(Beyond::PacketSize { size: packet_size, max: self.max_packet_size });
        }
        Ok(())
    }
}

impl Beyond {
    /// The reason, as `mqtt_status().last_error`, the dead letter and the ERROR say it.
    pub fn message(&self, broker: &str) -> String {
        match self {
            Beyond::Qos { asked, max } => {
                format!("broker \"{broker}\" grants maximum QoS {max}; this message asks for QoS {asked}")
            }
            Beyond::Retain => format!("broker \"{broker}\" does not support retained messages"),
            Beyond::PacketSize { size, max } => {
                format!("the MQTT packet would take {size} bytes; broker \"{broker}\" takes at most {max}")
            }
        }
    }

    pub fn hint(&self) -> String {
        match self {
            Beyond::Qos { max, .. } => format!(
                "Publish with qos := {max} or lower, or raise the broker's maximum QoS. pg_mqtt_pub never downgrades a message's QoS."
            ),
            Beyond::Retain => "Publish with retain := false, or enable retained messages on the broker.".into(),
            Beyond::PacketSize { .. } => {
                "Publish a smaller payload, or raise the broker's maximum packet size.".into()
            }
        }
    }
}

/// What the worker does with a message the broker refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The broker's state, not the message: try again later without counting an attempt.
    Retry,
    /// Count a failed attempt; dead-lettered after `poison_max_attempts` (backoff in between).
    Charge,
    /// The message can never be accepted as it is: dead-lettered at once.
    DeadLetter,
    /// Its message expiry ran out before it could be sent: not sent, counted, dropped (or
    /// dead-lettered, as `pg_mqtt_pub.dead_letter_expired` says).
    Expired,
}

/// MQTT 5 reason codes of PUBACK/PUBREC (and a DISCONNECT that ends a connection because of one).
pub const QUOTA_EXCEEDED: i32 = 0x97;
pub const SERVER_BUSY: i32 = 0x89;
pub const NOT_AUTHORIZED: i32 = 0x87;
pub const TOPIC_NAME_INVALID: i32 = 0x90;
pub const PACKET_TOO_LARGE: i32 = 0x95;
pub const PAYLOAD_FORMAT_INVALID: i32 = 0x99;

/// Sort a refusal reason code (>= 0x80). "Not authorized" is charged, not dead-lettered at once:
/// an ACL is often fixed within minutes (the backoff gives it that time), and `replay` exists for
/// what ran out of attempts. Codes MQTT does not define for PUBACK are charged too.
pub fn verdict(reason: i32) -> Verdict {
    match reason {
        QUOTA_EXCEEDED | SERVER_BUSY => Verdict::Retry,
        TOPIC_NAME_INVALID | PACKET_TOO_LARGE | PAYLOAD_FORMAT_INVALID => Verdict::DeadLetter,
        _ => Verdict::Charge,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_size_counts_every_header() {
        // 1 fixed header + 1 length + 2 topic length + 1 topic + 1 payload
        assert_eq!(publish_packet_size(1, 1, 0, false, 0), 6);
        // + packet id + properties length byte
        assert_eq!(publish_packet_size(1, 1, 1, true, 0), 9);
        // the remaining length needs a second byte from 128 on
        assert_eq!(publish_packet_size(1, 124, 0, false, 0), 1 + 1 + 127);
        assert_eq!(publish_packet_size(1, 125, 0, false, 0), 1 + 2 + 128);
        assert_eq!(publish_packet_size(3, 10, 2, true, 200), (1 + 2 + 2 + 3 + 2 + 2 + 200 + 10) as u64);
    }

    #[test]
    fn defaults_admit_everything() {
        assert_eq!(Limits::default().admit(2, true, u32::MAX as u64 + 1), Ok(()));
    }

    #[test]
    fn each_limit_refuses_with_its_reason() {
        let l = Limits { max_qos: 0, retain_available: false, max_packet_size: 100, ..Limits::default() };
        assert_eq!(l.admit(1, false, 10), Err(Beyond::Qos { asked: 1, max: 0 }));
        assert_eq!(l.admit(0, true, 10), Err(Beyond::Retain));
        assert_eq!(l.admit(0, false, 101), Err(Beyond::PacketSize { size: 101, max: 100 }));
        assert_eq!(l.admit(0, false, 100), Ok(()));
        assert!(Beyond::Qos { asked: 1, max: 0 }.message("b").contains("maximum QoS 0"));
    }

    #[test]
    fn reason_codes_are_sorted() {
        assert_eq!(verdict(QUOTA_EXCEEDED), Verdict::Retry);
        assert_eq!(verdict(SERVER_BUSY), Verdict::Retry);
        assert_eq!(verdict(NOT_AUTHORIZED), Verdict::Charge);
        assert_eq!(verdict(0x80), Verdict::Charge);
        for c in [TOPIC_NAME_INVALID, PACKET_TOO_LARGE, PAYLOAD_FORMAT_INVALID] {
            assert_eq!(verdict(c), Verdict::DeadLetter, "0x{c:02x}");
        }
    }
}
