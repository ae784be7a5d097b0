"""A real two-node MQTT broker cluster for the tests: Aedes nodes sharing one redis-server.

Each node (tests/aedes_cluster/node.js) keeps subscriptions, retained messages and sessions in
redis (aedes-persistence-redis) and forwards publications to the others through it
(mqemitter-redis): a subscriber on node B receives what a client publishes to node A. Everything
runs on 127.0.0.1, on ports the test chooses, under one scratch directory; redis keeps nothing on
disk. The npm packages come from the cache directory scripts/deps.sh installs
tests/aedes_cluster/package-lock.json into (PG_MQTT_PUB_AEDES_DIR overrides it); a missing
dependency fails with what to run.

    with AedesCluster("failover", port(), ports(2)) as c:   # started; stopped at the end
        sub = Subscriber(c.ports[1])                         # on node B
        ...publish to c.ports[0] (node A)...
        c.pause(0); time.sleep(1); c.kill(0)                 # node A hangs, then dies
        c.start_node(0)                                      # and comes back

aedes 2.0.0-beta.1 speaks MQTT 3.1.1 and 5 (aedes 1.x refuses MQTT 5 with CONNACK return code 1).
Anonymous clients are let in, and any user name and password.
"""
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid

import paho.mqtt.client as mqtt

from harness import STARTED, scratch, wait_port, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))
NODE_JS = os.path.join(HERE, "aedes_cluster", "node.js")
LOCK = os.path.join(HERE, "aedes_cluster", "package-lock.json")


def aedes_dir():
    """Where scripts/deps.sh installs the npm packages: the cache directory keyed by the hash of
    package-lock.json (as deps.sh computes it), or PG_MQTT_PUB_AEDES_DIR."""
    if os.environ.get("PG_MQTT_PUB_AEDES_DIR"):
        return os.environ["PG_MQTT_PUB_AEDES_DIR"]
    with open(LOCK, "rb") as f:
        key = hashlib.sha256(f.read()).hexdigest()[:16]
    return os.path.join(os.environ.get("PG_MQTT_PUB_CACHE", "/var/cache/pg_mqtt_pub"), "aedes-cluster", key)


def _port_taken(p):
    try:
        socket.create_connection(("127.0.0.1", p), timeout=0.2).close()
        return True
    except OSError:
        return False


