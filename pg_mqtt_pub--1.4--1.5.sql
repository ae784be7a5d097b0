-- pg_mqtt_pub 1.4 -> 1.5: what a DBA needs at 3 a.m. (issue #25).
--
-- * mqtt_status() says what is wrong now (problem, problem_since) apart from the last error,
--   where and since when a broker is connected, when the next attempt comes, what waits and for
--   how long, the recent commit-to-acknowledge latency, the dead letters there are now, and since
--   when the counters count (stats_reset).
-- * mqtt_pub.outbox_summary shows each broker's state beside its backlog.
-- * mqtt_pub.mqtt_reconnect(): connect now; mqtt_pub.mqtt_stats_reset(): counters from zero;
--   mqtt_pub.mqtt_discard(): the explicit, logged way to throw messages away (DROP EXTENSION
--   refuses while messages or dead letters exist: src/backend/drop_guard.rs).
-- * replay_dead_letters() refuses a broker that no longer exists (42704) instead of putting rows
--   into the outbox that no broker would ever deliver.
-- Every operator is OPERATOR(pg_catalog.x) and every function qualified (docs/SECURITY.md).
\echo Use "ALTER EXTENSION pg_mqtt_pub UPDATE TO '1.5'" to load this file. \quit

-- mqtt_status() with the columns above: same arguments, another result, so it is dropped and
-- created again, keeping its grants.
DO $do$
DECLARE
    s text;
    grants text[];
    g text;
    users text;
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
        -- A view (or other object) someone built on mqtt_status() would make the DROP fail with
        -- "other objects depend on it", and with it this update and its security fixes: say so.
        SELECT pg_catalog.string_agg(pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid), ', ')
          INTO users
          FROM pg_catalog.pg_depend d
         WHERE d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass
           AND d.refobjid OPERATOR(pg_catalog.=) pg_catalog.format('%s.mqtt_status()', s)::pg_catalog.regprocedure::pg_catalog.oid
           AND d.deptype OPERATOR(pg_catalog.=) 'n';
        IF users IS NOT NULL THEN
            RAISE EXCEPTION 'cannot update pg_mqtt_pub to 1.5: % depends on %.mqtt_status()', users, s
                USING ERRCODE = 'dependent_objects_still_exist',
                DETAIL = 'The update re-creates mqtt_status() with more result columns (problem, problem_since, connected_node, connected_since, next_attempt_at, ring_waiting, oldest_waiting_age, latency_p50_ms, latency_p99_ms, dead_letters, stats_reset).',
                HINT = 'Drop those objects, run ALTER EXTENSION pg_mqtt_pub UPDATE (it carries security fixes: docs/SECURITY.md), then create them again.';
        END IF;
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
            OUT messages_expired  bigint,
            OUT outbox_bytes      bigint,
            OUT outbox_max_bytes  bigint,
            OUT problem           text,
            OUT problem_since     timestamptz,
            OUT connected_node    text,
            OUT connected_since   timestamptz,
            OUT next_attempt_at   timestamptz,
            OUT ring_waiting      bigint,
            OUT oldest_waiting_age interval,
            OUT latency_p50_ms    double precision,
            OUT latency_p99_ms    double precision,
            OUT dead_letters      bigint,
            OUT stats_reset       timestamptz
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

COMMENT ON FUNCTION @extschema@.mqtt_status() IS 'Connection state, current problem, backlog, latency and delivery counters per MQTT broker';
COMMENT ON FUNCTION mqtt_pub.mqtt_status() IS 'Connection state, current problem, backlog, latency and delivery counters per MQTT broker';

-- The backlog beside the state of the broker it waits for (NULL: the broker no longer exists).
-- Reading it needs EXECUTE on mqtt_pub.mqtt_status() as well (pg_monitor has it).
CREATE OR REPLACE VIEW mqtt_pub.outbox_summary AS
SELECT g.broker, g.pending, g.bytes, g.oldest_age, g.next_retry_at, g.retrying,
       s.connected, s.delivery_mode, s.problem, s.next_attempt_at
