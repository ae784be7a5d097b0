//! The ring scan: hand committed records to their brokers in order, step over a transaction stuck
//! in COMMIT (scanlog.rs), move a cold broker's records to the outbox, release what is done.

use super::*;

/// What a pass over the ring leaves for SQL afterwards (records stay in the ring until then).
#[derive(Default)]
pub(super) struct Found {
    /// Positions of cold brokers' records, to save to the outbox.
    rescue: Vec<u64>,
    /// Records the client library refused: (link, position, why).
    failed: Vec<(usize, u64, Verdict, String)>,
    /// Records of removed brokers: (link, position).
    removed: Vec<(usize, u64)>,
    /// Records whose broker slot nobody owns: (position, slot).
    orphans: Vec<(u64, u16)>,
}

/// The scan's decision about one ready record.
enum Take {
    /// Log it (and whether it is finished already).
    Logged(bool),
    /// Already logged (and handled).
    Skip,
    /// Stop scanning here for now; the record stays for the next pass.
    Stop,
    /// Stop: the links must be synced with the catalog first.
    Resync,
}

impl Worker {
    /// Hand ring records to their brokers: stepped-over transactions that committed since and
    /// the brokers' backlogs first (they are older than anything the scan finds), then new
    /// records in ring order; then what the scan decided needs SQL (outbox, dead letters).
    /// Returns whether there may be more to do at once.
    pub(super) fn process_ring(&mut self) -> bool {
        let mut found = Found::default();
        let mut scratch = std::mem::take(&mut self.scratch);
        self.fill_holes(&mut found);
        self.send_backlogs(&mut scratch, &mut found);
        let scan_start = self.scan.cursor();
        let more = self.scan_ring(&mut scratch, &mut found);
        self.scratch = scratch;
        if self.scan.cursor() != scan_start {
            self.last_work = Instant::now();
            self.pace.record(self.scan.cursor() - scan_start, self.last_work);
        }
        self.settle(found);
        for k in &self.links {
            k.status.inflight.store(k.window.len() as u32, Ordering::Relaxed);
        }
        more
    }

    fn send_backlogs(&mut self, scratch: &mut Vec<u8>, found: &mut Found) {
        for l in 0..self.links.len() {
            if self.links[l].cold() && !self.links[l].backlog.is_empty() {
                // A backend turned the broker cold (a durable commit, a spill after
                // publish_timeout_ms) while records waited in its backlog (a busy broker, or
                // the in-flight records of a failover): they go to the outbox now, ahead of
                // what the backend wrote there (lane 0), instead of waiting for nobody.
                self.go_cold(l);
                continue;
            }
            while !self.links[l].backlog.is_empty() && self.links[l].window_open() && !self.links[l].cold() {
                let Span { pos, nslots } = self.links[l].backlog[0];
                match self.send_ring_record(l, pos, scratch, &mut found.failed) {
                    None => break,
                    Some(true) => self.mark_ring_done(pos),
                    Some(false) => {}
                }
                let k = &mut self.links[l];
                k.backlog.pop_front();
                k.backlog_slots -= nslots;
            }
        }
    }

    /// Look at up to `BATCH` new records from the cursor; log each one the scan passes.
    fn scan_ring(&mut self, scratch: &mut Vec<u8>, found: &mut Found) -> bool {
        let ring = self.ring;
        for _ in 0..BATCH {
            let pos = self.scan.cursor();
            // SAFETY: this process is the ring's only consumer; pos is a record boundary.
            match unsafe { ring.peek_at(pos, scratch) } {
                Peek::Empty => return false,
                Peek::Reserved { run } => {
                    if run == 0 || !self.waited_long_enough(pos) {
                        return false;
                    }
                    self.scan.push_hole(run);
                }
                Peek::Ready(r) => {
                    let (n, broker) = (r.nslots, r.broker);
                    if self.scan.has_holes() {
                        // A stepped-over transaction that has committed since is older than this
                        // record, which may be its session's next one: its records go first.
                        self.fill_holes(found);
                    }
                    match self.take_record(pos, n, broker, scratch, found) {
                        Take::Logged(done) => self.scan.push(n, done),
                        Take::Skip => {}
                        Take::Stop => return false,
                        Take::Resync => return true,
                    }
                }
            }
        }
        true
    }

