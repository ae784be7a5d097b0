//! The waiter: one WaitEventSet over the latch, postmaster death and every broker's socket, and
//! the decision to sleep, linger or go on.

use super::*;

/// The WaitEventSet: latch + postmaster death + one socket per connected broker.
pub(super) struct Waiter {
    set: *mut pg::WaitEventSet,
    socks: Vec<Sock>,
    /// Room for every event of the set (kept, so a wait allocates nothing).
    events: Vec<pg::WaitEvent>,
}

/// A broker's socket in the set.
struct Sock {
    link: usize,
    fd: c_int,
    /// Its event's position in the set.
    pos: c_int,
    want_write: bool,
}

/// A socket the wait found ready.
#[derive(Clone, Copy)]
pub(super) struct ReadySock {
    pub link: usize,
    pub readable: bool,
    pub writable: bool,
}

impl Waiter {
    pub(super) fn new(fds: &[(usize, c_int)]) -> Waiter {
        // SAFETY: standard WaitEventSet construction in a long-lived context.
        unsafe {
            let set = crate::pg::compat::create_wait_event_set(2 + fds.len() as c_int);
            pg::AddWaitEventToSet(set, pg::WL_LATCH_SET, -1, pg::MyLatch, std::ptr::null_mut());
            pg::AddWaitEventToSet(set, pg::WL_EXIT_ON_PM_DEATH, -1, std::ptr::null_mut(), std::ptr::null_mut());
            let socks = fds
                .iter()
                .map(|&(l, fd)| {
                    let pos = pg::AddWaitEventToSet(
                        set,
                        pg::WL_SOCKET_READABLE,
                        fd,
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                    );
                    Sock { link: l, fd, pos, want_write: false }
                })
                .collect();
            // SAFETY: WaitEvent is plain data.
            let events = vec![std::mem::zeroed(); 2 + fds.len()];
            Waiter { set, socks, events }
        }
    }

    pub(super) fn same_sockets(&self, fds: &[(usize, c_int)]) -> bool {
        self.socks.len() == fds.len() && self.socks.iter().zip(fds).all(|(a, b)| a.link == b.0 && a.fd == b.1)
    }

    pub(super) fn want_write(&mut self, link: usize, w: bool) {
        for s in self.socks.iter_mut().filter(|s| s.link == link) {
            if s.want_write != w {
                let ev = pg::WL_SOCKET_READABLE | if w { pg::WL_SOCKET_WRITEABLE } else { 0 };
                // SAFETY: s.pos is a socket event of this set.
                unsafe { pg::ModifyWaitEvent(self.set, s.pos, ev, std::ptr::null_mut()) };
                s.want_write = w;
            }
        }
    }

    /// Wait; returns whether the latch was set, and the sockets found ready.
    pub(super) fn wait(&mut self, timeout_ms: i64, ready: &mut Vec<ReadySock>) -> bool {
        ready.clear();
        let cap = self.events.len() as c_int;
        // SAFETY: valid set; `events` has room for every event of the set.
        let n =
            unsafe { pg::WaitEventSetWait(self.set, timeout_ms, self.events.as_mut_ptr(), cap, pg::PG_WAIT_EXTENSION) };
        let mut latch = false;
        for e in &self.events[..n.max(0) as usize] {
            latch |= e.events & pg::WL_LATCH_SET != 0;
            if let Some(s) = self.socks.iter().find(|s| s.pos == e.pos) {
                let readable = e.events & pg::WL_SOCKET_READABLE != 0;
                let writable = e.events & pg::WL_SOCKET_WRITEABLE != 0;
                if readable || writable {
                    ready.push(ReadySock { link: s.link, readable, writable });
                }
            }
        }
        latch
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        // SAFETY: we own the set.
        unsafe { pg::FreeWaitEventSet(self.set) };
    }
}

impl Worker {
    /// Could the scan make progress right now (so the worker must not sleep)?
    pub(super) fn ring_ready(&mut self) -> bool {
        if self.links.iter().any(|k| !k.backlog.is_empty() && k.window_open()) {
            return true;
        }
        // SAFETY: only consumer; the view is dropped immediately.
        match unsafe { self.ring.peek_at(self.scan.cursor(), &mut self.scratch) } {
            Peek::Ready(r) => match self.by_slot.get(r.broker as usize).copied().flatten() {
                Some(l) => {
                    let k = &self.links[l];
                    k.removed_at.is_some() || k.takes_ring_record() || (self.links.len() > 1 && !k.cold())
                }
                None => true,
            },
            Peek::Empty | Peek::Reserved { .. } => false,
        }
    }

