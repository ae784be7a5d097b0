//! The ring scan: hand committed records to their brokers in order, step over a transaction stuck
//! in COMMIT (scanlog.rs), move a cold broker's records to the outbox, release what is done.

use super::*;

impl Worker {
    /// Scan the ring from the cursor: publish records of a hot broker (or queue them in its
    /// backlog while its window is full), take records of a cold broker back into the outbox
    /// (lane 0), dead-letter records of a removed broker, skip cancelled reservations. Returns
    /// true if more could be done right away.
    pub(super) fn process_ring(&mut self) -> bool {
        let mut rescue: Vec<(u64, u64)> = Vec::new();
        let mut failed: Vec<(usize, u64, String)> = Vec::new();
        let mut removed: Vec<(usize, u64)> = Vec::new();
        let mut orphans: Vec<(u64, u16)> = Vec::new();
        let mut more = true;
        let ring = self.ring;
        let mut scratch = std::mem::take(&mut self.scratch);
        self.fill_holes(&mut rescue, &mut removed, &mut orphans);
        // Backlogs first: they are older than anything the scan finds.
        for l in 0..self.links.len() {
            while !self.links[l].backlog.is_empty() && self.links[l].window_open() && !self.links[l].cold() {
                let (pos, n) = self.links[l].backlog[0];
                match self.send_ring_record(l, pos, &mut scratch, &mut failed) {
                    None => break,
                    Some(true) => self.mark_ring_done(pos),
                    Some(false) => {}
                }
                let k = &mut self.links[l];
                k.backlog.pop_front();
                k.backlog_slots -= n;
            }
        }
        let shared = crate::shmem::require_shared();
        let backlog_limit = ring.capacity() / 4;
        let scan_start = self.scan.cursor();
        for _ in 0..BATCH {
            let pos = self.scan.cursor();
            // SAFETY: this process is the ring's only consumer; pos is a record boundary.
            let (n, done) = match unsafe { ring.peek_at(pos, &mut scratch) } {
                Peek::Empty => {
                    more = false;
                    break;
                }
                Peek::Reserved { run } => {
                    if run == 0 || !self.waited_long_enough(pos) {
                        more = false;
                        break;
                    }
                    self.scan.push_hole(run);
                    continue;
                }
                Peek::Cancelled(n) => (n, true),
                Peek::Ready(r) => {
                    let n = r.nslots;
                    if self.scan.has_holes() {
                        // A stepped-over transaction that has committed since is older than this
                        // record, which may be its session's next one: its records go first.
                        self.fill_holes(&mut rescue, &mut removed, &mut orphans);
                    }
                    let Some(l) = self.by_slot.get(r.broker as usize).copied().flatten() else {
                        if shared.broker_generation.load(Ordering::Acquire) != self.generation {
                            break; // a broker was added or removed: sync the links first
                        }
                        // No broker owns the slot: nothing can deliver it.
                        orphans.push((pos, r.broker));
                        self.scan.push(n, false);
                        continue;
                    };
                    let k = &self.links[l];
                    if k.removed_at.is_some() {
                        removed.push((l, pos));
                        (n, false)
                    } else if k.cold() {
                        if !self.ext_present {
                            more = false;
                            break; // nowhere to put it yet
                        }
                        rescue.push((pos, n));
                        (n, false)
                    } else if k.takes_ring_record() {
                        match self.send_ring_record(l, pos, &mut scratch, &mut failed) {
                            None => {
                                more = false;
                                break;
                            }
                            Some(done) => (n, done),
                        }
                    } else if self.links.len() == 1 {
                        // the only broker is busy: leave the record where it is
                        more = false;
                        break;
                    } else {
                        // Busy broker: queue the record for it and keep scanning for the others.
                        let k = &mut self.links[l];
                        k.backlog.push_back((pos, n));
                        k.backlog_slots += n;
                        if k.backlog_slots > backlog_limit {
                            self.scan.push(n, false);
                            let why = format!(
                                "broker \"{}\" is too slow: its unsent messages fill a quarter of the ring; using the outbox",
                                self.links[l].cfg.name
                            );
                            guard::log(Level::WARNING, format!("pg_mqtt_pub: {why}"));
                            self.go_cold(l);
                            continue;
                        }
                        (n, false)
                    }
                }
            };
            self.scan.push(n, done);
        }
        self.scratch = scratch;
        if self.scan.cursor() != scan_start {
            self.last_work = Instant::now();
        }
        if !rescue.is_empty() {
            self.rescue(&rescue);
        }
        for (l, pos) in removed {
            self.dead_letter_ring(l, pos, "the broker was removed");
        }
        for (pos, slot) in orphans {
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
        for (l, pos, why) in failed {
            self.message_failed(l, Inflight::Ring(pos), why);
        }
        for k in &self.links {
            k.status.inflight.store(k.window.len() as u32, Ordering::Relaxed);
        }
        more
    }

    /// Hand one ring record to broker `l`. `None`: not connected, the caller keeps it;
    /// `Some(done)`: handed over, and already finished (QoS 0) or not (acknowledgement pending,
    /// or refused: then it is in `failed`).
    pub(super) fn send_ring_record(
        &mut self,
        l: usize,
        pos: u64,
        scratch: &mut Vec<u8>,
        failed: &mut Vec<(usize, u64, String)>,
    ) -> Option<bool> {
        let ring = self.ring;
        // SAFETY: only consumer; pos is a scanned, unreleased record.
        let Peek::Ready(r) = (unsafe { ring.peek_at(pos, scratch) }) else { return Some(true) };
        let k = &mut self.links[l];
        let c = k.client.as_mut()?;
        let (qos, h) = (r.qos, c.publish(r.topic_nul, r.payload, r.qos, r.retain));
        match h {
            Handoff::NotConnected => return None,
            Handoff::Accepted { mid } if qos > 0 => k.note_sent(mid, Inflight::Ring(pos)),
            Handoff::Accepted { .. } => {
                k.status.messages_sent.fetch_add(1, Ordering::Relaxed);
                return Some(true);
            }
            Handoff::Refused { rc } => failed.push((
                l,
                pos,
                format!("refused by the MQTT client library: {}", crate::mqtt::client::strerror(rc)),
            )),
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

    /// Stepped-over reservations that were published or cancelled since: the placeholder makes
    /// way for the records (not done yet), in order. Returns the records.
    pub(super) fn take_filled_holes(&mut self) -> Vec<(u64, u64)> {
        let mut found = Vec::new();
        let holes: Vec<Hole> = self.scan.holes().collect();
        for Hole { start, run } in holes {
            // SAFETY: a reservation the scan stepped over and has not released.
            let records = match unsafe { self.ring.run_state(start, run) } {
                RunState::Waiting => continue,
                RunState::Cancelled => Vec::new(),
                RunState::Ready(r) => r,
            };
            self.scan.fill_hole(start, &records);
            found.extend(records);
        }
        found
    }

    /// Hand the records of stepped-over transactions that committed since to their brokers,
    /// as the scan would have: queued behind the broker's backlog, rescued if it is cold.
    pub(super) fn fill_holes(
        &mut self,
        rescue: &mut Vec<(u64, u64)>,
        removed: &mut Vec<(usize, u64)>,
        orphans: &mut Vec<(u64, u16)>,
    ) {
        let shared = crate::shmem::require_shared();
        if !self.scan.has_holes()
            || !self.ext_present
            || shared.broker_generation.load(Ordering::Acquire) != self.generation
        {
            return; // later: nowhere to rescue to, or the links are about to change
        }
        let mut scratch = Vec::new();
        for (pos, n) in self.take_filled_holes() {
            // SAFETY: published, scanned and not released.
            let Peek::Ready(r) = (unsafe { self.ring.peek_at(pos, &mut scratch) }) else { continue };
            let broker = r.broker;
            match self.by_slot.get(broker as usize).copied().flatten() {
                None => orphans.push((pos, broker)),
                Some(l) if self.links[l].removed_at.is_some() => removed.push((l, pos)),
                Some(l) if self.links[l].cold() => rescue.push((pos, n)),
                Some(l) => {
                    let k = &mut self.links[l];
                    k.backlog.push_back((pos, n));
                    k.backlog_slots += n;
                }
            }
        }
    }

    /// Move ring records of a cold broker into the outbox (lane 0, ahead of everything written
    /// by publishers since), then let the ring forget them. False if there is no outbox.
    pub(super) fn rescue(&mut self, records: &[(u64, u64)]) -> bool {
        let ring = self.ring;
        let mut scratch = Vec::new();
        let names: Vec<Option<String>> =
            self.by_slot.iter().map(|i| i.map(|i| self.links[i].cfg.name.clone())).collect();
        let done = self.with_outbox(|| {
            for &(pos, _) in records {
                // SAFETY: these records are scanned but not released: still intact in the ring.
                if let Peek::Ready(r) = unsafe { ring.peek_at(pos, &mut scratch) } {
                    let Some(Some(name)) = names.get(r.broker as usize) else { continue };
                    let mut row = std::iter::once(outbox::NewRow::of(name, &r.message(), outbox::LANE_RECOVERED));
                    outbox::insert(&mut row);
                }
            }
        });
        if done.is_none() {
            return false; // no outbox to put them in: they stay in the ring
        }
        for &(pos, _) in records {
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
