//! One MQTT connection, as the worker sees it: a libmosquitto session (session.rs) and our own
//! QoS 0 writer (qos0_writer.rs, ADR-010) on one socket, driven from the worker's loop.
//!
//! Invariants:
//! * libmosquitto runs without threads: the worker drives it with `loop_read`, `loop_write` and
//!   `loop_misc` from its own WaitEventSet loop (`src/worker/`). Never `mosquitto_loop_start`.
//! * Callbacks only *record* what happened ([`Event`]s, the last error logged) in a boxed state
//!   whose address is the client's userdata (callbacks.rs); the client reads it between calls.
//! * Connecting is asynchronous (`mosquitto_connect_async`): a black-holed host never blocks the
//!   worker. Host name resolution inside it is not, so the worker calls `connect` for a host
//!   name on a helper thread (worker/link.rs); a client is `Send` for that.
//! * One client object per connection. libmosquitto would keep unacknowledged QoS 1/2 messages
//!   across a reconnect and resend them on its own, out of our sight — including a message that
//!   makes the broker close the connection every time. The worker resends instead (worker/link.rs),
//!   so a message is never sent from two places.
//! * QoS 0 packets of ring records are written by our own writer, several per `send()`, on
//!   libmosquitto's socket (plain TCP only; ADR-010). The two writers never interleave bytes:
//!   our buffer is sent only while libmosquitto's queue is empty, and libmosquitto may write
//!   only while none of our packets is half sent (no PINGREQ then, and no reading while a QoS 2
//!   message is in flight: its PUBREC makes libmosquitto write a PUBREL). A message for
//!   libmosquitto first waits for our buffer to be sent (`Handoff::Later`), so messages leave in
//!   the order they were handed over. This file keeps libmosquitto's side of that rule.
//! * Dropping the client destroys the session (closing the socket) before its callback state.
//!
//! The worker imports everything it needs of `mqtt/` from here. Nothing here touches PostgreSQL
//! symbols.

pub use super::callbacks::Event;
pub use super::errors::{reason_string, strerror, ERR_KEEPALIVE};
pub use super::handoff::{Extra, Handoff};
pub use super::session::{lib_init, ClientOptions, MQTT_V5};

use super::callbacks::CallbackState;
use super::errors::{check, connack_string};
use super::proplist::property_list;
use super::qos0_writer::Qos0Writer;
use super::session::{cstring, Session};
use crate::pure::limits::{publish_packet_size, Beyond, Limits, Verdict};
use crate::pure::packet;
use crate::pure::props;
use libmosquitto_sys as m;
use std::ffi::{c_char, c_int, c_void};
use std::time::Duration;

pub struct Client {
    /// Declared before `state`: fields drop in order, so the libmosquitto object, whose
    /// callbacks write into `state`, is destroyed first.
    session: Session,
    state: Box<CallbackState>,
    protocol: i32,
    /// The broker's name in pg_mqtt_pub (for messages).
    broker: String,
    /// QoS 0 packets may be written by us (plain TCP; with TLS libmosquitto owns the session).
    own_qos0: bool,
    out: Qos0Writer,
}

impl Client {
    pub fn new(o: &ClientOptions<'_>) -> Result<Client, String> {
        let mut state = Box::<CallbackState>::default();
        // SAFETY: the box's contents stay at their address when the box moves into the client,
        // which destroys the session before the box (see `Client`); on an error the session is
        // gone before `state` drops.
        let session = unsafe { Session::new(o, &mut *state) }?;
        Ok(Client {
            session,
            state,
            protocol: o.protocol,
            broker: o.broker.to_string(),
            own_qos0: !o.use_tls,
            out: Qos0Writer::new(),
        })
    }

