"""Real servers for the tests: PostgreSQL clusters, mosquitto brokers, an MQTT subscriber.

Everything runs on loopback ports under one scratch directory. PostgreSQL runs as the
`postgres` OS user (initdb refuses root); mosquitto drops to its own user. Nothing is mocked:
a test asserts what a subscriber really received.
"""
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

WORK = os.environ.get("PG_MQTT_PUB_TEST_DIR", "/tmp/pg_mqtt_pub_test")
PG_CONFIG = os.environ.get("PG_CONFIG", "/usr/lib/postgresql/15/bin/pg_config")
PGBIN = subprocess.check_output([PG_CONFIG, "--bindir"], text=True).strip()
SUB_USER, SUB_PASSWORD = "test-subscriber", "test-subscriber-password"


# Every port a test server listens on comes from port(): one counter for the whole session, so no
# two tests share a port, whichever subset runs. The range stays below the kernel's ephemeral
# range (32768+), so an outgoing connection can never hold a port a server wants to listen on;
# a port something else on the machine holds is skipped.
_NEXT_PORT = [int(os.environ.get("PG_MQTT_PUB_TEST_FIRST_PORT", "18800"))]


def port():
    while _NEXT_PORT[0] < 32000:
        p = _NEXT_PORT[0]
        _NEXT_PORT[0] += 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                continue
        return p
    raise RuntimeError("no free test port left below 32000")


def ports(n):
    return tuple(port() for _ in range(n))


def as_postgres(args, **kw):
    return subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, **kw)


def wait_port(port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def wait_until(pred, timeout=10.0, what="condition", interval=0.05):
    """Wait (bounded) until `pred()` is truthy; return its value. Tests wait for the state they
    need this way: a background process (launcher, worker, broker, subscriber) acts when it does,
    never on a schedule the test can assume."""
    deadline = time.time() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.time() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what} (last value: {v!r:.300})")
        time.sleep(interval)


