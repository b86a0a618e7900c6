#!/usr/bin/env bash
# The GPU check: the one script a session with a GPU runs first, in one go, in under 8 minutes on
# one H100/H200 (GPU_CHECK_BUDGET_S, 450 s: each step's time cap is cut to what is left, and an
# optional step that would not fit is skipped and says so). It writes ONE Markdown report,
# gpu_check.md, a section ready to paste into docs/BENCHMARKS.md: the machine, the versions, each
# step's status and time, and the benchmarks' tables.
#
#   bash scripts/gpu_check.sh            # on the GPU machine (OUT: its output folder)
#   bash scripts/gpu_check.sh --cpu      # CPU mode, = GPU_CHECK_CPU_ONLY=1 (also the mode without a GPU)
#
# Steps (GPU mode; expected time on one H200 in brackets, cap in the code; without a build
# ~90 s more are left, which the loss ladder and the profile sweep's later rows take):
# 1. build  [~1.5 min] fmicl_engine._C with the CUDA kernels, by scripts/build_cuda_check.sh
#           (sm_XY of this GPU), unless the importable extension has them. The module is staged
#           with a copy of the Python package under build/gpu-check/stage and put first on
#           PYTHONPATH (an editable install, where there is one, still wins: then install with
#           FMICL_CUDA=ON).
# 2. tests  [~1 min] the CUDA tests against the float64 reference: `pytest -m cuda` on the test
#           files that mark any (tests/loss/test_cuda_pairwise.py, tests/data/test_dali_color.py).
# 3. loss   [~2.3 min] engine/bench/loss.py on CUDA, fmicl-kl and infonce, d = 128: 2N = 8,192
#           doubling while it fits (--ladder) and the time allows (--time-budget): the eager
#           reference until it runs out of memory, torch.compile of it (dynamic shapes: one
#           compilation per objective), the fused op; time and peak memory; the report states the
#           largest 2N each backend held. (Was ~2.5 min: the ladder's last rung, the slowest, goes
#           first when time is short.)
# 4. data   [~1 min, only with DALI] engine/bench/data.py --device gpu at 224 px: DALI GPU two-view
#           images/s against the torchvision DataLoader (8 workers). The device machine has no
#           DALI (and no network): the step is skipped and the report says so. Measuring it there
#           is a separate, manual step: carry DALI's wheels in parts (a call carries at most
#           64 MiB). Here, in the repository root:
#             echo /.dali/ >> .git/info/exclude; mkdir -p .dali
#             python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#               --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .dali \
#               nvidia-dali-cuda130==2.4.0 nvidia-libnvcomp-cu13==5.3.0.16 "nvidia-nvimgcodec-cu13<0.10" \
#               astunparse gast optree nvtx makefun "libcst~=1.8"
#             # ... and the wheels of nvidia-nvimgcodec-cu13's [all] extra (its METADATA names them)
#             (cd .dali && for w in *.whl; do split -b 60M "$w" "$w.part."; rm "$w"; done)
#           Then one device call per part, carry [".dali/<that part>"] and the command `true`: ignored
#           files stay in the machine's copy between calls, but only while it is warm (30 s after a
#           call), so make the calls back to back. The last call joins, installs and runs:
#             cd .dali && for p in *.part.aa; do cat "${p%.aa}".* > "${p%.part.aa}"; done && cd .. &&
#             python3 -m pip install -q --no-index --no-deps --target .dali/site .dali/*.whl &&
#             PYTHONPATH=$PWD/.dali/site bash scripts/gpu_check.sh
#           (the build step then also builds the DALI operators against it). DALI's wheel alone is
#           several hundred MB (476 MB installed): ~10 calls and minutes of the session's device time.
# 5. profile [~2.3 min] engine/bench/profile_sweep.py: `fmicl-engine profile --synthetic-data` of
#           the ImageNet configs (bf16, channels_last), ResNet-50 then ResNet-18 at 224 px, per-GPU
#           batch GPU_CHECK_PROFILE_BATCHES (256 128 64, in that order: the largest batch, where the
#           loss weighs most, first), f-MICL KL, f-MICL JS and InfoNCE, fused op and PyTorch
#           reference; 10 steps after 3 per run (~12 s a ResNet-50 run at 256), under --time-budget:
#           the rows that do not fit are skipped and the table says so. Where each step's time goes
#           (forward, loss, backward, optimiser), the fused-vs-reference ratios, and the full
#           ResNet-50 profile table.
# 6. train  [~0.5 min, optional; ~2 min with DALI] engine/bench/train.py, ResNet-50, bf16,
#           channels_last, GPU_CHECK_BATCH images. With DALI its `imagefolder` mode (the engine end
#           to end on generated JPEGs, GPU_CHECK_STEPS steps): required. Without DALI (the device
#           machine) its `synthetic` mode measures what the profile sweep's ResNet-50 rows already
#           measure (the engine's model, loss, optimiser and step on random tensors on the GPU),
#           so it gets the time that is left, if any, for 100 steps as a cross-check over a longer
#           run (TFLOP/s), and no fp32 run: the sweep took the time of the former 300 bf16 + 100
#           fp32 steps.
# Budget on one H200 without DALI, kernels to build (s; cap, inner --time-budget): probe ~10,
# build ~90 (240), tests ~60 (180), loss ~140 (140, 110), data skipped, profile ~140 (140, 115:
# ResNet-50 at 256 ~12 s a run x 6, ResNet-18 at 256 ~5 s x 6, then batch 128 while it fits),
# training the rest if >= 45 s (60), report ~5: ~445 of 450. Without the build: ~90 s more, which
# the loss ladder cannot use (its cap) and the training cross-check takes.
#
# CPU mode (GPU_CHECK_CPU_ONLY=1 or --cpu; CI runs it through tests/test_gpu_check.py, ~60 s here):
# the same steps' CPU-reachable part, so that the script cannot rot. The build only if the
# extension lacks the CUDA kernels and an nvcc whose major version matches torch's CUDA is there
# (skipped otherwise: the normal install may already build them; ~4 min on 2 cores); the emulated
# CUDA tests (tests/loss/test_cuda_emulated.py: the kernels compiled as C++ and run on the CPU,
# against the CPU op in float64; a quick subset); the benchmarks' smoke forms (loss: 2N = 256 to
# 1024 without torch.compile; data: 32 JPEGs at 64 px, one thread, DALI's CPU backend when
# installed; profile: ResNet-18, 32 px, batch 4, f-MICL KL, both backends, 2 steps after 1, fp32;
# train: ResNet-18 on random tensors, 3 steps, fp32). Same report.
#
# Output under $OUT (else build/gpu-check/out), at most 8 files (the device tool's limit):
# gpu_check.md (the report), gpu_check.log (all output), build.log, pytest.log, loss.jsonl,
# data.jsonl, train.jsonl, profile.jsonl (one JSON line per row; profile.jsonl's hold each run's full
# profile report). Work files (step records, run folders with the training runs' metrics.jsonl,
# generated images) go under build/gpu-check/work.
# Env: PYTHON (python3), GPU_CHECK_CPU_ONLY (0), GPU_CHECK_BUDGET_S (450 on a GPU),
#      GPU_CHECK_BUILD (auto | 1: always | 0: never), GPU_CHECK_STEPS (300: train.py with DALI; 100
#      without), GPU_CHECK_BATCH (256), GPU_CHECK_PROFILE_BATCHES ("256 128 64"),
#      GPU_CHECK_LOSS_MAX (1048576: the ladder's largest 2N), GPU_CHECK_EMULATED_K (the pytest -k
#      expression of the emulated tests run in CPU mode; default a quick subset, empty: all).
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

