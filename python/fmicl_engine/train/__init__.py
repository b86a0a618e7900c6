"""Pretraining: the loop, the lr schedule, optimisers (incl. LARS) and atomic checkpoints."""

from fmicl_engine.train.checkpoint import load_checkpoint, save_checkpoint
from fmicl_engine.train.loop import run
from fmicl_engine.train.optim import LARS, build_optimizer, parameter_groups
from fmicl_engine.train.schedule import learning_rate

__all__ = ["LARS", "build_optimizer", "learning_rate", "load_checkpoint", "parameter_groups", "run",
           "save_checkpoint"]
