"""The dataset's file list, labels and image sizes, read once from the JPEG headers and cached.

RandomResizedCrop needs every image's width and height before decoding, so a sampler outside
the decoder needs them up front. Pillow reads them from the headers without decoding; for ImageNet
(1.28 M files) that takes minutes, so the index is cached: in a cache directory, never in the
dataset (shared dataset folders are often read-only), one file per dataset root or file list
(``cache_directory``). Files that Pillow cannot identify are bad files: skipped with a warning
naming each, or BadImageFileError with ``on_bad_file="error"``.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

# torchvision's ImageFolder extensions; other files in the tree are not samples and are ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
CACHE_ENV = "FMICL_CACHE_DIR"
_CACHE_VERSION = 1
ON_BAD_FILE = ("skip", "error")
ON_BAD_FILE_KEY = "data.imagefolder.on_bad_file"


class BadImageFileError(RuntimeError):
    """An unreadable or non-image file met with ``on_bad_file="error"``. ``str(err)`` is one
    line naming the file (``path``) and the config key that skips such files instead."""

    def __init__(self, message: str, path: str = ""):
        super().__init__(message)
        self.path = path


@dataclass
class ImageIndex:
    """Samples in a fixed order: file paths, labels and sizes, plus the skipped files' paths."""

    paths: list[str]
    labels: np.ndarray   # int64
    widths: np.ndarray   # int32
    heights: np.ndarray  # int32
    classes: list[str] | None = None
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


def report_bad_file(path: str, reason: str, on_bad_file: str) -> None:
    """Warns (skip) or raises BadImageFileError (error) for one bad file, naming it in one line."""
    reason = " ".join(reason.split())  # one line, whatever the decoder said
    message = f"unreadable or non-image file {path}: {reason}"
    if on_bad_file == "error":
        raise BadImageFileError(f'{message} (set {ON_BAD_FILE_KEY} = "skip" to skip such files)',
                                path)
    warnings.warn("skipping " + message, RuntimeWarning, stacklevel=3)


def _list_image_folder(root: Path) -> tuple[list[str], list[int], list[str]]:
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    paths, labels = [], []
    for label, name in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
            dirnames.sort()
            for filename in sorted(filenames):
                if filename.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(os.path.join(dirpath, filename))
                    labels.append(label)
    return paths, labels, classes


