"""Per-role topic rights (issue #29, ADR-014), against a real cluster, mosquitto and subscriber.

Proves: a broker without rights is unrestricted; one right restricts the broker: a role publishes
only to topics a filter granted to it (or to a role whose privileges it has) matches, superusers
and the extension owner are exempt; a refusal is 42501 naming role, broker and topic with a hint
naming mqtt_grant, and nothing of the transaction is published; every path is checked
(mqtt_publish, _binary, _json, _batch per row, the mqtt_pub. names, SET ROLE inside a
transaction, replay_dead_letters); a revoke and a membership change take effect at once in
sessions that already published (the per-backend cache is invalidated); a trigger publishes with
the rights of the role that set it up, checked when it fires (its writers need none), a trigger
created by hand with the table owner's; rights are per database, survive pg_dump and restore,
and the functions check their arguments (22023, 42704) and are not executable by PUBLIC.
"""
import os
import threading
import time
import subprocess

import psycopg
import pytest

from harness import port, scene, scratch, wait_until

DB = "rights"
PROPS = "text, interval, text, bytea, text[], integer"
SIGS = [
    f"mqtt_publish(text, text, integer, boolean, text, {PROPS})",
    f"mqtt_publish_binary(text, bytea, integer, boolean, text, {PROPS})",
    f"mqtt_publish_json(text, json, integer, boolean, text, {PROPS})",
    f"mqtt_publish_json(text, jsonb, integer, boolean, text, {PROPS})",
    f"mqtt_publish_json(text, text, integer, boolean, text, {PROPS})",
    f"mqtt_publish_batch(text, text[], integer, boolean, text, {PROPS})",
]


@pytest.fixture(scope="module")
def env():
    with scene("rights", port(), port(), DB, "#", settings=dict(pg_mqtt_pub__database="''")) as (b, s, c):
        grants = ", ".join(f"{schema}.{sig}" for sig in SIGS for schema in ("public", "mqtt_pub"))
        for sql in [
            "CREATE ROLE tenant_a LOGIN",
            "CREATE ROLE tenant_b LOGIN",
            "CREATE ROLE writers NOLOGIN",
            "CREATE ROLE member_a LOGIN IN ROLE writers",
            "CREATE ROLE noinherit_a LOGIN NOINHERIT IN ROLE writers",
            "CREATE ROLE clerk LOGIN",
            f"GRANT EXECUTE ON FUNCTION {grants} TO tenant_a, tenant_b, member_a, noinherit_a",
        ]:
            c.sql(sql, dbname=DB)
        yield b, s, c


def run_as(c, role, sql, params=None):
    with c.connect(DB) as conn:
        conn.execute(f"SET ROLE {role}")
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else None


def refused(c, role, sql, params=None):
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
        run_as(c, role, sql, params)
    return e.value


def got(s, prefix, n):
    return [(m.topic, m.payload.decode()) for m in s.wait_for(prefix, n)]


def test_a_broker_without_rights_is_not_restricted_one_right_restricts_it(env):
    b, s, c = env
    run_as(c, "tenant_b", "SELECT mqtt_publish('free/b', 'before')")
    assert got(s, "free/", 1) == [("free/b", "before")]
    assert c.sql("SELECT mqtt_pub.mqtt_grant('tenant_a', 'default', 'tenant_a/#')", dbname=DB) == [(True,)]
    assert c.sql("SELECT mqtt_pub.mqtt_grant('tenant_a', 'default', 'tenant_a/#')", dbname=DB) == [(False,)]
    assert c.sql("SELECT role::text, broker, topic_filter, granted_by::text FROM mqtt_pub.topic_grants",
                 dbname=DB) == [("tenant_a", "default", "tenant_a/#", "postgres")]
    run_as(c, "tenant_a", "SELECT mqtt_publish('tenant_a/x', 'a1', 1)")
    e = refused(c, "tenant_b", "SELECT mqtt_publish('free/b', 'after')")
    assert e.diag.message_primary == 'permission denied for role "tenant_b" to publish to topic "free/b" on broker "default"'
    assert "mqtt_pub.mqtt_grant('tenant_b', 'default'" in e.diag.message_hint
    e = refused(c, "tenant_a", "SELECT mqtt_publish('tenant_b/x', 'no')")
    assert 'role "tenant_a"' in e.diag.message_primary and '"tenant_b/x"' in e.diag.message_primary
    # superusers (and the owner) are exempt
    c.sql("SELECT mqtt_publish('free/su', 'superuser')", dbname=DB)
    assert got(s, "tenant_a/", 1) == [("tenant_a/x", "a1")]
    assert got(s, "free/su", 1) == [("free/su", "superuser")]


