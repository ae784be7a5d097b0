"""pg_cron: the documentation's pg_cron examples (the blocks marked `<!-- needs: pg_cron -->`,
the README's heartbeat job), run as written with Debian's pg_cron (1.4 on PostgreSQL 15, 1.6 on
17), and a real subscriber sees what their annotations say.

pg_cron 1.4 knows five-field schedules only (no seconds, no '30 seconds'), so the job runs at
the next minute boundary: this is the one test that waits for it. The examples run through
tests/doc_examples.py, as in tests/test_docs.py (which runs every other example).
"""
import re

import doc_examples as dx
from harness import Broker, Cluster, Subscriber, port, wait_status, wait_until


def test_pg_cron_examples_in_the_docs_publish():
    blocks = dx.cron_blocks()
    assert blocks, "no documentation example needs pg_cron: the README's heartbeat job is gone"
    broker = Broker("cron", port()).start()
    sub = c = None
    try:
        sub = Subscriber(broker.port)
        c = Cluster("cron", port(), {
            "shared_preload_libraries": "'pg_mqtt_pub,pg_cron'",
            "cron.database_name": "'postgres'",
            # jobs run in background workers: no libpq connection back to the server to configure
            "cron.use_background_workers": "on",
            "max_worker_processes": 16,
            "pg_mqtt_pub.database": "'postgres'",
            "pg_mqtt_pub.broker_host": "'127.0.0.1'",
            "pg_mqtt_pub.broker_port": broker.port,
        }).start()
        c.sql("CREATE EXTENSION pg_mqtt_pub")
        wait_status(c, "postgres", lambda st: st["connected"] and st["delivery_mode"] == "hot", "connected and hot")
        dx.DocRunner(c, "postgres", sub).run(blocks)
        # Debian's pg_cron: 1.4 on bookworm (PostgreSQL 15), 1.6 on trixie (17)
        version = c.sql("SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'")[0][0]
        assert tuple(int(p) for p in re.match(r"(\d+)\.(\d+)", version).groups()) >= (1, 4), version
        wait_until(lambda: c.sql("SELECT 1 FROM cron.job_run_details WHERE status = 'succeeded'"),
                   10, "pg_cron records a run as succeeded")
        assert c.sql("SELECT jobname FROM cron.job") == [], "the examples unschedule what they schedule"
    finally:
        if sub:
            sub.close()
        if c:
            c.stop_if_running()
        broker.stop_if_running()
