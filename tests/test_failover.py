"""Replicas and failover: a standby refuses to publish and stays quiet; after promotion it
delivers everything the old primary had committed to its outbox, in order.

Proves: a primary and a streaming standby (pg_basebackup -R, both on loopback). While the broker
refuses the worker, 50 single-message transactions and a 3-message one are committed on the
primary: they wait in the outbox. On the standby every publishing function fails at once with
SQLSTATE 25006 and a hint to publish on the primary, and pg_mqtt_pub logs nothing (no worker
runs during recovery, so no retry loop). The primary is stopped with -m immediate, the standby
promoted, the broker lets the worker in: the subscriber receives exactly the 53 messages, in
commit order, from the new primary, which then publishes new messages hot as usual.
"""
import re

import psycopg
import pytest

from harness import Broker, Subscriber, port, ports, primary_and_copy, status, wait_until

PORT = port()


def test_promoted_standby_delivers_the_outbox_it_inherited():
    b = Broker("failover", PORT).start(gated=True)  # the worker cannot log in yet; the subscriber can
    s = Subscriber(PORT, "fo/#")
    primary, standby = primary_and_copy("fo", ports(2), "fo", PORT, standby=True)
    try:

        with primary.connect("fo") as q:
            for i in range(50):
                q.execute("SELECT mqtt_publish(%s, %s, 1)", (f"fo/{i:02d}", str(i)))
            with q.transaction():
                for i in range(50, 53):
                    q.execute("SELECT mqtt_publish(%s, %s, 1)", (f"fo/{i:02d}", str(i)))
        assert primary.sql("SELECT count(*) FROM mqtt_pub.outbox", dbname="fo")[0][0] == 53
        lsn = primary.sql("SELECT pg_current_wal_lsn()::text")[0][0]
        wait_until(lambda: standby.sql("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,), dbname="fo")[0][0],
                   30, "the standby replayed the outbox rows")
        assert standby.sql("SELECT count(*) FROM mqtt_pub.outbox", dbname="fo")[0][0] == 53

        calls = [
            "SELECT mqtt_publish('fo/x', 'x')",
            "SELECT mqtt_publish_binary('fo/x', '\\x00'::bytea)",
            "SELECT mqtt_publish_json('fo/x', '{}'::jsonb)",
            "SELECT mqtt_publish_batch('fo/x/', ARRAY['a'])",
            "SELECT mqtt_pub.mqtt_publish('fo/x', 'x')",
        ]
        with standby.connect("fo") as q:
            for call in calls:
                with pytest.raises(psycopg.Error) as e:
                    q.execute(call)
                assert e.value.sqlstate == "25006", call
                assert "primary" in (e.value.diag.message_hint or ""), call
        ours = [line for line in standby.log_text().splitlines() if re.search(r"pg_mqtt_pub(:| worker| launcher)", line)]
        assert ours == [], "nothing runs (or retries) during recovery"

        primary.stop("immediate")
        standby.pg_ctl("promote")
        wait_until(lambda: standby.sql("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_mqtt_pub worker'")[0][0] == 1,
                   30, "the worker runs after promotion")
        b.open_gate()
        got = s.wait_for("fo/", 53, timeout=60)
        assert [m.topic for m in got] == [f"fo/{i:02d}" for i in range(53)], "exactly once, in commit order"
        wait_until(lambda: standby.sql("SELECT count(*) FROM mqtt_pub.outbox", dbname="fo")[0][0] == 0, 30, "outbox drained")

        wait_until(lambda: status(standby, "fo")["delivery_mode"] == "hot", 30, "hot")
        standby.sql("SELECT mqtt_publish('fo/new', 'n', 1)", dbname="fo")
        s.wait_for("fo/new", 1, timeout=30)
    finally:
        s.close()
        primary.stop_if_running()
        standby.stop_if_running()
        b.stop_if_running()