    /// What to do with the ready record at `pos` for the broker in `slot`.
    fn take_record(&mut self, pos: u64, n: u64, slot: u16, scratch: &mut Vec<u8>, found: &mut Found) -> Take {
        let Some(l) = self.by_slot.get(slot as usize).copied().flatten() else {
            if crate::shmem::require_shared().broker_generation.load(Ordering::Acquire) != self.generation {
                return Take::Resync; // a broker was added or removed: sync the links first
            }
            // No broker owns the slot: nothing can deliver it.
            found.orphans.push((pos, slot));
            return Take::Logged(false);
        };
        let k = &self.links[l];
        if k.removed_at.is_some() {
            found.removed.push((l, pos));
            Take::Logged(false)
        } else if k.cold() {
            if !self.ext_present {
                return Take::Stop; // nowhere to put it yet
            }
            found.rescue.push(pos);
            Take::Logged(false)
        } else if k.takes_ring_record() {
            match self.send_ring_record(l, pos, scratch, &mut found.failed) {
                None => Take::Stop,
                Some(done) => Take::Logged(done),
            }
        } else if self.links.len() == 1 {
            Take::Stop // the only broker is busy: leave the record where it is
        } else {
            self.queue_for_busy_broker(l, pos, n)
        }
    }

    /// Busy broker: queue the record for it and keep scanning for the others; a broker whose
    /// queue fills a quarter of the ring goes cold (its queue moves to the outbox).
    fn queue_for_busy_broker(&mut self, l: usize, pos: u64, n: u64) -> Take {
        let k = &mut self.links[l];
        k.backlog.push_back(Span { pos, nslots: n });
        k.backlog_slots += n;
        if k.backlog_slots <= self.ring.capacity() / 4 {
            return Take::Logged(false);
        }
        self.scan.push(n, false); // logged before go_cold saves it (and marks it done)
        let why = format!(
            "broker \"{}\" is too slow: its unsent messages fill a quarter of the ring; using the outbox",
            self.links[l].cfg.name
        );
        guard::log(Level::WARNING, format!("pg_mqtt_pub: {why}"));
        self.go_cold(l);
        Take::Skip
    }

    /// Carry out what the scan found needs SQL: save cold brokers' records to the outbox,
    /// dead-letter records of removed brokers and orphans, count refused ones.
    fn settle(&mut self, found: Found) {
        if !found.rescue.is_empty() {
            self.rescue(found.rescue);
        }
        for (l, pos) in found.removed {
            self.dead_letter_ring(l, pos, "the broker was removed");
        }
        let ring = self.ring;
        for (pos, slot) in found.orphans {
            let mut scratch = Vec::new();
            self.with_outbox(|| {
                // SAFETY: scanned, not released.
                if let Peek::Ready(r) = unsafe { ring.peek_at(pos, &mut scratch) } {
                    let name = format!("#{slot}");
                    let row = outbox::NewRow::of(&name, &r.message(), outbox::LANE_PUBLISHED);
                    outbox::insert_failed(row, "no broker uses this status slot any more", 0, 1);
                }
            });
            self.mark_ring_done(pos);
        }
        for (l, pos, verdict, why) in found.failed {
            self.message_failed(l, Inflight::Ring(pos), verdict, why);
        }
    }

    /// Hand one ring record to broker `l`. `None`: not connected, the caller keeps it;
    /// `Some(done)`: handed over, and already finished (QoS 0) or not (acknowledgement pending,
    /// or refused: then it is in `failed`).
    pub(super) fn send_ring_record(
        &mut self,
        l: usize,
        pos: u64,
        scratch: &mut Vec<u8>,
        failed: &mut Vec<(usize, u64, Verdict, String)>,
    ) -> Option<bool> {
        let ring = self.ring;
        // SAFETY: only consumer; pos is a scanned, unreleased record.
        let Peek::Ready(r) = (unsafe { ring.peek_at(pos, scratch) }) else { return Some(true) };
        let k = &mut self.links[l];
        let c = k.client.as_mut()?;
        let expiry_left =
            match props::expiry(r.props).map(|s| props::seconds_left(r.at + s as i64 * 1_000_000, now_us())) {
                None => None,
                Some(Ok(left)) => Some(left),
                Some(Err(late)) => {
                    failed.push((l, pos, Verdict::Expired, props::expired_why(late)));
                    return Some(false);
                }
            };
        let id = crate::pg::instance::message_id_in(&mut self.id_buf, r.id);
        // A QoS 0 ring record is done once handed over (at most once): the client may queue it
        // and write it with others in one send() (ADR-010).
        let x = Extra { props: r.props, id, expiry_left, done_when_queued: true };
        let (qos, h) = (r.qos, c.publish(r.topic_nul, r.payload, r.qos, r.retain, &x));
        match h {
            Handoff::Later => return None,
            Handoff::Accepted { mid } if qos > 0 => k.note_sent(mid, Inflight::Ring(pos), r.at),
            Handoff::Accepted { .. } | Handoff::Queued => {
                k.status.messages_sent.fetch_add(1, Ordering::Relaxed);
                k.report.written(r.at);
                return Some(true);
            }
            Handoff::Refused { verdict, why } => failed.push((l, pos, verdict, why)),
        }
        Some(false)
    }

