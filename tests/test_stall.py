"""No cluster-wide stall: a commit that hangs, or a lock on the outbox, holds up nobody else.

Proves, on a server whose `synchronous_standby_names` names a standby that never attaches:

* A transaction stuck between its commit record and the end of COMMIT (waiting for the standby)
  does not hold up the messages of other transactions: 100 messages committed after it by a
  session with `synchronous_commit = local` (the server's default here) all arrive, in order, while it waits. A fast shutdown right after
  saves its message too (its backend finishes COMMIT on SIGTERM): after a restart the subscriber
  has exactly the 100 and the stuck one, once each. The worker's own writes do not wait for the
  standby either: it keeps delivering from the outbox and the ring after that.
* The worker never runs SQL while holding the ring lock that every committing publisher needs.
  A session that locks `mqtt_pub.outbox` while the worker is about to turn a cold broker hot
  again used to hang every publisher of the cluster for good (the worker waited for the table
  lock inside the ring lock; the locking session then waited for the ring lock at COMMIT). Now
  other sessions commit, the locking session commits, and every message arrives exactly once.
"""
import threading
import time
from contextlib import contextmanager

from harness import port, scene, status, wait_until

PORT = port()


@contextmanager
def stall_scene(name, port, **extra):
    settings = {
        "synchronous_standby_names": "'never_attached'",
        "synchronous_commit": "local",  # for the set-up below
        **extra,
    }
    with scene(name, port, PORT, "st", "stall/#", settings=settings) as (b, s, c):
        c.sql("CREATE TABLE work (x int)", dbname="st")
        # From now on every commit that writes waits for the standby, unless its session says
        # otherwise: the worker must (its writes wait for nobody), the tests' sessions do (local()).
        c.sql("ALTER SYSTEM SET synchronous_commit = on")
        c.sql("SELECT pg_reload_conf()")
        yield b, s, c


def local(c):
    """A session whose commits do not wait for the missing standby."""
    q = c.connect("st")
    q.execute("SET synchronous_commit = local")
    return q


def start_stuck_commit(c, topic, broker="default"):
    """A session that publishes and then waits in COMMIT for the standby; returns its pid."""
    q = c.connect("st")
    q.execute("SET synchronous_commit = on")
    pid = q.execute("SELECT pg_backend_pid()").fetchone()[0]
    errors = []

    def run():
        try:
            with q.transaction():  # a transaction that writes, so its commit waits for the standby
                q.execute("INSERT INTO work VALUES (1)")
                q.execute("SELECT mqtt_publish(%s, 'stuck', 1, false, %s)", (topic, broker))
        except Exception as e:  # terminated at shutdown: expected
            errors.append(e)

    threading.Thread(target=run, daemon=True).start()
    wait_until(lambda: c.sql("SELECT wait_event FROM pg_stat_activity WHERE pid = %s", (pid,), dbname="st")[0][0] == "SyncRep",
               10, "the commit waits for the synchronous standby")
    return pid


def in_thread(f):
    done = threading.Event()
    errors = []

    def run():
        try:
            f()
        except Exception as e:
            errors.append(e)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done, errors


