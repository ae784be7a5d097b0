"""Prometheus: contrib/prometheus/alerts.yml passes promtool's checks and its own unit tests, and
Debian's real prometheus-postgres-exporter, given contrib/postgres_exporter/queries.yaml and a
pg_monitor role (not a superuser), exports pg_mqtt_pub_* metrics whose values follow a known
workload: messages sent, a broker killed and back, a dead letter.
"""
import math
import os
import re
import subprocess
import urllib.request

from harness import STARTED, WORK, Broker, SUB_USER, port, publish, scene, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUERIES = os.path.join(ROOT, "contrib", "postgres_exporter", "queries.yaml")
RULES_DIR = os.path.join(ROOT, "contrib", "prometheus")
EXPORTER = "/usr/bin/prometheus-postgres-exporter"
PROMTOOL = "/usr/bin/promtool"
DB = "prom"
ROLE = "prom_exporter"

# what queries.yaml promises, with the type the exporter must declare
COUNTERS = ["messages_sent", "messages_failed", "messages_expired", "dead_lettered"]
GAUGES = ["connected", "hot", "problem", "dead_letters", "outbox_pending", "outbox_bytes", "outbox_max_bytes",
          "outbox_oldest_age_seconds", "oldest_waiting_age_seconds", "inflight", "ring_waiting", "ring_used_bytes",
          "ring_size_bytes", "ring_used_ratio", "latency_p50_seconds", "latency_p99_seconds",
          "stats_reset_timestamp_seconds", "connected_since_timestamp_seconds", "problem_since_timestamp_seconds",
          "last_connected_timestamp_seconds", "last_error_timestamp_seconds", "next_attempt_timestamp_seconds"]


def tool(path):
    assert os.access(path, os.X_OK), f"{path} is missing: scripts/deps.sh installs it (Debian packages prometheus, prometheus-postgres-exporter)"
    return path