def test_every_path_is_checked_and_nothing_of_a_refused_transaction_is_published(env):
    b, s, c = env
    c.sql("SELECT mqtt_pub.mqtt_grant('tenant_a', 'default', 'tenant_a/#')", dbname=DB)
    calls = [
        "SELECT mqtt_publish('{t}', 'x')",
        "SELECT mqtt_pub.mqtt_publish('{t}', 'x')",
        "SELECT mqtt_publish_binary('{t}', '\\x00'::bytea)",
        "SELECT mqtt_pub.mqtt_publish_binary('{t}', '\\x00'::bytea)",
        "SELECT mqtt_publish_json('{t}', '{{}}'::text)",
        "SELECT mqtt_pub.mqtt_publish_json('{t}', '{{}}'::text)",
        "SELECT mqtt_publish_batch('{t}', ARRAY['x'])",
        "SELECT mqtt_pub.mqtt_publish_batch('{t}', ARRAY['x'])",
    ]
    for call in calls:
        refused(c, "tenant_a", call.format(t="paths/other"))
    # a batch's rows are checked with their own topics: prefix allowed, a row's suffix not
    with c.connect(DB) as conn:
        conn.execute("SET ROLE tenant_a")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with conn.transaction():
                conn.execute("SELECT mqtt_publish('tenant_a/paths/first', 'kept?')")
                conn.execute("SELECT mqtt_publish('paths/second', 'refused')")
        # SET ROLE inside a transaction: the role at the call counts
        conn.execute("RESET ROLE")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with conn.transaction():
                conn.execute("SELECT mqtt_publish('paths/su', 'as superuser: allowed')")
                conn.execute("SET LOCAL ROLE tenant_b")
                conn.execute("SELECT mqtt_publish('paths/b', 'as tenant_b: refused')")
        conn.execute("SET ROLE tenant_a")
        for call in calls:
            conn.execute(call.format(t="tenant_a/paths/ok"))
    assert len(s.wait_for("tenant_a/paths/ok", len(calls))) == len(calls)
    # marker: anything published by the refused transactions would have arrived before it
    c.sql("SELECT mqtt_publish('paths/marker', 'm', 1)", dbname=DB)
    s.wait_for("paths/marker", 1)
    assert [m.topic for m in s.matching("paths/")] == ["paths/marker"]
    assert [m.topic for m in s.matching("tenant_a/paths/first")] == []


def test_memberships_revokes_and_role_changes_take_effect_at_once(env):
    b, s, c = env
    c.sql("SELECT mqtt_pub.mqtt_grant('writers', 'default', 'shared/+/state')", dbname=DB)
    run_as(c, "member_a", "SELECT mqtt_publish('shared/k1/state', 'via the group')")
    refused(c, "member_a", "SELECT mqtt_publish('shared/k1/k2/state', 'one level only')")
    # NOINHERIT: membership without the group's privileges
    refused(c, "noinherit_a", "SELECT mqtt_publish('shared/k1/state', 'x')")
    assert got(s, "shared/", 1) == [("shared/k1/state", "via the group")]
    with c.connect(DB) as conn:
        conn.execute("SET ROLE member_a")
        conn.execute("SELECT mqtt_publish('shared/k2/state', 'cached')")  # the session's cache is warm
        c.sql("REVOKE writers FROM member_a", dbname=DB)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT mqtt_publish('shared/k3/state', 'after the membership is gone')")
        conn.rollback()
        c.sql("GRANT writers TO member_a", dbname=DB)
        conn.execute("SELECT mqtt_publish('shared/k4/state', 'member again')")
        conn.commit()
        assert c.sql("SELECT mqtt_pub.mqtt_revoke('writers', 'default', 'shared/+/state')", dbname=DB) == [(1,)]
        # no right left on the broker but tenant_a's: member_a is refused, not unrestricted
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT mqtt_publish('shared/k5/state', 'after the revoke')")
        conn.rollback()
    assert [p for _, p in got(s, "shared/", 3)] == ["via the group", "cached", "member again"]


