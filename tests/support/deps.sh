#!/usr/bin/env bash
# Install what the tests, demo and benchmarks need and a fresh machine may lack:
# the PostgreSQL 15 server binaries, psql, bc. Does nothing when all are there.
set -euo pipefail
need=()
bindir=${PGSHIFT_PG_BINDIR:-/usr/lib/postgresql/15/bin}
[ -x "$bindir/initdb" ] || need+=(postgresql-15)
command -v psql >/dev/null || need+=(postgresql-client-15)
command -v bc >/dev/null || need+=(bc)
id postgres >/dev/null 2>&1 || need+=(postgresql-15)
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing: ${need[*]}" >&2
if [ "$(id -u)" != 0 ]; then echo "run as root or install: ${need[*]}" >&2; exit 1; fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
