"""A broker as a list of nodes (issue #28, ADR-013), against real brokers.

* Two independent mosquitto nodes: the list's order; the first node down at start (the second
  takes the messages); no flapping back when the first returns; `mqtt_reconnect()` returns to
  the first; the connected node killed in the middle of a QoS 1 stream (SIGSTOP 1 s, SIGKILL):
  every message arrives, from one node or the other, each node's share in order, and nothing
  goes through the outbox (the outbox's id sequence is untouched); every node down: the outbox,
  then the second node back first takes them, in order.
* A real two-node cluster (tests/cluster.py: two Aedes nodes sharing state through redis): the
  subscriber on node B, the worker publishing a QoS 1 stream to node A; node A stopped (SIGSTOP
  1 s, SIGKILL): the worker fails over to node B within seconds and every message reaches the
  subscriber, in order (messages in flight when A died may come twice: at least once) — except
  what node A lost after acknowledging it (Aedes acknowledges QoS 1 before passing a message on
  inside the cluster): a tap in front of A tells those apart.
* Names: a node name that resolves to ::1 and then 127.0.0.1 (the server's own /etc/hosts, in a
  mount namespace) reaches a broker that listens on 127.0.0.1 only; TLS to that name verifies
  the certificate against the name (a certificate for another name is refused, one for the
  name is accepted while the connection goes to an address).
* The rule for lists, the same at mqtt_broker_add and ALTER SYSTEM (22023, with a hint).
"""
import os
import subprocess
import threading
import time

import psycopg
import pytest

import cluster
from fake_nodes import Referrer, Tap
from harness import Broker, Cluster, Subscriber, port, ports, publish, scratch, status, wait_status, wait_until, \
    worker_settings

DB = "nodes"


def outbox_ids(c):
    """The outbox's id sequence: unchanged if no message went through the outbox."""
    return c.sql("SELECT last_value, is_called FROM mqtt_pub.outbox_id_seq", dbname=DB)[0]


def payloads(sub, prefix):
    return [m.payload.decode() for m in sub.matching(prefix)]


def first_occurrences(seq):
    seen, out = set(), []
    for x in seq:
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out


def numbers(seq):
    return [int(p[1:]) for p in seq]


def stream(c, prefix, n, qos=1):
    """Publish `n` messages in the background, one transaction each; returns the thread."""
    t = threading.Thread(target=publish, args=(c, DB, [(prefix, f"m{i}", qos, False) for i in range(n)]), daemon=True)
    t.start()
    return t


