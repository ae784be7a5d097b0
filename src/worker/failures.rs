//! Failures: a message the broker (or the client library) refused is counted in the outbox with
//! exponential backoff, or moved to the dead letters after `poison_max_attempts` — or at once when
//! it can never be accepted, or retried without counting when the broker is only busy
//! (`pure/limits.rs`, [`Verdict`]).

use super::*;

impl Worker {
    /// One message failed (the broker refused it, or the client library did). `Charge`: count
    /// the attempt in the outbox with exponential backoff, or dead-letter it after
    /// `poison_max_attempts`; `DeadLetter`: at once; `Retry`: back to the outbox, due after the
    /// backoff, its attempts unchanged. Other messages keep flowing: a failed row simply is not
    /// due until its `next_retry_at`.
    pub(super) fn message_failed(&mut self, l: usize, what: Inflight, verdict: Verdict, why: String) {
        let base = gucs::RETRY_BASE_MS.get() as i64;
        match verdict {
            Verdict::Charge => self.record_failure(l, what, why, base, gucs::POISON_MAX_ATTEMPTS.get()),
            Verdict::DeadLetter => self.record_failure(l, what, why, 0, 1),
            Verdict::Retry => self.record_failure(l, what, why, base, 0),
            Verdict::Expired => self.message_expired(l, what, why),
        }
    }

    /// A message whose expiry ran out before it could be sent is not sent (MQTT 5: a broker
    /// drops it too). It is counted (`mqtt_status().messages_expired`) and dropped, or with
    /// `pg_mqtt_pub.dead_letter_expired = on` kept in the dead letters.
    fn message_expired(&mut self, l: usize, what: Inflight, why: String) {
        let k = &mut self.links[l];
        k.status.messages_expired.fetch_add(1, Ordering::Relaxed);
        k.report.expired();
        if gucs::DEAD_LETTER_EXPIRED.get() {
            return self.record_failure(l, what, why, 0, 1);
        }
        match what {
            Inflight::Ring(pos) => self.mark_ring_done(pos),
            Inflight::Outbox { id, tid } => k.to_delete.push(outbox::Delivered { tid, id }),
        }
    }

    /// A ring record that can never be delivered (its broker was removed): dead-letter it.
    pub(super) fn dead_letter_ring(&mut self, l: usize, pos: u64, why: &str) {
        self.record_failure(l, Inflight::Ring(pos), why.to_string(), 0, 1);
    }

    /// `max` attempts, then the dead letters; `max` 0: not an attempt (nothing counted, never
    /// dead-lettered here).
    pub(super) fn record_failure(&mut self, l: usize, what: Inflight, why: String, base: i64, max: i32) {
        let status = self.links[l].status;
        if max > 0 {
            status.messages_failed.fetch_add(1, Ordering::Relaxed);
        }
        status.set_error(&why);
        let name = self.links[l].cfg.name.clone();
        let result = match what {
            Inflight::Outbox { id, .. } => {
                self.with_outbox(|| outbox::record_failure(&name, id, &why, base, max)).flatten()
            }
            Inflight::Ring(pos) => {
                let ring = self.ring;
                let mut scratch = Vec::new();
                let r = self
                    .with_outbox(|| {
                        // SAFETY: the record is scanned but not released: still intact.
                        match unsafe { ring.peek_at(pos, &mut scratch) } {
                            Peek::Ready(r) => outbox::insert_failed(
                                outbox::NewRow::of(&name, &r.message(), outbox::LANE_PUBLISHED),
                                &why,
                                base,
                                max,
                            ),
                            _ => None,
                        }
                    })
                    .flatten();
                self.mark_ring_done(pos);
                r
            }
        };
        match result {
            Some(f) if f.dead_lettered => {
                status.dead_lettered.fetch_add(1, Ordering::Relaxed);
                guard::log(
                    Level::WARNING,
                    format!(
                        "pg_mqtt_pub: message to \"{}\" on broker \"{name}\" moved to mqtt_pub.dead_letters after {} attempt{}: {why}",
                        f.topic,
                        f.attempts,
                        if f.attempts == 1 { "" } else { "s" }
                    ),
                );
            }
            Some(f) => {
                // wake up when it is due again
                let delay =
                    Duration::from_millis((base as u64).saturating_mul(1 << (f.attempts - 1).clamp(0, 20)).max(1));
                let k = &mut self.links[l];
                k.next_outbox_poll = k.next_outbox_poll.min(Instant::now() + delay);
            }
            None => {}
        }
    }
}
