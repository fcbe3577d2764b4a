#!/usr/bin/env bash
# Backfill benchmark (pgroll's workload) and write amplification, side by side
# in one run on one throwaway cluster. Writes the "backfill" section of
# docs/benchmarks.md.
#   tests/bench/backfill.sh [N ...]    (default: 10000 100000 300000 1000000 10000000)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin="$root/target/release/pgshift"
sizes=("$@"); [ ${#sizes[@]} -gt 0 ] || sizes=(10000 100000 300000 1000000 10000000)
amp_rows=${PGSHIFT_BENCH_AMP_ROWS:-1000000}
. "$root/tests/support/scratch.sh"
scratch_dir pgshift-bench
trap 'scratch_end $?' EXIT
url=$("$root/tests/support/pg.sh" start "$dir/pg")
base=${url%/postgres}
# Seconds a statement took as psql's client measures it (no process start).
timed_sql() { psql -X -q -v ON_ERROR_STOP=1 "$1" -c '\timing on' -c "$2" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | tail -1 | awk '{print $1 / 1000}'; }
# Seconds a command took, process start included (measured without a fork of its own).
timed() { python3 -c 'import subprocess, sys, time
t = time.perf_counter(); r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)
print(time.perf_counter() - t); sys.exit(r.returncode)' "$@"; }
# `start --complete`: seconds from outside the process, then the time it
# reports from connected to done (what pgroll's benchmark times).
timed_one() { python3 -c 'import re, subprocess, sys, time
t = time.perf_counter(); r = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, text=True)
wall = time.perf_counter() - t
m = re.search(r" in ([0-9.]+) s$", r.stdout.strip())
if r.returncode or not m: sys.exit(f"bench: {sys.argv[1:]} printed {r.stdout!r}, exit {r.returncode}")
print(wall, m.group(1))' "$@"; }
q() { psql -X -q -v ON_ERROR_STOP=1 "$1" -c "$2" >/dev/null; }
val() { psql -X -tA -v ON_ERROR_STOP=1 "$1" -c "$2"; }
mig="$dir/m/01_set_name_not_null.yaml"; mkdir -p "$dir/m"
cat >"$mig" <<'Y'
operations:
  - alter_column:
      table: users
      column: name
      nullable: false
      up: SELECT CASE WHEN name IS NULL THEN 'placeholder' ELSE name END
      down: name
      comment: the name of the user
Y
make_table() { # db table rows
  q "$1" "CREATE TABLE $2 (id serial PRIMARY KEY, name varchar(255) NULL); INSERT INTO $2 (name) SELECT NULL FROM generate_series(1, $3)"
  q "$1" "VACUUM ANALYZE $2"
}
median() { python3 -c 'import sys, statistics; print(statistics.median(map(float, sys.argv[1:])))' "$@"; }
# Warm-up, not recorded: the first measured size would otherwise pay for a
# cold cluster (catalog caches, first connections, page cache).
q "$url" "CREATE DATABASE bench_warmup"
make_table "$base/bench_warmup" users 10000
PGSHIFT_POSTGRES_URL=$base/bench_warmup "$bin" start "$mig" --progress none -c >/dev/null 2>&1
q "$url" "DROP DATABASE bench_warmup"
rows_md=""; two_md=""
for n in "${sizes[@]}"; do
  db="bench_$n"; q "$url" "CREATE DATABASE $db"; durl="$base/$db"
  # Machines are noisy: floor and pgshift alternate on fresh tables and the
  # medians are compared; five times up to 100k rows (where one hiccup of a
  # few ms is a large share of a phase), three up to 1M, once above.
  reps=1; [ "$n" -gt 1000000 ] || reps=3; [ "$n" -gt 100000 ] || reps=5
  floors=(); bfs=(); starts=(); completes=(); totals=(); ones=(); inprocs=(); twos=()
  for _ in $(seq "$reps"); do
    # Floor: one UPDATE computing the same expression into a new column.
    make_table "$durl" floor "$n"
    q "$durl" "ALTER TABLE floor ADD COLUMN name_new varchar(255)"; q "$durl" "CHECKPOINT"
    floors+=("$(timed_sql "$durl" "UPDATE floor SET name_new = (CASE WHEN name IS NULL THEN 'placeholder' ELSE name END)")")
    q "$durl" "DROP TABLE floor"
    # pgshift: start (expand + backfill) + complete.
    make_table "$durl" users "$n"; q "$durl" "CHECKPOINT"
    PGSHIFT_POSTGRES_URL=$durl "$bin" init >/dev/null 2>&1  # one-time install, like \`pgroll init\`
    start_s=$(PGSHIFT_POSTGRES_URL=$durl timed "$bin" start "$mig" --progress none 2>"$dir/start.log")
    complete_s=$(PGSHIFT_POSTGRES_URL=$durl timed "$bin" complete 2>"$dir/complete.log")
    bfs+=("$(val "$durl" "SELECT extract(epoch FROM updated_at - started_at) FROM pgshift.backfills")")
    bad=$(val "$durl" "SELECT count(*) FROM users WHERE name IS DISTINCT FROM 'placeholder'")
    [ "$bad" = 0 ] || { echo "bench: $bad rows wrong after complete" >&2; exit 1; }
    starts+=("$start_s"); completes+=("$complete_s"); totals+=("$(echo "$start_s + $complete_s" | bc -l)")
    q "$durl" "DROP SCHEMA public_01_set_name_not_null CASCADE; DROP TABLE users; DROP SCHEMA pgshift CASCADE"
    # The same migration as one command (like `pgroll start --complete`).
    make_table "$durl" users "$n"; q "$durl" "CHECKPOINT"
    PGSHIFT_POSTGRES_URL=$durl "$bin" init >/dev/null 2>&1
    read -r one_s inproc_s < <(PGSHIFT_POSTGRES_URL=$durl timed_one "$bin" start "$mig" --complete --progress none 2>"$dir/one.log")
    ones+=("$one_s"); inprocs+=("$inproc_s")
    bad=$(val "$durl" "SELECT count(*) FROM users WHERE name IS DISTINCT FROM 'placeholder'")
    [ "$bad" = 0 ] || { echo "bench: $bad rows wrong after start --complete" >&2; exit 1; }
    q "$durl" "DROP SCHEMA public_01_set_name_not_null CASCADE; DROP TABLE users; DROP SCHEMA pgshift CASCADE"
    # Once more with two connections sharing each batch.
    make_table "$durl" users "$n"; q "$durl" "CHECKPOINT"
    PGSHIFT_POSTGRES_URL=$durl "$bin" init >/dev/null 2>&1
    read -r two_s _ < <(PGSHIFT_POSTGRES_URL=$durl timed_one "$bin" start "$mig" --complete --progress none --backfill-workers 2 2>"$dir/two.log")
    twos+=("$two_s")
    bad=$(val "$durl" "SELECT count(*) FROM users WHERE name IS DISTINCT FROM 'placeholder'")
    [ "$bad" = 0 ] || { echo "bench: $bad rows wrong after start --complete with two workers" >&2; exit 1; }
    q "$durl" "DROP SCHEMA public_01_set_name_not_null CASCADE; DROP TABLE users; DROP SCHEMA pgshift CASCADE"
  done
  two_row=$(python3 -c "import sys; n, one, two = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]); print(f'| {n:,} | {n/one:,.0f} | {n/two:,.0f} | {one/two:.2f}x |')" "$n" "$(median "${ones[@]}")" "$(median "${twos[@]}")")
  two_md+="$two_row"$'\n'
  # Backfill vs floor is the median of each run's own ratio: the host's
  # speed drifts over seconds, and a floor and the backfill measured a
  # moment apart see the same speed.
  row=$(python3 - "$n" "$reps" "${floors[*]}" "${bfs[*]}" "$(median "${totals[@]}")" "$(median "${starts[@]}")" "$(median "${completes[@]}")" "$(median "${ones[@]}")" "$(median "${inprocs[@]}")" <<'PY'
import statistics, sys
n, reps = int(sys.argv[1]), int(sys.argv[2])
floors, bfs = ([float(x) for x in a.split()] for a in sys.argv[3:5])
total, start, complete, one, inproc = map(float, sys.argv[5:])
floor, bf = statistics.median(floors), statistics.median(bfs)
ratio = statistics.median(f / b for f, b in zip(floors, bfs))
print(f"| {n:,} | {reps} | {n/floor:,.0f} | {n/bf:,.0f} | {100*ratio:.0f}% | {start:.3f} | {complete:.3f} | {n/total:,.0f} | {one:.3f} | {n/one:,.0f} | {n/inproc:,.0f} |")
PY
)
  echo "$row"; rows_md+="$row"$'\n'
  q "$url" "DROP DATABASE $db"
done
# Write amplification: UPDATE every row, plain table vs during a migration;
# alternated three times, medians compared.
db=bench_amp; q "$url" "CREATE DATABASE $db"; durl="$base/$db"
plains=(); trigs=()
for _ in 1 2 3; do
  make_table "$durl" users "$amp_rows"; q "$durl" "CHECKPOINT"
  plains+=("$(timed_sql "$durl" "UPDATE users SET name = 'person'")")
  q "$durl" "DROP TABLE users"; make_table "$durl" users "$amp_rows"
  PGSHIFT_POSTGRES_URL=$durl "$bin" start "$mig" --progress none >/dev/null 2>&1
  q "$durl" "VACUUM ANALYZE users"; q "$durl" "CHECKPOINT"
  trigs+=("$(timed_sql "$durl" "UPDATE users SET name = 'person'")")
  PGSHIFT_POSTGRES_URL=$durl "$bin" rollback >/dev/null 2>&1
  q "$durl" "DROP TABLE users"
done
plain_s=$(median "${plains[@]}"); trig_s=$(median "${trigs[@]}")
amp=$(python3 -c "print(f'| {$amp_rows:,} | {$amp_rows/$plain_s:,.0f} | {$amp_rows/$trig_s:,.0f} | {100*$plain_s/$trig_s:.0f}% |')")
echo "$amp"
section="$dir/section.md"
cat >"$section" <<MD
<!-- backfill:start -->
## Backfill (issue 2)

Produced by \`make bench\` (\`tests/bench/backfill.sh\`) on $(date -u +%Y-%m-%d), $(nproc) cores,
PostgreSQL $(val "$url" "SHOW server_version"), one throwaway cluster (fsync off, shared_buffers 256MB).

Workload (pgroll's backfill benchmark): \`users (id serial primary key, name varchar(255) null)\`
with N rows of NULL names; the migration is \`alter_column\` on \`name\` with \`nullable: false\`,
\`up: SELECT CASE WHEN name IS NULL THEN 'placeholder' ELSE name END\`, \`down: name\` and a comment.
The floor is one \`UPDATE\` computing the same expression into a new column of an identical table,
in the same run, timed by psql's \`\\timing\`. "Backfill rows/s" counts only the copier's phase (from \`pgshift.backfills\`);
"backfill vs floor" is the median of each run's ratio (a floor and the backfill after it, seconds apart);
"end to end" is N over the whole migration, timed from outside the process: once as two commands,
\`pgshift start\` then \`pgshift complete\` (two processes, each starting and connecting), and once as
the single command \`pgshift start --complete\` (one process and connection, like \`pgroll start --complete\`).
pgroll's own benchmark times \`Start\` + \`Complete\` inside one Go process on a connection opened
before the clock starts, so both of these figures include costs pgroll's leaves out (process start,
connecting: about 4 ms each). The last column is timed as pgroll's is: \`start --complete\` reports the
time from its connection being ready to the migration being complete. The one-time \`pgshift init\`
runs before the clock starts. The floor and the pgshift forms alternate on fresh tables, five times
up to 100k rows and three times up to 1M, and every figure is the median ("runs").
pgshift drops the leading \`SELECT\` of \`up\` when Postgres confirms the bare expression means the
same (same type, no aggregate), and the floor runs that same bare expression, so neither side pays
for a per-row sub-query.

| N rows | runs | floor: one UPDATE, rows/s | pgshift backfill rows/s | backfill vs floor | start s | complete s | end to end rows/s, two commands | start --complete s | end to end rows/s, one command | rows/s timed as pgroll's benchmark |
|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
${rows_md}
pgroll publishes 53k, 21k and 9k rows/s for 10k, 100k and 300k rows (its own machine).

The same \`start --complete\` with \`--backfill-workers 2\` (two connections share each batch; the
default is one), in the same alternation, medians:

| N rows | one command, 1 worker, rows/s | one command, 2 workers, rows/s | speed-up |
|---:|---:|---:|---:|
${two_md}
Write amplification (pgroll's second benchmark): \`UPDATE users SET name = 'person'\` over every row,
on a plain table and on the same table while the migration above is started (dual-write trigger in place);
alternated three times on fresh tables, medians compared.

| rows | plain UPDATE rows/s | with pgshift's trigger rows/s | throughput kept |
|---:|---:|---:|---:|
${amp}

pgroll's triggers keep about 22% of the plain throughput.
<!-- backfill:end -->
MD
out="$root/docs/benchmarks.md"
python3 "$root/tests/bench/write_section.py" "$out" backfill "$section"
