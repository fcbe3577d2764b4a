# Sourced by the demo and the bench scripts (after setting root): a scratch
# dir for a throwaway cluster (in "$dir/pg") and the run's logs.
#   scratch_dir PREFIX   make it (sets dir)
#   scratch_end STATUS   from the EXIT trap, with the script's exit status:
#                        stop the cluster; on success remove the dir, on
#                        failure keep it with the logs (on success too with
#                        PGSHIFT_KEEP_LOGS=1, the cluster's data removed).

scratch_dir() {
  dir=$(mktemp -d "/tmp/$1-XXXXXX"); chmod 755 "$dir"
}

scratch_end() {
  [ -z "${PGSHIFT_KEEP_LOGS:-}" ] || cp "$dir/pg/postgres.log" "$dir/" 2>/dev/null || true
  "$root/tests/support/pg.sh" stop "$dir/pg"
  if [ "$1" = 0 ] && [ -z "${PGSHIFT_KEEP_LOGS:-}" ]; then rm -rf "$dir"; else echo "logs kept in $dir" >&2; fi
}