FROM (
    SELECT o.broker,
           pg_catalog.count(*)                                                       AS pending,
           COALESCE(pg_catalog.sum(pg_catalog.octet_length(o.payload)
                    OPERATOR(pg_catalog.+) pg_catalog.octet_length(o.topic)), 0)::pg_catalog.int8 AS bytes,
           pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.min(o.created_at)     AS oldest_age,
           pg_catalog.min(o.next_retry_at)                                           AS next_retry_at,
           pg_catalog.count(*) FILTER (WHERE o.attempts OPERATOR(pg_catalog.>) 0)   AS retrying
    FROM mqtt_pub.outbox o
    GROUP BY o.broker
) g
LEFT JOIN mqtt_pub.mqtt_status() s ON s.broker_name OPERATOR(pg_catalog.=) g.broker;
COMMENT ON VIEW mqtt_pub.outbox_summary IS
'Messages waiting in the outbox per broker, and the state of that broker (NULL: it no longer exists)';

CREATE FUNCTION mqtt_pub.mqtt_reconnect(broker text DEFAULT NULL) RETURNS integer
AS 'MODULE_PATHNAME', 'mqtt_reconnect'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION mqtt_pub.mqtt_reconnect(text) IS
'A broker waiting to reconnect (NULL: every broker) tries now and its backoff starts over; returns how many brokers were asked';
REVOKE ALL ON FUNCTION mqtt_pub.mqtt_reconnect(text) FROM PUBLIC;

CREATE FUNCTION mqtt_pub.mqtt_stats_reset(broker text DEFAULT NULL) RETURNS timestamptz
AS 'MODULE_PATHNAME', 'mqtt_stats_reset'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION mqtt_pub.mqtt_stats_reset(text) IS
'Reset the counters and latency of mqtt_status() for one broker (NULL: all); returns the reset time';
REVOKE ALL ON FUNCTION mqtt_pub.mqtt_stats_reset(text) FROM PUBLIC;

