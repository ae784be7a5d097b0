"""Security: no path from an ordinary role to superuser, exact bytes in every encoding, least
privilege, no password in the log.

Proves, against a real cluster, broker and subscriber:
* each route found by the attacker review is closed: a search_path shadow under mqtt_status()
  (route 1), a hand-made resultset trigger with a temp view named like its transition table
  (route 2), a database search_path shadow under the worker's failure path (route 3);
* a canary schema owned by an unprivileged role, first in the caller's and the database's
  search_path, shadowing the functions, aggregates and operators SQL text could name: publishing
  hot, cold, durable and two-phase, both trigger helpers, mqtt_status(), broker add/remove,
  replay, and the worker's drain, failure and pruning paths call none of them;
* the catalog policy: owner, SECURITY DEFINER, pinned paths and PUBLIC's EXECUTE per function;
* SQL_ASCII, LATIN1 and UTF8 databases: non-ASCII topics and payloads arrive as the exact
  UTF-8 bytes and are stored exactly in the outbox, hot and cold (route 4);
* a broker password given inline never reaches the log, also when mqtt_broker_add fails; a
  password_file works and is refused to roles that may not read server files;
* a database owner who is not a superuser dumps the database the way docs/backups.md says.
"""
import os
import subprocess

import pytest

from harness import Broker, Cluster, PGBIN, SUB_USER, Subscriber, port, scene, wait_until

PORT = port()
PW_PORT = port()
ENC_PORT = port()
DB = "sec"
CANARY = "pg_mqtt_pub canary"


def write_acl(path):
    with open(path, "w") as f:
        f.write("topic write #\ntopic deny sec/denied/#\n"
                f"user {SUB_USER}\ntopic read #\nuser pgpub\ntopic write #\n")


@pytest.fixture(scope="module")
def env():
    acl = f"/tmp/pg_mqtt_pub_test_sec_acl_{os.getpid()}"
    write_acl(acl)
    os.chmod(acl, 0o644)
    b = Broker("sec", PORT, f"acl_file {acl}").start()
    c = Cluster("sec", port(), {
        "pg_mqtt_pub.database": f"'{DB}'",
        "pg_mqtt_pub.broker_host": "'127.0.0.1'",
        "pg_mqtt_pub.broker_port": PORT,
        "pg_mqtt_pub.reconnect_interval_ms": 200,
        "pg_mqtt_pub.retry_base_ms": 100,
        "pg_mqtt_pub.poison_max_attempts": 2,
    }).start()
    c.sql(f"CREATE DATABASE {DB}")
    c.sql("CREATE EXTENSION pg_mqtt_pub", dbname=DB)
    s = Subscriber(PORT, "sec/#")
    wait_until(lambda: mode(c) == "hot", 20, "hot")
    yield c, b, s
    s.close()
    c.stop()
    b.stop()
    os.unlink(acl)


def mode(c):
    # qualified: the canary test puts shadows first in the database's search_path
    return c.sql("SELECT delivery_mode FROM mqtt_status() WHERE broker_name OPERATOR(pg_catalog.=) 'default'",
                 dbname=DB)[0][0]


def superuser(c, role):
    return c.sql("SELECT rolsuper FROM pg_roles WHERE rolname OPERATOR(pg_catalog.=) %s::name", (role,), dbname=DB)[0][0]


def restart_worker(c):
    old = c.worker_pid()  # (asked in the postgres database: no shadows there)
    c.sql("SELECT pg_terminate_backend(%s)", (old,))
    c.worker_pid(other_than=old)


def broker_outage(c, b):
    b.stop()
    wait_until(lambda: mode(c) == "cold", 20, "cold")


def broker_back(c, b, s):
    b.restart(s)
    wait_until(lambda: mode(c) == "hot", 30, "hot again")


