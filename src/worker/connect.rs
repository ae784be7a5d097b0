//! Connecting a link: when it is due, to which node and address (pure/nodes.rs: a broker is a
//! list of nodes, ADR-013), with the broker's settings and password. A node's host name is
//! resolved on a helper thread (ADR-008); its addresses are then tried one at a time, in the
//! resolver's order.

use super::*;
use crate::pure::nodes::Node;
use std::net::IpAddr;

/// A host name being resolved on a helper thread: the node it is for, and its addresses.
pub(super) struct Resolving {
    pub(super) node: usize,
    handle: std::thread::JoinHandle<Result<Vec<IpAddr>, String>>,
}

/// Resolve `host` on a helper thread. getaddrinfo() blocks: a name that resolves slowly (or a
/// DNS server that does not answer) must not stop delivery to every broker for seconds per try.
/// The thread runs only Rust's standard library and libc (no PostgreSQL function, no client),
/// and blocks every signal, so PostgreSQL's handlers run in the main thread only.
fn resolve_on_helper_thread(node: usize, host: &str, port: u16) -> Result<Resolving, String> {
    let host = host.to_string();
    // SAFETY: plain signal-mask calls on this thread; the new thread inherits the full mask and
    // this thread's own mask is restored right after.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let handle = std::thread::Builder::new().name("pg_mqtt_pub resolve".into()).spawn(move || {
            std::panic::catch_unwind(|| addresses(&host, port))
                .unwrap_or_else(|_| Err("the resolver thread panicked".into()))
        });
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        handle.map(|handle| Resolving { node, handle }).map_err(|e| format!("cannot start a resolver thread: {e}"))
    }
}

/// Every address `host` resolves to, in the resolver's order, each once.
fn addresses(host: &str, port: u16) -> Result<Vec<IpAddr>, String> {
    use std::net::ToSocketAddrs;
    let mut out: Vec<IpAddr> = Vec::new();
    for a in (host, port).to_socket_addrs().map_err(|e| e.to_string())? {
        if !out.contains(&a.ip()) {
            out.push(a.ip());
        }
    }
    Ok(out)
}

/// The TLS files, checked before libmosquitto gets them: its own error ("Invalid function
/// arguments provided.") names neither the file nor what the OS said.
pub(super) fn check_tls_files(cfg: &BrokerConfig) -> Result<(), String> {
    if !cfg.use_tls {
        return Ok(());
    }
    for (what, path) in [("ca_cert", &cfg.ca_cert), ("client_cert", &cfg.client_cert), ("client_key", &cfg.client_key)]
    {
        crate::pure::settings_rules::readable_file(what, path).map_err(|e| e.message)?;
    }
    Ok(())
}

/// The password to log in with: the first line of `password_file` when one is set (read at
/// each connect, so rotating it needs no SQL and the secret never passes through SQL text or
/// the server log), else the inline one.
pub(super) fn read_password(cfg: &BrokerConfig) -> Result<String, String> {
    if cfg.password_file.is_empty() {
        return Ok(cfg.password.clone());
    }
    crate::pure::settings_rules::readable_file("password_file", &cfg.password_file).map_err(|e| e.message)?;
    std::fs::read_to_string(&cfg.password_file)
        .map(|s| s.lines().next().unwrap_or("").to_string())
        .map_err(|e| format!("cannot read password_file \"{}\": {e}", cfg.password_file))
}

impl Link {
    /// The node the link is on (or tries next); `None` when the host list is invalid.
    pub(super) fn node(&self) -> Option<&Node> {
        self.nodes.as_ref().ok().and_then(|n| n.get(self.rotation.node()))
    }

    /// Where the current attempt goes, for messages: `node` or `node (address)`.
    pub(super) fn at(&self) -> String {
        let Some(node) = self.node() else { return self.cfg.host.clone() };
        match self.target {
            Some(ip) if !node.is_address() => format!("{node} ({ip})"),
            _ => node.to_string(),
        }
    }
}

impl Worker {
    pub(super) fn manage_connection(&mut self, l: usize) {
        self.finish_resolving(l);
        let now = Instant::now();
        if self.links[l].removed_at.is_some() {
            return;
        }
        if !self.active() && self.links[l].state != ConnState::Idle {
            // Extension dropped and nothing left to deliver: let go of the broker.
            let k = &mut self.links[l];
            if let Some(c) = k.client.take() {
                c.close();
            }
            k.state = ConnState::Idle;
            k.status.set_connected(false);
            self.go_cold(l);
            self.rebuild_waiter = true;
            guard::log(
                Level::LOG,
                format!("pg_mqtt_pub: idle, disconnected from broker \"{}\"", self.links[l].cfg.name),
            );
            return;
        }
        self.end_failover_grace(l, now);
        match self.links[l].state {
            ConnState::Idle if self.active() => self.connect(l),
            ConnState::Idle => {}
            ConnState::Retry { at } if now >= at => self.connect(l),
            ConnState::Connecting { since } => {
                let k = &self.links[l];
                if now.duration_since(since) > k.connect_timeout() {
                    let why = match k.resolving {
                        Some(_) => format!(
                            "no address for {} within {} s (the name is still being resolved)",
                            k.node().map(|n| n.to_string()).unwrap_or_default(),
                            k.connect_timeout().as_secs()
                        ),
                        None => k.no_connack(None),
                    };
                    self.fail(l, why);
                }
            }
            _ => {}
        }
    }

