"""Encoders and projector: shapes, feature widths, input channels, stems, head layouts."""

import dataclasses

import pytest
import torch
import torch.nn as nn

from fmicl_engine.config.schema import ModelConfig
from fmicl_engine.models import ARCHITECTURES, Projector, build_model


def test_registry_matches_the_config_choices():
    arch = next(f for f in dataclasses.fields(ModelConfig) if f.name == "arch")
    assert set(ARCHITECTURES) == set(arch.metadata["choices"])


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


def layer4_output_size(model, x):
    sizes = []
    handle = model.encoder.layer4.register_forward_hook(lambda module, args, out: sizes.append(out.shape[-2:]))
    with torch.no_grad():
        features, embeddings = model(x)
    handle.remove()
    return tuple(sizes[0]), features, embeddings


@pytest.mark.parametrize("arch, width", [("resnet18_cifar", 512), ("resnet50_cifar", 2048)])
def test_cifar_stem_keeps_4x4_maps_at_32px(arch, width):
    torch.manual_seed(0)
    model = build_model(arch, in_channels=3, projector_hidden_dim=8, projector_out_dim=4).eval()
    conv1 = model.encoder.conv1
    assert (conv1.kernel_size, conv1.stride, conv1.padding, conv1.bias) == ((3, 3), (1, 1), (1, 1), None)
    assert isinstance(model.encoder.maxpool, nn.Identity)
    size, features, embeddings = layer4_output_size(model, torch.randn(2, 3, 32, 32))
    assert size == (4, 4) and features.shape == (2, width) and embeddings.shape == (2, 4)
    assert model.encoder.out_dim == width


def test_imagenet_stem_downsamples_32px_to_1x1_and_cifar_stem_takes_other_channels():
    torch.manual_seed(0)
    size, _, _ = layer4_output_size(build_model("resnet18", in_channels=3).eval(), torch.randn(2, 3, 32, 32))
    assert size == (1, 1)
    assert build_model("resnet18_cifar", in_channels=1).encoder.conv1.in_channels == 1


def layout(projector: Projector) -> list:
    return [(type(m).__name__, getattr(m, "bias", None) is not None) for m in projector.net]


def test_projector_layers_and_batchnorm_placement():
    assert layout(Projector(8, 16, 4, layers=1)) == [("Linear", True)]
    assert layout(Projector(8, 16, 4)) == [("Linear", True), ("ReLU", False), ("Linear", True)]
    # hidden linear layers lose their bias to the BatchNorm's shift; the output has no BatchNorm
    assert layout(Projector(8, 16, 4, layers=3, batchnorm=True)) == [
        ("Linear", False), ("BatchNorm1d", True), ("ReLU", False),
        ("Linear", False), ("BatchNorm1d", True), ("ReLU", False), ("Linear", True)]
    with pytest.raises(ValueError, match="projector layers must be >= 1"):
        Projector(8, 16, 4, layers=0)


def test_build_model_passes_the_projector_options():
    model = build_model("digits_cnn", in_channels=1, cnn_width=4, projector_layers=3, projector_batchnorm=True,
                        projector_hidden_dim=8, projector_out_dim=5)
    linears = [m for m in model.projector.net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 8), (8, 8), (8, 5)]
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model.projector.net) == 2
    _, embeddings = model(torch.randn(3, 1, 16, 16))
    assert embeddings.shape == (3, 5)


def test_default_head_keeps_its_state_dict_keys():
    # checkpoints of the 2-layer head name its linear layers net.0 and net.2
    keys = build_model("digits_cnn", in_channels=1, cnn_width=4).projector.state_dict().keys()
    assert list(keys) == ["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"]


def test_same_seed_same_initialisation_and_unknown_arch():
    torch.manual_seed(1)
    a = build_model("digits_cnn", in_channels=1)
    torch.manual_seed(1)
    b = build_model("digits_cnn", in_channels=1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ValueError, match="unknown arch 'vit'"):
        build_model("vit", in_channels=1)
