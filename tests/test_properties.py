"""MQTT 5 message properties, message ids and message expiry, as an MQTT 5 subscriber (paho)
receives them (issue #15; docs/reference.md "Message properties and message ids")."""
import signal
import time

import psycopg
import pytest

from harness import port, scene, status, wait_until

ALL = dict(content_type="application/vnd.test+json", message_expiry="1 hour", response_topic="reply/here",
           correlation_data=b"\x00\x01corr\xff", user_properties=[["k", "v1"], ["k", "v2"], ["other", ""]])
CALL = ("SELECT mqtt_publish(%s, %s, 1, content_type := %s, message_expiry := %s::interval, response_topic := %s, "
        "correlation_data := %s, user_properties := %s)")


def expect_all(p):
    """The properties ALL asked for, as received (the expiry counts down, so: within a minute)."""
    assert p["content_type"] == ALL["content_type"]
    assert p["payload_format"] == 1
    assert 3540 <= p["message_expiry"] <= 3600
    assert p["response_topic"] == ALL["response_topic"]
    assert p["correlation_data"] == ALL["correlation_data"]
    users = p["user_properties"]
    assert users[:3] == [("k", "v1"), ("k", "v2"), ("other", "")], users
    ids = [v for k, v in users if k == "pg-mqtt-pub-id"]
    assert len(ids) == 1 and users[-1][0] == "pg-mqtt-pub-id", users
    return ids[0]


def publish_all(conn, topic, payload):
    a = ALL
    conn.execute(CALL, (topic, payload, a["content_type"], a["message_expiry"], a["response_topic"],
                        a["correlation_data"], a["user_properties"]))


def test_every_property_arrives_hot_and_cold_and_ids_differ(db, sub):
    publish_all(db, "props/hot", "h")
    db.execute("SET pg_mqtt_pub.durable = on")  # the outbox path
    try:
        publish_all(db, "props/cold", "c")
        db.execute("SELECT mqtt_publish('props/plain', 'p')")
    finally:
        db.execute("RESET pg_mqtt_pub.durable")
    got = {m.topic: m for m in sub.wait_for("props/", 3)}
    ids = {expect_all(got[t].props) for t in ("props/hot", "props/cold")}
    plain = got["props/plain"].props
    assert plain["payload_format"] == 1 and "content_type" not in plain
    assert [k for k, _ in plain["user_properties"]] == ["pg-mqtt-pub-id"]
    ids.add(plain["user_properties"][0][1])
    assert len(ids) == 3, f"every message its own id: {ids}"


def test_binary_payload_has_no_utf8_indicator_unless_asked(db, sub):
    db.execute("SELECT mqtt_publish_binary('props/bin', '\\x00ff'::bytea)")
    db.execute("SELECT mqtt_publish_binary('props/bin-text', 'abc'::bytea, payload_format := 1)")
    db.execute("SELECT mqtt_publish_json('props/json', '{\"a\": 1}'::jsonb, content_type := 'application/json')")
    got = {m.topic: m for m in sub.wait_for("props/bin", 2) + sub.wait_for("props/json", 1)}
    assert "payload_format" not in got["props/bin"].props
    assert got["props/bin-text"].props["payload_format"] == 1
    assert got["props/json"].props["payload_format"] == 1
    assert got["props/json"].props["content_type"] == "application/json"


def test_message_id_can_be_turned_off(db, sub):
    db.execute("SET pg_mqtt_pub.message_id = off")
    try:
        db.execute("SELECT mqtt_publish('props/noid', 'x', user_properties := ARRAY[['a', 'b']])")
    finally:
        db.execute("RESET pg_mqtt_pub.message_id")
    (m,) = sub.wait_for("props/noid", 1)
    assert m.props["user_properties"] == [("a", "b")]


def test_helpers_add_routing_properties(db, sub):
    db.execute("CREATE TABLE props_t (id int PRIMARY KEY)")
    try:
        db.execute("SELECT mqtt_trigger_event_setup('props_t', 'props/ev', '{INSERT}')")
        db.execute("SELECT mqtt_trigger_resultset_setup('props_t', 'props/rs', '{DELETE}')")
        xid = db.execute("INSERT INTO props_t VALUES (1) RETURNING pg_current_xact_id()::text").fetchone()[0]
        db.execute("DELETE FROM props_t")
        (ev,) = sub.wait_for("props/ev/insert", 1)
        (rs,) = sub.wait_for("props/rs/delete", 1)
        users = dict((k, v) for k, v in ev.props["user_properties"] if k != "pg-mqtt-pub-id")
        assert users == {"pg-table": "public.props_t", "pg-operation": "INSERT", "pg-xid": xid}
        assert ev.props["content_type"] == "application/json" and ev.props["payload_format"] == 1
        assert dict(rs.props["user_properties"])["pg-operation"] == "DELETE"
        assert ev.payload.startswith(b'{"operation":"INSERT"')  # the envelope is unchanged
    finally:
        db.execute("SELECT mqtt_trigger_remove('props_t')")
        db.execute("DROP TABLE props_t")


