"""Install-time binding: nothing planted before CREATE or ALTER EXTENSION runs as superuser.

An extension script runs as superuser with `public` on its path, and a view, column default or
constraint binds its operators and functions when the script creates it: an operator or function
in `public` whose argument types match exactly beats pg_catalog's, which needs a coercion or is
polymorphic (CVE-2018-1058). So an attacker who can create objects in `public` (the database
owner on PostgreSQL 15+) plants look-alikes *before* a superuser installs or updates the
extension, and waits for a superuser, or a SECURITY DEFINER function of ours, to use them.

Proves, against a real cluster, broker and subscriber:
* planted, by a database owner, before the scripts run: for every operator the scripts use and
  every pg_catalog function they call, a look-alike in `public` for each argument-type
  combination (out of 21 types: oid, the reg* types, the integers, text, name, "char", ...) where
  pg_catalog's own needs a coercion or is polymorphic, with the same result type; aggregates
  too (count, array_agg, lag as a window aggregate, ...). Each one records its call;
* a fresh CREATE EXTENSION, and ALTER EXTENSION UPDATE from every released version, in such
  databases: every view, the status function, broker add/remove (which read `mqtt_pub.triggers`
  as the owner), both trigger helpers firing, replay and every publishing function, used as
  superuser and as a role with the documented grants: zero canary calls, and the messages
  published in the worker's database arrive;
* no stored expression of the extension (view, default, constraint, function default) depends
  on an operator or function outside pg_catalog and the extension itself (PostgreSQL records no
  dependency on built-in objects, so any recorded one is a look-alike);
* a trigger made by hand with malformed arguments does not break `mqtt_pub.triggers`.

Each scenario has a cluster of its own whose worker publishes from the planted database.
"""
import glob
import os
import re

import pytest

from harness import Broker, Cluster, Subscriber, port, wait_status, wait_until, worker_settings
from test_upgrade import current_version, earlier_versions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MQTT_PORT = port()
DB = "canary"  # the worker's database; the update scenarios use others (SQL surface only)

# Argument types the look-alikes are made for: the ones the scripts' expressions meet, and the
# usual mixed pairs (oid with the reg* types and integer, smallint with integer, name with text).
TYPES = ["oid", "regprocedure", "regproc", "regclass", "regtype", "regrole", "regnamespace", "smallint", "integer",
         "bigint", "numeric", "text", "name", '"char"', "boolean", "timestamptz", "interval", "bytea", "json",
         "jsonb", "text[]"]
# Operators written bare in released scripts (the ones written OPERATOR(pg_catalog.x) are added
# from the scripts themselves).
BARE_OPERATORS = ["=", "<>", "<", ">", "<=", ">=", "+", "-", "*", "/", "&", "|", "~", "!~", "~~", "||"]
# pg_catalog functions the scripts call that are aggregates or window functions: planted as
# aggregates (an aggregate can be called with OVER as well).
WINDOW_AGGREGATES = ["lag", "lead", "first_value", "row_number", "rank"]
# (mode() WITHIN GROUP (ORDER BY text) gets an ordered-set look-alike of its own.)


def script_text():
    return "\n".join(open(p).read() for p in sorted(glob.glob(os.path.join(ROOT, "pg_mqtt_pub--*.sql"))))


def names_in_scripts():
    """Operator symbols and function names the scripts use (a superset: words followed by "(")."""
    text = script_text()
    ops = set(BARE_OPERATORS) | set(re.findall(r"OPERATOR\(pg_catalog\.([^)\s]+)\)", text))
    funcs = set(re.findall(r"\b([a-z_][a-z0-9_]*)\s*\(", text, re.IGNORECASE))
    return sorted(ops), sorted(f.lower() for f in funcs)


