"""Other broker implementations, tried as a new user would (issue #15): `amqtt` speaks only
MQTT 3.1.1; `mqttools` speaks MQTT 5 but grants Maximum QoS 0. Each runs from its own virtualenv
(scripts/deps.sh) and is started by the test.

Not run with PostgreSQL 17: its Debian trixie root (scripts/trixie.sh) has no way to the PyPI
index through this machine's TLS proxy; the worker's MQTT client is the same code on every
version, and test_limits.py checks the same rules against mosquitto everywhere."""
import psycopg
import pytest

from harness import ForeignBroker, port, publish, scene, status, wait_until

DB = "interop"


def test_amqtt_mqtt5_says_why_then_3_1_1_delivers_exactly_in_order():
    mqtt_port = port()
    with scene("amqtt", port(), mqtt_port, DB, "interop/#", broker=ForeignBroker("amqtt", mqtt_port),
               subscriber=dict(protocol=4, login=False), settings=dict(pg_mqtt_pub__keepalive=10)) as (_, s, c):
        # The default protocol is MQTT 5, which amqtt does not answer: the status must say why,
        # and point at the setting that fixes it.
        wait_until(lambda: status(c, DB)["last_error"], 40, "a last_error for the MQTT 5 connect")
        err = status(c, DB)["last_error"]
        assert not status(c, DB)["connected"]
        assert "CONNACK" in err or "closed" in err, err
        assert "protocol_version = '3.1.1'" in err, err

        c.reload_with(DB, protocol_version="'3.1.1'")
        wait_until(lambda: status(c, DB)["connected"], 30, "connected with MQTT 3.1.1")

        rows = [(f"interop/q{i % 3}", f"m{i}", i % 3, False) for i in range(30)]
        publish(c, DB, rows)
        got = s.wait_for("interop/", 30)
        # Exactly once each, and in order per QoS: MQTT orders messages of one QoS level; amqtt
        # forwards a QoS 2 message only at its PUBREL, after QoS 0/1 messages sent later, and
        # forwards everything at the subscription's QoS.
        assert len(got) == len(rows)
        for q in range(3):
            assert [m.payload.decode() for m in got if m.topic == f"interop/q{q}"] == [p for _, p, qos, _ in rows if qos == q]


def test_mqttools_maximum_qos_0_refuses_at_once_and_at_call_time():
    mqtt_port = port()
    # First pointed at a port where nothing listens: the messages wait in the outbox, published
    # before anyone knew the broker's limits. mqttools 0.50 reads a user property as one string
    # instead of a name/value pair and then calls the PUBLISH malformed: the message id (a user
    # property) must be off for it (docs/reference.md "Broker limits"; last_error says so when it happens).
    with scene("mqttools", port(), mqtt_port, DB, "interop/#", broker=ForeignBroker("mqttools", mqtt_port),
               subscriber=dict(login=False), worker_port=port(),
               settings=dict(pg_mqtt_pub__poison_max_attempts=5, pg_mqtt_pub__message_id="off")) as (_, s, c):
        publish(c, DB, [("interop/early", f"e{i}", 1, False) for i in range(3)] + [("interop/early", "e-qos0", 0, False)])

        c.reload_with(DB, broker_port=mqtt_port)
        wait_until(lambda: status(c, DB)["connected"], 30, "connected to mqttools")
        got = s.wait_for("interop/early", 1)
        assert [m.payload for m in got] == [b"e-qos0"]

        # Refused at once (one attempt each), not retried five times over.
        wait_until(lambda: status(c, DB)["dead_lettered"] == 3, 20, "three dead letters")
        st = status(c, DB)
        assert st["messages_failed"] == 3, st
        dead = c.sql("SELECT payload, qos, attempts, last_error FROM mqtt_pub.dead_letters ORDER BY id", dbname=DB)
        assert [(bytes(p), q, a) for p, q, a, _ in dead] == [(b"e0", 1, 1), (b"e1", 1, 1), (b"e2", 1, 1)]
        assert all("maximum QoS 0" in e for *_, e in dead), dead

        # Now the limit is known: a QoS 1 publish fails in the caller's statement.
        with c.connect(DB) as conn:
            with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
                conn.execute("SELECT mqtt_publish('interop/late', 'x', 1)")
            assert "maximum QoS 0" in str(e.value) and e.value.diag.message_hint
        publish(c, DB, [("interop/late", "ok", 0, False)])
        assert [m.payload for m in s.wait_for("interop/late", 1)] == [b"ok"]
        assert status(c, DB)["dead_lettered"] == 3
