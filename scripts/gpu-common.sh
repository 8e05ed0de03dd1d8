# Sourced by scripts/gpu-check and scripts/gpu-bench: what both need on a GPU
# machine that has no network. Sets have_gpu, gpu, device, layers, out,
# reports; defines build_gpu and checkpoint.
#
# At most 8 files come back from the device tool's $OUT, so $OUT receives
# only the logs and the results; each run's load report goes to $reports.
out=${OUT:-bench/out}
reports=build-gpu/reports
mkdir -p "$out" "$reports"
rm -f "$reports"/*.json  # a warm machine keeps build-gpu/: no report of an earlier call may stand in
# transformers must not look for a hub it cannot reach.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

have_gpu=0
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then have_gpu=1; fi
gpu=cpu; device=cpu; layers=()
if ((have_gpu)); then
  gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
  device=cuda:0
else
  layers=(--layers 2)  # the rehearsal: a 2-layer model on the cpu
fi

# build_gpu TARGET...: configures build-gpu/ (dependencies from .deps/, made
# by scripts/pack-deps) and builds the targets that exist; on failure prints
# the end of the compiler's output and returns 1.
build_gpu() {
  local deps=()
  [[ -d .deps ]] && deps=(-DHOIST_DEPS_DIR="$PWD/.deps")
  mkdir -p build-gpu
  if ! cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DHOIST_BUILD_BENCH=OFF -DHOIST_BUILD_TESTS=ON \
      -DPython_EXECUTABLE="$(command -v python3)" "${deps[@]}" > build-gpu/cmake.log 2>&1; then
    tail -n 40 build-gpu/cmake.log
    return 1
  fi
  grep -E "hoist:" build-gpu/cmake.log || true
  local want=() t targets
  targets=$(ninja -C build-gpu -t targets all 2>/dev/null)
  for t in "$@"; do
    grep -q "^$t:" <<<"$targets" && want+=("$t")
  done
  if ! ninja -C build-gpu "${want[@]}" > build-gpu/ninja.log 2>&1; then
    tail -n 80 build-gpu/ninja.log
    return 1
  fi
  echo "built: ${want[*]}"
}

# checkpoint ARCH: prints the folder of a synthesized ARCH checkpoint, made
# once and reused by the second script of scripts/gpu-all (which removes it).
# In /dev/shm when it has room (the page cache's own speed, no disk).
checkpoint() {
  local base=/dev/shm
  [[ -d /dev/shm && $(df --output=avail -B1 /dev/shm | tail -1) -gt 20000000000 ]] || base=build-gpu
  local dir=$base/hoist-ckpt-$1${layers[1]:+-${layers[1]}}
  if [[ ! -f $dir.complete ]]; then
    rm -rf "$dir"
    timeout 120 build-gpu/hoist synth --arch "$1" "${layers[@]}" --quiet "$dir" >&2 && touch "$dir.complete"
  fi
  [[ -f $dir.complete ]] || return 1
  echo "$dir"
}

# seconds_left DEADLINE: seconds until DEADLINE (epoch seconds), at least 0.
seconds_left() {
  local left=$(( $1 - $(date +%s) ))
  echo $(( left > 0 ? left : 0 ))
}
