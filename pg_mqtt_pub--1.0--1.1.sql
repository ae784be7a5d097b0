-- pg_mqtt_pub 1.0 -> 1.1: every mqtt_* function can also be called schema-qualified, as
-- mqtt_pub.mqtt_publish(...), mqtt_pub.mqtt_status(), ... (the form the project this extension
-- was specified from documents), with the same arguments in the same order.
--
-- Compiled functions are declared a second time over the same C symbol: no wrapper, no extra
-- call. The two SQL-language ones call their counterpart by qualified name with a pinned path.
-- Privileges are per function: GRANT the names an application uses (README, "Privileges").
\echo Use "ALTER EXTENSION pg_mqtt_pub UPDATE TO '1.1'" to load this file. \quit

CREATE FUNCTION mqtt_pub.mqtt_publish(
    topic   text,
    payload text    DEFAULT '',
    qos     integer DEFAULT 0,
    retain  boolean DEFAULT false,
    broker  text    DEFAULT 'default'
) RETURNS boolean
AS 'MODULE_PATHNAME', 'mqtt_publish'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION mqtt_pub.mqtt_publish_binary(
    topic   text,
    payload bytea,
    qos     integer DEFAULT 0,
    retain  boolean DEFAULT false,
    broker  text    DEFAULT 'default'
) RETURNS boolean
AS 'MODULE_PATHNAME', 'mqtt_publish_binary'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION mqtt_pub.mqtt_publish_json(
    topic   text,
    data    json,
    qos     integer DEFAULT 0,
    retain  boolean DEFAULT false,
    broker  text    DEFAULT 'default'
) RETURNS boolean
AS 'MODULE_PATHNAME', 'mqtt_publish_json'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION mqtt_pub.mqtt_publish_json(
    topic   text,
    data    jsonb,
    qos     integer DEFAULT 0,
    retain  boolean DEFAULT false,
    broker  text    DEFAULT 'default'
) RETURNS boolean
AS 'MODULE_PATHNAME', 'mqtt_publish_json'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION mqtt_pub.mqtt_publish_json(
    topic   text,
    data    text,
    qos     integer DEFAULT 0,
    retain  boolean DEFAULT false,
    broker  text    DEFAULT 'default'
) RETURNS boolean
LANGUAGE sql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT mqtt_pub.mqtt_publish_json(topic, data::pg_catalog.json, qos, retain, broker) $$;

CREATE FUNCTION mqtt_pub.mqtt_publish_batch(
    topic_prefix text,
    payloads     text[],
    qos          integer DEFAULT 0,
    retain       boolean DEFAULT false,
    broker       text    DEFAULT 'default'
) RETURNS integer
AS 'MODULE_PATHNAME', 'mqtt_publish_batch'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION mqtt_pub.mqtt_status(
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
    OUT ring_used_bytes   bigint,
    OUT outbox_oldest_age interval
) RETURNS SETOF record
AS 'MODULE_PATHNAME', 'mqtt_status'
LANGUAGE C VOLATILE PARALLEL SAFE;

CREATE FUNCTION mqtt_pub.mqtt_trigger_event_setup(
    table_name   text,
    topic_prefix text    DEFAULT NULL,
    operations   text[]  DEFAULT '{INSERT,UPDATE,DELETE}',
    qos          integer DEFAULT 1,
    broker       text    DEFAULT 'default',
    include_meta boolean DEFAULT true
) RETURNS text
AS 'MODULE_PATHNAME', 'mqtt_trigger_event_setup'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION mqtt_pub.mqtt_trigger_resultset_setup(
    table_name       text,
    topic_prefix     text    DEFAULT NULL,
    operations       text[]  DEFAULT '{INSERT,UPDATE,DELETE}',
    qos              integer DEFAULT 1,
    broker           text    DEFAULT 'default',
    include_meta     boolean DEFAULT true,
    rows_per_message integer DEFAULT 1000
) RETURNS text
AS 'MODULE_PATHNAME', 'mqtt_trigger_resultset_setup'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION mqtt_pub.mqtt_trigger_remove(table_name text) RETURNS integer
AS 'MODULE_PATHNAME', 'mqtt_trigger_remove'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

