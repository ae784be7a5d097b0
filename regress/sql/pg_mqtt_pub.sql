-- pg_mqtt_pub: the SQL surface. Every function, every argument error (with its SQLSTATE),
-- the settings, mqtt_status()'s columns, the outbox, privileges. The broker is unreachable in
-- this cluster, so the broker stays cold and every committed message waits in the outbox, where
-- this test can look at it (the end-to-end tests check what a subscriber receives).
\set SHOW_CONTEXT never
CREATE EXTENSION pg_mqtt_pub;

-- the functions and their signatures
SELECT p.oid::regprocedure AS function, p.provolatile, p.proparallel, p.proisstrict
FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.classid = 'pg_proc'::regclass
WHERE d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_mqtt_pub')
ORDER BY p.oid::regprocedure::text;

-- publishing: positional, named, defaults, binary
SELECT mqtt_publish('regress/a', 'hello');
SELECT mqtt_publish('regress/a');
SELECT mqtt_publish(topic := 'regress/b', payload := '{"value": 23.5}', qos := 1, retain := false, broker := 'default');
SELECT mqtt_publish('regress/c', 'x', 2, true);
SELECT mqtt_publish_binary('regress/bin', '\x00ff00'::bytea, 1);
SELECT mqtt_publish('regress/ünïcode/温度', 'ü');
SELECT mqtt_publish(repeat('t', 65535), '');

