"""Shared servers for the end-to-end tests: one mosquitto, one PostgreSQL cluster whose worker
publishes to it (database `mqtt_test`), and one subscriber listening to everything."""
import pytest

from harness import Broker, Cluster, Subscriber, port, stop_leftovers, wait_status, worker_settings

BROKER_PORT = port()
PG_PORT = port()
DB = "mqtt_test"


@pytest.fixture(scope="session")
def broker():
    b = Broker("main", BROKER_PORT).start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def cluster(broker):
    c = Cluster("main", PG_PORT, worker_settings(DB, BROKER_PORT)).start()
    c.sql(f"CREATE DATABASE {DB}")
    c.sql("CREATE EXTENSION pg_mqtt_pub", dbname=DB)
    # hot, not only connected: a broker stays cold (the outbox) until its backlog is drained, and
    # tests of call-time (non-transactional) publishing need the ring
    wait_status(c, DB, lambda st: st["connected"] and st["delivery_mode"] == "hot", "connected and hot")
    yield c
    c.stop()


@pytest.fixture(scope="session")
def sub(broker):
    s = Subscriber(BROKER_PORT)
    yield s
    s.close()


@pytest.fixture()
def db(cluster):
    with cluster.connect(DB) as conn:
        yield conn


def pytest_sessionfinish(session, exitstatus):
    """Servers a failed fixture left running would hold their ports for the next run."""
    stop_leftovers()
