"""pg_cron: a job scheduled with Debian's pg_cron (1.4) publishes, and a real subscriber sees it.

pg_cron 1.4 knows five-field schedules only (no seconds, no '30 seconds'), so the job runs at
the next minute boundary: this is the one test that waits for it. The job is the README's
heartbeat example, word for word apart from its schedule.
"""
import json
import re

from harness import Cluster, Subscriber, port, wait_until
from conftest import BROKER_PORT

HEARTBEAT = """
SELECT cron.schedule('mqtt-heartbeat', '* * * * *', $$
    SELECT mqtt_publish(
        topic   := 'monitoring/postgres/heartbeat',
        payload := json_build_object(
            'timestamp',    now(),
            'active_conns', (SELECT count(*) FROM pg_stat_activity WHERE state = 'active'),
            'db_size_mb',   pg_database_size(current_database()) / 1048576
        )::text,
        qos := 1, retain := true
    );
$$)
"""


def test_pg_cron_job_publishes(broker):
    c = Cluster("cron", port(), {
        "shared_preload_libraries": "'pg_mqtt_pub,pg_cron'",
        "cron.database_name": "'postgres'",
        # jobs run in background workers: no libpq connection back to the server to configure
        "cron.use_background_workers": "on",
        "max_worker_processes": 16,
        "pg_mqtt_pub.database": "'postgres'",
        "pg_mqtt_pub.broker_host": "'127.0.0.1'",
        "pg_mqtt_pub.broker_port": BROKER_PORT,
    }).start()
    sub = Subscriber(BROKER_PORT, "monitoring/postgres/#")
    try:
        c.sql("CREATE EXTENSION pg_mqtt_pub")
        c.sql("CREATE EXTENSION pg_cron")
        # Debian's pg_cron: 1.4 on bookworm (PostgreSQL 15), 1.6 on trixie (17)
        version = c.sql("SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'")[0][0]
        assert tuple(int(p) for p in re.match(r"(\d+)\.(\d+)", version).groups()) >= (1, 4), version
        job = c.sql(HEARTBEAT)[0][0]
        got = sub.wait_for("monitoring/postgres/heartbeat", 1, timeout=75)
        beat = json.loads(got[0].payload)
        assert set(beat) == {"timestamp", "active_conns", "db_size_mb"}
        assert got[0].qos == 1
        wait_until(lambda: c.sql("SELECT status FROM cron.job_run_details WHERE jobid = %s AND status = 'succeeded'",
                                 (job,)), 10, "pg_cron records the run as succeeded")
        c.sql("SELECT cron.unschedule('mqtt-heartbeat')")
        c.sql("SELECT mqtt_publish('monitoring/postgres/heartbeat', '', 1, true)")  # clear the retained message
        sub.wait_for("monitoring/postgres/heartbeat", 2, timeout=10)
    finally:
        sub.close()
        c.stop()
