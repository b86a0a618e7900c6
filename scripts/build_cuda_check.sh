#!/usr/bin/env bash
# Compile-checks the extension WITH the CUDA kernels (cpp/cuda/*.cu, and the DALI operators' GPU
# backend when DALI is installed), also on a machine without a GPU. Builds into its own folder
# (default build/cuda-check) and never touches the installed extension. FMICL_CUDA=ON: a CUDA
# toolkit of torch's CUDA major is required (cmake/cuda.cmake finds it; a failed check is a
# CMake error saying why).
#
#   scripts/build_cuda_check.sh [build-dir]
#
# Env: CUDA_HOME (optional: the toolkit to use when nvcc on PATH is not the one),
#      FMICL_CUDA_ARCH (default 90: one architecture keeps a .cu file at ~30 s on 2 cores),
#      FMICL_BUILD_JOBS (default 2), PYTHON (default python).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${1:-$repo/build/cuda-check}"
arch="${FMICL_CUDA_ARCH:-90}"
python="${PYTHON:-python}"

generator=()
if command -v ninja >/dev/null; then generator=(-G Ninja); fi
cmake -S "$repo" -B "$build_dir" "${generator[@]}" \
  -DFMICL_CUDA=ON \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_ARCHITECTURES="$arch" \
  -DPython_EXECUTABLE="$(command -v "$python")"
cmake --build "$build_dir" -j "${FMICL_BUILD_JOBS:-2}"

# The device code is really in each library: its fatbinary section and the kernels' host stubs.
# _C always; libfmicl_dali.so (the DALI operators) when DALI is installed.
for pattern in '_C*.so' 'libfmicl_dali.so'; do
  module="$(find "$build_dir" -maxdepth 1 -name "$pattern" | head -n 1)"
  if [[ -z "$module" && "$pattern" == libfmicl_dali.so ]]; then
    echo "build_cuda_check: no DALI operators built (DALI not installed)"
    continue
  fi
  echo "build_cuda_check: built $module"
  fatbin_hex="$(objdump -h "$module" | awk '$2 == ".nv_fatbin" {print $3}')"
  if [[ -z "$fatbin_hex" && "$pattern" == libfmicl_dali.so ]]; then
    echo "  no device code: the DALI operators have their CPU backend only (DALI's CUDA major is not the toolkit's; see the configure log)"
    continue
  fi
  if [[ -z "$fatbin_hex" ]]; then
    echo "build_cuda_check: no .nv_fatbin section in $module: no device code was compiled in" >&2
    exit 1
  fi
  echo "  .nv_fatbin section: $((16#$fatbin_hex)) bytes of device code"
  # One host stub per kernel instantiation; count them per kernel template.
  nm "$module" | grep -oE '__device_stub__[A-Za-z0-9_]*E8__handle' | sort -u | grep -oE '[a-z_]+_kernel' | sort | uniq -c \
    | awk '{print "  " $2 ": " $1 " instantiations"}' || true
done
