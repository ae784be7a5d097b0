"""A connection drop keeps the order of a broker's messages when other brokers are configured.

Proves: with a second broker configured (so the worker queues a busy broker's records per broker
instead of waiting in the ring) and `max_inflight = 10`, 100 single-message QoS 1 transactions
are committed while the default broker is frozen (SIGSTOP): 10 are in flight, 90 queued. The
broker is then killed. The worker moves the 10 unacknowledged and the 90 queued messages to the
outbox; after the broker restarts, the subscriber receives exactly the 100, in commit order.
(They used to arrive 11–100 first: the queued ones were saved before the in-flight ones.)
"""
import signal
import time

from harness import port, scene, status, wait_status, wait_until

PORT = port()
OTHER_PORT = port()  # nothing listens there: the second broker only has to exist


def test_drop_with_messages_in_flight_and_queued_keeps_commit_order():
    with scene("drop-order", port(), PORT, "dord", "do/#", settings={"pg_mqtt_pub.max_inflight": 10}) as (b, s, c):
        c.sql("SELECT mqtt_broker_add('elsewhere', '127.0.0.1', %s)", (OTHER_PORT,), dbname="dord")
        # the worker has a link for it (it tried to connect): only then does it queue per broker
        wait_status(c, "dord", lambda st: st["last_error"], "tried (refused)", broker="elsewhere")
        wait_until(lambda: status(c, "dord", "default")["delivery_mode"] == "hot",
                   30, "default hot")
        b.kill(signal.SIGSTOP)
        with c.connect("dord") as q:
            for i in range(100):
                q.execute("SELECT mqtt_publish(%s, %s, 1)", (f"do/{i:03d}", str(i)))
        wait_until(lambda: status(c, "dord", "default")["inflight"] == 10,
                   10, "10 in flight")
        time.sleep(0.5)
        b.kill()  # SIGKILL while frozen: it acknowledged none of them
        wait_until(lambda: c.sql("SELECT count(*) FROM mqtt_pub.outbox WHERE broker = 'default'", dbname="dord")[0][0] == 100,
                   30, "all 100 saved to the outbox")
        b.restart(s)
        got = s.wait_for("do/", 100, timeout=60)
        assert [m.topic for m in got] == [f"do/{i:03d}" for i in range(100)], "exactly once, in commit order"

