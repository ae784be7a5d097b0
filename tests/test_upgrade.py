"""Extension upgrades: ALTER EXTENSION pg_mqtt_pub UPDATE from every earlier release.

Proves, for each released version that has an update path to the current default_version: an
installation of it, filled with outbox rows (broker down), a dead letter, a named broker and both
kinds of publishing triggers, then updated, has exactly the catalog of a fresh install of the
current version (functions with signatures, results, languages, SECURITY DEFINER, settings,
volatility, ACLs and comments; tables, columns, defaults, constraints, indexes, views, triggers,
pg_dump configuration) and loses nothing: the rows are still there, the triggers still publish,
and once the broker is up every outbox message arrives, in order.
"""
import glob
import os
import re

import psycopg
import pytest

from harness import Broker, Cluster, Subscriber, port, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PORT = port()


def current_version():
    with open(os.path.join(ROOT, "pg_mqtt_pub.control")) as f:
        return re.search(r"default_version\s*=\s*'([^']+)'", f.read()).group(1)


def earlier_versions():
    """Versions with an update path to the current one (update scripts A--B chained)."""
    steps = {}
    for path in glob.glob(os.path.join(ROOT, "pg_mqtt_pub--*--*.sql")):
        a, b = re.match(r"pg_mqtt_pub--(.+)--(.+)\.sql", os.path.basename(path)).groups()
        steps.setdefault(a, []).append(b)
    target, found = current_version(), []

    def reaches(v, seen=()):
        return v == target or any(reaches(n, seen + (v,)) for n in steps.get(v, []) if n not in seen)
    for v in steps:
        if v != target and reaches(v):
            found.append(v)
    return sorted(found)


CATALOG = r"""
WITH ext AS (SELECT oid FROM pg_extension WHERE extname = 'pg_mqtt_pub'),
members AS (SELECT d.classid, d.objid FROM pg_depend d, ext WHERE d.refobjid = ext.oid AND d.deptype = 'e'),
rels AS (SELECT c.oid, c.relkind FROM pg_class c JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = c.oid)
SELECT 'function ' || p.oid::regprocedure::text,
       concat_ws(' | ', pg_get_function_result(p.oid), pg_get_function_arguments(p.oid), l.lanname, p.prosecdef,
                 p.provolatile, p.proparallel, p.proisstrict, p.proconfig::text, p.proacl::text,
                 CASE WHEN l.lanname = 'c' THEN p.prosrc ELSE md5(p.prosrc) END, obj_description(p.oid, 'pg_proc'))
FROM pg_proc p JOIN members m ON m.classid = 'pg_proc'::regclass AND m.objid = p.oid JOIN pg_language l ON l.oid = p.prolang
UNION ALL
SELECT 'relation ' || c.oid::regclass::text, concat_ws(' | ', c.relkind, c.relacl::text, obj_description(c.oid, 'pg_class'))
FROM pg_class c JOIN rels r ON r.oid = c.oid
UNION ALL
SELECT 'column ' || a.attrelid::regclass::text || '.' || a.attname,
       concat_ws(' | ', format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attnum, pg_get_expr(ad.adbin, ad.adrelid), a.attcollation)
FROM pg_attribute a JOIN rels r ON r.oid = a.attrelid AND r.relkind IN ('r', 'v')
LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
WHERE a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'index ' || i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
FROM pg_index i JOIN rels r ON r.oid = i.indrelid
UNION ALL
SELECT 'constraint ' || co.conrelid::regclass::text || '.' || co.conname, pg_get_constraintdef(co.oid)
FROM pg_constraint co JOIN rels r ON r.oid = co.conrelid
UNION ALL
SELECT 'view ' || r.oid::regclass::text, pg_get_viewdef(r.oid) FROM rels r WHERE r.relkind = 'v'
UNION ALL
SELECT 'trigger ' || t.tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN rels r ON r.oid = t.tgrelid
UNION ALL
SELECT 'dump config', coalesce((SELECT array_agg(x::regclass::text ORDER BY x::regclass::text)
                                FROM pg_extension e, unnest(e.extconfig) x WHERE e.extname = 'pg_mqtt_pub')::text, '')
UNION ALL
SELECT 'schema ' || n.nspname, concat_ws(' | ', n.nspacl::text, obj_description(n.oid, 'pg_namespace'))
FROM pg_namespace n WHERE n.nspname = 'mqtt_pub'
"""


def catalog(c, db):
    return dict(c.sql(CATALOG, dbname=db))


