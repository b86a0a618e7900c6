"""Encoders and projector: shapes, feature widths, input channels."""

import pytest
import torch

from fmicl_engine.models import build_model


def test_digits_cnn_shapes():
    model = build_model("digits_cnn", in_channels=1, cnn_width=8, projector_hidden_dim=32, projector_out_dim=16)
    features, embeddings = model(torch.randn(5, 1, 16, 16))
    assert features.shape == (5, 32) and embeddings.shape == (5, 16)
    assert model.encoder.out_dim == 32


@pytest.mark.parametrize("arch, width", [("resnet18", 512), ("resnet50", 2048)])
def test_torchvision_resnets_without_weights(arch, width):
    torch.manual_seed(0)
    model = build_model(arch, in_channels=1, projector_hidden_dim=8, projector_out_dim=4).eval()
    assert model.encoder.out_dim == width and model.encoder.conv1.in_channels == 1
    with torch.no_grad():
        features, embeddings = model(torch.randn(2, 1, 32, 32))
    assert features.shape == (2, width) and embeddings.shape == (2, 4)
    assert build_model(arch, in_channels=3, projector_hidden_dim=8, projector_out_dim=4).encoder.conv1.in_channels == 3


def test_same_seed_same_initialisation_and_unknown_arch():
    torch.manual_seed(1)
    a = build_model("digits_cnn", in_channels=1)
    torch.manual_seed(1)
    b = build_model("digits_cnn", in_channels=1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ValueError, match="unknown arch 'vit'"):
        build_model("vit", in_channels=1)
