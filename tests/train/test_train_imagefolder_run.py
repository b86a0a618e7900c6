"""dataset = "imagefolder" runs through the DALI two-view loader; an empty tree is a config error."""

import json

import pytest

from fmicl_engine.config import ConfigError, load_config
from fmicl_engine.train import loop

pytest.importorskip("nvidia.dali")

IMAGENET = "configs/imagenet_kl.toml"
CPU_TINY = ["data.imagefolder.device=cpu", "run.device=cpu", "data.imagefolder.image_size=32",
            "data.imagefolder.num_threads=1", "model.arch=digits_cnn", "model.cnn_width=4",
            "model.projector_hidden_dim=16", "model.projector_out_dim=8", "train.batch_size=8",
            "train.max_steps=2", "train.log_every=1", "optim.warmup_epochs=0", "loss.backend=reference"]


def test_a_tiny_imagefolder_run(tmp_path):
    from pathlib import Path

    from fmicl_engine.data.synthetic import make_image_folder

    repo = Path(__file__).resolve().parents[2]
    make_image_folder(tmp_path / "train", num_classes=2, per_class=8, size=(40, 36))
    cfg = load_config(repo / IMAGENET, [f"data.imagefolder.root={tmp_path / 'train'}",
                                        f"run.out_dir={tmp_path / 'run'}", *CPU_TINY])
    results = loop.run(cfg, log=lambda s: None, progress=False)
    assert results["steps"] == 2 and results["dataset"] == "imagefolder"
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]


def test_an_empty_tree_is_a_config_error(tmp_path):
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    (tmp_path / "empty").mkdir()
    cfg = load_config(repo / IMAGENET, [f"data.imagefolder.root={tmp_path / 'empty'}",
                                        f"run.out_dir={tmp_path / 'run'}", *CPU_TINY])
    with pytest.raises(ConfigError, match="^data.imagefolder.root: .*no images"):
        loop.run(cfg, log=lambda s: None, progress=False)
    assert not (tmp_path / "run").exists()  # found before anything was written
