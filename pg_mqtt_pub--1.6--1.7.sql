-- pg_mqtt_pub 1.6 -> 1.7: a broker is a list of nodes (issue #28, ADR-013).
--
-- * mqtt_broker_add(host := 'mq1:1883,mq2:1883,mq3') takes a comma-separated list of nodes
--   host[:port] ([v6]:port for IPv6 addresses), as pg_mqtt_pub.broker_host does: the worker
--   fails over to the next node at once when the connected one fails.
-- * mqtt_status() gains `failovers` (connections made to another node than the one before);
--   `connected_node` names the node and the address it answered on.
-- mqtt_status() is dropped and created again (keeping its grants), and with it the view
-- mqtt_pub.outbox_summary built on it (keeping its grants and comment).
-- Every operator is OPERATOR(pg_catalog.x) and every function qualified (docs/SECURITY.md).
\echo Use "ALTER EXTENSION pg_mqtt_pub UPDATE TO '1.7'" to load this file. \quit

-- The view on mqtt_status() goes first (created again below); an object someone built on the
-- view would make that fail with a hint to use CASCADE: say what to do instead.
DO $do$
DECLARE
    users text;
BEGIN
    SELECT pg_catalog.string_agg(pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid), ', ')
      INTO users
      FROM pg_catalog.pg_depend d
     WHERE d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
       AND d.refobjid OPERATOR(pg_catalog.=) 'mqtt_pub.outbox_summary'::pg_catalog.regclass::pg_catalog.oid
       AND d.deptype OPERATOR(pg_catalog.=) 'n'
       -- (before PostgreSQL 16 a view's own rule depends on the view: not someone else's object)
       AND NOT (d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_rewrite'::pg_catalog.regclass
                AND d.objid OPERATOR(pg_catalog.=) ANY (ARRAY(
                    SELECT r.oid FROM pg_catalog.pg_rewrite r
                     WHERE r.ev_class OPERATOR(pg_catalog.=) 'mqtt_pub.outbox_summary'::pg_catalog.regclass)));
    IF users IS NOT NULL THEN
        RAISE EXCEPTION 'cannot update pg_mqtt_pub to 1.7: % depends on mqtt_pub.outbox_summary', users
            USING ERRCODE = 'dependent_objects_still_exist',
            DETAIL = 'The update re-creates mqtt_status() and the view mqtt_pub.outbox_summary built on it.',
            HINT = 'Drop those objects, run ALTER EXTENSION pg_mqtt_pub UPDATE, then create them again.';
    END IF;
END
$do$;
CREATE TEMPORARY TABLE pg_mqtt_pub_summary_acl AS
SELECT c.relacl FROM pg_catalog.pg_class c
 WHERE c.oid OPERATOR(pg_catalog.=) 'mqtt_pub.outbox_summary'::pg_catalog.regclass;
DROP VIEW mqtt_pub.outbox_summary;

DO $do$
DECLARE
    s text;
    grants text[];
    grantors text[];
    me text := current_user;
    users text;
BEGIN
    FOREACH s IN ARRAY ARRAY['@extschema@', 'mqtt_pub'] LOOP
        SELECT pg_catalog.array_agg(pg_catalog.format('GRANT EXECUTE ON FUNCTION %s.mqtt_status() TO %s%s', s,
                   CASE WHEN a.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                        ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(a.grantee)) END,
                   CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)),
               pg_catalog.array_agg(pg_catalog.pg_get_userbyid(a.grantor))
          INTO grants, grantors
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
            RAISE EXCEPTION 'cannot update pg_mqtt_pub to 1.7: % depends on %.mqtt_status()', users, s
                USING ERRCODE = 'dependent_objects_still_exist',
                DETAIL = 'The update re-creates mqtt_status() with one more result column (failovers).',
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
            OUT stats_reset       timestamptz,
            OUT failovers         bigint
        ) RETURNS SETOF record
        AS 'MODULE_PATHNAME', 'mqtt_status'
        LANGUAGE C VOLATILE PARALLEL SAFE$f$, s);
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s.mqtt_status() FROM PUBLIC', s);
        -- Each grant again by the role that gave it (so that its REVOKE still works).
        FOR i IN 1 .. COALESCE(pg_catalog.array_length(grants, 1), 0) LOOP
            BEGIN
                EXECUTE pg_catalog.format('SET LOCAL ROLE %I', grantors[i]);
            EXCEPTION WHEN insufficient_privilege THEN
                NULL; -- the session may not become that role: granted by the current one instead
            END;
            EXECUTE grants[i];
            EXECUTE pg_catalog.format('SET LOCAL ROLE %I', me);
        END LOOP;
    END LOOP;
END
$do$;

COMMENT ON FUNCTION @extschema@.mqtt_status() IS 'Connection state (node, failovers), current problem, backlog, latency and delivery counters per MQTT broker';
COMMENT ON FUNCTION mqtt_pub.mqtt_status() IS 'Connection state (node, failovers), current problem, backlog, latency and delivery counters per MQTT broker';

-- The view again, as 1.5 made it, with the grants it had.
CREATE VIEW mqtt_pub.outbox_summary AS
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

REVOKE ALL ON mqtt_pub.outbox_summary FROM PUBLIC;
DO $do$
DECLARE
    g record;
    me text := current_user;
BEGIN
    FOR g IN
        SELECT pg_catalog.pg_get_userbyid(a.grantor) AS grantor,
               pg_catalog.format('GRANT %s ON mqtt_pub.outbox_summary TO %s%s', a.privilege_type,
                   CASE WHEN a.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                        ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(a.grantee)) END,
                   CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END) AS stmt
          FROM pg_temp.pg_mqtt_pub_summary_acl t, pg_catalog.aclexplode(t.relacl) a
         WHERE a.grantee OPERATOR(pg_catalog.<>) a.grantor
    LOOP
        -- by the role that gave it (so that its REVOKE still works)
        BEGIN
            EXECUTE pg_catalog.format('SET LOCAL ROLE %I', g.grantor);
        EXCEPTION WHEN insufficient_privilege THEN
            NULL; -- the session may not become that role: granted by the current one instead
        END;
        EXECUTE g.stmt;
        EXECUTE pg_catalog.format('SET LOCAL ROLE %I', me);
    END LOOP;
END
$do$;
DROP TABLE pg_temp.pg_mqtt_pub_summary_acl;

-- mqtt_broker_add's validation and INSERT, as in 1.4, taking a list of nodes.
CREATE OR REPLACE FUNCTION mqtt_pub.broker_add_as_owner(
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
    -- A list of nodes host[:port] since 1.7; mqtt_broker_add checked each node before (the
    -- rule of src/pure/nodes.rs, the same as pg_mqtt_pub.broker_host's): only the characters here.
    IF length(host) > 1000 OR host !~ '^[][A-Za-z0-9._:, -]+$' THEN
        RAISE EXCEPTION 'invalid host "%"', host USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Pass a host name or address, or a comma-separated list of nodes host[:port] (e.g. ''mq1.example.com,mq2.example.com:1884'').';
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
        -- (the right to name it, pg_read_server_files, is checked by the caller-facing
        -- mqtt_broker_add as the role that calls it: src/backend/broker_add.rs)
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
    IF EXISTS (SELECT 1 FROM mqtt_pub.brokers b WHERE b.name = broker_add_as_owner.name) THEN
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
REVOKE ALL ON FUNCTION mqtt_pub.broker_add_as_owner(text, text, integer, text, text, boolean, text, text, text, text, text, integer, text) FROM PUBLIC;
