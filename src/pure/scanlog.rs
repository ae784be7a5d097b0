//! The worker's scan log: which ring records it has looked at, which of them are finished, and
//! how far the ring may be released.
//!
//! Pure bookkeeping, no PostgreSQL and no ring memory (the worker reads the ring, ring.rs), so
//! `cargo test` covers the rules the delivery contract depends on:
//!
//! * The scan moves a cursor forward over the ring, one record at a time, and logs every record
//!   it passes. A record is *finished* once it is delivered (acknowledged for QoS 1/2), saved to
//!   the outbox, dead-lettered or cancelled — in any order: brokers acknowledge independently.
//! * The ring is released only up to the first unfinished record ([`ScanLog::release`]): a
//!   record's slots are never reused while it may still be needed.
//! * A transaction's reservation that stays unpublished for long (a commit waiting for a
//!   synchronous standby) is stepped over as a *hole*: one placeholder for the whole reservation,
//!   which pins the release point until the reservation is published (its records take the
//!   placeholder's place, [`ScanLog::fill_hole`]) or cancelled (the placeholder is finished).
//! * [`ScanLog::low`] is the oldest position the scan is not finished looking at: the first hole,
//!   or the cursor. Rules of the form "no ring record older than X can still turn up" (a cold
//!   broker's lane-1 outbox rows, going hot again, retiring a removed broker) use it.

use crate::pure::ring::Span;
use std::collections::VecDeque;

/// A logged record (or a hole's placeholder).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    pos: u64,
    nslots: u64,
    done: bool,
}

/// A stepped-over reservation: `run` slots from `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hole {
    pub start: u64,
    pub run: u64,
}

#[derive(Debug)]
pub struct ScanLog {
    /// Contiguous from the ring's tail to the cursor, ordered by position.
    entries: VecDeque<Entry>,
    /// Placeholders not yet filled, oldest first.
    holes: VecDeque<Hole>,
    cursor: u64,
}

impl ScanLog {
    /// An empty log whose scan starts at `tail`.
    pub fn new(tail: u64) -> ScanLog {
        ScanLog { entries: VecDeque::new(), holes: VecDeque::new(), cursor: tail }
    }

    /// The next position to look at.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// The oldest position not finished with: the first hole, else the cursor.
    pub fn low(&self) -> u64 {
        self.holes.front().map_or(self.cursor, |h| h.start)
    }

    /// Log the record at the cursor (`done`: nothing left to do for it, e.g. cancelled).
    pub fn push(&mut self, nslots: u64, done: bool) {
        self.entries.push_back(Entry { pos: self.cursor, nslots, done });
        self.cursor += nslots;
    }

    /// Step over the unpublished reservation of `run` slots at the cursor.
    pub fn push_hole(&mut self, run: u64) {
        self.holes.push_back(Hole { start: self.cursor, run });
        self.push(run, false);
    }