def test_route1_status_under_a_shadowing_search_path(env):
    c, _, _ = env
    c.sql("CREATE ROLE mallory LOGIN; CREATE SCHEMA m AUTHORIZATION mallory; GRANT pg_monitor TO mallory", dbname=DB)
    with c.connect(DB, user="mallory") as m:
        m.execute("CREATE FUNCTION m.now() RETURNS timestamptz LANGUAGE plpgsql "
                  "AS $$BEGIN ALTER ROLE mallory SUPERUSER; RETURN pg_catalog.now(); END$$")
        m.execute("CREATE FUNCTION m.eq(text, text) RETURNS boolean LANGUAGE plpgsql "
                  "AS $$BEGIN ALTER ROLE mallory SUPERUSER; RETURN $1 OPERATOR(pg_catalog.=) $2; END$$")
        m.execute("CREATE OPERATOR m.= (LEFTARG = text, RIGHTARG = text, FUNCTION = m.eq)")
        m.execute("SET search_path = m, pg_catalog")
        rows = m.execute("SELECT broker_name, outbox_pending FROM public.mqtt_status()").fetchall()
        assert rows[0][0] == "default"
    assert not superuser(c, "mallory"), "mqtt_status() ran mallory's function as the extension owner"


def test_route2_resultset_trigger_reads_only_its_own_transition_tables(env):
    c, _, s = env
    c.sql("CREATE ROLE owner2 LOGIN; GRANT CREATE ON SCHEMA public TO owner2; "
          "GRANT EXECUTE ON FUNCTION mqtt_pub.resultset_trigger() TO owner2", dbname=DB)
    with c.connect(DB, user="owner2") as o:
        o.execute("CREATE TABLE mytab (id int PRIMARY KEY)")
        o.execute("CREATE FUNCTION pg_temp.pwn() RETURNS int LANGUAGE plpgsql "
                  "AS $$BEGIN ALTER ROLE owner2 SUPERUSER; RETURN 1; END$$")
        o.execute("CREATE TEMP VIEW mqtt_pub_new AS SELECT pg_temp.pwn() AS x")
        # by hand, without REFERENCING: refused, nothing else runs
        o.execute("CREATE TRIGGER x AFTER INSERT ON mytab FOR EACH STATEMENT "
                  "EXECUTE FUNCTION mqtt_pub.resultset_trigger('sec/rs', '0', 'default', 'false', '10')")
        with pytest.raises(Exception) as e:
            o.execute("INSERT INTO mytab VALUES (1)")
        assert "transition tables" in str(e.value)
        assert e.value.sqlstate == "39P01"
        # with REFERENCING under the view's name: the statement's own rows, not the view
        o.execute("DROP TRIGGER x ON mytab")
        o.execute("CREATE TRIGGER x AFTER INSERT ON mytab REFERENCING NEW TABLE AS mqtt_pub_new FOR EACH STATEMENT "
                  "EXECUTE FUNCTION mqtt_pub.resultset_trigger('sec/rs', '0', 'default', 'false', '10')")
        o.execute("INSERT INTO mytab VALUES (2), (3)")
    got = s.wait_for("sec/rs/insert", 1)
    assert [m.payload for m in got] == [b'{"part":1,"parts":1,"count":2,"data":[{"new":{"id":2}},{"new":{"id":3}}]}']
    assert not superuser(c, "owner2")


def test_route3_worker_ignores_the_database_search_path(env):
    c, _, s = env
    c.sql("CREATE ROLE dbowner LOGIN; ALTER DATABASE sec OWNER TO dbowner; "
          "CREATE SCHEMA evil AUTHORIZATION dbowner", dbname=DB)
    with c.connect(DB, user="dbowner") as d:
        d.execute("CREATE FUNCTION evil.pow(float8, float8) RETURNS float8 LANGUAGE plpgsql "
                  "AS $$BEGIN ALTER ROLE dbowner SUPERUSER; RETURN pg_catalog.pow($1, $2); END$$")
        d.execute("CREATE OPERATOR evil.^ (LEFTARG = float8, RIGHTARG = float8, FUNCTION = evil.pow)")
        d.execute("CREATE FUNCTION evil.powi(float8, int4) RETURNS float8 LANGUAGE plpgsql "
                  "AS $$BEGIN ALTER ROLE dbowner SUPERUSER; RETURN pg_catalog.pow($1, $2); END$$")
        d.execute("CREATE OPERATOR evil.^ (LEFTARG = float8, RIGHTARG = int4, FUNCTION = evil.powi)")
        d.execute("ALTER DATABASE sec SET search_path = evil, pg_catalog")
    try:
        restart_worker(c)
        # a message the broker refuses: the worker counts the attempt (2^attempts) and dead-letters it
        c.sql("SELECT public.mqtt_publish('sec/denied/3', 'x', 1)", dbname=DB)
        wait_until(lambda: c.sql("SELECT pg_catalog.count(*) FROM mqtt_pub.dead_letters "
                                 "WHERE topic OPERATOR(pg_catalog.=) 'sec/denied/3'", dbname=DB)[0][0] == 1, 30, "dead-lettered")
        assert not superuser(c, "dbowner"), "the worker ran the database owner's operator as superuser"
        c.sql("SELECT public.mqtt_publish('sec/after-route3', 'ok', 1)", dbname=DB)
        assert [m.payload for m in s.wait_for("sec/after-route3", 1)] == [b"ok"]
    finally:
        c.sql("ALTER DATABASE sec RESET ALL; ALTER DATABASE sec OWNER TO postgres", dbname=DB)
        c.sql("DELETE FROM mqtt_pub.dead_letters", dbname=DB)