    /// Connect to the current node's current address; first resolve the node's name (on a
    /// helper thread) if its addresses are not known yet.
    pub(super) fn connect(&mut self, l: usize) {
        if self.links[l].resolving.is_some() {
            return; // the previous resolution must end first (it cannot be cancelled)
        }
        self.rebuild_waiter = true;
        let k = &mut self.links[l];
        k.status.set_identity(&k.cfg.name, &k.cfg.host, k.cfg.port);
        if k.client.is_some() {
            return; // still connecting
        }
        let node = match &k.nodes {
            Ok(nodes) => nodes[k.rotation.node()].clone(),
            Err(e) => {
                let why = e.clone();
                return self.fail(l, why);
            }
        };
        if k.addrs.is_none() {
            if let Ok(ip) = node.host.parse::<IpAddr>() {
                k.addrs = Some(Ok(vec![ip]));
                k.rotation.resolved(1);
            } else {
                match resolve_on_helper_thread(k.rotation.node(), &node.host, node.port) {
                    Ok(r) => {
                        k.resolving = Some(r);
                        k.target = None;
                        k.state = ConnState::Connecting { since: Instant::now() };
                        k.tcp_up = false;
                    }
                    Err(e) => self.fail(l, e),
                }
                return;
            }
        }
        let ip = match k.addrs.as_ref().expect("set above") {
            Ok(a) if !a.is_empty() => a[k.rotation.addr().min(a.len() - 1)],
            Ok(_) => return self.fail(l, format!("cannot connect to {node}: the name has no address")),
            Err(e) => {
                let why = format!("cannot resolve {node}: {e}");
                return self.fail(l, why);
            }
        };
        k.target = Some(ip);
        let id = k.client_id();
        let password = match check_tls_files(&k.cfg).and_then(|()| read_password(&k.cfg)) {
            Ok(p) => p,
            Err(e) => return self.fail(l, e),
        };
        let opts = ClientOptions {
            broker: &k.cfg.name,
            client_id: &id,
            protocol: k.cfg.protocol,
            max_inflight: k.cfg.max_inflight,
            username: &k.cfg.username,
            password: &password,
            use_tls: k.cfg.use_tls,
            ca_cert: &k.cfg.ca_cert,
            client_cert: &k.cfg.client_cert,
            client_key: &k.cfg.client_key,
            tls_version: &k.cfg.tls_version,
            // An address node is checked against the address, as libmosquitto does; a named
            // node against its name, whichever of its addresses answers.
            tls_name: (!node.is_address()).then_some(node.host.as_str()),
        };
        let keepalive = k.cfg.keepalive;
        let result = match Client::new(&opts) {
            Ok(mut c) => {
                let r = c.connect(&ip.to_string(), node.port, keepalive);
                k.client = Some(c);
                r
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                k.state = ConnState::Connecting { since: Instant::now() };
                k.tcp_up = false;
            }
            Err(e) => {
                let why = format!("cannot connect to {}: {e}", k.at());
                self.fail(l, why)
            }
        }
    }

    /// A resolution on a helper thread has ended: with the node's addresses the attempt goes on
    /// (if it is still wanted: nothing failed, switched or removed the link meanwhile).
    pub(super) fn finish_resolving(&mut self, l: usize) {
        let k = &mut self.links[l];
        if !k.resolving.as_ref().is_some_and(|r| r.handle.is_finished()) {
            return;
        }
        let r = k.resolving.take().expect("checked");
        let node = r.node;
        let addrs = r.handle.join().unwrap_or_else(|_| Err("the resolver thread failed".into()));
        if !matches!(k.state, ConnState::Connecting { .. })
            || k.removed_at.is_some()
            || k.client.is_some()
            || k.rotation.node() != node
            || k.addrs.is_some()
        {
            return; // not wanted any more
        }
        k.rotation.resolved(addrs.as_ref().map_or(0, |a| a.len()));
        k.addrs = Some(addrs);
        self.connect(l);
    }
}
