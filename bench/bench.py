"""pg_mqtt_pub benchmark: every number next to a baseline measured in the same run.

Run with `bench/run.sh` (it builds and installs first). Starts its own PostgreSQL and mosquitto
on loopback, prints a table, writes bench/out/results.json. See bench/README.md for what each
row means and the targets.
"""
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
from harness import PGBIN, SUB_PASSWORD, SUB_USER, Broker, Cluster, Subscriber, ports, wait_until  # noqa: E402

OUT = os.path.join(HERE, "out")
RAW_PUB = os.path.join(OUT, "raw_pub")
BROKER_PORT, PG_PORT = ports(2)
DB = "bench"
# BENCH_SMOKE=1: every section, tiny sizes (CI runs it so the benchmark cannot rot; its numbers
# mean nothing and nothing asserts them).
SMOKE = os.environ.get("BENCH_SMOKE") == "1"
TRIGGER_SECONDS = float(os.environ.get("BENCH_TRIGGER_SECONDS", "0.3" if SMOKE else "4"))
E2E_COUNT = int(os.environ.get("BENCH_E2E_COUNT", "10000" if SMOKE else "200000"))
PGBENCH_SECONDS = 1 if SMOKE else 10
LATENCY_SECONDS = 1 if SMOKE else 10
DRAIN_COUNT = 10_000 if SMOKE else 100_000
RESULTS = os.environ.get("BENCH_RESULTS", os.path.join(OUT, "results.json"))
PAYLOAD = 64
# BENCH_SECTIONS=trigger,concurrency,... runs a subset (default: all)
SECTIONS = set(os.environ.get("BENCH_SECTIONS", "trigger,rowcost,concurrency,e2e,cpu,latency,drain,memory,rights,databases").split(","))
ROWCOST_ROUNDS = 2 if SMOKE else 5
ROWCOST_BATCHES = 3 if SMOKE else 20  # 1,000-row INSERT ... SELECT statements per variant and round
CPU_COUNT = int(os.environ.get("BENCH_CPU_COUNT", "10000" if SMOKE else "200000"))
DATABASES = 10
# Messages per transaction in the hot-path rows: a transaction may hold at most 1/8 of the ring
# (8,192 slots at the default queue_size) hot; a bigger one goes through the outbox (txn.rs,
# MAX_PROMISE_SHARE), which the e2e and CPU rows used to measure unnoticed with 10,000.
SQL_BATCH = 5000
DB_COUNT = 20_000 if SMOKE else 200_000  # messages per run of the databases section
results = {"machine": {}, "rows": {}}


def row(name, value, unit, note=""):
    results["rows"][name] = {"value": value, "unit": unit, "note": note}
    shown = f"{value:>12,.2f}" if unit in ("x", "us", "us/msg", "ms") else f"{value:>12,.1f}"
    print(f"  {name:<46} {shown} {unit:<10} {note}", flush=True)


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    results["machine"] = {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
                          "postgresql": subprocess.check_output([f"{PGBIN}/postgres", "--version"], text=True).strip()}
    print(f"machine: {cpu}, {os.cpu_count()} cores; {results['machine']['postgresql']}")


def mode(c):
    return c.sql("SELECT delivery_mode FROM mqtt_status()", dbname=DB)[0][0]


TRIGGERS = {
    "a_no_trigger": None,
    "b_row_to_json": "PERFORM row_to_json(NEW)::text;",
    "c_pg_notify": "PERFORM pg_notify('bench', row_to_json(NEW)::text);",
    "d_outbox_insert": "INSERT INTO bench_outbox (payload) VALUES (row_to_json(NEW)::text);",
    "e_mqtt_publish_hot": "PERFORM mqtt_publish('bench/trigger', row_to_json(NEW)::text);",
    # the helper's compiled row trigger, default payload (row + metadata), QoS 0 like (e)
    "g_event_trigger_hot": "SELECT mqtt_trigger_event_setup('bench_rows', 'bench/event', '{INSERT}', qos := 0)",
    "f_mqtt_publish_cold": "PERFORM mqtt_publish('bench/trigger', row_to_json(NEW)::text);",
}


