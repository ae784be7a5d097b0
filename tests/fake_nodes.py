"""Misbehaving MQTT nodes for the broker-cluster fault tests (tests/test_broker_node_faults.py,
test_broker_nodes.py): the failures a real cluster node shows, on demand. Each speaks only the
one packet it needs (a CONNACK); what reaches a subscriber is always checked at a real mosquitto.

* `Hold`: accepts, CONNACKs, then swallows everything (never acknowledges) until `hold` is set
  (or for `drop_after` seconds) and closes: a node that hangs, then dies.
* `GateProxy`: accepts TCP at once, but forwards to a real broker only once `gate` is set: a node
  that takes its time to answer.
* `Referrer`: answers CONNECT with an MQTT 5 CONNACK "use another server" (0x9C) and a Server
  Reference: a cluster node being drained."""
import socket
import threading
import time


def _listen(p):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", p))
    s.listen(128)
    s.settimeout(0.2)
    return s


def _read_connect(c):
    """The CONNECT's protocol level (4: MQTT 3.1.1, 5: MQTT 5)."""
    data = b""
    while len(data) < 10:
        d = c.recv(4096)
        if not d:
            raise OSError("closed before CONNECT")
        data += d
    i = 1
    while data[i] & 0x80:
        i += 1
    return data[i + 7]


def _pipe(x, y, on_data=None):
    """Copy x to y until either side closes (`on_data` sees every chunk first), then shut both."""
    try:
        while True:
            d = x.recv(65536)
            if not d:
                break
            if on_data:
                on_data(d)
            y.sendall(d)
    except OSError:
        pass
    finally:
        for s in (x, y):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _splice(client, node, from_client=None, from_node=None):
    """Connect two sockets both ways, on two threads."""
    threading.Thread(target=_pipe, args=(client, node, from_client), daemon=True).start()
    threading.Thread(target=_pipe, args=(node, client, from_node), daemon=True).start()


def _upstream(c, target, conns):
    """A connection to the real node behind a proxy (None, and `c` closed, if it is down); both
    sockets are noted in `conns` for closing."""
    try:
        u = socket.create_connection(("127.0.0.1", target))
    except OSError:
        c.close()
        return None
    conns += [c, u]
    return u


def _close_all(socks):
    for s in socks:
        try:
            s.close()
        except OSError:
            pass


class _Server:
    def __init__(self, p):
        self.port, self.count, self.stop = p, 0, False
        self.s = _listen(p)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop:
            try:
                c, _ = self.s.accept()
            except OSError:
                continue
            self.count += 1
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def close(self):
        self.stop = True
        self.s.close()


class Hold(_Server):
    def __init__(self, p, hold=None, drop_after=0.3, token=b"/"):
        self.hold, self.drop_after, self.token, self.publishes = hold, drop_after, token, 0
        super().__init__(p)

    def serve(self, c):
        try:
            c.settimeout(0.1)
            level = _read_connect(c)
            c.sendall(b"\x20\x03\x00\x00\x00" if level == 5 else b"\x20\x02\x00\x00")
            end = time.time() + self.drop_after
            while (self.hold is not None and not self.hold.is_set()) or (self.hold is None and time.time() < end):
                try:
                    d = c.recv(65536)
                    if not d:
                        break
                    self.publishes += d.count(self.token)
                except socket.timeout:
                    pass
        except OSError:
            pass
        finally:
            c.close()


class GateProxy(_Server):
    def __init__(self, p, target, gate):
        self.target, self.gate, self.conns = target, gate, []
        super().__init__(p)

    def serve(self, c):
        while not self.gate.is_set() and not self.stop:
            time.sleep(0.02)
        u = _upstream(c, self.target, self.conns)
        if u:
            _splice(c, u)

    def close(self):
        super().close()
        _close_all(self.conns)


class Referrer(_Server):
    def __init__(self, p, reference):
        self.reference = reference.encode()
        super().__init__(p)

    def serve(self, c):
        with c:
            try:
                c.settimeout(5)
                _read_connect(c)
                props = bytes([0x1C]) + len(self.reference).to_bytes(2, "big") + self.reference
                body = bytes([0x00, 0x9C, len(props)]) + props
                c.sendall(bytes([0x20, len(body)]) + body)
                time.sleep(0.2)
            except OSError:
                pass


def _varint(buf, i):
    """An MQTT variable byte integer at buf[i:] -> (value, next index), or None if incomplete."""
    value, shift = 0, 0
    while True:
        if i >= len(buf):
            return None
        b = buf[i]
        value |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return value, i
        shift += 7


class Tap(_Server):
    """A transparent TCP proxy in front of a real broker node that reads the MQTT packets passing
    through: which QoS 1 messages (by payload) the node acknowledged (`acked`). It tells the
    messages a node lost after acknowledging them (the node's own loss) from the ones the
    publisher still had to send again. When the node dies, the proxy closes the client side."""

    def __init__(self, p, target):
        self.target, self.acked, self.conns = target, set(), []
        super().__init__(p)

    def serve(self, c):
        u = _upstream(c, self.target, self.conns)
        if not u:
            return
        state = {"v5": True, "ids": {}}

        def packets(buf, on_packet):
            while True:
                if len(buf) < 2:
                    return buf
                r = _varint(buf, 1)
                if r is None:
                    return buf
                length, start = r
                if len(buf) < start + length:
                    return buf
                on_packet(buf[0], bytes(buf[start:start + length]))
                del buf[:start + length]

        def from_client(kind, body):
            if kind >> 4 == 1:  # CONNECT: protocol level after the protocol name
                state["v5"] = body[6] == 5
            elif kind >> 4 == 3 and (kind >> 1) & 3 == 1:  # PUBLISH at QoS 1
                tlen = int.from_bytes(body[0:2], "big")
                i = 2 + tlen
                pid = int.from_bytes(body[i:i + 2], "big")
                i += 2
                if state["v5"]:
                    plen, i = _varint(body, i)
                    i += plen
                state["ids"][pid] = body[i:]

        def from_node(kind, body):
            if kind >> 4 == 4:  # PUBACK
                pid = int.from_bytes(body[0:2], "big")
                if len(body) < 3 or body[2] < 0x80:
                    payload = state["ids"].pop(pid, None)
                    if payload is not None:
                        self.acked.add(payload.decode(errors="replace"))

        def parser(on_packet):
            buf = bytearray()

            def feed(d):
                nonlocal buf
                buf += d
                buf = packets(buf, on_packet)
            return feed
        _splice(c, u, parser(from_client), parser(from_node))

    def close(self):
        super().close()
        _close_all(self.conns)
