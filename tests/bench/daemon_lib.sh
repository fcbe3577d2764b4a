# Shared by the bench scripts that run a migration through `pgshift daemon`.
# Source it after setting root and bin. bench_cluster makes the scratch dir
# and the throwaway cluster (sets dir and url; both go away on exit, with the
# daemon). Set db (URL of the bench database) before start_daemon,
# request_p99_bound and copier_settings; start_daemon sets port (the
# proxy), mport (metrics) and daemon_pid.

. "$root/tests/support/scratch.sh"

bench_cluster() { # name prefix of the scratch dir
  scratch_dir "$1"
  daemon_pid=
  trap 'rc=$?; { [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null; } || true; scratch_end $rc' EXIT
  url=$("$root/tests/support/pg.sh" start "$dir/pg")
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Start the daemon on the bench database (over the cluster's Unix socket) and
# wait until its proxy answers and its copier holds the leader lock.
start_daemon() { # dbname
  local pgport; pgport=$(cat "$dir/pg/port")
  port=$(free_port); mport=$(free_port)
  "$bin" daemon --postgres-url "host=$dir/pg port=$pgport user=postgres dbname=$1" --listen "127.0.0.1:$port" \
    --metrics-listen "127.0.0.1:$mport" >"$dir/daemon.out" 2>"$dir/daemon.log" &
  daemon_pid=$!
  for _ in $(seq 100); do psql -X -q -h 127.0.0.1 -p "$port" -U postgres "$1" -c "SELECT 1" >/dev/null 2>&1 && break; sleep 0.1; done
  for _ in $(seq 100); do
    [ "$(psql -X -tA "$db" -c "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = hashtext('copier:public')::oid")" = 1 ] && break; sleep 0.1
  done
}

# FACTOR (default 1.3) times the median of ten one-second p99s (ms) of the
# requests the proxy served, read once a second; call it while the workload runs.
request_p99_bound() { # [factor]
  python3 -c 'import statistics, sys, time, urllib.request
samples = []
for _ in range(10):
    m = urllib.request.urlopen(sys.argv[1]).read().decode()
    samples += [float(l.split()[-1]) for l in m.splitlines() if l.startswith("pgshift_proxy_p99_seconds")]
    time.sleep(1)
print(f"{statistics.median(samples) * float(sys.argv[2]) * 1000:.2f}")' "http://127.0.0.1:$mport/metrics" "${1:-1.3}"
}

# Tell the copier its latency bound and batch target.
copier_settings() { # max_p99_ms batch_target_ms
  "$bin" set max_p99_ms "$1" --postgres-url "$db" >/dev/null
  "$bin" set batch_target_ms "$2" --postgres-url "$db" >/dev/null
}
