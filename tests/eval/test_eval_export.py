"""Weight export: the exported encoder loads into torchvision with only fc.* missing and gives the
engine encoder's features; digits_cnn exports in the engine format only."""

import hashlib

import pytest
import torch
import torch.nn as nn
import torchvision

from fmicl_engine.eval.export import (
    ExportError,
    encoder_state_dict,
    engine_encoder,
    export_encoder,
    torchvision_model,
)
from fmicl_engine.models import build_model
from fmicl_engine.train.checkpoint import CheckpointStore


def trained_looking_model(arch: str, in_channels: int = 3, cnn_width: int = 8):
    """A model whose every parameter and BatchNorm statistic is random (not the identity-like
    initial values), so a misplaced tensor changes the features."""
    torch.manual_seed(0)
    model = build_model(arch, in_channels=in_channels, cnn_width=cnn_width)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            elif name.endswith("num_batches_tracked"):
                tensor.fill_(7)
            elif tensor.is_floating_point():
                scale = 0.1 if tensor.dim() > 1 else 0.5
                tensor.copy_(scale * torch.randn(tensor.shape, generator=generator))
    return model


def write_checkpoint(path, model, arch: str):
    state = {"format": 1, "step": 42, "config": f'[model]\narch = "{arch}"\ncnn_width = 8\n',
             "model": model.state_dict(), "optimizer": {}}
    torch.save(state, path)
    return path


@pytest.mark.parametrize("arch, size", [("resnet18", 32), ("resnet18_cifar", 12)])
def test_torchvision_export_loads_with_only_fc_missing_and_gives_the_same_features(tmp_path, arch, size):
    model = trained_looking_model(arch)
    checkpoint = write_checkpoint(tmp_path / "step.pt", model, arch)
    exported = export_encoder(checkpoint, tmp_path / "out" / f"{arch}.pt", format="torchvision")
    assert exported.arch == arch and exported.in_channels == 3 and exported.step == 42

    weights = torch.load(exported.path, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in weights.values())
    assert not any(k.startswith(("encoder.", "projector.", "fc.")) for k in weights)
    if arch == "resnet18":
        reference = torchvision.models.resnet18()
    else:  # the documented recipe, then the helper that applies it
        reference = torchvision.models.resnet18()
        reference.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        reference.maxpool = nn.Identity()
        helper = torchvision_model(arch)
        assert helper.load_state_dict(weights, strict=False).missing_keys == ["fc.weight", "fc.bias"]
    result = reference.load_state_dict(weights, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and result.unexpected_keys == []
    reference.fc = nn.Identity()

    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model.eval().encoder(images)
        got = reference.eval()(images)
    assert got.shape == (2, 512)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_resnet50_export_has_exactly_torchvisions_keys_without_fc(tmp_path):
    model = build_model("resnet50", in_channels=3)  # keys and shapes only: initial values will do
    checkpoint = write_checkpoint(tmp_path / "step.pt", model, "resnet50")
    exported = export_encoder(checkpoint, tmp_path / "r50.pt")  # torchvision is the default format
    result = torchvision.models.resnet50().load_state_dict(torch.load(exported.path, weights_only=True), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and result.unexpected_keys == []


def test_digits_cnn_exports_in_the_engine_format_only(tmp_path):
    model = trained_looking_model("digits_cnn", in_channels=1, cnn_width=8)
    checkpoint = write_checkpoint(tmp_path / "step.pt", model, "digits_cnn")
    with pytest.raises(ExportError, match="format 'engine'"):
        export_encoder(checkpoint, tmp_path / "tv.pt", format="torchvision")
    assert not (tmp_path / "tv.pt").exists()

    exported = export_encoder(checkpoint, tmp_path / "digits.pt", format="engine")
    assert exported.in_channels == 1 and exported.cnn_width == 8
    assert "engine_encoder('digits_cnn', in_channels=1, cnn_width=8)" in exported.how_to_load()
    encoder = engine_encoder("digits_cnn", in_channels=1, cnn_width=8)
    encoder.load_state_dict(torch.load(exported.path, weights_only=True))  # strict
    images = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(encoder.eval()(images), model.eval().encoder(images))


def test_a_run_directory_exports_its_newest_valid_checkpoint(tmp_path):
    run = tmp_path / "run"
    store = CheckpointStore(run / "checkpoints", keep=3)
    old = trained_looking_model("digits_cnn", in_channels=1)
    store.save(10, {"step": 10, "config": '[model]\narch = "digits_cnn"\n', "model": old.state_dict()})
    newer = build_model("digits_cnn", in_channels=1, cnn_width=8)
    store.save(20, {"step": 20, "config": '[model]\narch = "digits_cnn"\n', "model": newer.state_dict()})
    assert export_encoder(run, tmp_path / "a.pt", format="engine").step == 20

    store.path(20).write_bytes(store.path(20).read_bytes()[:100])  # cut short: the digest no longer matches
    exported = export_encoder(run, tmp_path / "b.pt", format="engine")
    assert exported.step == 10 and exported.checkpoint == store.path(10)
    with pytest.raises(ExportError, match="SHA-256"):
        export_encoder(store.path(20), tmp_path / "c.pt", format="engine")


def test_wrapper_prefixes_are_removed_and_the_projector_dropped():
    weight = torch.randn(4, 4).t()  # not contiguous
    state = {"module.encoder._orig_mod.conv1.weight": weight, "projector.net.0.weight": torch.zeros(2)}
    encoder = encoder_state_dict(state)
    assert list(encoder) == ["conv1.weight"] and encoder["conv1.weight"].is_contiguous()
    assert torch.equal(encoder["conv1.weight"], weight)
    with pytest.raises(ExportError, match="no encoder"):
        encoder_state_dict({"projector.net.0.weight": torch.zeros(2)})


def test_bad_requests_are_refused_with_a_reason(tmp_path):
    with pytest.raises(ExportError, match="unknown format"):
        export_encoder(tmp_path / "x.pt", tmp_path / "y.pt", format="onnx")
    with pytest.raises(ExportError, match="no such checkpoint"):
        export_encoder(tmp_path / "x.pt", tmp_path / "y.pt")
    with pytest.raises(ExportError, match="no valid checkpoint"):
        export_encoder(tmp_path, tmp_path / "y.pt")
    with pytest.raises(ExportError, match="no torchvision model"):
        torchvision_model("digits_cnn")
    # an encoder whose shapes are not torchvision's is caught at export, not when the user loads it
    model = trained_looking_model("digits_cnn", in_channels=1)
    checkpoint = write_checkpoint(tmp_path / "step.pt", model, "digits_cnn")
    with pytest.raises(ExportError, match="conv weight"):
        export_encoder(checkpoint, tmp_path / "y.pt", arch="resnet18")
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest()  # the checkpoint is untouched and readable
