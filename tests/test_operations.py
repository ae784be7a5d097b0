"""What a DBA operating pg_mqtt_pub relies on (issue #25): nothing committed is discarded
silently (DROP EXTENSION, replay to a removed broker), every failure names its cause (TLS files,
a broker that never answers, bad settings, bad JSON), mqtt_status() reads at a glance
(problem, next attempt, what waits, latency, stats_reset, mqtt_reconnect), and the log says
what happened (a broker back after an outage, expired messages, no alarming line on restart).
Each test has its own cluster, broker and subscriber."""
import datetime
import os
import socket
import tempfile
import threading
import time

import psycopg
import pytest

from harness import port, scene, status, wait_status, wait_until


def error_of(cluster, db, query, params=None):
    """The psycopg error `query` raises (fails the test if it succeeds)."""
    with cluster.connect(db) as c:
        with pytest.raises(psycopg.Error) as e:
            c.execute(query, params)
    return e.value


def test_nothing_is_discarded_silently_by_drop_or_replay():
    with scene("ops-drop", port(), port(), "opsdrop", "drop/#", settings={"pg_mqtt_pub.connect_timeout": 2}) as (b, s, c):
        wait_status(c, "opsdrop", lambda st: st["delivery_mode"] == "hot", "hot")
        b.stop()
        wait_status(c, "opsdrop", lambda st: not st["connected"], "disconnected")
        with c.connect("opsdrop") as q:
            q.execute("SELECT mqtt_publish('drop/a', '1', 1)")
            q.execute("SELECT mqtt_publish('drop/a', '2', 1)")
            # a broker nobody listens on, with one message, removed by force: one dead letter
            q.execute("SELECT mqtt_broker_add('deadb', '127.0.0.1', %s)", (port(),))
            q.execute("SELECT mqtt_publish('drop/b', 'x', 1, broker => 'deadb')")
            q.execute("SELECT mqtt_broker_remove('deadb', force => true)")
        wait_until(lambda: c.sql("SELECT count(*) FROM mqtt_pub.outbox WHERE broker = 'default'", dbname="opsdrop")[0][0] == 2,
                   20, "the two messages in the outbox")

        # replay to a removed broker: an error, and nothing moved
        for call in ("SELECT mqtt_pub.replay_dead_letters('deadb')", "SELECT mqtt_pub.replay_dead_letters()"):
            e = error_of(c, "opsdrop", call)
            assert e.sqlstate == "42704", e
            assert '"deadb" does not exist' in str(e) and "mqtt_broker_add" in e.diag.message_hint
        assert c.sql("SELECT count(*) FROM mqtt_pub.outbox WHERE broker = 'deadb'", dbname="opsdrop")[0][0] == 0

        # DROP EXTENSION, with or without CASCADE, is refused with the counts and a hint
        for drop in ("DROP EXTENSION pg_mqtt_pub", "DROP EXTENSION pg_mqtt_pub CASCADE"):
            e = error_of(c, "opsdrop", drop)
            assert e.sqlstate == "55006", e
            assert "2 undelivered messages" in e.diag.message_detail and 'broker "default": 2' in e.diag.message_detail
            assert "1 dead letter" in e.diag.message_detail
            assert "mqtt_pub.mqtt_discard()" in e.diag.message_hint
        assert c.sql("SELECT count(*) FROM pg_extension WHERE extname = 'pg_mqtt_pub'", dbname="opsdrop")[0][0] == 1

        # a DROP whose snapshot predates a commit still counts it (REPEATABLE READ; outside review)
        with c.connect("opsdrop", autocommit=False) as a:
            a.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            a.execute("SELECT 1 FROM pg_class LIMIT 1")  # the snapshot
            c.sql("SELECT mqtt_publish('drop/a', '3', 1)", dbname="opsdrop")
            wait_until(lambda: c.sql("SELECT count(*) FROM mqtt_pub.outbox WHERE broker = 'default'", dbname="opsdrop")[0][0] == 3,
                       20, "the third message in the outbox")
            with pytest.raises(psycopg.errors.ObjectInUse) as e:
                a.execute("DROP EXTENSION pg_mqtt_pub")
            assert "3 undelivered messages" in e.value.diag.message_detail
            a.rollback()
        # nor does renaming the schema (or a table) first let a DROP through
        with c.connect("opsdrop", autocommit=False) as a:
            a.execute("ALTER SCHEMA mqtt_pub RENAME TO mqtt_old")
            with pytest.raises(psycopg.errors.ObjectInUse):
                a.execute("DROP EXTENSION pg_mqtt_pub")
            a.rollback()

        # discarding is explicit, checked and logged
        e = error_of(c, "opsdrop", "SELECT mqtt_pub.mqtt_discard('nope')")
        assert e.sqlstate == "42704"
        assert c.sql("SELECT mqtt_pub.mqtt_discard('deadb')", dbname="opsdrop")[0][0] == 1
        assert c.sql("SELECT mqtt_pub.mqtt_discard()", dbname="opsdrop")[0][0] == 3
        wait_until(lambda: "discarded 3 undelivered message(s) and 0 dead letter(s) of every broker" in c.log_text(), 10,
                   "the discard logged")
        c.sql("DROP EXTENSION pg_mqtt_pub", dbname="opsdrop")