# Runs as the attacker in the template database. For each candidate it asks pg_catalog (with
# OPERATOR(pg_catalog.x) / pg_catalog.f, so earlier plants cannot answer) what the expression
# resolves to and its result type; where that is not an exact-type match, it plants one.
PLANT = r"""
CREATE TABLE public.canary_calls (what text, who name, at timestamptz DEFAULT pg_catalog.clock_timestamp());
GRANT INSERT, SELECT ON public.canary_calls TO PUBLIC;
CREATE FUNCTION public.canary_sql(sig text, argtypes text, res text) RETURNS text LANGUAGE sql AS $$
  SELECT pg_catalog.format('CREATE FUNCTION public.%I(%s) RETURNS %s LANGUAGE plpgsql CALLED ON NULL INPUT AS '
                           '$b$BEGIN INSERT INTO public.canary_calls (what, who) VALUES (%L, current_user); RETURN NULL; END$b$',
                           'canary_' || pg_catalog.md5(sig || argtypes), argtypes, res, sig)
$$;
DO $plant$
DECLARE
  types text[] := %(types)s;
  ops text[] := %(ops)s;
  funcs text[] := %(funcs)s;
  windows text[] := %(windows)s;
  l text; r text; t text; op text; f text; res text; planted int := 0; pk "char"; srf boolean;
BEGIN
  -- binary operators
  FOREACH op IN ARRAY ops LOOP
    FOREACH l IN ARRAY types LOOP
      FOREACH r IN ARRAY types LOOP
        BEGIN
          EXECUTE pg_catalog.format('SELECT pg_catalog.pg_typeof(NULL::%s OPERATOR(pg_catalog.%s) NULL::%s)::text', l, op, r) INTO res;
        EXCEPTION WHEN OTHERS THEN CONTINUE;
        END;
        CONTINUE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_operator o
                              WHERE o.oprname OPERATOR(pg_catalog.=) op
                                AND o.oprleft OPERATOR(pg_catalog.=) l::pg_catalog.regtype::pg_catalog.oid
                                AND o.oprright OPERATOR(pg_catalog.=) r::pg_catalog.regtype::pg_catalog.oid);
        EXECUTE public.canary_sql('operator ' || op || '(' || l || ', ' || r || ')', l || ', ' || r, res);
        EXECUTE pg_catalog.format('CREATE OPERATOR public.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = public.%I)',
                                  op, l, r, 'canary_' || pg_catalog.md5('operator ' || op || '(' || l || ', ' || r || ')' || l || ', ' || r));
        planted := planted + 1;
      END LOOP;
    END LOOP;
  END LOOP;
  -- functions and aggregates of one argument; functions of two
  FOREACH f IN ARRAY funcs LOOP
    SELECT p.prokind INTO pk FROM pg_catalog.pg_proc p
     WHERE p.proname OPERATOR(pg_catalog.=) f AND p.pronamespace OPERATOR(pg_catalog.=) 'pg_catalog'::pg_catalog.regnamespace
     ORDER BY p.prokind LIMIT 1;
    srf := EXISTS (SELECT 1 FROM pg_catalog.pg_proc p WHERE p.proname OPERATOR(pg_catalog.=) f AND p.proretset
                     AND p.pronamespace OPERATOR(pg_catalog.=) 'pg_catalog'::pg_catalog.regnamespace);
    CONTINUE WHEN pk IS NULL OR pk OPERATOR(pg_catalog.=) 'p';
    FOREACH t IN ARRAY types LOOP
      BEGIN
        IF f OPERATOR(pg_catalog.=) ANY (windows) THEN
          EXECUTE pg_catalog.format('SELECT pg_catalog.pg_typeof(pg_catalog.%I(x) OVER ())::text FROM (SELECT NULL::%s AS x) s', f, t) INTO res;
        ELSIF pk OPERATOR(pg_catalog.=) 'a' THEN
          EXECUTE pg_catalog.format('SELECT pg_catalog.pg_typeof(pg_catalog.%I(x))::text FROM (SELECT NULL::%s AS x) s', f, t) INTO res;
        ELSIF srf THEN
          EXECUTE pg_catalog.format('CREATE TEMP VIEW canary_probe AS SELECT pg_catalog.%I(NULL::%s) AS x', f, t);
          SELECT pg_catalog.format_type(a.atttypid, NULL) INTO res FROM pg_catalog.pg_attribute a
           WHERE a.attrelid OPERATOR(pg_catalog.=) 'canary_probe'::pg_catalog.regclass AND a.attnum OPERATOR(pg_catalog.=) 1;
          DROP VIEW canary_probe;
        ELSE
          EXECUTE pg_catalog.format('SELECT pg_catalog.pg_typeof(pg_catalog.%I(NULL::%s))::text', f, t) INTO res;
        END IF;
      EXCEPTION WHEN OTHERS THEN res := NULL;
      END;
      IF res IS NOT NULL AND res OPERATOR(pg_catalog.<>) ALL ('{record,void,unknown}'::text[]) AND NOT EXISTS (
           SELECT 1 FROM pg_catalog.pg_proc p
            WHERE p.proname OPERATOR(pg_catalog.=) f AND p.pronamespace OPERATOR(pg_catalog.=) 'pg_catalog'::pg_catalog.regnamespace
              AND p.proargtypes OPERATOR(pg_catalog.=) t::pg_catalog.regtype::pg_catalog.oid::pg_catalog.text::pg_catalog.oidvector) THEN
        IF pk OPERATOR(pg_catalog.=) 'f' AND NOT f OPERATOR(pg_catalog.=) ANY (windows) THEN
          EXECUTE public.canary_sql(f || '(' || t || ')', t, res);
          EXECUTE pg_catalog.format('ALTER FUNCTION public.%I(%s) RENAME TO %I',
                                    'canary_' || pg_catalog.md5(f || '(' || t || ')' || t), t, f);
        ELSE
          EXECUTE public.canary_sql('aggregate ' || f || '(' || t || ')', res || ', ' || t, res);
          EXECUTE pg_catalog.format('CREATE AGGREGATE public.%I(%s) (SFUNC = public.%I, STYPE = %s)', f, t,
                                    'canary_' || pg_catalog.md5('aggregate ' || f || '(' || t || ')' || res || ', ' || t), res);
        END IF;
        planted := planted + 1;
      END IF;
      CONTINUE WHEN pk OPERATOR(pg_catalog.<>) 'f';
      FOREACH r IN ARRAY types LOOP
        BEGIN
          IF srf THEN  -- no row to ask pg_typeof: the type of a view's column instead
            EXECUTE pg_catalog.format('CREATE TEMP VIEW canary_probe AS SELECT pg_catalog.%I(NULL::%s, NULL::%s) AS x', f, t, r);
            SELECT pg_catalog.format_type(a.atttypid, NULL) INTO res FROM pg_catalog.pg_attribute a
             WHERE a.attrelid OPERATOR(pg_catalog.=) 'canary_probe'::pg_catalog.regclass AND a.attnum OPERATOR(pg_catalog.=) 1;
            DROP VIEW canary_probe;
          ELSE
            EXECUTE pg_catalog.format('SELECT pg_catalog.pg_typeof(pg_catalog.%I(NULL::%s, NULL::%s))::text', f, t, r) INTO res;
          END IF;
        EXCEPTION WHEN OTHERS THEN CONTINUE;
        END;
        CONTINUE WHEN res IS NULL OR res OPERATOR(pg_catalog.=) ANY ('{record,void,unknown}'::text[]) OR EXISTS (
           SELECT 1 FROM pg_catalog.pg_proc p
            WHERE p.proname OPERATOR(pg_catalog.=) f AND p.pronamespace OPERATOR(pg_catalog.=) 'pg_catalog'::pg_catalog.regnamespace
              AND p.proargtypes OPERATOR(pg_catalog.=) (t::pg_catalog.regtype::pg_catalog.oid::pg_catalog.text || ' ' ||
                                                        r::pg_catalog.regtype::pg_catalog.oid::pg_catalog.text)::pg_catalog.oidvector);
        EXECUTE public.canary_sql(f || '(' || t || ', ' || r || ')', t || ', ' || r, res);
        EXECUTE pg_catalog.format('ALTER FUNCTION public.%I(%s, %s) RENAME TO %I',
                                  'canary_' || pg_catalog.md5(f || '(' || t || ', ' || r || ')' || t || ', ' || r), t, r, f);
        planted := planted + 1;
      END LOOP;
    END LOOP;
  END LOOP;
  -- mode() WITHIN GROUP (ORDER BY text): an ordered-set aggregate with an exact text argument
  EXECUTE public.canary_sql('aggregate mode(ORDER BY text)', 'text, text', 'text');
  EXECUTE pg_catalog.format('CREATE AGGREGATE public.mode(ORDER BY text) (SFUNC = public.%I, STYPE = text)',
                            'canary_' || pg_catalog.md5('aggregate mode(ORDER BY text)' || 'text, text'));
  planted := planted + 1;
  RAISE NOTICE 'planted %% look-alikes', planted;
END
$plant$;
"""