def scratch(name):
    d = os.path.join(WORK, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    shutil.chown(WORK, "postgres")
    shutil.chown(d, "postgres")
    return d


# Everything started in this test session, so that a fixture that fails half-way cannot leave a
# server holding its port for the next run (conftest.py stops these at session end).
STARTED = []


def stop_leftovers():
    for thing in reversed(STARTED):
        try:
            thing.stop_if_running()
        except Exception:  # noqa: BLE001 - best effort at session end
            pass


class Broker:
    """A mosquitto broker on a loopback port.

    After an outage the test must know its subscriber is back before the worker delivers
    anything, or messages would be delivered to nobody. `restart` therefore starts the broker
    *gated* (anonymous clients refused: the worker keeps retrying with backoff), waits until the
    subscribers (which log in) have subscribed again, then opens the gate with a reload (SIGHUP).
    """

    def __init__(self, name, port, extra_conf="", users=(), anonymous=True):
        self.port = port
        self.extra = extra_conf
        self.anonymous = anonymous
        self.dir = scratch(f"mosquitto-{name}")
        self.conf = os.path.join(self.dir, "mosquitto.conf")
        self.passwd = os.path.join(self.dir, "passwd")
        subprocess.run(["mosquitto_passwd", "-b", "-c", self.passwd, SUB_USER, SUB_PASSWORD], check=True)
        for user, password in users:
            subprocess.run(["mosquitto_passwd", "-b", self.passwd, user, password], check=True)
        shutil.chown(self.dir, "mosquitto")
        shutil.chown(self.passwd, "mosquitto")
        self.log = os.path.join(self.dir, "mosquitto.log")
        self.proc = None
        self.write_conf(gated=False)

    def write_conf(self, gated):
        with open(self.conf, "w") as f:
            anonymous = self.anonymous and not gated
            f.write(f"listener {self.port} 127.0.0.1\nallow_anonymous {'true' if anonymous else 'false'}\n"
                    f"password_file {self.passwd}\npersistence false\nmax_queued_messages 0\n{self.extra}\n")

    def start(self, gated=False):
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            raise RuntimeError(f"port {self.port} is taken (a broker left over from an earlier run?)")
        except OSError:
            pass
        self.write_conf(gated)
        self.proc = subprocess.Popen(["mosquitto", "-c", self.conf], stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        STARTED.append(self)
        wait_port(self.port)
        return self

    def stop_if_running(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)

    def restart(self, *subscribers):
        """Start after an outage; deliveries begin only once `subscribers` are subscribed again."""
        # A subscriber's `subscribed` is cleared by its network thread when it notices the outage;
        # until it has, the event still says "subscribed" from before, and the gate would open
        # before it is back. The broker is down, so each one does notice.
        for s in subscribers:
            wait_until(lambda: not s.subscribed.is_set(), 20, "the subscriber noticing the broker outage")
        self.start(gated=True)
        for s in subscribers:
            if not s.subscribed.wait(20):
                raise TimeoutError("subscriber did not come back")
        self.open_gate()
        return self

    def kill(self, sig=signal.SIGKILL):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            if sig not in (signal.SIGSTOP, signal.SIGCONT, signal.SIGHUP):
                self.proc.wait(10)

    def crash(self):
        """SIGKILL the broker without its own loss window: mosquitto acknowledges a QoS 1 message
        once it holds it in memory, and a SIGKILL can reset a subscriber's socket with that
        message still unsent. Stopping it first lets the kernel flush what it already sent; then
        SIGKILL loses only what it had not acknowledged, which the publisher must resend."""
        self.kill(signal.SIGSTOP)
        time.sleep(1)
        self.kill(signal.SIGKILL)

    def open_gate(self):
        """Let the worker in (after start(gated=True))."""
        self.write_conf(gated=False)
        self.reload()

    def reload(self):
        """SIGHUP: mosquitto re-reads its configuration (and ACL file). Returns once it has: it
        logs "Reloading config." and reloads in the same step of its one-threaded loop, before it
        handles another packet."""
        def reloads():
            with open(self.log, errors="replace") as f:
                return f.read().count("Reloading config.")
        before = reloads()
        self.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: reloads() > before, 10, f"mosquitto on port {self.port} reloading its configuration")

    def stop(self):
        self.kill(signal.SIGTERM)


# Brokers from PyPI for the interoperability tests, in the virtualenv scripts/deps.sh makes
# (tests/interop-requirements.txt): a missing one fails the test that needs it.
INTEROP_VENV = os.environ.get("PG_MQTT_PUB_INTEROP_VENV", "/var/cache/pg_mqtt_pub/interop-venv")


class ForeignBroker:
    """Another MQTT broker implementation on a loopback port: `amqtt` (MQTT 3.1.1 only) or
    `mqttools` (MQTT 5, grants Maximum QoS 0). Anonymous clients are let in."""

    def __init__(self, kind, port):
        self.kind, self.port, self.proc = kind, port, None
        self.dir = scratch(f"{kind}-{port}")
        self.log = os.path.join(self.dir, f"{kind}.log")

    def start(self):
        exe = os.path.join(INTEROP_VENV, "bin", self.kind)
        if not os.access(exe, os.X_OK):
            raise RuntimeError(f"{exe} is missing: scripts/deps.sh installs the interoperability brokers")
        if self.kind == "amqtt":
            conf = os.path.join(self.dir, "amqtt.yaml")
            with open(conf, "w") as f:
                f.write(f"listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:{self.port}\n"
                        "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n")
            args = [exe, "-c", conf]
        else:
            args = [exe, "broker", "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen(args, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        STARTED.append(self)
        wait_port(self.port, 30)
        return self

    def stop_if_running(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Cluster:
    """A scratch PostgreSQL cluster with pg_mqtt_pub preloaded (unless preload=False)."""

    def __init__(self, name, port, settings=None, preload=True, initdb_args=(), bindir=None, backup_of=None, standby=False):
        """A new cluster: initdb, or with `backup_of` a pg_basebackup of that running cluster
        (same system identifier: a clone), with `standby` set up to stream from it."""
        self.port = port
        self.bindir = bindir or PGBIN
        self.dir = scratch(f"pg-{name}")
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "postgresql.log")
        if backup_of:
            as_postgres([f"{self.bindir}/pg_basebackup", "-h", "127.0.0.1", "-p", str(backup_of.port), "-U", "postgres",
                         "-D", self.data, "-X", "stream", "--checkpoint=fast", "--no-sync", *(["-R"] if standby else [])], stdout=subprocess.DEVNULL)
        else:
            as_postgres([f"{self.bindir}/initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync", *initdb_args],
                        stdout=subprocess.DEVNULL)
        conf = {
            "port": port,
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.dir}'",
            "fsync": "off",
            "max_prepared_transactions": 10,
        }
        if preload:
            conf["shared_preload_libraries"] = "'pg_mqtt_pub'"
        conf.update(settings or {})
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            for k, v in conf.items():
                f.write(f"{k} = {v}\n")

    def pg_ctl(self, *args):
        as_postgres([f"{self.bindir}/pg_ctl", "-D", self.data, "-l", self.log, "-w", *args], stdout=subprocess.DEVNULL)

    def start(self, resolv_conf=None, hosts=None):
        """Start the server; with `resolv_conf` (and/or `hosts`), in a private mount namespace
        where that file is /etc/resolv.conf (/etc/hosts): the server's processes resolve host
        names with it, nobody else does."""
        STARTED.append(self)
        if resolv_conf is None and hosts is None:
            self.pg_ctl("start")
            return self
        pg_ctl = ["runuser", "-u", "postgres", "--", f"{self.bindir}/pg_ctl", "-D", self.data, "-l", self.log, "-w", "start"]
        # Inside a chroot (PostgreSQL 17's trixie root) "/" is not a mount point, so unshare
        # cannot make it private; scripts/trixie.sh already entered a private mount namespace,
        # whose copies stay private in a nested one: "unchanged" is safe there, and only there.
        with open("/proc/self/mountinfo") as f:
            root_is_mount = any(line.split()[4] == "/" for line in f)
        propagation = "private" if root_is_mount else "unchanged"
        mounts = [f'mount --bind "{f}" {target}; ' for f, target in ((resolv_conf, "/etc/resolv.conf"), (hosts, "/etc/hosts")) if f]
        subprocess.run(["unshare", "--mount", "--propagation", propagation, "sh", "-ec",
                        "".join(mounts) + 'exec "$@"', "sh", *pg_ctl],
                       check=True, stdout=subprocess.DEVNULL)
        return self

    def stop_if_running(self):
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            as_postgres([f"{self.bindir}/pg_ctl", "-D", self.data, "-m", "immediate", "stop"], stdout=subprocess.DEVNULL)

    def stop(self, mode="fast"):
        self.pg_ctl("stop", "-m", mode)

    def connect(self, dbname="postgres", autocommit=True, user="postgres", **kw):
        return psycopg.connect(host="127.0.0.1", port=self.port, user=user, dbname=dbname, autocommit=autocommit, **kw)

    def sql(self, query, params=None, dbname="postgres"):
        with self.connect(dbname) as c:
            cur = c.execute(query, params)
            return cur.fetchall() if cur.description else None

    def worker_pid(self, other_than=None, timeout=45.0):
        """The publishing worker's pid, waiting (bounded) until it runs: the launcher starts it
        asynchronously (it checks for the database about once a second, and restarts a worker
        that exited after a delay of up to 30 s). With `other_than`, wait for a worker other than that pid."""
        def find():
            rows = self.sql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_mqtt_pub worker'")
            pids = [r[0] for r in rows if r[0] != other_than]
            return pids[0] if pids else None
        what = "the pg_mqtt_pub worker in pg_stat_activity" + (f" (other than pid {other_than})" if other_than else "")
        return wait_until(find, timeout, what)

    def log_text(self):
        with open(self.log, errors="replace") as f:
            return f.read()

    def reload_with(self, dbname, **settings):
        with self.connect(dbname) as c:
            for k, v in settings.items():
                c.execute(f"ALTER SYSTEM SET pg_mqtt_pub.{k} = {v}")
            c.execute("SELECT pg_reload_conf()")


@dataclass
class Msg:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    at: float
    props: dict = None  # MQTT 5 properties as received (see props_of)


def props_of(m):
    """The MQTT 5 properties of a received message, by pg_mqtt_pub's names."""
    p = getattr(m, "properties", None)
    if p is None:
        return {}
    out = {}
    for ours, paho in [("content_type", "ContentType"), ("payload_format", "PayloadFormatIndicator"),
                       ("message_expiry", "MessageExpiryInterval"), ("response_topic", "ResponseTopic"),
                       ("correlation_data", "CorrelationData"), ("user_properties", "UserProperty")]:
        if hasattr(p, paho):
            out[ours] = getattr(p, paho)
    return out


class Subscriber:
    """A real MQTT 5 client (paho-mqtt) that records everything it receives.

    It subscribes at QoS 2 (so each message arrives at the QoS it was published with) and with
    Retain As Published (so the retain flag of live messages is visible). It logs in (so it passes
    a gated broker restart, see Broker) and reconnects and resubscribes within half a second.
    """

    count = 0

    def __init__(self, port, topic="#", tls=None, protocol=5, login=True):
        Subscriber.count += 1
        self.port = port
        self.messages = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        v5 = protocol == 5
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{os.getpid()}-{Subscriber.count}",
                                  protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_disconnect = lambda *a: self.subscribed.clear()
        if login:
            self.client.username_pw_set(SUB_USER, SUB_PASSWORD)
        if tls:
            self.client.tls_set(ca_certs=tls["ca"], certfile=tls.get("cert"), keyfile=tls.get("key"))
        if v5:
            self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, options=SubscribeOptions(qos=2, retainAsPublished=True))
            props = Properties(PacketTypes.CONNECT)
            props.ReceiveMaximum = 65535
        else:
            self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=2)
            props = None
        self.client.connect("localhost" if tls else "127.0.0.1", port, keepalive=30, properties=props)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise TimeoutError("subscriber could not subscribe")

    def _on_message(self, client, userdata, m):
        with self.lock:
            self.messages.append(Msg(m.topic, bytes(m.payload), m.qos, bool(m.retain), time.time(), props_of(m)))

    def snapshot(self):
        with self.lock:
            return list(self.messages)

    def matching(self, prefix):
        return [m for m in self.snapshot() if m.topic.startswith(prefix)]

    def wait_for(self, prefix, count, timeout=30.0):
        """Wait until `count` messages under `prefix` arrived; return them."""
        wait_until(lambda: len(self.matching(prefix)) >= count, timeout, f"{count} messages under {prefix!r} (have {len(self.matching(prefix))})")
        time.sleep(0.2)  # anything extra (duplicates, stragglers) shows up too
        return self.matching(prefix)

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def worker_settings(db, mqtt_port, **overrides):
    """postgresql.conf settings for a cluster whose worker publishes from database `db` to the
    broker on `mqtt_port`; `overrides` add or replace settings (name=value, as postgresql.conf
    spells the value, e.g. pg_mqtt_pub__queue_size=64 or {"pg_mqtt_pub.queue_size": 64})."""
    conf = {
        "pg_mqtt_pub.database": f"'{db}'",
        "pg_mqtt_pub.broker_host": "'127.0.0.1'",
        "pg_mqtt_pub.broker_port": mqtt_port,
        "pg_mqtt_pub.reconnect_interval_ms": 200,
    }
    conf.update({k.replace("__", "."): v for k, v in overrides.items()})
    return conf