def test_mosquitto_nodes_order_first_down_no_flapping_failover_and_every_node_down():
    pa, pb = ports(2)
    a, b = Broker("node-a", pa), Broker("node-b", pb).start()
    sa = sb = c = None
    try:
        sb = Subscriber(pb, "nodes/#")
        conf = worker_settings(DB, pa, pg_mqtt_pub__broker_host=f"'127.0.0.1:{pa},127.0.0.1:{pb}'")
        c = Cluster("nodes", port(), conf).start()
        c.sql(f"CREATE DATABASE {DB}")
        c.sql("CREATE EXTENSION pg_mqtt_pub", dbname=DB)

        # Node A is down at start: node B takes the messages.
        st = wait_status(c, DB, lambda s: s["connected"], "connected to some node")
        assert st["connected_node"] == f"127.0.0.1:{pb}" and st["failovers"] == 0, st
        assert st["host"] == f"127.0.0.1:{pa},127.0.0.1:{pb}"
        publish(c, DB, [("nodes/start", f"s{i}", 1, False) for i in range(10)])
        assert [m.payload.decode() for m in sb.wait_for("nodes/start", 10)] == [f"s{i}" for i in range(10)]

        # Node A comes up: the connection stays where it works (no flapping back).
        a.start()
        sa = Subscriber(pa, "nodes/#")
        publish(c, DB, [("nodes/stay", f"t{i}", 1, False) for i in range(10)])
        assert len(sb.wait_for("nodes/stay", 10)) == 10
        assert payloads(sa, "nodes/stay") == []
        assert status(c, DB)["connected_node"] == f"127.0.0.1:{pb}"

        # mqtt_reconnect() is how a DBA returns it to the first node.
        c.sql("SELECT mqtt_pub.mqtt_reconnect()", dbname=DB)
        wait_status(c, DB, lambda s: s["connected"] and s["connected_node"] == f"127.0.0.1:{pa}", "back on node A")
        wait_status(c, DB, lambda s: s["delivery_mode"] == "hot", "hot again")
        publish(c, DB, [("nodes/back", f"u{i}", 1, False) for i in range(10)])
        assert len(sa.wait_for("nodes/back", 10)) == 10

        # Node A hangs, then dies, in the middle of a QoS 1 stream: node B takes over at once;
        # what A had not acknowledged is sent to B, and nothing goes through the outbox.
        ids = outbox_ids(c)
        mark = len(c.log_text())
        n = 1500
        t = stream(c, "nodes/stream", n)
        wait_until(lambda: len(sa.matching("nodes/stream")) >= 200, 30, "the stream under way at node A")
        a.crash()
        t.join(120)
        assert not t.is_alive()
        want = [f"m{i}" for i in range(n)]
        wait_until(lambda: set(payloads(sa, "nodes/stream")) | set(payloads(sb, "nodes/stream")) >= set(want), 60,
                   "every message of the stream at node A or node B")
        got_a, got_b = numbers(payloads(sa, "nodes/stream")), numbers(payloads(sb, "nodes/stream"))
        assert got_a == sorted(got_a) and len(set(got_a)) == len(got_a), "node A's share in order, once"
        assert got_b == sorted(got_b) and len(set(got_b)) == len(got_b), "node B's share in order, once"
        assert got_b and got_b[-1] == n - 1 and got_a[0] == 0
        assert outbox_ids(c) == ids, "nothing went through the outbox"
        st = status(c, DB)
        assert st["connected_node"] == f"127.0.0.1:{pb}" and st["failovers"] == 1, st
        log = c.log_text()[mark:]
        assert f'lost connection to broker "default" at 127.0.0.1:{pa}' in log
        assert f'trying node 127.0.0.1:{pb} now' in log
        assert f'connected to broker "default" at node 127.0.0.1:{pb}, which took over from node 127.0.0.1:{pa}' in log
        assert "no node took over" not in log

        # Every node down: the outbox; then the second node back first takes them, in order.
        b.kill()
        wait_status(c, DB, lambda s: not s["connected"] and s["delivery_mode"] == "cold", "every node down: cold")
        publish(c, DB, [("nodes/down", f"d{i}", 1, False) for i in range(10)])
        wait_status(c, DB, lambda s: s["outbox_pending"] == 10, "ten messages in the outbox")
        b.restart(sb)
        got = sb.wait_for("nodes/down", 10, 60)
        assert [m.payload.decode() for m in got] == [f"d{i}" for i in range(10)]
        st = wait_status(c, DB, lambda s: s["connected"] and s["outbox_pending"] == 0, "drained at node B")
        assert st["connected_node"] == f"127.0.0.1:{pb}"
    finally:
        for s in (sa, sb):
            if s:
                s.close()
        if c:
            c.stop_if_running()
        a.stop_if_running()
        b.stop_if_running()


def test_aedes_cluster_node_killed_mid_stream_every_message_arrives_via_the_other_node(request):
    pa, pb, tap_port = ports(3)
    with cluster.AedesCluster("nodes", port(), (pa, pb)) as aedes:
        # The worker reaches node A through a tap that notes which messages A acknowledged.
        tap = Tap(tap_port, pa)
        request.addfinalizer(tap.close)
        sub = Subscriber(pb, "cluster/#")  # on node B
        request.addfinalizer(sub.close)
        conf = worker_settings(DB, tap_port, pg_mqtt_pub__broker_host=f"'127.0.0.1:{tap_port},127.0.0.1:{pb}'")
        c = Cluster("nodes-aedes", port(), conf).start()
        request.addfinalizer(c.stop_if_running)
        c.sql(f"CREATE DATABASE {DB}")
        c.sql("CREATE EXTENSION pg_mqtt_pub", dbname=DB)
        wait_status(c, DB, lambda s: s["connected"] and s["delivery_mode"] == "hot", "connected and hot")
        assert status(c, DB)["connected_node"] == f"127.0.0.1:{tap_port}"

        ids = outbox_ids(c)
        mark = len(c.log_text())
        n = 1500
        t = stream(c, "cluster/stream", n)
        wait_until(lambda: len(sub.matching("cluster/stream")) >= 200, 30, "the stream under way through node A")
        aedes.pause(0)
        time.sleep(1)
        aedes.kill(0)
        st = wait_status(c, DB, lambda s: s["connected"] and s["failovers"] == 1, "failed over to node B", timeout=10)
        assert st["connected_node"] == f"127.0.0.1:{pb}", st
        t.join(120)
        assert not t.is_alive()
        # Every message arrives, in order, except what node A itself lost: Aedes 2.0 acknowledges
        # a QoS 1 message *before* it passes it on to the other nodes (lib/handlers/publish.js),
        # so a message A acknowledged just before it stopped can be gone with it, whoever the
        # publisher (seen with a plain paho client too). Those are the cluster's loss, not ours:
        # everything the worker still had to deliver when A died must arrive.
        want = {f"m{i}" for i in range(n)}
        lost_by_a = lambda: sorted(numbers(want - set(payloads(sub, "cluster/stream")) - tap.acked))  # noqa: E731
        try:
            wait_until(lambda: not lost_by_a(), 60, "every message node A had not acknowledged")
        except TimeoutError as e:
            raise AssertionError(f"not acknowledged by node A and missing at the subscriber: {lost_by_a()}") from e
        got = payloads(sub, "cluster/stream")
        # At least once, in order: a message node A had not acknowledged may come twice (once
        # passed on by A, once sent again to B), never out of order.
        assert numbers(first_occurrences(got)) == sorted(numbers(set(got)))
        assert outbox_ids(c) == ids, "nothing went through the outbox"
        assert f"which took over from node 127.0.0.1:{tap_port}" in c.log_text()[mark:]
        lost = sorted(numbers(want - set(got)))
        print(f"{len(got) - len(set(got))} duplicates; {len(lost)} lost by node A after acknowledging them: {lost}")