# Objects of the extension whose stored expressions were bound when they were created, and the
# operators and functions those expressions depend on that are not built in and not ours.
FOREIGN_DEPENDENCIES = r"""
WITH ext AS (SELECT oid FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'pg_mqtt_pub'),
members AS (SELECT d.classid, d.objid FROM pg_catalog.pg_depend d, ext
            WHERE d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass
              AND d.refobjid OPERATOR(pg_catalog.=) ext.oid AND d.deptype OPERATOR(pg_catalog.=) 'e'),
rels AS (SELECT m.objid AS relid FROM members m WHERE m.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass),
exprs AS (
  SELECT 'pg_catalog.pg_rewrite'::pg_catalog.regclass AS classid, r.oid AS objid, 'view ' || r.ev_class::pg_catalog.regclass::text AS what
    FROM pg_catalog.pg_rewrite r JOIN rels ON rels.relid OPERATOR(pg_catalog.=) r.ev_class
  UNION ALL
  SELECT 'pg_catalog.pg_attrdef'::pg_catalog.regclass, ad.oid, 'default of ' || ad.adrelid::pg_catalog.regclass::text
    FROM pg_catalog.pg_attrdef ad JOIN rels ON rels.relid OPERATOR(pg_catalog.=) ad.adrelid
  UNION ALL
  SELECT 'pg_catalog.pg_constraint'::pg_catalog.regclass, co.oid, 'constraint ' || co.conname::text
    FROM pg_catalog.pg_constraint co JOIN rels ON rels.relid OPERATOR(pg_catalog.=) co.conrelid
  UNION ALL
  SELECT m.classid, m.objid, 'function ' || m.objid::pg_catalog.regprocedure::text
    FROM members m WHERE m.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass)
SELECT e.what, CASE WHEN d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_operator'::pg_catalog.regclass
                    THEN d.refobjid::pg_catalog.regoperator::text ELSE d.refobjid::pg_catalog.regprocedure::text END
FROM exprs e JOIN pg_catalog.pg_depend d ON d.classid OPERATOR(pg_catalog.=) e.classid AND d.objid OPERATOR(pg_catalog.=) e.objid
WHERE d.refclassid OPERATOR(pg_catalog.=) ANY (ARRAY['pg_catalog.pg_operator'::pg_catalog.regclass, 'pg_catalog.pg_proc'::pg_catalog.regclass]::pg_catalog.oid[])
  AND NOT EXISTS (SELECT 1 FROM members m WHERE m.classid OPERATOR(pg_catalog.=) d.refclassid AND m.objid OPERATOR(pg_catalog.=) d.refobjid)
ORDER BY 1, 2
"""

