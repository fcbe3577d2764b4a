#!/usr/bin/env bash
# Adding a foreign key and NOT NULL to a big table under a steady write
# workload: the longest ACCESS EXCLUSIVE lock held on the table (sampled from
# pg_locks every few milliseconds) and the workload's p99 during the
# migration against its baseline, in one run. Writes the "constraints"
# section of docs/benchmarks.md.
# The migration runs the way the daemon runs it: the workload goes through the
# daemon's proxy, whose p99 throttles the daemon's copier.
#   tests/bench/constraints.sh     (PGSHIFT_BENCH_ROWS=10000000, PGSHIFT_BENCH_RATE=300 tps,
#                                   PGSHIFT_BENCH_BATCH_MS=2, PGSHIFT_BENCH_P99_RATIO=1.3,
#                                   PGSHIFT_BENCH_WARMUP_SECS=60, PGSHIFT_BENCH_BASE_SECS=240)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin="$root/target/release/pgshift"
base_secs=${PGSHIFT_BENCH_BASE_SECS:-240}
warmup=${PGSHIFT_BENCH_WARMUP_SECS:-60}
python="$root/target/test-clients/venv/bin/python"
. "$root/tests/bench/daemon_lib.sh"
. "$root/tests/bench/orders_lib.sh"
bench_cluster pgshift-cbench
orders_setup
# Samples ACCESS EXCLUSIVE locks on orders until told to stop; prints the
# longest continuous hold per backend, in ms. Every 5 ms while pgshift's DDL
# runs (the file "$dir/fast" exists: start's expand, complete), every 50 ms
# otherwise: reading pg_locks takes every lock-manager partition lock, load
# of its own 200 times a second for an hour (the ACCESS EXCLUSIVE of anything
# else, like autovacuum truncating the table, still shows within 50 ms).
cat >"$dir/sample.py" <<'PY'
import os, sys, time, psycopg
conn = psycopg.connect(sys.argv[1], autocommit=True)
stop, fast, held, longest = sys.argv[2], sys.argv[3], {}, 0.0
while not os.path.exists(stop):
    now = time.monotonic()
    pids = {r[0] for r in conn.execute(
        "SELECT pid FROM pg_locks WHERE relation = 'orders'::regclass AND mode = 'AccessExclusiveLock' AND granted")}
    for pid in pids:
        held.setdefault(pid, now)
    for pid in list(held):
        if pid not in pids:
            longest = max(longest, (now - held.pop(pid)) * 1000)
    time.sleep(0.005 if os.path.exists(fast) else 0.05)
now = time.monotonic()
for t in held.values():
    longest = max(longest, (now - t) * 1000)
print(f"{longest:.1f}")
PY
# The lock sampler runs from the start to the end, so both baselines pay for it too.
"$python" "$dir/sample.py" "$db" "$dir/stop" "$dir/fast" >"$dir/longest" &
sampler=$!
# Unmeasured warm-up: the first minute of writes to a freshly loaded table
# is not what the application sees later (its p99 was up to 3x that of the
# minutes after it in trial runs).
workload_bg "$warmup"; wl=$!
wait "$wl"
workload_bg "$base_secs" base; wl=$!
wait "$wl"
batch_ms=${PGSHIFT_BENCH_BATCH_MS:-2}
ratio=${PGSHIFT_BENCH_P99_RATIO:-1.3}
# The old application version writes while the daemon backfills; then the
# new version, which lets complete go ahead.
workload_bg 3600 during; wl=$!
sleep 2
t0=$(date +%s.%N)
# The copier's latency bound is relative: the daemon measures the
# application's own p99 with the copier resting (for 2.5 s every 30 s) and
# holds the proxy's p99 under max_p99_ratio times it.
"$bin" set max_p99_ratio "$ratio" --postgres-url "$db" >/dev/null
"$bin" set batch_target_ms "$batch_ms" --postgres-url "$db" >/dev/null
touch "$dir/fast"
"$bin" start "$mig" --postgres-url "$db" --progress none 2>"$dir/start.log"
rm -f "$dir/fast"
# Wait for the daemon's copier on one connection: a psql started every
# second (a process and a server backend each time) put 12% of the
# application's transactions near a fork, with twice the p99 of the others.
"$python" - "$db" <<'PY'
import sys, time, psycopg
conn = psycopg.connect(sys.argv[1], autocommit=True)
while not conn.execute("SELECT coalesce(bool_and(done), false) FROM pgshift.backfills").fetchone()[0]:
    time.sleep(0.5)