# Shadows for everything the extension's SQL text could name: each records that it ran.
CANARY_FUNCS = [
    ("now()", "timestamptz", "pg_catalog.now()"),
    ("count(\"any\")", None, None),
    ("to_regclass(text)", "regclass", "pg_catalog.to_regclass($1)"),
    ("octet_length(text)", "int", "pg_catalog.octet_length($1)"),
    ("octet_length(bytea)", "int", "pg_catalog.octet_length($1)"),
    ("lower(text)", "text", "pg_catalog.lower($1)"),
    ("upper(text)", "text", "pg_catalog.upper($1)"),
    ("btrim(text)", "text", "pg_catalog.btrim($1)"),
    ("current_setting(text)", "text", "pg_catalog.current_setting($1)"),
    ("pg_size_bytes(text)", "bigint", "pg_catalog.pg_size_bytes($1)"),
    ("getdatabaseencoding()", "name", "pg_catalog.getdatabaseencoding()"),
    ("length(bytea)", "int", "pg_catalog.length($1)"),
    ("get_byte(bytea, int)", "int", "pg_catalog.get_byte($1, $2)"),
    ("row_to_json(record)", "json", "pg_catalog.row_to_json($1)"),
    ("to_json(text)", "json", "pg_catalog.to_json($1)"),
    ("pg_current_xact_id()", "xid8", "pg_catalog.pg_current_xact_id()"),
    ("pg_has_role(name, name, text)", "boolean", "pg_catalog.pg_has_role($1, $2, $3)"),
    ("make_interval(years int DEFAULT 0, months int DEFAULT 0, weeks int DEFAULT 0, days int DEFAULT 0, "
     "hours int DEFAULT 0, mins int DEFAULT 0, secs float8 DEFAULT 0.0)", "interval",
     "pg_catalog.make_interval($1, $2, $3, $4, $5, $6, $7)"),
]
CANARY_SETOF = [
    ("unnest(text[])", "text"), ("unnest(bytea[])", "bytea"), ("unnest(smallint[])", "smallint"),
    ("unnest(boolean[])", "boolean"), ("unnest(bigint[])", "bigint"), ("unnest(oid[])", "oid"),
    ("generate_series(int, int)", "int"),
]
CANARY_OPS = [
    ("=", "text", "text", "boolean"), ("=", "bigint", "bigint", "boolean"), ("=", "int", "int", "boolean"),
    ("=", "smallint", "smallint", "boolean"), ("=", "oid", "oid", "boolean"), ("=", "tid", "tid", "boolean"),
    ("=", "smallint", "int", "boolean"), ("<>", "text", "text", "boolean"), ("~", "text", "text", "boolean"),
    ("<", "timestamptz", "timestamptz", "boolean"), ("<=", "timestamptz", "timestamptz", "boolean"),
    (">", "bigint", "bigint", "boolean"), ("<=", "smallint", "smallint", "boolean"),
    ("-", "timestamptz", "timestamptz", "interval"), ("-", "timestamptz", "interval", "timestamptz"),
    ("+", "timestamptz", "interval", "timestamptz"), ("+", "int", "int", "int"),
    ("*", "float8", "float8", "float8"), ("/", "float8", "float8", "float8"), ("/", "float8", "numeric", "float8"),
    ("^", "float8", "float8", "float8"), ("^", "float8", "int", "float8"), ("||", "text", "text", "text"),
    ("&", "smallint", "int", "int"),
]