def test_a_commit_waiting_for_a_standby_holds_up_nobody():
    with stall_scene("stall-syncrep", port()) as (b, s, c):
        wait_until(lambda: status(c, "st")["delivery_mode"] == "hot", 30, "hot")
        start_stuck_commit(c, "stall/stuck")
        with local(c) as q:
            for i in range(100):
                q.execute("SELECT mqtt_publish(%s, %s, 1)", (f"stall/l/{i}", str(i)))
        got = s.wait_for("stall/l/", 100, timeout=30)
        assert [m.topic for m in got] == [f"stall/l/{i}" for i in range(100)]
        assert s.matching("stall/stuck") == [], "not committed yet: not delivered"

        c.stop("fast")  # the stuck backend finishes COMMIT on SIGTERM; the worker saves its message
        c.start()
        s.wait_for("stall/stuck", 1, timeout=30)
        time.sleep(1)
        topics = sorted(m.topic for m in s.matching("stall/"))
        assert topics == sorted([f"stall/l/{i}" for i in range(100)] + ["stall/stuck"]), "exactly once each"
        assert "not saved" not in c.log_text()
        # The worker's own writes (deleting delivered outbox rows) do not wait for the standby:
        # it keeps delivering, hot and cold.
        with local(c) as q:
            q.execute("SELECT mqtt_publish('stall/after/durable', 'd', 1)")
            for i in range(5):
                q.execute("SELECT mqtt_publish(%s, 'h', 1)", (f"stall/after/{i}",))
            q.execute("SET pg_mqtt_pub.durable = on")
            q.execute("SELECT mqtt_publish('stall/after/durable2', 'd', 1)")
        s.wait_for("stall/after/", 7, timeout=30)


def test_a_locked_outbox_does_not_hang_publishers():
    # no periodic outbox look-ups of the cold broker: the worker's next SQL is the go-hot check
    with stall_scene("stall-lock", port(), **{"pg_mqtt_pub.worker_poll_interval_ms": 60000}) as (b, s, c):
        with local(c) as q:
            q.execute("SELECT mqtt_broker_add('other', '127.0.0.1', %s)", (PORT,))
        wait_until(lambda: [r[0] for r in c.sql("SELECT delivery_mode FROM mqtt_status() ORDER BY broker_name", dbname="st")]
                   == ["hot", "hot"], 30, "both brokers hot")
        # A commit of a message for "other" waits for the standby: the ring scan cannot pass it.
        stuck = start_stuck_commit(c, "stall/stuck", "other")
        # A durable message turns "default" cold; its outbox row waits until the scan has passed
        # every ring record older than the switch (the stuck one), and "default" stays cold.
        with local(c) as q:
            q.execute("SET pg_mqtt_pub.durable = on")
            q.execute("SELECT mqtt_publish('stall/durable', 'd', 1)")
        wait_until(lambda: status(c, "st", "default")["delivery_mode"] == "cold",
                   10, "default cold")
        # A session locks the outbox, then the stuck commit ends: the worker delivers it and
        # checks whether "default" can go hot again: that check waits for the table lock.
        locker = local(c)
        locker.execute("BEGIN")
        locker.execute("LOCK TABLE mqtt_pub.outbox IN ACCESS EXCLUSIVE MODE")
        c.sql("SELECT pg_cancel_backend(%s)", (stuck,), dbname="st")
        s.wait_for("stall/stuck", 1, timeout=10)
        wait_until(lambda: c.sql("SELECT count(*) FROM pg_locks WHERE relation = 'mqtt_pub.outbox'::regclass AND NOT granted",
                                 dbname="st")[0][0] >= 1, 10, "the worker waits for the outbox lock")

        # Other sessions keep committing (to the hot broker: nothing of theirs needs the table).
        def other():
            with local(c) as q:
                q.execute("SELECT mqtt_publish('stall/other', 'o', 1, false, 'other')")
        done, errors = in_thread(other)
        assert done.wait(10) and not errors, f"a publisher hangs while a session holds the outbox lock: {errors}"

        # The locking session publishes and commits.
        def lock_holder():
            locker.execute("SELECT mqtt_publish('stall/locker', 'l', 1)")
            locker.execute("COMMIT")
        done, errors = in_thread(lock_holder)
        assert done.wait(10) and not errors, f"the session holding the outbox lock cannot commit: {errors}"
        locker.close()

        s.wait_for("stall/", 4, timeout=30)
        time.sleep(1)
        assert sorted(m.topic for m in s.matching("stall/")) == \
            ["stall/durable", "stall/locker", "stall/other", "stall/stuck"], "every message once"
        wait_until(lambda: status(c, "st", "default")["delivery_mode"] == "hot",
                   30, "default hot again")
