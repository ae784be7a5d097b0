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


def test_worker_comes_with_the_extension_and_leaves_with_it():
    """A restricted configuration (pg_mqtt_pub.database, from before 1.6) naming a database that
    does not exist yet: nothing runs for it and nothing crash-loops; CREATE EXTENSION there starts
    its worker (ADR-012), DROP EXTENSION lets it exit without an error."""
    broker = Broker("lifecycle", port()).start()
    c = Cluster("lifecycle", port(), {
        "pg_mqtt_pub.database": "'later'",
        "pg_mqtt_pub.broker_host": "'127.0.0.1'",
        "pg_mqtt_pub.broker_port": broker.port,
    }).start()
    sub = Subscriber(broker.port)
    worker = "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_mqtt_pub worker'"
    try:
        wait_until(lambda: 'restricted to database "later"' in c.log_text(), 15, "the launcher's restriction line")
        time.sleep(2)  # a window in which no worker may start, nor crash-loop
        assert not c.sql(worker)
        assert "exited with exit code" not in c.log_text(), "nothing crash-loops"

        c.sql("CREATE DATABASE later")
        time.sleep(1.5)
        assert not c.sql(worker), "no worker without the extension"

        c.sql("CREATE EXTENSION pg_mqtt_pub", dbname="later")
        wait_until(lambda: status(c, "later")["connected"], 15, "connected")
        c.sql("SELECT mqtt_publish('life/x', 'hello', 1)", dbname="later")
        assert [m.payload for m in sub.wait_for("life/", 1)] == [b"hello"]

        c.sql("DROP EXTENSION pg_mqtt_pub", dbname="later")
        wait_until(lambda: not c.sql(worker), 30, "the worker leaves after DROP EXTENSION")
        assert "extension is not installed in this database; exiting" in c.log_text()
        assert "exited with exit code" not in c.log_text()

        # and comes back with the extension
        c.sql("CREATE EXTENSION pg_mqtt_pub", dbname="later")
        wait_until(lambda: status(c, "later")["connected"], 15, "connected again")
        c.sql("SELECT mqtt_publish('life/x', 'again', 1)", dbname="later")
        assert [m.payload for m in sub.wait_for("life/", 2)] == [b"hello", b"again"]
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
