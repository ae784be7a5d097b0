-- pg_mqtt_pub 1.5 -> 1.6: every database of a cluster publishes (issue #27, ADR-012).
--
-- * mqtt_pub.mqtt_announce(): tells the launcher that this database publishes (it claims the
--   database's share of shared memory, and the launcher starts the database's worker within a
--   second). Called here, so CREATE EXTENSION and ALTER EXTENSION UPDATE start the worker.
-- * mqtt_pub.installed_in: the database the outbox belongs to. A database made with CREATE
--   DATABASE ... TEMPLATE copies the outbox too; its worker finds another database's oid here
--   and moves the copied messages to its dead letters instead of sending them a second time.
-- * mqtt_pub.mqtt_status_all(): every publishing database's brokers, from shared memory
--   (superusers and pg_monitor).
-- Every operator is OPERATOR(pg_catalog.x) and every function qualified (docs/SECURITY.md).
\echo Use "ALTER EXTENSION pg_mqtt_pub UPDATE TO '1.6'" to load this file. \quit

CREATE TABLE mqtt_pub.installed_in (
    database oid NOT NULL
);
COMMENT ON TABLE mqtt_pub.installed_in IS
    'The database whose outbox this is (one row): a copy made with CREATE DATABASE ... TEMPLATE does not send the original''s messages again.';
REVOKE ALL ON mqtt_pub.installed_in FROM PUBLIC;
INSERT INTO mqtt_pub.installed_in (database)
SELECT d.oid FROM pg_catalog.pg_database d
 WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database();

CREATE FUNCTION mqtt_pub.mqtt_announce() RETURNS void
AS 'MODULE_PATHNAME', 'mqtt_announce'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION mqtt_pub.mqtt_announce() IS
    'Tells the launcher that this database publishes, so its worker starts (CREATE and ALTER EXTENSION call it).';
REVOKE ALL ON FUNCTION mqtt_pub.mqtt_announce() FROM PUBLIC;

CREATE FUNCTION mqtt_pub.mqtt_status_all(
    OUT database          text,
    OUT broker_name       text,
    OUT host              text,
    OUT port              integer,
    OUT connected         boolean,
    OUT delivery_mode     text,
    OUT problem           text,
    OUT problem_since     timestamptz,
    OUT messages_sent     bigint,
    OUT messages_failed   bigint,
    OUT messages_expired  bigint,
    OUT dead_lettered     bigint,
    OUT ring_waiting      bigint,
    OUT oldest_waiting_age interval,
    OUT ring_used_bytes   bigint,
    OUT outbox_bytes      bigint,
    OUT worker_pid        integer)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'mqtt_status_all'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION mqtt_pub.mqtt_status_all() IS
    'Every publishing database''s brokers, state and backlog, from shared memory (superusers and pg_monitor).';
REVOKE ALL ON FUNCTION mqtt_pub.mqtt_status_all() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION mqtt_pub.mqtt_status_all() TO pg_monitor;

SELECT mqtt_pub.mqtt_announce();
