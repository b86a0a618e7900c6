"""The native extension: present, current, and a clear error when missing or stale."""

import shutil
import sys

import pytest

import fmicl_engine
from fmicl_engine import _ext


def test_extension_is_built_from_these_sources():
    # The digest CMake compiled in must equal the one Python computes from cpp/ now: this fails
    # if the build and the two digest recipes ever disagree.
    expected = _ext.sources_sha256()
    if expected is None:
        pytest.skip("not a source checkout (installed from a wheel)")
    assert _ext._C.build_info["sources_sha256"] == expected
    assert _ext._C.build_info["torch_version"].split("+")[0] in fmicl_engine._ext.torch.__version__


def test_digest_changes_with_any_source_byte(tmp_path):
    root = _ext._REPO_ROOT
    shutil.copytree(root / "cpp", tmp_path / "cpp")
    shutil.copy(root / "CMakeLists.txt", tmp_path / "CMakeLists.txt")
    before = _ext.sources_sha256(tmp_path)
    assert before == _ext.sources_sha256(root)
    header = next((tmp_path / "cpp").rglob("*.h"))
    header.write_text(header.read_text() + "\n")
    assert _ext.sources_sha256(tmp_path) != before


def test_stale_extension_is_refused_with_the_build_command(monkeypatch):
    monkeypatch.delenv("FMICL_ALLOW_STALE_EXTENSION", raising=False)
    monkeypatch.setattr(_ext, "sources_sha256", lambda root=None: "0" * 64)
    with pytest.raises(ImportError, match="stale.*pip install --no-build-isolation"):
        _ext._load()


def test_missing_extension_says_how_to_build(monkeypatch):
    monkeypatch.setitem(sys.modules, "fmicl_engine._C", None)  # makes `import` fail
    with pytest.raises(ImportError, match="not built.*pip install --no-build-isolation"):
        _ext._load()
