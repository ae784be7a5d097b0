"""The benchmark, in miniature: every section of bench/bench.py runs end to end (tiny sizes), so
the benchmark command cannot rot. Its numbers mean nothing here and nothing asserts them; the
test asserts that every row of the table was produced."""
import json
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EXPECTED_ROWS = [
    "a_no_trigger (rows/s)", "b_row_to_json (rows/s)", "c_pg_notify (rows/s)", "d_outbox_insert (rows/s)",
    "e_mqtt_publish_hot (rows/s)", "g_event_trigger_hot (rows/s)", "f_mqtt_publish_cold (rows/s)",
    "ratio e/b (target >= 0.90)", "ratio g/e (target >= 0.90)", "ratio f/d (target >= 0.90)",
    "ratio with/without (target >= 0.90)", "ratio helper trigger / without (target >= 0.90)",
    "latency p50 (target <= 1 ms)", "drain rate", "shared memory at default settings (<= 64 MB)",
    "worker private memory after 200k messages",
    "cost per row: pg_notify", "cost per row: mqtt_publish (PL/pgSQL)", "cost per row: helper trigger",
    "cost mqtt_publish / pg_notify (target <= 1.0)", "cost helper trigger / pg_notify (target <= 0.6)",
    "QoS 0: CPU worker / bare publisher (target <= 1.0)", "QoS 1: CPU worker / bare publisher (target <= 1.0)",
    "cost with properties / without (mqtt_publish)", "QoS 0: CPU worker without message id",
    "QoS 0: CPU worker with properties",
    "latency floor p50: bare client, same broker and subscriber", "latency p50 above the floor (pg_mqtt_pub's share)",
    "cost mqtt_publish / pg_notify, delivery paused",
    "1 database publishing", "10 databases publishing at once",
    "mqtt_publish per call, 0 rights", "mqtt_publish per call, 1 right", "mqtt_publish per call, 1,000 rights",
    "1 right / 0 rights (target: within the 0-rights spread)", "1,000 rights / 0 rights (measured, no target)",
]


def test_benchmark_smoke(tmp_path):
    results = tmp_path / "results.json"
    env = dict(os.environ, BENCH_SMOKE="1", BENCH_RESULTS=str(results))
    r = subprocess.run(["bash", "bench/run.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = json.loads(results.read_text())["rows"]
    missing = [k for k in EXPECTED_ROWS if k not in rows]
    assert not missing, f"rows missing from the benchmark table: {missing}"
