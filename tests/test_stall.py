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
* A COMMIT that waits for a lock after its PRE_COMMIT (while others commit more than the ring
  holds) holds up only its own message: it holds promised ring room, not a place in the ring.
"""
import threading
import time
from contextlib import contextmanager

from harness import Broker, Subscriber, port, scene, status, wait_until

PORT = port()
OTHER_PORT = port()


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
    # no periodic outbox look-ups of the cold broker: the worker's next SQL is its drain and the
    # go-hot check once the broker is back
    with stall_scene("stall-lock", port(), **{"pg_mqtt_pub.worker_poll_interval_ms": 60000}) as (b, s, c):
        other_broker = Broker("stall-lock-other", OTHER_PORT).start()
        other_sub = Subscriber(OTHER_PORT, "stall/#")
        try:
            with local(c) as q:
                q.execute("SELECT mqtt_broker_add('other', '127.0.0.1', %s)", (OTHER_PORT,))
            wait_until(lambda: [r[0] for r in c.sql("SELECT delivery_mode FROM mqtt_status() ORDER BY broker_name",
                                                    dbname="st")] == ["hot", "hot"], 30, "both brokers hot")
            # "default" goes down: cold. A session locks the outbox; then "default" comes back,
            # and the worker's drain and go-hot check wait for the table lock.
            b.stop()
            wait_until(lambda: status(c, "st", "default")["delivery_mode"] == "cold", 10, "default cold")
            locker = local(c)
            locker.execute("BEGIN")
            locker.execute("LOCK TABLE mqtt_pub.outbox IN ACCESS EXCLUSIVE MODE")
            b.restart(s)
            wait_until(lambda: c.sql("SELECT count(*) FROM pg_locks WHERE relation = 'mqtt_pub.outbox'::regclass "
                                     "AND NOT granted", dbname="st")[0][0] >= 1, 30, "the worker waits for the outbox lock")

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

            s.wait_for("stall/locker", 1, timeout=30)
            other_sub.wait_for("stall/other", 1, timeout=30)
            time.sleep(1)
            assert [m.topic for m in s.matching("stall/")] == ["stall/locker"], "once"
            assert [m.topic for m in other_sub.matching("stall/")] == ["stall/other"], "once"
            wait_until(lambda: status(c, "st", "default")["delivery_mode"] == "hot", 30, "default hot again")
        finally:
            other_sub.close()
            other_broker.stop()


def test_a_commit_waiting_after_its_reservation_holds_up_only_its_own_messages():
    """A publisher's COMMIT that waits for a lock after PRE_COMMIT (here the notification queue's
    lock, held by a session whose own commit waits for the standby) while others commit 40 MB,
    more than the ring holds: the others' messages arrive while it waits. Aborted (cancelled),
    nothing of it arrives; committed once the lock is free, its message arrives once. (It used
    to hold its ring reservation: the ring filled behind it, the broker went cold and the outbox
    waited for it - nothing was delivered until it ended.)"""
    with stall_scene("stall-lockwait", port()) as (b, s, c):
        wait_until(lambda: status(c, "st")["delivery_mode"] == "hot", 30, "hot")

        def pid_of(q):
            return q.execute("SELECT pg_backend_pid()").fetchone()[0]

        def waits(pid, kind):
            return c.sql("SELECT wait_event_type, wait_event FROM pg_stat_activity WHERE pid = %s", (pid,),
                         dbname="st")[0][0 if kind == "Lock" else 1] == kind

        # B holds the notification queue's lock until its commit, which waits for the standby
        holder = c.connect("st")
        holder.execute("SET synchronous_commit = on")
        holder_pid = pid_of(holder)

        def hold():
            with holder.transaction():
                holder.execute("NOTIFY stall_chan")
                holder.execute("INSERT INTO work VALUES (1)")
        in_thread(hold)
        wait_until(lambda: waits(holder_pid, "SyncRep"), 10, "the lock holder's commit waiting for the standby")

        def waiting_publisher(topic):
            q = local(c)
            pid = pid_of(q)

            def run():
                with q.transaction():
                    q.execute("SELECT mqtt_publish(%s, 'w', 1)", (topic,))
                    q.execute("NOTIFY stall_chan")
            done, errors = in_thread(run)
            wait_until(lambda: waits(pid, "Lock"), 10, f"{topic}: COMMIT waiting for the lock after PRE_COMMIT")
            return pid, done, errors

        a_pid, a_done, a_errors = waiting_publisher("stall/aborted")
        with local(c) as q:
            for i in range(40):
                q.execute("SELECT mqtt_publish(%s, repeat('x', 1000000), 1)", (f"stall/big/{i:02d}",))
            for i in range(6):
                q.execute("SELECT mqtt_publish(%s, %s, 1)", (f"stall/q1/{i}", str(i)))
        got = s.wait_for("stall/q1/", 6, timeout=30)
        assert [m.topic for m in got] == [f"stall/q1/{i}" for i in range(6)], "the others' messages, while it waits"
        assert [m.topic for m in s.wait_for("stall/big/", 40, timeout=60)] == [f"stall/big/{i:02d}" for i in range(40)]

        c.sql("SELECT pg_cancel_backend(%s)", (a_pid,), dbname="st")  # it aborts
        assert a_done.wait(10) and a_errors, "the waiting COMMIT was cancelled"
        c_pid, c_done, c_errors = waiting_publisher("stall/committed")
        c.sql("SELECT pg_cancel_backend(%s)", (holder_pid,), dbname="st")  # its commit completes, the lock is free
        assert c_done.wait(10) and not c_errors, c_errors
        s.wait_for("stall/committed", 1, timeout=30)
        with local(c) as q:
            q.execute("SELECT mqtt_publish('stall/marker', 'm', 1)")
        s.wait_for("stall/marker", 1, timeout=30)
        assert [m.topic for m in s.matching("stall/committed")] == ["stall/committed"], "once"
        assert s.matching("stall/aborted") == [], "aborted: never delivered"
        holder.close()
