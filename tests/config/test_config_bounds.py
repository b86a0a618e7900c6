"""Validation refuses every value that ``run`` could not honour, naming its key: each number has a
lower and an upper bound (and each float is finite), paths hold no control characters, and the
resolved config's TOML (config.toml) loads back whatever its strings hold."""

import dataclasses
import math
import tomllib
from pathlib import Path

import pytest
from schema_settings import numeric_settings

from fmicl_engine.config import ConfigError, config_from_dict, config_from_text, dumps_config, load_config, save_config
from fmicl_engine.config.toml_writer import basic_string, dumps

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DEFAULT_CONFIG = CONFIGS / "digits_kl.toml"


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)


NUMERIC = numeric_settings()


def nested(key: str, value) -> dict:
    """{"a": {"b": value}} for "a.b"."""
    *sections, name = key.split(".")
    raw = {name: value}
    for section in reversed(sections):
        raw = {section: raw}
    return raw


def error_keys(raw: dict) -> list[str]:
    """The keys of the problems with ``raw``'s keys, types and ranges (config_from_text: not the
    machine's paths, nor the checks across sections)."""
    try:
        config_from_text(dumps(raw))
    except ConfigError as err:
        return [e.key for e in err.errors]
    return []


def errors_of(overrides: list[str]) -> list[ConfigError]:
    with pytest.raises(ConfigError) as info:
        load_config(DEFAULT_CONFIG, overrides)
    return info.value.errors


def test_every_numeric_key_has_both_bounds():
    assert len(NUMERIC) > 40
    for key, kind, low, high, _, _ in NUMERIC:
        assert low is not None and high is not None, key
        if kind is int:  # within torch's (and C's) int64
            assert -(2**63) <= low < high <= 2**63 - 1, key


@pytest.mark.parametrize("key, kind, low, high, low_kind, high_kind", NUMERIC, ids=[n[0] for n in NUMERIC])
def test_each_bound_is_enforced_and_names_its_key(key, kind, low, high, low_kind, high_kind):
    step = 1 if kind is int else max(abs(high) * 1e-6, 1e-9)
    above = high + step if high_kind == "le" else high
    below = low - step if low_kind == "ge" else low
    assert error_keys(nested(key, above)) == [key]
    assert error_keys(nested(key, below)) == [key]
    inside_high = high if high_kind == "le" else high - step
    assert key not in error_keys(nested(key, inside_high))
    for huge in (2**63, 2**64, 10**30, -(2**64)):
        assert error_keys(nested(key, huge)) == [key]
    if kind is float:
        for value in (1e308, -1e308):
            assert error_keys(nested(key, value)) == [key]


@pytest.mark.parametrize("key", [n[0] for n in NUMERIC if n[1] is float])
def test_every_float_must_be_finite(key):
    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(ConfigError) as info:
            config_from_dict(nested(key, value))
        assert [e.key for e in info.value.errors] == [key]
        assert "must be finite" in str(info.value)
    # an integer too large for a float is refused the same way, not with an OverflowError
    with pytest.raises(ConfigError, match=f"{key}: must be finite, got <an integer of 1329 bits>"):
        config_from_dict(nested(key, 10**400))


# ----------------------------------------------------------------------------- the cases


def test_a_seed_beyond_what_its_consumers_take_is_refused():
    for seed in (2**64, 2**63, 2**63 - 1, 2**32):
        assert [str(e) for e in errors_of([f"run.seed={seed}"])] == [f"run.seed: must be <= 4294967295, got {seed}"]
    assert load_config(DEFAULT_CONFIG, [f"run.seed={2**32 - 1}"]).run.seed == 2**32 - 1


def test_a_seed_at_its_bound_works_where_the_code_uses_it():
    import torch

    from fmicl_engine.eval.mi_estimates import BOUNDS

    seed = 2**32 - 1
    torch.Generator().manual_seed(seed * len(BOUNDS) + len(BOUNDS) - 1)  # the MI critics' seeds
    torch.manual_seed(seed)


