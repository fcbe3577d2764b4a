#!/usr/bin/env bash
# Foreground impact of a migration run by the daemon: a steady pgbench
# workload (fixed rate) through the daemon's proxy, first alone (baseline),
# then while a 1M-row table backfills, then while complete runs. Reports p50
# and p99 of each window and the longest single transaction during complete.
# Writes the "daemon" section of docs/benchmarks.md.
#   tests/bench/daemon.sh      (PGSHIFT_BENCH_ROWS=1000000, PGSHIFT_BENCH_RATE=400 tps,
#                               PGSHIFT_BENCH_BATCH_MS=2, PGSHIFT_BENCH_P99_MS: the copier's
#                               max_p99_ms, default 1.3x the baseline's request p99)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin="$root/target/release/pgshift"
rows=${PGSHIFT_BENCH_ROWS:-1000000}
rate=${PGSHIFT_BENCH_RATE:-400}
bindir=${PGSHIFT_PG_BINDIR:-/usr/lib/postgresql/15/bin}
pgbench="$bindir/pgbench"; [ -x "$pgbench" ] || pgbench=pgbench
. "$root/tests/bench/daemon_lib.sh"
bench_cluster pgshift-dbench
pgport=$(cat "$dir/pg/port")
base=${url%/postgres}
db="$base/bench"
psql -X -q "$url" -c "CREATE DATABASE bench"
"$pgbench" -i -s 10 -q -h 127.0.0.1 -p "$pgport" -U postgres bench >/dev/null 2>&1
psql -X -q "$db" -c "CREATE TABLE users (id serial PRIMARY KEY, name varchar(255) NULL); INSERT INTO users (name) SELECT NULL FROM generate_series(1, $rows)"
psql -X -q "$db" -c "VACUUM ANALYZE users"
start_daemon bench
mig="$dir/01_set_name_not_null.yaml"
cat >"$mig" <<'Y'
operations:
  - alter_column:
      table: users
      column: name
      nullable: false
      up: SELECT CASE WHEN name IS NULL THEN 'placeholder' ELSE name END
      down: name
Y
now() { python3 -c 'import time; print(time.time())'; }
# The workload: pgbench's default TPC-B-like transaction at a fixed rate, 4
# clients, every transaction logged (start time, latency).
# workload_bg leaves pgbench's pid in $! (stop it with SIGTERM: background
# jobs of a script ignore SIGINT).
workload_bg() { # seconds prefix
  (cd "$dir" && exec "$pgbench" -h 127.0.0.1 -p "$port" -U postgres -n -c 4 -j 2 -R "$rate" -T "$1" -l --log-prefix="$2" bench >/dev/null 2>&1) &
}
# Baseline; a huge p99 bound makes the daemon measure its p99 without acting on it.
"$bin" set max_p99_ms 1000000 --postgres-url "$db" >/dev/null
workload_bg 20 base; wl=$!
sleep 8
bound=$(request_p99_bound)
wait "$wl"
# The copier's bounds: slow down while the p99 of requests through the proxy
# is above 1.3x what it was during the baseline, and keep batches short so
# the workload gets the CPU between them.
bp99=${PGSHIFT_BENCH_P99_MS:-$bound}
batch_ms=${PGSHIFT_BENCH_BATCH_MS:-2}
copier_settings "$bp99" "$batch_ms"
# During backfill: the workload (the old application version) runs for as
# long as the throttled backfill takes (one pgbench run, interrupted a
# moment after the backfill ends), while `start` hands the backfill to the
# daemon and waits for it.
workload_bg 1800 during; wl=$!
sleep 3
t0=$(now)
"$bin" start "$mig" --postgres-url "$db" --wait --progress none 2>"$dir/start.log"
t1=$(now)
sleep 2
kill -TERM "$wl" 2>/dev/null || true; wait "$wl" 2>/dev/null || true
# During complete: the new application version runs (the old one is gone,
# which is what lets complete proceed).
PGOPTIONS="-c pgshift.version=01_set_name_not_null" workload_bg 12 after; wl=$!
sleep 4
t2=$(now)
"$bin" complete --postgres-url "$db" 2>"$dir/complete.log"
t3=$(now)
wait "$wl"
PGSHIFT_ROOT="$root" python3 - "$dir" "$t0" "$t1" "$t2" "$t3" "$rows" >"$dir/row.md" <<'PY'
import os, sys
d, t0, t1, t2, t3, rows = sys.argv[1], *map(float, sys.argv[2:6]), int(sys.argv[6])
sys.path.insert(0, os.path.join(os.environ["PGSHIFT_ROOT"], "tests/bench"))
from pgbench_log import load as load_in, pct
def load(prefix):
    return load_in(d, prefix)
base = [l for _, l in load("base")]
during = load("during")
bf = [l for t, l in during if t0 <= t <= t1]
cp = [l for t, l in load("after") if t2 <= t <= t3 + 1.0]
b50, b99 = pct(base, .5), pct(base, .99)
f50, f99 = pct(bf, .5), pct(bf, .99)
print(f"| baseline (no migration) | {len(base)} | {b50:.2f} | {b99:.2f} | {max(base):.1f} |  |")
print(f"| during the backfill of {rows:,} rows ({t1 - t0:.1f} s, {rows / (t1 - t0):,.0f} rows/s) | {len(bf)} | {f50:.2f} | {f99:.2f} | {max(bf) if bf else float('nan'):.1f} | p99 {f99 / b99:.2f}x baseline |")
print(f"| during complete ({t3 - t2:.2f} s) | {len(cp)} | {pct(cp, .5):.2f} | {pct(cp, .99):.2f} | {max(cp) if cp else float('nan'):.1f} | longest transaction {max(cp) if cp else float('nan'):.1f} ms |")
PY
cat "$dir/row.md"
section="$dir/section.md"
cat >"$section" <<MD
<!-- daemon:start -->
## Foreground latency during a migration run by the daemon (issue 4)

Produced by \`make bench\` (\`tests/bench/daemon.sh\`) on $(date -u +%Y-%m-%d), $(nproc) cores, PostgreSQL
$(psql -X -tA "$url" -c "SHOW server_version"), one throwaway cluster (fsync off). The workload is pgbench's
default transaction (scale 10) at a fixed ${rate} tps from 4 clients through the daemon's proxy, every
transaction logged (the old application version during the backfill, the new one, with
\`pgshift.version\` set, during complete); the migration sets NOT NULL on \`users.name\` (${rows} rows, the backfill benchmark's
migration), started with \`pgshift start --wait\` (the daemon's copier backfills) and then \`pgshift complete\`
(every blocking DDL attempt runs with the proxy's gate closed). Before the migration the copier is told
\`max_p99_ms\` = 1.3x the median of ten one-second p99s of single requests the proxy saw during the baseline ($bp99 ms;
a pgbench transaction is 7 requests) and \`batch_target_ms\` = ${batch_ms}: the graded throttle
rests the copier after each batch while the proxy's p99 is above the bound, and short batches
keep its backend from holding one of the two cores for long at a time (with 20 ms batches, or
without the throttle, the p99 during the backfill was 1.7x to 2.6x the baseline in trial runs).
The workload runs for the whole backfill, which the throttle stretches. Latencies in ms, in one run.

| window | transactions | p50 ms | p99 ms | max ms | |
|---|---:|---:|---:|---:|---|
$(cat "$dir/row.md")
<!-- daemon:end -->
MD
out="$root/docs/benchmarks.md"
python3 "$root/tests/bench/write_section.py" "$out" daemon "$section"
