//! Broker catalog sync: make the set of links match `mqtt_pub.brokers`; retire removed brokers.

use super::*;

impl Worker {
    /// Re-read `mqtt_pub.brokers` when a transaction changed it (or now and then), and make the
    /// set of links match: new brokers get a link (cold until connected and drained), changed
    /// ones reconnect, removed ones are retired.
    pub(super) fn maybe_sync_catalog(&mut self) {
        let generation = crate::shmem::require_shared().broker_generation.load(Ordering::Acquire);
        if generation == self.generation && Instant::now() < self.next_catalog_check {
            return;
        }
        self.generation = generation;
        self.next_catalog_check = Instant::now() + CATALOG_RECHECK;
        let named = if self.ext_present {
            match self.with_outbox(crate::data::catalog::load_all) {
                Some(n) => n,
                None => return,
            }
        } else {
            Vec::new()
        };
        let nslots = self.by_slot.len();
        let present: Vec<String> = named.iter().map(|n| n.cfg.name.clone()).collect();
        for n in named {
            let slot = n.slot as usize;
            if slot == 0 || slot >= nslots {
                guard::log(
                    Level::WARNING,
                    format!(
                        "pg_mqtt_pub: broker \"{}\" uses slot {slot}, beyond pg_mqtt_pub.max_brokers ({nslots}); not served",
                        n.cfg.name
                    ),
                );
                continue;
            }
            match self.by_slot[slot] {
                Some(i) if self.links[i].removed_at.is_none() && self.links[i].cfg.name == n.cfg.name => {
                    if self.links[i].cfg != n.cfg && self.links[i].switch_to.as_ref().is_none_or(|s| s.to != n.cfg) {
                        guard::log(Level::LOG, format!("pg_mqtt_pub: broker \"{}\" changed, reconnecting", n.cfg.name));
                        self.links[i].switch_later(n.cfg);
                    }
                }
                Some(_) => {} // the slot is still being released; picked up on a later pass
                None => {
                    guard::log(
                        Level::LOG,
                        format!("pg_mqtt_pub: broker \"{}\" added ({}:{})", n.cfg.name, n.cfg.host, n.cfg.port),
                    );
                    self.links.push(Link::new(n.slot, n.cfg));
                    self.index_links();
                }
            }
        }
        // Brokers no longer in the catalog.
        for l in 1..self.links.len() {
            if self.links[l].removed_at.is_none() && !present.contains(&self.links[l].cfg.name) {
                self.remove_link(l);
            }
        }
    }

    /// A broker was removed: stop talking to it; whatever of its messages is still in the ring
    /// (in flight, backlog, or not scanned yet) goes to the dead letters.
    pub(super) fn remove_link(&mut self, l: usize) {
        guard::log(Level::LOG, format!("pg_mqtt_pub: broker \"{}\" removed", self.links[l].cfg.name));
        let k = &mut self.links[l];
        k.removed_at = Some(self.ring.head());
        if let Some(c) = k.client.take() {
            c.close();
        }
        k.state = ConnState::Idle;
        k.status.set_connected(false);
        let mut recs: Vec<u64> = k.backlog.drain(..).map(|b| b.pos).collect();
        k.backlog_slots = 0;
        recs.extend(k.window.take().into_iter().filter_map(|f| if let Inflight::Ring(p) = f { Some(p) } else { None }));
        k.fetched.clear();
        recs.sort_unstable();
        for pos in recs {
            self.dead_letter_ring(l, pos, "the broker was removed before this message was acknowledged");
        }
        self.rebuild_waiter = true;
    }

    /// Release the slots of removed brokers once the scan has seen every record sent to them.
    pub(super) fn retire_removed(&mut self) {
        let before = self.links.len();
        let cursor = self.scan_low();
        self.links.retain(|k| match k.removed_at {
            Some(head) if cursor >= head => {
                k.status.release();
                false
            }
            _ => true,
        });
        if self.links.len() != before {
            self.index_links();
        }
    }
}
