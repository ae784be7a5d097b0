-- pg_mqtt_pub 1.3 -> 1.4: views and defaults bound to pg_catalog whatever was planted before.
--
-- A view binds its operators and functions when it is created, and an extension script runs
-- with the target schema (public) on its path: an operator or function there whose argument
-- types match exactly beats pg_catalog's, which needs a coercion or is polymorphic (the
-- CVE-2018-1058 shape). The views of 1.0 compared oid with regprocedure and integer, smallint
-- with integer, and called polymorphic functions (array_remove, array_agg, lag, count over
-- text, mode) by bare name: a role with CREATE on public could plant a better match, and a
-- superuser reading the view, or mqtt_broker_remove reading it as the owner, would run it.
-- Here every operator is OPERATOR(pg_catalog.x) and every function pg_catalog-qualified, so the
-- views mean the same whatever public holds (tests/test_install_security.py plants them).
-- CREATE OR REPLACE keeps the views' grants and their columns.
\echo Use "ALTER EXTENSION pg_mqtt_pub UPDATE TO '1.4'" to load this file. \quit

CREATE OR REPLACE VIEW mqtt_pub.outbox_summary AS
SELECT o.broker,
       pg_catalog.count(*)                                                       AS pending,
       COALESCE(pg_catalog.sum(pg_catalog.octet_length(o.payload)
                OPERATOR(pg_catalog.+) pg_catalog.octet_length(o.topic)), 0)::pg_catalog.int8 AS bytes,
       pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.min(o.created_at)     AS oldest_age,
       pg_catalog.min(o.next_retry_at)                                           AS next_retry_at,
       pg_catalog.count(*) FILTER (WHERE o.attempts OPERATOR(pg_catalog.>) 0)   AS retrying
FROM mqtt_pub.outbox o
GROUP BY o.broker;

CREATE OR REPLACE VIEW mqtt_pub.dead_letter_summary AS
SELECT d.broker,
       pg_catalog.count(*)                                  AS dead_letters,
       pg_catalog.min(d.dead_lettered_at)                   AS oldest,
       pg_catalog.max(d.dead_lettered_at)                   AS newest,
       pg_catalog.count(DISTINCT d.topic)                   AS distinct_topics,
       pg_catalog.mode() WITHIN GROUP (ORDER BY d.last_error) AS most_frequent_error
FROM mqtt_pub.dead_letters d
GROUP BY d.broker;

-- The triggers' arguments are shown as the trigger functions read them, and a trigger made by
-- hand with malformed arguments shows NULL there instead of failing the view for everyone.
CREATE OR REPLACE VIEW mqtt_pub.triggers AS
SELECT t.tgrelid::pg_catalog.regclass AS table_name,
       CASE WHEN t.tgfoid OPERATOR(pg_catalog.=) 'mqtt_pub.event_trigger()'::pg_catalog.regprocedure::pg_catalog.oid
            THEN 'event'::pg_catalog.text ELSE 'resultset'::pg_catalog.text END AS kind,
       t.tgname AS trigger_name,
       pg_catalog.array_remove(ARRAY[
           CASE WHEN (t.tgtype::pg_catalog.int4 OPERATOR(pg_catalog.&) 4) OPERATOR(pg_catalog.<>) 0 THEN 'INSERT'::pg_catalog.text END,
           CASE WHEN (t.tgtype::pg_catalog.int4 OPERATOR(pg_catalog.&) 16) OPERATOR(pg_catalog.<>) 0 THEN 'UPDATE'::pg_catalog.text END,
           CASE WHEN (t.tgtype::pg_catalog.int4 OPERATOR(pg_catalog.&) 8) OPERATOR(pg_catalog.<>) 0 THEN 'DELETE'::pg_catalog.text END
       ], NULL::pg_catalog.text) AS operations,
       args.a[1] AS topic_prefix,
       CASE WHEN args.a[2] OPERATOR(pg_catalog.~) '^[0-2]$'::pg_catalog.text
            THEN args.a[2]::pg_catalog.int4 END AS qos,
       args.a[3] AS broker,
       args.a[4] OPERATOR(pg_catalog.=) ANY ('{true,t,on,1}'::pg_catalog.text[]) AS include_meta,
       CASE WHEN args.a[5] OPERATOR(pg_catalog.~) '^[0-9]{1,9}$'::pg_catalog.text
            THEN args.a[5]::pg_catalog.int4 END AS rows_per_message,
       t.tgenabled OPERATOR(pg_catalog.<>) 'D'::pg_catalog."char" AS enabled
FROM pg_catalog.pg_trigger t
-- the arguments: pg_trigger.tgargs holds them as NUL-terminated strings
CROSS JOIN LATERAL (
    SELECT COALESCE(pg_catalog.array_agg(
               pg_catalog.convert_from(
                   pg_catalog.substring(t.tgargs, z.s OPERATOR(pg_catalog.+) 1,
                                        z.e OPERATOR(pg_catalog.-) z.s OPERATOR(pg_catalog.-) 1),
                   pg_catalog.getdatabaseencoding())
               ORDER BY z.e), '{}'::pg_catalog.text[]) AS a
    FROM (SELECT g.e, COALESCE(pg_catalog.lag(g.e) OVER (ORDER BY g.e), 0) AS s
          FROM pg_catalog.generate_series(1, pg_catalog.length(t.tgargs)) AS g(e)
          WHERE pg_catalog.get_byte(t.tgargs, g.e OPERATOR(pg_catalog.-) 1) OPERATOR(pg_catalog.=) 0) z
) AS args(a)
WHERE t.tgparentid OPERATOR(pg_catalog.=) 0::pg_catalog.oid
  AND t.tgfoid OPERATOR(pg_catalog.=) ANY (ARRAY['mqtt_pub.event_trigger()'::pg_catalog.regprocedure::pg_catalog.oid,
                                                 'mqtt_pub.resultset_trigger()'::pg_catalog.regprocedure::pg_catalog.oid]);

-- Column defaults are bound when they are created too (now() has an exact match in pg_catalog,
-- which the path searches first; qualified all the same, so nothing depends on that rule).
ALTER TABLE mqtt_pub.outbox ALTER COLUMN next_retry_at SET DEFAULT pg_catalog.now();
ALTER TABLE mqtt_pub.outbox ALTER COLUMN created_at SET DEFAULT pg_catalog.now();
ALTER TABLE mqtt_pub.dead_letters ALTER COLUMN dead_lettered_at SET DEFAULT pg_catalog.now();
ALTER TABLE mqtt_pub.brokers ALTER COLUMN created_at SET DEFAULT pg_catalog.now();
