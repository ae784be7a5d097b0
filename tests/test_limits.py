"""The limits an MQTT 5 broker announces in its CONNACK (here mosquitto's: Maximum QoS, Retain
Available, Maximum Packet Size, Receive Maximum), honoured as docs/reference.md "Broker limits" says."""
import signal
import time

import psycopg
import pytest

from harness import Broker, port, publish, scene, status, wait_until

DB = "limits"


def test_mosquitto_limits_refused_as_documented_and_window_within_receive_maximum():
    mqtt_port = port()
    limits = "max_qos 1\nmax_packet_size 2000\nretain_available false\nmax_inflight_messages 5"
    # first pointed at a port where nothing listens: these messages wait in the outbox
    with scene("limits", port(), mqtt_port, DB, "limits/#", broker=Broker("limits", mqtt_port, limits),
               worker_port=port(), settings=dict(pg_mqtt_pub__max_inflight=50)) as (b, s, c):
        big = "x" * 3000
        publish(c, DB, [("limits/early", "qos2", 2, False), ("limits/early", "retained", 0, True),
                        ("limits/early", big, 1, False), ("limits/early", "ok", 1, False)])

        # Limits learnt from the CONNACK: what was published before is dead-lettered at once.
        c.reload_with(DB, broker_port=mqtt_port)
        assert [m.payload for m in s.wait_for("limits/early", 1)] == [b"ok"]
        wait_until(lambda: status(c, DB)["dead_lettered"] == 3, 20, "three dead letters")
        dead = c.sql("SELECT left(convert_from(payload, 'UTF8'), 8), attempts, last_error FROM mqtt_pub.dead_letters ORDER BY id", dbname=DB)
        assert [(p, a) for p, a, _ in dead] == [("qos2", 1), ("retained", 1), ("xxxxxxxx", 1)]
        assert "maximum QoS 1" in dead[0][2] and "retained" in dead[1][2] and "at most 2000" in dead[2][2], dead
        assert status(c, DB)["messages_failed"] == 3

        # Known limits: refused in the caller's statement.
        with c.connect(DB) as conn:
            for call, error in [("mqtt_publish('limits/late', 'x', 2)", psycopg.errors.FeatureNotSupported),
                                ("mqtt_publish('limits/late', 'x', 0, true)", psycopg.errors.FeatureNotSupported),
                                (f"mqtt_publish('limits/late', '{big}', 1)", psycopg.errors.ProgramLimitExceeded),
                                # fits without the message id the worker adds, not with it
                                (f"mqtt_publish('limits/late', '{'y' * 1950}', 1)", psycopg.errors.ProgramLimitExceeded)]:
                with pytest.raises(error) as e:
                    conn.execute(f"SELECT {call}")
                assert e.value.diag.message_hint, call

        # Receive Maximum 5: with the broker frozen, no more than 5 messages are in flight.
        b.kill(signal.SIGSTOP)
        try:
            publish(c, DB, [("limits/window", f"w{i}", 1, False) for i in range(20)])
            wait_until(lambda: status(c, DB)["inflight"] == 5, 10, "a full window")
            time.sleep(1)
            assert status(c, DB)["inflight"] == 5
        finally:
            b.kill(signal.SIGCONT)
        got = s.wait_for("limits/window", 20)
        assert [m.payload.decode() for m in got] == [f"w{i}" for i in range(20)]


def test_a_full_outbox_refuses_publishers_and_loses_nothing_committed():
    """pg_mqtt_pub.max_outbox_size bounds the outbox: with the broker unreachable, a publisher
    whose message would pass it gets ERROR 53400 at the call (its whole transaction is rolled
    back), mqtt_status() shows the fill level, and everything committed before arrives once the
    broker is reachable; then there is room again. (Nothing bounded it: one role could fill the
    disk PostgreSQL's WAL lives on with mqtt_publish_batch.)"""
    mqtt_port, db = port(), "obx"
    with scene("outbox-cap", port(), mqtt_port, db, "obx/#", worker_port=port(),
               settings={"pg_mqtt_pub.max_outbox_size": "'64kB'"}) as (b, s, c):
        payload = "p" * 5000
        with c.connect(db) as q:
            for i in range(12):  # 12 x 5 kB: under 64 kB
                q.execute("SELECT mqtt_publish(%s, %s, 1)", (f"obx/{i:02d}", payload))
            with pytest.raises(psycopg.errors.ConfigurationLimitExceeded) as e:
                with q.transaction():
                    q.execute("SELECT mqtt_publish('obx/tx-first', 'small', 1)")
                    q.execute("SELECT mqtt_publish_batch('obx/batch', ARRAY[%s, %s], 1)", (payload, payload))
            assert "outbox is full" in str(e.value) and "max_outbox_size" in e.value.diag.message_hint
            st = q.execute("SELECT outbox_bytes, outbox_max_bytes, outbox_pending FROM mqtt_status()").fetchone()
            assert st[1] == 64 * 1024 and st[2] == 12 and 12 * 5000 <= st[0] <= 64 * 1024, st
            # a small one still fits
            q.execute("SELECT mqtt_publish('obx/small', 's', 1)")
        c.reload_with(db, broker_port=mqtt_port)
        got = s.wait_for("obx/", 13, timeout=60)
        assert [m.topic for m in got] == [f"obx/{i:02d}" for i in range(12)] + ["obx/small"], "all committed, once, in order"
        wait_until(lambda: status(c, db)["outbox_bytes"] == 0, 30, "the delivered rows taken off the outbox's size")
        with c.connect(db) as q:
            q.execute("SELECT mqtt_publish_batch('obx/after', ARRAY[%s, %s], 1)", (payload, payload))
        assert len(s.wait_for("obx/after/", 2)) == 2


