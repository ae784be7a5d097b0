#!/usr/bin/env bash
# The whole test suite, as root on Debian bookworm: installs what is missing, runs the unit
# tests and clippy, builds and installs the extension, then runs pg_regress and the end-to-end
# tests (real PostgreSQL clusters, real mosquitto brokers, a real MQTT subscriber), all started
# by the tests themselves on loopback ports. A missing dependency fails; nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh

export PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
export PGRX_PG_CONFIG_PATH=$PG_CONFIG

echo "== unit tests"
cargo test --release --lib
echo "== format and clippy"
cargo fmt --all -- --check
cargo clippy --release --all-targets -- -D warnings
echo "== build and install"
make -s PG_CONFIG="$PG_CONFIG"
make -s install PG_CONFIG="$PG_CONFIG"
echo "== pg_regress and end-to-end tests"
python3 -m pytest tests -v -p no:cacheprovider "$@"
