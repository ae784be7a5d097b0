//! Shutdown: let in-flight messages be acknowledged briefly, save everything else in the ring
//! (including what waits behind a transaction still committing) to the outbox, disconnect.

use super::*;

impl Worker {
    /// Shutting down: the ring is shared memory and will not survive the restart, so everything
    /// still in it — sent but unacknowledged, or not sent yet — goes to the outbox (lane 0,
    /// ahead of everything else). Brokers start cold, so it is delivered first after the restart.
    pub(super) fn save_ring_to_outbox(&mut self) {
        // Every committed record counts, including those behind a transaction still committing:
        // step over reservations at once, and give their transactions (which got the same
        // SIGTERM) a moment to finish COMMIT. That includes transactions between PRE_COMMIT and
        // COMMIT, which hold promised ring room but no place in the ring yet (a commit waiting
        // for a synchronous standby ends its wait on SIGTERM and then takes it).
        let give_up = Instant::now() + SHUTDOWN_COMMIT_WAIT;
        let mut scratch = std::mem::take(&mut self.scratch);
        loop {
            // read under the lock, before the scan: a promise taken before it is in the ring
            // by the time the scan looks (ring.rs: taken under the same lock)
            let promised = crate::shmem::with_lock(crate::shmem::RING_LOCK, pg::LWLockMode::LW_SHARED, || {
                self.ring.promised_slots()
            });
            let caught_up = loop {
                // SAFETY: only consumer; the scan cursor is a record boundary.
                match unsafe { self.ring.peek_at(self.scan.cursor(), &mut scratch) } {
                    Peek::Ready(r) => self.scan.push(r.nslots, false),
                    Peek::Reserved { run } if run > 0 => self.scan.push_hole(run),
                    Peek::Reserved { .. } => break false,
                    Peek::Empty => break true,
                }
            };
            self.take_filled_holes();
            if (caught_up && !self.scan.has_holes() && promised == 0) || Instant::now() >= give_up {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.scratch = scratch;
        let abandoned = self.scan.abandon_holes() + usize::from(self.ring.promised_slots() > 0);
        if abandoned > 0 {
            guard::log(
                Level::WARNING,
                format!(
                    "pg_mqtt_pub: worker stopping; {abandoned} transactions were still committing after {} s, their messages are not saved",
                    SHUTDOWN_COMMIT_WAIT.as_secs()
                ),
            );
        }
        let left = self.scan.unfinished();
        if left.is_empty() || !self.ext_present {
            return;
        }
        for k in &mut self.links {
            k.window.clear();
            k.backlog.clear();
        }
        self.rescue(left.iter().map(|r| r.pos));
        self.release_ring();
        guard::log(
            Level::LOG,
            format!("pg_mqtt_pub: worker stopping; {} undelivered messages saved to the outbox", left.len()),
        );
    }

    pub(super) fn shutdown(&mut self) -> ! {
        let until = Instant::now() + SHUTDOWN_GRACE;
        while Instant::now() < until
            && self.links.iter().any(|k| {
                let unsent = k.client.as_ref().is_some_and(|c| c.waiting() > 0);
                (unsent || !k.window.is_empty()) && k.state == ConnState::Connected
            })
        {
            for l in 0..self.links.len() {
                self.links[l].service_socket(true, true);
                self.handle_events(l);
            }
            nap(10);
        }
        self.release_ring();
        for l in 0..self.links.len() {
            let rows = std::mem::take(&mut self.links[l].to_delete);
            self.with_outbox(|| outbox::delete(&rows));
            if let Some(c) = self.links[l].client.as_mut() {
                c.disconnect();
                c.loop_write();
            }
            self.links[l].client = None;
        }
        self.save_ring_to_outbox();
        // SAFETY: exits the process.
        crate::pg::compat::proc_exit(0)
    }
}
