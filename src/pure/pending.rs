//! A transaction's messages while they wait for COMMIT, with the savepoint marks that let a
//! ROLLBACK TO SAVEPOINT (or a PL/pgSQL exception block) drop exactly what was published after it.
//!
//! Pure state (txn.rs decides where the messages go at COMMIT); `cargo test` covers it.
//!
//! * One byte arena holds every topic and payload, plus a small index entry per message: one
//!   copy, no allocation per message.
//! * Sub-transaction ids grow monotonically within a top-level transaction, so everything
//!   published since sub-transaction S began has an id >= S and forms a *suffix* of the list. A
//!   stack of marks (the list's length when a deeper sub-transaction first published) finds that
//!   suffix on abort; on a sub-commit the child's marks fold into one, keeping the earliest.

use crate::pure::ring::MessageRef;

/// Brokers a transaction can address (bit masks of brokers are `u32`).
pub const MAX_BROKERS: usize = 32;

/// The top-level transaction's sub-transaction id (PostgreSQL's TopSubTransactionId).
pub const TOP_SUBID: u32 = 1;

struct Entry {
    off: usize,
    topic_len: u32,
    props_len: u32,
    payload_len: u32,
    broker: u16,
    qos: u8,
    retain: bool,
    subid: u32,
}

struct Mark {
    subid: u32,
    msgs: usize,
    arena: usize,
    per_broker: [u32; MAX_BROKERS],
}

#[derive(Default)]
pub struct Messages {
    arena: Vec<u8>,
    msgs: Vec<Entry>,
    marks: Vec<Mark>,
    per_broker: [u32; MAX_BROKERS],
}

impl Messages {
    /// Bytes a message adds besides its topic and payload (for the memory cap).
    pub const OVERHEAD: usize = std::mem::size_of::<Entry>();

    /// Keep `m`, published in sub-transaction `subid`.
    pub fn push(&mut self, m: &MessageRef<'_>, subid: u32) {
        if subid > TOP_SUBID && self.marks.last().is_none_or(|k| subid > k.subid) {
            self.marks.push(Mark {
                subid,
                msgs: self.msgs.len(),
                arena: self.arena.len(),
                per_broker: self.per_broker,
            });
        }
        let off = self.arena.len();
        self.arena.extend_from_slice(m.topic);
        self.arena.extend_from_slice(m.props);
        self.arena.extend_from_slice(m.payload);
        self.msgs.push(Entry {
            off,
            topic_len: m.topic.len() as u32,
            props_len: m.props.len() as u32,
            payload_len: m.payload.len() as u32,
            broker: m.broker,
            qos: m.qos,
            retain: m.retain,
            subid,
        });
        self.per_broker[m.broker as usize] += 1;
    }

    /// Sub-transaction `subid` (and every one inside it) aborted: drop what they published.
    pub fn abort_sub(&mut self, subid: u32) {
        let mut cut = None;
        while self.marks.last().is_some_and(|k| k.subid >= subid) {
            cut = self.marks.pop();
        }
        if let Some(k) = cut {
            self.msgs.truncate(k.msgs);
            self.arena.truncate(k.arena);
            self.per_broker = k.per_broker;
        }
    }

    /// A sub-transaction committed into `parent`: its messages now belong to the parent, and a
    /// later abort of the parent must drop them too.
    pub fn commit_sub(&mut self, parent: u32) {
        let mut first = None;
        while self.marks.last().is_some_and(|k| k.subid > parent) {
            first = self.marks.pop();
        }
        if let Some(k) = first {
            if parent > TOP_SUBID {
                self.marks.push(k); // keeps its (child-range) id: still above the parent's
            }
        }
    }

    /// Did anything still pending come from a sub-transaction older than `current`? (Then an
    /// outbox row written now could outlive a rollback to a savepoint taken after it.)
    pub fn any_before(&self, current: u32) -> bool {
        self.msgs.iter().any(|m| m.subid < current)
    }

