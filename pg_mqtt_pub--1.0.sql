-- pg_mqtt_pub 1.0: publish MQTT messages from SQL, triggers and pg_cron jobs.
\echo Use "CREATE EXTENSION pg_mqtt_pub" to load this file. \quit

CREATE SCHEMA mqtt_pub;
COMMENT ON SCHEMA mqtt_pub IS 'pg_mqtt_pub: outbox, dead letters and their views';

-- The cold path: messages that wait for a broker, WAL-logged like any table. Rows are written
-- by publishers (in their own transaction, so a rollback removes them) and by the worker (hot
-- messages it takes back from the ring while a broker is down). The worker deletes a row only
-- after the broker acknowledged it (QoS 1 PUBACK, QoS 2 PUBCOMP; QoS 0 once written).
CREATE TABLE mqtt_pub.outbox (
    id            bigserial   PRIMARY KEY,
    broker        text        NOT NULL,
    topic         text        NOT NULL,
    payload       bytea       NOT NULL,
    qos           smallint    NOT NULL CHECK (qos BETWEEN 0 AND 2),
    retain        boolean     NOT NULL,
    -- 0: recovered from the hot path (older than anything a publisher wrote meanwhile),
    -- 1: written by a publisher. The worker drains lane 0 first, each lane in id order.
    lane          smallint    NOT NULL DEFAULT 1 CHECK (lane IN (0, 1)),
    -- failed delivery attempts; a failing row waits until next_retry_at (exponential backoff)
    attempts        integer     NOT NULL DEFAULT 0,
    next_retry_at   timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    first_failed_at timestamptz,
    last_attempt_at timestamptz,
    last_error      text
);
CREATE INDEX outbox_drain_idx ON mqtt_pub.outbox (broker, lane, id);
COMMENT ON TABLE mqtt_pub.outbox IS 'Messages waiting for a broker (the cold path); drained in order by the worker';

CREATE VIEW mqtt_pub.outbox_summary AS
SELECT broker,
       count(*)                                   AS pending,
       coalesce(sum(octet_length(payload) + octet_length(topic)), 0)::bigint AS bytes,
       now() - min(created_at)                    AS oldest_age,
       min(next_retry_at)                         AS next_retry_at,
       count(*) FILTER (WHERE attempts > 0)       AS retrying
FROM mqtt_pub.outbox
GROUP BY broker;
COMMENT ON VIEW mqtt_pub.outbox_summary IS 'Outbox depth per broker';

-- Messages that failed pg_mqtt_pub.poison_max_attempts times. Kept for investigation and
-- replay (mqtt_pub.replay_dead_letters), pruned after pg_mqtt_pub.dead_letter_retain_days.
CREATE TABLE mqtt_pub.dead_letters (
    id               bigserial   PRIMARY KEY,
    original_id      bigint,
    broker           text        NOT NULL,
    topic            text        NOT NULL,
    payload          bytea       NOT NULL,
    qos              smallint    NOT NULL,
    retain           boolean     NOT NULL,
    attempts         integer     NOT NULL,
    first_failed_at  timestamptz,
    last_error       text,
    dead_lettered_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_broker_idx ON mqtt_pub.dead_letters (broker, dead_lettered_at, id);
CREATE INDEX dead_letters_age_idx ON mqtt_pub.dead_letters (dead_lettered_at);
COMMENT ON TABLE mqtt_pub.dead_letters IS 'Messages that exhausted their delivery attempts';

CREATE VIEW mqtt_pub.dead_letter_summary AS
SELECT broker,
       count(*)                        AS dead_letters,
       min(dead_lettered_at)           AS oldest,
       max(dead_lettered_at)           AS newest,
       count(DISTINCT topic)           AS distinct_topics,
       mode() WITHIN GROUP (ORDER BY last_error) AS most_frequent_error
FROM mqtt_pub.dead_letters
GROUP BY broker;
COMMENT ON VIEW mqtt_pub.dead_letter_summary IS 'Dead letters per broker: how many, since when, why';

-- Move the oldest dead letters back to the outbox, attempts reset. Returns how many.
CREATE FUNCTION mqtt_pub.replay_dead_letters(broker_name text DEFAULT NULL, max_count integer DEFAULT 100)
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
       AND NOT EXISTS (SELECT 1 FROM mqtt_pub.dead_letters d WHERE d.broker = broker_name) THEN
        RAISE EXCEPTION 'MQTT broker "%" does not exist', broker_name
            USING ERRCODE = 'undefined_object',
                  HINT = 'Pass NULL for all brokers, or the name of a broker with dead letters.';
    END IF;
    WITH picked AS (
        SELECT d.id FROM mqtt_pub.dead_letters d
        WHERE broker_name IS NULL OR d.broker = broker_name
        ORDER BY d.dead_lettered_at, d.id
        LIMIT max_count
        FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM mqtt_pub.dead_letters d USING picked WHERE d.id = picked.id
        RETURNING d.id, d.broker, d.topic, d.payload, d.qos, d.retain, d.dead_lettered_at
    )
    INSERT INTO mqtt_pub.outbox (broker, topic, payload, qos, retain, lane)
    SELECT g.broker, g.topic, g.payload, g.qos, g.retain, 1 FROM gone g ORDER BY g.dead_lettered_at, g.id;
    GET DIAGNOSTICS moved = ROW_COUNT;
    RETURN moved;
END
$$;
COMMENT ON FUNCTION mqtt_pub.replay_dead_letters(text, integer) IS
'Move the oldest dead letters (of one broker, or all) back to the outbox for another try';

REVOKE ALL ON mqtt_pub.dead_letters FROM PUBLIC;
REVOKE ALL ON mqtt_pub.dead_letter_summary FROM PUBLIC;
REVOKE ALL ON FUNCTION mqtt_pub.replay_dead_letters(text, integer) FROM PUBLIC;

-- Publishers reach the outbox only through the publish functions, which run as the caller:
-- the functions insert with the privileges of the extension owner (see mqtt_publish below).
REVOKE ALL ON mqtt_pub.outbox FROM PUBLIC;
REVOKE ALL ON mqtt_pub.outbox_summary FROM PUBLIC;

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