def test_a_huge_warmup_is_refused():
    assert [e.key for e in errors_of(["optim.warmup_epochs=1e308"])] == ["optim.warmup_epochs"]
    # a warmup longer than the run is allowed: the schedule caps it at the run's length
    assert load_config(DEFAULT_CONFIG, ["optim.warmup_epochs=100"]).optim.warmup_epochs == 100.0


def test_the_warmup_bound_is_one_the_schedule_can_compute():
    high = dict((n[0], n[3]) for n in NUMERIC)["optim.warmup_epochs"]
    steps_per_epoch = 10**7  # far more than any data set here
    round(high * steps_per_epoch)  # the loop's warmup_steps: no OverflowError


def test_too_many_threads_are_refused():
    assert [str(e) for e in errors_of([f"run.threads={2**40}"])] == [
        "run.threads: must be <= 1024, got 1099511627776"]


@pytest.mark.parametrize("override, key", [
    ("optim.lr=1e308", "optim.lr"),
    ("data.digits.noise_std=1e308", "data.digits.noise_std"),
    ("data.digits.noise_std=2", "data.digits.noise_std"),
    ("eval.linear_lr=1e308", "eval.linear_lr"),
    ("eval.knn_temperature=1e308", "eval.knn_temperature"),
    ("train.grad_clip=1e308", "train.grad_clip"),
    ("eval.probe_c=1e-300", "eval.probe_c"),
])
def test_floats_that_would_overflow_training_are_refused(override, key):
    assert [e.key for e in errors_of([override])] == [key]


@pytest.mark.parametrize("key, value", [
    ("data.digits.image_size", 100_000), ("data.imagefolder.image_size", 2**20), ("data.torchvision.image_size", 2**31),
    ("model.cnn_width", 100_000), ("model.projector_hidden_dim", 2**20), ("model.projector_out_dim", 2**20),
    ("model.projector_layers", 10_000), ("train.batch_size", 2**40), ("eval.batch_size", 2**40),
    ("eval.linear_batch_size", 2**40), ("eval.geometry_pairs", 2**40), ("eval.knn_k", 2**40),
    ("data.imagefolder.num_threads", 2**31), ("data.torchvision.num_workers", 2**31),
])
def test_sizes_that_cannot_fit_in_memory_are_refused(key, value):
    assert [e.key for e in errors_of([f"{key}={value}"])] == [key]


def test_the_shipped_paper_settings_lie_within_the_bounds():
    # ResNet-50, batch 4096, LARS at lr 4.8, 224 px, long schedules: see also test_config_files
    raw = {"model": {"arch": "resnet50", "projector_hidden_dim": 2048, "projector_out_dim": 128, "projector_layers": 3},
           "optim": {"name": "lars", "lr": 4.8, "weight_decay": 1e-6, "warmup_epochs": 10.0},
           "train": {"epochs": 1000, "batch_size": 4096}, "data": {"imagefolder": {"image_size": 224}}}
    assert error_keys(raw) == []


def test_an_objective_size_that_cannot_be_allocated_is_refused():
    raw = {"loss": {"name": "mi_bound", "bound": "nwj", "critic": "concat", "hidden": 2**40}}
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    assert [str(e) for e in info.value.errors] == ["loss.hidden: must be <= 16384, got 1099511627776"]


# ----------------------------------------------------------------------------- strings and paths


PATH_KEYS = ["run.out_dir", "data.imagefolder.root", "data.imagefolder.val_root", "data.torchvision.root"]


@pytest.mark.parametrize("key", PATH_KEYS)
@pytest.mark.parametrize("char", ["\x00", "\x01", "\n", "\r", "\t", "\x1b", "\x7f", "\x85"])
def test_a_path_with_a_control_character_is_refused(key, char):
    with pytest.raises(ConfigError) as info:
        config_from_dict(nested(key, f"runs/a{char}b"))
    assert [e.key for e in info.value.errors] == [key]
    assert f"must not contain control characters; 'runs/a{char}b'".replace(char, repr(char)[1:-1]) in str(info.value)