    pub fn len(&self) -> usize {
        self.msgs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// Bytes of topics and payloads.
    pub fn arena_len(&self) -> usize {
        self.arena.len()
    }

    /// Memory held, as the cap counts it.
    pub fn held(&self) -> usize {
        self.arena.len() + self.msgs.len() * Self::OVERHEAD
    }

    pub fn capacity(&self) -> usize {
        self.arena.capacity()
    }

    /// Pending messages for broker `b`.
    pub fn count_for(&self, b: u16) -> u32 {
        self.per_broker[b as usize]
    }

    /// Brokers with pending messages.
    pub fn brokers(&self) -> Vec<u16> {
        (0..MAX_BROKERS as u16).filter(|b| self.per_broker[*b as usize] > 0).collect()
    }

    pub fn get(&self, i: usize) -> MessageRef<'_> {
        let m = &self.msgs[i];
        let t = m.off + m.topic_len as usize;
        let x = t + m.props_len as usize;
        MessageRef::new(
            m.broker,
            m.qos,
            m.retain,
            &self.arena[m.off..t],
            &self.arena[t..x],
            &self.arena[x..x + m.payload_len as usize],
        )
    }

    pub fn iter(&self) -> impl Iterator<Item = MessageRef<'_>> {
        (0..self.msgs.len()).map(|i| self.get(i))
    }

    pub fn clear(&mut self) {
        self.arena.clear();
        self.msgs.clear();
        self.marks.clear();
        self.per_broker = [0; MAX_BROKERS];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(p: &mut Messages, topic: &str, subid: u32) {
        p.push(&MessageRef::new(0, 1, false, topic.as_bytes(), b"", b"x"), subid);
    }

    fn topics(p: &Messages) -> Vec<String> {
        p.iter().map(|m| String::from_utf8(m.topic.to_vec()).unwrap()).collect()
    }

    #[test]
    fn a_rollback_to_savepoint_drops_what_came_after_it() {
        let mut p = Messages::default();
        push(&mut p, "a", 1);
        push(&mut p, "b", 2); // SAVEPOINT s1
        push(&mut p, "c", 2);
        p.abort_sub(2); // ROLLBACK TO s1
        assert_eq!(topics(&p), ["a"]);
        assert_eq!(p.count_for(0), 1);
        push(&mut p, "d", 3); // the savepoint's next incarnation
        assert_eq!(topics(&p), ["a", "d"]);
    }

    #[test]
    fn nested_savepoints_released_then_rolled_back() {
        let mut p = Messages::default();
        push(&mut p, "a", 1);
        push(&mut p, "b", 2); // SAVEPOINT s1
        push(&mut p, "c", 3); // SAVEPOINT s2
        p.commit_sub(2); // RELEASE s2: c belongs to s1 now
        push(&mut p, "d", 2);
        p.abort_sub(2); // ROLLBACK TO s1 drops b, c and d
        assert_eq!(topics(&p), ["a"]);
    }

    #[test]
    fn a_released_savepoint_at_top_level_keeps_its_messages() {
        let mut p = Messages::default();
        push(&mut p, "a", 2); // SAVEPOINT s1
        push(&mut p, "b", 3); // SAVEPOINT s2
        p.commit_sub(2);
        p.commit_sub(1); // RELEASE s1: all of it is the top level's
        p.abort_sub(4); // an unrelated later sub-transaction aborts with nothing published
        assert_eq!(topics(&p), ["a", "b"]);
        assert!(!p.any_before(1));
    }

    #[test]
    fn an_exception_block_in_a_loop_keeps_each_iterations_survivors() {
        // PL/pgSQL: each loop iteration's BEGIN ... EXCEPTION is a new sub-transaction
        let mut p = Messages::default();
        for i in 0..5u32 {
            let subid = 2 + i;
            push(&mut p, &format!("ok{i}"), subid);
            if i % 2 == 1 {
                p.abort_sub(subid); // this iteration raised
            } else {
                p.commit_sub(1);
            }
        }
        assert_eq!(topics(&p), ["ok0", "ok2", "ok4"]);
    }

    #[test]
    fn older_subtransactions_block_an_early_outbox_write() {
        let mut p = Messages::default();
        push(&mut p, "a", 2);
        assert!(!p.any_before(2), "all from the current sub-transaction");
        push(&mut p, "b", 3);
        assert!(p.any_before(3), "a is older than the current sub-transaction");
        assert_eq!(p.held(), 4 + 2 * Messages::OVERHEAD);
        p.clear();
        assert!(p.is_empty() && p.brokers().is_empty());
    }
}