def test_status_reads_at_a_glance_and_reconnect_connects_now():
    # a long reconnect backoff: only mqtt_reconnect() brings the broker back quickly
    settings = {"pg_mqtt_pub.reconnect_interval_ms": 60000, "pg_mqtt_pub.connect_timeout": 2}
    with scene("ops-status", port(), port(), "opsst", "st/#", settings=settings) as (b, s, c):
        st = wait_status(c, "opsst", lambda st: st["delivery_mode"] == "hot", "hot")
        assert st["problem"] is None and st["problem_since"] is None and st["next_attempt_at"] is None
        assert st["connected_node"] == f"127.0.0.1:{b.port}" and st["connected_since"] is not None
        assert st["dead_letters"] == 0 and st["stats_reset"] is not None
        with c.connect("opsst") as q:
            for i in range(20):
                q.execute("SELECT mqtt_publish('st/a', %s, 1)", (str(i),))
        s.wait_for("st/a", 20)
        st = wait_status(c, "opsst", lambda st: st["latency_p50_ms"] is not None and st["messages_sent"] >= 20, "latency known")
        assert 0 <= st["latency_p50_ms"] <= st["latency_p99_ms"]
        assert st["oldest_waiting_age"] is None and st["ring_waiting"] == 0

        before = st["stats_reset"]
        reset_at = c.sql("SELECT mqtt_pub.mqtt_stats_reset()", dbname="opsst")[0][0]
        st = wait_status(c, "opsst", lambda st: st["latency_p50_ms"] is None, "latency reset")
        assert st["messages_sent"] == 0 and st["stats_reset"] >= reset_at > before
        e = error_of(c, "opsst", "SELECT mqtt_pub.mqtt_stats_reset('nope')")
        assert e.sqlstate == "42704"

        # the broker goes away: the problem, since when, the next attempt; what waits, how old
        b.stop()
        st = wait_status(c, "opsst", lambda st: st["problem"] is not None and st["next_attempt_at"] is not None, "a problem")
        assert st["connected_node"] is None and st["connected_since"] is None and st["problem_since"] is not None
        assert st["last_error"] == st["problem"]
        with c.connect("opsst") as q:
            for i in range(3):
                q.execute("SELECT mqtt_publish('st/b', %s, 1)", (str(i),))
        st = wait_status(c, "opsst", lambda st: st["outbox_pending"] == 3, "three messages waiting")
        assert st["oldest_waiting_age"].total_seconds() >= 0
        row = c.sql("SELECT pending, connected, delivery_mode, problem IS NOT NULL FROM mqtt_pub.outbox_summary "
                    "WHERE broker = 'default'", dbname="opsst")[0]
        assert row == (3, False, "cold", True)

        # back: the worker would wait for its backoff (a minute); mqtt_reconnect() connects now
        wait_status(c, "opsst", lambda st: st["next_attempt_at"] and
                    (st["next_attempt_at"] - datetime.datetime.now(datetime.timezone.utc)).total_seconds() > 30,
                    "the next attempt a backoff away")
        b.restart(s)
        assert c.sql("SELECT mqtt_pub.mqtt_reconnect('default')", dbname="opsst")[0][0] == 1
        # (15 s: well before the backoff's next attempt, which is more than 30 s away)
        st = wait_status(c, "opsst", lambda st: st["connected"], "connected again", timeout=15)
        assert st["problem"] is None and st["next_attempt_at"] is None and st["last_error"] is not None
        s.wait_for("st/b", 3)
        assert sorted(m.payload for m in s.matching("st/b")) == [b"0", b"1", b"2"]
        wait_until(lambda: "is back at 127.0.0.1" in c.log_text(), 10, "the line saying the broker is back")
        line = next(l for l in c.log_text().splitlines() if "is back at" in l)
        assert "unreachable; 3 messages waited in the outbox" in line, line
        wait_status(c, "opsst", lambda st: st["outbox_pending"] == 0 and st["oldest_waiting_age"] is None, "outbox drained")
        e = error_of(c, "opsst", "SELECT mqtt_pub.mqtt_reconnect('nope')")
        assert e.sqlstate == "42704"


