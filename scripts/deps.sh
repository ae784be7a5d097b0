#!/usr/bin/env bash
# Install what building, the demo and the tests need, on Debian bookworm, as root.
# Idempotent: installs only what is missing. Rust (cargo) must already be on the PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

# The server packages of the PostgreSQL in use (PG_CONFIG; default 15): Debian's, where that is
# where it comes from (15 on bookworm, 17 in the trixie root of scripts/trixie.sh). PyPI's 16 and
# 18 (scripts/pg.sh) bring their own; Debian's 15 still provides their pg_regress driver.
MAJOR=15
case "${PG_CONFIG:-}" in
  /usr/lib/postgresql/*/bin/pg_config) MAJOR=$(echo "$PG_CONFIG" | sed -E 's|/usr/lib/postgresql/([0-9]+)/.*|\1|') ;;
esac
PKGS=(
  "postgresql-$MAJOR" "postgresql-server-dev-$MAJOR" "postgresql-$MAJOR-cron"   # server, headers, pg_cron
  libmosquitto-dev mosquitto mosquitto-clients                 # client library, broker, CLI
  clang libclang-dev                                           # bindgen (pgrx-pg-sys bindings)
  libssl-dev                                                   # OpenSSL (TLS to a node by name)
  build-essential pkg-config openssl procps
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "== installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The Debian package may start a cluster and a broker of its own on the default ports;
# ours use other ports, so they do not interfere.

# Install Debian packages whose services must neither start nor be enabled: a policy-rc.d denies
# starts during the install (unless one is already there), and the boot-time links are removed.
install_without_services() {
  echo "== installing: $* (services neither started nor enabled)"
  local own_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && own_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null ||
    { [ -z "$own_policy" ] || rm -f /usr/sbin/policy-rc.d; exit 1; }
  [ -z "$own_policy" ] || rm -f /usr/sbin/policy-rc.d
  local p
  for p in "$@"; do
    deb-systemd-helper disable "$p.service" >/dev/null 2>&1 || true
    update-rc.d "$p" disable >/dev/null 2>&1 || true
  done
}

# Prometheus (tests/test_prometheus.py): Debian's postgres exporter, run by the test against its
# cluster, and promtool (package prometheus) for contrib/prometheus/alerts.yml. Only when the
# tests to run include it. Installing must neither start nor enable their services: a
# policy-rc.d denies starts during the install (unless one is already there), and the boot-time
# links the packages make are removed again.
if [[ -z "${TESTS:-}" || "$TESTS" == *test_prometheus.py* || "$TESTS" == tests ]]; then
  prom=()
  for p in prometheus-postgres-exporter prometheus; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || prom+=("$p")
  done
  if ((${#prom[@]})); then
    install_without_services "${prom[@]}"
  fi
fi

command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup first" >&2; exit 1; }

if ! python3 -c "import paho.mqtt, psycopg, pytest" 2>/dev/null; then
  echo "== installing Python test dependencies"
  python3 -m pip install -q --disable-pip-version-check -r tests/requirements.txt
fi

# Other MQTT brokers for the interoperability tests (tests/test_interop.py), from PyPI, in a
# virtualenv of their own: their dependencies must not meet the test runner's.
# Only when the tests to run include them (all tests when TESTS is empty).
VENV=${PG_MQTT_PUB_INTEROP_VENV:-${PG_MQTT_PUB_CACHE:-/var/cache/pg_mqtt_pub}/interop-venv}
if [[ -z "${TESTS:-}" || "$TESTS" == *test_interop.py* || "$TESTS" == tests ]] &&
   ! cmp -s tests/interop-requirements.txt "$VENV/requirements.txt"; then
  echo "== installing the interoperability brokers in $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV" 2>/dev/null || {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$VENV"
  }
  "$VENV/bin/pip" install -q --disable-pip-version-check -r tests/interop-requirements.txt
  cp tests/interop-requirements.txt "$VENV/requirements.txt"
fi

# ---- Aedes cluster (tests/cluster.py) -------------------------------------------------------
# A two-node Aedes MQTT broker cluster sharing one redis-server, for the tests that import
# tests/cluster.py (all tests when TESTS is empty). Debian's redis-server (its service neither
# started nor enabled: the tests start their own, on ports of their own) and Node.js; the npm
# packages of tests/aedes_cluster/package-lock.json in a cache directory keyed by that file's
# hash, outside the checkout (tests/cluster.py computes the same path; PG_MQTT_PUB_AEDES_DIR
# overrides it). The trixie root of scripts/trixie.sh cannot reach npm: that script installs them
# on the host and mounts them into the root, where this finds them in place.
aedes_wanted() {
  [[ -z "${TESTS:-}" ]] && return 0
  local t
  for t in $TESTS; do
    t=${t%%::*}
    [ -d "$t" ] && return 0
    grep -qsE '^(from|import) cluster\b' "$t" && return 0
  done
  return 1
}
if aedes_wanted; then
  AEDES_LOCK=tests/aedes_cluster/package-lock.json
  AEDES_DIR=${PG_MQTT_PUB_AEDES_DIR:-${PG_MQTT_PUB_CACHE:-/var/cache/pg_mqtt_pub}/aedes-cluster/$(sha256sum "$AEDES_LOCK" | cut -c1-16)}
  aedes=()
  command -v redis-server >/dev/null || aedes+=(redis-server)
  command -v node >/dev/null || aedes+=(nodejs)
  if [ ! -f "$AEDES_DIR/.ready" ] && ! command -v npm >/dev/null; then aedes+=(npm); fi
  if ((${#aedes[@]})); then
    install_without_services "${aedes[@]}"
  fi
  if [ ! -f "$AEDES_DIR/.ready" ]; then
    echo "== installing the Aedes cluster's npm packages in $AEDES_DIR"
    rm -rf "$AEDES_DIR.new"
    mkdir -p "$AEDES_DIR.new"
    cp tests/aedes_cluster/package.json "$AEDES_LOCK" "$AEDES_DIR.new/"
    (cd "$AEDES_DIR.new" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null) ||
      { echo "npm ci failed in $AEDES_DIR.new (no way to the npm registry?)" >&2; exit 1; }
    touch "$AEDES_DIR.new/.ready"
    rm -rf "$AEDES_DIR" && mv "$AEDES_DIR.new" "$AEDES_DIR"
  fi
fi
# ---- end of the Aedes cluster ---------------------------------------------------------------
