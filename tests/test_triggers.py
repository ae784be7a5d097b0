"""Trigger helpers and JSON/batch publishing, as a real MQTT subscriber receives them.

Proves: 1,000-row INSERT, UPDATE and DELETE statements arrive through both helpers (one message
per row from mqtt_trigger_event_setup, one per statement from mqtt_trigger_resultset_setup) with
every row exactly once and the exact JSON shape; a rolled-back statement publishes nothing; a
resultset UPDATE pairs old and new rows by primary key even when the rows are visited in another
physical order; statements over the row limit or the message-size limit arrive as several
messages that together hold every row once, none larger than the limit; mqtt_publish_json and
mqtt_publish_batch deliver what they promise.
"""
import json

from conftest import DB
from harness import wait_until

N = 1000


def setup_table(db, name):
    db.execute(f"DROP TABLE IF EXISTS {name}")
    db.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, status text, amount numeric)")


def payloads(msgs):
    return [json.loads(m.payload) for m in msgs]


def test_event_trigger_1000_rows_each_operation(db, sub):
    setup_table(db, "ev_orders")
    prefix = db.execute("SELECT mqtt_trigger_event_setup('ev_orders', 'e2e/ev')").fetchone()[0]
    assert prefix == "e2e/ev"
    txid = {}
    for op, sql in [
        ("insert", f"INSERT INTO ev_orders SELECT i, 'new', i FROM generate_series(1, {N}) i"),
        ("update", "UPDATE ev_orders SET status = 'paid', amount = amount * 2"),
        ("delete", "DELETE FROM ev_orders"),
    ]:
        with db.transaction():
            db.execute(sql)
            txid[op] = int(db.execute("SELECT pg_current_xact_id()::text").fetchone()[0])
    for op in ("insert", "update", "delete"):
        got = sub.wait_for(f"e2e/ev/{op}", N, timeout=30)
        assert len(got) == N, f"{op}: one message per row, no duplicates"
        assert all(m.qos == 1 and not m.retain for m in got), "default QoS 1, not retained"
        events = payloads(got)
        assert {e["operation"] for e in events} == {op.upper()}
        assert {e["table"] for e in events} == {"public.ev_orders"}
        assert {e["txid"] for e in events} == {txid[op]}
        if op == "insert":
            assert [e["new"] for e in events] == [{"id": i, "status": "new", "amount": i} for i in range(1, N + 1)]
            assert all("old" not in e for e in events)
        elif op == "update":
            assert sorted((e["old"]["id"], e["old"]["amount"], e["new"]["id"], e["new"]["amount"], e["new"]["status"])
                          for e in events) == [(i, i, i, 2 * i, "paid") for i in range(1, N + 1)]
        else:
            assert sorted(e["old"]["id"] for e in events) == list(range(1, N + 1))
            assert all("new" not in e for e in events)


def test_rolled_back_statement_publishes_nothing(db, sub):
    setup_table(db, "rb_orders")
    db.execute("SELECT mqtt_trigger_event_setup('rb_orders', 'e2e/rb/ev')")
    db.execute("SELECT mqtt_trigger_resultset_setup('rb_orders', 'e2e/rb/rs')")
    db.execute("BEGIN")
    db.execute("INSERT INTO rb_orders SELECT i, 'x', i FROM generate_series(1, 100) i")
    db.execute("ROLLBACK")
    db.execute("BEGIN")
    db.execute("INSERT INTO rb_orders VALUES (1, 'kept', 1)")
    db.execute("SAVEPOINT s")
    db.execute("INSERT INTO rb_orders VALUES (2, 'rolled back to savepoint', 2)")
    db.execute("ROLLBACK TO SAVEPOINT s")
    db.execute("COMMIT")
    db.execute("SELECT mqtt_publish('e2e/rb/marker', 'after')")
    sub.wait_for("e2e/rb/marker", 1)
    ev = payloads(sub.matching("e2e/rb/ev/"))
    rs = payloads(sub.matching("e2e/rb/rs/"))
    assert [e["new"]["id"] for e in ev] == [1]
    assert [[d["new"]["id"] for d in m["data"]] for m in rs] == [[1]]


