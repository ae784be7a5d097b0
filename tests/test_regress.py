"""pg_regress: the SQL surface (every function, every argument error, settings, status
columns, privileges) in a cluster of its own whose broker is unreachable, so the output does
not depend on delivery. The worker's database (contrib_regression) does not exist when the
cluster starts: pg_regress creates it, which also exercises the launcher's wait."""
import os
import subprocess

from harness import Cluster, PGBIN, PG_CONFIG, WORK, port

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def test_pg_regress():
    c = Cluster("regress", port(), {
        "pg_mqtt_pub.database": "'contrib_regression'",
        "pg_mqtt_pub.broker_host": "'127.0.0.1'",
        "pg_mqtt_pub.broker_port": 1,  # nothing listens there
    }).start()
    try:
        pkglib = subprocess.check_output([PG_CONFIG, "--pkglibdir"], text=True).strip()
        out = os.path.join(WORK, "regress-out")
        tests = sorted(f[:-4] for f in os.listdir(os.path.join(ROOT, "regress", "sql")) if f.endswith(".sql"))
        r = subprocess.run([
            f"{pkglib}/pgxs/src/test/regress/pg_regress",
            f"--inputdir={ROOT}/regress", f"--outputdir={out}",
            # relocated installations (the PyPI builds of 16 and 18) carry a stale compiled-in bindir
            f"--bindir={PGBIN}",
            "--host=127.0.0.1", f"--port={c.port}", "--user=postgres",
            "--dbname=contrib_regression", *tests,
        ], capture_output=True, text=True, timeout=180)
        diffs = os.path.join(out, "regression.diffs")
        detail = open(diffs).read() if os.path.exists(diffs) else ""
        assert r.returncode == 0, r.stdout + r.stderr + detail
        assert "exited with exit code" not in c.log_text(), "a worker died while the database did not exist yet"
    finally:
        c.stop()