def trigger_cost(c, broker):
    print("\n1. trigger cost: INSERT ... SELECT generate_series(1, 1000) with an AFTER INSERT row trigger")
    rates = {}
    with c.connect(DB) as conn:
        conn.execute("CREATE TABLE bench_rows (id int, name text, value numeric, at timestamptz)")
        conn.execute("CREATE TABLE bench_outbox (id bigserial PRIMARY KEY, payload text, created_at timestamptz DEFAULT now())")
        for name, body in TRIGGERS.items():
            conn.execute("DROP TRIGGER IF EXISTS bench_trg ON bench_rows")
            conn.execute("SELECT mqtt_trigger_remove('bench_rows')")
            if name.startswith("g_"):
                conn.execute(body)
            elif body:
                conn.execute(f"CREATE OR REPLACE FUNCTION bench_fn() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {body} RETURN NEW; END $$")
                conn.execute("CREATE TRIGGER bench_trg AFTER INSERT ON bench_rows FOR EACH ROW EXECUTE FUNCTION bench_fn()")
            if name == "f_mqtt_publish_cold":
                broker.kill()
                wait_until(lambda: mode(c) == "cold", 20, "cold")
            n, t0 = 0, time.time()
            while time.time() - t0 < TRIGGER_SECONDS:
                conn.execute("INSERT INTO bench_rows SELECT i, 'name-' || i, i * 1.5, now() FROM generate_series(1, 1000) i")
                n += 1000
            rates[name] = n / (time.time() - t0)
            row(f"{name} (rows/s)", rates[name], "rows/s")
            conn.execute("TRUNCATE bench_rows, bench_outbox")
            if name in ("e_mqtt_publish_hot", "g_event_trigger_hot"):
                wait_until(lambda: c.sql("SELECT ring_used_bytes FROM mqtt_status()", dbname=DB)[0][0] == 0, 60, "ring drained")
        conn.execute("DROP TRIGGER IF EXISTS bench_trg ON bench_rows")
        conn.execute("SELECT mqtt_trigger_remove('bench_rows')")
        conn.execute("TRUNCATE mqtt_pub.outbox")
    broker.restart()
    wait_until(lambda: mode(c) == "hot", 30, "hot again")
    b = rates["b_row_to_json"]
    row("ratio e/b (target >= 0.90)", rates["e_mqtt_publish_hot"] / b, "x")
    row("ratio e/c (target >= 1.25)", rates["e_mqtt_publish_hot"] / rates["c_pg_notify"], "x")
    row("ratio g/e (target >= 0.90)", rates["g_event_trigger_hot"] / rates["e_mqtt_publish_hot"], "x")
    row("ratio f/d (target >= 0.90)", rates["f_mqtt_publish_cold"] / rates["d_outbox_insert"], "x")
    row("ratio c/b, d/b (reference)", rates["c_pg_notify"] / b, "x", f"d/b = {rates['d_outbox_insert'] / b:.2f}")


# Cost per row of a trigger (issue #16): the same 1,000-row INSERT ... SELECT with each of these
# AFTER INSERT row triggers, minus the same INSERT without a trigger.
ROWCOST = {
    "no trigger": None,
    "row_to_json": "PERFORM row_to_json(NEW)::text;",
    "pg_notify": "PERFORM pg_notify('bench', row_to_json(NEW)::text);",
    "outbox INSERT": "INSERT INTO rc_outbox (payload) VALUES (row_to_json(NEW)::text);",
    "mqtt_publish (PL/pgSQL)": "PERFORM mqtt_publish('bench/rowcost', row_to_json(NEW)::text);",
    "mqtt_publish with properties (PL/pgSQL)": "PERFORM mqtt_publish('bench/rowcost', row_to_json(NEW)::text, "
                                               "content_type := 'application/json', message_expiry := '1 hour', "
                                               "user_properties := ARRAY[['table', 'rc_rows'], ['op', 'insert']]);",
    "helper trigger": "helper",
}