-- Runs as its caller, who must be allowed to DELETE from the outbox and the dead letters (their
-- owner, or a superuser): throwing committed messages away is a decision, logged with who made it.
CREATE FUNCTION mqtt_pub.mqtt_discard(broker_name text DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    messages bigint;
    letters  bigint;
BEGIN
    IF broker_name IS NOT NULL
       AND broker_name OPERATOR(pg_catalog.<>) 'default'::pg_catalog.text
       AND NOT EXISTS (SELECT 1 FROM mqtt_pub.brokers b WHERE b.name OPERATOR(pg_catalog.=) broker_name)
       AND NOT EXISTS (SELECT 1 FROM mqtt_pub.outbox o WHERE o.broker OPERATOR(pg_catalog.=) broker_name)
       AND NOT EXISTS (SELECT 1 FROM mqtt_pub.dead_letters d WHERE d.broker OPERATOR(pg_catalog.=) broker_name) THEN
        RAISE EXCEPTION 'MQTT broker "%" does not exist', broker_name
            USING ERRCODE = 'undefined_object',
                  HINT = 'Pass NULL to discard the messages of every broker, or the name of a broker with messages (mqtt_pub.outbox_summary).';
    END IF;
    WITH gone AS (
        DELETE FROM mqtt_pub.outbox o
        WHERE broker_name IS NULL OR o.broker OPERATOR(pg_catalog.=) broker_name
        RETURNING 1
    ) SELECT pg_catalog.count(*) INTO messages FROM gone;
    WITH gone AS (
        DELETE FROM mqtt_pub.dead_letters d
        WHERE broker_name IS NULL OR d.broker OPERATOR(pg_catalog.=) broker_name
        RETURNING 1
    ) SELECT pg_catalog.count(*) INTO letters FROM gone;
    RAISE LOG 'pg_mqtt_pub: role % discarded % undelivered message(s) and % dead letter(s) of %',
        pg_catalog.quote_ident(CURRENT_USER::pg_catalog.text), messages, letters,
        COALESCE('broker ' OPERATOR(pg_catalog.||) pg_catalog.quote_ident(broker_name), 'every broker');
    RETURN messages OPERATOR(pg_catalog.+) letters;
END
$$;
COMMENT ON FUNCTION mqtt_pub.mqtt_discard(text) IS
'Delete the undelivered messages and dead letters of one broker (NULL: all), on purpose and logged; returns how many';
REVOKE ALL ON FUNCTION mqtt_pub.mqtt_discard(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION mqtt_pub.replay_dead_letters(broker_name text DEFAULT NULL, max_count integer DEFAULT 100)
RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    moved integer;
    gone_brokers text;
BEGIN
    IF max_count IS NULL OR max_count OPERATOR(pg_catalog.<) 0 THEN
        RAISE EXCEPTION 'max_count must be zero or more, not %', COALESCE(max_count::pg_catalog.text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass max_count := 100, or how many dead letters to replay.';
    END IF;
    -- Reading mqtt_pub.brokers holds it (ACCESS SHARE) until this transaction ends, so
    -- mqtt_broker_remove (ACCESS EXCLUSIVE) cannot remove a broker after this check.
    SELECT pg_catalog.string_agg(DISTINCT pg_catalog.concat('"', d.broker, '"'), ', ')
      INTO gone_brokers
      FROM mqtt_pub.dead_letters d
     WHERE (broker_name IS NULL OR d.broker OPERATOR(pg_catalog.=) broker_name)
       AND d.broker OPERATOR(pg_catalog.<>) 'default'::pg_catalog.text
       AND NOT EXISTS (SELECT 1 FROM mqtt_pub.brokers b WHERE b.name OPERATOR(pg_catalog.=) d.broker);
    IF gone_brokers IS NOT NULL
       OR (broker_name IS NOT NULL AND broker_name OPERATOR(pg_catalog.<>) 'default'::pg_catalog.text
           AND NOT EXISTS (SELECT 1 FROM mqtt_pub.brokers b WHERE b.name OPERATOR(pg_catalog.=) broker_name)) THEN
        RAISE EXCEPTION 'MQTT broker % does not exist', COALESCE(gone_brokers, pg_catalog.concat('"', broker_name, '"'))
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'Dead letters can be replayed only to a broker that exists: nothing else would ever deliver them.',
                  HINT = 'Add the broker again with mqtt_broker_add(), or delete those dead letters (SELECT mqtt_pub.mqtt_discard(''name'')).';
    END IF;
    -- properties, message id and expiry go back unchanged: a consumer sees the same id again
    WITH picked AS (
        SELECT d.id FROM mqtt_pub.dead_letters d
        WHERE broker_name IS NULL OR d.broker OPERATOR(pg_catalog.=) broker_name
        ORDER BY d.dead_lettered_at, d.id
        LIMIT max_count
        FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM mqtt_pub.dead_letters d USING picked WHERE d.id OPERATOR(pg_catalog.=) picked.id
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

-- mqtt_publish_json(text): invalid JSON text is refused with a hint (PostgreSQL's json input
-- function gives none). The cast is caught only to add the hint; the publish runs outside the
-- exception block.
CREATE OR REPLACE FUNCTION @extschema@.mqtt_publish_json(
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
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    j pg_catalog.json;
    msg text;
    det text;
BEGIN
    BEGIN
        j := data::pg_catalog.json;
    EXCEPTION WHEN invalid_text_representation THEN
        GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL;
        RAISE EXCEPTION '%', msg USING ERRCODE = 'invalid_text_representation', DETAIL = det,
            HINT = 'mqtt_publish_json() takes JSON text such as ''{"temperature": 21.5}''; publish other text with mqtt_publish().';
    END;
    RETURN @extschema@.mqtt_publish_json(topic, j, qos, retain, broker,
        content_type, message_expiry, response_topic, correlation_data, user_properties, payload_format);
END
$$;
-- mqtt_pub's name only forwards (the check and its hint are in one place).
CREATE OR REPLACE FUNCTION mqtt_pub.mqtt_publish_json(
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
AS $$ SELECT @extschema@.mqtt_publish_json(topic, data, qos, retain, broker,
    content_type, message_expiry, response_topic, correlation_data, user_properties, payload_format) $$;