mode=gpu
[[ ${GPU_CHECK_CPU_ONLY:-0} == 1 ]] && mode=cpu
for arg in "$@"; do
  case $arg in
    --cpu) mode=cpu ;;
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check: unknown argument $arg (--cpu, --help)" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-python3}
out=${OUT:-$repo/build/gpu-check/out}
build_dir=$repo/build/gpu-check
work=$build_dir/work
work_rel=build/gpu-check/work  # in the commands the report shows
steps_tsv=$work/steps.tsv
mkdir -p "$out" "$work"
rm -rf "$out"/bench "$work"/train "$work"/*.md "$steps_tsv"
rm -f "$out"/{gpu_check.md,gpu_check.log,build.log,pytest.log,loss.jsonl,data.jsonl,train.jsonl,profile.jsonl}
exec > >(tee -a "$out/gpu_check.log") 2>&1
tee_pid=$!
trap 'exec >&- 2>&-; wait "$tee_pid"' EXIT  # let tee write the last lines before the script ends
export PYTHONUNBUFFERED=1
failed=()   # everything that failed: the exit status
outside=()  # what failed outside the report's step table
step() { echo; echo "=== [$(date +%T), ${SECONDS}s] $*"; }

# Time: the budget, and each step's cap = min(its own cap, what is left minus a reserve for the
# steps after it). 0 = the budget is spent.
budget_s=${GPU_CHECK_BUDGET_S:-450}
[[ $mode == cpu ]] && budget_s=${GPU_CHECK_BUDGET_S:-0}  # CPU mode: the caps alone
cap() {  # cap OWN RESERVE
  local c=$1
  if (( budget_s > 0 )); then
    local left=$(( budget_s - SECONDS - $2 ))
    (( left < c )) && c=$left
  fi
  (( c < 0 )) && c=0
  echo "$c"
}
# record NAME STATUS SECONDS CAP NOTES: one line of the report's step table.
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5//$'\t'/ }" >> "$steps_tsv"; }
# timed NAME CAP COMMAND...: runs it under `timeout CAP`; sets rc, dt and status.
timed() {
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  if (( limit <= 0 )); then rc=-1 dt=0 status="skipped"; return; fi
  timeout --kill-after=15 "$limit" "$@"
  rc=$?
  dt=$(( SECONDS - start ))
  case $rc in
    0) status=ok ;;
    124 | 137) status="timed out"; failed+=("$name(timeout ${limit}s)") ;;
    *) status="FAILED (rc $rc)"; failed+=("$name($rc)") ;;
  esac
}

step "machine ($mode mode)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
# One probe (each Python start with torch costs seconds): prints the versions, then sets gpu,
# torch_cuda, dali (its version, without importing it) and with_cuda (the importable extension's).
probe=$("$PY" - <<'PY'
import sys
from importlib import metadata
import torch
gpu = torch.cuda.is_available()
dali = ""
for name in ("nvidia-dali-cuda130", "nvidia-dali-cuda120"):
    try:
        dali = metadata.version(name)
        break
    except metadata.PackageNotFoundError:
        pass
try:
    import fmicl_engine._ext as e
    with_cuda, loads = int(bool(e._C.build_info["with_cuda"])), 1
except Exception as err:  # stale or missing: the build step decides
    print(f"fmicl_engine._C does not load: {str(err).splitlines()[0][:200]}", file=sys.stderr)
    with_cuda, loads = 0, 0
print(f"python {sys.version.split()[0]} | torch {torch.__version__} | cuda {torch.version.cuda} | GPU: "
      f"{torch.cuda.get_device_name() if gpu else 'none'} | DALI {dali or 'not installed'}", file=sys.stderr)
print(f"gpu={int(gpu)} torch_cuda={(torch.version.cuda or '').split('.')[0]} dali={dali} "
      f"with_cuda={with_cuda} loads={loads}")
PY
) || { echo "gpu_check: python or torch does not start ($PY)"; probe=""; }
gpu=0 torch_cuda="" dali="" with_cuda=0 loads=0
for kv in $probe; do
  case $kv in gpu=* | torch_cuda=* | dali=* | with_cuda=* | loads=*) declare "$kv" ;; esac
done
if [[ $mode == gpu && $gpu != 1 ]]; then
  echo "no GPU: running the CPU mode (the smoke forms)"
  mode=cpu
  budget_s=0
fi
echo "mode $mode, budget ${budget_s}s (0: none)"

# ------------------------------------------------------------------------------------------------
step "1. build"
# The nvcc the build would find (cmake/cuda.cmake looks in this order and takes the first of
# torch's CUDA major): its major version decides whether the CPU mode builds.
nvcc_major="" nvcc_seen=""
for c in "${CUDACXX:-}" "${CUDA_HOME:+$CUDA_HOME/bin/nvcc}" "${CUDA_PATH:+$CUDA_PATH/bin/nvcc}" \
         "$(command -v nvcc || true)" /usr/local/cuda/bin/nvcc; do
  [[ -n $c && -x $c ]] || continue
  major=$("$c" --version 2>/dev/null | sed -n 's/.*release \([0-9]*\)\..*/\1/p' | head -n 1)
  [[ -n $major ]] || continue
  nvcc_seen+="${nvcc_seen:+, }$major.x"
  if [[ $major == "$torch_cuda" || -z $nvcc_major ]]; then nvcc_major=$major; fi
  [[ $major == "$torch_cuda" ]] && break
