-- pg_mqtt_pub: mqtt_publish_json, mqtt_publish_batch, the trigger helpers and the exact JSON
-- their triggers publish. As in the first test, the broker is unreachable, so every committed
-- message waits in mqtt_pub.outbox where this test reads it. Timestamps and transaction ids are
-- masked in the listings and checked separately against now() and pg_current_xact_id().
\set SHOW_CONTEXT never
CREATE EXTENSION pg_mqtt_pub;
CREATE VIEW sent AS
SELECT topic, regexp_replace(convert_from(payload, 'UTF8'),
                             '"timestamp":"[^"]+","txid":[0-9]+', '"timestamp":"<ts>","txid":<txid>') AS payload
FROM mqtt_pub.outbox ORDER BY id;

-- mqtt_publish_json: json as written, jsonb as PostgreSQL prints it, a literal checked
SELECT mqtt_publish_json('json/row', row_to_json(r)) FROM (SELECT 1 AS id, 'a "b"' AS name, NULL::int AS n) r;
SELECT mqtt_publish_json('json/jsonb', jsonb_build_object('b', 1, 'a', 'x'), qos := 1);
SELECT mqtt_publish_json(topic := 'json/literal', data := '{"lit":  true}', qos := 2, retain := true);
SELECT mqtt_publish_json('json/bad', '{bad');
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_publish_json('json/null', NULL::json);
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_publish_json('json/+', '{}'::jsonb);
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_publish_json('json/q', '{}'::json, 5);
\echo :LAST_ERROR_SQLSTATE

-- mqtt_publish_batch: <prefix>/<0-based position>, NULL elements skipped, count returned
SELECT mqtt_publish_batch('batch', ARRAY['zero', NULL, 'two']);
SELECT mqtt_publish_batch('batch/empty', '{}');
SELECT mqtt_publish_batch('batch/lb', '[5:6]={five,six}'::text[]);
SELECT mqtt_publish_batch(topic_prefix := 'batch/q', payloads := ARRAY(SELECT 'p' || i FROM generate_series(1, 3) i), qos := 2);
SELECT mqtt_publish_batch('batch/2d', '{{a},{b}}');
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_publish_batch('batch/#', ARRAY['x']);
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_publish_batch(NULL, ARRAY['x']);
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_publish_batch('batch', NULL);
\echo :LAST_ERROR_SQLSTATE
BEGIN;
SELECT mqtt_publish_batch('batch/rolled-back', ARRAY['x', 'y']);
ROLLBACK;
SELECT * FROM sent;
TRUNCATE mqtt_pub.outbox;