def test_a_control_character_out_dir_from_the_command_line_is_refused():
    assert [e.key for e in errors_of(["run.out_dir=runs/a\x01b"])] == ["run.out_dir"]
    assert [e.key for e in errors_of(['run.out_dir="runs/a\\nb"'])] == ["run.out_dir"]


def test_undecodable_command_line_bytes_are_refused():
    # Python hands undecodable argv bytes over as lone surrogates, which no UTF-8 file can hold
    assert [e.key for e in errors_of(["run.out_dir=runs/caf\udce9"])] == ["run.out_dir"]
    assert [e.key for e in errors_of(["loss.divergence=k\udcffl"])] == ["loss.divergence"]


def test_a_path_too_long_for_the_filesystem_is_a_config_error(tmp_path):
    long = str(tmp_path / ("x" * 300))
    assert [e.key for e in errors_of([f"run.out_dir={long}"])] == ["run.out_dir"]
    with pytest.raises(ConfigError) as info:
        load_config(CONFIGS / "cifar10_kl.toml", ["run.device=cpu", f"data.torchvision.root={long}"])
    assert [str(e) for e in info.value.errors] == ["data.torchvision.root: cannot be checked: File name too long"]


ALL_CONTROLS = "".join(chr(c) for c in range(0x20)) + "\x7f"
AWKWARD = [ALL_CONTROLS, '"quoted" \\back\\slash\\', "café 日本語 😀 \u2028\u00a0", "'''\"\"\"", "\\u0041 \\n", "",
           "#x"]


@pytest.mark.parametrize("text", AWKWARD)
def test_the_writer_round_trips_any_string(text):
    table = {"s": text, "a": [text, text], "t": {text: text}}
    assert tomllib.loads(dumps(table)) == table
    assert tomllib.loads("v = " + basic_string(text))["v"] == text


def test_the_writer_round_trips_every_character_one_by_one():
    for code in [*range(0x20), 0x7F, 0x80, 0x9F, 0xA0, 0xFEFF, 0xFFFF, 0x10FFFF]:
        text = f"a{chr(code)}b"
        assert tomllib.loads("v = " + basic_string(text))["v"] == text, hex(code)


def test_the_writer_refuses_a_lone_surrogate():
    with pytest.raises(ValueError, match="lone surrogate"):
        basic_string("a\udcffb")


def test_a_saved_config_loads_back_whatever_its_strings_hold(tmp_path):
    cfg = load_config(DEFAULT_CONFIG, [f"run.out_dir={tmp_path}/café \"x\" \\y 日本"])
    save_config(cfg, tmp_path / "config.toml")
    assert config_from_text((tmp_path / "config.toml").read_text(encoding="utf-8")) == cfg
    # the writer alone (validation would refuse these out_dirs) still writes TOML that reads back
    for text in (ALL_CONTROLS, "runs/a\nb", "runs/\x7f"):
        odd = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out_dir=text))
        assert tomllib.loads(dumps_config(odd))["run"]["out_dir"] == text


# ----------------------------------------------------------------------------- types and unknown keys


