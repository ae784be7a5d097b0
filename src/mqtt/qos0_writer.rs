//! Our own QoS 0 writer (ADR-010): QoS 0 packets of ring records, encoded by pure/packet.rs into
//! one buffer and written on libmosquitto's socket, several per `send()` (plain TCP only).
//!
//! Invariants:
//! * The two writers on one socket never interleave bytes. This side: our buffer is sent only
//!   while libmosquitto's queue is empty (`flush` lets it write its queue first). The other side
//!   (client.rs): libmosquitto may write only while none of our packets is half sent
//!   ([`Qos0Writer::on_wire`]): no PINGREQ then, and no reading while a QoS 2 message is in
//!   flight (its PUBREC makes libmosquitto write a PUBREL).
//! * Bounded: past `MAX_WAITING` bytes the writer takes nothing more ([`Handoff::Later`]; the
//!   link counts as busy), so a broker that stops reading costs the worker no memory.
//! * A failed `send()`, or a socket that takes nothing for `stall_limit` while bytes wait, ends
//!   the connection (`Event::Disconnected`): libmosquitto's keepalive check cannot run meanwhile.
//!   Once so, the writer is `dead`: it queues nothing more (a client lives for one connection).
//! * QoS 0 is at most once: what waits here when the connection ends is dropped.
//!
//! Only client.rs drives the writer; nothing here touches PostgreSQL symbols.

use super::callbacks::Event;
use super::errors::ERR_KEEPALIVE;
use super::handoff::Handoff;
use super::session::Session;
use crate::pure::limits::Verdict;
use crate::pure::packet;
use libmosquitto_sys as m;
use std::ffi::{c_int, c_void};
use std::time::{Duration, Instant};

/// Send our buffered QoS 0 packets once this many bytes wait (and at the end of every worker
/// loop iteration, `Client::flush`).
const FLUSH_AT: usize = 64 * 1024;

/// Take no more QoS 0 messages while this many bytes wait for the socket: the broker is not
/// reading fast enough, and the messages are better kept in the ring (or, if it stays so, moved
/// to the outbox) than in the worker's memory.
const MAX_WAITING: usize = 1024 * 1024;

/// QoS 0 packets we write ourselves, waiting for the socket.
pub(super) struct Qos0Writer {
    buf: Vec<u8>,
    /// Bytes of `buf` already sent.
    sent: usize,
    /// Since when the socket has taken nothing while bytes wait.
    stalled_since: Option<Instant>,
    /// A send failed, or the socket took nothing for too long: the connection is over (reported
    /// as `Event::Disconnected`); nothing more is queued.
    dead: bool,
    /// The last flush left bytes waiting: the socket is full (the worker waits for it to take
    /// more, rather than queueing more or spinning on a message that must wait for them).
    blocked: bool,
    /// Part of the buffer has been sent and part waits: a packet may be cut in two on the wire,
    /// so libmosquitto must not write anything until the rest is out.
    on_wire: bool,
    /// A socket that takes nothing for this long while our packets wait: the connection is
    /// treated as lost (libmosquitto's keepalive check cannot run meanwhile, see
    /// `Client::loop_misc`).
    stall_limit: Duration,
}

impl Qos0Writer {
    pub(super) fn new() -> Qos0Writer {
        Qos0Writer {
            buf: Vec::new(),
            sent: 0,
            stalled_since: None,
            dead: false,
            blocked: false,
            on_wire: false,
            stall_limit: Duration::from_secs(60),
        }
    }

    /// How long the socket may take nothing while our packets wait (one keepalive interval).
    pub(super) fn set_stall_limit(&mut self, limit: Duration) {
        self.stall_limit = limit;
    }

    /// Bytes of our own packets waiting for the socket.
    pub(super) fn waiting(&self) -> usize {
        self.buf.len() - self.sent
    }

    /// A packet of ours is half sent: libmosquitto must not write now.
    pub(super) fn on_wire(&self) -> bool {
        self.on_wire
    }

