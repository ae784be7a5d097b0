-- pg_mqtt_pub 1.0: publish MQTT messages from SQL, triggers and pg_cron jobs.
\echo Use "CREATE EXTENSION pg_mqtt_pub" to load this file. \quit

CREATE SCHEMA mqtt_pub;
COMMENT ON SCHEMA mqtt_pub IS 'pg_mqtt_pub: outbox, dead letters and their views';

-- The cold path: messages that wait for a broker, WAL-logged like any table. Rows are written
-- by publishers (in their own transaction, so a rollback removes them) and by the worker (hot
-- messages it takes back from the ring while a broker is down). The worker deletes a row only
-- after the broker acknowledged it (QoS 1 PUBACK, QoS 2 PUBCOMP; QoS 0 once written).
CREATE TABLE mqtt_pub.outbox (
    id            bigserial,
    -- "C": broker names are ASCII, and every inserted row is compared in the key
    broker        text        COLLATE "C" NOT NULL,
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
    last_error      text,
    -- The drain order is the key: one index to maintain per message, not two. (id alone comes
    -- from the sequence; the worker always addresses a row by broker, lane and id.)
    PRIMARY KEY (broker, lane, id)
);
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
    broker           text        COLLATE "C" NOT NULL,
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
       AND NOT EXISTS (SELECT 1 FROM mqtt_pub.brokers b WHERE b.name = broker_name)
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
    OUT ring_used_bytes   bigint,
    OUT outbox_oldest_age interval
) RETURNS SETOF record
AS 'MODULE_PATHNAME', 'mqtt_status'
LANGUAGE C VOLATILE PARALLEL SAFE;

COMMENT ON FUNCTION mqtt_status() IS 'Connection state and delivery counters per MQTT broker';
-- It shows hosts, errors with file paths and queue depths: monitoring roles and the owner only
-- (docs/SECURITY.md). Others: GRANT EXECUTE ON FUNCTION mqtt_status() TO some_role;
REVOKE ALL ON FUNCTION mqtt_status() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION mqtt_status() TO pg_monitor;

-- Publishing is a privilege: an application role gets it with
--   GRANT EXECUTE ON FUNCTION mqtt_publish(text, text, integer, boolean, text) TO app_role;
REVOKE ALL ON FUNCTION mqtt_publish(text, text, integer, boolean, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION mqtt_publish_binary(text, bytea, integer, boolean, text) FROM PUBLIC;

-- JSON: the payload is PostgreSQL's own text form of the value (json as written, jsonb as its
-- output function prints it). The text overload exists so that a bare literal is not ambiguous
-- between json and jsonb; it checks the literal is valid JSON.
CREATE FUNCTION mqtt_publish_json(
    topic   text,
    data    json,
    qos     integer DEFAULT 0,
    retain  boolean DEFAULT false,
    broker  text    DEFAULT 'default'
) RETURNS boolean
AS 'MODULE_PATHNAME', 'mqtt_publish_json'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION mqtt_publish_json(
    topic   text,
    data    jsonb,
    qos     integer DEFAULT 0,
    retain  boolean DEFAULT false,
    broker  text    DEFAULT 'default'
) RETURNS boolean
AS 'MODULE_PATHNAME', 'mqtt_publish_json'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION mqtt_publish_json(
    topic   text,
    data    text,
    qos     integer DEFAULT 0,
    retain  boolean DEFAULT false,
    broker  text    DEFAULT 'default'
) RETURNS boolean
LANGUAGE sql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT @extschema@.mqtt_publish_json(topic, data::json, qos, retain, broker) $$;

COMMENT ON FUNCTION mqtt_publish_json(text, json, integer, boolean, text) IS
'Publish a json value (e.g. row_to_json(NEW)) to an MQTT topic when the transaction commits';
COMMENT ON FUNCTION mqtt_publish_json(text, jsonb, integer, boolean, text) IS
'Publish a jsonb value (e.g. jsonb_build_object(...)) to an MQTT topic when the transaction commits';
COMMENT ON FUNCTION mqtt_publish_json(text, text, integer, boolean, text) IS
'Publish a JSON literal, checked to be valid JSON, to an MQTT topic when the transaction commits';