PY
t1=$(date +%s.%N)
PGOPTIONS="-c pgshift.version=01_orders_customer_fk_not_null" workload_bg 3600 during_new; wl_new=$!
workload_alive "$wl"
kill -TERM "$wl" 2>/dev/null || true; wait "$wl" 2>/dev/null || true
# (Daemons report sessions once a second: the drain timeout covers the last
# old-version sessions that just ended.)
touch "$dir/fast"
"$bin" complete --postgres-url "$db" --drain-timeout 10 2>"$dir/complete.log"
t2=$(date +%s.%N)
rm -f "$dir/fast"
workload_alive "$wl_new"
kill -TERM "$wl_new" 2>/dev/null || true; wait "$wl_new" 2>/dev/null || true
# A second baseline after the migration (the new version, no migration in
# progress): with the one before, the baseline spans the run, so the
# machine's drift over half an hour weighs on both sides.
workload_bg "$base_secs" after; wl=$!
wait "$wl"
touch "$dir/stop"; wait "$sampler"
longest=$(cat "$dir/longest")
bad=$(psql -X -tA "$db" -c "SELECT count(*) FROM orders o WHERE customer_id IS NULL OR NOT EXISTS (SELECT 1 FROM customers c WHERE c.id = o.customer_id)")
[ "$bad" = 0 ] || { echo "bench: $bad rows break the new constraints" >&2; exit 1; }
PGSHIFT_ROOT="$root" python3 - "$dir" "$t0" "$t1" "$t2" "$rows" "$longest" >"$dir/row.md" <<'PY'
import os, sys
d, (t0, t1, t2), rows, longest = sys.argv[1], map(float, sys.argv[2:5]), int(sys.argv[5]), float(sys.argv[6])
sys.path.insert(0, os.path.join(os.environ["PGSHIFT_ROOT"], "tests/bench"))
from pgbench_log import load as load_in, pct
def load(prefix):
    return load_in(d, prefix)
before = [l for _, l in load("base")]
after = [l for _, l in load("after")]
base = before + after
every = load("during") + load("during_new")
def window(a, b):
    return [l for t, l in every if a <= t <= b]
during, backfill, complete = window(t0, t2), window(t0, t1), window(t1, t2)
# The daemon logs each probe's end; its last 2 s measured the application
# with the copier resting. Transactions then against those of the rest of
# the backfill: the copier's own share of the p99, drift of the machine and
# the migration's standing costs (trigger, constraint checks) aside.
import re, datetime
probes = []
for line in open(os.path.join(d, "daemon.log"), errors="replace"):
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    if "application's own p99" in line:
        at = datetime.datetime.strptime(line.split()[0][:26], "%Y-%m-%dT%H:%M:%S.%f")
        probes.append(at.replace(tzinfo=datetime.timezone.utc).timestamp())
