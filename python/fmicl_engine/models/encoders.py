"""Encoders and the projector head: ``SSLModel(x) -> (features, embeddings)``.

The encoder's features are what a linear probe evaluates; the projector's output is what the
objective sees (SimCLR's split: the head absorbs the invariances the loss imposes).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torchvision


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


def resnet_stem_conv(in_channels: int, kernel_size: int, stride: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, 64, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # as torchvision initialises its convs
    return conv


def torchvision_resnet(arch: str, in_channels: int, *, cifar_stem: bool = False) -> nn.Module:
    """torchvision's ResNet (weights=None: pretraining starts from scratch), classifier removed.

    ``cifar_stem``: SimCLR's stem for 32-96 px images, a 3x3 stride-1 conv and no max-pool. The
    ImageNet stem (7x7 stride-2 conv, then a stride-2 max-pool) would leave layer4 with 1x1 maps
    at 32 px; this one leaves 4x4."""
    net = getattr(torchvision.models, arch)(weights=None)
    if cifar_stem:
        net.conv1 = resnet_stem_conv(in_channels, kernel_size=3, stride=1)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = resnet_stem_conv(in_channels, kernel_size=7, stride=2)
    net.out_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net


# arch -> builder(in_channels, cnn_width) of an encoder with an ``out_dim`` attribute.
# cnn_width sizes digits_cnn only: torchvision's ResNets have fixed widths.
ARCHITECTURES: dict[str, Callable[[int, int], nn.Module]] = {
    "digits_cnn": lambda in_channels, cnn_width: DigitsCNN(in_channels, cnn_width),
    "resnet18": lambda in_channels, cnn_width: torchvision_resnet("resnet18", in_channels),
    "resnet50": lambda in_channels, cnn_width: torchvision_resnet("resnet50", in_channels),
    "resnet18_cifar": lambda in_channels, cnn_width: torchvision_resnet("resnet18", in_channels, cifar_stem=True),
    "resnet50_cifar": lambda in_channels, cnn_width: torchvision_resnet("resnet50", in_channels, cifar_stem=True),
}


class Projector(nn.Module):
    """SimCLR's MLP head: ``layers`` linear layers, each but the last followed by [BatchNorm1d ->]
    ReLU. layers=2 without BatchNorm is SimCLR v1's head, layers=3 with it SimCLR v2's; layers=1 is
    a single linear map. The output has no BatchNorm.

    BatchNorm is off by default: torch's CPU batch_norm on 2-D inputs sums in a
    thread-count-dependent order, which would make the loss differ in the last bits between 1 and
    2 threads; the encoder's BatchNorm2d does not (tests/train/test_train_run.py checks both)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, *, layers: int = 2, batchnorm: bool = False):
        super().__init__()
        if layers < 1:
            raise ValueError(f"projector layers must be >= 1, got {layers}")
        blocks: list[nn.Module] = []
        for _ in range(layers - 1):
            # a BatchNorm's shift makes the linear layer's bias redundant
            blocks.append(nn.Linear(in_dim, hidden_dim, bias=not batchnorm))
            if batchnorm:
                blocks.append(nn.BatchNorm1d(hidden_dim))
            blocks.append(nn.ReLU(inplace=True))
            in_dim = hidden_dim
        blocks.append(nn.Linear(in_dim, out_dim))
        self.net = nn.Sequential(*blocks)

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


def build_model(arch: str, *, in_channels: int, cnn_width: int = 32, projector_layers: int = 2,
                projector_hidden_dim: int = 256, projector_out_dim: int = 64,
                projector_batchnorm: bool = False) -> SSLModel:
    """The encoder named ``arch`` (a key of ARCHITECTURES) with a projector; initialised from
    torch's global RNG (seed it first)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}; one of {', '.join(ARCHITECTURES)}")
    encoder = ARCHITECTURES[arch](in_channels, cnn_width)
    projector = Projector(encoder.out_dim, projector_hidden_dim, projector_out_dim,
                          layers=projector_layers, batchnorm=projector_batchnorm)
    return SSLModel(encoder, projector)
