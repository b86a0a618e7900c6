"""The command's own text: --help in plain words (no reStructuredText markup), --version."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import fmicl_engine
from fmicl_engine.cli.main import build_parser, main

REPO = Path(__file__).resolve().parents[2]
# ``literal``, :role:`target`, `interpreted text`, **strong**: markup a terminal shows as it is
RST_MARKUP = re.compile(r"``|:[a-z]+:`|(?<![\w'])`[^`\n]+`(?![\w'])|\*\*")


def help_text(*argv: str, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("argv", [(), ("run",), ("validate",)])
def test_help_has_no_restructuredtext_markup(argv, capsys):
    text = help_text(*argv, capsys=capsys)
    assert text.startswith("usage: fmicl-engine")
    assert not RST_MARKUP.search(text), RST_MARKUP.search(text)


def test_help_says_where_evaluation_is_described(capsys):
    top = " ".join(help_text(capsys=capsys).split())
    assert "evaluate" in top and "docs/CONFIG.md" in top and "--version" in top
    run = " ".join(help_text("run", capsys=capsys).split())
    assert "--out DIR" in run


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"fmicl-engine {fmicl_engine.__version__}"


def test_the_package_version_is_the_projects():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert fmicl_engine.__version__ == project["version"]


def test_version_and_help_from_the_command_line():
    for argv in (["--version"], ["--help"]):
        result = subprocess.run([sys.executable, "-m", "fmicl_engine", *argv], cwd=REPO, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "fmicl-engine" in result.stdout and "``" not in result.stdout


def test_the_parser_needs_a_command():
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([])
    assert exit_info.value.code == 2
