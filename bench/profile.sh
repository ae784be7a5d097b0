#!/usr/bin/env bash
# Profiles of the benchmark's phases (bench/profile.py): builds and installs first, like run.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
command -v perf >/dev/null || apt-get install -y linux-perf
export PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
export PGRX_PG_CONFIG_PATH=$PG_CONFIG
make -s PG_CONFIG="$PG_CONFIG" && make -s install PG_CONFIG="$PG_CONFIG"
mkdir -p bench/out
PG_MQTT_PUB_TEST_DIR=/tmp/pg_mqtt_pub_bench exec python3 bench/profile.py "$@"