def _read_file_list(file_list: Path, root: Path | None) -> tuple[list[str], list[int]]:
    base = root if root is not None else file_list.parent
    paths, labels = [], []
    for line_no, line in enumerate(file_list.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path, sep, label = line.rpartition(" ")
        if not sep or not label.lstrip("-").isdigit():
            raise ValueError(f"{file_list}:{line_no}: expected '<path> <integer label>', got {line!r}")
        paths.append(str(base / path.strip()))
        labels.append(int(label))
    return paths, labels


def _header_size(path: str) -> tuple[int, int, str]:
    """(width, height, "") from the header, or (0, 0, reason) for a bad file."""
    try:
        with Image.open(path) as image:
            width, height = image.size
        return width, height, ""
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        return 0, 0, f"{type(err).__name__}: {err}".replace("\n", " ")


def cache_directory(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where size indexes go: ``cache_dir`` if given, else $FMICL_CACHE_DIR, else
    $XDG_CACHE_HOME/fmicl_engine, else ~/.cache/fmicl_engine."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_home) / "fmicl_engine"


def _cache_path(sources: tuple[Path, ...], cache_dir=None) -> Path:
    """One file per dataset (its root, or its file list and root): a readable name and the digest
    of the resolved paths."""
    key = "\n".join(str(p.resolve()) for p in sources)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", sources[0].resolve().name)[:40] or "root"
    return cache_directory(cache_dir) / f"size_index-{name}-{digest}.npz"


def _pack_strings(strings: list[str]) -> np.ndarray:
    # One utf-8 blob: numpy's fixed-width unicode arrays would take ~0.5 GB for ImageNet's paths.
    return np.frombuffer("\n".join(strings).encode(), dtype=np.uint8)


def _unpack_strings(blob: np.ndarray) -> list[str]:
    return blob.tobytes().decode().split("\n") if blob.size else [""]


def _load_cache(cache: Path, paths: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    if not cache.is_file():
        return None
    try:
        with np.load(cache, allow_pickle=False) as z:
            if int(z["version"]) != _CACHE_VERSION or _unpack_strings(z["paths"]) != paths:
                return None  # the tree changed: rebuild
            return z["widths"], z["heights"], _unpack_strings(z["reasons"])
    except (OSError, ValueError, KeyError):
        return None


def _save_cache(cache: Path, paths, widths, heights, reasons) -> None:
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + f".tmp{os.getpid()}.npz")
        np.savez(tmp, version=_CACHE_VERSION, paths=_pack_strings(paths), widths=widths,
                 heights=heights, reasons=_pack_strings(reasons))
        os.replace(tmp, cache)  # atomic: a concurrent reader sees the old or the new index
    except OSError as err:
        warnings.warn(f"could not cache the image size index at {cache}: {err}", RuntimeWarning)


def build_image_index(*, root: str | None = None, file_list: str | None = None,
                      on_bad_file: str = "skip", num_threads: int = 8,
                      cache_dir: str | os.PathLike | None = None) -> ImageIndex:
    """Lists an ImageFolder tree (class = top-level folder, sorted) or reads a file list
    (lines ``<path> <label>``, paths relative to ``root`` or else to the list's folder), then
    attaches every image's size from the cached header index, building it if needed.

    ``cache_dir``: where the index is cached (see cache_directory); the dataset is only read.
    Raises ValueError naming the path for a missing or empty dataset, before any training, and
    BadImageFileError for a bad file with ``on_bad_file="error"``.
    """
    if on_bad_file not in ON_BAD_FILE:
        raise ValueError(f"on_bad_file must be one of {ON_BAD_FILE}, got {on_bad_file!r}")
    if root is None and file_list is None:
        raise ValueError("give the dataset as root (an ImageFolder tree) or file_list")
    root_path = Path(root).expanduser() if root is not None else None
    if root_path is not None and not root_path.is_dir():
        raise ValueError(f"data root {root_path} does not exist or is not a directory")
    classes = None
    if file_list is not None:
        list_path = Path(file_list).expanduser()
        if not list_path.is_file():
            raise ValueError(f"data file list {list_path} does not exist")
        paths, labels = _read_file_list(list_path, root_path)
        sources, where = (list_path,) + ((root_path,) if root_path else ()), f"file list {list_path}"
    else:
        paths, labels, classes = _list_image_folder(root_path)
        sources, where = (root_path,), f"data root {root_path}"
    if not paths:
        raise ValueError(f"{where} holds no images (expected class folders of "
                         f"{', '.join(IMAGE_EXTENSIONS)} files)")

    cache = _cache_path(sources, cache_dir)
    cached = _load_cache(cache, paths)
    if cached is None:
        with ThreadPoolExecutor(max(1, num_threads)) as pool:
            sizes = list(pool.map(_header_size, paths))  # I/O-bound: threads overlap reads
        widths = np.array([s[0] for s in sizes], dtype=np.int32)
        heights = np.array([s[1] for s in sizes], dtype=np.int32)
        reasons = [s[2] for s in sizes]
        _save_cache(cache, paths, widths, heights, reasons)
    else:
        widths, heights, reasons = cached

    good = widths > 0
    skipped = [p for p, ok in zip(paths, good) if not ok]
    for i in np.flatnonzero(~good):
        report_bad_file(paths[i], reasons[i], on_bad_file)
    if not good.any():
        raise ValueError(f"{where}: none of its {len(paths)} image files is readable")
    keep = np.flatnonzero(good)
    return ImageIndex(
        paths=[paths[i] for i in keep],
        labels=np.asarray(labels, dtype=np.int64)[keep],
        widths=widths[keep].astype(np.int32),
        heights=heights[keep].astype(np.int32),
        classes=classes,
        skipped=skipped,
    )
