//! The JSON envelope of change events (pure: no PostgreSQL calls, tested by `cargo test`).
//!
//! Row values are never serialized here: PostgreSQL's `row_to_json` produces them, and this
//! module only wraps those fragments in an object with the event's metadata. The strings we add
//! ourselves (operation, table name, timestamp) are escaped exactly like PostgreSQL's
//! `escape_json`, so the compiled row trigger (`trigger.rs`) and the PL/pgSQL statement trigger
//! (`mqtt_pub.resultset_trigger`, which uses `to_json`) produce byte-identical metadata.
//!
//! Shape (keys in this order; `old` only for UPDATE and DELETE, `new` only for INSERT and
//! UPDATE; the first four keys only when `include_meta`):
//! ```json
//! {"operation":"UPDATE","table":"public.orders","timestamp":"2026-11-27T08:24:11.123456+00:00",
//!  "txid":7421,"old":{"id":1,"status":"new"},"new":{"id":1,"status":"shipped"}}
//! ```

/// Metadata of one change, already in the database encoding.
pub struct Meta<'a> {
    /// `INSERT`, `UPDATE` or `DELETE`.
    pub operation: &'a str,
    /// Schema-qualified table name, identifiers quoted where SQL needs it (`public."Order"`).
    pub table: &'a [u8],
    /// The transaction's start time in ISO 8601, as `to_json(now())` writes it (no quotes).
    pub timestamp: &'a [u8],
    /// The top-level transaction id, as `pg_current_xact_id()` returns it.
    pub txid: u64,
}

/// Append `s` as a JSON string, with PostgreSQL's `escape_json` rules (`\u%04x` in lower case
/// for other control characters; bytes ≥ 0x80 are copied, the text is already encoded).
pub fn push_json_string(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    for &c in s {
        match c {
            b'\x08' => out.extend_from_slice(b"\\b"),
            b'\x0c' => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            c if c < b' ' => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(c >> 4) as usize]);
                out.push(HEX[(c & 0xf) as usize]);
            }
            c => out.push(c),
        }
    }
    out.push(b'"');
}

/// The payload of one row event: `old` and `new` are `row_to_json` output.
pub fn event_payload(out: &mut Vec<u8>, meta: Option<&Meta<'_>>, old: Option<&[u8]>, new: Option<&[u8]>) {
    out.reserve(96 + old.map_or(0, <[u8]>::len) + new.map_or(0, <[u8]>::len));
    out.push(b'{');
    let mut first = true;
    let mut key = |out: &mut Vec<u8>, k: &[u8]| {
        if !first {
            out.push(b',');
        }
        first = false;
        out.push(b'"');
        out.extend_from_slice(k);
        out.extend_from_slice(b"\":");
    };
    if let Some(m) = meta {
        key(out, b"operation");
        push_json_string(out, m.operation.as_bytes());
        key(out, b"table");
        push_json_string(out, m.table);
        key(out, b"timestamp");
        push_json_string(out, m.timestamp);
        key(out, b"txid");
        out.extend_from_slice(m.txid.to_string().as_bytes());
    }
    if let Some(o) = old {
        key(out, b"old");
        out.extend_from_slice(o);
    }
    if let Some(n) = new {
        key(out, b"new");
        out.extend_from_slice(n);
    }
    out.push(b'}');
}

/// `<prefix>/<i>`, the topic of a batch element.
pub fn batch_topic(out: &mut Vec<u8>, prefix: &[u8], i: usize) {
    out.clear();
    out.extend_from_slice(prefix);
    out.push(b'/');
    out.extend_from_slice(i.to_string().as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[u8]) -> String {
        String::from_utf8(v.to_vec()).unwrap()
    }

    #[test]
    fn escapes_like_postgres() {
        let mut out = Vec::new();
        push_json_string(&mut out, "a\"b\\c\n\t\x01\x1f/é".as_bytes());
        assert_eq!(s(&out), r#""a\"b\\c\n\t\u0001\u001f/é""#);
    }

    #[test]
    fn update_with_meta() {
        let meta =
            Meta { operation: "UPDATE", table: b"public.\"Order\"", timestamp: b"2026-11-27T08:24:11+00:00", txid: 7 };
        let mut out = Vec::new();
        event_payload(&mut out, Some(&meta), Some(br#"{"id":1}"#), Some(br#"{"id":2}"#));
        assert_eq!(
            s(&out),
            r#"{"operation":"UPDATE","table":"public.\"Order\"","timestamp":"2026-11-27T08:24:11+00:00","txid":7,"old":{"id":1},"new":{"id":2}}"#
        );
    }

    #[test]
    fn without_meta_only_the_rows() {
        let mut out = Vec::new();
        event_payload(&mut out, None, None, Some(br#"{"a":null}"#));
        assert_eq!(s(&out), r#"{"new":{"a":null}}"#);
        out.clear();
        event_payload(&mut out, None, Some(b"{}"), None);
        assert_eq!(s(&out), r#"{"old":{}}"#);
    }

    #[test]
    fn batch_topics() {
        let mut t = Vec::new();
        batch_topic(&mut t, b"sync/orders", 0);
        assert_eq!(s(&t), "sync/orders/0");
        batch_topic(&mut t, b"x", 12345);
        assert_eq!(s(&t), "x/12345");
    }
}
