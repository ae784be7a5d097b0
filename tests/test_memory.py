"""Bounded memory in the worker: draining an outbox of large messages does not grow it.

Proves: 120 messages of 1 MB wait in the outbox while the broker refuses the worker; once it lets
the worker in, all 120 arrive, exactly and in order, while the worker's private memory (RssAnon)
grows by less than 64 MB. A fetch copies at most about 16 MB of payloads out of the outbox
(`outbox_batch_size` rows used to be copied whatever their size: 120 MB here, twice over).
"""
import threading
import time

from harness import Broker, Cluster, Subscriber, wait_until

PORT = 18900
N = 120
SIZE = 1_000_000


def rss_anon_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise RuntimeError("no RssAnon")


def test_draining_large_messages_keeps_the_worker_small():
    b = Broker("memory", PORT).start(gated=True)
    s = Subscriber(PORT, "mem/#")
    c = Cluster("memory", 25456, {
        "pg_mqtt_pub.database": "'mem'",
        "pg_mqtt_pub.broker_host": "'127.0.0.1'",
        "pg_mqtt_pub.broker_port": PORT,
        "pg_mqtt_pub.reconnect_interval_ms": 200,
        "pg_mqtt_pub.max_inflight": 10,
    }).start()
    try:
        c.sql("CREATE DATABASE mem")
        c.sql("CREATE EXTENSION pg_mqtt_pub", dbname="mem")
        with c.connect("mem") as q:
            for i in range(N):
                q.execute("SELECT mqtt_publish(%s, repeat(%s, %s), 1)", (f"mem/{i:03d}", chr(65 + i % 26), SIZE))
        assert c.sql("SELECT count(*) FROM mqtt_pub.outbox", dbname="mem")[0][0] == N
        pid = c.sql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_mqtt_pub worker'")[0][0]
        base = rss_anon_kb(pid)
        peak = [base]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], rss_anon_kb(pid))
                time.sleep(0.01)
        t = threading.Thread(target=sample, daemon=True)
        t.start()
        b.open_gate()
        got = s.wait_for("mem/", N, timeout=120)
        done.set()
        t.join()
        assert [m.topic for m in got] == [f"mem/{i:03d}" for i in range(N)]
        assert all(m.payload == chr(65 + i % 26).encode() * SIZE for i, m in enumerate(got))
        grew_mb = (peak[0] - base) / 1024
        assert grew_mb < 64, f"the worker's private memory grew by {grew_mb:.0f} MB while draining"
    finally:
        s.close()
        c.stop_if_running()
        b.stop_if_running()
