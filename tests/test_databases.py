"""Every database of a cluster publishes (issue #27, ADR-012): a worker per database, started
without a list or a restart; each database with its own brokers, ring share, status and client
id; DROP / RENAME / CREATE DATABASE ... TEMPLATE / ALLOW_CONNECTIONS and a restart do what a DBA
expects; past pg_mqtt_pub.max_databases a clear error. What subscribers receive is checked
exactly."""
import os
import re
import shutil
import signal
import subprocess
import threading
import time

import psycopg
import pytest

from harness import PGBIN, SUB_USER, Broker, Cluster, Subscriber, as_postgres, port, wait_status, wait_until


def every_database(name, pg_port, broker_port, **extra):
    """A cluster where every database publishes (pg_mqtt_pub.database = ''), three at most, each
    with a ring share of 256 slots."""
    conf = {
        "pg_mqtt_pub.database": "''",
        "pg_mqtt_pub.broker_host": "'127.0.0.1'",
        "pg_mqtt_pub.broker_port": broker_port,
        "pg_mqtt_pub.reconnect_interval_ms": 200,
        "pg_mqtt_pub.max_databases": 3,
        "pg_mqtt_pub.queue_size": 1024,
    }
    conf.update(extra)
    return Cluster(name, pg_port, conf).start()


def workers(c):
    """{database: pid} of the running pg_mqtt_pub workers (read from postgres, which does not
    publish: looking does not start anything)."""
    return dict(c.sql("SELECT datname, pid FROM pg_stat_activity WHERE backend_type = 'pg_mqtt_pub worker'"))


def publish(c, db, topics, broker="default", qos=1):
    with c.connect(db) as q:
        for t in topics:
            q.execute("SELECT mqtt_publish(%s, %s, %s, broker := %s)", (t, t, qos, broker))


def received(sub, prefix, n):
    """The topics of exactly the messages under `prefix` (after waiting for n of them)."""
    return sorted(m.topic for m in sub.wait_for(prefix, n))


def reload(c, setting, value, shown):
    """ALTER SYSTEM SET (value None: RESET), then wait until a new session shows `shown` (the
    postmaster takes a reload in asynchronously)."""
    c.sql(f"ALTER SYSTEM SET {setting} = {value}" if value is not None else f"ALTER SYSTEM RESET {setting}")
    c.sql("SELECT pg_reload_conf()")
    wait_until(lambda: c.sql(f"SHOW {setting}") == [(shown,)], 10, f"{setting} = {shown!r}")


def commits_wait(c):
    """Does a commit that wrote WAL wait for a synchronous standby now? (Whether one is configured
    is taken in by the checkpointer, after the reload.) A probe INSERT into table `probe`,
    cancelled if it waits."""
    with c.connect() as probe:
        pid = probe.execute("SELECT pg_backend_pid()").fetchone()[0]
        t = threading.Thread(target=lambda: probe.execute("INSERT INTO probe VALUES (1)"))
        t.start()
        t.join(0.5)
        waits = t.is_alive()
        if waits:
            c.sql("SELECT pg_cancel_backend(%s)", (pid,))
            t.join(10)
        return waits


def count(c, db, query):
    return c.sql(query, dbname=db)[0][0]


