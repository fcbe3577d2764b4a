#!/usr/bin/env bash
# Proxy benchmark: pgbench select-only (-S) and write (-N) at 1, 8 and 32
# clients, direct to Postgres, through pgshift and through PgBouncer (session
# mode), side by side in one run; then the proxies' memory with 500 idle
# sessions. Writes the "proxy" section of docs/benchmarks.md.
#   tests/bench/proxy.sh            (PGSHIFT_BENCH_SECONDS=20 per run, PGSHIFT_BENCH_ROUNDS=2)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin="$root/target/release/pgshift"
secs=${PGSHIFT_BENCH_SECONDS:-20}
clients=(${PGSHIFT_BENCH_CLIENTS:-1 8 32})
idle_sessions=${PGSHIFT_BENCH_IDLE:-500}
bindir=${PGSHIFT_PG_BINDIR:-/usr/lib/postgresql/15/bin}
pgbench="$bindir/pgbench"; [ -x "$pgbench" ] || pgbench=pgbench
command -v pgbouncer >/dev/null || { echo "pgbouncer is missing: make bench installs it (apt-get install pgbouncer)" >&2; exit 1; }

. "$root/tests/support/scratch.sh"
scratch_dir pgshift-pbench
pids=()
cleanup() {
  local rc=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  scratch_end "$rc"
}
trap cleanup EXIT
url=$(PGSHIFT_PG_EXTRA="-c max_connections=700" "$root/tests/support/pg.sh" start "$dir/pg")
pgport=$(cat "$dir/pg/port")
psql -X -q "$url" -c "CREATE DATABASE bench"
"$pgbench" -i -s 10 -q -h 127.0.0.1 -p "$pgport" -U postgres bench >/dev/null 2>&1
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# pgshift
pxport=$(free_port)
# Both proxies reach Postgres over its Unix socket, as a proxy on the database
# host would; clients reach all three over loopback TCP.
"$bin" proxy --listen "127.0.0.1:$pxport" --postgres-url "host=$dir/pg port=$pgport user=postgres dbname=bench" \
  >"$dir/pgshift.out" 2>"$dir/pgshift.log" &
pids+=($!); pxpid=$!
# PgBouncer, session mode, same upstream.
bport=$(free_port)
cat >"$dir/pgbouncer.ini" <<INI
[databases]
bench = host=$dir/pg port=$pgport dbname=bench
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bport
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
pool_mode = session
max_client_conn = 2000
default_pool_size = 600
ignore_startup_parameters = extra_float_digits,options
logfile = $dir/pgbouncer.log
INI
echo '"postgres" ""' >"$dir/userlist.txt"
chown -R postgres: "$dir/pgbouncer.ini" "$dir/userlist.txt" 2>/dev/null || true
touch "$dir/pgbouncer.log"; chown postgres: "$dir/pgbouncer.log" 2>/dev/null || true
if [ "$(id -u)" = 0 ]; then runuser -u postgres -- pgbouncer -q "$dir/pgbouncer.ini" >/dev/null 2>&1 & else pgbouncer -q "$dir/pgbouncer.ini" >/dev/null 2>&1 & fi
pids+=($!); bpid=$!
for p in "$pgport" "$pxport" "$bport"; do
  for _ in $(seq 100); do psql -X -q -h 127.0.0.1 -p "$p" -U postgres bench -c "SELECT 1" >/dev/null 2>&1 && break; sleep 0.1; done
done

