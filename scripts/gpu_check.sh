#!/usr/bin/env bash
# The GPU check: the one script a session with a GPU runs first, in one go (expected ~4-5 min on
# one H200; each step has a timeout). Without a GPU it runs the same steps in miniature (a CPU
# smoke, ~1 min here; ~4 min with FMICL_GPU_CHECK_BUILD=1).
#
#   bash scripts/gpu_check.sh          # on the device machine: OUT is its output folder
#
# 1. build  fmicl_engine._C with the CUDA kernels, by scripts/build_cuda_check.sh (sm_XY of this
#           GPU), unless the importable extension has them. The module is staged with a copy of
#           the Python package under build/gpu-check/stage and put first on PYTHONPATH (an
#           editable install, where there is one, still wins: then install with FMICL_CUDA=ON).
# 2. tests  the GPU tests: `pytest -m cuda` on the test files that mark any (they skip without a
#           GPU or without the CUDA kernels).
# 3. bench  engine/bench/train.py, ResNet-50, bf16, channels_last, GPU_CHECK_STEPS steps of
#           GPU_CHECK_BATCH images, then fp32 for 100 steps if time is left. Its --data auto mode:
#           with DALI installed, `imagefolder` = the engine end to end on generated JPEGs (data
#           loading included); without DALI (the device machine has none), `synthetic` = the
#           engine's model, loss, optimiser and step on random tensors already on the GPU (the
#           compute ceiling: no data loading, one process). The table says which.
#
# Output under $OUT (else build/gpu-check/out): gpu_check.log (all of it), build.log, pytest.log,
# bench/results.jsonl (one row per benchmark), bench/<run>.metrics.jsonl (its metric lines).
# Env: PYTHON (python3), GPU_CHECK_STEPS (300), GPU_CHECK_BATCH (256 per GPU),
#      GPU_CHECK_BUDGET_S (300: the fp32 run starts only before this many seconds),
#      FMICL_GPU_CHECK_BUILD=1 builds even without a GPU (a compile check of this script's path).
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
PY=${PYTHON:-python3}
out=${OUT:-$repo/build/gpu-check/out}
build_dir=$repo/build/gpu-check
mkdir -p "$out/bench"
exec > >(tee -a "$out/gpu_check.log") 2>&1
tee_pid=$!
trap 'exec >&- 2>&-; wait "$tee_pid"' EXIT  # let tee write the last lines before the script ends
export PYTHONUNBUFFERED=1
failed=()
step() { echo; echo "=== [$(date +%T), ${SECONDS}s] $*"; }

step "machine"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
"$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '| GPU:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none')"
gpu=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))")

step "1. build"
has_cuda_kernels() {
  "$PY" -c "import sys, fmicl_engine._ext as e; sys.exit(0 if e._C.build_info['with_cuda'] else 1)" 2>/dev/null
}
if [[ ${FMICL_GPU_CHECK_BUILD:-0} == 1 ]] || { [[ $gpu == 1 ]] && ! has_cuda_kernels; }; then
  if [[ -z ${CUDA_HOME:-} ]]; then  # the real toolkit: a PATH nvcc can be a wrapper script
    nvcc_home=$(command -v nvcc >/dev/null && dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
    for d in /usr/local/cuda-13.0 /usr/local/cuda "$nvcc_home"; do
      if [[ -n $d && -x $d/bin/nvcc ]]; then export CUDA_HOME=$d; break; fi
    done
  fi
  if [[ $gpu == 1 && -z ${FMICL_CUDA_ARCH:-} ]]; then
    FMICL_CUDA_ARCH=$("$PY" -c "import torch; print('%d%d' % torch.cuda.get_device_capability())")
    export FMICL_CUDA_ARCH
  fi
  echo "building with CUDA_HOME=${CUDA_HOME:-?}, sm_${FMICL_CUDA_ARCH:-90}, into $build_dir (log: build.log)"
  FMICL_BUILD_JOBS=${FMICL_BUILD_JOBS:-$(nproc)} PYTHON=$PY timeout 360 scripts/build_cuda_check.sh \
    "$build_dir" > "$out/build.log" 2>&1
  rc=$?
  grep '^build_cuda_check\|^  ' "$out/build.log"
  if [[ $rc != 0 ]]; then tail -n 40 "$out/build.log"; failed+=("build($rc)"); fi
  # Staged even when only the script's checks after the build failed (a missing objdump, say).
  if compgen -G "$build_dir/_C*.so" >/dev/null; then
    stage=$build_dir/stage
    rm -rf "$stage" && mkdir -p "$stage"
    cp -r python/fmicl_engine "$stage/"
    cp "$build_dir"/_C*.so "$stage/fmicl_engine/"
    if [[ -f $build_dir/libfmicl_dali.so ]]; then cp "$build_dir/libfmicl_dali.so" "$stage/fmicl_engine/"; fi
    export PYTHONPATH=$stage${PYTHONPATH:+:$PYTHONPATH}
  fi
else
  echo "not needed: $([[ $gpu == 1 ]] && echo 'the installed extension has the CUDA kernels' || echo 'no GPU')"
fi
"$PY" -c "import fmicl_engine._ext as e; i = e._C.build_info; print('fmicl_engine._C:', e._C.__file__, '| with_cuda', i['with_cuda'], '| dali', i['dali_version'] or 'none')" \
  || failed+=(import)

step "2. GPU tests (pytest -m cuda)"
mapfile -t cuda_tests < <(grep -rlE --include='test_*.py' 'mark\.cuda' tests | sort)
echo "files: ${cuda_tests[*]}"
timeout 240 "$PY" -m pytest -q -m cuda -p no:cacheprovider -rs "${cuda_tests[@]}" > "$out/pytest.log" 2>&1
rc=$?
tail -n 25 "$out/pytest.log"
[[ $rc == 0 || $rc == 5 ]] || failed+=("pytest($rc)")

step "3. training benchmark"
if [[ $gpu == 1 ]]; then
  sizes=(--steps "${GPU_CHECK_STEPS:-300}" --batch-size "${GPU_CHECK_BATCH:-256}")
else
  sizes=(--smoke)
fi
rm -f "$out/bench/results.jsonl"
timeout 300 "$PY" engine/bench/train.py --out "$out/bench" --precision bf16 "${sizes[@]}" || failed+=(bench-bf16)
if (( SECONDS < ${GPU_CHECK_BUDGET_S:-300} )); then
  [[ $gpu == 1 ]] && sizes=(--steps 100 --batch-size "${GPU_CHECK_BATCH:-256}")
  timeout 150 "$PY" engine/bench/train.py --out "$out/bench" --precision fp32 "${sizes[@]}" || failed+=(bench-fp32)
else
  echo "skipping the fp32 run: ${SECONDS}s used"
fi
for run in "$out"/bench/*/; do  # the metric lines, one folder up (the device returns two levels)
  [[ -f $run/metrics.jsonl ]] && cp "$run/metrics.jsonl" "$out/bench/$(basename "$run").metrics.jsonl"
done

step "summary"
if [[ -f $out/bench/results.jsonl ]]; then
  "$PY" -c "
import json, sys
sys.path.insert(0, 'engine/bench')
import train
train.print_table([json.loads(line) for line in open(sys.argv[1])])" "$out/bench/results.jsonl"
fi
if (( ${#failed[@]} )); then
  echo "gpu_check: FAILED: ${failed[*]} (${SECONDS}s; logs in $out)"
  exit 1
fi
echo "gpu_check: ok (${SECONDS}s; logs in $out)"
