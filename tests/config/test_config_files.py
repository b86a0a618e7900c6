"""Every configs/*.toml loads (data roots pointed at generated trees, devices at the CPU); a missing
data path names its key; the digits configs, now extending base/digits.toml, resolve exactly as
the stand-alone files did before."""

import tomllib
from pathlib import Path

import pytest

from fmicl_engine.config import ConfigError, config_from_dict, dumps_config, load_config, read_config_file

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CONFIG_FILES = sorted(CONFIGS.glob("*.toml"))
CPU = ["run.device=cpu", "data.imagefolder.device=cpu"]
TORCHVISION_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "stl10": "stl10_binary"}


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)


@pytest.fixture(scope="module")
def data_roots(tmp_path_factory):
    """--set overrides pointing every dataset at a minimal tree: a generated ImageFolder, and
    directories holding the folder torchvision's classes read."""
    from fmicl_engine.data.synthetic import make_image_folder

    root = tmp_path_factory.mktemp("data")
    make_image_folder(root / "imagefolder", num_classes=2, per_class=2, size=(24, 24))
    for folder in TORCHVISION_FOLDERS.values():
        (root / "torchvision" / folder).mkdir(parents=True)
    return [f"data.imagefolder.root={root / 'imagefolder'}", f"data.torchvision.root={root / 'torchvision'}"]


def test_the_expected_configs_are_there():
    names = {path.stem for path in CONFIG_FILES}
    for dataset in ("imagenet", "cifar10", "cifar100", "stl10", "tinyimagenet"):
        for objective in ("kl", "js", "pearson", "sh", "tsallis", "vlc", "simclr"):
            assert f"{dataset}_{objective}" in names
    assert len([name for name in names if name.startswith("digits_")]) == 14


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_every_config_loads(path, data_roots):
    cfg = load_config(path, [*data_roots, *CPU])
    assert cfg.run.out_dir == f"runs/{path.stem}"
    assert "extends" not in dumps_config(cfg)
    if cfg.loss.name == "fmicl":  # the f-MICL configs: the divergence their name says
        divergence = path.stem.split("_", 1)[1]
        assert cfg.loss.kwargs()["divergence"] == divergence.removesuffix("_cosine")
    if not path.stem.startswith("digits_"):
        assert not cfg.eval.linear_probe and cfg.model.arch.startswith("resnet")
    if path.stem.endswith("_simclr"):
        assert cfg.loss.name == "infonce"


@pytest.mark.parametrize("path", [p for p in CONFIG_FILES if not p.stem.startswith("digits_")], ids=lambda p: p.stem)
def test_a_missing_data_path_names_its_key(path):
    with pytest.raises(ConfigError) as info:
        load_config(path, CPU)  # the configs' placeholder roots do not exist here
    dataset = read_config_file(path)["data"]["dataset"]
    key = "data.imagefolder.root" if dataset == "imagefolder" else "data.torchvision.root"
    assert [error.key for error in info.value.errors] == [key]
    assert "no such directory" in str(info.value)