def per_row_times(c, conn, variants, rounds, drain=True):
    """Median time per row of each trigger variant (ROWCOST), in interleaved rounds. `drain`:
    wait until the worker has delivered everything before the next variant (its delivery must
    not overlap another variant's measurement)."""
    per_row = {k: [] for k in variants}
    for _ in range(rounds):
        for name in variants:
            body = ROWCOST[name]
            if body == "helper":
                conn.execute("SELECT mqtt_trigger_event_setup('rc_rows', 'bench/rowcost', '{INSERT}', qos := 0)")
            elif body:
                conn.execute(f"CREATE OR REPLACE FUNCTION rc_fn() RETURNS trigger LANGUAGE plpgsql AS "
                             f"$$ BEGIN {body} RETURN NEW; END $$")
                conn.execute("CREATE TRIGGER rc_trg AFTER INSERT ON rc_rows FOR EACH ROW EXECUTE FUNCTION rc_fn()")
            times = []
            for _ in range(ROWCOST_BATCHES):
                t0 = time.perf_counter()
                conn.execute("INSERT INTO rc_rows SELECT i, 'name-' || i, i * 1.5, now() FROM generate_series(1, 1000) i")
                times.append(time.perf_counter() - t0)
            per_row[name].append(statistics.median(times) * 1e6 / 1000)
            conn.execute("DROP TRIGGER IF EXISTS rc_trg ON rc_rows")
            conn.execute("SELECT mqtt_trigger_remove('rc_rows')")
            conn.execute("TRUNCATE rc_rows, rc_outbox")
            if drain:
                ring_drained(c)
    return per_row


def ring_drained(c):
    wait_until(lambda: c.sql("SELECT ring_used_bytes FROM mqtt_status()", dbname=DB)[0][0] == 0, 60, "ring drained")


def row_cost(c, broker):
    print(f"\n1b. cost per row of a trigger: microseconds per row above the same INSERT without one "
          f"({ROWCOST_ROUNDS} interleaved rounds x {ROWCOST_BATCHES} statements of 1,000 rows; medians; "
          "broker up, no subscriber)")
    with c.connect(DB) as conn:
        conn.execute("CREATE TABLE rc_rows (id int, name text, value numeric, at timestamptz)")
        conn.execute("CREATE TABLE rc_outbox (id bigserial PRIMARY KEY, payload text, created_at timestamptz DEFAULT now())")
        per_row = per_row_times(c, conn, list(ROWCOST), ROWCOST_ROUNDS)
        # The same with delivery paused: the broker stopped (SIGSTOP), the messages wait in the
        # ring (a few MB) and the worker and mosquitto take no CPU meanwhile — what the trigger
        # costs the backend alone, against pg_notify, which delivers nothing without a listener.
        broker.kill(signal.SIGSTOP)
        try:
            paused = per_row_times(c, conn, ["no trigger", "pg_notify", "mqtt_publish (PL/pgSQL)"], ROWCOST_ROUNDS, drain=False)
        finally:
            broker.kill(signal.SIGCONT)
        ring_drained(c)
        conn.execute("DROP TABLE rc_rows, rc_outbox")
    base = statistics.median(per_row["no trigger"])
    row("time per row without a trigger", base, "us", "the baseline")
    cost = {k: statistics.median(v) - base for k, v in per_row.items() if k != "no trigger"}
    for k, v in cost.items():
        row(f"cost per row: {k}", v, "us")
    row("cost mqtt_publish / pg_notify (target <= 1.0)", cost["mqtt_publish (PL/pgSQL)"] / cost["pg_notify"], "x")
    row("cost helper trigger / pg_notify (target <= 0.6)", cost["helper trigger"] / cost["pg_notify"], "x")
    row("cost with properties / without (mqtt_publish)",
        cost["mqtt_publish with properties (PL/pgSQL)"] / cost["mqtt_publish (PL/pgSQL)"], "x",
        "content_type, message_expiry, 2 user properties")
    pbase = statistics.median(paused["no trigger"])
    pcost = {k: statistics.median(v) - pbase for k, v in paused.items() if k != "no trigger"}
    row("cost mqtt_publish / pg_notify, delivery paused", pcost["mqtt_publish (PL/pgSQL)"] / pcost["pg_notify"], "x",
        f"broker stopped: {pcost['mqtt_publish (PL/pgSQL)']:.2f} / {pcost['pg_notify']:.2f} us")


