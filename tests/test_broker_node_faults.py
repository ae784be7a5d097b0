"""Faults around a failover between the nodes of one broker (issue #28, ADR-013), found by an
outside review. Misbehaving nodes come from tests/fake_nodes.py; what arrives is always checked at
a real mosquitto, as an exact, ordered message set.

* A commit that turns the broker cold (`pg_mqtt_pub.durable = on`) while the messages of a
  failover wait for the next node: they are moved to the outbox ahead of it, not left behind.
* Nodes that each accept and drop the connection at once: the reconnect backoff still grows
  (without it: thousands of connections a second).
* The poison probe after a failover: the one message in flight when the next node also died is
  not blamed and sent after newer ones, but first, to the node after.
* `pg_mqtt_pub.broker_host` lists a node twice only through the default port
  (`broker_port`): the worker uses it once.
"""
import threading
import time

from fake_nodes import GateProxy, Hold
from harness import Broker, Cluster, Subscriber, port, ports, publish, status, wait_status, wait_until, \
    worker_settings

DB = "faults"


def outbox_ids(c):
    return c.sql("SELECT last_value, is_called FROM mqtt_pub.outbox_id_seq", dbname=DB)[0]


def start(name, host, mqtt_port, **settings):
    conf = worker_settings(DB, mqtt_port, pg_mqtt_pub__broker_host=f"'{host}'", **settings)
    c = Cluster(name, port(), conf).start()
    c.sql(f"CREATE DATABASE {DB}")
    c.sql("CREATE EXTENSION pg_mqtt_pub", dbname=DB)
    return c


def test_a_durable_commit_during_a_failover_moves_the_waiting_messages_to_the_outbox_first(request):
    pa, pb, pm = ports(3)
    hold, gate = threading.Event(), threading.Event()
    a = Hold(pa, hold=hold, token=b"spill/")
    m = Broker("faults-spill", pm).start()
    b = GateProxy(pb, pm, gate)
    for x in (a, b, m):
        request.addfinalizer(x.close if hasattr(x, "close") else x.stop_if_running)
    sub = Subscriber(pm, "spill/#")
    request.addfinalizer(sub.close)
    c = start("faults-spill", f"127.0.0.1:{pa},127.0.0.1:{pb}", pa, pg_mqtt_pub__publish_timeout_ms=20000)
    request.addfinalizer(c.stop_if_running)
    wait_status(c, DB, lambda s: s["connected"] and s["delivery_mode"] == "hot", "hot at node A")
    publish(c, DB, [("spill/s", f"m{i}", 1, False) for i in range(10)])
    wait_until(lambda: a.publishes >= 10, 10, "m0..m9 in flight at node A")
    hold.set()  # node A dies with them in flight; node B does not answer yet
    wait_until(lambda: b.count >= 1, 10, "the worker trying node B")
    with c.connect(DB) as conn:
        conn.execute("SET pg_mqtt_pub.durable = on")
        conn.execute("SELECT mqtt_publish('spill/s', 'd0', 1)")  # the broker goes cold
    publish(c, DB, [("spill/s", f"n{i}", 1, False) for i in range(5)])
    gate.set()
    want = [f"m{i}" for i in range(10)] + ["d0"] + [f"n{i}" for i in range(5)]
    got = sub.wait_for("spill/s", len(want), 30)
    assert [x.payload.decode() for x in got] == want
    wait_status(c, DB, lambda s: s["ring_waiting"] == 0 and s["outbox_pending"] == 0, "nothing left waiting")


def test_nodes_that_accept_and_drop_at_once_get_the_growing_backoff(request):
    pa, pb = ports(2)
    a, b = Hold(pa, drop_after=0), Hold(pb, drop_after=0)
    request.addfinalizer(a.close)
    request.addfinalizer(b.close)
    c = start("faults-flap", f"127.0.0.1:{pa},127.0.0.1:{pb}", pa)
    request.addfinalizer(c.stop_if_running)
    wait_until(lambda: a.count + b.count >= 6, 30, "a few rounds of connections")
    before = a.count + b.count
    time.sleep(5)
    # reconnect_interval_ms is 200 here: rounds 0.2, 0.4, 0.8, 1.6, 3.2 s apart. Without a
    # backoff it was about 4,000 connections a second.
    assert a.count + b.count - before < 20, (before, a.count + b.count)
    assert status(c, DB)["problem"]


def test_the_message_in_flight_when_the_next_node_dies_too_is_sent_first_not_blamed(request):
    pa, pb, pc = ports(3)
    hold = threading.Event()
    a, b = Hold(pa, hold=hold, token=b"probe/"), Hold(pb, drop_after=0.5)
    mc = Broker("faults-probe", pc).start()
    for x in (a, b):
        request.addfinalizer(x.close)
    request.addfinalizer(mc.stop_if_running)
    sub = Subscriber(pc, "probe/#")
    request.addfinalizer(sub.close)
    c = start("faults-probe", f"127.0.0.1:{pa},127.0.0.1:{pb},127.0.0.1:{pc}", pa, pg_mqtt_pub__publish_timeout_ms=5000)
    request.addfinalizer(c.stop_if_running)
    wait_status(c, DB, lambda s: s["connected"] and s["delivery_mode"] == "hot", "hot at node A")
    ids = outbox_ids(c)
    n = 40
    publish(c, DB, [("probe/s", f"m{i}", 1, False) for i in range(n)])
    wait_until(lambda: a.publishes >= 5, 10, "messages in flight at node A")
    hold.set()  # A dies with them in flight (probe mode); B takes one and dies too; C works
    got = [int(x.payload.decode()[1:]) for x in sub.wait_for("probe/s", n, 60)]
    assert got == list(range(n))
    st = status(c, DB)
    assert st["messages_failed"] == 0 and st["connected_node"] == f"127.0.0.1:{pc}", st
    assert outbox_ids(c) == ids, "nothing went through the outbox"


def test_a_node_listed_twice_through_the_default_port_is_used_once(request):
    p = port()
    b = Broker("faults-twice", p).start()
    request.addfinalizer(b.stop_if_running)
    sub = Subscriber(p, "twice/#")
    request.addfinalizer(sub.close)
    c = start("faults-twice", f"127.0.0.1:{p},127.0.0.1", p)  # broker_port is p too
    request.addfinalizer(c.stop_if_running)
    st = wait_status(c, DB, lambda s: s["connected"], "connected")
    assert st["connected_node"] == f"127.0.0.1:{p}"
    publish(c, DB, [("twice/x", "x", 1, False)])
    assert [m.payload for m in sub.wait_for("twice/x", 1)] == [b"x"]
