#!/usr/bin/env bash
# The test suite on ONE PostgreSQL (PG_CONFIG, default 15): installs what is missing, runs the
# unit tests and clippy for that version's bindings, builds and installs the extension, then runs
# pg_regress and the end-to-end tests (real PostgreSQL clusters, real mosquitto brokers, a real
# MQTT subscriber), all started by the tests themselves on loopback ports. A missing dependency
# fails; nothing is skipped. scripts/test.sh runs it for every supported version.
#   PG_CONFIG=$(scripts/pg.sh 16) scripts/test-one.sh [pytest args]
#   TESTS="tests/test_e2e.py tests/test_cold.py" scripts/test-one.sh      # a part of it
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh

export PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
export PGRX_PG_CONFIG_PATH=$PG_CONFIG
MAJOR=$("$PG_CONFIG" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
FEATURES=(--no-default-features --features "pg$MAJOR")
echo "== PostgreSQL $MAJOR ($PG_CONFIG)"

echo "== unit tests"
cargo test --release --lib "${FEATURES[@]}"
echo "== module layers (no upward import, no cycle)"
python3 scripts/layers.py
echo "== format and clippy"
cargo fmt --all -- --check
cargo clippy --release --all-targets "${FEATURES[@]}" -- -D warnings
echo "== build and install"
make -s PG_CONFIG="$PG_CONFIG"
make -s install PG_CONFIG="$PG_CONFIG"
echo "== pg_regress and end-to-end tests"
read -r -a paths <<< "${TESTS:-tests}"
python3 -m pytest "${paths[@]}" -v -p no:cacheprovider "$@"