def install_canary(c):
    c.sql("CREATE ROLE canary_owner LOGIN; CREATE SCHEMA canary AUTHORIZATION canary_owner", dbname=DB)
    with c.connect(DB, user="canary_owner") as k:
        def record(what):
            return f"RAISE WARNING '{CANARY}: %', {what!r}"
        for sig, ret, call in CANARY_FUNCS:
            if ret is None:
                continue
            k.execute(f"CREATE FUNCTION canary.{sig} RETURNS {ret} LANGUAGE plpgsql "
                      f"AS $f$BEGIN {record(sig)}; RETURN {call}; END$f$")
        for sig, ret in CANARY_SETOF:
            k.execute(f"CREATE FUNCTION canary.{sig} RETURNS SETOF {ret} LANGUAGE plpgsql AS $f$BEGIN {record(sig)}; "
                      f"RETURN QUERY SELECT * FROM pg_catalog.{sig.split('(')[0]}($1{', $2' if ',' in sig else ''}); END$f$")
        # aggregates: their transition function records the call
        k.execute(f"CREATE FUNCTION canary.agg_step(bigint) RETURNS bigint LANGUAGE plpgsql "
                  f"AS $f$BEGIN {record('count(*)')}; RETURN $1 OPERATOR(pg_catalog.+) 1; END$f$")
        k.execute("CREATE AGGREGATE canary.count(*) (SFUNC = canary.agg_step, STYPE = bigint, INITCOND = '0')")
        k.execute(f"CREATE FUNCTION canary.min_step(timestamptz, timestamptz) RETURNS timestamptz LANGUAGE plpgsql "
                  f"AS $f$BEGIN {record('min(timestamptz)')}; RETURN LEAST($1, $2); END$f$")
        k.execute("CREATE AGGREGATE canary.min(timestamptz) (SFUNC = canary.min_step, STYPE = timestamptz)")
        k.execute(f"CREATE FUNCTION canary.agg_text(text[], text) RETURNS text[] LANGUAGE plpgsql "
                  f"AS $f$BEGIN {record('array_agg(text)')}; RETURN pg_catalog.array_append($1, $2); END$f$")
        k.execute("CREATE AGGREGATE canary.array_agg(text) (SFUNC = canary.agg_text, STYPE = text[])")
        for i, (op, left, right, ret) in enumerate(CANARY_OPS):
            k.execute(f"CREATE FUNCTION canary.op{i}(a {left}, b {right}) RETURNS {ret} LANGUAGE plpgsql AS $f$BEGIN "
                      f"{record(f'{op}({left},{right})')}; RETURN a OPERATOR(pg_catalog.{op}) b; END$f$")
            k.execute(f"CREATE OPERATOR canary.{op} (LEFTARG = {left}, RIGHTARG = {right}, FUNCTION = canary.op{i})")
    c.sql("GRANT USAGE ON SCHEMA canary TO PUBLIC", dbname=DB)
    c.sql("ALTER DATABASE sec SET search_path = canary, pg_catalog, public", dbname=DB)
    # the shadows work: the canary records a call made through them
    mark = len(c.log_text())
    c.sql("SELECT now(), 'a'::text = 'a'::text", dbname=DB)
    assert CANARY in c.log_text()[mark:], "canary shadows are not reached through the path"


