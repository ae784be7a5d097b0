"""End to end: messages published from SQL, as a real MQTT subscriber receives them.

Proves the hot path's contract: exact topic, payload bytes, QoS and retain at each QoS; retained
messages reach late subscribers; concurrent sessions keep their own order; rolled-back work is
never published; large payloads arrive intact; a broker outage only delays messages; a SIGHUP
moves the worker to another broker; the worker survives being killed. (Fault tests of the
cold path are in test_cold.py.)
"""
import os
import threading
import time

import psycopg
import pytest

from conftest import BROKER_PORT, DB
from harness import Broker, Subscriber, port, status, wait_until

N = 10_000


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_10000_messages_arrive_exactly(db, sub, qos):
    prefix = f"e2e/qos{qos}/"
    db.execute(
        "SELECT mqtt_publish(%s || i, 'payload-' || i || '-' || repeat('x', i %% 50), %s, i %% 7 = 0) "
        "FROM generate_series(1, %s) i",
        (prefix, qos, N),
    )
    got = sub.wait_for(prefix, N, timeout=60)
    assert len(got) == N, "no duplicates, nothing missing"
    for i, m in enumerate(got, start=1):
        assert m.topic == f"{prefix}{i}", "in order"
        assert m.payload == f"payload-{i}-{'x' * (i % 50)}".encode()
        assert m.qos == qos
        assert m.retain == (i % 7 == 0)


def test_retained_message_reaches_late_subscriber(db, sub):
    db.execute("SELECT mqtt_publish('e2e/retained/state', 'on', 1, true)")
    sub.wait_for("e2e/retained/", 1)
    late = Subscriber(BROKER_PORT, "e2e/retained/#")
    try:
        got = late.wait_for("e2e/retained/", 1, timeout=10)
        assert [(m.payload, m.retain) for m in got] == [(b"on", True)]
    finally:
        late.close()
        db.execute("SELECT mqtt_publish('e2e/retained/state', '', 1, true)")  # clear it


