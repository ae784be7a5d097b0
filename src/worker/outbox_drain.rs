//! The outbox drain: deliver a broker's outbox rows oldest first, delete them once acknowledged,
//! turn a drained broker hot again (ADR-003), prune old dead letters.

use super::*;

impl Worker {
    /// Deliver broker `l`'s outbox rows, oldest first. Returns true if more could be done now.
    pub(super) fn process_outbox(&mut self, l: usize) -> bool {
        if self.links[l].state != ConnState::Connected || !self.ext_present {
            return false;
        }
        loop {
            let k = &mut self.links[l];
            if !k.window_open() {
                return false;
            }
            if k.fetched.is_empty() {
                if !k.outbox_check {
                    return false;
                }
                // While a cold broker may still have records in the ring from before it went cold
                // (the scan has not passed flip_head), only recovered rows (lane 0) may go: a
                // publisher's row is newer than any of those records.
                let low = self.scan_low();
                let k = &mut self.links[l];
                let recovered_only = k.cold() && low < k.status.flip_head.load(Ordering::Acquire);
                let mut exclude: Vec<i64> = k.to_delete.iter().map(|d| d.id).collect();
                exclude.extend(k.window.values().filter_map(|f| match f {
                    Inflight::Outbox { id, .. } => Some(*id),
                    Inflight::Ring(_) => None,
                }));
                let limit = gucs::OUTBOX_BATCH_SIZE.get() as usize;
                let name = k.cfg.name.clone();
                let after = k.drain_after;
                let Some((rows, more)) =
                    self.with_outbox(|| outbox::fetch(&name, limit, &exclude, recovered_only, after))
                else {
                    return false;
                };
                let k = &mut self.links[l];
                if !more {
                    // end of this pass; the next one starts from the head (retries that came due)
                    k.outbox_check = after.is_some();
                    k.drain_after = None;
                } else {
                    k.drain_after = rows.last().map(|r| outbox::PassPos { lane: r.lane, id: r.id });
                }
                if rows.is_empty() {
                    return false;
                }
                k.fetched.extend(rows);
            }
            let k = &mut self.links[l];
            let row = k.fetched.pop_front().expect("fetched above");
            let what = Inflight::Outbox { id: row.id, tid: row.tid };
            let expiry_left = match row.expires_at.map(|e| props::seconds_left(e, now_us())) {
                None => None,
                Some(Ok(left)) => Some(left),
                Some(Err(late)) => {
                    self.message_failed(l, what, Verdict::Expired, props::expired_why(late));
                    continue;
                }
            };
            let k = &mut self.links[l];
            let Some(c) = k.client.as_mut() else {
                k.fetched.push_front(row);
                return false;
            };
            // done_when_queued: false — a row is deleted once libmosquitto has written it.
            let x = Extra { props: &row.props, id: row.message_id.as_deref(), expiry_left, done_when_queued: false };
            match c.publish(&row.topic_nul, &row.payload, row.qos, row.retain, &x) {
                Handoff::Accepted { mid } => k.note_sent(mid, what, row.created_at),
                Handoff::Refused { verdict, why } => self.message_failed(l, what, verdict, why),
                Handoff::Queued => {
                    // (not asked for above; if it were, queued is as good as written for QoS 0)
                    k.status.messages_sent.fetch_add(1, Ordering::Relaxed);
                    k.report.written(row.created_at);
                    k.to_delete.push(outbox::Delivered { tid: row.tid, id: row.id });
                }
                Handoff::Later => {
                    k.fetched.push_front(row);
                    return false;
                }
            }
        }
    }

    /// Delete acknowledged rows, in batches: one transaction per few acknowledgements would cap
    /// the drain rate at the transaction rate. Everything goes once the window empties.
    pub(super) fn flush_deletes(&mut self, l: usize) {
        let k = &mut self.links[l];
        let outbox_in_flight = k.window.values().any(|f| matches!(f, Inflight::Outbox { .. }));
        if k.to_delete.is_empty() || (k.to_delete.len() < DELETE_BATCH && outbox_in_flight) {
            return;
        }
        let rows = std::mem::take(&mut k.to_delete);
        self.with_outbox(|| outbox::delete(&rows)); // without the extension the rows are gone anyway
    }

