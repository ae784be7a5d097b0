//! A broker as a list of nodes (ADR-013): the `host` syntax, and which node the worker tries
//! next. Pure logic; `cargo test` runs it.
//!
//! `host` is `node[,node...]`, a node `name`, `name:port`, an IPv4 address with an optional
//! `:port`, an IPv6 address alone (`::1`) or in brackets (`[::1]`, `[::1]:1884`). A node
//! without a port uses the broker's `port`. The same rule serves `pg_mqtt_pub.broker_host`
//! (its check hook), `mqtt_broker_add(host := ...)` and the worker, so all three say the same
//! thing about the same mistake.
//!
//! Rotation (which node next): the list is tried in order; when the node in use fails (or an
//! attempt on it does), the next one is tried at once, and only a whole round of failures in a
//! row makes the reconnect backoff grow. A working node is kept: nothing moves back to the first
//! node on its own (`mqtt_reconnect()` starts again from the first).

use super::settings_rules::{Invalid, Problem};

/// At most this many nodes in one list.
pub const MAX_NODES: usize = 16;

/// The longest `host` text (the list as written).
pub const MAX_LIST_LEN: usize = 1000;

/// One node of a broker's list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// A host name or an address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
}

impl Node {
    /// The host is an address, not a name (no resolution, and TLS checks the address).
    pub fn is_address(&self) -> bool {
        self.host.parse::<std::net::IpAddr>().is_ok()
    }
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

fn invalid(message: String) -> Invalid {
    Invalid {
        message,
        hint: "Pass a host name or address, or a comma-separated list of nodes host[:port] \
               (e.g. 'mq1.example.com,mq2.example.com:1884'); write an IPv6 address with a port as [::1]:1883.",
        kind: Problem::BadValue,
    }
}

/// A host name or address, without scheme or port (1 to 253 of `A-Za-z0-9._-`, or `:` in an
/// IPv6 address).
fn host_ok(h: &str) -> bool {
    if h.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    // a name: labels of 1 to 63 letters, digits and "-" (and "_", seen in internal names),
    // starting and ending with a letter or digit, separated by single dots
    (1..=253).contains(&h.len())
        && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && h.split('.').all(|label| {
            label.len() <= 63
                && label.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                && label.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
        })
        || h.ends_with('.') && h.len() > 1 && host_ok(&h[..h.len() - 1]) && !h[..h.len() - 1].ends_with('.')
}

fn parse_port(p: &str, whole: &str) -> Result<u16, Invalid> {
    match p.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) && !p.starts_with('+') => Ok(n as u16),
        _ => Err(invalid(format!("invalid port {} in host {}", super::topic::quoted(p), super::topic::quoted(whole)))),
    }
}

fn parse_node(item: &str, default_port: u16, whole: &str) -> Result<Node, Invalid> {
    let bad = || {
        if item.len() == whole.trim().len() {
            invalid(format!("invalid host {}", super::topic::quoted(whole))) // one node: as before lists
        } else {
            invalid(format!("invalid node {} in host {}", super::topic::quoted(item), super::topic::quoted(whole)))
        }
    };
    let (host, port) = if let Some(rest) = item.strip_prefix('[') {
        // [v6] or [v6]:port
        let (inside, after) = rest.split_once(']').ok_or_else(bad)?;
        if inside.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad());
        }
        let port = match after {
            "" => default_port,
            _ => parse_port(after.strip_prefix(':').ok_or_else(bad)?, whole)?,
        };
        (inside.to_string(), port)
    } else if item.matches(':').count() > 1 {
        // a bare IPv6 address, no port (a port needs the brackets)
        if item.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad());
        }
        (item.to_string(), default_port)
    } else if let Some((h, p)) = item.split_once(':') {
        (h.to_string(), parse_port(p, whole)?)
    } else {
        (item.to_string(), default_port)
    };
    if !host_ok(&host) {
        return Err(bad());
    }
    Ok(Node { host, port })
}

/// The nodes of `list`, in order (`default_port` for those without one); a node listed twice
/// is an error.
pub fn parse(list: &str, default_port: u16) -> Result<Vec<Node>, Invalid> {
    parse_with(list, default_port, true)
}

