"""Pretraining: the loop (one process or a torchrun job), the lr schedule, optimisers (incl. LARS)
and checkpoints that survive preemption."""

from fmicl_engine.train.checkpoint import CheckpointStore, load_checkpoint
from fmicl_engine.train.loop import run
from fmicl_engine.train.optim import LARS, build_optimizer, parameter_groups
from fmicl_engine.train.schedule import learning_rate

__all__ = ["CheckpointStore", "LARS", "build_optimizer", "learning_rate", "load_checkpoint", "parameter_groups",
           "run"]
