"""Encoders and the projector head: ``SSLModel(x) -> (features, embeddings)``.

The encoder's features are what a linear probe evaluates; the projector's output is what the
objective sees (SimCLR's split: the head absorbs the invariances the loss imposes).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torchvision

ARCHITECTURES = ("digits_cnn", "resnet18", "resnet50")


def conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class DigitsCNN(nn.Module):
    """Three conv blocks (width, 2 width, 4 width; the last two stride 2) and global average pooling:
    16x16 input -> 4x4 maps -> a 4*width feature vector. Small enough to pretrain in a minute on CPU."""

    def __init__(self, in_channels: int = 1, width: int = 32):
        super().__init__()
        self.blocks = nn.Sequential(
            conv_bn_relu(in_channels, width, stride=1),
            conv_bn_relu(width, 2 * width, stride=2),
            conv_bn_relu(2 * width, 4 * width, stride=2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = 4 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # batch x C x H x W -> batch x out_dim
        return self.pool(self.blocks(x)).flatten(1)


def torchvision_resnet(arch: str, in_channels: int) -> nn.Module:
    """torchvision's ResNet (weights=None: pretraining starts from scratch), classifier removed."""
    net = getattr(torchvision.models, arch)(weights=None)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    net.out_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net


class Projector(nn.Module):
    """SimCLR's (v1) head: Linear -> ReLU -> Linear.

    No BatchNorm1d (SimCLR v2 has one): torch's CPU batch_norm on 2-D inputs sums in a
    thread-count-dependent order, which would make the loss differ in the last bits between 1 and
    2 threads; the encoder's BatchNorm2d does not (tests/train/test_train_run.py checks both)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # batch x in_dim -> batch x out_dim
        return self.net(h)


class SSLModel(nn.Module):
    def __init__(self, encoder: nn.Module, projector: Projector):
        super().__init__()
        self.encoder = encoder
        self.projector = projector

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder(x)
        return features, self.projector(features)


def build_model(arch: str, *, in_channels: int, cnn_width: int = 32, projector_hidden_dim: int = 256,
                projector_out_dim: int = 64) -> SSLModel:
    """The encoder named ``arch`` with a projector; initialised from torch's global RNG (seed it first)."""
    if arch == "digits_cnn":
        encoder = DigitsCNN(in_channels, cnn_width)
    elif arch in ("resnet18", "resnet50"):
        encoder = torchvision_resnet(arch, in_channels)
    else:
        raise ValueError(f"unknown arch {arch!r}; one of {', '.join(ARCHITECTURES)}")
    return SSLModel(encoder, Projector(encoder.out_dim, projector_hidden_dim, projector_out_dim))