PUBLISH_FUNCTIONS = [
    "mqtt_publish(text, text, integer, boolean, text, text, interval, text, bytea, text[], integer)",
    "mqtt_publish_binary(text, bytea, integer, boolean, text, text, interval, text, bytea, text[], integer)",
    "mqtt_publish_json(text, json, integer, boolean, text, text, interval, text, bytea, text[], integer)",
    "mqtt_publish_json(text, jsonb, integer, boolean, text, text, interval, text, bytea, text[], integer)",
    "mqtt_publish_json(text, text, integer, boolean, text, text, interval, text, bytea, text[], integer)",
    "mqtt_publish_batch(text, text[], integer, boolean, text, text, interval, text, bytea, text[], integer)",
]
TRIGGER_FUNCTIONS = ["mqtt_trigger_event_setup(text, text, text[], integer, text, boolean)",
                     "mqtt_trigger_resultset_setup(text, text, text[], integer, text, boolean, integer)",
                     "mqtt_trigger_remove(text)", "mqtt_pub.event_trigger()", "mqtt_pub.resultset_trigger()"]


@pytest.fixture(scope="module")
def env():
    b = Broker("canary", MQTT_PORT).start()
    s = Subscriber(MQTT_PORT, "canary/#")
    yield b, s
    s.close()
    b.stop()


