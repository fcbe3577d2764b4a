#!/usr/bin/env bash
# Throwaway PostgreSQL 15 cluster for tests, the demo and benchmarks.
#   tests/support/pg.sh start DIR   -> prints a connection URL; cluster in DIR
#   tests/support/pg.sh stop DIR
#   tests/support/pg.sh halt DIR      -> stop the server, keep DIR (start again with PGSHIFT_PG_PORT=$(cat DIR/port))
# Runs the server as the `postgres` user when invoked as root (Postgres
# refuses root). fsync is off: throwaway data only.
set -euo pipefail
cmd=${1:?usage: pg.sh start|stop|halt DIR}
dir=${2:?usage: pg.sh start|stop|halt DIR}
bindir=${PGSHIFT_PG_BINDIR:-$( (pg_config --bindir 2>/dev/null | grep -q 15 && pg_config --bindir) || echo /usr/lib/postgresql/15/bin)}
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

case "$cmd" in
start)
  [ -x "$bindir/initdb" ] || { echo "pg.sh: no initdb in $bindir (install postgresql-15 or set PGSHIFT_PG_BINDIR)" >&2; exit 1; }
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; fi
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    as_pg "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust --no-sync -E UTF8 --locale=C >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; exit 1; }
  fi
  # Password roles for the auth-relay tests; everyone else is trusted.
  cat >"$dir/data/pg_hba.conf" <<'HBA'
local all all trust
host all pgshift_md5 127.0.0.1/32 md5
host all pgshift_scram 127.0.0.1/32 scram-sha-256
host all pgshift_password 127.0.0.1/32 password
host all all 127.0.0.1/32 trust
host all all ::1/128 trust
HBA
  if [ "$(id -u)" = 0 ]; then chown postgres: "$dir/data/pg_hba.conf"; fi
  port=${PGSHIFT_PG_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
  as_pg "$bindir/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 -o \
    "-c port=$port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 -c shared_buffers=${PGSHIFT_PG_SHARED_BUFFERS:-256MB} -c max_wal_size=4GB -c checkpoint_timeout=30min ${PGSHIFT_PG_EXTRA:-}" \
    start >/dev/null || { tail -20 "$dir/postgres.log" >&2; exit 1; }
  echo "$port" >"$dir/port"
  echo "postgres://postgres@127.0.0.1:$port/postgres"
  ;;
halt)
  as_pg "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
  ;;
stop)
  [ -f "$dir/data/PG_VERSION" ] && as_pg "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$dir"
  ;;
*) echo "usage: pg.sh start|stop|halt DIR" >&2; exit 2 ;;
esac