    pub fn holes(&self) -> impl Iterator<Item = Hole> + '_ {
        self.holes.iter().copied()
    }

    pub fn has_holes(&self) -> bool {
        !self.holes.is_empty()
    }

    /// The reservation at `start` was published as `records` (position, slots; in order, covering
    /// it exactly) or, with no records, cancelled. The records are logged unfinished in the
    /// placeholder's place.
    pub fn fill_hole(&mut self, start: u64, records: &[Span]) {
        let Some(h) = self.holes.iter().position(|h| h.start == start) else {
            return;
        };
        let hole = self.holes.remove(h).expect("found above");
        let at = self.index_of(start).expect("a hole has a placeholder");
        if records.is_empty() {
            self.entries[at].done = true;
            return;
        }
        debug_assert_eq!(records.iter().map(|r| r.nslots).sum::<u64>(), hole.run, "records cover the reservation");
        self.entries.remove(at);
        for (j, &Span { pos, nslots }) in records.iter().enumerate() {
            self.entries.insert(at + j, Entry { pos, nslots, done: false });
        }
    }

    /// Give up on every hole (shutdown: their transactions did not finish COMMIT in time). Their
    /// slots count as finished. Returns how many there were.
    pub fn abandon_holes(&mut self) -> usize {
        let n = self.holes.len();
        while let Some(h) = self.holes.pop_front() {
            if let Some(at) = self.index_of(h.start) {
                self.entries[at].done = true;
            }
        }
        n
    }

    fn index_of(&self, pos: u64) -> Option<usize> {
        self.entries.binary_search_by_key(&pos, |e| e.pos).ok()
    }

    /// The record at `pos` is finished (unknown positions are ignored: already released).
    pub fn mark_done(&mut self, pos: u64) {
        if let Some(i) = self.index_of(pos) {
            self.entries[i].done = true;
        }
    }

    /// Forget the finished prefix; the new release point if it moved.
    pub fn release(&mut self) -> Option<u64> {
        let mut to = None;
        while self.entries.front().is_some_and(|e| e.done) {
            let e = self.entries.pop_front().expect("checked");
            to = Some(e.pos + e.nslots);
        }
        to
    }

    /// Logged records not finished yet (holes excluded), oldest first.
    pub fn unfinished(&self) -> Vec<Span> {
        self.entries
            .iter()
            .filter(|e| !e.done && !self.holes.iter().any(|h| h.start == e.pos))
            .map(|e| Span { pos: e.pos, nslots: e.nslots })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(v: &[(u64, u64)]) -> Vec<Span> {
        v.iter().map(|&(pos, nslots)| Span { pos, nslots }).collect()
    }

    #[test]
    fn releases_only_up_to_the_first_unfinished_record() {
        let mut log = ScanLog::new(100);
        log.push(1, false); // 100
        log.push(3, false); // 101
        log.push(2, true); //  104, cancelled
        assert_eq!(log.cursor(), 106);
        log.mark_done(101); // acknowledged out of order
        assert_eq!(log.release(), None, "100 is still in flight");
        log.mark_done(100);
        assert_eq!(log.release(), Some(106));
        assert_eq!(log.release(), None);
        log.mark_done(100); // late duplicate acknowledgement: ignored
        assert!(log.unfinished().is_empty());
    }

    #[test]
    fn a_hole_pins_the_release_point_and_low_until_filled() {
        let mut log = ScanLog::new(0);
        log.push(1, false); // 0
        log.push_hole(3); //   1..4: a commit waiting for a standby
        log.push(1, false); // 4
        assert_eq!((log.cursor(), log.low()), (5, 1));
        log.mark_done(0);
        log.mark_done(4);
        assert_eq!(log.release(), Some(1), "stops at the hole");
        assert_eq!(log.unfinished(), Vec::<Span>::new(), "a placeholder is not a record");
        // the transaction commits: its two records take the placeholder's place, unfinished
        log.fill_hole(1, &spans(&[(1, 2), (3, 1)]));
        assert_eq!(log.low(), 5);
        assert_eq!(log.unfinished(), spans(&[(1, 2), (3, 1)]));
        log.mark_done(3);
        assert_eq!(log.release(), None, "1 is not delivered yet");
        log.mark_done(1);
        assert_eq!(log.release(), Some(5));
    }

    #[test]
    fn a_cancelled_hole_is_finished_whole() {
        let mut log = ScanLog::new(0);
        log.push_hole(4);
        log.push(1, true);
        log.fill_hole(0, &[]);
        assert!(!log.has_holes());
        assert_eq!(log.release(), Some(5));
    }

    #[test]
    fn holes_fill_in_any_order_and_low_follows_the_oldest() {
        let mut log = ScanLog::new(10);
        log.push_hole(2); //   10
        log.push(1, false); // 12
        log.push_hole(1); //   13
        assert_eq!(log.holes().collect::<Vec<_>>(), vec![Hole { start: 10, run: 2 }, Hole { start: 13, run: 1 }]);
        log.fill_hole(13, &spans(&[(13, 1)]));
        assert_eq!(log.low(), 10);
        log.fill_hole(10, &spans(&[(10, 1), (11, 1)]));
        assert_eq!(log.low(), 14);
        for p in [10, 11, 12, 13] {
            log.mark_done(p);
        }
        assert_eq!(log.release(), Some(14));
        log.fill_hole(10, &[]); // unknown by now: ignored
    }

    #[test]
    fn abandoned_holes_at_shutdown_leave_the_records_to_save() {
        let mut log = ScanLog::new(0);
        log.push(1, false);
        log.push_hole(2);
        log.push(1, false);
        assert_eq!(log.abandon_holes(), 1);
        assert!(!log.has_holes());
        assert_eq!(log.unfinished(), spans(&[(0, 1), (3, 1)]));
    }
}
