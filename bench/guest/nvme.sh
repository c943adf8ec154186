#!/usr/bin/env bash
# Runs in the VM guest (test/vm/run.sh --exec), in the checkout: 4 KiB random
# reads on QEMU's nvme (VFIO_VM_NVME), first by the TypeScript driver
# (examples/nvme through the library, bench/guest/nvme.ts) with the device on
# vfio-pci, then by the guest kernel's nvme driver under Debian's fio
# (direct I/O, io_uring) with the device rebound to nvme, then back to
# vfio-pci. Queue depth 1 and 32; interrupt-driven and polled on both sides
# (kernel: one poll queue, nvme.poll_queues=1, and fio --hipri; TS: the
# driver's polled completions).
#
# Usage: bash bench/guest/nvme.sh SECONDS
# Output: one `BENCH-NVME {json}` line per case and side (bench/host.ts reads them).
# Exit status: 0 done, 3 no NVMe controller in the machine, else a failure.
set -euo pipefail

seconds=${1:?seconds per case}
# Exit 3: the machine has no NVMe controller (a test/vm/run.sh from before it): nothing to measure.
[[ -n ${VFIO_MODE:-} ]] || { echo "bench: not in the VM guest" >&2; exit 1; }
[[ -n ${VFIO_VM_NVME:-} ]] || { echo "bench: this VM machine has no NVMe controller (VFIO_VM_NVME unset)" >&2; exit 3; }
addr=$VFIO_VM_NVME
ts_prog=bench/.build/js/bench/guest/nvme.js
[[ -f $ts_prog ]] || { echo "bench: $ts_prog missing: the host did not build it" >&2; exit 1; }
command -v fio >/dev/null || { echo "bench: fio is not installed in the guest's root" >&2; exit 1; }
dev=/sys/bus/pci/devices/$addr

rebind() { # driver
  if [[ -e $dev/driver ]]; then echo "$addr" >"$dev/driver/unbind"; fi
  echo "$1" >"$dev/driver_override"
  echo "$addr" >/sys/bus/pci/drivers_probe
  [[ $(basename "$(readlink "$dev/driver")") == "$1" ]] || { echo "bench: $addr did not bind to $1" >&2; exit 1; }
}

for qd in 1 32; do
  for c in interrupt poll; do
    echo "bench: nvme TS QD$qd $c" >&2
    node "$ts_prog" "$addr" "$qd" "$c" "$seconds"
  done
done

# The kernel's driver: one poll queue (read when the controller is probed), then bind.
echo 1 >/sys/module/nvme/parameters/poll_queues
rebind nvme
trap 'rebind vfio-pci' EXIT
ctrl=
for _ in $(seq 100); do
  ctrl=$(ls "$dev/nvme" 2>/dev/null | head -n1) && [[ -n $ctrl && -b /dev/${ctrl}n1 ]] && break
  sleep 0.1
done
[[ -n $ctrl && -b /dev/${ctrl}n1 ]] || { echo "bench: no /dev/${ctrl:-nvme?}n1 after binding nvme" >&2; exit 1; }
for qd in 1 32; do
  for c in interrupt poll; do
    echo "bench: nvme kernel+fio QD$qd $c" >&2
    hipri=()
    [[ $c == poll ]] && hipri=(--hipri)
    fio --name=randread --filename="/dev/${ctrl}n1" --direct=1 --ioengine=io_uring --rw=randread --bs=4k \
      --iodepth="$qd" --size=1G --ramp_time=1 --runtime="$seconds" --time_based "${hipri[@]}" \
      --output-format=json >/tmp/fio.json
    QD=$qd C=$c node -e '
      const r = JSON.parse(require("fs").readFileSync("/tmp/fio.json", "utf8")).jobs[0].read;
      const p = r.clat_ns.percentile;
      const us = (v) => Math.round(v / 100) / 10;
      console.log("BENCH-NVME " + JSON.stringify({ impl: "kernel", qd: Number(process.env.QD), completions: process.env.C === "poll" ? "poll" : "interrupt",
        ios: r.total_ios, seconds: r.runtime / 1000, iops: Math.round(r.iops), p50us: us(p["50.000000"]), p99us: us(p["99.000000"]) }));'
  done
done