def test_event_names_the_table_as_it_is_called_at_each_row(db, sub):
    """The row trigger caches the table's name per command: a rename or a move to another
    schema inside the same transaction shows in the next statement's events."""
    setup_table(db, "nm_orders")
    db.execute("DROP SCHEMA IF EXISTS nm_other CASCADE")
    db.execute("CREATE SCHEMA nm_other")
    db.execute("SELECT mqtt_trigger_event_setup('nm_orders', 'e2e/nm', '{INSERT}')")
    with db.transaction():
        db.execute("INSERT INTO nm_orders VALUES (1, 'a', 1), (2, 'a', 2)")
        db.execute("ALTER TABLE nm_orders RENAME TO \"Nm Orders\"")
        db.execute("INSERT INTO \"Nm Orders\" VALUES (3, 'b', 3)")
        db.execute("ALTER TABLE \"Nm Orders\" SET SCHEMA nm_other")
        db.execute("INSERT INTO nm_other.\"Nm Orders\" VALUES (4, 'c', 4)")
    db.execute("ALTER SCHEMA nm_other RENAME TO nm_renamed")
    db.execute("INSERT INTO nm_renamed.\"Nm Orders\" VALUES (5, 'd', 5)")
    events = payloads(sub.wait_for("e2e/nm/", 5))
    assert [(e["new"]["id"], e["table"]) for e in events] == [
        (1, "public.nm_orders"), (2, "public.nm_orders"), (3, 'public."Nm Orders"'),
        (4, 'nm_other."Nm Orders"'), (5, 'nm_renamed."Nm Orders"')]
    db.execute("DROP SCHEMA nm_renamed CASCADE")


def resultset_rows(msgs):
    """The rows of a split statement, checking the part numbering."""
    ms = payloads(msgs)
    parts = len(ms)
    assert [m["part"] for m in ms] == list(range(1, parts + 1)), "parts arrive in order"
    assert {m["parts"] for m in ms} == {parts}
    assert all(m["count"] == len(m["data"]) for m in ms)
    return [d for m in ms for d in m["data"]]


