//! A link: one broker connection's state — connecting (on a helper thread for host names, see
//! ADR-008), connected, failing with backoff, its events, the ack timeout and a settings switch —
//! and what the worker does when one of those changes.

use super::connect::Resolving;
use super::*;
use crate::mqtt::client::{ERR_KEEPALIVE, MQTT_V5};
use crate::pure::nodes::{self, Next, Node, Rotation};
use std::net::IpAddr;

/// MQTT 5 reason code of a DISCONNECT for a packet the broker could not parse.
const MALFORMED_PACKET: i32 = 0x81;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum ConnState {
    /// No client (extension absent, or before the first connect).
    Idle,
    Connecting {
        since: Instant,
    },
    Connected,
    Retry {
        at: Instant,
    },
}

/// What a libmosquitto message id stands for until its acknowledgement.
#[derive(Clone, Copy)]
pub(super) enum Inflight {
    /// A ring record at this position (released once acknowledged).
    Ring(u64),
    /// An outbox row (deleted once acknowledged).
    Outbox { id: i64, tid: outbox::Tid },
}

/// A settings change waiting for the in-flight window to drain (at most until `deadline`).
pub(super) struct Switch {
    pub(super) to: BrokerConfig,
    pub(super) deadline: Instant,
}

/// One broker connection and its delivery state. Brokers are independent: each has its own
/// socket in the wait set, its own hot/cold mode, backoff, in-flight window, backlog and outbox
/// pass, so a dead or slow broker never holds up another.
pub(super) struct Link {
    pub(super) slot: u16,
    pub(super) status: &'static BrokerShared,
    pub(super) cfg: BrokerConfig,
    pub(super) client: Option<Client>,
    /// The broker's nodes (its `host` list), or why the list is invalid (a row written by hand).
    pub(super) nodes: Result<Vec<Node>, String>,
    /// Which node and address is tried next, and how many failed in a row (pure/nodes.rs).
    pub(super) rotation: Rotation,
    /// The current node's addresses, once resolved (`None`: not yet; an error: not resolvable).
    pub(super) addrs: Option<Result<Vec<IpAddr>, String>>,
    /// A host name being resolved on a helper thread.
    pub(super) resolving: Option<Resolving>,
    /// The address of the current attempt or connection.
    pub(super) target: Option<IpAddr>,
    /// A connected node of a list failed while the broker was hot: until this moment the
    /// broker stays hot (its messages wait in the ring and in flight) while the next node is
    /// tried; then it goes cold (`end_failover_grace`).
    pub(super) failover_until: Option<Instant>,
    /// The node that was connected when the connection was lost (for the failover's log line).
    pub(super) failed_node: Option<String>,
    /// Server References followed since the last connection (at most one per node: no loop).
    pub(super) redirects: u32,
    pub(super) state: ConnState,
    pub(super) failures: u32,
    /// Messages handed over and not yet acknowledged; probe mode and ack timeout (window.rs).
    pub(super) window: Window<Inflight>,
    /// When a "session taken over" warning was last logged (at most once a minute).
    pub(super) takeover_logged_at: Option<Instant>,
    /// When the current connection was accepted (CONNACK).
    pub(super) up_since: Option<Instant>,
    /// The broker refused a message (reason code >= 0x80) on the current connection.
    pub(super) refused_here: bool,
    /// Ring records of this (hot) broker the scan went past while its window was full: sent
    /// before anything newer for it. Bounded: past a quarter of the ring the broker goes cold.
    pub(super) backlog: VecDeque<Span>,
    pub(super) backlog_slots: u64,
    /// Outbox rows fetched and not yet handed to libmosquitto.
    pub(super) fetched: VecDeque<outbox::Row>,
    /// Acknowledged outbox rows to delete.
    pub(super) to_delete: Vec<outbox::Delivered>,
    /// The outbox may have rows for us (set by wake-ups and timers, cleared by an empty fetch).
    pub(super) outbox_check: bool,
    /// Where the current pass over the outbox is: the last (lane, id) fetched. `None` starts
    /// from the head (after a reconnect, going cold, or reaching the end of a pass).
    pub(super) drain_after: Option<outbox::PassPos>,
    pub(super) next_outbox_poll: Instant,
    /// A settings change waiting for the in-flight window to drain.
    pub(super) switch_to: Option<Switch>,
    pub(super) refusal: Option<String>,
    /// What the broker's CONNACK allowed on the current connection.
    pub(super) limits: Limits,
    /// The current connection attempt got as far as a TCP connection (seen while servicing its
    /// socket: libmosquitto closes the socket before it reports a failed connect).
    pub(super) tcp_up: bool,
    /// Removed from the catalog: the slot is released once the scan has passed this ring head
    /// (every record published to it has been seen and dead-lettered).
    pub(super) removed_at: Option<u64>,
    /// Latency, oldest message in flight, outage and expiry lines (report.rs).
    pub(super) report: Report,
}