def test_canary_nothing_of_ours_resolves_through_the_search_path(env):
    c, b, s = env
    install_canary(c)
    mark = len(c.log_text())
    try:
        restart_worker(c)  # starts with the database's canary path
        with c.connect(DB) as q:  # a superuser session with the canary path first
            q.execute("SET search_path = canary, pg_catalog, public")
            # hot: every publishing function, 2PC
            q.execute("SELECT mqtt_publish('sec/c/hot', 'a', 1)")
            q.execute("SELECT mqtt_publish_binary('sec/c/bin', '\\x00ff'::bytea, 1)")
            q.execute("SELECT mqtt_publish_json('sec/c/json', '{\"a\":1}', 1)")
            q.execute("SELECT mqtt_publish_json('sec/c/jsonb', '{\"a\":1}'::jsonb, 1)")
            q.execute("SELECT mqtt_publish_batch('sec/c/batch', ARRAY['x','y'], 1)")
            q.execute("BEGIN; SELECT mqtt_publish('sec/c/2pc', 'p', 1); PREPARE TRANSACTION 'sec_c'")
            q.execute("COMMIT PREPARED 'sec_c'")
            q.execute("SET pg_mqtt_pub.durable = on")
            q.execute("SELECT mqtt_publish('sec/c/durable', 'd', 1)")
            q.execute("RESET pg_mqtt_pub.durable")
            # both trigger helpers: setup, every operation, removal
            q.execute("CREATE TABLE ct (id int PRIMARY KEY, v text)")
            q.execute("SELECT mqtt_trigger_event_setup('ct', 'sec/c/ev')")
            q.execute("SELECT mqtt_trigger_resultset_setup('ct', 'sec/c/rs')")
            q.execute("INSERT INTO ct VALUES (1, 'a'), (2, 'b')")
            q.execute("UPDATE ct SET v = 'c'")
            q.execute("DELETE FROM ct")
            q.execute("SELECT * FROM mqtt_pub.triggers")
            q.execute("SELECT mqtt_trigger_remove('ct')")
            q.execute("SELECT * FROM mqtt_status()")
            q.execute("SELECT mqtt_broker_add('canary-b', '127.0.0.1', 1)")
            q.execute("SELECT mqtt_broker_remove('canary-b')")
            # the worker's failure path, then replay
            q.execute("SELECT mqtt_publish('sec/denied/c', 'x', 1)")
            wait_until(lambda: q.execute("SELECT dead_letters FROM mqtt_pub.dead_letter_summary").fetchone(),
                       30, "dead letter")
            q.execute("SELECT mqtt_pub.replay_dead_letters()")
            # cold path and the drain
            broker_outage(c, b)
            q.execute("SELECT mqtt_publish('sec/c/cold', 'c', 1)")
            broker_back(c, b, s)
            s.wait_for("sec/c/cold", 1)
            # pruning (the worker prunes at start)
            q.execute("INSERT INTO mqtt_pub.dead_letters (broker, topic, payload, qos, retain, attempts, dead_lettered_at) "
                      "VALUES ('default', 'old', '', 1, false, 5, pg_catalog.now() OPERATOR(pg_catalog.-) interval '40 days')")
            restart_worker(c)
            wait_until(lambda: q.execute("SELECT 1 FROM mqtt_pub.dead_letters WHERE topic OPERATOR(pg_catalog.=) 'old'")
                       .fetchone() is None, 30, "pruned")
        for t in ["hot", "bin", "json", "jsonb", "batch/0", "2pc", "durable", "ev/insert", "rs/update"]:
            assert s.wait_for(f"sec/c/{t}", 1), t
        calls = [line for line in c.log_text()[mark:].splitlines() if CANARY in line]
        assert calls == [], "\n".join(calls[:20])
    finally:
        c.sql("ALTER DATABASE sec RESET search_path", dbname=DB)
        restart_worker(c)


def test_catalog_policy(env):
    c, _, _ = env
    rows = c.sql("""
        SELECT p.oid::regprocedure::text, pg_get_userbyid(p.proowner), p.prosecdef, l.lanname,
               coalesce(p.proconfig, '{}'), has_function_privilege('public', p.oid, 'EXECUTE')
        FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
        JOIN pg_depend d ON d.objid = p.oid AND d.classid = 'pg_proc'::regclass AND d.deptype = 'e'
        WHERE d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_mqtt_pub')""", dbname=DB)
    # mqtt_broker_add is SECURITY INVOKER in C since 1.4 (it checks the caller's right to name
    # server files) and runs broker_add_as_owner, which PUBLIC cannot execute, as the owner
    secdef = {"broker_add_as_owner", "mqtt_broker_remove"}
    public_ok = set()  # PUBLIC executes nothing (docs/SECURITY.md)
    assert rows
    for sig, owner, prosecdef, lang, config, public in rows:
        name = sig.split("(")[0].split(".")[-1]  # mqtt_pub.mqtt_broker_add and mqtt_broker_add alike
        assert owner == "postgres", sig
        assert prosecdef == (name in secdef), sig
        if lang in ("sql", "plpgsql"):
            assert "search_path=pg_catalog, pg_temp" in config, f"{sig}: no pinned search_path"
        assert public == (name in public_ok), f"{sig}: EXECUTE for PUBLIC is {public}"


