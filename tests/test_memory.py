"""Bounded memory in the worker: draining an outbox of large messages does not grow it, and the
worker tells brokers the largest packet it accepts.

Proves: 120 messages of 1 MB wait in the outbox while the broker refuses the worker; once it lets
the worker in, all 120 arrive, exactly and in order, while the worker's private memory (RssAnon)
grows by less than 64 MB. A fetch copies at most about 16 MB of payloads out of the outbox
(`outbox_batch_size` rows used to be copied whatever their size: 120 MB here, twice over).
Its MQTT 5 CONNECT carries a Maximum Packet Size of 256 kB.

A broker that stops reading (SIGSTOP) while 30 MB of QoS 0 messages are committed does not make
the worker hold them: its private memory grows by less than 16 MB (libmosquitto used to queue
every QoS 0 packet the socket would not take, without limit; the worker's own QoS 0 writer keeps
at most 1 MB waiting and leaves the rest in the ring and the outbox, ADR-010). Once the broker
reads again, the subscriber gets all of them, exactly and in order. One that never reads again
is given up after one keepalive interval ("no answer from the broker within the keepalive
interval"), like libmosquitto's own check, which cannot run while the worker's packets wait:
the worker reconnects when the broker is back, and what was committed after arrives.
"""
import signal
import threading
import time

from harness import Cluster, port, scene, status, wait_status, wait_until

PORT = port()
PAUSE_PORT = port()
STUCK_PORT = port()
CONNECT_PORT = port()  # a bare TCP listener that only records the CONNECT packet
N = 120
SIZE = 1_000_000


def rss_anon_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise RuntimeError("no RssAnon")


class PeakRss:
    """The peak of a process's RssAnon while the block runs, in kB above the start."""

    def __init__(self, pid):
        self.pid, self.base = pid, rss_anon_kb(pid)
        self.peak, self.done = self.base, threading.Event()

    def __enter__(self):
        def sample():
            while not self.done.is_set():
                self.peak = max(self.peak, rss_anon_kb(self.pid))
                time.sleep(0.01)
        self.t = threading.Thread(target=sample, daemon=True)
        self.t.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.t.join()

    def grew_mb(self):
        return (self.peak - self.base) / 1024


def test_draining_large_messages_keeps_the_worker_small():
    with scene("memory", port(), PORT, "mem", "mem/#", gated=True, settings={"pg_mqtt_pub.max_inflight": 10}) as (b, s, c):
        with c.connect("mem") as q:
            for i in range(N):
                q.execute("SELECT mqtt_publish(%s, repeat(%s, %s), 1)", (f"mem/{i:03d}", chr(65 + i % 26), SIZE))
        assert c.sql("SELECT count(*) FROM mqtt_pub.outbox", dbname="mem")[0][0] == N
        pid = c.worker_pid()
        # the baseline once the worker is up and has tried the gated broker, not mid-start-up
        wait_status(c, "mem", lambda st: st["last_error"], "refused by the gated broker")
        with PeakRss(pid) as rss:
            b.open_gate()
            got = s.wait_for("mem/", N, timeout=120)
        assert [m.topic for m in got] == [f"mem/{i:03d}" for i in range(N)]
        assert all(m.payload == chr(65 + i % 26).encode() * SIZE for i, m in enumerate(got))
        assert rss.grew_mb() < 64, f"the worker's private memory grew by {rss.grew_mb():.0f} MB while draining"


def publish_numbered(c, db, prefix, n, size, per_tx):
    """QoS 0 messages prefix/0000 ... of `size` bytes each, `per_tx` per transaction."""
    with c.connect(db) as q:
        for start in range(0, n, per_tx):
            q.execute(
                "SELECT count(mqtt_publish(format('%%s/%%s', %s::text, lpad(i::text, 4, '0')),"
                " repeat(chr(65 + i %% 26), %s), 0)) FROM generate_series(%s::int, %s::int) i",
                (prefix, size, start, start + per_tx - 1))


