"""Autovacuum sees the outbox: the worker reports the statistics of its own transactions.

Proves: 3,000 messages wait in the outbox while the broker refuses the worker; once it lets the
worker in, the outbox drains, the worker's deletes show up in pg_stat_user_tables (n_tup_del)
and autovacuum cleans the table (insert-triggered vacuums are switched off for it here, so only
the reported deletes can trigger one). Before, the deletes were never reported: n_tup_del stayed
0 and the dead rows piled up until something else vacuumed the table.
"""
from harness import port, scene, wait_until

PORT = port()
N = 3000


def test_outbox_deletes_are_reported_and_autovacuum_cleans_the_outbox():
    with scene("vacuum", port(), PORT, "vac", "vac/#", gated=True, settings={"autovacuum_naptime": 1}) as (b, s, c):
        c.sql("ALTER TABLE mqtt_pub.outbox SET (autovacuum_vacuum_insert_threshold = -1)", dbname="vac")
        c.sql("SELECT mqtt_publish('vac/' || i, 'x', 1) FROM generate_series(1, %s) i", (N,), dbname="vac")
        assert c.sql("SELECT count(*) FROM mqtt_pub.outbox", dbname="vac")[0][0] == N
        stats = "SELECT n_tup_del, autovacuum_count FROM pg_stat_user_tables WHERE relid = 'mqtt_pub.outbox'::regclass"
        before = c.sql(stats, dbname="vac")[0][1]
        b.open_gate()
        assert len(s.wait_for("vac/", N, timeout=60)) == N
        wait_until(lambda: c.sql(stats, dbname="vac")[0][0] >= N, 30, "the worker's deletes are reported")
        wait_until(lambda: c.sql(stats, dbname="vac")[0][1] > before, 60, "autovacuum cleans the outbox")
