-- pg_mqtt_pub 1.7 -> 1.8: per-role topic rights (issue #29, ADR-014).
--
-- * mqtt_pub.topic_rights: which role may publish to which topics (an MQTT topic filter) of
--   which broker. A broker with at least one right is restricted: there a role publishes only
--   to topics a filter granted to it (or to a role whose privileges it has) matches; superusers
--   and the extension's owner are exempt. Changed by mqtt_pub.mqtt_grant() / mqtt_revoke(),
--   shown by the view mqtt_pub.topic_grants.
-- * mqtt_pub.trigger_setters: who set up a publishing trigger (its rights apply when it fires).
-- * replay_dead_letters() moves only what the calling role may publish; it runs its move as the
--   owner, so replaying needs EXECUTE on it and nothing on the tables.
-- Every operator is OPERATOR(pg_catalog.x) and every function qualified (docs/SECURITY.md).
\echo Use "ALTER EXTENSION pg_mqtt_pub UPDATE TO '1.8'" to load this file. \quit

CREATE TABLE mqtt_pub.topic_rights (
    role         pg_catalog.regrole     NOT NULL,
    broker       pg_catalog.text        NOT NULL,
    topic_filter pg_catalog.text        NOT NULL,
    granted_by   pg_catalog.regrole     NOT NULL,
    granted_at   pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (role, broker, topic_filter)
);
REVOKE ALL ON mqtt_pub.topic_rights FROM PUBLIC;
-- Readable by everyone, as PostgreSQL's own privileges are (pg_class.relacl): who may publish
-- where is no secret, and a pg_dump run by a database's owner must take the rights with it
-- (a restore without them would be unrestricted). docs/SECURITY.md.
GRANT SELECT ON mqtt_pub.topic_rights TO PUBLIC;
COMMENT ON TABLE mqtt_pub.topic_rights IS
    'Per-role topic rights (mqtt_pub.mqtt_grant): a broker with rights is restricted to them';
SELECT pg_catalog.pg_extension_config_dump('mqtt_pub.topic_rights', '');

CREATE TABLE mqtt_pub.trigger_setters (
    table_name   pg_catalog.regclass NOT NULL,
    trigger_name pg_catalog.name     NOT NULL,
    trigger_oid  pg_catalog.oid      NOT NULL,
    role         pg_catalog.regrole  NOT NULL,
    -- the definition it was set up with: CREATE OR REPLACE TRIGGER keeps the OID (an oid, not a
    -- regprocedure: pg_upgrade refuses tables with reg* types whose OIDs it does not keep)
    trigger_function pg_catalog.oid      NOT NULL,
    trigger_type pg_catalog.int2     NOT NULL,
    trigger_args pg_catalog.bytea    NOT NULL,
    PRIMARY KEY (table_name, trigger_name)
);
REVOKE ALL ON mqtt_pub.trigger_setters FROM PUBLIC;
COMMENT ON TABLE mqtt_pub.trigger_setters IS
    'The role that set up each publishing trigger: its topic rights apply when the trigger fires';

-- Changes reach every backend's cache at COMMIT (src/data/rights.rs).
CREATE FUNCTION mqtt_pub.topic_rights_changed() RETURNS trigger
AS 'MODULE_PATHNAME', 'mqtt_pub_topic_rights_changed'
LANGUAGE C VOLATILE;
REVOKE ALL ON FUNCTION mqtt_pub.topic_rights_changed() FROM PUBLIC;
CREATE TRIGGER topic_rights_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON mqtt_pub.topic_rights
    FOR EACH STATEMENT EXECUTE FUNCTION mqtt_pub.topic_rights_changed();
CREATE TRIGGER trigger_setters_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON mqtt_pub.trigger_setters
    FOR EACH STATEMENT EXECUTE FUNCTION mqtt_pub.topic_rights_changed();

CREATE FUNCTION mqtt_pub.mqtt_grant(role pg_catalog.regrole, broker pg_catalog.text, topic_filter pg_catalog.text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'mqtt_grant'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION mqtt_pub.mqtt_grant(pg_catalog.regrole, pg_catalog.text, pg_catalog.text) IS
    'Let a role publish to the topics an MQTT topic filter matches on a broker (which becomes restricted); false if it had that right already';
REVOKE ALL ON FUNCTION mqtt_pub.mqtt_grant(pg_catalog.regrole, pg_catalog.text, pg_catalog.text) FROM PUBLIC;

CREATE FUNCTION mqtt_pub.mqtt_revoke(role pg_catalog.regrole, broker pg_catalog.text,
                                     topic_filter pg_catalog.text DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'mqtt_revoke'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION mqtt_pub.mqtt_revoke(pg_catalog.regrole, pg_catalog.text, pg_catalog.text) IS
    'Take a topic right back (NULL topic_filter: every right of the role on the broker); returns how many were removed';
REVOKE ALL ON FUNCTION mqtt_pub.mqtt_revoke(pg_catalog.regrole, pg_catalog.text, pg_catalog.text) FROM PUBLIC;

-- For replay_dead_letters_as_owner (below): ERROR 42704 unless the broker exists, 42501 unless
-- role `role` may publish to the topic on it (topic NULL: the broker only), else true. The
-- owner's alone.
CREATE FUNCTION mqtt_pub.require_publish_right_of(role pg_catalog.oid, broker pg_catalog.text, topic pg_catalog.text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'mqtt_require_publish_right_of'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION mqtt_pub.require_publish_right_of(pg_catalog.oid, pg_catalog.text, pg_catalog.text) IS
    'Internal: ERROR 42704 unless the broker exists, 42501 unless the role may publish to the topic on it';
REVOKE ALL ON FUNCTION mqtt_pub.require_publish_right_of(pg_catalog.oid, pg_catalog.text, pg_catalog.text) FROM PUBLIC;

CREATE VIEW mqtt_pub.topic_grants AS
SELECT r.role, r.broker, r.topic_filter, r.granted_by, r.granted_at
FROM mqtt_pub.topic_rights r;
COMMENT ON VIEW mqtt_pub.topic_grants IS
    'Per-role topic rights: a broker listed here is restricted to them (superusers and the extension owner are exempt)';
REVOKE ALL ON mqtt_pub.topic_grants FROM PUBLIC;
GRANT SELECT ON mqtt_pub.topic_grants TO PUBLIC; -- as mqtt_pub.topic_rights

-- replay_dead_letters: a C function (SECURITY INVOKER) that runs the move below as the owner, so
-- the roles that replay need no privilege on mqtt_pub.outbox (with INSERT there a role could
-- write any topic into it) nor on mqtt_pub.brokers (owner only: 1.5's replay could not be run by
-- a granted role at all); each row is checked against the rights of the role that called.
CREATE FUNCTION mqtt_pub.replay_dead_letters_as_owner(broker_name text, max_count integer, caller pg_catalog.oid)
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
    -- each row only if the caller may publish it (topic rights, ADR-014): else 42501, nothing moves
    INSERT INTO mqtt_pub.outbox (broker, topic, payload, qos, retain, lane, properties, message_id, expires_at)
    SELECT g.broker, g.topic, g.payload, g.qos, g.retain, 1, g.properties, g.message_id, g.expires_at
    FROM gone g
    WHERE mqtt_pub.require_publish_right_of(caller, g.broker, g.topic)
    ORDER BY g.dead_lettered_at, g.id;
    GET DIAGNOSTICS moved = ROW_COUNT;
    RETURN moved;
END
$$;
REVOKE ALL ON FUNCTION mqtt_pub.replay_dead_letters_as_owner(text, integer, pg_catalog.oid) FROM PUBLIC;
COMMENT ON FUNCTION mqtt_pub.replay_dead_letters_as_owner(text, integer, pg_catalog.oid) IS
    'Internal: replay_dead_letters'' move, as the owner, for the role that called';

CREATE OR REPLACE FUNCTION mqtt_pub.replay_dead_letters(broker_name text DEFAULT NULL, max_count integer DEFAULT 100)
RETURNS integer
AS 'MODULE_PATHNAME', 'mqtt_replay_dead_letters'
LANGUAGE C VOLATILE;
