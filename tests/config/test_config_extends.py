"""``extends``: a config file on top of another, deep-merged, chained; cycles and missing bases are errors."""

import pytest

from fmicl_engine.config import ConfigError, dumps_config, load_config


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_tables_merge_and_the_extending_file_wins(tmp_path):
    write(tmp_path / "base" / "common.toml", "[train]\nepochs = 7\nbatch_size = 64\n[optim]\nlr = 0.01\n"
                                             "[data.digits]\nnoise_std = 0.2\nimage_size = 12\n")
    path = write(tmp_path / "mine.toml", 'extends = "base/common.toml"\n[train]\nepochs = 3\n'
                                         "[data.digits]\nnoise_std = 0.0\n")
    cfg = load_config(path)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.optim.lr) == (3, 64, 0.01)
    assert (cfg.data.digits.noise_std, cfg.data.digits.image_size) == (0.0, 12)
    assert cfg.run.out_dir == "runs/mine"  # the extending file's stem, not the base's
    assert "extends" not in dumps_config(cfg)


def test_a_chain_of_bases_relative_to_each_file_and_an_absolute_path(tmp_path):
    write(tmp_path / "a" / "root.toml", "[train]\nepochs = 2\nbatch_size = 32\nlog_every = 5\n")
    write(tmp_path / "a" / "b" / "middle.toml", 'extends = "../root.toml"\n[train]\nbatch_size = 16\n')
    path = write(tmp_path / "top.toml", 'extends = "a/b/middle.toml"\n[train]\nlog_every = 1\n')
    train = load_config(path).train
    assert (train.epochs, train.batch_size, train.log_every) == (2, 16, 1)
    absolute = write(tmp_path / "elsewhere" / "abs.toml", f'extends = "{tmp_path / "a" / "root.toml"}"\n')
    assert load_config(absolute).train.batch_size == 32


def test_loss_keys_are_inherited_only_for_the_same_objective(tmp_path):
    write(tmp_path / "base.toml", '[loss]\nname = "fmicl"\ndivergence = "js"\nsigma = 0.3\n')
    same = write(tmp_path / "same.toml", 'extends = "base.toml"\n[loss]\nsigma = 0.7\n')
    options = load_config(same).loss.kwargs()
    assert (options["divergence"], options["sigma"]) == ("js", 0.7)
    named_same = write(tmp_path / "named_same.toml", 'extends = "base.toml"\n[loss]\nname = "fmicl"\n')
    assert load_config(named_same).loss.kwargs()["divergence"] == "js"
    other = write(tmp_path / "other.toml", 'extends = "base.toml"\n[loss]\nname = "infonce"\ntau = 0.2\n')
    cfg = load_config(other)  # sigma and divergence mean nothing to infonce: not inherited
    assert cfg.loss.name == "infonce" and cfg.loss.kwargs()["tau"] == 0.2 and "sigma" not in cfg.loss.kwargs()


def test_a_base_without_loss_name_has_the_default_objective(tmp_path):
    write(tmp_path / "base.toml", "[loss]\nsigma = 0.3\n")  # fmicl, the default
    fmicl = write(tmp_path / "fmicl.toml", 'extends = "base.toml"\n[loss]\nname = "fmicl"\n')
    assert load_config(fmicl).loss.kwargs()["sigma"] == 0.3
    emmi = write(tmp_path / "emmi.toml", 'extends = "base.toml"\n[loss]\nname = "emmi"\n')
    assert load_config(emmi).loss.name == "emmi"


def test_overrides_apply_after_merging(tmp_path):
    write(tmp_path / "base.toml", "[train]\nepochs = 7\n[optim]\nlr = 0.01\n")
    path = write(tmp_path / "mine.toml", 'extends = "base.toml"\n[train]\nepochs = 3\n')
    cfg = load_config(path, ["train.epochs=9", "optim.lr=0.5"])
    assert (cfg.train.epochs, cfg.optim.lr) == (9, 0.5)


def test_a_cycle_is_an_error_naming_the_files(tmp_path):
    a = write(tmp_path / "a.toml", 'extends = "sub/b.toml"\n')
    write(tmp_path / "sub" / "b.toml", 'extends = "../a.toml"\n')
    with pytest.raises(ConfigError) as info:
        load_config(a)
    assert info.value.key == "extends"
    assert str(info.value) == f"extends: cycle: {a} -> {tmp_path / 'sub' / 'b.toml'} -> {a}"
    itself = write(tmp_path / "self.toml", 'extends = "self.toml"\n')
    with pytest.raises(ConfigError, match=r"^extends: cycle: .*self\.toml -> .*self\.toml$"):
        load_config(itself)


def test_a_missing_or_malformed_base_is_an_error(tmp_path):
    path = write(tmp_path / "mine.toml", 'extends = "nope.toml"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{tmp_path / 'nope.toml'}: no such config file (extended by {path})"
    write(tmp_path / "number.toml", "extends = 3\n")
    with pytest.raises(ConfigError, match=r"^extends: must be the path of a config file .*got integer 3$"):
        load_config(tmp_path / "number.toml")
    write(tmp_path / "broken.toml", "[train\n")
    write(tmp_path / "on_broken.toml", 'extends = "broken.toml"\n')
    with pytest.raises(ConfigError, match="broken.toml: invalid TOML"):
        load_config(tmp_path / "on_broken.toml")


def test_the_merged_config_is_validated_as_one(tmp_path):
    write(tmp_path / "base.toml", "[train]\nepoch = 3\n")
    path = write(tmp_path / "mine.toml", 'extends = "base.toml"\n[optim]\nlr = 0\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).splitlines() == ["optim.lr: must be > 0.0, got 0.0",
                                            "train.epoch: unknown key (did you mean 'train.epochs'?)"]
