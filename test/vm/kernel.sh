#!/usr/bin/env bash
# Builds (or reuses) the guest kernel of the VM tier and prints the path of its
# bzImage on stdout. Progress goes to stderr.
#
# Recipe: Debian's linux-source-6.12 → `make tinyconfig` → merge
# test/vm/kernel.config → `make olddefconfig` → `make bzImage`.
#
# Guarantees:
# - Every `CONFIG_X=y` of the fragment is `=y` in the final .config, or the
#   build fails listing the ones Kconfig dropped (an option whose dependencies
#   are missing vanishes silently; that is the usual way this goes wrong).
# - The bzImage is cached in $VFIO_VM_CACHE/<key>/bzImage (default
#   ${XDG_CACHE_HOME:-~/.cache}/vfio/vm), where <key> hashes the fragment, the
#   linux-source package version and RECIPE below. A changed fragment or a
#   new kernel package rebuilds; an absent cache rebuilds.
# - The cached file appears atomically (rename), so an interrupted build never
#   leaves a half-written bzImage that a later run would trust.
#
# Needs: linux-source-6.12 bc flex bison libelf-dev libssl-dev cpio xz-utils
# gcc make (run.sh installs them).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fragment=$here/kernel.config
src_pkg=linux-source-6.12
src_tar=/usr/src/$src_pkg.tar.xz
# Bump when the recipe (not the fragment) changes, to invalidate old caches.
RECIPE=1
jobs=${VFIO_VM_JOBS:-3}

log() { printf 'test:vm: kernel: %s\n' "$*" >&2; }
die() { printf 'test:vm: kernel: ERROR: %s\n' "$*" >&2; exit 1; }

[[ -r $src_tar ]] || die "$src_tar not found (apt-get install $src_pkg)"
src_version=$(dpkg-query -W -f='${Version}' "$src_pkg") || die "$src_pkg is not installed"

# The fragment contract: only `CONFIG_X=y` lines, comments and blank lines.
bad=$(grep -nEv '^(#.*|[[:space:]]*|CONFIG_[A-Z0-9_]+=y)$' "$fragment" || true)
[[ -z $bad ]] || die "$fragment: every line must be CONFIG_X=y (or a comment):"$'\n'"$bad"
mapfile -t wanted < <(grep -E '^CONFIG_' "$fragment" | cut -d= -f1)

key=$( { cat "$fragment"; echo "$src_pkg $src_version recipe=$RECIPE"; } | sha256sum | cut -c1-16)
cache_root=${VFIO_VM_CACHE:-${XDG_CACHE_HOME:-${HOME:-/var/tmp}/.cache}/vfio/vm}
dir=$cache_root/$key
if [[ -f $dir/bzImage ]]; then
  log "cached $dir/bzImage ($src_pkg $src_version)"
  echo "$dir/bzImage"
  exit 0
fi

mkdir -p "$dir"
# One build per key at a time: a second run waits, then finds the bzImage.
exec 9>"$dir/lock"
flock 9
if [[ -f $dir/bzImage ]]; then
  log "built meanwhile by another run: $dir/bzImage"
  echo "$dir/bzImage"
  exit 0
fi
log "no cached kernel for key $key: building $src_pkg $src_version (takes a few minutes)"
build=$dir/build
rm -rf "$build"
mkdir -p "$build"
started=$SECONDS

log "extracting $src_tar"
tar -xJf "$src_tar" -C "$build" --strip-components=1

kmake() { make -C "$build" ARCH=x86_64 "$@"; }
log "make tinyconfig + $fragment + olddefconfig"
kmake tinyconfig >"$dir/config.log" 2>&1 || { cat "$dir/config.log" >&2; die "make tinyconfig failed"; }
"$build/scripts/kconfig/merge_config.sh" -m -O "$build" "$build/.config" "$fragment" >>"$dir/config.log" 2>&1 \
  || { cat "$dir/config.log" >&2; die "merge_config.sh failed"; }
kmake olddefconfig >>"$dir/config.log" 2>&1 || { cat "$dir/config.log" >&2; die "make olddefconfig failed"; }

dropped=()
for opt in "${wanted[@]}"; do
  grep -qx "$opt=y" "$build/.config" || dropped+=("$opt ($(grep -E "^(# )?${opt}[ =]" "$build/.config" || echo 'absent: a dependency is missing'))")
done
if ((${#dropped[@]})); then
  printf 'test:vm: kernel: ERROR: not =y after olddefconfig:\n' >&2
  printf '  %s\n' "${dropped[@]}" >&2
  die "fix the dependencies in $fragment (see $build/.config)"
fi
log "all ${#wanted[@]} fragment options are =y"

log "make -j$jobs bzImage (log: $dir/build.log)"
# A progress line every 30 s, so a long silent build is visibly alive.
( while sleep 30; do log "... still building ($((SECONDS - started)) s, $(grep -c '^  CC' "$dir/build.log" 2>/dev/null || echo 0) files compiled)"; done ) &
ticker=$!
trap 'kill $ticker 2>/dev/null || true' EXIT
if ! kmake -j"$jobs" bzImage >"$dir/build.log" 2>&1; then
  tail -40 "$dir/build.log" >&2
  die "make bzImage failed (full log: $dir/build.log)"
fi
kill $ticker 2>/dev/null || true

cp "$build/.config" "$dir/config"
cp "$build/arch/x86/boot/bzImage" "$dir/bzImage.tmp"
mv "$dir/bzImage.tmp" "$dir/bzImage"
rm -rf "$build"   # ~2 GB; the .config is kept as $dir/config
log "built $dir/bzImage in $((SECONDS - started)) s"
echo "$dir/bzImage"