def planted_cluster(name, db):
    """A cluster whose worker publishes from `db`, which the attacker `mallory` owns (on
    PostgreSQL 15+ that is what gives CREATE on public) and has planted look-alikes in."""
    c = Cluster(name, port(), worker_settings(db, MQTT_PORT)).start()
    try:
        c.sql("CREATE ROLE mallory LOGIN")
        c.sql("CREATE ROLE canary_app LOGIN")
        c.sql(f"CREATE DATABASE {db} OWNER mallory")
        ops, funcs = names_in_scripts()
        arr = lambda xs: "ARRAY[" + ", ".join("'" + x.replace("'", "''") + "'" for x in xs) + "]::text[]"  # noqa: E731
        plant = PLANT.replace("%(types)s", arr(TYPES)).replace("%(ops)s", arr(ops)).replace(
            "%(funcs)s", arr(funcs)).replace("%(windows)s", arr(WINDOW_AGGREGATES)).replace("%%", "%")
        with c.connect(db, user="mallory") as m:
            notices = []
            m.add_notice_handler(lambda d: notices.append(d.message_primary))
            m.execute(plant)
        planted = int(re.search(r"planted (\d+)", " ".join(notices)).group(1))
        assert planted > 500, f"only {planted} look-alikes planted"
        return c
    except BaseException:
        c.stop_if_running()
        raise


def canary_calls(c, db):
    return c.sql("SELECT what, who FROM public.canary_calls ORDER BY at", dbname=db)


def use_everything(c, db):
    """Every view, status, broker add/remove, both trigger helpers firing, replay, and (where
    the worker publishes) every publishing function: as superuser, then as a role with the
    documented grants."""
    with c.connect(db) as q:
        views = [r[0] for r in q.execute(
            "SELECT c.oid::pg_catalog.regclass::text FROM pg_catalog.pg_class c JOIN pg_catalog.pg_depend d "
            "ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid OPERATOR(pg_catalog.=) c.oid "
            "JOIN pg_catalog.pg_extension e ON e.oid OPERATOR(pg_catalog.=) d.refobjid "
            "WHERE e.extname OPERATOR(pg_catalog.=) 'pg_mqtt_pub' AND c.relkind OPERATOR(pg_catalog.=) 'v'").fetchall()]
        assert len(views) >= 4, views
        q.execute("CREATE TABLE public.canary_t (id int PRIMARY KEY, v text)")
        q.execute("ALTER TABLE public.canary_t OWNER TO canary_app")
        q.execute("SELECT public.mqtt_broker_add('canary-b', '127.0.0.1', %s)", (MQTT_PORT,))
        q.execute("INSERT INTO mqtt_pub.dead_letters (broker, topic, payload, qos, retain, attempts) "
                  "VALUES ('default', 'canary/replayed', '\\x72'::bytea, 1, false, 5)")
        for v in views:
            q.execute(f"SELECT * FROM {v}").fetchall()
        q.execute("SELECT * FROM public.mqtt_status()").fetchall()
        q.execute("SELECT * FROM mqtt_pub.mqtt_status()").fetchall()
        q.execute("SELECT public.mqtt_trigger_event_setup('public.canary_t', 'canary/ev')")
        q.execute("SELECT public.mqtt_trigger_resultset_setup('public.canary_t', 'canary/rs')")
        for v in views:
            q.execute(f"SELECT * FROM {v}").fetchall()
        q.execute("SELECT mqtt_pub.replay_dead_letters('default')")
        q.execute("INSERT INTO public.canary_t VALUES (1, 'a')")
        q.execute("UPDATE public.canary_t SET v = 'b'")
        q.execute("DELETE FROM public.canary_t")
        q.execute("SELECT public.mqtt_publish('canary/su', 'x', 1, content_type := 'text/plain')")
        q.execute("SELECT mqtt_pub.mqtt_publish_json('canary/su-json', '{\"a\": 1}'::jsonb, 1)")
        q.execute("SELECT public.mqtt_publish_batch('canary/su-batch', ARRAY['1', '2'], 1)")
        q.execute("SELECT public.mqtt_publish_binary('canary/su-bin', '\\x00'::bytea, 1)")
        q.execute("SELECT mqtt_pub.mqtt_properties(properties) FROM mqtt_pub.outbox").fetchall()
        q.execute("GRANT USAGE ON SCHEMA mqtt_pub TO canary_app")
        q.execute("GRANT pg_monitor TO canary_app")
        q.execute("GRANT EXECUTE ON FUNCTION " + ", ".join(PUBLISH_FUNCTIONS + TRIGGER_FUNCTIONS) + " TO canary_app")
        q.execute("GRANT EXECUTE ON FUNCTION mqtt_broker_add(text, text, integer, text, text, boolean, text, text, text, "
                  "text, text, integer, text), mqtt_broker_remove(text, boolean) TO canary_app")
    with c.connect(db, user="canary_app") as a:
        a.execute("SELECT * FROM public.mqtt_status()").fetchall()
        a.execute("SELECT public.mqtt_broker_add('canary-app', '127.0.0.1', %s)", (MQTT_PORT,))
        a.execute("SELECT public.mqtt_trigger_remove('public.canary_t')")
        a.execute("SELECT public.mqtt_trigger_event_setup('public.canary_t', 'canary/app-ev')")
        a.execute("SELECT public.mqtt_publish('canary/app', 'y', 1)")
        a.execute("SELECT public.mqtt_publish_json('canary/app-json', '[1]', 1)")
        a.execute("INSERT INTO public.canary_t VALUES (2, 'c')")
        a.execute("SELECT public.mqtt_trigger_remove('public.canary_t')")
        a.execute("SELECT public.mqtt_broker_remove('canary-app')")
        a.execute("SELECT public.mqtt_broker_remove('canary-b', force := true)")


