-- pg_mqtt_pub 1.1 -> 1.2: one place writes dead letters.
--
-- mqtt_pub.dead_letter_outbox() moves a broker's outbox rows to mqtt_pub.dead_letters with the
-- same statement the worker uses for a message that exhausted its attempts (src/data/outbox.rs);
-- mqtt_broker_remove(force := true) now calls it instead of repeating that statement. Nothing
-- else changes: same arguments, results, privileges and messages.
\echo Use "ALTER EXTENSION pg_mqtt_pub UPDATE TO '1.2'" to load this file. \quit

-- Runs as its caller: only mqtt_broker_remove (SECURITY DEFINER, the owner) calls it.
CREATE FUNCTION mqtt_pub.dead_letter_outbox(broker_name text, reason text) RETURNS bigint
AS 'MODULE_PATHNAME', 'mqtt_pub_dead_letter_outbox'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
REVOKE ALL ON FUNCTION mqtt_pub.dead_letter_outbox(text, text) FROM PUBLIC;
COMMENT ON FUNCTION mqtt_pub.dead_letter_outbox(text, text) IS
'Internal: move every outbox row of a broker to the dead letters with a reason; returns how many';

CREATE OR REPLACE FUNCTION @extschema@.mqtt_broker_remove(name text, force boolean DEFAULT false) RETURNS bigint
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
    -- one ends: no message is published to a broker that is going away (src/data/catalog.rs).
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
        moved := mqtt_pub.dead_letter_outbox(name, format('broker "%s" was removed (mqtt_broker_remove with force)', name));
    END IF;
    DELETE FROM mqtt_pub.brokers b WHERE b.name = mqtt_broker_remove.name;
    RETURN moved;
END
$$;