@contextmanager
def scene(name, pg_port, mqtt_port, db, topic, gated=False, settings=None, resolv_conf=None,
          broker=None, subscriber=None, worker_port=None):
    """A mosquitto broker, a subscriber to `topic` on it and a cluster whose default broker it
    is, with pg_mqtt_pub installed in database `db`; everything stopped at the end. `gated`: the
    broker refuses the worker until `broker.open_gate()` (the subscriber gets in). `broker`:
    another broker, not started yet (a Broker with its own settings, a ForeignBroker);
    `subscriber`: the Subscriber's keyword arguments; `worker_port`: where the worker is pointed
    first (default `mqtt_port`; e.g. a port nobody listens on, to fill the outbox)."""
    b = broker.start() if broker else Broker(name, mqtt_port).start(gated=gated)
    s = c = None
    try:
        s = Subscriber(mqtt_port, topic, **(subscriber or {}))
        conf = worker_settings(db, worker_port or mqtt_port, **(settings or {}))
        c = Cluster(name, pg_port, conf).start(resolv_conf=resolv_conf)
        c.sql(f'CREATE DATABASE "{db}"')
        c.sql("CREATE EXTENSION pg_mqtt_pub", dbname=db)
        yield b, s, c
    finally:
        if s:
            s.close()
        if c:
            c.stop_if_running()
        b.stop_if_running()


