"""Poison messages against a real mosquitto with an ACL file and a message size limit: a
message the broker refuses is retried with exponential backoff without holding up healthy
traffic, then dead-lettered; dead letters can be replayed and are pruned after their retention.
"""
import os
import signal
import time

import psycopg
import pytest

from conftest import DB
from harness import Broker, Cluster, SUB_USER, Subscriber, port, status, wait_until, worker_settings

PORT = port()
BASE_MS = 200
MAX_ATTEMPTS = 5


def write_acl(path, deny):
    with open(path, "w") as f:
        f.write("# anonymous clients (the pg_mqtt_pub worker)\ntopic write #\n")
        if deny:
            f.write("topic deny poison/denied/#\n")
        f.write(f"user {SUB_USER}\ntopic read #\n")


@pytest.fixture(scope="module")
def env():
    acl = os.path.join("/tmp", f"pg_mqtt_pub_test_acl_{os.getpid()}")
    write_acl(acl, deny=True)
    os.chmod(acl, 0o644)
    b = Broker("poison", PORT, f"acl_file {acl}\nmessage_size_limit 10000").start()
    c = Cluster("poison", port(), worker_settings(DB, PORT, pg_mqtt_pub__retry_base_ms=BASE_MS,
                                                  pg_mqtt_pub__poison_max_attempts=MAX_ATTEMPTS)).start()
    c.sql(f"CREATE DATABASE {DB}")
    c.sql("CREATE EXTENSION pg_mqtt_pub", dbname=DB)
    s = Subscriber(PORT)
    wait_until(lambda: status(c, DB)["delivery_mode"] == "hot", 20, "hot")
    yield c, b, s, acl
    s.close()
    c.stop()
    b.stop()
    os.unlink(acl)


def test_denied_message_backs_off_and_is_dead_lettered_without_blocking(env):
    c, b, s, _ = env
    with c.connect(DB) as conn:
        conn.execute("SELECT mqtt_publish(CASE WHEN i = 500 THEN 'poison/denied/x' ELSE 'poison/ok/' || i END, "
                     "'m' || i, 1, content_type := 'text/x-poison', user_properties := ARRAY[['i', i::text]]) "
                     "FROM generate_series(1, 1001) i")
        t0 = time.time()
        samples = {}
        allowed_done_at = None
        while time.time() - t0 < 20:
            row = conn.execute("SELECT attempts, last_attempt_at, next_retry_at FROM mqtt_pub.outbox "
                               "WHERE topic = 'poison/denied/x'").fetchone()
            if row and row[0] > 0:  # (attempts 0: taken back from the ring after a disconnect)
                samples.setdefault(row[0], row)
            if allowed_done_at is None and len(s.matching("poison/ok/")) >= 1000:
                allowed_done_at = time.time()
                assert row is not None and row[0] < MAX_ATTEMPTS, "healthy traffic did not wait for the retries"
            if conn.execute("SELECT count(*) FROM mqtt_pub.dead_letters").fetchone()[0]:
                break
            time.sleep(0.02)
        dead = conn.execute("SELECT original_id IS NOT NULL, broker, topic, convert_from(payload, 'UTF8'), qos, retain, "
                            "attempts, first_failed_at IS NOT NULL, last_error FROM mqtt_pub.dead_letters").fetchall()
        assert dead == [(True, "default", "poison/denied/x", "m500", 1, False, MAX_ATTEMPTS, True,
                         "broker refused: not authorized (0x87)")]
        # the worker deletes delivered rows in batches, after the dead letter is committed
        wait_until(lambda: conn.execute("SELECT count(*) FROM mqtt_pub.outbox").fetchone()[0] == 0, 15, "outbox empty")
        summary = conn.execute("SELECT broker, dead_letters, distinct_topics, most_frequent_error "
                               "FROM mqtt_pub.dead_letter_summary").fetchall()
        assert summary == [("default", 1, 1, "broker refused: not authorized (0x87)")]
        # (mosquitto 2.0.11 also closes the connection after a denied MQTT 5 publish, so the
        # latest error in mqtt_status() may be that disconnect; the dead letter keeps the reason.)
        # the counter moves right after the dead letter is committed
        st = wait_until(lambda: conn.execute("SELECT dead_lettered, messages_failed, last_error_at IS NOT NULL "
                                             "FROM mqtt_status() WHERE dead_lettered > 0").fetchone(), 15, "dead_lettered counted")
        assert st[0] == 1 and st[1] >= MAX_ATTEMPTS and st[2]
    assert allowed_done_at is not None
    got = s.matching("poison/ok/")
    # at least once: messages in flight when mosquitto dropped the connection may come twice
    assert sorted({int(m.payload[1:]) for m in got}) == [i for i in range(1, 1002) if i != 500]
    assert s.matching("poison/denied/") == []
    # backoff: the k-th failure schedules the next attempt base·2^(k-1) later, and it waits for it
    assert len(samples) >= 3, f"saw too few attempts: {sorted(samples)}"
    for k, (_, last, nxt) in samples.items():
        delay_ms = (nxt - last).total_seconds() * 1000
        assert abs(delay_ms - BASE_MS * 2 ** (k - 1)) < 1, f"attempt {k}: next retry after {delay_ms} ms"
        if k + 1 in samples:
            assert samples[k + 1][1] >= nxt, f"attempt {k + 1} came before its time"
    wait_until(lambda: "moved to mqtt_pub.dead_letters after 5 attempts" in c.log_text(), 15, "the dead letter's log line")