def test_password_never_logged_and_password_file(env, tmp_path):
    c, _, _ = env
    mark = len(c.log_text())
    with pytest.raises(Exception):
        c.sql("SELECT mqtt_broker_add('pwfail', 'bad host!', username := 'u', password := 'sekret-inline-42')", dbname=DB)
    with pytest.raises(Exception):
        c.sql("SELECT mqtt_broker_add('pwfail', '127.0.0.1', 70000, 'u', 'sekret-inline-43')", dbname=DB)
    with pytest.raises(Exception):  # from PL/pgSQL: its statement must not become the error's CONTEXT
        c.sql("DO $$BEGIN PERFORM mqtt_broker_add('pwfail', 'bad host!', username := 'u', "
              "password := 'sekret-inline-44'); END$$", dbname=DB)
    log = c.log_text()[mark:]
    assert "invalid host" in log and "sekret-inline" not in log

    b = Broker("sec-pw", PW_PORT, users=[("pgpub", "from-a-file")], anonymous=False).start()
    try:
        pw = "/tmp/pg_mqtt_pub_test_pw"
        with open(pw, "w") as f:
            f.write("from-a-file\n")
        os.chmod(pw, 0o644)
        c.sql("CREATE ROLE broker_admin LOGIN", dbname=DB)
        c.sql("GRANT EXECUTE ON FUNCTION mqtt_broker_add(text, text, integer, text, text, boolean, text, text, text, "
              "text, text, integer, text) TO broker_admin", dbname=DB)
        with c.connect(DB, user="broker_admin") as a, pytest.raises(Exception) as e:
            a.execute(f"SELECT mqtt_broker_add('pwfile', '127.0.0.1', {PW_PORT}, 'pgpub', password_file := '{pw}')")
        assert e.value.sqlstate == "42501"
        # certificate and key files need the same right: the worker would present the server's
        # certificate, or sign with its key, towards a broker of the caller's choosing
        for arg in ("ca_cert := '/etc/ssl/private/server.pem'",
                    "client_cert := '/srv/server.crt', client_key := '/srv/server.key'"):
            with c.connect(DB, user="broker_admin") as a, pytest.raises(Exception) as e:
                a.execute(f"SELECT mqtt_broker_add('tlsfile', '127.0.0.1', {PW_PORT}, use_tls := true, {arg})")
            assert e.value.sqlstate == "42501" and "pg_read_server_files" in e.value.diag.message_hint, arg
        # ... and the right is the calling role's: not the session's (SET ROLE by a privileged
        # session), nor that of a privileged role running a definer function of broker_admin's
        with pytest.raises(Exception) as e:
            c.sql(f"SET ROLE broker_admin; SELECT mqtt_broker_add('tlsfile', '127.0.0.1', {PW_PORT}, use_tls := true, "
                  "ca_cert := '/etc/passwd')", dbname=DB)
        assert e.value.sqlstate == "42501"
        c.sql("GRANT CREATE ON SCHEMA public TO broker_admin", dbname=DB)
        with c.connect(DB, user="broker_admin") as a:
            a.execute(f"CREATE FUNCTION public.trojan() RETURNS int LANGUAGE plpgsql SECURITY DEFINER "
                      f"SET search_path = pg_catalog AS $f$BEGIN PERFORM public.mqtt_broker_add('trojan', '127.0.0.1', "
                      f"{PW_PORT}, 'u', password_file := '/etc/passwd'); RETURN 1; END$f$")
        with pytest.raises(Exception) as e:
            c.sql("SELECT public.trojan()", dbname=DB)  # a superuser runs it
        assert e.value.sqlstate == "42501"
        c.sql("DROP FUNCTION public.trojan(); REVOKE CREATE ON SCHEMA public FROM broker_admin", dbname=DB)
        assert c.sql("SELECT count(*) FROM mqtt_pub.brokers WHERE name IN ('tlsfile', 'trojan')", dbname=DB) == [(0,)]
        c.sql("GRANT pg_read_server_files TO broker_admin", dbname=DB)
        with c.connect(DB, user="broker_admin") as a:
            a.execute(f"SELECT mqtt_broker_add('tlsfile', '127.0.0.1', {PW_PORT}, use_tls := true, ca_cert := '{pw}')")
        c.sql("REVOKE pg_read_server_files FROM broker_admin", dbname=DB)
        c.sql("SELECT mqtt_broker_remove('tlsfile')", dbname=DB)
        c.sql(f"SELECT mqtt_broker_add('pwfile', '127.0.0.1', {PW_PORT}, 'pgpub', password_file := '{pw}')", dbname=DB)
        wait_until(lambda: c.sql("SELECT connected FROM mqtt_status() WHERE broker_name = 'pwfile'", dbname=DB)
                   == [(True,)], 20, "connected with the password from the file")
        assert "from-a-file" not in c.log_text()
        c.sql("SELECT mqtt_broker_remove('pwfile')", dbname=DB)
    finally:
        b.stop()