def test_the_outbox_limit_counts_open_transactions_and_forgets_rolled_back_savepoints():
    """Concurrent open transactions share one allowance (each used to be checked against what was
    committed only: five sessions put 75 MB in a 20 MB outbox), and what a rolled-back savepoint
    wrote is given back (it used to count at COMMIT: an empty outbox read as full)."""
    db = "obx2"
    with scene("outbox-cap2", port(), port(), db, "obx2/#", worker_port=port(),
               settings={"pg_mqtt_pub.max_outbox_size": "'64kB'"}) as (b, s, c):
        payload = "p" * 5000
        with c.connect(db) as q:  # written into the outbox at the call (the broker is cold)
            q.execute("SET pg_mqtt_pub.transactional = off")
            for _ in range(3):  # three times over the limit, in savepoints rolled back
                with pytest.raises(psycopg.errors.ConfigurationLimitExceeded):  # (the first round fills it)
                    with q.transaction():
                        q.execute("SAVEPOINT s")
                        for i in range(20):
                            q.execute("SELECT mqtt_publish('obx2/gone', %s, 1)", (payload,))
                with q.transaction():
                    q.execute("SAVEPOINT s")
                    for i in range(10):
                        q.execute("SELECT mqtt_publish('obx2/gone', %s, 1)", (payload,))
                    q.execute("ROLLBACK TO SAVEPOINT s")
            assert q.execute("SELECT outbox_bytes FROM mqtt_status()").fetchone()[0] == 0
            assert q.execute("SELECT count(*) FROM mqtt_pub.outbox").fetchone()[0] == 0
        # a re-measurement reads the table as it is now, not as an old snapshot saw it: a
        # REPEATABLE READ transaction from before the outbox filled up used to reset the figure
        # to what it saw, and let another allowance in
        old = c.connect(db, autocommit=False)
        old.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        old.execute("SELECT count(*) FROM mqtt_pub.outbox")  # its snapshot: an empty outbox
        with c.connect(db) as q:
            with pytest.raises(psycopg.errors.ConfigurationLimitExceeded):
                for i in range(20):
                    q.execute("SELECT mqtt_publish(%s, %s, 1)", (f"obx2/fill/{i}", payload))
        time.sleep(1.1)  # (re-measurements happen at most once a second)
        old.execute("SET pg_mqtt_pub.transactional = off")
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded):
            old.execute("SELECT mqtt_publish('obx2/stale', %s, 1)", (payload,))
        old.rollback()
        old.close()
        filled = status(c, db)["outbox_bytes"]
        assert filled >= 12 * 5000, filled
        # emptied by hand: the figure follows at the next measurement, which the next refused
        # publisher makes (re-measurements: at most one a second)
        c.sql("DELETE FROM mqtt_pub.outbox", dbname=db)
        time.sleep(1.1)
        a, b2 = c.connect(db, autocommit=False), c.connect(db, autocommit=False)
        try:
            for conn in (a, b2):
                conn.execute("SET pg_mqtt_pub.transactional = off")
            for i in range(8):  # 40 kB, not committed yet
                a.execute("SELECT mqtt_publish(%s, %s, 1)", (f"obx2/a/{i}", payload))
            with pytest.raises(psycopg.errors.ConfigurationLimitExceeded) as e:
                for i in range(8):  # 40 kB more: the open transaction's 40 kB count
                    b2.execute("SELECT mqtt_publish(%s, %s, 1)", (f"obx2/b/{i}", payload))
            assert "open transactions" in e.value.diag.message_detail
            b2.rollback()
            a.commit()
        finally:
            a.close()
            b2.close()
        assert 40000 <= status(c, db)["outbox_bytes"] <= 64 * 1024
