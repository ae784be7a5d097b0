//! What the worker hands a connection with each message ([`Extra`]) and what it gets back
//! ([`Handoff`]): the one contract between the worker's delivery bookkeeping and the two writers
//! on the connection (libmosquitto's and our own QoS 0 writer, ADR-010).
//!
//! Plain data; no libmosquitto call. The worker reaches these through `mqtt::client`.

use crate::pure::limits::Verdict;
use std::ffi::CStr;

/// What a message carries besides topic and payload.
#[derive(Clone, Copy, Default)]
pub struct Extra<'a> {
    /// Encoded MQTT 5 properties (props.rs).
    pub props: &'a [u8],
    /// The message id, sent as the user property `pg-mqtt-pub-id`.
    pub id: Option<&'a CStr>,
    /// The expiry left, in seconds (replaces the one in `props`).
    pub expiry_left: Option<u32>,
    /// The caller counts a QoS 0 message as done once it is queued (ring records): it may be
    /// written by our own QoS 0 writer (`Handoff::Queued`). Otherwise (outbox rows, deleted only
    /// once written) libmosquitto writes it and reports it as `Event::Published`.
    pub done_when_queued: bool,
}

/// Result of handing one message to the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handoff {
    /// Accepted; for QoS 1/2 libmosquitto owns it until its acknowledgement (`mid`), and resends
    /// it after a reconnect. QoS 0 is written (or queued for writing) on the socket, reported
    /// by `Event::Published`.
    Accepted { mid: i32 },
    /// QoS 0 with `done_when_queued`: in our buffer for the socket; nothing more to hear of it.
    Queued,
    /// Refused before it was queued (beyond the broker's limits, invalid ...): what becomes of it
    /// and why, in words.
    Refused { verdict: Verdict, why: String },
    /// Not now — not connected (libmosquitto does not queue QoS 0), or the socket is still busy
    /// with the other writer's bytes; try again later.
    Later,
}