def rows(c, db):
    return c.sql("SELECT broker, topic, payload, qos, retain, lane FROM mqtt_pub.outbox ORDER BY lane, id", dbname=db)


@pytest.mark.parametrize("old", earlier_versions())
def test_alter_extension_update_matches_a_fresh_install_and_keeps_every_row(old):
    b = Broker("upgrade", PORT)  # not started: everything waits in the outbox
    c = Cluster("upgrade", port(), {
        "pg_mqtt_pub.database": "'up'",
        "pg_mqtt_pub.broker_host": "'127.0.0.1'",
        "pg_mqtt_pub.broker_port": PORT,
        "pg_mqtt_pub.reconnect_interval_ms": 200,
    }).start()
    s = None
    try:
        c.sql("CREATE DATABASE up")
        c.sql("CREATE DATABASE fresh")
        c.sql(f"CREATE EXTENSION pg_mqtt_pub VERSION '{old}'", dbname="up")
        with c.connect("up") as q:
            q.execute(f"SELECT mqtt_broker_add('nb', '127.0.0.1', {PORT})")
            q.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
            q.execute("SELECT mqtt_trigger_event_setup('t', 'up/ev', '{INSERT}')")
            q.execute("SELECT mqtt_trigger_resultset_setup('t', 'up/rs', '{UPDATE}', include_meta := false)")
            for i in range(50):
                q.execute("SELECT mqtt_publish(%s, %s, 1, broker := %s)", (f"up/m/{i}", str(i), "nb" if i % 5 == 0 else "default"))
            q.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b')")
            q.execute("UPDATE t SET v = 'c'")
            q.execute("INSERT INTO mqtt_pub.dead_letters (broker, topic, payload, qos, retain, attempts, last_error) "
                      "VALUES ('default', 'up/dead', 'x', 1, false, 5, 'kept across the update')")
            # a DBA's grants on the publishing functions survive an update that changes their
            # argument lists (1.3) and on mqtt_status (its result changed)
            q.execute("CREATE ROLE up_app LOGIN")
            q.execute("GRANT USAGE ON SCHEMA mqtt_pub TO up_app")
            props = ", text, interval, text, bytea, text[], integer" if old >= "1.3" else ""  # 1.3's new arguments
            q.execute(f"GRANT EXECUTE ON FUNCTION mqtt_publish(text, text, integer, boolean, text{props}), "
                      f"mqtt_publish_json(text, jsonb, integer, boolean, text{props}), mqtt_status() TO up_app")
        before = rows(c, "up")
        assert len(before) == 50 + 2 + 1

        c.sql("ALTER EXTENSION pg_mqtt_pub UPDATE", dbname="up")
        c.sql("CREATE EXTENSION pg_mqtt_pub", dbname="fresh")
        assert c.sql("SELECT extversion FROM pg_extension WHERE extname = 'pg_mqtt_pub'", dbname="up") == [(current_version(),)]

        with c.connect("up", user="up_app") as app:
            app.execute("SELECT mqtt_publish('up/after', 'after the update', 1)")
            app.execute("SELECT mqtt_publish_json('up/after-json', '{}'::jsonb, 1)")
            app.execute("SELECT count(*) FROM mqtt_status()")
        c.sql("REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA public, mqtt_pub FROM up_app", dbname="up")
        c.sql("REVOKE USAGE ON SCHEMA mqtt_pub FROM up_app", dbname="up")

        updated, fresh = catalog(c, "up"), catalog(c, "fresh")
        diff = {k: (updated.get(k), fresh.get(k)) for k in set(updated) | set(fresh) if updated.get(k) != fresh.get(k)}
        assert diff == {}, "updated (left) and fresh (right) installs differ"

        # no row lost, and the triggers and functions work after the update
        assert rows(c, "up")[:len(before)] == before  # then the two up_app published
        assert c.sql("SELECT topic, last_error FROM mqtt_pub.dead_letters", dbname="up") == [("up/dead", "kept across the update")]
        assert c.sql("SELECT name FROM mqtt_pub.broker_list", dbname="up") == [("nb",)]
        c.sql("INSERT INTO t VALUES (3, 'after')", dbname="up")

        # gated until the subscriber is in: the worker's next retry must not deliver to nobody
        b.start(gated=True)
        s = Subscriber(PORT, "up/#")
        b.open_gate()
        expect = [t for (_, t, _, _, _, _) in before] + ["up/after", "up/after-json", "up/ev/insert"]
        got = s.wait_for("up/", len(expect), timeout=60)
        # per broker, in outbox order (the named broker drains independently of the default one)
        for broker_topics in ([t for t in expect if not t.startswith("up/m/") or int(t.split("/")[-1]) % 5],
                              [t for t in expect if t.startswith("up/m/") and int(t.split("/")[-1]) % 5 == 0]):
            assert [m.topic for m in got if m.topic in broker_topics] == broker_topics
        assert len(got) == len(expect)
        wait_until(lambda: c.sql("SELECT count(*) FROM mqtt_pub.outbox", dbname="up")[0][0] == 0, 20, "outbox empty")
    finally:
        if s:
            s.close()
        c.stop()
        b.stop_if_running()


