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

# The interrupt cases run pinned, each in a process of its own: the program
# on CPU 0, and the MSI where the case wants it (the default IRQ affinity at
# the moment the program enables MSI, which is what the new vector gets):
# `irq` and `irq-wait` on CPU 0 (the waiter's), `irq-remote` on CPU 1. Both
# sides then see the same placement, instead of wherever the scheduler and
# the kernel happened to put them (unpinned, the medians of both sides were
# bimodal: ~5 µs when the MSI hit the waiter's CPU, ~60-100 µs otherwise).
plain=() irq=()
for c in "$@"; do
  case ${c%%:*} in irq | irq-wait | irq-remote) irq+=("$c") ;; *) plain+=("$c") ;; esac
done

run() { # CPU|- impl case...   (CPU: pinned to that CPU with taskset)
  local pin=$1 impl=$2 pre=()
  shift 2
  [[ $pin == - ]] || pre=(taskset -c "$pin")
  if [[ $impl == c ]]; then
    BENCH_WARMUP_MS=$warmup_c "${pre[@]}" "$c_prog" "$mode" "$edu" "$@"
  else
    BENCH_WARMUP_MS=$warmup_ts "${pre[@]}" node "$ts_prog" "$mode" "$edu" "$@"
  fi
}

run_irq() { # impl case
  local cpu=0 saved
  [[ ${2%%:*} == irq-remote ]] && cpu=1
  ((cpu < $(nproc))) || { echo "bench: $2 needs a second CPU" >&2; exit 1; }
  saved=$(cat /proc/irq/default_smp_affinity)
  printf '%x\n' $((1 << cpu)) >/proc/irq/default_smp_affinity
  run 0 "$1" "$2"
  echo "$saved" >/proc/irq/default_smp_affinity
}

env_line start
for ((r = 1; r <= rounds; r++)); do
  echo "bench: $mode round $r/$rounds" >&2
  if ((r % 2)); then order=(c ts); else order=(ts c); fi
  for impl in "${order[@]}"; do
    if [[ $impl == c ]]; then
      ((${#plain[@]} == 0)) || run - c "${plain[@]}"
    else
      run - ts import:1:1 "${plain[@]}"
    fi
    for c in "${irq[@]}"; do run_irq "$impl" "$c"; done
  done
done
env_line end