-- One message per non-NULL element, to <topic_prefix>/<0-based position in the array>.
CREATE FUNCTION mqtt_publish_batch(
    topic_prefix text,
    payloads     text[],
    qos          integer DEFAULT 0,
    retain       boolean DEFAULT false,
    broker       text    DEFAULT 'default'
) RETURNS integer
AS 'MODULE_PATHNAME', 'mqtt_publish_batch'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION mqtt_publish_batch(text, text[], integer, boolean, text) IS
'Publish each non-NULL element to <topic_prefix>/<0-based position>; returns how many were published';

REVOKE ALL ON FUNCTION mqtt_publish_json(text, json, integer, boolean, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION mqtt_publish_json(text, jsonb, integer, boolean, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION mqtt_publish_json(text, text, integer, boolean, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION mqtt_publish_batch(text, text[], integer, boolean, text) FROM PUBLIC;

---------------------------------------------------------------------------------------------
-- Trigger helpers. The triggers themselves are the catalog (pg_trigger): their arguments say
-- where they publish, mqtt_pub.triggers shows them. Names: mqtt_pub_event (row level) and
-- mqtt_pub_resultset_<operation> (statement level, one per operation because PostgreSQL allows
-- transition tables only on single-event triggers).
---------------------------------------------------------------------------------------------

-- The row trigger (compiled): arguments topic_prefix, qos, broker, include_meta.
CREATE FUNCTION mqtt_pub.event_trigger() RETURNS trigger
AS 'MODULE_PATHNAME', 'mqtt_pub_event_trigger'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION mqtt_pub.event_trigger() IS
'Row trigger of mqtt_trigger_event_setup: one message per changed row';

-- The statement trigger (compiled): arguments topic_prefix, qos, broker, include_meta,
-- rows_per_message. Not SECURITY DEFINER: it serializes rows with the rights of the role that
-- ran the DML, and reads the transition tables the trigger manager hands it, never a relation
-- looked up by name (src/resultset.rs, docs/SECURITY.md).
CREATE FUNCTION mqtt_pub.resultset_trigger() RETURNS trigger
AS 'MODULE_PATHNAME', 'mqtt_pub_resultset_trigger'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION mqtt_pub.resultset_trigger() IS
'Statement trigger of mqtt_trigger_resultset_setup: one message per statement (split when large)';

-- The setup functions are compiled (src/setup.rs): they run with the caller's rights, use the
-- caller's search_path only to resolve the table name (as to_regclass does), and need no
-- internal SQL helper that PUBLIC would have to be allowed to execute.
CREATE FUNCTION mqtt_trigger_event_setup(
    table_name   text,
    topic_prefix text    DEFAULT NULL,
    operations   text[]  DEFAULT '{INSERT,UPDATE,DELETE}',
    qos          integer DEFAULT 1,
    broker       text    DEFAULT 'default',
    include_meta boolean DEFAULT true
) RETURNS text
AS 'MODULE_PATHNAME', 'mqtt_trigger_event_setup'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION mqtt_trigger_event_setup(text, text, text[], integer, text, boolean) IS
'Publish every row change of a table to <topic_prefix>/<insert|update|delete>; returns the prefix';

CREATE FUNCTION mqtt_trigger_resultset_setup(
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
COMMENT ON FUNCTION mqtt_trigger_resultset_setup(text, text, text[], integer, text, boolean, integer) IS
'Publish each statement''s changed rows of a table as one message (split when large); returns the prefix';

CREATE FUNCTION mqtt_trigger_remove(table_name text) RETURNS integer
AS 'MODULE_PATHNAME', 'mqtt_trigger_remove'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION mqtt_trigger_remove(text) IS
'Remove the triggers mqtt_trigger_event_setup and mqtt_trigger_resultset_setup created on a table; returns how many';

CREATE VIEW mqtt_pub.triggers AS
SELECT t.tgrelid::regclass AS table_name,
       CASE WHEN t.tgfoid = 'mqtt_pub.event_trigger()'::regprocedure THEN 'event' ELSE 'resultset' END AS kind,
       t.tgname AS trigger_name,
       array_remove(ARRAY[CASE WHEN t.tgtype & 4 <> 0 THEN 'INSERT' END,
                          CASE WHEN t.tgtype & 16 <> 0 THEN 'UPDATE' END,
                          CASE WHEN t.tgtype & 8 <> 0 THEN 'DELETE' END], NULL) AS operations,
       a[1] AS topic_prefix,
       a[2]::integer AS qos,
       a[3] AS broker,
       a[4]::boolean AS include_meta,
       a[5]::integer AS rows_per_message,
       t.tgenabled <> 'D' AS enabled
FROM pg_trigger t
-- the arguments: pg_trigger.tgargs holds them as NUL-terminated strings
CROSS JOIN LATERAL (
    SELECT coalesce(array_agg(convert_from(substring(t.tgargs FROM z.s + 1 FOR z.e - z.s - 1), getdatabaseencoding())
                              ORDER BY z.e), '{}') AS a
    FROM (SELECT g.e, coalesce(lag(g.e) OVER (ORDER BY g.e), 0) AS s
          FROM generate_series(1, length(t.tgargs)) AS g(e)
          WHERE get_byte(t.tgargs, g.e - 1) = 0) z
) AS args(a)
WHERE t.tgparentid = 0
  AND t.tgfoid IN ('mqtt_pub.event_trigger()'::regprocedure, 'mqtt_pub.resultset_trigger()'::regprocedure);
COMMENT ON VIEW mqtt_pub.triggers IS 'The publishing triggers set up by the mqtt_trigger_*_setup helpers';

-- Setting up a trigger publishes on behalf of everyone who changes the table: a privilege.
-- A role gets it with (see README, "Privileges"):
--   GRANT EXECUTE ON FUNCTION mqtt_trigger_event_setup(text, text, text[], integer, text, boolean),
--                             mqtt_pub.event_trigger() TO app_owner;
REVOKE ALL ON FUNCTION mqtt_trigger_event_setup(text, text, text[], integer, text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION mqtt_trigger_resultset_setup(text, text, text[], integer, text, boolean, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION mqtt_trigger_remove(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION mqtt_pub.event_trigger() FROM PUBLIC;
REVOKE ALL ON FUNCTION mqtt_pub.resultset_trigger() FROM PUBLIC;
REVOKE ALL ON mqtt_pub.triggers FROM PUBLIC;
GRANT USAGE ON SCHEMA mqtt_pub TO PUBLIC;

---------------------------------------------------------------------------------------------
-- Named brokers. `default` comes from the pg_mqtt_pub.broker_* settings and is not a row here.
-- The table holds passwords: readable by its owner (the superuser who created the extension)
-- only; mqtt_pub.broker_list shows everything else. Changes reach the worker at COMMIT (the
-- statement trigger below marks the transaction; see src/catalog.rs).
---------------------------------------------------------------------------------------------
CREATE TABLE mqtt_pub.brokers (
    name        text        PRIMARY KEY,
    -- the broker's status slot in shared memory (1 .. pg_mqtt_pub.max_brokers - 1)
    slot        smallint    NOT NULL UNIQUE CHECK (slot > 0),
    host        text        NOT NULL,
    port        integer     NOT NULL CHECK (port BETWEEN 1 AND 65535),
    username    text,
    password    text,
    -- a file readable by the server holding the password (first line); read at each connect
    password_file text,
    use_tls     boolean     NOT NULL DEFAULT false,
    ca_cert     text,
    client_cert text,
    client_key  text,
    tls_version text        NOT NULL DEFAULT 'tlsv1.2' CHECK (tls_version IN ('tlsv1.2', 'tlsv1.3')),
    client_id   text,
    keepalive   integer     NOT NULL DEFAULT 60 CHECK (keepalive BETWEEN 5 AND 65535),
    created_at  timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON mqtt_pub.brokers FROM PUBLIC;
COMMENT ON TABLE mqtt_pub.brokers IS 'Named MQTT brokers (mqtt_broker_add); holds passwords: owner only';
-- pg_dump keeps the brokers with the database.
SELECT pg_catalog.pg_extension_config_dump('mqtt_pub.brokers', '');

CREATE FUNCTION mqtt_pub.brokers_changed() RETURNS trigger
AS 'MODULE_PATHNAME', 'mqtt_pub_brokers_changed'
LANGUAGE C VOLATILE;
REVOKE ALL ON FUNCTION mqtt_pub.brokers_changed() FROM PUBLIC;
CREATE TRIGGER brokers_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON mqtt_pub.brokers
    FOR EACH STATEMENT EXECUTE FUNCTION mqtt_pub.brokers_changed();

CREATE FUNCTION mqtt_pub.broker_slot_busy(slot integer) RETURNS boolean
AS 'MODULE_PATHNAME', 'mqtt_pub_broker_slot_busy'
LANGUAGE C VOLATILE;
REVOKE ALL ON FUNCTION mqtt_pub.broker_slot_busy(integer) FROM PUBLIC;

CREATE VIEW mqtt_pub.broker_list AS
SELECT name, host, port, username, password IS NOT NULL AS has_password, password_file, use_tls, ca_cert,
       client_cert, client_key, tls_version, client_id, keepalive, created_at
FROM mqtt_pub.brokers;
COMMENT ON VIEW mqtt_pub.broker_list IS 'Named MQTT brokers without their passwords';
REVOKE ALL ON mqtt_pub.broker_list FROM PUBLIC;

CREATE FUNCTION mqtt_broker_add(
    name        text,
    host        text,
    port        integer DEFAULT 1883,
    username    text    DEFAULT NULL,
    password    text    DEFAULT NULL,
    use_tls     boolean DEFAULT false,
    ca_cert     text    DEFAULT NULL,
    client_cert text    DEFAULT NULL,
    client_key  text    DEFAULT NULL,
    tls_version text    DEFAULT 'tlsv1.2',
    client_id   text    DEFAULT NULL,
    keepalive   integer DEFAULT 60,
    password_file text  DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- An error raised in here must not write the statement (and an inline password) to the log.
SET log_min_error_statement = panic
AS $$
DECLARE
    max_slots integer := current_setting('pg_mqtt_pub.max_brokers')::integer;
    free      integer;
BEGIN
    IF name IS NULL OR host IS NULL OR port IS NULL OR use_tls IS NULL OR tls_version IS NULL OR keepalive IS NULL THEN
        RAISE EXCEPTION '% must not be NULL',
            CASE WHEN name IS NULL THEN 'name' WHEN host IS NULL THEN 'host' WHEN port IS NULL THEN 'port'
                 WHEN use_tls IS NULL THEN 'use_tls' WHEN tls_version IS NULL THEN 'tls_version' ELSE 'keepalive' END
            USING ERRCODE = 'null_value_not_allowed', HINT = 'Leave the argument out to use its default.';
    END IF;
    IF name = 'default' THEN
        RAISE EXCEPTION 'the broker "default" cannot be added' USING ERRCODE = 'reserved_name',
            HINT = 'It is configured by the pg_mqtt_pub.broker_* settings; choose another name.';
    END IF;
    IF name !~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$' THEN
        RAISE EXCEPTION 'invalid MQTT broker name "%"', name USING ERRCODE = 'invalid_parameter_value',
            DETAIL = 'A broker name is 1 to 63 letters, digits, "_", "." or "-", starting with a letter or digit.',
            HINT = 'Use a name such as ''cloud'' or ''plant-2''.';
    END IF;
    IF host !~ '^[A-Za-z0-9._:\[\]-]{1,253}$' THEN
        RAISE EXCEPTION 'invalid host "%"', host USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Pass a host name or an IPv4/IPv6 address, without scheme or port (e.g. ''mqtt.example.com'').';
    END IF;
    IF port NOT BETWEEN 1 AND 65535 THEN
        RAISE EXCEPTION 'invalid port %', port USING ERRCODE = 'invalid_parameter_value',
            HINT = 'MQTT brokers listen on 1883 (plain) or 8883 (TLS); pass a port between 1 and 65535.';
    END IF;
    IF keepalive NOT BETWEEN 5 AND 65535 THEN
        RAISE EXCEPTION 'invalid keepalive %', keepalive USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Pass a keepalive between 5 and 65535 seconds.';
    END IF;
    IF password IS NOT NULL AND password_file IS NOT NULL THEN
        RAISE EXCEPTION 'password and password_file exclude each other' USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Pass the password in a file (password_file), which keeps it out of SQL text and logs.';
    END IF;
    IF password_file IS NOT NULL THEN
        IF password_file !~ '^/' THEN
            RAISE EXCEPTION 'password_file must be an absolute path' USING ERRCODE = 'invalid_parameter_value',
                HINT = 'Pass e.g. ''/etc/postgresql/mqtt-cloud.password'', a file the server can read.';
        END IF;
        -- The worker sends the file's first line to the broker: naming a file is reading it.
        IF NOT pg_has_role(session_user, 'pg_read_server_files', 'USAGE') THEN
            RAISE EXCEPTION 'permission denied to use password_file' USING ERRCODE = 'insufficient_privilege',
                DETAIL = 'The worker sends the first line of that file to the broker.',
                HINT = 'Only superusers and members of pg_read_server_files may name a password file.';
        END IF;
        password := NULL;
    END IF;
    IF (password IS NOT NULL OR password_file IS NOT NULL) AND username IS NULL THEN
        RAISE EXCEPTION 'a password needs a username' USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Pass username := ... as well.';
    END IF;
    IF NOT use_tls AND (ca_cert IS NOT NULL OR client_cert IS NOT NULL OR client_key IS NOT NULL) THEN
        RAISE EXCEPTION 'certificate files need use_tls := true' USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Pass use_tls := true, or leave out ca_cert, client_cert and client_key.';
    END IF;
    IF (client_cert IS NULL) <> (client_key IS NULL) THEN
        RAISE EXCEPTION 'client_cert and client_key go together' USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Mutual TLS needs both the client certificate and its private key.';
    END IF;
    IF tls_version NOT IN ('tlsv1.2', 'tlsv1.3') THEN
        RAISE EXCEPTION 'invalid tls_version "%"', tls_version USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Pass ''tlsv1.2'' (TLS 1.2 or newer) or ''tlsv1.3''.';
    END IF;
    -- One add at a time (slot allocation); publishers are not blocked.
    LOCK TABLE mqtt_pub.brokers IN SHARE ROW EXCLUSIVE MODE;
    IF EXISTS (SELECT 1 FROM mqtt_pub.brokers b WHERE b.name = mqtt_broker_add.name) THEN
        RAISE EXCEPTION 'MQTT broker "%" already exists', name USING ERRCODE = 'duplicate_object',
            HINT = 'Remove it first with mqtt_broker_remove(), or choose another name.';
    END IF;
    SELECT min(s) INTO free FROM generate_series(1, max_slots - 1) s
    WHERE NOT EXISTS (SELECT 1 FROM mqtt_pub.brokers b WHERE b.slot = s) AND NOT mqtt_pub.broker_slot_busy(s);
    IF free IS NULL THEN
        IF (SELECT count(*) FROM mqtt_pub.brokers) >= max_slots - 1 THEN
            RAISE EXCEPTION 'too many MQTT brokers' USING ERRCODE = 'configuration_limit_exceeded',
                DETAIL = format('pg_mqtt_pub.max_brokers is %s, "default" included.', max_slots),
                HINT = 'Raise pg_mqtt_pub.max_brokers in postgresql.conf and restart PostgreSQL, or remove a broker.';
        END IF;
        RAISE EXCEPTION 'a removed broker''s slot is still being released' USING ERRCODE = 'object_in_use',
            HINT = 'Try again in a second.';
    END IF;
    INSERT INTO mqtt_pub.brokers (name, slot, host, port, username, password, password_file, use_tls, ca_cert,
                                  client_cert, client_key, tls_version, client_id, keepalive)
    VALUES (name, free, host, port, username, password, password_file, use_tls, ca_cert,
            client_cert, client_key, tls_version, client_id, keepalive);
END
$$;
COMMENT ON FUNCTION mqtt_broker_add(text, text, integer, text, text, boolean, text, text, text, text, text, integer, text) IS
'Add a named MQTT broker; the worker connects within about a second of COMMIT';

CREATE FUNCTION mqtt_broker_remove(name text, force boolean DEFAULT false) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- Waiting in the lock queue would hold back every new publisher to a named broker behind it.
SET lock_timeout = '5s'
AS $$
DECLARE
    pending bigint;
    users   text;
    moved   bigint := 0;
BEGIN
    IF name IS NULL OR force IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', CASE WHEN name IS NULL THEN 'name' ELSE 'force' END
            USING ERRCODE = 'null_value_not_allowed', HINT = 'Pass the name of a broker added with mqtt_broker_add().';
    END IF;
    IF name = 'default' THEN
        RAISE EXCEPTION 'the broker "default" cannot be removed' USING ERRCODE = 'reserved_name',
            HINT = 'It is configured by the pg_mqtt_pub.broker_* settings.';
    END IF;
    -- Waits for transactions that publish to a named broker, and holds new ones back until this
    -- one ends: no message is published to a broker that is going away (src/catalog.rs).
    BEGIN
        LOCK TABLE mqtt_pub.brokers IN ACCESS EXCLUSIVE MODE;
    EXCEPTION WHEN lock_not_available THEN
        RAISE EXCEPTION 'MQTT broker "%" cannot be removed while transactions are publishing to named brokers', name
            USING ERRCODE = 'lock_not_available',
                  DETAIL = 'A transaction that publishes to a named broker holds mqtt_pub.brokers until it ends; waited 5 s.',
                  HINT = 'Try again when long transactions have finished (pg_stat_activity shows them).';
    END;
    IF NOT EXISTS (SELECT 1 FROM mqtt_pub.brokers b WHERE b.name = mqtt_broker_remove.name) THEN
        RAISE EXCEPTION 'MQTT broker "%" does not exist', name USING ERRCODE = 'undefined_object',
            HINT = 'SELECT name FROM mqtt_pub.broker_list shows the named brokers.';
    END IF;
    SELECT string_agg(DISTINCT t.table_name::text, ', ') INTO users FROM mqtt_pub.triggers t WHERE t.broker = name;
    IF users IS NOT NULL THEN
        RAISE EXCEPTION 'MQTT broker "%" is used by publishing triggers', name USING ERRCODE = 'dependent_objects_still_exist',
            DETAIL = format('Triggers on %s publish to it.', users),
            HINT = 'Remove them with mqtt_trigger_remove() or set them up for another broker first.';
    END IF;
    SELECT count(*) INTO pending FROM mqtt_pub.outbox o WHERE o.broker = name;
    IF pending > 0 AND NOT force THEN
        RAISE EXCEPTION 'MQTT broker "%" still has % messages in the outbox', name, pending USING ERRCODE = 'object_in_use',
            HINT = 'Wait until they are delivered (mqtt_pub.outbox_summary), or pass force := true to move them to mqtt_pub.dead_letters.';
    END IF;
    IF pending > 0 THEN
        WITH gone AS (
            DELETE FROM mqtt_pub.outbox o WHERE o.broker = name
            RETURNING o.id, o.broker, o.topic, o.payload, o.qos, o.retain, o.attempts, o.first_failed_at
        )
        INSERT INTO mqtt_pub.dead_letters (original_id, broker, topic, payload, qos, retain, attempts, first_failed_at, last_error)
        SELECT g.id, g.broker, g.topic, g.payload, g.qos, g.retain, g.attempts, g.first_failed_at,
               format('broker "%s" was removed (mqtt_broker_remove with force)', name)
        FROM gone g ORDER BY g.id;
        GET DIAGNOSTICS moved = ROW_COUNT;
    END IF;
    DELETE FROM mqtt_pub.brokers b WHERE b.name = mqtt_broker_remove.name;
    RETURN moved;
END
$$;
COMMENT ON FUNCTION mqtt_broker_remove(text, boolean) IS
'Remove a named MQTT broker; refused while it has outbox rows unless force moves them to the dead letters';

REVOKE ALL ON FUNCTION mqtt_broker_add(text, text, integer, text, text, boolean, text, text, text, text, text, integer, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION mqtt_broker_remove(text, boolean) FROM PUBLIC;