def test_triggers_publish_with_the_rights_of_whoever_set_them_up(env):
    b, s, c = env
    c.sql("SELECT mqtt_pub.mqtt_grant('tenant_a', 'default', 'tenant_a/#')", dbname=DB)
    for sql in [
        "CREATE TABLE public.orders_a (id int PRIMARY KEY)",
        "ALTER TABLE public.orders_a OWNER TO tenant_a",
        "GRANT INSERT ON public.orders_a TO clerk",
        "GRANT EXECUTE ON FUNCTION mqtt_trigger_event_setup(text, text, text[], integer, text, boolean), "
        "mqtt_pub.event_trigger() TO tenant_a",
    ]:
        c.sql(sql, dbname=DB)
    run_as(c, "tenant_a", "SELECT mqtt_trigger_event_setup('public.orders_a', 'tenant_a/orders', include_meta := false)")
    assert c.sql("SELECT table_name::text, trigger_name::text, role::text FROM mqtt_pub.trigger_setters",
                 dbname=DB) == [("orders_a", "mqtt_pub_event", "tenant_a")]
    run_as(c, "clerk", "INSERT INTO public.orders_a VALUES (1)")  # the writer needs no right
    assert got(s, "tenant_a/orders/", 1) == [("tenant_a/orders/insert", '{"new":{"id":1}}')]
    c.sql("SELECT mqtt_pub.mqtt_revoke('tenant_a', 'default')", dbname=DB)
    c.sql("SELECT mqtt_pub.mqtt_grant('tenant_b', 'default', 'tenant_b/#')", dbname=DB)  # keep it restricted
    e = refused(c, "clerk", "INSERT INTO public.orders_a VALUES (2)")
    assert 'role "tenant_a"' in e.diag.message_primary and "who set it up" in e.diag.message_detail
    # a trigger created by hand (not by the setup functions): the table owner's rights
    c.sql("CREATE TABLE public.orders_b (id int PRIMARY KEY)", dbname=DB)
    c.sql("ALTER TABLE public.orders_b OWNER TO tenant_b", dbname=DB)
    c.sql("GRANT INSERT ON public.orders_b TO clerk", dbname=DB)
    c.sql("CREATE TRIGGER by_hand AFTER INSERT ON public.orders_b FOR EACH ROW "
          "EXECUTE FUNCTION mqtt_pub.event_trigger('tenant_b/orders', '0', 'default', 'false')", dbname=DB)
    run_as(c, "clerk", "INSERT INTO public.orders_b VALUES (1)")
    assert got(s, "tenant_b/orders/", 1) == [("tenant_b/orders/insert", '{"new":{"id":1}}')]
    c.sql("CREATE TRIGGER by_hand_2 AFTER INSERT ON public.orders_b FOR EACH ROW "
          "EXECUTE FUNCTION mqtt_pub.event_trigger('other/orders', '0', 'default', 'false')", dbname=DB)
    e = refused(c, "clerk", "INSERT INTO public.orders_b VALUES (2)")
    assert 'role "tenant_b"' in e.diag.message_primary and "table's owner" in e.diag.message_detail
    c.sql("DROP TABLE public.orders_a, public.orders_b", dbname=DB)


def test_replay_moves_only_what_the_caller_may_publish(env):
    b, s, c = env
    c.sql("SELECT mqtt_pub.mqtt_grant('tenant_a', 'default', 'tenant_a/#')", dbname=DB)
    c.sql("INSERT INTO mqtt_pub.dead_letters (broker, topic, payload, qos, retain, last_error, attempts) "
          "VALUES ('default', 'tenant_b/dl', 'x', 1, false, 'test', 1)", dbname=DB)
    # replaying needs EXECUTE only: the move runs as the owner (a role with INSERT on the outbox
    # could write any topic into it)
    c.sql("GRANT EXECUTE ON FUNCTION mqtt_pub.replay_dead_letters(text, integer) TO tenant_a", dbname=DB)
    refused(c, "tenant_a", "INSERT INTO mqtt_pub.outbox (broker, topic, payload, qos, retain, lane) "
                           "VALUES ('default', 'tenant_b/direct', 'x', 1, true, 1)")
    e = refused(c, "tenant_a", "SELECT mqtt_pub.replay_dead_letters()")
    assert '"tenant_b/dl"' in e.diag.message_primary
    assert c.sql("SELECT count(*) FROM mqtt_pub.dead_letters WHERE topic = 'tenant_b/dl'", dbname=DB) == [(1,)]
    assert c.sql("SELECT mqtt_pub.replay_dead_letters()", dbname=DB) == [(1,)]  # the superuser may
    assert got(s, "tenant_b/dl", 1) == [("tenant_b/dl", "x")]


