#!/usr/bin/env bash
# make demo: a throwaway Postgres, the sample schema from migrations/, old- and
# new-version clients writing while migration 0002 goes through expand,
# backfill and contract. Exits 0 when every client statement succeeded.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin="$root/target/release/pgshift"
rows=${DEMO_ROWS:-300000}
dir=$(mktemp -d /tmp/pgshift-demo-XXXXXX); chmod 755 "$dir"
trap '"$root/tests/support/pg.sh" stop "$dir/pg"' EXIT
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say "starting a throwaway PostgreSQL 15"
export PGSHIFT_POSTGRES_URL=$("$root/tests/support/pg.sh" start "$dir/pg")
echo "$PGSHIFT_POSTGRES_URL"
say "applying migrations/0001_create_users.yaml and loading $rows users"
"$bin" start "$root/migrations/0001_create_users.yaml" --complete
psql -X -q "$PGSHIFT_POSTGRES_URL" -c "INSERT INTO users (name, email, age) SELECT 'user ' || g, 'u' || g || '@example.com', (18 + g % 60)::text FROM generate_series(1, $rows) g"

# Old-version clients use the base schema; new-version clients set what the
# proxy sets for them: pgshift.version and the version schema first.
old_sql="$dir/old.sql"; new_sql="$dir/new.sql"
for i in $(seq 1 1500); do
  echo "INSERT INTO users (name, email, age) VALUES ('old $i', 'old$i@example.com', '$((20 + i % 50))');"
  echo "UPDATE users SET age = '$((i % 90))' WHERE id = $((1 + i * 97 % rows));"
done >"$old_sql"
{ echo "SET pgshift.version = '0002_users_v2'; SET search_path = public_0002_users_v2, public;"
  for i in $(seq 1 1500); do
    echo "INSERT INTO users (full_name, email, age, status) VALUES ('new $i', 'new$i@example.com', $((20 + i % 50)), 'active');"
    echo "SELECT full_name, age + 1, status FROM users WHERE id = $((1 + i * 89 % rows));"
  done; } >"$new_sql"
run_client() { psql -X -q -v ON_ERROR_STOP=0 "$PGSHIFT_POSTGRES_URL" -f "$1" >/dev/null 2>"$2"; }

say "old-version clients start writing"
run_client "$old_sql" "$dir/old.err" & old_pid=$!
say "pgshift start migrations/0002_users_v2.yaml (expand + backfill)"
"$bin" start "$root/migrations/0002_users_v2.yaml"
say "new-version clients start writing through schema public_0002_users_v2"
run_client "$new_sql" "$dir/new.err" & new_pid=$!
"$bin" status
wait "$old_pid"
say "old clients are gone: pgshift complete (contract) while new clients keep writing"
"$bin" complete
wait "$new_pid"
"$bin" status
say "result"
psql -X "$PGSHIFT_POSTGRES_URL" -c '\d users' -c "SELECT count(*) AS users, count(*) FILTER (WHERE status = 'active') AS active, min(age), max(age) FROM users"
errors=$(cat "$dir/old.err" "$dir/new.err" | grep -c ERROR || true)
if [ "$errors" != 0 ]; then echo "client errors:"; cat "$dir/old.err" "$dir/new.err"; exit 1; fi
say "done: 0 failed client statements"
