#!/usr/bin/env bash
# Writes the guest's initramfs to $1: Debian's static busybox and test/vm/init,
# nothing else (the guest's real userspace is the host's root over 9p). Takes
# a few milliseconds, so it is rebuilt every run instead of cached.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dest=$1
busybox=/bin/busybox   # from busybox-static: a dynamically linked one would not run

# ldd fails (exit 1) on a static binary, saying so: that failure is the pass.
if [[ ! -x $busybox || $(ldd "$busybox" 2>&1) != *'not a dynamic executable'* ]]; then
  echo "test:vm: initramfs: ERROR: $busybox is not statically linked (apt-get install busybox-static)" >&2
  exit 1
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin"
cp "$busybox" "$root/bin/busybox"
cp "$here/init" "$root/init"
chmod 0755 "$root/init" "$root/bin/busybox"
(cd "$root" && find . -print0 | cpio --null --create --format=newc --quiet) | gzip -1 >"$dest"
