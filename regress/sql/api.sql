-- pg_mqtt_pub: every documented function called both ways — unqualified (as SPEC.md writes
-- them) and mqtt_pub.-qualified — positionally in SPEC.md's argument order and with named
-- arguments; both forms publish the same messages and have the same privileges. The broker is
-- unreachable, so the messages wait in mqtt_pub.outbox where this test reads them.
\set SHOW_CONTEXT never
CREATE EXTENSION pg_mqtt_pub;
SELECT extversion FROM pg_extension WHERE extname = 'pg_mqtt_pub';

-- every mqtt_* function exists under both names, with the same arguments (defaults included) and
-- result: grouped by those, each group holds both schemas
SELECT p.proname, count(*) AS names, array_agg(n.nspname ORDER BY n.nspname) AS schemas
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
JOIN pg_depend d ON d.objid = p.oid AND d.classid = 'pg_proc'::regclass AND d.deptype = 'e'
WHERE d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_mqtt_pub') AND p.proname LIKE 'mqtt\_%'
GROUP BY p.proname, pg_get_function_arguments(p.oid), pg_get_function_result(p.oid)
ORDER BY 1, min(pg_get_function_arguments(p.oid));

-- publishing, both ways, positionally and by name
SELECT mqtt_publish('api/plain', 'a', 1, false, 'default');
SELECT mqtt_pub.mqtt_publish('api/qualified', 'a', 1, false, 'default');
SELECT mqtt_publish(topic := 'api/plain-named', payload := 'b', qos := 2, retain := true);
SELECT mqtt_pub.mqtt_publish(topic := 'api/qualified-named', payload := 'b', qos := 2, retain := true);
SELECT mqtt_publish_binary('api/plain-bin', '\x00ff'::bytea);
SELECT mqtt_pub.mqtt_publish_binary('api/qualified-bin', '\x00ff'::bytea);
SELECT mqtt_publish_json('api/plain-json', '{"a": 1}'::json, 1);
SELECT mqtt_pub.mqtt_publish_json('api/qualified-json', '{"a": 1}'::json, 1);
SELECT mqtt_publish_json('api/plain-jsonb', '{"a": 1}'::jsonb);
SELECT mqtt_pub.mqtt_publish_json('api/qualified-jsonb', '{"a": 1}'::jsonb);
SELECT mqtt_publish_json('api/plain-literal', '[1, 2]');
SELECT mqtt_pub.mqtt_publish_json('api/qualified-literal', '[1, 2]');
SELECT mqtt_publish_batch('api/plain-batch', ARRAY['x', NULL, 'z'], 1);
SELECT mqtt_pub.mqtt_publish_batch(topic_prefix := 'api/qualified-batch', payloads := ARRAY['x', NULL, 'z'], qos := 1);
-- the same errors both ways
SELECT mqtt_pub.mqtt_publish('api/+', 'x');
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_pub.mqtt_publish_json('api/x', 'not json');
\echo :LAST_ERROR_SQLSTATE

SELECT topic, encode(payload, 'escape') AS payload, qos, retain FROM mqtt_pub.outbox ORDER BY id;
DELETE FROM mqtt_pub.outbox;

-- status, both ways
SELECT broker_name, delivery_mode FROM mqtt_status();
SELECT broker_name, delivery_mode FROM mqtt_pub.mqtt_status();

-- trigger helpers, both ways
CREATE TABLE api_t (id int PRIMARY KEY, v text);
SELECT mqtt_trigger_event_setup('api_t', 'api/ev', '{INSERT}', 0);
SELECT mqtt_pub.mqtt_trigger_event_setup(table_name := 'api_t', topic_prefix := 'api/ev2', operations := '{INSERT}', qos := 0, include_meta := false);
SELECT mqtt_trigger_resultset_setup('api_t', 'api/rs', '{INSERT}', 0, 'default', false, 10);
SELECT mqtt_pub.mqtt_trigger_resultset_setup('api_t', 'api/rs2', '{INSERT}', 0, 'default', false, 10);
SELECT table_name, kind, trigger_name, topic_prefix FROM mqtt_pub.triggers ORDER BY trigger_name;
INSERT INTO api_t VALUES (1, 'one');
SELECT topic, encode(payload, 'escape') AS payload FROM mqtt_pub.outbox ORDER BY id;
SELECT mqtt_pub.mqtt_trigger_remove('api_t');
SELECT mqtt_trigger_remove('api_t');
DELETE FROM mqtt_pub.outbox;

