#!/usr/bin/env bash
# Runs inside the guest (chrooted into the host's read-only root, see init):
# every test/vm/guest/*.test.ts, one node process each, in name order, with
# the checkout as the working directory.
#
# The host has already compiled them to JS ($VFIO_VM_JS, see run.sh and
# tsconfig.guest.json): tap's TypeScript hook works read-only in the guest but
# costs ~10 s per file under TCG, against ~3 s for the compiled file. Source
# maps keep stack traces and tap's failure excerpts pointing at the .ts files.
# Each file runs directly under node, not through the `tap` runner, which
# would write .tap/ into the read-only checkout; a directly run tap test
# prints its TAP stream on stdout, ending with a `# { total: ... }` summary.
#
# For each NAME.test.ts it leaves in $VFIO_VM_OUT: NAME.tap (stdout),
# NAME.stderr and NAME.rc (exit code). run.sh reads them on the host.
set -uo pipefail

repo=${VFIO_VM_REPO:?} js=${VFIO_VM_JS:?} out=${VFIO_VM_OUT:?}
cd "$repo" || exit 1
# Per-file limit, well under the host's per-boot one, so that one hung file
# still leaves the results of the others.
limit=${VFIO_VM_FILE_TIMEOUT:-120}
# tap's own limit per file (30 s by default) fails a slow file with
# "timeout!"; on a loaded host TCG can be that slow. Let it report just
# before the hard limit instead.
export TAP_TIMEOUT=$((limit > 20 ? limit - 10 : limit))

shopt -s nullglob
files=(test/vm/guest/*.test.ts)
if ((${#files[@]} == 0)); then
  echo "test:vm guest: no test/vm/guest/*.test.ts" >&2
  exit 1
fi
for file in "${files[@]}"; do
  name=$(basename "$file" .test.ts)
  compiled=$js/${file%.ts}.js
  echo "test:vm guest: $file" >/dev/console
  if [[ ! -f $compiled ]]; then
    echo "test:vm guest: $compiled missing: the host did not compile $file" >"$out/$name.stderr"
    : >"$out/$name.tap"
    echo 127 >"$out/$name.rc"
    continue
  fi
  timeout -k 5 "$limit" node --enable-source-maps "$compiled" >"$out/$name.tap" 2>"$out/$name.stderr"
  echo $? >"$out/$name.rc"
done