in_probe = lambda t: any(p - 2.0 <= t <= p for p in probes)
resting = [l for t, l in every if t0 <= t <= t1 and in_probe(t)]
working = [l for t, l in every if t0 <= t <= t1 and not any(p - 2.5 <= t <= p for p in probes)]
b99, r99, w99 = pct(base, .99), pct(resting, .99), pct(working, .99)
# The host's noise comes in spells of minutes: the median of the one-minute
# p99s says what a typical minute looked like on each side.
def minute_p99s(txs):
    by = {}
    for t, l in txs:
        by.setdefault(int(t // 60), []).append(l)
    return sorted(pct(v, .99) for v in by.values() if len(v) >= 100)
def median(v):
    return v[len(v) // 2] if v else float("nan")
mb = median(minute_p99s(load("base") + load("after")))
md = median(minute_p99s([(t, l) for t, l in every if t0 <= t <= t1]))
print(f"| {rows:,} | {t1 - t0:.1f} | {rows / (t1 - t0):,.0f} | {t2 - t1:.2f} | {longest:.1f} "
      f"| {pct(before, .99):.2f} | {pct(after, .99):.2f} | {b99:.2f} "
      f"| {pct(backfill, .99):.2f} ({pct(backfill, .99) / b99:.2f}x) | {pct(complete, .99):.2f} ({pct(complete, .99) / b99:.2f}x) "
      f"| {pct(during, .99):.2f} | {pct(during, .99) / b99:.2f}x | {len(during)} "
      f"| {r99:.2f} ({len(resting)} in {len(probes)} probes) | {w99:.2f} | {w99 / r99:.2f}x "
      f"| {mb:.2f} | {md:.2f} ({md / mb:.2f}x) |")
PY
cat "$dir/row.md"
section="$dir/section.md"
cat >"$section" <<MD
<!-- constraints:start -->
## A foreign key and NOT NULL on a big table under writes (issue 5)

Produced by \`make bench\` (\`tests/bench/constraints.sh\`) on $(date -u +%Y-%m-%d), $(nproc) cores, PostgreSQL
$(psql -X -tA "$url" -c "SHOW server_version"), one throwaway cluster (fsync off). \`orders\` has ${rows} rows
(one in a thousand with a NULL \`customer_id\`); one \`alter_column\` makes \`customer_id\` NOT NULL
(\`up: coalesce(customer_id, 1)\`) and a foreign key to \`customers\`, through \`start\` (the daemon's copier
backfills) then \`complete\`, while a pgbench script inserts and updates orders at ${rate} tps from 2 clients
through the daemon's proxy (every transaction logged; the old application version until the backfill is
done, then the new one). The copier runs with \`max_p99_ratio\` = ${ratio} (the daemon rests it for 2.5 s every
30 s to measure the application's own p99, and holds the proxy's one-second p99 under ${ratio}x that) and
\`batch_target_ms\` = ${batch_ms}. "start s" runs from \`start\` to the end of the backfill. The
longest ACCESS EXCLUSIVE lock on \`orders\` is sampled from \`pg_locks\` every ~5 ms while \`start\` and \`complete\`
run (so holds shorter than that may show as 0), every 50 ms in between. The baseline is the same workload for ${base_secs} s before the migration (after a checkpoint
and \`sync\`, so the load's writeback is over, and ${warmup} s of unmeasured warm-up) and ${base_secs} s after it; the ratios
are against both together. Three columns compare, within the backfill, the transactions of the daemon's probe
windows (the copier resting, the trigger and constraints in place) with all the others: the copier's own share
of the p99, apart from the machine's drift and the migration's standing costs. The last two give the median of
the one-minute p99s on each side: this machine's latency moves in spells of minutes, which a short baseline
may miss or catch.

| rows | start s | rows/s | complete s | longest ACCESS EXCLUSIVE ms | baseline p99 before ms | baseline p99 after ms | baseline p99 ms | p99 during the backfill ms | p99 during complete ms | p99 during ms | p99 ratio | transactions during | p99 with the copier resting ms | p99 with the copier working ms | copier's own ratio | median minute p99, baseline ms | median minute p99, backfill ms |
|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
$(cat "$dir/row.md")
<!-- constraints:end -->
MD
python3 "$root/tests/bench/write_section.py" "$root/docs/benchmarks.md" constraints "$section"
