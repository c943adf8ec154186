#!/usr/bin/env bash
# Runs in the VM guest (test/vm/run.sh --exec), in the checkout: the C and the
# TypeScript benchmark programs, alternately, ROUNDS times, with the same case
# plan. Odd rounds run C first, even rounds TypeScript first, so that a drift
# in the machine's load (other VMs on the host) hits both sides alike.
#
# Usage: bash bench/guest/run.sh ROUNDS WARMUP_C_MS WARMUP_TS_MS CASE:ITERS:BATCHES ...
# Environment (set by the VM tier): VFIO_MODE (group | cdev), VFIO_VM_EDU.
# bench/host.ts also runs it on the host itself with VFIO_MODE=host (only
# the ram-* and ffi-floor cases, which need no device) for the native ratio.
# Each case first runs untimed for its side's warm-up time: the TypeScript
# one is longer because V8 must have compiled the hot paths first.
# Output: the programs' `BENCH {json}` lines, plus `BENCH-ENV {json}` lines
# describing the guest before and after (bench/host.ts reads all of them).
set -euo pipefail

rounds=${1:?rounds} warmup_c=${2:?warm-up ms for C} warmup_ts=${3:?warm-up ms for TS}
shift 3
mode=${VFIO_MODE:?not in the VM guest}
edu=${VFIO_VM_EDU:?not in the VM guest}
build=bench/.build
c_prog=$build/bench-c
ts_prog=$build/js/bench/guest/main.js
[[ -x $c_prog && -f $ts_prog ]] || { echo "bench: $c_prog or $ts_prog missing: the host did not build them" >&2; exit 1; }

env_line() {
  local clock load
  clock=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource 2>/dev/null || echo unknown)
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  printf 'BENCH-ENV {"mode":"%s","when":"%s","kernel":"%s","clocksource":"%s","cpus":%s,"loadavg":"%s"}\n' \
    "$mode" "$1" "$(uname -r)" "$clock" "$(nproc)" "$load"
}

env_line start
for ((r = 1; r <= rounds; r++)); do
  echo "bench: $mode round $r/$rounds" >&2
  if ((r % 2)); then order=(c ts); else order=(ts c); fi
  for impl in "${order[@]}"; do
    if [[ $impl == c ]]; then
      BENCH_WARMUP_MS=$warmup_c "$c_prog" "$mode" "$edu" "$@"
    else
      BENCH_WARMUP_MS=$warmup_ts node "$ts_prog" "$mode" "$edu" import:1:1 "$@"
    fi
  done
done
env_line end