def test_encodings_exact_bytes_hot_and_cold(tmp_path):
    b = Broker("sec-enc", ENC_PORT).start()
    s = Subscriber(ENC_PORT, "enc/#")
    c = Cluster("sec-enc", port(), {
        "pg_mqtt_pub.database": "'enc_sql_ascii'",
        "pg_mqtt_pub.broker_host": "'127.0.0.1'",
        "pg_mqtt_pub.broker_port": ENC_PORT,
        "pg_mqtt_pub.reconnect_interval_ms": 200,
    }, initdb_args=["--locale=C", "-E", "UTF8"]).start()
    try:
        for enc in ["SQL_ASCII", "LATIN1", "UTF8"]:
            db = f"enc_{enc.lower()}"
            c.sql(f"CREATE DATABASE {db} ENCODING '{enc}' LOCALE 'C' TEMPLATE template0")
            c.sql(f"ALTER SYSTEM SET pg_mqtt_pub.database = '{db}'")
            c.stop()
            c.start()
            c.sql("CREATE EXTENSION pg_mqtt_pub", dbname=db)
            def st():
                with c.connect(db, client_encoding="UTF8") as q:  # SQL_ASCII text would come back as bytes
                    return q.execute("SELECT delivery_mode FROM mqtt_status()").fetchone()[0]

            wait_until(lambda: st() == "hot", 30, f"{enc}: hot")
            topic, payload = f"enc/{enc}/hot/ü", "grüße é"
            with c.connect(db, client_encoding="UTF8") as q:
                q.execute("SELECT mqtt_publish(%s, %s, 1)", (topic, payload))
            got = s.wait_for(f"enc/{enc}/hot", 1)
            assert [(m.topic.encode(), m.payload) for m in got] == [(topic.encode(), payload.encode())], enc

            b.stop()
            wait_until(lambda: st() == "cold", 20, f"{enc}: cold")
            topic = f"enc/{enc}/cold/ü"
            with c.connect(db, client_encoding="UTF8") as q:
                q.execute("SELECT mqtt_publish(%s, %s, 1)", (topic, payload))
                row = q.execute("SELECT topic, payload FROM mqtt_pub.outbox").fetchall()
                assert row == [(topic, payload.encode())], f"{enc}: outbox row {row!r}"
            b.restart(s)
            got = s.wait_for(f"enc/{enc}/cold", 1)
            assert [(m.topic.encode(), m.payload) for m in got] == [(topic.encode(), payload.encode())], enc
    finally:
        s.close()
        c.stop()
        b.stop()


def test_pg_dump_by_a_database_owner_as_documented(env):
    c, _, _ = env
    c.sql("DROP ROLE IF EXISTS dumper; CREATE ROLE dumper LOGIN")
    c.sql("CREATE DATABASE dumpdb OWNER dumper")
    try:
        c.sql("CREATE EXTENSION pg_mqtt_pub", dbname="dumpdb")
        dump = [f"{PGBIN}/pg_dump", "-h", "127.0.0.1", "-p", str(c.port), "-U", "dumper", "-d", "dumpdb"]
        plain = subprocess.run(dump, capture_output=True, text=True)
        assert plain.returncode != 0 and "permission denied for table brokers" in plain.stderr, plain.stderr
        documented = subprocess.run(dump + ["--exclude-table-data=mqtt_pub.brokers"], capture_output=True, text=True)
        assert documented.returncode == 0, documented.stderr
        assert "CREATE EXTENSION IF NOT EXISTS pg_mqtt_pub" in documented.stdout
    finally:
        c.sql("DROP DATABASE dumpdb")
        c.sql("DROP ROLE dumper")


