"""The limits an MQTT 5 broker announces in its CONNACK (here mosquitto's: Maximum QoS, Retain
Available, Maximum Packet Size, Receive Maximum), honoured as README "Broker limits" says."""
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
