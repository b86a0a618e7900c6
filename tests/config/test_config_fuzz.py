"""Fuzzing ``fmicl-engine validate``: several hundred seeded mutations of the default config (types,
ranges, unknown keys, malformed TOML, encodings, ``--set`` overrides, ``extends``). Whatever the
input, validate either accepts it (exit 0, and the config it prints is one a run can honour) or
refuses it (exit 2, every stderr line ``config error: ...``): never a traceback, never exit 1."""

import dataclasses
import math
import os
import random
import subprocess
import sys
import tomllib
import typing
from pathlib import Path

import pytest
from schema_settings import numeric_settings

from fmicl_engine.cli.main import main
from fmicl_engine.config import config_from_text, config_to_dict, read_config_file
from fmicl_engine.config.toml_writer import dumps

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = ROOT / "configs" / "digits_kl.toml"
SEED = 20240611

BASE = read_config_file(DEFAULT_CONFIG)  # the default config with its extends merged in: stands alone
RESOLVED = config_to_dict(config_from_text(dumps(BASE)))  # every key, defaults included (no machine checks)


def _leaves(table: dict, prefix: str = "") -> list[tuple[str, typing.Any]]:
    out = []
    for key, value in table.items():
        if isinstance(value, dict):
            out += _leaves(value, prefix + key + ".")
        else:
            out.append((prefix + key, value))
    return out


LEAVES = [(k, v) for k, v in _leaves(RESOLVED) if k != "run.out_dir"]  # out_dir: its own mutations below
NUMERIC = [k for k, v in LEAVES if isinstance(v, (int, float)) and not isinstance(v, bool)]
SECTIONS = ["run", "data", "data.digits", "data.imagefolder", "data.torchvision", "model", "loss", "optim", "train",
            "eval"]

# Values of every TOML type (as TOML text, since nan and inf have no JSON form), and numbers that
# lie outside any sensible range.
TYPED_VALUES = ['"x"', '""', "1.5", "2.0", "3", "0", "true", "false", "[1, 2]", "[]", '["a"]', "{a = 1}", "{}",
                "1979-05-27T07:32:00Z", "1979-05-27", "07:32:00"]
EXTREME_NUMBERS = ["-1", "0", "-0.0", str(2**64), str(2**63), str(2**63 - 1), str(2**32), str(2**31), "1e308",
                   "-1e308", "nan", "-nan", "inf", "-inf", "+inf", "1e-320", "5e-324", str(10**30), str(-(2**64)),
                   "1" + "0" * 400, "1" + "0" * 5000, "0x7fffffffffffffff", "0b1", "1_000_000"]


@dataclasses.dataclass(frozen=True)
class Mutation:
    id: str
    text: bytes | None = None  # the config file's content; None: the default config itself
    overrides: tuple[str, ...] = ()


def _file(raw: dict) -> bytes:
    return dumps(raw).encode("utf-8")


def _with_value_text(key: str, value_text: str) -> bytes:
    """The default config with ``key`` set to ``value_text`` (TOML text) under its [section] header."""
    section, name = key.rsplit(".", 1)
    lines = dumps(BASE).splitlines()
    header = f"[{section}]"
    if header in lines:
        start = lines.index(header) + 1
        end = next((i for i in range(start, len(lines)) if lines[i].startswith("[")), len(lines))
        lines = [line for i, line in enumerate(lines) if not (start <= i < end and line.split(" = ")[0] == name)]
        lines.insert(start, f"{name} = {value_text}")
    else:
        lines += ["", header, f"{name} = {value_text}"]
    return ("\n".join(lines) + "\n").encode("utf-8")


def _dig(raw: dict, keys: list[str]) -> dict:
    node = raw
    for key in keys:
        node = node.get(key, {}) if isinstance(node, dict) else {}
    return node


