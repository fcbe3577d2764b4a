#!/usr/bin/env bash
# make demo: a throwaway Postgres, the sample schema from migrations/, and the
# pgshift daemon in front of it. Old-version clients write through the proxy
# while migration 0002 goes through expand and backfill (run by the daemon's
# copier, followed with a progress bar); new-version clients join through the
# same proxy; the old ones leave; complete contracts the schema. Exits 0 when
# every client statement succeeded.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin="$root/target/release/pgshift"
rows=${DEMO_ROWS:-300000}
. "$root/tests/support/scratch.sh"
scratch_dir pgshift-demo
daemon_pid=
# On success nothing is left behind; on failure the logs stay for a look.
cleanup() {
  local rc=$?
  [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
  scratch_end "$rc"
  [ "$rc" = 0 ] || echo "demo failed; daemon and client logs kept in $dir" >&2
}
trap cleanup EXIT
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http() { python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())' "$1"; }

say "starting a throwaway PostgreSQL 15"
export PGSHIFT_POSTGRES_URL=$("$root/tests/support/pg.sh" start "$dir/pg")
echo "$PGSHIFT_POSTGRES_URL"
say "applying migrations/0001_create_users.yaml and loading $rows users"
"$bin" start "$root/migrations/0001_create_users.yaml" --complete
psql -X -q "$PGSHIFT_POSTGRES_URL" -c "INSERT INTO users (name, email, age) SELECT 'user ' || g, 'u' || g || '@example.com', (18 + g % 60)::text FROM generate_series(1, $rows) g"

proxy_port=$(free_port); metrics_port=$(free_port); admin_port=$(free_port)
cat >"$dir/pgshift.toml" <<TOML
postgres_url = "$PGSHIFT_POSTGRES_URL"
listen = "127.0.0.1:$proxy_port"
metrics_listen = "127.0.0.1:$metrics_port"
admin_listen = "127.0.0.1:$admin_port"
[backfill]
batch_target_ms = 100
TOML
say "starting the pgshift daemon (proxy, copier, admin console, metrics)"
"$bin" daemon --config "$dir/pgshift.toml" >"$dir/daemon.out" 2>"$dir/daemon.log" &
daemon_pid=$!
for _ in $(seq 100); do grep -q "admin console" "$dir/daemon.out" 2>/dev/null && break; sleep 0.1; done
cat "$dir/daemon.out"
for _ in $(seq 100); do http "http://127.0.0.1:$metrics_port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done

proxy="host=127.0.0.1 port=$proxy_port dbname=postgres user=postgres"
old_sql="$dir/old.sql"; new_sql="$dir/new.sql"
for i in $(seq 1 1500); do
  echo "INSERT INTO users (name, email, age) VALUES ('old $i', 'old$i@example.com', '$((20 + i % 50))');"
  echo "UPDATE users SET age = '$((i % 90))' WHERE id = $((1 + i * 97 % rows));"
done >"$old_sql"
for i in $(seq 1 1500); do
  echo "INSERT INTO users (full_name, email, age, status) VALUES ('new $i', 'new$i@example.com', $((20 + i % 50)), 'active');"
  echo "SELECT full_name, age + 1, status FROM users WHERE id = $((1 + i * 89 % rows));"
done >"$new_sql"
run_client() { psql -X -q -v ON_ERROR_STOP=0 "$1" -f "$2" >/dev/null 2>"$3"; }

say "old-version clients write through the proxy (default version: 0001_create_users)"
run_client "$proxy application_name=app-v1" "$old_sql" "$dir/old.err" & old_pid=$!
say "pgshift start migrations/0002_users_v2.yaml --wait (expand here, backfill by the daemon)"
"$bin" start "$root/migrations/0002_users_v2.yaml" --wait
say "new-version clients join: options=-c pgshift.version=0002_users_v2"
run_client "$proxy application_name=app-v2 options='-c pgshift.version=0002_users_v2'" "$new_sql" "$dir/new.err" & new_pid=$!
say "admin console: psql -h 127.0.0.1 -p $admin_port"
psql -X -h 127.0.0.1 -p "$admin_port" -c "SHOW VERSIONS" -c "SHOW SESSIONS" -c "SHOW BACKFILL"
"$bin" status
wait "$old_pid"
say "old clients are gone: pgshift complete (contract) while new clients keep writing"
"$bin" complete --drain-timeout 10
wait "$new_pid"
"$bin" status
say "metrics: http://127.0.0.1:$metrics_port/metrics (excerpt)"
http "http://127.0.0.1:$metrics_port/metrics" | grep -E '^pgshift_(backfill_rows_(done|total)|sessions|queries_total|migration_phase.*} 1|lock_attempts_total|gate_closed)' || true
say "result"
psql -X "$PGSHIFT_POSTGRES_URL" -c '\d users' -c "SELECT count(*) AS users, count(*) FILTER (WHERE status = 'active') AS active, min(age), max(age) FROM users"
errors=$(cat "$dir/old.err" "$dir/new.err" | grep -c ERROR || true)
if [ "$errors" != 0 ]; then echo "client errors:"; cat "$dir/old.err" "$dir/new.err"; exit 1; fi
say "done: 0 failed client statements"