def test_database_and_role_settings_can_neither_stop_nor_redirect_the_worker():
    """The database's owner (not a superuser) sets everything a session setting could use to stop
    or redirect the worker on the publishing database (role, timeouts, read-only, isolation, path,
    output formats), a superuser adds session_replication_role; after a worker restart, which
    picks them up, messages are still delivered hot and through the outbox, and the worker
    deletes the delivered rows. (`ALTER DATABASE ... SET role = owner` used to make every
    worker start fail with "permission denied for table brokers".)"""
    mqtt_port = port()
    with scene("sec-settings", port(), mqtt_port, "setdb", "set/#") as (b, s, c):
        c.sql("CREATE ROLE dbo LOGIN")
        c.sql("ALTER DATABASE setdb OWNER TO dbo")
        c.sql("CREATE SCHEMA evil AUTHORIZATION dbo", dbname="setdb")
        settings = {"session_authorization": "dbo", "role": "dbo", "statement_timeout": "1", "lock_timeout": "1", "idle_in_transaction_session_timeout": "1",
                    "idle_session_timeout": "1", "default_transaction_read_only": "on", "search_path": "evil, public",
                    "default_transaction_isolation": "serializable", "default_transaction_deferrable": "on",
                    "DateStyle": "SQL, DMY", "IntervalStyle": "iso_8601", "bytea_output": "escape",
                    "extra_float_digits": "-15", "TimeZone": "Pacific/Chatham", "synchronous_commit": "remote_apply",
                    "work_mem": "64", "client_min_messages": "error"}
        if int(c.sql("SHOW server_version_num")[0][0]) >= 170000:
            settings["transaction_timeout"] = "1"
        with c.connect("setdb", user="dbo") as o:
            for k, v in settings.items():
                o.execute(f"ALTER DATABASE setdb SET {k} = '{v}'")
        c.sql("ALTER DATABASE setdb SET session_replication_role = 'replica'")
        # the test's own sessions undo them for themselves
        undo = " ".join(f"-c {k}={d}" for k, d in [("statement_timeout", 0), ("lock_timeout", 0),
                        ("idle_in_transaction_session_timeout", 0), ("idle_session_timeout", 0),
                        ("default_transaction_read_only", "off"), ("search_path", "public"),
                        ("transaction_timeout", 0), ("client_min_messages", "notice")]
                        if k in settings)

        def q(sql):
            with c.connect("setdb", options=undo) as conn:
                # (RESET would go back to the database's settings)
                conn.execute("SET SESSION AUTHORIZATION postgres")
                conn.execute("SET ROLE NONE")
                cur = conn.execute(sql)
                return cur.fetchall() if cur.description else None

        def st():
            return q("SELECT connected, delivery_mode, outbox_pending FROM public.mqtt_status() "
                     "WHERE broker_name OPERATOR(pg_catalog.=) 'default'")[0]

        old = c.worker_pid()
        c.sql("SELECT pg_terminate_backend(%s)", (old,))
        c.worker_pid(other_than=old)
        wait_until(lambda: st()[:2] == (True, "hot"), 60, "the restarted worker connected and hot")
        q("SELECT public.mqtt_publish('set/hot', 'h', 1)")
        assert [m.payload for m in s.wait_for("set/hot", 1)] == [b"h"]
        b.stop()
        wait_until(lambda: st()[:2] == (False, "cold"), 30, "cold")
        q("SELECT public.mqtt_publish('set/cold', 'c', 1)")
        b.restart(s)
        assert [m.payload for m in s.wait_for("set/cold", 1)] == [b"c"]
        wait_until(lambda: st() == (True, "hot", 0), 30, "hot again with the outbox emptied by the worker")
        assert "permission denied" not in c.log_text()