    pub(super) fn mark_ring_done(&mut self, pos: u64) {
        self.scan.mark_done(pos);
    }

    /// Has the scan waited at the reservation at `pos` for `STEP_OVER_AFTER`? Starts the clock
    /// the first time it finds it there.
    pub(super) fn waited_long_enough(&mut self, pos: u64) -> bool {
        match self.blocked_at {
            Some((p, since)) if p == pos => since.elapsed() >= STEP_OVER_AFTER,
            _ => {
                self.blocked_at = Some((pos, Instant::now()));
                false
            }
        }
    }

    /// The oldest ring position the scan is not finished with (scanlog.rs): rules about
    /// "records before X" (outbox order, going hot) use this.
    pub(super) fn scan_low(&self) -> u64 {
        self.scan.low()
    }

    /// Stepped-over reservations that were published since: the placeholder makes way for the
    /// records (not done yet), in order. Returns the records.
    pub(super) fn take_filled_holes(&mut self) -> Vec<Span> {
        let mut found = Vec::new();
        let holes: Vec<Hole> = self.scan.holes().collect();
        for Hole { start, run } in holes {
            // SAFETY: a reservation the scan stepped over and has not released.
            let records = match unsafe { self.ring.run_state(start, run) } {
                RunState::Waiting => continue,
                RunState::Ready(r) => r,
            };
            self.scan.fill_hole(start, &records);
            found.extend(records);
        }
        found
    }

    /// Hand the records of stepped-over transactions that committed since to their brokers,
    /// as the scan would have: queued behind the broker's backlog, rescued if it is cold.
    pub(super) fn fill_holes(&mut self, found: &mut Found) {
        let shared = crate::shmem::require_shared();
        if !self.scan.has_holes()
            || !self.ext_present
            || shared.broker_generation.load(Ordering::Acquire) != self.generation
        {
            return; // later: nowhere to rescue to, or the links are about to change
        }
        let mut scratch = Vec::new();
        for Span { pos, nslots } in self.take_filled_holes() {
            // SAFETY: published, scanned and not released.
            let Peek::Ready(r) = (unsafe { self.ring.peek_at(pos, &mut scratch) }) else { continue };
            let broker = r.broker;
            match self.by_slot.get(broker as usize).copied().flatten() {
                None => found.orphans.push((pos, broker)),
                Some(l) if self.links[l].removed_at.is_some() => found.removed.push((l, pos)),
                Some(l) if self.links[l].cold() => found.rescue.push(pos),
                Some(l) => {
                    let k = &mut self.links[l];
                    k.backlog.push_back(Span { pos, nslots });
                    k.backlog_slots += nslots;
                }
            }
        }
    }

    /// Move ring records of a cold broker into the outbox (lane 0, ahead of everything written
    /// by publishers since), then let the ring forget them. False if there is no outbox.
    pub(super) fn rescue(&mut self, records: impl IntoIterator<Item = u64>) -> bool {
        let records: Vec<u64> = records.into_iter().collect();
        let ring = self.ring;
        let mut scratch = Vec::new();
        let names: Vec<Option<String>> =
            self.by_slot.iter().map(|i| i.map(|i| self.links[i].cfg.name.clone())).collect();
        let done = self.with_outbox(|| {
            for &pos in &records {
                // SAFETY: these records are scanned but not released: still intact in the ring.
                if let Peek::Ready(r) = unsafe { ring.peek_at(pos, &mut scratch) } {
                    let Some(Some(name)) = names.get(r.broker as usize) else { continue };
                    let mut row = std::iter::once(outbox::NewRow::of(name, &r.message(), outbox::LANE_RECOVERED));
                    crate::data::outbox_size::add(outbox::insert(&mut row));
                }
            }
        });
        if done.is_none() {
            return false; // no outbox to put them in: they stay in the ring
        }
        for pos in records {
            self.mark_ring_done(pos);
        }
        for k in &mut self.links {
            k.outbox_check = true;
        }
        true
    }

    /// Free the ring up to the first record not yet delivered.
    pub(super) fn release_ring(&mut self) {
        if let Some(pos) = self.scan.release() {
            // SAFETY: every record before `pos` is delivered, rescued or cancelled.
            unsafe { self.ring.release_to(pos) };
        }
    }
}
