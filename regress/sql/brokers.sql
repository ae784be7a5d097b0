-- pg_mqtt_pub: named brokers. Every argument error of mqtt_broker_add / mqtt_broker_remove,
-- the catalog and its password-free view, removal with outbox rows (refused, then forced into
-- the dead letters) and with triggers, privileges. No broker is reachable in this cluster, so a
-- named broker stays cold and its messages wait in the outbox.
\set SHOW_CONTEXT never
CREATE EXTENSION pg_mqtt_pub;

-- argument errors
SELECT mqtt_broker_add(NULL, 'h');
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_broker_add('x', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_broker_add('default', 'h');
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_broker_add('no spaces', 'h');
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_broker_add('x', 'mqtt://h:1883');
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_broker_add('x', '');
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_broker_add('x', 'h', 0);
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_broker_add('x', 'h', 65536);
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_broker_add('x', 'h', keepalive := 1);
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_broker_add('x', 'h', password := 'p');
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_broker_add('x', 'h', ca_cert := '/ca.pem');
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_broker_add('x', 'h', use_tls := true, client_cert := '/c.pem');
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_broker_add('x', 'h', use_tls := true, tls_version := 'tlsv1.0');
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_broker_remove(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_broker_remove('default');
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_broker_remove('nope');
\echo :LAST_ERROR_SQLSTATE

-- adding: the catalog, the view without passwords, duplicates
SELECT mqtt_broker_add('cloud', 'mqtt.example.com', 8883, 'pg', 'top-secret', true, '/etc/ssl/ca.pem');
SELECT mqtt_broker_add(name := 'plant-2', host := '127.0.0.1', port := 1);
SELECT mqtt_broker_add('cloud', 'other.example.com');
\echo :LAST_ERROR_SQLSTATE
-- (which slot a broker gets depends on which slots the worker has released yet: not shown)
SELECT name, slot > 0 AS has_slot, host, port, username, use_tls, ca_cert, tls_version, keepalive FROM mqtt_pub.brokers ORDER BY name;
SELECT name, host, port, username, has_password, use_tls, ca_cert, client_cert, client_key, tls_version, client_id, keepalive
FROM mqtt_pub.broker_list ORDER BY name \gx

-- publishing to a named broker: usable in the same transaction that adds it; cold, so outbox
BEGIN;
SELECT mqtt_broker_add('same-tx', '127.0.0.1', 1);
SELECT mqtt_publish('regress/same-tx', 'x', 1, broker := 'same-tx');
COMMIT;
SELECT mqtt_publish('regress/cloud', 'to the cloud', 1, broker := 'cloud');
SELECT mqtt_publish_batch('regress/plant', ARRAY['a', 'b'], 1, broker := 'plant-2');
SELECT broker, topic, encode(payload, 'escape') AS payload FROM mqtt_pub.outbox ORDER BY id;

-- removal: refused with outbox rows, forced into the dead letters; refused while triggers use it
SELECT mqtt_broker_remove('cloud');
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_broker_remove('cloud', force := true);
SELECT broker, topic, last_error FROM mqtt_pub.dead_letters ORDER BY id;
-- one statement writes dead letters (mqtt_pub.dead_letter_outbox, shared with the worker):
-- no SQL function of the extension repeats it
SELECT p.oid::regprocedure AS repeats_the_dead_letter_insert FROM pg_proc p
JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_mqtt_pub'
WHERE p.prosrc ~* 'insert\s+into\s+mqtt_pub\.dead_letters';
SELECT mqtt_publish('regress/cloud', 'gone', broker := 'cloud');
\echo :LAST_ERROR_SQLSTATE
CREATE TABLE uses_plant (id int PRIMARY KEY);
SELECT mqtt_trigger_event_setup('uses_plant', broker := 'plant-2');
SELECT mqtt_broker_remove('plant-2', true);
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_trigger_remove('uses_plant');
SELECT mqtt_broker_remove('plant-2', true);
SELECT mqtt_broker_remove('same-tx', true);
SELECT count(*) AS brokers_left FROM mqtt_pub.brokers;

-- privileges: managing brokers and reading them is not public
CREATE ROLE mqtt_regress_user;
SET ROLE mqtt_regress_user;
SELECT mqtt_broker_add('mine', 'h');
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_broker_remove('mine');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM mqtt_pub.brokers;
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM mqtt_pub.broker_list;
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
DROP ROLE mqtt_regress_user;

DROP TABLE uses_plant;
-- DROP EXTENSION refuses while messages or dead letters exist: discarding them is explicit
SELECT mqtt_pub.mqtt_discard() >= 0 AS discarded;
DROP EXTENSION pg_mqtt_pub;