/// The nodes of `list` as the worker uses them: a node listed twice (which depends on the
/// default port, a separate setting for `pg_mqtt_pub.broker_host`) is used once, where it
/// first appears.
pub fn parse_used(list: &str, default_port: u16) -> Result<Vec<Node>, Invalid> {
    parse_with(list, default_port, false)
}

fn parse_with(list: &str, default_port: u16, refuse_twice: bool) -> Result<Vec<Node>, Invalid> {
    let whole = list;
    if list.trim().is_empty() {
        return Err(invalid(format!("invalid host {}", super::topic::quoted(list))));
    }
    if list.len() > MAX_LIST_LEN {
        return Err(invalid(format!("invalid host: {} bytes, at most {MAX_LIST_LEN}", list.len())));
    }
    let mut nodes: Vec<Node> = Vec::new();
    if list.contains("://") {
        return Err(invalid(format!(
            "invalid host {}: a node is host[:port], without a scheme",
            super::topic::quoted(list)
        )));
    }
    for item in list.split(',').map(str::trim) {
        if item.is_empty() {
            return Err(invalid(format!("invalid host {}: an empty node", super::topic::quoted(whole))));
        }
        let n = parse_node(item, default_port, whole)?;
        if nodes.iter().any(|m| m.host.eq_ignore_ascii_case(&n.host) && m.port == n.port) {
            if refuse_twice {
                return Err(invalid(format!("node {n} is listed twice in host {}", super::topic::quoted(whole))));
            }
            continue;
        }
        nodes.push(n);
    }
    if nodes.len() > MAX_NODES {
        return Err(invalid(format!("too many nodes in host: {}, at most {MAX_NODES}", nodes.len())));
    }
    Ok(nodes)
}

/// An MQTT 5 Server Reference (reason 0x9C "use another server" / 0x9D "server moved"): the
/// index of the first node of ours it names. References are space-separated `host[:port]`s
/// (MQTT 5.0, 4.11); a reference to anything not in the list is ignored, so that a broker cannot
/// send our credentials elsewhere.
pub fn referenced(nodes: &[Node], reference: &str, default_port: u16) -> Option<usize> {
    reference.split_whitespace().find_map(|r| {
        let n = parse_node(r, default_port, reference).ok()?;
        nodes.iter().position(|m| m.host.eq_ignore_ascii_case(&n.host) && m.port == n.port)
    })
}

/// What to do after a failed attempt or a lost connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Try the next address or node now.
    AtOnce,
    /// Every address of every node failed in a row: wait (the growing backoff), then start the
    /// round again where the list continues.
    Backoff,
}

/// Which node and address the worker tries, and how many failed in a row.
#[derive(Debug, Clone, Default)]
pub struct Rotation {
    nodes: usize,
    node: usize,
    /// The current node's addresses (resolved when the node's turn comes) and which one.
    addrs: usize,
    addr: usize,
    /// Nodes that failed in a row since something last worked (or the round started).
    failed_nodes: usize,
    /// The node last connected to (for "failovers").
    last_connected: Option<usize>,
}

impl Rotation {
    pub fn new(nodes: usize) -> Rotation {
        Rotation { nodes: nodes.max(1), ..Rotation::default() }
    }

    /// The node to try (or in use).
    pub fn node(&self) -> usize {
        self.node
    }

    /// The address of the current node to try (index into its resolved addresses).
    pub fn addr(&self) -> usize {
        self.addr
    }

    /// The current node's addresses are known (`n`; 0: it could not be resolved).
    pub fn resolved(&mut self, n: usize) {
        self.addrs = n;
        self.addr = 0;
    }

    /// The attempt on the current address failed, or the connection to it was lost.
    pub fn failed(&mut self) -> Next {
        if self.addr + 1 < self.addrs {
            self.addr += 1;
            return Next::AtOnce;
        }
        self.failed_nodes += 1;
        self.node = (self.node + 1) % self.nodes;
        self.addrs = 0;
        self.addr = 0;
        if self.failed_nodes >= self.nodes {
            self.failed_nodes = 0;
            Next::Backoff
        } else {
            Next::AtOnce
        }
    }