done
build=${GPU_CHECK_BUILD:-auto}
why=""
if [[ $build == auto ]]; then
  if [[ $with_cuda == 1 ]]; then
    build=0 why="the importable extension has the CUDA kernels"
  elif [[ $mode == gpu ]]; then
    build=1
  elif [[ -z $nvcc_major ]]; then
    build=0 why="no nvcc (set CUDA_HOME or CUDACXX to build the kernels)"
  elif [[ $nvcc_major != "$torch_cuda" ]]; then
    build=0 why="no nvcc of torch's CUDA ${torch_cuda:-none}.x (found ${nvcc_seen})"
  else
    build=1
  fi
elif [[ $build == 0 ]]; then
  why="GPU_CHECK_BUILD=0"
fi
if [[ $build == 1 ]]; then
  if [[ $gpu == 1 && -z ${FMICL_CUDA_ARCH:-} ]]; then
    FMICL_CUDA_ARCH=$("$PY" -c "import torch; print('%d%d' % torch.cuda.get_device_capability())")
    export FMICL_CUDA_ARCH
  fi
  limit=$(cap 240 200)
  [[ $mode == cpu ]] && limit=900  # 2 cores: ~4 min for a first build
  echo "building with nvcc ${nvcc_major:-?}.x, sm_${FMICL_CUDA_ARCH:-90}, into $build_dir (log: build.log; cap ${limit}s)"
  FMICL_BUILD_JOBS=${FMICL_BUILD_JOBS:-$(nproc)} PYTHON=$PY timed build "$limit" scripts/build_cuda_check.sh \
    "$build_dir" > "$out/build.log" 2>&1
  grep '^build_cuda_check\|^  ' "$out/build.log"
  [[ $status == ok ]] || tail -n 40 "$out/build.log"
  fatbin=$(sed -n 's/^  \.nv_fatbin section: \([0-9]*\) bytes.*/\1/p' "$out/build.log" | head -n 1)
  record build "$status" "$dt" "$limit" "sm_${FMICL_CUDA_ARCH:-90}, nvcc ${nvcc_major:-?}.x, ${build_dir#"$repo"/}${fatbin:+, .nv_fatbin $fatbin bytes}"
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
  echo "skipped: $why"
  record build skipped 0 0 "$why"