impl Link {
    pub(super) fn new(slot: u16, cfg: BrokerConfig) -> Link {
        let status = &crate::shmem::require_shared().brokers()[slot as usize];
        status.set_identity(&cfg.name, &cfg.host, cfg.port);
        let nodes = nodes::parse_used(&cfg.host, cfg.port).map_err(|e| e.message);
        Link {
            slot,
            status,
            rotation: Rotation::new(nodes.as_ref().map_or(1, |n| n.len())),
            nodes,
            cfg,
            client: None,
            addrs: None,
            resolving: None,
            target: None,
            failover_until: None,
            failed_node: None,
            redirects: 0,
            state: ConnState::Idle,
            failures: 0,
            window: Window::default(),
            takeover_logged_at: None,
            up_since: None,
            refused_here: false,
            backlog: VecDeque::new(),
            backlog_slots: 0,
            fetched: VecDeque::new(),
            to_delete: Vec::new(),
            outbox_check: true,
            drain_after: None,
            next_outbox_poll: Instant::now(),
            switch_to: None,
            refusal: None,
            limits: Limits::default(),
            tcp_up: false,
            removed_at: None,
            report: Report::new(),
        }
    }

    /// The settings changed (or `mqtt_reconnect()` asked to start over): the node list anew,
    /// from its first node.
    pub(super) fn configured(&mut self) {
        self.nodes = nodes::parse_used(&self.cfg.host, self.cfg.port).map_err(|e| e.message);
        self.rotation = Rotation::new(self.nodes.as_ref().map_or(1, |n| n.len()));
        self.addrs = None;
        self.target = None;
        self.failed_node = None;
    }

    pub(super) fn cold(&self) -> bool {
        self.status.is_cold()
    }

    /// Reconnect with `cfg` once the messages in flight are acknowledged (`maybe_switch`).
    pub(super) fn switch_later(&mut self, cfg: BrokerConfig) {
        self.switch_to = Some(Switch { to: cfg, deadline: Instant::now() + DRAIN_GRACE });
    }

    pub(super) fn window_open(&self) -> bool {
        self.state == ConnState::Connected
            && self.switch_to.is_none()
            && self.removed_at.is_none()
            && !self.client.as_ref().is_some_and(|c| c.busy())
            && self.window.has_room(self.cfg.max_inflight.min(self.limits.receive_maximum as u32) as usize)
    }

    /// Can a new ring record for this broker be handed over right now?
    pub(super) fn takes_ring_record(&self) -> bool {
        self.cold() || (self.backlog.is_empty() && self.window_open())
    }

    /// A QoS 1/2 message handed over (`at`: its COMMIT time, µs, for the latency).
    pub(super) fn note_sent(&mut self, mid: i32, what: Inflight, at: i64) {
        self.window.sent(mid, what, Instant::now());
        self.report.sent(mid, at, matches!(what, Inflight::Ring(_)));
    }

    pub(super) fn client_id(&self) -> String {
        // SAFETY: plain read of a PostgreSQL global (the worker is connected).
        let database = unsafe { pg::MyDatabaseId }.to_u32();
        if !self.cfg.client_id.is_empty() {
            // The setting is every database's, and a named broker's row travels with a copy or a
            // restore of its database into the same cluster: as written only when one database
            // publishes.
            let restricted = !gucs::DATABASE.string().is_empty();
            return crate::pure::identity::configured_client_id(&self.cfg.client_id, restricted, database);
        }
        let (sys, host, dir, port) = crate::pg::instance::facts();
        let broker = (self.slot != 0).then_some(self.cfg.name.as_str());
        crate::pure::identity::default_client_id(
            sys,
            &host,
            &dir,
            port,
            crate::pure::identity::Whose { database, broker },
        )
    }

