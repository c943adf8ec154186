#!/usr/bin/env bash
# `npm run test:vm`: the real-kernel tier. Builds or reuses the guest kernels
# (6.12 LTS with VFIO's legacy container, and the newest Debian kernel with
# iommufd's compat container), builds the initramfs, boots one QEMU VM per
# kernel and VFIO mode (group, cdev, noiommu) with QEMU's edu and nvme
# devices, runs test/vm/guest/*.test.ts inside each, and prints every boot's
# TAP, a per-boot count naming kernel and mode, and a final
# `test:vm: N passed, N failed`.
#
# Guarantees:
# - Exit 0 only if every boot came up, showed its /dev nodes, ran at least one
#   test and none failed. A boot that did not run counts as one failure in
#   the final line, so the line never reads "0 failed" on a failed run.
# - Outside CI (CI unset or empty) a missing prerequisite that cannot be
#   installed skips the tier with a loud message and exit 0; with CI set
#   (CI=true) it fails.
# - Every QEMU is killed after VFIO_VM_TIMEOUT seconds and reported.
#
# `run.sh --exec 'COMMAND' [--modes 'MODE ...'] [--kernels 'KERNEL ...']`
# boots the same machine(s) but runs COMMAND (with bash, in the checkout)
# instead of the suite: its stdout and stderr stream to the host's stdout and
# stderr, and run.sh exits with its exit code (the first non-zero one over the
# boots; 125 if a VM did not get to run it). VFIO_VM_EXEC='COMMAND' does the
# same. See README.md.
#
# Knobs (environment): VFIO_VM_KERNELS (default "6.12"; "6.12 newest" for
# both; --kernels),
# VFIO_VM_MODES (default "group cdev noiommu"; --modes), VFIO_VM_TIMEOUT (per
# boot, default 900 s), VFIO_VM_FILE_TIMEOUT (per guest test file, default
# 300 s), VFIO_VM_KEEP=1 (keep the run directory with each
# boot's console.log), VFIO_VM_VERBOSE=1 (stream the guest consoles live),
# VFIO_VM_CACHE (kernel cache root), VFIO_VM_JOBS (kernel build parallelism,
# default 3), VFIO_VM_PARALLEL (suite boots at once, default 2).
# See test/vm/README.md.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
boot_timeout=${VFIO_VM_TIMEOUT:-900}
# The guest suite's limit per test file (guest-suite.sh), passed on to the guest.
file_timeout=${VFIO_VM_FILE_TIMEOUT:-300}
[[ $file_timeout =~ ^[1-9][0-9]*$ && $boot_timeout =~ ^[1-9][0-9]*$ ]] \
  || { printf 'test:vm: ERROR: VFIO_VM_TIMEOUT and VFIO_VM_FILE_TIMEOUT must be positive numbers of seconds\n' >&2; exit 2; }

say() { printf 'test:vm: %s\n' "$*" >&2; }

