"""The build's files: explicit source lists, no separate pybind11, FMICL_CUDA=AUTO's decisions,
the DALI wheel install.sh picks for torch's CUDA, and no reference outside the repository."""

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CMAKE_FILES = [ROOT / "CMakeLists.txt", *sorted((ROOT / "cmake").glob("*.cmake"))]


def cmake_source_lists() -> dict[str, list[str]]:
    text = (ROOT / "CMakeLists.txt").read_text()
    return {name: body.split() for name, body in
            re.findall(r"set\((FMICL_\w*SOURCES)\s+([^)]*)\)", text)}


def test_every_source_under_cpp_is_listed_once():
    lists = cmake_source_lists()
    assert set(lists) == {"FMICL_CPU_SOURCES", "FMICL_CUDA_SOURCES", "FMICL_DALI_CPU_SOURCES",
                          "FMICL_DALI_CUDA_SOURCES"}
    listed = [f for files in lists.values() for f in files]
    on_disk = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "cpp").rglob("*")
                     if p.suffix in {".cpp", ".cu"})
    assert sorted(listed) == on_disk
    assert all(f.endswith(".cu") for f in lists["FMICL_CUDA_SOURCES"] + lists["FMICL_DALI_CUDA_SOURCES"])


def test_cmake_lists_its_sources_rather_than_globbing():
    # cmake/build_info.cmake globs cpp/ on purpose: the digest covers every file there, as
    # _ext.sources_sha256 does.
    for path in CMAKE_FILES:
        if path.name != "build_info.cmake":
            assert "GLOB" not in path.read_text(), path


def test_no_separate_pybind11():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert not any("pybind11" in r for r in pyproject["build-system"]["requires"])
    assert "pybind11" not in (ROOT / "scripts" / "install.sh").read_text()
    import torch  # the bindings use the pybind11 torch ships

    assert (Path(torch.__file__).parent / "include" / "pybind11" / "pybind11.h").is_file()


def test_cuda_is_auto_by_default():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["tool"]["scikit-build"]["cmake"]["define"]["FMICL_CUDA"]["default"] == "AUTO"
    assert 'set(FMICL_CUDA "AUTO" CACHE' in (ROOT / "CMakeLists.txt").read_text()


def dali_wheels(torch_cuda: str) -> list[str]:
    out = subprocess.run(["bash", str(ROOT / "scripts" / "install.sh"), "--dali-wheels"],
                         env={**os.environ, "FMICL_TORCH_CUDA": torch_cuda},
                         capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_install_picks_the_dali_wheel_for_torchs_cuda():
    assert dali_wheels("13.0") == ["nvidia-dali-cuda130==2.4.0", "nvidia-cuda-runtime==13.0.*",
                                   "nvidia-cuda-crt==13.0.*", "nvidia-cuda-cccl==13.0.*"]
    assert dali_wheels("12.8") == ["nvidia-dali-cuda120==2.4.0", "nvidia-cuda-runtime-cu12==12.8.*",
                                   "nvidia-cuda-nvcc-cu12==12.8.*", "nvidia-cuda-cccl-cu12==12.8.*"]
    assert dali_wheels("") == dali_wheels("13.0")  # CPU-only torch: DALI's CPU pipelines
    assert dali_wheels("11.8") == []               # none for CUDA 11: said on stderr
    # The package's extras name the same wheels, and the DALI version the code asks for.
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["dali-cuda130"] == dali_wheels("13.0")
    assert extras["dali-cuda120"][0] == "nvidia-dali-cuda120==2.4.0"
    from fmicl_engine.data.dali_ops import DALI_VERSION

    assert dali_wheels("13.0")[0].endswith("==" + DALI_VERSION)


def test_no_reference_outside_the_repository():
    mine = [*CMAKE_FILES, ROOT / "pyproject.toml", *sorted((ROOT / "scripts").glob("*.sh")),
            *sorted((ROOT / "cpp" / "dali").iterdir()),
            *sorted((ROOT / "python" / "fmicl_engine" / "data").glob("*.py")),
            ROOT / "python" / "fmicl_engine" / "_ext.py"]
    for path in mine:
        text = path.read_text()
        assert "../shared" not in text and "/work/" not in text and "BUILD.md" not in text, path


# --- FMICL_CUDA=AUTO / ON: cmake/cuda.cmake's decisions where it builds no CUDA, configured in a
# project of its own (no compiler, no torch: a second), for a torch reporting another CUDA -------

def decide(tmp_path, fmicl_cuda: str, torch_cuda: str) -> subprocess.CompletedProcess:
    if shutil.which("cmake") is None:
        pytest.skip("no cmake")
    project = tmp_path / f"{fmicl_cuda}-{torch_cuda or 'cpu'}"
    project.mkdir()
    (project / "CMakeLists.txt").write_text(f"""
cmake_minimum_required(VERSION 3.24)
project(decide LANGUAGES NONE)
set(FMICL_CUDA {fmicl_cuda})
set(TORCH_VERSION 2.14.1)
set(TORCH_CUDA_VERSION "{torch_cuda}")
include("{(ROOT / "cmake" / "cuda.cmake").as_posix()}")
message(STATUS "decided: ${{FMICL_WITH_CUDA}}: ${{FMICL_CUDA_WHY}}")
""")
    return subprocess.run(["cmake", "-S", str(project), "-B", str(project / "build")],
                          capture_output=True, text=True, timeout=120)


def decision(result) -> str:
    (line,) = [ln for ln in result.stdout.splitlines() if "decided: " in ln]
    return line.split("decided: ", 1)[1]


def test_auto_builds_cpu_only_and_says_why(tmp_path):
    assert decision(decide(tmp_path, "AUTO", "")) == \
        "FALSE: torch 2.14.1 is a CPU-only build (torch.version.cuda is None)"
    # No CUDA 9 toolkit anywhere: the compilers found are named, with their versions.
    why = decision(decide(tmp_path, "AUTO", "9.2"))
    assert why.startswith("FALSE: no CUDA 9.x compiler for torch's CUDA 9.2")
    assert decision(decide(tmp_path, "OFF", "13.0")) == "FALSE: opted out"


def test_on_requires_the_cuda_kernels(tmp_path):
    for torch_cuda, why in (("9.2", "no CUDA 9.x compiler"), ("", "is a CPU-only build")):
        result = decide(tmp_path, "ON", torch_cuda)
        assert result.returncode != 0
        assert "FMICL_CUDA=ON, but " in " ".join(result.stderr.split())
        assert why in " ".join(result.stderr.split())
