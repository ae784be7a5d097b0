"""pg_upgrade across major versions with the extension installed and messages waiting.

Proves: a 16 cluster whose outbox holds undelivered messages (broker down), a named broker and a
dead letter, upgraded with 18's pg_upgrade, comes up on 18 with all of it, and its worker then
delivers every waiting message, in order. Both servers come from scripts/pg.sh (PyPI's builds of
16.14 and 18.4); the extension is built and installed for both by the test itself.

Why not from 15: the Debian 15.20 build on these machines stores an attribute option
`pg_attver` on every column of every table (a bare cluster without this extension does too), and
no other build knows that option, so pg_upgrade from it to a non-Debian 18 fails for any
database. Debian's own 18 is not reachable from here.
"""
import os
import subprocess

from harness import Broker, Cluster, Subscriber, as_postgres, port, scratch, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PORT = port()
N = 200


def install_for(pg_config):
    env = dict(os.environ, PGRX_PG_CONFIG_PATH=pg_config)
    for target in ("all", "install"):
        subprocess.run(["make", "-s", target, f"PG_CONFIG={pg_config}"], cwd=ROOT, env=env, check=True,
                       capture_output=True)


def bindir(pg_config):
    return subprocess.check_output([pg_config, "--bindir"], text=True).strip()


def pg_config_of(major):
    return subprocess.check_output([os.path.join(ROOT, "scripts", "pg.sh"), major], text=True).strip()


def test_pg_upgrade_16_to_18_delivers_the_waiting_messages():
    old_config, new_config = pg_config_of("16"), pg_config_of("18")
    install_for(old_config)
    install_for(new_config)
    settings = {
        "pg_mqtt_pub.database": "'mig'",
        "pg_mqtt_pub.broker_host": "'127.0.0.1'",
        "pg_mqtt_pub.broker_port": PORT,
        "pg_mqtt_pub.reconnect_interval_ms": 200,
    }
    b = Broker("pg-upgrade", PORT)  # down until after the upgrade
    old = Cluster("upgrade-16", port(), settings, initdb_args=["--locale=C", "-E", "UTF8"], bindir=bindir(old_config)).start()
    new = None
    s = None
    try:
        old.sql("CREATE DATABASE mig")
        old.sql("CREATE EXTENSION pg_mqtt_pub", dbname="mig")
        old.sql(f"SELECT mqtt_broker_add('nb', '127.0.0.1', {PORT})", dbname="mig")
        old.sql(f"SELECT mqtt_publish('mig/' || i, 'm' || i, 1, broker := CASE WHEN i % 10 = 0 THEN 'nb' "
                f"ELSE 'default' END) FROM generate_series(1, {N}) i", dbname="mig")
        old.sql("INSERT INTO mqtt_pub.dead_letters (broker, topic, payload, qos, retain, attempts) "
                "VALUES ('default', 'mig/dead', 'x', 1, false, 5)", dbname="mig")
        assert old.sql("SELECT count(*) FROM mqtt_pub.outbox", dbname="mig") == [(N,)]
        version = old.sql("SELECT extversion FROM pg_extension WHERE extname = 'pg_mqtt_pub'", dbname="mig")
        old.stop()

        # 18's initdb turns data checksums on by default; pg_upgrade needs them as in the old cluster
        new = Cluster("upgrade-18", port(), settings, initdb_args=["--locale=C", "-E", "UTF8", "--no-data-checksums"],
                      bindir=bindir(new_config))
        work = scratch("pg-upgrade-work")
        as_postgres([f"{bindir(new_config)}/pg_upgrade", "-b", bindir(old_config), "-B", bindir(new_config),
                     "-d", old.data, "-D", new.data, "-p", str(old.port), "-P", str(new.port)],
                    cwd=work, stdout=subprocess.DEVNULL)
        new.start()
        assert new.sql("SHOW server_version_num")[0][0].startswith("18")
        assert new.sql("SELECT extversion FROM pg_extension WHERE extname = 'pg_mqtt_pub'", dbname="mig") == version
        assert new.sql("SELECT count(*) FROM mqtt_pub.outbox", dbname="mig") == [(N,)]
        assert new.sql("SELECT name FROM mqtt_pub.broker_list", dbname="mig") == [("nb",)]

        # gated until the subscriber is in: the worker's next retry must not deliver to nobody
        b.start(gated=True)
        s = Subscriber(PORT, "mig/#")
        b.open_gate()
        got = s.wait_for("mig/", N, timeout=60)
        named = [f"mig/{i}" for i in range(1, N + 1) if i % 10 == 0]
        default = [f"mig/{i}" for i in range(1, N + 1) if i % 10]
        assert [m.topic for m in got if m.topic in named] == named
        assert [m.topic for m in got if m.topic in default] == default
        assert len(got) == N
        wait_until(lambda: new.sql("SELECT count(*) FROM mqtt_pub.outbox", dbname="mig")[0][0] == 0, 20, "outbox empty")
        assert new.sql("SELECT topic FROM mqtt_pub.dead_letters", dbname="mig") == [("mig/dead",)]
    finally:
        if s:
            s.close()
        if new:
            new.stop_if_running()
        old.stop_if_running()
        b.stop_if_running()