@pytest.mark.parametrize("raw, key", [
    ({"run": {"seed": True}}, "run.seed"),                       # a boolean for an integer
    ({"train": {"epochs": 1.5}}, "train.epochs"),                # a float for an integer
    ({"train": {"epochs": 2.0}}, "train.epochs"),                # even a whole one
    ({"optim": {"lr": "1e-3"}}, "optim.lr"),                     # a string for a number
    ({"optim": {"lr": True}}, "optim.lr"),
    ({"train": {"checkpoint": 1}}, "train.checkpoint"),          # an integer for a boolean
    ({"model": {"cnn_width": [32]}}, "model.cnn_width"),         # an array
    ({"model": {"cnn_width": {"a": 1}}}, "model.cnn_width"),     # a table
    ({"model": {"arch": 3}}, "model.arch"),                      # a number for a string
    ({"data": {"digits": 3}}, "data.digits"),                    # a value for a section
    ({"data": {"digits": [1, 2]}}, "data.digits"),
    ({"loss": [1]}, "loss"),
    ({"run": {"sed": 1}}, "run.sed"),                            # unknown key
    ({"runn": {}}, "runn"),                                      # unknown section
    ({"run": {"seed": {"x": 1}}}, "run.seed"),
    ({"loss": {"sigma": "big"}}, "loss.sigma"),
    ({"loss": {"normalize": 1}}, "loss.normalize"),
    ({"loss": {"whatever": 1}}, "loss.whatever"),
])
def test_wrong_types_and_unknown_keys_are_config_errors(raw, key):
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    assert [e.key for e in info.value.errors] == [key]


def test_an_integer_is_accepted_for_a_float():
    assert config_from_dict({"optim": {"lr": 1}}).optim.lr == 1.0


# ----------------------------------------------------------------------------- files


def test_a_utf8_byte_order_mark_is_named(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf[run]\nseed = 1\n")
    with pytest.raises(ConfigError, match="starts with a UTF-8 byte-order mark; save it as UTF-8 without one"):
        load_config(path)


def test_a_utf16_file_is_named(tmp_path):
    path = tmp_path / "utf16.toml"
    path.write_text("[run]\nseed = 1\n", encoding="utf-16")
    with pytest.raises(ConfigError, match="is not UTF-8"):
        load_config(path)


def test_deeply_nested_toml_is_a_config_error(tmp_path):
    path = tmp_path / "deep.toml"
    path.write_text("[run]\nseed = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(path)
    with pytest.raises(ConfigError) as info:  # as an override: a string, then the wrong type
        load_config(DEFAULT_CONFIG, ["run.seed=" + "[" * 5000 + "]" * 5000])
    assert [e.key for e in info.value.errors] == ["run.seed"]


def test_an_integer_beyond_pythons_conversion_limit_is_a_config_error(tmp_path):
    path = tmp_path / "digits.toml"
    path.write_text("[run]\nseed = 1" + "0" * 5000 + "\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(path)


def test_an_extends_path_with_a_nul_is_refused(tmp_path):
    path = tmp_path / "nul.toml"
    path.write_text('extends = "base\\u0000.toml"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "extends"


# ----------------------------------------------------------------------------- the documentation


def range_text(low, high, low_kind, high_kind) -> str:
    """A range as docs/CONFIG.md writes it: [0, 2^32 - 1], (0.0, 100.0]."""
    def show(v):
        if isinstance(v, int) and v >= 2**16 and v & (v - 1) == 0:
            return f"2^{v.bit_length() - 1}"
        if isinstance(v, int) and v >= 2**16 - 1 and (v + 1) & v == 0:
            return f"2^{v.bit_length()} - 1"
        if isinstance(v, int) and v >= 10**5 and str(v).strip("0") == "1":
            return f"10^{len(str(v)) - 1}"
        return f"{v:g}".replace("e+0", "e").replace("e-0", "e-") if isinstance(v, float) else str(v)

    return f"{'[' if low_kind == 'ge' else '('}{show(low)}, {show(high)}{']' if high_kind == 'le' else ')'}"


def test_config_md_lists_every_range():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "CONFIG.md").read_text(encoding="utf-8")
    for key, _, low, high, low_kind, high_kind in NUMERIC:
        section, name = key.rsplit(".", 1)
        row = next((line for line in doc.splitlines() if line.startswith(f"| `[{section}]` |")), "")
        assert f"`{name}` {range_text(low, high, low_kind, high_kind)}" in row, key
