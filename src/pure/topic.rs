//! Validation of what a caller hands to the publish functions: topic names and QoS.
//!
//! Pure logic, no PostgreSQL symbols: `cargo test` runs it. The SQL layer (`publish.rs`) maps a
//! [`TopicError`] to an ERROR with SQLSTATE 22023 and the message/detail/hint given here, so the
//! wording lives next to the rule it explains.
//!
//! The rules are MQTT 5.0 §4.7 (topic names) and §1.5.4 (UTF-8 strings), applied the way
//! libmosquitto applies them in `mosquitto_validate_utf8` + `mosquitto_pub_topic_check`: checking
//! here first means a bad topic fails in the caller's statement, with a clear message, instead of
//! being refused later inside the worker where nobody is watching.

/// Longest topic name MQTT can encode (a two-byte length prefix).
pub const MAX_TOPIC_BYTES: usize = 65_535;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicError {
    Empty,
    TooLong(usize),
    Wildcard(char),
    Reserved,
    InvalidUtf8,
    ForbiddenChar { ch: char, at: usize },
}

impl TopicError {
    pub fn message(&self, topic_for_display: &str) -> String {
        match self {
            TopicError::Empty => "MQTT topic must not be empty".into(),
            TopicError::TooLong(n) => format!("MQTT topic is too long ({n} bytes)"),
            _ => format!("invalid MQTT topic {}", quoted(topic_for_display)),
        }
    }

    pub fn detail(&self) -> String {
        match self {
            TopicError::Empty => "A topic name needs at least one character.".into(),
            TopicError::TooLong(_) => {
                format!("MQTT topic names are limited to {MAX_TOPIC_BYTES} bytes in UTF-8.")
            }
            TopicError::Wildcard(_) => "Topic names used for publishing must not contain the \
                                        wildcards \"+\" or \"#\"."
                .into(),
            TopicError::Reserved => "Topics beginning with \"$\" are reserved for the broker's own use.".into(),
            TopicError::InvalidUtf8 => "The topic is not valid UTF-8.".into(),
            TopicError::ForbiddenChar { ch, at } => format!(
                "The topic contains the character U+{:04X} at byte {at}; MQTT forbids control \
                 characters and Unicode non-characters in topic names.",
                *ch as u32
            ),
        }
    }

    pub fn hint(&self) -> &'static str {
        match self {
            TopicError::Wildcard(_) => {
                "Wildcards are for subscriptions; publish to one concrete topic such as \"a/b/c\"."
            }
            TopicError::Reserved => "Choose a topic that does not start with \"$\".",
            TopicError::Empty | TopicError::TooLong(_) => "Use a topic such as \"sensors/room1/temperature\".",
            TopicError::InvalidUtf8 | TopicError::ForbiddenChar { .. } => {
                "Remove the offending character from the topic."
            }
        }
    }
}

/// A name (topic, broker) for an error message, as SQL would write it: `"a/b"`, or with a
/// control character an escape string constant you can paste back into SQL, `E'a\x01'`, so the
/// message itself stays printable. A 60 kB topic must not produce a 60 kB error line: past 80
/// characters it is cut (`...`).
pub fn quoted(s: &str) -> String {
    const MAX: usize = 80;
    let escape = s.chars().take(MAX).any(char::is_control);
    let mut out = String::from(if escape { "E'" } else { "\"" });
    for (i, c) in s.chars().enumerate() {
        if i == MAX {
            out.push_str("...");
            break;
        }
        match c {
            '\'' if escape => out.push_str("''"),
            '\\' if escape => out.push_str("\\\\"),
            c if c.is_control() && (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push(if escape { '\'' } else { '"' });
    out
}

/// Characters MQTT topic names must not contain (besides U+0000): C0/C1 controls and the
/// Unicode non-characters. Matches libmosquitto's `mosquitto_validate_utf8`.
fn forbidden(c: char) -> bool {
    let u = c as u32;
    u == 0
        || (0x01..=0x1F).contains(&u)
        || (0x7F..=0x9F).contains(&u)
        || (0xFDD0..=0xFDEF).contains(&u)
        || (u & 0xFFFE) == 0xFFFE
}

/// The first character MQTT forbids in its UTF-8 strings (topic names, and the strings of
/// properties: content type, user properties), and its byte offset.
pub fn first_forbidden(s: &str) -> Option<(char, usize)> {
    s.char_indices().find(|(_, c)| forbidden(*c)).map(|(at, c)| (c, at))
}

/// Check a topic (already converted to UTF-8 bytes) for publishing.
pub fn validate_topic(topic: &[u8]) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong(topic.len()));
    }
    let s = std::str::from_utf8(topic).map_err(|_| TopicError::InvalidUtf8)?;
    if s.starts_with('$') {
        return Err(TopicError::Reserved);
    }
    for (at, ch) in s.char_indices() {
        if ch == '+' || ch == '#' {
            return Err(TopicError::Wildcard(ch));
        }
        if forbidden(ch) {
            return Err(TopicError::ForbiddenChar { ch, at });
        }
    }
    Ok(())
}