def test_a_name_is_tried_at_every_address_and_tls_checks_the_name(request):
    d = scratch("nodes-names")
    pki = make_pki(d)
    plain, tls_plain, tls, wrong_plain, wrong = ports(5)
    # The TLS brokers have a plain listener too, for the subscriber (its client checks names
    # its own way); the worker uses the TLS listener.
    brokers = [
        Broker("names-plain", plain),
        Broker("names-tls", tls_plain, extra_conf=f"listener {tls} 127.0.0.1\ncafile {pki['ca']}\n"
               f"certfile {pki['server']}\nkeyfile {pki['server-key']}\n"),
        Broker("names-wrong", wrong_plain, extra_conf=f"listener {wrong} 127.0.0.1\ncafile {pki['ca']}\n"
               f"certfile {pki['other']}\nkeyfile {pki['other-key']}\n"),
    ]
    for b in brokers:
        request.addfinalizer(b.stop_if_running)
        b.start()  # each listens on 127.0.0.1 only
    hosts = os.path.join(d, "hosts")
    with open(hosts, "w") as f:
        # ::1 first: libmosquitto alone tried only the first address a name resolves to
        f.write("::1 mq-dual\n127.0.0.1 mq-dual\n127.0.0.1 localhost\n")
    os.chmod(hosts, 0o644)
    sub = Subscriber(plain, "names/#")
    tls_sub = Subscriber(tls_plain, "names/#")
    request.addfinalizer(sub.close)
    request.addfinalizer(tls_sub.close)
    conf = worker_settings(DB, plain, pg_mqtt_pub__broker_host="'mq-dual'", pg_mqtt_pub__max_brokers=4)
    c = Cluster("nodes-names", port(), conf).start(hosts=hosts)
    request.addfinalizer(c.stop_if_running)
    c.sql(f"CREATE DATABASE {DB}")
    c.sql("CREATE EXTENSION pg_mqtt_pub", dbname=DB)
    st = wait_status(c, DB, lambda s: s["connected"], "connected by name")
    assert st["connected_node"] == f"mq-dual:{plain} (127.0.0.1)", st
    assert f"cannot connect to mq-dual:{plain} (::1)" in c.log_text() or "(::1)" in c.log_text()
    publish(c, DB, [("names/plain", "p", 1, False)])
    assert [m.payload for m in sub.wait_for("names/plain", 1)] == [b"p"]

    # TLS by name: the certificate is for mq-dual; the connection goes to 127.0.0.1 (after ::1).
    c.sql("SELECT mqtt_broker_add('tls', 'mq-dual', %s, use_tls := true, ca_cert := %s)", (tls, pki["ca"]), dbname=DB)
    # The same name, but the broker shows a certificate for another name: refused.
    c.sql("SELECT mqtt_broker_add('wrong', 'mq-dual', %s, use_tls := true, ca_cert := %s)", (wrong, pki["ca"]), dbname=DB)
    st = wait_status(c, DB, lambda s: s["connected"], "TLS connected by name", broker="tls")
    assert st["connected_node"] == f"mq-dual:{tls} (127.0.0.1)", st
    with c.connect(DB) as conn:
        conn.execute("SELECT mqtt_pub.mqtt_publish('names/tls', 't', 1, false, broker := 'tls')")
    assert [m.payload for m in tls_sub.wait_for("names/tls", 1)] == [b"t"]
    st = wait_status(c, DB, lambda s: s["last_error"] and "certificate verify failed" in s["last_error"],
                     "the wrong certificate refused", broker="wrong")
    assert not st["connected"]


