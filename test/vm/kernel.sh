#!/usr/bin/env bash
# Builds (or reuses) one guest kernel of the VM tier and prints the path of its
# bzImage on stdout; beside it, `release` holds the kernel's `uname -r`.
# Progress goes to stderr.
#
# Usage: kernel.sh KERNEL, where KERNEL is one of the tier's kernels:
#   6.12    Debian's linux-source-6.12 (LTS; the host's own package, which
#           run.sh installs), with VFIO's legacy container (kernel-6.12.config)
#   newest  the newest linux-source-X.Y in Debian sid (7.2 when written),
#           with iommufd's compat container (kernel-newest.config)
#
# Recipe: the source tarball → `make tinyconfig` → merge test/vm/kernel.config
# (common) and test/vm/kernel-KERNEL.config → `make olddefconfig` →
# `make bzImage`.
#
# Guarantees:
# - Every `CONFIG_X=y` of the fragments is `=y` in the final .config, and
#   every `# CONFIG_X is not set` is there as `# CONFIG_X is not set` (a
#   symbol that is off but exists and is visible), or the build fails listing
#   the ones that are not (Kconfig silently drops an option whose
#   dependencies are missing, and silently ignores a misspelt one).
# - The bzImage is cached in $VFIO_VM_CACHE/<key>/bzImage (default
#   ${XDG_CACHE_HOME:-~/.cache}/vfio/vm), where <key> hashes both fragments,
#   the source package and version, and RECIPE below. A changed fragment or a
#   new kernel package rebuilds; an absent cache rebuilds.
# - The cached file appears atomically (rename), so an interrupted build never
#   leaves a half-written bzImage that a later run would trust.
# - The newest source comes from Debian sid the way uapi-gen/headers.ts gets
#   sid's linux-libc-dev: apt-get with a private sources file, lists and cache
#   under $VFIO_VM_CACHE/sid; the machine's apt configuration is never
#   touched. sid's package lists are refreshed at most once a day; without
#   network, the newest source already downloaded is used (said on stderr).
#
# Needs: bc flex bison libelf-dev libssl-dev cpio xz-utils gcc make, and
# linux-source-6.12 for KERNEL=6.12 (run.sh installs them).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
kernel=${1:-}
common=$here/kernel.config
own=$here/kernel-$kernel.config
# Bump when the recipe (not the fragments) changes, to invalidate old caches.
RECIPE=2
jobs=${VFIO_VM_JOBS:-3}
cache_root=${VFIO_VM_CACHE:-${XDG_CACHE_HOME:-${HOME:-/var/tmp}/.cache}/vfio/vm}

log() { printf 'test:vm: kernel %s: %s\n' "$kernel" "$*" >&2; }
die() { printf 'test:vm: kernel %s: ERROR: %s\n' "$kernel" "$*" >&2; exit 1; }

case $kernel in
  6.12 | newest) ;;
  *) printf 'test:vm: kernel: ERROR: unknown kernel "%s" (expected 6.12 or newest)\n' "$kernel" >&2; exit 2 ;;
esac
[[ -r $own ]] || die "$own not found"

