#!/usr/bin/env bash
# The copier's own share of the foreground p99, measured by turns: the same
# write workload as constraints.sh runs without a break while the daemon's
# copier backfills a 10M-row table for a minute, rests (paused) for a minute,
# and so on; then the migration is rolled back (mid-backfill) and the
# workload runs on the table as it was. Minutes on both sides of each turn
# share the machine's state, which the before/after baseline of
# constraints.sh cannot promise. Writes the "copier_share" section of
# docs/benchmarks.md.
#   tests/bench/copier_share.sh    (PGSHIFT_BENCH_ROWS=10000000, PGSHIFT_BENCH_RATE=300 tps,
#                                   PGSHIFT_BENCH_CYCLES=4, PGSHIFT_BENCH_TURN_SECS=60)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin="$root/target/release/pgshift"
cycles=${PGSHIFT_BENCH_CYCLES:-4}
turn=${PGSHIFT_BENCH_TURN_SECS:-60}
. "$root/tests/bench/daemon_lib.sh"
. "$root/tests/bench/orders_lib.sh"
bench_cluster pgshift-share
orders_setup
workload_bg 60; wl=$!
wait "$wl"
mark() { echo "$(date +%s.%N) $1" >>"$dir/marks"; }
workload_bg 36000 w; wl=$!
mark pristine; sleep $((2 * turn))
"$bin" set max_p99_ratio 1.3 --postgres-url "$db" >/dev/null
"$bin" set batch_target_ms 2 --postgres-url "$db" >/dev/null
"$bin" pause --postgres-url "$db" >/dev/null
"$bin" start "$mig" --postgres-url "$db" --progress none 2>"$dir/start.log"
mark paused; sleep "$turn"
for _ in $(seq "$cycles"); do
  "$bin" resume --postgres-url "$db" >/dev/null; mark working; sleep "$turn"
  "$bin" pause --postgres-url "$db" >/dev/null; mark paused; sleep "$turn"
done
done_rows=$(psql -X -tA "$db" -c "SELECT sum(rows_done) FROM pgshift.backfills")
"$bin" rollback --postgres-url "$db" 2>"$dir/rollback.log"
mark rolled_back; sleep $((2 * turn))
mark end
workload_alive "$wl"
kill -TERM "$wl" 2>/dev/null || true; wait "$wl" 2>/dev/null || true
PGSHIFT_ROOT="$root" python3 - "$dir" "$done_rows" >"$dir/rows.md" <<'PY'
import os, sys
d, done_rows = sys.argv[1], int(sys.argv[2])
sys.path.insert(0, os.path.join(os.environ["PGSHIFT_ROOT"], "tests/bench"))
from pgbench_log import load, pct
tx = load(d, "w")
marks = [(float(t), n) for t, n in (l.split() for l in open(os.path.join(d, "marks")))]
# A turn's first 3 s belong to the switch (an in-flight batch, a rollback's DDL).
turns = [(n, [l for t, l in tx if a + 3 <= t < b]) for (a, n), (b, _) in zip(marks, marks[1:])]
by = {}
for n, v in turns:
    by.setdefault(n, []).extend(v)
label = {"pristine": "before the migration", "paused": "migration started, copier paused",
         "working": "copier working", "rolled_back": "after the rollback"}
for n in ["pristine", "paused", "working", "rolled_back"]:
    v = by.get(n, [])
    print(f"| {label[n]} | {sum(1 for k, _ in turns if k == n)} | {len(v)} | {pct(v, .5):.2f} | {pct(v, .99):.2f} | {pct(by['working'], .99) / pct(v, .99):.2f}x |")
# Each working minute against the paused minute before it.
pairs = [pct(w, .99) / pct(p, .99) for (pn, p), (wn, w) in zip(turns, turns[1:]) if pn == "paused" and wn == "working"]
print(f"PAIRS {' '.join(f'{r:.2f}x' for r in pairs)}")
print(f"ROWS {done_rows}")
PY
pairs=$(sed -n 's/^PAIRS //p' "$dir/rows.md"); done_rows=$(sed -n 's/^ROWS //p' "$dir/rows.md")
grep '^|' "$dir/rows.md"
section="$dir/section.md"
cat >"$section" <<MD
<!-- copier_share:start -->
## The copier's own share of the p99, by turns (issue 5)

Produced by \`make bench\` (\`tests/bench/copier_share.sh\`) on $(date -u +%Y-%m-%d), $(nproc) cores, PostgreSQL
$(psql -X -tA "$url" -c "SHOW server_version"). The table, workload and migration of the section above (${rows} rows,
${rate} tps through the daemon's proxy, \`max_p99_ratio\` 1.3, \`batch_target_ms\` 2), but the workload runs
without a break while the copier works for ${turn} s and is paused for ${turn} s by turns (${cycles} times each, the
first paused turn right after \`start\`), between $((2 * turn)) s before the migration and $((2 * turn)) s after a rollback
(at ${done_rows} rows backfilled; the rollback ran while the copier held the backfill). The first 3 s of each
turn are left out. The last column is the copier-working p99 over each row's p99.

| workload while | turns | transactions | p50 ms | p99 ms | copier working vs this |
|---|---:|---:|---:|---:|---:|
$(grep '^|' "$dir/rows.md")

Each working turn against the paused turn before it: ${pairs}.
<!-- copier_share:end -->
MD
python3 "$root/tests/bench/write_section.py" "$root/docs/benchmarks.md" copier_share "$section"
