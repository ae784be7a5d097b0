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
    attempts      integer     NOT NULL DEFAULT 0,
    next_retry_at timestamptz NOT NULL DEFAULT now(),
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_error    text
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
