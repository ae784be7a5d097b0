#!/usr/bin/env bash
# PostgreSQL 17 for this project comes from Debian trixie: its binaries need glibc 2.38 (bookworm
# has 2.36), so they run in a trixie root. This script makes that root once (debootstrap, then
# the packages below; about a minute, cached outside the repository) and runs a command inside
# it, in a private mount namespace (mounts vanish with it), with the checkout and the Rust
# toolchain mounted at their own paths. Inside, PG_CONFIG is PostgreSQL 17's and cargo builds
# into target/trixie.
#   scripts/trixie.sh scripts/test-one.sh    # the whole suite on PostgreSQL 17
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${PG_MQTT_PUB_CACHE:-/var/cache/pg_mqtt_pub}/trixie
PKGS=(postgresql-17 postgresql-server-dev-17 postgresql-17-cron
      libmosquitto-dev mosquitto mosquitto-clients clang libclang-dev build-essential pkg-config
      openssl procps util-linux ca-certificates python3 python3-psycopg python3-paho-mqtt python3-pytest
      nodejs redis-server)
HOME=${HOME:-/root}

# enter ROOT "DIRS TO BIND" CMD...: run CMD chrooted in ROOT with /proc, /dev and DIRS mounted
enter() {
  unshare --mount --propagation private -- bash -c '
    root=$1 dirs=$2; shift 2
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"
    for d in $dirs; do [ -e "$root$d" ] || mkdir -p "$root$d"; mount --bind "$d" "$root$d"; done
    exec chroot "$root" "$@"' _ "$@"
}

if [ ! -f "$ROOT/.ready" ]; then
  command -v debootstrap >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
  echo "== making a Debian trixie root for PostgreSQL 17 in $ROOT" >&2
  rm -rf "$ROOT.new"
  debootstrap --variant=minbase trixie "$ROOT.new" http://deb.debian.org/debian >/dev/null
  cp /etc/resolv.conf "$ROOT.new/etc/resolv.conf"
  # packages must not start services in the root (the tests start their own)
  printf '#!/bin/sh\nexit 101\n' > "$ROOT.new/usr/sbin/policy-rc.d"
  chmod +x "$ROOT.new/usr/sbin/policy-rc.d"
  enter "$ROOT.new" "" /usr/bin/env DEBIAN_FRONTEND=noninteractive bash -c \
    "apt-get update -qq && apt-get install -y -qq --no-install-recommends ${PKGS[*]} >/dev/null"
  touch "$ROOT.new/.ready"
  rm -rf "$ROOT" && mv "$ROOT.new" "$ROOT"
fi

# The Aedes cluster's npm packages (tests/cluster.py): the root cannot reach npm, so they are
# installed here on the host, as scripts/deps.sh does, and mounted into the root at the same path.
AEDES_DIR=${PG_MQTT_PUB_AEDES_DIR:-${PG_MQTT_PUB_CACHE:-/var/cache/pg_mqtt_pub}/aedes-cluster/$(sha256sum tests/aedes_cluster/package-lock.json | cut -c1-16)}
if [ ! -f "$AEDES_DIR/.ready" ]; then
  echo "== installing the Aedes cluster's npm packages in $AEDES_DIR" >&2
  rm -rf "$AEDES_DIR.new" && mkdir -p "$AEDES_DIR.new" && cp tests/aedes_cluster/package*.json "$AEDES_DIR.new/"
  (cd "$AEDES_DIR.new" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)
  touch "$AEDES_DIR.new/.ready" && rm -rf "$AEDES_DIR" && mv "$AEDES_DIR.new" "$AEDES_DIR"
fi

# /etc/hosts as the host has it: names resolve the same way in and out (libmosquitto's
# non-blocking connect uses a name's first address only; trixie's own file lists ::1 first).
enter "$ROOT" "$PWD $HOME/.cargo $HOME/.rustup /etc/hosts $AEDES_DIR" /usr/bin/env -i HOME="$HOME" LANG=C.UTF-8 \
  CI="${CI:-}" TESTS="${TESTS:-}" PG_MQTT_PUB_AEDES_DIR="$AEDES_DIR" PATH="$HOME/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
  PG_CONFIG=/usr/lib/postgresql/17/bin/pg_config CARGO_TARGET_DIR="$PWD/target/trixie" \
  bash -c 'cd "$0" && exec "$@"' "$PWD" "$@"