    pub(super) fn service_socket(&mut self, readable: bool, writable: bool) {
        let Some(c) = self.client.as_mut() else { return };
        if c.socket() < 0 {
            return;
        }
        if !self.tcp_up && matches!(self.state, ConnState::Connecting { .. }) {
            self.tcp_up = c.tcp_connected();
        }
        if readable {
            c.loop_read();
        }
        if c.socket() >= 0 && (writable || c.want_write()) {
            c.loop_write();
        }
        if c.socket() >= 0 {
            c.loop_misc();
        }
    }
}

/// What an event on a link asks of the worker; the link changes only its own state.
pub(super) enum Outcome {
    Nothing,
    /// A ring record was delivered: it may be released.
    RingDone(u64),
    /// The broker refused this message: poison handling, as the verdict says.
    Failed(Inflight, Verdict, String),
    /// The connection ended, and why; `taken_over`: another client took the session (0x8E).
    Lost {
        why: String,
        taken_over: bool,
    },
}

impl Link {
    /// One event recorded by the client's callbacks.
    pub(super) fn on_event(&mut self, ev: Event) -> Outcome {
        match ev {
            Event::Connected(0) => {
                self.state = ConnState::Connected;
                // the backoff is reset only once the connection has proved stable (fail())
                self.up_since = Some(Instant::now());
                self.refused_here = false;
                self.refusal = None;
                self.outbox_check = true;
                self.window.connected(Instant::now());
                self.limits = self.client.as_ref().map(|c| c.limits()).unwrap_or_default();
                self.status.set_limits(Some((self.limits, self.cfg.protocol == MQTT_V5)));
                self.status.set_connected(true);
                self.report.connected();
                self.failover_until = None;
                self.redirects = 0;
                let at = self.at();
                self.status.set_node(&at);
                let failed = self.failed_node.take();
                let line = if self.rotation.connected() {
                    // another node than the one last connected to
                    self.status.failovers.fetch_add(1, Ordering::Relaxed);
                    let from = failed.map(|f| format!(", which took over from node {f}")).unwrap_or_default();
                    format!("connected to broker \"{}\" at node {at}{from}", self.cfg.name)
                } else {
                    format!("connected to broker \"{}\" at {at}", self.cfg.name)
                };
                guard::log(Level::LOG, format!("pg_mqtt_pub: {line}"));
                Outcome::Nothing
            }
            Event::Connected(code) => {
                let text = self.client.as_ref().map(|c| c.describe_connack(code)).unwrap_or_default();
                let unsupported = if self.cfg.protocol == MQTT_V5 { 0x84 } else { 1 };
                self.refusal = Some(if code == unsupported { self.protocol_hint(text) } else { text });
                Outcome::Nothing
            }
            Event::Disconnected(rc) if matches!(self.state, ConnState::Connecting { .. }) => {
                let why = self.refusal.take().unwrap_or_else(|| self.no_connack(Some(rc)));
                Outcome::Lost { why, taken_over: false }
            }
            Event::Disconnected(rc) if self.state == ConnState::Connected => {
                let why = self.refusal.take().unwrap_or_else(|| self.disconnect_reason(rc));
                Outcome::Lost { why, taken_over: rc == REASON_SESSION_TAKEN_OVER }
            }
            Event::Disconnected(_) => Outcome::Nothing,
            Event::Published { mid, reason } => {
                let Some(what) = self.window.acknowledged(mid, Instant::now()) else { return Outcome::Nothing };
                self.report.acknowledged(mid, reason < 0x80);
                if reason >= 0x80 {
                    self.refused_here = true;
                    let text = crate::mqtt::client::reason_string(reason).to_lowercase();
                    let why = format!("broker refused: {text} (0x{reason:02x})");
                    return Outcome::Failed(what, crate::pure::limits::verdict(reason), why);
                }
                self.status.messages_sent.fetch_add(1, Ordering::Relaxed);
                match what {
                    Inflight::Ring(pos) => Outcome::RingDone(pos),
                    Inflight::Outbox { id, tid } => {
                        self.to_delete.push(outbox::Delivered { tid, id });
                        Outcome::Nothing
                    }
                }
            }
        }
    }

