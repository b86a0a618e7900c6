"""The native extension: present, current, and a clear error when missing or stale."""

import shutil
import subprocess
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


@pytest.mark.skipif(shutil.which("c++") is None, reason="needs a C++ compiler")
def test_a_divergence_without_its_terms_does_not_compile(tmp_path):
    # One line in FMICL_FOR_EACH_DIVERGENCE adds a divergence everywhere; until positive_term and
    # negative_term have its branch, the static_assert of their constexpr chains fails the build
    # (without it, the new divergence would silently compute VLC's terms).
    header = (_ext._REPO_ROOT / "cpp" / "include" / "fmicl" / "pairwise_math.h").read_text()
    last = '  X(kVLC, "vlc")\n'
    assert last in header, "pairwise_math.h: the divergence list moved"
    (tmp_path / "fmicl").mkdir()
    (tmp_path / "fmicl" / "pairwise_math.h").write_text(header.replace(last, '  X(kVLC, "vlc") \\\n  X(kNew, "new")\n'))
    (tmp_path / "new.cpp").write_text(
        "#include <fmicl/pairwise_math.h>\n"
        "double term(fmicl::Divergence d, double s) {\n"
        "  double value = 0, dvalue = 0;\n"
        "  switch (d) {\n"
        "#define CASE(D, name) case fmicl::Divergence::D:"
        " fmicl::positive_term<fmicl::Divergence::D>(s, 1.5, value, dvalue);"
        " fmicl::negative_term<fmicl::Divergence::D>(s, 1.5, value, dvalue); break;\n"
        "    FMICL_FOR_EACH_DIVERGENCE(CASE)\n"
        "  }\n"
        "  return value + dvalue;\n"
        "}\n")

    def compile_against(include_dir):
        return subprocess.run(["c++", "-std=c++20", "-fsyntax-only", "-I", str(include_dir), str(tmp_path / "new.cpp")],
                              capture_output=True, text=True)

    assert compile_against(_ext._REPO_ROOT / "cpp" / "include").returncode == 0  # the real list compiles
    result = compile_against(tmp_path)
    assert result.returncode != 0
    assert "positive_term: a divergence without its f'(r)" in result.stderr
    assert "negative_term: a divergence without its f*(f'(r))" in result.stderr