def test_concurrent_sessions_keep_their_order(cluster, sub):
    sessions, each = 4, 2500

    def run(s):
        with cluster.connect(DB) as c:
            for i in range(each):
                c.execute("SELECT mqtt_publish(%s, %s, 1)", (f"e2e/conc/{s}", str(i)))

    threads = [threading.Thread(target=run, args=(s,)) for s in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = sub.wait_for("e2e/conc/", sessions * each, timeout=60)
    assert len(got) == sessions * each
    for s in range(sessions):
        mine = [int(m.payload) for m in got if m.topic == f"e2e/conc/{s}"]
        assert mine == list(range(each)), f"session {s} out of order or incomplete"


def test_rolled_back_messages_never_arrive(db, sub):
    with db.transaction():
        db.execute("SELECT mqtt_publish('e2e/tx/a', 'committed-1')")
    try:
        with db.transaction():
            db.execute("SELECT mqtt_publish('e2e/tx/a', 'rolled-back')")
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    db.execute("BEGIN")
    db.execute("SELECT mqtt_publish('e2e/tx/a', 'committed-2')")
    db.execute("SAVEPOINT s1")
    db.execute("SELECT mqtt_publish('e2e/tx/a', 'savepoint-rolled-back')")
    db.execute("SAVEPOINT s2")
    db.execute("SELECT mqtt_publish('e2e/tx/a', 'nested-rolled-back')")
    db.execute("ROLLBACK TO SAVEPOINT s1")
    db.execute("SELECT mqtt_publish('e2e/tx/a', 'committed-3')")
    db.execute("SAVEPOINT s3")
    db.execute("SELECT mqtt_publish('e2e/tx/a', 'released-savepoint')")
    db.execute("RELEASE SAVEPOINT s3")
    db.execute("COMMIT")
    # an error inside a PL/pgSQL exception block rolls back that block's messages only
    db.execute("""DO $$ BEGIN
        PERFORM mqtt_publish('e2e/tx/a', 'plpgsql-kept');
        BEGIN
          PERFORM mqtt_publish('e2e/tx/a', 'plpgsql-rolled-back');
          PERFORM 1/0;
        EXCEPTION WHEN division_by_zero THEN NULL;
        END;
      END $$""")
    db.execute("SELECT mqtt_publish('e2e/tx/a', 'marker')")
    got = sub.wait_for("e2e/tx/", 6)
    assert [m.payload.decode() for m in got] == [
        "committed-1", "committed-2", "committed-3", "released-savepoint", "plpgsql-kept", "marker"]


def test_not_transactional_publishes_at_call_time(db, sub):
    db.execute("SET pg_mqtt_pub.transactional = off")
    try:
        db.execute("BEGIN")
        db.execute("SELECT mqtt_publish('e2e/now/x', 'before commit')")
        got = sub.wait_for("e2e/now/", 1, timeout=10)  # arrives while the transaction is open
        db.execute("ROLLBACK")
        assert [m.payload for m in got] == [b"before commit"]
    finally:
        db.execute("RESET pg_mqtt_pub.transactional")


def test_256kb_binary_payload_arrives_intact(db, sub):
    payload = os.urandom(256 * 1024)
    db.execute("SELECT mqtt_publish_binary('e2e/big/bin', %s, 1)", (payload,))
    text = ("0123456789abcdef" * 16384)  # 256 kB of text
    db.execute("SELECT mqtt_publish('e2e/big/text', %s, 2)", (text,))
    got = sub.wait_for("e2e/big/", 2)
    assert [(m.topic, m.payload, m.qos) for m in got] == [
        ("e2e/big/bin", payload, 1), ("e2e/big/text", text.encode(), 2)]


def test_utf8_topic_and_payload(db, sub):
    db.execute("SELECT mqtt_publish('e2e/utf8/温度/ü', '{\"v\": \"23,5 °C\"}', 1)")
    got = sub.wait_for("e2e/utf8/", 1)
    assert (got[0].topic, got[0].payload) == ("e2e/utf8/温度/ü", '{"v": "23,5 °C"}'.encode())


def test_broker_outage_delays_but_loses_nothing(cluster, broker, sub, db):
    broker.kill()
    wait_until(lambda: not status(cluster, DB)["connected"], 10, "worker notices the outage")
    for i in range(300):
        db.execute("SELECT mqtt_publish('e2e/outage/x', %s, 1)", (str(i),))
    st = status(cluster, DB)
    assert st["connected"] is False and st["last_error"], "mqtt_status shows the broker down with a reason"
    broker.restart(sub)
    got = sub.wait_for("e2e/outage/", 300, timeout=30)
    assert [int(m.payload) for m in got] == list(range(300))


def test_sighup_switches_to_another_broker(cluster, db, sub):
    other = Broker("second", port()).start()
    sub2 = Subscriber(other.port)
    try:
        cluster.reload_with(DB, broker_port=other.port)
        wait_until(lambda: status(cluster, DB)["port"] == other.port and status(cluster, DB)["connected"], 15, "worker on the second broker")
        db.execute("SELECT mqtt_publish('e2e/switch/x', 'to second', 1)")
        got = sub2.wait_for("e2e/switch/", 1)
        assert [m.payload for m in got] == [b"to second"]
    finally:
        cluster.reload_with(DB, broker_port=BROKER_PORT)
        wait_until(lambda: status(cluster, DB)["port"] == BROKER_PORT and status(cluster, DB)["connected"], 15, "worker back on the first broker")
        sub2.close()
        other.stop()
    db.execute("SELECT mqtt_publish('e2e/switch/x', 'back to first', 1)")
    assert [m.payload for m in sub.wait_for("e2e/switch/", 1)] == [b"back to first"]


def test_worker_is_restarted_after_being_terminated(cluster, db, sub):
    pid = cluster.worker_pid()
    db.execute("SELECT pg_terminate_backend(%s)", (pid,))
    cluster.worker_pid(other_than=pid)
    db.execute("SELECT mqtt_publish('e2e/restart/x', 'after restart', 1)")
    assert [m.payload for m in sub.wait_for("e2e/restart/", 1, timeout=20)] == [b"after restart"]


def test_publish_from_another_database_is_refused(cluster):
    cluster.sql("CREATE DATABASE other_db")
    try:
        cluster.sql("CREATE EXTENSION pg_mqtt_pub", dbname="other_db")
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as e:
            cluster.sql("SELECT mqtt_publish('x', 'y')", dbname="other_db")
        assert "mqtt_test" in str(e.value) and "pg_mqtt_pub.database" in e.value.diag.message_detail
    finally:
        cluster.sql("DROP DATABASE other_db")


def test_status_counts_sent_messages(cluster, db, sub):
    before = status(cluster, DB)["messages_sent"]
    db.execute("SELECT mqtt_publish('e2e/count/' || i, 'x', 1) FROM generate_series(1, 25) i")
    sub.wait_for("e2e/count/", 25)
    wait_until(lambda: status(cluster, DB)["messages_sent"] >= before + 25, 10, "messages_sent counted")