def test_an_object_built_on_mqtt_status_stops_the_update_with_a_clear_error():
    """1.4 re-creates mqtt_status() (two more columns); a view on it would make that DROP fail and
    with it the whole update: the error says what depends on it and what to do."""
    c = Cluster("upgrade-dep", port(), {"pg_mqtt_pub.database": "'dep'"}).start()
    try:
        c.sql("CREATE DATABASE dep")
        c.sql("CREATE EXTENSION pg_mqtt_pub VERSION '1.3'", dbname="dep")
        c.sql("CREATE VIEW public.st AS SELECT broker_name FROM public.mqtt_status()", dbname="dep")
        with pytest.raises(psycopg.errors.DependentObjectsStillExist) as e:
            c.sql("ALTER EXTENSION pg_mqtt_pub UPDATE TO '1.4'", dbname="dep")
        assert "view st depends on" in str(e.value) and "ALTER EXTENSION" in e.value.diag.message_hint
        c.sql("DROP VIEW public.st", dbname="dep")
        c.sql("ALTER EXTENSION pg_mqtt_pub UPDATE TO '1.4'", dbname="dep")
    finally:
        c.stop()


def test_the_1_7_update_keeps_the_grants_of_what_it_re_creates_and_stops_at_objects_built_on_them():
    """1.7 re-creates mqtt_status() (one more column) and the view mqtt_pub.outbox_summary built on
    it: the grants a DBA gave on both survive, and an object of theirs on the view stops the
    update with a clear error instead of CASCADE's hint."""
    c = Cluster("upgrade-17", port(), {"pg_mqtt_pub.database": "'up17'"}).start()
    try:
        c.sql("CREATE DATABASE up17")
        c.sql("CREATE ROLE watcher")
        c.sql("CREATE EXTENSION pg_mqtt_pub VERSION '1.6'", dbname="up17")
        c.sql("GRANT SELECT ON mqtt_pub.outbox_summary TO watcher", dbname="up17")
        c.sql("GRANT EXECUTE ON FUNCTION mqtt_pub.mqtt_status() TO watcher", dbname="up17")
        c.sql("CREATE VIEW public.waiting AS SELECT broker, pending FROM mqtt_pub.outbox_summary", dbname="up17")
        with pytest.raises(psycopg.errors.DependentObjectsStillExist) as e:
            c.sql("ALTER EXTENSION pg_mqtt_pub UPDATE TO '1.7'", dbname="up17")
        assert "view waiting depends on mqtt_pub.outbox_summary" in str(e.value), str(e.value)
        assert "ALTER EXTENSION" in e.value.diag.message_hint
        c.sql("DROP VIEW public.waiting", dbname="up17")
        # run by an administrator who logs in as an ordinary role and becomes a superuser with
        # SET ROLE: the session may not become every original grantor (granted as itself then)
        c.sql("CREATE ROLE admin_su SUPERUSER NOLOGIN")
        c.sql("CREATE ROLE alice LOGIN IN ROLE admin_su")
        with c.connect("up17", user="alice") as conn:
            conn.execute("SET ROLE admin_su")
            conn.execute("ALTER EXTENSION pg_mqtt_pub UPDATE TO '1.7'")
        assert c.sql("SELECT has_table_privilege('watcher', 'mqtt_pub.outbox_summary', 'SELECT'), "
                     "has_function_privilege('watcher', 'mqtt_pub.mqtt_status()', 'EXECUTE'), "
                     "has_table_privilege('public', 'mqtt_pub.outbox_summary', 'SELECT')", dbname="up17") == [(True, True, False)]
        with c.connect("up17", user="postgres") as conn:
            conn.execute("SET ROLE watcher")
            assert conn.execute("SELECT count(*) FROM mqtt_pub.outbox_summary").fetchone() == (0,)
            assert conn.execute("SELECT failovers FROM mqtt_pub.mqtt_status()").fetchall() == [(0,)]
    finally:
        c.stop()