-- named brokers, both ways, in SPEC.md's positional order (name, host, port, username,
-- password, use_tls, ca_cert); NULL username and password mean none
SELECT mqtt_broker_add('api-a', '127.0.0.1', 1, NULL, NULL, false, NULL);
SELECT mqtt_pub.mqtt_broker_add('api-b', '127.0.0.1', 1, 'user', 'secret', false, NULL);
SELECT mqtt_pub.mqtt_broker_add(name := 'api-c', host := '127.0.0.1', port := 2);
SELECT name, host, port, username, has_password, use_tls FROM mqtt_pub.broker_list ORDER BY name;
SELECT mqtt_pub.mqtt_broker_add('api-a', '127.0.0.1');
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_broker_remove('api-a');
SELECT mqtt_pub.mqtt_broker_remove('api-b');
SELECT mqtt_pub.mqtt_broker_remove(name := 'api-c', force := false);
SELECT count(*) FROM mqtt_pub.broker_list;

-- privileges: neither name is executable by PUBLIC; a grant on one name covers that name
CREATE ROLE mqtt_api_app;
SET ROLE mqtt_api_app;
SELECT mqtt_publish('api/x', 'x');
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_pub.mqtt_publish('api/x', 'x');
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_pub.mqtt_status();
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_pub.mqtt_broker_add('api-x', '127.0.0.1');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
GRANT EXECUTE ON FUNCTION mqtt_pub.mqtt_publish(text, text, integer, boolean, text, text, interval, text, bytea, text[], integer) TO mqtt_api_app;
SET ROLE mqtt_api_app;
SELECT mqtt_pub.mqtt_publish('api/granted', 'yes');
SELECT mqtt_publish('api/x', 'x');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT topic FROM mqtt_pub.outbox ORDER BY id;
DELETE FROM mqtt_pub.outbox;
REVOKE ALL ON FUNCTION mqtt_pub.mqtt_publish(text, text, integer, boolean, text, text, interval, text, bytea, text[], integer) FROM mqtt_api_app;
DROP ROLE mqtt_api_app;

-- MQTT 5 properties: stored with the row, shown by mqtt_pub.mqtt_properties(); the message id
-- is the same for a row as long as it lives (its value differs per server run: not shown)
SELECT mqtt_publish('api/props', 'p', content_type := 'text/plain', message_expiry := '90 seconds',
                    response_topic := 'api/reply', correlation_data := '\x0102'::bytea,
                    user_properties := ARRAY[['k', 'v1'], ['k', 'v2']]);
SELECT mqtt_publish_binary('api/props-bin', '\x00'::bytea, user_properties := '{}');
SELECT mqtt_pub.mqtt_publish_batch('api/props-batch', ARRAY['a'], message_expiry := '1 day');
SELECT topic, mqtt_pub.mqtt_properties(properties), message_id ~ '^[0-9a-f]+-[0-9a-f]{8}-[0-9a-f]+-[0-9]+$' AS id_ok,
       round(extract(epoch FROM expires_at - created_at)) AS expires_after_s
FROM mqtt_pub.outbox ORDER BY id;
DELETE FROM mqtt_pub.outbox;
SET pg_mqtt_pub.message_id = off;
SELECT mqtt_publish('api/no-id', 'x');
SELECT topic, message_id FROM mqtt_pub.outbox;
DELETE FROM mqtt_pub.outbox;
RESET pg_mqtt_pub.message_id;
-- every bad property is an error in the caller's statement
SELECT mqtt_publish('api/bad', 'x', payload_format := 2);
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_publish_binary('api/bad', '\xff'::bytea, payload_format := 1);
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_publish('api/bad', 'x', message_expiry := '0 s');
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_publish('api/bad', 'x', message_expiry := '-5 min');
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_publish('api/bad', 'x', message_expiry := '200 years');
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_publish('api/bad', 'x', response_topic := 'reply/+');
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_publish('api/bad', 'x', response_topic := '');
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_publish('api/bad', 'x', user_properties := ARRAY['k', 'v']);
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_publish('api/bad', 'x', user_properties := ARRAY[['k', 'v', 'w']]);
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_publish('api/bad', 'x', user_properties := ARRAY[['k', NULL]]);
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_publish('api/bad', 'x', content_type := repeat('x', 65536));
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_publish('api/bad', 'x', content_type := E'text/plain\n');
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_publish('api/bad', 'x', user_properties := ARRAY[['k', E'a\tb']]);
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_pub.mqtt_properties('\x7f'::bytea);
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM mqtt_pub.outbox;

DROP TABLE api_t;
-- DROP EXTENSION refuses while messages or dead letters exist: discarding them is explicit
SELECT mqtt_pub.mqtt_discard() >= 0 AS discarded;
DROP EXTENSION pg_mqtt_pub;