-- argument errors: each with its SQLSTATE; the session keeps working afterwards
SELECT mqtt_publish(NULL, 'x');
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_publish('t', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_publish('t', 'x', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_publish('t', 'x', 0, NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_publish('t', 'x', 0, false, NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_publish('', 'x');
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_publish('a/+/b', 'x');
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_publish('a/#', 'x');
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_publish('$SYS/broker', 'x');
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_publish(repeat('t', 65536), 'x');
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_publish(E'bell\x07', 'x');
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_publish(E'nel\u0085', 'x');
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_publish('t', 'x', 3);
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_publish('t', 'x', -1);
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_publish('t', 'x', broker := 'cloud');
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_publish_binary('t', NULL);
\echo :LAST_ERROR_SQLSTATE
SET pg_mqtt_pub.max_message_size = '2kB';
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_publish('t', repeat('x', 2000000));
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_publish('still/working', 'yes');

-- the broker is unreachable: what was published so far waits in the outbox, in order
SELECT id, broker, left(topic, 30) AS topic, encode(payload, 'escape') AS payload, qos, retain, lane, attempts
FROM mqtt_pub.outbox ORDER BY id;
TRUNCATE mqtt_pub.outbox;

-- transactions: commit, rollback, savepoints, two-phase commit
BEGIN;
SELECT mqtt_publish('regress/tx', '1');
SAVEPOINT s1;
SELECT mqtt_publish('regress/tx', '2');
ROLLBACK TO SAVEPOINT s1;
SELECT mqtt_publish('regress/tx', '3');
COMMIT;
BEGIN;
SELECT mqtt_publish('regress/tx', 'rolled back');
ROLLBACK;
BEGIN;
SELECT mqtt_publish('regress/2pc', 'committed prepared');
PREPARE TRANSACTION 'mqtt_2pc';
SELECT count(*) AS visible_before_commit_prepared FROM mqtt_pub.outbox WHERE topic = 'regress/2pc';
COMMIT PREPARED 'mqtt_2pc';
BEGIN;
SELECT mqtt_publish('regress/2pc', 'rolled back prepared');
PREPARE TRANSACTION 'mqtt_2pc_rb';
ROLLBACK PREPARED 'mqtt_2pc_rb';
SET pg_mqtt_pub.transactional = off;
BEGIN;
SELECT mqtt_publish('regress/now', 'cold: follows the transaction');
ROLLBACK;
RESET pg_mqtt_pub.transactional;
SELECT topic, encode(payload, 'escape') AS payload FROM mqtt_pub.outbox ORDER BY id;
SELECT broker, pending, bytes, oldest_age > interval '0' AS has_age, retrying FROM mqtt_pub.outbox_summary;
TRUNCATE mqtt_pub.outbox;

-- settings: names, defaults, contexts
SELECT name, setting, unit, context, vartype
FROM pg_settings WHERE name LIKE 'pg_mqtt_pub.%' AND name <> 'pg_mqtt_pub.database'
ORDER BY name;
SET pg_mqtt_pub.queue_size = 1024;
\echo :LAST_ERROR_SQLSTATE
SET pg_mqtt_pub.protocol_version = '4';
\echo :LAST_ERROR_SQLSTATE
SET pg_mqtt_pub.no_such_setting = 1;
\echo :LAST_ERROR_SQLSTATE
ALTER SYSTEM SET pg_mqtt_pub.queue_size = 1000;
\echo :LAST_ERROR_SQLSTATE
SET pg_mqtt_pub.publish_timeout_ms = 0;
RESET pg_mqtt_pub.publish_timeout_ms;

-- mqtt_status(): the columns, and the one broker that exists
SELECT column_name, data_type FROM (
  SELECT unnest(proargnames) AS column_name, unnest(proallargtypes)::regtype::text AS data_type,
         unnest(proargmodes) AS mode
  FROM pg_proc WHERE oid = 'public.mqtt_status()'::regprocedure) s
WHERE mode = 'o';
SELECT mqtt_publish('regress/status', 'pending');
SELECT broker_name, host, port, connected, delivery_mode, dead_lettered, outbox_pending
FROM mqtt_status();

-- privileges: publishing is granted, not public; the password is superuser-only
CREATE ROLE mqtt_regress_app LOGIN;
SET ROLE mqtt_regress_app;
SELECT mqtt_publish('regress/priv', 'x');
\echo :LAST_ERROR_SQLSTATE
-- (PostgreSQL's own wording of this error differs between versions: only its SQLSTATE here)
DO $$BEGIN PERFORM current_setting('pg_mqtt_pub.broker_password');
EXCEPTION WHEN insufficient_privilege THEN RAISE NOTICE 'broker_password: permission denied (%)', SQLSTATE; END$$;
SELECT count(*) FROM pg_settings WHERE name = 'pg_mqtt_pub.broker_password';
-- mqtt_status() shows hosts and errors: pg_monitor and the owner only
SELECT broker_name, outbox_pending FROM mqtt_status();
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM mqtt_pub.outbox;
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
GRANT EXECUTE ON FUNCTION mqtt_publish(text, text, integer, boolean, text, text, interval, text, bytea, text[], integer) TO mqtt_regress_app;
GRANT pg_monitor TO mqtt_regress_app;
SET ROLE mqtt_regress_app;
SELECT mqtt_publish('regress/priv', 'granted');
SELECT broker_name, outbox_pending FROM mqtt_status();
RESET ROLE;
REVOKE pg_monitor FROM mqtt_regress_app;
SELECT topic, encode(payload, 'escape') AS payload FROM mqtt_pub.outbox WHERE topic = 'regress/priv';
REVOKE EXECUTE ON FUNCTION mqtt_publish(text, text, integer, boolean, text, text, interval, text, bytea, text[], integer) FROM mqtt_regress_app;
DROP ROLE mqtt_regress_app;

-- bounded memory: a big transaction spills its messages to the outbox as it goes...
SET pg_mqtt_pub.max_pending_memory = '16MB';
SELECT count(mqtt_publish('regress/bigok/' || i, repeat('y', 500000))) FROM generate_series(1, 40) i;
SELECT count(*) FROM mqtt_pub.outbox WHERE topic LIKE 'regress/bigok/%';
-- ...but messages published inside an EXCEPTION block cannot be spilled (a rollback to the
-- block must drop them): past pg_mqtt_pub.max_pending_memory, publishing fails (54000)
DO $$
BEGIN
  FOR i IN 1..40 LOOP
    BEGIN
      PERFORM mqtt_publish('regress/big/' || i, repeat('x', 500000));
    EXCEPTION WHEN division_by_zero THEN NULL;
    END;
  END LOOP;
END $$;
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM mqtt_pub.outbox WHERE topic LIKE 'regress/big/%';
-- below twice the spill threshold is refused (core's wording varies: only the SQLSTATE here)
DO $$BEGIN SET LOCAL pg_mqtt_pub.max_pending_memory = '1MB';
EXCEPTION WHEN invalid_parameter_value THEN RAISE NOTICE 'max_pending_memory 1MB refused (%)', SQLSTATE; END$$;
RESET pg_mqtt_pub.max_pending_memory;
SELECT mqtt_publish('regress/after-limit', 'the session goes on');
DELETE FROM mqtt_pub.outbox WHERE topic LIKE 'regress/%big%' OR topic = 'regress/after-limit';

-- DROP EXTENSION refuses while messages or dead letters exist: discarding them is explicit
SELECT mqtt_pub.mqtt_discard() >= 0 AS discarded;
DROP EXTENSION pg_mqtt_pub;
