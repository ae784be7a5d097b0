-- pg_mqtt_pub 1.7 -> 1.8: per-role topic rights (issue #29, ADR-014).
--
-- * mqtt_pub.topic_rights: which role may publish to which topics (an MQTT topic filter) of
--   which broker. A broker with at least one right is restricted: there a role publishes only
--   to topics a filter granted to it (or to a role whose privileges it has) matches; superusers
--   and the extension's owner are exempt. Changed by mqtt_pub.mqtt_grant() / mqtt_revoke(),
--   shown by the view mqtt_pub.topic_grants.
-- * mqtt_pub.trigger_setters: who set up a publishing trigger (its rights apply when it fires).
-- * replay_dead_letters() moves only what the calling role may publish, and no longer reads
--   mqtt_pub.brokers (owner only), so a role granted what docs/privileges.md says can replay.
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

-- For replay_dead_letters(), which runs as its caller: ERROR 42704 unless the broker exists
-- (and it is kept from being removed until the transaction ends), 42501 unless the current role
-- may publish to the topic on it (topic NULL: the broker only), else true. Executable by PUBLIC:
-- it tells the caller only whether a broker name exists and what it may publish itself
-- (docs/SECURITY.md).
CREATE FUNCTION mqtt_pub.require_publish_right(broker pg_catalog.text, topic pg_catalog.text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'mqtt_require_publish_right'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION mqtt_pub.require_publish_right(pg_catalog.text, pg_catalog.text) IS
    'Internal: ERROR 42704 unless the broker exists, 42501 unless the current role may publish to the topic on it';
REVOKE ALL ON FUNCTION mqtt_pub.require_publish_right(pg_catalog.text, pg_catalog.text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION mqtt_pub.require_publish_right(pg_catalog.text, pg_catalog.text) TO PUBLIC;

CREATE VIEW mqtt_pub.topic_grants AS
SELECT r.role, r.broker, r.topic_filter, r.granted_by, r.granted_at
FROM mqtt_pub.topic_rights r;
COMMENT ON VIEW mqtt_pub.topic_grants IS
    'Per-role topic rights: a broker listed here is restricted to them (superusers and the extension owner are exempt)';
REVOKE ALL ON mqtt_pub.topic_grants FROM PUBLIC;
GRANT SELECT ON mqtt_pub.topic_grants TO PUBLIC; -- as mqtt_pub.topic_rights

-- replay_dead_letters as in 1.5, moving only what the caller may publish (42501 otherwise).
CREATE OR REPLACE FUNCTION mqtt_pub.replay_dead_letters(broker_name text DEFAULT NULL, max_count integer DEFAULT 100)
RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    moved integer;
BEGIN
    IF max_count IS NULL OR max_count OPERATOR(pg_catalog.<) 0 THEN
        RAISE EXCEPTION 'max_count must be zero or more, not %', COALESCE(max_count::pg_catalog.text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass max_count := 100, or how many dead letters to replay.';
    END IF;
    -- Each broker must exist (42704); the check holds mqtt_pub.brokers (ACCESS SHARE) until this
    -- transaction ends, so mqtt_broker_remove (ACCESS EXCLUSIVE) cannot remove it meanwhile. (It
    -- used to read mqtt_pub.brokers, which only its owner may: a granted role could not replay.)
    IF broker_name IS NOT NULL THEN
        PERFORM mqtt_pub.require_publish_right(broker_name, NULL);
    END IF;
    PERFORM mqtt_pub.require_publish_right(b.broker, NULL)
       FROM (SELECT DISTINCT d.broker FROM mqtt_pub.dead_letters d
              WHERE broker_name IS NULL OR d.broker OPERATOR(pg_catalog.=) broker_name) b;
    -- properties, message id and expiry go back unchanged: a consumer sees the same id again;
    -- each row only if the caller may publish it (topic rights, ADR-014): else 42501, nothing moves
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
    FROM gone g
    WHERE mqtt_pub.require_publish_right(g.broker, g.topic)
    ORDER BY g.dead_lettered_at, g.id;
    GET DIAGNOSTICS moved = ROW_COUNT;
    RETURN moved;
END
$$;