exec_command=${VFIO_VM_EXEC:-} modes_arg=${VFIO_VM_MODES:-group cdev noiommu}
kernels_arg=${VFIO_VM_KERNELS:-}
while (($#)); do
  case $1 in
    --exec) (($# >= 2)) || { say "ERROR: --exec needs a command"; exit 2; }; exec_command=$2; shift 2 ;;
    --exec=*) exec_command=${1#--exec=}; shift ;;
    --modes) (($# >= 2)) || { say "ERROR: --modes needs a list"; exit 2; }; modes_arg=$2; shift 2 ;;
    --modes=*) modes_arg=${1#--modes=}; shift ;;
    --kernels) (($# >= 2)) || { say "ERROR: --kernels needs a list"; exit 2; }; kernels_arg=$2; shift 2 ;;
    --kernels=*) kernels_arg=${1#--kernels=}; shift ;;
    -h | --help) sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) say "ERROR: unknown argument '$1' (usage: run.sh [--exec 'COMMAND'] [--modes 'group cdev noiommu'] [--kernels '6.12 newest'])"; exit 2 ;;
  esac
done
read -ra modes <<<"${modes_arg//,/ }"
for mode in "${modes[@]}"; do
  case $mode in group | cdev | noiommu) ;; *) say "ERROR: unknown mode '$mode' (expected group, cdev, noiommu)"; exit 2 ;; esac
done
((${#modes[@]})) || { say "ERROR: no mode to boot"; exit 2; }
# Default: 6.12 only, for the suite and an exec run (a demo, the bench: one
# machine to show or measure). `newest` is built and booted on request
# (VFIO_VM_KERNELS='6.12 newest'); it becomes the suite's default once the
# whole suite has been seen green on it (test/vm/README.md).
[[ -n $kernels_arg ]] || kernels_arg=6.12
read -ra kernels <<<"${kernels_arg//,/ }"
for kernel in "${kernels[@]}"; do
  case $kernel in 6.12 | newest) ;; *) say "ERROR: unknown kernel '$kernel' (expected 6.12, newest)"; exit 2 ;; esac
done
((${#kernels[@]})) || { say "ERROR: no kernel to boot"; exit 2; }
# An exec run whose VM failed before the command ran exits with this, so
# that a caller can tell it from the command's own failure.
exec_vm_failed=125

# A prerequisite this machine lacks and cannot get: loud skip outside CI.
unavailable() {
  if [[ -n ${CI:-} ]]; then
    say "ERROR: $* (CI=$CI: the VM tier may not skip)"
    exit 1
  fi
  printf '\n%s\n' "################################################################" >&2
  say "SKIPPED: $*"
  say "the real-kernel tier did NOT run (set CI=true to make this an error)"
  printf '%s\n\n' "################################################################" >&2
  exit 0
}

# --- prerequisites: Debian packages, installed when missing ------------------
# fio: the guest runs the host's fio (the NVMe bench's kernel-driver peer).
packages=(qemu-system-x86 busybox-static linux-source-6.12
  bc bison flex libelf-dev libssl-dev cpio xz-utils gzip gcc make libc6-dev fio)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  ((EUID == 0)) || unavailable "missing Debian packages (${missing[*]}) and not root to install them"
  say "installing ${missing[*]}"
  apt_install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; }
  # A stale package list is the usual reason an install fails: refresh once.
  apt_install || { apt-get update -q >&2 && apt_install; } || unavailable "apt-get could not install ${missing[*]}"
fi
command -v node >/dev/null || unavailable "no node on PATH"
[[ -d $repo/node_modules/koffi && ( -n $exec_command || -d $repo/node_modules/tap ) ]] \
  || unavailable "no node_modules in $repo (run npm ci)"

# --- kernels and initramfs ---------------------------------------------------
# Per kernel: its bzImage, its `uname -r`, and what serves /dev/vfio/vfio
# (read from the kernel's own .config, kept beside the bzImage).
declare -A bzimage release container
for kernel in "${kernels[@]}"; do
  bzimage[$kernel]=$(bash "$here/kernel.sh" "$kernel") || { say "ERROR: the guest kernel $kernel could not be built"; exit 1; }
  kdir=$(dirname "${bzimage[$kernel]}")
  release[$kernel]=$(cat "$kdir/release")
  if grep -qx CONFIG_IOMMUFD_VFIO_CONTAINER=y "$kdir/config"; then container[$kernel]=iommufd-compat
  elif grep -qx CONFIG_VFIO_CONTAINER=y "$kdir/config"; then container[$kernel]=legacy
  else say "ERROR: kernel $kernel has no /dev/vfio/vfio container ($kdir/config)"; exit 1; fi
done

run=$(mktemp -d "${TMPDIR:-/tmp}/vfio-vm.XXXXXX")
keep=${VFIO_VM_KEEP:-}
cleanup() {
  if [[ -n $keep ]]; then say "kept run directory $run (console logs: $run/<kernel>-<mode>/console.log)"; else rm -rf "$run"; fi
}
trap cleanup EXIT
bash "$here/initramfs.sh" "$run/initramfs.cpio.gz" || { say "ERROR: the initramfs could not be built"; exit 1; }

# The guest suite, compiled to JS once for all modes (see tsconfig.guest.json).
# A syntax error fails here; types are `npm run typecheck`'s business.
# An exec run does not need it (its command brings its own JS).
js=$run/js
mkdir -p "$js"
if [[ -z $exec_command ]]; then
  say "compiling test/vm/guest to $js"
  node "$repo/node_modules/typescript/bin/tsc" -p "$here/tsconfig.guest.json" --outDir "$js" >&2 \
    || { say "ERROR: test/vm/guest does not compile"; exit 1; }
  cp "$repo/package.json" "$js/package.json"   # "type": "module" for the .js files
  ln -s "$repo/node_modules" "$js/node_modules"
fi

# The guest runs the host's own node; its directory may not be in /usr/bin.
node_dir=$(dirname "$(readlink -f "$(command -v node)")")
for path in "$repo" "$node_dir" "$js"; do
  [[ $path != *"'"* ]] || { say "ERROR: a quote in $path"; exit 1; }
done

# --- the machine -------------------------------------------------------------
# Every boot has the same PCI topology (README.md has the table):
# - the main edu on the root bus;
# - behind a conventional PCI bridge a second edu and a virtio-rng. Devices
#   behind such a bridge share one IOMMU group (the bridge takes their DMA
#   requester ID), and the rng is bound to the host driver virtio-pci: with
#   an IOMMU, that group is not viable for VFIO (see the guest's error tests);
# - an nvme controller (serial $nvme_serial, namespace 1 on a sparse 1 GiB image
#   made per boot) behind a PCIe root port;
# - an SR-IOV capable nvme (the PF; an nvme-subsys is what QEMU requires for
#   SR-IOV) behind a second PCIe root port. Its VFs share the PF's
#   queue/vector budget: max_ioqpairs - sriov_vq_flexible and msix_qsize -
#   sriov_vi_flexible stay with the PF, the flexible rest is handed to VFs
#   (QEMU wants at least 2 queues and 1 vector per VF in the flexible pool).
# The root-bus devices come first and in this order so that their addresses
# (0000:00:01.0 edu, 00:02.0 bridge, bus 01 behind it) stay what they were
# before the nvme devices arrived; the root ports take 00:03.0 and 00:04.0.
nvme_serial=vfio-nvme-0 nvme_pf_serial=vfio-nvme-pf
# 1 GiB: the bench's fio reads over --size=1G; sparse, so it costs no disk.
nvme_image_size=1G
# O_DIRECT (cache=none) where the run directory's filesystem has it, so that
# the nvme bench measures the device model, not the host's page cache.
nvme_cache=none
if ! dd if=/dev/zero of="$run/direct-probe" bs=4096 count=1 oflag=direct status=none 2>/dev/null; then
  nvme_cache=writeback
  say "note: $run has no O_DIRECT: the nvme image uses cache=writeback"
fi
rm -f "$run/direct-probe"

# --- one boot per kernel and mode ---------------------------------------------
# Writes $run/<kernel>-<mode>/status: empty when the guest ran its job (the
# suite, or the exec command), else why it did not.
boot() {
  local kernel=$1 mode=$2 dir=$run/$1-$2 job=suite
  mkdir -p "$dir/out"
  if [[ -n $exec_command ]]; then
    job=exec
    # A file, not job.env: the command may hold any quoting.
    printf '%s\n' "$exec_command" >"$dir/out/exec.cmd"
    : >"$dir/out/exec.stdout"
    : >"$dir/out/exec.stderr"
  fi
  printf "VFIO_VM_%s='%s'\n" MODE "$mode" JOB "$job" REPO "$repo" NODE_DIR "$node_dir" JS "$js" \
    CONTAINER "${container[$kernel]}" NVME_SERIAL "$nvme_serial" NVME_PF_SERIAL "$nvme_pf_serial" \
    FILE_TIMEOUT "$file_timeout" >"$dir/out/job.env"
  truncate -s "$nvme_image_size" "$dir/nvme.img"

  # no_timer_check: on a loaded host, TCG can run the guest so slowly that
  # the kernel's early check of the IO-APIC timer fails and it panics ("timer
  # doesn't work through Interrupt-remapped IO-APIC"); the timer does work.
  # vfio_pci.enable_sriov=1: vfio-pci (built in) lets sriov_numvfs of a PF it
  # drives create VFs only with this parameter.
  local append='console=ttyS0 panic=-1 no_timer_check vfio_pci.enable_sriov=1' devices=() edu_options=
  case $mode in
    group | cdev)
      # intel-iommu first: it must exist before the devices it translates for.
      devices=(-device 'intel-iommu,intremap=on')
      append+=' intel_iommu=on' ;;
    noiommu)
      # edu's default DMA mask is 28 bits; without an IOMMU its DMA addresses
      # are physical ones, which may lie anywhere in 2 GiB.
      edu_options=,dma_mask=0xffffffffffffffff
      append+=' intel_iommu=off vfio.enable_unsafe_noiommu_mode=1' ;;
  esac
  devices+=(-device "edu$edu_options"
    -device pci-bridge,id=br0,chassis_nr=1
    -device "edu,bus=br0,addr=1$edu_options"
    -device virtio-rng-pci,bus=br0,addr=2
    -device pcie-root-port,id=rp-nvme,chassis=2,slot=0
    -drive "if=none,id=nvme-img,file=$dir/nvme.img,format=raw,cache=$nvme_cache,aio=threads"
    -device "nvme,bus=rp-nvme,serial=$nvme_serial,drive=nvme-img,max_ioqpairs=4,msix_qsize=5"
    -device pcie-root-port,id=rp-nvme-pf,chassis=3,slot=0
    -device nvme-subsys,id=nvme-subsys-pf,nqn=vfio-nvme-subsys-pf
    -device "nvme,bus=rp-nvme-pf,serial=$nvme_pf_serial,subsys=nvme-subsys-pf,max_ioqpairs=6,msix_qsize=4,sriov_max_vfs=2,sriov_vq_flexible=4,sriov_vi_flexible=2,sriov_max_vq_per_vf=2,sriov_max_vi_per_vf=1")

  local label="${release[$kernel]} $mode"
  if [[ -n ${VFIO_VM_VERBOSE:-} ]]; then
    # Follows the console until this script exits (tail --pid), idle after
    # this boot's QEMU is gone.
    : >"$dir/console.log"
    tail -n +1 -f --pid=$$ "$dir/console.log" | sed -u "s/^/[$label] /" >&2 &
  fi
  local started=$SECONDS rc qemu streams=()
  timeout -k 5 "$boot_timeout" qemu-system-x86_64 \
    -machine q35,kernel-irqchip=split -accel tcg,thread=multi -cpu max -m 2G -smp 2 \
    -nodefaults -display none -no-reboot \
    "${devices[@]}" \
    -kernel "${bzimage[$kernel]}" -initrd "$run/initramfs.cpio.gz" -append "$append" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    -virtfs "local,path=$js,mount_tag=vmjs,security_model=none,readonly=on" \
    -virtfs "local,path=$dir/out,mount_tag=vmout,security_model=none" \
    -serial "file:$dir/console.log" \
    >"$dir/qemu.log" 2>&1 &
  qemu=$!
  if [[ $job == exec ]]; then
    # The guest writes the command's output into the vmout share as it runs
    # (9p without a cache writes through): follow both files until QEMU is
    # gone (tail reads what is left, then exits).
    tail -c +1 -f --pid=$qemu "$dir/out/exec.stdout" &
    streams+=($!)
    tail -c +1 -f --pid=$qemu "$dir/out/exec.stderr" >&2 &
    streams+=($!)
  fi
  wait $qemu
  rc=$?
  ((${#streams[@]} == 0)) || wait "${streams[@]}"
  echo $((SECONDS - started)) >"$dir/seconds"
  rm -f "$dir/nvme.img"

  local status=
  if ((rc == 124 || rc == 137)); then
    status="timed out after $boot_timeout s (QEMU killed)"
  elif ((rc != 0)); then
    status="QEMU exited with $rc: $(tail -3 "$dir/qemu.log" | tr '\n' ' ')"
  elif [[ -s $dir/out/init-error ]]; then
    status="guest init failed: $(cat "$dir/out/init-error")"
  elif [[ ! -f $dir/out/devnodes.txt ]]; then
    status="the guest never reached its setup (no devnodes.txt)"
  else
    local want=() node
    case $mode in
      group) want=(/dev/vfio/vfio '/dev/vfio/[0-9]+') ;;
      cdev) want=(/dev/iommu /dev/vfio/devices/vfio0) ;;
      noiommu) want=('/dev/vfio/noiommu-[0-9]+') ;;
    esac
    for node in "${want[@]}"; do
      grep -qxE "$node" "$dir/out/devnodes.txt" || status+="missing $node; "
    done
    [[ -z $status ]] || status="expected /dev nodes absent: ${status%; } (found: $(tr '\n' ' ' <"$dir/out/devnodes.txt"))"
    [[ -n $status || -f $dir/out/$job.rc ]] || status="the guest $job did not finish"
    if [[ -z $status && $(cat "$dir/out/kernel" 2>/dev/null) != "${release[$kernel]}" ]]; then
      status="booted kernel $(cat "$dir/out/kernel" 2>/dev/null), expected ${release[$kernel]}"
    fi
  fi
  printf '%s' "$status" >"$dir/status"
}

# The boots: every kernel × every mode, kernel by kernel.
boots=()
for kernel in "${kernels[@]}"; do
  for mode in "${modes[@]}"; do boots+=("$kernel $mode"); done
done

if [[ -n $exec_command ]]; then
  # --- exec: the command's exit code, no report -------------------------------
  exit_code=0
  for b in "${boots[@]}"; do
    read -r kernel mode <<<"$b"
    dir=$run/$kernel-$mode label="${release[$kernel]} $mode"
    say "exec in $label (${container[$kernel]} container): booting"
    boot "$kernel" "$mode"
    status=$(cat "$dir/status")
    if [[ -n $status ]]; then
      say "exec in $label: the VM did not run the command to the end: $status"
      say "last lines of $label's console:"
      tail -15 "$dir/console.log" | tr -d '\r' | sed 's/^/test:vm:   /' >&2
      keep=1 rc=$exec_vm_failed
    else
      rc=$(cat "$dir/out/exec.rc")
      say "exec in $label: exit $rc ($(cat "$dir/seconds") s)"
    fi
    ((exit_code != 0)) || exit_code=$rc
  done
  exit "$exit_code"
fi

# The suite's boots run side by side, VFIO_VM_PARALLEL at a time (default
# 2): each guest mostly keeps one host core busy (one node process at a
# time, plus QEMU's own threads), so on this 2-core machine kind two at once
# about halves the wall time, and more only stretch every boot (and its
# per-boot timeout) without finishing sooner. Each boot writes only into its
# own directory; the report below reads them once all are done. (An exec run
# stays sequential: its output is one stream.)
parallel=${VFIO_VM_PARALLEL:-2}
[[ $parallel =~ ^[1-9][0-9]*$ ]] || { say "ERROR: VFIO_VM_PARALLEL=$parallel is not a positive number"; exit 2; }
started_all=$SECONDS running=0
for b in "${boots[@]}"; do
  read -r kernel mode <<<"$b"
  if ((running >= parallel)); then
    wait -n
    running=$((running - 1))
  fi
  say "boot ${release[$kernel]} $mode (kernel $kernel, ${container[$kernel]} container)"
  boot "$kernel" "$mode" &
  running=$((running + 1))
done
wait
wall=$((SECONDS - started_all))

# --- report -----------------------------------------------------------------
# Counts come from the summary comment tap prints last for each file run
# directly: `# { total: 5, pass: 3, fail: 1, todo: 1, skip: 1 }`.
count() { sed -nE "s/^# \{.*[{,] $1: ([0-9]+).*/\1/p" "$2" | tail -1; }

shopt -s nullglob
guest_files=("$repo"/test/vm/guest/*.test.ts)
total_pass=0 total_fail=0 lines=()
for b in "${boots[@]}"; do
  read -r kernel mode <<<"$b"
  label="${release[$kernel]} $mode"
  dir=$run/$kernel-$mode status=$(cat "$dir/status") pass=0 fail=0 skip=0 problems=()
  echo "# test:vm boot $label (${container[$kernel]} container)"
  for file in "${guest_files[@]}"; do
    name=$(basename "$file" .test.ts)
    tap=$dir/out/$name.tap p=0 f=0 s=0
    rc=$(cat "$dir/out/$name.rc" 2>/dev/null || echo none)
    if [[ -f $tap ]]; then
      echo "# Subtest: ${release[$kernel]}/$mode/$name.test.ts"
      sed 's/^/    /' "$tap"
      if [[ -s $dir/out/$name.stderr ]]; then
        echo "    # stderr of $name.test.ts:"
        sed 's/^/    #   /' "$dir/out/$name.stderr"
      fi
      p=$(count pass "$tap") f=$(count fail "$tap") s=$(count skip "$tap")
      pass=$((pass + ${p:-0})) fail=$((fail + ${f:-0})) skip=$((skip + ${s:-0}))
    fi
    # A boot that did not finish is one failure below, not one per file.
    [[ -z $status ]] || continue
    if [[ ! -f $tap ]]; then
      problems+=("$name.test.ts did not run"); fail=$((fail + 1))
    elif ! grep -qE '^# \{ total: ' "$tap"; then
      problems+=("$name.test.ts ended without a tap summary (exit $rc)"); fail=$((fail + 1))
    elif [[ $rc != 0 && ${f:-0} == 0 ]]; then  # e.g. a crash after the summary
      problems+=("$name.test.ts exited $rc with no failed assertion"); fail=$((fail + 1))
    fi
  done
  if [[ -n $status ]]; then
    problems+=("did not run to the end: $status"); fail=$((fail + 1))
  elif ((pass + fail == 0)); then
    problems+=("ran no test"); fail=$((fail + 1))
  fi
  ((fail == 0)) || keep=1   # a failed run keeps its consoles and outputs
  if ((${#problems[@]})); then
    for problem in "${problems[@]}"; do echo "# test:vm $label: $problem"; done
    if [[ -f $dir/console.log ]]; then
      echo "# last lines of $label's console ($dir/console.log):"
      tail -25 "$dir/console.log" | tr -d '\r' | sed 's/^/#   /'
    fi
  fi
  total_pass=$((total_pass + pass)) total_fail=$((total_fail + fail))
  lines+=("test:vm: $label (${container[$kernel]}): $pass passed, $fail failed, $skip skipped (${#guest_files[@]} files, $(cat "$dir/seconds") s)")
done

echo
printf '%s\n' "${lines[@]}"
echo "test:vm: ${#boots[@]} boots took $wall s (up to $parallel at a time; host load average now $(cut -d' ' -f1-3 /proc/loadavg))"
echo "test:vm: $total_pass passed, $total_fail failed"
((total_fail == 0))