EXPECT = {"canary/replayed", "canary/su", "canary/su-json", "canary/su-batch/0", "canary/su-batch/1", "canary/su-bin",
          "canary/app", "canary/app-json", "canary/ev/insert", "canary/ev/update", "canary/ev/delete",
          "canary/app-ev/insert", "canary/rs/insert", "canary/rs/update", "canary/rs/delete"}


def use_and_check(c, db, s):
    assert c.sql(FOREIGN_DEPENDENCIES, dbname=db) == []
    wait_status(c, db, lambda st: st["connected"] and st["delivery_mode"] == "hot", "connected and hot", timeout=45)
    start = len(s.snapshot())
    use_everything(c, db)
    arrived = lambda: {m.topic for m in s.snapshot()[start:]}  # noqa: E731
    wait_until(lambda: EXPECT <= arrived(), 30, f"every message published (have {sorted(arrived())})")
    assert canary_calls(c, db) == []


def test_a_fresh_install_over_planted_look_alikes_calls_none_of_them(env):
    _, s = env
    c = planted_cluster("canary-fresh", DB)
    try:
        c.sql("CREATE EXTENSION pg_mqtt_pub", dbname=DB)
        use_and_check(c, DB, s)
        malformed_hand_made_triggers_do_not_break_the_triggers_view(c, DB)
        assert canary_calls(c, DB) == []
    finally:
        c.stop()


@pytest.mark.parametrize("old", earlier_versions())
def test_an_update_over_planted_look_alikes_calls_none_of_them(env, old):
    _, s = env
    db = "canary_from_" + old.replace(".", "_")
    c = planted_cluster(f"canary-{old}", db)
    try:
        c.sql(f"CREATE EXTENSION pg_mqtt_pub VERSION '{old}'", dbname=db)
        c.sql("ALTER EXTENSION pg_mqtt_pub UPDATE", dbname=db)
        assert c.sql("SELECT extversion FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'pg_mqtt_pub'",
                     dbname=db) == [(current_version(),)]
        use_and_check(c, db, s)
    finally:
        c.stop()


def malformed_hand_made_triggers_do_not_break_the_triggers_view(c, db):
    """A trigger made by hand with arguments the helpers would refuse: the view shows NULL
    where an argument cannot be read (it used to fail for every role)."""
    with c.connect(db) as q:
        q.execute("CREATE TABLE public.canary_bad (id int)")
        q.execute("CREATE TRIGGER bad AFTER INSERT ON public.canary_bad FOR EACH ROW "
                  "EXECUTE FUNCTION mqtt_pub.event_trigger('a', 'notanint', 'default', 'maybe')")
        q.execute("CREATE TRIGGER bad_rs AFTER INSERT ON public.canary_bad REFERENCING NEW TABLE AS mqtt_pub_new "
                  "FOR EACH STATEMENT EXECUTE FUNCTION mqtt_pub.resultset_trigger('a', '1', 'default', 'true', '99999999999')")
        rows = q.execute("SELECT trigger_name::pg_catalog.text, topic_prefix, qos, broker, include_meta, rows_per_message "
                         "FROM mqtt_pub.triggers WHERE table_name::pg_catalog.oid OPERATOR(pg_catalog.=) "
                         "'public.canary_bad'::pg_catalog.regclass::pg_catalog.oid ORDER BY 1").fetchall()
        assert rows == [("bad", "a", None, "default", False, None), ("bad_rs", "a", 1, "default", True, None)]
        q.execute("DROP TABLE public.canary_bad")