    /// A cold broker whose outbox is empty, with nobody about to write to it, goes hot again.
    pub(super) fn maybe_go_hot(&mut self, l: usize) {
        let k = &self.links[l];
        if !k.cold()
            || k.state != ConnState::Connected
            || k.removed_at.is_some()
            || !self.ext_present
            || k.outbox_check
            || !k.fetched.is_empty()
            || !k.to_delete.is_empty()
            || !k.backlog.is_empty()
            || k.window.values().any(|f| matches!(f, Inflight::Outbox { .. }))
            || self.scan_low() < k.status.flip_head.load(Ordering::Acquire)
            || k.status.cold_writers.load(Ordering::Acquire) != 0
        {
            return;
        }
        let s = k.status;
        let name = k.cfg.name.clone();
        // No SQL under the ring lock (every committing publisher needs it, and the outbox query
        // can wait for a table lock). Instead: note the registration epoch while no transaction
        // is registered as a cold writer; every earlier one has ended, so a snapshot taken after
        // this sees its rows. Look at the outbox; go hot only if still nobody has registered.
        let lock = shmem::RING_LOCK;
        let epoch = shmem::with_lock(lock, pg::LWLockMode::LW_SHARED, || {
            (s.cold_writers.load(Ordering::Acquire) == 0).then(|| s.cold_epoch.load(Ordering::Acquire))
        });
        let Some(epoch) = epoch else { return };
        let hot = match self.with_outbox(|| outbox::exists(&name)) {
            Some(false) => Some(shmem::with_lock(lock, pg::LWLockMode::LW_EXCLUSIVE, || {
                let unchanged =
                    s.cold_writers.load(Ordering::Acquire) == 0 && s.cold_epoch.load(Ordering::Acquire) == epoch;
                if unchanged {
                    s.set_mode(Mode::Hot);
                }
                unchanged
            })),
            _ => None,
        };
        if hot == Some(true) {
            guard::log(Level::LOG, format!("pg_mqtt_pub: broker \"{name}\" outbox drained, back to the hot path"));
        } else {
            self.links[l].outbox_check = true;
        }
    }

    /// Measure the outbox for `max_outbox_size` (the running count misses dead-lettering,
    /// replays, a DBA's DELETE): at start, then every minute, or ten times as long as the last
    /// measurement took if that is longer (one pass over a large outbox's heap).
    pub(super) fn maybe_measure_outbox(&mut self) {
        if !self.ext_present || Instant::now() < self.next_measure {
            return;
        }
        let started = Instant::now();
        self.with_outbox(|| crate::data::outbox_size::measure(crate::pg::spi::Rights::Restricted, 0));
        self.next_measure = Instant::now() + Duration::from_secs(60).max(started.elapsed() * 10);
    }

    /// Delete dead letters older than `dead_letter_retain_days` (0 = keep): at start, then about
    /// hourly, in batches of 1000 rows (at most 20 per round) so no transaction runs long.
    pub(super) fn maybe_prune(&mut self) {
        if !self.ext_present || Instant::now() < self.next_prune {
            return;
        }
        self.next_prune = Instant::now() + Duration::from_secs(3600);
        let days = gucs::DEAD_LETTER_RETAIN_DAYS.get();
        if days == 0 {
            return;
        }
        let mut total = 0;
        for _ in 0..20 {
            let Some(n) = self.with_outbox(|| outbox::prune_dead_letters(days, 1000)) else { return };
            total += n;
            if n < 1000 {
                break;
            }
        }
        if total > 0 {
            guard::log(Level::LOG, format!("pg_mqtt_pub: pruned {total} dead letters older than {days} days"));
        }
    }
}
