# The `orders` workload shared by constraints.sh and copier_share.sh: a table
# of $rows orders (one in a thousand with a NULL customer_id) referencing
# 100,000 customers, a pgbench script inserting and updating orders at $rate
# tps from 2 clients through the daemon's proxy, and the migration that makes
# customer_id NOT NULL with a foreign key. Source it after daemon_lib.sh with
# root and bin set.

rows=${PGSHIFT_BENCH_ROWS:-10000000}
rate=${PGSHIFT_BENCH_RATE:-300}
bindir=${PGSHIFT_PG_BINDIR:-/usr/lib/postgresql/15/bin}
pgbench="$bindir/pgbench"; [ -x "$pgbench" ] || pgbench=pgbench

# Create and load the bench database, write the load's pages out, start the
# daemon on it. Sets db, mig (the migration file) and the daemon's variables.
orders_setup() {
  db="${url%/postgres}/bench"
  psql -X -q "$url" -c "CREATE DATABASE bench"
  psql -X -q "$db" -c "CREATE TABLE customers (id int PRIMARY KEY); INSERT INTO customers SELECT generate_series(1, 100000)"
  psql -X -q "$db" -c "CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id int, note text);
    INSERT INTO orders (customer_id, note) SELECT CASE WHEN g % 1000 = 0 THEN NULL ELSE 1 + g % 100000 END, 'n' FROM generate_series(1, $rows) g"
  # The load's dirty pages are written out before anything is measured, so
  # the baseline does not pay for the kernel's writeback of fresh rows.
  psql -X -q "$db" -c "VACUUM ANALYZE orders" -c "CHECKPOINT"
  sync
  "$bin" init --postgres-url "$db" >/dev/null
  start_daemon bench
  cat >"$dir/work.sql" <<SQL
\set c random(1, 100000)
\set o random(1, $rows)
INSERT INTO orders (customer_id, note) VALUES (:c, 'w');
UPDATE orders SET note = 'u' WHERE id = :o;
SQL
  mig="$dir/01_orders_customer_fk_not_null.yaml"
  cat >"$mig" <<'Y'
operations:
  - alter_column:
      table: orders
      column: customer_id
      nullable: false
      references: {name: orders_customer_fk, table: customers, column: id}
      up: coalesce(customer_id, 1)
      down: customer_id
Y
}

# The workload through the daemon's proxy for SECONDS, every transaction
# logged as PREFIX.* in $dir (no PREFIX: not logged; errors go to
# $dir/pgbench.err). Leaves pgbench's pid
# in $! (stop it with SIGTERM: background jobs of a script ignore SIGINT).
workload_bg() { # seconds [prefix]
  local log=(); [ -n "${2:-}" ] && log=(-l --log-prefix="$2")
  (cd "$dir" && exec "$pgbench" -h 127.0.0.1 -p "$port" -U postgres -n -c 2 -j 2 -R "$rate" -T "$1" \
     -f "$dir/work.sql" "${log[@]}" bench >/dev/null 2>>"$dir/pgbench.err") &
}

# Fail the bench if the workload PID ended early (a rejected write aborts
# pgbench's client; its errors are in $dir/pgbench.err).
workload_alive() { # pid
  kill -0 "$1" 2>/dev/null || { echo "bench: the workload stopped early:" >&2; cat "$dir/pgbench.err" >&2; exit 1; }
}