    /// Start connecting (non-blocking; completion arrives as `Event::Connected`).
    pub fn connect(&mut self, host: &str, port: u16, keepalive: i32) -> Result<(), String> {
        let h = cstring(host)?;
        self.state.last_log_error = None;
        self.out.set_stall_limit(Duration::from_secs(keepalive.max(5) as u64));
        if self.protocol == MQTT_V5 {
            self.session.set_connect_properties(&h, port)?;
        }
        // SAFETY: valid client; host copied by libmosquitto.
        let rc = unsafe { m::mosquitto_connect_async(self.session.ptr(), h.as_ptr(), port as c_int, keepalive) };
        check(rc, "connect").map_err(|e| self.with_log(e))
    }

    /// Append libmosquitto's last logged error (TLS details live only there).
    pub fn with_log(&self, e: String) -> String {
        match &self.state.last_log_error {
            Some(l) if !e.contains(l.as_str()) => format!("{e} ({l})"),
            _ => e,
        }
    }

    pub fn socket(&self) -> c_int {
        self.session.socket()
    }

    /// The TCP connection is established (the broker's address answered; `getpeername` fails
    /// while the kernel is still connecting, and without a socket).
    pub fn tcp_connected(&self) -> bool {
        let fd = self.socket();
        if fd < 0 {
            return false;
        }
        // SAFETY: a sockaddr_storage is large enough for any address; fd is our socket.
        unsafe {
            let mut addr: libc::sockaddr_storage = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            libc::getpeername(fd, &mut addr as *mut _ as *mut libc::sockaddr, &mut len) == 0
        }
    }

