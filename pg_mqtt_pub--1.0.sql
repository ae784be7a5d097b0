-- pg_mqtt_pub 1.0: publish MQTT messages from SQL, triggers and pg_cron jobs.
\echo Use "CREATE EXTENSION pg_mqtt_pub" to load this file. \quit

-- The functions are not STRICT on purpose: a NULL argument is an ERROR that names it, not a
-- silently skipped message. All are VOLATILE (side effects) and PARALLEL UNSAFE (the pending
-- messages of a transaction live in the leader's memory).

CREATE FUNCTION mqtt_publish(
    topic   text,
    payload text    DEFAULT '',
    qos     integer DEFAULT 0,
    retain  boolean DEFAULT false,
    broker  text    DEFAULT 'default'
) RETURNS boolean
AS 'MODULE_PATHNAME', 'mqtt_publish'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION mqtt_publish(text, text, integer, boolean, text) IS
'Publish a text payload (sent as UTF-8) to an MQTT topic when the transaction commits';

CREATE FUNCTION mqtt_publish_binary(
    topic   text,
    payload bytea,
    qos     integer DEFAULT 0,
    retain  boolean DEFAULT false,
    broker  text    DEFAULT 'default'
) RETURNS boolean
AS 'MODULE_PATHNAME', 'mqtt_publish_binary'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION mqtt_publish_binary(text, bytea, integer, boolean, text) IS
'Publish a binary payload, bytes unchanged, to an MQTT topic when the transaction commits';

CREATE FUNCTION mqtt_status(
    OUT broker_name       text,
    OUT host              text,
    OUT port              integer,
    OUT connected         boolean,
    OUT delivery_mode     text,
    OUT messages_sent     bigint,
    OUT messages_failed   bigint,
    OUT dead_lettered     bigint,
    OUT outbox_pending    bigint,
    OUT last_error        text,
    OUT last_connected_at timestamptz,
    OUT last_error_at     timestamptz,
    OUT inflight          integer,
    OUT ring_used_bytes   bigint
) RETURNS SETOF record
AS 'MODULE_PATHNAME', 'mqtt_status'
LANGUAGE C VOLATILE PARALLEL SAFE;

COMMENT ON FUNCTION mqtt_status() IS 'Connection state and delivery counters per MQTT broker';

-- Publishing is a privilege: an application role gets it with
--   GRANT EXECUTE ON FUNCTION mqtt_publish(text, text, integer, boolean, text) TO app_role;
REVOKE ALL ON FUNCTION mqtt_publish(text, text, integer, boolean, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION mqtt_publish_binary(text, bytea, integer, boolean, text) FROM PUBLIC;