def test_every_database_publishes_with_its_own_worker_brokers_and_ring():
    # the default broker refuses alpha/poison/# (a poison message: retried, then dead-lettered)
    b0 = Broker("dbs-default", port())
    acl = os.path.join(b0.dir, "acl")
    with open(acl, "w") as f:
        f.write(f"topic write #\ntopic deny alpha/poison/#\nuser {SUB_USER}\ntopic read #\n")
    os.chmod(acl, 0o644)
    b0.extra = f"acl_file {acl}"
    b0.start()
    ta, tb = (Broker(f"dbs-{n}", port()).start() for n in ("ta", "tb"))
    sub0, suba, subb = Subscriber(b0.port), Subscriber(ta.port), Subscriber(tb.port)
    c = every_database("dbs", port(), b0.port, **{"pg_mqtt_pub.retry_base_ms": 200, "pg_mqtt_pub.poison_max_attempts": 3})
    try:
        for db in ("alpha", "beta"):
            c.sql(f"CREATE DATABASE {db}")
            c.sql("CREATE EXTENSION pg_mqtt_pub", dbname=db)
        # CREATE EXTENSION starts the database's worker: no list, no restart, no publish
        wait_until(lambda: set(workers(c)) == {"alpha", "beta"}, 10, "a worker for each database")
        for db in ("alpha", "beta"):
            wait_status(c, db, lambda s: s["connected"], "connected")

        # two client ids with the database in them; neither takes the other's session over
        oids = dict(c.sql("SELECT datname, oid FROM pg_database WHERE datname IN ('alpha', 'beta')"))
        ids = set(re.findall(r"New client connected from \S+ as (pg_mqtt_pub-\S+) ", open(b0.log).read()))
        assert {i.rsplit("-", 1)[1] for i in ids} == {f"db{oids['alpha']}", f"db{oids['beta']}"}, ids
        time.sleep(1)
        assert "already connected" not in open(b0.log).read()

        # each database has its own brokers: the same name, another broker
        c.sql(f"SELECT mqtt_broker_add('t', '127.0.0.1', {ta.port})", dbname="alpha")
        c.sql(f"SELECT mqtt_broker_add('t', '127.0.0.1', {tb.port})", dbname="beta")
        for db in ("alpha", "beta"):
            wait_status(c, db, lambda s: s["connected"] and s["delivery_mode"] == "hot", "hot", broker="t")
        for db in ("alpha", "beta"):
            publish(c, db, [f"{db}/d/{i:02}" for i in range(20)])
            publish(c, db, [f"{db}/t/{i:02}" for i in range(20)], broker="t")
        for db in ("alpha", "beta"):
            assert received(sub0, f"{db}/", 20) == [f"{db}/d/{i:02}" for i in range(20)]
        assert received(suba, "", 20) == [f"alpha/t/{i:02}" for i in range(20)]
        assert received(subb, "", 20) == [f"beta/t/{i:02}" for i in range(20)]

        # a poison message in alpha (the broker refuses it: retried with backoff, then
        # dead-lettered) holds up neither alpha's other messages nor beta's
        with c.connect("alpha") as q:
            q.execute("SELECT mqtt_publish(CASE WHEN i = 5 THEN 'alpha/poison/x' ELSE 'alpha/ok/' || lpad(i::text, 2, '0') END, "
                      "'x', 1) FROM generate_series(1, 10) i")
        publish(c, "beta", [f"beta/ok/{i:02}" for i in range(20)])
        assert received(sub0, "beta/ok/", 20) == [f"beta/ok/{i:02}" for i in range(20)]
        # mosquitto closes the connection after refusing the poison message: a QoS 1 message in
        # flight then may arrive twice (at least once), so the set is exact, not the count
        want = {f"alpha/ok/{i:02}" for i in range(1, 11) if i != 5}
        wait_until(lambda: {m.topic for m in sub0.matching("alpha/ok/")} == want, 30, "alpha's other nine messages")
        wait_until(lambda: count(c, "alpha", "SELECT count(*) FROM mqtt_pub.dead_letters") == 1, 30, "the poison dead-lettered")
        assert c.sql("SELECT topic FROM mqtt_pub.dead_letters", dbname="alpha") == [("alpha/poison/x",)]
        assert count(c, "beta", "SELECT count(*) FROM mqtt_pub.dead_letters") == 0
        assert not sub0.matching("alpha/poison/")

        # mqtt_status(): this database's brokers; mqtt_status_all(): every database's
        assert [r[0] for r in c.sql("SELECT broker_name FROM mqtt_status() ORDER BY 1", dbname="beta")] == ["default", "t"]
        rows = c.sql("SELECT database, broker_name, connected, worker_pid FROM mqtt_pub.mqtt_status_all() ORDER BY 1, 2", dbname="alpha")
        pids = workers(c)
        assert rows == [("alpha", "default", True, pids["alpha"]), ("alpha", "t", True, pids["alpha"]),
                        ("beta", "default", True, pids["beta"]), ("beta", "t", True, pids["beta"])]

        # alpha's broker t stops answering: alpha's share of the ring fills and its t goes cold;
        # beta, on the same cluster at the same time, delivers at once and stays hot
        ta.kill(signal.SIGSTOP)
        try:
            publish(c, "alpha", [f"alpha/stuck/{i:03}" for i in range(400)], broker="t")
            wait_status(c, "alpha", lambda s: s["delivery_mode"] == "cold", "cold", broker="t")
            publish(c, "beta", [f"beta/free/{i:03}" for i in range(300)], broker="t")
            assert received(subb, "beta/free/", 300) == [f"beta/free/{i:03}" for i in range(300)]
            assert c.sql("SELECT delivery_mode FROM mqtt_pub.mqtt_status_all() WHERE database = 'beta' AND broker_name = 't'",
                         dbname="beta") == [("hot",)]
            publish(c, "alpha", ["alpha/d/late"])  # alpha's other broker is not held up either
            assert received(sub0, "alpha/d/late", 1) == ["alpha/d/late"]

            # alpha's outbox full: alpha's next messages for t are refused (53400); beta's outbox,
            # counted apart, still takes messages
            reload(c, "pg_mqtt_pub.max_outbox_size", "'4kB'", "4kB")
            full = []
            with c.connect("alpha") as q:
                for i in range(1000):
                    try:
                        q.execute("SELECT mqtt_publish(%s, 'x', 1, broker := 't')", (f"alpha/full/{i:03}",))
                        full.append(f"alpha/full/{i:03}")
                    except psycopg.errors.ConfigurationLimitExceeded:
                        break
                else:
                    pytest.fail("alpha's outbox never filled")
            with c.connect("beta") as q:
                q.execute("SET pg_mqtt_pub.durable = on")  # through beta's outbox
                for i in range(5):
                    q.execute("SELECT mqtt_publish(%s, 'x', 1, broker := 't')", (f"beta/durable/{i}",))
            assert received(subb, "beta/durable/", 5) == [f"beta/durable/{i}" for i in range(5)]
            reload(c, "pg_mqtt_pub.max_outbox_size", None, "1GB")
        finally:
            ta.kill(signal.SIGCONT)
        # nothing of alpha's is lost (QoS 1: at least once)
        got = suba.wait_for("alpha/stuck/", 400, timeout=60) + suba.wait_for("alpha/full/", len(full), timeout=60)
        assert {m.topic for m in got} == {f"alpha/stuck/{i:03}" for i in range(400)} | set(full)

        # a commit stuck in alpha (it wrote WAL, and waits for a synchronous standby that never
        # comes) delays no commit of beta's, nor alpha's other sessions; its message goes once it is
        # released
        c.sql("CREATE TABLE probe (i int)")
        c.sql("CREATE TABLE stuck (i int)", dbname="alpha")
        reload(c, "synchronous_standby_names", "'nobody'", "nobody")
        wait_until(lambda: commits_wait(c), 20, "commits waiting for the synchronous standby (the checkpointer's reload)")
        stuck = c.connect("alpha")
        stuck_pid = stuck.execute("SELECT pg_backend_pid()").fetchone()[0]
        stuck.execute("SET synchronous_commit = on")

        def stuck_commit():
            stuck.execute("BEGIN")
            stuck.execute("INSERT INTO stuck VALUES (1)")  # WAL: the commit waits for the standby
            stuck.execute("SELECT mqtt_publish('alpha/d/syncrep', 'x', 1)")
            stuck.execute("COMMIT")
        waiter = threading.Thread(target=stuck_commit)
        waiter.start()
        try:
            wait_until(lambda: c.sql("SELECT wait_event FROM pg_stat_activity WHERE pid = %s", (stuck_pid,)) == [("SyncRep",)],
                       10, "alpha's commit waiting for a synchronous standby")
            for db in ("beta", "alpha"):
                with c.connect(db) as q:
                    q.execute("SET synchronous_commit = local")
                    for i in range(20):
                        q.execute("SELECT mqtt_publish(%s, 'x', 1)", (f"{db}/sync/{i:02}",))
            for db in ("beta", "alpha"):
                assert received(sub0, f"{db}/sync/", 20) == [f"{db}/sync/{i:02}" for i in range(20)]
            assert not sub0.matching("alpha/d/syncrep")
        finally:
            c.sql("SELECT pg_cancel_backend(%s)", (stuck_pid,))  # the commit is local already: it stays
            waiter.join(10)
            stuck.close()
            reload(c, "synchronous_standby_names", None, "")
        assert received(sub0, "alpha/d/syncrep", 1) == ["alpha/d/syncrep"]

        # a dump of alpha restored into another database of the cluster (a staging copy): its
        # trigger publishes from there, through that database's own worker
        c.sql("CREATE TABLE orders (id int PRIMARY KEY, item text)", dbname="alpha")
        c.sql("SELECT mqtt_trigger_event_setup('orders', 'orders')", dbname="alpha")
        c.sql("CREATE DATABASE staging")
        dump = as_postgres([f"{PGBIN}/pg_dump", "-h", "127.0.0.1", "-p", str(c.port), "-U", "postgres", "alpha"],
                           capture_output=True).stdout
        as_postgres([f"{PGBIN}/psql", "-h", "127.0.0.1", "-p", str(c.port), "-U", "postgres", "-d", "staging",
                     "-v", "ON_ERROR_STOP=1", "-q"], input=dump, capture_output=True)
        wait_until(lambda: "staging" in workers(c), 10, "the restored copy's worker")
        c.sql("INSERT INTO orders VALUES (1, 'from staging')", dbname="staging")
        (m,) = sub0.wait_for("orders/", 1)
        assert b"from staging" in m.payload
        wait_status(c, "staging", lambda s: s["messages_sent"] == 1, "counted in staging")

        # a fourth database is one too many (max_databases = 3): a clear error ...
        c.sql("CREATE DATABASE delta")
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded) as e:
            c.sql("CREATE EXTENSION pg_mqtt_pub", dbname="delta")
        assert "max_databases" in str(e.value) and "max_databases" in e.value.diag.message_hint
        # ... until a database stops publishing: its share is given back
        c.sql("DROP EXTENSION pg_mqtt_pub CASCADE", dbname="staging")
        wait_until(lambda: "staging" not in workers(c), 30, "staging's worker leaving")
        wait_until(lambda: try_create(c, "delta"), 30, "a share for delta")
        wait_until(lambda: "delta" in workers(c), 10, "delta's worker")
        publish(c, "delta", ["delta/d/1"])
        assert received(sub0, "delta/", 1) == ["delta/d/1"]
        assert "exited with exit code" not in c.log_text()
    finally:
        for s in (sub0, suba, subb):
            s.close()
        c.stop_if_running()
        for b in (b0, ta, tb):
            b.stop_if_running()