def cpu_ticks(pid):
    """utime + stime of a process, in seconds (/proc/<pid>/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def cpu_per_message(c, broker):
    n = CPU_COUNT
    print(f"\n3b. CPU per delivered message: utime + stime over {n:,} messages of {PAYLOAD} bytes, "
          "microseconds per message")
    worker = c.sql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_mqtt_pub worker'")[0][0]
    mosq = broker.proc.pid
    for qos in (0, 1):
        # the bare libmosquitto publisher (a child process: its CPU from getrusage once reaped)
        sub = count_subscriber(f"bench/cpuraw{qos}", qos, n)
        m0, p0 = cpu_ticks(mosq), children_cpu()
        subprocess.run([RAW_PUB, "127.0.0.1", str(BROKER_PORT), f"bench/cpuraw{qos}", str(qos), str(n), str(PAYLOAD), "100"],
                       check=True, capture_output=True)
        raw = (children_cpu() - p0) / n * 1e6
        sub.wait(300)
        raw_mosq = (cpu_ticks(mosq) - m0) / n * 1e6
        be, wk, mq = sql_cpu(c, worker, mosq, f"bench/cpusql{qos}", qos, n)
        row(f"QoS {qos}: CPU bare publisher", raw, "us/msg", f"mosquitto {raw_mosq:.2f}")
        row(f"QoS {qos}: CPU worker", wk, "us/msg", f"backend {be:.2f}, mosquitto {mq:.2f}")
        row(f"QoS {qos}: CPU worker / bare publisher (target <= 1.0)", wk / raw if raw else float("nan"), "x")
        if qos == 0:
            # what the message id (a user property on every message) and explicit properties cost
            _, noid, _ = sql_cpu(c, worker, mosq, "bench/cpunoid", 0, n, setting="SET pg_mqtt_pub.message_id = off")
            _, props, _ = sql_cpu(c, worker, mosq, "bench/cpuprops", 0, n,
                                  args=", content_type := 'text/plain', user_properties := ARRAY[['a', 'b'], ['c', 'd']]")
            row("QoS 0: CPU worker without message id", noid, "us/msg", f"the id costs {wk - noid:.2f} us/msg")
            row("QoS 0: CPU worker with properties", props, "us/msg", "content_type and 2 user properties, plus the id")


def sql_cpu(c, worker, mosq, topic, qos, n, setting=None, args=""):
    """CPU per message of the publishing backend, the worker and mosquitto for n messages
    published from SQL to `topic` and received by a subscriber."""
    sub = count_subscriber(topic, qos, n)
    with c.connect(DB) as conn:
        conn.execute("SET pg_mqtt_pub.publish_timeout_ms = 60000")
        if setting:
            conn.execute(setting)
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        b0, w0, m0 = cpu_ticks(backend), cpu_ticks(worker), cpu_ticks(mosq)
        for _ in range(max(1, n // SQL_BATCH)):
            conn.execute(f"SELECT mqtt_publish('{topic}', repeat('p', {PAYLOAD}), {qos}{args}) "
                         f"FROM generate_series(1, {min(n, SQL_BATCH)})")
        sub.wait(600)
        wait_until(lambda: c.sql("SELECT ring_used_bytes, inflight FROM mqtt_status()", dbname=DB)[0] == (0, 0), 60, "drained")
        return tuple((cpu_ticks(p) - t) / n * 1e6 for p, t in ((backend, b0), (worker, w0), (mosq, m0)))


def concurrency(c):
    print(f"\n2. concurrency: pgbench, 8 clients, single-row INSERT transactions, {PGBENCH_SECONDS} s each")
    with c.connect(DB) as conn:
        conn.execute("CREATE TABLE bench_tx (id bigserial, v float8, at timestamptz DEFAULT now())")
        conn.execute("CREATE OR REPLACE FUNCTION bench_tx_fn() RETURNS trigger LANGUAGE plpgsql AS "
                     "$$ BEGIN PERFORM mqtt_publish('bench/tx', row_to_json(NEW)::text); RETURN NEW; END $$")
        conn.execute("CREATE OR REPLACE FUNCTION bench_tx_floor() RETURNS trigger LANGUAGE plpgsql AS "
                     "$$ BEGIN PERFORM row_to_json(NEW)::text; RETURN NEW; END $$")
    script = os.path.join(OUT, "insert.sql")
    with open(script, "w") as f:
        f.write("INSERT INTO bench_tx (v) VALUES (random());\n")
    os.chmod(script, 0o644)
    tps = {}
    for label, fn in (("without trigger", None), ("with row_to_json-only trigger", "bench_tx_floor"),
                      ("with publish trigger", "bench_tx_fn"), ("with mqtt_trigger_event_setup trigger", "helper")):
        with c.connect(DB) as conn:
            conn.execute("DROP TRIGGER IF EXISTS bench_tx_trg ON bench_tx")
            conn.execute("SELECT mqtt_trigger_remove('bench_tx')")
            if fn == "helper":
                conn.execute("SELECT mqtt_trigger_event_setup('bench_tx', 'bench/tx', '{INSERT}', qos := 0)")
            elif fn:
                conn.execute(f"CREATE TRIGGER bench_tx_trg AFTER INSERT ON bench_tx FOR EACH ROW EXECUTE FUNCTION {fn}()")
            conn.execute("TRUNCATE bench_tx")
        out = subprocess.run([f"{PGBIN}/pgbench", "-n", "-h", "127.0.0.1", "-p", str(PG_PORT), "-U", "postgres",
                              "-c", "8", "-j", "2", "-T", str(PGBENCH_SECONDS), "-f", script, DB], capture_output=True, text=True, check=True).stdout
        tps[label] = float(next(l for l in out.splitlines() if l.startswith("tps")).split("=")[1].split()[0])
        row(f"TPS {label}", tps[label], "tps")
    row("ratio with/without (target >= 0.90)", tps["with publish trigger"] / tps["without trigger"], "x")
    row("ratio with publish / with row_to_json-only", tps["with publish trigger"] / tps["with row_to_json-only trigger"], "x",
        "the cost of publishing itself")
    row("ratio helper trigger / without (target >= 0.90)",
        tps["with mqtt_trigger_event_setup trigger"] / tps["without trigger"], "x", "row + metadata, compiled")
    with c.connect(DB) as conn:
        conn.execute("SELECT mqtt_trigger_remove('bench_tx')")


# The broker logs each SUBSCRIBE (and nothing per message), so a subscriber is known to be ready.
BROKER_CONF = ("log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
               "log_type subscribe\n")
BROKER_LOG = []  # the bench broker's log file, set in main()


def count_subscriber(topic, qos, n):
    """mosquitto_sub that exits after n messages (C; fast enough not to be the bottleneck), once
    the broker has its subscription: a message published before that would reach nobody."""
    def subscribed():
        with open(BROKER_LOG[0], errors="replace") as f:
            return sum(1 for line in f if line.rstrip().endswith(f" {qos} {topic}"))
    before = subscribed()
    p = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(BROKER_PORT), "-V", "5", "-q", str(qos),
                          "-t", topic, "-C", str(n), "-u", SUB_USER, "-P", SUB_PASSWORD],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: subscribed() > before or p.poll() is not None, 30, f"mosquitto_sub subscribed to {topic}")
    if p.poll() is not None:
        raise RuntimeError(f"mosquitto_sub for {topic} exited with {p.returncode}")
    return p


def e2e(c):
    print(f"\n3. end to end: {E2E_COUNT:,} messages of {PAYLOAD} bytes until a subscriber has them all")
    ratio = {}
    for qos in (0, 1, 2):
        # raw libmosquitto publisher
        sub = count_subscriber(f"bench/raw{qos}", qos, E2E_COUNT)
        t0 = time.time()
        subprocess.run([RAW_PUB, "127.0.0.1", str(BROKER_PORT), f"bench/raw{qos}", str(qos), str(E2E_COUNT), str(PAYLOAD), "100"],
                       check=True, capture_output=True)
        sub.wait(300)
        raw = E2E_COUNT / (time.time() - t0)
        # from SQL, in transactions of SQL_BATCH
        sub = count_subscriber(f"bench/sql{qos}", qos, E2E_COUNT)
        t0 = time.time()
        with c.connect(DB) as conn:
            conn.execute("SET pg_mqtt_pub.publish_timeout_ms = 60000")  # wait for ring space, do not spill
            for _ in range(E2E_COUNT // SQL_BATCH):
                conn.execute(f"SELECT mqtt_publish('bench/sql{qos}', repeat('p', {PAYLOAD}), {qos}) FROM generate_series(1, {SQL_BATCH})")
        sub.wait(600)
        sql = E2E_COUNT / (time.time() - t0)
        ratio[qos] = sql / raw
        row(f"QoS {qos}: raw libmosquitto publisher", raw, "msg/s")
        row(f"QoS {qos}: from SQL via pg_mqtt_pub", sql, "msg/s",
            f"ratio {ratio[qos]:.2f} (target >= {0.8 if qos < 2 else 0.7})")
        results["rows"][f"raw_qos{qos}_rate"] = {"value": raw, "unit": "msg/s"}
    return ratio


def worker_rss(c):
    pid = c.sql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_mqtt_pub worker'")[0][0]
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("RssAnon"):  # private memory (VmRSS also counts touched shared memory)
            return int(line.split()[1]) / 1024


def paced(send):
    """Call send(i) about 1,000 times a second for LATENCY_SECONDS; returns {str(i): when it
    returned}."""
    sent = {}
    t_end = time.time() + LATENCY_SECONDS
    i = 0
    while time.time() < t_end:
        send(i)
        sent[str(i)] = t = time.time()
        i += 1
        time.sleep(max(0.0, 0.001 - (time.time() - t)))
    return sent


def latencies(topic, publish):
    """Publish a paced stream with `publish(i)` (payload str(i)) to `topic`; sorted milliseconds
    from the call's return to receipt at a subscriber."""
    s = Subscriber(BROKER_PORT, topic + "/#")
    try:
        sent = paced(publish)
        got = s.wait_for(topic + "/", len(sent), timeout=30)
    finally:
        s.close()
    return sorted((m.at - sent[m.payload.decode()]) * 1000 for m in got)