/// QoS must be 0, 1 or 2.
pub fn validate_qos(qos: i32) -> Result<u8, String> {
    match qos {
        0..=2 => Ok(qos as u8),
        _ => Err(format!("invalid MQTT QoS {qos}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_topics() {
        for t in ["a", "a/b/c", "/leading", "trailing/", "a//b", "ünïcödé/温度", "sp ace"] {
            assert_eq!(validate_topic(t.as_bytes()), Ok(()), "{t}");
        }
        let max = "x".repeat(MAX_TOPIC_BYTES);
        assert_eq!(validate_topic(max.as_bytes()), Ok(()));
    }

    #[test]
    fn rejects_bad_topics() {
        assert_eq!(validate_topic(b""), Err(TopicError::Empty));
        assert_eq!(validate_topic(b"a/+/b"), Err(TopicError::Wildcard('+')));
        assert_eq!(validate_topic(b"a/#"), Err(TopicError::Wildcard('#')));
        assert_eq!(validate_topic(b"$SYS/x"), Err(TopicError::Reserved));
        assert_eq!(validate_topic(b"a\x01b"), Err(TopicError::ForbiddenChar { ch: '\u{1}', at: 1 }));
        assert_eq!(validate_topic("a\u{85}".as_bytes()), Err(TopicError::ForbiddenChar { ch: '\u{85}', at: 1 }));
        assert_eq!(validate_topic("x\u{FFFF}".as_bytes()), Err(TopicError::ForbiddenChar { ch: '\u{FFFF}', at: 1 }));
        assert_eq!(validate_topic(b"\xff\xfe"), Err(TopicError::InvalidUtf8));
        let long = "x".repeat(MAX_TOPIC_BYTES + 1);
        assert_eq!(validate_topic(long.as_bytes()), Err(TopicError::TooLong(MAX_TOPIC_BYTES + 1)));
    }

    #[test]
    fn messages_are_bounded() {
        let long = format!("{}+", "y".repeat(1000));
        let e = validate_topic(long.as_bytes()).unwrap_err();
        assert!(e.message(&long).len() < 120);
    }

    #[test]
    fn forbidden_characters_are_found_anywhere() {
        assert_eq!(first_forbidden("text/plain"), None);
        assert_eq!(first_forbidden("a\tb"), Some(('\t', 1)));
        assert_eq!(first_forbidden("ok\u{fffe}"), Some(('\u{fffe}', 2)));
    }

    #[test]
    fn control_characters_are_escaped_in_messages() {
        let e = validate_topic(b"a\x01b").unwrap_err();
        assert_eq!(e.message("a\u{1}b"), "invalid MQTT topic E'a\\x01b'");
        assert_eq!(quoted("it's\\\u{85}"), "E'it''s\\\\\\u0085'");
        assert_eq!(quoted("it's"), "\"it's\"");
    }

    #[test]
    fn qos_range() {
        assert_eq!(validate_qos(0), Ok(0));
        assert_eq!(validate_qos(2), Ok(2));
        assert!(validate_qos(3).is_err());
        assert!(validate_qos(-1).is_err());
    }
}