def mutations() -> list[Mutation]:
    rng = random.Random(SEED)
    text = dumps(BASE)
    out: list[Mutation] = []

    # 1. Type changes: each key gets two values of other types.
    for key, value in LEAVES:
        for value_text in rng.sample(TYPED_VALUES, 2):
            out.append(Mutation(f"type:{key}={value_text}", _with_value_text(key, value_text)))

    # 2. Out-of-range numbers: every extreme value on some numeric key, then random pairs.
    for i, value_text in enumerate(EXTREME_NUMBERS):
        key = NUMERIC[i % len(NUMERIC)]
        out.append(Mutation(f"range:{key}={value_text[:24]}", _with_value_text(key, value_text)))
    for key in NUMERIC:
        for value_text in rng.sample(EXTREME_NUMBERS, 2):
            out.append(Mutation(f"range:{key}={value_text[:24]}", _with_value_text(key, value_text)))

    # 3. Unknown keys and sections, and sections given as values.
    for section in SECTIONS:
        out.append(Mutation(f"unknown-key:{section}", _with_value_text(f"{section}.bogus_key", "1")))
        out.append(Mutation(f"section-as-value:{section}", _with_value_text(f"{section}.sub", "{x = 1}")))
    for name in ("bogus", "runn", "trian", "data.nope", "run.sub.deeper", "loss.extra"):
        out.append(Mutation(f"unknown-section:{name}", (text + f"\n[{name}]\nx = 1\n").encode()))
    out.append(Mutation("top-level-value", ("seed = 3\n" + text).encode()))
    for section in ("run", "model", "loss", "optim"):
        replaced = text.replace(f"[{section}]\n", "[x]\n")
        out.append(Mutation(f"section-is-array:{section}", (f"{section} = [1, 2]\n" + replaced).encode()))
        out.append(Mutation(f"array-of-tables:{section}", text.replace(f"[{section}]\n", f"[[{section}]]\n").encode()))

    # 4. Malformed TOML.
    for _ in range(12):
        cut = rng.randrange(1, len(text))
        out.append(Mutation(f"truncated@{cut}", text[:cut].encode()))
    broken = {
        "unbalanced-open": text.replace("[model]", "[model"),
        "unbalanced-close": text.replace("[model]", "model]"),
        "unbalanced-array": text + "\n[x]\ny = [1, 2\n",
        "unbalanced-inline-table": text + "\n[x]\ny = {a = 1\n",
        "duplicate-key": text.replace("[run]\n", "[run]\nseed = 1\nseed = 2\n"),
        "duplicate-section": text + "\n[run]\nseed = 5\n",
        "bad-escape": text.replace("[run]\n", '[run]\nout_dir = "a\\qb"\n'),
        "bad-unicode-escape": text.replace("[run]\n", '[run]\nout_dir = "a\\uD800b"\n'),
        "unterminated-string": text.replace("[run]\n", '[run]\nout_dir = "abc\n'),
        "raw-control-in-string": text.replace("[run]\n", '[run]\nout_dir = "a\x01b"\n'),
        "missing-equals": text.replace("[run]\n", "[run]\nseed 3\n"),
        "missing-value": text.replace("[run]\n", "[run]\nseed =\n"),
        "bare-word-value": text.replace("[run]\n", "[run]\ndevice = cpu\n"),
        "leading-zero": text.replace("[run]\n", "[run]\nseed = 007\n"),
        "bad-float": text.replace("[run]\n", "[run]\nseed = 1.e5\n"),
        "deep-array": text.replace("[run]\n", "[run]\nseed = " + "[" * 3000 + "]" * 3000 + "\n"),
        "deep-inline-table": text.replace("[run]\n", "[run]\nseed = " + "{a = " * 3000 + "1" + "}" * 3000 + "\n"),
        "deep-dotted-key": text + "\n[" + ".".join(["a"] * 500) + "]\n",
        "empty-file": "",
        "only-comment": "# nothing\n",
        "garbage": "\x1b[31m<<<>>>\n",
        "redefined-table-by-dotted-key": text + "\nrun.seed = 4\n",
        "key-with-dots-quoted": text.replace("[run]\n", '[run]\n"se.ed" = 1\n'),
    }
    out += [Mutation(f"malformed:{name}", body.encode("utf-8")) for name, body in broken.items()]

    # 5. Encodings and stray bytes.
    out.append(Mutation("utf-16-bom", text.encode("utf-16")))
    out.append(Mutation("utf-16-le", text.encode("utf-16-le")))
    out.append(Mutation("utf-32", text.encode("utf-32")))
    out.append(Mutation("utf-8-bom", b"\xef\xbb\xbf" + text.encode()))
    out.append(Mutation("latin-1-comment", (text + "# caf\xe9\n").encode("latin-1")))
    out.append(Mutation("latin-1-string", text.replace("[run]\n", '[run]\nout_dir = "caf\xe9"\n').encode("latin-1")))
    out.append(Mutation("utf-8-string", text.replace("[run]\n", '[run]\nout_dir = "runs/café 日本"\n').encode()))
    out.append(Mutation("overlong-utf-8", text.encode() + b"# \xc0\xaf\n"))
    out.append(Mutation("lone-surrogate-bytes", text.encode() + b"# \xed\xa0\x80\n"))
    for _ in range(6):
        data = bytearray(text.encode())
        data.insert(rng.randrange(len(data)), 0)
        out.append(Mutation(f"nul-byte@{len(out)}", bytes(data)))
    for _ in range(6):
        data = bytearray(text.encode())
        position = rng.randrange(len(data))
        data[position] = rng.randrange(256)
        out.append(Mutation(f"flipped-byte@{position}", bytes(data)))
    out.append(Mutation("random-bytes", bytes(rng.randrange(256) for _ in range(300))))

    # 6. --set overrides with bad values (applied to the default config file itself).
    bad_sets = [
        f"run.seed={2**64}", "run.seed=-1", "run.seed=abc", "run.seed=1.5", "run.seed=true", "run.seed=[1]",
        "optim.lr=1e308", "optim.lr=1e999", "optim.lr=nan", "optim.lr=-inf", "optim.lr=0", "optim.warmup_epochs=1e308",
        f"run.threads={2**40}", "data.digits.noise_std=1e308", "data.digits.image_size=1000000",
        "model.cnn_width=1000000", "train.batch_size=0", f"train.batch_size={2**63}", "eval.batch_size=-5",
        "run.out_dir=runs/a\x01b", 'run.out_dir="runs/a\\nb"', "run.out_dir=runs/caf\udce9",
        "run.out_dir=" + "x" * 5000,
        "run.out_dir=", "run.out_dir=/proc/definitely/not/writable", "data.dataset=imagenet", "data.dataset=",
        "data.digits=3", "data=3", "run=1", "run.seed.x=1", "nosuch.key=1", "=1", "run.seed", "run.=1", ".seed=1",
        "run..seed=1", "loss.name=nope", "loss.name=mi_bound", f"loss.hidden={2**40}", "loss.sigma=-1",
        "loss.sigma=1" + "0" * 400, "loss.divergence=k\udcffl", "loss.dim=3", "loss.gather_distributed=true",
        "model.arch=resnet51", "train.precision=fp8", "eval.labels_per_class=1000", "train.epochs=1" + "0" * 5000,
        "run.seed=" + "[" * 3000, "optim.lr={a=1}", "train.max_steps=0x10", "extends=other.toml",
    ]
    out += [Mutation(f"set:{value[:40]!r}", None, (value,)) for value in bad_sets]
    for key in rng.sample(NUMERIC, 12):
        out.append(Mutation(f"set-random:{key}", None, (f"{key}={rng.choice(EXTREME_NUMBERS)}",)))

    # 7. extends.
    for value_text in ('3', '""', '"missing.toml"', '"."', '["a"]', '"a\\u0000b"', '"/"', '"' + "x" * 5000 + '"'):
        out.append(Mutation(f"extends:{value_text[:20]}", (f"extends = {value_text}\n" + text).encode()))
    return out