def test_expiry_counts_from_commit_and_the_id_survives_a_resend():
    mqtt_port, pg_port = port(), port()
    with scene("expiry", pg_port, mqtt_port, "expiry", "exp/#") as (b, s, c):
        wait_until(lambda: status(c, "expiry")["connected"], 20, "connected")
        # Frozen broker: QoS 1 messages go out and wait for their acknowledgement, then the
        # broker dies and they are sent again after the restart.
        b.kill(signal.SIGSTOP)
        with c.connect("expiry") as conn:
            conn.execute("SELECT mqtt_publish('exp/short', 's', 1, message_expiry := '2 seconds')")
            conn.execute("SELECT mqtt_publish('exp/long', 'l', 1, message_expiry := '60 seconds')")
            committed_long = time.time()
            conn.execute("SELECT mqtt_publish('exp/none', 'n', 1)")
        time.sleep(0.5)
        b.crash()  # still stopped: it never acknowledges them
        # taken back into the outbox with their ids and expiry times
        rows = wait_until(lambda: c.sql("SELECT topic, message_id, expires_at IS NOT NULL FROM mqtt_pub.outbox ORDER BY id",
                                        dbname="expiry") if len(c.sql("SELECT 1 FROM mqtt_pub.outbox", dbname="expiry")) == 3 else None,
                          20, "three outbox rows")
        assert [(t, e) for t, _, e in rows] == [("exp/short", True), ("exp/long", True), ("exp/none", False)]
        ids = {t: i for t, i, _ in rows}
        time.sleep(3)  # longer than the short expiry, shorter than the long one
        b.restart(s)
        got = {m.topic: m for m in s.wait_for("exp/", 2)}
        assert set(got) == {"exp/long", "exp/none"}, "the expired message is not sent"
        # sent with what is left of 60 s: at least 4.5 s passed (the sleeps above), and no more
        # than the test saw pass (one second either way for the broker's and our rounding)
        left, elapsed = got["exp/long"].props["message_expiry"], got["exp/long"].at - committed_long
        assert 60 - elapsed - 1 <= left <= 57, f"{left} s left after {elapsed:.1f} s"
        for t, m in got.items():
            assert dict(m.props["user_properties"])["pg-mqtt-pub-id"] == ids[t], "the same id on the resend"
        wait_until(lambda: status(c, "expiry")["messages_expired"] == 1, 10, "one expired message counted")
        # the expired row's delete is queued after the count, with the delivered rows' deletes
        wait_until(lambda: c.sql("SELECT count(*) FROM mqtt_pub.outbox", dbname="expiry") == [(0,)], 15, "outbox empty")
        assert c.sql("SELECT count(*) FROM mqtt_pub.dead_letters", dbname="expiry") == [(0,)]


def test_mqtt_3_1_1_refuses_properties_at_call_time_and_drops_them_with_one_warning():
    mqtt_port = port()
    with scene("v311", port(), mqtt_port, "v311", "v311/#", worker_port=port(),
               settings=dict(pg_mqtt_pub__protocol_version="'3.1.1'")) as (_, s, c):
        # before the worker knows the broker's protocol: accepted, sent without the properties
        c.sql("SELECT mqtt_publish('v311/early', 'e', 1, content_type := 'text/plain')", dbname="v311")
        c.sql("SELECT mqtt_publish('v311/early', 'f', 1, content_type := 'text/plain')", dbname="v311")
        c.reload_with("v311", broker_port=mqtt_port)
        got = s.wait_for("v311/early", 2)
        assert [(m.payload, m.props.get("content_type")) for m in got] == [(b"e", None), (b"f", None)]
        # logged after the packets are handed over: it may come after the subscriber has them
        warning = "is connected with MQTT 3.1.1, which has no message properties"
        wait_until(lambda: warning in c.log_text(), 15, "the MQTT 3.1.1 warning")
        log = c.log_text()
        assert log.count(warning) == 1, log
        # now it is known: an explicit property is refused, the rest goes out as before
        with c.connect("v311") as conn:
            with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
                conn.execute("SELECT mqtt_publish('v311/late', 'x', user_properties := ARRAY[['a', 'b']])")
            assert "MQTT 3.1.1" in str(e.value) and e.value.diag.message_hint
            conn.execute("SELECT mqtt_publish('v311/late', 'ok')")
        assert [m.payload for m in s.wait_for("v311/late", 1)] == [b"ok"]
