#!/usr/bin/env bash
# The demo, as root on Debian bookworm: installs what is missing, builds and installs the
# extension, starts a scratch PostgreSQL and a mosquitto broker on loopback, publishes from SQL
# (directly and from a row trigger) and shows what an MQTT subscriber received.
# Everything lives under $DEMO_DIR and is stopped at the end (KEEP=1 leaves it running).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh

PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PGBIN=$("$PG_CONFIG" --bindir)
DEMO_DIR=${DEMO_DIR:-/tmp/pg_mqtt_pub_demo}
PGPORT=${PGPORT:-25440}
MQTT_PORT=${MQTT_PORT:-18840}

echo "== building and installing"
PGRX_PG_CONFIG_PATH=$PG_CONFIG make -s PG_CONFIG="$PG_CONFIG"
make -s install PG_CONFIG="$PG_CONFIG"

stop() {
  [ -f "$DEMO_DIR/data/postmaster.pid" ] && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$DEMO_DIR/data" -m fast stop >/dev/null 2>&1 || true
  [ -n "${SUB_PID:-}" ] && kill "$SUB_PID" 2>/dev/null || true
  [ -n "${MOSQ_PID:-}" ] && kill "$MOSQ_PID" 2>/dev/null || true
}
if [ "${KEEP:-0}" != 1 ]; then trap stop EXIT; fi

echo "== starting mosquitto on 127.0.0.1:$MQTT_PORT and PostgreSQL on 127.0.0.1:$PGPORT ($DEMO_DIR)"
stop
rm -rf "$DEMO_DIR" && mkdir -p "$DEMO_DIR" && chown postgres "$DEMO_DIR"
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$MQTT_PORT" > "$DEMO_DIR/mosquitto.conf"
mosquitto -c "$DEMO_DIR/mosquitto.conf" > "$DEMO_DIR/mosquitto.log" 2>&1 &
MOSQ_PID=$!
runuser -u postgres -- "$PGBIN/initdb" -D "$DEMO_DIR/data" -A trust -U postgres > /dev/null
cat >> "$DEMO_DIR/data/postgresql.conf" <<CONF
port = $PGPORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DEMO_DIR'
shared_preload_libraries = 'pg_mqtt_pub'
pg_mqtt_pub.broker_host = '127.0.0.1'
pg_mqtt_pub.broker_port = $MQTT_PORT
CONF
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$DEMO_DIR/data" -l "$DEMO_DIR/postgresql.log" -w start > /dev/null

echo "== subscribing to demo/# with mosquitto_sub"
mosquitto_sub -h 127.0.0.1 -p "$MQTT_PORT" -V 5 -q 1 -t 'demo/#' -F '%t  %p' > "$DEMO_DIR/received.txt" &
SUB_PID=$!
sleep 0.5

PSQL=("$PGBIN/psql" -X -q -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres -v ON_ERROR_STOP=1)
"${PSQL[@]}" <<'SQL'
\echo == CREATE EXTENSION pg_mqtt_pub, then publishing from SQL and from a row trigger
CREATE EXTENSION pg_mqtt_pub;
SELECT pg_sleep(0.5) \g /dev/null
-- (the worker notices the extension and connects)
SELECT mqtt_publish('demo/hello', 'world');
SELECT mqtt_publish(topic := 'demo/sensors/room1', payload := '{"value": 23.5}', qos := 1);

CREATE TABLE sensor_readings (sensor_id int, value numeric, recorded_at timestamptz DEFAULT now());
CREATE FUNCTION publish_reading() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM mqtt_publish('demo/readings/' || NEW.sensor_id,
                       json_build_object('sensor_id', NEW.sensor_id, 'value', NEW.value)::text, 1);
  RETURN NEW;
END $$;
CREATE TRIGGER readings_mqtt AFTER INSERT ON sensor_readings
  FOR EACH ROW EXECUTE FUNCTION publish_reading();
INSERT INTO sensor_readings (sensor_id, value) VALUES (1, 21.5), (2, 40.2), (3, 18.9);

BEGIN;
INSERT INTO sensor_readings (sensor_id, value) VALUES (99, 0);  -- rolled back: never published
ROLLBACK;

\echo == the same without writing a trigger: mqtt_trigger_event_setup
CREATE TABLE orders (id int PRIMARY KEY, status text);
SELECT mqtt_trigger_event_setup('orders', 'demo/orders', include_meta := false);
INSERT INTO orders VALUES (1, 'new');
UPDATE orders SET status = 'shipped' WHERE id = 1;
SELECT pg_sleep(0.5) \g /dev/null
\echo == mqtt_status()
SELECT broker_name, host, port, connected, delivery_mode, messages_sent, messages_failed FROM mqtt_status();
SQL

echo "== what the subscriber received:"
cat "$DEMO_DIR/received.txt"
n=$(wc -l < "$DEMO_DIR/received.txt")
if [ "$n" -ne 7 ]; then echo "expected 7 messages, got $n" >&2; exit 1; fi
if [ "${KEEP:-0}" = 1 ]; then
  echo "== still running: psql -h 127.0.0.1 -p $PGPORT -U postgres   |   mosquitto_sub -p $MQTT_PORT -t '#' -v"
fi
