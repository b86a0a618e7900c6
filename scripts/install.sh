#!/usr/bin/env bash
# Installs fmicl-engine (editable) into the active Python environment. Safe to repeat: what is
# already installed is kept, and the extension rebuilds incrementally in build/.
#
# torch is never replaced: an existing torch (e.g. a GPU server's) is used as is; otherwise the
# pinned CUDA 13 build is installed. The extension is compiled against it with
# --no-build-isolation, because an isolated build environment would pull a second torch.
#
# The CUDA kernels are built when a CUDA toolkit of torch's CUDA major works here
# (FMICL_CUDA=AUTO, the default: the build log's "CUDA kernels:" line says why not otherwise);
# FMICL_CUDA=OFF skips them, FMICL_CUDA=ON requires them.
#
# DALI (the image pipeline) is the wheel for torch's CUDA major: nvidia-dali-cuda130 for a
# CUDA 13 torch, nvidia-dali-cuda120 for a CUDA 12 one. With a CPU-only torch, nvidia-dali-cuda130
# (its CPU pipelines need no GPU or CUDA install); the CUDA kernels are then not built, and a GPU
# data pipeline is refused when a config is validated. FMICL_DALI=OFF installs no DALI.
#
#   bash scripts/install.sh                 install
#   bash scripts/install.sh --dali-wheels   print the DALI requirements it would install, and exit
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DALI_VERSION=2.4.0
export PIP_ROOT_USER_ACTION=ignore
pip_install() { "$PYTHON" -m pip install --quiet --disable-pip-version-check "$@"; }

# The DALI wheel and the CUDA runtime header wheels its headers need (~4 MB; the project's DALI
# operators compile against them without a CUDA toolkit), for torch's CUDA version ($1, e.g.
# "13.0", "12.8", or "" for a CPU-only torch). One requirement a line.
dali_requirements() {
  local cuda=${1:-13.0} major minor
  major=${cuda%%.*}
  minor=${cuda#*.}; minor=${minor%%.*}
  case "$major" in
    13) echo "nvidia-dali-cuda130==$DALI_VERSION"
        echo "nvidia-cuda-runtime==13.$minor.*"
        echo "nvidia-cuda-crt==13.$minor.*"
        echo "nvidia-cuda-cccl==13.$minor.*" ;;
    12) echo "nvidia-dali-cuda120==$DALI_VERSION"
        echo "nvidia-cuda-runtime-cu12==12.$minor.*"
        echo "nvidia-cuda-nvcc-cu12==12.$minor.*"   # crt/host_config.h
        echo "nvidia-cuda-cccl-cu12==12.$minor.*" ;;
    *)  echo "install.sh: no DALI $DALI_VERSION wheel for torch's CUDA $cuda (CUDA 12 and 13 only):" \
             "DALI not installed, so data.dataset = 'imagefolder' is unavailable" >&2 ;;
  esac
}
torch_cuda() { "$PYTHON" -c "import torch; print(torch.version.cuda or '')"; }

if [[ ${1:-} == --dali-wheels ]]; then
  dali_requirements "${FMICL_TORCH_CUDA-$(torch_cuda)}"
  exit
fi

if ! "$PYTHON" -c "import torch, torchvision" 2>/dev/null; then
  pip_install "torch==2.14.1" "torchvision==0.29.1"
fi
pip_install "scikit-build-core>=0.10" numpy scikit-learn tqdm pillow tensorboard matplotlib pytest \
  "tomli>=2; python_version < '3.11'"
# DALI: the engine's image pipeline (CPU here, GPU on servers). Linux wheels only.
if [[ $(uname -s) == Linux && ${FMICL_DALI:-AUTO} != OFF ]]; then
  cuda=$(torch_cuda)
  echo "install.sh: torch $("$PYTHON" -c 'import torch; print(torch.__version__)'), CUDA ${cuda:-none}:" \
       "DALI for CUDA $([[ -n $cuda ]] && echo "${cuda%%.*}" || echo "13 (CPU pipelines only)")"
  reqs=$(dali_requirements "$cuda")
  if [[ -n $reqs ]]; then
    mapfile -t dali <<< "$reqs"
    pip_install "${dali[@]}"
  fi
fi
pip_install --no-build-isolation -e .
"$PYTHON" -c "
import fmicl_engine, fmicl_engine._ext as e
i = e._C.build_info
print('fmicl-engine', fmicl_engine.__version__, 'installed: CUDA kernels', 'yes' if i['with_cuda'] else 'no',
      '| DALI operators', i['dali_version'] or 'no')"