def test_node_lists_are_checked_the_same_way_everywhere():
    c = Cluster("nodes-rules", port(), worker_settings(DB, port())).start()
    try:
        c.sql(f"CREATE DATABASE {DB}")
        c.sql("CREATE EXTENSION pg_mqtt_pub", dbname=DB)
        cases = {
            "mq1,,mq2": 'invalid host "mq1,,mq2": an empty node',
            "mq1:0": 'invalid port "0" in host "mq1:0"',
            "[::1]1883": 'invalid host "[::1]1883"',
            "mq0,[::1]1883": 'invalid node "[::1]1883" in host "mq0,[::1]1883"',
            "mqtt://mq1": 'invalid host "mqtt://mq1": a node is host[:port], without a scheme',
        }
        for host, message in cases.items():
            with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
                c.sql("SELECT mqtt_broker_add('x', %s)", (host,), dbname=DB)
            assert e.value.diag.message_primary == message
            assert "host[:port]" in e.value.diag.message_hint
            with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
                c.sql(f"ALTER SYSTEM SET pg_mqtt_pub.broker_host = '{host}'")
            assert message in e.value.diag.message_primary or message in (e.value.diag.message_detail or "")
        # A node listed twice is refused where the port is known; the setting's check cannot know
        # pg_mqtt_pub.broker_port, so there such a node is simply used once.
        with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
            c.sql("SELECT mqtt_broker_add('x', 'mq1,MQ1:1883')", dbname=DB)
        assert e.value.diag.message_primary == 'node MQ1:1883 is listed twice in host "mq1,MQ1:1883"'
        c.sql("ALTER SYSTEM SET pg_mqtt_pub.broker_host = 'mq1,MQ1:1883'")
        c.sql("SELECT mqtt_broker_add('ok', 'mq1:1883, mq2:1884,[::1]:1885,mq3', 1886)", dbname=DB)
        assert c.sql("SELECT host FROM mqtt_pub.broker_list WHERE name = 'ok'", dbname=DB) == [("mq1:1883, mq2:1884,[::1]:1885,mq3",)]
        c.sql("ALTER SYSTEM SET pg_mqtt_pub.broker_host = 'mq1:1883,mq2'")
        c.sql("ALTER SYSTEM RESET pg_mqtt_pub.broker_host")
    finally:
        c.stop_if_running()


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d):
    """A CA; a server certificate for the name mq-dual only (no address in it), and one for
    another name."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=pg_mqtt_pub nodes ca",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    for who, name in (("server", "mq-dual"), ("other", "other.example")):
        with open(os.path.join(d, f"{who}.ext"), "w") as f:
            f.write(f"subjectAltName=DNS:{name}\n")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{who}.key",
                "-out", f"{who}.csr", cwd=d)
        openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
                "-out", f"{who}.crt", "-extfile", f"{who}.ext", cwd=d)
    for f in os.listdir(d):
        os.chmod(os.path.join(d, f), 0o644)  # readable by mosquitto and postgres
    names = {"ca": "ca.crt", "server": "server.crt", "server-key": "server.key", "other": "other.crt", "other-key": "other.key"}
    return {k: os.path.join(d, f) for k, f in names.items()}


def test_use_another_server_is_followed_only_to_the_brokers_own_nodes(request):
    pa, pb, r1, r2, evil = ports(5)
    a, b = Broker("ref-a", pa).start(), Broker("ref-b", pb).start()
    request.addfinalizer(a.stop_if_running)
    request.addfinalizer(b.stop_if_running)
    to_b = Referrer(r1, f"127.0.0.1:{pb}")           # one of the list's nodes, not the next one
    elsewhere = Referrer(r2, f"127.0.0.1:{evil}")   # not one of the list's nodes
    request.addfinalizer(to_b.close)
    request.addfinalizer(elsewhere.close)
    c = Cluster("nodes-ref", port(), worker_settings(DB, pa, pg_mqtt_pub__max_brokers=4)).start()
    request.addfinalizer(c.stop_if_running)
    c.sql(f"CREATE DATABASE {DB}")
    c.sql("CREATE EXTENSION pg_mqtt_pub", dbname=DB)
    c.sql("SELECT mqtt_broker_add('follow', %s)", (f"127.0.0.1:{r1},127.0.0.1:{pa},127.0.0.1:{pb}",), dbname=DB)
    c.sql("SELECT mqtt_broker_add('stay', %s)", (f"127.0.0.1:{r2},127.0.0.1:{pa}",), dbname=DB)
    st = wait_status(c, DB, lambda s: s["connected"], "connected where the reference points", broker="follow")
    assert st["connected_node"] == f"127.0.0.1:{pb}", st
    st = wait_status(c, DB, lambda s: s["connected"], "connected to the next node", broker="stay")
    assert st["connected_node"] == f"127.0.0.1:{pa}", st
    log = c.log_text()
    assert f'broker "follow": the node at 127.0.0.1:{r1} refers us to "127.0.0.1:{pb}" (MQTT 5 Server Reference); going there' in log
    assert f'broker "stay": the node at 127.0.0.1:{r2} refers us to "127.0.0.1:{evil}" (MQTT 5 Server Reference); ignored' in log
    assert to_b.count >= 1 and elsewhere.count >= 1