def test_alert_rules_pass_promtool_check_and_unit_tests():
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        r = subprocess.run([tool(PROMTOOL), *args], cwd=RULES_DIR, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"promtool {' '.join(args)}:\n{r.stdout}{r.stderr}"
        assert "SUCCESS" in r.stdout, r.stdout


class Exporter:
    """prometheus-postgres-exporter on a loopback port with our queries only (its own default
    metrics and collectors off, so a scrape runs just queries.yaml)."""

    def __init__(self, dsn):
        self.port = port()
        self.log = os.path.join(WORK, f"postgres-exporter-{self.port}.log")
        args = [tool(EXPORTER), f"--extend.query-path={QUERIES}", f"--web.listen-address=127.0.0.1:{self.port}",
                "--disable-default-metrics", "--disable-settings-metrics",
                "--no-collector.database", "--no-collector.bgwriter"]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DATA_SOURCE_NAME": dsn}
        self.proc = subprocess.Popen(args, env=env, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT)
        STARTED.append(self)
        # no proxy: the exporter is on loopback
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        wait_until(self.answers, 10, f"the exporter answering on 127.0.0.1:{self.port}")

    def answers(self):
        assert self.proc.poll() is None, f"the exporter exited: {self.log_text()}"
        try:
            return self.scrape_text()
        except OSError:
            return None

    def scrape_text(self):
        with self.opener.open(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
            return r.read().decode()

    def scrape(self):
        """{(name, frozenset of label pairs): value} and {name: type} of one scrape."""
        values, types = {}, {}
        for line in self.scrape_text().splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split()
                types[name] = kind
            elif line and not line.startswith("#"):
                m = re.fullmatch(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)', line)
                assert m, f"not the text format: {line!r}"
                labels = frozenset(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
                values[(m.group(1), labels)] = float(m.group(3))
        return values, types

    def metrics(self, broker="default"):
        """`broker`'s pg_mqtt_pub_* values by short name (pg_mqtt_pub_connected -> connected)."""
        values, _ = self.scrape()
        out = {}
        for (name, labels), v in values.items():
            if name.startswith("pg_mqtt_pub_") and ("broker", broker) in labels:
                out[name[len("pg_mqtt_pub_"):]] = v
        return out

    def wait(self, pred, what, timeout=30):
        """Wait (bounded) until a scrape's metrics satisfy `pred`; return them."""
        def check():
            m = self.metrics()
            return m if m and pred(m) else None
        try:
            return wait_until(check, timeout, what, interval=0.2)
        except TimeoutError as e:
            raise AssertionError(f"{e}\nlast scrape: {self.metrics()}\nexporter log (end):\n{self.log_text()[-3000:]}") from None

    def log_text(self):
        with open(self.log, errors="replace") as f:
            return f.read()

    def stop_if_running(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def test_exporter_metrics_follow_sent_messages_an_outage_and_a_dead_letter():
    mqtt_port = port()
    acl = os.path.join(WORK, f"prometheus-acl-{mqtt_port}")
    os.makedirs(WORK, exist_ok=True)
    with open(acl, "w") as f:  # the worker (anonymous) may write anywhere but prom/denied/
        f.write(f"topic write #\ntopic deny prom/denied/#\nuser {SUB_USER}\ntopic read #\n")
    os.chmod(acl, 0o644)
    settings = {"pg_mqtt_pub.queue_size": 4096, "pg_mqtt_pub.poison_max_attempts": 1, "pg_mqtt_pub.retry_base_ms": 100}
    with scene("prom", port(), mqtt_port, DB, "prom/#", settings=settings,
               broker=Broker("prom", mqtt_port, f"acl_file {acl}")) as (broker, sub, c):
        c.sql(f"CREATE ROLE {ROLE} LOGIN IN ROLE pg_monitor")
        assert c.sql(f"SELECT rolsuper FROM pg_roles WHERE rolname = '{ROLE}'") == [(False,)]
        exporter = Exporter(f"postgresql://{ROLE}@127.0.0.1:{c.port}/{DB}?sslmode=disable")
        try:
            # connected and hot; every promised metric there, with its type
            m = exporter.wait(lambda m: m.get("connected") == 1 and m.get("hot") == 1, "connected and hot")
            values, types = exporter.scrape()
            loaded = [(dict(l)["filename"], v) for (n_, l), v in values.items() if n_ == "pg_exporter_user_queries_load_error"]
            assert loaded == [(QUERIES, 0)], loaded
            assert values[("pg_exporter_last_scrape_error", frozenset())] == 0, exporter.log_text()
            for name in COUNTERS + GAUGES:
                assert name in m, f"pg_mqtt_pub_{name} missing: {sorted(m)}"
                assert types[f"pg_mqtt_pub_{name}"] == ("counter" if name in COUNTERS else "gauge"), name
            info = [dict(l) for (n, l) in values if n == "pg_mqtt_pub_broker_info"]
            assert info == [{"broker": "default", "host": "127.0.0.1", "port": str(mqtt_port), "delivery_mode": "hot",
                             "connected_node": f"127.0.0.1:{mqtt_port}", "server": f"127.0.0.1:{c.port}"}]
            assert m["problem"] == 0 and m["problem_since_timestamp_seconds"] == 0
            assert m["connected_since_timestamp_seconds"] > 0 and m["stats_reset_timestamp_seconds"] > 0
            assert m["ring_size_bytes"] == 4096 * 512
            assert m["outbox_pending"] == 0 and m["outbox_oldest_age_seconds"] == 0 and m["dead_letters"] == 0
            assert m["outbox_max_bytes"] == 1024 ** 3  # the default pg_mqtt_pub.max_outbox_size

            # N messages sent: the counter rises by exactly N; the latency becomes a number
            n, sent0 = 25, m["messages_sent"]
            publish(c, DB, [("prom/sent", f"s{i}", 1, False) for i in range(n)])
            assert len(sub.wait_for("prom/sent", n)) == n
            m = exporter.wait(lambda m: m["messages_sent"] >= sent0 + n, f"messages_sent + {n}")
            assert m["messages_sent"] == sent0 + n
            m = exporter.wait(lambda m: not math.isnan(m["latency_p99_seconds"]), "a latency")
            assert 0 <= m["latency_p50_seconds"] <= m["latency_p99_seconds"] < 10, m
            assert m["messages_sent"] == sent0 + n and m["messages_failed"] == 0

            # broker killed: disconnected, a problem, cold; what is published waits in the outbox
            broker.crash()
            m = exporter.wait(lambda m: m["connected"] == 0 and m["hot"] == 0, "disconnected and cold")
            assert m["problem"] == 1 and m["problem_since_timestamp_seconds"] > 0
            assert m["connected_since_timestamp_seconds"] == 0
            k = 15
            publish(c, DB, [("prom/outage", f"o{i}", 1, False) for i in range(k)])
            m = exporter.wait(lambda m: m["outbox_pending"] > 0, "the outbox gauge above 0")
            assert m["outbox_pending"] == k and m["outbox_bytes"] > 0
            m = exporter.wait(lambda m: m["oldest_waiting_age_seconds"] > 0 and m["outbox_oldest_age_seconds"] > 0,
                              "the waiting messages ageing")
            values, _ = exporter.scrape()
            assert [dict(l)["delivery_mode"] for (n_, l) in values if n_ == "pg_mqtt_pub_broker_info"] == ["cold"]

            # broker back: connected, outbox empty, everything delivered
            broker.restart(sub)
            m = exporter.wait(lambda m: m["connected"] == 1 and m["outbox_pending"] == 0, "connected with an empty outbox")
            assert [x.payload.decode() for x in sub.wait_for("prom/outage", k)] == [f"o{i}" for i in range(k)]
            m = exporter.wait(lambda m: m["hot"] == 1 and m["messages_sent"] >= sent0 + n + k, "hot, outbox messages counted")
            assert m["problem"] == 0 and m["problem_since_timestamp_seconds"] == 0 and m["connected_since_timestamp_seconds"] > 0
            assert m["outbox_oldest_age_seconds"] == 0 and m["dead_lettered"] == 0
            exporter.wait(lambda m: m["oldest_waiting_age_seconds"] == 0 and m["inflight"] == 0 and m["ring_waiting"] == 0,
                          "nothing waiting any more")

            # a message the broker refuses (ACL) is dead-lettered at the first attempt
            publish(c, DB, [("prom/denied/x", "no", 1, False)])
            m = exporter.wait(lambda m: m["dead_lettered"] == 1 and m["dead_letters"] == 1, "one dead letter")
            assert m["messages_failed"] >= 1

            errors = [line for line in exporter.log_text().splitlines() if "level=error" in line]
            assert not errors, "\n".join(errors)
        finally:
            exporter.stop_if_running()