class SilentBroker:
    """A TCP server that accepts connections and never answers (a broker that ignores CONNECT)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self):
        self.sock.close()
        for conn in self.conns:
            conn.close()


def test_every_connection_failure_names_its_cause():
    settings = {"pg_mqtt_pub.connect_timeout": 2, "pg_mqtt_pub.keepalive": 60}
    silent = SilentBroker()
    try:
        with scene("ops-cause", port(), port(), "opscause", "cause/#", settings=settings) as (b, s, c):
            # a broker that never answers CONNECT is explained after connect_timeout, not keepalive
            started = time.time()
            c.sql("SELECT mqtt_broker_add('silent', '127.0.0.1', %s)" % silent.port, dbname="opscause")
            st = wait_status(c, "opscause", lambda st: st["problem"] and "no CONNACK" in st["problem"], "explained",
                             broker="silent", timeout=30)
            assert time.time() - started < 20, "explained only after a keepalive interval"
            assert "within 2 s" in st["problem"], st["problem"]

            # TLS files: named, with what the OS said, when the broker is added
            e = error_of(c, "opscause", "SELECT mqtt_broker_add('cloud', 'mqtt.example.com', 8883, use_tls => true, "
                                        "ca_cert => '/nonexistent.pem')")
            assert e.sqlstate == "58P01", e
            assert str(e).startswith('could not open ca_cert file "/nonexistent.pem": No such file or directory'), str(e)
            fd, secret = tempfile.mkstemp(suffix=".pem")  # root's, mode 0600: the server (postgres) cannot read it
            os.close(fd)
            e = error_of(c, "opscause", "SELECT mqtt_broker_add('cloud', 'mqtt.example.com', 8883, use_tls => true, "
                                        "ca_cert => %s)", (secret,))
            assert e.sqlstate == "42501" and "Permission denied" in str(e), e

            # the same rules for the settings, at ALTER SYSTEM (and so at a reload)
            for setting, value, text in [
                ("pg_mqtt_pub.broker_tls_version", "tlsv1.1", 'invalid tls_version "tlsv1.1"'),
                ("pg_mqtt_pub.broker_host", "mqtt://x", 'invalid host "mqtt://x"'),
                ("pg_mqtt_pub.broker_ca_cert", "/nonexistent.pem", 'could not open ca_cert file "/nonexistent.pem"'),
            ]:
                e = error_of(c, "opscause", f"ALTER SYSTEM SET {setting} = '{value}'")
                assert e.sqlstate == "22023", e
                assert text in e.diag.message_detail, e.diag.message_detail
                assert e.diag.message_hint
            os.unlink(secret)
            # a FIFO is refused at once (opening it would wait for a writer, uninterruptibly)
            fifo_dir = tempfile.mkdtemp()
            os.chmod(fifo_dir, 0o755)
            fifo = os.path.join(fifo_dir, "fifo")
            os.mkfifo(fifo, 0o666)
            started = time.time()
            e = error_of(c, "opscause", "SELECT mqtt_broker_add('cloud', 'mqtt.example.com', 8883, use_tls => true, "
                                        "ca_cert => %s)", (fifo,))
            assert e.sqlstate == "22023" and "not a regular file" in str(e), e
            e = error_of(c, "opscause", f"ALTER SYSTEM SET pg_mqtt_pub.broker_ca_cert = '{fifo}'")
            assert e.sqlstate == "22023" and "not a regular file" in e.diag.message_detail, e
            assert time.time() - started < 10

            # bad JSON text gets a hint; control characters come back as SQL writes them
            e = error_of(c, "opscause", "SELECT mqtt_publish_json('a/b', 'not json')")
            assert e.sqlstate == "22P02" and "mqtt_publish()" in e.diag.message_hint
            e = error_of(c, "opscause", r"SELECT mqtt_publish(E'a\x01', 'x')")
            assert str(e).startswith(r"invalid MQTT topic E'a\x01'"), str(e)
    finally:
        silent.close()


def test_expired_messages_are_counted_in_one_line_and_restarts_are_quiet():
    with scene("ops-log", port(), port(), "opslog", "log/#") as (b, s, c):
        wait_status(c, "opslog", lambda st: st["delivery_mode"] == "hot", "hot")
        b.stop()
        wait_status(c, "opslog", lambda st: not st["connected"], "disconnected")
        with c.connect("opslog") as q:
            for i in range(3):
                q.execute("SELECT mqtt_publish('log/x', %s, 1, message_expiry => '1 second')", (str(i),))
        time.sleep(1.5)  # the messages' expiry runs out while the broker is away
        b.restart(s)
        c.sql("SELECT mqtt_pub.mqtt_reconnect()", dbname="opslog")
        wait_until(lambda: "3 messages expired before they could be sent" in c.log_text(), 20, "one line for the expired")
        assert c.log_text().count("expired before") == 1
        assert status(c, "opslog")["messages_expired"] == 3

        # a fast restart: neither of ours exits "with exit code 1" (PostgreSQL's own logical
        # replication launcher still may: that line is PostgreSQL's)
        c.stop()
        c.start()
        c.worker_pid()
        ours = [l for l in c.log_text().splitlines() if "pg_mqtt_pub" in l and "exit code" in l]
        assert not ours, ours
        # ... but a launcher terminated by hand still comes back
        pid = c.sql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_mqtt_pub launcher'")[0][0]
        c.sql(f"SELECT pg_terminate_backend({pid})")
        wait_until(lambda: c.sql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_mqtt_pub launcher' "
                                 f"AND pid <> {pid}"), 30, "the launcher restarted")
