"""Loading and lifecycle: what happens without shared_preload_libraries, before the worker's
database or the extension exist, and after DROP EXTENSION. Each test has its own cluster."""
import time

import psycopg
import pytest

from harness import Broker, Cluster, Subscriber, port, status, wait_until


def test_functions_say_how_to_preload():
    c = Cluster("nopreload", port(), preload=False).start()
    try:
        c.sql("CREATE EXTENSION pg_mqtt_pub")
        for q in ("SELECT mqtt_publish('a', 'b')", "SELECT * FROM mqtt_status()"):
            with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as e:
                c.sql(q)
            assert "shared_preload_libraries" in str(e.value)
            assert "Add pg_mqtt_pub to shared_preload_libraries" in e.value.diag.message_hint
    finally:
        c.stop()


def test_bad_queue_size_refuses_to_start():
    c = Cluster("badqueue", port(), {"pg_mqtt_pub.queue_size": 1000})
    with pytest.raises(Exception):
        c.start()
    assert "pg_mqtt_pub.queue_size must be a power of two" in c.log_text()


def test_worker_waits_for_database_and_extension_then_goes_idle():
    broker = Broker("lifecycle", port()).start()
    c = Cluster("lifecycle", port(), {
        "pg_mqtt_pub.database": "'later'",
        "pg_mqtt_pub.broker_host": "'127.0.0.1'",
        "pg_mqtt_pub.broker_port": broker.port,
    }).start()
    sub = Subscriber(broker.port)
    try:
        wait_until(lambda: 'waiting for database "later"' in c.log_text(), 15, "the launcher waiting for the database")
        time.sleep(3)  # a window in which it must not say so again, nor crash-loop
        log = c.log_text()
        assert log.count('waiting for database "later"') == 1, "says so once"
        assert "exited with exit code" not in log, "nothing crash-loops"

        c.sql("CREATE DATABASE later")
        wait_until(lambda: c.sql("SELECT 1 FROM pg_stat_activity WHERE backend_type = 'pg_mqtt_pub worker'"), 15, "worker started")
        time.sleep(1.5)
        assert "connected to broker" not in c.log_text(), "no broker connection without the extension"

        c.sql("CREATE EXTENSION pg_mqtt_pub", dbname="later")
        wait_until(lambda: status(c, "later")["connected"], 15, "connected")
        c.sql("SELECT mqtt_publish('life/x', 'hello', 1)", dbname="later")
        assert [m.payload for m in sub.wait_for("life/", 1)] == [b"hello"]

        c.sql("DROP EXTENSION pg_mqtt_pub", dbname="later")
        wait_until(lambda: "idle, disconnected from broker" in c.log_text(), 20, "worker idle after DROP EXTENSION")
        assert "exited with exit code" not in c.log_text()
    finally:
        sub.close()
        c.stop()
        broker.stop()


def test_drop_extension_while_the_worker_works_never_kills_it():
    """DROP EXTENSION committing between the worker's look for the extension and its next query
    made that query fail ("relation mqtt_pub.brokers does not exist") and the worker exit (seen
    in pg_regress on a busy machine). Create, use and drop the extension over and over while the
    worker syncs brokers and drains: it never exits."""
    broker = Broker("lifecycle-drop", port()).start()
    c = Cluster("lifecycle-drop", port(), {
        "pg_mqtt_pub.database": "'churn'",
        "pg_mqtt_pub.broker_host": "'127.0.0.1'",
        "pg_mqtt_pub.broker_port": broker.port,
        "pg_mqtt_pub.reconnect_interval_ms": 100,
    }).start()
    try:
        c.sql("CREATE DATABASE churn")
        c.worker_pid()
        with c.connect("churn") as q:
            for i in range(150):
                q.execute("CREATE EXTENSION pg_mqtt_pub")
                q.execute("SELECT mqtt_broker_add('b1', '127.0.0.1', %s)", (broker.port,))
                q.execute("SET pg_mqtt_pub.durable = on")  # outbox rows: the worker drains them
                q.execute("SELECT mqtt_publish('churn/x', 'x', 1) FROM generate_series(1, 20)")
                q.execute("SELECT mqtt_publish('churn/y', 'y', 1, broker := 'b1')")
                time.sleep(0.002 * (i % 10))
                # a catalog change wakes the worker to read mqtt_pub.brokers, and DROP EXTENSION
                # right behind it holds that table's lock while the worker waits for it
                q.execute("SELECT mqtt_broker_remove('b1', force := true)")
                q.execute("SELECT mqtt_pub.mqtt_discard()")  # DROP refuses while messages wait
                q.execute("DROP EXTENSION pg_mqtt_pub CASCADE")
        time.sleep(1)
        assert "exited with exit code" not in c.log_text(), "the worker died"
    finally:
        c.stop()
        broker.stop()