def publish(cluster, db, rows):
    """Publish (topic, payload, qos, retain) rows from `db`, one transaction each."""
    with cluster.connect(db) as conn:
        for topic, payload, qos, retain in rows:
            conn.execute("SELECT mqtt_publish(%s, %s, %s, %s)", (topic, payload, qos, retain))


def primary_and_copy(name, ports, db, mqtt_port, standby=False):
    """A cluster with pg_mqtt_pub installed in `db` and a pg_basebackup copy of it (a clone, or
    with `standby` a streaming standby), both publishing to the broker on `mqtt_port`; both
    started. Returns (primary, copy)."""
    settings = worker_settings(db, mqtt_port)
    primary = Cluster(f"{name}-a", ports[0], settings).start()
    primary.sql(f'CREATE DATABASE "{db}"')
    primary.sql("CREATE EXTENSION pg_mqtt_pub", dbname=db)
    copy = Cluster(f"{name}-b", ports[1], settings, backup_of=primary, standby=standby).start()
    return primary, copy


def status(cluster, dbname, broker="default"):
    """`mqtt_status()`'s row for `broker`, as a dict by column name."""
    with cluster.connect(dbname) as c:
        # (qualified: some tests plant look-alike operators in the database)
        cur = c.execute("SELECT * FROM public.mqtt_status() WHERE broker_name OPERATOR(pg_catalog.=) %s", (broker,))
        row = cur.fetchone()
        return dict(zip([d.name for d in cur.description], row)) if row else None


def wait_status(cluster, dbname, pred, what, broker="default", timeout=30.0):
    """Wait (bounded) until `broker`'s `mqtt_status()` row satisfies `pred`; return that row.
    The worker changes it asynchronously (connecting, switching mode, counting)."""
    def check():
        st = status(cluster, dbname, broker)
        return st if st and pred(st) else None
    return wait_until(check, timeout, f"{broker!r} {what}")
