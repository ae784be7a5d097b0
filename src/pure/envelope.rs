//! The JSON envelope of change events (pure: no PostgreSQL calls, tested by `cargo test`).
//!
//! Row values are never serialized here: PostgreSQL's `row_to_json` produces them, and this
//! module only wraps those fragments in an object with the event's metadata. The strings we add
//! ourselves (operation, table name, timestamp) are escaped exactly like PostgreSQL's
//! `escape_json`, so the metadata is byte-identical to what `to_json` writes. The statement
//! trigger's message shape and its split by rows and bytes live here too (`resultset.rs`).
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

/// The metadata keys, each followed by a comma: `"operation":..,"table":..,"timestamp":..,"txid":N,`.
pub fn meta_fields(out: &mut Vec<u8>, m: &Meta<'_>) {
    out.extend_from_slice(b"\"operation\":");
    push_json_string(out, m.operation.as_bytes());
    out.extend_from_slice(b",\"table\":");
    push_json_string(out, m.table);
    out.extend_from_slice(b",\"timestamp\":");
    push_json_string(out, m.timestamp);
    out.extend_from_slice(b",\"txid\":");
    out.extend_from_slice(m.txid.to_string().as_bytes());
    out.push(b',');
}

/// The payload of one row event: `old` and `new` are `row_to_json` output (at least one).
pub fn event_payload(out: &mut Vec<u8>, meta: Option<&Meta<'_>>, old: Option<&[u8]>, new: Option<&[u8]>) {
    out.reserve(96 + old.map_or(0, <[u8]>::len) + new.map_or(0, <[u8]>::len));
    out.push(b'{');
    if let Some(m) = meta {
        meta_fields(out, m);
    }
    if let Some(o) = old {
        out.extend_from_slice(b"\"old\":");
        out.extend_from_slice(o);
        out.push(b',');
    }
    if let Some(n) = new {
        out.extend_from_slice(b"\"new\":");
        out.extend_from_slice(n);
        out.push(b',');
    }
    // every key above ended with a comma: the last one closes the object
    match out.last_mut() {
        Some(c) if *c == b',' => *c = b'}',
        _ => out.push(b'}'),
    }
}

/// Split a statement's entries into messages: at most `max_rows` entries each, and entries of
/// at most `budget` bytes together (each counted with its separating comma). An entry larger
/// than the budget travels alone (and is then refused as too large by the publish path).
pub fn split_rows(entries: &[Vec<u8>], max_rows: usize, budget: usize) -> Vec<std::ops::Range<usize>> {
    let mut parts = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, e) in entries.iter().enumerate() {
        let n = i - start;
        if n > 0 && (n >= max_rows || bytes + e.len() + 1 > budget) {
            parts.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += e.len() + 1;
    }
    if start < entries.len() {
        parts.push(start..entries.len());
    }
    parts
}

/// One message of a statement: `{<head>"part":i,"parts":n,"count":c,"data":[e1,e2,..]}`, where
/// `head` is empty or [`meta_fields`].
pub fn resultset_payload(out: &mut Vec<u8>, head: &[u8], part: usize, parts: usize, entries: &[Vec<u8>]) {
    out.clear();
    out.push(b'{');
    out.extend_from_slice(head);
    out.extend_from_slice(
        format!("\"part\":{part},\"parts\":{parts},\"count\":{},\"data\":[", entries.len()).as_bytes(),
    );
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(e);
    }
    out.extend_from_slice(b"]}");
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
    fn split_by_rows_and_bytes() {
        let e = |n: usize| vec![b'x'; n];
        let rows: Vec<Vec<u8>> = (0..7).map(|_| e(9)).collect();
        // 3 rows per message
        assert_eq!(split_rows(&rows, 3, 1000), vec![0..3, 3..6, 6..7]);
        // 10 bytes per entry with its comma: 25 bytes hold two
        assert_eq!(split_rows(&rows, 100, 25), vec![0..2, 2..4, 4..6, 6..7]);
        // exactly at the budget still fits
        assert_eq!(split_rows(&rows, 100, 20), vec![0..2, 2..4, 4..6, 6..7]);
        // an entry over the budget travels alone
        let big = vec![e(1), e(50), e(1)];
        assert_eq!(split_rows(&big, 100, 10), vec![0..1, 1..2, 2..3]);
        assert!(split_rows(&[], 10, 10).is_empty());
    }

    #[test]
    fn resultset_message_shape() {
        let meta = Meta { operation: "INSERT", table: b"public.t", timestamp: b"T", txid: 9 };
        let mut head = Vec::new();
        meta_fields(&mut head, &meta);
        let mut out = Vec::new();
        resultset_payload(&mut out, &head, 1, 2, &[br#"{"new":{"a":1}}"#.to_vec(), br#"{"new":{"a":2}}"#.to_vec()]);
        assert_eq!(
            s(&out),
            r#"{"operation":"INSERT","table":"public.t","timestamp":"T","txid":9,"part":1,"parts":2,"count":2,"data":[{"new":{"a":1}},{"new":{"a":2}}]}"#
        );
        resultset_payload(&mut out, b"", 1, 1, &[]);
        assert_eq!(s(&out), r#"{"part":1,"parts":1,"count":0,"data":[]}"#);
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