def test_replay_after_acl_is_fixed(env):
    c, b, s, acl = env
    write_acl(acl, deny=False)
    b.reload()  # mosquitto reloads its ACL file
    with c.connect(DB) as conn:
        with pytest.raises(psycopg.errors.UndefinedObject):
            conn.execute("SELECT mqtt_pub.replay_dead_letters('nope')")
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            conn.execute("SELECT mqtt_pub.replay_dead_letters('default', -1)")
        # the dead letter shows its properties and id, and replay keeps them
        (mid, props), = conn.execute("SELECT message_id, mqtt_pub.mqtt_properties(properties) FROM mqtt_pub.dead_letters").fetchall()
        assert props == {"payload_format": 1, "content_type": "text/x-poison", "user_properties": [["i", "500"]]}
        assert conn.execute("SELECT mqtt_pub.replay_dead_letters('default', 50)").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM mqtt_pub.dead_letters").fetchone()[0] == 0
    got = s.wait_for("poison/denied/", 1, timeout=15)
    assert [m.payload for m in got] == [b"m500"]
    assert got[0].props["content_type"] == "text/x-poison"
    assert got[0].props["user_properties"] == [("i", "500"), ("pg-mqtt-pub-id", mid)]


def test_oversized_message_is_dead_lettered_without_reconnect_loop(env):
    c, b, s, _ = env
    log_start = len(c.log_text())
    broker_log_start = os.path.getsize(b.log)
    with c.connect(DB) as conn:
        conn.execute("SELECT mqtt_publish('poison/big/x', repeat('B', 20000), 1)")
        # healthy traffic keeps flowing while the big one is retried
        for i in range(20):
            conn.execute("SELECT mqtt_publish('poison/small/x', %s, 1)", (str(i),))
            time.sleep(0.1)
        assert [int(m.payload) for m in s.wait_for("poison/small/", 20)] == list(range(20))
        wait_until(lambda: conn.execute("SELECT count(*) FROM mqtt_pub.dead_letters WHERE topic = 'poison/big/x'").fetchone()[0],
                   20, "oversized message dead-lettered")
        err = conn.execute("SELECT attempts, last_error FROM mqtt_pub.dead_letters WHERE topic = 'poison/big/x'").fetchone()
        # mosquitto 2.0.11 (bookworm) answers PUBACK 0x95, which says the message can never be
        # accepted: dead-lettered at once. 2.0.21 (trixie) closes the connection instead: the
        # same message's fault each time, counted as one attempt each time.
        assert err in [(1, "broker refused: packet too large (0x95)"),
                       (MAX_ATTEMPTS, "the broker closed the connection when this message was sent")]
    assert s.matching("poison/big/") == []
    # Reconnects as the broker saw them: no loop. mosquitto 2.0.11 refuses with 0x95 and keeps
    # the connection (one reconnect per attempt at most); 2.0.21 closes it, and a drop is charged
    # to a message only once it is alone in flight: at most two per attempt (docs/reference.md, "Dead letters").
    with open(b.log, errors="replace") as f:
        f.seek(broker_log_start)
        reconnects = sum(1 for line in f if "New client connected" in line and "as pg_mqtt_pub" in line)
    assert reconnects <= 2 * MAX_ATTEMPTS, f"{reconnects} reconnects: at most two per attempt, no loop"
    wait_until(lambda: f"dead_letters after {err[0]} attempt" in c.log_text()[log_start:], 15, "the dead letter's log line")


def test_pruning_removes_only_expired_dead_letters(env):
    c, b, s, _ = env
    with c.connect(DB) as conn:
        conn.execute("DELETE FROM mqtt_pub.dead_letters")
        conn.execute("INSERT INTO mqtt_pub.dead_letters (broker, topic, payload, qos, retain, attempts, dead_lettered_at) "
                     "VALUES ('default', 'old', '', 1, false, 5, now() - interval '31 days'), "
                     "       ('default', 'recent', '', 1, false, 5, now() - interval '29 days')")
        # the worker prunes when it starts and then hourly: restart it
        pid = c.worker_pid()
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        wait_until(lambda: conn.execute("SELECT array_agg(topic) FROM mqtt_pub.dead_letters").fetchone()[0] == ["recent"],
                   30, "expired dead letter pruned")
        conn.execute("DELETE FROM mqtt_pub.dead_letters")