    /// The TCP connection attempt failed (refused, unreachable): the socket hung up before it
    /// was ever connected. libmosquitto notices that itself for plain TCP, but with TLS it keeps
    /// retrying the handshake on the dead socket until the connect timeout (2.0.11), while the
    /// socket reports a hang-up at every wait. With the error when the kernel still has it.
    pub fn connect_failed(&self) -> Option<String> {
        let fd = self.socket();
        if fd < 0 || self.tcp_connected() {
            return None;
        }
        let mut p = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
        // SAFETY: one pollfd of ours, no wait; SO_ERROR into an int of the size given.
        unsafe {
            if libc::poll(&mut p, 1, 0) != 1 || p.revents & (libc::POLLERR | libc::POLLHUP) == 0 {
                return None;
            }
            let mut err: c_int = 0;
            let mut len = std::mem::size_of::<c_int>() as libc::socklen_t;
            libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR, &mut err as *mut c_int as *mut c_void, &mut len);
            Some(if err != 0 {
                std::io::Error::from_raw_os_error(err).to_string()
            } else {
                "the connection was refused or reset".into()
            })
        }
    }

    /// Is there anything to write (libmosquitto's queue or our packets)?
    pub fn want_write(&self) -> bool {
        self.out.waiting() > 0 || self.session.wants_write()
    }

    /// May libmosquitto read now? Reading makes it write a PUBREL for a PUBREC; while our packets
    /// are half sent, that would land in the middle of one. (Read anyway when no QoS 2 message is
    /// in flight: then nothing it reads makes it write.)
    fn may_read(&self) -> bool {
        !self.out.on_wire() || self.state.qos2.is_empty()
    }

    /// Read what the socket has; returns a MOSQ_ERR code (non-zero = connection dropped).
    pub fn loop_read(&mut self) -> c_int {
        if !self.may_read() && !self.flush() {
            return 0;
        }
        self.session.loop_read()
    }

    /// Write what waits: libmosquitto's queue, then our packets.
    pub fn loop_write(&mut self) {
        if self.out.waiting() > 0 {
            self.flush();
        } else if self.session.wants_write() {
            self.session.loop_write();
        }
    }

    /// Keepalive (PINGREQ) and ping-timeout handling. Not while our packets are half sent (the
    /// PINGREQ would land in the middle of one); `flush` watches a socket that takes nothing
    /// instead. (Packets of ours that wait unsent, behind libmosquitto's queue, are no obstacle.)
    pub fn loop_misc(&mut self) -> c_int {
        if self.out.on_wire() {
            return 0;
        }
        self.session.loop_misc()
    }

    /// Bytes of our own packets waiting for the socket.
    pub fn waiting(&self) -> usize {
        self.out.waiting()
    }

    /// The socket did not take all our packets (the broker is not reading as fast as we queue),
    /// or `MAX_WAITING` bytes wait: take no more messages until it has (the worker waits for the
    /// socket to become writable).
    pub fn busy(&self) -> bool {
        self.out.busy()
    }

    /// Send what waits: libmosquitto's queue first (our packets were queued after it), then our
    /// packets, as many per `send()` as the socket takes. True when nothing of ours waits.
    /// A failed `send` ends the connection (`Event::Disconnected`), as does a socket that takes
    /// nothing for the keepalive interval.
    pub fn flush(&mut self) -> bool {
        self.out.flush(&self.session, &mut self.state.events)
    }

    /// Hand one message over: QoS 0 of ring records to our own buffer (`Handoff::Queued`),
    /// everything else to libmosquitto. `topic_nul` must end with a NUL byte.
    pub fn publish(&mut self, topic_nul: &[u8], payload: &[u8], qos: u8, retain: bool, x: &Extra<'_>) -> Handoff {
        debug_assert_eq!(topic_nul.last(), Some(&0));
        let topic = &topic_nul[..topic_nul.len() - 1];
        let v5 = self.protocol == MQTT_V5;
        // MQTT 3.1.1 has no properties: they are not sent (the caller was refused at call time
        // when the broker's protocol was known; docs/reference.md "Message properties and message ids").
        if !v5 && !self.state.props_warned && props::any_explicit(x.props) {
            self.state.props_warned = true;
            self.state.dropped_props = true;
        }
        // The broker's limits are checked here rather than left to libmosquitto, which (2.0.11)
        // does not check Retain Available and would send the message anyway.
        let id_len = packet::id_property_len(x.id.map(|i| i.to_bytes()));
        let size = publish_packet_size(topic.len(), payload.len(), qos, v5, x.props.len() + id_len);
        if let Err(b) = self.state.limits.admit(qos, retain, size) {
            return Handoff::Refused { verdict: Verdict::DeadLetter, why: b.message(&self.broker) };
        }
        if qos == 0 && x.done_when_queued && self.own_qos0 {
            let id = x.id.map(|i| i.to_bytes());
            let p = packet::Publish { retain, v5, props: x.props, expiry_left: x.expiry_left, id };
            return self.out.queue(&self.session, &mut self.state.events, topic, payload, &p);
        }
        // libmosquitto writes this one: our packets, handed over before it, go first.
        if !self.flush() || self.out.dead() {
            return Handoff::Later;
        }
        let list = if v5 && (!x.props.is_empty() || x.id.is_some()) {
            match property_list(x) {
                Ok(l) => Some(l),
                Err(rc) => {
                    let (verdict, why) = self.refusal(rc, (topic, payload, qos));
                    return Handoff::Refused { verdict, why };
                }
            }
        } else {
            None
        };
        let mut mid: c_int = 0;
        // SAFETY: topic is NUL-terminated; libmosquitto copies topic and payload before returning.
        let rc = unsafe {
            m::mosquitto_publish_v5(
                self.session.ptr(),
                &mut mid,
                topic_nul.as_ptr() as *const c_char,
                payload.len() as c_int,
                payload.as_ptr() as *const c_void,
                qos as c_int,
                retain,
                list.as_ref().map_or(std::ptr::null(), |l| l.as_ptr()),
            )
        };
        drop(list);
        use m::mosq_err_t::*;
        let refused = [
            MOSQ_ERR_INVAL,
            MOSQ_ERR_NOT_SUPPORTED,
            MOSQ_ERR_QOS_NOT_SUPPORTED,
            MOSQ_ERR_RETAIN_NOT_SUPPORTED,
            MOSQ_ERR_MALFORMED_UTF8,
            MOSQ_ERR_PAYLOAD_SIZE,
            MOSQ_ERR_OVERSIZE_PACKET,
            MOSQ_ERR_NOMEM,
        ];
        if rc == MOSQ_ERR_SUCCESS as c_int {
            if qos == 2 {
                self.state.qos2.push(mid);
            }
            Handoff::Accepted { mid }
        } else if refused.iter().any(|e| *e as c_int == rc) {
            let (verdict, why) = self.refusal(rc, (&topic_nul[..topic_nul.len() - 1], payload, qos));
            Handoff::Refused { verdict, why }
        } else if qos == 0 {
            // QoS 0 is never queued by libmosquitto when the write fails.
            Handoff::Later
        } else {
            // QoS 1/2: the message was queued before the send failed (NO_CONN, CONN_LOST,
            // ERRNO ...); libmosquitto resends it after the reconnect.
            Handoff::Accepted { mid }
        }
    }

    /// Ask for a clean DISCONNECT (completion arrives as `Event::Disconnected(0)`). Not while
    /// our packets are still half written (the socket is closed without it then).
    pub fn disconnect(&mut self) {
        if !self.flush() {
            return;
        }
        self.session.disconnect();
    }

    /// Say goodbye (DISCONNECT, written if the socket takes it now; never waits) and destroy the
    /// client.
    pub fn close(mut self) {
        self.disconnect();
        self.loop_write();
    }

    /// The events recorded since the last call, in order.
    pub fn take_events(&mut self, into: &mut Vec<Event>) {
        into.clear();
        std::mem::swap(into, &mut self.state.events);
    }

    /// Where the broker said to go instead (MQTT 5 Server Reference), once.
    pub fn take_server_reference(&mut self) -> Option<String> {
        self.state.server_reference.take()
    }

    /// True once, the first time this client left a message's properties out (MQTT 3.1.1).
    pub fn take_dropped_props(&mut self) -> bool {
        std::mem::take(&mut self.state.dropped_props)
    }

    /// What the broker's CONNACK allowed (the MQTT defaults before it, and for MQTT 3.1.1).
    pub fn limits(&self) -> Limits {
        self.state.limits
    }

    /// A message libmosquitto would not queue (`Handoff::Refused { rc }`): what becomes of it, and
    /// why in words. Beyond the broker's announced limits, or malformed: it can never be sent as it
    /// is (dead-lettered at once). Anything else (out of memory) counts as a failed attempt.
    fn refusal(&self, rc: i32, m: (&[u8], &[u8], u8)) -> (Verdict, String) {
        use m::mosq_err_t::*;
        let (topic, payload, qos) = m;
        let l = self.state.limits;
        let beyond = match rc {
            r if r == MOSQ_ERR_QOS_NOT_SUPPORTED as c_int => Some(Beyond::Qos { asked: qos, max: l.max_qos }),
            r if r == MOSQ_ERR_RETAIN_NOT_SUPPORTED as c_int => Some(Beyond::Retain),
            r if r == MOSQ_ERR_OVERSIZE_PACKET as c_int => Some(Beyond::PacketSize {
                size: publish_packet_size(topic.len(), payload.len(), qos, self.protocol == MQTT_V5, 0),
                max: l.max_packet_size,
            }),
            _ => None,
        };
        let permanent =
            [MOSQ_ERR_PAYLOAD_SIZE, MOSQ_ERR_MALFORMED_UTF8, MOSQ_ERR_INVAL].iter().any(|e| *e as c_int == rc);
        match beyond {
            Some(b) => (Verdict::DeadLetter, b.message(&self.broker)),
            None => (
                if permanent { Verdict::DeadLetter } else { Verdict::Charge },
                format!("refused by the MQTT client library: {}", strerror(rc)),
            ),
        }
    }

    /// Describe a CONNACK refusal code for this client's protocol.
    pub fn describe_connack(&self, code: i32) -> String {
        if self.protocol == 5 {
            format!("broker refused the connection: {} (0x{code:02x})", reason_string(code))
        } else {
            format!("broker refused the connection: {} ({code})", connack_string(code))
        }
    }
}

// SAFETY: a client may move to another thread (the worker connects on a helper thread, see
// worker/link.rs): it is used by one thread at a time, libmosquitto is built thread-safe, its
// callbacks run on the thread that calls into it and touch only the client's own state box.
unsafe impl Send for Client {}