@pytest.mark.parametrize("dataset", sorted(TORCHVISION_FOLDERS))
def test_a_torchvision_root_must_hold_the_dataset_folder(dataset, tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(CONFIGS / f"{dataset}_kl.toml", [f"data.torchvision.root={tmp_path}", *CPU])
    assert str(info.value) == (f"data.torchvision.root: {tmp_path} has no {TORCHVISION_FOLDERS[dataset]} folder, "
                               f"which torchvision reads for data.dataset = {dataset!r} (it is never downloaded)")


def test_the_imagenet_recipe(data_roots):
    cfg = load_config(CONFIGS / "imagenet_kl.toml", [*data_roots, *CPU])
    assert (cfg.model.arch, cfg.train.batch_size, cfg.optim.name, cfg.optim.lr) == ("resnet50", 4096, "lars", 4.8)
    assert cfg.optim.lr == 0.3 * cfg.train.batch_size / 256
    assert (cfg.train.precision, cfg.train.channels_last, cfg.model.sync_batchnorm) == ("bf16", True, True)
    assert (cfg.model.projector_layers, cfg.model.projector_hidden_dim, cfg.model.projector_out_dim) == (3, 2048, 128)
    simclr = load_config(CONFIGS / "imagenet_simclr.toml", [*data_roots, *CPU])
    assert simclr.loss.kwargs() == {"tau": 0.1, "normalize": True, "backend": "auto"}  # fmicl's keys not inherited
    assert simclr.model == cfg.model and simclr.optim == cfg.optim and simclr.train == cfg.train


def test_the_validate_command_passes_on_a_generated_imagefolder_tree(data_roots, capsys):
    from fmicl_engine.cli.main import main

    overrides = [arg for override in [data_roots[0], *CPU] for arg in ("--set", override)]
    assert main(["validate", str(CONFIGS / "imagenet_kl.toml"), *overrides]) == 0
    assert 'arch = "resnet50"' in capsys.readouterr().out


# dumps_config of each digits config as it was before it extended base/digits.toml (every key,
# the objective's defaults included), but for sync_batchnorm = true, which changes nothing in one
# process: {stem} and {loss} vary between the 14.
DIGITS_RESOLVED = """\
[run]
seed = 0
device = "auto"
out_dir = "runs/{stem}"
threads = 1
dist_timeout_s = 600

[data]
dataset = "digits"

[data.digits]
test_fraction = 0.25
image_size = 16
crop_scale_min = 0.7
max_rotation_deg = 10.0
noise_std = 0.1

[data.imagefolder]
root = ""
image_size = 224
augment = "simclr"
num_threads = 4
device = "cpu"
on_bad_file = "skip"

[data.torchvision]
root = ""
image_size = 0
augment = ""
split = ""
num_workers = 4

[model]
arch = "digits_cnn"
cnn_width = 32
projector_layers = 2
projector_hidden_dim = 256
projector_out_dim = 64
projector_batchnorm = false
sync_batchnorm = true

[loss]
{loss}
[optim]
name = "adamw"
lr = 0.002
weight_decay = 0.0001
momentum = 0.9
beta1 = 0.9
beta2 = 0.999
trust_coefficient = 0.001
exclude_bias_and_norm = true
warmup_epochs = 1.0
min_lr_ratio = 0.0

[train]
epochs = 50
batch_size = 128
max_steps = 0
log_every = 10
precision = "fp32"
channels_last = false
compile = false
grad_clip = 0.0
checkpoint = true
checkpoint_every_steps = 0
keep_checkpoints = 2

[eval]
linear_probe = true
features = "encoder"
probe_c = 1.0
probe_max_iter = 1000
labels_per_class = 10
label_subsets = 5
batch_size = 512
"""

FMICL_DEFAULTS = 'tau = 0.5\nmu = 1.0\nalpha = 1.0\ntsallis_alpha = 1.5\nnormalize = true\nbackend = "auto"\n'
DIGITS_LOSS_RESOLVED = {
    "digits_align_uniform": 'name = "align_uniform"\nalign_alpha = 2.0\nt = 2.0\nlambda_uniform = 1.0\nbackend = "auto"\n',
    "digits_dv": 'name = "mi_bound"\nbound = "dv"\ncritic = "separable"\n',
    "digits_emmi": 'name = "emmi"\neps = 0.0001\n',
    "digits_infonce_bound": 'name = "mi_bound"\nbound = "infonce"\ncritic = "separable"\n',
    "digits_js": 'name = "fmicl"\ndivergence = "js"\nsimilarity = "gaussian"\nsigma = 0.5\n' + FMICL_DEFAULTS,
    "digits_kl": 'name = "fmicl"\ndivergence = "kl"\nsimilarity = "gaussian"\nsigma = 1.0\n' + FMICL_DEFAULTS,
    "digits_kl_cosine": 'name = "fmicl"\ndivergence = "kl"\nsimilarity = "cosine"\nsigma = 0.5\n' + FMICL_DEFAULTS,
    "digits_nwj": 'name = "mi_bound"\nbound = "nwj"\ncritic = "separable"\n',
    "digits_pearson": 'name = "fmicl"\ndivergence = "pearson"\nsimilarity = "gaussian"\nsigma = 0.5\n' + FMICL_DEFAULTS,
    "digits_rpc": 'name = "rpc"\ntau = 0.5\nalpha = 0.0\nbeta = 0.001\ngamma = 1.0\nnormalize = true\n',
    "digits_sh": 'name = "fmicl"\ndivergence = "sh"\nsimilarity = "gaussian"\nsigma = 0.5\n' + FMICL_DEFAULTS,
    "digits_simclr": 'name = "infonce"\ntau = 0.5\nnormalize = true\nbackend = "auto"\n',
    "digits_tsallis": 'name = "fmicl"\ndivergence = "tsallis"\nsimilarity = "gaussian"\nsigma = 0.5\n' + FMICL_DEFAULTS,
    "digits_vlc": 'name = "fmicl"\ndivergence = "vlc"\nsimilarity = "gaussian"\nsigma = 0.5\n' + FMICL_DEFAULTS,
}


def dotted(toml_text: str) -> dict:
    """{"section.key": value} of a config's TOML text."""
    values = {}

    def walk(table: dict, prefix: str) -> None:
        for key, value in table.items():
            if isinstance(value, dict):
                walk(value, prefix + key + ".")
            else:
                values[prefix + key] = value

    walk(tomllib.loads(toml_text), "")
    return values


@pytest.mark.parametrize("stem", sorted(DIGITS_LOSS_RESOLVED))
def test_digits_configs_resolve_as_before_they_extended_a_base(stem):
    expected = dotted(DIGITS_RESOLVED.format(stem=stem, loss=DIGITS_LOSS_RESOLVED[stem]))
    resolved = dotted(dumps_config(load_config(CONFIGS / f"{stem}.toml")))
    absent = object()
    # every key the stand-alone file resolved to keeps its value
    assert {key: resolved.get(key, absent) for key in expected} == expected
    # a key the schema (or an objective) gained since resolves to its default
    objective = {key.removeprefix("loss."): value for key, value in expected.items()
                 if key in ("loss.name", "loss.bound", "loss.critic")}
    defaults = dotted(dumps_config(config_from_dict({"loss": objective}, stem=stem)))
    added = {key: value for key, value in resolved.items() if key not in expected}
    assert added == {key: defaults.get(key, absent) for key in added}