    /// Connected to the current node: returns whether that is a failover (another node than
    /// the one last connected to). The round of failures goes on until the connection proves
    /// stable (`round_from_here`): nodes that each accept and drop at once must not be
    /// reconnected to without a backoff.
    pub fn connected(&mut self) -> bool {
        let moved = self.last_connected.is_some_and(|n| n != self.node);
        self.last_connected = Some(self.node);
        moved
    }

    /// The current connection stayed up and then ended: the next round starts afresh (the node
    /// that was working counts as the first failure of the new round).
    pub fn round_from_here(&mut self) {
        self.failed_nodes = 0;
    }

    /// Go to node `i` next (a Server Reference, or `mqtt_reconnect()` with 0), as a fresh round.
    pub fn go_to(&mut self, i: usize) {
        self.node = i.min(self.nodes - 1);
        self.addrs = 0;
        self.addr = 0;
        self.failed_nodes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(h: &str, p: u16) -> Node {
        Node { host: h.into(), port: p }
    }

    #[test]
    fn one_host_as_before() {
        assert_eq!(parse("localhost", 1883).unwrap(), vec![n("localhost", 1883)]);
        assert_eq!(parse("127.0.0.1", 1883).unwrap(), vec![n("127.0.0.1", 1883)]);
        assert_eq!(parse("::1", 1883).unwrap(), vec![n("::1", 1883)]);
        assert_eq!(parse("[::1]", 1883).unwrap(), vec![n("::1", 1883)]);
        assert_eq!(parse("mqtt.example.com", 8883).unwrap(), vec![n("mqtt.example.com", 8883)]);
    }

    #[test]
    fn lists_with_and_without_ports() {
        assert_eq!(
            parse("mq1:1883, mq2:1884,mq3,[::1]:2000,10.0.0.1:7,fe80::1", 9).unwrap(),
            vec![n("mq1", 1883), n("mq2", 1884), n("mq3", 9), n("::1", 2000), n("10.0.0.1", 7), n("fe80::1", 9)]
        );
        assert_eq!(n("::1", 5).to_string(), "[::1]:5");
        assert_eq!(n("mq", 5).to_string(), "mq:5");
    }

    #[test]
    fn mistakes_say_which_node() {
        let e = |s: &str| parse(s, 1883).unwrap_err().message;
        assert_eq!(e(""), "invalid host \"\"");
        assert_eq!(e("mqtt://x"), "invalid host \"mqtt://x\": a node is host[:port], without a scheme");
        assert_eq!(e("a,,b"), "invalid host \"a,,b\": an empty node");
        assert_eq!(e("a:0"), "invalid port \"0\" in host \"a:0\"");
        assert_eq!(e("a:65536"), "invalid port \"65536\" in host \"a:65536\"");
        assert_eq!(e("a:+5"), "invalid port \"+5\" in host \"a:+5\"");
        assert_eq!(e("[::1]1883"), "invalid host \"[::1]1883\"");
        assert_eq!(e("mq0,[mq]:1883"), "invalid node \"[mq]:1883\" in host \"mq0,[mq]:1883\"");
        assert_eq!(e("a b"), "invalid host \"a b\"");
        assert_eq!(e("mq0, x:1:2"), "invalid node \"x:1:2\" in host \"mq0, x:1:2\"");
        assert_eq!(e("mq1,MQ1:1883"), "node MQ1:1883 is listed twice in host \"mq1,MQ1:1883\"");
        assert_eq!(parse_used("mq1,MQ1:1883,mq2", 1883).unwrap(), vec![n("mq1", 1883), n("mq2", 1883)]);
        let many: Vec<String> = (0..17).map(|i| format!("n{i}")).collect();
        assert_eq!(e(&many.join(",")), "too many nodes in host: 17, at most 16");
        assert!(e(&"a".repeat(1001)).contains("at most 1000"));
        let name = |n: usize| vec!["a".repeat(63); n].join("."); // 64 bytes a label with its dot
        assert!(parse(&format!("{}.{}", name(3), "a".repeat(61)), 1).is_ok()); // 253 bytes
        assert!(parse(&format!("{}.{}", name(3), "a".repeat(62)), 1).is_err()); // 254
        let long_label = format!("{}.example", "a".repeat(64));
        for bad in ["-", "..", "a..b", "-a", ".a", "a.-b", "a-.b", long_label.as_str()] {
            assert_eq!(e(bad), format!("invalid host \"{bad}\""));
            assert_eq!(e(&format!("ok,{bad}")), format!("invalid node \"{bad}\" in host \"ok,{bad}\""));
        }
        assert!(parse("mq-1.example.com.", 1).is_ok() && parse("mq_1", 1).is_ok());
    }

    #[test]
    fn server_reference_only_to_our_nodes() {
        let nodes = parse("mq1:1883,mq2:1884,::1", 1883).unwrap();
        assert_eq!(referenced(&nodes, "mq2:1884", 1883), Some(1));
        assert_eq!(referenced(&nodes, "evil:1883 MQ2:1884", 1883), Some(1));
        assert_eq!(referenced(&nodes, "mq2", 1883), None); // mq2:1883 is not ours
        assert_eq!(referenced(&nodes, "[::1]:1883", 1883), Some(2));
        assert_eq!(referenced(&nodes, "attacker.example:1883", 1883), None);
        assert_eq!(referenced(&nodes, "", 1883), None);
    }

    #[test]
    fn next_node_at_once_backoff_after_a_whole_round() {
        let mut r = Rotation::new(3);
        r.resolved(2); // node 0 has two addresses
        assert_eq!(r.failed(), Next::AtOnce);
        assert_eq!((r.node(), r.addr()), (0, 1));
        assert_eq!(r.failed(), Next::AtOnce);
        assert_eq!((r.node(), r.addr()), (1, 0));
        r.resolved(1);
        assert_eq!(r.failed(), Next::AtOnce);
        assert_eq!(r.node(), 2);
        r.resolved(1);
        assert_eq!(r.failed(), Next::Backoff); // all three failed in a row
        assert_eq!(r.node(), 0);
        r.resolved(0); // could not be resolved: the node fails as a whole
        assert_eq!(r.failed(), Next::AtOnce);
        r.resolved(1);
        assert!(!r.connected()); // the first connection is no failover
        assert_eq!(r.node(), 1);
    }

    #[test]
    fn stays_on_a_working_node_and_counts_failovers() {
        let mut r = Rotation::new(2);
        r.resolved(1);
        assert!(!r.connected()); // node 0
        r.round_from_here();
        assert_eq!(r.failed(), Next::AtOnce); // node 0 died: node 1 at once
        r.resolved(1);
        assert!(r.connected()); // a failover
        r.round_from_here();
        assert_eq!(r.failed(), Next::AtOnce); // node 1 died: back to node 0, at once
        assert_eq!(r.node(), 0);
        r.resolved(1);
        assert_eq!(r.failed(), Next::Backoff); // node 0 still dead too: every node failed
        assert_eq!(r.node(), 1);
        r.go_to(0);
        assert_eq!((r.node(), r.addr()), (0, 0));
        r.resolved(1);
        assert!(r.connected()); // back on node 0 after node 1: a failover too
    }

    #[test]
    fn nodes_that_accept_and_drop_at_once_still_back_off() {
        let mut r = Rotation::new(2);
        r.resolved(1);
        r.connected(); // node 0 accepts ...
        assert_eq!(r.failed(), Next::AtOnce); // ... and drops at once: node 1 now
        r.resolved(1);
        r.connected(); // node 1 accepts and drops too: a whole round failed
        assert_eq!(r.failed(), Next::Backoff);
    }

    #[test]
    fn one_node_backs_off_after_each_failure() {
        let mut r = Rotation::new(1);
        r.resolved(1);
        assert_eq!(r.failed(), Next::Backoff);
        r.resolved(2); // a name with two addresses: the second at once
        assert_eq!(r.failed(), Next::AtOnce);
        assert_eq!(r.failed(), Next::Backoff);
    }
}
