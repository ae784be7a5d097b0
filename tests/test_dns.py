"""A broker whose host name resolves slowly does not hold up the others.

Proves: the server runs with a resolv.conf (in its own mount namespace) whose name server is a
local UDP port that reads queries and never answers, with a 10 s timeout. A second broker is
configured by a name that therefore takes 10 s per attempt to fail. Meanwhile the default broker
(an address, no resolution) keeps delivering: 60 messages published 50 ms apart all arrive, in
order, none later than 5 s after its COMMIT (before, the worker's loop stopped for the timeout at every
connect attempt of the other broker: libmosquitto resolves inside its asynchronous connect). The
slow broker reports why it is not connected.
"""
import socket
import threading
import time

from harness import port, scene, scratch, status, wait_until

PORT = port()
DNS = ("127.0.0.79", 53)


def silent_dns():
    """A UDP 'name server' that swallows every query."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(DNS)
    stop = threading.Event()

    def run():
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                sock.recvfrom(4096)
            except OSError:
                pass
    threading.Thread(target=run, daemon=True).start()
    return sock, stop


def test_slow_name_resolution_does_not_stall_other_brokers():
    sock, stop = silent_dns()
    resolv = f"{scratch('dns')}/resolv.conf"
    with open(resolv, "w") as f:
        f.write(f"nameserver {DNS[0]}\noptions timeout:10 attempts:1\n")
    try:
        with scene("dns", port(), PORT, "dns", "dns/#", settings={"pg_mqtt_pub.reconnect_interval_ms": 100},
                   resolv_conf=resolv) as (b, s, c):
            slow_broker_does_not_stall_the_default_one(s, c)
    finally:
        stop.set()
        sock.close()


def slow_broker_does_not_stall_the_default_one(s, c):
    wait_until(lambda: status(c, "dns")["delivery_mode"] == "hot", 30, "hot")
    c.sql("SELECT mqtt_broker_add('slow', 'broker.slow-dns.test', %s)", (PORT,), dbname="dns")
    time.sleep(0.5)  # its first resolution is under way
    sent = {}
    with c.connect("dns") as q:
        for i in range(60):
            q.execute("SELECT mqtt_publish(%s, %s, 1)", (f"dns/{i:02d}", str(i)))
            sent[f"dns/{i:02d}"] = time.time()
            time.sleep(0.05)
    got = s.wait_for("dns/", 60, timeout=30)
    assert [m.topic for m in got] == [f"dns/{i:02d}" for i in range(60)]
    worst = max(m.at - sent[m.topic] for m in got)
    # a stall would last the resolver's timeout (10 s); the margin is for a busy machine
    assert worst < 5.0, f"a message to the default broker took {worst:.1f} s while the other broker's name resolved"
    assert status(c, "dns", "slow")["connected"] is False
    wait_until(lambda: status(c, "dns", "slow")["last_error"], 40, "the slow broker says why it is not connected")