MUTATIONS = mutations()


def test_there_are_enough_mutations():
    assert len(MUTATIONS) >= 200
    assert MUTATIONS == mutations()  # seeded: the same mutations on every run


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.chdir(tmp_path)  # default out_dirs (runs/<stem>) land here


def validate(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_accepted_or_refused(code: int, out: str, err: str) -> None:
    assert "Traceback" not in err and "Traceback" not in out
    assert code in (0, 2), (code, err)
    if code == 2:
        lines = err.splitlines()
        assert lines and all(line.startswith("config error: ") for line in lines), err
        return
    honourable(out)


def honourable(resolved_toml: str) -> None:
    """What validate printed is a config whose every number lies within its schema bounds and is finite."""
    cfg = config_from_text(resolved_toml)
    for key, value in _leaves(config_to_dict(cfg)):
        if isinstance(value, float):
            assert math.isfinite(value), key
    for key, kind, low, high, *_ in numeric_settings():
        value = _dig(config_to_dict(cfg), key.split(".")[:-1])[key.rsplit(".", 1)[1]]
        assert isinstance(value, kind) or (kind is float and isinstance(value, int)), key
        assert low <= value <= high, key


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[f"{i:03d}" for i in range(len(MUTATIONS))])
def test_validate_accepts_or_refuses_every_mutation(mutation, tmp_path, capsys):
    if mutation.text is None:
        path = DEFAULT_CONFIG
    else:
        path = tmp_path / "mutated.toml"
        path.write_bytes(mutation.text)
    argv = ["validate", str(path)]
    for override in mutation.overrides:
        argv += ["--set", override]
    code, out, err = validate(argv, capsys)
    assert_accepted_or_refused(code, out, err)


def test_the_unmutated_config_is_accepted(capsys):
    code, out, err = validate(["validate", str(DEFAULT_CONFIG)], capsys)
    assert code == 0 and err.endswith(": ok\n")
    assert tomllib.loads(out)["run"]["seed"] == 0
    honourable(out)


def test_the_mutations_cover_both_outcomes(tmp_path, capsys):
    outcomes = set()
    for mutation in MUTATIONS[:: max(1, len(MUTATIONS) // 60)]:
        path = tmp_path / "m.toml"
        if mutation.text is not None:
            path.write_bytes(mutation.text)
        argv = ["validate", str(path if mutation.text is not None else DEFAULT_CONFIG)]
        for override in mutation.overrides:
            argv += ["--set", override]
        outcomes.add(validate(argv, capsys)[0])
    assert outcomes == {0, 2}


@pytest.mark.parametrize("args, content", [
    ([f"--set=run.seed={2**64}"], None),
    ([], b"[run\nseed = 1\n"),
    ([], "[run]\nseed = 1\n".encode("utf-16")),
])
def test_validate_in_a_subprocess(args, content, tmp_path):
    if content is None:
        path = DEFAULT_CONFIG
    else:
        path = tmp_path / "bad.toml"
        path.write_bytes(content)
    env = {**os.environ, "FMICL_ALLOW_STALE_EXTENSION": "1"}
    env.pop("WORLD_SIZE", None)
    done = subprocess.run([sys.executable, "-m", "fmicl_engine", "validate", str(path), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert lines and all(line.startswith("config error: ") for line in lines), done.stderr