fi
# The extension the next steps load (the staged build, after a build): it must load.
if [[ $build == 1 ]]; then
  if "$PY" -c "import fmicl_engine._ext as e; i = e._C.build_info; print('fmicl_engine._C:', e._C.__file__, '| with_cuda', i['with_cuda'], '| dali', i['dali_version'] or 'none')"; then
    loads=1
  else
    loads=0
  fi
fi
if [[ $loads != 1 ]]; then
  failed+=(import); outside+=("fmicl_engine._C does not load")
fi

# ------------------------------------------------------------------------------------------------
if [[ $mode == gpu ]]; then
  step "2. CUDA tests against the float64 reference (pytest -m cuda)"
  mapfile -t tests < <(grep -rlE --include='test_*.py' 'mark\.cuda' tests | sort)
  select=(-m cuda)
  sel_note="-m cuda"
else
  step "2. emulated CUDA tests (the kernels compiled as C++, run on the CPU)"
  tests=(tests/loss/test_cuda_emulated.py)
  # A quick subset by default (the compilation, ~15 s, is most of it; CI's full pytest run has
  # the rest): every objective's values and gradients against the CPU op in float64, the
  # alpha = 0 overflow case, the schemas. GPU_CHECK_EMULATED_K= (empty) runs them all.
  k=${GPU_CHECK_EMULATED_K-equals_cpu_float64 or alpha_0 or schemas}
  select=()
  sel_note="all"
  if [[ -n $k ]]; then select=(-k "$k"); sel_note="-k \"$k\""; fi