# --- the source tarball -----------------------------------------------------
# Sets src_pkg, src_version, src_tar.
sid=$cache_root/sid
sid_apt() {
  apt-get -q -o "Dir::Etc::SourceList=$sid/apt/sources.list" -o Dir::Etc::SourceParts=- \
    -o "Dir::State::Lists=$sid/apt/lists" -o "Dir::Cache=$sid/apt/cache" \
    -o APT::Sandbox::User=root "$@"
}
sid_apt_cache() {
  apt-cache -q -o "Dir::Etc::SourceList=$sid/apt/sources.list" -o Dir::Etc::SourceParts=- \
    -o "Dir::State::Lists=$sid/apt/lists" -o "Dir::Cache=$sid/apt/cache" "$@"
}
# The newest downloaded source: "pkg version" of the highest linux-source-X.Y.
newest_downloaded() {
  local d best= best_pkg= best_version=
  for d in "$sid"/src/linux-source-*_*/; do
    [[ -f $d/complete ]] || continue
    d=${d%/} d=${d##*/}
    local pkg=${d%%_*} version=${d#*_}
    if [[ -z $best ]] || dpkg --compare-versions "${pkg#linux-source-}.$version" gt "$best"; then
      best=${pkg#linux-source-}.$version best_pkg=$pkg best_version=$version
    fi
  done
  [[ -n $best ]] && echo "$best_pkg $best_version"
}
if [[ $kernel == 6.12 ]]; then
  src_pkg=linux-source-6.12
  src_tar=/usr/src/$src_pkg.tar.xz
  [[ -r $src_tar ]] || die "$src_tar not found (apt-get install $src_pkg)"
  src_version=$(dpkg-query -W -f='${Version}' "$src_pkg") || die "$src_pkg is not installed"
else
  mkdir -p "$sid/apt/lists/partial" "$sid/apt/cache/archives/partial" "$sid/src"
  exec 8>"$sid/lock"
  flock 8   # one run at a time updates the lists and downloads
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main" \
    >"$sid/apt/sources.list"
  found=
  if [[ -z $(find "$sid/apt/updated" -mmin -1440 2>/dev/null) ]]; then
    log "asking Debian sid for its newest linux-source"
    if sid_apt update >"$sid/update.log" 2>&1; then touch "$sid/apt/updated"
    else log "apt-get update for sid failed (see $sid/update.log)"; fi
  fi
  # linux-source-X.Y names, newest X.Y last; then that package's newest version.
  src_pkg=$(sid_apt_cache search --names-only '^linux-source-[0-9]+\.[0-9]+$' 2>/dev/null \
    | cut -d' ' -f1 | sort -V | tail -1) || true
  if [[ -n $src_pkg ]]; then
    src_version=$(sid_apt_cache madison "$src_pkg" | awk -F'|' '/Packages/ {gsub(/ /, "", $2); print $2}' \
      | sort -V | tail -1) || true
    [[ -n $src_version ]] && found=1
  fi
  if [[ -z $found ]]; then
    read -r src_pkg src_version < <(newest_downloaded) \
      || die "sid's package lists have no linux-source and none was downloaded before (network?)"
    log "using the newest downloaded source, $src_pkg $src_version"
  fi
  src_dir=$sid/src/${src_pkg}_$src_version
  if [[ ! -f $src_dir/complete ]]; then
    log "downloading $src_pkg $src_version from Debian sid"
    work=$sid/src/.download-$$
    rm -rf "$work" "$src_dir"
    mkdir -p "$work"
    (cd "$work" && sid_apt download "$src_pkg=$src_version" >&2) || { rm -rf "$work"; die "apt-get download $src_pkg=$src_version failed"; }
    dpkg-deb -x "$work"/*.deb "$work/tree" || { rm -rf "$work"; die "dpkg-deb -x failed"; }
    mv "$work/tree" "$src_dir"
    rm -rf "$work"
    touch "$src_dir/complete"
  fi
  src_tar=$src_dir/usr/src/$src_pkg.tar.xz
  [[ -r $src_tar ]] || die "$src_tar not found in the downloaded $src_pkg"
  exec 8>&-
fi

# --- the fragment contract ----------------------------------------------------
# Only `CONFIG_X=y`, `# CONFIG_X is not set`, other comments and blank lines;
# a comment that merge_config.sh would read as an option is refused.
check_fragment() {
  local bad
  bad=$(grep -nEv '^(CONFIG_[A-Z0-9_]+=y|# CONFIG_[A-Z0-9_]+ is not set|#.*|[[:space:]]*)$' "$1" || true)
  bad+=$(grep -nE '^# CONFIG_[A-Za-z0-9_]*[= ]' "$1" | grep -vE '^[0-9]+:# CONFIG_[A-Z0-9_]+ is not set$' || true)
  [[ -z $bad ]] || die "$1: every line must be CONFIG_X=y, # CONFIG_X is not set, or a comment:"$'\n'"$bad"
}
check_fragment "$common"
check_fragment "$own"
mapfile -t wanted_on < <(grep -hE '^CONFIG_' "$common" "$own" | cut -d= -f1)
mapfile -t wanted_off < <(grep -hE '^# CONFIG_[A-Z0-9_]+ is not set$' "$common" "$own" | cut -d' ' -f2)

key=$( { cat "$common"; echo "--- $kernel"; cat "$own"; echo "$src_pkg $src_version recipe=$RECIPE"; } | sha256sum | cut -c1-16)
dir=$cache_root/$key
if [[ -f $dir/bzImage ]]; then
  log "cached $dir/bzImage ($src_pkg $src_version, $(cat "$dir/release"))"
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
log "no cached kernel for key $key: building $src_pkg $src_version (takes several minutes)"
build=$dir/build
rm -rf "$build"
mkdir -p "$build"
started=$SECONDS

log "extracting $src_tar"
tar -xJf "$src_tar" -C "$build" --strip-components=1

kmake() { make -C "$build" ARCH=x86_64 "$@"; }
log "make tinyconfig + ${common##*/} + ${own##*/} + olddefconfig"
kmake tinyconfig >"$dir/config.log" 2>&1 || { cat "$dir/config.log" >&2; die "make tinyconfig failed"; }
"$build/scripts/kconfig/merge_config.sh" -m -O "$build" "$build/.config" "$common" "$own" >>"$dir/config.log" 2>&1 \
  || { cat "$dir/config.log" >&2; die "merge_config.sh failed"; }
kmake olddefconfig >>"$dir/config.log" 2>&1 || { cat "$dir/config.log" >&2; die "make olddefconfig failed"; }

wrong=()
for opt in "${wanted_on[@]}"; do
  grep -qx "$opt=y" "$build/.config" || wrong+=("$opt wanted =y: $(grep -E "^(# )?${opt}[ =]" "$build/.config" || echo 'absent: a dependency is missing, or no such option')")
done
for opt in "${wanted_off[@]}"; do
  grep -qx "# $opt is not set" "$build/.config" || wrong+=("$opt wanted off: $(grep -E "^(# )?${opt}[ =]" "$build/.config" || echo 'absent: no such option, or its dependencies are off (say so in a comment instead)')")
done
if ((${#wrong[@]})); then
  printf 'test:vm: kernel %s: ERROR: not as the fragments say after olddefconfig:\n' "$kernel" >&2
  printf '  %s\n' "${wrong[@]}" >&2
  die "fix the dependencies in ${common##*/} / ${own##*/} (see $build/.config)"
fi
log "all ${#wanted_on[@]} =y and ${#wanted_off[@]} 'is not set' fragment options hold"

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

kmake -s kernelrelease >"$dir/release"
echo "$src_pkg $src_version" >"$dir/source"
echo "$((SECONDS - started))" >"$dir/build-seconds"
cp "$build/.config" "$dir/config"
cp "$build/arch/x86/boot/bzImage" "$dir/bzImage.tmp"
mv "$dir/bzImage.tmp" "$dir/bzImage"
rm -rf "$build"   # ~2 GB; the .config is kept as $dir/config
log "built $dir/bzImage ($(cat "$dir/release")) in $((SECONDS - started)) s"
echo "$dir/bzImage"