def test_the_functions_check_their_arguments_and_who_calls_them(env):
    b, s, c = env
    with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
        c.sql("SELECT mqtt_pub.mqtt_grant('tenant_a', 'default', 'a/#/b')", dbname=DB)
    assert e.value.diag.message_primary == 'invalid MQTT topic filter "a/#/b": "#" must be alone in the last level'
    assert "sensors/+/temp" in e.value.diag.message_hint
    with pytest.raises(psycopg.errors.UndefinedObject):
        c.sql("SELECT mqtt_pub.mqtt_grant('tenant_a', 'nosuchbroker', 'a/#')", dbname=DB)
    with pytest.raises(psycopg.errors.UndefinedObject):
        c.sql("SELECT mqtt_pub.mqtt_grant('nosuchrole', 'default', 'a/#')", dbname=DB)
    with pytest.raises(psycopg.errors.NullValueNotAllowed):
        c.sql("SELECT mqtt_pub.mqtt_grant('tenant_a', 'default', NULL)", dbname=DB)
    for f in ("mqtt_pub.mqtt_grant('tenant_a', 'default', 'x')", "mqtt_pub.mqtt_revoke('tenant_a', 'default')"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            run_as(c, "tenant_a", f"SELECT {f}")
    # readable by everyone (as PostgreSQL's ACLs are), writable by nobody but the owner
    run_as(c, "tenant_a", "SELECT * FROM mqtt_pub.topic_rights")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        run_as(c, "tenant_a", "INSERT INTO mqtt_pub.topic_rights (role, broker, topic_filter, granted_by) "
                              "VALUES ('tenant_a', 'default', '#', 'tenant_a')")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        run_as(c, "tenant_a", "SELECT * FROM mqtt_pub.trigger_setters")


def test_rights_are_per_database_and_survive_dump_and_restore(env):
    b, s, c = env
    c.sql("SELECT mqtt_pub.mqtt_revoke(r.role, r.broker) FROM mqtt_pub.topic_rights r", dbname=DB)
    c.sql("SELECT mqtt_pub.mqtt_grant('tenant_a', 'default', 'tenant_a/#')", dbname=DB)
    # another database publishing in the same cluster is not restricted by these rights
    c.sql("CREATE DATABASE rights_other")
    c.sql("CREATE EXTENSION pg_mqtt_pub", dbname="rights_other")
    c.sql("GRANT EXECUTE ON FUNCTION mqtt_publish(text, text, integer, boolean, text, text, interval, text, bytea, text[], integer) "
          "TO tenant_b", dbname="rights_other")
    with c.connect("rights_other") as conn:
        conn.execute("SET ROLE tenant_b")
        conn.execute("SELECT mqtt_publish('other_db/b', 'unrestricted there')")
    assert got(s, "other_db/", 1) == [("other_db/b", "unrestricted there")]
    # pg_dump and restore into a new database: the rights come along, and restrict there
    dump = os.path.join(scratch("rights-dump"), "rights.dump")
    subprocess.run(["runuser", "-u", "postgres", "--", f"{c.bindir}/pg_dump", "-h", "127.0.0.1", "-p", str(c.port),
                    "-Fc", "-f", dump, DB], check=True)
    c.sql("CREATE DATABASE rights_restored")
    subprocess.run(["runuser", "-u", "postgres", "--", f"{c.bindir}/pg_restore", "-h", "127.0.0.1", "-p", str(c.port),
                    "-d", "rights_restored", dump], check=True)
    assert c.sql("SELECT role::text, broker, topic_filter FROM mqtt_pub.topic_grants", dbname="rights_restored") == \
        [("tenant_a", "default", "tenant_a/#")]
    with c.connect("rights_restored") as conn:
        conn.execute("SET ROLE tenant_b")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT mqtt_publish('restored/b', 'refused')")
        conn.rollback()
        conn.execute("SET ROLE tenant_a")
        conn.execute("SELECT mqtt_publish('tenant_a/restored', 'allowed')")
        conn.commit()
    wait_until(lambda: s.matching("tenant_a/restored"), 30, "the restored database's message")


# Found by an outside review (each failed before its fix).

def reset_rights(c):
    c.sql("SELECT mqtt_pub.mqtt_revoke(role, broker) FROM (SELECT DISTINCT role, broker FROM mqtt_pub.topic_rights) r",
          dbname=DB)


def can_publish(k, topic):
    try:
        k.execute("SELECT mqtt_publish(%s, 'x')", (topic,))
        return True
    except psycopg.errors.InsufficientPrivilege:
        return False


def session(c, role):
    k = c.connect(DB)
    k.execute(f"SET ROLE {role}")
    return k


def test_a_trigger_replaced_with_create_or_replace_is_no_longer_the_setters(env):
    """CREATE OR REPLACE TRIGGER keeps the trigger's OID: the setter's rights must not follow."""
    b, s, c = env
    reset_rights(c)
    c.sql("SELECT mqtt_pub.mqtt_grant('tenant_a', 'default', 'tenant_a/#')", dbname=DB)
    c.sql("CREATE TABLE public.replaced (id int PRIMARY KEY)", dbname=DB)
    c.sql("ALTER TABLE public.replaced OWNER TO tenant_b", dbname=DB)
    c.sql("GRANT EXECUTE ON FUNCTION mqtt_pub.event_trigger() TO tenant_b", dbname=DB)
    # a superuser (exempt) sets publishing up on the tenant's table
    c.sql("SELECT mqtt_trigger_event_setup('public.replaced', 'tenant_b/replaced', include_meta := false)", dbname=DB)
    with session(c, "tenant_b") as k:
        k.execute("INSERT INTO public.replaced VALUES (1)")  # as set up: the superuser's rights
        k.execute("CREATE OR REPLACE TRIGGER mqtt_pub_event AFTER INSERT ON public.replaced FOR EACH ROW "
                  "EXECUTE FUNCTION mqtt_pub.event_trigger('secret/replaced', '0', 'default', 'false')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
            k.execute("INSERT INTO public.replaced VALUES (2)")
        assert 'role "tenant_b"' in e.value.diag.message_primary and "table's owner" in e.value.diag.message_detail
    assert got(s, "tenant_b/replaced/", 1) == [("tenant_b/replaced/insert", '{"new":{"id":1}}')]
    c.sql("DROP TABLE public.replaced", dbname=DB)


def test_a_revoke_committed_during_a_statement_is_not_lost_for_the_session(env):
    b, s, c = env
    reset_rights(c)
    c.sql("SELECT mqtt_pub.mqtt_grant('clerk', 'default', 'keep/#')", dbname=DB)  # stays restricted
    c.sql("SELECT mqtt_pub.mqtt_grant('tenant_a', 'default', 'tenant_a/#')", dbname=DB)
    with session(c, "tenant_a") as k:
        assert can_publish(k, "tenant_a/warm")
        revoked = threading.Event()

        def revoke():
            time.sleep(0.3)
            c.sql("SELECT mqtt_pub.mqtt_revoke('tenant_a', 'default')", dbname=DB)
            revoked.set()
        t = threading.Thread(target=revoke)
        t.start()
        # this statement's snapshot predates the revoke's COMMIT; the cache must not keep it
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            k.execute("SELECT pg_sleep(1), mqtt_publish('tenant_a/straddle', 'x')")
        t.join()
        assert revoked.is_set()
        assert not can_publish(k, "tenant_a/later")


def test_the_first_right_granted_during_a_repeatable_read_transaction_applies_at_once(env):
    b, s, c = env
    reset_rights(c)
    with session(c, "tenant_b") as k:
        assert can_publish(k, "free/warm")
        k.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        k.execute("SELECT 1")
        c.sql("SELECT mqtt_pub.mqtt_grant('tenant_a', 'default', 'tenant_a/#')", dbname=DB)
        assert not can_publish(k, "free/in_rr")
        k.execute("ROLLBACK")
        assert not can_publish(k, "free/after")


def test_rights_cannot_change_in_a_prepared_transaction(env):
    b, s, c = env
    reset_rights(c)
    with c.connect(DB) as a:
        a.execute("BEGIN")
        a.execute("SELECT mqtt_pub.mqtt_grant('tenant_a', 'default', 'tenant_a/#')")
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            a.execute("PREPARE TRANSACTION 'rights_2pc'")
    assert c.sql("SELECT count(*) FROM mqtt_pub.topic_rights", dbname=DB) == [(0,)]


def test_a_grant_rolled_back_to_a_savepoint_is_not_used(env):
    b, s, c = env
    reset_rights(c)
    c.sql("SELECT mqtt_pub.mqtt_grant('clerk', 'default', 'keep/#')", dbname=DB)
    with c.connect(DB, autocommit=False) as k:
        k.execute("SAVEPOINT s")
        k.execute("SELECT mqtt_pub.mqtt_grant('tenant_b', 'default', '#')")
        k.execute("SET LOCAL ROLE tenant_b")
        k.execute("SELECT mqtt_publish('sp/first', 'x')")
        k.execute("ROLLBACK TO SAVEPOINT s")
        k.execute("SET LOCAL ROLE tenant_b")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            k.execute("SELECT mqtt_publish('sp/after_rollback_to', 'y')")
        k.rollback()
    reset_rights(c)
