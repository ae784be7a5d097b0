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

-- mqtt_broker_add checks the right to name server files (password_file, ca_cert, client_cert,
-- client_key: pg_read_server_files) as the role that calls it. A SECURITY DEFINER function
-- cannot see who called it, and 1.0's check of session_user let a role without the right name
-- /etc/... through SET ROLE by a privileged session, or through a definer function of its own
-- that a privileged role ran; certificate and key files were not checked at all. So both names
-- are now a SECURITY INVOKER C function that checks the current user and then runs the
-- validation and the INSERT, unchanged from 1.0 but for that check, as the owner
-- (src/backend/broker_add.rs).
CREATE FUNCTION mqtt_pub.broker_add_as_owner(
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
COMMENT ON FUNCTION mqtt_pub.broker_add_as_owner(text, text, integer, text, text, boolean, text, text, text, text, text, integer, text) IS
'Internal: mqtt_broker_add''s validation and INSERT, run as the owner after the caller''s file rights were checked';

CREATE OR REPLACE FUNCTION @extschema@.mqtt_broker_add(
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
AS 'MODULE_PATHNAME', 'mqtt_broker_add'
LANGUAGE C VOLATILE SECURITY INVOKER;
-- (An error raised in it does not write the statement, and an inline password, to the log: it
-- sets log_min_error_statement = panic itself, which a SET clause could not for non-superusers.)

CREATE OR REPLACE FUNCTION mqtt_pub.mqtt_broker_add(
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
AS 'MODULE_PATHNAME', 'mqtt_broker_add'
LANGUAGE C VOLATILE SECURITY INVOKER;

-- mqtt_status() with the outbox's size and its limit (pg_mqtt_pub.max_outbox_size): same
-- arguments, another result, so it is dropped and created again, keeping its grants.
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
            RAISE EXCEPTION 'cannot update pg_mqtt_pub to 1.4: % depends on %.mqtt_status()', users, s
                USING ERRCODE = 'dependent_objects_still_exist',
                DETAIL = 'The update re-creates mqtt_status() with two more result columns (outbox_bytes, outbox_max_bytes).',
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
            OUT outbox_max_bytes  bigint
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
COMMENT ON FUNCTION mqtt_pub.mqtt_status() IS 'Connection state and delivery counters per MQTT broker';
