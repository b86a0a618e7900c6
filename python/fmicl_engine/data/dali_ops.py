"""fmicl-engine's own DALI operators (cpp/dali, built with the extension), loaded into DALI.

``fn.fmicl.color_jitter``: torchvision's ColorJitter then RandomGrayscale as they run on PIL
images, bit for bit, in one pass per image, on the CPU or the GPU. The library is built against
the DALI installed at build time; another DALI version needs a rebuild (DALI's C++ ABI is not
stable across versions), which the loader says rather than crash.
"""

from __future__ import annotations

from pathlib import Path

LIBRARY_NAME = "libfmicl_dali.so"
_loaded = False


def load_dali_ops(device: str = "cpu") -> None:
    """Registers the operators with DALI (once per process); ImportError says what to do.
    ``device="gpu"``: the CUDA backend is needed too, built only with FMICL_CUDA=ON."""
    from fmicl_engine._ext import BUILD_COMMAND, _C

    if device == "gpu" and not _C.build_info["with_cuda"]:
        raise ImportError(
            "the GPU data pipeline needs the CUDA backend of fmicl_engine's DALI operators, "
            f"which this build lacks. Rebuild with the CUDA kernels: FMICL_CUDA=ON {BUILD_COMMAND}")
    global _loaded
    if _loaded:
        return
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
    plugin_manager.load_library(str(library))
    _loaded = True