class AedesCluster:
    """Aedes nodes on `ports` (node i listens on ports[i]; names "a", "b", ...) and their
    redis-server on `redis_port`. Node i's log: `log(i)`; redis's: `<dir>/redis.log`."""

    def __init__(self, name, redis_port, ports):
        self.name = name
        self.redis_port = redis_port
        self.ports = tuple(ports)
        self.ids = [chr(ord("a") + i) for i in range(len(self.ports))]
        self.dir = scratch(f"aedes-{name}")
        self.modules = os.path.join(aedes_dir(), "node_modules")
        self.redis = None
        self.nodes = [None] * len(self.ports)
        self.paused = set()

    # -- the whole cluster -------------------------------------------------------------------

    def start(self, timeout=30.0):
        """Start redis and every node; return once each node accepts clients and a message
        published to each node reaches a subscriber on every other one."""
        self._check_dependencies()
        for p in (self.redis_port, *self.ports):
            if _port_taken(p):
                raise RuntimeError(f"port {p} is taken (a server left over from an earlier run?)")
        STARTED.append(self)
        self.redis = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.redis_port), "--save", "", "--appendonly", "no",
             "--dir", self.dir, "--daemonize", "no", "--protected-mode", "no"],
            stdout=open(os.path.join(self.dir, "redis.log"), "ab"), stderr=subprocess.STDOUT, cwd=self.dir)
        wait_port(self.redis_port, timeout)
        for i in range(len(self.ports)):
            self.start_node(i, timeout=timeout, probe=False)
        self.wait_forwarding(timeout=timeout)
        return self

    def stop(self):
        """Kill every node and redis (SIGKILL: nothing of the cluster is meant to survive)."""
        for i in range(len(self.nodes)):
            self.kill(i)
        if self.redis and self.redis.poll() is None:
            self.redis.kill()
            self.redis.wait(10)

    stop_if_running = stop  # for harness.stop_leftovers()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- one node ----------------------------------------------------------------------------

    def start_node(self, i, timeout=30.0, probe=True):
        """Start node i (again): return once it accepts clients and (with `probe`) forwards to
        and from every other running node that is not paused."""
        if self.running(i):
            raise RuntimeError(f"aedes node {self.ids[i]} is already running")
        if _port_taken(self.ports[i]):
            raise RuntimeError(f"port {self.ports[i]} is taken (a server left over from an earlier run?)")
        before = self._ready_lines(i)
        env = dict(os.environ, AEDES_CLUSTER_MODULES=self.modules)
        self.nodes[i] = proc = subprocess.Popen(
            ["node", NODE_JS, "--port", str(self.ports[i]), "--redis-port", str(self.redis_port), "--id", self.ids[i]],
            stdout=open(self.log_path(i), "ab"), stderr=subprocess.STDOUT, env=env, cwd=self.dir)

        def ready():
            if proc.poll() is not None:
                raise RuntimeError(f"aedes node {self.ids[i]} exited with {proc.returncode}:\n{self.log(i)[-2000:]}")
            return self._ready_lines(i) > before
        wait_until(ready, timeout, f"aedes node {self.ids[i]} on port {self.ports[i]} ready")
        wait_port(self.ports[i], timeout)
        if probe:
            for j in range(len(self.nodes)):
                if j != i and self._live(j):
                    self.wait_forwarding(i, j, timeout)
                    self.wait_forwarding(j, i, timeout)
        return self

    def stop_node(self, i, sig=signal.SIGTERM, timeout=10.0):
        """Send node i `sig`. SIGTERM (the default): it disconnects its clients, closes and exits.
        For a signal that ends it, wait (bounded; then SIGKILL) and return its exit code.
        A paused node gets SIGCONT after `sig`, to act on it."""
        proc = self.nodes[i]
        if not proc or proc.poll() is not None:
            return proc.returncode if proc else None
        proc.send_signal(sig)
        if sig in (signal.SIGSTOP, signal.SIGTSTP):
            self.paused.add(i)
        if sig == signal.SIGCONT:
            self.paused.discard(i)
        if sig in (signal.SIGSTOP, signal.SIGCONT, signal.SIGHUP, signal.SIGTSTP):
            return None
        self.paused.discard(i)
        proc.send_signal(signal.SIGCONT)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(10)

    def kill(self, i):
        """SIGKILL node i (a crash: its clients see their connections reset)."""
        return self.stop_node(i, signal.SIGKILL)

    def pause(self, i):
        """SIGSTOP node i: its connections stay open but nothing moves (a hung broker)."""
        self.stop_node(i, signal.SIGSTOP)

    def resume(self, i):
        self.stop_node(i, signal.SIGCONT)

    def running(self, i):
        return self.nodes[i] is not None and self.nodes[i].poll() is None

    def log_path(self, i):
        return os.path.join(self.dir, f"node-{self.ids[i]}.log")

    def log(self, i):
        try:
            with open(self.log_path(i), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    # -- checks ------------------------------------------------------------------------------

    def wait_forwarding(self, src=None, dst=None, timeout=30.0):
        """Wait (bounded) until a QoS 1 message published to node `src` reaches a subscriber on
        node `dst` (default: every ordered pair of running nodes that are not paused). The probe clients use MQTT
        3.1.1 and clean sessions on a topic of their own, and publish again every 0.2 s (a
        message published before the subscription has reached redis is not forwarded)."""
        if src is None or dst is None:
            for a in range(len(self.nodes)):
                for b in range(len(self.nodes)):
                    if a != b and self._live(a) and self._live(b):
                        self.wait_forwarding(a, b, timeout)
            return
        topic = f"aedes-cluster-probe/{uuid.uuid4().hex}"
        got = threading.Event()
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-sub-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv311)
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-pub-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv311)
        subscribed = threading.Event()
        sub.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, 1)
        sub.on_subscribe = lambda *a: subscribed.set()
        sub.on_message = lambda c, u, m: got.set()
        what = f"a message published to aedes node {self.ids[src]} reaching node {self.ids[dst]}"
        try:
            sub.connect("127.0.0.1", self.ports[dst], keepalive=10)
            sub.loop_start()
            pub.connect("127.0.0.1", self.ports[src], keepalive=10)
            pub.loop_start()
            deadline = time.time() + timeout
            if not subscribed.wait(timeout):
                raise TimeoutError(f"timed out after {timeout:g} s waiting for a subscription on aedes node {self.ids[dst]}")
            while not got.is_set():
                if time.time() >= deadline:
                    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
                pub.publish(topic, b"probe", 1)
                got.wait(0.2)
        finally:
            for c in (sub, pub):
                c.disconnect()
                c.loop_stop()

    # -- internals ---------------------------------------------------------------------------

    def _live(self, i):
        return self.running(i) and i not in self.paused

    def _ready_lines(self, i):
        return self.log(i).count(f"aedes-cluster node {self.ids[i]} ready")

    def _check_dependencies(self):
        missing = [exe for exe in ("node", "redis-server") if not shutil.which(exe)]
        if missing:
            raise RuntimeError(f"{' and '.join(missing)} not found: scripts/deps.sh installs them")
        if not os.path.isdir(os.path.join(self.modules, "aedes")):
            raise RuntimeError(f"the Aedes cluster's npm packages are missing in {self.modules}: scripts/deps.sh installs them"
                               " (on the host, for scripts/trixie.sh's root too)")