-- setup argument errors
CREATE TABLE orders (id int PRIMARY KEY, status text, amount numeric);
CREATE VIEW orders_view AS SELECT * FROM orders;
SELECT mqtt_trigger_event_setup(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_trigger_event_setup('no_such_table');
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_trigger_event_setup('orders_view');
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_trigger_event_setup('orders', operations := '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_trigger_event_setup('orders', operations := '{INSERT,TRUNCATE}');
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_trigger_event_setup('orders', operations := '{UPSERT}');
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_trigger_event_setup('orders', qos := 3);
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_trigger_event_setup('orders', broker := 'nowhere');
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_trigger_event_setup('orders', topic_prefix := 'a/+/b');
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_trigger_event_setup('orders', include_meta := NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_trigger_event_setup('orders; DROP TABLE orders');
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_trigger_resultset_setup('orders', rows_per_message := 0);
\echo :LAST_ERROR_SQLSTATE
SELECT mqtt_trigger_remove('no_such_table');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS triggers_after_errors FROM mqtt_pub.triggers;

-- the row trigger: exact JSON for INSERT, UPDATE, DELETE
SELECT mqtt_trigger_event_setup('orders');
INSERT INTO orders VALUES (1, 'new', 9.50), (2, E'tab\t"quoted"', NULL);
UPDATE orders SET status = 'shipped' WHERE id = 1;
DELETE FROM orders WHERE id = 2;
SELECT * FROM sent;
TRUNCATE mqtt_pub.outbox;
-- timestamp is the transaction's now() (as to_json writes it), txid its pg_current_xact_id()
BEGIN;
INSERT INTO orders VALUES (3, 'meta', 1);
CREATE TEMP TABLE expected_meta AS SELECT to_json(now())::text AS ts, pg_current_xact_id()::text AS txid;
COMMIT;
SELECT convert_from(payload, 'UTF8') LIKE '%"timestamp":' || ts || ',"txid":' || txid || ',%' AS meta_matches
FROM mqtt_pub.outbox, expected_meta;
TRUNCATE mqtt_pub.outbox;
-- idempotent: a second setup replaces the first (one trigger, new settings)
SELECT mqtt_trigger_event_setup('orders', 'shop/orders', '{delete, INSERT, insert}', 0, 'default', false);
SELECT table_name, kind, trigger_name, operations, topic_prefix, qos, broker, include_meta FROM mqtt_pub.triggers;
INSERT INTO orders VALUES (4, 'no meta', 2);
UPDATE orders SET status = 'not published' WHERE id = 4;
DELETE FROM orders WHERE id = 4;
SELECT * FROM sent;
TRUNCATE mqtt_pub.outbox;
-- a rolled-back statement publishes nothing
BEGIN;
INSERT INTO orders VALUES (5, 'rolled back', 0);
ROLLBACK;
SELECT count(*) AS after_rollback FROM mqtt_pub.outbox;
-- TRUNCATE is not published
TRUNCATE orders;
SELECT count(*) AS after_truncate FROM mqtt_pub.outbox;

-- schema-qualified, quoted, mixed-case names; the default prefix names the schema unless public
CREATE SCHEMA "Sales Dept";
CREATE TABLE "Sales Dept"."Order Lines" ("Line" int PRIMARY KEY, "Qty" int);
SELECT mqtt_trigger_event_setup('"Sales Dept"."Order Lines"');
SET search_path = "Sales Dept", public;
SELECT mqtt_trigger_resultset_setup('"Order Lines"', operations := '{INSERT}');
RESET search_path;
INSERT INTO "Sales Dept"."Order Lines" VALUES (1, 10);
SELECT * FROM sent;
TRUNCATE mqtt_pub.outbox;
SELECT mqtt_trigger_event_setup('"Sales Dept".order lines');
\echo :LAST_ERROR_SQLSTATE

-- the statement trigger: one message per statement, rows paired by primary key
SELECT mqtt_trigger_remove('orders');
SELECT mqtt_trigger_resultset_setup('orders', 'sync/orders', rows_per_message := 2);
SELECT table_name, kind, trigger_name, operations, topic_prefix, qos, rows_per_message FROM mqtt_pub.triggers
WHERE table_name = 'orders'::regclass ORDER BY trigger_name;
INSERT INTO orders SELECT i, 'new', i FROM generate_series(1, 3) i;
UPDATE orders SET status = 'paid', amount = amount * 2 WHERE id <= 2;
UPDATE orders SET id = id + 10 WHERE id = 3;
UPDATE orders SET status = 'none' WHERE false;
DELETE FROM orders WHERE id = 1;
SELECT * FROM sent;
TRUNCATE mqtt_pub.outbox;
-- without meta; a table without a primary key lists old and new rows unpaired
CREATE TABLE readings (sensor text, value real);
SELECT mqtt_trigger_resultset_setup('readings', 'r', '{UPDATE}', include_meta := false);
INSERT INTO readings VALUES ('a', 1), ('b', 2);
UPDATE readings SET value = value + 1;
SELECT * FROM sent;
TRUNCATE mqtt_pub.outbox;

-- removal and listing
SELECT table_name, kind, trigger_name FROM mqtt_pub.triggers ORDER BY 1::text, 3;
SELECT mqtt_trigger_remove('orders');
SELECT mqtt_trigger_remove('orders');
SELECT mqtt_trigger_remove('"Sales Dept"."Order Lines"');
SELECT mqtt_trigger_remove('readings');
SELECT count(*) AS triggers_left FROM mqtt_pub.triggers;

-- privileges: setting up triggers is granted, not public; the DML of any role then publishes
CREATE ROLE mqtt_regress_owner;
CREATE ROLE mqtt_regress_writer;
CREATE TABLE owned (id int PRIMARY KEY);
ALTER TABLE owned OWNER TO mqtt_regress_owner;
GRANT INSERT ON owned TO mqtt_regress_writer;
SET ROLE mqtt_regress_owner;
SELECT mqtt_trigger_event_setup('owned');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
GRANT EXECUTE ON FUNCTION mqtt_trigger_event_setup(text, text, text[], integer, text, boolean),
                          mqtt_trigger_resultset_setup(text, text, text[], integer, text, boolean, integer),
                          mqtt_trigger_remove(text),
                          mqtt_pub.event_trigger(), mqtt_pub.resultset_trigger() TO mqtt_regress_owner;
SET ROLE mqtt_regress_owner;
SELECT mqtt_trigger_event_setup('owned');
SELECT mqtt_trigger_resultset_setup('owned', operations := '{INSERT}');
SELECT mqtt_trigger_event_setup('orders');
\echo :LAST_ERROR_SQLSTATE
SET ROLE mqtt_regress_writer;
INSERT INTO owned VALUES (1);
SELECT mqtt_publish('regress/writer', 'x');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT * FROM sent;
DROP TABLE owned;
REVOKE ALL ON FUNCTION mqtt_trigger_event_setup(text, text, text[], integer, text, boolean),
                       mqtt_trigger_resultset_setup(text, text, text[], integer, text, boolean, integer),
                       mqtt_trigger_remove(text),
                       mqtt_pub.event_trigger(), mqtt_pub.resultset_trigger() FROM mqtt_regress_owner;
DROP ROLE mqtt_regress_owner;
DROP ROLE mqtt_regress_writer;

-- DROP EXTENSION refuses while messages or dead letters exist: discarding them is explicit
SELECT mqtt_pub.mqtt_discard() >= 0 AS discarded;
DROP EXTENSION pg_mqtt_pub CASCADE;
