#!/usr/bin/env bash
# Install what the tests, demo and benchmarks need and a fresh machine may lack:
# the PostgreSQL 15 server binaries, psql, pgbench, bc, openssl (Debian), and
# the client libraries the proxy tests drive: psycopg 3 (PyPI, in a venv) and
# node-postgres (npm), under target/test-clients. Does nothing when all are there.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
clients="$root/target/test-clients"
need=()
bindir=${PGSHIFT_PG_BINDIR:-/usr/lib/postgresql/15/bin}
[ -x "$bindir/initdb" ] || need+=(postgresql-15)
command -v psql >/dev/null || need+=(postgresql-client-15)
command -v bc >/dev/null || need+=(bc)
command -v pgbench >/dev/null || [ -x "$bindir/pgbench" ] || need+=(postgresql-contrib-15)
command -v openssl >/dev/null || need+=(openssl)
command -v node >/dev/null || need+=(nodejs npm)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
# `deps.sh bench`: also what the benchmarks compare against.
if [ "${1:-}" = bench ]; then command -v pgbouncer >/dev/null || need+=(pgbouncer); fi
id postgres >/dev/null 2>&1 || need+=(postgresql-15)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  if [ "$(id -u)" != 0 ]; then echo "run as root or install: ${need[*]}" >&2; exit 1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
# promtool checks deploy/'s alert rules; best effort (the test says when it is absent).
if ! command -v promtool >/dev/null && [ "$(id -u)" = 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1; } \
    || echo "deps: promtool (Debian package prometheus) could not be installed; alert rules are checked by name only" >&2
fi
# Client libraries for the proxy's smoke suites.
if ! "$clients/venv/bin/python" -c 'import psycopg' 2>/dev/null; then
  echo "installing psycopg 3 into $clients/venv" >&2
  python3 -m venv "$clients/venv"
  "$clients/venv/bin/pip" install -q --disable-pip-version-check 'psycopg[binary]>=3.1,<4'
fi
if [ ! -f "$clients/node/node_modules/pg/package.json" ]; then
  echo "installing node-postgres into $clients/node" >&2
  mkdir -p "$clients/node"
  (cd "$clients/node" && npm install --silent --no-audit --no-fund --no-save 'pg@^8' >/dev/null)
fi