run_pgbench() { # port mode clients -> "tps latency_ms transactions"
  local j=$(( $3 < 2 ? 1 : 2 ))
  "$pgbench" -h 127.0.0.1 -p "$1" -U postgres -n "-$2" -c "$3" -j "$j" -T "$secs" bench 2>/dev/null |
    awk '/^latency average/ {lat=$4} /^tps = / {tps=$3} /^number of transactions actually processed/ {split($NF, n, "/"); tx=n[1]} END {print tps, lat, tx}'
}
# CPU time (user + system, clock ticks) a process has used.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
bouncer_pid=$(pgrep -f "^pgbouncer -q $dir/pgbouncer.ini" | head -1)
rows=""
# Each row runs ROUNDS rounds; odd rounds go direct, pgshift, PgBouncer and
# even rounds the other way, so drift over the run (the write workload's
# tables grow) favours nobody. Figures are the means over the rounds.
rounds=${PGSHIFT_BENCH_ROUNDS:-2}
for mode in S N; do
  for c in "${clients[@]}"; do
    declare -A tps=([d]="" [p]="" [b]="") lat=([d]="" [p]="" [b]="") cpu=([d]="0," [p]="" [b]="")
    declare -A pid_of=([d]="" [p]="$pxpid" [b]="$bouncer_pid")
    for r in $(seq "$rounds"); do
      order=("$pgport:d" "$pxport:p" "$bport:b")
      (( r % 2 == 0 )) && order=("$bport:b" "$pxport:p" "$pgport:d")
      for e in "${order[@]}"; do
        k=${e##*:}; pid=${pid_of[$k]}
        [ -n "$pid" ] && c0=$(ticks "$pid")
        read -r t l n < <(run_pgbench "${e%%:*}" "$mode" "$c")
        tps[$k]+="$t,"; lat[$k]+="$l,"
        # The proxy's CPU per transaction, in microseconds.
        [ -n "$pid" ] && cpu[$k]+="$(( ($(ticks "$pid") - c0) * 1000000 / hz / n )),"
      done
    done
    row=$(python3 - "$mode" "$c" "${tps[d]}" "${lat[d]}" "${tps[p]}" "${lat[p]}" "${tps[b]}" "${lat[b]}" "${cpu[p]}" "${cpu[b]}" <<'PY2'
import sys
mode, c = sys.argv[1], int(sys.argv[2])
dt, dl, pt, pl, bt, bl, pc, bc = (sum(map(float, a.strip(",").split(","))) / len(a.strip(",").split(",")) for a in sys.argv[3:])
name = "select-only (-S)" if mode == "S" else "write (-N)"
print(f"| {name} | {c} | {dt:,.0f} | {pt:,.0f} | {bt:,.0f} | {100*pt/dt:.0f}% | {100*pt/bt:.0f}% | {dl*1000:.0f} | {pl*1000:.0f} | {bl*1000:.0f} | {(pl-dl)*1000:+.0f} | {pc:.1f} | {bc:.1f} |")
PY2
)
    echo "$row"; rows+="$row"$'\n'
  done
done

# Memory with idle sessions: open them through each proxy, then read RSS.
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
idle_rss() { # port pid -> "before after"
  python3 - "$1" "$idle_sessions" "$2" <<'PY'
import socket, struct, sys
port, n, pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])
before = rss()
socks = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    params = b"user\0postgres\0database\0bench\0\0"
    body = struct.pack("!I", 196608) + params
    s.sendall(struct.pack("!I", len(body) + 4) + body)
    buf = b""
    while True:  # read until ReadyForQuery
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit("connection closed during startup")
        buf += chunk
        i, done = 0, False
        while i + 5 <= len(buf):
            tag, ln = buf[i:i+1], struct.unpack("!I", buf[i+1:i+5])[0]
            if i + 1 + ln > len(buf):
                break
            if tag == b"E":
                raise SystemExit(buf[i:i+1+ln])
            done = done or tag == b"Z"
            i += 1 + ln
        if done:
            break
    socks.append(s)
print(before, rss())
PY
}
read -r px_before px_after < <(idle_rss "$pxport" "$pxpid")
read -r b_before b_after < <(idle_rss "$bport" "$bouncer_pid")
mem=$(python3 -c "print(f'| pgshift | {$px_before/1024:.1f} | {$px_after/1024:.1f} | {($px_after-$px_before)/$idle_sessions:.1f} |'); print(f'| PgBouncer | {$b_before/1024:.1f} | {$b_after/1024:.1f} | {($b_after-$b_before)/$idle_sessions:.1f} |')")
echo "$mem"

section="$dir/section.md"
cat >"$section" <<MD
<!-- proxy:start -->
## Proxy (issue 3)

Produced by \`make bench\` (\`tests/bench/proxy.sh\`) on $(date -u +%Y-%m-%d), $(nproc) cores, PostgreSQL
$(psql -X -tA "$url" -c "SHOW server_version"), $(pgbouncer --version 2>/dev/null | head -1), one throwaway cluster
(fsync off). pgbench scale 10, simple protocol, ${secs} s per run, \`-j 2\` from 8 clients; direct, pgshift
(\`--workers 0\`: one thread, like PgBouncer) and PgBouncer (session mode) run back to back for each row, in
${rounds} rounds (odd rounds in that order, even rounds reversed, so drift favours none); figures are the means.
Clients use loopback TCP to all three; both proxies reach Postgres over its Unix socket. Everything (pgbench, Postgres, the proxy)
shares the same 2 cores, so a proxy's CPU is taken from Postgres: the ratios are the point. The last two
columns are each proxy's own CPU time (user + system, from \`/proc\`) per transaction: the work a proxy
does, which the TPS of a shared, noisy machine shows only through its neighbours.

| workload | clients | direct TPS | pgshift TPS | PgBouncer TPS | pgshift vs direct | pgshift vs PgBouncer | direct latency µs | pgshift latency µs | PgBouncer latency µs | pgshift added µs | pgshift CPU µs per transaction | PgBouncer CPU µs per transaction |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
${rows}
Memory with ${idle_sessions} idle sessions open through each proxy (resident set, MiB; the last column is KiB per session):

| proxy | RSS before, MiB | RSS with ${idle_sessions} sessions, MiB | KiB per session |
|---|---:|---:|---:|
${mem}
<!-- proxy:end -->
MD
out="$root/docs/benchmarks.md"
python3 "$root/tests/bench/write_section.py" "$out" proxy "$section"
