#!/usr/bin/env bash
# `npm run demo [-- --mode cdev|group|noiommu] [--device edu|nvme]`: the examples on a real kernel,
# on a machine without VFIO hardware. Compiles the library and the examples
# (dist/), then boots the VM tier's QEMU machine (test/vm: Linux 6.12 with an
# emulated IOMMU and QEMU's edu device, bound to vfio-pci) in the chosen mode
# and runs there:
#
#   map-bar     BAR0 of edu: its identification register (0x010000ed) read
#               through the mapped BAR, a poke/peek of the liveness register,
#               and a dump of the first registers;
#   edu-driver  identification, liveness, a DMA round trip through the IOMMU
#               (physical addresses in noiommu mode), an MSI-driven factorial.
#
# or, with `--device nvme`, on QEMU's NVMe controller (VFIO_VM_NVME):
#
#   nvme-identify  model, the serial QEMU was given (VFIO_VM_NVME_SERIAL),
#                  namespace size;
#   nvme-io        a multi-page write/read (PRP1+PRP2 and PRP lists) on two
#                  I/O queues, each completing on its own MSI-X vector, verified.
#
# Their output streams to this terminal. The first run installs QEMU and the
# kernel build's Debian packages if missing (root) and builds the guest kernel
# (5-10 min on an idle 2-core machine, with progress lines); later runs take
# well under a minute.
#
# Exit status: 0 when both examples succeeded; else theirs, or 125 when the
# VM did not run them (see test/vm/README.md).
set -euo pipefail

mode=cdev
device=edu
while (($#)); do
  case $1 in
    --device) (($# >= 2)) || { echo "demo: --device needs edu or nvme" >&2; exit 2; }; device=$2; shift 2 ;;
    --device=*) device=${1#--device=}; shift ;;
    --mode) (($# >= 2)) || { echo "demo: --mode needs cdev, group or noiommu" >&2; exit 2; }; mode=$2; shift 2 ;;
    --mode=*) mode=${1#--mode=}; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo: unknown argument '$1' (usage: npm run demo [-- --mode cdev|group|noiommu] [--device edu|nvme])" >&2; exit 2 ;;
  esac
done
case $mode in
  cdev | group | noiommu) ;;
  *) echo "demo: unknown mode '$mode' (cdev, group or noiommu)" >&2; exit 2 ;;
esac
case $device in
  edu | nvme) ;;
  *) echo "demo: unknown device '$device' (edu or nvme)" >&2; exit 2 ;;
esac

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

echo "demo: compiling the library and the examples into dist/ (npm run examples:build)" >&2
node node_modules/typescript/bin/tsc -p examples/tsconfig.json

# The VM gives edu its default 28-bit DMA mask behind the IOMMU, where the
# IOVA is ours to choose; without an IOMMU the DMA address is a physical one
# anywhere in the guest's RAM, so that machine widens edu's mask to 64 bits.
dma_bits=28
[[ $mode != noiommu ]] || dma_bits=64

# Runs in the guest (bash, as root, in the checkout; VFIO_VM_EDU is edu's address).
guest="set -e
echo
echo \"== map-bar: BAR0 of QEMU's edu at \$VFIO_VM_EDU ($mode mode)\"
node dist/examples/map-bar.js \"\$VFIO_VM_EDU\" 0 --peek 0
node dist/examples/map-bar.js \"\$VFIO_VM_EDU\" 0 --poke 4=0x12345678 --peek 4 --length 0x30
echo
echo '== edu-driver: a userspace driver for edu'
node dist/examples/edu-driver.js \"\$VFIO_VM_EDU\" --dma-bits $dma_bits
echo"
if [[ $device == nvme ]]; then
  guest="set -e
[ -n \"\${VFIO_VM_NVME:-}\" ] || { echo 'demo: this VM has no NVMe controller (VFIO_VM_NVME unset): test/vm/run.sh predates it' >&2; exit 125; }
echo
echo \"== nvme-identify: QEMU's NVMe controller at \$VFIO_VM_NVME ($mode mode), serial on QEMU's command line: \$VFIO_VM_NVME_SERIAL\"
node dist/examples/nvme/identify.js \"\$VFIO_VM_NVME\" >/tmp/nvme-identify.txt
cat /tmp/nvme-identify.txt
grep -q \"serial     \$VFIO_VM_NVME_SERIAL\\\$\" /tmp/nvme-identify.txt || { echo 'demo: the serial read does not match the one on the QEMU command line' >&2; exit 1; }
echo
echo '== nvme-io: a multi-page write/read through PRP lists, two queues on their own MSI-X vectors'
node dist/examples/nvme/io.js \"\$VFIO_VM_NVME\" --queues 2
echo"
fi

echo "demo: booting the VM tier's QEMU machine in $mode mode (the first run builds its kernel: 5-10 min on idle cores, more when they are shared)" >&2
set +e
bash test/vm/run.sh --exec "$guest" --modes "$mode"
rc=$?
set -e
if ((rc == 0)); then
  echo "demo: done ($mode mode). Other modes: npm run demo -- --mode group | noiommu" >&2
else
  echo "demo: FAILED with exit $rc (125: the VM did not run the examples; see the lines above)" >&2
fi
exit "$rc"
