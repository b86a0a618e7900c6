#!/usr/bin/env bash
# Pretrain on one machine with one process per GPU (torchrun + DDP). Copy and adapt.
#
#   engine/launch/torchrun_single_node.sh --set data.imagefolder.root=/data/imagenet/train
#   GPUS=4 OUT=runs/kl-4gpu engine/launch/torchrun_single_node.sh --set data.imagefolder.root=...
#   GPUS=2 CONFIG=configs/digits_kl.toml OUT=runs/cpu2 engine/launch/torchrun_single_node.sh \
#       --set run.device=cpu                                        # no GPU: 2 CPU processes, gloo
#
# Set:
#   GPUS    processes on this machine: a number, or "gpu" (the default: one per visible GPU).
#           Without a GPU give a number and --set run.device=cpu.
#   CONFIG  the TOML config (default configs/imagenet_kl.toml).
#   OUT     the run folder. Rerunning the same command into the same OUT resumes from the newest
#           valid checkpoint there.
#   Further arguments go to `fmicl-engine run` (--set SECTION.KEY=VALUE ...).
# train.batch_size is the GLOBAL batch, split over the processes: changing GPUS keeps the
# optimisation (lr, schedule) the same.
#
# Stopping: send SIGUSR1 or SIGTERM (or Ctrl-C) to this script's PID (exec: it is torchrun's).
# torchrun forwards the signals named in --signals-to-handle to every worker (SIGUSR1 is not in
# its default list; the option needs torch >= 2.9); each worker writes a checkpoint at the next
# step boundary and exits 0. torchrun SIGKILLs workers still alive after its shutdown timeout
# (30 s; torch >= 2.12 reads TORCH_ELASTIC_SHUTDOWN_TIMEOUT).
set -euo pipefail

CONFIG=${CONFIG:-configs/imagenet_kl.toml}
OUT=${OUT:-runs/$(basename "$CONFIG" .toml)}
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-90}

# --standalone: a private rendezvous on a free local port (two jobs on one machine never clash).
# -m: the CLI as a module. (`$(which fmicl-engine)` works only where that is the Python console
# script itself; a pyenv shim is a shell script, which torchrun would run with Python.)
exec torchrun --standalone --nproc_per_node="${GPUS:-gpu}" \
  --signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 \
  -m fmicl_engine run "$CONFIG" --out "$OUT" "$@"
