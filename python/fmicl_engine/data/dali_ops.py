"""fmicl-engine's own DALI operators (cpp/dali, built with the extension), loaded into DALI, and
the choice between them and DALI's built-in colour operators.

``fn.fmicl.color_jitter``: torchvision's ColorJitter then RandomGrayscale as they run on PIL
images, bit for bit, in one pass per image, on the CPU or the GPU. The library is built against
the DALI installed at build time; another DALI version needs a rebuild (DALI's C++ ABI is not
stable across versions), which the loader says rather than crash. Its GPU backend is built with
the CUDA kernels (FMICL_CUDA, see CMakeLists.txt).

When the operator is missing, was built for another DALI version, or lacks the GPU backend a GPU
pipeline needs, the pipelines use DALI's built-in operators instead (``colour_backend``), with one
warning per process: the same operations in ColorJitter's sampled order, but no longer bit-exact
with torchvision. The environment variable FMICL_DALI_COLOUR chooses: ``auto`` (the default: the
project's operator when it loads, else the built-in ones), ``exact`` (the project's operator or an
error) or ``builtin`` (always the built-in ones).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

LIBRARY_NAME = "libfmicl_dali.so"
OPERATOR = "fmicl__ColorJitter"    # DALI's registry name of fn.fmicl.color_jitter
DALI_VERSION = "2.4.0"             # the version scripts/install.sh installs
COLOUR_ENV = "FMICL_DALI_COLOUR"
COLOUR_MODES = ("auto", "exact", "builtin")
EXACT, BUILTIN = "fmicl", "builtin"  # colour_backend's answers
_loaded = False
_warned = False


def dali_wheel() -> str:
    """The DALI wheel for the installed torch's CUDA major, e.g. ``nvidia-dali-cuda130==2.4.0``
    (cuda130 for a CPU-only torch: its CPU pipelines need no GPU)."""
    import torch

    major = (torch.version.cuda or "13").split(".")[0]
    return f"nvidia-dali-cuda{major}0=={DALI_VERSION}"


def dali_problem() -> str | None:
    """Why NVIDIA DALI cannot be used here, or None."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError as err:
        return (f"NVIDIA DALI is not importable ({err}): pip install {dali_wheel()} "
                "(scripts/install.sh installs it)")
    return None


def load_dali_ops(device: str = "cpu") -> None:
    """Registers the operators with DALI (once per process); ImportError says what is missing.
    ``device="gpu"``: their GPU backend is needed too, built with the CUDA kernels."""
    from fmicl_engine._ext import BUILD_COMMAND, _C

    global _loaded
    if not _loaded:
        import nvidia.dali
        from nvidia.dali import plugin_manager

        built_with = _C.build_info["dali_version"]
        if not built_with:
            raise ImportError(
                "fmicl_engine was built without its DALI operators (DALI was not installed, or the "
                "CUDA runtime headers were missing, when it was built). Run scripts/install.sh, or "
                f"install DALI and rebuild: {BUILD_COMMAND}")
        if built_with != nvidia.dali.__version__:
            raise ImportError(
                f"fmicl_engine's DALI operators were built against DALI {built_with}, but DALI "
                f"{nvidia.dali.__version__} is installed. Rebuild: {BUILD_COMMAND}")
        library = Path(_C.__file__).with_name(LIBRARY_NAME)
        if not library.is_file():
            raise ImportError(f"{library} is missing from the fmicl_engine build. Rebuild: {BUILD_COMMAND}")
        try:
            plugin_manager.load_library(str(library))
        except RuntimeError as err:
            raise ImportError(f"DALI cannot load {library} ({err}). Rebuild: {BUILD_COMMAND}") from err
        _loaded = True
    if device == "gpu":
        from nvidia.dali import backend

        if OPERATOR not in backend.RegisteredGPUOps():
            raise ImportError(
                "fmicl_engine's DALI operators have no GPU backend in this build (it is built with "
                "the CUDA kernels, by a CUDA toolkit of torch's and DALI's CUDA major). Rebuild: "
                f"FMICL_CUDA=ON {BUILD_COMMAND}")


def colour_mode() -> str:
    mode = os.environ.get(COLOUR_ENV, "auto").strip().lower() or "auto"
    if mode not in COLOUR_MODES:
        raise ValueError(f"{COLOUR_ENV} must be one of {COLOUR_MODES}, got {mode!r}")
    return mode


def exact_colour_problem(device: str) -> str | None:
    """Why the project's colour operator cannot serve a ``device`` pipeline, or None."""
    try:
        load_dali_ops(device)
    except ImportError as err:
        return str(err)
    return None


def colour_backend(device: str) -> str:
    """EXACT ("fmicl": fn.fmicl.color_jitter) or BUILTIN (DALI's built-in operators) for a
    ``device`` pipeline, as FMICL_DALI_COLOUR says. The first BUILTIN answer of the process
    warns, once, that the views are no longer bit-exact with torchvision's; with
    FMICL_DALI_COLOUR=exact an unusable operator raises ImportError instead."""
    mode = colour_mode()
    if mode == "builtin":
        reason = f"{COLOUR_ENV}=builtin"
    else:
        reason = exact_colour_problem(device)
        if reason is None:
            return EXACT
        if mode == "exact":
            raise ImportError(f"{COLOUR_ENV}=exact, but {reason}")
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            "the image pipeline uses DALI's built-in colour operators instead of fmicl_engine's "
            f"fn.fmicl.color_jitter ({reason}): ColorJitter and RandomGrayscale still run in the "
            "sampled order, but the views are no longer bit-exact with torchvision's (the hue "
            "shift differs most)", RuntimeWarning, stacklevel=2)
    return BUILTIN


def pipeline_problem(device: str) -> str | None:
    """For config validation: why a DALI two-view pipeline on ``device`` ("cpu" or "gpu") cannot
    run here, or None. The GPU itself (torch.cuda.is_available) is checked by the caller."""
    problem = dali_problem()
    if problem is not None:
        return problem
    try:
        mode = colour_mode()
    except ValueError as err:
        return str(err)
    if mode == "exact":
        reason = exact_colour_problem(device)
        if reason is not None:
            return f"{COLOUR_ENV}=exact requires fmicl_engine's colour operator: {reason}"
    return None  # otherwise the built-in operators serve, with colour_backend's warning
