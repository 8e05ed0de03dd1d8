# Sourced by scripts/gpu-check and scripts/gpu-bench: what both need on a GPU
# machine that has no network. Sets have_gpu, gpu, device, layers, out,
# reports, hoist_bin, cuda_tests; defines build_gpu, checkpoint,
# seconds_left and machine_facts.
#
# Without a GPU the scripts rehearse: on the cpu by default, or with
# HOIST_EMULATE=1 onto cuda:0 of the CUDA runtime emulated on the host
# (build-gpu/hoist_emulated), so that the GPU branch of every step runs.
#
# At most 8 files come back from the device tool's $OUT, so $OUT receives
# only the logs and the results; each run's load report goes to $reports.
# Without $OUT: bench/results/<date>-<gpu>/ on a GPU (to be committed),
# bench/out/ (ignored by git) for a rehearsal.
reports=build-gpu/reports
mkdir -p "$reports"
# Synthesized checkpoints are named for this checkout, so that two checkouts
# on one machine (a CI clone beside a working tree) never share or remove
# each other's: ckpt_prefix + ARCH[-LAYERS], in /dev/shm or build-gpu/.
# scripts/gpu-all sets it for both scripts, and removes them at the end.
ckpt_prefix=${HOIST_CKPT_PREFIX:-hoist-ckpt-$(pwd -P | cksum | cut -d' ' -f1)-}
# A failed synth stands for the rest of one scripts/gpu-all call, no longer.
[[ ${HOIST_KEEP_FAILED:-0} == 1 ]] || rm -f /dev/shm/"$ckpt_prefix"*.failed build-gpu/"$ckpt_prefix"*.failed
rm -f "$reports"/*.json  # a warm machine keeps build-gpu/: no report of an earlier call may stand in
# transformers must not look for a hub it cannot reach.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

# A GPU is there when nvidia-smi lists one or, without nvidia-smi on PATH,
# when the driver's device node exists.
have_gpu=0 cuda_arch=""
# Every driver query and build step has a time limit: a hung one must not
# take the whole lease.
if command -v nvidia-smi >/dev/null && timeout -k 10 20 nvidia-smi -L >/dev/null 2>&1; then
  have_gpu=1
  gpu=$(timeout -k 10 20 nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
  # Build for this GPU alone (9.0 -> 90-real): half the device code to compile.
  cap=$(timeout -k 10 20 nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
  [[ $cap =~ ^[0-9]+$ ]] && cuda_arch="$cap-real"
elif [[ -e /dev/nvidia0 ]]; then
  have_gpu=1
  gpu=$(timeout -k 10 20 python3 -c "import torch; print(torch.cuda.get_device_name(0))" 2>/dev/null || echo "NVIDIA GPU")
fi
if [[ -n ${OUT:-} ]]; then
  out=$OUT
elif ((have_gpu)); then
  out=bench/results/$(date +%F)-$(tr ' /' '--' <<<"$gpu")
else
  out=bench/out
fi
mkdir -p "$out"
device=cpu; layers=()
hoist_bin=build-gpu/hoist cuda_tests=build-gpu/hoist_cuda_tests emulated=0
if ((have_gpu)); then
  device=cuda:0
elif [[ ${HOIST_EXPECT_GPU:-0} == 1 ]]; then
  # On the device machine a missing GPU must fail at once, not rehearse on
  # the cpu for minutes of device time and report "all passed".
  echo "error: HOIST_EXPECT_GPU=1 but no GPU here (no nvidia-smi listing, no /dev/nvidia0)" >&2
  exit 1
elif [[ ${HOIST_EMULATE:-0} == 1 ]]; then
  emulated=1 gpu="hoist CUDA emulator" device=cuda:0
  hoist_bin=build-gpu/hoist_emulated cuda_tests=build-gpu/hoist_cuda_emulated_tests
  layers=(--layers 2)
else
  gpu=cpu
  layers=(--layers 2)  # the rehearsal: a 2-layer model on the cpu
fi
if [[ ${HOIST_EXPECT_GPU:-0} == 1 && ! -d .deps/include ]]; then
  # That machine has no package registry: without the carried folder the
  # configure step fails on the first library it looks for.
  echo "error: HOIST_EXPECT_GPU=1 but no .deps/ here: run scripts/pack-deps and carry .deps" >&2
  exit 1
fi

# build_gpu TARGET...: configures build-gpu/ (dependencies from .deps/, made
# by scripts/pack-deps) and builds the targets that exist; on failure prints
# the end of the compiler's output and returns 1. build_more TARGET... builds
# more of them in the configured tree, the same way: a target a run can do
# without (the Python module) is built on its own, so that its failure costs
# only what needs it.
build_gpu() {
  local deps=()
  [[ -d .deps ]] && deps=(-DHOIST_DEPS_DIR="$PWD/.deps")
  mkdir -p build-gpu
  [[ -n $cuda_arch ]] && deps+=(-DCMAKE_CUDA_ARCHITECTURES="$cuda_arch")
  # -include cstdint: the compiler there may be newer than any that has
  # built this tree (and its carried libraries), and GCC 13's headers no
  # longer bring in <cstdint> on the way; a missing include must not cost
  # the run.
  if ! timeout -k 10 "$(step_limit 120)" cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DHOIST_BUILD_BENCH=OFF \
      -DHOIST_BUILD_TESTS=ON -DCMAKE_CXX_FLAGS="-include cstdint" \
      -DPython_EXECUTABLE="$(command -v python3)" "${deps[@]}" > build-gpu/cmake.log 2>&1; then
    tail -n 40 build-gpu/cmake.log
    return 1
  fi
  grep -E "hoist:|Python|nanobind" build-gpu/cmake.log || true
  echo "CUDA architectures asked for: ${cuda_arch:-none, the default}"
  # On a GPU a build without the CUDA backend would load nothing onto it
  # (cuda:0 "is not present") and spend the rest of the lease finding out.
  if ((have_gpu)) && ! grep -q "hoist: CUDA backend enabled" build-gpu/cmake.log; then
    grep -iE "cuda|nvcc" build-gpu/cmake.log | tail -n 20
    echo "error: this machine has a GPU but the build has no CUDA backend (build-gpu/cmake.log says why)"
    return 1
  fi
  build_more "$@"
}

build_more() {
  local want=() t targets names=("$@")
  if ((emulated)); then  # the emulator's command and tests stand in for the real ones
    names=()
    for t in "$@"; do
      case $t in
        hoist) names+=(hoist_emulated) ;;
        hoist_cuda_tests) names+=(hoist_cuda_emulated_tests) ;;
        *) names+=("$t") ;;
      esac
    done
  fi
  targets=$(ninja -C build-gpu -t targets all 2>/dev/null)
  for t in "${names[@]}"; do
    grep -q "^$t:" <<<"$targets" && want+=("$t")
  done
  if ((${#want[@]} == 0)); then
    echo "built: nothing (none of $* is in this build; build-gpu/cmake.log says why)"
    return 1
  fi
  local limit rc=0
  limit=$(step_limit 400)
  timeout -k 10 "$limit" ninja -C build-gpu "${want[@]}" > build-gpu/ninja.log 2>&1 || rc=$?
  if ((rc)); then
    tail -n 80 build-gpu/ninja.log
    local why="exit $rc"
    ((rc == 124 || rc == 137)) && why="its time limit of $limit s"
    echo "(the build stopped: $why)"
    return 1
  fi
  echo "built: ${want[*]}"
}

# python_extras: the carried wheels (.deps/wheels, see scripts/pack-deps) of
# the packages python3 cannot import, unpacked into build-gpu/pyextras and
# put on PYTHONPATH. A wheel is a zip file: no pip, no network.
python_extras() {
  local w name
  for w in .deps/wheels/*.whl; do
    [[ -f $w ]] || continue
    name=$(basename "$w"); name=${name%%-*}
    python3 -c "import $name" 2>/dev/null && continue
    python3 -m zipfile -e "$w" build-gpu/pyextras && echo "python: $name from $(basename "$w")"
  done
  [[ -d build-gpu/pyextras ]] && export PYTHONPATH=$PWD/build-gpu/pyextras${PYTHONPATH:+:$PYTHONPATH}
  return 0
}

# checkpoint ARCH: prints the folder of a synthesized ARCH checkpoint, made
# once and reused by the second script of scripts/gpu-all (which removes it).
# In /dev/shm when it has room (the page cache's own speed, no disk).
# A synth that failed is not tried again by the second script: it leaves
# $dir.failed, and the second script goes on to what needs no checkpoint.
checkpoint() {
  local name=$ckpt_prefix$1${layers[1]:+-${layers[1]}} base=""
  # Where the first script put it (or failed to): /dev/shm, once holding the
  # checkpoint, may no longer have the room that chose it.
  [[ -e /dev/shm/$name.complete || -e /dev/shm/$name.failed ]] && base=/dev/shm
  [[ -e build-gpu/$name.complete || -e build-gpu/$name.failed ]] && base=build-gpu
  if [[ -z $base ]]; then
    base=/dev/shm
    [[ -d /dev/shm && $(df --output=avail -B1 /dev/shm | tail -1) -gt 20000000000 ]] || base=build-gpu
  fi
  local dir=$base/$name
  if [[ -f $dir.failed ]]; then
    echo "(the synth of $1 failed earlier in this call: not tried again)" >&2
    return 1
  fi
  if [[ ! -f $dir.complete ]]; then
    rm -rf "$dir"
    local avail
    avail=$(df --output=avail -B1 "$base" | tail -1)
    echo "synth into $base ($(( avail / 1000000000 )) GB free there)" >&2
    timeout -k 10 90 "$hoist_bin" synth --arch "$1" "${layers[@]}" --quiet "$dir" >&2 && touch "$dir.complete"
  fi
  if [[ ! -f $dir.complete ]]; then
    rm -rf "$dir"  # the space a half-written checkpoint holds goes to the rest of the run
    touch "$dir.failed"
    return 1
  fi
  echo "$dir"
}

# seconds_left DEADLINE: seconds until DEADLINE (epoch seconds), at least 0.
seconds_left() {
  local left=$(( $1 - $(date +%s) ))
  echo $(( left > 0 ? left : 0 ))
}

# step_limit MAX: a build step's time limit: MAX seconds, and under
# scripts/gpu-all no more than leaves 60 s before the device tool's own limit
# (HOIST_DEADLINE + 60 s), so that a slow build ends with the scripts' own
# report, not with the run killed; at least 30 s.
step_limit() {
  local limit=$1
  if [[ -n ${HOIST_DEADLINE:-} ]]; then
    local left
    left=$(seconds_left "$HOIST_DEADLINE")
    (( left < limit )) && limit=$left
  fi
  echo $(( limit > 30 ? limit : 30 ))
}

# machine_facts: what the run depends on, for the log.
machine_facts() {
  uname -srm
  if ((have_gpu)) && command -v nvidia-smi >/dev/null; then
    # compute_mode: Exclusive_Process would refuse the CLI's loads while the
    # benchmark's own torch process holds the GPU.
    timeout -k 10 20 nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap,compute_mode --format=csv,noheader
  fi
  echo "$(nproc) cores; $(free -g | awk '/^Mem:/ {print $2 " GiB memory, " $7 " GiB available"}')"
  df -h /dev/shm . | sed 1d
  # Fresh memory costs what the host makes it cost: a VM that reports free
  # pages hands idle freed memory back to its host, and a load's arena then
  # faults through to the host (seen at 0.4 GB/s on the development VM).
  echo "transparent hugepages: $(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null || echo unknown)"
  # A virtio balloon (device 0x0005) offering free page reporting (feature bit 5).
  local d reporting=off
  for d in /sys/bus/virtio/devices/*; do
    [[ -r $d/device && $(cat "$d/device") == 0x0005 && $(cut -c6 "$d/features" 2>/dev/null) == 1 ]] && reporting=on
  done
  echo "free page reporting to the host: $reporting"
  local t
  for t in cmake ninja nvcc python3 timeout; do echo "$t: $(command -v $t || echo MISSING)"; done
  echo "c++: $(c++ --version 2>/dev/null | head -1 || echo MISSING)"
  command -v nvcc >/dev/null && nvcc --version | tail -2 | head -1
  python3 -c "import sys, sysconfig, os; inc = sysconfig.get_paths()['include']; \
print('python', sys.version.split()[0], 'Python.h:', 'yes' if os.path.exists(os.path.join(inc, 'Python.h')) else 'NO (no hoist module)')"
  python3 -c "import importlib
for m in ('torch', 'transformers', 'safetensors', 'accelerate', 'numpy'):
    try: print(m, importlib.import_module(m).__version__)
    except Exception as e: print(m, 'MISSING', type(e).__name__)"
}