def test_a_broker_that_stops_reading_does_not_grow_the_worker():
    n, size, per_tx = 1500, 20_000, 100
    with scene("memory-pause", port(), PAUSE_PORT, "memp", "memp/#") as (b, s, c):
        c.sql("SELECT mqtt_publish('memp/warm-up', 'x', 0)", dbname="memp")
        s.wait_for("memp/warm-up", 1)
        wait_status(c, "memp", lambda st: st["delivery_mode"] == "hot", "hot (the ring path, not the outbox)")
        pid = c.worker_pid()
        with PeakRss(pid) as rss:
            b.kill(signal.SIGSTOP)
            try:
                publish_numbered(c, "memp", "memp/m", n, size, per_tx)
                time.sleep(2)  # the worker has had time to take whatever it would take
            finally:
                b.kill(signal.SIGCONT)
            got = s.wait_for("memp/m/", n, timeout=120)
        assert [m.topic for m in got] == [f"memp/m/{i:04d}" for i in range(n)]
        assert all(m.payload == chr(65 + i % 26).encode() * size for i, m in enumerate(got))
        assert rss.grew_mb() < 16, f"the worker's private memory grew by {rss.grew_mb():.0f} MB while the broker did not read"


def test_a_broker_that_never_reads_again_is_given_up_after_the_keepalive():
    settings = {"pg_mqtt_pub.keepalive": 5}
    with scene("memory-stuck", port(), STUCK_PORT, "mems", "mems/#", settings=settings) as (b, s, c):
        c.sql("SELECT mqtt_publish('mems/warm-up', 'x', 0)", dbname="mems")
        s.wait_for("mems/warm-up", 1)
        wait_status(c, "mems", lambda st: st["delivery_mode"] == "hot", "hot (the ring path, not the outbox)")
        b.kill(signal.SIGSTOP)
        try:
            publish_numbered(c, "mems", "mems/m", 1500, 20_000, 100)
            # given up (keepalive 5 s; the bound only keeps a broken check from hanging the run),
            # and explained: `connected` is cleared just before `last_error` is written
            wait_status(c, "mems", lambda st: not st["connected"] and "keepalive" in (st["last_error"] or ""),
                        "the stuck connection given up for want of an answer within the keepalive", timeout=40)
        finally:
            b.kill(signal.SIGCONT)
        wait_until(lambda: status(c, "mems")["delivery_mode"] == "hot", 60, "reconnected and hot again")
        publish_numbered(c, "mems", "mems/after", 10, 10, 10)
        s.wait_for("mems/after/", 10, timeout=30)
        time.sleep(0.5)
        got = [m.topic for m in s.matching("mems/m/")]
        # QoS 0 is at most once: what was on the wire when the connection was given up may be
        # lost; what arrives arrives once and in order.
        assert got == sorted(set(got)), "duplicates or out of order"
        assert [m.topic for m in s.matching("mems/after/")] == [f"mems/after/{i:04d}" for i in range(10)]


def test_connect_announces_a_maximum_packet_size():
    """The worker's MQTT 5 CONNECT carries a Maximum Packet Size (256 kB): a broker must not send
    it anything larger (libmosquitto itself would allocate whatever a packet announces). The
    broker here is a bare TCP listener that records the CONNECT packet as it arrives."""
    import socket as so

    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    listener = so.socket()
    listener.setsockopt(so.SOL_SOCKET, so.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", CONNECT_PORT))
    listener.listen(1)
    listener.settimeout(30)
    c = Cluster("memory-connect", port(), {
        "pg_mqtt_pub.database": "'postgres'",
        "pg_mqtt_pub.broker_host": "'127.0.0.1'",
        "pg_mqtt_pub.broker_port": CONNECT_PORT,
    }).start()
    try:
        c.sql("CREATE EXTENSION pg_mqtt_pub")
        conn, _ = listener.accept()
        conn.settimeout(10)
        data = b""
        while len(data) < 2 or len(data) < packet_end(data):
            data += conn.recv(4096)
        conn.close()
        assert data[0] == 0x10, "a CONNECT packet"
        body = data[header_len(data):]
        name_len = int.from_bytes(body[0:2], "big")
        assert body[2:2 + name_len] == b"MQTT" and body[2 + name_len] == 5, "MQTT 5"
        props = Properties(PacketTypes.CONNECT)
        props.unpack(body[2 + name_len + 4:])  # after level, flags and keepalive
        assert props.MaximumPacketSize == 256 * 1024
    finally:
        c.stop_if_running()
        listener.close()


def header_len(data):
    """Length of an MQTT fixed header (type byte + variable-length remaining length)."""
    n = 1
    while data[n] & 0x80:
        n += 1
    return n + 1


def packet_end(data):
    length, mult, n = 0, 1, 1
    while n < len(data):
        length += (data[n] & 0x7F) * mult
        if not data[n] & 0x80:
            return n + 1 + length
        mult *= 128
        n += 1
    return len(data) + 1
