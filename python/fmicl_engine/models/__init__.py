"""Encoders (digits_cnn, torchvision ResNets with the ImageNet or CIFAR stem) with a SimCLR
projector head, and a synchronised BatchNorm for distributed runs on any device."""

from fmicl_engine.models.encoders import ARCHITECTURES, DigitsCNN, Projector, SSLModel, build_model
from fmicl_engine.models.sync_batchnorm import SyncBatchNorm, convert_sync_batchnorm

__all__ = ["ARCHITECTURES", "DigitsCNN", "Projector", "SSLModel", "SyncBatchNorm", "build_model",
           "convert_sync_batchnorm"]