    /// The connection ended before a CONNACK came (`rc`: how libmosquitto saw it end; `None`:
    /// our own connect timeout). Say which, so that a broker that never answers is not a mystery.
    pub(super) fn no_connack(&self, rc: Option<i32>) -> String {
        let at = self.at();
        let Some(c) = self.client.as_ref() else { return format!("connecting to {at} failed") };
        if !self.tcp_up && !c.tcp_connected() {
            let base = match rc {
                Some(rc) if rc != ERR_KEEPALIVE => {
                    format!("cannot connect to {at}: {}", crate::mqtt::client::strerror(rc))
                }
                _ => format!("no TCP connection to {at} within {} s", self.connect_timeout().as_secs()),
            };
            return c.with_log(base);
        }
        let base = match rc {
            Some(rc) if rc != ERR_KEEPALIVE => format!(
                "the broker at {at} closed the connection before its CONNACK ({})",
                crate::mqtt::client::strerror(rc)
            ),
            _ => format!("no CONNACK from the broker at {at} within {} s", self.connect_timeout().as_secs()),
        };
        self.protocol_hint(c.with_log(base))
    }

    /// A broker that speaks only MQTT 3.1.1 ignores, closes or refuses an MQTT 5 CONNECT: say
    /// what to try.
    fn protocol_hint(&self, why: String) -> String {
        if self.cfg.protocol == MQTT_V5 {
            format!("{why}; if the broker speaks only MQTT 3.1.1, set protocol_version = '3.1.1'")
        } else {
            why
        }
    }

    /// How long a connection may take to be accepted (TCP, TLS and CONNACK).
    /// `pg_mqtt_pub.connect_timeout`: a broker that accepts TCP but never answers CONNECT (an
    /// MQTT 3.1.1-only broker sent MQTT 5, a TLS port spoken to in plain text) is explained in
    /// seconds, not after a keepalive interval (when libmosquitto itself would give up).
    pub(super) fn connect_timeout(&self) -> Duration {
        Duration::from_secs(gucs::CONNECT_TIMEOUT_S.get().max(1) as u64)
    }

    fn disconnect_reason(&self, rc: i32) -> String {
        let base = if rc == 0 {
            "disconnected".to_string()
        } else if rc == MALFORMED_PACKET {
            // Some brokers mis-read MQTT 5 properties (mqttools 0.50: user properties), and every
            // message carries one, the message id.
            format!(
                "broker closed the connection: {} (0x{rc:02x}); if it cannot read MQTT 5 user properties, \
                 set pg_mqtt_pub.message_id = off",
                crate::mqtt::client::reason_string(rc)
            )
        } else if rc >= 0x80 {
            format!("broker closed the connection: {} (0x{rc:02x})", crate::mqtt::client::reason_string(rc))
        } else {
            format!("connection lost: {}", crate::mqtt::client::strerror(rc))
        };
        self.client.as_ref().map(|c| c.with_log(base.clone())).unwrap_or(base)
    }

    /// The TCP connection of the current attempt could not be made (`Client::connect_failed`).
    pub(super) fn tcp_failed(&self) -> Option<String> {
        let c = self.client.as_ref()?;
        if !matches!(self.state, ConnState::Connecting { .. }) || self.tcp_up {
            return None;
        }
        c.connect_failed().map(|e| format!("cannot connect to {}: {e}", self.at()))
    }

    /// libmosquitto closes the socket of a failed TLS handshake without a disconnect callback
    /// (loop_read returns MOSQ_ERR_TLS): notice it here instead of waiting for the timeout.
    pub(super) fn tls_failed(&self) -> Option<String> {
        let c = self.client.as_ref()?;
        (matches!(self.state, ConnState::Connecting { .. } | ConnState::Connected) && c.socket() < 0)
            .then(|| c.with_log("TLS handshake failed".into()))
    }
}

impl Worker {
    /// The broker can no longer be written to: publishers use the outbox from now on, and its
    /// backlog in the ring is taken back into the outbox.
    pub(super) fn go_cold(&mut self, l: usize) {
        let ring = self.ring;
        let k = &mut self.links[l];
        let s = k.status;
        shmem::with_lock(shmem::RING_LOCK, pg::LWLockMode::LW_EXCLUSIVE, || {
            if !s.is_cold() {
                s.flip_head.store(ring.head(), Ordering::Release);
                s.set_mode(Mode::Cold);
            }
        });
        k.fetched.clear();
        k.drain_after = None;
        k.outbox_check = true;
        if !k.backlog.is_empty() {
            let recs: Vec<Span> = k.backlog.drain(..).collect();
            k.backlog_slots = 0;
            if !self.rescue(recs.iter().map(|r| r.pos)) {
                // no outbox to put them in (extension dropped): keep them for later
                let k = &mut self.links[l];
                k.backlog_slots = recs.iter().map(|r| r.nslots).sum();
                k.backlog.extend(recs);
            }
        }
    }

