//! What a transaction has written to the outbox, by subtransaction: the bytes it holds against
//! `max_outbox_size` (data/outbox_size.rs) until it ends. Rows written inside a subtransaction
//! that is rolled back are gone, so their bytes must be given back then — not counted at COMMIT
//! as if they were still there.
//!
//! Subtransaction ids as PostgreSQL hands them out: a child's id is larger than its parent's, a
//! committed child's rows become its parent's, an aborted one's are gone.

#[derive(Default, Debug)]
pub struct Ledger {
    /// (subtransaction, bytes written in it or in its committed children)
    entries: Vec<(u32, i64)>,
}

impl Ledger {
    /// `bytes` written to the outbox in subtransaction `sub`.
    pub fn add(&mut self, sub: u32, bytes: i64) {
        match self.entries.last_mut() {
            Some(e) if e.0 == sub => e.1 += bytes,
            _ => self.entries.push((sub, bytes)),
        }
    }

    /// Subtransaction `sub` committed into `parent`: its bytes are the parent's now.
    pub fn commit_sub(&mut self, sub: u32, parent: u32) {
        for e in &mut self.entries {
            if e.0 == sub {
                e.0 = parent;
            }
        }
    }

    /// Subtransaction `sub` was rolled back: what it wrote is gone. Returns those bytes.
    pub fn abort_sub(&mut self, sub: u32) -> i64 {
        let gone = self.entries.iter().filter(|e| e.0 >= sub).map(|e| e.1).sum();
        self.entries.retain(|e| e.0 < sub);
        gone
    }

    /// Everything the transaction still holds.
    pub fn total(&self) -> i64 {
        self.entries.iter().map(|e| e.1).sum()
    }

    /// The transaction ended: returns what it held.
    pub fn take(&mut self) -> i64 {
        let t = self.total();
        self.entries.clear();
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolled_back_savepoints_give_their_bytes_back() {
        let mut l = Ledger::default();
        l.add(1, 100); // top level
        l.add(2, 10); // SAVEPOINT a
        l.add(3, 5); // SAVEPOINT b inside a
        l.commit_sub(3, 2); // RELEASE b
        l.add(4, 7); // SAVEPOINT c inside a
        assert_eq!(l.abort_sub(4), 7); // ROLLBACK TO c
        assert_eq!(l.total(), 115);
        assert_eq!(l.abort_sub(2), 15, "a and what b committed into it");
        assert_eq!(l.total(), 100);
        l.add(5, 1);
        l.commit_sub(5, 1);
        assert_eq!(l.take(), 101);
        assert_eq!(l.total(), 0);
    }

    #[test]
    fn an_aborted_parent_takes_uncommitted_children_with_it() {
        let mut l = Ledger::default();
        l.add(2, 10);
        l.add(3, 20); // a child still open when its parent aborts (PostgreSQL aborts it first,
                      // but the ledger does not depend on that order)
        assert_eq!(l.abort_sub(2), 30);
        assert_eq!(l.total(), 0);
    }
}