def mqtt_packet(first, body):
    n, length = len(body), b""
    while True:
        length += bytes([n % 128 | (0x80 if n >= 128 else 0)])
        n //= 128
        if not n:
            return bytes([first]) + length + body


def mqtt_str(b):
    return len(b).to_bytes(2, "big") + b


def latency(c):
    print(f"\n4. latency: ~1,000 messages/s for {LATENCY_SECONDS} s, COMMIT to receipt at a subscriber")
    with c.connect(DB) as conn:
        # autocommit: the statement's end is the COMMIT
        lat = latencies("bench/lat", lambda i: conn.execute("SELECT mqtt_publish('bench/lat/x', %s, 1)", (str(i),)))
    # The floor: the same stream written by a bare client — a TCP socket with MQTT packets
    # written by hand, nothing in between — so what remains is the broker and the subscriber.
    import socket
    sock = socket.create_connection(("127.0.0.1", BROKER_PORT))
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(mqtt_packet(0x10, mqtt_str(b"MQTT") + bytes([4, 2, 0, 60]) + mqtt_str(b"bench-floor")))
        assert sock.recv(4)[:2] == b"\x20\x02", "CONNACK"
        # QoS 1 like the rows above; the PUBACKs are left in the socket's receive buffer
        floor = latencies("bench/floor", lambda i: sock.sendall(mqtt_packet(
            0x32, mqtt_str(b"bench/floor/x") + (i % 65535 + 1).to_bytes(2, "big") + str(i).encode())))
    finally:
        sock.close()
    p50, floor50 = statistics.median(lat), statistics.median(floor)
    row("latency p50 (target <= 1 ms)", p50, "ms", f"{len(lat):,} messages")
    row("latency p99 (target <= 5 ms)", lat[int(len(lat) * 0.99)], "ms")
    row("latency max", lat[-1], "ms")
    row("latency floor p50: bare client, same broker and subscriber", floor50, "ms", f"{len(floor):,} messages")
    row("latency floor p99", floor[int(len(floor) * 0.99)], "ms")
    row("latency p50 above the floor (pg_mqtt_pub's share)", p50 - floor50, "ms")


