"""Where the time goes: `perf record -g` of the publishing backend, the worker and mosquitto
during one phase of the benchmark, summarised per process (bench/out/profile-<phase>.txt).

    bench/profile.sh [phase ...]     # phases: publish, helper, notify, none, deliver0, deliver1,
                                     #         pgbench-none, pgbench-helper

publish/helper/notify/none: 1,000-row INSERT ... SELECT statements into a table with the PL/pgSQL
mqtt_publish trigger, the helper's compiled trigger, a pg_notify trigger, or none (what
bench.py's "cost per row" measures). deliver0/deliver1: SELECT mqtt_publish(...) FROM
generate_series in transactions of 10,000 at QoS 0/1 with a subscriber (what its "CPU per
delivered message" measures). pgbench-*: 8 pgbench clients inserting one row per transaction,
without a trigger or with the helper's, recorded system-wide (every process on the machine).
"""
import os
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
from harness import PGBIN, SUB_PASSWORD, SUB_USER, Broker, Cluster, ports, wait_until  # noqa: E402

OUT = os.path.join(HERE, "out")
BROKER_PORT, PG_PORT = ports(2)
DB = "prof"
SECONDS = float(os.environ.get("PROFILE_SECONDS", "6"))
TRIGGERS = {
    "publish": "CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
               "PERFORM mqtt_publish('prof/t', row_to_json(NEW)::text); RETURN NEW; END $$; "
               "CREATE TRIGGER t AFTER INSERT ON r FOR EACH ROW EXECUTE FUNCTION f()",
    "notify": "CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
              "PERFORM pg_notify('prof', row_to_json(NEW)::text); RETURN NEW; END $$; "
              "CREATE TRIGGER t AFTER INSERT ON r FOR EACH ROW EXECUTE FUNCTION f()",
    "helper": "SELECT mqtt_trigger_event_setup('r', 'prof/e', '{INSERT}', qos := 0)",
    "none": None,
}


def record(pids, name, work):
    data = os.path.join(OUT, f"profile-{name}.data")
    target = ["-a"] if pids is None else ["-p", ",".join(map(str, pids))]
    p = subprocess.Popen(["perf", "record", "-g", "-F", "2000", "-o", data, *target],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    work()
    p.send_signal(2)
    p.wait()
    with open(os.path.join(OUT, f"profile-{name}.txt"), "w") as f:
        for sort in ("comm", "pid", "comm,dso,sym"):
            f.write(subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", sort, "--stdio",
                                    "-g", "none", "--percent-limit", "0.7"],
                                   capture_output=True, text=True).stdout)
    print(f"written: {OUT}/profile-{name}.txt")


def pgbench(c, phase):
    with c.connect(DB) as conn:
        conn.execute("DROP TABLE IF EXISTS tx")
        conn.execute("CREATE TABLE tx (id bigserial, v float8, at timestamptz DEFAULT now())")
        if phase == "pgbench-helper":
            conn.execute("SELECT mqtt_trigger_event_setup('tx', 'prof/tx', '{INSERT}', qos := 0)")
    script = os.path.join(OUT, "profile-insert.sql")
    with open(script, "w") as f:
        f.write("INSERT INTO tx (v) VALUES (random());\n")
    os.chmod(script, 0o644)

    def work():
        r = subprocess.run([f"{PGBIN}/pgbench", "-n", "-h", "127.0.0.1",
                            "-p", str(PG_PORT), "-U", "postgres", "-c", "8", "-j", "2", "-T", str(int(SECONDS)),
                            "-f", script, DB], capture_output=True, text=True)
        print(next((l for l in r.stdout.splitlines() if l.startswith("tps")), r.stdout[-500:] + r.stderr[-500:]))
    record(None, phase, work)


def main(phases):
    os.makedirs(OUT, exist_ok=True)
    broker = Broker("prof", BROKER_PORT).start()
    c = Cluster("prof", PG_PORT, {"pg_mqtt_pub.database": f"'{DB}'", "pg_mqtt_pub.broker_host": "'127.0.0.1'",
                                  "pg_mqtt_pub.broker_port": BROKER_PORT, "shared_buffers": "'256MB'",
                                  "synchronous_commit": "off"}).start()
    try:
        c.sql(f"CREATE DATABASE {DB}")
        c.sql("CREATE EXTENSION pg_mqtt_pub", dbname=DB)
        wait_until(lambda: c.sql("SELECT connected FROM mqtt_status()", dbname=DB)[0][0], 20, "connected")
        worker = c.sql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_mqtt_pub worker'")[0][0]
        for phase in phases:
            if phase.startswith("pgbench-"):
                pgbench(c, phase)
                continue
            with c.connect(DB) as conn:
                backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
                if phase in TRIGGERS:
                    conn.execute("DROP TABLE IF EXISTS r; DROP FUNCTION IF EXISTS f();")
                    conn.execute("CREATE TABLE r (id int, name text, value numeric, at timestamptz)")
                    if TRIGGERS[phase]:
                        conn.execute(TRIGGERS[phase])

                    def work():
                        t_end = time.time() + SECONDS
                        while time.time() < t_end:
                            conn.execute("INSERT INTO r SELECT i, 'name-' || i, i * 1.5, now() FROM generate_series(1, 1000) i")
                            conn.execute("TRUNCATE r")
                else:
                    qos = int(phase[-1])

                    def work():
                        sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(BROKER_PORT), "-V", "5",
                                                "-q", str(qos), "-t", "prof/d", "-u", SUB_USER, "-P", SUB_PASSWORD],
                                               stdout=subprocess.DEVNULL)
                        time.sleep(0.5)
                        t_end = time.time() + SECONDS
                        while time.time() < t_end:
                            conn.execute(f"SELECT mqtt_publish('prof/d', repeat('p', 64), {qos}) FROM generate_series(1, 10000)")
                        wait_until(lambda: c.sql("SELECT ring_used_bytes, inflight FROM mqtt_status()", dbname=DB)[0] == (0, 0), 60)
                        sub.terminate()
                record([backend, worker, broker.proc.pid], phase, work)
    finally:
        c.stop()
        broker.stop()


if __name__ == "__main__":
    main(sys.argv[1:] or ["none", "notify", "publish", "helper", "deliver0", "deliver1"])