    /// A connection attempt failed or the connection dropped: record why, schedule a retry.
    /// Another client with our client id took the session over (MQTT 5 reason 0x8E): a
    /// configuration problem (two clusters sharing an explicit `client_id`), not the fault of any
    /// message. Nothing is charged, the reconnect backoff keeps growing (two clients fighting
    /// over one id must not hammer the broker), and the warning is logged at most once a minute.
    pub(super) fn taken_over(&mut self, l: usize, why: String) {
        let k = &mut self.links[l];
        let quiet = k.takeover_logged_at.is_some_and(|t| t.elapsed() < Duration::from_secs(60));
        if !quiet {
            k.takeover_logged_at = Some(Instant::now());
            PgError::new(
                guard::Code::ERRCODE_SUCCESSFUL_COMPLETION,
                format!("pg_mqtt_pub: broker \"{}\": another client took over the session: {why}", k.cfg.name),
            )
            .hint("Two clients use one MQTT client id. Give each cluster its own client_id, or leave it empty for the default, which differs between clusters.")
            .emit(Level::WARNING);
        }
        self.go_cold(l);
        let k = &mut self.links[l];
        k.status.set_connected(false);
        k.status.set_error(&why);
        k.report.connection_lost();
        self.drop_client(l, false, false);
        self.schedule_retry(l);
    }

    pub(super) fn fail(&mut self, l: usize, why: String) {
        let was_connected = self.links[l].state == ConnState::Connected;
        let k = &mut self.links[l];
        // Reconnect at once only after a connection that stayed up, or that ended after the
        // broker refused a message (mosquitto closes the connection after a refusal: that
        // message has its own retry backoff). A broker that accepts and drops at once, or two
        // clients taking one client id from each other, get the growing backoff, not a
        // reconnect per millisecond.
        if was_connected && (k.refused_here || k.up_since.is_some_and(|t| t.elapsed() >= STABLE_CONNECTION)) {
            k.failures = 0;
            k.rotation.round_from_here();
        }
        let failed_at = k.at();
        if was_connected {
            k.failed_node = Some(failed_at.clone());
        }
        // MQTT 5 "use another server" / "server moved": to the named node, if it is one of the
        // list's (a broker must not be able to send our credentials elsewhere), and not in a
        // loop. Otherwise the next address of this node, or the next node, at once; the backoff
        // only once every node failed in a row (pure/nodes.rs).
        let reference = k.client.as_mut().and_then(|c| c.take_server_reference());
        let referred = match (&reference, &k.nodes) {
            (Some(r), Ok(list)) if (k.redirects as usize) < list.len() => nodes::referenced(list, r, k.cfg.port),
            _ => None,
        };
        let next = match referred {
            Some(i) => {
                k.redirects += 1;
                k.rotation.go_to(i);
                Next::AtOnce
            }
            None => k.rotation.failed(),
        };
        if let Some(r) = &reference {
            let what = match referred {
                Some(_) => "going there".to_string(),
                None => "ignored: not one of the broker's nodes, or already followed".to_string(),
            };
            guard::log(
                Level::LOG,
                format!("pg_mqtt_pub: broker \"{}\": the node at {failed_at} refers us to \"{r}\" (MQTT 5 Server Reference); {what}", k.cfg.name),
            );
        }
        if k.rotation.addr() == 0 {
            k.addrs = None; // another node (or this one again): resolved when its turn comes
        }
        let several = k.nodes.as_ref().is_ok_and(|n| n.len() > 1);
        let grace = Duration::from_millis(gucs::PUBLISH_TIMEOUT_MS.get().max(0) as u64);
        // A node of a list failed while the broker was hot: stay hot while the next node is
        // tried, for at most publish_timeout_ms (the time a commit may wait for ring space):
        // what was in flight is sent again to the node that takes over, before anything newer,
        // and nothing moves to the outbox if one does in time (ADR-013).
        let keep_hot = several
            && next == Next::AtOnce
            && !k.cold()
            && !grace.is_zero()
            && (was_connected || k.failover_until.is_some());
        if keep_hot {
            k.failover_until.get_or_insert(Instant::now() + grace);
            self.drop_client(l, true, true);
        } else {
            // The in-flight records are older than the broker's backlog: save them to the
            // outbox first (drop_client), then the backlog (go_cold), so the outbox ids keep
            // their order.
            self.links[l].failover_until = None;
            self.drop_client(l, true, false);
            self.go_cold(l);
        }
        let k = &mut self.links[l];
        k.status.set_connected(false);
        k.status.set_error(&why);
        k.report.connection_lost();
        let then = match (several, next) {
            (true, Next::AtOnce) => {
                format!("; trying node {} now", k.node().map(|n| n.to_string()).unwrap_or_default())
            }
            _ => String::new(),
        };
        if was_connected {
            guard::log(
                Level::WARNING,
                format!("pg_mqtt_pub: lost connection to broker \"{}\" at {failed_at}: {why}{then}", k.cfg.name),
            );
        } else if k.failures == 0 {
            guard::log(Level::WARNING, format!("pg_mqtt_pub: broker \"{}\": {why}{then}", k.cfg.name));
        }
        match next {
            Next::AtOnce => {
                k.state = ConnState::Retry { at: Instant::now() };
                self.rebuild_waiter = true;
            }
            Next::Backoff => self.schedule_retry(l),
        }
    }