def outage_drain(c, broker, raw_qos1):
    n = DRAIN_COUNT
    print(f"\n5. outage drain: {n:,} QoS 1 messages in the outbox, then the broker comes back")
    broker.kill()
    wait_until(lambda: mode(c) == "cold", 20, "cold")
    with c.connect(DB) as conn:
        for _ in range(n // 10000):
            conn.execute(f"SELECT mqtt_publish('bench/drain', repeat('p', {PAYLOAD}), 1) FROM generate_series(1, 10000)")
    broker.start(gated=True)  # the worker is refused until the subscriber is in
    sub = count_subscriber("bench/drain", 1, n)
    opened = time.time()
    broker.write_conf(gated=False)
    broker.proc.send_signal(signal.SIGHUP)
    # the drain starts when the worker is connected (its reconnect backoff is reported apart)
    wait_until(lambda: c.sql("SELECT connected FROM mqtt_status()", dbname=DB)[0][0], 60, "connected", interval=0.005)
    t0 = time.time()
    row("reconnect delay after the broker came back", (t0 - opened) * 1000, "ms", "reconnect backoff")
    sub.wait(600)
    wait_until(lambda: mode(c) == "hot", 60, "hot")
    rate = n / (time.time() - t0)
    row("drain rate", rate, "msg/s", f"ratio to raw QoS 1 {rate / raw_qos1:.2f} (target >= 0.70)")


def memory(c):
    print("\n6. memory")
    size = c.sql("SELECT allocated_size FROM pg_shmem_allocations WHERE name = 'pg_mqtt_pub'")[0][0]
    row("shared memory at default settings (<= 64 MB)", size / 2**20, "MB")


RIGHTS_ROUNDS = 1 if SMOKE else 7
RIGHTS_BATCHES = 2 if SMOKE else 9


def rights_cost(c):
    """Section 10: the per-call cost of topic rights (ADR-014). A role with EXECUTE (not exempt)
    publishes QoS 0 in statements of 1,000 calls; the broker has no right (unrestricted), one
    right that matches, or 1,000 rights of that role with the matching one last (the worst case
    of the per-call match). Interleaved rounds, medians; the spread is the 0-rights rounds'."""
    print(f"\n10. topic rights: microseconds per mqtt_publish call by a non-superuser, with 0, 1 and 1,000 rights "
          f"({RIGHTS_ROUNDS} interleaved rounds x {RIGHTS_BATCHES} statements of 1,000 calls; medians)")
    sig = "text, text, integer, boolean, text, text, interval, text, bytea, text[], integer"
    c.sql("CREATE ROLE bench_app", dbname=DB)
    c.sql(f"GRANT EXECUTE ON FUNCTION mqtt_publish({sig}) TO bench_app", dbname=DB)
    variants = {"0 rights": 0, "1 right": 1, "1,000 rights": 1000}
    per_call = {k: [] for k in variants}
    with c.connect(DB) as admin, c.connect(DB) as conn:
        conn.execute("SET ROLE bench_app")
        for _ in range(RIGHTS_ROUNDS):
            for name, n in variants.items():
                admin.execute("SELECT mqtt_pub.mqtt_revoke('bench_app', 'default')")
                admin.execute("SELECT mqtt_pub.mqtt_grant('bench_app', 'default', 'bench/other' || i || '/#') "
                              "FROM generate_series(1, %s) i", (n - 1,))
                if n:
                    admin.execute("SELECT mqtt_pub.mqtt_grant('bench_app', 'default', 'bench/rights/#')")
                conn.execute("SELECT mqtt_publish('bench/rights/x', 'p')")  # the cache is loaded here
                times = []
                for _ in range(RIGHTS_BATCHES):
                    t0 = time.perf_counter()
                    conn.execute(f"SELECT mqtt_publish('bench/rights/x', repeat('p', {PAYLOAD})) FROM generate_series(1, 1000)")
                    times.append(time.perf_counter() - t0)
                per_call[name].append(statistics.median(times) * 1e6 / 1000)
                ring_drained(c)
        admin.execute("SELECT mqtt_pub.mqtt_revoke('bench_app', 'default')")
    base = statistics.median(per_call["0 rights"])
    spread = (max(per_call["0 rights"]) - min(per_call["0 rights"])) / base
    for name in variants:
        row(f"mqtt_publish per call, {name}", statistics.median(per_call[name]), "us")
    row("1 right / 0 rights (target: within the 0-rights spread)", statistics.median(per_call["1 right"]) / base, "x",
        f"0-rights rounds spread {spread * 100:.1f} %")
    row("1,000 rights / 0 rights (measured, no target)", statistics.median(per_call["1,000 rights"]) / base, "x",
        "the matching right is the last of 1,000 of this role")


def databases():
    """Section 9: ten databases publishing at once against one, on a cluster of its own where
    every database publishes (max_databases = 10, each with a share of the ring). Every message
    is QoS 1, 64 bytes, in transactions of 1,000, until one subscriber has them all."""
    print(f"\n9. databases: {DB_COUNT:,} QoS 1 messages from 1 database, then from {DATABASES} at once")
    pg_port, = ports(1)
    c = Cluster("bench-dbs", pg_port, {
        "pg_mqtt_pub.database": "''",
        "pg_mqtt_pub.max_databases": DATABASES,
        "pg_mqtt_pub.queue_size": 131072,
        "max_worker_processes": DATABASES + 4,
        "pg_mqtt_pub.broker_host": "'127.0.0.1'",
        "pg_mqtt_pub.broker_port": BROKER_PORT,
        "max_connections": 50,
        "shared_buffers": "'256MB'",
        "synchronous_commit": "off",
    }).start()
    try:
        names = [f"bench_db{i}" for i in range(DATABASES)]
        for db in names:
            c.sql(f"CREATE DATABASE {db}")
            c.sql("CREATE EXTENSION pg_mqtt_pub", dbname=db)
        for db in names:
            wait_until(lambda: c.sql("SELECT delivery_mode FROM mqtt_status()", dbname=db)[0][0] == "hot", 30, f"{db} hot")

        def run(dbs, tag):
            sub = count_subscriber(f"bench/{tag}/#", 1, DB_COUNT)
            per = DB_COUNT // len(dbs)

            def one(db):
                with c.connect(db) as conn:
                    conn.execute("SET pg_mqtt_pub.publish_timeout_ms = 60000")
                    for _ in range(per // 1000):
                        conn.execute(f"SELECT mqtt_publish('bench/{tag}/{db}', repeat('p', {PAYLOAD}), 1) FROM generate_series(1, 1000)")
            t0 = time.time()
            threads = [threading.Thread(target=one, args=(db,)) for db in dbs]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            sub.wait(600)
            return DB_COUNT / (time.time() - t0)

        one_db = run(names[:1], "one")
        ten = run(names, "ten")
        row("1 database publishing", one_db, "msg/s")
        row(f"{DATABASES} databases publishing at once", ten, "msg/s", f"ratio {ten / one_db:.2f} (measured, no target)")
    finally:
        c.stop()


def main():
    os.makedirs(OUT, exist_ok=True)
    machine()
    broker = Broker("bench", BROKER_PORT, BROKER_CONF).start()
    BROKER_LOG.append(broker.log)
    try:
        c = Cluster("bench", PG_PORT, {
            "pg_mqtt_pub.database": f"'{DB}'",
            "pg_mqtt_pub.broker_host": "'127.0.0.1'",
            "pg_mqtt_pub.broker_port": BROKER_PORT,
            "pg_mqtt_pub.reconnect_interval_ms": 200,
            "max_connections": 50,
            "shared_buffers": "'256MB'",
            "synchronous_commit": "off",
        }).start()
    except BaseException:
        broker.stop()  # a failed start must not leave the broker holding its port
        raise
    try:
        c.sql(f"CREATE DATABASE {DB}")
        c.sql("CREATE EXTENSION pg_mqtt_pub", dbname=DB)
        wait_until(lambda: mode(c) == "hot", 20, "hot")
        if "trigger" in SECTIONS:
            trigger_cost(c, broker)
        if "rowcost" in SECTIONS:
            row_cost(c, broker)
        if "concurrency" in SECTIONS:
            concurrency(c)
        if "e2e" in SECTIONS:
            e2e(c)
            rss_200k = worker_rss(c)
            with c.connect(DB) as conn:
                conn.execute("SET pg_mqtt_pub.publish_timeout_ms = 60000")
                for _ in range(E2E_COUNT // SQL_BATCH):
                    conn.execute(f"SELECT mqtt_publish('bench/more', repeat('p', {PAYLOAD}), 1) FROM generate_series(1, {SQL_BATCH})")
            wait_until(lambda: c.sql("SELECT ring_used_bytes, inflight FROM mqtt_status()", dbname=DB)[0] == (0, 0), 120, "drained")
        if "cpu" in SECTIONS:
            cpu_per_message(c, broker)
        if "latency" in SECTIONS:
            latency(c)
        if "drain" in SECTIONS and "e2e" in SECTIONS:
            outage_drain(c, broker, results["rows"]["raw_qos1_rate"]["value"])
        if "memory" in SECTIONS:
            memory(c)
        if "rights" in SECTIONS:
            rights_cost(c)
        if "e2e" in SECTIONS:
            row("worker private memory after 200k messages", rss_200k, "MB")
            row("worker private memory at the end (400k+ msgs)", worker_rss(c), "MB")
    except BaseException:
        c.stop()
        broker.stop()
        raise
    c.stop()
    try:
        if "databases" in SECTIONS:
            databases()
    finally:
        broker.stop()
    with open(RESULTS, "w") as f:
        json.dump(results, f, indent=2, default=str)
    print(f"\nwritten: {RESULTS}")


if __name__ == "__main__":
    main()
