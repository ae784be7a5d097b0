-- pg_mqtt_pub 1.2 -> 1.3: MQTT 5 message properties, message ids and message expiry (#15).
--
-- * Every publishing function takes the optional properties content_type, message_expiry,
--   response_topic, correlation_data, user_properties and payload_format (README, "Message
--   properties"). A function's argument list cannot be changed in place, so each is created
--   anew and the old one dropped — with every GRANT on the old one given again on the new one,
--   so an application role keeps its right to publish across the update.
-- * mqtt_pub.outbox and mqtt_pub.dead_letters gain properties (MQTT 5 encoding; shown by
--   mqtt_pub.mqtt_properties()), message_id and expires_at; replay keeps them.
-- * mqtt_status() gains messages_expired.
\echo Use "ALTER EXTENSION pg_mqtt_pub UPDATE TO '1.3'" to load this file. \quit

ALTER TABLE mqtt_pub.outbox
    ADD COLUMN properties bytea,
    ADD COLUMN message_id text,
    ADD COLUMN expires_at timestamptz;
ALTER TABLE mqtt_pub.dead_letters
    ADD COLUMN properties bytea,
    ADD COLUMN message_id text,
    ADD COLUMN expires_at timestamptz;
COMMENT ON COLUMN mqtt_pub.outbox.properties IS 'MQTT 5 properties, as sent (read them with mqtt_pub.mqtt_properties(properties))';
COMMENT ON COLUMN mqtt_pub.outbox.message_id IS 'Sent as the user property pg-mqtt-pub-id; the same on every resend and replay';
COMMENT ON COLUMN mqtt_pub.outbox.expires_at IS 'COMMIT + message_expiry: not sent after this';
COMMENT ON COLUMN mqtt_pub.dead_letters.properties IS 'MQTT 5 properties, as sent (read them with mqtt_pub.mqtt_properties(properties))';
COMMENT ON COLUMN mqtt_pub.dead_letters.message_id IS 'Sent as the user property pg-mqtt-pub-id; the same on every resend and replay';
COMMENT ON COLUMN mqtt_pub.dead_letters.expires_at IS 'COMMIT + message_expiry: not sent after this';

CREATE FUNCTION mqtt_pub.mqtt_properties(properties bytea) RETURNS jsonb
AS 'MODULE_PATHNAME', 'mqtt_pub_mqtt_properties'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION mqtt_pub.mqtt_properties(bytea) IS
'The MQTT 5 properties of an outbox row or dead letter as jsonb';
REVOKE ALL ON FUNCTION mqtt_pub.mqtt_properties(bytea) FROM PUBLIC;

CREATE OR REPLACE FUNCTION mqtt_pub.replay_dead_letters(broker_name text DEFAULT NULL, max_count integer DEFAULT 100)
RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    moved integer;
BEGIN
    IF max_count IS NULL OR max_count < 0 THEN
        RAISE EXCEPTION 'max_count must be zero or more, not %', coalesce(max_count::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass max_count := 100, or how many dead letters to replay.';
    END IF;
    IF broker_name IS NOT NULL AND broker_name <> 'default'
       AND NOT EXISTS (SELECT 1 FROM mqtt_pub.brokers b WHERE b.name = broker_name)
       AND NOT EXISTS (SELECT 1 FROM mqtt_pub.dead_letters d WHERE d.broker = broker_name) THEN
        RAISE EXCEPTION 'MQTT broker "%" does not exist', broker_name
            USING ERRCODE = 'undefined_object',
                  HINT = 'Pass NULL for all brokers, or the name of a broker with dead letters.';
    END IF;
    -- properties, message id and expiry go back unchanged: a consumer sees the same id again
    WITH picked AS (
        SELECT d.id FROM mqtt_pub.dead_letters d
        WHERE broker_name IS NULL OR d.broker = broker_name
        ORDER BY d.dead_lettered_at, d.id
        LIMIT max_count
        FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM mqtt_pub.dead_letters d USING picked WHERE d.id = picked.id
        RETURNING d.id, d.broker, d.topic, d.payload, d.qos, d.retain, d.dead_lettered_at,
                  d.properties, d.message_id, d.expires_at
    )
    INSERT INTO mqtt_pub.outbox (broker, topic, payload, qos, retain, lane, properties, message_id, expires_at)
    SELECT g.broker, g.topic, g.payload, g.qos, g.retain, 1, g.properties, g.message_id, g.expires_at
    FROM gone g ORDER BY g.dead_lettered_at, g.id;
    GET DIAGNOSTICS moved = ROW_COUNT;
    RETURN moved;
END
$$;

-- @extschema@: the publishing functions with properties
CREATE FUNCTION @extschema@.mqtt_publish(
    topic            text,
    payload          text     DEFAULT '',
    qos              integer  DEFAULT 0,
    retain           boolean  DEFAULT false,
    broker           text     DEFAULT 'default',
    content_type     text     DEFAULT NULL,
    message_expiry   interval DEFAULT NULL,
    response_topic   text     DEFAULT NULL,
    correlation_data bytea    DEFAULT NULL,
    user_properties  text[]   DEFAULT NULL,
    payload_format   integer  DEFAULT NULL
) RETURNS boolean
AS 'MODULE_PATHNAME', 'mqtt_publish'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.mqtt_publish(text, text, integer, boolean, text, text, interval, text, bytea, text[], integer) IS
'Publish a text payload (sent as UTF-8) to an MQTT topic when the transaction commits; optional MQTT 5 properties';
REVOKE ALL ON FUNCTION @extschema@.mqtt_publish(text, text, integer, boolean, text, text, interval, text, bytea, text[], integer) FROM PUBLIC;

CREATE FUNCTION @extschema@.mqtt_publish_binary(
    topic            text,
    payload          bytea,
    qos              integer  DEFAULT 0,
    retain           boolean  DEFAULT false,
    broker           text     DEFAULT 'default',
    content_type     text     DEFAULT NULL,
    message_expiry   interval DEFAULT NULL,
    response_topic   text     DEFAULT NULL,
    correlation_data bytea    DEFAULT NULL,
    user_properties  text[]   DEFAULT NULL,
    payload_format   integer  DEFAULT NULL
) RETURNS boolean
AS 'MODULE_PATHNAME', 'mqtt_publish_binary'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.mqtt_publish_binary(text, bytea, integer, boolean, text, text, interval, text, bytea, text[], integer) IS
'Publish a binary payload, bytes unchanged, to an MQTT topic when the transaction commits; optional MQTT 5 properties';
REVOKE ALL ON FUNCTION @extschema@.mqtt_publish_binary(text, bytea, integer, boolean, text, text, interval, text, bytea, text[], integer) FROM PUBLIC;

CREATE FUNCTION @extschema@.mqtt_publish_json(
    topic            text,
    data             json,
    qos              integer  DEFAULT 0,
    retain           boolean  DEFAULT false,
    broker           text     DEFAULT 'default',
    content_type     text     DEFAULT NULL,
    message_expiry   interval DEFAULT NULL,
    response_topic   text     DEFAULT NULL,
    correlation_data bytea    DEFAULT NULL,
    user_properties  text[]   DEFAULT NULL,
    payload_format   integer  DEFAULT NULL
) RETURNS boolean
AS 'MODULE_PATHNAME', 'mqtt_publish_json'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.mqtt_publish_json(text, json, integer, boolean, text, text, interval, text, bytea, text[], integer) IS
'Publish a json value (e.g. row_to_json(NEW)) to an MQTT topic when the transaction commits; optional MQTT 5 properties';
REVOKE ALL ON FUNCTION @extschema@.mqtt_publish_json(text, json, integer, boolean, text, text, interval, text, bytea, text[], integer) FROM PUBLIC;

CREATE FUNCTION @extschema@.mqtt_publish_json(
    topic            text,
    data             jsonb,
    qos              integer  DEFAULT 0,
    retain           boolean  DEFAULT false,
    broker           text     DEFAULT 'default',
    content_type     text     DEFAULT NULL,
    message_expiry   interval DEFAULT NULL,
    response_topic   text     DEFAULT NULL,
    correlation_data bytea    DEFAULT NULL,
    user_properties  text[]   DEFAULT NULL,
    payload_format   integer  DEFAULT NULL
) RETURNS boolean
AS 'MODULE_PATHNAME', 'mqtt_publish_json'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.mqtt_publish_json(text, jsonb, integer, boolean, text, text, interval, text, bytea, text[], integer) IS
'Publish a jsonb value (e.g. jsonb_build_object(...)) to an MQTT topic when the transaction commits; optional MQTT 5 properties';
REVOKE ALL ON FUNCTION @extschema@.mqtt_publish_json(text, jsonb, integer, boolean, text, text, interval, text, bytea, text[], integer) FROM PUBLIC;

CREATE FUNCTION @extschema@.mqtt_publish_json(
    topic            text,
    data             text,
    qos              integer  DEFAULT 0,
    retain           boolean  DEFAULT false,
    broker           text     DEFAULT 'default',
    content_type     text     DEFAULT NULL,
    message_expiry   interval DEFAULT NULL,
    response_topic   text     DEFAULT NULL,
    correlation_data bytea    DEFAULT NULL,
    user_properties  text[]   DEFAULT NULL,
    payload_format   integer  DEFAULT NULL
) RETURNS boolean
LANGUAGE sql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT @extschema@.mqtt_publish_json(topic, data::pg_catalog.json, qos, retain, broker,
    content_type, message_expiry, response_topic, correlation_data, user_properties, payload_format) $$;
COMMENT ON FUNCTION @extschema@.mqtt_publish_json(text, text, integer, boolean, text, text, interval, text, bytea, text[], integer) IS
'Publish a JSON literal, checked to be valid JSON, to an MQTT topic when the transaction commits; optional MQTT 5 properties';
REVOKE ALL ON FUNCTION @extschema@.mqtt_publish_json(text, text, integer, boolean, text, text, interval, text, bytea, text[], integer) FROM PUBLIC;

CREATE FUNCTION @extschema@.mqtt_publish_batch(
    topic_prefix     text,
    payloads         text[],
    qos              integer  DEFAULT 0,
    retain           boolean  DEFAULT false,
    broker           text     DEFAULT 'default',
    content_type     text     DEFAULT NULL,
    message_expiry   interval DEFAULT NULL,
    response_topic   text     DEFAULT NULL,
    correlation_data bytea    DEFAULT NULL,
    user_properties  text[]   DEFAULT NULL,
    payload_format   integer  DEFAULT NULL
) RETURNS integer
AS 'MODULE_PATHNAME', 'mqtt_publish_batch'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.mqtt_publish_batch(text, text[], integer, boolean, text, text, interval, text, bytea, text[], integer) IS
'Publish each non-NULL element to <topic_prefix>/<0-based position>; returns how many were published; optional MQTT 5 properties';
REVOKE ALL ON FUNCTION @extschema@.mqtt_publish_batch(text, text[], integer, boolean, text, text, interval, text, bytea, text[], integer) FROM PUBLIC;


-- mqtt_pub: the publishing functions with properties
CREATE FUNCTION mqtt_pub.mqtt_publish(
    topic            text,
    payload          text     DEFAULT '',
    qos              integer  DEFAULT 0,
    retain           boolean  DEFAULT false,
    broker           text     DEFAULT 'default',
    content_type     text     DEFAULT NULL,
    message_expiry   interval DEFAULT NULL,
    response_topic   text     DEFAULT NULL,
    correlation_data bytea    DEFAULT NULL,
    user_properties  text[]   DEFAULT NULL,
    payload_format   integer  DEFAULT NULL
) RETURNS boolean
AS 'MODULE_PATHNAME', 'mqtt_publish'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
REVOKE ALL ON FUNCTION mqtt_pub.mqtt_publish(text, text, integer, boolean, text, text, interval, text, bytea, text[], integer) FROM PUBLIC;

CREATE FUNCTION mqtt_pub.mqtt_publish_binary(
    topic            text,
    payload          bytea,
    qos              integer  DEFAULT 0,
    retain           boolean  DEFAULT false,
    broker           text     DEFAULT 'default',
    content_type     text     DEFAULT NULL,
    message_expiry   interval DEFAULT NULL,
    response_topic   text     DEFAULT NULL,
    correlation_data bytea    DEFAULT NULL,
    user_properties  text[]   DEFAULT NULL,
    payload_format   integer  DEFAULT NULL
) RETURNS boolean
AS 'MODULE_PATHNAME', 'mqtt_publish_binary'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
REVOKE ALL ON FUNCTION mqtt_pub.mqtt_publish_binary(text, bytea, integer, boolean, text, text, interval, text, bytea, text[], integer) FROM PUBLIC;

CREATE FUNCTION mqtt_pub.mqtt_publish_json(
    topic            text,
    data             json,
    qos              integer  DEFAULT 0,
    retain           boolean  DEFAULT false,
    broker           text     DEFAULT 'default',
    content_type     text     DEFAULT NULL,
    message_expiry   interval DEFAULT NULL,
    response_topic   text     DEFAULT NULL,
    correlation_data bytea    DEFAULT NULL,
    user_properties  text[]   DEFAULT NULL,
    payload_format   integer  DEFAULT NULL
) RETURNS boolean
AS 'MODULE_PATHNAME', 'mqtt_publish_json'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
REVOKE ALL ON FUNCTION mqtt_pub.mqtt_publish_json(text, json, integer, boolean, text, text, interval, text, bytea, text[], integer) FROM PUBLIC;

CREATE FUNCTION mqtt_pub.mqtt_publish_json(
    topic            text,
    data             jsonb,
    qos              integer  DEFAULT 0,
    retain           boolean  DEFAULT false,
    broker           text     DEFAULT 'default',
    content_type     text     DEFAULT NULL,
    message_expiry   interval DEFAULT NULL,
    response_topic   text     DEFAULT NULL,
    correlation_data bytea    DEFAULT NULL,
    user_properties  text[]   DEFAULT NULL,
    payload_format   integer  DEFAULT NULL
) RETURNS boolean
AS 'MODULE_PATHNAME', 'mqtt_publish_json'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
REVOKE ALL ON FUNCTION mqtt_pub.mqtt_publish_json(text, jsonb, integer, boolean, text, text, interval, text, bytea, text[], integer) FROM PUBLIC;

CREATE FUNCTION mqtt_pub.mqtt_publish_json(
    topic            text,
    data             text,
    qos              integer  DEFAULT 0,
    retain           boolean  DEFAULT false,
    broker           text     DEFAULT 'default',
    content_type     text     DEFAULT NULL,
    message_expiry   interval DEFAULT NULL,
    response_topic   text     DEFAULT NULL,
    correlation_data bytea    DEFAULT NULL,
    user_properties  text[]   DEFAULT NULL,
    payload_format   integer  DEFAULT NULL
) RETURNS boolean
LANGUAGE sql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT mqtt_pub.mqtt_publish_json(topic, data::pg_catalog.json, qos, retain, broker,
    content_type, message_expiry, response_topic, correlation_data, user_properties, payload_format) $$;
REVOKE ALL ON FUNCTION mqtt_pub.mqtt_publish_json(text, text, integer, boolean, text, text, interval, text, bytea, text[], integer) FROM PUBLIC;

CREATE FUNCTION mqtt_pub.mqtt_publish_batch(
    topic_prefix     text,
    payloads         text[],
    qos              integer  DEFAULT 0,
    retain           boolean  DEFAULT false,
    broker           text     DEFAULT 'default',
    content_type     text     DEFAULT NULL,
    message_expiry   interval DEFAULT NULL,
    response_topic   text     DEFAULT NULL,
    correlation_data bytea    DEFAULT NULL,
    user_properties  text[]   DEFAULT NULL,
    payload_format   integer  DEFAULT NULL
) RETURNS integer
AS 'MODULE_PATHNAME', 'mqtt_publish_batch'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
REVOKE ALL ON FUNCTION mqtt_pub.mqtt_publish_batch(text, text[], integer, boolean, text, text, interval, text, bytea, text[], integer) FROM PUBLIC;

-- Give every GRANT on an old signature again on its new one, then drop the old one.
DO $do$
DECLARE
    f record;
    g record;
BEGIN
    FOR f IN SELECT * FROM (VALUES
        ('@extschema@.mqtt_publish(text, text, integer, boolean, text)', '@extschema@.mqtt_publish(text, text, integer, boolean, text, text, interval, text, bytea, text[], integer)'),
        ('@extschema@.mqtt_publish_binary(text, bytea, integer, boolean, text)', '@extschema@.mqtt_publish_binary(text, bytea, integer, boolean, text, text, interval, text, bytea, text[], integer)'),
        ('@extschema@.mqtt_publish_json(text, json, integer, boolean, text)', '@extschema@.mqtt_publish_json(text, json, integer, boolean, text, text, interval, text, bytea, text[], integer)'),
        ('@extschema@.mqtt_publish_json(text, jsonb, integer, boolean, text)', '@extschema@.mqtt_publish_json(text, jsonb, integer, boolean, text, text, interval, text, bytea, text[], integer)'),
        ('@extschema@.mqtt_publish_json(text, text, integer, boolean, text)', '@extschema@.mqtt_publish_json(text, text, integer, boolean, text, text, interval, text, bytea, text[], integer)'),
        ('@extschema@.mqtt_publish_batch(text, text[], integer, boolean, text)', '@extschema@.mqtt_publish_batch(text, text[], integer, boolean, text, text, interval, text, bytea, text[], integer)'),
        ('mqtt_pub.mqtt_publish(text, text, integer, boolean, text)', 'mqtt_pub.mqtt_publish(text, text, integer, boolean, text, text, interval, text, bytea, text[], integer)'),
        ('mqtt_pub.mqtt_publish_binary(text, bytea, integer, boolean, text)', 'mqtt_pub.mqtt_publish_binary(text, bytea, integer, boolean, text, text, interval, text, bytea, text[], integer)'),
        ('mqtt_pub.mqtt_publish_json(text, json, integer, boolean, text)', 'mqtt_pub.mqtt_publish_json(text, json, integer, boolean, text, text, interval, text, bytea, text[], integer)'),
        ('mqtt_pub.mqtt_publish_json(text, jsonb, integer, boolean, text)', 'mqtt_pub.mqtt_publish_json(text, jsonb, integer, boolean, text, text, interval, text, bytea, text[], integer)'),
        ('mqtt_pub.mqtt_publish_json(text, text, integer, boolean, text)', 'mqtt_pub.mqtt_publish_json(text, text, integer, boolean, text, text, interval, text, bytea, text[], integer)'),
        ('mqtt_pub.mqtt_publish_batch(text, text[], integer, boolean, text)', 'mqtt_pub.mqtt_publish_batch(text, text[], integer, boolean, text, text, interval, text, bytea, text[], integer)')
    ) AS v(old_sig, new_sig)
    LOOP
        FOR g IN SELECT a.grantee, a.is_grantable
                 FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
                 WHERE p.oid OPERATOR(pg_catalog.=) f.old_sig::pg_catalog.regprocedure
                   AND a.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
                   AND a.grantee OPERATOR(pg_catalog.<>) p.proowner
        LOOP
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO %s%s', f.new_sig,
                CASE WHEN g.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                     ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(g.grantee)) END,
                CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
        END LOOP;
        EXECUTE pg_catalog.format('DROP FUNCTION %s', f.old_sig);
    END LOOP;
END
$do$;

-- mqtt_status() with messages_expired: same arguments, another result, so it is dropped and
-- created again, keeping its grants (pg_monitor, and any a DBA gave).
DO $do$
DECLARE
    s text;
    grants text[];
    g text;
BEGIN
    FOREACH s IN ARRAY ARRAY['@extschema@', 'mqtt_pub'] LOOP
        SELECT pg_catalog.array_agg(pg_catalog.format('GRANT EXECUTE ON FUNCTION %s.mqtt_status() TO %s%s', s,
                   CASE WHEN a.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                        ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(a.grantee)) END,
                   CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END))
          INTO grants
          FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
         WHERE p.oid OPERATOR(pg_catalog.=) pg_catalog.format('%s.mqtt_status()', s)::pg_catalog.regprocedure
           AND a.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
           AND a.grantee OPERATOR(pg_catalog.<>) p.proowner;
        EXECUTE pg_catalog.format('DROP FUNCTION %s.mqtt_status()', s);
        EXECUTE pg_catalog.format($f$CREATE FUNCTION %s.mqtt_status(
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
            OUT outbox_oldest_age interval,
            OUT messages_expired  bigint
        ) RETURNS SETOF record
        AS 'MODULE_PATHNAME', 'mqtt_status'
        LANGUAGE C VOLATILE PARALLEL SAFE$f$, s);
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s.mqtt_status() FROM PUBLIC', s);
        FOREACH g IN ARRAY COALESCE(grants, '{}') LOOP
            EXECUTE g;
        END LOOP;
    END LOOP;
END
$do$;
COMMENT ON FUNCTION @extschema@.mqtt_status() IS 'Connection state and delivery counters per MQTT broker';
