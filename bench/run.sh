#!/usr/bin/env bash
# The benchmark, as root on Debian bookworm (after the README's set-up): installs what is
# missing, builds and installs the extension, builds the raw libmosquitto baseline, then runs
# bench/bench.py against its own PostgreSQL and mosquitto on loopback (a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
export PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
export PGRX_PG_CONFIG_PATH=$PG_CONFIG
make -s PG_CONFIG="$PG_CONFIG" && make -s install PG_CONFIG="$PG_CONFIG"
mkdir -p bench/out
cc -O2 -Wall -o bench/out/raw_pub bench/raw_pub.c -lmosquitto
PG_MQTT_PUB_TEST_DIR=/tmp/pg_mqtt_pub_bench exec python3 bench/bench.py "$@"