    /// The failover grace of a hot broker (see `fail`) is over and no node has taken over:
    /// the broker goes cold, its waiting records move to the outbox, in order.
    pub(super) fn end_failover_grace(&mut self, l: usize, now: Instant) {
        let k = &mut self.links[l];
        let Some(t) = k.failover_until else { return };
        if k.state == ConnState::Connected {
            k.failover_until = None;
            return;
        }
        if now < t {
            return;
        }
        k.failover_until = None;
        guard::log(
            Level::WARNING,
            format!(
                "pg_mqtt_pub: broker \"{}\": no node took over within pg_mqtt_pub.publish_timeout_ms ({} ms); messages wait in the outbox",
                k.cfg.name,
                gucs::PUBLISH_TIMEOUT_MS.get()
            ),
        );
        self.go_cold(l);
    }

    pub(super) fn schedule_retry(&mut self, l: usize) {
        let k = &mut self.links[l];
        let delay = reconnect_delay_ms(gucs::RECONNECT_INTERVAL_MS.get() as u64, k.failures);
        k.failures = k.failures.saturating_add(1);
        k.state = ConnState::Retry { at: Instant::now() + Duration::from_millis(delay) };
        self.rebuild_waiter = true;
    }

    /// Forget the client and everything it had in flight: we resend ourselves, in order —
    /// unacknowledged ring records go to the outbox (lane 0, ahead of everything), unacknowledged
    /// outbox rows are simply fetched again. (libmosquitto would resend them from its memory,
    /// without letting us notice a message that keeps killing the connection.) `keep_hot`: the
    /// broker stays hot through a failover (`fail`): the ring records go back to the front of
    /// its backlog instead, to be sent to the next node first.
    pub(super) fn drop_client(&mut self, l: usize, count_suspect: bool, keep_hot: bool) {
        let k = &mut self.links[l];
        if let Some(c) = k.client.take() {
            c.close();
        }
        self.rebuild_waiter = true;
        match k.window.lost(count_suspect) {
            Lost::Nothing => {}
            // A failover (keep_hot): the node, not the message, is the likelier cause, and a
            // charged message would go to the outbox behind newer ones while the broker stays
            // hot. It is sent first to the next node (still probing); a message that brings
            // down every node is charged when the round ends (keep_hot is false then).
            Lost::Suspect(Inflight::Ring(pos)) if keep_hot => self.back_to_backlog(l, &[pos]),
            Lost::Suspect(Inflight::Outbox { .. }) if keep_hot => {} // fetched again
            Lost::Suspect(what) => {
                let why = "the broker closed the connection when this message was sent".into();
                self.message_failed(l, what, Verdict::Charge, why)
            }
            Lost::Resend(inflight) => {
                let mut ring: Vec<u64> =
                    inflight.iter().filter_map(|f| if let Inflight::Ring(p) = f { Some(*p) } else { None }).collect();
                ring.sort_unstable();
                if keep_hot {
                    self.back_to_backlog(l, &ring);
                } else if !ring.is_empty() {
                    self.rescue(ring);
                }
            }
        }
        let k = &mut self.links[l];
        k.fetched.clear();
        k.drain_after = None;
        k.report.forget_inflight();
        k.status.inflight.store(0, Ordering::Relaxed);
    }