def try_create(c, db):
    try:
        c.sql("CREATE EXTENSION pg_mqtt_pub", dbname=db)
        return True
    except psycopg.errors.ConfigurationLimitExceeded:
        return False


def test_drop_rename_copy_refuse_connections_and_restart():
    b0 = Broker("dbcmd-default", port()).start()
    sub0 = Subscriber(b0.port)
    later_port = port()
    later = Broker("dbcmd-later", later_port)
    sub_later = None
    c = every_database("dbcmd", port(), b0.port)
    try:
        c.sql("CREATE DATABASE prod")
        c.sql("CREATE EXTENSION pg_mqtt_pub", dbname="prod")
        wait_status(c, "prod", lambda s: s["connected"], "connected")
        # three messages that wait in prod's outbox: their broker is not there yet (a named broker
        # with a fixed client id: the copy below has the same row)
        c.sql(f"SELECT mqtt_broker_add('later', '127.0.0.1', {later_port}, client_id := 'plant-7')", dbname="prod")
        publish(c, "prod", [f"prod/later/{i}" for i in range(3)], broker="later")
        wait_status(c, "prod", lambda s: s["outbox_pending"] == 3, "3 waiting", broker="later")

        # a copy made from it (the worker leaves for the command: without that it fails with
        # "source database is being accessed by other users"); its own worker starts at once and
        # moves the copied messages to its dead letters instead of sending them a second time,
        # but sends what the copy itself published at once, before its worker came
        c.sql("CREATE DATABASE copy TEMPLATE prod")
        publish(c, "copy", ["copy/own/0", "copy/own/1"])
        wait_until(lambda: "copy" in workers(c) and "prod" in workers(c), 15, "workers for prod and the copy")
        wait_until(lambda: count(c, "copy", "SELECT count(*) FROM mqtt_pub.dead_letters") == 3, 15, "copied messages dead-lettered")
        assert received(sub0, "copy/own/", 2) == ["copy/own/0", "copy/own/1"]
        assert count(c, "copy", "SELECT count(*) FROM mqtt_pub.dead_letters WHERE topic LIKE 'copy/%'") == 0
        wait_until(lambda: count(c, "copy", "SELECT count(*) FROM mqtt_pub.outbox") == 0, 15, "the copy's outbox empty")
        assert count(c, "prod", "SELECT count(*) FROM mqtt_pub.outbox") == 3
        assert "copied from database" in c.log_text()

        # the broker comes: prod's three arrive, and only once (the copy sent none of them)
        later.start(gated=True)
        sub_later = Subscriber(later_port)
        if not sub_later.subscribed.wait(20):
            raise TimeoutError("subscriber")
        later.open_gate()
        assert received(sub_later, "prod/later/", 3) == [f"prod/later/{i}" for i in range(3)]
        time.sleep(1)
        assert len(sub_later.matching("")) == 3
        # both databases connected to it with the row's client id, each with its database in it:
        # neither takes the other's session over
        oids = dict(c.sql("SELECT datname, oid FROM pg_database WHERE datname IN ('prod', 'copy')"))
        log = open(later.log).read()
        assert {f"plant-7-db{oids['prod']}", f"plant-7-db{oids['copy']}"} <= set(re.findall(r" as (plant-7\S*) ", log)), log
        assert "already connected" not in log

        # RENAME: the worker leaves for the command and comes back under the new name
        c.sql("ALTER DATABASE copy RENAME TO copy2")
        wait_until(lambda: "copy2" in workers(c), 15, "the renamed database's worker")
        publish(c, "copy2", ["copy2/d/1"])
        assert received(sub0, "copy2/", 1) == ["copy2/d/1"]

        # SET TABLESPACE moves the database's files: the worker leaves for it too
        ts = os.path.join(os.path.dirname(c.data), "ts")
        os.makedirs(ts, exist_ok=True)
        shutil.chown(ts, "postgres")
        c.sql(f"CREATE TABLESPACE dbcmd_ts LOCATION '{ts}'")
        c.sql("ALTER DATABASE copy2 SET TABLESPACE dbcmd_ts")
        wait_until(lambda: "copy2" in workers(c), 15, "the moved database's worker")
        publish(c, "copy2", ["copy2/d/2"])
        assert received(sub0, "copy2/", 2) == ["copy2/d/1", "copy2/d/2"]

        # a database that refuses connections gets no worker until it accepts them again
        c.sql("ALTER DATABASE copy2 WITH ALLOW_CONNECTIONS false")
        c.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'copy2' AND backend_type = 'pg_mqtt_pub worker'")
        wait_until(lambda: 'database "copy2" does not accept connections' in c.log_text(), 20, "the launcher saying so")
        time.sleep(2)
        assert "copy2" not in workers(c)
        c.sql("ALTER DATABASE copy2 WITH ALLOW_CONNECTIONS true")
        wait_until(lambda: "copy2" in workers(c), 30, "the worker back")

        # DROP DATABASE without FORCE: the worker leaves when asked, the share is given back
        c.sql("DROP DATABASE copy2")
        wait_until(lambda: [r for r in c.sql("SELECT database FROM mqtt_pub.mqtt_status_all()", dbname="prod")
                            if r[0] != "prod"] == [], 15, "the dropped database's share given back")
        assert "copy2" not in workers(c)

        # a command that is going to fail anyway does not push a worker out: the owner without
        # CREATEDB renaming, a DROP DATABASE inside a transaction block
        c.sql("CREATE ROLE tenant LOGIN NOCREATEDB")
        c.sql("CREATE DATABASE owned OWNER tenant")
        c.sql("CREATE EXTENSION pg_mqtt_pub", dbname="owned")
        wait_until(lambda: "owned" in workers(c), 15, "owned's worker")
        pid = workers(c)["owned"]
        with c.connect(user="tenant") as t:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                t.execute("ALTER DATABASE owned RENAME TO owned2")
        with c.connect(autocommit=False) as q:
            with pytest.raises(psycopg.errors.ActiveSqlTransaction):
                q.execute("DROP DATABASE owned")
        time.sleep(1)
        assert workers(c).get("owned") == pid
        assert 'asked the worker of database "owned"' not in c.log_text()

        # its owner's own copy (no superuser: no share claimed for it), published in at once and
        # altered before its worker starts (the launcher held): what it published is its own
        c.sql("ALTER ROLE tenant CREATEDB")
        c.sql("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO tenant", dbname="owned")
        with c.connect(user="tenant") as t:
            t.execute("CREATE DATABASE owned_copy TEMPLATE owned")
        launcher = c.sql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_mqtt_pub launcher'")[0][0]
        os.kill(launcher, signal.SIGSTOP)
        try:
            with c.connect("owned_copy", user="tenant") as t:
                t.execute("SELECT mqtt_publish('owned/own/1', 'x', 1)")
            c.sql("ALTER DATABASE owned_copy CONNECTION LIMIT 50")
        finally:
            os.kill(launcher, signal.SIGCONT)
        assert received(sub0, "owned/own/", 1) == ["owned/own/1"]
        assert count(c, "owned_copy", "SELECT count(*) FROM mqtt_pub.dead_letters") == 0
        for db in ("owned_copy", "owned"):
            c.sql(f"DROP DATABASE {db}")

        # a client id libmosquitto would refuse (it then closes file descriptor 0) is refused first
        with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
            c.sql(f"SELECT mqtt_broker_add('bad', '127.0.0.1', {later_port}, client_id := E'plant\\t7')", dbname="prod")
        assert "control characters" in str(e.value)
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            c.sql("ALTER SYSTEM SET pg_mqtt_pub.client_id = E'plant\\t7'")

        # a restart: prod's worker starts before anyone publishes there and delivers what waited
        later.kill()
        sub_later.close()
        sub_later = None
        wait_status(c, "prod", lambda s: not s["connected"], "later down", broker="later")
        publish(c, "prod", [f"prod/restart/{i}" for i in range(2)], broker="later")
        c.stop()
        later = Broker("dbcmd-later2", later_port).start(gated=True)
        sub_later = Subscriber(later_port)
        if not sub_later.subscribed.wait(20):
            raise TimeoutError("subscriber")
        later.open_gate()
        c.start()
        wait_until(lambda: "prod" in workers(c), 15, "prod's worker, with nobody publishing there")
        assert received(sub_later, "prod/restart/", 2) == [f"prod/restart/{i}" for i in range(2)]

        # the same without the launcher's list (a new data directory, as pg_upgrade makes): it
        # looks into every database once
        c.sql("SELECT mqtt_broker_remove('later', force := true)", dbname="prod")
        c.sql(f"SELECT mqtt_broker_add('gone', '127.0.0.1', {port()})", dbname="prod")
        publish(c, "prod", ["prod/gone/0"], broker="gone")
        c.stop()
        os.remove(os.path.join(c.data, "pg_mqtt_pub.databases"))
        c.start()
        wait_until(lambda: "prod" in workers(c), 30, "prod's worker, found without the list")
        wait_until(lambda: os.path.exists(os.path.join(c.data, "pg_mqtt_pub.databases")), 10, "the list written again")
        assert count(c, "prod", "SELECT count(*) FROM mqtt_pub.outbox") == 1  # still waiting for 'gone'
    finally:
        sub0.close()
        if sub_later:
            sub_later.close()
        c.stop_if_running()
        b0.stop_if_running()
        later.stop_if_running()