-- The broker functions run as the extension owner (they write owner-only tables); so does this
-- entry point, which only forwards to its counterpart, so that one GRANT on it is enough.
CREATE FUNCTION mqtt_pub.mqtt_broker_add(
    name          text,
    host          text,
    port          integer DEFAULT 1883,
    username      text    DEFAULT NULL,
    password      text    DEFAULT NULL,
    use_tls       boolean DEFAULT false,
    ca_cert       text    DEFAULT NULL,
    client_cert   text    DEFAULT NULL,
    client_key    text    DEFAULT NULL,
    tls_version   text    DEFAULT 'tlsv1.2',
    client_id     text    DEFAULT NULL,
    keepalive     integer DEFAULT 60,
    password_file text    DEFAULT NULL
) RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- An error raised in here must not write the statement (and an inline password) to the log.
SET log_min_error_statement = panic
AS $$ SELECT @extschema@.mqtt_broker_add(name, host, port, username, password, use_tls, ca_cert,
                                         client_cert, client_key, tls_version, client_id, keepalive,
                                         password_file) $$;

CREATE FUNCTION mqtt_pub.mqtt_broker_remove(name text, force boolean DEFAULT false) RETURNS bigint
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT @extschema@.mqtt_broker_remove(name, force) $$;

COMMENT ON FUNCTION mqtt_pub.mqtt_publish(text, text, integer, boolean, text) IS
'Publish a text payload (sent as UTF-8) to an MQTT topic when the transaction commits';
COMMENT ON FUNCTION mqtt_pub.mqtt_publish_binary(text, bytea, integer, boolean, text) IS
'Publish a binary payload, bytes unchanged, to an MQTT topic when the transaction commits';
COMMENT ON FUNCTION mqtt_pub.mqtt_publish_json(text, json, integer, boolean, text) IS
'Publish a json value (e.g. row_to_json(NEW)) to an MQTT topic when the transaction commits';
COMMENT ON FUNCTION mqtt_pub.mqtt_publish_json(text, jsonb, integer, boolean, text) IS
'Publish a jsonb value (e.g. jsonb_build_object(...)) to an MQTT topic when the transaction commits';
COMMENT ON FUNCTION mqtt_pub.mqtt_publish_json(text, text, integer, boolean, text) IS
'Publish a JSON literal, checked to be valid JSON, to an MQTT topic when the transaction commits';
COMMENT ON FUNCTION mqtt_pub.mqtt_publish_batch(text, text[], integer, boolean, text) IS
'Publish each non-NULL element to <topic_prefix>/<0-based position>; returns how many were published';
COMMENT ON FUNCTION mqtt_pub.mqtt_status() IS 'Connection state and delivery counters per MQTT broker';
COMMENT ON FUNCTION mqtt_pub.mqtt_trigger_event_setup(text, text, text[], integer, text, boolean) IS
'Publish every row change of a table to <topic_prefix>/<insert|update|delete>; returns the prefix';
COMMENT ON FUNCTION mqtt_pub.mqtt_trigger_resultset_setup(text, text, text[], integer, text, boolean, integer) IS
'Publish each statement''s changed rows of a table as one message (split when large); returns the prefix';
COMMENT ON FUNCTION mqtt_pub.mqtt_trigger_remove(text) IS
'Remove the triggers mqtt_trigger_event_setup and mqtt_trigger_resultset_setup created on a table; returns how many';
COMMENT ON FUNCTION mqtt_pub.mqtt_broker_add(text, text, integer, text, text, boolean, text, text, text, text, text, integer, text) IS
'Add a named MQTT broker; the worker connects within about a second of COMMIT';
COMMENT ON FUNCTION mqtt_pub.mqtt_broker_remove(text, boolean) IS
'Remove a named MQTT broker; refused while it has outbox rows unless force moves them to the dead letters';

-- The same privileges as their counterparts: nothing for PUBLIC, status for pg_monitor.
REVOKE ALL ON FUNCTION mqtt_pub.mqtt_publish(text, text, integer, boolean, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION mqtt_pub.mqtt_publish_binary(text, bytea, integer, boolean, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION mqtt_pub.mqtt_publish_json(text, json, integer, boolean, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION mqtt_pub.mqtt_publish_json(text, jsonb, integer, boolean, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION mqtt_pub.mqtt_publish_json(text, text, integer, boolean, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION mqtt_pub.mqtt_publish_batch(text, text[], integer, boolean, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION mqtt_pub.mqtt_status() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION mqtt_pub.mqtt_status() TO pg_monitor;
REVOKE ALL ON FUNCTION mqtt_pub.mqtt_trigger_event_setup(text, text, text[], integer, text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION mqtt_pub.mqtt_trigger_resultset_setup(text, text, text[], integer, text, boolean, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION mqtt_pub.mqtt_trigger_remove(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION mqtt_pub.mqtt_broker_add(text, text, integer, text, text, boolean, text, text, text, text, text, integer, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION mqtt_pub.mqtt_broker_remove(text, boolean) FROM PUBLIC;