fi
echo "files: ${tests[*]}"
tests_limit=$(cap 180 200)
[[ $mode == cpu ]] && tests_limit=300
tests_name=$([[ $mode == gpu ]] && echo 'CUDA tests' || echo 'emulated CUDA tests')
run_tests() {
  timed tests "$tests_limit" "$PY" -m pytest -q "${select[@]}" -p no:cacheprovider -rs "${tests[@]}" > "$out/pytest.log" 2>&1
  [[ $rc == 5 ]] && status="FAILED (no tests collected)"
  printf '%s\t%s\t%s\n' "$rc" "$status" "$dt" > "$work/tests.result"
}
finish_tests() {  # reads run_tests' result (from a background job in CPU mode) and records it
  local rc_ status_ dt_
  IFS=$'\t' read -r rc_ status_ dt_ < "$work/tests.result" || { rc_=1 status_="FAILED (no result)" dt_=0; }
  [[ $rc_ == 0 || $status_ == skipped ]] || failed+=("tests($rc_)")
  echo; echo "=== [$(date +%T), ${SECONDS}s] $tests_name: $status_ (pytest.log)"
  tail -n 25 "$out/pytest.log"
  local summary
  summary=$(grep -E '^(=+ )?[0-9]+ (passed|failed|skipped|error)|no tests ran' "$out/pytest.log" | tail -n 1 | sed 's/=//g; s/^ *//; s/ *$//')
  record "$tests_name" "$status_" "$dt_" "$tests_limit" "${summary:-see pytest.log}; ${tests[*]} ${sel_note}"
}
rm -f "$work/tests.result"
if [[ $mode == gpu ]]; then
  ( run_tests )
  finish_tests
else
  # On the CPU the tests (mostly one single-threaded compilation) run beside the benchmarks'
  # smoke forms, whose times mean nothing here anyway: the mode takes ~2/3 of the serial time.
  run_tests &
  tests_pid=$!
  echo "running in the background (pid $tests_pid; pytest.log)"
fi