def test_resultset_trigger_1000_rows_each_operation(db, sub):
    setup_table(db, "rs_orders")
    db.execute("SELECT mqtt_trigger_resultset_setup('rs_orders', 'e2e/rs', qos := 2)")
    db.execute(f"INSERT INTO rs_orders SELECT i, 'new', i FROM generate_series(1, {N}) i")
    db.execute("UPDATE rs_orders SET status = 'paid' WHERE id % 2 = 0")
    db.execute("UPDATE rs_orders SET status = 'none' WHERE false")  # no rows: no message
    db.execute("DELETE FROM rs_orders")
    # the marker at QoS 2 like the statements' messages: order is kept per QoS level only
    # (mosquitto forwards a QoS 2 message at PUBREL, so a QoS 0 marker could overtake them)
    db.execute("SELECT mqtt_publish('e2e/rs/marker', 'after', 2)")
    for topic in ("e2e/rs/insert", "e2e/rs/update", "e2e/rs/delete", "e2e/rs/marker"):
        sub.wait_for(topic, 1)
    ins = sub.matching("e2e/rs/insert")
    upd = sub.matching("e2e/rs/update")
    dele = sub.matching("e2e/rs/delete")
    assert (len(ins), len(upd), len(dele)) == (1, 1, 1), "one message per statement; none for 0 rows"
    assert all(m.qos == 2 for m in ins + upd + dele)
    assert [d["new"]["id"] for d in resultset_rows(ins)] == list(range(1, N + 1))
    rows = resultset_rows(upd)
    assert [(d["old"]["id"], d["old"]["status"], d["new"]["id"], d["new"]["status"]) for d in rows] == \
        [(i, "new", i, "paid") for i in range(2, N + 1, 2)]
    assert sorted(d["old"]["id"] for d in resultset_rows(dele)) == list(range(1, N + 1))
    meta = json.loads(upd[0].payload)
    assert (meta["operation"], meta["table"], meta["count"]) == ("UPDATE", "public.rs_orders", N // 2)


def test_resultset_update_pairs_by_key_whatever_the_physical_order(db, sub):
    setup_table(db, "rs_scrambled")
    db.execute(f"INSERT INTO rs_scrambled SELECT i, 's' || i, i FROM generate_series(1, {N}) i")
    # Move every third row to the end of the heap, then shuffle again: the table's physical
    # order is no longer the key order.
    db.execute("UPDATE rs_scrambled SET amount = amount WHERE id % 3 = 0")
    db.execute("UPDATE rs_scrambled SET amount = amount WHERE id % 5 = 0")
    db.execute("SELECT mqtt_trigger_resultset_setup('rs_scrambled', 'e2e/scr', '{UPDATE}')")
    order = [r[0] for r in db.execute("SELECT id FROM rs_scrambled").fetchall()]
    assert order != sorted(order), "physical order differs from key order"
    db.execute("UPDATE rs_scrambled SET amount = amount + 1000, status = status || '!'")
    rows = resultset_rows(sub.wait_for("e2e/scr/update", 1))
    assert len(rows) == N
    for d in rows:
        assert d["new"]["id"] == d["old"]["id"]
        assert d["new"]["amount"] == d["old"]["amount"] + 1000
        assert d["new"]["status"] == d["old"]["status"] + "!" == f"s{d['old']['id']}!"


def test_resultset_splits_by_rows_and_by_bytes(cluster, db, sub):
    setup_table(db, "rs_split")
    db.execute("SELECT mqtt_trigger_resultset_setup('rs_split', 'e2e/split', '{INSERT}', rows_per_message := 300)")
    db.execute(f"INSERT INTO rs_split SELECT i, 'x', i FROM generate_series(1, {N}) i")
    msgs = sub.wait_for("e2e/split/insert", 4)
    assert [json.loads(m.payload)["count"] for m in msgs] == [300, 300, 300, 100]
    assert [d["new"]["id"] for d in resultset_rows(msgs)] == list(range(1, N + 1)), "every row exactly once"

    # Wide rows and a 16 kB message limit: split by size well before the row limit.
    limit = 16 * 1024
    db.execute("SELECT mqtt_trigger_resultset_setup('rs_split', 'e2e/bytes', '{UPDATE}', rows_per_message := 1000)")
    cluster.reload_with(DB, max_message_size="'16kB'")
    try:
        wait_until(lambda: cluster.sql("SHOW pg_mqtt_pub.max_message_size", dbname=DB)[0][0] == "16kB", 10, "reload")
        with cluster.connect(DB) as c:
            c.execute("UPDATE rs_split SET status = repeat('y', 200) WHERE id <= 500")
        wait_until(lambda: sum(json.loads(m.payload)["count"] for m in sub.matching("e2e/bytes/update")) >= 500,
                   30, "all rows of the wide update")
        msgs = sub.matching("e2e/bytes/update")
        assert len(msgs) > 1
        assert all(len(m.payload) + len(m.topic) <= limit for m in msgs), "no message over the limit"
        assert sorted(d["new"]["id"] for d in resultset_rows(msgs)) == list(range(1, 501))
    finally:
        cluster.reload_with(DB, max_message_size="DEFAULT")


def test_publish_json_and_batch(db, sub):
    db.execute("SELECT mqtt_publish_json('e2e/json/row', row_to_json(r), 1) FROM (SELECT 1 AS id, 'ü \"q\"' AS name) r")
    db.execute("SELECT mqtt_publish_json('e2e/json/jsonb', jsonb_build_object('a', 1, 'b', ARRAY[1,2]), 2, true)")
    got = sub.wait_for("e2e/json/", 2)
    assert [(m.topic, m.payload, m.qos, m.retain) for m in got] == [
        ("e2e/json/row", '{"id":1,"name":"ü \\"q\\""}'.encode(), 1, False),
        ("e2e/json/jsonb", b'{"a": 1, "b": [1, 2]}', 2, True),
    ]
    db.execute("SELECT mqtt_publish('e2e/json/jsonb', '', 1, true)")  # clear the retained message
    n = db.execute("SELECT mqtt_publish_batch('e2e/batch', ARRAY(SELECT CASE WHEN i % 10 = 3 THEN NULL ELSE 'p' || i END "
                   "FROM generate_series(0, 999) i), 1)").fetchone()[0]
    assert n == 900
    got = sub.wait_for("e2e/batch/", 900)
    assert [(m.topic, m.payload) for m in got] == [(f"e2e/batch/{i}", f"p{i}".encode()) for i in range(1000) if i % 10 != 3]
