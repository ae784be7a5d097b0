"""Several named brokers at once: routing, independence, TLS, authentication, runtime changes,
secrets and privileges — against three real mosquitto brokers.

* `plain`: anonymous TCP.
* `tls`: TLS only, with a CA, a server certificate for localhost and a required client
  certificate (mutual TLS); all generated here with openssl.
* `auth`: password required.

Proves: messages routed by name reach that broker only; killing `plain` sends its messages to
the outbox while `tls` and `auth` stay hot and keep delivering, and `plain` drains when it is
back; a wrong CA, a server below the required TLS version, a wrong password and a closed
port show up as `connected = false` with a
`last_error` that says why, with reconnects spaced by the backoff and no file-descriptor leak;
brokers can be added and removed while publishing; passwords are readable by nobody but the
superuser and never logged; a role without grants can neither publish nor manage brokers, and
with the GRANT of docs/privileges.md it can publish.
"""
import os
import signal
import subprocess
import threading
import time

import psycopg
import pytest

from harness import Broker, Cluster, Subscriber, port, ports, scratch, wait_port, wait_until, worker_settings

PG_PORT = port()
PLAIN, TLS, AUTH, EXTRA, TLS12_ONLY = ports(5)
PUB_USER, PUB_PASSWORD = "pgpub", "s3cret-Pub-Pw"


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d):
    """A CA, a server certificate for localhost/127.0.0.1, a client certificate, and a second,
    unrelated CA (the wrong one)."""
    with open(os.path.join(d, "san.ext"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for ca in ("ca", "wrong-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN=pg_mqtt_pub test {ca}",
                "-keyout", f"{ca}.key", "-out", f"{ca}.crt", cwd=d)
    for who, ext in (("server", ["-extfile", "san.ext"]), ("client", [])):
        cn = "localhost" if who == "server" else "pg_mqtt_pub"
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", f"{who}.key", "-out", f"{who}.csr", cwd=d)
        openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
                "-out", f"{who}.crt", *ext, cwd=d)
    for f in os.listdir(d):
        os.chmod(os.path.join(d, f), 0o644)  # readable by mosquitto and postgres
    files = {"ca": "ca.crt", "wrong-ca": "wrong-ca.crt", "server": "server.crt", "server-key": "server.key",
             "client": "client.crt", "client-key": "client.key"}
    return {k: os.path.join(d, f) for k, f in files.items()}


@pytest.fixture(scope="module")
def env():
    pki = make_pki(scratch("pki"))
    brokers = {
        "plain": Broker("plain", PLAIN),
        "tls": Broker("tls", TLS, extra_conf=f"cafile {pki['ca']}\ncertfile {pki['server']}\nkeyfile {pki['server-key']}\n"
                      "require_certificate true\ntls_version tlsv1.2\n"),
        "auth": Broker("auth", AUTH, users=[(PUB_USER, PUB_PASSWORD)], anonymous=False),
    }
    c, subs = None, {}
    try:
        for b in brokers.values():
            b.start()
        # default = the plain broker too; default + 7 named brokers
        c = Cluster("brokers", PG_PORT, worker_settings("postgres", PLAIN, pg_mqtt_pub__max_brokers=8)).start()
        tls_client = {"ca": pki["ca"], "cert": pki["client"], "key": pki["client-key"]}
        subs["plain"] = Subscriber(PLAIN, "b/#")
        subs["tls"] = Subscriber(TLS, "b/#", tls=tls_client)
        subs["auth"] = Subscriber(AUTH, "b/#")
        c.sql("CREATE EXTENSION pg_mqtt_pub")
        c.sql("SELECT mqtt_broker_add('plain', '127.0.0.1', %s)", (PLAIN,))
        c.sql("SELECT mqtt_broker_add(name := 'tls', host := 'localhost', port := %s, use_tls := true, ca_cert := %s, "
              "client_cert := %s, client_key := %s)", (TLS, pki["ca"], pki["client"], pki["client-key"]))
        c.sql("SELECT mqtt_broker_add('auth', '127.0.0.1', %s, username := %s, password := %s)",
              (AUTH, PUB_USER, PUB_PASSWORD))
        wait_until(lambda: modes(c) == {"default": "hot", "plain": "hot", "tls": "hot", "auth": "hot"}, 20,
                   "all brokers connected and hot")
        yield {"cluster": c, "brokers": brokers, "subs": subs, "pki": pki}
    finally:
        for s in subs.values():
            s.close()
        if c:
            c.stop()
        for b in brokers.values():
            b.stop()


def modes(c):
    return {r[0]: r[1] for r in c.sql("SELECT broker_name, delivery_mode FROM mqtt_status()")}


def status_of(c, name):
    rows = c.sql("SELECT connected, delivery_mode, last_error, outbox_pending FROM mqtt_status() WHERE broker_name = %s",
                 (name,))
    return rows[0] if rows else None


def wait_slots_released(c):
    """Removed brokers leave mqtt_status() at once (it lists the catalog), but the worker
    releases their shared-memory slots asynchronously, and mqtt_broker_add skips a slot until it
    has: wait for that before adding again where the slots are all needed."""
    wait_until(lambda: not c.sql("SELECT bool_or(mqtt_pub.broker_slot_busy(s)) FROM generate_series(1, "
                                 "current_setting('pg_mqtt_pub.max_brokers')::int - 1) s "
                                 "WHERE s NOT IN (SELECT slot FROM mqtt_pub.brokers)")[0][0],
               20, "the worker releasing the slots of removed brokers")


def publish_to_all(c, tag, n):
    with c.connect() as conn:
        for name in ("plain", "tls", "auth"):
            conn.execute("SELECT mqtt_publish('b/' || %s || '/' || i, %s || '-' || i, 1, broker := %s) "
                         "FROM generate_series(1, %s) i", (name, tag, name, n))


def test_messages_reach_the_named_broker_only(env):
    c, subs = env["cluster"], env["subs"]
    publish_to_all(c, "route", 50)
    for name in ("plain", "tls", "auth"):
        got = subs[name].wait_for(f"b/{name}/", 50)
        assert [m.payload for m in got] == [f"route-{i}".encode() for i in range(1, 51)], name
    for name, s in subs.items():
        others = [m.topic for m in s.snapshot() if not m.topic.startswith(f"b/{name}/")]
        assert others == [], f"{name} received messages for another broker"


def test_one_broker_down_the_others_keep_delivering(env):
    c, brokers, subs = env["cluster"], env["brokers"], env["subs"]
    brokers["plain"].crash()
    wait_until(lambda: modes(c)["plain"] == "cold", 20, "plain cold")
    publish_to_all(c, "outage", 200)
    for name in ("tls", "auth"):
        got = subs[name].wait_for(f"b/{name}/", 250, timeout=20)  # 50 from the routing test + 200
        assert len(got) == 250
    m = modes(c)
    assert (m["tls"], m["auth"], m["plain"]) == ("hot", "hot", "cold"), "only the dead broker is cold"
    assert status_of(c, "plain")[3] >= 200, "plain's messages wait in its outbox"
    brokers["plain"].restart(subs["plain"])
    got = subs["plain"].wait_for("b/plain/", 250, timeout=30)
    assert [m.payload for m in got][50:] == [f"outage-{i}".encode() for i in range(1, 201)], "drained in order"
    wait_until(lambda: modes(c)["plain"] == "hot", 20, "plain hot again")


def test_a_stalled_broker_does_not_hold_up_the_others(env):
    """`plain` stops answering (SIGSTOP: the connection stays up, nothing is acknowledged). Its
    window fills and its messages queue behind it; `tls` and `auth` keep delivering at once."""
    c, brokers, subs = env["cluster"], env["brokers"], env["subs"]
    before = {n: len(subs[n].matching(f"b/{n}/stall")) for n in subs}
    brokers["plain"].kill(signal.SIGSTOP)
    try:
        with c.connect() as conn:
            conn.execute("SELECT mqtt_publish('b/plain/stall/' || i, i::text, 1, broker := 'plain') "
                         "FROM generate_series(1, 500) i")
            for name in ("tls", "auth"):
                conn.execute("SELECT mqtt_publish('b/' || %s || '/stall/' || i, i::text, 1, broker := %s) "
                             "FROM generate_series(1, 200) i", (name, name))
        for name in ("tls", "auth"):
            got = subs[name].wait_for(f"b/{name}/stall", 200, timeout=10)
            assert [int(m.payload) for m in got] == list(range(1, 201))
        assert before["plain"] == len(subs["plain"].matching("b/plain/stall")) == 0
    finally:
        brokers["plain"].kill(signal.SIGCONT)
    got = subs["plain"].wait_for("b/plain/stall", 500, timeout=30)
    assert [int(m.payload) for m in got] == list(range(1, 501)), "the stalled broker gets everything, in order"


def test_tls_auth_and_network_failures_are_explained(env, request):
    c, pki, brokers = env["cluster"], env["pki"], env["brokers"]
    pid = c.worker_pid()
    fds_before = len(os.listdir(f"/proc/{pid}/fd"))
    auth_log = os.path.join(brokers["auth"].dir, "mosquitto.log")
    refusals_before = open(auth_log, errors="replace").read().count("not authorised")
    c.sql("SELECT mqtt_broker_add('badca', 'localhost', %s, use_tls := true, ca_cert := %s, client_cert := %s, "
          "client_key := %s)", (TLS, pki["wrong-ca"], pki["client"], pki["client-key"]))
    c.sql("SELECT mqtt_broker_add('badpass', '127.0.0.1', %s, username := %s, password := 'wrong-password')",
          (AUTH, PUB_USER))
    c.sql("SELECT mqtt_broker_add('closed', '127.0.0.1', 1)")
    # a TLS server that speaks TLS 1.2 at most (mosquitto's tls_version is a minimum, so openssl
    # plays the server); the broker is added with tls_version := 'tlsv1.3'
    tls12 = subprocess.Popen(["openssl", "s_server", "-quiet", "-accept", f"127.0.0.1:{TLS12_ONLY}", "-tls1_2",
                              "-cert", pki["server"], "-key", pki["server-key"]],
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    request.addfinalizer(tls12.kill)
    wait_port(TLS12_ONLY)
    c.sql("SELECT mqtt_broker_add('tls13', 'localhost', %s, use_tls := true, ca_cert := %s, tls_version := 'tlsv1.3')",
          (TLS12_ONLY, pki["ca"]))
    with pytest.raises(psycopg.errors.ConfigurationLimitExceeded):  # the shared-memory limit
        c.sql("SELECT mqtt_broker_add('one-too-many', '127.0.0.1', 1)")
    t0 = time.time()
    expect = {"badca": "certificate verify failed", "badpass": "not authorized", "closed": "connection refused",
              "tls13": "protocol version"}
    for name, text in expect.items():
        wait_until(lambda: (status_of(c, name) or [None, None, ""])[2] and text in status_of(c, name)[2].lower(), 15,
                   f"{name}: last_error mentioning {text!r} (have {status_of(c, name)})")
        assert status_of(c, name)[0] is False
    time.sleep(max(0.0, 4 - (time.time() - t0)))
    # reconnect_interval_ms = 200 doubling: 0.2 + 0.4 + 0.8 + 1.6 s -> about 4 attempts in 4 s,
    # where a tight loop would make hundreds.
    attempts = open(auth_log, errors="replace").read().count("not authorised") - refusals_before
    # (at least one, however busy the machine; a tight loop would make hundreds)
    assert 1 <= attempts <= 8, f"{attempts} refused logins in 4 s"
    assert len(os.listdir(f"/proc/{pid}/fd")) <= fds_before + 4, "no file-descriptor leak"
    for name in expect:
        assert c.sql("SELECT mqtt_broker_remove(%s)", (name,))[0][0] == 0
    assert not set(expect) & set(modes(c)), "removed brokers are gone from mqtt_status() at once"
    wait_slots_released(c)


def test_add_and_remove_while_publishing(env):
    c = env["cluster"]
    extra = Broker("extra", EXTRA).start()
    sub = Subscriber(EXTRA, "b/#")
    stop = threading.Event()
    sent = []

    def publisher():
        with c.connect() as conn:
            i = 0
            while not stop.is_set():
                i += 1
                conn.execute("SELECT mqtt_publish('b/plain/steady', %s, 1, broker := 'plain')", (str(i),))
                sent.append(i)
                time.sleep(0.002)

    t = threading.Thread(target=publisher)
    t.start()
    try:
        c.sql("SELECT mqtt_broker_add('extra', '127.0.0.1', %s)", (EXTRA,))
        # usable at once (cold until the worker has connected), delivered once it has
        c.sql("SELECT mqtt_publish('b/extra/1', 'first', 1, broker := 'extra')")
        wait_until(lambda: modes(c).get("extra") == "hot", 10, "extra connected within seconds")
        c.sql("SELECT mqtt_publish('b/extra/2', 'second', 1, broker := 'extra')")
        got = sub.wait_for("b/extra/", 2)
        assert [m.payload for m in got] == [b"first", b"second"]

        with pytest.raises(psycopg.errors.DuplicateObject):
            c.sql("SELECT mqtt_broker_add('extra', '127.0.0.1', %s)", (EXTRA,))
        with pytest.raises(psycopg.errors.UndefinedObject):
            c.sql("SELECT mqtt_broker_remove('nope')")
        with pytest.raises(psycopg.errors.ReservedName):
            c.sql("SELECT mqtt_broker_remove('default')")
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            c.sql("SELECT mqtt_broker_add('bad port', '127.0.0.1', 70000)")
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            c.sql("SELECT mqtt_broker_add('badhost', 'mqtt://x y', 1883)")

        # a broker with undelivered messages is not removed by accident
        extra.crash()
        wait_until(lambda: modes(c)["extra"] == "cold", 20, "extra cold")
        c.sql("SELECT mqtt_publish('b/extra/3', 'stuck', 1, broker := 'extra')")
        with pytest.raises(psycopg.errors.ObjectInUse):
            c.sql("SELECT mqtt_broker_remove('extra')")
        assert c.sql("SELECT mqtt_broker_remove('extra', force := true)")[0][0] == 1
        assert c.sql("SELECT topic, last_error FROM mqtt_pub.dead_letters WHERE broker = 'extra'") == [
            ("b/extra/3", 'broker "extra" was removed (mqtt_broker_remove with force)')]
        assert "extra" not in modes(c), "gone from mqtt_status() at once"
        wait_slots_released(c)
        with pytest.raises(psycopg.errors.UndefinedObject):
            c.sql("SELECT mqtt_publish('b/extra/4', 'x', 1, broker := 'extra')")
    finally:
        stop.set()
        t.join()
        sub.close()
        extra.stop()
    steady = [int(m.payload) for m in env["subs"]["plain"].wait_for("b/plain/steady", len(sent), timeout=20)]
    assert steady == sent, "publishing to another broker was never disturbed"


def test_secrets_and_privileges(env):
    c = env["cluster"]
    c.sql("DROP ROLE IF EXISTS mqtt_app")
    c.sql("CREATE ROLE mqtt_app LOGIN")
    try:
        with c.connect() as su:
            su.execute("SET ROLE mqtt_app")
            for sql in ("SELECT mqtt_publish('b/auth/x', 'x', broker := 'auth')",
                        "SELECT mqtt_broker_add('evil', '127.0.0.1', 1883)",
                        "SELECT mqtt_broker_remove('auth')",
                        "SELECT password FROM mqtt_pub.brokers",
                        "SELECT * FROM mqtt_pub.broker_list",
                        "SELECT * FROM mqtt_status()"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    su.execute(sql)
            # status is for monitoring roles; the password is in no column of it
            su.execute("RESET ROLE")
            su.execute("GRANT pg_monitor TO mqtt_app")
            su.execute("SET ROLE mqtt_app")
            rows = su.execute("SELECT * FROM mqtt_status()").fetchall()
            assert PUB_PASSWORD not in repr(rows)
            su.execute("RESET ROLE")
            su.execute("GRANT EXECUTE ON FUNCTION mqtt_publish(text, text, integer, boolean, text, text, interval, text, bytea, text[], integer) TO mqtt_app")
            su.execute("SET ROLE mqtt_app")
            su.execute("SELECT mqtt_publish('b/auth/granted', 'yes', 1, broker := 'auth')")
            su.execute("RESET ROLE")
        got = env["subs"]["auth"].wait_for("b/auth/granted", 1)
        assert got[0].payload == b"yes"
        assert c.sql("SELECT has_password FROM mqtt_pub.broker_list WHERE name = 'auth'") == [(True,)]
        assert PUB_PASSWORD not in c.log_text(), "the password never reaches the server log"
    finally:
        c.sql("REVOKE ALL ON FUNCTION mqtt_publish(text, text, integer, boolean, text, text, interval, text, bytea, text[], integer) FROM mqtt_app")
        c.sql("REVOKE pg_monitor FROM mqtt_app")
        c.sql("DROP ROLE mqtt_app")


def test_worker_restart_serves_every_broker_again(env):
    c, subs = env["cluster"], env["subs"]
    old = c.worker_pid()
    c.sql("SELECT pg_terminate_backend(%s)", (old,))
    c.worker_pid(other_than=old)
    wait_until(lambda: modes(c) == {"default": "hot", "plain": "hot", "tls": "hot", "auth": "hot"}, 30,
               "every broker hot again")
    publish_to_all(c, "restart", 20)
    for name in ("plain", "tls", "auth"):
        wait_until(lambda: len([m for m in subs[name].snapshot() if m.payload.startswith(b"restart-")]) >= 20, 10,
                   f"{name} delivers after the restart")
        got = [m.payload for m in subs[name].snapshot() if m.payload.startswith(b"restart-")]
        assert got == [f"restart-{i}".encode() for i in range(1, 21)], name


def test_remove_gives_up_on_a_long_publishing_transaction(env):
    c = env["cluster"]
    extra = Broker("extra2", EXTRA).start()
    try:
        c.sql("SELECT mqtt_broker_add('extra2', '127.0.0.1', %s)", (EXTRA,))
        with c.connect(autocommit=False) as long_tx:
            long_tx.execute("SELECT mqtt_publish('b/extra2/x', 'held', 1, broker := 'auth')")
            t0 = time.time()
            with pytest.raises(psycopg.errors.LockNotAvailable):
                c.sql("SELECT mqtt_broker_remove('extra2')")
            assert 4 <= time.time() - t0 < 15
            # after giving up, nobody waits behind it
            c.sql("SELECT mqtt_publish('b/auth/during', 'x', 1, broker := 'auth')")
            long_tx.rollback()
        assert c.sql("SELECT mqtt_broker_remove('extra2')")[0][0] == 0
    finally:
        extra.stop()
