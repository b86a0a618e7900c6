#!/usr/bin/env bash
# Installs fmicl-engine (editable) into the active Python environment. Safe to repeat: what is
# already installed is kept, and the extension rebuilds incrementally in build/.
#
# torch is never replaced: an existing torch (e.g. a GPU server's) is used as is; otherwise the
# pinned CUDA 13 build is installed. The extension is compiled against it with
# --no-build-isolation, because an isolated build environment would pull a second torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PIP_ROOT_USER_ACTION=ignore
pip_install() { "$PYTHON" -m pip install --quiet --disable-pip-version-check "$@"; }

if ! "$PYTHON" -c "import torch, torchvision" 2>/dev/null; then
  pip_install "torch==2.14.1" "torchvision==0.29.1"
fi
pip_install "scikit-build-core>=0.10" "pybind11>=2.12" numpy scikit-learn tqdm pillow tensorboard pytest \
  "tomli>=2; python_version < '3.11'"
# DALI: the engine's image pipeline (CPU here, GPU on servers). x86_64 Linux wheels only. The
# project's own DALI operators (cpp/dali) compile against DALI's headers, which include the CUDA
# runtime's: these three header wheels (~4 MB; torch's CUDA 13 build already has the first) serve
# without a CUDA toolkit.
if [ "$(uname -sm)" = "Linux x86_64" ]; then
  pip_install "nvidia-dali-cuda130==2.4.0" \
    "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-crt==13.0.*" "nvidia-cuda-cccl==13.0.*"
fi
# FMICL_CUDA=ON in the environment also compiles the CUDA kernels (needs a CUDA toolkit).
pip_install --no-build-isolation -e .
"$PYTHON" -c "import fmicl_engine; print('fmicl-engine', fmicl_engine.__version__, 'installed')"
