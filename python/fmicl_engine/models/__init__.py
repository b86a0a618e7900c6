"""Encoders (digits_cnn, torchvision ResNets) with a SimCLR projector head."""

from fmicl_engine.models.encoders import ARCHITECTURES, DigitsCNN, Projector, SSLModel, build_model

__all__ = ["ARCHITECTURES", "DigitsCNN", "Projector", "SSLModel", "build_model"]