# ------------------------------------------------------------------------------------------------
step "3. loss benchmark"
if [[ $mode == gpu ]]; then
  # What the later steps need: the profile sweep 140 s; with DALI also data 90 s and training 120 s.
  limit=$(cap 140 $(( 140 + (${#dali} ? 210 : 0) )))
  inner=$(( limit - 30 ))  # python start, the floors, a last step past the prediction
  args=(--device cuda --sizes 8192 --ladder "${GPU_CHECK_LOSS_MAX:-1048576}" --objectives fmicl-kl infonce
        --dims 128 --repeats 5 --repeat-max 65536 --floor-max 32768 --compile-dynamic --time-budget "$inner")
else
  limit=120 inner=60
  args=(--device cpu --sizes 256 --ladder 1024 --objectives fmicl-kl infonce --dims 64 --repeats 1
        --reference-max 512 --no-compile --time-budget "$inner" --threads 2)
fi
if (( inner < 20 )); then
  status=skipped dt=0
  record "loss benchmark" skipped 0 "$limit" "time budget: ${SECONDS}s used"
else
  timed loss "$limit" "$PY" engine/bench/loss.py "${args[@]}" --json "$out/loss.jsonl" --markdown "$work/loss.md"
  record "loss benchmark" "$status" "$dt" "$limit" "loss.py ${args[*]}"
fi

# ------------------------------------------------------------------------------------------------
step "4. data benchmark"
if [[ $mode == gpu && -z $dali ]]; then
  why="DALI is not installed (the device machine has none; scripts/gpu_check.sh says how to carry it)"
  echo "skipped: $why"
  record "data benchmark" skipped 0 0 "$why"
else
  if [[ $mode == gpu ]]; then
    limit=$(cap 90 260)
    args=(--device gpu --sizes 224 --images 2048 --batch-size 128 --threads 8 --warmup 2
          --root "$work_rel/data-images")
  else
    limit=120
    args=(--device cpu --sizes 64 --images 32 --batch-size 8 --threads 1 --warmup 1
          --sampler-samples 10000 --root "$work_rel/data-smoke")
  fi
  timed data "$limit" "$PY" engine/bench/data.py "${args[@]}" --json "$out/data.jsonl" --markdown "$work/data.md"
  note="data.py ${args[*]}"
  if [[ -n $dali ]]; then note+=" (DALI $dali)"; else note+=" (no DALI: the torchvision rows only)"; fi
  record "data benchmark" "$status" "$dt" "$limit" "$note"
fi

# ------------------------------------------------------------------------------------------------
step "5. step profile sweep"
if [[ $mode == gpu ]]; then
  limit=$(cap 140 $(( ${#dali} ? 120 : 0 )))
  inner=$(( limit - 25 ))  # python and CUDA start (~10 s), a run past its prediction
  read -r -a batches <<< "${GPU_CHECK_PROFILE_BATCHES:-256 128 64}"
  args=(--archs resnet50 resnet18 --batches "${batches[@]}" --objectives fmicl-kl fmicl-js infonce
        --steps 10 --warmup 3 --time-budget "$inner")
else
  # ResNet-18, 32 px, batch 4, 2 steps after 1, fp32, f-MICL KL with both backends: the path.
  limit=90 inner=60
  args=(--smoke --threads 2 --time-budget "$inner")
fi
if (( inner < 30 )); then
  record "step profile" skipped 0 "$limit" "time budget: ${SECONDS}s used of ${budget_s}s"
else
  timed profile "$limit" "$PY" engine/bench/profile_sweep.py "${args[@]}" --json "$out/profile.jsonl" \
    --markdown "$work/profile.md"
  record "step profile" "$status" "$dt" "$limit" "profile_sweep.py ${args[*]}"
fi

# ------------------------------------------------------------------------------------------------
step "6. training benchmark"
train_out=$work/train
optional=0
if [[ $mode == gpu ]]; then
  if [[ -n $dali ]]; then  # imagefolder: the engine end to end, which nothing else here measures
    sizes=(--steps "${GPU_CHECK_STEPS:-300}" --batch-size "${GPU_CHECK_BATCH:-256}")
    limit=$(cap 150 10)
  else  # synthetic: what the profile sweep measured; a cross-check in the time left
    sizes=(--data synthetic --steps "${GPU_CHECK_STEPS:-100}" --batch-size "${GPU_CHECK_BATCH:-256}")
    limit=$(cap 60 5)
    optional=1
    (( limit < 45 )) && limit=0
  fi
else
  # ResNet-18 on random tensors (the machine's path without DALI), 32 px, 3 steps, fp32 (bf16
  # autocast is twice as slow on a CPU): the path, not the speed.
  sizes=(--smoke --data synthetic --image-size 32 --batch-size 4)
  limit=120
fi
precision=$([[ $mode == gpu ]] && echo bf16 || echo fp32)
timed "train-$precision" "$limit" "$PY" engine/bench/train.py --out "$train_out" --precision "$precision" "${sizes[@]}"
note="train.py --precision $precision ${sizes[*]}"
if [[ $status == skipped ]]; then
  note="time budget: ${SECONDS}s used of ${budget_s}s (optional without DALI: the profile sweep measured the synthetic step)"
elif [[ $optional == 1 && $status == "timed out" ]]; then  # the optional run: out of time is no failure
  unset 'failed[-1]'
  status="timed out (optional)"
fi
record "training $precision" "$status" "$dt" "$limit" "$note"
[[ -f $train_out/results.jsonl ]] && cp "$train_out/results.jsonl" "$out/train.jsonl"

if [[ $mode == cpu ]]; then
  wait "$tests_pid"
  finish_tests
fi

# ------------------------------------------------------------------------------------------------
step "report"
files=()
for f in gpu_check.log build.log pytest.log loss.jsonl data.jsonl train.jsonl profile.jsonl; do
  [[ -f $out/$f ]] && files+=("$f")
done
command_line="bash scripts/gpu_check.sh$([[ $mode == cpu ]] && echo ' --cpu')"
also=()
for f in "${outside[@]}"; do also+=(--failed "$f"); done
"$PY" engine/bench/report.py --mode "$mode" --steps "$steps_tsv" --out "$out/gpu_check.md" \
  --loss "$work/loss.md" --loss-json "$out/loss.jsonl" --data "$work/data.md" --profile "$work/profile.md" \
  --train "$out/train.jsonl" --budget "$budget_s" \
  --seconds "$SECONDS" --command "$command_line" "${also[@]}" --files "${files[@]}" \
  || failed+=(report)
if [[ -f $out/gpu_check.md ]]; then
  sed -n '/^### Steps/,/^### Fused/p' "$out/gpu_check.md" | sed '$d'
fi
if (( ${#failed[@]} )); then
  echo "gpu_check: FAILED: ${failed[*]} (${SECONDS}s; report $out/gpu_check.md)"
  exit 1
fi
echo "gpu_check: ok (${SECONDS}s; report $out/gpu_check.md)"