    /// Ring records that were in flight (`positions`, ascending) go back to the front of the
    /// broker's backlog: older than anything in it, they are sent first.
    fn back_to_backlog(&mut self, l: usize, positions: &[u64]) {
        let ring = self.ring;
        let mut scratch = Vec::new();
        for &pos in positions.iter().rev() {
            // SAFETY: only consumer; a record in flight is scanned and not released.
            if let Peek::Ready(r) = unsafe { ring.peek_at(pos, &mut scratch) } {
                let k = &mut self.links[l];
                k.backlog.push_front(Span { pos, nslots: r.nslots });
                k.backlog_slots += r.nslots;
            }
        }
    }

    /// Take the events the client recorded and carry out what each asks of the worker.
    pub(super) fn handle_events(&mut self, l: usize) {
        let Some(c) = self.links[l].client.as_mut() else { return };
        if c.take_dropped_props() {
            guard::log(
                Level::WARNING,
                format!(
                    "pg_mqtt_pub: broker \"{}\" is connected with MQTT 3.1.1, which has no message properties: they are left out (the messages are sent)",
                    self.links[l].cfg.name
                ),
            );
        }
        let Some(c) = self.links[l].client.as_mut() else { return };
        let mut events = std::mem::take(&mut self.events);
        c.take_events(&mut events);
        for ev in events.iter().copied() {
            match self.links[l].on_event(ev) {
                Outcome::Nothing => {}
                Outcome::RingDone(pos) => self.mark_ring_done(pos),
                Outcome::Failed(what, verdict, why) => self.message_failed(l, what, verdict, why),
                Outcome::Lost { why, taken_over: true } => self.taken_over(l, why),
                Outcome::Lost { why, taken_over: false } => self.fail(l, why),
            }
        }
        self.events = events;
        if let Some(why) = self.links[l].tcp_failed() {
            self.fail(l, why);
        }
        if let Some(why) = self.links[l].tls_failed() {
            self.fail(l, why);
        }
        let k = &self.links[l];
        k.status.inflight.store(k.window.len() as u32, Ordering::Relaxed);
    }

    /// A broker that keeps the connection but stops acknowledging must not stall delivery.
    pub(super) fn check_ack_timeout(&mut self, l: usize) {
        let limit = Duration::from_millis(gucs::ACK_TIMEOUT_MS.get() as u64);
        let k = &self.links[l];
        if k.state == ConnState::Connected && k.window.stalled(Instant::now(), limit) {
            let why = format!(
                "no acknowledgement for {} ms with {} messages in flight; reconnecting",
                limit.as_millis(),
                k.window.len()
            );
            self.fail(l, why);
            let k = &mut self.links[l];
            k.failures = 0; // reconnect at once
            k.state = ConnState::Retry { at: Instant::now() };
        }
    }

    /// SIGHUP: the default broker's settings may have changed (and the protocol and window of
    /// every broker); the catalog is read again too.
    pub(super) fn reloaded(&mut self) {
        self.next_catalog_check = Instant::now();
        let new = BrokerConfig::default_broker();
        let proto = (new.protocol, new.max_inflight);
        for l in 0..self.links.len() {
            let k = &mut self.links[l];
            let mut target = if l == 0 { new.clone() } else { k.cfg.clone() };
            (target.protocol, target.max_inflight) = proto;
            if target == k.cfg {
                continue;
            }
            guard::log(
                Level::LOG,
                format!(
                    "pg_mqtt_pub: broker \"{}\" settings changed, reconnecting to {}:{}",
                    target.name, target.host, target.port
                ),
            );
            k.switch_later(target);
        }
    }

    /// Complete a pending settings switch once in-flight messages are acknowledged (or the grace
    /// period ends: then they are taken back into the outbox and sent again).
    pub(super) fn maybe_switch(&mut self, l: usize) {
        let k = &self.links[l];
        let Some(switch) = &k.switch_to else { return };
        if k.state == ConnState::Connected && !k.window.is_empty() && Instant::now() < switch.deadline {
            return;
        }
        let new = self.links[l].switch_to.take().expect("checked above").to;
        self.go_cold(l);
        self.drop_client(l, false, false);
        let k = &mut self.links[l];
        k.cfg = new;
        k.configured();
        k.status.set_connected(false);
        k.status.set_limits(None); // perhaps another broker now: learn its limits anew
        k.status.set_identity(&k.cfg.name, &k.cfg.host, k.cfg.port);
        k.state = ConnState::Idle;
        k.failures = 0;
        self.rebuild_waiter = true;
    }
}
