# Sourced by the demo and the bench scripts (after setting root): a scratch
# dir for a throwaway cluster (in "$dir/pg") and the run's logs.
#   scratch_dir PREFIX   make it (sets dir)
#   scratch_end STATUS   from the EXIT trap, with the script's exit status:
#                        stop the cluster; on success remove the dir, on
#                        failure keep it with the logs.

scratch_dir() {
  dir=$(mktemp -d "/tmp/$1-XXXXXX"); chmod 755 "$dir"
}

scratch_end() {
  "$root/tests/support/pg.sh" stop "$dir/pg"
  [ "$1" != 0 ] || rm -rf "$dir"
}