    /// Wait for something to do: a latch (commit, signal), a socket, or the next timer. Sleeps
    /// only when nothing is pending; right after work it lingers briefly instead (`LINGER`).
    pub(super) fn wait(&mut self, more: bool) {
        self.refresh_waiter();
        let busy = more || self.links.iter().any(|k| k.outbox_check && k.window_open() && self.ext_present);
        let mut timeout = self.next_timer_ms();
        let shared = crate::shmem::require_shared();
        let mut sleeping = false;
        let linger = !busy && self.last_work.elapsed() < LINGER;
        if busy || linger {
            timeout = 0;
        } else {
            // The wake-up protocol (shmem/mod.rs): announce, then re-check, then sleep.
            shared.worker_sleeping.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            sleeping = true;
            if self.ring_ready() || shared.broker_generation.load(Ordering::Acquire) != self.generation {
                timeout = 0;
            }
        }
        let w = self.waiter.as_mut().expect("waiter built above");
        for (i, k) in self.links.iter().enumerate() {
            w.want_write(i, k.client.as_ref().is_some_and(|c| c.socket() >= 0 && c.want_write()));
        }
        let mut ready = std::mem::take(&mut self.ready);
        let mut latch = w.wait(timeout.max(0), &mut ready);
        if linger && !latch && ready.is_empty() && !self.ring_ready() {
            // Unannounced nap: producers see worker_sleeping = false and do not set the latch.
            // At a low commit rate one that publishes meanwhile ends the nap through the futex
            // (shmem/mod.rs); when busy, the nap runs its course and collects several commits,
            // and committers make no call at all (pure/pace.rs).
            if self.pace.busy(Instant::now()) {
                std::thread::sleep(LINGER_NAP);
            } else {
                shared.worker_napping.store(1, Ordering::SeqCst);
                fence(Ordering::SeqCst);
                if !self.ring_ready() {
                    shmem::nap(LINGER_NAP);
                }
                shared.worker_napping.store(0, Ordering::SeqCst);
            }
            let w = self.waiter.as_mut().expect("waiter built above");
            latch = w.wait(0, &mut ready);
        }
        if sleeping {
            shared.worker_sleeping.store(false, Ordering::SeqCst);
        }
        if latch {
            // SAFETY: our own latch.
            unsafe { pg::ResetLatch(pg::MyLatch) };
        }
        // Most wake-ups are hot commits: query the outbox only if someone wrote to it (the flag
        // is raised whether or not we slept). Profiled: treating every wake-up as "look at the
        // outbox" ran one outbox query per commit.
        if shared.outbox_dirty.swap(false, Ordering::AcqRel) {
            for k in &mut self.links {
                k.outbox_check = true;
            }
        }
        guard::check_for_interrupts();
        for s in &ready {
            if let Some(k) = self.links.get_mut(s.link) {
                k.service_socket(s.readable, s.writable);
            }
        }
        self.ready = ready;
    }

    /// A new wait set when the set of sockets changed.
    fn refresh_waiter(&mut self) {
        let fds: Vec<(usize, c_int)> = self
            .links
            .iter()
            .enumerate()
            .filter_map(|(i, k)| k.client.as_ref().map(|c| (i, c.socket())))
            .filter(|&(_, fd)| fd >= 0)
            .collect();
        if self.rebuild_waiter || self.waiter.as_ref().is_none_or(|w| !w.same_sockets(&fds)) {
            self.waiter = Some(Waiter::new(&fds));
            self.rebuild_waiter = false;
        }
    }

    /// Milliseconds until the next timer: a reconnect, an outbox poll, a connect thread to look
    /// at, the extension or catalog check, stepping over a stuck commit, statistics to report;
    /// at most 1 s (keepalive handling granularity).
    fn next_timer_ms(&self) -> i64 {
        let now = Instant::now();
        let until = |t: Instant| t.saturating_duration_since(now).as_millis() as i64;
        let mut timeout: i64 = 1000;
        for k in &self.links {
            if let ConnState::Retry { at } = k.state {
                timeout = timeout.min(until(at));
            }
            if k.state == ConnState::Connected {
                timeout = timeout.min(until(k.next_outbox_poll));
            }
            if k.resolving.is_some() {
                timeout = timeout.min(RESOLVE_POLL_MS); // the thread does not set our latch
            }
            if let Some(t) = k.failover_until {
                timeout = timeout.min(until(t) + 1);
            }
        }
        if !self.ext_present {
            timeout = timeout.min(until(self.next_ext_check));
        }
        if let Some((pos, since)) = self.blocked_at {
            if pos == self.scan.cursor() {
                timeout = timeout.min(until(since + STEP_OVER_AFTER) + 1); // time to step over
            }
        }
        timeout = timeout.min(until(self.next_catalog_check));
        let stats = report_stats();
        if stats > 0 {
            timeout = timeout.min(stats);
        }
        timeout
    }
}