    /// The connection is over for this writer (a failed send, or a stalled socket).
    pub(super) fn dead(&self) -> bool {
        self.dead
    }

    /// The socket did not take all our packets, or `MAX_WAITING` bytes wait.
    pub(super) fn busy(&self) -> bool {
        self.blocked || self.waiting() >= MAX_WAITING
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.sent = 0;
        self.stalled_since = None;
        self.blocked = false;
        self.on_wire = false;
        if self.buf.capacity() > 4 * MAX_WAITING {
            self.buf = Vec::new(); // one huge message made it grow: give the memory back
        }
    }

    /// Send what waits: libmosquitto's queue first (our packets were queued after it), then our
    /// packets, as many per `send()` as the socket takes. True when nothing of ours waits.
    /// A failed `send` ends the connection (`Event::Disconnected` into `events`), as does a
    /// socket that takes nothing for `stall_limit`.
    pub(super) fn flush(&mut self, lib: &Session, events: &mut Vec<Event>) -> bool {
        if self.waiting() == 0 {
            return true;
        }
        let fd = lib.socket();
        if fd < 0 {
            self.clear(); // the connection is gone; QoS 0 is at most once
            return true;
        }
        if lib.wants_write() {
            // None of our bytes is on the wire here (we send only while libmosquitto's queue is
            // empty, and it writes only while none is).
            lib.loop_write();
            if lib.socket() < 0 {
                self.clear(); // it found the connection gone (and reports it)
                return true;
            }
            if lib.wants_write() {
                self.blocked = true;
                return false;
            }
        }
        let before = self.sent;
        while self.waiting() > 0 {
            let rest = &self.buf[self.sent..];
            // SAFETY: fd is libmosquitto's connected, non-blocking socket; rest is valid memory.
            let n = unsafe {
                libc::send(fd, rest.as_ptr() as *const c_void, rest.len(), libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
            };
            if n >= 0 {
                self.sent += n as usize;
                self.on_wire |= n > 0;
                continue;
            }
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => break,
                _ => {
                    self.clear();
                    self.dead = true;
                    events.push(Event::Disconnected(m::mosq_err_t::MOSQ_ERR_CONN_LOST as c_int));
                    return true;
                }
            }
        }
        if self.waiting() == 0 {
            self.clear();
            return true;
        }
        let now = Instant::now();
        if self.sent != before {
            self.stalled_since = None;
        }
        let since = *self.stalled_since.get_or_insert(now);
        if now.duration_since(since) >= self.stall_limit {
            self.clear();
            self.dead = true;
            events.push(Event::Disconnected(ERR_KEEPALIVE));
            return true;
        }
        self.blocked = true;
        false
    }

    /// Append a QoS 0 PUBLISH to our buffer; send once enough waits. `Later` while the broker
    /// is not reading (`MAX_WAITING`) or the connection is gone.
    pub(super) fn queue(
        &mut self,
        lib: &Session,
        events: &mut Vec<Event>,
        topic: &[u8],
        payload: &[u8],
        p: &packet::Publish<'_>,
    ) -> Handoff {
        if self.dead || lib.socket() < 0 {
            return Handoff::Later;
        }
        if self.waiting() >= MAX_WAITING {
            self.flush(lib, events);
            if self.dead || self.waiting() >= MAX_WAITING {
                return Handoff::Later;
            }
        }
        if self.sent >= FLUSH_AT {
            // keep the buffer from growing while the socket takes part of it at a time
            self.buf.drain(..self.sent);
            self.sent = 0;
        }
        if packet::encode_qos0(&mut self.buf, topic, payload, p).is_err() {
            let why = "its stored properties cannot be encoded (the outbox or ring record was altered)".to_string();
            return Handoff::Refused { verdict: Verdict::DeadLetter, why };
        }
        if self.waiting() >= FLUSH_AT {
            self.flush(lib, events);
        }
        Handoff::Queued
    }
}
